//! The `smtpd` section: how the SMTP server side runs and what it allows.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Smtpd {
    /// How many smtpd processes share the listening sockets.
    pub processes: usize,
}

impl Default for Smtpd {
    fn default() -> Self {
        Self { processes: 1 }
    }
}
