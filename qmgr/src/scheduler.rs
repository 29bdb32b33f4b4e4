//! The scheduler: owns the active set, decides what to deliver next, and
//! records outcomes in the queue. It runs on one task; I/O with the agents
//! runs on others and reports back as [`Event`]s.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use empath_common::config::{Delivery, Dsn};
use empath_common::control::{ControlResponse, QueueCommand};
use empath_common::maillog;
use empath_common::protocol::{
    BounceKind, BounceReply, DeliveryJob, DeliveryReport, Outcome, RecipientResult,
};
use empath_common::queue::{Envelope, QueueId, QueueState, ReadError};
use empath_common::smtp::Reply;
use empath_common::time::unix_now;
use empath_modules::Modules;
use tokio::sync::oneshot;

mod checkpoint;
mod control;
#[cfg(test)]
mod tests;

use crate::destinations::{Decision, Destinations};
use crate::dispatch::{AgentError, Couriers};
use crate::events;
use crate::jobs;
use crate::ready::ReadyJobs;
use crate::retry::{self, GiveUp};
use crate::store::Store;
use checkpoint::Checkpoint;

/// Where the scheduler's events are sent: a plain channel, since the
/// scheduler runs on a thread of its own (see `drive`), not on the async
/// runtime; async tasks send into it without waiting.
pub type Events = std::sync::mpsc::Sender<Event>;

/// What the scheduler reacts to.
#[derive(Debug)]
pub enum Event {
    /// cleanup says a message is in `incoming/`.
    Incoming(QueueId),
    /// A delivery agent finished a job (or gave no report).
    JobDone {
        job: DeliveryJob,
        result: Result<DeliveryReport, AgentError>,
    },
    /// A job whose agent was unreachable is ready to go again.
    Redispatch(DeliveryJob),
    /// A message's results so far were written (or could not be), while
    /// other jobs of it ran.
    Checkpointed {
        id: QueueId,
        result: std::io::Result<()>,
    },
    /// bounce answered about a message.
    BounceDone {
        id: QueueId,
        kind: BounceKind,
        result: Result<BounceReply, String>,
    },
    /// An operator asked to stop starting deliveries.
    Freeze,
    Unfreeze,
    /// An operator asked for every deferred message to be tried now.
    ProcessNow,
    /// An operator's queue command, answered on `reply`.
    Control {
        command: QueueCommand,
        reply: oneshot::Sender<ControlResponse>,
    },
    /// qmgr is stopping: start nothing new (handled by `drive`).
    Stop,
}

/// How long to wait before re-sending a job whose agent was unreachable
/// (not running, or restarting). Not an attempt: the job never left.
const AGENT_RETRY: Duration = Duration::from_secs(1);
/// How long to wait before asking bounce again after it failed.
const BOUNCE_RETRY_SECS: u64 = 60;
/// How long to wait before trying again to write an envelope that could
/// not be written (a full disk).
const WRITE_RETRY: Duration = Duration::from_secs(5);
/// A destination unused this long is forgotten (its state is rebuilt,
/// fresh, when mail for it comes again).
const DESTINATION_IDLE: Duration = Duration::from_secs(600);

struct ActiveMessage {
    envelope: Envelope,
    running_jobs: usize,
    /// Whether any job reached a delivery agent during this activation:
    /// only then does it count as an attempt. A job held back by an open
    /// circuit breaker never contacted anyone.
    attempted: bool,
    /// The earliest retry time a held-back job asks for (the breaker's
    /// next probe), for a message that was not attempted.
    not_before: Option<u64>,
    /// An operator asked for it now (process-now, retry): its
    /// destinations are tried even if their breaker is open.
    forced: bool,
    /// An operator deleted it while its delivery was running.
    cancelled: bool,
    /// Its results could not be written (a full disk): the write is
    /// tried again, the message stays scheduled.
    unsaved: bool,
    /// The write of the results of its finished jobs, while others run.
    checkpoint: Checkpoint,
}

impl ActiveMessage {
    fn new(envelope: Envelope, running_jobs: usize, forced: bool) -> Self {
        Self {
            envelope,
            running_jobs,
            attempted: false,
            not_before: None,
            forced,
            cancelled: false,
            unsaved: false,
            checkpoint: Checkpoint::Idle,
        }
    }
}

