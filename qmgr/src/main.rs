//! `empath-qmgr`: the only scheduler. It moves messages from `incoming/`
//! and due ones from `deferred/` into `active/`, hands them to smtp-out,
//! records per-recipient results, retries with backoff, and sends failures
//! to bounce.

mod breaker;
mod destinations;
mod dispatch;
mod events;
mod jobs;
mod ready;
mod retry;
mod scheduler;
mod store;
mod throttle;
mod transport;

use std::io;
use std::time::Duration;

use empath_common::control::{ControlRequest, ControlResponse};
use empath_common::daemon;
use empath_common::ipc::{read_frame, write_frame};
use empath_common::protocol::{self, QmgrNotice};
use fs2::FileExt;
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use scheduler::{Event, Scheduler};

const SWEEP_INTERVAL: Duration = Duration::from_secs(3600);

#[tokio::main]
async fn main() {
    let started = daemon::start("qmgr");
    let queue = started.queue;
    let config = started.config;
    // Two schedulers on one queue would deliver everything twice.
    let lock = match std::fs::File::create(queue.root_file("qmgr.lock"))
        .and_then(|f| f.try_lock_exclusive().map(|()| f))
    {
        Ok(lock) => lock,
        Err(error) => {
            tracing::error!(%error, "another qmgr holds the queue lock");
            std::process::exit(1);
        }
    };
    // The master migrates a spool of the flat layout at start; this covers
    // new daemons restarted (SIGHUP) under a master that predates hashing.
    match tokio::task::block_in_place(|| queue.migrate()) {
        Ok(done) if done.moved + done.set_aside > 0 => {
            tracing::info!(
                moved = done.moved,
                set_aside = done.set_aside,
                "queue files moved to the hashed layout"
            );
        }
        Ok(_) => {}
        Err(error) => tracing::error!(%error, "cannot move the queue to the hashed layout"),
    }
    let path = queue.private_socket(protocol::QMGR);
    let control_path = queue.private_socket(protocol::QMGR_CONTROL);
    let listener = match daemon::bind_socket(&path) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, socket = %path.display(), "cannot listen");
            std::process::exit(1);
        }
    };
    // A module that cannot be loaded stops qmgr with the reason: better
    // than delivering without the module the operator configured.
    let modules = match empath_modules::Modules::load_configured(&config.modules) {
        Ok(modules) => modules,
        Err(error) => {
            tracing::error!(%error, "cannot load modules");
            eprintln!("empath-qmgr: {error}");
            std::process::exit(78);
        }
    };
    let (events, mut inbox) = mpsc::unbounded_channel();
    let couriers = dispatch::Agents::new(&queue, transport::Router::new(&config));
    let mut scheduler = Scheduler::new(
        queue,
        config.delivery.clone(),
        config.dsn.clone(),
        events.clone(),
        modules,
        couriers,
    );
    tokio::task::block_in_place(|| scheduler.recover());

    let notices = events.clone();
    tokio::spawn(daemon::serve(listener, "qmgr", move |stream| {
        forward_notices(stream, notices.clone())
    }));
    match daemon::bind_socket(&control_path) {
        Ok(control) => {
            let commands = events.clone();
            tokio::spawn(daemon::serve(control, "qmgr", move |stream| {
                answer_control(stream, commands.clone())
            }));
        }
        Err(error) => {
            tracing::error!(%error, socket = %control_path.display(), "cannot listen for queue commands");
            std::process::exit(1);
        }
    }

    let mut scan = tokio::time::interval(Duration::from_secs(config.delivery.scan_interval_secs));
    let mut due = tokio::time::interval(Duration::from_secs(config.delivery.process_interval_secs));
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    let stop = daemon::stop_requested();
    tokio::pin!(stop);
    tracing::info!(socket = %path.display(), "qmgr ready");
    loop {
        tokio::task::block_in_place(|| scheduler.run());
        // A job held back by a rate limit goes as soon as its token is due.
        let wake = scheduler.wake_at();
        let rate_limited = async {
            match wake {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some(event) = inbox.recv() => tokio::task::block_in_place(|| scheduler.handle(event)),
            () = rate_limited => {}
            _ = scan.tick() => tokio::task::block_in_place(|| {
                scheduler.scan_incoming();
                scheduler.scan_deferred();
                scheduler.evict_idle_destinations();
            }),
            _ = due.tick() => {}
            _ = sweep.tick() => tokio::task::block_in_place(|| scheduler.sweep()),
            () = &mut stop => break,
        }
    }
    // Graceful stop: start nothing new (run() is no longer called), and let
    // the deliveries in flight record their results, for at most
    // shutdown_timeout_secs. Anything cut short is still in active/ and
    // goes back to incoming/ at the next start.
    tracing::info!(in_flight = scheduler.running(), "qmgr stopping");
    // Results that were waiting to be written with others go now.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(config.shutdown_timeout_secs);
    while scheduler.running() > 0 {
        tokio::task::block_in_place(|| scheduler.write_all_checkpoints());
        tokio::select! {
            Some(event) = inbox.recv() => tokio::task::block_in_place(|| scheduler.handle(event)),
            () = tokio::time::sleep_until(deadline) => break,
        }
    }
    drop(lock);
    tokio::task::block_in_place(empath_common::traces::shutdown);
}

/// Answers queue commands routed by the master: each goes to the scheduler,
/// which answers from its live state.
async fn answer_control(
    mut stream: UnixStream,
    events: mpsc::UnboundedSender<Event>,
) -> io::Result<()> {
    while let Some(request) = read_frame::<_, ControlRequest>(&mut stream).await? {
        let response = match request {
            ControlRequest::Queue(command) => {
                let (reply, answer) = tokio::sync::oneshot::channel();
                let _ = events.send(Event::Control { command, reply });
                answer
                    .await
                    .unwrap_or_else(|_| ControlResponse::Error("qmgr is stopping".into()))
            }
            other => ControlResponse::Error(format!("qmgr does not handle {other:?}")),
        };
        write_frame(&mut stream, &response).await?;
    }
    Ok(())
}

/// Reads notifications from cleanup and passes them to the scheduler.
async fn forward_notices(
    mut stream: UnixStream,
    events: mpsc::UnboundedSender<Event>,
) -> io::Result<()> {
    while let Some(notice) = read_frame::<_, QmgrNotice>(&mut stream).await? {
        match notice {
            QmgrNotice::Incoming(id) => {
                let _ = events.send(Event::Incoming(id));
            }
            QmgrNotice::Freeze => {
                let _ = events.send(Event::Freeze);
            }
            QmgrNotice::Unfreeze => {
                let _ = events.send(Event::Unfreeze);
            }
            QmgrNotice::ProcessNow => {
                let _ = events.send(Event::ProcessNow);
            }
        }
    }
    Ok(())
}
