//! `empath-smtpd`: started by the master with the SMTP listeners inherited
//! as fds 3, 4, ... (see `listeners`).

use std::process::ExitCode;
use std::sync::Arc;

use empath_common::daemon;
use empath_common::protocol::CLEANUP;
use empath_smtpd::listeners;
use empath_smtpd::settings::Settings;

fn main() -> ExitCode {
    let empath_common::daemon::Daemon { config, queue } = daemon::start("smtpd");
    let configured = &config.smtp_controller.listeners;
    let inherited = match listeners::inherit(configured.len()) {
        Ok(inherited) => inherited,
        Err(message) => return fail(&message),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return fail(&format!("cannot start the async runtime: {error}")),
    };
    let hostname = config.hostname();
    let cleanup_socket = queue.private_socket(CLEANUP);
    let result: Result<(), String> = runtime.block_on(async {
        let mut accepting = tokio::task::JoinSet::new();
        for (socket, listener) in inherited.into_iter().zip(configured) {
            let socket = tokio::net::TcpListener::from_std(socket)
                .map_err(|e| format!("listener {}: {e}", listener.socket.0))?;
            let address = socket
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| listener.socket.0.to_string());
            tracing::info!(%address, "listening");
            let settings =
                Settings::for_listener(hostname.clone(), listener, cleanup_socket.clone());
            accepting.spawn(listeners::accept_loop(socket, Arc::new(settings)));
        }
        daemon::stop_requested().await;
        // Stop accepting. Sessions still running end with the process.
        tracing::info!("stopping");
        accepting.abort_all();
        Ok(())
    });
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => fail(&message),
    }
}

/// Logs a fatal error where both the log and an operator at a terminal
/// see it, and exits with status 1.
fn fail(message: &str) -> ExitCode {
    tracing::error!(error = %message, "empath-smtpd cannot run");
    eprintln!("empath-smtpd: {message}");
    ExitCode::from(1)
}
