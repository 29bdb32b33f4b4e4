//! Queue commands from operators (`empathctl queue ...`) that change the
//! queue, carried out by the scheduler itself so that they see and change
//! its live state. The read-only ones (`list`, `view`, `stats`) are
//! answered by empath-showq, never in this loop.

use empath_common::control::{ControlResponse, QueueCommand};
use empath_common::queue::{QueueId, QueueState};

use super::Scheduler;
use crate::dispatch::Couriers;
use crate::store::Store;

impl<S: Store, C: Couriers> Scheduler<S, C> {
    pub(super) fn control(&mut self, command: QueueCommand) -> ControlResponse {
        match command {
            QueueCommand::List { .. } | QueueCommand::View { .. } | QueueCommand::Stats => {
                ControlResponse::Error("queue listing is answered by empath-showq, not qmgr".into())
            }
            QueueCommand::Delete { id } => self.delete(id),
            QueueCommand::Retry { id, force } => self.retry_now(id, force),
            QueueCommand::Freeze => {
                self.set_frozen(true);
                ControlResponse::Done(
                    "delivery frozen: mail is accepted and queued, but not delivered".into(),
                )
            }
            QueueCommand::Unfreeze => {
                self.set_frozen(false);
                ControlResponse::Done("delivery resumed".into())
            }
            QueueCommand::ProcessNow => {
                let deferred = self.deferred.len();
                self.process_now();
                ControlResponse::Done(format!("{deferred} deferred message(s) are due now"))
            }
        }
    }

    /// Freezing is remembered in the spool, so a restarted qmgr stays frozen.
    pub(super) fn set_frozen(&mut self, frozen: bool) {
        self.frozen = frozen;
        if let Err(error) = self.queue.set_frozen(frozen) {
            tracing::warn!(%error, "cannot record the freeze in the spool; it lasts until qmgr restarts");
        }
        tracing::info!(
            running = self.running,
            "delivery {}",
            if frozen { "frozen" } else { "unfrozen" }
        );
    }

    fn delete(&mut self, id: QueueId) -> ControlResponse {
        if let Some(message) = self.active.get_mut(&id) {
            // Its delivery attempt is running: it goes as soon as that ends.
            message.cancelled = true;
            return ControlResponse::Done(format!(
                "{id} is being delivered; it will be deleted when this attempt ends"
            ));
        }
        let Some(state) = self.queue.locate(id) else {
            return not_found(id);
        };
        self.deferred.retain(|(_, queued)| *queued != id);
        self.incoming.retain(|queued| *queued != id);
        self.incoming_known.remove(&id);
        match self.queue.remove(state, id) {
            Ok(()) => {
                tracing::info!(message_id = %id, %state, "message deleted by an operator");
                ControlResponse::Done(format!("deleted {id}"))
            }
            Err(error) => ControlResponse::Error(format!("cannot delete {id}: {error}")),
        }
    }

    fn retry_now(&mut self, id: QueueId, force: bool) -> ControlResponse {
        if self.active.contains_key(&id) {
            return ControlResponse::Done(format!("{id} is being delivered now"));
        }
        match self.queue.locate(id) {
            None => not_found(id),
            Some(QueueState::Deferred) => {
                // An operator's explicit request: tried even if the
                // destination's circuit breaker is open.
                self.deferred.retain(|(_, queued)| *queued != id);
                self.deferred.insert((0, id));
                self.forced.insert(id);
                ControlResponse::Done(format!("{id} will be retried now"))
            }
            Some(QueueState::Incoming) => {
                ControlResponse::Done(format!("{id} is already waiting for delivery"))
            }
            Some(QueueState::Hold) if force => {
                match self
                    .queue
                    .move_to(id, QueueState::Hold, QueueState::Incoming)
                {
                    Ok(()) => {
                        self.note_incoming(id);
                        ControlResponse::Done(format!(
                            "{id} released from hold and will be delivered now"
                        ))
                    }
                    Err(error) => ControlResponse::Error(format!("cannot release {id}: {error}")),
                }
            }
            Some(QueueState::Hold) => {
                ControlResponse::Error(format!("{id} is on hold; use --force to release it"))
            }
            Some(state) => {
                ControlResponse::Error(format!("{id} is in {state}/ and cannot be retried"))
            }
        }
    }
}

fn not_found(id: QueueId) -> ControlResponse {
    ControlResponse::Error(format!("no message {id} in the queue"))
}
