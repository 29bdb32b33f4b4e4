//! Binding the control socket (`public/control.sock` unless
//! `control_socket` says otherwise): mode 0660, group `control_group` or
//! the daemons' group, served by [`crate::control`].

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Instant;

use empath_common::config::Config;
use empath_common::daemon;
use empath_common::queue::Queue;
use tokio::task::JoinHandle;

use crate::control::{self, Control};
use crate::privileges::RunAs;
use crate::supervisor::Status;

/// Starts the control server, or logs why it cannot: mail flows without it.
pub fn start(
    config: &Arc<Config>,
    queue: &Queue,
    started: Instant,
    status: &Arc<Status>,
    run_as: Option<RunAs>,
) -> Option<JoinHandle<()>> {
    let path = control::socket_path(config, queue);
    let listener = match daemon::bind_socket_with_mode(&path, 0o660) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, socket = %path.display(), "cannot bind the control socket; empathctl will not work");
            return None;
        }
    };
    let group = config
        .control_group
        .as_deref()
        .and_then(|name| nix::unistd::Group::from_name(name).ok().flatten())
        .map(|g| g.gid.as_raw())
        .or(run_as.map(|r| r.gid));
    if let Some(gid) = group
        && let Err(error) = std::os::unix::fs::chown(&path, None, Some(gid))
    {
        tracing::warn!(%error, socket = %path.display(), "cannot give the control socket to its group");
    }
    // bind_socket_with_mode set 0660 already; keep it explicit after chown.
    let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660));
    let processes = Arc::clone(status);
    let control = Arc::new(Control {
        config: Config::clone(config),
        queue: queue.clone(),
        started,
        processes: Arc::new(move || processes.processes()),
    });
    Some(tokio::spawn(control.serve(listener)))
}
