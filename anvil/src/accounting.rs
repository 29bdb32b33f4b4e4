//! The counts behind the limits that hold across every smtpd process
//! (Postfix's anvil): open connections, in total and per client address,
//! and recent AUTH failures per client address. Pure bookkeeping; the
//! socket that feeds it is [`crate::server`].

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use empath_common::config::Config;
use empath_common::protocol::AnvilReply;

/// Addresses with AUTH failures remembered at most: a scan from many
/// addresses must not take unbounded memory.
const MAX_FAILING_ADDRESSES: usize = 100_000;

/// The limits, from the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_total: usize,
    pub max_per_ip: usize,
    pub max_auth_failures: usize,
    pub auth_failure_window: Duration,
}

impl Limits {
    pub fn of(config: &Config) -> Self {
        Self {
            max_total: config.smtpd.max_connections,
            max_per_ip: config.smtpd.max_connections_per_ip,
            max_auth_failures: usize::try_from(config.smtpd.auth.max_failures)
                .unwrap_or(usize::MAX),
            auth_failure_window: Duration::from_secs(config.smtpd.auth.failure_window_secs),
        }
    }
}

/// The counts of the whole system.
#[derive(Debug)]
pub struct Accounting {
    limits: Limits,
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
    auth_failures: HashMap<IpAddr, VecDeque<Instant>>,
}

/// What one smtpd holds, to release when its connection here goes away.
#[derive(Debug, Default)]
pub struct Held(HashMap<IpAddr, usize>);

