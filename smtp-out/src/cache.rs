//! A bounded cache of answers that expire: the MX cache honours each
//! answer's TTL (clamped by `dns.min_ttl_secs`/`max_ttl_secs`). Kept apart
//! from the resolver so the control plane can list, clear and refresh it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Entry<V> {
    value: V,
    expires: Instant,
    /// Insertion order, for evicting the oldest when full.
    serial: u64,
}

#[derive(Debug)]
pub struct TtlCache<V> {
    entries: HashMap<String, Entry<V>>,
    capacity: usize,
    next_serial: u64,
}

impl<V: Clone> TtlCache<V> {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            capacity: capacity.max(1),
            next_serial: 0,
        }
    }

    /// The value for `key`, if it has not expired at `now`.
    pub fn get(&mut self, key: &str, now: Instant) -> Option<V> {
        match self.entries.get(key) {
            Some(entry) if entry.expires > now => Some(entry.value.clone()),
            Some(_) => {
                self.entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Stores `value` until `expires`. When full, expired entries go
    /// first, then the oldest.
    pub fn insert(&mut self, key: &str, value: V, expires: Instant, now: Instant) {
        if !self.entries.contains_key(key) && self.entries.len() >= self.capacity {
            let before = self.entries.len();
            self.entries.retain(|_, entry| entry.expires > now);
            let evicted = before - self.entries.len();
            empath_common::metrics::get()
                .dns_cache_evictions_total
                .inc_by(evicted as u64 + u64::from(self.entries.len() >= self.capacity));
            if self.entries.len() >= self.capacity
                && let Some(oldest) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, entry)| entry.serial)
                    .map(|(key, _)| key.clone())
            {
                self.entries.remove(&oldest);
            }
        }
        self.next_serial += 1;
        self.entries.insert(
            key.to_owned(),
            Entry {
                value,
                expires,
                serial: self.next_serial,
            },
        );
    }

    /// Entries held, expired ones included until they are evicted.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn remove(&mut self, key: &str) {
        self.entries.remove(key);
    }

    pub fn clear(&mut self) -> usize {
        let count = self.entries.len();
        self.entries.clear();
        count
    }

    /// Live entries with their remaining lifetime, sorted by key.
    pub fn list(&self, now: Instant) -> Vec<(String, V, Duration)> {
        let mut live: Vec<_> = self
            .entries
            .iter()
            .filter(|(_, entry)| entry.expires > now)
            .map(|(key, entry)| (key.clone(), entry.value.clone(), entry.expires - now))
            .collect();
        live.sort_by(|a, b| a.0.cmp(&b.0));
        live
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_at_their_ttl() {
        let now = Instant::now();
        let mut cache = TtlCache::new(10);
        cache.insert("a.test", 1, now + Duration::from_secs(5), now);
        assert_eq!(cache.get("a.test", now + Duration::from_secs(4)), Some(1));
        assert_eq!(
            cache.list(now + Duration::from_secs(2)),
            [("a.test".to_owned(), 1, Duration::from_secs(3))]
        );
        assert_eq!(cache.get("a.test", now + Duration::from_secs(5)), None);
        assert!(cache.list(now).is_empty(), "expired entries are dropped");
    }

    #[test]
    fn a_full_cache_drops_expired_then_oldest() {
        let now = Instant::now();
        let later = now + Duration::from_secs(60);
        let mut cache = TtlCache::new(2);
        cache.insert("old", 1, later, now);
        cache.insert("short", 2, now + Duration::from_secs(1), now);
        let after = now + Duration::from_secs(2);
        cache.insert("new", 3, later, after);
        assert_eq!(cache.get("old", after), Some(1), "the expired one went");
        cache.insert("newer", 4, later, after);
        assert_eq!(cache.get("old", after), None, "then the oldest");
        assert_eq!(cache.get("newer", after), Some(4));
        assert_eq!(cache.clear(), 2);
    }
}
