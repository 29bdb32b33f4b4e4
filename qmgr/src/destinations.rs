//! Per-destination (domain) admission: a concurrency limit, the rate
//! limit and the circuit breaker, consulted before each job is started.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use empath_common::config::Delivery;

use crate::breaker::{Admit, Breaker, State, Transition};
use crate::throttle::TokenBucket;

/// What to do with a job now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Dispatch,
    /// Keep it waiting; try again at the given time, or when a job of the
    /// destination finishes.
    Wait(Option<Instant>),
    /// The breaker is open: defer without contacting the destination.
    Defer {
        until: Instant,
    },
}

struct Destination {
    running: usize,
    /// When a job last started or ended, for evicting idle destinations.
    last_used: Instant,
    bucket: TokenBucket,
    breaker: Breaker,
    /// A rate-limit delay was logged since the last dispatch.
    rate_logged: bool,
}

pub struct Destinations {
    policy: Delivery,
    domains: HashMap<String, Destination>,
}

impl Destinations {
    pub fn new(policy: Delivery) -> Self {
        Self {
            policy,
            domains: HashMap::new(),
        }
    }

    fn get(&mut self, domain: &str, now: Instant) -> &mut Destination {
        // Looked up before inserting: this runs for every job started, and
        // an entry() would allocate the key each time.
        if !self.domains.contains_key(domain) {
            let fresh = self.fresh(domain, now);
            self.domains.insert(domain.to_owned(), fresh);
        }
        self.domains
            .get_mut(domain)
            .expect("the destination was inserted above")
    }

    fn fresh(&self, domain: &str, now: Instant) -> Destination {
        let policy = &self.policy;
        let (rate, burst) = policy
            .rate_limit
            .domain_limits
            .get(domain)
            .map(|l| (l.messages_per_second, l.burst_size))
            .unwrap_or((
                policy.rate_limit.messages_per_second,
                policy.rate_limit.burst_size,
            ));
        let breaker = &policy.circuit_breaker;
        Destination {
            running: 0,
            last_used: now,
            bucket: TokenBucket::new(rate, burst, now),
            breaker: Breaker::new(
                breaker.failure_threshold,
                Duration::from_secs(breaker.open_secs),
            ),
            rate_logged: false,
        }
    }

    fn concurrency_limit(&self, domain: &str) -> usize {
        self.policy
            .domains
            .get(domain)
            .and_then(|p| p.max_concurrency)
            .unwrap_or(self.policy.max_concurrency_per_domain)
    }

    /// Decides about one job for `domain`; a `Dispatch` counts it as
    /// running. `forced`: an operator asked for this mail now, so an open
    /// circuit breaker lets it through as a probe.
    pub fn decide(
        &mut self,
        domain: &str,
        message_id: impl std::fmt::Display,
        now: Instant,
        forced: bool,
    ) -> Decision {
        let limit = self.concurrency_limit(domain);
        let breaker_on = self.policy.circuit_breaker.enabled;
        let destination = self.get(domain, now);
        destination.last_used = now;
        if destination.running >= limit {
            return Decision::Wait(None);
        }
        if breaker_on && forced {
            let transition = destination.breaker.force_probe(now);
            log_transition(domain, transition, &self.policy);
        }
        let destination = self.get(domain, now);
        if breaker_on {
            match destination.breaker.state() {
                State::Open { until } if now < until => return Decision::Defer { until },
                State::HalfOpen { probing: true } => return Decision::Wait(None),
                _ => {}
            }
        }
        if let Err(wait) = destination.bucket.take(now) {
            if !destination.rate_logged {
                destination.rate_logged = true;
                empath_common::metrics::get().rate_limited(domain, wait.as_secs_f64());
                let next_retry_at = empath_common::time::rfc3339_micros(
                    empath_common::time::unix_now_micros()
                        + u64::try_from(wait.as_micros()).unwrap_or(u64::MAX / 2),
                );
                tracing::info!(
                    %message_id,
                    domain,
                    wait_seconds = wait.as_secs_f64(),
                    next_retry_at,
                    "Rate limit exceeded, delaying delivery"
                );
            }
            return Decision::Wait(Some(now + wait));
        }
        destination.rate_logged = false;
        if breaker_on {
            let (admit, transition) = destination.breaker.admit(now);
            log_transition(domain, transition, &self.policy);
            if let Admit::Reject { until } = admit {
                return Decision::Defer { until };
            }
        }
        self.get(domain, now).running += 1;
        Decision::Dispatch
    }

    /// A job started by [`Destinations::decide`] is over. `failed` is
    /// `Some` when it reached the point of judging the destination.
    pub fn finished(&mut self, domain: &str, failed: Option<bool>, now: Instant) {
        let breaker_on = self.policy.circuit_breaker.enabled;
        let destination = self.get(domain, now);
        destination.running = destination.running.saturating_sub(1);
        destination.last_used = now;
        let transition = match failed {
            Some(failed) if breaker_on => destination.breaker.record(failed, now),
            _ => None,
        };
        log_transition(domain, transition, &self.policy);
    }
}

impl Destinations {
    /// Forgets the destinations that have been idle for `idle` and hold
    /// nothing a new entry would not (no job running, breaker closed with
    /// no failures, a full token bucket), so that mail to a million
    /// domains does not keep a million entries.
    pub fn evict_idle(&mut self, now: Instant, idle: Duration) {
        self.domains.retain(|_, d| {
            d.running > 0
                || now.saturating_duration_since(d.last_used) < idle
                || !d.breaker.is_clear()
                || !d.bucket.is_full(now)
        });
    }

