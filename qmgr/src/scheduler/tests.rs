//! The scheduler's decisions, in memory: a [`MemoryStore`] for the queue
//! (with a disk that can fill up) and couriers that only record what they
//! were asked to do; each test then answers as an agent would.

use std::cell::RefCell;
use std::rc::Rc;

use empath_common::config::{Delivery, Dsn};
use empath_common::protocol::{BounceKind, DeliveryJob, DeliveryReport, Outcome, RecipientResult};
use empath_common::queue::{Envelope, QueueId, QueueState, Recipient, RecipientStatus};
use empath_common::smtp::Reply;
use empath_common::time::unix_now;
use empath_modules::Modules;
use std::sync::mpsc;

use super::{Event, Scheduler};
use crate::dispatch::{AgentError, Couriers};
use crate::store::memory::MemoryStore;

/// What the scheduler asked for.
#[derive(Default)]
struct Asked {
    jobs: Vec<DeliveryJob>,
    bounces: Vec<(QueueId, BounceKind)>,
}

#[derive(Clone, Default)]
struct Recorder(Rc<RefCell<Asked>>);

impl Couriers for Recorder {
    fn deliver(&self, job: DeliveryJob, _events: super::Events) {
        self.0.borrow_mut().jobs.push(job);
    }

    fn bounce(&self, id: QueueId, _state: QueueState, kind: BounceKind, _events: super::Events) {
        self.0.borrow_mut().bounces.push((id, kind));
    }
}

impl Recorder {
    fn take_jobs(&self) -> Vec<DeliveryJob> {
        std::mem::take(&mut self.0.borrow_mut().jobs)
    }
}

struct Harness {
    scheduler: Scheduler<Rc<MemoryStore>, Recorder>,
    store: Rc<MemoryStore>,
    couriers: Recorder,
    events: mpsc::Receiver<Event>,
}

impl Harness {
    /// Hands the scheduler what its own requests reported back (the
    /// outcome of background writes), as qmgr's loop does.
    fn pump(&mut self) {
        while let Ok(event) = self.events.try_recv() {
            self.scheduler.handle(event);
        }
    }
}

fn policy() -> Delivery {
    let mut policy = Delivery {
        max_attempts: 3,
        base_retry_delay_secs: 10,
        max_retry_delay_secs: 100,
        retry_jitter_factor: 0.0,
        ..Delivery::default()
    };
    policy.circuit_breaker.failure_threshold = 1;
    policy.circuit_breaker.open_secs = 60;
    policy.rate_limit.messages_per_second = 1000.0;
    policy.rate_limit.burst_size = 1000;
    policy
}

fn start(policy: Delivery, store: Rc<MemoryStore>) -> Harness {
    let (events, receiver) = mpsc::channel();
    let couriers = Recorder::default();
    let dsn = Dsn::default();
    let mut scheduler = Scheduler::new(
        Rc::clone(&store),
        policy,
        dsn,
        events,
        Modules::default(),
        couriers.clone(),
    );
    scheduler.recover();
    Harness {
        scheduler,
        store,
        couriers,
        events: receiver,
    }
}

fn envelope(recipients: &[&str]) -> Envelope {
    Envelope {
        id: QueueId::generate(),
        sender: "sender@example.org".into(),
        recipients: recipients.iter().map(|r| Recipient::new(*r)).collect(),
        arrival: unix_now(),
        attempts: 0,
        next_retry: None,
        last_error: None,
        client: Default::default(),
        dsn: Default::default(),
        metadata: Default::default(),
        content_size: 10,
        smtputf8: false,
        delay_warned: false,
        options: Default::default(),
    }
}

/// Queues `envelope` in incoming/ and lets the scheduler see it.
fn queue(h: &mut Harness, envelope: Envelope) -> QueueId {
    let id = envelope.id;
    h.store.add(QueueState::Incoming, envelope);
    h.scheduler.handle(Event::Incoming(id));
    id
}

fn report(
    job: &DeliveryJob,
    outcome: Outcome,
    code: u16,
    destination_failed: bool,
) -> DeliveryReport {
    DeliveryReport {
        results: job
            .recipients
            .iter()
            .map(|r| RecipientResult {
                index: r.index,
                outcome,
                remote: Some("mx:25".into()),
                reply: Reply::new(code, "", "test"),
            })
            .collect(),
        destination_failed,
        dsn_passed_on: Default::default(),
    }
}

fn done(h: &mut Harness, job: DeliveryJob, result: Result<DeliveryReport, AgentError>) {
    h.scheduler.handle(Event::JobDone { job, result });
    h.pump();
}

fn deferred(h: &Harness, id: QueueId) -> Envelope {
    h.store
        .get(QueueState::Deferred, id)
        .expect("the message is in deferred/")
}

