//! `empathctl`: operate a running Empath through its control socket.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use empath_auth::keys::Algorithm;
use empath_common::control::{
    ControlRequest, ControlResponse, DnsCommand, ListStatus, QueueCommand, SystemCommand,
    TlsCommand,
};
use empath_common::queue::QueueId;
use empath_ctl::{client, confirm, render};

#[derive(Debug, Parser)]
#[command(name = "empathctl", version, about = "Control a running Empath MTA")]
struct Args {
    /// The control socket (default: control_socket from the config).
    #[arg(long, global = true)]
    control_socket: Option<PathBuf>,
    /// The config file, to find the control socket (default
    /// /etc/empath/empath.config.ron; a file named here must load).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
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
    /// DKIM signing keys (no running Empath needed).
    #[command(subcommand)]
    Dkim(DkimArgs),
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
enum DkimArgs {
    /// Make a signing key for DOMAIN under SELECTOR: writes
    /// DIR/DOMAIN.SELECTOR.pem (mode 0600) and prints the DNS TXT record.
    Keygen {
        domain: String,
        selector: String,
        /// rsa (RSA-SHA256) or ed25519 (Ed25519-SHA256).
        #[arg(long, default_value = "rsa", value_parser = ["rsa", "ed25519"])]
        algorithm: String,
        /// The size of an RSA key.
        #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u64).range(2048..=4096))]
        bits: u64,
        /// Where to write the key file.
        #[arg(long, default_value = ".")]
        output_dir: PathBuf,
        /// Replace an existing key file.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
enum QueueArgs {
    /// List queued messages.
    List {
        /// pending, active (also: in-progress), retry, held or failed.
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
    /// Delete a message from the queue (asks first on a terminal).
    Delete {
        id: QueueId,
        /// Delete without asking (for scripts; required without a terminal).
        #[arg(long, short = 'y')]
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

/// The statuses `queue list --status` takes: ours, and the seeds'.
/// `in-progress` is our `active`; `completed` and `expired` have no
/// equivalent in a queue that only holds undelivered mail, so they are
/// refused with what to use instead.
fn parse_status(text: &str) -> Result<ListStatus, String> {
    if let Some(status) = ListStatus::parse(text) {
        return Ok(status);
    }
    match text.to_ascii_lowercase().replace('_', "-").as_str() {
        "in-progress" => Ok(ListStatus::Active),
        "completed" => Err(
            "Empath keeps no `completed` messages: a message leaves the queue \
             as soon as every recipient is delivered or bounced (see the `delivered` log lines); \
             `active` lists the ones being delivered now"
                .to_owned(),
        ),
        "expired" => Err("Empath keeps no `expired` messages: a message older than \
             delivery.max_queue_lifetime_secs is bounced at once and leaves the queue; \
             until its bounce is sent it is listed as `failed`, and `retry` lists the ones \
             still waiting"
            .to_owned()),
        _ => {
            let names: Vec<&str> = ListStatus::ALL.iter().map(|s| s.name()).collect();
            Err(format!(
                "unknown status {text:?}; expected one of {} (or in-progress, the same as active)",
                names.join(", ")
            ))
        }
    }
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
                if !yes && !confirm::ask(&format!("Delete message {id} from the queue?"))? {
                    return Err(format!("{id} not deleted"));
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
        Group::Dkim(_) => return Err("dkim commands work without the control socket".to_owned()),
        Group::Tls(TlsArgs::Policy { domain }) => ControlRequest::Tls(TlsCommand::Policy {
            domain: domain.clone(),
        }),
    })
}

/// `empathctl dkim ...`: local work, no control socket.
fn dkim(command: &DkimArgs, json: bool) -> ExitCode {
    let DkimArgs::Keygen {
        domain,
        selector,
        algorithm,
        bits,
        output_dir,
        force,
    } = command;
    let algorithm = match algorithm.as_str() {
        "ed25519" => Algorithm::Ed25519,
        _ => Algorithm::Rsa {
            bits: usize::try_from(*bits).unwrap_or(2048),
        },
    };
    match empath_ctl::dkim::keygen(domain, selector, algorithm, output_dir, *force) {
        Ok(generated) if json => match serde_json::to_string_pretty(&generated) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("empathctl: {error}");
                ExitCode::FAILURE
            }
        },
        Ok(generated) => {
            print!("{}", empath_ctl::dkim::render(&generated));
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("empathctl: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `--help` and `--version` exit 0; a usage error exits 64 (EX_USAGE), as
/// empathctl(8) says, rather than clap's 2.
fn usage_error(error: &clap::Error) -> ExitCode {
    let _ = error.print();
    if error.use_stderr() {
        ExitCode::from(64)
    } else {
        ExitCode::SUCCESS
    }
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
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(error) => return usage_error(&error),
    };
    if let Group::Dkim(command) = &args.group {
        return dkim(command, args.json);
    }
    let request = match request_for(&args.group) {
        Ok(request) => request,
        Err(message) => {
            eprintln!("empathctl: {message}");
            return ExitCode::from(64);
        }
    };
    let socket = match client::socket_path(args.control_socket.as_deref(), args.config.as_deref()) {
        Ok(socket) => socket,
        Err(error) => {
            eprintln!("empathctl: {error}");
            return ExitCode::from(client::EX_CONFIG);
        }
    };
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
