//! The queue as the scheduler sees it: the few operations it needs, behind
//! one small interface (as OpenSMTPD's queue backend), so that the
//! scheduler's decisions can be tested in memory, with failures injected.
//! [`Queue`] is the real one; every path and rename stays in
//! `common::queue`.

use std::io;

use empath_common::queue::{Envelope, Listing, Queue, QueueId, QueueState, ReadError};

/// What is called with the outcome of a [`Store::rewrite_later`].
pub type WriteDone = Box<dyn FnOnce(io::Result<()>) + Send>;

pub trait Store {
    fn list(&self, state: QueueState) -> io::Result<Listing>;
    fn read(&self, state: QueueState, id: QueueId) -> Result<Envelope, ReadError>;
    /// A state change that need not survive a crash (see
    /// [`Queue::move_unsynced`]).
    fn move_unsynced(&self, id: QueueId, from: QueueState, to: QueueState) -> io::Result<()>;
    /// A durable state change.
    fn move_to(&self, id: QueueId, from: QueueState, to: QueueState) -> io::Result<()>;
    /// Replaces the envelope in `state`, durably.
    fn rewrite(&self, state: QueueState, envelope: &Envelope) -> io::Result<()>;
    /// Replaces the envelope in `state` without waiting for it, for a
    /// checkpoint: `done` gets the outcome. The new envelope is complete on
    /// disk before it replaces the old, but the replacement is made durable
    /// by the filesystem's next commit, not at once (see
    /// [`Queue::rewrite_unsynced`]). The caller keeps at most one write per
    /// message in flight.
    fn rewrite_later(&self, state: QueueState, envelope: Envelope, done: WriteDone);
    /// Replaces the envelope and moves it, durably.
    fn rewrite_and_move(
        &self,
        envelope: &Envelope,
        from: QueueState,
        to: QueueState,
    ) -> io::Result<()>;
    /// Removes the message: envelope and content.
    fn remove(&self, state: QueueState, id: QueueId) -> io::Result<()>;
    fn quarantine(&self, state: QueueState, id: QueueId) -> io::Result<()>;
    fn quarantine_name(&self, state: QueueState, name: &str) -> io::Result<()>;
    fn locate(&self, id: QueueId) -> Option<QueueState>;
    /// Whether an operator's freeze is recorded.
    fn frozen(&self) -> bool;
    fn set_frozen(&self, frozen: bool) -> io::Result<()>;
    fn sweep_orphan_content(&self, older_than: std::time::Duration) -> io::Result<usize>;
}

impl Store for Queue {
    fn list(&self, state: QueueState) -> io::Result<Listing> {
        Queue::list(self, state)
    }

    fn read(&self, state: QueueState, id: QueueId) -> Result<Envelope, ReadError> {
        Queue::read(self, state, id)
    }

    fn move_unsynced(&self, id: QueueId, from: QueueState, to: QueueState) -> io::Result<()> {
        Queue::move_unsynced(self, id, from, to)
    }

    fn move_to(&self, id: QueueId, from: QueueState, to: QueueState) -> io::Result<()> {
        Queue::move_to(self, id, from, to)
    }

    fn rewrite(&self, state: QueueState, envelope: &Envelope) -> io::Result<()> {
        Queue::rewrite(self, state, envelope)
    }

    /// On a blocking thread: the fsyncs of one message's write do not
    /// hold up the scheduler's other decisions.
    fn rewrite_later(&self, state: QueueState, envelope: Envelope, done: WriteDone) {
        let queue = self.clone();
        tokio::task::spawn_blocking(move || done(queue.rewrite_unsynced(state, &envelope)));
    }

    fn rewrite_and_move(
        &self,
        envelope: &Envelope,
        from: QueueState,
        to: QueueState,
    ) -> io::Result<()> {
        Queue::rewrite_and_move(self, envelope, from, to)
    }

    fn remove(&self, state: QueueState, id: QueueId) -> io::Result<()> {
        Queue::remove(self, state, id)
    }

