//! The configuration model: one struct per RON section.
//!
//! Sections and keys from the user's documents (`smtp_controller`, `spool`,
//! `delivery`, `rate_limit`, `domains`, `control_socket`, `control_auth`,
//! `metrics`, `health`, `dsn`, `modules`) load unchanged. Keys that only make
//! sense for the multi-process design (`hostname`, `daemon_directory`,
//! `delivery.max_concurrent_deliveries`, ...) are additions. Every struct
//! denies unknown keys, so a typo is an error that names the key and its line.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::cleanup::Cleanup;
use super::dns::Dns;
use super::dsn::Dsn;
use super::local::LocalDelivery;
use super::mail_auth::{Auth, Dkim, Milter};
use super::master::Supervisor;
use super::smtpd::Smtpd;
use super::tls::{MtaSts, SecurityLevel, TlsReports};
use super::values::{DomainTransport, Extension, HostPort, ListenAddr, Listener};

/// The whole `Empath( ... )` document.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empath {
    /// Host name used in the banner, `Received:` headers and EHLO.
    /// Defaults to the system host name.
    #[serde(default)]
    pub hostname: Option<String>,
    pub smtp_controller: SmtpController,
    /// Server-side policy of the multi-process design (not in the seeds).
    #[serde(default)]
    pub smtpd: Smtpd,
    #[serde(default)]
    pub modules: Vec<Module>,
    pub spool: Spool,
    #[serde(default)]
    pub delivery: Delivery,
    /// How smtp-out resolves MX and address records.
    #[serde(default)]
    pub dns: Dns,
    #[serde(default)]
    pub control_socket: Option<PathBuf>,
    /// Members of this group may use the control socket (besides root and
    /// the mail system's user).
    #[serde(default)]
    pub control_group: Option<String>,
    #[serde(default)]
    pub control_auth: ControlAuth,
    #[serde(default)]
    pub metrics: Metrics,
    #[serde(default)]
    pub health: Health,
    #[serde(default)]
    pub dsn: Dsn,
    /// What cleanup checks in every message.
    #[serde(default)]
    pub cleanup: Cleanup,
    /// Local delivery: this host's domains, aliases, mailboxes.
    #[serde(default)]
    pub local_delivery: LocalDelivery,
    /// Where the master finds the daemon executables. Defaults to the
    /// directory that holds the `empath` executable itself.
    #[serde(default)]
    pub daemon_directory: Option<PathBuf>,
    /// The user the daemons run as when the master starts as root
    /// (default `empath`).
    #[serde(default)]
    pub user: Option<String>,
    /// The daemons' group (default: the user's login group).
    #[serde(default)]
    pub group: Option<String>,
    /// Let the daemons run as root. Off: a root master refuses to.
    #[serde(default)]
    pub allow_root: bool,
    /// How long a graceful stop (SIGTERM) may take before the daemons
    /// still running are killed.
    #[serde(default = "super::master::default_shutdown_timeout_secs")]
    pub shutdown_timeout_secs: u64,
    /// How dead daemons are restarted and crash loops throttled.
    #[serde(default)]
    pub supervisor: Supervisor,
    /// Milters for mail that arrives over SMTP, in the order they run.
    #[serde(default)]
    pub smtpd_milters: Vec<Milter>,
    /// Milters for mail from `sendmail` (local submission and the drop
    /// directory).
    #[serde(default)]
    pub non_smtpd_milters: Vec<Milter>,
    /// DKIM signing of outgoing mail.
    #[serde(default)]
    pub dkim: Dkim,
    /// SPF, DKIM, DMARC and ARC checks of incoming mail.
    #[serde(default)]
    pub auth: Auth,
    /// Where log lines go and how much is logged.
    #[serde(default)]
    pub logging: Logging,
}

/// The `logging` section. The format (human, JSON or syslog) is the
/// master's `--log-format`, which every daemon inherits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Logging {
    /// The local syslog socket (`--log-format syslog`). When it cannot
    /// be reached, lines go to standard error instead (never dropped).
    pub syslog_socket: PathBuf,
    /// The first part of each syslog tag (`empath/smtpd`), as Postfix's
    /// `syslog_name`: give each instance on one host its own.
    pub syslog_name: String,
    /// The level filter (`error`, `warn`, `info`, `debug`, `trace`, or
    /// `tracing` directives such as `info,empath_smtpd=debug`). The
    /// `RUST_LOG` environment variable overrides it, then `LOG_LEVEL`.
    pub level: String,
}

