//! `mailq`: list the mail queue, Postfix-style, for any local user.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use empath_common::config::{self, Config};
use empath_common::queue::Queue;
use empath_ctl::mailq;

/// sysexits.h: the configuration cannot be used.
const EX_CONFIG: u8 = 78;

#[derive(Debug, Parser)]
#[command(name = "mailq", version, about = "List the Empath mail queue")]
struct Args {
    /// The config file (for the queue directory).
    #[arg(long, short = 'C', default_value = config::DEFAULT_PATH)]
    config: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::load(&args.config) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("mailq: {error}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    let queue = Queue::new(config.spool.path.clone());
    match mailq::print_listing(&queue) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failed) => {
            eprintln!("mailq: {}", failed.message);
            ExitCode::from(failed.status)
        }
    }
}