impl Accounting {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            total: 0,
            per_ip: HashMap::new(),
            auth_failures: HashMap::new(),
        }
    }

    /// A client connected to the smtpd that holds `held`: counted if the
    /// limits allow it.
    pub fn acquire(&mut self, held: &mut Held, ip: IpAddr) -> AnvilReply {
        if self.total >= self.limits.max_total {
            return AnvilReply::TooMany;
        }
        if self.per_ip.get(&ip).copied().unwrap_or(0) >= self.limits.max_per_ip {
            return AnvilReply::TooManyFromIp;
        }
        self.count(held, ip, 1);
        AnvilReply::Granted
    }

    /// Connections that are open already (an smtpd that reconnected):
    /// counted whatever the limits say, since they exist.
    pub fn register(&mut self, held: &mut Held, ip: IpAddr, count: u32) {
        self.count(held, ip, usize::try_from(count).unwrap_or(usize::MAX));
    }

    fn count(&mut self, held: &mut Held, ip: IpAddr, count: usize) {
        *self.per_ip.entry(ip).or_insert(0) += count;
        self.total = self.total.saturating_add(count);
        *held.0.entry(ip).or_insert(0) += count;
    }

    /// Releases one connection from `ip`, if this smtpd holds one.
    pub fn release(&mut self, held: &mut Held, ip: IpAddr) {
        let Some(count) = held.0.get_mut(&ip) else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            held.0.remove(&ip);
        }
        self.forget(ip, 1);
    }

    /// Releases everything an smtpd held.
    pub fn release_all(&mut self, held: Held) {
        for (ip, count) in held.0 {
            self.forget(ip, count);
        }
    }

    fn forget(&mut self, ip: IpAddr, count: usize) {
        self.total = self.total.saturating_sub(count);
        if let Some(from_ip) = self.per_ip.get_mut(&ip) {
            *from_ip = from_ip.saturating_sub(count);
            if *from_ip == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }

    /// Whether `ip` may try to authenticate, at `now`.
    pub fn auth_allowed(&mut self, ip: IpAddr, now: Instant) -> AnvilReply {
        let window = self.limits.auth_failure_window;
        let recent = match self.auth_failures.get_mut(&ip) {
            Some(times) => {
                while times
                    .front()
                    .is_some_and(|t| now.saturating_duration_since(*t) > window)
                {
                    times.pop_front();
                }
                times.len()
            }
            None => 0,
        };
        if recent == 0 {
            self.auth_failures.remove(&ip);
        }
        if recent >= self.limits.max_auth_failures {
            AnvilReply::AuthBlocked
        } else {
            AnvilReply::AuthPermitted
        }
    }

    /// Counts a failed AUTH attempt from `ip` at `now`, and says whether
    /// `ip` may still try.
    pub fn auth_failed(&mut self, ip: IpAddr, now: Instant) -> AnvilReply {
        if self.auth_failures.len() >= MAX_FAILING_ADDRESSES
            && !self.auth_failures.contains_key(&ip)
        {
            let window = self.limits.auth_failure_window;
            self.auth_failures.retain(|_, times| {
                times
                    .back()
                    .is_some_and(|t| now.saturating_duration_since(*t) <= window)
            });
            if self.auth_failures.len() >= MAX_FAILING_ADDRESSES {
                self.auth_failures.clear();
            }
        }
        let times = self.auth_failures.entry(ip).or_default();
        times.push_back(now);
        while times.len() > self.limits.max_auth_failures {
            times.pop_front();
        }
        self.auth_allowed(ip, now)
    }

    /// Open connections in total, and from `ip`.
    #[cfg(test)]
    pub fn open(&self, ip: IpAddr) -> (usize, usize) {
        (self.total, self.per_ip.get(&ip).copied().unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accounting(max_total: usize, max_per_ip: usize) -> Accounting {
        Accounting::new(Limits {
            max_total,
            max_per_ip,
            max_auth_failures: 3,
            auth_failure_window: Duration::from_secs(60),
        })
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn limits_hold_across_smtpd_processes() {
        let mut anvil = accounting(3, 2);
        let (mut first, mut second) = (Held::default(), Held::default());
        assert_eq!(anvil.acquire(&mut first, A), AnvilReply::Granted);
        assert_eq!(anvil.acquire(&mut second, A), AnvilReply::Granted);
        assert_eq!(anvil.acquire(&mut first, A), AnvilReply::TooManyFromIp);
        assert_eq!(anvil.acquire(&mut second, B), AnvilReply::Granted);
        assert_eq!(anvil.acquire(&mut first, B), AnvilReply::TooMany);
        anvil.release(&mut first, A);
        assert_eq!(anvil.open(A), (2, 1));
        assert_eq!(anvil.acquire(&mut first, B), AnvilReply::Granted);
    }

    #[test]
    fn a_release_of_what_a_process_does_not_hold_is_ignored() {
        let mut anvil = accounting(10, 10);
        let (mut holder, mut other) = (Held::default(), Held::default());
        anvil.acquire(&mut holder, A);
        anvil.release(&mut other, A);
        assert_eq!(anvil.open(A), (1, 1));
    }

    #[test]
    fn a_departed_process_releases_everything_it_held() {
        let mut anvil = accounting(10, 10);
        let (mut crashed, mut alive) = (Held::default(), Held::default());
        for _ in 0..3 {
            anvil.acquire(&mut crashed, A);
        }
        anvil.acquire(&mut crashed, B);
        anvil.acquire(&mut alive, A);
        anvil.release_all(crashed);
        assert_eq!(anvil.open(A), (1, 1));
        assert_eq!(anvil.open(B), (1, 0));
    }

    #[test]
    fn registered_connections_count_even_over_the_limit_and_are_released() {
        let mut anvil = accounting(10, 2);
        let (mut back, mut other) = (Held::default(), Held::default());
        anvil.register(&mut back, A, 3);
        assert_eq!(anvil.open(A), (3, 3));
        assert_eq!(anvil.acquire(&mut other, A), AnvilReply::TooManyFromIp);
        anvil.release(&mut back, A);
        anvil.release(&mut back, A);
        assert_eq!(anvil.acquire(&mut other, A), AnvilReply::Granted);
        anvil.release_all(back);
        assert_eq!(anvil.open(A), (1, 1));
    }

    #[test]
    fn auth_failures_block_an_address_within_the_window_only() {
        let mut anvil = accounting(10, 10);
        let start = Instant::now();
        assert_eq!(anvil.auth_allowed(A, start), AnvilReply::AuthPermitted);
        assert_eq!(anvil.auth_failed(A, start), AnvilReply::AuthPermitted);
        assert_eq!(anvil.auth_failed(A, start), AnvilReply::AuthPermitted);
        assert_eq!(anvil.auth_failed(A, start), AnvilReply::AuthBlocked);
        assert_eq!(anvil.auth_allowed(A, start), AnvilReply::AuthBlocked);
        assert_eq!(anvil.auth_allowed(B, start), AnvilReply::AuthPermitted);
        let later = start + Duration::from_secs(61);
        assert_eq!(anvil.auth_allowed(A, later), AnvilReply::AuthPermitted);
        assert!(anvil.auth_failures.is_empty(), "expired entries go");
    }
}
