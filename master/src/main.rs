//! `empath`, the master process: validates the config, prepares the queue,
//! binds the listeners and supervises the daemons.

mod anvil;
mod control;
mod control_socket;
mod http;
mod listeners;
mod modules;
mod privileges;
mod spawn;
mod supervisor;

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
#[command(name = "empath", version, about = "The Empath mail transfer agent")]
struct Args {
    /// The config file.
    #[arg(long, global = true, default_value = config::DEFAULT_PATH)]
    config: PathBuf,
    /// Log output: human, json or syslog. The daemons inherit it.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the config file and exit.
    CheckConfig,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::load(&args.config) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("empath: {error}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    if let Err(message) = modules::check(&config) {
        eprintln!("empath: {message}");
        return ExitCode::from(EX_CONFIG);
    }
    if let Some(Command::CheckConfig) = args.command {
        println!("{}: config OK", config.path.display());
        return ExitCode::SUCCESS;
    }
    if let Err(message) = logging::init(args.log_format, "empath") {
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
        .block_on(supervisor::run(config, queue, settings, bound))
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
