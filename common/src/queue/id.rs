//! Queue IDs: ULIDs, so they sort by arrival time and never collide.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};

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

/// IDs made one after another by a process share a subdirectory in runs
/// of this many (see [`QueueId::generate`]).
const BUCKET_RUN: u32 = 64;

/// Counts the IDs this process made; starts at a random place so that
/// processes and restarts do not all begin with the same subdirectory.
static GENERATED: std::sync::LazyLock<AtomicU32> =
    std::sync::LazyLock::new(|| AtomicU32::new(rand::random()));

impl QueueId {
    /// A new ULID: the time, then 80 bits of which the last 10 (the
    /// [`Bucket`]) are not random but move on every [`BUCKET_RUN`] IDs,
    /// round the 1024 subdirectories. The messages of one group commit
    /// thus share one or two subdirectories, which is what that commit
    /// fsyncs (every fsync is a disk cache flush), while the queue still
    /// spreads evenly over all of them, at any arrival rate. 70 random
    /// bits per millisecond keep IDs unique.
    pub fn generate() -> Self {
        Self::generate_nth(GENERATED.fetch_add(1, Ordering::Relaxed))
    }

    /// The `n`th ID a process makes.
    fn generate_nth(n: u32) -> Self {
        let bucket = u128::from(n / BUCKET_RUN % Bucket::COUNT as u32);
        Self((Ulid::new().0 & !BUCKET_MASK) | bucket)
    }

    /// Milliseconds since the epoch at which the ID was made.
    pub fn timestamp_ms(self) -> u64 {
        Ulid(self.0).timestamp_ms()
    }

    /// The queue subdirectory the ID hashes to: its last two characters,
    /// which come from the random part of the ULID (the first ten are the
    /// time, and change too slowly to spread anything). 32 x 32 = 1024
    /// subdirectories, about 1000 entries each at a million messages.
    pub fn bucket(self) -> Bucket {
        // The low 10 bits are the last two base-32 characters.
        Bucket((self.0 & BUCKET_MASK) as u16)
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

/// The bits of a queue ID that name its bucket.
const BUCKET_MASK: u128 = 0x3ff;

/// Crockford's base 32, as ULIDs are written.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// One of the 1024 hashed subdirectories of a queue directory, named by
/// two base-32 characters (the last two of the IDs it holds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bucket(u16);

impl Bucket {
    pub const COUNT: usize = 1024;

    /// The subdirectory's name.
    pub fn name(self) -> [u8; 2] {
        [
            ALPHABET[usize::from(self.0 >> 5)],
            ALPHABET[usize::from(self.0 & 31)],
        ]
    }

    /// 0..1024, for bitsets.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }

    pub fn from_index(index: usize) -> Option<Self> {
        (index < Self::COUNT).then_some(Self(index as u16))
    }

    /// The bucket a subdirectory name stands for, if it is one (exactly as
    /// [`Bucket::name`] writes it: two upper-case base-32 characters).
    pub fn parse(name: &str) -> Option<Self> {
        let [high, low] = name.as_bytes() else {
            return None;
        };
        let digit = |c: &u8| ALPHABET.iter().position(|a| a == c);
        Some(Self((digit(high)? as u16) << 5 | digit(low)? as u16))
    }
}

impl fmt::Display for Bucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [high, low] = self.name();
        write!(f, "{}{}", char::from(high), char::from(low))
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
    fn bucket_is_the_last_two_characters() {
        for _ in 0..2000 {
            let id = QueueId::generate();
            let text = id.to_string();
            let bucket = id.bucket();
            assert_eq!(bucket.to_string(), text[24..], "{text}");
            assert_eq!(Bucket::parse(&text[24..]), Some(bucket));
            assert_eq!(Bucket::from_index(bucket.index()), Some(bucket));
        }
        for index in 0..Bucket::COUNT {
            let bucket = Bucket::from_index(index).unwrap();
            assert_eq!(Bucket::parse(&bucket.to_string()), Some(bucket));
        }
        for bad in ["", "0", "000", "0I", "0u", "0/", "\u{e9}"] {
            assert_eq!(Bucket::parse(bad), None, "{bad:?}");
        }
        assert_eq!(Bucket::from_index(Bucket::COUNT), None);
    }

    #[test]
    fn buckets_spread_evenly_and_ids_made_together_share_one() {
        let start: u32 = rand::random();
        let ids: Vec<QueueId> = (0..102_400u32)
            .map(|i| QueueId::generate_nth(start.wrapping_add(i)))
            .collect();
        let mut counts = vec![0u32; Bucket::COUNT];
        for id in &ids {
            counts[id.bucket().index()] += 1;
        }
        // 100 per bucket: runs of 64 round the buckets, none left out.
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(*min >= 64 && *max <= 128, "min {min} max {max}");
        // A group commit of 50 consecutive IDs touches at most 2 buckets.
        for group in ids.chunks(50) {
            let mut buckets: Vec<Bucket> = group.iter().map(|id| id.bucket()).collect();
            buckets.dedup();
            assert!(buckets.len() <= 2, "{buckets:?}");
        }
        let mut unique = ids.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ids.len());
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
