//! Binding the SMTP listeners and the health listener (the master binds,
//! the daemons accept: smtpd on the SMTP ones, empath-anvil on the health
//! one), and the files in the spool that tell operators and tests what
//! the master is doing.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};

use empath_common::config::Config;
use empath_common::queue::Queue;
use fs2::FileExt;

/// The listeners, bound, in config order.
pub struct Bound {
    pub sockets: Vec<TcpListener>,
    pub addrs: Vec<SocketAddr>,
}

pub fn bind_all(config: &Config) -> Result<Bound, String> {
    let mut bound = Bound {
        sockets: Vec::new(),
        addrs: Vec::new(),
    };
    for listener in &config.smtp_controller.listeners {
        let addr = listener.socket.0;
        let socket =
            TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let local = socket
            .local_addr()
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        tracing::info!(address = %local, "listening for SMTP");
        bound.sockets.push(socket);
        bound.addrs.push(local);
    }
    Ok(bound)
}

/// Binds `health.listen_address` for empath-anvil (the supervisor
/// publishes its address in the spool's `health` file once the daemons
/// are started). `None` when health is disabled, or when it cannot be
/// bound: mail flows without health checks, and the log says so loudly.
pub fn bind_health(config: &Config) -> Option<TcpListener> {
    if !config.health.enabled {
        return None;
    }
    let addr = config.health.listen_address.0;
    let bound = TcpListener::bind(addr).and_then(|socket| {
        let local = socket.local_addr()?;
        Ok((socket, local))
    });
    match bound {
        Ok((socket, local)) => {
            tracing::info!(address = %local, "listening for /health and /metrics (served by empath-anvil)");
            Some(socket)
        }
        Err(error) => {
            tracing::error!(%error, address = %addr, "health.listen_address: cannot listen; health and metrics endpoints are not available");
            None
        }
    }
}

/// Takes the spool lock so that two masters never share one queue. The
/// lock is held for as long as the returned file is open.
pub fn lock_spool(queue: &Queue) -> Result<File, String> {
    let path = queue.root_file("master.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    file.try_lock_exclusive().map_err(|_| {
        let pid = std::fs::read_to_string(queue.root_file("master.pid")).unwrap_or_default();
        format!(
            "another empath master is running on {} (pid {})",
            queue.root().display(),
            pid.trim()
        )
    })?;
    Ok(file)
}

/// Writes `name` under the spool root atomically, so a reader never sees
/// half of it; readable by all (mode 0644). The spool belongs to the
/// daemons' user: the temp file is created exclusively (`O_EXCL` does not
/// follow a symlink planted there) and renamed, so the root master writes
/// nowhere else.
pub fn publish(queue: &Queue, name: &str, contents: &str) -> std::io::Result<()> {
    let tmp = queue.root_file(&format!(".{name}.tmp"));
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    empath_common::safeio::write_then_rename_with_mode(
        &tmp,
        &queue.root_file(name),
        contents.as_bytes(),
        0o644,
    )
}