    fn quarantine(&self, state: QueueState, id: QueueId) -> io::Result<()> {
        Queue::quarantine(self, state, id)
    }

    fn quarantine_name(&self, state: QueueState, name: &str) -> io::Result<()> {
        Queue::quarantine_name(self, state, name)
    }

    fn locate(&self, id: QueueId) -> Option<QueueState> {
        Queue::locate(self, id)
    }

    fn frozen(&self) -> bool {
        self.frozen_marker().exists()
    }

    fn set_frozen(&self, frozen: bool) -> io::Result<()> {
        let marker = self.frozen_marker();
        if frozen {
            std::fs::write(&marker, b"")
        } else {
            match std::fs::remove_file(&marker) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                other => other,
            }
        }
    }

    fn sweep_orphan_content(&self, older_than: std::time::Duration) -> io::Result<usize> {
        Queue::sweep_orphan_content(self, older_than)
    }
}

/// A queue in memory for the scheduler's tests, with writes that can be
/// made to fail (a full disk).
#[cfg(test)]
pub mod memory {
    use std::cell::{Cell, RefCell};
    use std::collections::BTreeMap;

    use super::*;

    /// A store shared between a test and the scheduler it drives.
    impl<T: Store> Store for std::rc::Rc<T> {
        fn list(&self, state: QueueState) -> io::Result<Listing> {
            (**self).list(state)
        }
        fn read(&self, state: QueueState, id: QueueId) -> Result<Envelope, ReadError> {
            (**self).read(state, id)
        }
        fn move_unsynced(&self, id: QueueId, from: QueueState, to: QueueState) -> io::Result<()> {
            (**self).move_unsynced(id, from, to)
        }
        fn move_to(&self, id: QueueId, from: QueueState, to: QueueState) -> io::Result<()> {
            (**self).move_to(id, from, to)
        }
        fn rewrite(&self, state: QueueState, envelope: &Envelope) -> io::Result<()> {
            (**self).rewrite(state, envelope)
        }
        fn rewrite_later(&self, state: QueueState, envelope: Envelope, done: WriteDone) {
            (**self).rewrite_later(state, envelope, done)
        }
        fn rewrite_and_move(
            &self,
            envelope: &Envelope,
            from: QueueState,
            to: QueueState,
        ) -> io::Result<()> {
            (**self).rewrite_and_move(envelope, from, to)
        }
        fn remove(&self, state: QueueState, id: QueueId) -> io::Result<()> {
            (**self).remove(state, id)
        }
        fn quarantine(&self, state: QueueState, id: QueueId) -> io::Result<()> {
            (**self).quarantine(state, id)
        }
        fn quarantine_name(&self, state: QueueState, name: &str) -> io::Result<()> {
            (**self).quarantine_name(state, name)
        }
        fn locate(&self, id: QueueId) -> Option<QueueState> {
            (**self).locate(id)
        }
        fn frozen(&self) -> bool {
            (**self).frozen()
        }
        fn set_frozen(&self, frozen: bool) -> io::Result<()> {
            (**self).set_frozen(frozen)
        }
        fn sweep_orphan_content(&self, older_than: std::time::Duration) -> io::Result<usize> {
            (**self).sweep_orphan_content(older_than)
        }
    }

    #[derive(Default)]
    pub struct MemoryStore {
        pub files: RefCell<BTreeMap<(QueueState, QueueId), Envelope>>,
        /// While set, every durable write fails with "no space".
        pub disk_full: Cell<bool>,
        /// Durable envelope writes so far.
        pub writes: Cell<usize>,
        pub frozen: Cell<bool>,
        /// While set, writes in the background wait in `pending` until
        /// [`MemoryStore::complete_writes`] (a slow disk).
        pub slow_writes: Cell<bool>,
        pending: RefCell<Vec<(QueueState, Envelope, WriteDone)>>,
    }

