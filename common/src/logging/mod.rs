//! Logging for every Empath process, in one of three formats:
//!
//! - `human`: one line per event on standard error, for a terminal;
//! - `json`: one JSON object per line on standard error, with the fields
//!   the seeds' log queries use (`fields.message_id`, `fields.domain`,
//!   `fields.component`, ...), for Loki and jq;
//! - `syslog`: RFC 3164 datagrams to the local syslog socket (facility
//!   mail, tag `empath/smtpd` and so on), with the mail events written as
//!   Postfix writes them (`QUEUEID: to=<...>, relay=..., delay=...,
//!   delays=a/b/c/d, dsn=..., status=sent (...)`), so that pflogsumm and
//!   fail2ban read them. When the socket cannot be reached, the lines go
//!   to standard error: a log line is never dropped.
//!
//! The level comes from `RUST_LOG`, else `LOG_LEVEL` (the seeds' legacy
//! name), else `logging.level` in the config (default `info`). Every line
//! is escaped after formatting (see [`escape`]), in every format.

mod escape;
mod format;
mod sink;

use tracing_subscriber::EnvFilter;

use crate::config::Logging;

pub use escape::{Escape, escape};
pub use format::{COMPONENT_FIELD, POSTFIX_FIELD, PROGRAM_FIELD};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Human,
    Json,
    Syslog,
}

impl LogFormat {
    pub fn as_arg(self) -> &'static str {
        match self {
            Self::Human => "human",
            Self::Json => "json",
            Self::Syslog => "syslog",
        }
    }
}

/// The environment variables that set the level, strongest first.
const LEVEL_VARIABLES: [&str; 2] = ["RUST_LOG", "LOG_LEVEL"];

/// The level filter: `RUST_LOG`, else `LOG_LEVEL`, else the config's.
/// A variable that does not parse is reported and skipped.
fn level_filter(configured: &str) -> (EnvFilter, Option<String>) {
    let mut complaint = None;
    for variable in LEVEL_VARIABLES {
        let Ok(value) = std::env::var(variable) else {
            continue;
        };
        if value.trim().is_empty() {
            continue;
        }
        match EnvFilter::try_new(value.trim()) {
            Ok(filter) => return (filter, complaint),
            Err(error) => {
                complaint.get_or_insert(format!("ignoring {variable}={value:?}: {error}"));
            }
        }
    }
    match EnvFilter::try_new(configured) {
        Ok(filter) => (filter, complaint),
        Err(error) => (
            EnvFilter::new("info"),
            Some(format!(
                "ignoring logging.level {configured:?}: {error}; logging at info"
            )),
        ),
    }
}

/// What a daemon is called in component fields: the seeds' names.
fn component_of(service: &str) -> &'static str {
    match service {
        "smtpd" => "smtp",
        "cleanup" => "spool",
        "qmgr" | "smtp-out" | "local" | "bounce" => "delivery",
        "master" => "master",
        _ => "tool",
    }
}

/// Installs the global subscriber. `service` names the process: `smtpd`,
/// `qmgr`, ... and `master` for `empath` itself. Returns a warning to show
/// (once, on standard error) when something was not as configured; the
/// logger is installed all the same.
pub fn init(format: LogFormat, service: &'static str, config: &Logging) -> Result<(), String> {
    let (filter, complaint) = level_filter(&config.level);
    let style = format::Style {
        format,
        service,
        component: component_of(service),
        syslog_name: config.syslog_name.clone(),
        pid: std::process::id(),
    };
    let writer = match format {
        LogFormat::Syslog => sink::Lines::syslog(&config.syslog_socket),
        LogFormat::Human => sink::Lines::stderr(Escape::Text),
        LogFormat::Json => sink::Lines::stderr(Escape::Json),
    };
    let unreachable = writer.syslog_error();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .event_format(style)
        .with_writer(writer)
        .try_init()
        .map_err(|e| format!("cannot install logger: {e}"))?;
    tracing::debug!(service, "logging initialised");
    match (complaint, unreachable) {
        (None, None) => Ok(()),
        (complaint, unreachable) => Err([complaint, unreachable]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join("; ")),
    }
}
