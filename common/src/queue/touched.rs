//! Which hashed subdirectories got new messages since the last group
//! commit: those, and only those, are fsynced by the next
//! [`super::Queue::sync_new_entries`].

use std::io;
use std::sync::{Mutex, PoisonError};

use super::Bucket;

const WORDS: usize = Bucket::COUNT / 64;

#[derive(Debug, Default)]
pub(super) struct Touched {
    /// One bit per bucket.
    bits: Mutex<[u64; WORDS]>,
    /// Held for a whole sync, so that syncs run one at a time.
    syncing: Mutex<()>,
}

impl Touched {
    pub(super) fn mark(&self, bucket: Bucket) {
        let index = bucket.index();
        let mut bits = self.bits.lock().unwrap_or_else(PoisonError::into_inner);
        bits[index / 64] |= 1 << (index % 64);
    }

    /// Takes the buckets marked so far and runs `fsync` on them, one sync
    /// at a time. If it fails, they are marked again for the next sync.
    pub(super) fn sync(&self, fsync: impl FnOnce(&[Bucket]) -> io::Result<()>) -> io::Result<()> {
        let _one_at_a_time = self.syncing.lock().unwrap_or_else(PoisonError::into_inner);
        let taken = std::mem::take(&mut *self.bits.lock().unwrap_or_else(PoisonError::into_inner));
        let buckets: Vec<Bucket> = (0..Bucket::COUNT)
            .filter(|i| taken[i / 64] & (1 << (i % 64)) != 0)
            .filter_map(Bucket::from_index)
            .collect();
        let result = fsync(&buckets);
        if result.is_err() {
            let mut bits = self.bits.lock().unwrap_or_else(PoisonError::into_inner);
            for (word, again) in bits.iter_mut().zip(taken) {
                *word |= again;
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(index: usize) -> Bucket {
        Bucket::from_index(index).unwrap()
    }

    #[test]
    fn a_sync_takes_what_was_marked_and_a_failed_one_gives_it_back() {
        let touched = Touched::default();
        touched.mark(bucket(3));
        touched.mark(bucket(1023));
        touched.mark(bucket(3));
        let mut seen = Vec::new();
        touched
            .sync(|b| {
                seen = b.to_vec();
                Ok(())
            })
            .unwrap();
        assert_eq!(seen, vec![bucket(3), bucket(1023)]);
        touched
            .sync(|b| {
                assert!(b.is_empty(), "nothing new since");
                Ok(())
            })
            .unwrap();

        touched.mark(bucket(64));
        assert!(touched.sync(|_| Err(io::Error::other("disk"))).is_err());
        touched.mark(bucket(0));
        touched
            .sync(|b| {
                seen = b.to_vec();
                Ok(())
            })
            .unwrap();
        assert_eq!(seen, vec![bucket(0), bucket(64)], "the failed bucket again");
    }
}
