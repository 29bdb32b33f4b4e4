//! Logging for every Empath process: human-readable lines on a terminal,
//! JSON lines with `--log-format json`, or the local syslog (facility mail)
//! with `--log-format syslog`. The level comes from `RUST_LOG` (default `info`).

use std::borrow::Cow;
use std::io::{self, Write};
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
    // No colours: every control character in a line is escaped (see
    // `escape`), ours included.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false);
    let result = match format {
        // The target (e.g. `empath_qmgr::scheduler`) tells which daemon
        // wrote the line, since they all share the master's stderr.
        LogFormat::Human => builder.with_writer(StderrLines(Escape::Text)).try_init(),
        LogFormat::Json => builder
            .with_writer(StderrLines(Escape::Json))
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
        let line = escape(line.trim_end(), Escape::Text);
        if line.is_empty() {
            return;
        }
        let Ok(mut logger) = self.logger.lock() else {
            return;
        };
        let _ = match self.level {
            Level::ERROR => logger.err(&*line),
            Level::WARN => logger.warning(&*line),
            Level::INFO => logger.info(&*line),
            Level::DEBUG | Level::TRACE => logger.debug(&*line),
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

/// How a log line is made safe: client input (a HELO, an address, an AUTH
/// name, a remote server's reply, a header) must never split a line in
/// two, forge another one, or reach an operator's terminal as a control
/// sequence. Every line is escaped once, whole, after formatting, so no
/// field can be forgotten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    /// `\r`, `\n`, `\t`, `\x1b` and `\u{...}`: for text lines.
    Text,
    /// `\u001b` and so on: the only raw characters a JSON line can hold are
    /// inside its strings, where these are valid escapes.
    Json,
}

/// Characters that a terminal or a log reader may act on: C0 and C1
/// controls, DEL, the Unicode line and paragraph separators, and the
/// bidirectional overrides that reorder what a reader sees.
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Escapes the unsafe characters of one log line (without its newline).
pub fn escape(line: &str, how: Escape) -> Cow<'_, str> {
    if !line.chars().any(is_unsafe) {
        return Cow::Borrowed(line);
    }
    let mut out = String::with_capacity(line.len() + 16);
    for c in line.chars() {
        if !is_unsafe(c) {
            out.push(c);
            continue;
        }
        match (how, c) {
            (Escape::Text, '\r') => out.push_str("\\r"),
            (Escape::Text, '\n') => out.push_str("\\n"),
            (Escape::Text, '\t') => out.push_str("\\t"),
            (Escape::Text, c) if (c as u32) < 0x100 => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            (Escape::Text, c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            (Escape::Json, c) => out.push_str(&format!("\\u{:04x}", c as u32)),
        }
    }
    Cow::Owned(out)
}

/// Writes each formatted event to stderr as one escaped line, in one
/// write, so lines from concurrent threads never interleave.
#[derive(Debug, Clone, Copy)]
struct StderrLines(Escape);

struct StderrLine {
    escape: Escape,
    buffer: Vec<u8>,
}

impl Write for StderrLine {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for StderrLine {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.buffer);
        let body = text.strip_suffix('\n').unwrap_or(&text);
        if body.is_empty() {
            return;
        }
        let mut line = escape(body, self.escape).into_owned();
        line.push('\n');
        let _ = io::stderr().lock().write_all(line.as_bytes());
    }
}

impl<'a> MakeWriter<'a> for StderrLines {
    type Writer = StderrLine;
    fn make_writer(&'a self) -> StderrLine {
        StderrLine {
            escape: self.0,
            buffer: Vec::with_capacity(256),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_a_client_sends_can_split_or_colour_a_line() {
        let forged =
            "admin\r\n2026-01-01 INFO authenticated user=admin\x1b[31m\u{9b}31m\u{2028}\u{202e}";
        let text = escape(forged, Escape::Text);
        assert!(!text.chars().any(is_unsafe), "{text}");
        assert_eq!(
            text,
            "admin\\r\\n2026-01-01 INFO authenticated user=admin\\x1b[31m\\x9b31m\\u{2028}\\u{202e}"
        );
        let json = escape(forged, Escape::Json);
        assert!(!json.chars().any(is_unsafe), "{json}");
        assert!(json.contains("\\u001b[31m\\u009b"), "{json}");
        assert_eq!(escape("plain text", Escape::Text), "plain text");
    }
}
