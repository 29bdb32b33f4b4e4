//! System-test harness: runs the real `empath` master (and through it
//! every daemon) against a real SMTP sink and a real SMTP client.
//!
//! The binaries come from the cargo target dir. `cargo test -p
//! empath-tests` does not build other packages' binaries, so build them
//! first: `cargo build --workspace --bins`.
//!
//! ```no_run
//! use empath_tests::{Empath, Sink, TestConfig};
//! let sink = Sink::start();
//! let empath = Empath::start(TestConfig::new().mx_override("sink.test", sink.addr()));
//! // ... send to empath.smtp_addr(), then:
//! empath.wait_queue_empty(std::time::Duration::from_secs(60));
//! ```

pub mod bounce;
pub mod client;
pub mod config;
pub mod ctl;
pub mod deliveries;
pub mod dns;
pub mod dovecot;
pub mod dsn;
pub mod flat_spool;
pub mod https;
pub mod local;
pub mod mail;
pub mod mail_auth;
pub mod master;
pub mod modules;
pub mod mx;
pub mod nobody;
pub mod nsd;
pub mod otlp;
pub mod procfs;
pub mod reliability;
pub mod rogue;
pub mod run;
pub mod seeds;
pub mod sink;
pub mod smtpd;
pub mod sockets;
pub mod syslog;
pub mod wire;

use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use empath_common::queue::{Queue, QueueState, lister};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

pub use client::{SendReport, SendResult, SmtpSend};
pub use config::{ConfigArg, TestConfig};
pub use deliveries::{Deliveries, Times};
pub use mail::TestMessage;
pub use procfs::ProcInfo;
pub use run::{RunOutput, run_bounded};
pub use sink::{Reply, Sink, SinkMessage, SinkPolicy};

/// The daemons' process names (`comm`), as the master spawns them.
pub const SMTPD: &str = "empath-smtpd";
pub const CLEANUP: &str = "empath-cleanup";
pub const QMGR: &str = "empath-qmgr";
pub const SMTP_OUT: &str = "empath-smtp-out";
pub const BOUNCE: &str = "empath-bounce";
/// The local delivery agent: root when the master is (it switches to
/// each recipient), like the master itself.
pub const LOCAL: &str = "empath-local";
pub const ANVIL: &str = "empath-anvil";
/// The read-only queue listing (mailq, empathctl queue list/view/stats).
pub const SHOWQ: &str = "empath-showq";
pub const DAEMONS: [&str; 8] = [SMTPD, CLEANUP, QMGR, SMTP_OUT, LOCAL, BOUNCE, ANVIL, SHOWQ];

/// How long the master may take to bind and publish its listeners.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a new instance's cleanup and qmgr get to bind their sockets.
const DAEMON_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the master may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(20);
/// Lines of log shown in failure messages.
const LOG_TAIL_LINES: usize = 150;

/// The path of a workspace binary in the cargo target dir.
/// `CARGO_BIN_EXE_<name>` in the environment overrides it (e.g. to run the
/// tests against an installed or instrumented build).
pub fn binary(name: &str) -> PathBuf {
    let built = std::env::var_os(format!("CARGO_BIN_EXE_{name}")).is_some()
        || target_dir().is_some_and(|dir| dir.join(name).is_file());
    assert!(
        built,
        "`{name}` is not built; run `cargo build --workspace --bins` first \
         (`cargo test -p empath-tests` only builds this package)"
    );
    assert_cmd::cargo::cargo_bin(name)
}

/// The directory that holds the binaries: the test executable lives in
/// `<target>/debug/deps/`, the binaries in `<target>/debug/`.
fn target_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    Some(if dir.ends_with("deps") {
        dir.parent()?.to_owned()
    } else {
        dir.to_owned()
    })
}

/// A command running the `empath` master binary. Colours are turned off so
/// captured logs stay readable.
pub fn empath_command() -> Command {
    let mut command = Command::new(binary("empath"));
    command.env("NO_COLOR", "1");
    command
}

