//! The seeds' distributed tracing: every daemon that handles a message
//! exports its spans over OTLP/HTTP (protobuf, `POST /v1/traces`) into
//! one trace whose ID is the message's queue ID, and the log lines about
//! the message carry that `trace_id` (and the `span_id` of the span they
//! were written in). The collector is tests/clients/otlp_receiver.py,
//! which decodes the requests with the OpenTelemetry project's own
//! protobuf definitions.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::time::Duration;

use empath_tests::otlp::Receiver;
use empath_tests::{Empath, Reply, Sink, SinkPolicy, SmtpSend, TestConfig, mail};
use serde_json::Value;

const SENDER: &str = "sender@client.test";
const DELIVERED_TO: &str = "user@sink.test";
const DEFERRED_TO: &str = "later@defer.test";
const TIMEOUT: Duration = Duration::from_secs(60);

/// A queue ID (a ULID: 26 Crockford base-32 digits, 128 bits) as the 32
/// hex digits of its 16 bytes, decoded here independently of Empath.
fn ulid_hex(id: &str) -> String {
    const ALPHABET: &str = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    assert_eq!(id.len(), 26, "not a queue ID: {id:?}");
    let value = id.chars().fold(0u128, |value, c| {
        let digit = ALPHABET
            .find(c.to_ascii_uppercase())
            .unwrap_or_else(|| panic!("not a queue ID: {id:?}"));
        (value << 5) | digit as u128
    });
    format!("{value:032x}")
}

fn send(empath: &Empath, to: &str) {
    let messages = mail::generate(1, SENDER, &[to]);
    let outbox = empath.dir().join(format!("outbox-{to}"));
    let outbox = mail::write_eml_files(&outbox, &messages);
    SmtpSend::new(empath.smtp_addr(), SENDER, &[to], &outbox)
        .run()
        .assert_all_accepted(1, || empath.log_tail());
}

