//! Operator commands of Empath: `mailq` (and, later, `empathctl` and `sendmail`).

pub mod mailq;
