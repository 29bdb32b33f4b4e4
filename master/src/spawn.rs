//! Starting one daemon process: its executable, its arguments, and the
//! listening sockets it inherits as fds 3, 4, ... (`EMPATH_LISTEN_FDS`).

use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;

use empath_common::config::Config;
use empath_common::logging::LogFormat;
use tokio::process::{Child, Command};

/// The first fd a daemon finds its inherited listeners at.
const FIRST_LISTEN_FD: RawFd = 3;
/// Listeners are first moved above this, so that placing them at 3, 4, ...
/// cannot overwrite one that is still to be moved.
const SCRATCH_FD_BASE: RawFd = 100;

/// The directory holding the daemon executables.
#[derive(Debug, Clone)]
pub struct DaemonDir(PathBuf);

impl DaemonDir {
    /// `daemon_directory` from the config, or the directory of `empath` itself.
    pub fn locate(config: &Config) -> Result<Self, String> {
        let dir = match &config.daemon_directory {
            Some(dir) => dir.clone(),
            None => std::env::current_exe()
                .map_err(|e| format!("cannot find the empath executable: {e}"))?
                .parent()
                .map(PathBuf::from)
                .ok_or("the empath executable has no parent directory")?,
        };
        let found = Self(dir);
        for name in crate::supervisor::DAEMONS {
            let path = found.executable(name);
            if !path.is_file() {
                return Err(format!(
                    "daemon executable {} not found (set daemon_directory in the config)",
                    path.display()
                ));
            }
        }
        Ok(found)
    }

    pub fn executable(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

/// Starts one daemon. `listen_fds` are passed as fds 3.. in order.
pub fn start(
    dir: &DaemonDir,
    name: &str,
    config: &Config,
    log_format: LogFormat,
    listen_fds: &[RawFd],
) -> std::io::Result<Child> {
    let mut command = Command::new(dir.executable(name));
    command
        .arg("--config")
        .arg(&config.path)
        .arg("--log-format")
        .arg(log_format.as_arg())
        .env("EMPATH_LISTEN_FDS", listen_fds.len().to_string())
        .kill_on_drop(false);
    let fds = listen_fds.to_vec();
    // Preallocated so that the closure, which runs between fork and exec,
    // does not allocate.
    let mut scratch = vec![-1; fds.len()];
    // SAFETY: the closure only calls async-signal-safe functions (fcntl,
    // dup2, close, prctl) and does not allocate.
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
            // If the master dies without cleaning up, its daemons follow it.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.spawn()
}

/// The raw fds of the bound listeners.
pub fn raw_fds(sockets: &[std::net::TcpListener]) -> Vec<RawFd> {
    sockets.iter().map(AsRawFd::as_raw_fd).collect()
}
