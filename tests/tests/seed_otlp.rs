//! The seeds' OpenTelemetry metrics export: Empath pushes its metrics over
//! OTLP/HTTP (protobuf) to `metrics.endpoint` or to
//! `OTEL_EXPORTER_OTLP_ENDPOINT`, with `metrics.api_key` as a bearer
//! token. The collector is played by tests/clients/otlp_receiver.py, which
//! decodes every request with the OpenTelemetry project's own protobuf
//! definitions. `/metrics` stays open whatever `metrics.api_key` says;
//! only the separate `metrics.scrape_token` guards it.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use empath_tests::master::http_get;
use empath_tests::otlp::Receiver;
use empath_tests::{Empath, Sink, SmtpSend, TestConfig, mail, seeds};
use serde_json::Value;

const SENDER: &str = "sender@client.test";
const TIMEOUT: Duration = Duration::from_secs(60);
const MESSAGES: usize = 3;

/// The metric `name` in a decoded request.
fn metric<'a>(request: &'a Value, name: &str) -> Option<&'a Value> {
    request["metrics"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == name)
}

/// The sum of a number metric's points whose attributes include `labels`.
fn total(request: &Value, name: &str, labels: &[(&str, &str)]) -> f64 {
    let Some(points) = metric(request, name).and_then(|m| m["points"].as_array()) else {
        return 0.0;
    };
    points
        .iter()
        .filter(|p| labels.iter().all(|(k, v)| p["attributes"][*k] == *v))
        .filter_map(|p| p["value"].as_f64())
        .sum()
}

fn send(empath: &Empath) {
    let to = "user@sink.test";
    let messages = mail::generate(MESSAGES, SENDER, &[to]);
    let outbox = mail::write_eml_files(&empath.dir().join("outbox"), &messages);
    SmtpSend::new(empath.smtp_addr(), SENDER, &[to], &outbox)
        .run()
        .assert_all_accepted(MESSAGES, || empath.log_tail());
}

#[test]
fn metrics_are_pushed_to_the_configured_endpoint_with_the_api_key() {
    // The seeds' metrics section: endpoint and api_key.
    let guide = seeds::read("EMPATH_GUIDE.md");
    assert!(guide.contains("API key sent in `Authorization: Bearer <key>` header"));
    assert!(guide.contains("endpoint: \"http://otel-collector:4318/v1/metrics\""));

    let receiver = Receiver::start();
    let sink = Sink::start();
    let empath = Empath::start(
        TestConfig::new()
            .with_health()
            .mx_override("sink.test", sink.addr())
            .section(
                "metrics",
                &format!(
                    "(enabled: true, endpoint: \"{}/v1/metrics\", api_key: \"$ENV:METRICS_API_KEY\")",
                    receiver.base_url()
                ),
            )
            .env("METRICS_API_KEY", "your-secret-api-key-here")
            .env("OTEL_METRIC_EXPORT_INTERVAL", "300"),
    );
    send(&empath);
    if let Err(got) = sink.wait_for_messages(MESSAGES, TIMEOUT) {
        panic!("the sink got {got} of {MESSAGES}\n{}", empath.log_tail());
    }

    // A push that has seen all of it: messages received and delivered.
    let request = empath.wait_until("a push with the traffic", TIMEOUT, || {
        let requests = receiver.requests();
        requests
            .iter()
            .rev()
            .find(|r| {
                total(r, "empath_smtp_messages_received_total", &[]) == MESSAGES as f64
                    && total(
                        r,
                        "empath_delivery_attempts_total",
                        &[("status", "delivered")],
                    ) == MESSAGES as f64
            })
            .cloned()
            .ok_or_else(|| format!("{} pushes, none with the traffic yet", requests.len()))
    });
    assert_eq!(request["path"], "/v1/metrics", "{request}");
    assert_eq!(request["content_type"], "application/x-protobuf");
    assert_eq!(request["authorization"], "Bearer your-secret-api-key-here");
    assert!(request.get("error").is_none(), "{request}");
    assert_eq!(
        request["resource"]["service.name"], "empath-mta",
        "{request}"
    );
    assert_eq!(request["scope"], "empath");

    // Counters: monotonic cumulative sums, with their labels.
    let received = metric(&request, "empath_smtp_messages_received_total").expect("counter");
    assert_eq!(received["kind"], "sum");
    assert_eq!(received["monotonic"], true);
    assert_eq!(received["temporality"], "cumulative");
    let point = &received["points"][0];
    assert!(point["start"].as_u64() < point["time"].as_u64(), "{point}");
    assert_eq!(
        total(
            &request,
            "empath_delivery_attempts_total",
            &[
                ("status", "delivered"),
                ("domain", "sink.test"),
                ("smtp_code", "250")
            ]
        ),
        MESSAGES as f64
    );
    // The seeds' names are pushed too.
    assert_eq!(
        total(&request, "empath_messages_received", &[]),
        MESSAGES as f64
    );
    // Gauges.
    let up = metric(&request, "empath_process_up").expect("gauge");
    assert_eq!(up["kind"], "gauge");
    assert_eq!(
        total(&request, "empath_process_up", &[("daemon", "empath-smtpd")]),
        1.0
    );
    // Histograms: per-bucket counts that add up to the count.
    let age = metric(&request, "empath_delivery_queue_age_seconds").expect("histogram");
    assert_eq!(age["kind"], "histogram");
    assert_eq!(age["temporality"], "cumulative");
    let point = &age["points"][0];
    assert_eq!(point["count"], MESSAGES);
    let buckets: Vec<u64> = point["bucket_counts"]
        .as_array()
        .expect("buckets")
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    assert_eq!(buckets.iter().sum::<u64>(), MESSAGES as u64, "{point}");
    assert_eq!(
        buckets.len(),
        point["explicit_bounds"]
            .as_array()
            .map_or(0, |b| b.len() + 1)
    );

    // metrics.api_key is the collector's: /metrics stays open.
    let (status, body) = http_get(empath.health_addr(), "/metrics");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("empath_smtp_messages_received_total 3"),
        "{body}"
    );
}

