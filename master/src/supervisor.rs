//! Supervision: start every daemon, restart the ones that die (with
//! exponential backoff), throttle the ones that keep dying before they
//! serve anything, restart them one at a time with a new config on
//! SIGHUP, and stop them in order on SIGTERM (a second SIGTERM or SIGINT
//! kills them at once). What the supervisor knows is published for
//! empath-anvil in `private/master.status` (see
//! [`empath_common::supervision`]); nothing is read back.

use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use empath_common::config::Config;
use empath_common::control::ProcessStatus;
use empath_common::logging::LogFormat;
use empath_common::queue::Queue;
use empath_common::supervision::{DaemonStatus, MasterStatus};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::process::Child;
use tokio::signal::unix::{Signal as SignalStream, SignalKind, signal};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

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
/// Connection and AUTH-failure accounting for smtpd, `/health` and
/// `/metrics`: everything that parses what others send, unprivileged.
pub const ANVIL: &str = "empath-anvil";
/// The read-only queue listing (mailq, empathctl queue list/view/stats,
/// the queue figures of `/health` and `/metrics`).
pub const SHOWQ: &str = "empath-showq";

/// The daemons, in start order: the ones others connect to come first.
pub const DAEMONS: [&str; 8] = [ANVIL, CLEANUP, QMGR, SMTP_OUT, LOCAL, BOUNCE, SMTPD, SHOWQ];
/// Stop order on SIGTERM: first no new mail comes in (smtpd finishes its
/// sessions), then no new deliveries start (qmgr waits for the running
/// ones), then the daemons that the others hand work to (cleanup late:
/// empath-local forwards through it); the anvil last, so that
/// `/health/ready` says "not ready" for the whole stop.
const STOP_ORDER: [&str; 8] = [SMTPD, QMGR, SMTP_OUT, LOCAL, BOUNCE, CLEANUP, SHOWQ, ANVIL];
/// Every stop phase gets at least this long, even past the deadline.
const MIN_PHASE_GRACE: Duration = Duration::from_secs(1);

/// What stays the same for the master's whole life.
pub struct Settings {
    pub dir: DaemonDir,
    pub log_format: LogFormat,
    pub run_as: Option<RunAs>,
}

/// The supervisor's view of its daemons, shared with the control socket
/// and published for empath-anvil on every change.
pub struct Status {
    current: watch::Sender<MasterStatus>,
    /// One writer of the file at a time, each writing the state current
    /// when it writes: an older state never overwrites a newer one.
    writing: std::sync::Mutex<()>,
    /// A second stop signal came: nothing is started any more.
    forced: AtomicBool,
}

