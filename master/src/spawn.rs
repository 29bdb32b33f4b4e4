//! Starting one daemon process: its executable, its arguments, the
//! listening sockets it inherits as fds 3, 4, ... (`EMPATH_LISTEN_FDS`:
//! the SMTP listeners for smtpd, the health listener for empath-anvil),
//! the status pipe right after them (`EMPATH_STATUS_FD`), and the
//! unprivileged identity it runs as.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use empath_common::config::Config;
use empath_common::daemon::STATUS_FD_ENV;
use empath_common::logging::LogFormat;
use tokio::process::{Child, Command};

use crate::privileges::RunAs;

/// The first fd a daemon finds its inherited listeners at.
const FIRST_LISTEN_FD: RawFd = 3;
/// Inherited fds are first moved above this, so that placing them at 3,
/// 4, ... cannot overwrite one that is still to be moved.
const SCRATCH_FD_BASE: RawFd = 100;

/// The directory holding the daemon executables.
#[derive(Debug, Clone)]
pub struct DaemonDir(PathBuf);

impl DaemonDir {
    /// `daemon_directory` from the config; else the directory of `empath`
    /// itself (a build tree), or `../libexec/empath` next to it (an
    /// installed tree: `sbin/empath`, `libexec/empath/empath-*`).
    pub fn locate(config: &Config) -> Result<Self, String> {
        let configured = config.daemon_directory.is_some();
        let dir = match &config.daemon_directory {
            Some(dir) => dir.clone(),
            None => {
                let beside = std::env::current_exe()
                    .map_err(|e| format!("cannot find the empath executable: {e}"))?
                    .parent()
                    .map(PathBuf::from)
                    .ok_or("the empath executable has no parent directory")?;
                let installed = beside.join("../libexec/empath");
                if !beside.join(crate::supervisor::SMTPD).is_file()
                    && installed.join(crate::supervisor::SMTPD).is_file()
                {
                    installed
                } else {
                    beside
                }
            }
        };
        let found = Self(dir);
        let missing: Vec<&str> = crate::supervisor::DAEMONS
            .iter()
            .copied()
            .filter(|name| !found.executable(name).is_file())
            .collect();
        match missing.first() {
            None => Ok(found),
            Some(first) => Err(format!(
                "daemon executable {} not found{}; {}",
                found.executable(first).display(),
                if missing.len() > 1 {
                    format!(" (nor {})", missing[1..].join(", "))
                } else {
                    String::new()
                },
                found.how_to_get_the_daemons(configured)
            )),
        }
    }

    /// What an operator should do about missing daemons: in a cargo
    /// build tree (`cargo run --bin empath` builds the master alone),
    /// build them all; in an installed tree, fix `daemon_directory`.
    fn how_to_get_the_daemons(&self, configured: bool) -> String {
        let in_cargo_target = self
            .0
            .parent()
            .is_some_and(|target| target.join("CACHEDIR.TAG").is_file())
            || self.0.join(".cargo-lock").is_file();
        if configured {
            "check daemon_directory in the config".to_owned()
        } else if in_cargo_target {
            "build every daemon first: cargo build --workspace --bins \
             (from the source tree; add --release for target/release)"
                .to_owned()
        } else {
            "install them beside empath or in ../libexec/empath, or set daemon_directory \
             in the config"
                .to_owned()
        }
    }

    pub fn executable(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

/// A started daemon and the read end of its status pipe, which becomes
/// readable when the daemon has served its first request.
pub struct Started {
    pub child: Child,
    pub status: OwnedFd,
}

/// Starts one daemon. `listen_fds` are passed as fds 3.. in order.
pub fn start(
    dir: &DaemonDir,
    name: &str,
    config: &Config,
    log_format: LogFormat,
    listen_fds: &[RawFd],
    run_as: Option<RunAs>,
) -> std::io::Result<Started> {
    let (status_read, status_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let status_target = FIRST_LISTEN_FD
        + RawFd::try_from(listen_fds.len())
            .map_err(|_| std::io::Error::other("too many listeners"))?;
    let mut command = Command::new(dir.executable(name));
    command
        .arg("--config")
        .arg(&config.path)
        .arg("--log-format")
        .arg(log_format.as_arg())
        .env("EMPATH_LISTEN_FDS", listen_fds.len().to_string())
        .env(STATUS_FD_ENV, status_target.to_string())
        // A process group of its own: a Ctrl-C at a terminal (SIGINT to
        // the foreground group) reaches the master alone, which then stops
        // the daemons in pipeline order.
        .process_group(0)
        .kill_on_drop(false);
    // Listeners first, the status pipe last: fds 3.., then 3 + n.
    let mut fds = listen_fds.to_vec();
    fds.push(status_write.as_raw_fd());
    // Preallocated so that the closure, which runs between fork and exec,
    // does not allocate.
    let mut scratch = vec![-1; fds.len()];
    // SAFETY: the closure only calls async-signal-safe functions (fcntl,
    // dup2, close, prctl, setgroups, setresgid, setresuid) and does not
    // allocate.
    unsafe {
        command.pre_exec(move || {
            for (index, fd) in fds.iter().enumerate() {
                let moved = libc::fcntl(*fd, libc::F_DUPFD, SCRATCH_FD_BASE);
                if moved < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                scratch[index] = moved;
            }
            for (index, moved) in scratch.iter().enumerate() {
                let target = FIRST_LISTEN_FD
                    + RawFd::try_from(index).unwrap_or(RawFd::MAX - FIRST_LISTEN_FD);
                // dup2 clears FD_CLOEXEC on the target, so it survives exec.
                if libc::dup2(*moved, target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(*moved);
            }
            if let Some(run_as) = run_as {
                // Groups first: after setresuid we could no longer change them.
                if libc::setgroups(0, std::ptr::null()) < 0
                    || libc::setresgid(run_as.gid, run_as.gid, run_as.gid) < 0
                    || libc::setresuid(run_as.uid, run_as.uid, run_as.uid) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // If the master dies without cleaning up, its daemons follow it.
            // (After setresuid, which would clear it.)
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn()?;
    // Only the child may hold the write end, so that its death closes it.
    drop(status_write);
    Ok(Started {
        child,
        status: status_read,
    })
}

/// The raw fds of the bound listeners.
pub fn raw_fds(sockets: &[std::net::TcpListener]) -> Vec<RawFd> {
    sockets.iter().map(AsRawFd::as_raw_fd).collect()
}
