//! The `dsn` section: delivery status notifications (RFC 3464), built by
//! `empath-bounce`.

use serde::Deserialize;

use super::{Invalid, check};

/// The default of `dsn.max_return_size`: like Postfix's
/// `bounce_size_limit`, small enough that a bounce storm stays cheap.
pub const DEFAULT_MAX_RETURN_SIZE: u64 = 64 * 1024;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dsn {
    pub enabled: bool,
    /// The name in `Reporting-MTA:`; the host name when unset.
    pub reporting_mta: Option<String>,
    /// Receives double bounces and signs the DSNs (`From:`);
    /// `postmaster@<hostname>` when unset.
    pub postmaster: Option<String>,
    /// Warn the sender once a message has waited this long (when its
    /// NOTIFY allows delay notices). `None` sends no warnings.
    pub delay_warning_secs: Option<u64>,
    /// With RET=FULL, the whole message is returned only up to this many
    /// bytes; a larger one is returned as headers only.
    pub max_return_size: u64,
}

impl Default for Dsn {
    fn default() -> Self {
        Self {
            enabled: true,
            reporting_mta: None,
            postmaster: None,
            delay_warning_secs: None,
            max_return_size: DEFAULT_MAX_RETURN_SIZE,
        }
    }
}

impl Dsn {
    /// The postmaster's address, given the host name.
    pub fn postmaster_or(&self, hostname: &str) -> String {
        self.postmaster
            .clone()
            .unwrap_or_else(|| format!("postmaster@{hostname}"))
    }
}

pub(super) fn validate(dsn: &Dsn) -> Result<(), Invalid> {
    if let Some(postmaster) = &dsn.postmaster {
        let valid = postmaster
            .rsplit_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty())
            && !postmaster
                .contains(|c: char| c.is_whitespace() || c.is_control() || c == '<' || c == '>');
        check(
            valid,
            "dsn.postmaster",
            format!("{postmaster:?} is not a mail address (expected local@domain)"),
        )?;
    }
    if let Some(mta) = &dsn.reporting_mta {
        let valid = !mta.is_empty()
            && mta.chars().all(|c| {
                c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '[' | ']' | ':')
            });
        check(
            valid,
            "dsn.reporting_mta",
            format!("{mta:?} is not a host name"),
        )?;
    }
    check(
        dsn.delay_warning_secs != Some(0),
        "dsn.delay_warning_secs",
        "must be greater than 0 (leave it out to send no delay warnings)",
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::{Config, ConfigError};
    use super::*;

    fn parse(dsn: &str) -> Result<Config, ConfigError> {
        let text = format!(
            "Empath(\n    smtp_controller: (listeners: [{{ socket: \"127.0.0.1:2525\" }}]),\n    spool: (path: \"/tmp/empath-spool\"),\n    dsn: (\n{dsn}\n    ),\n)"
        );
        Config::parse(Path::new("test.ron"), &text)
    }

    #[test]
    fn the_seeds_dsn_section_loads() {
        let config = parse(
            "        enabled: true,\n        reporting_mta: \"mail.example.com\",\n        postmaster: \"postmaster@example.com\",",
        )
        .unwrap();
        assert!(config.dsn.enabled);
        assert_eq!(
            config.dsn.reporting_mta.as_deref(),
            Some("mail.example.com")
        );
        assert_eq!(config.dsn.postmaster_or("h"), "postmaster@example.com");
        assert_eq!(config.dsn.max_return_size, DEFAULT_MAX_RETURN_SIZE);
        assert_eq!(config.dsn.delay_warning_secs, None);
    }

    #[test]
    fn defaults_name_the_local_postmaster() {
        let config = parse("").unwrap();
        assert_eq!(
            config.dsn.postmaster_or("mx.example.org"),
            "postmaster@mx.example.org"
        );
    }

    #[test]
    fn new_keys_load() {
        let config =
            parse("        delay_warning_secs: 14400,\n        max_return_size: 1000000,").unwrap();
        assert_eq!(config.dsn.delay_warning_secs, Some(14400));
        assert_eq!(config.dsn.max_return_size, 1_000_000);
    }

    #[test]
    fn bad_values_name_the_key_and_its_line() {
        for (line, key) in [
            ("        postmaster: \"nobody\",", "dsn.postmaster"),
            ("        postmaster: \"a b@example.com\",", "dsn.postmaster"),
            (
                "        reporting_mta: \"mail example\",",
                "dsn.reporting_mta",
            ),
            ("        delay_warning_secs: 0,", "dsn.delay_warning_secs"),
        ] {
            let error = parse(line).unwrap_err();
            assert_eq!(error.line, Some(5), "{error}");
            assert!(error.message.starts_with(key), "{error}");
        }
    }

    #[test]
    fn unknown_keys_are_errors() {
        let error = parse("        postmastr: \"p@example.com\",").unwrap_err();
        assert_eq!(error.line, Some(5));
        assert!(error.message.contains("postmastr"), "{error}");
    }
}
