//! `empathctl`: operate a running Empath through its control socket.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use empath_common::control::{
    ControlRequest, ControlResponse, DnsCommand, ListStatus, QueueCommand, SystemCommand,
    TlsCommand,
};
use empath_common::queue::QueueId;
use empath_ctl::{client, render};

#[derive(Debug, Parser)]
#[command(name = "empathctl", version, about = "Control a running Empath MTA")]
struct Args {
    /// The control socket (default: control_socket from the config).
    #[arg(long, global = true)]
    control_socket: Option<PathBuf>,
    /// The config file, to find the control socket.
    #[arg(long, global = true, default_value_os_t = client::default_config())]
    config: PathBuf,
    /// Bearer token for control_auth (default: $EMPATH_TOKEN).
    #[arg(long, global = true, env = "EMPATH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    group: Group,
}

#[derive(Debug, Subcommand)]
enum Group {
    /// Inspect and manage the mail queue.
    #[command(subcommand)]
    Queue(QueueArgs),
    /// Health and status of the running system.
    #[command(subcommand)]
    System(SystemArgs),
    /// The DNS cache of the delivery agent.
    #[command(subcommand)]
    Dns(DnsArgs),
    /// Outbound TLS: DANE, MTA-STS and the configured level.
    #[command(subcommand)]
    Tls(TlsArgs),
}

#[derive(Debug, Subcommand)]
enum TlsArgs {
    /// Which TLS policy applies to a domain's MX hosts, and why.
    Policy { domain: String },
}

#[derive(Debug, Subcommand)]
enum QueueArgs {
    /// List queued messages.
    List {
        /// pending, active, retry, held or failed.
        #[arg(long, value_parser = parse_status)]
        status: Option<ListStatus>,
        /// Only messages with recipients in this domain.
        #[arg(long)]
        domain: Option<String>,
        /// At most this many messages (oldest first).
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Show one message: envelope, recipients, last error, headers, body preview.
    View { id: QueueId },
    /// Delete a message from the queue.
    Delete {
        id: QueueId,
        /// Confirm the deletion.
        #[arg(long)]
        yes: bool,
    },
    /// Retry a deferred message now.
    Retry {
        id: QueueId,
        /// Also release a held message.
        #[arg(long)]
        force: bool,
    },
    /// Stop all delivery (mail is still accepted and queued).
    Freeze,
    /// Resume delivery.
    Unfreeze,
    /// Counts by status and domain, and the oldest message's age.
    Stats {
        /// Refresh until interrupted.
        #[arg(long)]
        watch: bool,
        /// Seconds between refreshes with --watch.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..))]
        interval: u64,
    },
    /// Make every deferred message due now.
    ProcessNow,
}

#[derive(Debug, Subcommand)]
enum SystemArgs {
    /// Check that the master answers.
    Ping,
    /// Version, uptime, processes, queue size, DNS cache size.
    Status,
}

#[derive(Debug, Subcommand)]
enum DnsArgs {
    /// List cached MX answers with their remaining TTL.
    ListCache,
    /// Empty the DNS cache.
    ClearCache,
    /// Look a domain up again now.
    Refresh { domain: String },
    /// List the configured mx_override routes.
    ListOverrides,
}

fn parse_status(text: &str) -> Result<ListStatus, String> {
    ListStatus::parse(text).ok_or_else(|| {
        let names: Vec<&str> = ListStatus::ALL.iter().map(|s| s.name()).collect();
        format!(
            "unknown status {text:?}; expected one of {}",
            names.join(", ")
        )
    })
}

fn request_for(group: &Group) -> Result<ControlRequest, String> {
    Ok(match group {
        Group::Queue(queue) => ControlRequest::Queue(match queue {
            QueueArgs::List {
                status,
                domain,
                limit,
            } => QueueCommand::List {
                status: *status,
                domain: domain.clone(),
                limit: *limit,
            },
            QueueArgs::View { id } => QueueCommand::View { id: *id },
            QueueArgs::Delete { id, yes } => {
                if !yes {
                    return Err(format!("refusing to delete {id} without --yes"));
                }
                QueueCommand::Delete { id: *id }
            }
            QueueArgs::Retry { id, force } => QueueCommand::Retry {
                id: *id,
                force: *force,
            },
            QueueArgs::Freeze => QueueCommand::Freeze,
            QueueArgs::Unfreeze => QueueCommand::Unfreeze,
            QueueArgs::Stats { .. } => QueueCommand::Stats,
            QueueArgs::ProcessNow => QueueCommand::ProcessNow,
        }),
        Group::System(SystemArgs::Ping) => ControlRequest::System(SystemCommand::Ping),
        Group::System(SystemArgs::Status) => ControlRequest::System(SystemCommand::Status),
        Group::Dns(dns) => ControlRequest::Dns(match dns {
            DnsArgs::ListCache => DnsCommand::ListCache,
            DnsArgs::ClearCache => DnsCommand::ClearCache,
            DnsArgs::Refresh { domain } => DnsCommand::Refresh {
                domain: domain.clone(),
            },
            DnsArgs::ListOverrides => DnsCommand::ListOverrides,
        }),
        Group::Tls(TlsArgs::Policy { domain }) => ControlRequest::Tls(TlsCommand::Policy {
            domain: domain.clone(),
        }),
    })
}

/// Prints a response; returns false for an error response.
fn print(response: &ControlResponse, json: bool) -> bool {
    if json {
        match serde_json::to_string_pretty(response) {
            Ok(text) => println!("{text}"),
            Err(error) => eprintln!("empathctl: cannot encode the answer: {error}"),
        }
        return !matches!(response, ControlResponse::Error(_));
    }
    match response {
        ControlResponse::Pong => println!("pong"),
        ControlResponse::Done(what) => println!("{what}"),
        ControlResponse::Error(error) => {
            eprintln!("empathctl: {error}");
            return false;
        }
        ControlResponse::QueueList(entries) => print!("{}", render::queue_list(entries)),
        ControlResponse::Message(view) => print!("{}", render::message(view)),
        ControlResponse::Stats(stats) => print!("{}", render::stats(stats)),
        ControlResponse::Status(status) => print!("{}", render::status(status)),
        ControlResponse::DnsCache(entries) => print!("{}", render::dns_cache(entries)),
        ControlResponse::Overrides(overrides) => print!("{}", render::overrides(overrides)),
        ControlResponse::TlsPolicy(view) => print!("{}", render::tls_policy(view)),
    }
    true
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    let request = match request_for(&args.group) {
        Ok(request) => request,
        Err(message) => {
            eprintln!("empathctl: {message}");
            return ExitCode::from(64);
        }
    };
    let socket = client::socket_path(args.control_socket.as_deref(), &args.config);
    let watch = match args.group {
        Group::Queue(QueueArgs::Stats {
            watch: true,
            interval,
        }) => Some(Duration::from_secs(interval)),
        _ => None,
    };
    loop {
        let response = match client::send(&socket, args.token.clone(), request.clone()).await {
            Ok(response) => response,
            Err(error) => {
                eprintln!("empathctl: {error}");
                return ExitCode::from(error.exit_status());
            }
        };
        if watch.is_some() && !args.json {
            // Clear the screen between refreshes, like watch(1).
            print!("\x1b[2J\x1b[H");
        }
        if !print(&response, args.json) {
            return ExitCode::FAILURE;
        }
        let Some(interval) = watch else {
            return ExitCode::SUCCESS;
        };
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
        }
    }
}