impl Status {
    fn new(names: &[&'static str]) -> Self {
        let started_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let status = MasterStatus {
            run: format!("{}-{started_ms}", std::process::id()),
            stopping: false,
            listeners_bound: false,
            daemons: names
                .iter()
                .map(|name| DaemonStatus {
                    name: (*name).to_owned(),
                    pid: None,
                    restarts: 0,
                    throttled: false,
                })
                .collect(),
        };
        Self {
            current: watch::Sender::new(status),
            writing: std::sync::Mutex::new(()),
            forced: AtomicBool::new(false),
        }
    }

    fn update(&self, index: usize, change: impl FnOnce(&mut DaemonStatus)) {
        self.current.send_modify(|status| {
            if let Some(slot) = status.daemons.get_mut(index) {
                change(slot);
            }
        });
    }

    fn set_listeners_bound(&self, bound: bool) {
        self.current
            .send_modify(|status| status.listeners_bound = bound);
    }

    fn set_stopping(&self) {
        self.current.send_modify(|status| status.stopping = true);
    }

    /// Kills every running daemon at once, and starts none from now on.
    fn kill_all(&self) {
        self.forced.store(true, Ordering::SeqCst);
        let pids: Vec<u32> = self
            .current
            .borrow()
            .daemons
            .iter()
            .filter_map(|d| d.pid)
            .collect();
        for pid in pids {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }

    fn forced(&self) -> bool {
        self.forced.load(Ordering::SeqCst)
    }

    /// For `empathctl system status`.
    pub fn processes(&self) -> Vec<ProcessStatus> {
        self.current
            .borrow()
            .daemons
            .iter()
            .map(|s| ProcessStatus {
                name: s.name.clone(),
                pid: s.pid,
                restarts: s.restarts,
                running: s.pid.is_some(),
            })
            .collect()
    }

    /// Writes `private/master.status` with the current state (blocking).
    fn write(&self, queue: &Queue) {
        let _one_writer = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let status = self.current.borrow().clone();
        if let Err(error) = status.publish(queue) {
            tracing::error!(%error, "cannot publish the daemons' status for empath-anvil");
        }
    }

    /// Writes `private/master.status` now, off the async threads.
    async fn write_now(self: &Arc<Self>, queue: &Queue) {
        let (status, queue) = (Arc::clone(self), queue.clone());
        if let Err(error) = tokio::task::spawn_blocking(move || status.write(&queue)).await {
            tracing::error!(%error, "the status writer failed");
        }
    }

    /// Writes `private/master.status` after every change; a burst of
    /// changes is written once.
    fn publish(self: &Arc<Self>, queue: Queue) -> JoinHandle<()> {
        let mut changes = self.current.subscribe();
        let status = Arc::clone(self);
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                changes.borrow_and_update();
                status.write_now(&queue).await;
            }
        })
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
    health: Option<TcpListener>,
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
    let publisher = status.publish(queue.clone());
    let listen_fds = spawn::raw_fds(&bound.sockets);
    // The health listener is bound here and only ever accepted on by
    // empath-anvil, which inherits it.
    let health_fds: Vec<RawFd> = health.iter().map(AsRawFd::as_raw_fd).collect();
    let mut first_starts = Vec::new();
    let slots: Vec<SlotHandle> = names
        .iter()
        .enumerate()
        .map(|(index, &name)| {
            let (orders, inbox) = mpsc::unbounded_channel();
            let (first_start, tried) = oneshot::channel();
            first_starts.push(tried);
            let slot = Slot {
                index,
                name,
                settings: Arc::clone(&settings),
                config: Arc::clone(&config),
                listen_fds: match name {
                    SMTPD => listen_fds.clone(),
                    ANVIL => health_fds.clone(),
                    _ => Vec::new(),
                },
                status: Arc::clone(&status),
                inbox,
                first_start: Some(first_start),
            };
            SlotHandle {
                name,
                orders,
                task: tokio::spawn(slot.supervise()),
            }
        })
        .collect();
    status.set_listeners_bound(true);
    // Every daemon has been started once, and the status file says so,
    // before the addresses are published: a first health check already
    // sees them running.
    for tried in first_starts {
        let _ = tried.await;
    }
    status.write_now(&queue).await;

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
    if let Some(address) = health.as_ref().and_then(|h| h.local_addr().ok())
        && let Err(error) = listeners::publish(&queue, "health", &format!("{address}\n"))
    {
        tracing::warn!(%error, "cannot publish the health address");
    }

    let mut control =
        crate::control_socket::start(&config, &queue, started, &status, settings.run_as);
    tracing::info!(pid = std::process::id(), spool = %queue.root().display(), "empath started");

