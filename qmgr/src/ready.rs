//! Jobs waiting for a delivery slot, one FIFO queue per destination (as
//! Postfix's qmgr keeps a queue per destination). The scheduler walks the
//! destinations, not the jobs: a destination at its concurrency limit is
//! looked at once per pass, however many jobs wait for it, so a backlog of
//! thousands of jobs costs nothing while it waits.

use std::collections::{HashMap, VecDeque};

use empath_common::protocol::DeliveryJob;

#[derive(Default)]
pub struct ReadyJobs {
    by_domain: HashMap<String, VecDeque<DeliveryJob>>,
    /// Destinations with waiting jobs, in the order they are served: each
    /// pass starts where the previous one stopped, so that when the global
    /// limit is reached, no destination is always first.
    order: VecDeque<String>,
}

impl ReadyJobs {
    pub fn push(&mut self, job: DeliveryJob) {
        match self.by_domain.get_mut(&job.domain) {
            Some(waiting) => waiting.push_back(job),
            None => {
                self.order.push_back(job.domain.clone());
                self.by_domain
                    .insert(job.domain.clone(), VecDeque::from([job]));
            }
        }
    }

    /// The destinations with waiting jobs, in serving order.
    pub fn destinations(&self) -> Vec<String> {
        self.order.iter().cloned().collect()
    }

    /// The next job for `domain`, left in place.
    pub fn front(&self, domain: &str) -> Option<&DeliveryJob> {
        self.by_domain.get(domain)?.front()
    }

    /// Takes the next job for `domain`; a destination left with no jobs is
    /// dropped from the rotation.
    pub fn pop(&mut self, domain: &str) -> Option<DeliveryJob> {
        let waiting = self.by_domain.get_mut(domain)?;
        let job = waiting.pop_front()?;
        if waiting.is_empty() {
            self.by_domain.remove(domain);
            self.order.retain(|d| d != domain);
        }
        Some(job)
    }

    /// Moves `domain` to the end of the serving order (it was just served).
    pub fn rotate_past(&mut self, domain: &str) {
        if let Some(at) = self.order.iter().position(|d| d == domain)
            && let Some(served) = self.order.remove(at)
        {
            self.order.push_back(served);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use empath_common::queue::QueueId;

    fn job(domain: &str) -> DeliveryJob {
        DeliveryJob {
            id: QueueId::generate(),
            sender: String::new(),
            domain: domain.into(),
            recipients: Vec::new(),
            content_size: 0,
            smtputf8: false,
            active_since_ms: 0,
            attempt: 1,
            pass_on: Default::default(),
        }
    }

    #[test]
    fn jobs_wait_per_destination_in_arrival_order() {
        let mut ready = ReadyJobs::default();
        let (a1, b1, a2) = (job("a.test"), job("b.test"), job("a.test"));
        let ids = [a1.id, b1.id, a2.id];
        ready.push(a1);
        ready.push(b1);
        ready.push(a2);
        assert_eq!(ready.destinations(), ["a.test", "b.test"]);
        assert_eq!(ready.front("a.test").map(|j| j.id), Some(ids[0]));
        assert_eq!(ready.pop("a.test").map(|j| j.id), Some(ids[0]));
        assert_eq!(ready.pop("a.test").map(|j| j.id), Some(ids[2]));
        assert_eq!(ready.pop("a.test").map(|j| j.id), None);
        assert_eq!(
            ready.destinations(),
            ["b.test"],
            "an empty destination leaves"
        );
        ready.push(job("c.test"));
        ready.rotate_past("b.test");
        assert_eq!(ready.destinations(), ["c.test", "b.test"]);
    }
}