/// A fresh temporary directory, mode 0755: the daemons drop privileges and
/// must still reach the spool inside it, and the unprivileged runs in the
/// error tests must read the config there.
pub fn test_dir() -> TempDir {
    let dir = tempfile::Builder::new()
        .prefix("empath-test-")
        .tempdir()
        .expect("create a temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod the temp dir");
    dir
}

/// Polls `check` every few milliseconds until it returns `Ok`, for at most
/// `timeout`. `Err` carries a description of the progress so far, which
/// is returned if time runs out.
pub fn poll<T>(
    timeout: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let progress = match check() {
            Ok(value) => return Ok(value),
            Err(progress) => progress,
        };
        if Instant::now() >= deadline {
            return Err(progress);
        }
        std::thread::sleep(POLL);
    }
}

/// Files in each queue directory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueCounts {
    pub incoming: usize,
    pub active: usize,
    pub deferred: usize,
    pub hold: usize,
    pub corrupt: usize,
    pub data: usize,
    pub tmp: usize,
}

impl QueueCounts {
    /// No message anywhere in the queue (temp files aside).
    pub fn is_empty(&self) -> bool {
        self.incoming + self.active + self.deferred + self.hold + self.corrupt + self.data == 0
    }

    /// Counted through the queue's own lister, which knows its hashed
    /// subdirectories (strays included).
    fn of(spool: &Path) -> Self {
        let queue = Queue::new(spool);
        let counts = lister::count(&queue).unwrap_or_default();
        let n = |state: QueueState| usize::try_from(counts.of(state)).unwrap_or(usize::MAX);
        Self {
            incoming: n(QueueState::Incoming),
            active: n(QueueState::Active),
            deferred: n(QueueState::Deferred),
            hold: n(QueueState::Hold),
            corrupt: n(QueueState::Corrupt),
            data: queue
                .count_content()
                .map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX)),
            tmp: std::fs::read_dir(spool.join("tmp"))
                .map(|entries| entries.filter(|e| e.is_ok()).count())
                .unwrap_or(0),
        }
    }
}

/// A running `empath` master with its own temp dir, spool and ports.
/// Dropping it stops the master and every daemon.
pub struct Empath {
    /// `None` once kept for a post-mortem (see `Drop`).
    dir: Option<TempDir>,
    dir_path: PathBuf,
    config_path: PathBuf,
    spool: PathBuf,
    child: Child,
    /// The master's arguments, the config's among them.
    master_args: Vec<String>,
    /// The master's extra environment variables.
    master_env: Vec<(String, String)>,
    /// Set once the master has been reaped.
    exit: Option<ExitStatus>,
    smtp_addrs: Vec<SocketAddr>,
}

impl Empath {
    /// Writes `config` into a new temp dir, starts `empath --config` there
    /// and waits until it has published its listening addresses.
    pub fn start(config: TestConfig) -> Self {
        Self::start_in(test_dir(), config)
    }

    /// Starts the master in `dir` (which may hold a spool already, e.g.
    /// a restored one), which the instance then owns.
    pub fn start_in(dir: TempDir, config: TestConfig) -> Self {
        let dir_path = dir.path().to_owned();
        let config_path = config.write_to(&dir_path);
        let spool = dir_path.join("spool");
        let mut master_args = config.master_args().to_vec();
        let config_words: Vec<String> = match config.config_form() {
            ConfigArg::Flag => vec!["--config".into(), config_path.display().to_string()],
            ConfigArg::Positional => vec![config_path.display().to_string()],
            ConfigArg::WorkingDirectory => Vec::new(),
        };
        master_args.splice(0..0, config_words);
        let env = config.environment().to_vec();
        let child = spawn_master(&dir_path, &master_args, &env);
        let mut empath = Self {
            dir: Some(dir),
            dir_path,
            config_path,
            spool,
            child,
            master_args,
            master_env: env,
            exit: None,
            smtp_addrs: Vec::new(),
        };
        empath.smtp_addrs = empath.wait_for_listeners(config.listener_count());
        empath.wait_for_daemon_sockets();
        empath
    }

