//! What one listener's sessions need to know, resolved once from the config.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use empath_common::config::{Extension, ListenerFields, ServerTimeouts};

/// Most recipients accepted for one message (RFC 5321 section 4.5.3.1.8
/// asks for at least 100).
pub const MAX_RECIPIENTS: usize = 1000;
/// Protocol errors after which the session is closed.
pub const MAX_ERRORS: u32 = 20;

/// The settings of the sessions of one listener.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Our name in the greeting, EHLO answer and 421 replies.
    pub hostname: String,
    /// The `SIZE` limit in bytes; `None` when the listener sets none, in
    /// which case only cleanup's own limit applies.
    pub size_limit: Option<u64>,
    pub max_recipients: usize,
    pub max_errors: u32,
    pub timeouts: Timeouts,
    /// The listener's `context`, copied into every submission's metadata.
    pub metadata: BTreeMap<String, String>,
    /// cleanup's socket in `private/`.
    pub cleanup_socket: PathBuf,
}

/// Server timeouts (RFC 5321 section 4.5.3.2) as durations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Waiting for a command line; also bounds each write to the client.
    pub command: Duration,
    /// Waiting for the first data after the 354.
    pub data_init: Duration,
    /// Waiting for more data while the message comes in.
    pub data_block: Duration,
    /// Waiting for cleanup: connecting, streaming, and its final answer.
    pub data_termination: Duration,
    /// The whole session.
    pub connection: Duration,
}

impl From<&ServerTimeouts> for Timeouts {
    fn from(t: &ServerTimeouts) -> Self {
        Self {
            command: Duration::from_secs(t.command_secs),
            data_init: Duration::from_secs(t.data_init_secs),
            data_block: Duration::from_secs(t.data_block_secs),
            data_termination: Duration::from_secs(t.data_termination_secs),
            connection: Duration::from_secs(t.connection_secs),
        }
    }
}

impl Settings {
    pub fn for_listener(
        hostname: String,
        listener: &ListenerFields,
        cleanup_socket: PathBuf,
    ) -> Self {
        // STARTTLS is configured but not offered yet: TLS comes later.
        let size_limit = listener.extensions.iter().find_map(|e| match e {
            Extension::Size(limit) => Some(*limit),
            Extension::StartTls { .. } => None,
        });
        Self {
            hostname,
            size_limit,
            max_recipients: MAX_RECIPIENTS,
            max_errors: MAX_ERRORS,
            timeouts: Timeouts::from(&listener.timeouts),
            metadata: listener.context.clone(),
            cleanup_socket,
        }
    }
}
