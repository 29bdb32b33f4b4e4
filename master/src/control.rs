//! The control socket: who may use it, the optional token check, the audit
//! log, and where each command goes. System commands are answered here;
//! the read-only queue commands (list, view, stats) go to showq, the other
//! queue commands to qmgr and DNS commands to smtp-out, each on its
//! control socket in `private/`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use empath_common::config::Config;
use empath_common::control::{
    ControlEnvelope, ControlRequest, ControlResponse, DnsCommand, ProcessStatus, QueueCommand,
    SystemCommand, SystemStatus,
};
use empath_common::ipc::{self, read_frame, write_frame};
use empath_common::protocol;
use empath_common::queue::{Queue, lister};
use sha2::{Digest, Sha256};
use tokio::net::{UnixListener, UnixStream};

/// How long a routed command may take in the daemon that carries it out.
const ROUTE_TIMEOUT: Duration = Duration::from_secs(25);
/// How long showq may take over a listing: `queue stats` or an unfiltered
/// `queue list` reads every envelope, about 16 s for a million messages
/// on a 2-core machine (bench/README.md, "Scale"), more when it is busy.
const LISTING_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a command waits for a daemon that is (re)starting.
const DAEMON_START_WAIT: Duration = Duration::from_secs(5);

/// What the control server needs to know about the running system.
pub struct Control {
    pub config: Config,
    pub queue: Queue,
    pub started: Instant,
    /// The supervisor's view of its daemons.
    pub processes: Arc<dyn Fn() -> Vec<ProcessStatus> + Send + Sync>,
}

/// The control socket's path.
pub fn socket_path(config: &Config, queue: &Queue) -> PathBuf {
    config
        .control_socket
        .clone()
        .unwrap_or_else(|| queue.public_path("control.sock"))
}

/// Who is calling, from the kernel (SO_PEERCRED).
#[derive(Debug, Clone)]
struct Caller {
    uid: u32,
    gid: u32,
    user: String,
}

impl Caller {
    fn of(stream: &UnixStream) -> std::io::Result<Self> {
        let credentials = stream.peer_cred()?;
        let (uid, gid) = (credentials.uid(), credentials.gid());
        let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map_or_else(|| uid.to_string(), |u| u.name);
        Ok(Self { uid, gid, user })
    }

    /// Root, the mail system's own user, or a member of the admin group.
    fn is_admin(&self, admin_gid: Option<u32>) -> bool {
        if self.uid == 0 || self.uid == nix::unistd::geteuid().as_raw() {
            return true;
        }
        let Some(admin) = admin_gid else { return false };
        if self.gid == admin {
            return true;
        }
        let Ok(name) = std::ffi::CString::new(self.user.clone()) else {
            return false;
        };
        nix::unistd::getgrouplist(&name, nix::unistd::Gid::from_raw(self.gid))
            .map(|groups| groups.iter().any(|g| g.as_raw() == admin))
            .unwrap_or(false)
    }
}

