//! Loading and validating `empath.config.ron`.
//!
//! Syntax errors, unknown keys and malformed values come from the RON parser
//! with their line and column. Checks that span several keys run after
//! parsing and name the key and the line where it is written.

mod cleanup;
mod dns;
mod dsn;
mod local;
mod mail_auth;
mod master;
mod model;
mod paths;
mod smtpd;
mod tls;
mod values;

use std::fmt;
use std::path::{Path, PathBuf};

pub use cleanup::{Cleanup, DEFAULT_HOPCOUNT_LIMIT};
pub use dns::{Dns, Nameserver};
pub use dsn::{DEFAULT_MAX_RETURN_SIZE, Dsn};
pub use local::{LocalDelivery, LocalDomains, TargetSource};
pub use mail_auth::{
    Auth as AuthChecks, DEFAULT_SIGNED_HEADERS, DefaultAction, Dkim, DkimKey, Milter,
    MilterAddress, MilterFields,
};
pub use master::{DEFAULT_USER, Supervisor};
pub use model::*;
pub use smtpd::{Auth as SmtpdAuth, BareLineEndings, Network, Smtpd, is_bcrypt_hash};
pub use tls::{MtaSts, SecurityLevel, TlsReports, effective_level};
pub use values::{DomainTransport, Extension, HostPort, ListenAddr, Listener, LmtpEndpoint};

/// The default location of the config file.
pub const DEFAULT_PATH: &str = "/etc/empath/empath.config.ron";

/// Where the master (and empathctl) look for the config when none is
/// named, in order: the working directory (the seeds' containers mount
/// the config at `/app/empath.config.ron` and start `empath` in `/app`
/// with no argument), then [`DEFAULT_PATH`].
pub const SEARCH_PATHS: [&str; 2] = ["./empath.config.ron", DEFAULT_PATH];

/// The first of [`SEARCH_PATHS`] that exists, if any.
pub fn find_default() -> Option<PathBuf> {
    SEARCH_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|path| path.exists())
}

/// A loaded and validated configuration, with the file it came from.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub empath: Empath,
}

impl std::ops::Deref for Config {
    type Target = Empath;
    fn deref(&self) -> &Empath {
        &self.empath
    }
}

/// A config error: where it is, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: PathBuf,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        match (self.line, self.column) {
            (Some(line), Some(column)) => write!(f, ":{line}:{column}")?,
            (Some(line), None) => write!(f, ":{line}")?,
            _ => {}
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads, parses and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.to_owned(),
            line: None,
            column: None,
            message: format!("cannot read config file: {e}"),
        })?;
        Self::parse(path, &text)
    }

    /// Parses and validates config `text`; `path` is used in error messages.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let options = ron::Options::default()
            .with_default_extension(ron::extensions::Extensions::IMPLICIT_SOME);
        let mut empath: Empath = options.from_str(text).map_err(|e| ConfigError {
            path: path.to_owned(),
            line: Some(e.span.start.line),
            column: Some(e.span.start.col),
            message: describe(&e.code),
        })?;
        let base = paths::base_of(path);
        paths::resolve(&mut empath, &base);
        mail_auth::resolve_paths(&mut empath.dkim, &base);
        validate(&empath).map_err(|(key, message)| ConfigError {
            path: path.to_owned(),
            line: line_of_key(text, key.rsplit('.').next().unwrap_or(&key)),
            column: None,
            message: format!("{key}: {message}"),
        })?;
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        Ok(Self { path, empath })
    }

    /// The host name for banners and headers.
    pub fn hostname(&self) -> String {
        self.empath.hostname.clone().unwrap_or_else(system_hostname)
    }

    /// The largest message cleanup queues from an smtpd: the largest
    /// listener limit (each listener's own limit is smtpd's to enforce).
    pub fn smtp_message_size_limit(&self) -> u64 {
        self.smtp_controller
            .listeners
            .iter()
            .flat_map(|listener| &listener.extensions)
            .filter_map(|extension| match extension {
                Extension::Size(size) => Some(*size),
                _ => None,
            })
            .fold(self.smtpd.max_message_size, u64::max)
    }

    /// The largest message cleanup queues from a local user (sendmail,
    /// the maildrop): `smtpd.max_message_size`, Postfix's
    /// `message_size_limit`.
    pub fn local_message_size_limit(&self) -> u64 {
        self.smtpd.max_message_size
    }

    /// The domains delivered on this host and the origin of unqualified
    /// addresses (`local_delivery.local_domains` and `.origin`, by default
    /// the host name, `localhost` and `localhost.localdomain`).
    pub fn local_domains(&self) -> LocalDomains {
        let hostname = self.hostname();
        let local = &self.empath.local_delivery;
        let origin = local.origin.clone().unwrap_or_else(|| hostname.clone());
        let domains = match &local.local_domains {
            Some(domains) => domains.clone(),
            None => vec![
                hostname,
                "localhost".to_owned(),
                "localhost.localdomain".to_owned(),
            ],
        };
        LocalDomains::new(domains, &origin)
    }
}

