//! The health and metrics listener (tiny_http, on `health.listen_address`):
//! `/health/live`, `/health/ready` (the seeds' JSON; 503 when not ready)
//! and `/metrics` (Prometheus text for the whole system).

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use empath_common::config::Config;
use empath_common::metrics::{self, exporter, snapshot::Merged};
use empath_common::queue::{Queue, QueueState, lister};
use serde::Serialize;
use tiny_http::{Header, Method, Request, Response, Server};

use crate::supervisor::{QMGR, SMTP_OUT, SMTPD, Status};

/// How long one daemon may take to hand over its metrics.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(1);

/// What the endpoints report on.
pub struct Sources {
    pub config: Arc<RwLock<Arc<Config>>>,
    pub queue: Queue,
    pub status: Arc<Status>,
}

/// The running HTTP server.
pub struct HttpServer {
    server: Arc<Server>,
    thread: Option<JoinHandle<()>>,
    pub addr: SocketAddr,
}

impl HttpServer {
    pub fn start(addr: SocketAddr, sources: Sources) -> Result<Self, String> {
        let server = Server::http(addr)
            .map_err(|e| format!("health.listen_address: cannot listen on {addr}: {e}"))?;
        let bound = server.server_addr().to_ip().unwrap_or(addr);
        let server = Arc::new(server);
        let serving = Arc::clone(&server);
        let thread = std::thread::Builder::new()
            .name("http".into())
            .spawn(move || {
                for request in serving.incoming_requests() {
                    answer(request, &sources);
                }
            })
            .map_err(|e| format!("cannot start the health server: {e}"))?;
        tracing::info!(address = %bound, "serving /health and /metrics");
        Ok(Self {
            server,
            thread: Some(thread),
            addr: bound,
        })
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn answer(request: Request, sources: &Sources) {
    let config = sources
        .config
        .read()
        .map(|c| Arc::clone(&c))
        .unwrap_or_else(|poisoned| Arc::clone(&poisoned.into_inner()));
    let path = request.url().split('?').next().unwrap_or("").to_owned();
    let response = match (request.method(), path.as_str()) {
        (Method::Get | Method::Head, "/health/live") => text(200, "OK\n"),
        (Method::Get | Method::Head, "/health/ready") => {
            let readiness = readiness(&config, sources);
            let code = if readiness.ready { 200 } else { 503 };
            let body = serde_json::to_string_pretty(&readiness).unwrap_or_default();
            with_type(
                Response::from_string(body + "\n").with_status_code(code),
                "application/json",
            )
        }
        (Method::Get | Method::Head, "/metrics") if config.metrics.enabled => {
            if authorized(&request, config.metrics.api_key.as_deref()) {
                with_type(
                    Response::from_string(render_metrics(&sources.queue)).with_status_code(200),
                    "text/plain; version=0.0.4; charset=utf-8",
                )
            } else {
                text(
                    401,
                    "metrics.api_key is set: send Authorization: Bearer <key>\n",
                )
            }
        }
        _ => text(404, "not found\n"),
    };
    if let Err(error) = request.respond(response) {
        tracing::debug!(%error, "health client went away");
    }
}

fn text(code: u16, body: &str) -> Response<std::io::Cursor<Vec<u8>>> {
    with_type(
        Response::from_string(body).with_status_code(code),
        "text/plain; charset=utf-8",
    )
}

fn with_type(
    response: Response<std::io::Cursor<Vec<u8>>>,
    content_type: &str,
) -> Response<std::io::Cursor<Vec<u8>>> {
    match Header::from_bytes("Content-Type", content_type) {
        Ok(header) => response.with_header(header),
        Err(()) => response,
    }
}

fn authorized(request: &Request, api_key: Option<&str>) -> bool {
    let Some(key) = api_key else { return true };
    request.headers().iter().any(|header| {
        header.field.equiv("Authorization")
            && header.value.as_str().strip_prefix("Bearer ") == Some(key)
    })
}

/// The readiness JSON, field for field as in the seeds.
#[derive(Debug, Serialize)]
struct Readiness {
    alive: bool,
    ready: bool,
    smtp_ready: bool,
    spool_ready: bool,
    delivery_ready: bool,
    dns_ready: bool,
    queue_size: u64,
    max_queue_size: u64,
}

fn readiness(config: &Config, sources: &Sources) -> Readiness {
    let status = &sources.status;
    let smtpd_wanted = config.smtpd.processes.max(1);
    let smtp_ready = status.listeners_bound() && status.running(SMTPD) >= smtpd_wanted;
    let spool_ready = sources.queue.check_writable().is_ok();
    let delivery_ready = status.running(QMGR) > 0 && status.running(SMTP_OUT) > 0;
    // smtp-out owns the resolver; it is operational while smtp-out runs.
    let dns_ready = status.running(SMTP_OUT) > 0;
    let queue_size = QueueView::read(&sources.queue).total();
    let max_queue_size = config.health.max_queue_size;
    Readiness {
        alive: true,
        ready: smtp_ready
            && spool_ready
            && delivery_ready
            && dns_ready
            && queue_size < max_queue_size,
        smtp_ready,
        spool_ready,
        delivery_ready,
        dns_ready,
        queue_size,
        max_queue_size,
    }
}

/// Message counts per queue state and the arrival of the oldest message,
/// from the lister's count of the queue directories (no file is opened).
struct QueueView {
    counts: Vec<(&'static str, u64)>,
    oldest_ms: Option<u64>,
}

impl QueueView {
    /// The `status` label of each queue directory.
    const STATES: [(QueueState, &'static str); 4] = [
        (QueueState::Incoming, "pending"),
        (QueueState::Active, "active"),
        (QueueState::Deferred, "deferred"),
        (QueueState::Hold, "held"),
    ];

    fn read(queue: &Queue) -> Self {
        let counts = lister::count(queue).unwrap_or_default();
        Self {
            counts: Self::STATES
                .iter()
                .map(|(state, label)| (*label, counts.of(*state)))
                .collect(),
            oldest_ms: counts.oldest_ms,
        }
    }

    fn total(&self) -> u64 {
        self.counts.iter().map(|(_, n)| n).sum()
    }
}

/// Every daemon's metrics, the master's own, and the queue gauges.
pub fn render_metrics(queue: &Queue) -> String {
    let mut merged = Merged::default();
    for snapshot in exporter::scrape(queue, SCRAPE_TIMEOUT) {
        merged.add(&snapshot);
    }
    merged.add(&metrics::get().snapshot());
    merged.add(&queue_snapshot(queue));
    merged.render()
}

fn queue_snapshot(queue: &Queue) -> metrics::Snapshot {
    use metrics::{Family, Kind, Sample, Value};
    let view = QueueView::read(queue);
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let oldest = view
        .oldest_ms
        .map_or(0.0, |ms| now_ms.saturating_sub(ms) as f64 / 1000.0);
    let gauge = |name: &str, help: &str, value: f64| Family {
        name: name.into(),
        help: help.into(),
        kind: Kind::Gauge,
        samples: vec![Sample {
            labels: Vec::new(),
            value: Value::Scalar(value),
        }],
    };
    let mut families = Vec::new();
    // Free space where the queue lives, for the SpoolDiskSpaceLow alert.
    if let Ok(stats) = nix::sys::statvfs::statvfs(queue.root()) {
        let fragment = stats.fragment_size() as f64;
        families.push(gauge(
            "empath_spool_available_bytes",
            "Bytes available to the daemons on the spool's filesystem.",
            stats.blocks_available() as f64 * fragment,
        ));
        families.push(gauge(
            "empath_spool_size_bytes",
            "Size of the spool's filesystem.",
            stats.blocks() as f64 * fragment,
        ));
    }
    metrics::Snapshot {
        families: families.into_iter().chain([

            Family {
                name: "empath_delivery_queue_size".into(),
                help: "Messages in the queue, by status (pending: not yet tried; active: being delivered; deferred: waiting to retry; held).".into(),
                kind: Kind::Gauge,
                samples: view
                    .counts
                    .iter()
                    .map(|(label, n)| Sample {
                        labels: vec![("status".into(), (*label).into())],
                        value: Value::Scalar(*n as f64),
                    })
                    .collect(),
            },
            Family {
                name: "empath_delivery_queue_oldest_seconds".into(),
                help: "Age of the oldest message in the queue (0 when empty).".into(),
                kind: Kind::Gauge,
                samples: vec![Sample {
                    labels: Vec::new(),
                    value: Value::Scalar(oldest),
                }],
            },
        ]).collect(),
    }
}
