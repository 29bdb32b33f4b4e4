//! Writing the results of a message's finished jobs while its other jobs
//! still run (a checkpoint), so that a crash does not deliver to those
//! recipients again.
//!
//! A checkpoint waits up to `checkpoint_delay` for the message's other
//! jobs: when they all end within it, as a message's jobs to a few fast
//! destinations do, the message's final write (its removal, or its move to
//! `deferred/`) is the only one; a message to a thousand destinations gets
//! a write a second rather than a thousand. The write runs on a blocking
//! thread, so its fsyncs hold up no other decision, and one message has at
//! most one write at a time: a later write must not be overtaken by an
//! earlier one, nor the message's final write by either, or a stale
//! envelope could come back.

use std::io;
use std::time::Instant;

use empath_common::queue::{QueueId, QueueState};

use super::{Event, Scheduler};
use crate::dispatch::Couriers;
use crate::store::Store;

/// Where a message's checkpoint stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Checkpoint {
    Idle,
    /// Waiting in `checkpoints_due` until the given time.
    Due(Instant),
    Writing,
    /// Another job ended during the write: write again after it.
    WritingThenAgain,
}

impl<S: Store, C: Couriers> Scheduler<S, C> {
    /// A job of message `id` ended and others still run: its results are
    /// written within `checkpoint_delay`.
    pub(super) fn checkpoint_soon(&mut self, id: QueueId) {
        let Some(message) = self.active.get_mut(&id) else {
            return;
        };
        match message.checkpoint {
            Checkpoint::Idle if self.checkpoint_delay.is_zero() => self.write_checkpoint(id),
            Checkpoint::Idle => {
                let at = Instant::now() + self.checkpoint_delay;
                message.checkpoint = Checkpoint::Due(at);
                self.checkpoints_due.insert((at, id));
            }
            Checkpoint::Due(_) | Checkpoint::WritingThenAgain => {}
            Checkpoint::Writing => message.checkpoint = Checkpoint::WritingThenAgain,
        }
    }

    /// The last job of message `id` ended: it is finished now, or, with a
    /// write in flight, when that write ends. A checkpoint still waiting is
    /// not needed: the final write covers it.
    pub(super) fn last_job_done(&mut self, id: QueueId) {
        let Some(message) = self.active.get_mut(&id) else {
            return;
        };
        match message.checkpoint {
            Checkpoint::Idle => self.finish(id),
            Checkpoint::Due(at) => {
                message.checkpoint = Checkpoint::Idle;
                self.checkpoints_due.remove(&(at, id));
                self.finish(id);
            }
            Checkpoint::Writing | Checkpoint::WritingThenAgain => {}
        }
    }

    /// Starts the checkpoints due by `now`.
    pub(super) fn write_due_checkpoints(&mut self, now: Instant) {
        while let Some(&(at, id)) = self.checkpoints_due.first() {
            if at > now {
                break;
            }
            self.checkpoints_due.pop_first();
            self.write_checkpoint(id);
        }
    }

    /// Starts every waiting checkpoint now: qmgr is stopping.
    pub fn write_all_checkpoints(&mut self) {
        self.write_due_checkpoints(Instant::now() + self.checkpoint_delay);
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

    /// How long checkpoints wait (tests cannot wait a second).
    #[cfg(test)]
    pub fn set_checkpoint_delay(&mut self, delay: std::time::Duration) {
        self.checkpoint_delay = delay;
    }
}