impl Default for Logging {
    fn default() -> Self {
        Self {
            syslog_socket: PathBuf::from("/dev/log"),
            syslog_name: "empath".to_owned(),
            level: "info".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpController {
    pub listeners: Vec<Listener>,
}

/// Server-side timeouts of one listener (RFC 5321 section 4.5.3.2).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerTimeouts {
    pub command_secs: u64,
    pub data_init_secs: u64,
    pub data_block_secs: u64,
    pub data_termination_secs: u64,
    pub connection_secs: u64,
}

impl Default for ServerTimeouts {
    fn default() -> Self {
        Self {
            command_secs: 300,
            data_init_secs: 120,
            data_block_secs: 180,
            data_termination_secs: 600,
            connection_secs: 1800,
        }
    }
}

/// Fields of a listener, in either `( ... )` or `{ ... }` syntax.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerFields {
    pub socket: ListenAddr,
    #[serde(default)]
    pub context: BTreeMap<String, String>,
    #[serde(default)]
    pub timeouts: ServerTimeouts,
    #[serde(default)]
    pub extensions: Vec<Extension>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Module {
    #[serde(rename = "type")]
    pub kind: ModuleKind,
    pub name: PathBuf,
    #[serde(default)]
    pub arguments: Vec<String>,
}

/// The kind of a module; written as a string (`type: "SharedLibrary"`).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub enum ModuleKind {
    SharedLibrary,
}

impl TryFrom<String> for ModuleKind {
    type Error = String;
    fn try_from(kind: String) -> Result<Self, String> {
        match kind.as_str() {
            "SharedLibrary" => Ok(Self::SharedLibrary),
            other => Err(format!(
                "unknown module type {other:?}, expected \"SharedLibrary\""
            )),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spool {
    pub path: PathBuf,
}

/// Outbound delivery: scheduling, retries, client timeouts, per-domain policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Delivery {
    /// How often qmgr rescans `incoming/` in case a notification was lost.
    pub scan_interval_secs: u64,
    /// How often qmgr looks for deferred messages whose retry time is due.
    pub process_interval_secs: u64,
    pub max_attempts: u32,
    pub base_retry_delay_secs: u64,
    pub max_retry_delay_secs: u64,
    pub retry_jitter_factor: f64,
    /// How long a message may stay queued before it expires and bounces.
    pub max_queue_lifetime_secs: u64,
    pub accept_invalid_certs: bool,
    pub smtp_timeouts: ClientTimeouts,
    pub domains: BTreeMap<String, DomainPolicy>,
    pub rate_limit: RateLimit,
    /// Upper bound on messages held in `active/` at once.
    pub max_active_messages: usize,
    /// Upper bound on simultaneous outbound SMTP transactions.
    pub max_concurrent_deliveries: usize,
    /// Upper bound on simultaneous transactions to one domain, unless the
    /// domain's `max_concurrency` says otherwise.
    pub max_concurrency_per_domain: usize,
    /// The port of MX hosts (25; tests point it elsewhere).
    pub smtp_port: u16,
    /// How long an idle outbound connection is kept for the next message
    /// to the same host; 0 closes it after each transaction.
    pub connection_idle_secs: u64,
    pub circuit_breaker: CircuitBreaker,
    /// TLS for destinations that publish no DANE or MTA-STS policy.
    pub tls_security_level: SecurityLevel,
    /// PEM files of certificates trusted besides the web PKI roots, for
    /// `verify`, MTA-STS and the policy fetch (e.g. a private CA).
    pub tls_ca_files: Vec<PathBuf>,
    pub mta_sts: MtaSts,
    pub tls_reports: TlsReports,
}

impl Delivery {
    /// The configured TLS level for `domain` (what applies when the domain
    /// publishes no DANE or MTA-STS policy), with `require_tls` and
    /// `accept_invalid_certs` mapped onto it.
    pub fn tls_level(&self, domain: &str) -> SecurityLevel {
        let policy = self.domains.get(domain);
        super::tls::effective_level(
            self.tls_security_level,
            policy.and_then(|p| p.tls_security_level),
            policy.is_some_and(|p| p.require_tls),
            policy
                .and_then(|p| p.accept_invalid_certs)
                .unwrap_or(self.accept_invalid_certs),
        )
    }

    /// `(domain, host:port)` of every domain with an `mx_override`, in
    /// domain order: what `empathctl dns list-overrides` shows.
    pub fn mx_overrides(&self) -> Vec<(String, String)> {
        self.domains
            .iter()
            .filter_map(|(domain, policy)| {
                policy
                    .mx_override
                    .as_ref()
                    .map(|target| (domain.clone(), target.to_string()))
            })
            .collect()
    }
}

impl Default for Delivery {
    fn default() -> Self {
        Self {
            scan_interval_secs: 30,
            process_interval_secs: 10,
            max_attempts: 25,
            base_retry_delay_secs: 60,
            max_retry_delay_secs: 86_400,
            retry_jitter_factor: 0.2,
            max_queue_lifetime_secs: 5 * 86_400,
            accept_invalid_certs: false,
            smtp_timeouts: ClientTimeouts::default(),
            domains: BTreeMap::new(),
            rate_limit: RateLimit::default(),
            max_active_messages: 1000,
            max_concurrent_deliveries: 20,
            max_concurrency_per_domain: 10,
            smtp_port: 25,
            connection_idle_secs: 5,
            circuit_breaker: CircuitBreaker::default(),
            tls_security_level: SecurityLevel::default(),
            tls_ca_files: Vec::new(),
            mta_sts: MtaSts::default(),
            tls_reports: TlsReports::default(),
        }
    }
}

/// Per-phase timeouts of the outbound SMTP client.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ClientTimeouts {
    pub connect_secs: u64,
    pub ehlo_secs: u64,
    pub starttls_secs: u64,
    pub mail_from_secs: u64,
    pub rcpt_to_secs: u64,
    pub data_secs: u64,
    pub quit_secs: u64,
}

impl Default for ClientTimeouts {
    fn default() -> Self {
        Self {
            connect_secs: 30,
            ehlo_secs: 30,
            starttls_secs: 30,
            mail_from_secs: 30,
            rcpt_to_secs: 30,
            data_secs: 120,
            quit_secs: 10,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DomainPolicy {
    /// Deliver to this `host:port` instead of looking up MX records.
    pub mx_override: Option<HostPort>,
    /// Overrides `delivery.accept_invalid_certs` for this domain.
    pub accept_invalid_certs: Option<bool>,
    /// Defer rather than deliver without STARTTLS and a valid certificate:
    /// the `verify` level, unless `tls_security_level` is set.
    pub require_tls: bool,
    /// Overrides `delivery.tls_security_level` for this domain.
    pub tls_security_level: Option<SecurityLevel>,
    /// Overrides `delivery.max_concurrency_per_domain` for this domain.
    pub max_concurrency: Option<usize>,
    /// Deliver over LMTP (`"lmtp:unix:/path"`, `"lmtp:inet:host:port"`),
    /// e.g. to Dovecot for a virtual mailbox domain, instead of SMTP to
    /// the MX hosts (and instead of empath-local for a local domain).
    pub transport: Option<DomainTransport>,
}

/// Per-domain circuit breaker: after `failure_threshold` consecutive
/// failed attempts (connection errors, temporary failures of the whole
/// transaction) the domain is not contacted for `open_secs`; then one
/// attempt is let through, and its success closes the breaker again.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitBreaker {
    pub enabled: bool,
    pub failure_threshold: u32,
    pub open_secs: u64,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        Self {
            enabled: true,
            failure_threshold: 5,
            open_secs: 300,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimit {
    pub messages_per_second: f64,
    pub burst_size: u32,
    pub domain_limits: BTreeMap<String, DomainRateLimit>,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            messages_per_second: 10.0,
            burst_size: 20,
            domain_limits: BTreeMap::new(),
        }
    }
}

/// A domain's own rate. `burst_size` may be left out (the alert runbook's
/// example does): it is then twice the rate, the guide's rule of thumb,
/// and at least 1.
#[derive(Debug, Clone, Deserialize)]
#[serde(from = "DomainRateLimitFields")]
pub struct DomainRateLimit {
    pub messages_per_second: f64,
    pub burst_size: u32,
}

/// `DomainRateLimit` as written, before `burst_size` gets its default.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DomainRateLimitFields {
    messages_per_second: f64,
    #[serde(default)]
    burst_size: Option<u32>,
}

impl From<DomainRateLimitFields> for DomainRateLimit {
    fn from(fields: DomainRateLimitFields) -> Self {
        let burst_size = fields.burst_size.unwrap_or_else(|| {
            // A saturating cast: NaN and negative rates give 0 (then 1),
            // and validation rejects them anyway.
            ((fields.messages_per_second * 2.0).ceil() as u32).max(1)
        });
        Self {
            messages_per_second: fields.messages_per_second,
            burst_size,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlAuth {
    pub enabled: bool,
    pub token_hashes: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Metrics {
    pub enabled: bool,
    /// Where to push the metrics over OTLP/HTTP (the full URL, as
    /// `http://otel-collector:4318/v1/metrics`); by default the
    /// `OTEL_EXPORTER_OTLP_*` environment decides (see `metrics::otlp`).
    pub endpoint: Option<String>,
    pub max_domain_cardinality: usize,
    pub high_priority_domains: Vec<String>,
    /// Sent to the OTLP collector as `Authorization: Bearer <key>`;
    /// `"$ENV:NAME"` reads it from the environment variable NAME.
    pub api_key: Option<String>,
    /// When set, `/metrics` answers only requests with
    /// `Authorization: Bearer <scrape_token>` (Prometheus's
    /// `authorization: { credentials: ... }`). Not in the seeds, where
    /// `/metrics` is open.
    pub scrape_token: Option<String>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            enabled: true,
            endpoint: None,
            max_domain_cardinality: 1000,
            high_priority_domains: Vec::new(),
            api_key: None,
            scrape_token: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Health {
    pub enabled: bool,
    pub listen_address: ListenAddr,
    pub max_queue_size: u64,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            enabled: true,
            // Loopback unless the operator opens it up: the endpoints
            // need no authentication (seeds: `[::]:8080`).
            listen_address: ListenAddr::loopback(8080),
            max_queue_size: 10_000,
        }
    }
}
