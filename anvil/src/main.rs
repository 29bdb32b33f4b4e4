//! `empath-anvil`: everything that parses what others send, kept out of
//! the root master and run unprivileged like Postfix's anvil:
//!
//! - [`server`]: `private/anvil.sock`, the connection and AUTH-failure
//!   accounting of every smtpd process ([`accounting`]);
//! - [`http`]: `/health/live`, `/health/ready` ([`readiness`]) and
//!   `/metrics` on the health listener that the master bound and passed
//!   down ([`inherit`]);
//! - [`collector`]: every daemon's metrics, with counters that never go
//!   backwards across restarts; [`system`]: the queue and the master's
//!   view of the daemons (its status file) as metrics.

mod accounting;
mod collector;
mod http;
mod inherit;
mod readiness;
mod server;
mod system;

use std::process::ExitCode;
use std::sync::Arc;

use empath_common::daemon::{self, Daemon};
use empath_common::protocol::ANVIL;
use empath_common::queue::Queue;
use empath_common::supervision::MasterStatus;

use crate::accounting::{Accounting, Limits};
use crate::collector::{COLLECT_INTERVAL, Collector};

fn main() -> ExitCode {
    let Daemon { config, queue } = daemon::start("anvil");
    let health = match inherit::health_listener() {
        Ok(health) => health,
        Err(message) => return fail(&message),
    };
    let collector = Arc::new(Collector::load(&queue));
    // The OTLP push (when a collector is configured) carries the same
    // numbers as /metrics. Its last push at our stop comes after every
    // other daemon stopped: the anvil stops last.
    let pusher = config
        .metrics
        .enabled
        .then(|| start_otlp(&config, &queue, Arc::clone(&collector)))
        .flatten();
    // Without the health listener or a push nobody reads the metrics.
    if config.metrics.enabled
        && (health.is_some() || pusher.is_some())
        && let Err(message) = collect_in_background(Arc::clone(&collector), queue.clone())
    {
        return fail(&message);
    }
    if let Some(listener) = health {
        let sources = http::Sources {
            config: config.clone(),
            queue: queue.clone(),
            collector,
        };
        // Connection accounting matters more than health checks: keep on.
        if let Err(message) = http::start(listener, sources) {
            tracing::error!(error = %message, "health and metrics endpoints are not available");
        }
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return fail(&format!("cannot start the async runtime: {error}")),
    };
    let result = runtime.block_on(async {
        // Registered before anything else, so that a SIGHUP never finds
        // the default action (which would kill us). The master restarts
        // the anvil to apply a new config.
        let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| format!("cannot handle SIGHUP: {e}"))?;
        let path = queue.private_socket(ANVIL);
        let listener = daemon::bind_socket(&path)
            .map_err(|e| format!("cannot bind {}: {e}", path.display()))?;
        let shared = server::Shared::new(Accounting::new(Limits::of(&config)));
        tracing::info!(socket = %path.display(), "counting connections and AUTH failures for smtpd");
        let serving = server::serve(listener, shared);
        tokio::pin!(serving);
        loop {
            tokio::select! {
                result = &mut serving => {
                    return result.map_err(|e| format!("the anvil socket failed: {e}"));
                }
                () = daemon::stop_requested() => return Ok(()),
                _ = hangups.recv() => {
                    tracing::info!("SIGHUP ignored: the master restarts empath-anvil to apply a new config");
                }
            }
        }
    });
    runtime.shutdown_background();
    if let Some(pusher) = pusher {
        pusher.stop_collecting().finish();
    }
    match result {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(message) => fail(&message),
    }
}

/// Pushes the metrics of the whole system to an OTLP collector, if the
/// config or the environment names one.
fn start_otlp(
    config: &empath_common::config::Config,
    queue: &Queue,
    collector: Arc<Collector>,
) -> Option<empath_common::metrics::otlp::Pusher> {
    let queue = queue.clone();
    empath_common::metrics::otlp::Pusher::from_config(&config.metrics, move || {
        http::whole_system(&collector, &queue).into_snapshot()
    })
}

/// Collects every [`COLLECT_INTERVAL`], so that a daemon that dies loses
/// at most that much of its counting.
fn collect_in_background(collector: Arc<Collector>, queue: Queue) -> Result<(), String> {
    std::thread::Builder::new()
        .name("collector".into())
        .spawn(move || {
            loop {
                let run = MasterStatus::read(&queue).ok().map(|status| status.run);
                collector.collect(run.as_deref());
                std::thread::sleep(COLLECT_INTERVAL);
            }
        })
        .map(drop)
        .map_err(|e| format!("cannot start the metrics collector: {e}"))
}

/// Logs a fatal error where both the log and an operator at a terminal
/// see it, and exits with status 1.
fn fail(message: &str) -> ExitCode {
    tracing::error!(error = %message, "empath-anvil cannot run");
    eprintln!("empath-anvil: {message}");
    ExitCode::from(1)
}
