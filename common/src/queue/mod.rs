//! The queue directory and every operation on it.
//!
//! A message is two directory entries:
//! - `data/BK/ID`: the content, written once by cleanup and never rewritten;
//! - `<state>/BK/ID`: the envelope, where `<state>` is `incoming`, `active`,
//!   `deferred`, `hold` or `corrupt`. A state change is one rename.
//!
//! `BK` is the ID's hashed subdirectory ([`Bucket`]: its last two
//! characters, 1024 of them), as Postfix's `hash_queue_depth`: a million
//! queued messages make a thousand entries per directory, not a million.
//! Subdirectories are made on first use (and their entry fsynced before
//! anything goes in); `tmp/` is not hashed (it holds only writes in
//! progress). [`Queue::migrate`] moves a spool of the earlier flat layout
//! (`data/ID`, `<state>/ID`) into this one.
//!
//! cleanup seals the first envelope into the content file (see `sealed`)
//! and hard-links that file into `incoming/`: a new message costs one inode
//! and one file fsync. The first envelope update (qmgr deferring the
//! message) replaces the link with an envelope file of its own. Envelope
//! updates are written whole to `tmp/`, fsynced, and renamed over the old
//! entry. No daemon builds a queue path by hand: they all go through
//! [`Queue`].

mod codec;
mod envelope;
mod id;
pub mod lister;
mod migrate;
mod sealed;
mod touched;

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use codec::{DecodeError, FORMAT_VERSION, decode, encode};
pub use envelope::*;
pub use id::{BadQueueId, Bucket, QueueId};
pub use migrate::Migrated;

use crate::safeio;
use touched::Touched;

/// The directory an envelope is in.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum QueueState {
    Incoming,
    Active,
    Deferred,
    Hold,
    Corrupt,
}

impl QueueState {
    pub const ALL: [Self; 5] = [
        Self::Incoming,
        Self::Active,
        Self::Deferred,
        Self::Hold,
        Self::Corrupt,
    ];

    pub fn dir_name(self) -> &'static str {
        match self {
            Self::Incoming => "incoming",
            Self::Active => "active",
            Self::Deferred => "deferred",
            Self::Hold => "hold",
            Self::Corrupt => "corrupt",
        }
    }
}

impl std::fmt::Display for QueueState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.dir_name())
    }
}

const TMP: &str = "tmp";
const DATA: &str = "data";
const PRIVATE: &str = "private";
const PUBLIC: &str = "public";
const MAILDROP: &str = "maildrop";
/// Under the root: present while delivery is frozen (`empathctl queue
/// freeze`), so that a restarted qmgr stays frozen.
const FROZEN: &str = "frozen";

/// Why an envelope could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("corrupt queue file: {0}")]
    Corrupt(#[from] DecodeError),
}

impl ReadError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Io(e) if e.kind() == io::ErrorKind::NotFound)
    }
}

/// A queue directory tree rooted at the configured spool path.
///
/// Clones share the record of which hashed subdirectories got new
/// messages since the last [`Queue::sync_new_entries`]: stage and sync
/// through clones of one `Queue`, not through two made with `Queue::new`.
#[derive(Debug, Clone)]
pub struct Queue {
    root: PathBuf,
    touched: Arc<Touched>,
}

impl Queue {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            touched: Arc::default(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn all_dirs() -> impl Iterator<Item = &'static str> {
        [TMP, DATA, PRIVATE, PUBLIC]
            .into_iter()
            .chain(QueueState::ALL.iter().map(|s| s.dir_name()))
    }