fn system_hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// Words a parse error for an operator. Struct names from the parser are
/// left out: they are Rust type names, not config sections.
fn describe(error: &ron::Error) -> String {
    let quoted = |names: &[&str]| {
        names
            .iter()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match error {
        ron::Error::NoSuchStructField {
            expected, found, ..
        } => {
            format!(
                "unknown key `{found}` (expected one of {})",
                quoted(expected)
            )
        }
        ron::Error::MissingStructField { field, .. } => format!("missing required key `{field}`"),
        ron::Error::DuplicateStructField { field, .. } => format!("key `{field}` is set twice"),
        other => other.to_string(),
    }
}

/// The first line that assigns `key`, for errors found after parsing.
fn line_of_key(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|line| {
            let line = line.trim_start().trim_start_matches('"');
            line.strip_prefix(key)
                .map(|rest| rest.trim_start_matches('"').trim_start().starts_with(':'))
                .unwrap_or(false)
        })
        .map(|index| index + 1)
}

type Invalid = (String, String);

fn check(ok: bool, key: &str, message: impl Into<String>) -> Result<(), Invalid> {
    if ok {
        Ok(())
    } else {
        Err((key.to_owned(), message.into()))
    }
}

fn validate(config: &Empath) -> Result<(), Invalid> {
    let listeners = &config.smtp_controller.listeners;
    check(
        !listeners.is_empty(),
        "smtp_controller.listeners",
        "at least one listener is required",
    )?;
    for (index, listener) in listeners.iter().enumerate() {
        let duplicate = listeners[..index]
            .iter()
            .any(|other| other.socket == listener.socket && listener.socket.0.port() != 0);
        check(
            !duplicate,
            "smtp_controller.listeners.socket",
            format!("{} is listed twice", listener.socket.0),
        )?;
        validate_server_timeouts(&listener.timeouts)?;
        for extension in &listener.extensions {
            if let Extension::Size(size) = extension {
                check(
                    *size > 0,
                    "smtp_controller.listeners.extensions.size",
                    "must be greater than 0",
                )?;
            }
        }
    }
    check(
        !config.spool.path.as_os_str().is_empty(),
        "spool.path",
        "must not be empty",
    )?;
    validate_delivery(&config.delivery)?;
    dns::validate(&config.dns)?;
    tls::validate(
        &config.delivery.mta_sts,
        &config.delivery.tls_reports,
        &config.delivery.tls_ca_files,
    )?;
    master::validate(config)?;
    for hash in &config.control_auth.token_hashes {
        let is_sha256_hex = hash.len() == 64 && hash.chars().all(|c| c.is_ascii_hexdigit());
        check(
            is_sha256_hex,
            "control_auth.token_hashes",
            format!("{hash:?} is not a SHA-256 hex digest (64 hex digits)"),
        )?;
    }
    dsn::validate(&config.dsn)?;
    smtpd::validate(&config.smtpd)?;
    cleanup::validate(&config.cleanup)?;
    local::validate(&config.local_delivery)?;
    mail_auth::validate(
        &config.smtpd_milters,
        &config.non_smtpd_milters,
        &config.dkim,
        &config.auth,
    )?;
    Ok(())
}

