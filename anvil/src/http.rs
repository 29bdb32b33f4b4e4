//! The health and metrics endpoints (tiny_http), on the listener the
//! master bound for `health.listen_address` and passed down:
//! `/health/live`, `/health/ready` (the seeds' JSON; 503 when not ready)
//! and `/metrics` (Prometheus text for the whole system).

use std::net::TcpListener;
use std::sync::Arc;

use empath_common::config::Config;
use empath_common::metrics::snapshot::Merged;
use empath_common::queue::Queue;
use empath_common::supervision::MasterStatus;
use tiny_http::{Header, Method, Request, Response, Server};

use crate::collector::Collector;
use crate::readiness::{self, Observed};
use crate::system;

/// What the endpoints report on.
pub struct Sources {
    pub config: Config,
    pub queue: Queue,
    pub collector: Arc<Collector>,
}

/// Serves HTTP on `listener` in a thread of its own, for the life of the
/// process.
pub fn start(listener: TcpListener, sources: Sources) -> Result<(), String> {
    // tiny_http's accept thread blocks in accept.
    listener
        .set_nonblocking(false)
        .map_err(|e| format!("health listener: {e}"))?;
    let address = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let server = Server::from_listener(listener, None)
        .map_err(|e| format!("cannot serve HTTP on the health listener: {e}"))?;
    std::thread::Builder::new()
        .name("http".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                answer(request, &sources);
            }
        })
        .map_err(|e| format!("cannot start the HTTP thread: {e}"))?;
    tracing::info!(%address, "serving /health and /metrics");
    Ok(())
}

fn answer(request: Request, sources: &Sources) {
    empath_common::daemon::mark_serving();
    let config = &sources.config;
    let path = request.url().split('?').next().unwrap_or("").to_owned();
    let response = match (request.method(), path.as_str()) {
        (Method::Get | Method::Head, "/health/live") => text(200, "OK\n"),
        (Method::Get | Method::Head, "/health/ready") => {
            let readiness = readiness::judge(config, &Observed::gather(&sources.queue));
            let code = if readiness.ready { 200 } else { 503 };
            let body = serde_json::to_string_pretty(&readiness).unwrap_or_default();
            with_type(
                Response::from_string(body + "\n").with_status_code(code),
                "application/json",
            )
        }
        (Method::Get | Method::Head, "/metrics") if config.metrics.enabled => {
            // metrics.api_key is for the OTLP collector (the seeds'
            // meaning); only the separate scrape_token guards /metrics.
            if authorized(&request, config.metrics.scrape_token.as_deref()) {
                with_type(
                    Response::from_string(render_metrics(sources)).with_status_code(200),
                    "text/plain; version=0.0.4; charset=utf-8",
                )
            } else {
                text(
                    401,
                    "metrics.scrape_token is set: send Authorization: Bearer <token>\n",
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

fn render_metrics(sources: &Sources) -> String {
    whole_system(&sources.collector, &sources.queue).render()
}

/// Every daemon's metrics (with what restarted daemons had counted), the
/// daemons as the master sees them, and the queue gauges: what /metrics
/// shows and the OTLP push sends.
pub fn whole_system(collector: &Collector, queue: &Queue) -> Merged {
    let status = MasterStatus::read(queue).ok();
    let mut merged = collector.collect(status.as_ref().map(|s| s.run.as_str()));
    // empath-anvil exports its own registry like every daemon (all at
    // zero), so every family is declared from the first scrape on.
    if let Some(status) = &status {
        merged.add(&system::process_snapshot(status));
    }
    merged.add(&system::queue_snapshot(queue));
    merged
}
