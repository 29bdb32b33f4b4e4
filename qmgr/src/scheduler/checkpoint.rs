//! Writing the results of a message's finished jobs while its other jobs
//! still run (a checkpoint), as soon as each job ends, so that a crash does
//! not deliver to those recipients again.
//!
//! A checkpoint survives any process's crash (a kill -9 of qmgr, say) as
//! soon as it is written, and reaches the disk with the filesystem's next
//! journal commit, as the message's removal after its last delivery does:
//! like that removal it skips the directory fsync (see
//! `Queue::rewrite_unsynced`), so a power failure just after can repeat
//! deliveries, never lose a message. Its envelope is fsynced before it
//! replaces the old one.
//!
//! The write runs on a blocking thread, so its fsyncs hold up no other
//! decision, and one message has at most one write at a time: a later
//! write must not be overtaken by an earlier one, nor the message's final
//! write (its removal, or its move to `deferred/`) by either, or a stale
//! envelope could come back. Jobs that end during a write are written
//! together by the next one; a job that ends last needs no checkpoint, the
//! final write covers it.

use std::io;

use empath_common::queue::{QueueId, QueueState};

use super::{Event, Scheduler};
use crate::dispatch::Couriers;
use crate::store::Store;

/// Where a message's checkpoint stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Checkpoint {
    Idle,
    Writing,
    /// Another job ended during the write: write again after it.
    WritingThenAgain,
}

impl<S: Store, C: Couriers> Scheduler<S, C> {
    /// A job of message `id` ended and others still run: its results are
    /// written now, or right after the write in flight.
    pub(super) fn checkpoint(&mut self, id: QueueId) {
        let Some(message) = self.active.get_mut(&id) else {
            return;
        };
        match message.checkpoint {
            Checkpoint::Idle => self.write_checkpoint(id),
            Checkpoint::Writing | Checkpoint::WritingThenAgain => {
                message.checkpoint = Checkpoint::WritingThenAgain;
            }
        }
    }

    /// The last job of message `id` ended: it is finished now, or, with a
    /// write in flight, when that write ends.
    pub(super) fn last_job_done(&mut self, id: QueueId) {
        let idle = self
            .active
            .get(&id)
            .is_some_and(|m| m.checkpoint == Checkpoint::Idle);
        if idle {
            self.finish(id);
        }
    }

    fn write_checkpoint(&mut self, id: QueueId) {
        let Some(message) = self.active.get_mut(&id) else {
            return;
        };
        message.checkpoint = Checkpoint::Writing;
        self.checkpoints += 1;
        let events = self.events.clone();
        self.queue.rewrite_later(
            QueueState::Active,
            message.envelope.clone(),
            Box::new(move |result| {
                let _ = events.send(Event::Checkpointed { id, result });
            }),
        );
    }

    /// A checkpoint write of message `id` ended.
    pub(super) fn checkpointed(&mut self, id: QueueId, result: io::Result<()>) {
        self.checkpoints = self.checkpoints.saturating_sub(1);
        let Some(message) = self.active.get_mut(&id) else {
            return;
        };
        if let Err(error) = result {
            tracing::error!(message_id = %id, %error, "cannot record the results of a job yet; a crash now would repeat them");
        }
        let again = message.checkpoint == Checkpoint::WritingThenAgain;
        message.checkpoint = Checkpoint::Idle;
        if message.running_jobs == 0 {
            // The final write covers whatever the checkpoint missed.
            self.finish(id);
        } else if again {
            self.write_checkpoint(id);
        }
    }
}
