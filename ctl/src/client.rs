//! Talking to the control socket, with errors an operator can act on.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use empath_common::config::{self, Config};
use empath_common::control::{ControlEnvelope, ControlRequest, ControlResponse};
use empath_common::ipc;
use empath_common::queue::Queue;

/// How long a command may take before empathctl gives up: a little longer
/// than the master lets the slowest one (a listing of a big queue) take,
/// so that the master's own error arrives first.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(330);
/// How long the master may take to answer the hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a command could not be carried out. Each maps to an exit status.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("daemon not running at {0} (is empath started? see --control-socket)")]
    NotRunning(PathBuf),
    #[error("permission denied on {0}: run as root or as a member of the admin group")]
    PermissionDenied(PathBuf),
    #[error("no answer from {0} within {1:?}")]
    Timeout(PathBuf, Duration),
    #[error("talking to {0}: {1}")]
    Io(PathBuf, io::Error),
}

impl ClientError {
    /// sysexits: 69 unavailable, 77 no permission, 75 temporary failure.
    pub fn exit_status(&self) -> u8 {
        match self {
            Self::NotRunning(_) => 69,
            Self::PermissionDenied(_) => 77,
            Self::Timeout(..) | Self::Io(..) => 75,
        }
    }
}

/// sysexits EX_CONFIG: the config named cannot be used.
pub const EX_CONFIG: u8 = 78;

/// The control socket: `--control-socket`, else `control_socket` from the
/// config, else `public/control.sock` under the configured spool. A config
/// named with `--config` must load: a typo or a missing file is an error,
/// not a silent fall-back to the default socket. Without `--config`, a
/// missing default config means the default spool.
pub fn socket_path(
    explicit: Option<&Path>,
    config_path: Option<&Path>,
) -> Result<PathBuf, config::ConfigError> {
    if let Some(path) = explicit {
        return Ok(path.to_owned());
    }
    let named = config_path.is_some();
    let path = config_path.map_or_else(default_config, Path::to_owned);
    match Config::load(&path) {
        Ok(config) => Ok(config
            .control_socket
            .clone()
            .unwrap_or_else(|| Queue::new(config.spool.path.clone()).public_path("control.sock"))),
        Err(_) if !named && !path.exists() => {
            Ok(PathBuf::from("/var/spool/empath/public/control.sock"))
        }
        Err(error) => Err(error),
    }
}

/// The config the master would read without `--config`: the first of
/// `./empath.config.ron` and `/etc/empath/empath.config.ron` that exists.
pub fn default_config() -> PathBuf {
    config::find_default().unwrap_or_else(|| PathBuf::from(config::DEFAULT_PATH))
}

/// Sends one request and returns the answer.
pub async fn send(
    socket: &Path,
    token: Option<String>,
    request: ControlRequest,
) -> Result<ControlResponse, ClientError> {
    let classify = |e: io::Error| match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
            ClientError::NotRunning(socket.to_owned())
        }
        io::ErrorKind::PermissionDenied => ClientError::PermissionDenied(socket.to_owned()),
        _ => ClientError::Io(socket.to_owned(), e),
    };
    let mut stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(classify)?;
    tokio::time::timeout(
        HELLO_TIMEOUT,
        ipc::hello_client(&mut stream, &socket.display().to_string()),
    )
    .await
    .map_err(|_| ClientError::Timeout(socket.to_owned(), HELLO_TIMEOUT))?
    .map_err(|e| ClientError::Io(socket.to_owned(), e))?;
    let envelope = ControlEnvelope { token, request };
    tokio::time::timeout(REQUEST_TIMEOUT, ipc::call(&mut stream, &envelope))
        .await
        .map_err(|_| ClientError::Timeout(socket.to_owned(), REQUEST_TIMEOUT))?
        .map_err(|e| ClientError::Io(socket.to_owned(), e))
}
