//! The queue layout of the versions before hashed subdirectories (`data/ID`,
//! `<state>/ID`), written the way they wrote it, for the migration tests;
//! and a start of the master that is cut short by SIGKILL while it
//! migrates such a spool.

use std::path::Path;
use std::time::{Duration, Instant};

use empath_common::queue::{self, Envelope, QueueId, QueueState};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::{Empath, TestConfig, spawn_master, test_dir};

/// Where a message of the flat layout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlatState {
    /// As cleanup left it: `data/ID` sealed, hard-linked to `incoming/ID`.
    Incoming,
    /// As qmgr left it after a failed attempt: `data/ID` sealed, and an
    /// envelope file of its own in `deferred/ID`.
    Deferred,
}

/// A message to write in the flat layout.
#[derive(Debug, Clone)]
pub struct FlatMessage {
    pub envelope: Envelope,
    pub content: Vec<u8>,
    pub state: FlatState,
}

/// A queue ID as the earlier versions made them: the time, then 80 random
/// bits (so a spool of them spreads over every subdirectory). Today's IDs
/// end in a counter; the characters before it are random, so borrow two.
pub fn old_style_id() -> QueueId {
    let now = QueueId::generate().to_string();
    let other = QueueId::generate().to_string();
    format!("{}{}", &now[..24], &other[10..12])
        .parse()
        .expect("a valid queue ID")
}

/// Writes `messages` under `spool` in the flat layout, creating the
/// directories it needs. The sealed file is `content | envelope record |
/// content length (u64 LE) | "EMPT"`, as ARCHITECTURE.md describes it.
pub fn write_flat_spool(spool: &Path, messages: &[FlatMessage]) {
    for dir in [
        "data", "incoming", "active", "deferred", "hold", "corrupt", "tmp",
    ] {
        std::fs::create_dir_all(spool.join(dir)).expect("create a queue directory");
    }
    for message in messages {
        let id = message.envelope.id.to_string();
        let mut sealed = message.content.clone();
        sealed.extend_from_slice(&queue::encode(&message.envelope));
        sealed.extend_from_slice(&(message.content.len() as u64).to_le_bytes());
        sealed.extend_from_slice(b"EMPT");
        let data = spool.join("data").join(&id);
        std::fs::write(&data, &sealed).expect("write a content file");
        match message.state {
            FlatState::Incoming => {
                std::fs::hard_link(&data, spool.join("incoming").join(&id))
                    .expect("link into incoming/");
            }
            FlatState::Deferred => {
                std::fs::write(
                    spool.join("deferred").join(&id),
                    queue::encode(&message.envelope),
                )
                .expect("write a deferred envelope");
            }
        }
    }
}

/// Queue files still in the flat layout: names directly in `data/` or a
/// state's directory that are queue IDs.
pub fn flat_files(spool: &Path) -> usize {
    std::iter::once("data")
        .chain(QueueState::ALL.iter().map(|s| s.dir_name()))
        .map(|dir| {
            std::fs::read_dir(spool.join(dir))
                .map(|entries| {
                    entries
                        .filter_map(Result::ok)
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                        .filter(|e| e.file_name().to_string_lossy().parse::<QueueId>().is_ok())
                        .count()
                })
                .unwrap_or(0)
        })
        .sum()
}

/// Files already moved into hashed subdirectories of `data/`.
fn hashed_content(spool: &Path) -> usize {
    std::fs::read_dir(spool.join("data"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| std::fs::read_dir(e.path()).map_or(0, Iterator::count))
                .sum()
        })
        .unwrap_or(0)
}

/// What [`kill_master_mid_migration`] saw.
#[derive(Debug, Clone, Copy)]
pub struct Interrupted {
    /// Content files in the hashed layout at the kill.
    pub hashed: usize,
    /// Queue files still flat at the kill.
    pub flat: usize,
}

impl Empath {
    /// Writes `messages` as a flat spool, starts the master on it and
    /// SIGKILLs it in the middle of the migration (see
    /// [`kill_master_mid_migration`]), then starts it again. Returns the
    /// running instance and what the first start had done when it died
    /// (`None`: the migration ended before it could be caught).
    pub fn start_after_killed_migration(
        config: TestConfig,
        messages: &[FlatMessage],
    ) -> (Self, Option<Interrupted>) {
        let dir = test_dir();
        write_flat_spool(&dir.path().join("spool"), messages);
        let interrupted = kill_master_mid_migration(&dir, &config);
        (Self::start_in(dir, config), interrupted)
    }
}

/// Starts the master with `config` in `dir` (whose `spool/` holds a flat
/// spool) and SIGKILLs it once it has moved half of the files, as a crash
/// in the middle of the migration would. `None` if the
/// migration ended before it could be caught.
pub fn kill_master_mid_migration(dir: &TempDir, config: &TestConfig) -> Option<Interrupted> {
    let config_path = config.write_to(dir.path());
    let spool = dir.path().join("spool");
    let mut args = vec!["--config".to_owned(), config_path.display().to_string()];
    args.extend_from_slice(config.master_args());
    let mut master = spawn_master(dir.path(), &args, config.environment());
    let deadline = Instant::now() + Duration::from_secs(60);
    // Past the half: the content files are all moved (they go first) and
    // the envelopes are on their way.
    let initial = flat_files(&spool);
    loop {
        let flat = flat_files(&spool);
        if flat < initial / 2 || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let _ = kill(Pid::from_raw(master.id() as i32), Signal::SIGKILL);
    let _ = master.wait();
    // Its daemons, if it got that far, follow it (they get SIGTERM).
    std::thread::sleep(Duration::from_millis(200));
    // What it had done when it died.
    let (hashed, flat) = (hashed_content(&spool), flat_files(&spool));
    (hashed > 0 && flat > 0).then_some(Interrupted { hashed, flat })
}
