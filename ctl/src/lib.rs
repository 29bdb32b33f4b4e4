//! Operator commands of Empath: `empathctl`, `mailq` and `sendmail`.

pub mod client;
pub mod dkim;
pub mod mailq;
pub mod render;
pub mod sendmail;
