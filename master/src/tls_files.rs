//! `empath check-config` (and `--dry-run`) loads every listener's STARTTLS
//! certificate and key, the way smtpd will, so that a missing, unreadable
//! or mismatched file fails the check instead of passing with `config OK`
//! and leaving smtpd without STARTTLS.
//!
//! The master does not insist at start-up: there smtpd logs the error and
//! serves without STARTTLS until a SIGHUP loads a fixed certificate, so an
//! expired or half-renewed certificate never stops mail from coming in.

use empath_common::config::{Config, Extension};

/// Checks each `starttls` extension; the error names the config key.
pub fn check(config: &Config) -> Result<(), String> {
    for (index, listener) in config.smtp_controller.listeners.iter().enumerate() {
        for extension in &listener.extensions {
            if let Extension::StartTls { key, certificate } = extension {
                empath_common::tls::server_config(key, certificate).map_err(|error| {
                    format!(
                        "{}: smtp_controller.listeners[{index}].extensions.starttls: {error}",
                        config.path.display()
                    )
                })?;
            }
        }
    }
    Ok(())
}
