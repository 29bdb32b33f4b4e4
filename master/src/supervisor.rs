//! Supervision: start every daemon, restart the ones that die (with
//! exponential backoff), throttle the ones that keep dying before they
//! serve anything, restart them one at a time with a new config on
//! SIGHUP, and stop them in order on SIGTERM.

use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use empath_common::config::Config;
use empath_common::control::ProcessStatus;
use empath_common::logging::LogFormat;
use empath_common::metrics;
use empath_common::queue::Queue;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::process::Child;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::http::{HttpServer, Sources};
use crate::listeners::{self, Bound};
use crate::privileges::RunAs;
use crate::spawn::{self, DaemonDir};

pub const SMTPD: &str = "empath-smtpd";
pub const CLEANUP: &str = "empath-cleanup";
pub const QMGR: &str = "empath-qmgr";
pub const SMTP_OUT: &str = "empath-smtp-out";
pub const BOUNCE: &str = "empath-bounce";
/// The local delivery agent: the one daemon that keeps root when the
/// master runs as root, to switch to each recipient's uid (see
/// [`Slot::run_as`]).
pub const LOCAL: &str = "empath-local";
/// The read-only queue listing (mailq, empathctl queue list/view/stats).
pub const SHOWQ: &str = "empath-showq";

/// The daemons, in start order: the ones others connect to come first.
pub const DAEMONS: [&str; 7] = [CLEANUP, QMGR, SMTP_OUT, LOCAL, BOUNCE, SMTPD, SHOWQ];
/// Stop order on SIGTERM: first no new mail comes in (smtpd finishes its
/// sessions), then no new deliveries start (qmgr waits for the running
/// ones), then the daemons that the others hand work to (cleanup last:
/// empath-local forwards through it).
const STOP_ORDER: [&str; 7] = [SMTPD, QMGR, SMTP_OUT, LOCAL, BOUNCE, CLEANUP, SHOWQ];
/// Every stop phase gets at least this long, even past the deadline.
const MIN_PHASE_GRACE: Duration = Duration::from_secs(1);

/// What stays the same for the master's whole life.
pub struct Settings {
    pub dir: DaemonDir,
    pub log_format: LogFormat,
    pub run_as: Option<RunAs>,
}

/// The supervisor's view of its daemons, shared with the control socket
/// and the health endpoints.
pub struct Status {
    slots: Mutex<Vec<SlotStatus>>,
    listeners_bound: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Clone)]
struct SlotStatus {
    name: &'static str,
    pid: Option<u32>,
    restarts: u64,
}

