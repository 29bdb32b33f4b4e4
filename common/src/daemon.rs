//! The skeleton every daemon shares: command-line arguments, start-up
//! (logging, config, queue), and the server loop on a `private/` socket.

use std::future::Future;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tokio::net::{UnixListener, UnixStream};

use crate::config::{self, Config};
use crate::logging::{self, LogFormat};
use crate::queue::Queue;

/// Arguments that the master passes to every daemon.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    version,
    about = "An Empath daemon, started by the empath master (see empath(8))"
)]
pub struct DaemonArgs {
    /// The config file.
    #[arg(long, default_value = config::DEFAULT_PATH)]
    pub config: PathBuf,
    /// human, json or syslog.
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
}

/// A started daemon: its config and queue.
pub struct Daemon {
    pub config: Config,
    pub queue: Queue,
}

/// Parses arguments, loads the config and starts logging (as the config's
/// `logging` section says). Exits with a message on stderr (status 78,
/// EX_CONFIG) when the config cannot be used.
pub fn start(service: &'static str) -> Daemon {
    // Named once per process, for --help and --version.
    let name: &'static str = Box::leak(format!("empath-{service}").into_boxed_str());
    let command = <DaemonArgs as clap::CommandFactory>::command().name(name);
    let args = match <DaemonArgs as clap::FromArgMatches>::from_arg_matches(&command.get_matches())
    {
        Ok(args) => args,
        Err(error) => error.exit(),
    };
    let config = match Config::load(&args.config) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("empath-{service}: {error}");
            std::process::exit(78);
        }
    };
    if let Err(message) = logging::init(args.log_format, service, &config.logging) {
        eprintln!("empath-{service}: {message}");
    }
    let queue = Queue::new(config.spool.path.clone());
    take_status_fd();
    crate::metrics::configure(&config.metrics);
    crate::metrics::set_daemon(name);
    crate::metrics::exporter::serve(&queue, service);
    crate::traces::init(name, &config.metrics);
    Daemon { config, queue }
}

static DRAINING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static DRAIN_STARTED: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Starts a graceful stop: work in progress finishes, new work is refused
/// ([`serve`] stops accepting, [`next_request`] ends idle connections,
/// smtpd ends each session after its current message, and idle sessions
/// at once).
pub fn begin_draining() {
    DRAINING.store(true, std::sync::atomic::Ordering::SeqCst);
    DRAIN_STARTED.notify_waiters();
}

/// True once [`begin_draining`] was called.
pub fn draining() -> bool {
    DRAINING.load(std::sync::atomic::Ordering::SeqCst)
}

/// Resolves once [`begin_draining`] was called.
pub async fn draining_started() {
    let notified = DRAIN_STARTED.notified();
    tokio::pin!(notified);
    // Registered before the check, so a drain starting in between is seen.
    notified.as_mut().enable();
    if draining() {
        return;
    }
    notified.await;
}

/// Begins draining when the process is asked to stop (SIGTERM, SIGINT).
pub async fn drain_on_stop() {
    stop_requested().await;
    tracing::info!("stopping: finishing the work in progress");
    begin_draining();
}

/// A connection (or its read half) that can say when it is readable,
/// without reading.
pub trait Readable: tokio::io::AsyncRead + Unpin {
    fn wait_readable(&self) -> impl Future<Output = io::Result<()>> + Send;
}

impl Readable for UnixStream {
    fn wait_readable(&self) -> impl Future<Output = io::Result<()>> + Send {
        self.readable()
    }
}

impl Readable for tokio::net::unix::OwnedReadHalf {
    fn wait_readable(&self) -> impl Future<Output = io::Result<()>> + Send {
        self.readable()
    }
}

/// Buffered reading takes the frames a client sent back to back in one
/// system call rather than two per frame (length, then payload).
impl<R: Readable + Sync> Readable for tokio::io::BufReader<R> {
    fn wait_readable(&self) -> impl Future<Output = io::Result<()>> + Send {
        let buffered = !self.buffer().is_empty();
        let inner = self.get_ref();
        async move {
            if buffered {
                Ok(())
            } else {
                inner.wait_readable().await
            }
        }
    }
}

/// The next request on a daemon connection, or `None` once the client
/// closed it, or once the daemon drains while the connection is idle. A
/// request that has begun to arrive is always read whole.
pub async fn next_request<T, S>(stream: &mut S) -> io::Result<Option<T>>
where
    T: serde::de::DeserializeOwned,
    S: Readable,
{
    tokio::select! {
        biased;
        ready = stream.wait_readable() => ready?,
        () = draining_started() => return Ok(None),
    }
    crate::ipc::read_frame(stream).await
}

/// The environment variable naming the fd on which a daemon tells the
/// master that it has served its first request (see [`mark_serving`]).
pub const STATUS_FD_ENV: &str = "EMPATH_STATUS_FD";

/// The inherited status fd, or -1 once used (or if there is none).
static STATUS_FD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

fn take_status_fd() {
    if let Some(fd) = std::env::var(STATUS_FD_ENV)
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
        .filter(|fd| *fd > 2)
    {
        STATUS_FD.store(fd, std::sync::atomic::Ordering::SeqCst);
    }
}

static READY_SENT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Tells the master, once, that this daemon listens and can take work:
/// during a reload the master retires the process this one replaces only
/// then, so no client finds the service's socket without a listener.
pub fn mark_ready() {
    if READY_SENT.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    let fd = STATUS_FD.load(std::sync::atomic::Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: `fd` is the status pipe the master passed us; one byte
        // written, the fd stays open for `mark_serving`.
        unsafe {
            let _ = nix::libc::write(fd, b"R".as_ptr().cast(), 1);
        }
    }
}

