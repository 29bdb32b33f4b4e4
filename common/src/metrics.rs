//! Every metric of the system, defined once, under the names the alert
//! rules and runbooks use (`etc/prometheus-alerts.yml`).
//!
//! Each daemon updates its own values in this process-wide registry with
//! one-line calls (`metrics::get().smtp_messages_received_total.inc()`).
//! empath-anvil serves `/metrics` for the whole system: it asks every
//! daemon for a [`Snapshot`] of its values over a Unix socket in
//! `private/metrics/` ([`exporter`]), adds them up (several smtpd
//! processes are summed, and the counters of processes that are gone are
//! carried on) and renders the Prometheus text format
//! ([`snapshot::render`]). The `empath_process_*` series come from the
//! master's status file instead (see `empath-anvil`).
//!
//! Domain labels are capped: past `metrics.max_domain_cardinality`
//! distinct domains, new ones are counted under `other`, except the
//! `metrics.high_priority_domains`, which always keep their own label.

pub mod exporter;
pub mod otlp;
pub mod snapshot;
pub mod spool;

use std::collections::HashSet;
use std::sync::{LazyLock, Mutex, OnceLock};

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

pub use snapshot::{Family, Kind, Sample, Snapshot, Value};

/// The label value that domains past the cardinality cap share.
pub const OTHER_DOMAIN: &str = "other";

/// The `status` label of `empath_delivery_attempts_total`.
pub mod status {
    pub const DELIVERED: &str = "delivered";
    pub const DEFERRED: &str = "deferred";
    pub const FAILED: &str = "failed";
}

/// A circuit breaker's state, as `empath_delivery_circuit_breaker_state`
/// shows it: the value (0 closed, 1 open, 2 half-open) and the `state`
/// label name it, so that both `== 1` and `{state="Open"}` find open ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    const ALL: [Self; 3] = [Self::Closed, Self::Open, Self::HalfOpen];

    fn label(self) -> &'static str {
        match self {
            Self::Closed => "Closed",
            Self::Open => "Open",
            Self::HalfOpen => "HalfOpen",
        }
    }

    fn value(self) -> i64 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
        }
    }
}

/// The metrics a daemon may update. Each daemon only touches its own.
pub struct Metrics {
    registry: Registry,
    /// Every family, so that a snapshot names the labelled ones too
    /// before their first sample (the registry leaves those out).
    declared: Vec<(String, String, Kind)>,
    // smtpd
    pub smtp_connections_total: IntCounter,
    pub smtp_connections_active: IntGauge,
    pub smtp_connection_errors_total: IntCounter,
    pub smtp_messages_received_total: IntCounter,
    // smtp-out
    delivery_attempts_total: IntCounterVec,
    pub dns_cache_hits_total: IntCounter,
    pub dns_cache_misses_total: IntCounter,
    pub dns_cache_evictions_total: IntCounter,
    pub dns_lookup_duration_seconds: Histogram,
    // qmgr
    delivery_retry_count: Histogram,
    delivery_rate_limited_total: IntCounterVec,
    delivery_rate_limit_delay_seconds: HistogramVec,
    delivery_circuit_breaker_state: IntGaugeVec,
    delivery_circuit_breaker_trips_total: IntCounterVec,
    pub delivery_queue_age_seconds: Histogram,
    pub delivery_retries_total: IntCounter,
}

/// Buckets for the age of a message when it leaves the queue: from a
/// second to five days.
const QUEUE_AGE_BUCKETS: [f64; 16] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 14_400.0, 43_200.0,
    86_400.0, 432_000.0,
];
/// Buckets for one DNS lookup.
const DNS_BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];
/// Buckets for the attempts a recipient needed before it was delivered.
const RETRY_BUCKETS: [f64; 10] = [0.0, 1.0, 2.0, 3.0, 5.0, 8.0, 12.0, 17.0, 25.0, 50.0];
/// Buckets for how long a rate limit holds a delivery back.
const DELAY_BUCKETS: [f64; 9] = [0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0];

