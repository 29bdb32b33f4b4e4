//! `empath-showq`: the queue listing, read-only, outside the scheduler.
//! Like Postfix's showq, it answers `mailq` for any local user on
//! `public/showq.sock`, and the master's read-only queue commands
//! (`empathctl queue list|view|stats`) on `private/showq-control.sock`.
//! Everything it says comes from [`empath_common::queue::lister`], which
//! reads the queue directory and never changes it.
//!
//! A listing of a million messages reads a million envelopes: showq runs
//! at a lower CPU and I/O priority than the daemons that move mail, and
//! lists a bounded number of queues at a time, so that no listing delays
//! a delivery.

mod control;
mod public;

use std::sync::Arc;

use empath_common::daemon;
use empath_common::protocol;

/// The nice value showq runs at (the mail daemons run at 0).
const NICENESS: i32 = 10;
/// ioprio_set(2): best-effort class, lowest level.
const IOPRIO_WHO_PROCESS: libc::c_long = 1;
const IOPRIO_CLASS_BE: libc::c_long = 2;
const IOPRIO_CLASS_SHIFT: libc::c_long = 13;
const IOPRIO_LOWEST: libc::c_long = 7;

fn main() {
    // Before the runtime starts its threads, which inherit both.
    lower_priority();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("empath-showq: cannot start: {error}");
            std::process::exit(71);
        }
    };
    runtime.block_on(run());
    // A listing still being read is of no use to anyone once we stop:
    // do not wait for it.
    runtime.shutdown_background();
}

async fn run() {
    let started = daemon::start("showq");
    let queue = started.queue;
    let public_path = queue.public_socket(protocol::SHOWQ);
    let control_path = queue.private_socket(protocol::SHOWQ_CONTROL);
    // Any local user may ask (0666), as any local user may run mailq.
    let (public_listener, control_listener) = match (
        daemon::bind_socket_with_mode(&public_path, 0o666),
        daemon::bind_socket(&control_path),
    ) {
        (Ok(public), Ok(control)) => (public, control),
        (Err(error), _) | (_, Err(error)) => {
            tracing::error!(%error, public = %public_path.display(), control = %control_path.display(), "cannot listen");
            std::process::exit(1);
        }
    };
    let mailq = Arc::new(public::Mailq::new(queue.clone()));
    let control = Arc::new(control::Control::new(queue));
    tracing::info!(socket = %public_path.display(), control = %control_path.display(), "showq ready");
    tokio::select! {
        result = daemon::serve(public_listener, "showq", move |stream| Arc::clone(&mailq).connection(stream)) => {
            if let Err(error) = result {
                tracing::error!(%error, "showq stopped");
            }
        }
        result = daemon::serve(control_listener, "showq", move |stream| Arc::clone(&control).connection(stream)) => {
            if let Err(error) = result {
                tracing::error!(%error, "showq stopped");
            }
        }
        () = daemon::stop_requested() => tracing::info!("showq stopping"),
    }
}

/// Lowers this thread's CPU and I/O priority; threads started afterwards
/// inherit both. Failing is not fatal: showq is only slower to yield.
fn lower_priority() {
    // SAFETY: setpriority and ioprio_set take plain integers and change
    // only the calling thread's scheduling; no memory is shared.
    let (nice, ioprio) = unsafe {
        (
            libc::setpriority(libc::PRIO_PROCESS, 0, NICENESS),
            libc::syscall(
                libc::SYS_ioprio_set,
                IOPRIO_WHO_PROCESS,
                0 as libc::c_long,
                (IOPRIO_CLASS_BE << IOPRIO_CLASS_SHIFT) | IOPRIO_LOWEST,
            ),
        )
    };
    if nice != 0 || ioprio != 0 {
        eprintln!(
            "empath-showq: cannot lower its priority: {}",
            std::io::Error::last_os_error()
        );
    }
}
