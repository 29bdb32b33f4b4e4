//! The metric names and labels the seeds query (ARCHITECTURE_EMPATH.md's
//! key metrics, ALERT_RUNBOOKS.md's PromQL), scraped from `/metrics` after
//! real traffic and read with the reference parser: the seeds' other
//! names for the connection, message and DNS cache counters, the retry
//! count histogram, the `domain` label of the rate-limit delay, and the
//! `smtp_code` label of delivery attempts.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::time::Duration;

use empath_tests::dns::TestDns;
use empath_tests::master::http_get;
use empath_tests::mx::{loopback, sinks_on_one_port, with_dns};
use empath_tests::{Empath, Reply, SinkPolicy, SmtpSend, TestConfig, mail, seeds};

const SENDER: &str = "sender@client.test";
const TIMEOUT: Duration = Duration::from_secs(90);
const GOOD: usize = 6;

/// The value of the sample line `name{labels} value` (labels as
/// rendered, `""` for none) in an exposition.
fn raw_sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

#[test]
fn the_seeds_metric_names_and_labels_count_real_traffic() {
    // The names, as the seeds write them.
    let architecture = seeds::read("ARCHITECTURE_EMPATH.md");
    for name in [
        "`empath_connections_total`",
        "`empath_messages_received`",
        "`dns_cache_hits`",
        "`dns_cache_misses`",
    ] {
        assert!(architecture.contains(name), "{name}");
    }
    let runbooks = seeds::read("ALERT_RUNBOOKS.md");
    for query in [
        "empath_delivery_retry_count{message_id=",
        "sum by (smtp_code) (rate(empath_delivery_attempts_total{status=\"failed\"}[5m]))",
        "empath_dns_cache_hits_total[5m]",
    ] {
        assert!(runbooks.contains(query), "{query}");
    }
    let guide = seeds::read("EMPATH_GUIDE.md");
    assert!(guide.contains("empath_delivery_rate_limit_delay_seconds_sum{domain=\"example.com\"}"));

    // One MX host for metrics.test, found through DNS (so the cache is
    // used); the first DATA is deferred, one recipient is refused.
    let policy = SinkPolicy::accept_all()
        .fail_first_data(1, Reply::new(451, "4.3.0 Busy, try again"))
        .reply_to_rcpt("nobody@metrics.test", Reply::new(550, "5.1.1 No such user"));
    let (port, sinks) = sinks_on_one_port(vec![(3, policy)], &[]);
    let dns = TestDns::start();
    dns.mx("metrics.test", 10, "mx.metrics.test")
        .address("mx.metrics.test", loopback(3));
    let config = with_dns(TestConfig::new().with_health(), &dns, port)
        .section("dsn", "(enabled: false)")
        // The runbook's form: a domain limit without burst_size.
        .delivery(
            "rate_limit",
            "(messages_per_second: 10000.0, burst_size: 10000, \
             domain_limits: {\"metrics.test\": (messages_per_second: 2.0)})",
        );
    let empath = Empath::start(config);

    for (index, (to, count)) in [("user@metrics.test", GOOD), ("nobody@metrics.test", 1)]
        .into_iter()
        .enumerate()
    {
        let messages = mail::generate(count, SENDER, &[to]);
        let outbox =
            mail::write_eml_files(&empath.dir().join(format!("outbox-{index}")), &messages);
        SmtpSend::new(empath.smtp_addr(), SENDER, &[to], &outbox)
            .run()
            .assert_all_accepted(count, || empath.log_tail());
    }
    if let Err(got) = sinks[0].wait_for_messages(GOOD, TIMEOUT) {
        panic!("the sink got {got} of {GOOD}\n{}", empath.log_tail());
    }
    empath.wait_queue_empty(TIMEOUT);
    let samples = empath.wait_until("the attempts to be counted", TIMEOUT, || {
        let samples = empath.metrics();
        let counted = samples.sum("empath_delivery_attempts_total", &[]);
        if counted >= (GOOD + 2) as f64 {
            Ok(samples)
        } else {
            Err(format!("{counted} attempts counted"))
        }
    });
    let (status, text) = http_get(empath.health_addr(), "/metrics");
    assert_eq!(status, 200);

    // smtp_code on every attempt (the runbook's `sum by (smtp_code)`).
    let attempts = |status: &str, code: &str| {
        samples.get(
            "empath_delivery_attempts_total",
            &[
                ("status", status),
                ("domain", "metrics.test"),
                ("smtp_code", code),
            ],
        )
    };
    assert_eq!(attempts("delivered", "250"), Some(GOOD as f64), "{text}");
    assert_eq!(attempts("deferred", "451"), Some(1.0), "{text}");
    assert_eq!(attempts("failed", "550"), Some(1.0), "{text}");

    // The retry count: one delivery needed one earlier attempt.
    assert_eq!(
        samples.get("empath_delivery_retry_count_count", &[]),
        Some(GOOD as f64),
        "{text}"
    );
    assert_eq!(
        samples.get("empath_delivery_retry_count_sum", &[]),
        Some(1.0)
    );
    assert_eq!(
        raw_sample(&text, "empath_delivery_retry_count_bucket{le=\"0\"}"),
        Some((GOOD - 1) as f64),
        "{text}"
    );

    // The rate-limit delay, per domain (the guide's
    // `..._sum{domain="example.com"} / ..._count{domain="example.com"}`).
    let delayed = samples
        .get(
            "empath_delivery_rate_limit_delay_seconds_count",
            &[("domain", "metrics.test")],
        )
        .unwrap_or(0.0);
    assert!(delayed >= 1.0, "no delay counted for metrics.test\n{text}");
    let delay_sum = samples
        .get(
            "empath_delivery_rate_limit_delay_seconds_sum",
            &[("domain", "metrics.test")],
        )
        .unwrap_or(0.0);
    assert!(
        delay_sum > 0.0 && delay_sum < 5.0 * delayed,
        "{delay_sum}\n{text}"
    );

    // The seeds' other names hold the same values as ours.
    for (seed_name, ours) in [
        ("empath_connections_total", "empath_smtp_connections_total"),
        (
            "empath_messages_received",
            "empath_smtp_messages_received_total",
        ),
        ("dns_cache_hits", "empath_dns_cache_hits_total"),
        ("dns_cache_misses", "empath_dns_cache_misses_total"),
    ] {
        let seed_value = raw_sample(&text, seed_name);
        assert_eq!(seed_value, raw_sample(&text, ours), "{seed_name}\n{text}");
        assert!(
            text.contains(&format!("# TYPE {seed_name} counter")),
            "{seed_name}\n{text}"
        );
    }
    assert_eq!(
        raw_sample(&text, "empath_messages_received"),
        Some((GOOD + 1) as f64)
    );
    assert_eq!(raw_sample(&text, "empath_connections_total"), Some(2.0));
    let hits = raw_sample(&text, "dns_cache_hits").unwrap_or(0.0);
    let misses = raw_sample(&text, "dns_cache_misses").unwrap_or(0.0);
    assert!(
        misses >= 1.0,
        "the first lookup of metrics.test is a miss\n{text}"
    );
    assert!(hits >= 1.0, "later lookups come from the cache\n{text}");
}
