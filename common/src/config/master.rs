//! The master's own settings: whom the daemons run as, how long a graceful
//! stop may take, and how crashing daemons are restarted and throttled.
//!
//! `user`, `group`, `allow_root` and `shutdown_timeout_secs` are top-level
//! keys of `Empath(...)`; the restart policy is the `supervisor` section.

use serde::Deserialize;

use super::{Empath, Invalid, check};

/// The user the daemons run as when the master is started as root and
/// `user` is not set.
pub const DEFAULT_USER: &str = "empath";

/// How the master restarts daemons that die.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Supervisor {
    /// The first restart delay; it doubles on each consecutive death.
    pub restart_delay_ms: u64,
    /// The restart delay never grows beyond this.
    pub max_restart_delay_secs: u64,
    /// A daemon that stays up this long counts as serving even if it has
    /// not yet taken a request, and its restart delay starts over.
    pub stable_after_secs: u64,
    /// After this many consecutive deaths before serving anything, the
    /// daemon is throttled.
    pub throttle_after_crashes: u32,
    /// How long a throttled daemon waits before it is started again.
    pub throttle_secs: u64,
}

impl Default for Supervisor {
    fn default() -> Self {
        Self {
            restart_delay_ms: 100,
            max_restart_delay_secs: 30,
            stable_after_secs: 10,
            throttle_after_crashes: 5,
            throttle_secs: 60,
        }
    }
}

pub(super) fn validate(config: &Empath) -> Result<(), Invalid> {
    for (key, name) in [("user", &config.user), ("group", &config.group)] {
        if let Some(name) = name {
            let valid = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
            check(valid, key, format!("{name:?} is not a user or group name"))?;
        }
    }
    check(
        config.shutdown_timeout_secs > 0,
        "shutdown_timeout_secs",
        "must be greater than 0",
    )?;
    let supervisor = &config.supervisor;
    check(
        supervisor.restart_delay_ms > 0,
        "supervisor.restart_delay_ms",
        "must be greater than 0",
    )?;
    check(
        supervisor.max_restart_delay_secs.saturating_mul(1000) >= supervisor.restart_delay_ms,
        "supervisor.max_restart_delay_secs",
        "must not be less than restart_delay_ms",
    )?;
    check(
        supervisor.stable_after_secs > 0,
        "supervisor.stable_after_secs",
        "must be greater than 0",
    )?;
    check(
        supervisor.throttle_after_crashes > 0,
        "supervisor.throttle_after_crashes",
        "must be at least 1",
    )?;
    check(
        supervisor.throttle_secs > 0,
        "supervisor.throttle_secs",
        "must be greater than 0",
    )
}

/// The default for `shutdown_timeout_secs`.
pub(super) fn default_shutdown_timeout_secs() -> u64 {
    30
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;

    const MINIMAL: &str = r#"Empath(
    smtp_controller: (listeners: [{ socket: "127.0.0.1:2525" }]),
    spool: (path: "/tmp/empath-spool"),
"#;

    fn parse(extra: &str) -> Result<Config, crate::config::ConfigError> {
        Config::parse(Path::new("test.ron"), &format!("{MINIMAL}{extra})"))
    }

    #[test]
    fn defaults_refuse_root_and_allow_thirty_seconds_to_stop() {
        let config = parse("").unwrap();
        assert_eq!(config.user, None);
        assert!(!config.allow_root);
        assert_eq!(config.shutdown_timeout_secs, 30);
        assert_eq!(config.supervisor.throttle_after_crashes, 5);
    }

    #[test]
    fn the_master_keys_parse() {
        let config = parse(
            "    user: \"mail\",\n    group: \"mail\",\n    allow_root: true,\n    shutdown_timeout_secs: 5,\n    supervisor: (throttle_after_crashes: 10, throttle_secs: 4),\n",
        )
        .unwrap();
        assert_eq!(config.user.as_deref(), Some("mail"));
        assert_eq!(config.group.as_deref(), Some("mail"));
        assert!(config.allow_root);
        assert_eq!(config.shutdown_timeout_secs, 5);
        assert_eq!(config.supervisor.throttle_after_crashes, 10);
        assert_eq!(config.supervisor.restart_delay_ms, 100);
    }

    #[test]
    fn bad_values_name_the_key_and_line() {
        let error = parse("    shutdown_timeout_secs: 0,\n").unwrap_err();
        assert_eq!(error.line, Some(4), "{error}");
        assert!(error.message.contains("shutdown_timeout_secs"), "{error}");
        let error =
            parse("    supervisor: (\n        throttle_after_crashes: 0,\n    ),\n").unwrap_err();
        assert_eq!(error.line, Some(5), "{error}");
        assert!(
            error.message.contains("supervisor.throttle_after_crashes"),
            "{error}"
        );
        let error = parse("    user: \"bad user\",\n").unwrap_err();
        assert!(error.message.contains("user: \"bad user\""), "{error}");
        let error = parse("    supervisor: (throttle: 1),\n").unwrap_err();
        assert!(error.message.contains("unknown key `throttle`"), "{error}");
    }
}
