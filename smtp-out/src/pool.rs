//! Idle connections kept for the next message to the same server, so a
//! burst of mail to one destination costs one TCP and TLS handshake.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::client::{Connection, Stream};

/// What a reused connection must match: the server, the name its
/// certificate was checked against, and the TLS requirement it was opened
/// with (as [`crate::policy::Requirement::describe`] names it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub addr: SocketAddr,
    pub name: String,
    pub tls: String,
}

/// Idle connections per key, each with the time it became idle.
type Idle = HashMap<Key, Vec<(Connection<Stream>, Instant)>>;

pub struct Pool {
    idle: Mutex<Idle>,
    max_idle: Duration,
}

impl Pool {
    pub fn new(max_idle: Duration) -> Self {
        Self {
            idle: Mutex::new(HashMap::new()),
            max_idle,
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Idle> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection to `key` that has not been idle too long.
    pub fn take(&self, key: &Key) -> Option<Connection<Stream>> {
        let mut idle = self.idle();
        let list = idle.get_mut(key)?;
        let now = Instant::now();
        while let Some((connection, since)) = list.pop() {
            if now.duration_since(since) < self.max_idle {
                return Some(connection);
            }
        }
        None
    }

    /// Keeps `connection` for reuse, or hands it back when reuse is off.
    pub fn put(&self, key: Key, connection: Connection<Stream>) -> Option<Connection<Stream>> {
        if self.max_idle.is_zero() {
            return Some(connection);
        }
        self.idle()
            .entry(key)
            .or_default()
            .push((connection, Instant::now()));
        None
    }

    /// Removes the connections idle too long, for the caller to close.
    pub fn expired(&self) -> Vec<Connection<Stream>> {
        let now = Instant::now();
        let mut closed = Vec::new();
        let mut idle = self.idle();
        for list in idle.values_mut() {
            let (keep, old): (Vec<_>, Vec<_>) = list
                .drain(..)
                .partition(|(_, since)| now.duration_since(*since) < self.max_idle);
            *list = keep;
            closed.extend(old.into_iter().map(|(connection, _)| connection));
        }
        idle.retain(|_, list| !list.is_empty());
        closed
    }
}