/// Tells the master, once, that this daemon has served a request: its
/// deaths from now on are not crash loops, and are not throttled.
pub fn mark_serving() {
    let fd = STATUS_FD.swap(-1, std::sync::atomic::Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: `fd` is the status pipe the master passed us, used here
        // once and closed; nothing else in the process owns it.
        unsafe {
            let _ = nix::libc::write(fd, b"S".as_ptr().cast(), 1);
            nix::libc::close(fd);
        }
    }
}

/// Binds a daemon socket, replacing a stale one left by a crash. Mode 0600:
/// only the mail system's own user may talk to a daemon.
pub fn bind_socket(path: &Path) -> io::Result<UnixListener> {
    bind_socket_with_mode(path, 0o600)
}

/// Binds a socket with the given permissions, replacing a stale one, or
/// the socket of the daemon this one succeeds during a reload.
pub fn bind_socket_with_mode(path: &Path, mode: u32) -> io::Result<UnixListener> {
    bind_unix(path, mode, Staging::WhenReplacing, |at| {
        UnixListener::bind(at)
    })
}

/// When [`bind_unix`] binds under a temporary name first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Staging {
    /// Only when the path exists (a stale socket, or a predecessor's
    /// during a reload); a fresh path is bound in place, so the name the
    /// kernel shows (`ss -x`, /proc/net/unix) is the real one.
    WhenReplacing,
    /// Always: for sockets that others discover by listing a directory,
    /// which must never see one that does not listen yet.
    Always,
}

/// Binds a Unix socket at `path` with `mode`, using `bind` (tokio's or
/// std's listener). When staged, the socket is bound under a temporary
/// name in the same directory and renamed over `path`: the path always
/// names a socket someone listens on, so a client never finds it missing
/// (ENOENT) in between, nor with the wrong permissions.
pub fn bind_unix<L>(
    path: &Path,
    mode: u32,
    staging: Staging,
    bind: impl FnOnce(&Path) -> io::Result<L>,
) -> io::Result<L> {
    let permissions = std::fs::Permissions::from_mode(mode);
    if staging == Staging::WhenReplacing && std::fs::symlink_metadata(path).is_err() {
        let listener = bind(path)?;
        std::fs::set_permissions(path, permissions)?;
        return Ok(listener);
    }
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "a socket path needs a name"))?
        .to_string_lossy();
    let staged = path.with_file_name(format!(".{name}.{}.new", std::process::id()));
    match std::fs::remove_file(&staged) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = bind(&staged)?;
    let placed = std::fs::set_permissions(&staged, permissions)
        .and_then(|()| std::fs::rename(&staged, path));
    if let Err(error) = placed {
        let _ = std::fs::remove_file(&staged);
        return Err(error);
    }
    Ok(listener)
}

/// Accepts connections on `listener` forever, running `handle` for each on
/// its own task after the hello (see [`crate::ipc`]). Errors of one
/// connection are logged and end only it.
pub async fn serve<F, Fut>(
    listener: UnixListener,
    service: &'static str,
    handle: F,
) -> io::Result<()>
where
    F: Fn(UnixStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = io::Result<()>> + Send + 'static,
{
    let handle = std::sync::Arc::new(handle);
    let mut connections = tokio::task::JoinSet::new();
    mark_ready();
    loop {
        let accepted = tokio::select! {
            biased;
            () = draining_started() => break,
            accepted = listener.accept() => accepted,
        };
        let mut stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(service, error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        mark_serving();
        let handle = std::sync::Arc::clone(&handle);
        // The hello on the connection's own task: a client that is slow to
        // send it holds up nobody else.
        connections.spawn(async move {
            let greeted = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                crate::ipc::hello_server(&mut stream, service),
            )
            .await;
            match greeted {
                Ok(Ok(())) => {}
                Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return,
                Ok(Err(e)) => return tracing::error!(service, error = %e, "connection refused"),
                Err(_) => return tracing::warn!(service, "a client sent no hello in time"),
            }
            if let Err(e) = handle(stream).await {
                tracing::warn!(service, error = %e, "connection ended with an error");
            }
        });
        while connections.try_join_next().is_some() {}
    }
    // Draining: no new connections; the open ones finish what they are
    // doing (the master kills us at its deadline).
    drop(listener);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// The signal the master sends a daemon it replaces during a reload:
/// finish the work in progress undisturbed, take no new work, then exit.
pub const RETIRE_SIGNAL: nix::sys::signal::Signal = nix::sys::signal::Signal::SIGUSR2;

/// The stream of [`RETIRE_SIGNAL`]s. Create it at start: until it exists
/// the signal's default action would kill the process.
pub fn retire_signal() -> io::Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined2())
}

/// Resolves when the process is asked to stop (SIGTERM or SIGINT).
pub async fn stop_requested() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A successor's socket replaces its predecessor's under the same
    /// name, with the asked permissions and nothing staged left behind.
    #[tokio::test]
    async fn a_successor_takes_over_the_socket_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cleanup.sock");
        let old = bind_socket(&path).unwrap();
        let new = bind_socket_with_mode(&path, 0o660).unwrap();
        let _client = tokio::net::UnixStream::connect(&path).await.unwrap();
        let accepted = tokio::time::timeout(std::time::Duration::from_secs(2), new.accept()).await;
        assert!(accepted.is_ok(), "the new listener gets the connection");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["cleanup.sock"]);
        drop(old);
    }
}
