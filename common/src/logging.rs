//! Logging for every Empath process: human-readable lines on a terminal,
//! JSON lines with `--log-format json`, or the local syslog (facility mail)
//! with `--log-format syslog`. The level comes from `RUST_LOG` (default `info`).

use std::io::{self, IsTerminal, Write};
use std::sync::{Arc, Mutex};

use tracing::{Level, Metadata};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

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

/// Installs the global subscriber. `service` names the process in syslog
/// and in every JSON line.
pub fn init(format: LogFormat, service: &'static str) -> Result<(), String> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr);
    let result = match format {
        // The target (e.g. `empath_qmgr::scheduler`) tells which daemon
        // wrote the line, since they all share the master's stderr.
        LogFormat::Human => builder.with_ansi(io::stderr().is_terminal()).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(false)
            .with_current_span(true)
            .try_init(),
        LogFormat::Syslog => {
            let formatter = syslog::Formatter3164 {
                facility: syslog::Facility::LOG_MAIL,
                hostname: None,
                process: service.to_owned(),
                pid: std::process::id(),
            };
            let logger =
                syslog::unix(formatter).map_err(|e| format!("cannot connect to syslog: {e}"))?;
            let filter =
                EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(false)
                .without_time()
                .with_target(false)
                .with_level(false)
                .with_writer(SyslogWriter(Arc::new(Mutex::new(logger))))
                .try_init()
        }
    };
    result.map_err(|e| format!("cannot install logger: {e}"))?;
    tracing::debug!(service, "logging initialised");
    Ok(())
}

type SyslogLogger = syslog::Logger<syslog::LoggerBackend, syslog::Formatter3164>;

#[derive(Clone)]
struct SyslogWriter(Arc<Mutex<SyslogLogger>>);

/// Buffers one formatted event and hands it to syslog at the event's level.
struct SyslogLine {
    logger: Arc<Mutex<SyslogLogger>>,
    level: Level,
    buffer: Vec<u8>,
}

impl Write for SyslogLine {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for SyslogLine {
    fn drop(&mut self) {
        let line = String::from_utf8_lossy(&self.buffer);
        let line = line.trim_end();
        if line.is_empty() {
            return;
        }
        let Ok(mut logger) = self.logger.lock() else {
            return;
        };
        let _ = match self.level {
            Level::ERROR => logger.err(line),
            Level::WARN => logger.warning(line),
            Level::INFO => logger.info(line),
            Level::DEBUG | Level::TRACE => logger.debug(line),
        };
    }
}

impl<'a> MakeWriter<'a> for SyslogWriter {
    type Writer = SyslogLine;
    fn make_writer(&'a self) -> SyslogLine {
        SyslogLine {
            logger: Arc::clone(&self.0),
            level: Level::INFO,
            buffer: Vec::new(),
        }
    }
    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> SyslogLine {
        SyslogLine {
            logger: Arc::clone(&self.0),
            level: *meta.level(),
            buffer: Vec::new(),
        }
    }
}