    /// The master publishes its listeners before the daemons are ready,
    /// and smtpd answers 451 until cleanup listens: wait (a little) for
    /// cleanup's and qmgr's sockets, so that a test's first message does
    /// not race their start. Not an assertion: tests of daemons that
    /// cannot start go on at once.
    fn wait_for_daemon_sockets(&self) {
        let private = self.spool.join("private");
        let _ = poll(DAEMON_READY_TIMEOUT, || {
            let missing: Vec<&str> = ["cleanup.sock", "qmgr.sock"]
                .into_iter()
                .filter(|name| !private.join(name).exists())
                .collect();
            if missing.is_empty() || !self.master_running() {
                Ok(())
            } else {
                Err(format!("{missing:?} not there yet"))
            }
        });
    }

    fn wait_for_listeners(&mut self, expected: usize) -> Vec<SocketAddr> {
        let path = self.spool.join("listeners");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for empath") {
                self.exit = Some(status);
                panic!(
                    "empath exited ({status}) before publishing {}\n{}",
                    path.display(),
                    self.log()
                );
            }
            // The master renames the file into place, so it is complete.
            if let Ok(text) = std::fs::read_to_string(&path) {
                let addrs = parse_listeners(&text)
                    .unwrap_or_else(|e| panic!("bad {}: {e}\n{text}", path.display()));
                assert_eq!(
                    addrs.len(),
                    expected,
                    "{} lists {} addresses, the config has {expected} listeners",
                    path.display(),
                    addrs.len()
                );
                return addrs;
            }
            assert!(
                Instant::now() < deadline,
                "empath did not publish {} within {START_TIMEOUT:?}\n{}",
                path.display(),
                self.log_tail()
            );
            std::thread::sleep(POLL);
        }
    }

    /// The first SMTP listener.
    pub fn smtp_addr(&self) -> SocketAddr {
        self.smtp_addrs[0]
    }

    /// Every SMTP listener, in config order.
    pub fn smtp_addrs(&self) -> &[SocketAddr] {
        &self.smtp_addrs
    }

    pub fn spool(&self) -> &Path {
        &self.spool
    }

    /// The test's temp dir (config, logs, spool).
    pub fn dir(&self) -> &Path {
        &self.dir_path
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn master_pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid fits in i32")
    }

    /// True until the master process has exited.
    pub fn master_running(&self) -> bool {
        self.exit.is_none()
            && procfs::process(self.master_pid()).is_some_and(|info| !info.is_zombie())
    }

    /// Live daemons called `name` (e.g. [`QMGR`]), lowest pid first.
    pub fn child_pids(&self, name: &str) -> Vec<i32> {
        procfs::live_children_named(self.master_pid(), name)
    }

    /// A live daemon called `name`, if there is one.
    pub fn child_pid(&self, name: &str) -> Option<i32> {
        self.child_pids(name).first().copied()
    }

    /// Waits until a daemon called `name` runs and returns its pid.
    pub fn wait_child(&self, name: &str, timeout: Duration) -> i32 {
        self.wait_until(&format!("{name} to run"), timeout, || {
            self.child_pid(name)
                .ok_or_else(|| format!("no {name} among {:?}", self.children()))
        })
    }

    /// All children of the master, for failure messages.
    fn children(&self) -> Vec<String> {
        procfs::children_of(self.master_pid())
            .into_iter()
            .map(|info| format!("{}:{}:{}", info.comm, info.pid, info.state))
            .collect()
    }

    /// SIGKILLs every daemon called `name` (waiting for one to exist
    /// first) and returns the pids it killed.
    pub fn kill9_child(&self, name: &str) -> Vec<i32> {
        self.wait_child(name, START_TIMEOUT);
        let pids = self.child_pids(name);
        for &pid in &pids {
            kill(Pid::from_raw(pid), Signal::SIGKILL)
                .unwrap_or_else(|e| panic!("kill -9 {name} ({pid}): {e}"));
        }
        pids
    }

    /// Waits until the master has started a daemon called `name` that is
    /// not one of `killed`, and returns its pid.
    pub fn wait_restarted(&self, name: &str, killed: &[i32], timeout: Duration) -> i32 {
        self.wait_until(&format!("{name} to be restarted"), timeout, || {
            self.child_pids(name)
                .into_iter()
                .find(|pid| !killed.contains(pid))
                .ok_or_else(|| format!("killed {killed:?}; children now {:?}", self.children()))
        })
    }

    pub fn queue_counts(&self) -> QueueCounts {
        QueueCounts::of(&self.spool)
    }

    /// Waits until no message is left in the queue. A file in `corrupt/`
    /// fails at once: it will never leave.
    pub fn wait_queue_empty(&self, timeout: Duration) {
        self.wait_until("the queue to be empty", timeout, || {
            let counts = self.queue_counts();
            assert_eq!(
                counts.corrupt,
                0,
                "queue files were moved to corrupt/: {counts:?}\n{}",
                self.log_tail()
            );
            if counts.is_empty() {
                Ok(())
            } else {
                Err(format!("queue: {counts:?}"))
            }
        });
    }

    /// Polls `check` until it returns `Ok`, and panics with its last
    /// progress report, the queue and the log if `timeout` passes or the
    /// master exits first.
    pub fn wait_until<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut() -> Result<T, String>,
    ) -> T {
        let outcome = poll(timeout, || match check() {
            Ok(value) => Ok(Some(value)),
            Err(_) if !self.master_running() => Ok(None),
            Err(progress) => Err(progress),
        });
        match outcome {
            Ok(Some(value)) => value,
            Ok(None) => panic!(
                "empath exited while waiting for {what}\nqueue: {:?}\n{}",
                self.queue_counts(),
                self.log_tail()
            ),
            Err(progress) => panic!(
                "timed out after {timeout:?} waiting for {what}: {progress}\nqueue: {:?}\n{}",
                self.queue_counts(),
                self.log_tail()
            ),
        }
    }

    /// Everything the master and its daemons printed so far.
    pub fn log(&self) -> String {
        let read = |name: &str| {
            std::fs::read_to_string(self.dir_path.join(name)).unwrap_or_else(|e| format!("({e})\n"))
        };
        format!(
            "--- empath stdout ---\n{}--- empath stderr ---\n{}--- end of empath output ---",
            read(STDOUT_FILE),
            read(STDERR_FILE)
        )
    }

    /// The end of [`Empath::log`], for failure messages.
    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let skipped = lines.len().saturating_sub(LOG_TAIL_LINES);
        let mut tail = lines[skipped..].join("\n");
        if skipped > 0 {
            tail = format!(
                "({skipped} earlier lines in {})\n{tail}",
                self.dir_path.display()
            );
        }
        tail
    }

    /// Stops the master with SIGTERM, as an init system would, and returns
    /// its exit status; SIGKILL after 10 s. Daemons still running
    /// afterwards are killed and reported by name.
    pub fn stop(&mut self) -> (ExitStatus, Vec<String>) {
        if let Some(status) = self.exit {
            // Already reaped: its pid may belong to someone else by now.
            return (status, Vec::new());
        }
        let mut children = procfs::children_of(self.master_pid());
        let _ = kill(Pid::from_raw(self.master_pid()), Signal::SIGTERM);
        let status = self.wait_master_exit(&mut children);
        self.exit = Some(status);
        // The master is gone, so survivors were re-parented and can only be
        // found through the snapshot (pid + start time, so a reused pid is
        // never hit).
        let survivors: Vec<String> = children
            .iter()
            .filter(|child| procfs::still_running(child))
            .map(|child| {
                let _ = kill(Pid::from_raw(child.pid), Signal::SIGKILL);
                format!("{} ({})", child.comm, child.pid)
            })
            .collect();
        (status, survivors)
    }

    /// Waits for the master to exit after SIGTERM (SIGKILL after
    /// [`STOP_TIMEOUT`]), recording every child seen meanwhile.
    fn wait_master_exit(&mut self, children: &mut Vec<ProcInfo>) -> ExitStatus {
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            for child in procfs::children_of(self.master_pid()) {
                if !children.iter().any(|known| known.is_same_process(&child)) {
                    children.push(child);
                }
            }
            if Instant::now() >= deadline {
                eprintln!("empath did not stop within {STOP_TIMEOUT:?} of SIGTERM; killing it");
                let _ = self.child.kill();
                return self.child.wait().expect("reap empath");
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for Empath {
    fn drop(&mut self) {
        let (_, survivors) = self.stop();
        if !survivors.is_empty() {
            eprintln!("killed daemons that outlived the master: {survivors:?}");
        }
        if std::thread::panicking() {
            // Keep the spool and logs of a failed test for a post-mortem.
            if let Some(dir) = self.dir.take() {
                let kept = dir.keep();
                eprintln!("empath test dir kept at {}", kept.display());
            }
        }
    }
}

const STDOUT_FILE: &str = "empath.stdout";
const STDERR_FILE: &str = "empath.stderr";

fn spawn_master(dir: &Path, args: &[String], env: &[(String, String)]) -> Child {
    let output = |name: &str| {
        let path = dir.join(name);
        File::create(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()))
    };
    let mut command = empath_command();
    command
        .args(args)
        .envs(env.iter().map(|(name, value)| (name, value)))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(output(STDOUT_FILE))
        .stderr(output(STDERR_FILE));
    // SAFETY: only prctl(2), which is async-signal-safe, runs between
    // fork and exec. If the test process dies without running Drop (e.g.
    // Ctrl-C), the master gets SIGTERM instead of leaking.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)
        });
    }
    command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"))
}