fn validate_server_timeouts(timeouts: &ServerTimeouts) -> Result<(), Invalid> {
    for (key, value) in [
        ("command_secs", timeouts.command_secs),
        ("data_init_secs", timeouts.data_init_secs),
        ("data_block_secs", timeouts.data_block_secs),
        ("data_termination_secs", timeouts.data_termination_secs),
        ("connection_secs", timeouts.connection_secs),
    ] {
        check(
            value > 0,
            &format!("smtp_controller.listeners.timeouts.{key}"),
            "must be greater than 0",
        )?;
    }
    Ok(())
}

fn validate_delivery(delivery: &Delivery) -> Result<(), Invalid> {
    check(
        delivery.scan_interval_secs > 0,
        "delivery.scan_interval_secs",
        "must be greater than 0",
    )?;
    check(
        delivery.process_interval_secs > 0,
        "delivery.process_interval_secs",
        "must be greater than 0",
    )?;
    check(
        delivery.max_attempts > 0,
        "delivery.max_attempts",
        "must be at least 1",
    )?;
    check(
        delivery.base_retry_delay_secs > 0,
        "delivery.base_retry_delay_secs",
        "must be greater than 0",
    )?;
    check(
        delivery.max_retry_delay_secs >= delivery.base_retry_delay_secs,
        "delivery.max_retry_delay_secs",
        "must not be less than base_retry_delay_secs",
    )?;
    check(
        (0.0..=1.0).contains(&delivery.retry_jitter_factor),
        "delivery.retry_jitter_factor",
        "must be between 0.0 and 1.0",
    )?;
    check(
        delivery.max_queue_lifetime_secs > 0,
        "delivery.max_queue_lifetime_secs",
        "must be greater than 0",
    )?;
    check(
        delivery.max_active_messages > 0,
        "delivery.max_active_messages",
        "must be at least 1",
    )?;
    check(
        delivery.max_concurrent_deliveries > 0,
        "delivery.max_concurrent_deliveries",
        "must be at least 1",
    )?;
    let timeouts = &delivery.smtp_timeouts;
    for (key, value) in [
        ("connect_secs", timeouts.connect_secs),
        ("ehlo_secs", timeouts.ehlo_secs),
        ("starttls_secs", timeouts.starttls_secs),
        ("mail_from_secs", timeouts.mail_from_secs),
        ("rcpt_to_secs", timeouts.rcpt_to_secs),
        ("data_secs", timeouts.data_secs),
        ("quit_secs", timeouts.quit_secs),
    ] {
        check(
            value > 0,
            &format!("delivery.smtp_timeouts.{key}"),
            "must be greater than 0",
        )?;
    }
    let rate = &delivery.rate_limit;
    check(
        rate.messages_per_second > 0.0,
        "delivery.rate_limit.messages_per_second",
        "must be greater than 0",
    )?;
    check(
        rate.burst_size > 0,
        "delivery.rate_limit.burst_size",
        "must be at least 1",
    )?;
    for limit in rate.domain_limits.values() {
        check(
            limit.messages_per_second > 0.0,
            "delivery.rate_limit.domain_limits.messages_per_second",
            "must be greater than 0",
        )?;
        check(
            limit.burst_size > 0,
            "delivery.rate_limit.domain_limits.burst_size",
            "must be at least 1",
        )?;
    }
    check(
        delivery.max_concurrency_per_domain > 0,
        "delivery.max_concurrency_per_domain",
        "must be at least 1",
    )?;
    check(
        delivery.smtp_port > 0,
        "delivery.smtp_port",
        "must be a port number from 1 to 65535",
    )?;
    let breaker = &delivery.circuit_breaker;
    check(
        breaker.failure_threshold > 0,
        "delivery.circuit_breaker.failure_threshold",
        "must be at least 1",
    )?;
    check(
        breaker.open_secs > 0,
        "delivery.circuit_breaker.open_secs",
        "must be greater than 0",
    )?;
    for (domain, policy) in &delivery.domains {
        check(
            !domain.trim().is_empty(),
            "delivery.domains",
            "a domain name must not be empty",
        )?;
        check(
            policy.max_concurrency != Some(0),
            "delivery.domains.max_concurrency",
            format!("must be at least 1 (domain {domain:?})"),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("test.ron"), text)
    }

    const MINIMAL: &str = r#"Empath(
    smtp_controller: (listeners: [{ socket: "127.0.0.1:2525" }]),
    spool: (path: "/tmp/empath-spool"),
)"#;

    #[test]
    fn minimal_config_loads_with_defaults() {
        let config = parse(MINIMAL).unwrap();
        assert_eq!(config.smtp_controller.listeners[0].socket.0.port(), 2525);
        assert_eq!(config.delivery.max_attempts, 25);
        assert_eq!(
            config.smtp_controller.listeners[0].timeouts,
            ServerTimeouts::default()
        );
    }

    #[test]
    fn unknown_key_names_the_key_and_its_line() {
        let text = MINIMAL.replace("spool: (path", "spool: (\n  pth: \"x\",\n  path");
        let error = parse(&text).unwrap_err();
        assert_eq!(error.line, Some(4));
        assert!(error.message.contains("pth"), "{error}");
    }

    #[test]
    fn bad_listen_address_names_its_line() {
        let error = parse(&MINIMAL.replace("127.0.0.1:2525", "localhost")).unwrap_err();
        assert_eq!(error.line, Some(2));
        assert!(error.message.contains("invalid listen address"), "{error}");
    }

    #[test]
    fn semantic_error_names_key_and_line() {
        let text = MINIMAL.replace(
            "spool: (path: \"/tmp/empath-spool\"),",
            "spool: (path: \"/tmp/empath-spool\"),\n    delivery: (\n        retry_jitter_factor: 3.0,\n    ),",
        );
        let error = parse(&text).unwrap_err();
        assert_eq!(error.line, Some(5), "{error}");
        assert!(
            error.to_string().contains("delivery.retry_jitter_factor"),
            "{error}"
        );
    }

    #[test]
    fn bad_mx_override_is_reported() {
        let text = MINIMAL.replace(
            "spool: (path: \"/tmp/empath-spool\"),",
            "spool: (path: \"/tmp/empath-spool\"),\n    delivery: (domains: {\"a.example\": (mx_override: \"nohostport\")}),",
        );
        let error = parse(&text).unwrap_err();
        assert_eq!(error.line, Some(4));
        assert!(error.message.contains("invalid host:port"), "{error}");
    }

    #[test]
    fn extensions_parse_in_map_syntax() {
        let text = MINIMAL.replace(
            "{ socket: \"127.0.0.1:2525\" }",
            "{ socket: \"127.0.0.1:2525\", extensions: [{\"size\": 1000}, {\"starttls\": {\"key\": \"/k.pem\", \"certificate\": \"/c.pem\"}}] }",
        );
        let config = parse(&text).unwrap();
        assert_eq!(
            config.smtp_controller.listeners[0].extensions,
            vec![
                Extension::Size(1000),
                Extension::StartTls {
                    key: "/k.pem".into(),
                    certificate: "/c.pem".into()
                }
            ]
        );
    }

    #[test]
    fn a_domain_limit_without_burst_size_gets_twice_its_rate() {
        let text = MINIMAL.replace(
            "spool: (path: \"/tmp/empath-spool\"),",
            "spool: (path: \"/tmp/empath-spool\"),\n    delivery: (rate_limit: (domain_limits: {\n        \"slow.example\": (messages_per_second: 2.5),\n        \"trickle.example\": (messages_per_second: 0.1),\n        \"set.example\": (messages_per_second: 5.0, burst_size: 7),\n    })),",
        );
        let config = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let limits = &config.delivery.rate_limit.domain_limits;
        assert_eq!(limits["slow.example"].burst_size, 5);
        assert_eq!(limits["trickle.example"].burst_size, 1);
        assert_eq!(limits["set.example"].burst_size, 7);
        let typo = text.replace("burst_size: 7", "burst_sise: 7");
        let error = parse(&typo).unwrap_err();
        assert!(error.message.contains("burst_sise"), "{error}");
        assert_eq!(error.line, Some(7), "{error}");
    }

    #[test]
    fn unknown_extension_is_an_error() {
        let text = MINIMAL.replace(
            "{ socket: \"127.0.0.1:2525\" }",
            "{ socket: \"127.0.0.1:2525\", extensions: [{\"sise\": 1}] }",
        );
        let error = parse(&text).unwrap_err();
        assert!(
            error.message.contains("unknown extension `sise`"),
            "{error}"
        );
    }

    #[test]
    fn connection_limit_exceptions_default_to_mynetworks_and_can_be_emptied() {
        let ip = |t: &str| t.parse::<std::net::IpAddr>().unwrap();
        let config = parse(MINIMAL).unwrap();
        assert_eq!(
            config.smtpd.connection_limit_exceptions(),
            config.smtpd.mynetworks.as_slice()
        );
        assert_eq!(config.health.listen_address.0.to_string(), "127.0.0.1:8080");
        let with = |value: &str| {
            MINIMAL.replace(
                "spool: (path: \"/tmp/empath-spool\"),",
                &format!(
                    "spool: (path: \"/tmp/empath-spool\"),\n    smtpd: (mynetworks: [\"10.0.0.0/8\"], {value}),"
                ),
            )
        };
        let own = parse(&with(
            "client_connection_limit_exceptions: [\"192.0.2.0/24\"]",
        ))
        .unwrap();
        let exempt = own.smtpd.connection_limit_exceptions();
        assert!(exempt.iter().any(|n| n.contains(ip("192.0.2.9"))));
        assert!(!exempt.iter().any(|n| n.contains(ip("10.1.2.3"))));
        let inherited = parse(&with("max_errors: 5")).unwrap();
        assert!(
            inherited
                .smtpd
                .connection_limit_exceptions()
                .iter()
                .any(|n| n.contains(ip("10.1.2.3")))
        );
        let none = parse(&with("client_connection_limit_exceptions: []")).unwrap();
        assert!(none.smtpd.connection_limit_exceptions().is_empty());
    }

    #[test]
    fn relative_paths_resolve_against_the_config_files_directory() {
        let text = r#"Empath(
    smtp_controller: (listeners: [{ socket: "127.0.0.1:2525", extensions: [
        {"starttls": {"key": "tls/key.pem", "certificate": "/abs/cert.pem"}}] }]),
    spool: (path: "../var/spool"),
    control_socket: "./ctl.sock",
    daemon_directory: "bin",
    modules: [(type: "SharedLibrary", name: "mods/libx.so")],
    smtpd: (auth: (users_file: "users")),
    local_delivery: (alias_maps: ["aliases"], mailbox_directory: "../var/mail",
                     home_mailbox: "Maildir/"),
    logging: (syslog_socket: "log.sock"),
)"#;
        let config = Config::parse(Path::new("/srv/empath/etc/empath.config.ron"), text)
            .unwrap_or_else(|e| panic!("{e}"));
        let etc = Path::new("/srv/empath/etc");
        assert_eq!(config.spool.path, Path::new("/srv/empath/var/spool"));
        assert_eq!(
            config.control_socket.as_deref(),
            Some(&*etc.join("ctl.sock"))
        );
        assert_eq!(config.daemon_directory.as_deref(), Some(&*etc.join("bin")));
        assert_eq!(config.modules[0].name, etc.join("mods/libx.so"));
        assert_eq!(
            config.smtpd.auth.users_file.as_deref(),
            Some(&*etc.join("users"))
        );
        assert_eq!(config.local_delivery.alias_maps, [etc.join("aliases")]);
        assert_eq!(
            config.local_delivery.mailbox_directory.as_deref(),
            Some(Path::new("/srv/empath/var/mail"))
        );
        // Under each user's home, not this host's.
        assert_eq!(config.local_delivery.home_mailbox, "Maildir/");
        assert_eq!(config.logging.syslog_socket, etc.join("log.sock"));
        let Extension::StartTls { key, certificate } =
            &config.smtp_controller.listeners[0].extensions[0]
        else {
            panic!("starttls expected");
        };
        assert_eq!(key, &etc.join("tls/key.pem"));
        assert_eq!(certificate, Path::new("/abs/cert.pem"));
    }

    #[test]
    fn a_relative_config_path_resolves_against_the_working_directory() {
        let config = parse(&MINIMAL.replace("/tmp/empath-spool", "spool")).unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(config.spool.path, cwd.join("spool"));
    }
}