#[test]
fn an_open_circuit_breaker_uses_up_no_attempts() {
    let mut h = start(policy(), Rc::default());
    let first = queue(&mut h, envelope(&["a@down.test"]));
    h.scheduler.run();
    let job = h.couriers.take_jobs().remove(0);
    // The destination fails: the breaker (threshold 1) opens.
    let failed = report(&job, Outcome::Deferred, 421, true);
    done(&mut h, job, Ok(failed));
    assert_eq!(deferred(&h, first).attempts, 1);

    // Later mail to it is held back without contacting it: no attempt,
    // and it comes back when the breaker lets a probe through.
    let second = queue(&mut h, envelope(&["b@down.test"]));
    for _ in 0..5 {
        h.scheduler.run();
    }
    assert!(
        h.couriers.take_jobs().is_empty(),
        "the breaker let a job through"
    );
    let held = deferred(&h, second);
    assert_eq!(held.attempts, 0);
    let due = held.next_retry.expect("a retry time");
    assert!(due >= unix_now() + 55, "retried before the probe: {due}");

    // An operator's process-now tries it at once, breaker or not.
    h.scheduler.process_now();
    h.scheduler.run();
    let jobs = h.couriers.take_jobs();
    assert_eq!(jobs.len(), 1, "process-now must probe the open breaker");
}

#[tokio::test]
async fn a_job_that_kills_its_agent_counts_and_expires_on_schedule() {
    let mut policy = policy();
    policy.max_attempts = 2;
    let mut h = start(policy, Rc::default());
    let id = queue(&mut h, envelope(&["a@crash.test"]));
    for attempt in 1..=2u32 {
        h.scheduler.process_now();
        h.scheduler.run();
        let job = h.couriers.take_jobs().remove(0);
        let lost = AgentError::Lost(std::io::ErrorKind::UnexpectedEof.into());
        done(&mut h, job, Err(lost));
        if attempt == 1 {
            let envelope = deferred(&h, id);
            assert_eq!(envelope.attempts, 1);
            // Backed off, not resent after a second.
            assert!(envelope.next_retry.unwrap_or(0) >= unix_now() + 9);
        }
    }
    // Out of attempts: failed, and the sender is told.
    let asked = h.couriers.0.borrow();
    assert_eq!(asked.bounces, vec![(id, BounceKind::Final)]);
    let active = h
        .store
        .get(QueueState::Active, id)
        .expect("kept for bounce");
    assert!(matches!(
        active.recipients[0].status,
        RecipientStatus::Failed { .. }
    ));
}

#[tokio::test]
async fn an_unreachable_agent_is_no_attempt_but_the_lifetime_still_counts() {
    let mut policy = policy();
    policy.max_queue_lifetime_secs = 3600;
    let mut h = start(policy, Rc::default());
    let fresh = queue(&mut h, envelope(&["a@x.test"]));
    let mut old = envelope(&["b@x.test"]);
    old.arrival = unix_now() - 7200;
    let old = queue(&mut h, old);
    h.scheduler.run();
    h.scheduler.run();
    for job in h.couriers.take_jobs() {
        let down = AgentError::Unreachable(std::io::ErrorKind::ConnectionRefused.into());
        done(&mut h, job, Err(down));
    }
    // The fresh one waits to be resent, unchanged and uncounted.
    assert!(h.store.get(QueueState::Active, fresh).is_some());
    assert_eq!(h.store.get(QueueState::Active, fresh).unwrap().attempts, 0);
    // The expired one fails instead of waiting for ever.
    let expired = h
        .store
        .get(QueueState::Active, old)
        .expect("kept for bounce");
    assert!(matches!(
        expired.recipients[0].status,
        RecipientStatus::Failed { .. }
    ));
}

#[test]
fn each_jobs_results_are_written_when_the_job_ends() {
    let store: Rc<MemoryStore> = Rc::default();
    let mut h = start(policy(), Rc::clone(&store));
    let id = queue(&mut h, envelope(&["a@one.test", "b@two.test"]));
    h.scheduler.run();
    let mut jobs = h.couriers.take_jobs();
    assert_eq!(jobs.len(), 2);
    let first = jobs.remove(0);
    let delivered = first.recipients[0].address.clone();
    done(
        &mut h,
        first.clone(),
        Ok(report(&first, Outcome::Delivered, 250, false)),
    );
    // The other job still runs, and the delivery is on "disk" already.
    let on_disk = store.get(QueueState::Active, id).expect("still active");
    let status = &on_disk.recipients[first.recipients[0].index].status;
    assert!(
        matches!(status, RecipientStatus::Delivered { .. }),
        "{status:?}"
    );

    // qmgr dies here. The next one delivers only to the other domain.
    let mut again = start(policy(), Rc::clone(&store));
    again.scheduler.run();
    let resent = again.couriers.take_jobs();
    assert_eq!(resent.len(), 1);
    assert!(
        resent[0].recipients.iter().all(|r| r.address != delivered),
        "{delivered} would get a second copy"
    );
}

