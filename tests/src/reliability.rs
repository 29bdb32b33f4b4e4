//! Harness additions for the reliability tests: killing and restarting
//! the master on the same spool, starting on a prepared directory (e.g. a
//! spool on a small tmpfs), a tmpfs mount that cleans up after itself, and
//! memory figures from /proc.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::procfs::{self, ProcInfo};
use crate::run::run_bounded;
use crate::{Empath, STDERR_FILE, STDOUT_FILE, TestConfig, spawn_master, test_dir};

impl Empath {
    /// Like [`Empath::start`], but calls `prepare` with the test dir
    /// before the master starts (the spool will be `dir/spool`), e.g. to
    /// mount a small filesystem there.
    pub fn start_prepared(config: TestConfig, prepare: impl FnOnce(&Path)) -> Self {
        let dir = test_dir();
        prepare(dir.path());
        Self::start_in(dir, config)
    }

    /// SIGKILLs the master, as a crash or the OOM killer would, and waits
    /// (up to `timeout`) for its daemons to exit on their own (they get
    /// SIGTERM when their parent dies). Returns the daemons that were
    /// still running at the deadline; they are SIGKILLed so that a restart
    /// is possible, and the test decides what to make of them.
    pub fn kill9_master(&mut self, timeout: Duration) -> Vec<String> {
        let children = procfs::children_of(self.master_pid());
        let _ = kill(Pid::from_raw(self.master_pid()), Signal::SIGKILL);
        let status = self.child.wait().expect("reap the killed master");
        self.exit = Some(status);
        let deadline = Instant::now() + timeout;
        let running = |children: &[ProcInfo]| -> Vec<ProcInfo> {
            children
                .iter()
                .filter(|c| procfs::still_running(c))
                .cloned()
                .collect()
        };
        while !running(&children).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        running(&children)
            .into_iter()
            .map(|child| {
                let _ = kill(Pid::from_raw(child.pid), Signal::SIGKILL);
                format!("{} ({})", child.comm, child.pid)
            })
            .collect()
    }

    /// Starts a new master with the same config on the same spool, after
    /// [`Empath::kill9_master`] (or a stop). The earlier output is kept in
    /// `empath.stdout.N`/`empath.stderr.N`, N = 1, 2, ...; the listeners
    /// get new ephemeral ports, see [`Empath::smtp_addr`].
    pub fn restart_master(&mut self) -> Vec<SocketAddr> {
        assert!(
            self.exit.is_some(),
            "restart_master needs a stopped or killed master"
        );
        let generation = (1..)
            .find(|n| !self.dir_path.join(format!("{STDOUT_FILE}.{n}")).exists())
            .unwrap_or(1);
        for name in [STDOUT_FILE, STDERR_FILE] {
            let from = self.dir_path.join(name);
            let _ = std::fs::rename(&from, self.dir_path.join(format!("{name}.{generation}")));
        }
        // A stale file would hand out the dead master's ports.
        let _ = std::fs::remove_file(self.spool.join("listeners"));
        let expected = self.smtp_addrs.len();
        self.child = spawn_master(&self.dir_path, &self.config_path, &self.master_args, &[]);
        self.exit = None;
        self.smtp_addrs = self.wait_for_listeners(expected);
        self.smtp_addrs.clone()
    }

    /// Everything every master generation printed, oldest first.
    pub fn all_logs(&self) -> String {
        let mut out = String::new();
        for n in 1.. {
            let path = self.dir_path.join(format!("{STDERR_FILE}.{n}"));
            let Ok(text) = std::fs::read_to_string(&path) else {
                break;
            };
            out.push_str(&format!("--- master generation {n} stderr ---\n{text}"));
            if let Ok(text) =
                std::fs::read_to_string(self.dir_path.join(format!("{STDOUT_FILE}.{n}")))
            {
                out.push_str(&format!("--- master generation {n} stdout ---\n{text}"));
            }
        }
        out.push_str(&self.log());
        out
    }
}

/// Resident memory of a process in KiB (`VmRSS` in /proc/PID/status).
pub fn rss_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Open file descriptors of a process.
pub fn fd_count(pid: i32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// A tmpfs mounted for one test; unmounted (lazily, so that a daemon still
/// holding a file cannot make it fail) when dropped, even after a panic.
pub struct TmpfsMount {
    path: PathBuf,
}

impl TmpfsMount {
    /// Mounts a tmpfs of `size_kib` at `path` (created if needed). `Err`
    /// says why not, e.g. not root or no CAP_SYS_ADMIN in a container.
    pub fn mount(path: &Path, size_kib: u64) -> Result<Self, String> {
        std::fs::create_dir_all(path).map_err(|e| format!("create {}: {e}", path.display()))?;
        let output = run_bounded(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o"])
                .arg(format!("size={size_kib}k,mode=0755"))
                .arg("tmpfs")
                .arg(path),
            Duration::from_secs(30),
        );
        if output.status.success() {
            Ok(Self {
                path: path.to_owned(),
            })
        } else {
            Err(format!(
                "mount -t tmpfs failed ({}): {}",
                output.status,
                output.stderr.trim()
            ))
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let output = run_bounded(
            Command::new("umount").arg("-l").arg(&self.path),
            Duration::from_secs(30),
        );
        if !output.status.success() {
            eprintln!(
                "umount -l {} failed: {}",
                self.path.display(),
                output.stderr.trim()
            );
        }
    }
}

/// Writes zeros to `path` until the filesystem is full (ENOSPC), syncing
/// so tmpfs and ext4 alike report the space as used. Returns the bytes
/// written.
pub fn fill_filesystem(path: &Path) -> u64 {
    use std::io::Write as _;
    let mut file = std::fs::File::create(path)
        .unwrap_or_else(|e| panic!("create filler {}: {e}", path.display()));
    let block = vec![0u8; 4096];
    let mut written = 0u64;
    loop {
        match file.write(&block) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
            Err(e) => panic!("fill {}: {e}", path.display()),
        }
    }
    let _ = file.sync_all();
    written
}
