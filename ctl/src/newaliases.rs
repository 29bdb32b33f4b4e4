//! `newaliases` (and `sendmail -bi`): compiles every alias file of
//! `local_delivery.alias_maps` into its index, `FILE.cdb`. The running
//! daemons notice the new index at their next lookup; nothing needs a
//! restart or a signal.

use std::path::PathBuf;

use empath_common::aliases;
use empath_common::config::Config;

/// One alias file compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compiled {
    pub source: PathBuf,
    pub index: PathBuf,
    pub aliases: usize,
}

/// Compiles every alias map. Every file is tried; the errors (each naming
/// the file and line) are returned together, and a file with errors keeps
/// its old index.
pub fn rebuild(config: &Config) -> Result<Vec<Compiled>, Vec<String>> {
    let mut compiled = Vec::new();
    let mut errors = Vec::new();
    for source in &config.local_delivery.alias_maps {
        match aliases::compile(source) {
            Ok(count) => compiled.push(Compiled {
                source: source.clone(),
                index: aliases::index_path(source),
                aliases: count,
            }),
            Err(error) => errors.push(error.to_string()),
        }
    }
    if errors.is_empty() {
        Ok(compiled)
    } else {
        Err(errors)
    }
}

/// Runs `newaliases` with the config at `path`: prints what it compiled
/// (like Postfix: `newaliases: /etc/aliases: 12 aliases`) and returns the
/// exit status.
pub fn run(config_path: &std::path::Path, program: &str) -> std::process::ExitCode {
    let config = match Config::load(config_path) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{program}: {error}");
            return std::process::ExitCode::from(78);
        }
    };
    if config.local_delivery.alias_maps.is_empty() {
        eprintln!("{program}: local_delivery.alias_maps is empty: no alias files to compile");
        return std::process::ExitCode::SUCCESS;
    }
    match rebuild(&config) {
        Ok(compiled) => {
            for file in compiled {
                println!(
                    "{program}: {}: {} aliases",
                    file.source.display(),
                    file.aliases
                );
            }
            std::process::ExitCode::SUCCESS
        }
        Err(errors) => {
            for error in errors {
                eprintln!("{program}: {error}");
            }
            std::process::ExitCode::from(1)
        }
    }
}
