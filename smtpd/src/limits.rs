//! Connection limits of one smtpd process: in total and per client IP,
//! except for the clients of `smtpd.client_connection_limit_exceptions`
//! (by default `mynetworks`), which only count towards the total. A
//! connection holds a [`Slot`] for its lifetime; dropping it frees it.
//! An [`Admission`] is what a connection holds here and in empath-anvil.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use empath_common::config::Network;

use crate::anvil::Grant;

#[derive(Debug)]
pub struct ConnectionLimits {
    max_total: usize,
    max_per_ip: usize,
    exceptions: Vec<Network>,
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Total,
    PerIp,
}

/// One open connection, counted until dropped.
#[derive(Debug)]
pub struct Slot {
    limits: Arc<ConnectionLimits>,
    /// The address, when it counts towards the per-IP limit.
    per_ip: Option<IpAddr>,
}

impl ConnectionLimits {
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Self::with_exceptions(max_total, max_per_ip, Vec::new())
    }

    /// Limits from which the clients in `exceptions` are exempt per IP.
    pub fn with_exceptions(
        max_total: usize,
        max_per_ip: usize,
        exceptions: Vec<Network>,
    ) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_ip,
            exceptions,
            open: Mutex::new(Open::default()),
        })
    }

    /// True for the clients that no per-IP limit applies to: they need
    /// no word with empath-anvil either.
    pub fn is_exempt(&self, ip: IpAddr) -> bool {
        self.exceptions.iter().any(|network| network.contains(ip))
    }

    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refused> {
        let exempt = self.is_exempt(ip);
        // The counters stay consistent even if a holder panicked.
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.total >= self.max_total {
            return Err(Refused::Total);
        }
        if !exempt {
            let from_ip = open.per_ip.entry(ip).or_insert(0);
            if *from_ip >= self.max_per_ip {
                return Err(Refused::PerIp);
            }
            *from_ip += 1;
        }
        open.total += 1;
        Ok(Slot {
            limits: Arc::clone(self),
            per_ip: (!exempt).then_some(ip),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self
            .limits
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        open.total = open.total.saturating_sub(1);
        if let Some(ip) = self.per_ip
            && let Some(count) = open.per_ip.get_mut(&ip)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.per_ip.remove(&ip);
            }
        }
    }
}

/// What one connection holds against the limits: its slot in this
/// process, and its grant from empath-anvil (none for exempt clients).
#[derive(Debug)]
pub struct Admission {
    slot: Slot,
    grant: Option<Grant>,
}

impl Admission {
    pub fn new(slot: Slot, grant: Option<Grant>) -> Self {
        Self { slot, grant }
    }

    /// Frees the connection everywhere, waiting until empath-anvil has
    /// forgotten it. The session calls this before its last reply, so that
    /// a client that reconnects at once is never judged against the
    /// connection it just closed.
    pub async fn release(self) {
        drop(self.slot);
        if let Some(grant) = self.grant {
            grant.release().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_count_and_release() {
        let limits = ConnectionLimits::new(3, 2);
        let a: IpAddr = [192, 0, 2, 1].into();
        let b: IpAddr = [192, 0, 2, 2].into();
        let first = limits.acquire(a);
        let _second = limits.acquire(a);
        assert_eq!(limits.acquire(a).err(), Some(Refused::PerIp));
        let _third = limits.acquire(b);
        assert_eq!(limits.acquire(b).err(), Some(Refused::Total));
        drop(first);
        assert!(limits.acquire(a).is_ok());
    }

    #[test]
    fn exempt_clients_count_towards_the_total_only() {
        let loopback = "127.0.0.0/8".parse().unwrap_or_else(|e| panic!("{e}"));
        let limits = ConnectionLimits::with_exceptions(3, 1, vec![loopback]);
        let local: IpAddr = [127, 0, 0, 1].into();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap_or_else(|e| panic!("{e}"));
        let stranger: IpAddr = [192, 0, 2, 1].into();
        assert!(limits.is_exempt(local) && limits.is_exempt(mapped));
        assert!(!limits.is_exempt(stranger));
        let first = limits.acquire(local);
        let _second = limits.acquire(local);
        assert!(first.is_ok());
        let _third = limits.acquire(stranger);
        assert_eq!(limits.acquire(local).err(), Some(Refused::Total));
        drop(first);
        assert_eq!(limits.acquire(stranger).err(), Some(Refused::PerIp));
        assert!(limits.acquire(local).is_ok());
    }
}
