//! `empath`, the master process: validates the config, prepares the queue,
//! binds the listeners and supervises the daemons. It parses nothing that
//! a network client or an unprivileged daemon sends: HTTP and connection
//! accounting are empath-anvil's; the master only binds the health
//! listener for it. Its one input besides signals is the control socket,
//! for root and the admin group.

mod control;
mod control_socket;
mod dkim_keys;
mod listeners;
mod modules;
mod privileges;
mod spawn;
mod supervisor;
mod tls_files;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use empath_common::config::{self, Config};
use empath_common::logging::{self, LogFormat};
use empath_common::queue::Queue;

/// Exit status for config errors (sysexits EX_CONFIG).
const EX_CONFIG: u8 = 78;
/// Exit status when the queue cannot be created or written (EX_CANTCREAT).
const EX_CANTCREAT: u8 = 73;
/// Exit status when a listener cannot be bound or a daemon is missing (EX_OSERR).
const EX_OSERR: u8 = 71;

#[derive(Debug, Parser)]
#[command(
    name = "empath",
    version,
    about = "The Empath mail transfer agent",
    after_help = "Without CONFIG or --config, empath reads ./empath.config.ron if it exists, \
                  else /etc/empath/empath.config.ron."
)]
struct Args {
    /// The config file, as the seeds' systemd unit passes it
    /// (`empath /etc/empath/empath.config.ron`).
    #[arg(value_name = "CONFIG", conflicts_with = "config")]
    config_file: Option<PathBuf>,
    /// The config file.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Validate the config and exit (the same as `check-config`).
    #[arg(long, global = true)]
    dry_run: bool,
    /// Log output: human, json or syslog. The daemons inherit it.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the config file (syntax, values, module and TLS files) and exit.
    CheckConfig {
        /// The config file (or --config).
        #[arg(value_name = "CONFIG", conflicts_with = "config")]
        config_file: Option<PathBuf>,
    },
}

impl Args {
    /// The config file named on the command line, in any of its forms.
    fn named_config(&self) -> Option<&PathBuf> {
        let in_subcommand = match &self.command {
            Some(Command::CheckConfig { config_file }) => config_file.as_ref(),
            None => None,
        };
        self.config_file
            .as_ref()
            .or(self.config.as_ref())
            .or(in_subcommand)
    }

    fn check_only(&self) -> bool {
        self.dry_run || matches!(self.command, Some(Command::CheckConfig { .. }))
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let Some(path) = args.named_config().cloned().or_else(config::find_default) else {
        eprintln!(
            "empath: no config file: none named, and neither {} exists",
            config::SEARCH_PATHS.join(" nor ")
        );
        return ExitCode::from(EX_CONFIG);
    };
    let config = match Config::load(&path) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("empath: {error}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    if let Err(message) = modules::check(&config).and_then(|()| dkim_keys::check(&config)) {
        eprintln!("empath: {message}");
        return ExitCode::from(EX_CONFIG);
    }
    if args.check_only() {
        if let Err(message) = tls_files::check(&config) {
            eprintln!("empath: {message}");
            return ExitCode::from(EX_CONFIG);
        }
        println!("{}: config OK", config.path.display());
        return ExitCode::SUCCESS;
    }
    empath_common::metrics::set_daemon("empath");
    if let Err(message) = logging::init(args.log_format, "master", &config.logging) {
        eprintln!("empath: {message}");
    }
    match run(config, args.log_format) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            tracing::error!(error = %failure.message, "empath cannot start");
            eprintln!("empath: {}", failure.message);
            ExitCode::from(failure.status)
        }
    }
}

/// A start-up failure: what to print and the exit status.
struct Failure {
    message: String,
    status: u8,
}

fn run(config: Config, log_format: LogFormat) -> Result<(), Failure> {
    let run_as = privileges::resolve(&config).map_err(|message| Failure {
        message: format!("{}: {message}", config.path.display()),
        status: EX_CONFIG,
    })?;
    let queue = Queue::new(config.spool.path.clone());
    prepare_queue(&queue)?;
    let _lock = listeners::lock_spool(&queue).map_err(|message| Failure {
        message,
        status: EX_CANTCREAT,
    })?;
    migrate_queue(&queue)?;
    if let Some(run_as) = run_as {
        privileges::chown_spool(queue.root(), run_as).map_err(|message| Failure {
            message,
            status: EX_CANTCREAT,
        })?;
        privileges::check_config_readable(&config.path, run_as).map_err(|message| Failure {
            message,
            status: EX_CONFIG,
        })?;
        tracing::info!(
            uid = run_as.uid,
            gid = run_as.gid,
            "the daemons run unprivileged"
        );
    }
    let dir = spawn::DaemonDir::locate(&config).map_err(|message| Failure {
        message,
        status: EX_OSERR,
    })?;
    let bound = listeners::bind_all(&config).map_err(|message| Failure {
        message,
        status: EX_OSERR,
    })?;
    let health = listeners::bind_health(&config);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .build()
        .map_err(|e| Failure {
            message: format!("cannot start runtime: {e}"),
            status: EX_OSERR,
        })?;
    let settings = supervisor::Settings {
        dir,
        log_format,
        run_as,
    };
    runtime
        .block_on(supervisor::run(config, queue, settings, bound, health))
        .map_err(|message| Failure {
            message,
            status: EX_OSERR,
        })
}

/// Moves a spool of the flat layout into the hashed one, under the spool
/// lock and before any daemon runs (before the spool is given to the
/// daemons' user, so that new subdirectories are theirs too).
fn migrate_queue(queue: &Queue) -> Result<(), Failure> {
    let started = std::time::Instant::now();
    let done = queue.migrate().map_err(|e| Failure {
        message: format!(
            "cannot move queue directory {} to the hashed layout (start again to finish): {e}",
            queue.root().display()
        ),
        status: EX_CANTCREAT,
    })?;
    if done.moved + done.set_aside > 0 {
        tracing::info!(
            moved = done.moved,
            set_aside = done.set_aside,
            secs = started.elapsed().as_secs_f64(),
            "queue files moved to the hashed layout"
        );
    }
    Ok(())
}

fn prepare_queue(queue: &Queue) -> Result<(), Failure> {
    let cant = |what: &str, e: std::io::Error| Failure {
        message: format!(
            "cannot {what} queue directory {}: {e}",
            queue.root().display()
        ),
        status: EX_CANTCREAT,
    };
    queue.create_dirs().map_err(|e| cant("create", e))?;
    queue.check_writable().map_err(|e| cant("write to", e))?;
    queue.clear_tmp().map_err(|e| cant("clean", e))
}
