//! `newaliases`: compiles the alias files of the config into the indexes
//! that Empath reads (see newaliases(8)).

use std::path::PathBuf;
use std::process::ExitCode;

use empath_common::config;

fn main() -> ExitCode {
    let mut config = PathBuf::from(config::DEFAULT_PATH);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-C" | "--config" => match args.next() {
                Some(path) => config = PathBuf::from(path),
                None => return usage(&format!("option {arg} needs a value")),
            },
            _ if arg.starts_with("-C") => config = PathBuf::from(&arg[2..]),
            _ if arg.starts_with("--config=") => config = PathBuf::from(&arg["--config=".len()..]),
            "--version" => {
                println!("newaliases {} (Empath)", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            "-h" | "--help" => {
                println!("usage: newaliases [-C CONFIG]");
                return ExitCode::SUCCESS;
            }
            // sendmail-compatible options (-oA..., -v) are accepted and ignored.
            _ if arg.starts_with("-o") || arg == "-v" => {}
            _ => return usage(&format!("unknown argument {arg}")),
        }
    }
    empath_ctl::newaliases::run(&config, "newaliases")
}

fn usage(message: &str) -> ExitCode {
    eprintln!("newaliases: {message}\nusage: newaliases [-C CONFIG]");
    ExitCode::from(64)
}
