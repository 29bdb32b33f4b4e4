//! The SMTP listening sockets, inherited from the master, and accepting on
//! them. The master binds every listener (it may need root for port 25) and
//! passes them as fds 3, 4, ...: fd 3+i is `smtp_controller.listeners[i]`.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{getsockopt, sockopt};
use tokio::net::TcpListener;

use crate::anvil::AnvilClient;
use crate::connection;
use crate::limits::{Admission, ConnectionLimits, Refused};
use crate::reply;
use crate::settings::Settings;

/// The environment variable that holds the number of inherited listeners.
pub const LISTEN_FDS_VAR: &str = "EMPATH_LISTEN_FDS";
const FIRST_LISTEN_FD: RawFd = 3;

/// Pause after a failed accept (such as EMFILE), so as not to spin.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// How many listeners were inherited, checked against the config.
pub fn listen_fd_count(value: Option<&OsStr>, configured: usize) -> Result<usize, String> {
    let value = value.ok_or_else(|| {
        format!("{LISTEN_FDS_VAR} is not set: empath-smtpd must be started by the empath master")
    })?;
    let count: usize = value
        .to_str()
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("{LISTEN_FDS_VAR}={value:?} is not a number"))?;
    if count == 0 || count != configured {
        return Err(format!(
            "{LISTEN_FDS_VAR}={count}, but the config has {configured} listener(s)"
        ));
    }
    Ok(count)
}

/// Takes ownership of the inherited listeners named by the environment.
pub fn inherit(configured: usize) -> Result<Vec<std::net::TcpListener>, String> {
    let count = listen_fd_count(std::env::var_os(LISTEN_FDS_VAR).as_deref(), configured)?;
    (0..count)
        .map(|index| {
            let fd = RawFd::try_from(index)
                .ok()
                .and_then(|i| FIRST_LISTEN_FD.checked_add(i))
                .ok_or_else(|| format!("listener {index} has no valid fd number"))?;
            take_listener(fd)
        })
        .collect()
}

fn take_listener(fd: RawFd) -> Result<std::net::TcpListener, String> {
    // SAFETY: F_GETFD only asks whether `fd` is open; it touches nothing.
    // Checked first because owning a closed fd is undefined behaviour.
    if unsafe { nix::libc::fcntl(fd, nix::libc::F_GETFD) } < 0 {
        return Err(format!(
            "fd {fd} is not open: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: the fd is open, and the master's contract gives it to this
    // process alone; nothing else in the process uses it.
    let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
    let listening = getsockopt(&listener, sockopt::AcceptConn)
        .map_err(|e| format!("fd {fd} is not a socket: {e}"))?;
    if !listening {
        return Err(format!("fd {fd} is not a listening socket"));
    }
    // tokio needs non-blocking sockets.
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("fd {fd}: {e}"))?;
    Ok(listener)
}

/// How long we try to tell a refused client why.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(5);

/// Accepts connections forever, one session task each, within the
/// connection limits.
pub async fn accept_loop(
    listener: TcpListener,
    settings: Arc<Settings>,
    limits: Arc<ConnectionLimits>,
    anvil: Arc<AnvilClient>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let ip = peer.ip().to_canonical();
                // This process's own count first (no round trip when it is
                // already over), then the whole system's, kept by
                // empath-anvil; exempt clients need only the first.
                let slot = match limits.acquire(ip) {
                    Ok(slot) => slot,
                    Err(refused) => {
                        refuse(stream, client_address(peer), refused, &settings.hostname);
                        continue;
                    }
                };
                let grant = if limits.is_exempt(ip) {
                    None
                } else {
                    match anvil.acquire(ip).await {
                        Ok(grant) => Some(grant),
                        Err(refused) => {
                            refuse(stream, client_address(peer), refused, &settings.hostname);
                            continue;
                        }
                    }
                };
                let admission = Admission::new(slot, grant);
                // Replies are already batched per pipelined group, so Nagle
                // would only add latency.
                let _ = stream.set_nodelay(true);
                let settings = Arc::clone(&settings);
                // Tells the master this smtpd works (no crash loop), once.
                empath_common::daemon::mark_serving();
                let metrics = empath_common::metrics::get();
                metrics.smtp_connections_total.inc();
                tokio::spawn(async move {
                    metrics.smtp_connections_active.inc();
                    connection::serve_admitted(
                        stream,
                        client_address(peer),
                        settings,
                        Some(admission),
                    )
                    .await;
                    metrics.smtp_connections_active.dec();
                });
            }
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(ACCEPT_RETRY).await;
            }
        }
    }
}

/// Answers `421 4.7.0` to a connection over a limit, and closes it.
fn refuse(mut stream: tokio::net::TcpStream, peer: String, refused: Refused, hostname: &str) {
    use tokio::io::AsyncWriteExt;
    let (reply, limit) = match refused {
        Refused::Total => (reply::too_many_connections(hostname), "max_connections"),
        Refused::PerIp => (
            reply::too_many_connections_from_you(hostname),
            "max_connections_per_ip",
        ),
    };
    tracing::warn!(client = %peer, limit, "connection refused: over the limit");
    tokio::spawn(async move {
        let goodbye = async {
            stream.write_all(reply.to_wire().as_bytes()).await?;
            stream.shutdown().await
        };
        let _ = tokio::time::timeout(REFUSAL_TIMEOUT, goodbye).await;
    });
}

/// `ip:port`, with IPv4 clients of a dual-stack socket shown as IPv4.
fn client_address(peer: SocketAddr) -> String {
    SocketAddr::new(peer.ip().to_canonical(), peer.port()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_fd_count_must_match_the_config() {
        assert_eq!(listen_fd_count(Some(OsStr::new("2")), 2), Ok(2));
        for (value, configured) in [(None, 1), (Some("x"), 1), (Some("0"), 0), (Some("2"), 1)] {
            assert!(
                listen_fd_count(value.map(OsStr::new), configured).is_err(),
                "{value:?}"
            );
        }
    }

    #[test]
    fn mapped_ipv4_clients_are_shown_as_ipv4() {
        let mapped: SocketAddr = "[::ffff:192.0.2.1]:2525"
            .parse()
            .unwrap_or_else(|_| unreachable!());
        assert_eq!(client_address(mapped), "192.0.2.1:2525");
        let v6: SocketAddr = "[2001:db8::1]:25"
            .parse()
            .unwrap_or_else(|_| unreachable!());
        assert_eq!(client_address(v6), "[2001:db8::1]:25");
    }
}