    /// The directories that are hashed into [`Bucket`] subdirectories.
    fn hashed_dirs() -> impl Iterator<Item = &'static str> {
        std::iter::once(DATA).chain(QueueState::ALL.iter().map(|s| s.dir_name()))
    }

    /// Creates the tree where it is missing: the queue directories 0700, the
    /// root and `public/` 0755. Run by the master, before [`Queue::migrate`].
    /// The hashed subdirectories are made on first use.
    pub fn create_dirs(&self) -> io::Result<()> {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true).mode(0o700);
        builder.create(&self.root)?;
        for dir in Self::all_dirs() {
            builder.create(self.root.join(dir))?;
        }
        // Local users reach public/ (the submission socket) and may drop
        // files into public/maildrop/ but not list or touch others' files:
        // mode 1733, like Postfix's maildrop.
        std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o755))?;
        let public = self.root.join(PUBLIC);
        std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o755))?;
        let maildrop = self.maildrop_dir();
        builder.create(&maildrop)?;
        std::fs::set_permissions(&maildrop, std::fs::Permissions::from_mode(0o1733))?;
        safeio::fsync_dir(&self.root)
    }

    /// Checks that every directory exists and is writable by this process.
    pub fn check_writable(&self) -> io::Result<()> {
        for dir in Self::all_dirs() {
            let path = self.root.join(dir);
            nix::unistd::access(
                &path,
                nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
            )
            .map_err(|e| {
                io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("{}: {e}", path.display()),
                )
            })?;
        }
        Ok(())
    }

    /// Path of a daemon's socket in `private/`.
    pub fn private_socket(&self, service: &str) -> PathBuf {
        self.root.join(PRIVATE).join(format!("{service}.sock"))
    }

    /// A state file in `private/` that is not a socket: the master's
    /// status for empath-anvil, the anvil's metric totals.
    pub fn private_file(&self, name: &str) -> PathBuf {
        self.root.join(PRIVATE).join(name)
    }

    /// Replaces `private/<name>` with `bytes` atomically (a temp file
    /// beside it, fsynced, renamed over it): a reader sees the old content
    /// or the new, never part of one. Neither step follows a symlink.
    /// Mode 0644: whoever may enter `private/` (the daemons' user, root)
    /// may read it, whichever of them wrote it.
    pub fn replace_private_file(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let tmp = self.root.join(PRIVATE).join(format!(".{name}.tmp"));
        // Left by a writer that died between create and rename.
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        safeio::write_then_rename_with_mode(&tmp, &self.private_file(name), bytes, 0o644)
    }

    /// A file in `public/` (control socket, submission socket).
    pub fn public_path(&self, name: &str) -> PathBuf {
        self.root.join(PUBLIC).join(name)
    }

    /// Path of a world-connectable socket in `public/`.
    pub fn public_socket(&self, service: &str) -> PathBuf {
        self.public_path(&format!("{service}.sock"))
    }

    /// `public/maildrop/`, where `sendmail` leaves messages while the
    /// daemons are down.
    pub fn maildrop_dir(&self) -> PathBuf {
        self.root.join(PUBLIC).join(MAILDROP)
    }

    /// A daemon's own state directory in `private/` (smtp-out's MTA-STS
    /// policy cache `private/sts/`, its TLS report records
    /// `private/tlsrpt/`); the daemon creates it on first use.
    pub fn private_dir(&self, name: &str) -> PathBuf {
        self.root.join(PRIVATE).join(name)
    }

    /// A file directly under the queue root (PID file, listener list).
    pub fn root_file(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The marker whose presence means delivery is frozen (written and
    /// removed by qmgr, read by the lister).
    pub fn frozen_marker(&self) -> PathBuf {
        self.root.join(FROZEN)
    }

    fn dir(&self, dir: &str) -> PathBuf {
        self.root.join(dir)
    }

    fn bucket_dir(&self, dir: &str, bucket: Bucket) -> PathBuf {
        self.root.join(dir).join(bucket.to_string())
    }

    /// `ROOT/dir/bucket/id`, built in one allocation: every queue
    /// operation on a message starts here.
    fn hashed_path(&self, dir: &str, id: QueueId) -> PathBuf {
        use std::fmt::Write as _;
        let root = self.root.as_os_str();
        let mut path = std::ffi::OsString::with_capacity(root.len() + dir.len() + 40);
        path.push(root);
        let separator = if root.as_encoded_bytes().ends_with(b"/") {
            ""
        } else {
            "/"
        };
        let _ = write!(path, "{separator}{dir}/{}/{id}", id.bucket());
        PathBuf::from(path)
    }

    /// Where the envelope of `id` is in `state`. Daemons use the operations
    /// below, not paths; this is for tests and inspection tools.
    pub fn envelope_path(&self, state: QueueState, id: QueueId) -> PathBuf {
        self.hashed_path(state.dir_name(), id)
    }

    fn tmp_path(&self, id: QueueId) -> PathBuf {
        self.root.join(TMP).join(format!("{id}.env"))
    }

    pub fn content_path(&self, id: QueueId) -> PathBuf {
        self.hashed_path(DATA, id)
    }

    /// Makes a hashed subdirectory, and makes its entry in the parent
    /// durable: whatever is put in it is only as durable as the directory.
    /// Also when another process made it first, since that process may not
    /// have fsynced the parent yet.
    fn make_bucket(&self, dir: &str, bucket: Bucket) -> io::Result<()> {
        match std::fs::DirBuilder::new()
            .mode(0o700)
            .create(self.bucket_dir(dir, bucket))
        {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        safeio::fsync_dir(&self.dir(dir))
    }

    /// Runs `op`, which puts an entry into `bucket` of `dir`; if it fails
    /// because that subdirectory does not exist, makes it and runs `op`
    /// again. Also when the subdirectory exists by the time we look:
    /// another thread may have just made it and not yet fsynced its entry,
    /// and [`Queue::make_bucket`] does that before our entry counts. (When
    /// the NotFound was about the source, the second try fails the same.)
    fn put_in_bucket<T>(
        &self,
        dir: &str,
        bucket: Bucket,
        mut op: impl FnMut() -> io::Result<T>,
    ) -> io::Result<T> {
        match op() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.make_bucket(dir, bucket)?;
                op()
            }
            result => result,
        }
    }

    /// Starts the content of a new message, in memory: the file is created
    /// when the content outgrows [`CONTENT_BUFFER`], or when it is sealed.
    /// Nothing touches the disk until then, so a message can be started on
    /// an async thread, and a small one costs its writer a single trip to
    /// the disk (create, write, seal, link and fsync in one blocking call).
    pub fn new_content(&self, id: QueueId) -> ContentWriter {
        ContentWriter {
            queue: self.clone(),
            id,
            file: None,
            buffer: Vec::new(),
            written: 0,
        }
    }

    /// Opens a message's content for reading; the reader ends where the
    /// content ends (before the sealed envelope, if there is one).
    pub fn open_content(&self, id: QueueId) -> io::Result<io::Take<File>> {
        let (file, len) = self.open_content_with_len(id)?;
        Ok(file.take(len))
    }

    /// Opens a message's content and says how long it is. For async
    /// readers, which wrap the file themselves.
    pub fn open_content_with_len(&self, id: QueueId) -> io::Result<(File, u64)> {
        let file = File::open(self.content_path(id))?;
        let size = file.metadata()?.len();
        let len = sealed::content_len(&file, size)?.unwrap_or(size);
        Ok((file, len))
    }

    /// Queues a new message: seals `envelope` onto the end of its content
    /// file, hard-links that file into `incoming/` (no second file, no
    /// rename) and fsyncs it once. Linking before the fsync lets a
    /// journaling filesystem commit the content, the inode and the link
    /// together; a crash before the fsync leaves at worst a truncated file,
    /// which has no valid trailer and is quarantined, and no 250 was sent
    /// for it. Follow with [`Queue::sync_new_entries`] (shared by all the
    /// messages of a group commit) before telling anyone it is queued. On
    /// error nothing of the message is left.
    pub fn stage_new(&self, content: ContentWriter, envelope: &Envelope) -> io::Result<()> {
        self.stage_new_then(content, envelope, || {})
    }

    /// As [`Queue::stage_new`], calling `linked` once the message's
    /// directory entries exist, before its file is fsynced: a group commit
    /// started then covers them, and its directory fsyncs run while the
    /// file's does. (Safe in either order: until both are done nobody is
    /// told the message is queued, and a crash in between leaves at worst
    /// a truncated file, quarantined as above.)
    pub fn stage_new_then(
        &self,
        content: ContentWriter,
        envelope: &Envelope,
        linked: impl FnOnce(),
    ) -> io::Result<()> {
        let id = envelope.id;
        let staged = content.seal(envelope).and_then(|file| {
            let content = self.content_path(id);
            let incoming = self.envelope_path(QueueState::Incoming, id);
            self.put_in_bucket(QueueState::Incoming.dir_name(), id.bucket(), || {
                std::fs::hard_link(&content, &incoming)
            })?;
            self.touched.mark(id.bucket());
            linked();
            file.sync_all()
        });
        if staged.is_err() {
            self.unstage_new(id);
        }
        staged
    }

    /// Queues a new message straight into `hold/` (a milter quarantined
    /// it): as [`Queue::stage_new`], but linked into `hold/`, where qmgr
    /// leaves it until an operator releases it. Rare, so it fsyncs its own
    /// directory entries (`data/`, then `hold/`) rather than joining a
    /// group commit: when this returns, the message is durable.
    pub fn stage_new_held(&self, content: ContentWriter, envelope: &Envelope) -> io::Result<()> {
        let id = envelope.id;
        let held = self.envelope_path(QueueState::Hold, id);
        let staged = content.seal(envelope).and_then(|file| {
            let hold = QueueState::Hold.dir_name();
            self.put_in_bucket(hold, id.bucket(), || {
                std::fs::hard_link(self.content_path(id), &held)
            })?;
            file.sync_all()?;
            safeio::fsync_dir(&self.bucket_dir(DATA, id.bucket()))?;
            safeio::fsync_dir(&self.bucket_dir(hold, id.bucket()))
        });
        if staged.is_err() {
            let _ = std::fs::remove_file(&held);
            let _ = std::fs::remove_file(self.content_path(id));
        }
        staged
    }

    /// Makes the directory entries of new messages in `data/` and
    /// `incoming/` durable: fsyncs the hashed subdirectories that
    /// [`Queue::stage_new`] put entries in since the last call, through
    /// this `Queue` or a clone of it. One call covers every message staged
    /// before it started, which is what makes group commit work; calls run
    /// one at a time, so a call never returns while an earlier one is
    /// still fsyncing what it took. `data/` goes first: an `incoming/`
    /// entry never outlives its content's. If an fsync fails, the
    /// subdirectories stay due for the next call.
    pub fn sync_new_entries(&self) -> io::Result<()> {
        self.touched.sync(|buckets| {
            for dir in [DATA, QueueState::Incoming.dir_name()] {
                for &bucket in buckets {
                    safeio::fsync_dir(&self.bucket_dir(dir, bucket))?;
                }
            }
            Ok(())
        })
    }

    /// Withdraws a staged message whose directory entries could not be made
    /// durable, so that it is neither answered 250 nor delivered.
    pub fn unstage_new(&self, id: QueueId) {
        let _ = std::fs::remove_file(self.envelope_path(QueueState::Incoming, id));
        let _ = std::fs::remove_file(self.content_path(id));
    }

    /// Drops the content of a submission that was never committed.
    pub fn abandon_content(&self, id: QueueId) {
        let _ = std::fs::remove_file(self.content_path(id));
    }

    /// Reads an envelope: an envelope file, or (for a message not rewritten
    /// since cleanup queued it) the envelope sealed into its content file.
    pub fn read(&self, state: QueueState, id: QueueId) -> Result<Envelope, ReadError> {
        let mut file = File::open(self.envelope_path(state, id))?;
        let envelope = sealed::read_envelope(&mut file).map_err(|e| match e {
            sealed::ReadEnvelopeError::Io(e) => ReadError::Io(e),
            sealed::ReadEnvelopeError::Decode(e) => ReadError::Corrupt(e),
        })?;
        if envelope.id != id {
            return Err(
                DecodeError::Payload(format!("file {id} holds envelope {}", envelope.id)).into(),
            );
        }
        Ok(envelope)
    }

    /// Replaces the envelope in `state` with `envelope`, atomically and durably.
    pub fn rewrite(&self, state: QueueState, envelope: &Envelope) -> io::Result<()> {
        self.rewrite_unsynced(state, envelope)?;
        safeio::fsync_dir(&self.bucket_dir(state.dir_name(), envelope.id.bucket()))
    }

    /// Replaces the envelope in `state` with `envelope`, atomically, without
    /// the directory's fsync: for qmgr's checkpoints. The new envelope is
    /// on disk (written and fsynced) before it replaces the old one, so no
    /// crash leaves a broken envelope, and the replacement survives any
    /// process's crash at once. It reaches the disk with the filesystem's
    /// next commit, as a removal after delivery does: a power failure
    /// before then brings back the old envelope, and with it deliveries to
    /// repeat, never a loss.
    pub fn rewrite_unsynced(&self, state: QueueState, envelope: &Envelope) -> io::Result<()> {
        let id = envelope.id;
        let target = self.envelope_path(state, id);
        let bytes = encode(envelope);
        self.put_in_bucket(state.dir_name(), id.bucket(), || {
            safeio::write_then_rename(&self.tmp_path(id), &target, &bytes)
        })
    }

    /// Moves an envelope from one state to another with one durable rename.
    /// Fsyncing the target directory commits the rename as a whole on
    /// journaling filesystems, so the source directory needs no fsync.
    pub fn move_to(&self, id: QueueId, from: QueueState, to: QueueState) -> io::Result<()> {
        self.move_unsynced(id, from, to)?;
        safeio::fsync_dir(&self.bucket_dir(to.dir_name(), id.bucket()))
    }

    /// Moves an envelope without fsyncing the directory. Only for moves
    /// where either location is safe after a crash: qmgr's activation
    /// (`incoming/` -> `active/`) and its start-up recovery (`active/` ->
    /// `incoming/`), since qmgr recovers both. Saves one fsync per message.
    pub fn move_unsynced(&self, id: QueueId, from: QueueState, to: QueueState) -> io::Result<()> {
        let (source, target) = (self.envelope_path(from, id), self.envelope_path(to, id));
        self.put_in_bucket(to.dir_name(), id.bucket(), || {
            std::fs::rename(&source, &target)
        })
    }

    /// Rewrites the envelope, then moves it: used when a delivery attempt
    /// ends with recipients left (active -> deferred).
    pub fn rewrite_and_move(
        &self,
        envelope: &Envelope,
        from: QueueState,
        to: QueueState,
    ) -> io::Result<()> {
        self.rewrite(from, envelope)?;
        self.move_to(envelope.id, from, to)
    }

    /// Removes a finished message: the envelope first, so a crash leaves at
    /// worst an orphan content file (swept later), never an envelope without
    /// content. No fsync: a crash may bring the message back, which means a
    /// duplicate delivery, never a loss.
    pub fn remove(&self, state: QueueState, id: QueueId) -> io::Result<()> {
        match std::fs::remove_file(self.envelope_path(state, id)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        match std::fs::remove_file(self.content_path(id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Moves an unreadable envelope to `corrupt/`. Its content stays in `data/`
    /// for inspection.
    pub fn quarantine(&self, state: QueueState, id: QueueId) -> io::Result<()> {
        self.move_to(id, state, QueueState::Corrupt)
    }

    /// Moves a stray file of `state` (a name from [`Listing::strays`]) to
    /// `corrupt/`: into its hashed place if its name is a queue ID, else
    /// directly into `corrupt/` under its own name.
    pub fn quarantine_name(&self, state: QueueState, name: &str) -> io::Result<()> {
        let from = self.dir(state.dir_name()).join(name);
        let base = name.rsplit('/').next().unwrap_or(name);
        let corrupt = QueueState::Corrupt.dir_name();
        match base.parse::<QueueId>() {
            Ok(id) => {
                let target = self.hashed_path(corrupt, id);
                self.put_in_bucket(corrupt, id.bucket(), || std::fs::rename(&from, &target))
            }
            Err(_) => std::fs::rename(from, self.dir(corrupt).join(base)),
        }
    }

    /// The IDs of the envelopes in `state`, oldest first. Names that are not
    /// queue IDs in their right subdirectory are returned separately, as
    /// paths relative to the state's directory, so that the caller can
    /// quarantine them; so are queue IDs directly in the state's directory
    /// (the layout before hashing), which [`Queue::migrate`] moves at start.
    pub fn list(&self, state: QueueState) -> io::Result<Listing> {
        let mut listing = Listing::default();
        self.walk(state.dir_name(), |bucket, name| {
            let text = name.to_string_lossy();
            match (bucket, text.parse::<QueueId>()) {
                (Some(bucket), Ok(id)) if id.bucket() == bucket => listing.ids.push(id),
                (Some(bucket), _) => listing.strays.push(format!("{bucket}/{text}")),
                (None, _) => listing.strays.push(text.into_owned()),
            }
        })?;
        listing.ids.sort_unstable();
        Ok(listing)
    }

    /// How many entries `state`'s directory holds, strays included, without
    /// opening or sorting anything; and the arrival time of the oldest
    /// queue ID among them, in milliseconds.
    pub fn count(&self, state: QueueState) -> io::Result<(u64, Option<u64>)> {
        self.count_dir(state.dir_name())
    }

    /// How many content files `data/` holds.
    pub fn count_content(&self) -> io::Result<u64> {
        self.count_dir(DATA).map(|(n, _)| n)
    }

    /// A directory that does not exist (yet) holds nothing.
    fn count_dir(&self, dir: &str) -> io::Result<(u64, Option<u64>)> {
        let mut count = 0;
        let mut oldest: Option<u64> = None;
        let walked = self.walk(dir, |_, name| {
            count += 1;
            // Cheap: the time is the ID's first ten characters.
            if let Some(ms) = name.to_str().and_then(|n| n.parse::<QueueId>().ok()) {
                let ms = ms.timestamp_ms();
                oldest = Some(oldest.map_or(ms, |o| o.min(ms)));
            }
        });
        match walked {
            Err(e) if e.kind() == io::ErrorKind::NotFound && !self.dir(dir).exists() => {
                Ok((0, None))
            }
            Err(e) => Err(e),
            Ok(()) => Ok((count, oldest)),
        }
    }

    /// Calls `each` with every entry of a hashed directory: with its bucket
    /// for those in a hashed subdirectory, with `None` for anything else
    /// directly in the directory. A subdirectory that disappears while it
    /// is read (nothing removes them, but an operator might) is skipped.
    fn walk(&self, dir: &str, mut each: impl FnMut(Option<Bucket>, &OsStr)) -> io::Result<()> {
        for entry in std::fs::read_dir(self.dir(dir))? {
            let entry = entry?;
            let name = entry.file_name();
            let bucket = name
                .to_str()
                .and_then(Bucket::parse)
                .filter(|_| entry.file_type().is_ok_and(|t| t.is_dir()));
            let Some(bucket) = bucket else {
                each(None, &name);
                continue;
            };
            let entries = match std::fs::read_dir(entry.path()) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for inner in entries {
                each(Some(bucket), &inner?.file_name());
            }
        }
        Ok(())
    }

    /// The state an envelope is in, if it is queued at all.
    pub fn locate(&self, id: QueueId) -> Option<QueueState> {
        QueueState::ALL
            .into_iter()
            .find(|state| self.envelope_path(*state, id).exists())
    }

    /// Removes content files that no envelope refers to and that are older
    /// than `min_age` (so a submission still being written is left alone).
    /// Works one subdirectory at a time: the names in `data/BK` are checked
    /// against the names in the same subdirectory of every state, and only
    /// the few left over are looked at one by one.
    pub fn sweep_orphan_content(&self, min_age: Duration) -> io::Result<usize> {
        let mut removed = 0;
        let now = SystemTime::now();
        for index in 0..Bucket::COUNT {
            let Some(bucket) = Bucket::from_index(index) else {
                continue;
            };
            let names = match names_in(&self.bucket_dir(DATA, bucket)) {
                Ok(names) if names.is_empty() => continue,
                Ok(names) => names,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let mut referenced = std::collections::HashSet::new();
            for state in QueueState::ALL {
                match names_in(&self.bucket_dir(state.dir_name(), bucket)) {
                    Ok(found) => referenced.extend(found),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            for name in names.iter().filter(|n| !referenced.contains(*n)) {
                let Ok(id) = name.to_string_lossy().parse::<QueueId>() else {
                    continue;
                };
                let path = self.content_path(id);
                let age = std::fs::metadata(&path)
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .and_then(|m| now.duration_since(m).ok());
                // Looked up again: it may have moved between states while
                // the subdirectories were read.
                if age.is_some_and(|age| age >= min_age) && self.locate(id).is_none() {
                    match std::fs::remove_file(&path) {
                        Ok(()) => removed += 1,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Ok(removed)
    }

    /// Removes leftovers in `tmp/` from writers that crashed.
    pub fn clear_tmp(&self) -> io::Result<()> {
        for entry in std::fs::read_dir(self.root.join(TMP))? {
            let _ = std::fs::remove_file(entry?.path());
        }
        Ok(())
    }
}

/// The names in a directory.
fn names_in(dir: &Path) -> io::Result<Vec<std::ffi::OsString>> {
    std::fs::read_dir(dir)?
        .map(|entry| entry.map(|e| e.file_name()))
        .collect()
}

/// Writes `first` then `second` to `file`, in one system call when the
/// file takes both whole.
fn write_both(file: &mut File, first: &[u8], second: &[u8]) -> io::Result<()> {
    let mut slices = [io::IoSlice::new(first), io::IoSlice::new(second)];
    let mut unsent = &mut slices[..];
    while !unsent.is_empty() {
        match file.write_vectored(unsent) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(wrote) => io::IoSlice::advance_slices(&mut unsent, wrote),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Result of [`Queue::list`].
#[derive(Debug, Default)]
pub struct Listing {
    pub ids: Vec<QueueId>,
    pub strays: Vec<String>,
}

/// Content held in memory before it is written: writes reach the file in
/// pieces of about this size.
pub const CONTENT_BUFFER: usize = 64 * 1024;

/// A new message's content file, written through a buffer and created on
/// its first write to disk (see [`Queue::new_content`]).
pub struct ContentWriter {
    queue: Queue,
    id: QueueId,
    file: Option<File>,
    buffer: Vec<u8>,
    written: u64,
}

impl ContentWriter {
    /// Adds content; it reaches the file once [`CONTENT_BUFFER`] octets
    /// are waiting, which may create the file (a blocking call).
    pub fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.written += bytes.len() as u64;
        if self.buffer.len() + bytes.len() < CONTENT_BUFFER {
            self.buffer.extend_from_slice(bytes);
            return Ok(());
        }
        // What waits and these bytes go in one write, these uncopied: a
        // large message arrives in pieces of about the buffer's size.
        let waiting = std::mem::take(&mut self.buffer);
        let written = write_both(self.open()?, &waiting, bytes);
        self.buffer = waiting;
        self.buffer.clear();
        written
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// The file, created if it is not yet.
    fn open(&mut self) -> io::Result<&mut File> {
        if self.file.is_none() {
            let path = self.queue.content_path(self.id);
            let created = self
                .queue
                .put_in_bucket(DATA, self.id.bucket(), || safeio::create_new(&path))?;
            self.file = Some(created);
        }
        self.file
            .as_mut()
            .ok_or_else(|| io::Error::other("content file not open"))
    }

    /// Ends the content: appends the message's first envelope and the
    /// trailer (see [`sealed`]), and hands back the file, not yet fsynced.
    /// `envelope.content_size` must be [`ContentWriter::written`].
    fn seal(mut self, envelope: &Envelope) -> io::Result<File> {
        let size = self.written;
        if envelope.content_size != size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "envelope says {} bytes of content, {size} were written",
                    envelope.content_size
                ),
            ));
        }
        let waiting = std::mem::take(&mut self.buffer);
        write_both(self.open()?, &waiting, &sealed::tail(envelope, size))?;
        self.file
            .take()
            .ok_or_else(|| io::Error::other("content file not open"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn envelope(id: QueueId) -> Envelope {
        Envelope {
            id,
            sender: "a@example.org".into(),
            recipients: vec![Recipient::new("b@example.com")],
            arrival: 1,
            attempts: 0,
            next_retry: None,
            last_error: None,
            client: ClientInfo::default(),
            dsn: DsnParams::default(),
            metadata: Default::default(),
            content_size: 5,
            smtputf8: false,
            delay_warned: false,
            options: Default::default(),
        }
    }

    pub(super) fn queue() -> (tempfile::TempDir, Queue) {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::new(dir.path().join("spool"));
        queue.create_dirs().unwrap();
        (dir, queue)
    }

    #[test]
    fn a_message_path_is_its_directory_bucket_and_id() {
        let id = QueueId::generate();
        for root in ["/var/spool/empath", "/var/spool/empath/"] {
            let queue = Queue::new(root);
            let expected = Path::new("/var/spool/empath")
                .join("incoming")
                .join(id.bucket().to_string())
                .join(id.to_string());
            assert_eq!(queue.envelope_path(QueueState::Incoming, id), expected);
        }
    }

    #[test]
    fn new_content_reaches_the_disk_only_when_large_or_sealed() {
        let (_dir, queue) = queue();
        // Small: nothing on disk until it is staged.
        let id = QueueId::generate();
        let mut small = queue.new_content(id);
        small.write_all(b"hello").unwrap();
        assert!(!queue.content_path(id).exists());
        queue.stage_new(small, &envelope(id)).unwrap();
        queue.sync_new_entries().unwrap();
        let mut stored = String::new();
        queue
            .open_content(id)
            .unwrap()
            .read_to_string(&mut stored)
            .unwrap();
        assert_eq!(stored, "hello");

        // Larger than the buffer: written as it comes, whole when read.
        let id = QueueId::generate();
        let mut large = queue.new_content(id);
        // Pieces that fill the buffer, then one larger than it, each of its
        // own letter: the file must hold them in order.
        let mut expected = Vec::new();
        for letter in [b'a', b'b', b'c'] {
            let piece = vec![letter; CONTENT_BUFFER / 3 + 1];
            large.write_all(&piece).unwrap();
            expected.extend_from_slice(&piece);
        }
        assert!(queue.content_path(id).exists(), "not buffered whole");
        large.write_all(b"d").unwrap();
        let piece = vec![b'e'; 2 * CONTENT_BUFFER + 7];
        large.write_all(&piece).unwrap();
        expected.push(b'd');
        expected.extend_from_slice(&piece);
        let mut big = envelope(id);
        big.content_size = large.written();
        queue.stage_new(large, &big).unwrap();
        let mut stored = Vec::new();
        queue
            .open_content(id)
            .unwrap()
            .read_to_end(&mut stored)
            .unwrap();
        assert_eq!(stored.len(), expected.len());
        assert!(stored == expected, "content out of order");

        // Abandoned before it reached the disk: nothing to clean up.
        let id = QueueId::generate();
        let mut dropped = queue.new_content(id);
        dropped.write_all(b"gone").unwrap();
        drop(dropped);
        queue.abandon_content(id);
        assert!(!queue.content_path(id).exists());
    }

    #[test]
    fn message_moves_through_the_states() {
        let (_dir, queue) = queue();
        let queued = sealed(&queue, b"hello");
        assert_eq!(queued.content_size, 5);
        let id = queued.id;
        assert_eq!(queue.locate(id), Some(QueueState::Incoming));

        queue
            .move_to(id, QueueState::Incoming, QueueState::Active)
            .unwrap();
        let mut updated = queue.read(QueueState::Active, id).unwrap();
        updated.attempts = 1;
        queue
            .rewrite_and_move(&updated, QueueState::Active, QueueState::Deferred)
            .unwrap();
        assert_eq!(queue.read(QueueState::Deferred, id).unwrap().attempts, 1);
        assert_eq!(queue.list(QueueState::Deferred).unwrap().ids, vec![id]);

        queue.remove(QueueState::Deferred, id).unwrap();
        assert_eq!(queue.locate(id), None);
        assert!(!queue.content_path(id).exists());
    }

    /// A message as cleanup writes it: content and first envelope sealed
    /// into one file, hard-linked into incoming/.
    fn sealed(queue: &Queue, body: &[u8]) -> Envelope {
        let id = QueueId::generate();
        let mut content = queue.new_content(id);
        content.write_all(body).unwrap();
        let mut sealed = envelope(id);
        sealed.content_size = content.written();
        queue.stage_new(content, &sealed).unwrap();
        queue.sync_new_entries().unwrap();
        sealed
    }

    fn content_of(queue: &Queue, id: QueueId) -> Vec<u8> {
        let mut bytes = Vec::new();
        queue
            .open_content(id)
            .unwrap()
            .read_to_end(&mut bytes)
            .unwrap();
        bytes
    }

    #[test]
    fn a_quarantined_message_is_queued_in_hold_and_released_to_incoming() {
        let (_dir, queue) = queue();
        let id = QueueId::generate();
        let mut content = queue.new_content(id);
        content.write_all(b"Subject: held\r\n\r\n").unwrap();
        let mut held = envelope(id);
        held.content_size = content.written();
        queue.stage_new_held(content, &held).unwrap();
        assert_eq!(queue.locate(id), Some(QueueState::Hold));
        assert_eq!(queue.read(QueueState::Hold, id).unwrap(), held);
        assert!(queue.list(QueueState::Incoming).unwrap().ids.is_empty());
        queue
            .move_to(id, QueueState::Hold, QueueState::Incoming)
            .unwrap();
        assert_eq!(queue.read(QueueState::Incoming, id).unwrap(), held);
        assert_eq!(content_of(&queue, id), b"Subject: held\r\n\r\n");
    }

    #[test]
    fn sealed_message_is_read_limited_and_rewritten() {
        let (_dir, queue) = queue();
        let body = b"Subject: x\r\n\r\nbody\r\n";
        let mut env = sealed(&queue, body);
        let id = env.id;
        assert_eq!(queue.read(QueueState::Incoming, id).unwrap(), env);
        assert_eq!(
            content_of(&queue, id),
            body,
            "readers must stop before the sealed envelope"
        );

        // qmgr's first rewrite replaces the link with an envelope file of
        // its own; the content is never rewritten.
        queue
            .move_unsynced(id, QueueState::Incoming, QueueState::Active)
            .unwrap();
        env.attempts = 1;
        queue
            .rewrite_and_move(&env, QueueState::Active, QueueState::Deferred)
            .unwrap();
        assert_eq!(queue.read(QueueState::Deferred, id).unwrap().attempts, 1);
        assert_eq!(content_of(&queue, id), body);

        queue.remove(QueueState::Deferred, id).unwrap();
        assert_eq!(queue.locate(id), None);
        assert!(!queue.content_path(id).exists());
    }

    #[test]
    fn a_failed_staging_leaves_nothing() {
        let (_dir, queue) = queue();
        let id = QueueId::generate();
        let mut content = queue.new_content(id);
        content.write_all(b"four").unwrap();
        // The envelope claims 5 bytes: sealing refuses it.
        assert!(queue.stage_new(content, &envelope(id)).is_err());
        assert_eq!(queue.locate(id), None);
        assert!(!queue.content_path(id).exists());
    }

    #[test]
    fn a_truncated_sealed_file_is_corrupt() {
        let (_dir, queue) = queue();
        let env = sealed(&queue, b"Subject: y\r\n\r\nbody\r\n");
        let path = queue.content_path(env.id);
        let len = std::fs::metadata(&path).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        assert!(matches!(
            queue.read(QueueState::Incoming, env.id),
            Err(ReadError::Corrupt(_))
        ));
    }

    /// A checkpoint's rewrite replaces a sealed message's envelope with a
    /// file of its own and leaves no temporary file; the content stays.
    #[test]
    fn an_unsynced_rewrite_replaces_the_envelope_and_leaves_no_temporary_file() {
        let (_dir, queue) = queue();
        let env = sealed(&queue, b"hello");
        queue
            .move_unsynced(env.id, QueueState::Incoming, QueueState::Active)
            .unwrap();
        let mut updated = queue.read(QueueState::Active, env.id).unwrap();
        updated.attempts = 3;
        queue
            .rewrite_unsynced(QueueState::Active, &updated)
            .unwrap();
        assert_eq!(queue.read(QueueState::Active, env.id).unwrap().attempts, 3);
        assert!(!queue.tmp_path(env.id).exists());
        let mut content = String::new();
        queue
            .open_content(env.id)
            .unwrap()
            .read_to_string(&mut content)
            .unwrap();
        assert_eq!(content, "hello");
    }

    #[test]
    fn corrupt_envelope_is_reported_and_quarantined() {
        let (_dir, queue) = queue();
        // An envelope file of its own, as qmgr rewrites it.
        let id = QueueId::generate();
        queue.rewrite(QueueState::Incoming, &envelope(id)).unwrap();
        let path = queue.envelope_path(QueueState::Incoming, id);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        assert!(matches!(
            queue.read(QueueState::Incoming, id),
            Err(ReadError::Corrupt(_))
        ));
        queue.quarantine(QueueState::Incoming, id).unwrap();
        assert_eq!(queue.locate(id), Some(QueueState::Corrupt));
    }

    #[test]
    fn listing_separates_strays() {
        let (_dir, queue) = queue();
        let id = sealed(&queue, b"hello").id;
        let bucket = id.bucket().to_string();
        let incoming = queue.root().join("incoming");
        std::fs::write(incoming.join("junk"), b"x").unwrap();
        std::fs::write(incoming.join(&bucket).join("junk"), b"x").unwrap();
        // An ID in another ID's subdirectory, and one of the flat layout.
        let elsewhere = QueueId::generate();
        let wrong = if elsewhere.bucket() == id.bucket() {
            "00"
        } else {
            &bucket
        };
        let wrong_bucket = incoming.join(wrong);
        std::fs::create_dir_all(&wrong_bucket).unwrap();
        std::fs::write(wrong_bucket.join(elsewhere.to_string()), b"x").unwrap();
        let flat = QueueId::generate();
        std::fs::write(incoming.join(flat.to_string()), b"x").unwrap();

        let listing = queue.list(QueueState::Incoming).unwrap();
        assert_eq!(listing.ids, vec![id]);
        let mut strays = listing.strays.clone();
        strays.sort();
        let mut expected = vec![
            "junk".to_owned(),
            format!("{bucket}/junk"),
            format!("{wrong}/{elsewhere}"),
            flat.to_string(),
        ];
        expected.sort();
        assert_eq!(strays, expected);
        assert_eq!(queue.count(QueueState::Incoming).unwrap().0, 5);

        for stray in &listing.strays {
            queue.quarantine_name(QueueState::Incoming, stray).unwrap();
        }
        assert_eq!(
            queue.list(QueueState::Incoming).unwrap().strays,
            Vec::<String>::new()
        );
        assert!(queue.root().join("corrupt/junk").exists());
        assert_eq!(queue.locate(flat), Some(QueueState::Corrupt));
        assert_eq!(queue.locate(elsewhere), Some(QueueState::Corrupt));
    }

    #[test]
    fn entries_are_hashed_by_the_last_two_characters() {
        let (_dir, queue) = queue();
        let env = sealed(&queue, b"hello");
        let name = env.id.to_string();
        let bucket = &name[24..];
        let root = queue.root();
        assert!(root.join("data").join(bucket).join(&name).is_file());
        assert!(root.join("incoming").join(bucket).join(&name).is_file());
        queue
            .move_to(env.id, QueueState::Incoming, QueueState::Hold)
            .unwrap();
        assert!(root.join("hold").join(bucket).join(&name).is_file());
        // Only the subdirectories in use exist.
        assert_eq!(std::fs::read_dir(root.join("data")).unwrap().count(), 1);
        assert_eq!(std::fs::read_dir(root.join("active")).unwrap().count(), 0);
    }

    /// Group commit fsyncs the subdirectories of everything staged since
    /// the last round; a clone shares that record.
    #[test]
    fn a_sync_covers_messages_staged_through_clones() {
        let (_dir, queue) = queue();
        let clone = queue.clone();
        let ids: Vec<QueueId> = (0..50)
            .map(|_| {
                let id = QueueId::generate();
                let mut content = clone.new_content(id);
                content.write_all(b"hello").unwrap();
                clone.stage_new(content, &envelope(id)).unwrap();
                id
            })
            .collect();
        let mut due = Vec::new();
        queue
            .touched
            .sync(|buckets| {
                due = buckets.to_vec();
                Ok(())
            })
            .unwrap();
        let mut expected: Vec<Bucket> = ids.iter().map(|id| id.bucket()).collect();
        expected.sort();
        expected.dedup();
        assert_eq!(due, expected);
    }

    #[test]
    fn orphan_content_is_swept_but_queued_content_kept() {
        let (_dir, queue) = queue();
        let queued = sealed(&queue, b"hello").id;
        let orphan = QueueId::generate();
        // Content past the buffer, never sealed: a file no envelope names.
        let mut content = queue.new_content(orphan);
        content.write_all(&vec![b'x'; CONTENT_BUFFER]).unwrap();
        drop(content);
        assert!(queue.content_path(orphan).exists());
        assert_eq!(queue.sweep_orphan_content(Duration::ZERO).unwrap(), 1);
        assert!(queue.content_path(queued).exists());
        assert!(!queue.content_path(orphan).exists());
    }
}
