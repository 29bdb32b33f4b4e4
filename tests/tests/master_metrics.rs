//! `/metrics` and `/health`: the master's HTTP listener reports the whole
//! system. The exposition must parse with the reference Prometheus parser
//! (Python's prometheus_client) and its counters must equal the traffic.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::time::Duration;

use empath_tests::mail;
use empath_tests::master::http_get;
use empath_tests::{Empath, Sink, SmtpSend, TestConfig};

const SENDER: &str = "sender@client.test";
const MESSAGES_PER_DOMAIN: usize = 10;
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(120);

/// Every metric the alert rules and runbooks query
/// (etc/prometheus-alerts.yml, seeds/ALERT_RUNBOOKS.md), as exported
/// before any traffic. (The rate-limit delay is labelled by domain, so it
/// has samples only once a domain was held back; its `# TYPE` is checked
/// below.)
const ALWAYS_EXPORTED: [&str; 20] = [
    "empath_spool_available_bytes",
    "empath_spool_filesystem_size_bytes",
    "empath_build_info",
    "process_resident_memory_bytes",
    "empath_spool_size_bytes",
    "empath_smtp_connections_total",
    "empath_smtp_connections_active",
    "empath_smtp_connection_errors_total",
    "empath_smtp_messages_received_total",
    "empath_delivery_queue_size",
    "empath_delivery_queue_oldest_seconds",
    "empath_delivery_queue_age_seconds_bucket",
    "empath_delivery_retries_total",
    "empath_dns_cache_hits_total",
    "empath_dns_cache_misses_total",
    "empath_dns_cache_evictions_total",
    "empath_dns_lookup_duration_seconds_sum",
    "empath_dns_lookup_duration_seconds_count",
    "empath_process_up",
    "empath_process_restarts_total",
];

