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
    Daemon { config, queue }
}

static DRAINING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Starts a graceful stop: work in progress finishes, new work is refused
/// (smtpd ends each session after its current message).
pub fn begin_draining() {
    DRAINING.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// True once [`begin_draining`] was called.
pub fn draining() -> bool {
    DRAINING.load(std::sync::atomic::Ordering::SeqCst)
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

/// Binds a socket with the given permissions, replacing a stale one.
pub fn bind_socket_with_mode(path: &Path, mode: u32) -> io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(listener)
}

/// Accepts connections on `listener` forever, running `handle` for each on
/// its own task. Errors of one connection are logged and end only it.
pub async fn serve<F, Fut>(
    listener: UnixListener,
    service: &'static str,
    handle: F,
) -> io::Result<()>
where
    F: Fn(UnixStream) -> Fut,
    Fut: Future<Output = io::Result<()>> + Send + 'static,
{
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(service, error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        mark_serving();
        let connection = handle(stream);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(service, error = %e, "connection ended with an error");
            }
        });
    }
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
