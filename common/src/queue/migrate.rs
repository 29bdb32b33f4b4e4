//! Moving a spool of the flat layout of earlier versions (`data/ID`,
//! `<state>/ID`) into the hashed one (`data/BK/ID`, `<state>/BK/ID`).

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::MetadataExt;

use super::{Bucket, Queue, QueueId, QueueState};
use crate::safeio;

/// What [`Queue::migrate`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Migrated {
    /// Files moved into their hashed subdirectory.
    pub moved: u64,
    /// Flat files whose hashed name was taken by a different file: moved
    /// to `corrupt/` as `flat-<dir>-<ID>` for an operator to look at.
    pub set_aside: u64,
}

impl Queue {
    /// Moves every queue file found directly in `data/` or a state's
    /// directory (the flat layout of earlier versions) into its hashed
    /// subdirectory. The master runs it at start, under the spool lock and
    /// before any daemon, and qmgr before it recovers the queue (for a
    /// restart with new daemons under an older master); it is quick when
    /// there is nothing to move.
    ///
    /// Crash-safe at every step: the files of one subdirectory are
    /// hard-linked into it, the subdirectory is fsynced, and only then are
    /// their old names removed. A crash leaves every file under at least
    /// one of its names; the next run finds the ones under both (the same
    /// inode) and only removes the old name. Content goes first, so no
    /// envelope is in its new place before its content. One fsync per
    /// subdirectory and directory, whatever the number of files.
    pub fn migrate(&self) -> io::Result<Migrated> {
        let mut done = Migrated::default();
        for dir in Self::hashed_dirs() {
            let mut flat: BTreeMap<Bucket, Vec<QueueId>> = BTreeMap::new();
            for entry in std::fs::read_dir(self.dir(dir))? {
                let entry = entry?;
                if entry.file_type()?.is_dir() {
                    continue;
                }
                // Only names exactly as the earlier versions wrote them.
                let name = entry.file_name();
                let Some(id) = name
                    .to_str()
                    .and_then(|n| n.parse::<QueueId>().ok())
                    .filter(|id| name.to_str() == Some(id.to_string().as_str()))
                else {
                    continue;
                };
                flat.entry(id.bucket()).or_default().push(id);
            }
            for (bucket, ids) in &flat {
                self.migrate_bucket(dir, *bucket, ids, &mut done)?;
            }
            if !flat.is_empty() {
                safeio::fsync_dir(&self.dir(dir))?;
            }
        }
        Ok(done)
    }

