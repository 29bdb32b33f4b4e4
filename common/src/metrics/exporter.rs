//! Moving snapshots between processes: each daemon answers on its own
//! socket `private/metrics/<service>.<pid>.sock` with two frames (each a
//! 4-byte big-endian length and a postcard value, the framing of
//! [`crate::ipc`]): its [`Hello`], then its [`Snapshot`]. empath-anvil
//! connects to every socket there each second; a daemon of another
//! protocol version (during an upgrade) is skipped with a log line
//! instead of being misread.
//!
//! Plain threads and blocking sockets: this must keep working whatever a
//! daemon's async runtime is busy with, and costs one idle thread.

use std::io::{self, Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Snapshot;
use crate::ipc::{Hello, MAX_FRAME, PROTOCOL_VERSION};
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
            // Staged: the collector lists this directory and removes a
            // socket that refuses it, which a socket bound but not yet
            // listening would do.
            crate::daemon::bind_unix(&path, 0o600, crate::daemon::Staging::Always, |at| {
                UnixListener::bind(at)
            })
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
    write_frame(stream, &Hello::ours())?;
    write_frame(stream, snapshot)?;
    stream.flush()
}

fn write_frame<T: Serialize>(stream: &mut UnixStream, value: &T) -> io::Result<()> {
    let payload =
        postcard::to_stdvec(value).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let length = u32::try_from(payload.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "frame too large"))?;
    stream.write_all(&length.to_be_bytes())?;
    stream.write_all(&payload)
}

fn read_frame<T: DeserializeOwned>(stream: &mut UnixStream) -> io::Result<T> {
    let mut header = [0u8; 4];
    stream.read_exact(&mut header)?;
    let length = u32::from_be_bytes(header) as usize;
    if length > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {length} bytes exceeds the limit"),
        ));
    }
    let mut payload = vec![0u8; length];
    stream.read_exact(&mut payload)?;
    postcard::from_bytes(&payload).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn read_snapshot(stream: &mut UnixStream) -> io::Result<Snapshot> {
    let hello: Hello = read_frame(stream).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "the daemon did not start with a hello (an older Empath?)",
        )
    })?;
    if hello != Hello::ours() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the daemon speaks another Empath IPC version than this one ({PROTOCOL_VERSION}); restart it"
            ),
        ));
    }
    read_frame(stream)
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
            Err(error) if error.kind() == io::ErrorKind::InvalidData => {
                tracing::warn!(%error, socket = %path.display(), "no metrics from a daemon");
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

    #[test]
    fn a_daemon_of_another_protocol_version_is_refused_not_misread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.1.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            // A hello of version 5 ("EMPH", then the version as a postcard
            // varint), then something that is not a snapshot.
            stream.write_all(&[0, 0, 0, 5]).unwrap();
            stream.write_all(b"EMPH\x05").unwrap();
            // The client may have hung up on the hello already.
            let _ = stream.write_all(&[0, 0, 0, 1, 0xff]);
        });
        let error = fetch(&path, Duration::from_secs(2)).unwrap_err();
        server.join().unwrap();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(
            error.to_string().contains("another Empath IPC version"),
            "{error}"
        );
    }
}
