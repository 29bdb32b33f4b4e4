//! `mailq`: list the mail queue, Postfix-style, for any local user.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use empath_common::config::{self, Config};
use empath_common::queue::Queue;
use empath_ctl::mailq::{self, Printer, ShowqError};

/// sysexits.h statuses.
const EX_UNAVAILABLE: u8 = 69;
const EX_TEMPFAIL: u8 = 75;
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
    let mut printer = Printer::new(io::BufWriter::new(io::stdout().lock()));
    let asked = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(mailq::from_showq(&queue, &mut printer)),
        Err(error) => Err(ShowqError::Refused(format!("cannot start: {error}"))),
    };
    let result = match asked {
        Ok(()) => Ok(()),
        // showq is down or busy, and nothing was printed yet: read the
        // directory, which works for root and the mail system's user.
        Err(why @ (ShowqError::Unavailable(..) | ShowqError::Refused(_))) => {
            match mailq::from_directory(&queue, &mut printer) {
                Ok(()) => Ok(()),
                Err(error) if error.kind() == io::ErrorKind::BrokenPipe => Ok(()),
                Err(error) => {
                    return fail(
                        EX_UNAVAILABLE,
                        &format!(
                            "{why}; and cannot read the queue in {} directly: {error}",
                            queue.root().display()
                        ),
                    );
                }
            }
        }
        Err(ShowqError::Output(error)) if error.kind() == io::ErrorKind::BrokenPipe => {
            return ExitCode::SUCCESS;
        }
        Err(error) => Err(error),
    };
    if let Err(error) = result {
        return fail(EX_TEMPFAIL, &error.to_string());
    }
    match printer.finish().and_then(|mut out| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        // `mailq | head`: the reader has all it wanted.
        Err(error) if error.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(error) => fail(EX_TEMPFAIL, &format!("cannot print the listing: {error}")),
    }
}

fn fail(status: u8, message: &str) -> ExitCode {
    eprintln!("mailq: {message}");
    ExitCode::from(status)
}