impl Metrics {
    fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let declared = std::cell::RefCell::new(Vec::new());
        let declare = |name: &str, help: &str, kind: Kind| {
            declared
                .borrow_mut()
                .push((name.to_owned(), help.to_owned(), kind));
        };
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            declare(name, help, Kind::Counter);
            let metric = IntCounter::new(name, help)?;
            registry.register(Box::new(metric.clone()))?;
            Ok(metric)
        };
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            declare(name, help, Kind::Gauge);
            let metric = IntGauge::new(name, help)?;
            registry.register(Box::new(metric.clone()))?;
            Ok(metric)
        };
        let counters =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
                declare(name, help, Kind::Counter);
                let metric = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(metric.clone()))?;
                Ok(metric)
            };
        let gauges =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntGaugeVec, prometheus::Error> {
                declare(name, help, Kind::Gauge);
                let metric = IntGaugeVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(metric.clone()))?;
                Ok(metric)
            };
        let histogram =
            |name: &str, help: &str, buckets: &[f64]| -> Result<Histogram, prometheus::Error> {
                declare(name, help, Kind::Histogram);
                let metric =
                    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))?;
                registry.register(Box::new(metric.clone()))?;
                Ok(metric)
            };
        let histograms = |name: &str,
                          help: &str,
                          buckets: &[f64],
                          labels: &[&str]|
         -> Result<HistogramVec, prometheus::Error> {
            declare(name, help, Kind::Histogram);
            let metric = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                labels,
            )?;
            registry.register(Box::new(metric.clone()))?;
            Ok(metric)
        };
        let mut metrics = Self {
            declared: Vec::new(),
            smtp_connections_total: counter(
                "empath_smtp_connections_total",
                "SMTP connections accepted.",
            )?,
            smtp_connections_active: gauge(
                "empath_smtp_connections_active",
                "SMTP sessions in progress.",
            )?,
            smtp_connection_errors_total: counter(
                "empath_smtp_connection_errors_total",
                "SMTP sessions that ended with an I/O error or a timeout.",
            )?,
            smtp_messages_received_total: counter(
                "empath_smtp_messages_received_total",
                "Messages accepted with 250 after a durable queue write.",
            )?,
            delivery_attempts_total: counters(
                "empath_delivery_attempts_total",
                "Delivery attempts per recipient, by outcome (delivered, deferred, failed), domain and the SMTP reply code.",
                &["status", "domain", "smtp_code"],
            )?,
            dns_cache_hits_total: counter(
                "empath_dns_cache_hits_total",
                "DNS lookups answered from the cache.",
            )?,
            dns_cache_misses_total: counter(
                "empath_dns_cache_misses_total",
                "DNS lookups that had to ask a name server.",
            )?,
            dns_cache_evictions_total: counter(
                "empath_dns_cache_evictions_total",
                "DNS cache entries dropped to make room.",
            )?,
            dns_lookup_duration_seconds: histogram(
                "empath_dns_lookup_duration_seconds",
                "Time spent asking name servers, per lookup.",
                &DNS_BUCKETS,
            )?,
            delivery_rate_limited_total: counters(
                "empath_delivery_rate_limited_total",
                "Deliveries held back by a rate limit, by domain.",
                &["domain"],
            )?,
            delivery_rate_limit_delay_seconds: histograms(
                "empath_delivery_rate_limit_delay_seconds",
                "How long a rate limit held a delivery back, by domain.",
                &DELAY_BUCKETS,
                &["domain"],
            )?,
            delivery_retry_count: histogram(
                "empath_delivery_retry_count",
                "Earlier attempts a recipient needed before it was delivered (0: the first attempt worked).",
                &RETRY_BUCKETS,
            )?,
            delivery_circuit_breaker_state: gauges(
                "empath_delivery_circuit_breaker_state",
                "Circuit breaker per domain: 0 closed, 1 open, 2 half-open (also in the state label).",
                &["domain", "state"],
            )?,
            delivery_circuit_breaker_trips_total: counters(
                "empath_delivery_circuit_breaker_trips_total",
                "Times a domain's circuit breaker opened.",
                &["domain"],
            )?,
            delivery_queue_age_seconds: histogram(
                "empath_delivery_queue_age_seconds",
                "Time from arrival until a message left the queue (delivered or bounced).",
                &QUEUE_AGE_BUCKETS,
            )?,
            delivery_retries_total: counter(
                "empath_delivery_retries_total",
                "Messages deferred for another attempt.",
            )?,
            registry,
        };
        metrics.declared = declared.take();
        Ok(metrics)
    }

    /// Counts one delivery attempt for one recipient, with the reply code
    /// that decided it.
    pub fn delivery_attempt(&self, status: &str, domain: &str, smtp_code: u16) {
        self.delivery_attempts_total
            .with_label_values(&[status, &domain_label(domain), &smtp_code.to_string()])
            .inc();
    }

    /// A recipient was delivered after `earlier_attempts` attempts that
    /// did not deliver it.
    pub fn delivered_after(&self, earlier_attempts: u32) {
        self.delivery_retry_count
            .observe(f64::from(earlier_attempts));
    }

    /// Counts a delivery that a rate limit held back for `delay_secs`.
    pub fn rate_limited(&self, domain: &str, delay_secs: f64) {
        let domain = domain_label(domain);
        self.delivery_rate_limited_total
            .with_label_values(&[&domain])
            .inc();
        self.delivery_rate_limit_delay_seconds
            .with_label_values(&[&domain])
            .observe(delay_secs);
    }

    /// Records a domain's circuit breaker state; opening counts a trip.
    pub fn circuit_breaker(&self, domain: &str, state: BreakerState) {
        let domain = domain_label(domain);
        for other in BreakerState::ALL {
            if other != state {
                let _ = self
                    .delivery_circuit_breaker_state
                    .remove_label_values(&[&domain, other.label()]);
            }
        }
        self.delivery_circuit_breaker_state
            .with_label_values(&[&domain, state.label()])
            .set(state.value());
        if state == BreakerState::Open {
            self.delivery_circuit_breaker_trips_total
                .with_label_values(&[&domain])
                .inc();
        }
    }

    /// This process's current values, with the standard `process_*`
    /// metrics and `empath_build_info` labelled by daemon, and the seeds'
    /// other names for some of them ([`SEED_NAMES`]).
    pub fn snapshot(&self) -> Snapshot {
        let mut snapshot = Snapshot::from_families(&self.registry.gather());
        snapshot.families.extend(process_families());
        for (name, help, kind) in &self.declared {
            if !snapshot.families.iter().any(|f| &f.name == name) {
                snapshot.families.push(Family {
                    name: name.clone(),
                    help: help.clone(),
                    kind: *kind,
                    samples: Vec::new(),
                });
            }
        }
        let copies: Vec<Family> = SEED_NAMES
            .iter()
            .filter_map(|(seed_name, ours)| {
                let family = snapshot.families.iter().find(|f| f.name == *ours)?;
                Some(Family {
                    name: (*seed_name).to_owned(),
                    help: format!("{} (the seeds' name for {ours})", family.help),
                    ..family.clone()
                })
            })
            .collect();
        snapshot.families.extend(copies);
        snapshot
    }
}

