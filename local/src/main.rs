//! `empath-local`: the local delivery agent. Takes jobs for recipients at
//! this host's own domains from qmgr and delivers them: aliases,
//! `~/.forward`, mbox or Maildir mailboxes, commands and files, each as
//! the right user. Run with `--delivery-helper`, it is its own helper
//! process (see `helper`).

mod agent;
mod command;
mod expand;
mod forward;
mod helper;
mod identity;
mod maildir;
mod mbox;
mod message;
mod status;

use std::sync::Arc;

use empath_common::daemon;
use empath_common::protocol;

#[tokio::main]
async fn main() {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|arg| arg == helper::HELPER_ARG)
    {
        helper::main();
    }
    let started = daemon::start("local");
    let agent = match agent::Agent::new(started.config, started.queue) {
        Ok(agent) => Arc::new(agent),
        Err(error) => {
            tracing::error!(%error, "cannot start");
            eprintln!("empath-local: {error}");
            std::process::exit(78);
        }
    };
    let path = agent.queue.private_socket(protocol::LOCAL);
    let listener = match daemon::bind_socket(&path) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, socket = %path.display(), "cannot listen");
            std::process::exit(1);
        }
    };
    // A root agent's socket goes to the daemons' user (the owner of
    // private/), so that qmgr can connect.
    if agent.privileged
        && let Some(private) = path.parent()
        && let Ok(meta) = std::fs::metadata(private)
    {
        use std::os::unix::fs::MetadataExt;
        if let Err(error) = std::os::unix::fs::chown(&path, Some(meta.uid()), Some(meta.gid())) {
            tracing::error!(%error, socket = %path.display(), "cannot give the socket to the daemons' user");
            std::process::exit(1);
        }
    }
    tracing::info!(
        socket = %path.display(),
        domains = ?agent.domains().domains(),
        privileged = agent.privileged,
        "local ready"
    );
    tokio::spawn(daemon::drain_on_stop());
    if let Err(error) = daemon::serve(listener, "local", move |stream| {
        Arc::clone(&agent).connection(stream)
    })
    .await
    {
        tracing::error!(%error, "local stopped");
    }
    tokio::task::block_in_place(empath_common::traces::shutdown);
}