    loop {
        tokio::select! {
            _ = hangup.recv() => {
                if let Some(new) = reload(&config, &slots).await {
                    config = new;
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

    status.set_stopping();
    let deadline = Instant::now() + Duration::from_secs(config.shutdown_timeout_secs);
    tracing::info!(
        timeout_secs = config.shutdown_timeout_secs,
        "stopping: no new mail, finishing what is in flight (a second SIGTERM or SIGINT stops at once)"
    );
    let mut bound = Some(bound);
    let graceful = stop_in_order(slots, deadline, &status, &mut bound);
    tokio::select! {
        () = graceful => {}
        () = second_signal(&mut terminate, &mut interrupt) => {
            tracing::warn!("second stop signal: killing every daemon now");
            status.kill_all();
        }
    }
    drop(bound);
    drop(health);
    if let Some(task) = control {
        task.abort();
    }
    publisher.abort();
    for name in ["listeners", "health", "master.pid"] {
        let _ = std::fs::remove_file(queue.root_file(name));
    }
    let _ = std::fs::remove_file(queue.private_file(empath_common::supervision::STATUS_FILE));
    tracing::info!("empath stopped");
    Ok(())
}

/// The graceful stop: each phase of [`STOP_ORDER`] in turn.
async fn stop_in_order(
    mut slots: Vec<SlotHandle>,
    deadline: Instant,
    status: &Status,
    bound: &mut Option<Bound>,
) {
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
            status.set_listeners_bound(false);
            drop(bound.take());
        }
    }
}

/// Resolves on the next SIGTERM or SIGINT.
async fn second_signal(terminate: &mut SignalStream, interrupt: &mut SignalStream) {
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
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
    if (new.health.enabled, new.health.listen_address.0)
        != (current.health.enabled, current.health.listen_address.0)
    {
        tracing::warn!(
            "health.enabled and health.listen_address take a restart of empath to change; the old health listener stays"
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
    /// Told once the first start was tried (whether it worked or not).
    first_start: Option<oneshot::Sender<()>>,
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
            let started = self.start();
            if let Some(first_start) = self.first_start.take() {
                let _ = first_start.send(());
            }
            let (served, lived) = match started {
                Some(running) => match self.watch(running).await {
                    (Ended::Stopped, _, _) => return,
                    (Ended::Exited(_), _, _) if self.status.forced() => return,
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
            self.status.update(self.index, |s| s.throttled = throttled);
            if !self.pause(wait).await {
                return;
            }
            delay = (delay * 2).min(max_delay);
            self.status.update(self.index, |s| {
                s.throttled = false;
                s.restarts += 1;
            });
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

    /// Starts a successor and waits (a little) until it listens.
    async fn start_ready(&self) -> Option<Running> {
        let mut running = self.start()?;
        if let Some(pipe) = running.status_pipe.as_mut() {
            let mut byte = [0u8; 1];
            let ready = tokio::time::timeout(READY_TIMEOUT, pipe.read(&mut byte)).await;
            match ready {
                Ok(Ok(1)) if byte[0] == b'R' => {}
                Ok(Ok(1)) => {
                    running.served = true;
                    running.status_pipe = None;
                }
                Ok(_) => running.status_pipe = None,
                Err(_) => tracing::warn!(
                    daemon = self.name,
                    "the new daemon did not say it was ready in time; replacing the old one anyway"
                ),
            }
        }
        Some(running)
    }

    fn start(&self) -> Option<Running> {
        if self.status.forced() {
            return None;
        }
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
            let pipe = running.status_pipe.as_mut();
            let reading = async move {
                let mut byte = [0u8; 1];
                match pipe {
                    Some(pipe) => pipe.read(&mut byte).await.map(|n| (n, byte[0])),
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
                    match read {
                        // Ready: listening. Serving comes later.
                        Ok((1, b'R')) => continue,
                        Ok((1, _)) => {
                            running.served = true;
                            tracing::debug!(daemon = self.name, "daemon is serving");
                        }
                        _ => {}
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

    /// Restarts the daemon with the current config, so that no client
    /// sees an error: the successor starts first (it takes over the
    /// listeners, or binds the service's socket anew), then the old one
    /// drains: it finishes what it is doing (sessions, submissions,
    /// deliveries) and exits. Only qmgr stops first: two schedulers on one
    /// queue would deliver everything twice (it holds the queue lock).
    async fn replace(&mut self, old: Running) -> Option<Running> {
        let deadline = Instant::now() + Duration::from_secs(self.config.shutdown_timeout_secs);
        if self.name != QMGR {
            match self.start_ready().await {
                Some(new) if self.name == SMTPD => {
                    // Its sessions run to their own end, which the session
                    // time limit bounds.
                    let longest = self
                        .config
                        .smtp_controller
                        .listeners
                        .iter()
                        .map(|l| l.timeouts.connection_secs)
                        .max()
                        .unwrap_or(0);
                    let deadline = deadline.max(Instant::now() + Duration::from_secs(longest + 5));
                    tokio::spawn(retire_child(self.name, old.child, deadline));
                    Some(new)
                }
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

/// The retire signal (see `daemon::RETIRE_SIGNAL`), then SIGKILL if the
/// daemon has not exited by `deadline`.
async fn retire_child(name: &'static str, mut child: Child, deadline: Instant) {
    if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
        let _ = kill(Pid::from_raw(pid), empath_common::daemon::RETIRE_SIGNAL);
    }
    let grace = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(_) => tracing::info!(daemon = name, "retired daemon exited"),
        Err(_) => {
            tracing::warn!(
                daemon = name,
                "retired daemon outlived its sessions' time limit; killing it"
            );
            let _ = child.kill().await;
        }
    }
}

/// How long a reload waits for a successor to listen before it retires
/// the daemon it replaces.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

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
