//! OpenTelemetry traces of the messages, exported over OTLP/HTTP
//! (`POST .../v1/traces`, protobuf), as the seeds' "Distributed Tracing"
//! section describes.
//!
//! A message's trace ID is its queue ID ([`QueueId::trace_id`]), so each
//! daemon that handles it (smtpd's `receive`, cleanup's `queue`, qmgr's
//! `schedule`, one `delivery attempt` per job in smtp-out and local)
//! emits its spans into the same trace without any context passed along
//! (the IPC frames are unchanged), and any log line that names the
//! message (`message_id=`) carries the same `trace_id=` (see
//! [`crate::logging`]). Span IDs are random.
//!
//! Each process batches its finished spans in a background thread: sent
//! every `OTEL_BSP_SCHEDULE_DELAY` (5000 ms) or once
//! `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` (512) are waiting, from a queue of at
//! most `OTEL_BSP_MAX_QUEUE_SIZE` (2048) spans. A span that finds the
//! queue full is dropped and counted, never waited for: tracing never
//! slows the mail down. A failed export is logged once (and its spans
//! dropped) until one succeeds again. [`shutdown`] sends what is left.
//!
//! Where to send, in order: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (the
//! full URL), `OTEL_EXPORTER_OTLP_ENDPOINT` (the collector's base URL;
//! `/v1/traces` is appended), then the collector that `metrics.endpoint`
//! names when it ends in `/v1/metrics` (its `/v1/traces`). None of them,
//! or `OTEL_TRACES_EXPORTER=none`: no thread, and a span costs a branch.
//! `metrics.api_key` is sent as the bearer token; the timeout is
//! `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT` or `OTEL_EXPORTER_OTLP_TIMEOUT`
//! (10000 ms); `OTEL_SERVICE_NAME` names the service (`empath-mta`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::trace::v1::{self as proto, ResourceSpans, ScopeSpans, Status};
use prost::Message;

use crate::config;
use crate::otlp::{
    Collector, Env, TargetError, checked_url, int_attribute, signal_url, string_attribute,
    unix_nanos,
};
use crate::protocol::{DeliveryJob, DeliveryReport, Outcome};
use crate::queue::QueueId;

pub use proto::span::SpanKind as Kind;

const TRACES_PATH: &str = "/v1/traces";
const METRICS_PATH: &str = "/v1/metrics";
const DEFAULT_DELAY: Duration = Duration::from_millis(5000);
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(10_000);
const DEFAULT_QUEUE: usize = 2048;
const DEFAULT_BATCH: usize = 512;

/// Where and how this process sends its spans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub collector: Collector,
    /// `OTEL_BSP_SCHEDULE_DELAY`: the longest a finished span waits.
    pub delay: Duration,
    pub max_queue: usize,
    pub max_batch: usize,
    pub service_name: String,
}

impl Settings {
    /// The settings from the environment (`env` looks a variable up) and
    /// the `metrics` section; `None` when there is nowhere to send.
    pub fn resolve(
        metrics: &config::Metrics,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, TargetError> {
        let env = Env(env);
        if env
            .get("OTEL_TRACES_EXPORTER")
            .is_some_and(|exporter| exporter.trim().eq_ignore_ascii_case("none"))
        {
            return Ok(None);
        }
        let (setting, url) = if let Some(url) = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url)
        } else if let Some(base) = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") {
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                signal_url(&base, TRACES_PATH),
            )
        } else if let Some(base) = metrics
            .endpoint
            .as_deref()
            .and_then(|url| url.trim().trim_end_matches('/').strip_suffix(METRICS_PATH))
        {
            ("metrics.endpoint", signal_url(base, TRACES_PATH))
        } else {
            return Ok(None);
        };
        let timeout = match env.get("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT") {
            Some(_) => env.millis("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", DEFAULT_TIMEOUT)?,
            None => env.millis("OTEL_EXPORTER_OTLP_TIMEOUT", DEFAULT_TIMEOUT)?,
        };
        let max_queue = env.count("OTEL_BSP_MAX_QUEUE_SIZE", DEFAULT_QUEUE)?;
        Ok(Some(Self {
            collector: Collector {
                url: checked_url(setting, &url)?,
                api_key: env.api_key(metrics)?,
                timeout,
            },
            delay: env.millis("OTEL_BSP_SCHEDULE_DELAY", DEFAULT_DELAY)?,
            max_queue,
            max_batch: env
                .count("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", DEFAULT_BATCH)?
                .min(max_queue),
            service_name: env.service_name(),
        }))
    }
}