    fn migrate_bucket(
        &self,
        dir: &str,
        bucket: Bucket,
        ids: &[QueueId],
        done: &mut Migrated,
    ) -> io::Result<()> {
        let mut linked = Vec::with_capacity(ids.len());
        for id in ids {
            let name = id.to_string();
            let old = self.dir(dir).join(&name);
            let new = self.hashed_path(dir, *id);
            match self.put_in_bucket(dir, bucket, || std::fs::hard_link(&old, &new)) {
                Ok(()) => linked.push(old),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    if same_file(&old, &new)? {
                        // Linked by a run that stopped before the unlink.
                        linked.push(old);
                    } else {
                        let aside = self
                            .dir(QueueState::Corrupt.dir_name())
                            .join(format!("flat-{dir}-{name}"));
                        tracing::error!(
                            file = %old.display(),
                            taken_by = %new.display(),
                            moved_to = %aside.display(),
                            "queue file of the flat layout clashes with a hashed one; set aside"
                        );
                        std::fs::rename(&old, &aside)?;
                        done.set_aside += 1;
                    }
                }
                // Gone meanwhile (only an operator would do that): nothing to move.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        safeio::fsync_dir(&self.bucket_dir(dir, bucket))?;
        for old in linked {
            match std::fs::remove_file(&old) {
                Ok(()) => done.moved += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

fn same_file(a: &std::path::Path, b: &std::path::Path) -> io::Result<bool> {
    let (a, b) = (std::fs::metadata(a)?, std::fs::metadata(b)?);
    Ok(a.dev() == b.dev() && a.ino() == b.ino())
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::super::tests::{envelope, queue};
    use super::*;

    /// Writes a message as the flat layout did: a sealed content file in
    /// `data/ID`, hard-linked to `incoming/ID`; or, for `deferred`, an
    /// envelope file of its own.
    fn flat_message(queue: &Queue, state: QueueState) -> QueueId {
        let id = QueueId::generate();
        // Stage it hashed, then move both names to the flat places.
        let mut content = queue.new_content(id);
        content.write_all(b"hello").unwrap();
        queue.stage_new(content, &envelope(id)).unwrap();
        if state != QueueState::Incoming {
            let mut updated = envelope(id);
            updated.attempts = 1;
            queue
                .rewrite_and_move(&updated, QueueState::Incoming, state)
                .unwrap();
        }
        let root = queue.root();
        std::fs::rename(
            queue.content_path(id),
            root.join("data").join(id.to_string()),
        )
        .unwrap();
        std::fs::rename(
            queue.envelope_path(state, id),
            root.join(state.dir_name()).join(id.to_string()),
        )
        .unwrap();
        id
    }

    #[test]
    fn a_flat_spool_is_moved_into_place_and_a_second_run_does_nothing() {
        let (_dir, queue) = queue();
        let incoming = flat_message(&queue, QueueState::Incoming);
        let deferred = flat_message(&queue, QueueState::Deferred);
        let held = flat_message(&queue, QueueState::Hold);
        std::fs::write(queue.root().join("incoming/not-an-id"), b"x").unwrap();
        assert_eq!(queue.locate(incoming), None);

        let done = queue.migrate().unwrap();
        assert_eq!(
            done,
            Migrated {
                moved: 6,
                set_aside: 0
            }
        );
        assert_eq!(queue.locate(incoming), Some(QueueState::Incoming));
        assert_eq!(queue.locate(deferred), Some(QueueState::Deferred));
        assert_eq!(queue.locate(held), Some(QueueState::Hold));
        assert_eq!(
            queue.read(QueueState::Deferred, deferred).unwrap().attempts,
            1
        );
        let mut body = String::new();
        queue
            .open_content(incoming)
            .unwrap()
            .read_to_string(&mut body)
            .unwrap();
        assert_eq!(body, "hello");
        assert_eq!(
            queue.list(QueueState::Incoming).unwrap().strays,
            vec!["not-an-id".to_owned()],
            "names that are not queue IDs are left for qmgr to quarantine"
        );
        assert_eq!(queue.migrate().unwrap(), Migrated::default());
    }

    /// A run killed after linking and before unlinking left files under
    /// both names: the next run finishes without losing or doubling any.
    #[test]
    fn a_run_cut_short_is_finished_by_the_next() {
        let (_dir, queue) = queue();
        let id = flat_message(&queue, QueueState::Deferred);
        let root = queue.root().to_owned();
        // As if the first run had linked the content and stopped.
        std::fs::hard_link(
            root.join("data").join(id.to_string()),
            queue.content_path(id),
        )
        .unwrap();
        let done = queue.migrate().unwrap();
        assert_eq!(
            done,
            Migrated {
                moved: 2,
                set_aside: 0
            }
        );
        assert!(!root.join("data").join(id.to_string()).exists());
        assert_eq!(queue.list(QueueState::Deferred).unwrap().ids, vec![id]);
        assert_eq!(queue.count_content().unwrap(), 1);
    }

    #[test]
    fn a_clash_with_a_different_file_is_set_aside_not_overwritten() {
        let (_dir, queue) = queue();
        let id = flat_message(&queue, QueueState::Deferred);
        let hashed = queue.envelope_path(QueueState::Deferred, id);
        std::fs::create_dir_all(hashed.parent().unwrap()).unwrap();
        std::fs::write(&hashed, b"the newer one").unwrap();
        let done = queue.migrate().unwrap();
        assert_eq!(
            done,
            Migrated {
                moved: 1,
                set_aside: 1
            }
        );
        assert_eq!(std::fs::read(&hashed).unwrap(), b"the newer one");
        assert!(
            queue
                .root()
                .join(format!("corrupt/flat-deferred-{id}"))
                .exists()
        );
    }
}