#[test]
fn a_deferral_that_cannot_be_written_stays_scheduled_and_is_written_later() {
    let store: Rc<MemoryStore> = Rc::default();
    let mut h = start(policy(), Rc::clone(&store));
    let id = queue(&mut h, envelope(&["a@x.test"]));
    h.scheduler.run();
    let job = h.couriers.take_jobs().remove(0);
    store.disk_full.set(true);
    let temporary = report(&job, Outcome::Deferred, 451, false);
    done(&mut h, job, Ok(temporary));
    assert!(store.get(QueueState::Active, id).is_some());
    assert!(store.get(QueueState::Deferred, id).is_none());
    // Still known to the scheduler.
    assert!(h.scheduler.active.contains_key(&id));

    // Space comes back: the next retry of the write succeeds, with one
    // attempt counted, not two.
    store.disk_full.set(false);
    h.scheduler.retry_writes_now();
    h.scheduler.run();
    let envelope = deferred(&h, id);
    assert_eq!(envelope.attempts, 1);
}

#[test]
fn a_message_is_finished_only_after_its_results_so_far_are_written() {
    let store: Rc<MemoryStore> = Rc::default();
    let mut h = start(policy(), Rc::clone(&store));
    let id = queue(
        &mut h,
        envelope(&["a@one.test", "b@two.test", "c@three.test"]),
    );
    h.scheduler.run();
    let jobs = h.couriers.take_jobs();
    assert_eq!(jobs.len(), 3);
    store.slow_writes.set(true);
    let delivered = |job: &DeliveryJob| Ok(report(job, Outcome::Delivered, 250, false));
    // The first job's results are being written when the second ends:
    // the second waits for the first write, then goes in one of its own.
    done(&mut h, jobs[0].clone(), delivered(&jobs[0]));
    done(&mut h, jobs[1].clone(), delivered(&jobs[1]));
    // The last job ends while a write is in flight: the message is not
    // removed yet, or that write could bring it back.
    done(&mut h, jobs[2].clone(), delivered(&jobs[2]));
    assert!(h.scheduler.active.contains_key(&id));
    assert!(h.scheduler.running() > 0, "a graceful stop must wait");
    store.complete_writes();
    h.pump();
    // The second checkpoint, asked for meanwhile, is not written: the
    // message is done and its final write (here: removal) comes last.
    store.complete_writes();
    h.pump();
    assert!(!h.scheduler.active.contains_key(&id));
    assert_eq!(h.scheduler.running(), 0);
    for state in QueueState::ALL {
        assert!(store.get(state, id).is_none(), "left in {state}");
    }
}

#[test]
fn a_destination_at_its_limit_holds_up_no_other_and_destinations_take_turns() {
    let mut policy = policy();
    policy.max_concurrency_per_domain = 1;
    policy.max_concurrent_deliveries = 2;
    let mut h = start(policy, Rc::default());
    // A backlog for busy.test first, then one message each for two others.
    for n in 0..5 {
        queue(&mut h, envelope(&[&format!("u{n}@busy.test")]));
    }
    queue(&mut h, envelope(&["a@one.test"]));
    queue(&mut h, envelope(&["b@two.test"]));
    h.scheduler.run();
    let first = h.couriers.take_jobs();
    let domains: Vec<&str> = first.iter().map(|j| j.domain.as_str()).collect();
    // busy.test takes one slot (its limit); the other goes to the next
    // destination, not to a second busy.test job.
    assert_eq!(domains, ["busy.test", "one.test"]);

    // A slot frees up: the destination that has not been served yet goes
    // before busy.test's next job.
    let ended = first[0].clone();
    done(
        &mut h,
        ended.clone(),
        Ok(report(&ended, Outcome::Delivered, 250, false)),
    );
    h.scheduler.run();
    let second = h.couriers.take_jobs();
    let domains: Vec<&str> = second.iter().map(|j| j.domain.as_str()).collect();
    assert_eq!(domains, ["two.test"]);

    // Then busy.test's backlog, one at a time, in arrival order.
    let mut delivered = Vec::new();
    let mut running = vec![first[1].clone(), second[0].clone()];
    for _ in 0..10 {
        for job in std::mem::take(&mut running) {
            if job.domain == "busy.test" {
                delivered.push(job.recipients[0].address.clone());
            }
            done(
                &mut h,
                job.clone(),
                Ok(report(&job, Outcome::Delivered, 250, false)),
            );
        }
        h.scheduler.run();
        running = h.couriers.take_jobs();
        assert!(running.iter().filter(|j| j.domain == "busy.test").count() <= 1);
    }
    assert_eq!(
        delivered,
        [
            "u1@busy.test",
            "u2@busy.test",
            "u3@busy.test",
            "u4@busy.test"
        ]
    );
}