/// The JSON log lines (daemons write to the master's stderr).
fn json_lines(empath: &Empath) -> Vec<Value> {
    std::fs::read_to_string(empath.dir().join("empath.stderr"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// The delivery log line for `recipient` with `status` (sent, deferred).
fn delivery_line(empath: &Empath, recipient: &str, status: &str) -> Result<Value, String> {
    json_lines(empath)
        .into_iter()
        .find(|line| line["fields"]["recipient"] == recipient && line["fields"]["status"] == status)
        .ok_or_else(|| format!("no {status} line for {recipient} yet"))
}

/// The spans of one trace, by name, once `names` are all there.
fn trace(receiver: &Receiver, trace_id: &str, names: &[&str]) -> Result<Vec<Value>, String> {
    let spans: Vec<Value> = receiver
        .spans()
        .into_iter()
        .filter(|span| span["trace_id"] == trace_id)
        .collect();
    let missing: Vec<&&str> = names
        .iter()
        .filter(|name| !spans.iter().any(|span| span["name"] == **name))
        .collect();
    if missing.is_empty() {
        Ok(spans)
    } else {
        Err(format!("trace {trace_id} lacks {missing:?}: {spans:?}"))
    }
}

fn named<'a>(spans: &'a [Value], name: &str) -> &'a Value {
    spans
        .iter()
        .find(|span| span["name"] == name)
        .unwrap_or_else(|| panic!("no {name} span in {spans:?}"))
}

#[test]
fn the_daemons_spans_form_one_trace_per_message_named_by_its_queue_id() {
    let receiver = Receiver::start();
    let sink = Sink::with_policy(
        SinkPolicy::accept_all()
            .reply_to_rcpt(DEFERRED_TO, Reply::new(451, "4.3.0 Try again later")),
    );
    let empath = Empath::start(
        TestConfig::new()
            .mx_override("sink.test", sink.addr())
            .mx_override("defer.test", sink.addr())
            .section("dsn", "(enabled: false)")
            .log_format("json")
            // The guide's Docker set-up names the collector's base URL.
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.base_url())
            .env("OTEL_BSP_SCHEDULE_DELAY", "200"),
    );
    send(&empath, DELIVERED_TO);
    send(&empath, DEFERRED_TO);

    // The delivered message: its log line names its queue ID, and the
    // trace ID is that ID's 16 bytes.
    let line = empath.wait_until("the delivery line", TIMEOUT, || {
        delivery_line(&empath, DELIVERED_TO, "sent")
    });
    let queue_id = line["fields"]["message_id"].as_str().expect("message_id");
    let trace_id = ulid_hex(queue_id);
    assert_eq!(line["fields"]["trace_id"], trace_id.as_str(), "{line}");

    let names = ["receive", "queue", "delivery attempt"];
    let spans = empath.wait_until("the message's spans", TIMEOUT, || {
        trace(&receiver, &trace_id, &names)
    });
    let process = |span: &Value| span["resource"]["process.executable.name"].clone();
    let receive = named(&spans, "receive");
    let queue = named(&spans, "queue");
    let attempt = named(&spans, "delivery attempt");
    assert_eq!(process(receive), "empath-smtpd", "{receive}");
    assert_eq!(process(queue), "empath-cleanup", "{queue}");
    assert_eq!(process(attempt), "empath-smtp-out", "{attempt}");
    let mut span_ids = std::collections::BTreeSet::new();
    for span in &spans {
        assert_eq!(span["resource"]["service.name"], "empath-mta", "{span}");
        assert!(
            span["resource"]["service.instance.id"].is_string(),
            "{span}"
        );
        assert_eq!(span["attributes"]["empath.queue_id"], queue_id, "{span}");
        let span_id = span["span_id"].as_str().expect("span_id");
        assert_eq!(span_id.len(), 16, "{span}");
        assert_ne!(span_id, "0000000000000000", "{span}");
        assert!(
            span_ids.insert(span_id.to_owned()),
            "span IDs repeat: {spans:?}"
        );
        let (start, end) = (span["start"].as_u64(), span["end"].as_u64());
        assert!(start.is_some_and(|s| s > 0) && start <= end, "{span}");
        if span["name"] != "delivery attempt" || span == attempt {
            assert_ne!(span["status"]["code"], "STATUS_CODE_ERROR", "{span}");
        }
    }
    // Reception: MAIL to the queued reply, the server side.
    assert_eq!(receive["kind"], "SPAN_KIND_SERVER");
    assert_eq!(receive["attributes"]["empath.sender"], SENDER);
    assert_eq!(receive["attributes"]["empath.recipient_count"], 1);
    assert_eq!(receive["attributes"]["empath.outcome"], "queued");
    assert!(
        receive["attributes"]["empath.size"].as_i64() > Some(0),
        "{receive}"
    );
    assert_eq!(queue["attributes"]["empath.outcome"], "queued", "{queue}");
    // cleanup answered before smtpd's span ended; the delivery came later.
    assert!(
        queue["end"].as_u64() <= receive["end"].as_u64(),
        "{queue}\n{receive}"
    );
    assert!(
        attempt["start"].as_u64() >= queue["end"].as_u64(),
        "{attempt}"
    );
    // The delivery attempt: domain, server, code, outcome.
    assert_eq!(attempt["kind"], "SPAN_KIND_CLIENT");
    let attributes = &attempt["attributes"];
    assert_eq!(attributes["empath.domain"], "sink.test", "{attempt}");
    assert_eq!(attributes["empath.outcome"], "delivered", "{attempt}");
    assert_eq!(attributes["empath.smtp_code"], 250, "{attempt}");
    assert_eq!(attributes["empath.delivery_attempt"], 1, "{attempt}");
    assert_eq!(attributes["empath.transport"], "smtp", "{attempt}");
    let server = attributes["empath.server"].as_str().unwrap_or("");
    assert!(
        server.contains(&sink.addr().port().to_string()),
        "{attempt}"
    );
    assert_eq!(attempt["status"]["code"], "STATUS_CODE_UNSET", "{attempt}");
    // The delivery line was written inside the attempt's span.
    assert_eq!(line["fields"]["span_id"], attempt["span_id"], "{line}");
    assert_eq!(line["span"]["trace_id"], trace_id.as_str(), "{line}");
    assert_eq!(line["span"]["span_id"], attempt["span_id"], "{line}");
    // Every line about the message carries the same trace ID.
    let about: Vec<Value> = json_lines(&empath)
        .into_iter()
        .filter(|line| line["fields"]["message_id"] == queue_id)
        .collect();
    assert!(about.len() >= 4, "{about:?}");
    for line in &about {
        assert_eq!(line["fields"]["trace_id"], trace_id.as_str(), "{line}");
    }
    let services: std::collections::BTreeSet<&str> =
        about.iter().filter_map(|l| l["service"].as_str()).collect();
    for service in ["smtpd", "cleanup", "qmgr", "smtp-out"] {
        assert!(services.contains(service), "no {service} line: {about:?}");
    }

    // The deferred message: an attempt span with status ERROR and the
    // server's 451, in the trace its log line names.
    let line = empath.wait_until("the deferral line", TIMEOUT, || {
        delivery_line(&empath, DEFERRED_TO, "deferred")
    });
    let deferred_id = line["fields"]["message_id"].as_str().expect("message_id");
    let deferred_trace = ulid_hex(deferred_id);
    assert_eq!(
        line["fields"]["trace_id"],
        deferred_trace.as_str(),
        "{line}"
    );
    assert_ne!(deferred_trace, trace_id);
    let spans = empath.wait_until("the deferred message's spans", TIMEOUT, || {
        trace(&receiver, &deferred_trace, &names)
    });
    let attempt = named(&spans, "delivery attempt");
    let attributes = &attempt["attributes"];
    assert_eq!(attempt["status"]["code"], "STATUS_CODE_ERROR", "{attempt}");
    let why = attempt["status"]["message"].as_str().unwrap_or("");
    assert!(
        why.contains("451") && why.contains("Try again later"),
        "{attempt}"
    );
    assert_eq!(attributes["empath.domain"], "defer.test", "{attempt}");
    assert_eq!(attributes["empath.outcome"], "deferred", "{attempt}");
    assert_eq!(attributes["empath.smtp_code"], 451, "{attempt}");
    assert_eq!(line["fields"]["span_id"], attempt["span_id"], "{line}");
    assert_eq!(line["level"], "WARN");

    // Every request was protobuf, accepted, on the traces path.
    for request in receiver.requests() {
        assert_eq!(request["content_type"], "application/x-protobuf");
        assert!(request.get("error").is_none(), "{request}");
    }
}