/// Metrics that the seeds' architecture document names differently from
/// their alert runbooks, exported under both names (seed name, our name)
/// so that the queries of either find them. The runbooks' names are ours.
pub const SEED_NAMES: [(&str, &str); 4] = [
    ("empath_connections_total", "empath_smtp_connections_total"),
    (
        "empath_messages_received",
        "empath_smtp_messages_received_total",
    ),
    ("dns_cache_hits", "empath_dns_cache_hits_total"),
    ("dns_cache_misses", "empath_dns_cache_misses_total"),
];

/// The definitions are constants, so building the registry only fails on
/// a programming error (a duplicate or malformed name), which the unit
/// tests rule out.
static METRICS: LazyLock<Metrics> = LazyLock::new(|| match Metrics::new() {
    Ok(metrics) => metrics,
    Err(error) => {
        eprintln!("empath: invalid metric definitions: {error}");
        std::process::abort()
    }
});

/// The process-wide metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

/// The daemon this process is (`empath-smtpd`, ..., `empath` for the
/// master): the `daemon` label of its process metrics.
static DAEMON: OnceLock<String> = OnceLock::new();

/// Names this process for its process metrics. Called once at start.
pub fn set_daemon(name: &str) {
    let _ = DAEMON.set(name.to_owned());
}

