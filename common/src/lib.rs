//! Shared library of the Empath MTA.
//!
//! Every invariant has one owner here: the config model and its validation,
//! the queue file format and every queue-directory operation, the IPC framing
//! and message types, logging, and the SMTP types shared by the daemons.

pub mod aliases;
pub mod cleanup_client;
pub mod config;
pub mod content;
pub mod control;
pub mod daemon;
pub mod edits;
pub mod ipc;
pub mod local_recipients;
pub mod logging;
pub mod maildrop;
pub mod maillog;
pub mod metrics;
pub mod otlp;
pub mod protocol;
pub mod queue;
pub mod safeio;
pub mod smtp;
pub mod supervision;
pub mod time;
pub mod tls;
pub mod traces;