/// GET /metrics with an optional bearer token; the status code.
fn metrics_status(addr: SocketAddr, token: Option<&str>) -> u16 {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect");
    stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let authorization = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n{authorization}\r\n"
    )
    .expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

#[test]
fn the_environment_names_the_collector_and_a_stop_pushes_once_more() {
    // The guide's Docker set-up: OTEL_EXPORTER_OTLP_ENDPOINT, the base URL.
    let guide = seeds::read("EMPATH_GUIDE.md");
    assert!(guide.contains("OTEL_EXPORTER_OTLP_ENDPOINT=http://otel-collector:4318"));

    let receiver = Receiver::start();
    let sink = Sink::start();
    let mut empath = Empath::start(
        TestConfig::new()
            .with_health()
            .mx_override("sink.test", sink.addr())
            .section(
                "metrics",
                "(enabled: true, scrape_token: \"scrape-secret\")",
            )
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.base_url())
            // Nothing is pushed before the stop.
            .env("OTEL_METRIC_EXPORT_INTERVAL", "600000"),
    );
    send(&empath);
    if let Err(got) = sink.wait_for_messages(MESSAGES, TIMEOUT) {
        panic!("the sink got {got} of {MESSAGES}\n{}", empath.log_tail());
    }
    empath.wait_queue_empty(TIMEOUT);

    // The separate scrape_token guards /metrics.
    let health = empath.health_addr();
    assert_eq!(metrics_status(health, None), 401);
    assert_eq!(metrics_status(health, Some("wrong")), 401);
    assert_eq!(metrics_status(health, Some("scrape-secret")), 200);
    assert_eq!(http_get(health, "/health/live").0, 200);

    // The daemons' spans wait for OTEL_BSP_SCHEDULE_DELAY (5 s): nothing
    // of either signal is sent yet.
    assert!(receiver.requests().is_empty(), "pushed before the interval");
    let (status, _) = empath.stop();
    assert!(status.success(), "{status}\n{}", empath.log_tail());
    let (requests, traces): (Vec<Value>, Vec<Value>) = receiver
        .requests()
        .into_iter()
        .partition(|r| r["path"] == "/v1/metrics");
    assert_eq!(requests.len(), 1, "one push at the stop: {requests:?}");
    // The same collector gets the traces, which the daemons send as they
    // stop (see otlp_traces.rs).
    let spans = |name: &str| {
        traces
            .iter()
            .filter(|r| r["path"] == "/v1/traces")
            .flat_map(|r| r["spans"].as_array().cloned().unwrap_or_default())
            .filter(|span| span["name"] == name)
            .count()
    };
    assert_eq!(spans("receive"), MESSAGES, "{traces:?}");
    assert_eq!(spans("delivery attempt"), MESSAGES, "{traces:?}");
    let request = &requests[0];
    assert_eq!(request["path"], "/v1/metrics", "{request}");
    assert_eq!(
        request["authorization"],
        Value::Null,
        "no api_key, no header"
    );
    assert_eq!(
        total(request, "empath_smtp_messages_received_total", &[]),
        MESSAGES as f64,
        "the last push has the daemons' metrics: {request}"
    );
}

#[test]
fn an_unreachable_collector_is_logged_and_mail_still_flows() {
    // A port nobody listens on: the push fails, and says so once.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let sink = Sink::start();
    let empath = Empath::start(
        TestConfig::new()
            .mx_override("sink.test", sink.addr())
            .section(
                "metrics",
                &format!("(enabled: true, endpoint: \"http://{closed}/v1/metrics\")"),
            )
            .env("OTEL_METRIC_EXPORT_INTERVAL", "200"),
    );
    send(&empath);
    if let Err(got) = sink.wait_for_messages(MESSAGES, TIMEOUT) {
        panic!("the sink got {got} of {MESSAGES}\n{}", empath.log_tail());
    }
    empath.wait_until("the push failure in the log", TIMEOUT, || {
        let log = empath.log();
        if log.contains("cannot push metrics") {
            Ok(())
        } else {
            Err("not logged yet".into())
        }
    });
    std::thread::sleep(Duration::from_secs(1));
    let warnings = empath.log().matches("cannot push metrics").count();
    assert_eq!(
        warnings,
        1,
        "a failing collector is reported once\n{}",
        empath.log_tail()
    );
}