impl Control {
    pub async fn serve(self: Arc<Self>, listener: UnixListener) {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let control = Arc::clone(&self);
                    tokio::spawn(async move {
                        if let Err(error) = control.connection(stream).await {
                            tracing::debug!(%error, "control connection ended with an error");
                        }
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn connection(&self, mut stream: UnixStream) -> std::io::Result<()> {
        let caller = Caller::of(&stream)?;
        if let Err(error) = ipc::hello_server(&mut stream, "control").await {
            tracing::warn!(user = %caller.user, %error, "control connection refused");
            return Ok(());
        }
        while let Some(envelope) = read_frame::<_, ControlEnvelope>(&mut stream).await? {
            let command = format!("{:?}", envelope.request);
            let response = match self.authorize(&caller, envelope.token.as_deref()) {
                Ok(()) => self.dispatch(envelope.request).await,
                Err(reason) => {
                    tracing::warn!(user = %caller.user, uid = caller.uid, %command, result = "refused", error = %reason, "Control command refused");
                    ControlResponse::Error(reason)
                }
            };
            audit(&caller, &command, &response);
            write_frame(&mut stream, &response).await?;
        }
        Ok(())
    }

    fn authorize(&self, caller: &Caller, token: Option<&str>) -> Result<(), String> {
        let admin_gid = self.config.control_group.as_deref().and_then(group_id);
        if !caller.is_admin(admin_gid) {
            return Err(format!(
                "permission denied: user {} is not an Empath administrator",
                caller.user
            ));
        }
        let auth = &self.config.control_auth;
        if !auth.enabled {
            return Ok(());
        }
        let Some(token) = token else {
            return Err("authentication required: pass --token or set EMPATH_TOKEN".into());
        };
        let digest: String = Sha256::digest(token.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if auth
            .token_hashes
            .iter()
            .any(|hash| hash.eq_ignore_ascii_case(&digest))
        {
            Ok(())
        } else {
            Err("authentication failed: invalid token".into())
        }
    }

    async fn dispatch(&self, request: ControlRequest) -> ControlResponse {
        match request {
            ControlRequest::System(SystemCommand::Ping) => ControlResponse::Pong,
            ControlRequest::System(SystemCommand::Status) => self.status().await,
            ControlRequest::Dns(DnsCommand::ListOverrides) => {
                ControlResponse::Overrides(self.config.delivery.mx_overrides())
            }
            // Read-only: the lister, never qmgr's scheduling loop.
            request @ ControlRequest::Queue(
                QueueCommand::List { .. } | QueueCommand::View { .. } | QueueCommand::Stats,
            ) => {
                self.route(protocol::SHOWQ_CONTROL, "showq", request, LISTING_TIMEOUT)
                    .await
            }
            request @ ControlRequest::Queue(_) => {
                self.route(protocol::QMGR_CONTROL, "qmgr", request, ROUTE_TIMEOUT)
                    .await
            }
            request @ (ControlRequest::Dns(_) | ControlRequest::Tls(_)) => {
                self.route(
                    protocol::SMTP_OUT_CONTROL,
                    "smtp-out",
                    request,
                    ROUTE_TIMEOUT,
                )
                .await
            }
        }
    }

    /// Passes a request to the daemon that carries it out.
    async fn route(
        &self,
        socket: &str,
        daemon: &str,
        request: ControlRequest,
        timeout: Duration,
    ) -> ControlResponse {
        let path = self.queue.private_socket(socket);
        let exchange = async {
            let mut stream = connect_when_up(&path).await?;
            ipc::call::<_, _, ControlResponse>(&mut stream, &request).await
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => ControlResponse::Error(format!("{daemon} is not answering: {error}")),
            Err(_) => ControlResponse::Error(format!("{daemon} did not answer within {timeout:?}")),
        }
    }

    async fn status(&self) -> ControlResponse {
        let queue = self.queue.clone();
        let queue_size = tokio::task::spawn_blocking(move || lister::count(&queue))
            .await
            .ok()
            .and_then(Result::ok)
            .map_or(0, |counts| counts.queued());
        let dns = self
            .route(
                protocol::SMTP_OUT_CONTROL,
                "smtp-out",
                ControlRequest::Dns(DnsCommand::ListCache),
                ROUTE_TIMEOUT,
            )
            .await;
        ControlResponse::Status(SystemStatus {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_secs: self.started.elapsed().as_secs(),
            processes: (self.processes)(),
            queue_size: usize::try_from(queue_size).unwrap_or(usize::MAX),
            dns_cache_entries: match dns {
                ControlResponse::DnsCache(entries) => Some(entries.len()),
                _ => None,
            },
            frozen: Some(lister::frozen(&self.queue)),
        })
    }
}

/// Connects to a daemon's socket, waiting a little for a daemon that is
/// starting or being restarted by the supervisor.
async fn connect_when_up(path: &std::path::Path) -> std::io::Result<UnixStream> {
    let deadline = Instant::now() + DAEMON_START_WAIT;
    loop {
        match ipc::connect(path, Duration::from_secs(2)).await {
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            result => return result,
        }
    }
}

fn group_id(name: &str) -> Option<u32> {
    nix::unistd::Group::from_name(name)
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw())
}

/// One audit line per command: who, what, and how it ended.
fn audit(caller: &Caller, command: &str, response: &ControlResponse) {
    match response {
        ControlResponse::Error(error) => {
            tracing::warn!(user = %caller.user, uid = caller.uid, %command, result = "error", %error, "Control command");
        }
        _ => {
            tracing::info!(user = %caller.user, uid = caller.uid, %command, result = "ok", "Control command")
        }
    }
}
