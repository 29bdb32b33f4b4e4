//! What one listener's sessions need to know, resolved once from the config.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use empath_common::cleanup_client::CleanupConnections;
use empath_common::config::{BareLineEndings, Extension, ListenerFields, ServerTimeouts, Smtpd};
use empath_modules::Modules;

use crate::auth::AuthState;
use crate::local::LocalPolicy;
use crate::mail_filters::FilterSettings;
use crate::relay::RelayPolicy;
use crate::tls::TlsSlot;

/// The settings of the sessions of one listener.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Our name in the greeting, EHLO answer and 421 replies.
    pub hostname: String,
    /// The `SIZE` limit in bytes: the listener's `size` extension, else
    /// `smtpd.max_message_size`. `None` leaves only cleanup's own limit.
    pub size_limit: Option<u64>,
    pub max_recipients: usize,
    pub max_errors: u32,
    pub timeouts: Timeouts,
    /// The listener's `context`, copied into every submission's metadata.
    pub metadata: BTreeMap<String, String>,
    /// Connections to cleanup, kept between messages and shared by every
    /// session of the process.
    pub cleanup: CleanupConnections,
    /// Who may send to which domains.
    pub relay: Arc<RelayPolicy>,
    /// This host's own recipients and the origin of unqualified addresses.
    pub local: LocalPolicy,
    /// STARTTLS, where the listener configures it.
    pub tls: Option<Arc<TlsSlot>>,
    /// AUTH, where users are configured.
    pub auth: Option<Arc<AuthState>>,
    /// The reply codes of VRFY and EXPN: 252 or 502.
    pub vrfy_code: u16,
    pub expn_code: u16,
    /// The plugin modules, loaded once per process.
    pub modules: Arc<Modules>,
    /// Whether a bare CR or LF refuses a message.
    pub bare_line_endings: BareLineEndings,
    /// Milters and authentication checks, when configured.
    pub filters: Option<Arc<FilterSettings>>,
}

/// Server timeouts (RFC 5321 section 4.5.3.2) as durations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Waiting for a command line; also bounds each write to the client
    /// and the TLS handshake.
    pub command: Duration,
    /// Waiting for the first data after the 354.
    pub data_init: Duration,
    /// Waiting for more data while the message comes in (DATA or BDAT).
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
        smtpd: &Smtpd,
        cleanup: CleanupConnections,
        relay: Arc<RelayPolicy>,
        auth: Option<Arc<AuthState>>,
        modules: Arc<Modules>,
    ) -> Self {
        let mut size_limit = Some(smtpd.max_message_size);
        let mut tls = None;
        for extension in &listener.extensions {
            match extension {
                Extension::Size(limit) => size_limit = Some(*limit),
                Extension::StartTls { key, certificate } => {
                    tls = Some(TlsSlot::new(key, certificate));
                }
            }
        }
        Self {
            hostname,
            size_limit,
            max_recipients: smtpd.max_recipients,
            max_errors: smtpd.max_errors,
            timeouts: Timeouts::from(&listener.timeouts),
            metadata: listener.context.clone(),
            cleanup,
            relay,
            // Set by the caller that knows the local domains.
            local: LocalPolicy::default(),
            tls,
            auth,
            vrfy_code: smtpd.vrfy_code,
            expn_code: smtpd.expn_code,
            modules,
            bare_line_endings: smtpd.bare_line_endings,
            filters: None,
        }
    }

    /// Settings for tests: generous limits, an open relay from anywhere,
    /// no TLS, no AUTH and no modules.
    pub fn for_tests(hostname: &str, cleanup_socket: PathBuf, timeouts: Timeouts) -> Self {
        let everyone: Vec<_> = ["0.0.0.0/0", "::/0"]
            .iter()
            .filter_map(|n| n.parse().ok())
            .collect();
        Self {
            hostname: hostname.to_owned(),
            size_limit: None,
            max_recipients: 1000,
            max_errors: 20,
            timeouts,
            metadata: BTreeMap::new(),
            cleanup: CleanupConnections::kept(cleanup_socket),
            relay: Arc::new(RelayPolicy::with(&[hostname], &everyone)),
            local: LocalPolicy::default(),
            tls: None,
            auth: None,
            vrfy_code: 252,
            expn_code: 502,
            modules: Arc::new(Modules::default()),
            bare_line_endings: BareLineEndings::default(),
            filters: None,
        }
    }
}
