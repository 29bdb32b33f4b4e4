//! Operator commands of Empath: `empathctl`, `mailq` and `sendmail`.

pub mod client;
pub mod mailq;
pub mod render;
pub mod sendmail;
