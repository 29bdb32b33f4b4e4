//! A per-destination circuit breaker: closed; open after
//! `failure_threshold` consecutive failures, so the destination is left
//! alone for `open_secs`; then half-open, letting one probe through,
//! whose success closes it and whose failure opens it again.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// What to do with a job for the destination now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Go,
    /// A probe is in flight: wait for its outcome.
    Wait,
    /// Open: defer without contacting the destination.
    Reject {
        until: Instant,
    },
}

/// A state change worth a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Opened { failures: u32 },
    HalfOpened,
    Closed,
}

#[derive(Debug, Clone)]
pub struct Breaker {
    state: State,
    failures: u32,
    threshold: u32,
    open_for: Duration,
}

impl Breaker {
    pub fn new(threshold: u32, open_for: Duration) -> Self {
        Self {
            state: State::Closed,
            failures: 0,
            threshold: threshold.max(1),
            open_for,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Decides about one job; a `Go` in half-open state is the probe.
    pub fn admit(&mut self, now: Instant) -> (Admit, Option<Transition>) {
        let mut transition = None;
        if let State::Open { until } = self.state {
            if now < until {
                return (Admit::Reject { until }, None);
            }
            self.state = State::HalfOpen { probing: false };
            transition = Some(Transition::HalfOpened);
        }
        let admit = match self.state {
            State::HalfOpen { probing: true } => Admit::Wait,
            State::HalfOpen { probing: false } => {
                self.state = State::HalfOpen { probing: true };
                Admit::Go
            }
            _ => Admit::Go,
        };
        (admit, transition)
    }

    /// An operator asked for mail to be tried now: an open breaker lets a
    /// probe through at once instead of at the end of its wait.
    pub fn force_probe(&mut self, now: Instant) -> Option<Transition> {
        match self.state {
            State::Open { until } if now < until => {
                self.state = State::HalfOpen { probing: false };
                Some(Transition::HalfOpened)
            }
            _ => None,
        }
    }

    /// Whether the breaker holds nothing worth remembering: closed, with no
    /// failures counted.
    pub fn is_clear(&self) -> bool {
        self.state == State::Closed && self.failures == 0
    }

    /// Records the outcome of a job that contacted the destination.
    pub fn record(&mut self, failed: bool, now: Instant) -> Option<Transition> {
        if !failed {
            self.failures = 0;
            let was_closed = self.state == State::Closed;
            self.state = State::Closed;
            return (!was_closed).then_some(Transition::Closed);
        }
        self.failures = self.failures.saturating_add(1);
        let open = match self.state {
            State::HalfOpen { .. } => true,
            State::Closed => self.failures >= self.threshold,
            State::Open { .. } => false,
        };
        if open {
            self.state = State::Open {
                until: now + self.open_for,
            };
            return Some(Transition::Opened {
                failures: self.failures,
            });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_then_probes_once_and_closes() {
        let t0 = Instant::now();
        let open_for = Duration::from_secs(10);
        let mut breaker = Breaker::new(3, open_for);
        assert_eq!(breaker.record(true, t0), None);
        assert_eq!(breaker.record(true, t0), None);
        assert_eq!(
            breaker.record(true, t0),
            Some(Transition::Opened { failures: 3 })
        );
        assert_eq!(
            breaker.admit(t0 + Duration::from_secs(9)).0,
            Admit::Reject {
                until: t0 + open_for
            }
        );
        let later = t0 + open_for;
        assert_eq!(
            breaker.admit(later),
            (Admit::Go, Some(Transition::HalfOpened))
        );
        assert_eq!(breaker.admit(later).0, Admit::Wait, "one probe at a time");
        assert_eq!(breaker.record(false, later), Some(Transition::Closed));
        assert_eq!(breaker.admit(later).0, Admit::Go);
        assert_eq!(breaker.state(), State::Closed);
    }

    #[test]
    fn a_failed_probe_opens_again_and_success_resets_the_count() {
        let t0 = Instant::now();
        let mut breaker = Breaker::new(2, Duration::from_secs(5));
        breaker.record(true, t0);
        breaker.record(false, t0);
        assert_eq!(breaker.record(true, t0), None, "the count was reset");
        breaker.record(true, t0);
        let later = t0 + Duration::from_secs(5);
        assert_eq!(breaker.admit(later).0, Admit::Go);
        assert_eq!(
            breaker.record(true, later),
            Some(Transition::Opened { failures: 3 })
        );
        assert_eq!(
            breaker.state(),
            State::Open {
                until: later + Duration::from_secs(5)
            }
        );
    }
}
