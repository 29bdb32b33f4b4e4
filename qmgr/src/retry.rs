//! The retry schedule: exponential backoff with jitter, capped, plus the
//! two reasons to stop retrying (too many attempts, too old).

use empath_common::config::Delivery;
use rand::Rng;

/// Seconds to wait before the next attempt after `attempts` attempts (>= 1):
/// `base * 2^(attempts-1)`, capped at `max`, then spread by ±`jitter`.
pub fn delay_secs(policy: &Delivery, attempts: u32, rng: &mut impl Rng) -> u64 {
    let exponent = attempts.saturating_sub(1).min(32);
    let raw = policy
        .base_retry_delay_secs
        .saturating_mul(1u64 << exponent);
    let capped = raw.min(policy.max_retry_delay_secs) as f64;
    let factor = policy.retry_jitter_factor;
    let jittered = if factor > 0.0 {
        capped * rng.random_range(1.0 - factor..=1.0 + factor)
    } else {
        capped
    };
    (jittered.round() as u64).clamp(1, policy.max_retry_delay_secs.max(1))
}

/// Why a message with recipients left will not be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUp {
    TooManyAttempts,
    Expired,
}

pub fn should_give_up(policy: &Delivery, attempts: u32, arrival: u64, now: u64) -> Option<GiveUp> {
    if attempts >= policy.max_attempts {
        Some(GiveUp::TooManyAttempts)
    } else if now.saturating_sub(arrival) >= policy.max_queue_lifetime_secs {
        Some(GiveUp::Expired)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn policy(jitter: f64) -> Delivery {
        Delivery {
            base_retry_delay_secs: 60,
            max_retry_delay_secs: 3600,
            retry_jitter_factor: jitter,
            max_attempts: 5,
            max_queue_lifetime_secs: 1000,
            ..Delivery::default()
        }
    }

    #[test]
    fn doubles_until_the_cap() {
        let mut rng = StdRng::seed_from_u64(1);
        let delays: Vec<u64> = (1..=8)
            .map(|a| delay_secs(&policy(0.0), a, &mut rng))
            .collect();
        assert_eq!(delays, [60, 120, 240, 480, 960, 1920, 3600, 3600]);
        assert_eq!(delay_secs(&policy(0.0), 500, &mut rng), 3600);
    }

    #[test]
    fn jitter_stays_within_its_factor_and_varies() {
        let mut rng = StdRng::seed_from_u64(7);
        let delays: Vec<u64> = (0..200)
            .map(|_| delay_secs(&policy(0.2), 2, &mut rng))
            .collect();
        assert!(delays.iter().all(|d| (96..=144).contains(d)), "{delays:?}");
        assert!(delays.iter().any(|d| *d != delays[0]));
    }

    #[test]
    fn gives_up_on_attempts_or_age() {
        let p = policy(0.0);
        assert_eq!(should_give_up(&p, 4, 0, 10), None);
        assert_eq!(should_give_up(&p, 5, 0, 10), Some(GiveUp::TooManyAttempts));
        assert_eq!(should_give_up(&p, 1, 0, 1000), Some(GiveUp::Expired));
    }
}