    impl MemoryStore {
        pub fn add(&self, state: QueueState, envelope: Envelope) {
            self.files
                .borrow_mut()
                .insert((state, envelope.id), envelope);
        }

        pub fn get(&self, state: QueueState, id: QueueId) -> Option<Envelope> {
            self.files.borrow().get(&(state, id)).cloned()
        }

        pub fn ids(&self, state: QueueState) -> Vec<QueueId> {
            self.files
                .borrow()
                .keys()
                .filter(|(s, _)| *s == state)
                .map(|(_, id)| *id)
                .collect()
        }

        /// Carries out the background writes held back by `slow_writes`,
        /// in the order they were asked for.
        pub fn complete_writes(&self) {
            let pending = std::mem::take(&mut *self.pending.borrow_mut());
            for (state, envelope, done) in pending {
                done(self.rewrite(state, &envelope));
            }
        }

        fn write_check(&self) -> io::Result<()> {
            if self.disk_full.get() {
                return Err(io::Error::new(io::ErrorKind::StorageFull, "no space left"));
            }
            self.writes.set(self.writes.get() + 1);
            Ok(())
        }

        fn take(&self, state: QueueState, id: QueueId) -> io::Result<Envelope> {
            self.files
                .borrow_mut()
                .remove(&(state, id))
                .ok_or_else(|| io::ErrorKind::NotFound.into())
        }
    }

    impl Store for MemoryStore {
        fn list(&self, state: QueueState) -> io::Result<Listing> {
            Ok(Listing {
                ids: self.ids(state),
                strays: Vec::new(),
            })
        }

        fn read(&self, state: QueueState, id: QueueId) -> Result<Envelope, ReadError> {
            self.get(state, id)
                .ok_or_else(|| ReadError::Io(io::ErrorKind::NotFound.into()))
        }

        fn move_unsynced(&self, id: QueueId, from: QueueState, to: QueueState) -> io::Result<()> {
            let envelope = self.take(from, id)?;
            self.add(to, envelope);
            Ok(())
        }

        fn move_to(&self, id: QueueId, from: QueueState, to: QueueState) -> io::Result<()> {
            self.move_unsynced(id, from, to)
        }

        fn rewrite(&self, state: QueueState, envelope: &Envelope) -> io::Result<()> {
            self.write_check()?;
            self.add(state, envelope.clone());
            Ok(())
        }

        /// Written at once, unless writes are slow; the outcome is
        /// reported as the real store would, through `done`.
        fn rewrite_later(&self, state: QueueState, envelope: Envelope, done: WriteDone) {
            if self.slow_writes.get() {
                self.pending.borrow_mut().push((state, envelope, done));
            } else {
                done(self.rewrite(state, &envelope));
            }
        }

        fn rewrite_and_move(
            &self,
            envelope: &Envelope,
            from: QueueState,
            to: QueueState,
        ) -> io::Result<()> {
            self.write_check()?;
            self.take(from, envelope.id)?;
            self.add(to, envelope.clone());
            Ok(())
        }

        fn remove(&self, state: QueueState, id: QueueId) -> io::Result<()> {
            self.take(state, id).map(|_| ())
        }

        fn quarantine(&self, state: QueueState, id: QueueId) -> io::Result<()> {
            self.move_unsynced(id, state, QueueState::Corrupt)
        }

        fn quarantine_name(&self, _state: QueueState, _name: &str) -> io::Result<()> {
            Ok(())
        }

        fn locate(&self, id: QueueId) -> Option<QueueState> {
            QueueState::ALL
                .into_iter()
                .find(|state| self.files.borrow().contains_key(&(*state, id)))
        }

        fn frozen(&self) -> bool {
            self.frozen.get()
        }

        fn set_frozen(&self, frozen: bool) -> io::Result<()> {
            self.frozen.set(frozen);
            Ok(())
        }

        fn sweep_orphan_content(&self, _older_than: std::time::Duration) -> io::Result<usize> {
            Ok(0)
        }
    }
}