#[test]
fn without_a_collector_nothing_is_sent_and_log_lines_still_carry_the_trace_id() {
    let receiver = Receiver::start();
    let sink = Sink::start();
    let empath = Empath::start(
        TestConfig::new()
            .mx_override("sink.test", sink.addr())
            .section("metrics", "(enabled: false)")
            // The collector is named for metrics only: traces are off.
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.base_url())
            .env("OTEL_TRACES_EXPORTER", "none")
            .env("OTEL_BSP_SCHEDULE_DELAY", "100"),
    );
    send(&empath, DELIVERED_TO);
    if let Err(got) = sink.wait_for_messages(1, TIMEOUT) {
        panic!("the sink got {got} of 1\n{}", empath.log_tail());
    }
    // The human format: `message_id=ID ... trace_id=HEX` on every line
    // about the message, and no span_id (no span is exported).
    let line = empath.wait_until("the delivery line", TIMEOUT, || {
        let log = empath.log();
        log.lines()
            .find(|line| line.contains("Delivery successful"))
            .map(str::to_owned)
            .ok_or_else(|| "not logged yet".to_owned())
    });
    let queue_id = line
        .split_whitespace()
        .find_map(|field| field.strip_prefix("message_id="))
        .expect("message_id");
    let trace_id = format!("trace_id={}", ulid_hex(queue_id));
    let about: Vec<String> = empath
        .log()
        .lines()
        .filter(|line| line.contains(&format!("message_id={queue_id}")))
        .map(str::to_owned)
        .collect();
    assert!(about.len() >= 4, "{about:?}");
    for line in &about {
        assert!(line.contains(&trace_id), "{line}");
        assert!(!line.contains("span_id="), "{line}");
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        receiver.requests().is_empty(),
        "nothing is exported: {:?}",
        receiver.requests()
    );
    let log = empath.log();
    for quiet in [
        "exporting traces",
        "traces are not exported",
        "cannot export traces",
    ] {
        assert!(!log.contains(quiet), "{quiet}\n{}", empath.log_tail());
    }
}
