//! `empath-qmgr`: the only scheduler. It moves messages from `incoming/`
//! and due ones from `deferred/` into `active/`, hands them to smtp-out,
//! records per-recipient results, retries with backoff, and sends failures
//! to bounce.

mod dispatch;
mod jobs;
mod retry;
mod scheduler;

use std::io;
use std::time::Duration;

use empath_common::daemon;
use empath_common::ipc::read_frame;
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
    let path = queue.private_socket(protocol::QMGR);
    let listener = match daemon::bind_socket(&path) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, socket = %path.display(), "cannot listen");
            std::process::exit(1);
        }
    };
    let (events, mut inbox) = mpsc::unbounded_channel();
    let mut scheduler = Scheduler::new(
        queue,
        config.delivery.clone(),
        config.dsn.clone(),
        events.clone(),
    );
    tokio::task::block_in_place(|| scheduler.recover());

    let notices = events.clone();
    tokio::spawn(daemon::serve(listener, "qmgr", move |stream| {
        forward_notices(stream, notices.clone())
    }));

    let mut scan = tokio::time::interval(Duration::from_secs(config.delivery.scan_interval_secs));
    let mut due = tokio::time::interval(Duration::from_secs(config.delivery.process_interval_secs));
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    let stop = daemon::stop_requested();
    tokio::pin!(stop);
    tracing::info!(socket = %path.display(), "qmgr ready");
    loop {
        tokio::task::block_in_place(|| scheduler.run());
        tokio::select! {
            Some(event) = inbox.recv() => tokio::task::block_in_place(|| scheduler.handle(event)),
            _ = scan.tick() => tokio::task::block_in_place(|| scheduler.scan_incoming()),
            _ = due.tick() => {}
            _ = sweep.tick() => tokio::task::block_in_place(|| scheduler.sweep()),
            () = &mut stop => break,
        }
    }
    tracing::info!("qmgr stopping");
    drop(lock);
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
        }
    }
    Ok(())
}
