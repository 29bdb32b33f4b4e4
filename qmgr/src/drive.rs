//! The scheduler's own thread. The scheduler decides synchronously and does
//! its queue file operations itself (renames, reads, removals: short, but
//! blocking), so it runs on a thread of its own rather than on the async
//! runtime, where each decision would have to hand the worker thread over
//! (`block_in_place`) first. Async tasks (agent connections, notices,
//! queue commands) send it [`Event`]s; it waits for the next one, or for
//! the next timer.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use empath_common::config::Delivery;
use empath_common::queue::Queue;

use crate::dispatch::Agents;
use crate::scheduler::{Event, Scheduler};

/// How often content files no envelope refers to are looked for.
const SWEEP_INTERVAL: Duration = Duration::from_secs(3600);

/// When the periodic chores are next due.
struct Timers {
    /// Rescan `incoming/` and `deferred/` (the directories are the truth;
    /// notices only make things faster), forget idle destinations.
    scan: Duration,
    next_scan: Instant,
    /// Look at the deferred index for due messages.
    due: Duration,
    next_due: Instant,
    sweep: Duration,
    next_sweep: Instant,
}

impl Timers {
    fn new(policy: &Delivery, now: Instant) -> Self {
        let scan = Duration::from_secs(policy.scan_interval_secs.max(1));
        let due = Duration::from_secs(policy.process_interval_secs.max(1));
        Self {
            scan,
            next_scan: now + scan,
            due,
            next_due: now + due,
            sweep: SWEEP_INTERVAL,
            // Orphans left by the last run (a crash) go at start; the
            // scans were just done by the recovery.
            next_sweep: now,
        }
    }

    fn next(&self) -> Instant {
        self.next_scan.min(self.next_due).min(self.next_sweep)
    }

    /// Carries out the chores that are due.
    fn fire(&mut self, scheduler: &mut Scheduler<Queue, Agents>, now: Instant) {
        if now >= self.next_scan {
            scheduler.scan_incoming();
            scheduler.scan_deferred();
            scheduler.evict_idle_destinations();
            self.next_scan = now + self.scan;
        }
        if now >= self.next_due {
            // run() takes what is due; nothing else to do.
            self.next_due = now + self.due;
        }
        if now >= self.next_sweep {
            scheduler.sweep();
            self.next_sweep = now + self.sweep;
        }
    }
}

/// Runs the scheduler until [`Event::Stop`], then lets the deliveries in
/// flight record their results for at most `shutdown_timeout`. Anything
/// cut short is still in `active/` and goes back to `incoming/` at the next
/// start. `runtime` is the async runtime the scheduler's requests (agent
/// connections, background writes) are spawned on.
pub fn drive(
    mut scheduler: Scheduler<Queue, Agents>,
    inbox: Receiver<Event>,
    policy: &Delivery,
    shutdown_timeout: Duration,
    runtime: tokio::runtime::Handle,
) {
    let _runtime = runtime.enter();
    let mut timers = Timers::new(policy, Instant::now());
    loop {
        scheduler.run();
        // Checked after every event too: a steady stream of events must
        // not keep the chores from coming due.
        let now = Instant::now();
        if now >= timers.next() {
            timers.fire(&mut scheduler, now);
            continue;
        }
        // A job held back by a rate limit goes as soon as its token is due.
        let wake = scheduler
            .wake_at()
            .map_or(timers.next(), |at| at.min(timers.next()));
        match inbox.recv_timeout(wake.saturating_duration_since(now)) {
            Ok(Event::Stop) | Err(RecvTimeoutError::Disconnected) => break,
            Ok(event) => scheduler.handle(event),
            Err(RecvTimeoutError::Timeout) => {}
        }
    }
    // Graceful stop: start nothing new (run() is no longer called), and let
    // the jobs in flight, and the writes of their results, end.
    tracing::info!(in_flight = scheduler.running(), "qmgr stopping");
    let deadline = Instant::now() + shutdown_timeout;
    while scheduler.running() > 0 {
        match inbox.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Event::Stop) => {}
            Ok(event) => scheduler.handle(event),
            Err(_) => break,
        }
    }
}