pub struct Scheduler<S: Store, C: Couriers> {
    queue: S,
    policy: Delivery,
    dsn: Dsn,
    events: Events,
    active: HashMap<QueueId, ActiveMessage>,
    /// New messages waiting for a place in the active set.
    incoming: VecDeque<QueueId>,
    incoming_known: HashSet<QueueId>,
    /// Deferred messages by due time.
    deferred: BTreeSet<(u64, QueueId)>,
    /// Jobs waiting for a delivery slot, per destination.
    ready: ReadyJobs,
    running: usize,
    /// Checkpoint writes in flight.
    checkpoints: usize,
    /// Alternates the source of the next activation, so that a flood of new
    /// mail cannot starve deferred mail or the reverse.
    prefer_deferred: bool,
    /// Per-domain concurrency, rate limit and circuit breaker.
    destinations: Destinations,
    /// No delivery starts while frozen.
    frozen: bool,
    /// When a job held back by a rate limit may go.
    wake_at: Option<Instant>,
    /// Plugin modules that want delivery events.
    modules: Modules,
    couriers: C,
    /// Messages whose envelope could not be written, by when to try again.
    unsaved: BTreeSet<(Instant, QueueId)>,
    /// Deferred messages an operator asked to be tried now.
    forced: HashSet<QueueId>,
}

impl<S: Store, C: Couriers> Scheduler<S, C> {
    pub fn new(
        queue: S,
        policy: Delivery,
        dsn: Dsn,
        events: Events,
        modules: Modules,
        couriers: C,
    ) -> Self {
        let destinations = Destinations::new(policy.clone());
        Self {
            queue,
            policy,
            dsn,
            events,
            active: HashMap::new(),
            incoming: VecDeque::new(),
            incoming_known: HashSet::new(),
            deferred: BTreeSet::new(),
            ready: ReadyJobs::default(),
            running: 0,
            checkpoints: 0,
            prefer_deferred: false,
            destinations,
            frozen: false,
            wake_at: None,
            modules,
            couriers,
            unsaved: BTreeSet::new(),
            forced: HashSet::new(),
        }
    }

    /// Start-up: whatever was active when the last qmgr stopped goes back to
    /// `incoming/`; the deferred index is rebuilt from the envelopes.
    pub fn recover(&mut self) {
        match self.queue.list(QueueState::Active) {
            Ok(listing) => {
                for id in listing.ids {
                    if let Err(error) =
                        self.queue
                            .move_unsynced(id, QueueState::Active, QueueState::Incoming)
                    {
                        tracing::error!(message_id = %id, %error, "cannot requeue active message");
                    }
                }
                self.quarantine_strays(QueueState::Active, &listing.strays);
            }
            Err(error) => tracing::error!(%error, "cannot list active/"),
        }
        match self.queue.list(QueueState::Deferred) {
            Ok(listing) => {
                for id in listing.ids {
                    match self.queue.read(QueueState::Deferred, id) {
                        Ok(envelope) => {
                            self.deferred.insert((envelope.next_retry.unwrap_or(0), id));
                        }
                        Err(error) => self.quarantine(QueueState::Deferred, id, &error),
                    }
                }
                self.quarantine_strays(QueueState::Deferred, &listing.strays);
            }
            Err(error) => tracing::error!(%error, "cannot list deferred/"),
        }
        self.frozen = self.queue.frozen();
        tracing::info!(
            deferred = self.deferred.len(),
            frozen = self.frozen,
            "queue recovered"
        );
        self.scan_incoming();
    }

    /// Picks up envelopes in `deferred/` that the index does not know:
    /// put back by an operator or by another tool. Directory scans are the
    /// source of truth; the index is only a cache of them.
    pub fn scan_deferred(&mut self) {
        let listing = match self.queue.list(QueueState::Deferred) {
            Ok(listing) => listing,
            Err(error) => return tracing::error!(%error, "cannot list deferred/"),
        };
        let known: HashSet<QueueId> = self.deferred.iter().map(|(_, id)| *id).collect();
        for id in listing.ids {
            if known.contains(&id) || self.active.contains_key(&id) {
                continue;
            }
            match self.queue.read(QueueState::Deferred, id) {
                Ok(envelope) => {
                    self.deferred.insert((envelope.next_retry.unwrap_or(0), id));
                }
                Err(error) => self.quarantine(QueueState::Deferred, id, &error),
            }
        }
        self.quarantine_strays(QueueState::Deferred, &listing.strays);
    }