/// What the exporting thread is told.
enum Command {
    /// Boxed: the channel's slots are as big as its largest command.
    Span(Box<proto::Span>),
    /// Send what is left, answer, and end.
    Stop(SyncSender<()>),
}

struct Exporter {
    commands: SyncSender<Command>,
    dropped: AtomicU64,
    thread: Mutex<Option<JoinHandle<()>>>,
    timeout: Duration,
}

static EXPORTER: OnceLock<Exporter> = OnceLock::new();

/// Starts exporting this process's spans, if the settings name a
/// collector (see the module documentation). `process` is the executable
/// (`empath-smtpd`), a resource attribute of every span. Problems are
/// logged; the mail flows on without traces.
pub fn init(process: &str, metrics: &config::Metrics) {
    match Settings::resolve(metrics, |name| std::env::var(name).ok()) {
        Ok(Some(settings)) => {
            if let Err(error) = start(process, settings) {
                tracing::error!(%error, "cannot start the OTLP trace export");
            }
        }
        Ok(None) => {}
        Err(error) => tracing::error!(%error, "traces are not exported"),
    }
}

/// Starts the exporting thread (once per process).
pub fn start(process: &str, settings: Settings) -> std::io::Result<()> {
    let (commands, received) = mpsc::sync_channel(settings.max_queue);
    let resource = crate::otlp::resource(
        &settings.service_name,
        vec![
            string_attribute(
                "service.instance.id",
                &format!("{process}[{}]", std::process::id()),
            ),
            string_attribute("process.executable.name", process),
            int_attribute("process.pid", i64::from(std::process::id())),
        ],
    );
    tracing::info!(
        url = %settings.collector.url,
        delay_ms = u64::try_from(settings.delay.as_millis()).unwrap_or(u64::MAX),
        authorization = settings.collector.api_key.is_some(),
        "exporting traces over OTLP/HTTP"
    );
    let timeout = settings.collector.timeout;
    let batcher = Batcher {
        settings,
        resource,
        failing: false,
        dropped_seen: 0,
    };
    let thread = std::thread::Builder::new()
        .name("otlp-traces".into())
        .spawn(move || batcher.run(&received))?;
    let exporter = Exporter {
        commands,
        dropped: AtomicU64::new(0),
        thread: Mutex::new(Some(thread)),
        timeout,
    };
    if EXPORTER.set(exporter).is_err() {
        tracing::warn!("the trace export was started twice; the second is unused");
    }
    Ok(())
}

/// Whether spans are exported at all.
pub fn enabled() -> bool {
    EXPORTER.get().is_some()
}

/// Spans dropped because the export queue was full.
pub fn dropped() -> u64 {
    EXPORTER
        .get()
        .map_or(0, |exporter| exporter.dropped.load(Ordering::Relaxed))
}