#[test]
fn metrics_parse_and_count_the_traffic_with_domain_labels_capped() {
    let sink = Sink::start();
    // No domain gets its own label except the high-priority one: the
    // others are counted as "other".
    let empath = Empath::start(
        TestConfig::new()
            .with_health()
            .mx_override("sink.test", sink.addr())
            .mx_override("vip.test", sink.addr())
            .section(
                "metrics",
                "(max_domain_cardinality: 0, high_priority_domains: [\"vip.test\"])",
            ),
    );
    let before = empath.metrics();
    for name in ALWAYS_EXPORTED {
        assert!(
            before.names().iter().any(|n| n == name),
            "{name} is not exported; got {:?}",
            before.names()
        );
    }
    assert_eq!(
        before.get("empath_smtp_messages_received_total", &[]),
        Some(0.0)
    );
    every_metric_of_the_alert_rules_is_declared(&empath);

    for (index, domain) in ["sink.test", "vip.test"].into_iter().enumerate() {
        let to = format!("user@{domain}");
        let messages = mail::generate(MESSAGES_PER_DOMAIN, SENDER, &[&to]);
        let outbox =
            mail::write_eml_files(&empath.dir().join(format!("outbox-{index}")), &messages);
        SmtpSend::new(empath.smtp_addr(), SENDER, &[&to], &outbox)
            .run()
            .assert_all_accepted(MESSAGES_PER_DOMAIN, || empath.log_tail());
    }
    let total = 2 * MESSAGES_PER_DOMAIN;
    if let Err(got) = sink.wait_for_messages(total, DELIVERY_TIMEOUT) {
        panic!(
            "the sink got {got} of {total} messages\n{}",
            empath.log_tail()
        );
    }
    empath.wait_queue_empty(Duration::from_secs(60));

    // qmgr counts the attempt right after the queue file is updated: poll
    // until the scrape has caught up with the sink, then compare exactly.
    let after = empath.wait_until("the delivery counters", Duration::from_secs(30), || {
        let samples = empath.metrics();
        let delivered = samples.sum("empath_delivery_attempts_total", &[("status", "delivered")]);
        let active = samples.get("empath_smtp_connections_active", &[]);
        if delivered >= total as f64 && active == Some(0.0) {
            Ok(samples)
        } else {
            Err(format!(
                "{delivered} delivered attempts, {active:?} active sessions"
            ))
        }
    });
    let count = |name: &str, labels: &[(&str, &str)]| after.get(name, labels);
    assert_eq!(
        count("empath_smtp_messages_received_total", &[]),
        Some(total as f64)
    );
    // One connection per client run (smtplib reuses its connection).
    assert_eq!(count("empath_smtp_connections_total", &[]), Some(2.0));
    let per_domain = MESSAGES_PER_DOMAIN as f64;
    let attempts = |domain: &str| {
        count(
            "empath_delivery_attempts_total",
            &[
                ("status", "delivered"),
                ("domain", domain),
                ("smtp_code", "250"),
            ],
        )
    };
    assert_eq!(
        attempts("vip.test"),
        Some(per_domain),
        "the high-priority domain keeps its label"
    );
    assert_eq!(
        attempts("other"),
        Some(per_domain),
        "domains past max_domain_cardinality are counted as \"other\""
    );
    assert_eq!(
        after.sum("empath_delivery_attempts_total", &[("domain", "sink.test")]),
        0.0
    );
    assert_eq!(
        after.sum("empath_delivery_attempts_total", &[("status", "failed")]),
        0.0
    );
    assert_eq!(
        count("empath_delivery_queue_age_seconds_count", &[]),
        Some(total as f64)
    );
    for status in ["pending", "active", "deferred", "held"] {
        assert_eq!(
            count("empath_delivery_queue_size", &[("status", status)]),
            Some(0.0),
            "{status}"
        );
    }
    for daemon in empath_tests::DAEMONS {
        assert_eq!(
            count("empath_process_up", &[("daemon", daemon)]),
            Some(1.0),
            "{daemon}"
        );
        // Each daemon's own process metrics and build, apart.
        assert_eq!(
            count(
                "empath_build_info",
                &[("daemon", daemon), ("version", env!("CARGO_PKG_VERSION"))]
            ),
            Some(1.0),
            "{daemon}"
        );
        assert!(
            count("process_resident_memory_bytes", &[("daemon", daemon)]).is_some_and(|b| b > 0.0),
            "{daemon} has no process metrics"
        );
    }
    // The spool's size is what the queue holds (empty now: a few
    // kilobytes at most), not its filesystem's.
    let spool = count("empath_spool_size_bytes", &[]).expect("spool size");
    let filesystem = count("empath_spool_filesystem_size_bytes", &[]).expect("fs size");
    assert!(
        spool < 1_000_000.0 && spool < filesystem,
        "{spool} vs {filesystem}"
    );

    let (live, body) = http_get(empath.health_addr(), "/health/live");
    assert_eq!((live, body.trim()), (200, "OK"));
    let (ready, body) = http_get(empath.health_addr(), "/health/ready");
    assert_eq!(ready, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("readiness is JSON");
    for field in [
        "alive",
        "ready",
        "smtp_ready",
        "spool_ready",
        "delivery_ready",
        "dns_ready",
    ] {
        assert_eq!(
            json[field],
            serde_json::Value::Bool(true),
            "{field} in {body}"
        );
    }
    assert_eq!(json["queue_size"], 0);
    assert_eq!(json["max_queue_size"], 10_000);
    assert_eq!(http_get(empath.health_addr(), "/nothing").0, 404);

    // Clean sessions are not errors; a client that resets its connection
    // mid-session is.
    assert_eq!(count("empath_smtp_connection_errors_total", &[]), Some(0.0));
    reset_a_session(empath.smtp_addr());
    empath.wait_until(
        "the reset to be counted",
        Duration::from_secs(30),
        || match empath
            .metrics()
            .get("empath_smtp_connection_errors_total", &[])
        {
            Some(1.0) => Ok(()),
            other => Err(format!("{other:?} connection errors")),
        },
    );
}

/// Opens an SMTP session, says EHLO, and aborts the connection with a TCP
/// reset (SO_LINGER 0), as a crashed client or a middlebox would.
fn reset_a_session(server: std::net::SocketAddr) {
    let script = format!(
        "import socket, struct\n\
         s = socket.create_connection(('{ip}', {port}))\n\
         s.recv(512)\n\
         s.sendall(b'EHLO reset.test\\r\\n')\n\
         s.recv(4096)\n\
         s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))\n\
         s.close()\n",
        ip = server.ip(),
        port = server.port()
    );
    let status = std::process::Command::new("python3")
        .args(["-c", &script])
        .status()
        .expect("python3 runs");
    assert!(status.success(), "the resetting client failed");
}

#[test]
fn readiness_fails_with_503_when_the_queue_is_over_max_queue_size() {
    let empath = Empath::start(TestConfig::new().with_health().section(
        "health",
        "(enabled: true, listen_address: \"127.0.0.1:0\", max_queue_size: 0)",
    ));
    let (status, body) = http_get(empath.health_addr(), "/health/ready");
    assert_eq!(status, 503, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("readiness is JSON");
    assert_eq!(json["ready"], false, "{body}");
    assert_eq!(json["alive"], true, "{body}");
    assert_eq!(json["smtp_ready"], true, "{body}");
    assert_eq!(json["queue_size"], 0, "{body}");
    assert_eq!(json["max_queue_size"], 0, "{body}");
    // Liveness does not depend on readiness.
    assert_eq!(http_get(empath.health_addr(), "/health/live").0, 200);
}

/// Every metric that etc/prometheus-alerts.yml queries (other than its own
/// recording rules) has a `# TYPE` line from the first scrape on, even the
/// labelled ones that have no sample yet.
fn every_metric_of_the_alert_rules_is_declared(empath: &Empath) {
    let rules_path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../etc/prometheus-alerts.yml");
    let rules = std::fs::read_to_string(&rules_path).expect("read etc/prometheus-alerts.yml");
    let recorded: Vec<&str> = rules
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- record: "))
        .collect();
    let (status, text) = http_get(empath.health_addr(), "/metrics");
    assert_eq!(status, 200);
    // Recording rules named level:metric:operation hold metric names.
    let rules = recorded
        .iter()
        .fold(rules.clone(), |text, name| text.replace(name, ""));
    let mut queried: Vec<String> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("empath_") && !recorded.contains(word))
        .map(|word| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| word.strip_suffix(suffix))
                .unwrap_or(word)
                .to_owned()
        })
        .collect();
    queried.sort();
    queried.dedup();
    assert!(queried.len() >= 10, "{queried:?}");
    for name in queried {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "the alert rules query {name}, which /metrics does not declare"
        );
    }
}
