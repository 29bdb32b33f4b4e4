//! Moving snapshots between processes: each daemon answers on its own
//! socket `private/metrics/<service>.<pid>.sock` with one frame (a 4-byte
//! big-endian length and a postcard [`Snapshot`], the framing of
//! [`crate::ipc`]); the master connects to every socket there per scrape.
//!
//! Plain threads and blocking sockets: this must keep working whatever a
//! daemon's async runtime is busy with, and costs one idle thread.

use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Snapshot;
use crate::ipc::MAX_FRAME;
use crate::queue::Queue;

/// The directory of the metrics sockets.
pub fn socket_dir(queue: &Queue) -> PathBuf {
    // `private/metrics.sock` without its extension: `private/metrics/`.
    queue.private_socket("metrics").with_extension("")
}

/// Starts answering snapshot requests for this process in the background.
/// A failure is logged: a daemon works without metrics.
pub fn serve(queue: &Queue, service: &str) {
    let dir = socket_dir(queue);
    let path = dir.join(format!("{service}.{}.sock", std::process::id()));
    let bound = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .and_then(|()| {
            let _ = std::fs::remove_file(&path);
            let listener = UnixListener::bind(&path)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            Ok(listener)
        });
    let listener = match bound {
        Ok(listener) => listener,
        Err(error) => {
            tracing::warn!(%error, socket = %path.display(), "cannot export metrics");
            return;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(mut stream) => {
                        let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
                        if let Err(error) = write_snapshot(&mut stream, &super::get().snapshot()) {
                            tracing::debug!(%error, "metrics request ended with an error");
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "metrics socket accept failed");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot start the metrics thread");
    }
}

fn write_snapshot(stream: &mut UnixStream, snapshot: &Snapshot) -> io::Result<()> {
    let payload =
        postcard::to_stdvec(snapshot).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let length = u32::try_from(payload.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "snapshot too large"))?;
    stream.write_all(&length.to_be_bytes())?;
    stream.write_all(&payload)?;
    stream.flush()
}

fn read_snapshot(stream: &mut UnixStream) -> io::Result<Snapshot> {
    let mut header = [0u8; 4];
    stream.read_exact(&mut header)?;
    let length = u32::from_be_bytes(header) as usize;
    if length > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("snapshot of {length} bytes exceeds the limit"),
        ));
    }
    let mut payload = vec![0u8; length];
    stream.read_exact(&mut payload)?;
    postcard::from_bytes(&payload).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Asks one daemon for its snapshot.
pub fn fetch(path: &Path, timeout: Duration) -> io::Result<Snapshot> {
    let mut stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(timeout))?;
    read_snapshot(&mut stream)
}

/// The snapshots of every daemon that answers within `timeout` each.
/// Sockets nobody listens on any more (their daemon died) are removed.
pub fn scrape(queue: &Queue, timeout: Duration) -> Vec<Snapshot> {
    let Ok(entries) = std::fs::read_dir(socket_dir(queue)) else {
        return Vec::new();
    };
    let mut snapshots = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|ext| ext != "sock") {
            continue;
        }
        match fetch(&path, timeout) {
            Ok(snapshot) => snapshots.push(snapshot),
            Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => {
                let _ = std::fs::remove_file(&path);
            }
            Err(error) => {
                tracing::debug!(%error, socket = %path.display(), "no metrics from a daemon");
            }
        }
    }
    snapshots
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_served_snapshot_is_scraped_and_stale_sockets_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::new(dir.path());
        std::fs::create_dir_all(dir.path().join("private")).unwrap();
        serve(&queue, "unit");
        super::super::get().smtp_messages_received_total.inc();
        let stale = socket_dir(&queue).join("gone.1.sock");
        drop(UnixListener::bind(&stale).unwrap());
        let snapshots = scrape(&queue, Duration::from_secs(2));
        assert_eq!(snapshots.len(), 1);
        assert!(
            snapshots[0]
                .families
                .iter()
                .any(|f| f.name == "empath_smtp_messages_received_total")
        );
        assert!(!stale.exists(), "stale socket removed");
    }
}
