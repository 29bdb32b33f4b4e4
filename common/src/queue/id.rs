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

    /// The queue subdirectory the ID hashes to: its last two characters,
    /// which come from the random part of the ULID (the first ten are the
    /// time, and change too slowly to spread anything). 32 x 32 = 1024
    /// subdirectories, about 1000 entries each at a million messages.
    pub fn bucket(self) -> Bucket {
        // The low 10 bits are the last two base-32 characters.
        Bucket((self.0 & 0x3ff) as u16)
    }
}

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
    fn buckets_spread_evenly() {
        let mut counts = vec![0u32; Bucket::COUNT];
        for _ in 0..102_400 {
            counts[QueueId::generate().bucket().index()] += 1;
        }
        // 100 per bucket on average; random spread stays well inside 2x.
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(*min > 40 && *max < 200, "min {min} max {max}");
    }
}