impl Status {
    fn new(names: &[&'static str]) -> Self {
        for name in names {
            metrics::get().daemon_declared(name);
        }
        Self {
            slots: Mutex::new(
                names
                    .iter()
                    .map(|name| SlotStatus {
                        name,
                        pid: None,
                        restarts: 0,
                    })
                    .collect(),
            ),
            listeners_bound: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn update(&self, index: usize, change: impl FnOnce(&mut SlotStatus)) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = slots.get_mut(index) {
            change(slot);
            let name = slot.name;
            let running = slots
                .iter()
                .filter(|s| s.name == name && s.pid.is_some())
                .count();
            metrics::get().daemon_up(name, i64::try_from(running).unwrap_or(i64::MAX));
        }
    }

    /// How many processes of daemon `name` run.
    pub fn running(&self, name: &str) -> usize {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .iter()
            .filter(|s| s.name == name && s.pid.is_some())
            .count()
    }

    pub fn listeners_bound(&self) -> bool {
        self.listeners_bound
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// For `empathctl system status`.
    pub fn processes(&self) -> Vec<ProcessStatus> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .iter()
            .map(|s| ProcessStatus {
                name: s.name.to_owned(),
                pid: s.pid,
                restarts: s.restarts,
                running: s.pid.is_some(),
            })
            .collect()
    }
}

/// What the master asks of a slot.
enum Order {
    /// Restart the daemon with this config; answer once the new one runs.
    Reload(Arc<Config>, oneshot::Sender<()>),
    /// Stop the daemon (SIGTERM, SIGKILL at the deadline) and end.
    Stop(Instant),
}

struct SlotHandle {
    name: &'static str,
    orders: mpsc::UnboundedSender<Order>,
    task: JoinHandle<()>,
}

pub async fn run(
    config: Config,
    queue: Queue,
    settings: Settings,
    bound: Bound,
) -> Result<(), String> {
    listeners::publish(&queue, "master.pid", &format!("{}\n", std::process::id())).map_err(
        |e| {
            format!(
                "cannot write {}: {e}",
                queue.root_file("master.pid").display()
            )
        },
    )?;
    // Signals are caught from here on, so that none is lost while starting.
    let (Ok(mut hangup), Ok(mut terminate), Ok(mut interrupt)) = (
        signal(SignalKind::hangup()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return Err("cannot install signal handlers".into());
    };
    let started = Instant::now();
    let settings = Arc::new(settings);
    let mut config = Arc::new(config);
    let names: Vec<&'static str> = DAEMONS
        .iter()
        .flat_map(|&name| {
            let count = if name == SMTPD {
                config.smtpd.processes.max(1)
            } else {
                1
            };
            std::iter::repeat_n(name, count)
        })
        .collect();
    let status = Arc::new(Status::new(&names));
    // Before any smtpd starts, so that every connection is counted.
    let anvil = crate::anvil::Anvil::new(&config);
    let _anvil_task = crate::anvil::start(&anvil, &queue, settings.run_as);
    let listen_fds = spawn::raw_fds(&bound.sockets);
    let mut slots: Vec<SlotHandle> = names
        .iter()
        .enumerate()
        .map(|(index, &name)| {
            let (orders, inbox) = mpsc::unbounded_channel();
            let slot = Slot {
                index,
                name,
                settings: Arc::clone(&settings),
                config: Arc::clone(&config),
                listen_fds: if name == SMTPD {
                    listen_fds.clone()
                } else {
                    Vec::new()
                },
                status: Arc::clone(&status),
                inbox,
            };
            SlotHandle {
                name,
                orders,
                task: tokio::spawn(slot.supervise()),
            }
        })
        .collect();
    status
        .listeners_bound
        .store(true, std::sync::atomic::Ordering::SeqCst);

    // Once the daemons are on their way: tests and operators take it as
    // the sign that the master is up. smtp-out reads it (at its first
    // delivery) to recognise its own listeners as a mail loop.
    let addrs: String = bound.addrs.iter().map(|a| format!("{a}\n")).collect();
    listeners::publish(&queue, "listeners", &addrs).map_err(|e| {
        format!(
            "cannot write {}: {e}",
            queue.root_file("listeners").display()
        )
    })?;
    let shared_config = Arc::new(RwLock::new(Arc::clone(&config)));
    let http = start_http(&config, &queue, &shared_config, &status);
    let mut control =
        crate::control_socket::start(&config, &queue, started, &status, settings.run_as);
    tracing::info!(pid = std::process::id(), spool = %queue.root().display(), "empath started");

    loop {
        tokio::select! {
            _ = hangup.recv() => {
                if let Some(new) = reload(&config, &slots).await {
                    config = new;
                    anvil.set_limits(&config);
                    *shared_config.write().unwrap_or_else(|p| p.into_inner()) = Arc::clone(&config);
                    if let Some(task) = control.take() {
                        task.abort();
                    }
                    control = crate::control_socket::start(&config, &queue, started, &status, settings.run_as);
                }
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }

    let deadline = Instant::now() + Duration::from_secs(config.shutdown_timeout_secs);
    tracing::info!(
        timeout_secs = config.shutdown_timeout_secs,
        "stopping: no new mail, finishing what is in flight"
    );
    let mut bound = Some(bound);
    for phase in STOP_ORDER {
        let phase_deadline = deadline.max(Instant::now() + MIN_PHASE_GRACE);
        let (stopping, rest): (Vec<SlotHandle>, Vec<SlotHandle>) =
            slots.into_iter().partition(|slot| slot.name == phase);
        slots = rest;
        for slot in &stopping {
            let _ = slot.orders.send(Order::Stop(phase_deadline));
        }
        for slot in stopping {
            let _ = slot.task.await;
        }
        if phase == SMTPD {
            // No smtpd holds the listeners any more: close them for good.
            status
                .listeners_bound
                .store(false, std::sync::atomic::Ordering::SeqCst);
            drop(bound.take());
        }
    }
    if let Some(task) = control {
        task.abort();
    }
    drop(http);
    let _ = std::fs::remove_file(queue.root_file("listeners"));
    let _ = std::fs::remove_file(queue.root_file("health"));
    let _ = std::fs::remove_file(queue.root_file("master.pid"));
    tracing::info!("empath stopped");
    Ok(())
}

fn start_http(
    config: &Config,
    queue: &Queue,
    shared_config: &Arc<RwLock<Arc<Config>>>,
    status: &Arc<Status>,
) -> Option<HttpServer> {
    if !config.health.enabled {
        return None;
    }
    let sources = Sources {
        config: Arc::clone(shared_config),
        queue: queue.clone(),
        status: Arc::clone(status),
    };
    match HttpServer::start(config.health.listen_address.0, sources) {
        Ok(server) => {
            if let Err(error) = listeners::publish(queue, "health", &format!("{}\n", server.addr)) {
                tracing::warn!(%error, "cannot publish the health address");
            }
            Some(server)
        }
        Err(error) => {
            // Mail still flows without health checks; say so loudly.
            tracing::error!(%error, "health and metrics endpoints are not available");
            None
        }
    }
}

/// SIGHUP: loads and checks the config again; if it is valid, restarts the
/// daemons one at a time with it, so the queue and the listeners stay.
async fn reload(current: &Arc<Config>, slots: &[SlotHandle]) -> Option<Arc<Config>> {
    tracing::info!(config = %current.path.display(), "SIGHUP: reloading the config");
    let new = match Config::load(&current.path) {
        Ok(new) => Arc::new(new),
        Err(error) => {
            tracing::error!(%error, "config reload failed; keeping the running config");
            return None;
        }
    };
    let sockets = |c: &Config| {
        c.smtp_controller
            .listeners
            .iter()
            .map(|l| l.socket.0)
            .collect::<Vec<_>>()
    };
    if sockets(&new) != sockets(current) {
        tracing::warn!(
            "the listeners changed: that takes a restart of empath (systemctl restart empath); the old listeners stay"
        );
    }
    if (
        &new.user,
        &new.group,
        new.allow_root,
        new.smtpd.processes,
        &new.spool.path,
    ) != (
        &current.user,
        &current.group,
        current.allow_root,
        current.smtpd.processes,
        &current.spool.path,
    ) {
        tracing::warn!(
            "user, group, allow_root, smtpd.processes and spool.path take a restart of empath to change"
        );
    }
    for slot in slots {
        let (ack, acked) = oneshot::channel();
        if slot
            .orders
            .send(Order::Reload(Arc::clone(&new), ack))
            .is_ok()
        {
            let _ = acked.await;
        }
    }
    tracing::info!("config reloaded; every daemon runs with it");
    Some(new)
}

/// One supervised daemon process.
struct Slot {
    index: usize,
    name: &'static str,
    settings: Arc<Settings>,
    config: Arc<Config>,
    listen_fds: Vec<RawFd>,
    status: Arc<Status>,
    inbox: mpsc::UnboundedReceiver<Order>,
}

/// A running daemon and what is known about it.
struct Running {
    child: Child,
    status_pipe: Option<pipe::Receiver>,
    started: Instant,
    served: bool,
}

/// How waiting for a running daemon ended.
enum Ended {
    Exited(String),
    Stopped,
}

impl Slot {
    async fn supervise(mut self) {
        let policy = self.config.supervisor.clone();
        let first_delay = Duration::from_millis(policy.restart_delay_ms);
        let max_delay = Duration::from_secs(policy.max_restart_delay_secs);
        let stable_after = Duration::from_secs(policy.stable_after_secs);
        let mut delay = first_delay;
        // Consecutive deaths before serving anything.
        let mut early_deaths: u32 = 0;
        loop {
            let (served, lived) = match self.start() {
                Some(running) => match self.watch(running).await {
                    (Ended::Stopped, _, _) => return,
                    (Ended::Exited(how), served, lived) => {
                        tracing::warn!(daemon = self.name, status = %how, "daemon exited");
                        (served || lived >= stable_after, lived)
                    }
                },
                None => (false, Duration::ZERO),
            };
            if served {
                early_deaths = 0;
            } else {
                early_deaths += 1;
            }
            if lived >= stable_after {
                delay = first_delay;
            }
            let throttled = early_deaths >= policy.throttle_after_crashes;
            let wait = if throttled {
                let wait = Duration::from_secs(policy.throttle_secs);
                tracing::warn!(
                    daemon = self.name,
                    crashes = early_deaths,
                    "throttling {}: {early_deaths} consecutive crashes before serving; next start in {wait:?}",
                    self.name
                );
                wait
            } else {
                tracing::info!(daemon = self.name, "restarting in {delay:?}");
                delay
            };
            metrics::get().daemon_throttled(self.name, throttled);
            if !self.pause(wait).await {
                return;
            }
            metrics::get().daemon_throttled(self.name, false);
            delay = (delay * 2).min(max_delay);
            self.status.update(self.index, |s| s.restarts += 1);
            metrics::get().daemon_restarted(self.name);
        }
    }

    /// Whom this daemon runs as: the daemons' user, except empath-local,
    /// which keeps the master's identity. Like Postfix's local(8) it needs
    /// root to deliver as each recipient; it drops to the recipient (or an
    /// alias owner, or `default_privs`) in a child process for every
    /// delivery into a place a user controls, and parses nothing from the
    /// network. An unprivileged master runs it as itself, and then it can
    /// only deliver as that user.
    fn run_as(&self) -> Option<RunAs> {
        if self.name == LOCAL {
            None
        } else {
            self.settings.run_as
        }
    }

    fn start(&self) -> Option<Running> {
        match spawn::start(
            &self.settings.dir,
            self.name,
            &self.config,
            self.settings.log_format,
            &self.listen_fds,
            self.run_as(),
        ) {
            Ok(started) => {
                let pid = started.child.id();
                tracing::info!(daemon = self.name, pid, "daemon started");
                self.status.update(self.index, |s| s.pid = pid);
                let status_pipe = pipe::Receiver::from_owned_fd(started.status)
                    .map_err(|error| tracing::warn!(daemon = self.name, %error, "no status pipe"))
                    .ok();
                Some(Running {
                    child: started.child,
                    status_pipe,
                    started: Instant::now(),
                    served: false,
                })
            }
            Err(error) => {
                tracing::error!(daemon = self.name, %error, "cannot start daemon");
                None
            }
        }
    }

    /// Waits for the daemon to exit or for an order. Returns how it ended,
    /// whether it served, and how long it lived.
    async fn watch(&mut self, mut running: Running) -> (Ended, bool, Duration) {
        loop {
            let mut byte = [0u8; 1];
            let pipe = running.status_pipe.as_mut();
            let reading = async move {
                match pipe {
                    Some(pipe) => pipe.read(&mut byte).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                exit = running.child.wait() => {
                    self.status.update(self.index, |s| s.pid = None);
                    let how = exit.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                    return (Ended::Exited(how), running.served, running.started.elapsed());
                }
                read = reading => {
                    if matches!(read, Ok(1)) {
                        running.served = true;
                        tracing::debug!(daemon = self.name, "daemon is serving");
                    }
                    // Served, or the pipe is closed: stop reading it.
                    running.status_pipe = None;
                }
                order = self.inbox.recv() => match order {
                    Some(Order::Reload(config, ack)) => {
                        self.config = config;
                        let replaced = self.replace(running).await;
                        let _ = ack.send(());
                        match replaced {
                            Some(new) => running = new,
                            // The old one is gone and no new one started:
                            // back to the restart loop and its backoff.
                            None => {
                                return (
                                    Ended::Exited("not restarted after the reload".into()),
                                    false,
                                    Duration::ZERO,
                                );
                            }
                        }
                    }
                    Some(Order::Stop(deadline)) => {
                        stop_child(self.name, running.child, deadline).await;
                        self.status.update(self.index, |s| s.pid = None);
                        return (Ended::Stopped, running.served, running.started.elapsed());
                    }
                    None => {
                        stop_child(self.name, running.child, Instant::now() + Duration::from_secs(10)).await;
                        return (Ended::Stopped, running.served, running.started.elapsed());
                    }
                },
            }
        }
    }

    /// Restarts the daemon with the current config. smtpd's successor
    /// starts first, so the listeners never go unserved; the others stop
    /// first, since two of them on one queue could do work twice.
    async fn replace(&mut self, old: Running) -> Option<Running> {
        let deadline = Instant::now() + Duration::from_secs(self.config.shutdown_timeout_secs);
        if self.name == SMTPD {
            match self.start() {
                Some(new) => {
                    tokio::spawn(stop_child(self.name, old.child, deadline));
                    Some(new)
                }
                None => Some(old),
            }
        } else {
            stop_child(self.name, old.child, deadline).await;
            self.status.update(self.index, |s| s.pid = None);
            self.start()
        }
    }

    /// Sleeps before a restart. False if told to stop meanwhile. A reload
    /// meanwhile only changes the config the next start uses.
    async fn pause(&mut self, wait: Duration) -> bool {
        let until = tokio::time::Instant::now() + wait;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(until) => return true,
                order = self.inbox.recv() => match order {
                    Some(Order::Reload(config, ack)) => {
                        self.config = config;
                        let _ = ack.send(());
                    }
                    Some(Order::Stop(_)) | None => return false,
                },
            }
        }
    }
}

/// SIGTERM, then SIGKILL if the daemon has not exited by `deadline`.
async fn stop_child(name: &'static str, mut child: Child, deadline: Instant) {
    if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    let grace = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(_) => tracing::info!(daemon = name, "daemon stopped"),
        Err(_) => {
            tracing::warn!(daemon = name, "daemon did not stop in time; killing it");
            let _ = child.kill().await;
        }
    }
}