/// `process_cpu_seconds_total`, `process_resident_memory_bytes`,
/// `process_open_fds`, ... (the prometheus crate's process collector,
/// from /proc) and `empath_build_info`, each with a `daemon` label, so
/// that the master's merged `/metrics` keeps every daemon apart (several
/// processes of one daemon add up).
fn process_families() -> Vec<Family> {
    use prometheus::core::Collector;
    let daemon = DAEMON.get().map_or("empath", String::as_str);
    let collector = prometheus::process_collector::ProcessCollector::for_self();
    let mut families = Snapshot::from_families(&collector.collect()).families;
    families.push(Family {
        name: "empath_build_info".into(),
        help: "1 for each process of each daemon, labelled with the version it was built from."
            .into(),
        kind: Kind::Gauge,
        samples: vec![Sample {
            labels: vec![("version".into(), env!("CARGO_PKG_VERSION").into())],
            value: Value::Scalar(1.0),
        }],
    });
    for family in &mut families {
        for sample in &mut family.samples {
            sample.labels.push(("daemon".into(), daemon.to_owned()));
            sample.labels.sort();
        }
    }
    families
}

/// Which domains keep their own label.
struct DomainLabels {
    max: usize,
    high_priority: HashSet<String>,
    seen: Mutex<HashSet<String>>,
}

static DOMAIN_LABELS: OnceLock<DomainLabels> = OnceLock::new();

/// Applies the `metrics` config section (domain cardinality). Called once
/// at daemon start; later calls are ignored.
pub fn configure(config: &crate::config::Metrics) {
    let _ = DOMAIN_LABELS.set(DomainLabels {
        max: config.max_domain_cardinality,
        high_priority: config
            .high_priority_domains
            .iter()
            .map(|d| d.to_ascii_lowercase())
            .collect(),
        seen: Mutex::new(HashSet::new()),
    });
}

/// The label for `domain`: itself, or [`OTHER_DOMAIN`] once the cap is
/// reached by other domains.
pub fn domain_label(domain: &str) -> String {
    let domain = domain.to_ascii_lowercase();
    let Some(labels) = DOMAIN_LABELS.get() else {
        return domain;
    };
    if labels.high_priority.contains(&domain) {
        return domain;
    }
    let Ok(mut seen) = labels.seen.lock() else {
        return OTHER_DOMAIN.to_owned();
    };
    if seen.contains(&domain) {
        return domain;
    }
    if seen.len() < labels.max {
        seen.insert(domain.clone());
        return domain;
    }
    OTHER_DOMAIN.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_registers_under_a_distinct_name() {
        let metrics = Metrics::new().expect("valid metric definitions");
        metrics.smtp_connections_total.inc();
        metrics.delivery_attempt(status::DELIVERED, "a.example", 250);
        metrics.circuit_breaker("b.example", BreakerState::Open);
        metrics.circuit_breaker("b.example", BreakerState::HalfOpen);
        let snapshot = metrics.snapshot();
        let family = |name: &str| {
            snapshot
                .families
                .iter()
                .find(|f| f.name == name)
                .unwrap_or_else(|| panic!("{name} missing"))
        };
        assert_eq!(
            family("empath_smtp_connections_total").samples[0].value,
            Value::Scalar(1.0)
        );
        let breaker = family("empath_delivery_circuit_breaker_state");
        assert_eq!(
            breaker.samples.len(),
            1,
            "one series per domain: {breaker:?}"
        );
        assert_eq!(breaker.samples[0].value, Value::Scalar(2.0));
        assert!(
            breaker.samples[0]
                .labels
                .contains(&("state".into(), "HalfOpen".into()))
        );
        let trips = family("empath_delivery_circuit_breaker_trips_total");
        assert_eq!(trips.samples[0].value, Value::Scalar(1.0));
        let attempts = family("empath_delivery_attempts_total");
        assert!(
            attempts.samples[0]
                .labels
                .contains(&("smtp_code".into(), "250".into())),
            "{attempts:?}"
        );
        for (seed_name, ours) in SEED_NAMES {
            assert_eq!(
                family(seed_name).samples,
                family(ours).samples,
                "{seed_name}"
            );
            assert_eq!(family(seed_name).kind, family(ours).kind, "{seed_name}");
        }
    }

    #[test]
    fn domains_past_the_cap_are_labelled_other_except_high_priority() {
        configure(&crate::config::Metrics {
            max_domain_cardinality: 2,
            high_priority_domains: vec!["vip.example".into()],
            ..crate::config::Metrics::default()
        });
        assert_eq!(domain_label("one.example"), "one.example");
        assert_eq!(domain_label("TWO.example"), "two.example");
        assert_eq!(domain_label("three.example"), OTHER_DOMAIN);
        assert_eq!(domain_label("one.example"), "one.example");
        assert_eq!(domain_label("vip.example"), "vip.example");
    }
}