/// Sends the spans still waiting and stops the thread; returns within
/// about one export timeout. Call it as the process ends (blocking: from
/// async code, in `spawn_blocking` or at the end of `main`).
pub fn shutdown() {
    let Some(exporter) = EXPORTER.get() else {
        return;
    };
    let Some(thread) = exporter.thread.lock().ok().and_then(|mut t| t.take()) else {
        return;
    };
    let (done, wait) = mpsc::sync_channel(1);
    // Waits for room while the thread works the queue down, but no longer
    // than one export would take: a collector that is down must not hold
    // up a daemon's stop by a timeout per queued batch.
    let deadline = std::time::Instant::now() + exporter.timeout + Duration::from_secs(1);
    let mut stop = Command::Stop(done);
    loop {
        match exporter.commands.try_send(stop) {
            Ok(()) => break,
            Err(TrySendError::Full(again)) if std::time::Instant::now() < deadline => {
                stop = again;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => return,
        }
    }
    let left = deadline.saturating_duration_since(std::time::Instant::now());
    if wait
        .recv_timeout(left.max(Duration::from_millis(100)))
        .is_ok()
    {
        let _ = thread.join();
    }
}

/// The exporting thread's state.
struct Batcher {
    settings: Settings,
    resource: opentelemetry_proto::tonic::resource::v1::Resource,
    failing: bool,
    dropped_seen: u64,
}

impl Batcher {
    fn run(mut self, commands: &mpsc::Receiver<Command>) {
        let mut batch = Vec::new();
        let mut due = Instant::now() + self.settings.delay;
        loop {
            let wait = due.saturating_duration_since(Instant::now());
            match commands.recv_timeout(wait) {
                Ok(Command::Span(span)) => {
                    batch.push(*span);
                    if batch.len() >= self.settings.max_batch {
                        self.export(&mut batch);
                    }
                }
                Ok(Command::Stop(done)) => {
                    while let Ok(Command::Span(span)) = commands.try_recv() {
                        batch.push(*span);
                    }
                    self.export(&mut batch);
                    let _ = done.send(());
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.export(&mut batch);
                    due = Instant::now() + self.settings.delay;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.export(&mut batch);
                    return;
                }
            }
        }
    }

    /// Sends `batch` (in requests of at most the batch size) and empties it.
    fn export(&mut self, batch: &mut Vec<proto::Span>) {
        self.report_dropped();
        while !batch.is_empty() {
            let rest = batch.split_off(batch.len().min(self.settings.max_batch));
            let spans = std::mem::replace(batch, rest);
            let count = spans.len();
            let request = self.request(spans);
            let url = &self.settings.collector.url;
            match self.settings.collector.post(&request.encode_to_vec()) {
                Ok(answer) => {
                    if self.failing {
                        self.failing = false;
                        tracing::info!(%url, "traces exported again");
                    }
                    tracing::debug!(%url, spans = count, "traces exported");
                    if let Ok(answer) = ExportTraceServiceResponse::decode(&answer[..])
                        && let Some(partial) = answer.partial_success
                        && partial.rejected_spans > 0
                    {
                        tracing::warn!(
                            %url,
                            rejected = partial.rejected_spans,
                            reason = %partial.error_message,
                            "the OTLP collector rejected some spans"
                        );
                    }
                }
                Err(error) if !self.failing => {
                    self.failing = true;
                    tracing::warn!(%error, spans = count, "cannot export traces; spans are dropped until the collector answers");
                }
                Err(error) => tracing::debug!(%error, spans = count, "trace export failed again"),
            }
        }
    }

    fn report_dropped(&mut self) {
        let dropped = dropped();
        if dropped > self.dropped_seen {
            tracing::warn!(
                dropped = dropped - self.dropped_seen,
                total = dropped,
                "trace export queue full; spans dropped"
            );
            self.dropped_seen = dropped;
        }
    }

    fn request(&self, spans: Vec<proto::Span>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(self.resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "empath".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }
}

/// An 8-byte span ID, random and never zero (zero means "none").
fn new_span_id() -> [u8; 8] {
    loop {
        let id: u64 = rand::random();
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One operation on one message. Started and ended by the daemon that
/// does it; ending sends it to the exporter. When nothing is exported, a
/// span is empty and every call on it does nothing.
#[must_use = "a span is sent when it ends"]
pub struct Span {
    open: Option<Box<Open>>,
}

struct Open {
    name: &'static str,
    kind: Kind,
    trace_id: [u8; 16],
    span_id: [u8; 8],
    start_ns: u64,
    attributes: Vec<KeyValue>,
    error: Option<String>,
}

impl Span {
    /// Starts the span `name` of message `id`, now.
    pub fn start(name: &'static str, kind: Kind, id: QueueId) -> Self {
        Self::started_at(name, kind, id, unix_nanos())
    }

    /// Starts the span `name` of message `id` at `start_ns` (Unix
    /// nanoseconds), for work that began before the queue ID was known.
    pub fn started_at(name: &'static str, kind: Kind, id: QueueId, start_ns: u64) -> Self {
        if !enabled() {
            return Self { open: None };
        }
        let open = Open {
            name,
            kind,
            trace_id: id.trace_id(),
            span_id: new_span_id(),
            start_ns,
            attributes: vec![string_attribute("empath.queue_id", &id.to_string())],
            error: None,
        };
        Self {
            open: Some(Box::new(open)),
        }
    }

    /// The span's ID as log lines write it; `None` when not exported.
    pub fn span_id_hex(&self) -> Option<String> {
        self.open.as_ref().map(|open| hex(&open.span_id))
    }

    /// A `tracing` span that puts this span's `trace_id` and `span_id`
    /// on the log lines written inside it (see [`crate::logging`]);
    /// a disabled one when the span is not exported.
    pub fn log_context(&self) -> tracing::Span {
        match &self.open {
            Some(open) => tracing::info_span!(
                "span",
                otel.name = open.name,
                trace_id = %hex(&open.trace_id),
                span_id = %hex(&open.span_id)
            ),
            None => tracing::Span::none(),
        }
    }

    pub fn text(&mut self, key: &str, value: &str) -> &mut Self {
        if let Some(open) = &mut self.open {
            open.attributes.push(string_attribute(key, value));
        }
        self
    }

    pub fn number(&mut self, key: &str, value: impl TryInto<i64>) -> &mut Self {
        if let Some(open) = &mut self.open {
            let value = value.try_into().unwrap_or(i64::MAX);
            open.attributes.push(int_attribute(key, value));
        }
        self
    }

    /// Marks the span failed (status ERROR), saying why.
    pub fn fail(&mut self, why: &str) -> &mut Self {
        if let Some(open) = &mut self.open {
            open.error = Some(why.to_owned());
        }
        self
    }

    /// Ends the span now and hands it to the exporter, without waiting.
    pub fn end(self) {
        let Some(open) = self.open else {
            return;
        };
        let Some(exporter) = EXPORTER.get() else {
            return;
        };
        let status = match open.error {
            Some(message) => Status {
                message,
                code: proto::status::StatusCode::Error as i32,
            },
            None => Status {
                message: String::new(),
                code: proto::status::StatusCode::Unset as i32,
            },
        };
        let span = proto::Span {
            trace_id: open.trace_id.to_vec(),
            span_id: open.span_id.to_vec(),
            name: open.name.to_owned(),
            kind: open.kind as i32,
            start_time_unix_nano: open.start_ns,
            end_time_unix_nano: unix_nanos().max(open.start_ns),
            attributes: open.attributes,
            status: Some(status),
            ..Default::default()
        };
        match exporter.commands.try_send(Command::Span(Box::new(span))) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                exporter.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The `delivery attempt` span of one job of a delivery agent
/// (`transport`: `smtp`, `lmtp`, `local`), started now.
pub fn delivery_attempt(job: &DeliveryJob, transport: &str) -> Span {
    let mut span = Span::start("delivery attempt", Kind::Client, job.id);
    span.text("empath.domain", &job.domain)
        .text("empath.transport", transport)
        .text("empath.sender", &job.sender)
        .number("empath.recipient_count", job.recipients.len())
        .number("empath.size", job.content_size)
        .number("empath.delivery_attempt", job.attempt);
    span
}

/// Ends a `delivery attempt` span with the job's report: the server, the
/// SMTP code and the outcome (`delivered`, `deferred`, `failed`, or
/// `partial` when the recipients fared differently). Any recipient not
/// delivered makes the span an error, with that server's reply.
pub fn end_delivery_attempt(mut span: Span, report: &DeliveryReport) {
    if span.open.is_none() {
        return;
    }
    let first = |outcome: Outcome| report.results.iter().find(|r| r.outcome == outcome);
    let telling = first(Outcome::Failed)
        .or_else(|| first(Outcome::Deferred))
        .or_else(|| report.results.first());
    let outcome = match report.results.first().map(|r| r.outcome) {
        Some(one) if report.results.iter().all(|r| r.outcome == one) => outcome_name(one),
        Some(_) => "partial",
        None => "none",
    };
    span.text("empath.outcome", outcome);
    for (name, counted) in [
        ("empath.delivered", Outcome::Delivered),
        ("empath.deferred", Outcome::Deferred),
        ("empath.failed", Outcome::Failed),
    ] {
        let count = report.results.iter().filter(|r| r.outcome == counted);
        span.number(name, count.count());
    }
    if let Some(server) = report.results.iter().find_map(|r| r.remote.as_deref()) {
        span.text("empath.server", server);
    }
    if let Some(result) = telling {
        span.number("empath.smtp_code", result.reply.code);
        if result.outcome != Outcome::Delivered {
            span.fail(&result.reply.to_string());
        }
    }
    if report.destination_failed {
        span.text("empath.destination_failed", "true");
    }
    span.end();
}

fn outcome_name(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Delivered => "delivered",
        Outcome::Deferred => "deferred",
        Outcome::Failed => "failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    fn metrics(endpoint: Option<&str>) -> config::Metrics {
        config::Metrics {
            endpoint: endpoint.map(Into::into),
            api_key: Some("k".into()),
            ..config::Metrics::default()
        }
    }

    fn url(metrics: &config::Metrics, vars: &[(&str, &str)]) -> Option<String> {
        Settings::resolve(metrics, env(vars))
            .unwrap()
            .map(|s| s.collector.url)
    }

    #[test]
    fn the_endpoint_comes_from_the_environment_then_the_metrics_collector() {
        assert_eq!(url(&metrics(None), &[]), None, "nowhere to send");
        let base = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")];
        assert_eq!(
            url(&metrics(None), &base).as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        let signal = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://jaeger:4318/x"),
        ];
        assert_eq!(
            url(&metrics(None), &signal).as_deref(),
            Some("http://jaeger:4318/x")
        );
        let collector = metrics(Some("https://otel.example/v1/metrics"));
        assert_eq!(
            url(&collector, &[]).as_deref(),
            Some("https://otel.example/v1/traces")
        );
        assert_eq!(
            url(&collector, &base).as_deref(),
            Some("http://collector:4318/v1/traces"),
            "the environment names the trace collector first"
        );
        assert_eq!(
            url(&metrics(Some("https://metrics.example/push")), &[]),
            None,
            "a metrics URL of another shape implies no trace collector"
        );
        let off = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ];
        assert_eq!(url(&metrics(None), &off), None);
        let settings = Settings::resolve(&collector, env(&[])).unwrap().unwrap();
        assert_eq!(settings.collector.api_key.as_deref(), Some("k"));
        assert_eq!(settings.delay, DEFAULT_DELAY);
        assert_eq!((settings.max_queue, settings.max_batch), (2048, 512));
        assert_eq!(settings.service_name, "empath-mta");
    }

    #[test]
    fn bad_settings_are_named() {
        let bad = [("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "jaeger:4318")];
        let error = Settings::resolve(&metrics(None), env(&bad)).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            "{error}"
        );
        let delay = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_BSP_SCHEDULE_DELAY", "soon"),
        ];
        let error = Settings::resolve(&metrics(None), env(&delay)).unwrap_err();
        assert_eq!(error, TargetError::BadDuration("OTEL_BSP_SCHEDULE_DELAY"));
        let size = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "0"),
        ];
        let error = Settings::resolve(&metrics(None), env(&size)).unwrap_err();
        assert_eq!(error, TargetError::BadNumber("OTEL_BSP_MAX_QUEUE_SIZE"));
    }

    #[test]
    fn a_span_is_inert_when_nothing_is_exported() {
        let mut span = Span::start("receive", Kind::Server, QueueId::generate());
        span.text("empath.sender", "a@b").fail("no");
        assert_eq!(span.span_id_hex(), None);
        span.end();
    }

    #[test]
    fn span_ids_are_eight_bytes_never_zero() {
        for _ in 0..1000 {
            assert_ne!(new_span_id(), [0; 8]);
        }
        assert_eq!(hex(&[0, 0xab, 1]), "00ab01");
    }
}