    /// Picks up everything in `incoming/` (the source of truth; notifications
    /// only make it faster).
    pub fn scan_incoming(&mut self) {
        match self.queue.list(QueueState::Incoming) {
            Ok(listing) => {
                for id in listing.ids {
                    self.note_incoming(id);
                }
                self.quarantine_strays(QueueState::Incoming, &listing.strays);
            }
            Err(error) => tracing::error!(%error, "cannot list incoming/"),
        }
    }

    fn note_incoming(&mut self, id: QueueId) {
        if !self.active.contains_key(&id) && self.incoming_known.insert(id) {
            self.incoming.push_back(id);
        }
    }

    pub fn handle(&mut self, event: Event) {
        match event {
            Event::Incoming(id) => self.note_incoming(id),
            Event::JobDone { job, result } => self.job_done(job, result),
            Event::Redispatch(job) => self.ready.push(job),
            Event::Checkpointed { id, result } => self.checkpointed(id, result),
            Event::BounceDone {
                id,
                kind: BounceKind::Final,
                result,
            } => self.bounce_done(id, result),
            Event::BounceDone {
                id,
                kind: BounceKind::Delay,
                result,
            } => {
                // A delay warning is advisory: it is not sent twice, even if
                // this one could not be sent.
                if let Ok(BounceReply::Failed(error)) | Err(error) = result {
                    tracing::warn!(message_id = %id, %error, "delay warning not sent");
                }
            }
            Event::Freeze => self.set_frozen(true),
            Event::Unfreeze => self.set_frozen(false),
            Event::ProcessNow => self.process_now(),
            Event::Control { command, reply } => {
                let _ = reply.send(self.control(command));
            }
            Event::Stop => {}
        }
    }

