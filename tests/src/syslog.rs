//! A local syslog socket for the tests: binds a Unix datagram socket, as
//! `/dev/log` is, and keeps every line the daemons send to it
//! (`logging.syslog_socket` in the config points there).

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

pub struct SyslogSocket {
    path: PathBuf,
    lines: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl SyslogSocket {
    /// Binds `path` and starts reading datagrams.
    pub fn bind(path: &Path) -> Self {
        let _ = std::fs::remove_file(path);
        let socket = UnixDatagram::bind(path)
            .unwrap_or_else(|e| panic!("bind the syslog socket {}: {e}", path.display()));
        // The daemons may run as another user.
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666));
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("set a read timeout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (kept, stopping) = (Arc::clone(&lines), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut buffer = vec![0u8; 64 * 1024];
            while !stopping.load(Ordering::Relaxed) {
                if let Ok(read) = socket.recv(&mut buffer) {
                    let line = String::from_utf8_lossy(&buffer[..read]).into_owned();
                    kept.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(line);
                }
            }
        });
        Self {
            path: path.to_owned(),
            lines,
            stop,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The datagrams received so far, as sent (`<PRI>TIMESTAMP TAG: text`).
    pub fn lines(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The lines as a syslog daemon writes them to a file
    /// (`TIMESTAMP HOST TAG: text`, rsyslog's default file format): the
    /// priority goes, the host name comes after the timestamp.
    pub fn as_log_file(&self, host: &str) -> String {
        let mut file = String::new();
        for line in self.lines() {
            let Some(rest) = line.strip_prefix('<').and_then(|l| l.split_once('>')) else {
                continue;
            };
            let text = rest.1;
            // `Mmm dd hh:mm:ss` is 15 characters.
            if text.len() < 16 {
                continue;
            }
            let (stamp, tail) = text.split_at(15);
            file.push_str(stamp);
            file.push(' ');
            file.push_str(host);
            file.push_str(tail);
            file.push('\n');
        }
        file
    }
}

impl Drop for SyslogSocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
