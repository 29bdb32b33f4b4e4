//! `empath-qmgr`: the only scheduler. It moves messages from `incoming/`
//! and due ones from `deferred/` into `active/`, hands them to smtp-out,
//! records per-recipient results, retries with backoff, and sends failures
//! to bounce.

mod breaker;
mod destinations;
mod dispatch;
mod drive;
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

use scheduler::{Event, Scheduler};

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
    let (events, inbox) = std::sync::mpsc::channel();
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

    let policy = config.delivery.clone();
    let shutdown_timeout = Duration::from_secs(config.shutdown_timeout_secs);
    let runtime = tokio::runtime::Handle::current();
    let scheduling = std::thread::Builder::new()
        .name("scheduler".into())
        .spawn(move || {
            let driven = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                drive::drive(scheduler, inbox, &policy, shutdown_timeout, runtime)
            }));
            // Without its scheduler qmgr would only look alive: it exits,
            // and the master starts a new one, which recovers active/.
            if driven.is_err() {
                tracing::error!("the scheduler panicked; qmgr exits");
                std::process::exit(70);
            }
        });
    let scheduling = match scheduling {
        Ok(thread) => thread,
        Err(error) => {
            tracing::error!(%error, "cannot start the scheduler thread");
            std::process::exit(1);
        }
    };
    tracing::info!(socket = %path.display(), "qmgr ready");
    daemon::stop_requested().await;
    let _ = events.send(Event::Stop);
    let _ = tokio::task::block_in_place(|| scheduling.join());
    drop(lock);
    tokio::task::block_in_place(empath_common::traces::shutdown);
}

/// Answers queue commands routed by the master: each goes to the scheduler,
/// which answers from its live state.
async fn answer_control(mut stream: UnixStream, events: scheduler::Events) -> io::Result<()> {
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
async fn forward_notices(stream: UnixStream, events: scheduler::Events) -> io::Result<()> {
    // Buffered: cleanup sends the notices of a group commit in one write.
    let mut stream = tokio::io::BufReader::new(stream);
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