    /// When `run` should be called again for a job held back by a rate
    /// limit, if one is.
    pub fn wake_at(&self) -> Option<Instant> {
        let unsaved = self.unsaved.first().map(|(at, _)| *at);
        match (self.wake_at, unsaved) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Every deferred message becomes due, and `incoming/` is rescanned.
    /// An operator's explicit request: the messages' destinations are
    /// tried even where a circuit breaker is open.
    pub fn process_now(&mut self) {
        let due = std::mem::take(&mut self.deferred);
        tracing::info!(deferred = due.len(), "processing the queue now");
        self.forced.extend(due.iter().map(|(_, id)| *id));
        self.deferred = due.into_iter().map(|(_, id)| (0, id)).collect();
        self.scan_incoming();
    }

    /// Forgets destinations nobody has used for a while, so that the
    /// per-destination state stays bounded however many domains mail
    /// went to.
    pub fn evict_idle_destinations(&mut self) {
        self.destinations
            .evict_idle(Instant::now(), DESTINATION_IDLE);
    }

    /// Deliveries and result writes in flight: a graceful stop waits
    /// for them.
    pub fn running(&self) -> usize {
        self.running + self.checkpoints
    }

    /// Fills the active set and starts as many jobs as there are slots:
    /// one job per destination in turn (round robin), until every
    /// destination with waiting jobs is held back (its concurrency or rate
    /// limit, its breaker) or all delivery slots are taken.
    pub fn run(&mut self) {
        self.wake_at = None;
        self.retry_unsaved();
        if self.frozen {
            return;
        }
        self.fill_active();
        let now = Instant::now();
        let mut open = self.ready.destinations();
        while !open.is_empty() {
            let mut still_open = Vec::with_capacity(open.len());
            for domain in open {
                if self.running >= self.policy.max_concurrent_deliveries {
                    return;
                }
                if self.start_next(&domain, now) {
                    still_open.push(domain);
                }
            }
            open = still_open;
        }
    }

    /// Starts (or, past an open breaker, defers) the next job waiting for
    /// `domain`. False when the destination holds its jobs back for now,
    /// or has none left: then none of its jobs can go in this pass.
    fn start_next(&mut self, domain: &str, now: Instant) -> bool {
        let Some(job) = self.ready.front(domain) else {
            return false;
        };
        let forced = self.active.get(&job.id).is_some_and(|m| m.forced);
        match self.destinations.decide(domain, job.id, now, forced) {
            Decision::Dispatch => {
                let Some(job) = self.ready.pop(domain) else {
                    return false;
                };
                self.ready.rotate_past(domain);
                self.running += 1;
                let envelope = self.active.get_mut(&job.id).map(|m| {
                    m.attempted = true;
                    &m.envelope
                });
                events::attempt(&self.modules, envelope, &job);
                self.couriers.deliver(job, self.events.clone());
                true
            }
            Decision::Wait(at) => {
                if let Some(at) = at {
                    self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
                }
                false
            }
            Decision::Defer { until } => {
                if let Some(job) = self.ready.pop(domain) {
                    self.defer_for_breaker(job, until, now);
                }
                true
            }
        }
    }

    /// The destination's circuit breaker is open: the job is deferred
    /// without contacting it. That is no attempt: the message is retried
    /// when the breaker lets a probe through, and `max_attempts` is not
    /// used up by waiting.
    fn defer_for_breaker(&mut self, job: DeliveryJob, until: Instant, now: Instant) {
        let probe_at = unix_now() + until.saturating_duration_since(now).as_secs().max(1);
        if let Some(message) = self.active.get_mut(&job.id) {
            message.not_before = Some(message.not_before.map_or(probe_at, |t| t.max(probe_at)));
        }
        let reply = Reply::new(
            451,
            "4.4.1",
            format!(
                "circuit breaker open for {} after repeated failures; not contacting it for {}s",
                job.domain,
                until.saturating_duration_since(now).as_secs().max(1)
            ),
        );
        log_without_agent(&job, &reply, Outcome::Deferred);
        self.record_report(&job, &everyone(&job, reply));
    }

    fn fill_active(&mut self) {
        let now = unix_now();
        while self.active.len() < self.policy.max_active_messages {
            let due = self.deferred.first().is_some_and(|(at, _)| *at <= now);
            let take_deferred = due && (self.prefer_deferred || self.incoming.is_empty());
            let next = if take_deferred {
                self.deferred
                    .pop_first()
                    .map(|(_, id)| (id, QueueState::Deferred))
            } else {
                self.incoming.pop_front().map(|id| {
                    self.incoming_known.remove(&id);
                    (id, QueueState::Incoming)
                })
            };
            let Some((id, from)) = next else { break };
            self.prefer_deferred = !take_deferred;
            self.activate(id, from);
        }
    }

    fn activate(&mut self, id: QueueId, from: QueueState) {
        let forced = self.forced.remove(&id);
        // Unsynced: after a crash the envelope is in `from` or in active/,
        // and recover() handles both. (From deferred/, a lost rename just
        // means the message is tried again at its next retry.)
        if let Err(error) = self.queue.move_unsynced(id, from, QueueState::Active) {
            // Gone already (deleted, or a stale scan entry): nothing to do.
            if error.kind() != std::io::ErrorKind::NotFound {
                tracing::error!(message_id = %id, %error, "cannot activate message");
            }
            return;
        }
        let envelope = match self.queue.read(QueueState::Active, id) {
            Ok(envelope) => envelope,
            Err(error) => return self.quarantine(QueueState::Active, id, &error),
        };
        maillog::activated(
            id,
            &envelope.sender,
            envelope.content_size,
            envelope.recipients.len(),
            envelope.attempts,
        );
        let planned = jobs::plan(&envelope);
        let nothing_to_do = planned.is_empty();
        self.active
            .insert(id, ActiveMessage::new(envelope, planned.len(), forced));
        for job in planned {
            self.ready.push(job);
        }
        if nothing_to_do {
            self.finish(id);
        }
    }

    fn job_done(&mut self, job: DeliveryJob, result: Result<DeliveryReport, AgentError>) {
        self.running = self.running.saturating_sub(1);
        let judged = result.as_ref().ok().map(|r| r.destination_failed);
        self.destinations
            .finished(&job.domain, judged, Instant::now());
        let report = match result {
            Ok(report) => report,
            Err(AgentError::Unreachable(error)) => return self.agent_unreachable(job, &error),
            Err(error @ AgentError::Lost(_)) => {
                // The agent took the job and failed: an attempt that failed,
                // counted, with backoff, so that a job that kills its agent
                // cannot loop, and the message expires on schedule.
                tracing::warn!(message_id = %job.id, domain = %job.domain, %error, "delivery agent failed during the job");
                everyone(&job, Reply::new(451, "4.3.0", error.to_string()))
            }
        };
        self.record_report(&job, &report);
    }

    /// The job never reached its agent (down, restarting): it goes again
    /// shortly, without counting an attempt, unless the message has
    /// outlived the queue lifetime meanwhile.
    fn agent_unreachable(&mut self, job: DeliveryJob, error: &std::io::Error) {
        let expired = self.active.get(&job.id).is_some_and(|m| {
            retry::should_give_up(&self.policy, 0, m.envelope.arrival, unix_now())
                == Some(GiveUp::Expired)
        });
        if expired {
            let reply = Reply::new(451, "4.3.0", format!("delivery agent unreachable: {error}"));
            return self.record_report(&job, &everyone(&job, reply));
        }
        tracing::warn!(message_id = %job.id, domain = %job.domain, %error, "delivery agent unreachable; will resend the job");
        let events = self.events.clone();
        tokio::spawn(async move {
            tokio::time::sleep(AGENT_RETRY).await;
            let _ = events.send(Event::Redispatch(job));
        });
    }

    fn record_report(&mut self, job: &DeliveryJob, report: &DeliveryReport) {
        let Some(message) = self.active.get_mut(&job.id) else {
            return;
        };
        let metrics = empath_common::metrics::get();
        for result in &report.results {
            metrics.delivery_attempt(
                metric_status(result.outcome),
                &job.domain,
                result.reply.code,
            );
            if result.outcome == Outcome::Delivered {
                metrics.delivered_after(message.envelope.attempts);
            }
        }
        jobs::apply(&mut message.envelope, report, unix_now());
        events::report(&self.modules, &message.envelope, job, report);
        message.running_jobs = message.running_jobs.saturating_sub(1);
        if message.running_jobs == 0 {
            return self.last_job_done(job.id);
        }
        // Other jobs of the message still run: the results of this one are
        // written now, so that a crash before the message is done does not
        // deliver to these recipients again (Postfix's smtp(8) marks
        // recipients done in the queue file as it goes).
        self.checkpoint(job.id);
    }

    /// Every job of the message is done: defer it, bounce it, or remove it.
    fn finish(&mut self, id: QueueId) {
        let Some(mut message) = self.active.remove(&id) else {
            return;
        };
        if message.cancelled {
            tracing::info!(message_id = %id, "message deleted by an operator");
            return self.remove(id);
        }
        let now = unix_now();
        let envelope = &mut message.envelope;
        // Once per activation, however many jobs it took; and not for a
        // message whose jobs were all held back.
        if std::mem::take(&mut message.attempted) {
            envelope.attempts += 1;
            message.not_before = None;
        }
        if envelope.undelivered().next().is_none() {
            // From the queue ID (a ULID): milliseconds, not the
            // envelope's whole seconds.
            let age = empath_common::time::unix_now_ms().saturating_sub(id.timestamp_ms()) as f64
                / 1000.0;
            empath_common::metrics::get()
                .delivery_queue_age_seconds
                .observe(age);
        }
        if envelope.undelivered().next().is_some() {
            let reason =
                match retry::should_give_up(&self.policy, envelope.attempts, envelope.arrival, now)
                {
                    None => return self.defer(message, now),
                    Some(GiveUp::TooManyAttempts) => "too many delivery attempts",
                    Some(GiveUp::Expired) => "message expired in queue",
                };
            let giving_up: Vec<String> = envelope
                .undelivered()
                .map(|(_, r)| r.address.clone())
                .collect();
            jobs::fail_open_recipients(envelope, now, reason);
            log_given_up(envelope, &giving_up);
            events::failed(&self.modules, envelope, giving_up);
        }
        let failed = envelope.recipients.iter().any(|r| {
            matches!(
                r.status,
                empath_common::queue::RecipientStatus::Failed { .. }
            )
        });
        // A recipient whose NOTIFY the next hop took is its to report on.
        let success_wanted = envelope.recipients.iter().any(|r| {
            r.notify.success
                && matches!(
                    r.status,
                    empath_common::queue::RecipientStatus::Delivered {
                        dsn_passed_on: false,
                        ..
                    }
                )
        });
        // bounce decides whom to tell: the sender, the postmaster (for a
        // failed DSN), or no one (a failed double bounce).
        if (failed || success_wanted) && self.dsn.enabled {
            if let Err(error) = self.queue.rewrite(QueueState::Active, envelope) {
                tracing::error!(message_id = %id, %error, "cannot record results before bouncing; will try again");
                return self.keep_unsaved(message);
            }
            self.couriers.bounce(
                id,
                QueueState::Active,
                BounceKind::Final,
                self.events.clone(),
            );
            self.active.insert(id, message);
            return;
        }
        if failed {
            tracing::warn!(message_id = %id, sender = %envelope.sender, "undeliverable message; DSNs are disabled");
        }
        self.remove(id);
    }

    fn defer(&mut self, mut message: ActiveMessage, now: u64) {
        let envelope = &mut message.envelope;
        let (due, delay) = match message.not_before {
            // Held back without an attempt: back when the destination can
            // be tried again.
            Some(at) => (at.max(now + 1), at.saturating_sub(now)),
            None => {
                let delay = retry::delay_secs(&self.policy, envelope.attempts, &mut rand::rng());
                (now + delay, delay)
            }
        };
        envelope.next_retry = Some(due);
        let id = envelope.id;
        let warn = self.delay_warning_due(envelope, now);
        // Marked before it is sent, so a crash cannot make it go out twice.
        envelope.delay_warned |= warn;
        match self
            .queue
            .rewrite_and_move(envelope, QueueState::Active, QueueState::Deferred)
        {
            Ok(()) => {
                empath_common::metrics::get().delivery_retries_total.inc();
                let mut domains: Vec<String> =
                    envelope.undelivered().map(|(_, r)| r.domain()).collect();
                domains.sort();
                domains.dedup();
                for domain in domains {
                    maillog::retry_scheduled(id, &domain, envelope.attempts, delay, due);
                }
                self.deferred.insert((due, id));
                if warn {
                    self.couriers.bounce(
                        id,
                        QueueState::Deferred,
                        BounceKind::Delay,
                        self.events.clone(),
                    );
                }
            }
            Err(error) => {
                // A full disk, most likely: the message stays scheduled
                // and the write is tried again.
                tracing::error!(message_id = %id, %error, "cannot defer message; will try again");
                envelope.delay_warned &= !warn;
                self.keep_unsaved(message);
            }
        }
    }

    /// Keeps a message whose results could not be written in the active
    /// set, and tries the write again shortly. It stays in `active/` on
    /// disk (which a restart recovers); nothing about it is forgotten.
    fn keep_unsaved(&mut self, mut message: ActiveMessage) {
        let id = message.envelope.id;
        message.unsaved = true;
        self.unsaved.insert((Instant::now() + WRITE_RETRY, id));
        self.active.insert(id, message);
    }

    /// Makes every pending write due now (tests cannot wait for it).
    #[cfg(test)]
    pub fn retry_writes_now(&mut self) {
        let now = Instant::now();
        self.unsaved = std::mem::take(&mut self.unsaved)
            .into_iter()
            .map(|(_, id)| (now, id))
            .collect();
    }

    /// Tries again to finish the messages whose writes failed.
    fn retry_unsaved(&mut self) {
        let now = Instant::now();
        while let Some(&(at, id)) = self.unsaved.first() {
            if at > now {
                break;
            }
            self.unsaved.pop_first();
            // Its outcome is in the envelope already, and the attempt was
            // counted: finishing again only writes it.
            if let Some(message) = self.active.get_mut(&id) {
                message.unsaved = false;
                self.finish(id);
            }
        }
    }

    /// Whether the sender should now be told that delivery is delayed.
    fn delay_warning_due(&self, envelope: &Envelope, now: u64) -> bool {
        let Some(after) = self.dsn.delay_warning_secs else {
            return false;
        };
        self.dsn.enabled
            && !envelope.delay_warned
            && !envelope.is_null_sender()
            && now.saturating_sub(envelope.arrival) >= after
            && envelope.undelivered().any(|(_, r)| r.notify.delay)
    }

    fn bounce_done(&mut self, id: QueueId, result: Result<BounceReply, String>) {
        match result {
            Ok(BounceReply::Done { dsn }) => {
                if let Some(dsn) = dsn {
                    tracing::info!(message_id = %id, dsn_id = %dsn, "DSN queued; the message is done");
                }
                self.active.remove(&id);
                self.remove(id);
            }
            Ok(BounceReply::Failed(error)) | Err(error) => {
                tracing::warn!(message_id = %id, %error, "cannot send DSN now; will try again");
                self.retry_later(id);
            }
        }
    }

    /// Parks a finished-but-not-notified message in `deferred/`.
    fn retry_later(&mut self, id: QueueId) {
        let Some(mut message) = self.active.remove(&id) else {
            return;
        };
        let due = unix_now() + BOUNCE_RETRY_SECS;
        message.envelope.next_retry = Some(due);
        match self.queue.rewrite_and_move(
            &message.envelope,
            QueueState::Active,
            QueueState::Deferred,
        ) {
            Ok(()) => {
                self.deferred.insert((due, id));
            }
            Err(error) => {
                tracing::error!(message_id = %id, %error, "cannot park message; will try again");
                self.keep_unsaved(message);
            }
        }
    }

    fn remove(&mut self, id: QueueId) {
        match self.queue.remove(QueueState::Active, id) {
            Ok(()) => maillog::removed(id),
            Err(error) => {
                tracing::error!(message_id = %id, %error, "cannot remove finished message")
            }
        }
    }

    fn quarantine(&mut self, state: QueueState, id: QueueId, error: &ReadError) {
        if error.is_not_found() {
            return;
        }
        tracing::error!(message_id = %id, %state, %error, "unreadable queue file moved to corrupt/");
        if let Err(error) = self.queue.quarantine(state, id) {
            tracing::error!(message_id = %id, %error, "cannot move queue file to corrupt/");
        }
    }

    fn quarantine_strays(&self, state: QueueState, strays: &[String]) {
        for name in strays {
            tracing::error!(file = %name, %state, "stray file in the queue moved to corrupt/");
            if let Err(error) = self.queue.quarantine_name(state, name) {
                tracing::error!(file = %name, %error, "cannot move stray file");
            }
        }
    }

    /// Removes content files that no envelope refers to.
    pub fn sweep(&self) {
        match self.queue.sweep_orphan_content(Duration::from_secs(3600)) {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, "removed orphan content files"),
            Err(error) => tracing::warn!(%error, "cannot sweep orphan content"),
        }
    }
}

