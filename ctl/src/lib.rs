//! Operator commands of Empath: `empathctl`, `mailq`, `sendmail` and
//! `newaliases`.

pub mod client;
pub mod confirm;
pub mod dkim;
pub mod mailq;
pub mod newaliases;
pub mod render;
pub mod sendmail;
pub mod smtp_stdin;
