//! `mailq`: list the mail queue, Postfix-style.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use empath_common::config::{self, Config};
use empath_common::queue::Queue;
use empath_ctl::mailq;

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
            return ExitCode::from(78);
        }
    };
    let queue = Queue::new(config.spool.path.clone());
    match mailq::read_queue(&queue) {
        Ok(entries) => {
            print!("{}", mailq::render(&entries));
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!(
                "mailq: cannot read the queue in {}: {error}",
                queue.root().display()
            );
            ExitCode::from(75)
        }
    }
}