/// Parses the master's `listeners` file: one `IP:PORT` per line.
fn parse_listeners(text: &str) -> Result<Vec<SocketAddr>, String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(|line| {
            line.parse()
                .map_err(|e| format!("{line:?} is not IP:PORT: {e}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_file_is_parsed_in_order() {
        let addrs = parse_listeners("127.0.0.1:2525\n[::1]:2526\n").expect("valid");
        assert_eq!(addrs[0].to_string(), "127.0.0.1:2525");
        assert_eq!(addrs[1].to_string(), "[::1]:2526");
        assert!(parse_listeners("127.0.0.1\n").is_err());
    }

    #[test]
    fn poll_reports_the_last_progress_on_timeout() {
        let mut n = 0;
        let result: Result<(), String> = poll(Duration::from_millis(50), || {
            n += 1;
            Err(format!("try {n}"))
        });
        assert_eq!(result, Err(format!("try {n}")));
        assert_eq!(poll(Duration::from_secs(1), || Ok::<_, String>(7)), Ok(7));
    }

    #[test]
    fn queue_counts_see_files_in_each_dir() {
        let dir = test_dir();
        // Files of the flat layout and in hashed subdirectories alike.
        for (name, files) in [("incoming", 2), ("deferred", 1), ("data", 3)] {
            std::fs::create_dir_all(dir.path().join(name).join("AB")).unwrap();
            std::fs::write(dir.path().join(name).join("flat"), b"x").unwrap();
            for i in 1..files {
                std::fs::write(dir.path().join(name).join("AB").join(i.to_string()), b"x").unwrap();
            }
        }
        let counts = QueueCounts::of(dir.path());
        assert_eq!(
            counts,
            QueueCounts {
                incoming: 2,
                deferred: 1,
                data: 3,
                ..QueueCounts::default()
            }
        );
        assert!(!counts.is_empty());
        assert!(QueueCounts::default().is_empty());
    }
}