    /// Destinations remembered.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.domains.len()
    }
}

fn log_transition(domain: &str, transition: Option<Transition>, policy: &Delivery) {
    use empath_common::metrics::{self, BreakerState};
    match transition {
        Some(Transition::Opened { .. }) => {
            metrics::get().circuit_breaker(domain, BreakerState::Open)
        }
        Some(Transition::HalfOpened) => {
            metrics::get().circuit_breaker(domain, BreakerState::HalfOpen)
        }
        Some(Transition::Closed) => metrics::get().circuit_breaker(domain, BreakerState::Closed),
        None => {}
    }
    match transition {
        Some(Transition::Opened { failures }) => tracing::warn!(
            domain,
            consecutive_failures = failures,
            open_secs = policy.circuit_breaker.open_secs,
            "Circuit breaker opened: not contacting the domain for a while"
        ),
        Some(Transition::HalfOpened) => tracing::info!(
            domain,
            "Circuit breaker half-open: letting one delivery through"
        ),
        Some(Transition::Closed) => tracing::info!(domain, "Circuit breaker closed"),
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use empath_common::config::{DomainPolicy, DomainRateLimit};

    fn policy() -> Delivery {
        let mut policy = Delivery {
            max_concurrency_per_domain: 2,
            ..Delivery::default()
        };
        policy.rate_limit.messages_per_second = 1000.0;
        policy.rate_limit.burst_size = 1000;
        policy.rate_limit.domain_limits.insert(
            "slow.test".into(),
            DomainRateLimit {
                messages_per_second: 1.0,
                burst_size: 1,
            },
        );
        policy.domains.insert(
            "one.test".into(),
            DomainPolicy {
                max_concurrency: Some(1),
                ..DomainPolicy::default()
            },
        );
        policy.circuit_breaker.failure_threshold = 2;
        policy.circuit_breaker.open_secs = 10;
        policy
    }

    #[test]
    fn concurrency_is_limited_per_domain() {
        let now = Instant::now();
        let mut d = Destinations::new(policy());
        assert_eq!(d.decide("a.test", "m", now, false), Decision::Dispatch);
        assert_eq!(d.decide("a.test", "m", now, false), Decision::Dispatch);
        assert_eq!(d.decide("a.test", "m", now, false), Decision::Wait(None));
        assert_eq!(d.decide("one.test", "m", now, false), Decision::Dispatch);
        assert_eq!(d.decide("one.test", "m", now, false), Decision::Wait(None));
        d.finished("a.test", None, now);
        assert_eq!(d.decide("a.test", "m", now, false), Decision::Dispatch);
    }

    #[test]
    fn rate_limit_delays_with_a_due_time() {
        let now = Instant::now();
        let mut d = Destinations::new(policy());
        assert_eq!(d.decide("slow.test", "m", now, false), Decision::Dispatch);
        d.finished("slow.test", Some(false), now);
        assert_eq!(
            d.decide("slow.test", "m", now, false),
            Decision::Wait(Some(now + Duration::from_secs(1)))
        );
        assert_eq!(
            d.decide("slow.test", "m", now + Duration::from_secs(1), false),
            Decision::Dispatch
        );
    }

    #[test]
    fn open_breaker_defers_then_lets_one_probe_through() {
        let now = Instant::now();
        let mut d = Destinations::new(policy());
        for _ in 0..2 {
            assert_eq!(d.decide("down.test", "m", now, false), Decision::Dispatch);
            d.finished("down.test", Some(true), now);
        }
        let until = now + Duration::from_secs(10);
        assert_eq!(
            d.decide("down.test", "m", now, false),
            Decision::Defer { until }
        );
        assert_eq!(d.decide("down.test", "m", until, false), Decision::Dispatch);
        assert_eq!(
            d.decide("down.test", "m", until, false),
            Decision::Wait(None)
        );
        d.finished("down.test", Some(false), until);
        assert_eq!(d.decide("down.test", "m", until, false), Decision::Dispatch);
        assert_eq!(d.decide("down.test", "m", until, false), Decision::Dispatch);
    }

    #[test]
    fn an_operator_request_probes_an_open_breaker_at_once() {
        let now = Instant::now();
        let mut d = Destinations::new(policy());
        for _ in 0..2 {
            assert_eq!(d.decide("down.test", "m", now, false), Decision::Dispatch);
            d.finished("down.test", Some(true), now);
        }
        assert!(matches!(
            d.decide("down.test", "m", now, false),
            Decision::Defer { .. }
        ));
        // process-now: one probe goes, the rest wait for its outcome.
        assert_eq!(d.decide("down.test", "m", now, true), Decision::Dispatch);
        assert_eq!(d.decide("down.test", "m", now, true), Decision::Wait(None));
    }

    #[test]
    fn idle_destinations_are_forgotten_unless_they_hold_state() {
        let now = Instant::now();
        let mut d = Destinations::new(policy());
        for domain in ["a.test", "b.test", "down.test"] {
            assert_eq!(d.decide(domain, "m", now, false), Decision::Dispatch);
        }
        d.finished("a.test", Some(false), now);
        d.finished("down.test", Some(true), now);
        // b.test still runs; down.test has a failure counted.
        let later = now + Duration::from_secs(3600);
        d.evict_idle(later, Duration::from_secs(600));
        assert_eq!(d.len(), 2);
        d.finished("b.test", Some(false), later);
        d.evict_idle(later + Duration::from_secs(601), Duration::from_secs(600));
        assert_eq!(d.len(), 1, "only the destination with a failure is kept");
    }
}
