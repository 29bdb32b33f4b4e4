//! Where formatted lines go: standard error, or the local syslog socket
//! with standard error as the fall-back.

use std::borrow::Cow;
use std::io::{self, Write};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tracing_subscriber::fmt::MakeWriter;

use super::escape::{Escape, escape};

/// How often a lost syslog socket is tried again; lines in between go to
/// standard error.
const RECONNECT_EVERY: Duration = Duration::from_secs(1);

/// Makes one [`Line`] per event.
#[derive(Clone)]
pub(super) enum Lines {
    Stderr(Escape),
    Syslog(Arc<Syslog>),
}

impl Lines {
    pub fn stderr(escape: Escape) -> Self {
        Self::Stderr(escape)
    }

    pub fn syslog(path: &Path) -> Self {
        Self::Syslog(Arc::new(Syslog::connect(path)))
    }

    /// Why the syslog socket cannot be reached now, if it cannot.
    pub fn syslog_error(&self) -> Option<String> {
        match self {
            Self::Syslog(syslog) => syslog.first_error.clone(),
            Self::Stderr(_) => None,
        }
    }
}

/// The local syslog socket (a Unix datagram socket, as `/dev/log` is for
/// systemd-journald and rsyslog).
pub(super) struct Syslog {
    path: PathBuf,
    socket: Mutex<Connection>,
    first_error: Option<String>,
}

struct Connection {
    socket: Option<UnixDatagram>,
    last_try: Instant,
}

impl Syslog {
    fn connect(path: &Path) -> Self {
        let (socket, first_error) = match open(path) {
            Ok(socket) => (Some(socket), None),
            Err(error) => (
                None,
                Some(format!(
                    "cannot reach syslog at {}: {error}; logging to standard error \
                     until it can be reached",
                    path.display()
                )),
            ),
        };
        Self {
            path: path.to_owned(),
            socket: Mutex::new(Connection {
                socket,
                last_try: Instant::now(),
            }),
            first_error,
        }
    }

    /// Sends one line; false when it could not be sent (the caller then
    /// writes it to standard error). A socket that failed is reopened at
    /// most once per [`RECONNECT_EVERY`] (syslogd restarted, or it
    /// appeared after we started).
    fn send(&self, line: &[u8]) -> bool {
        let mut connection = self.socket.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(socket) = &connection.socket
            && socket.send(line).is_ok()
        {
            return true;
        }
        connection.socket = None;
        if connection.last_try.elapsed() < RECONNECT_EVERY {
            return false;
        }
        connection.last_try = Instant::now();
        match open(&self.path) {
            Ok(socket) => {
                let sent = socket.send(line).is_ok();
                connection.socket = Some(socket);
                sent
            }
            Err(_) => false,
        }
    }
}

fn open(path: &Path) -> io::Result<UnixDatagram> {
    let socket = UnixDatagram::unbound()?;
    socket.connect(path)?;
    Ok(socket)
}

/// One formatted event, buffered until the formatter is done with it and
/// then written whole, so that lines from concurrent threads never mix.
pub(super) struct Line {
    to: Lines,
    buffer: Vec<u8>,
}

impl Write for Line {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.buffer);
        let body = text.strip_suffix('\n').unwrap_or(&text);
        if body.is_empty() {
            return;
        }
        match &self.to {
            Lines::Stderr(how) => match (&text, escape(body, *how)) {
                // Safe as it is, and valid UTF-8: the buffer, newline and
                // all, is the line.
                (Cow::Borrowed(_), Cow::Borrowed(_)) if self.buffer.ends_with(b"\n") => {
                    let _ = io::stderr().lock().write_all(&self.buffer);
                }
                (_, escaped) => write_stderr(&escaped),
            },
            Lines::Syslog(syslog) => {
                let line = escape(body, Escape::Text);
                if !syslog.send(line.as_bytes()) {
                    // What a syslog file would hold, without the priority.
                    let shown = line
                        .strip_prefix('<')
                        .and_then(|rest| rest.split_once('>'))
                        .map_or(&*line, |(_, rest)| rest);
                    write_stderr(shown);
                }
            }
        }
    }
}

fn write_stderr(line: &str) {
    let mut bytes = Vec::with_capacity(line.len() + 1);
    bytes.extend_from_slice(line.as_bytes());
    bytes.push(b'\n');
    let _ = io::stderr().lock().write_all(&bytes);
}

impl<'a> MakeWriter<'a> for Lines {
    type Writer = Line;
    fn make_writer(&'a self) -> Line {
        Line {
            to: self.clone(),
            buffer: Vec::with_capacity(256),
        }
    }
}
