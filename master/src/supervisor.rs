//! Supervision: start every daemon, restart the ones that die (with
//! backoff), and stop them all on SIGTERM.

use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use empath_common::config::Config;
use empath_common::daemon;
use empath_common::logging::LogFormat;
use empath_common::queue::Queue;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::Child;
use tokio::sync::watch;

use crate::listeners::{self, Bound};
use crate::spawn::{self, DaemonDir};

/// The daemons, in start order: the ones others connect to come first.
pub const DAEMONS: [&str; 5] = [
    "empath-cleanup",
    "empath-qmgr",
    "empath-smtp-out",
    "empath-bounce",
    "empath-smtpd",
];
const SMTPD: &str = "empath-smtpd";

const FIRST_RESTART_DELAY: Duration = Duration::from_millis(100);
const MAX_RESTART_DELAY: Duration = Duration::from_secs(30);
/// A daemon that ran this long is healthy again: its backoff resets.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// How long a daemon may take to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

pub async fn run(
    config: Config,
    queue: Queue,
    dir: DaemonDir,
    bound: Bound,
    log_format: LogFormat,
) -> Result<(), String> {
    listeners::publish(&queue, "master.pid", &format!("{}\n", std::process::id())).map_err(
        |e| {
            format!(
                "cannot write {}: {e}",
                queue.root_file("master.pid").display()
            )
        },
    )?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let listen_fds = spawn::raw_fds(&bound.sockets);
    let mut tasks = Vec::new();
    for name in DAEMONS {
        let fds = if name == SMTPD {
            listen_fds.clone()
        } else {
            Vec::new()
        };
        let instance = Instance {
            name,
            dir: dir.clone(),
            config: config.clone(),
            log_format,
            listen_fds: fds,
        };
        tasks.push(tokio::spawn(instance.supervise(stop_rx.clone())));
    }
    let addrs: String = bound.addrs.iter().map(|a| format!("{a}\n")).collect();
    listeners::publish(&queue, "listeners", &addrs).map_err(|e| {
        format!(
            "cannot write {}: {e}",
            queue.root_file("listeners").display()
        )
    })?;
    tracing::info!(pid = std::process::id(), spool = %queue.root().display(), "empath started");

    daemon::stop_requested().await;
    tracing::info!("stopping: asking every daemon to finish");
    let _ = stop_tx.send(true);
    for task in tasks {
        let _ = task.await;
    }
    // Keep the listeners open until every daemon is gone.
    drop(bound);
    let _ = std::fs::remove_file(queue.root_file("listeners"));
    let _ = std::fs::remove_file(queue.root_file("master.pid"));
    tracing::info!("empath stopped");
    Ok(())
}

/// One supervised daemon process slot.
struct Instance {
    name: &'static str,
    dir: DaemonDir,
    config: Config,
    log_format: LogFormat,
    listen_fds: Vec<RawFd>,
}

impl Instance {
    async fn supervise(self, mut stop: watch::Receiver<bool>) {
        let mut delay = FIRST_RESTART_DELAY;
        let mut restarts: u64 = 0;
        loop {
            let started = Instant::now();
            match spawn::start(
                &self.dir,
                self.name,
                &self.config,
                self.log_format,
                &self.listen_fds,
            ) {
                Ok(mut child) => {
                    let pid = child.id().unwrap_or_default();
                    tracing::info!(daemon = self.name, pid, restarts, "daemon started");
                    tokio::select! {
                        status = child.wait() => {
                            let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                            tracing::warn!(daemon = self.name, pid, %status, "daemon exited; restarting in {delay:?}");
                        }
                        _ = stop.changed() => {
                            stop_child(self.name, &mut child).await;
                            return;
                        }
                    }
                }
                Err(error) => {
                    tracing::error!(daemon = self.name, %error, "cannot start daemon; retrying in {delay:?}");
                }
            }
            if started.elapsed() >= STABLE_AFTER {
                delay = FIRST_RESTART_DELAY;
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = stop.changed() => return,
            }
            delay = (delay * 2).min(MAX_RESTART_DELAY);
            restarts += 1;
        }
    }
}

/// SIGTERM, then SIGKILL if the daemon does not exit in time.
async fn stop_child(name: &str, child: &mut Child) {
    if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    match tokio::time::timeout(STOP_GRACE, child.wait()).await {
        Ok(_) => tracing::info!(daemon = name, "daemon stopped"),
        Err(_) => {
            tracing::warn!(daemon = name, "daemon did not stop in time; killing it");
            let _ = child.kill().await;
        }
    }
}
