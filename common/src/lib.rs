//! Shared library of the Empath MTA.
//!
//! Every invariant has one owner here: the config model and its validation,
//! the queue file format and every queue-directory operation, the IPC framing
//! and message types, logging, and the SMTP types shared by the daemons.

/// Every Empath program allocates through mimalloc. glibc's malloc gave
/// the daemons' worker threads arenas of their own, which hand the memory
/// of a freed message buffer back to the kernel (`madvise`) and fault it in
/// again for the next message: a sixth of cleanup's CPU time at 100 KB.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
