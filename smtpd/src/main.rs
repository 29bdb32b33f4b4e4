//! `empath-smtpd`: started by the master with the SMTP listeners inherited
//! as fds 3, 4, ... (see `listeners`).

use std::process::ExitCode;
use std::sync::Arc;

use empath_common::cleanup_client::CleanupConnections;
use empath_common::daemon;
use empath_common::local_recipients::LocalRecipients;
use empath_common::protocol::{ANVIL, CLEANUP};
use empath_smtpd::anvil::AnvilClient;
use empath_smtpd::auth::AuthState;
use empath_smtpd::limits::ConnectionLimits;
use empath_smtpd::listeners;
use empath_smtpd::local::LocalPolicy;
use empath_smtpd::mail_filters::FilterSettings;
use empath_smtpd::relay::RelayPolicy;
use empath_smtpd::settings::Settings;
use empath_smtpd::tls::TlsSlot;

fn main() -> ExitCode {
    let empath_common::daemon::Daemon { config, queue } = daemon::start("smtpd");
    // Loaded once, before any session: a module that cannot be loaded is
    // a config error (EX_CONFIG), reported with its reason. Running
    // without a policy module the operator configured would be worse.
    let modules = match empath_modules::Modules::load_configured(&config.modules) {
        Ok(modules) => Arc::new(modules),
        Err(error) => return fail_with(&format!("cannot load modules: {error}"), EX_CONFIG),
    };
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
    raise_fd_limit();
    // The checks' resolver is built in the runtime it will run in.
    let filters = match runtime.block_on(async { FilterSettings::from_config(&config) }) {
        Ok(filters) => filters,
        Err(error) => {
            return fail_with(
                &format!("cannot set up the authentication checks: {error}"),
                EX_CONFIG,
            );
        }
    };
    let hostname = config.hostname();
    let cleanup = CleanupConnections::kept(queue.private_socket(CLEANUP));
    let relay = Arc::new(RelayPolicy::new(
        &hostname,
        &config.smtpd,
        &config.local_domains(),
    ));
    let local = LocalPolicy::new(LocalRecipients::new(&config));
    let limits = ConnectionLimits::with_exceptions(
        config.smtpd.max_connections,
        config.smtpd.max_connections_per_ip,
        config.smtpd.connection_limit_exceptions().to_vec(),
    );
    let result: Result<(), String> = runtime.block_on(async {
        // Registered before anything else, so that a SIGHUP from the
        // master never finds the default action (which would kill us).
        let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| format!("cannot handle SIGHUP: {e}"))?;
        let mut retire =
            daemon::retire_signal().map_err(|e| format!("cannot handle the retire signal: {e}"))?;
        let anvil = AnvilClient::start(queue.private_socket(ANVIL));
        let auth = AuthState::with_anvil(&config.smtpd.auth, Some(Arc::clone(&anvil)));
        let mut tls_slots = Vec::new();
        let mut accepting = tokio::task::JoinSet::new();
        for (socket, listener) in inherited.into_iter().zip(configured) {
            let socket = tokio::net::TcpListener::from_std(socket)
                .map_err(|e| format!("listener {}: {e}", listener.socket.0))?;
            let address = socket
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| listener.socket.0.to_string());
            tracing::info!(%address, "listening");
            let mut settings = Settings::for_listener(
                hostname.clone(),
                listener,
                &config.smtpd,
                cleanup.clone(),
                Arc::clone(&relay),
                auth.clone(),
                Arc::clone(&modules),
            );
            settings.local = local.clone();
            settings.filters = filters.clone();
            tls_slots.extend(settings.tls.clone());
            accepting.spawn(listeners::accept_loop(
                socket,
                Arc::new(settings),
                Arc::clone(&limits),
                Arc::clone(&anvil),
            ));
        }
        accepting.spawn(reload_on_hangup(hangups, tls_slots, auth));
        daemon::mark_ready();
        let active = &empath_common::metrics::get().smtp_connections_active;
        let sessions_ended = async {
            while active.get() > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        };
        let stop = daemon::stop_requested();
        tokio::pin!(stop);
        tokio::select! {
            () = &mut stop => {}
            _ = retire.recv() => {
                // A reload: a successor serves the listeners already. Ours
                // take no new sessions, and the open ones run to their own
                // end (QUIT, or their timeouts), undisturbed: a client
                // never sees an error because of a reload.
                tracing::info!("retiring: a new smtpd serves; finishing the open sessions");
                accepting.abort_all();
                tokio::select! {
                    () = sessions_ended => return Ok(()),
                    () = &mut stop => {}
                }
            }
        }
        // Stop: no new sessions; idle ones hear 421 at once, busy ones
        // after their current message, for at most shutdown_timeout_secs
        // (the master kills us after that).
        tracing::info!("stopping");
        accepting.abort_all();
        daemon::begin_draining();
        let deadline = std::time::Instant::now()
            + std::time::Duration::from_secs(config.shutdown_timeout_secs);
        while active.get() > 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        Ok(())
    });
    runtime.shutdown_background();
    empath_common::traces::shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => fail(&message),
    }
}

/// SIGHUP: loads the TLS certificates and the AUTH users again. What fails
/// to load is logged, and the old one stays in use.
async fn reload_on_hangup(
    mut hangups: tokio::signal::unix::Signal,
    tls: Vec<Arc<TlsSlot>>,
    auth: Option<Arc<AuthState>>,
) {
    while hangups.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading TLS certificates and AUTH users");
        for slot in &tls {
            slot.reload();
        }
        if let Some(auth) = &auth {
            auth.reload();
        }
    }
}

/// Every connection takes a file descriptor, and the default soft limit
/// (often 1024) would cap the connection count below `max_connections`:
/// raise it to the hard limit.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(error) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(%error, soft, hard, "cannot raise the open file limit");
            }
        }
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "cannot read the open file limit"),
    }
}

/// Exit status for config errors (sysexits EX_CONFIG), as the master's.
const EX_CONFIG: u8 = 78;

/// Logs a fatal error where both the log and an operator at a terminal
/// see it, and exits with status 1.
fn fail(message: &str) -> ExitCode {
    fail_with(message, 1)
}

fn fail_with(message: &str, status: u8) -> ExitCode {
    tracing::error!(error = %message, "empath-smtpd cannot run");
    eprintln!("empath-smtpd: {message}");
    ExitCode::from(status)
}
