//! Queue IDs: ULIDs, so they sort by arrival time and never collide.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use ulid::Ulid;

/// Serialized as 16 bytes in the queue and IPC (postcard), and as its text
/// form in human-readable formats such as `empathctl --json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueueId(u128);

impl Serialize for QueueId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            self.0.serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for QueueId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let text = String::deserialize(deserializer)?;
            text.parse().map_err(serde::de::Error::custom)
        } else {
            u128::deserialize(deserializer).map(Self)
        }
    }
}

impl QueueId {
    pub fn generate() -> Self {
        Self(Ulid::new().0)
    }

    /// Milliseconds since the epoch at which the ID was made.
    pub fn timestamp_ms(self) -> u64 {
        Ulid(self.0).timestamp_ms()
    }

    /// The OpenTelemetry trace ID of the message: the queue ID's 16 bytes
    /// (big-endian, as a ULID is written in binary). Every process that
    /// handles the message derives the same one, so their spans form one
    /// trace without passing a context along (see [`crate::traces`]).
    pub fn trace_id(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }

    /// [`QueueId::trace_id`] as log lines and tracing back-ends write it:
    /// 32 lowercase hex digits.
    pub fn trace_id_hex(self) -> String {
        format!("{:032x}", self.0)
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", Ulid(self.0))
    }
}

/// Not a queue ID (a queue ID is 26 Crockford base-32 characters).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a queue ID (expected 26 characters such as 01JCXYZ5ABCDEFGHJKMNPQRSTV)")]
pub struct BadQueueId(pub String);

impl FromStr for QueueId {
    type Err = BadQueueId;
    fn from_str(s: &str) -> Result<Self, BadQueueId> {
        if s.len() != 26 {
            return Err(BadQueueId(s.to_owned()));
        }
        Ulid::from_string(s)
            .map(|u| Self(u.0))
            .map_err(|_| BadQueueId(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_text() {
        let id = QueueId::generate();
        assert_eq!(id.to_string().parse::<QueueId>().unwrap(), id);
        assert!("not-an-id".parse::<QueueId>().is_err());
        assert!("01JCXYZ5ABCDEFGHJKMNPQRSTV.tmp".parse::<QueueId>().is_err());
    }

    #[test]
    fn the_trace_id_is_the_ulid_bytes() {
        let id: QueueId = "01ARZ3NDEKTSV4RRFFQ69G5FAV".parse().unwrap();
        let ulid = Ulid::from_string("01ARZ3NDEKTSV4RRFFQ69G5FAV").unwrap();
        assert_eq!(id.trace_id(), ulid.to_bytes());
        let hex: String = ulid.to_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(id.trace_id_hex(), hex);
        assert_eq!(hex.len(), 32);
    }
}