/// Logs the recipients of a job that qmgr itself decided on, without a
/// delivery agent (an open circuit breaker), as the agents log theirs.
fn log_without_agent(job: &DeliveryJob, reply: &empath_common::smtp::Reply, outcome: Outcome) {
    let now = empath_common::time::unix_now_ms();
    for recipient in &job.recipients {
        maillog::delivery(&maillog::Delivered {
            id: job.id,
            recipient: &recipient.address,
            domain: &job.domain,
            relay: maillog::relay(None),
            server: None,
            delays: maillog::Delays::measure(job, now, now, now),
            reply,
            outcome,
            attempt: job.attempt,
        });
    }
}

/// Logs the recipients a message gave up on (too many attempts, or
/// expired) as bounced: they are returned to the sender.
fn log_given_up(envelope: &Envelope, addresses: &[String]) {
    let now = empath_common::time::unix_now_ms();
    let job = DeliveryJob {
        id: envelope.id,
        sender: envelope.sender.clone(),
        domain: String::new(),
        recipients: Vec::new(),
        content_size: envelope.content_size,
        smtputf8: envelope.smtputf8,
        active_since_ms: now,
        attempt: envelope.attempts,
        pass_on: Default::default(),
    };
    for recipient in envelope
        .recipients
        .iter()
        .filter(|r| addresses.contains(&r.address))
    {
        if let empath_common::queue::RecipientStatus::Failed { remote, reply, .. } =
            &recipient.status
        {
            maillog::delivery(&maillog::Delivered {
                id: envelope.id,
                recipient: &recipient.address,
                domain: &recipient.domain(),
                relay: maillog::relay(remote.as_deref()),
                server: remote.as_deref(),
                delays: maillog::Delays::measure(&job, now, now, now),
                reply,
                outcome: Outcome::Failed,
                attempt: envelope.attempts,
            });
        }
    }
}

/// The `status` label of `empath_delivery_attempts_total`.
fn metric_status(outcome: Outcome) -> &'static str {
    use empath_common::metrics::status;
    match outcome {
        Outcome::Delivered => status::DELIVERED,
        Outcome::Deferred => status::DEFERRED,
        Outcome::Failed => status::FAILED,
    }
}

/// The same deferral for every recipient of `job`.
fn everyone(job: &DeliveryJob, reply: Reply) -> DeliveryReport {
    DeliveryReport {
        results: job
            .recipients
            .iter()
            .map(|r| RecipientResult {
                index: r.index,
                outcome: Outcome::Deferred,
                remote: None,
                reply: reply.clone(),
            })
            .collect(),
        destination_failed: false,
        dsn_passed_on: Default::default(),
    }
}
