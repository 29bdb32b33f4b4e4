//! Tells qmgr about newly queued messages over one long-lived connection,
//! instead of a new connection per message. Notices are only a speed-up:
//! qmgr's directory scan finds any message whose notice is lost, so a
//! failed write just drops the connection, to be reopened for the next one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use empath_common::ipc;
use empath_common::protocol::QmgrNotice;
use empath_common::queue::QueueId;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::sync::mpsc;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A stuck qmgr must not make the notices pile up behind one write.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct Notifier {
    queued: mpsc::UnboundedSender<QueueId>,
}

impl Notifier {
    pub fn start(qmgr_socket: PathBuf) -> Self {
        let (queued, inbox) = mpsc::unbounded_channel();
        tokio::spawn(run(qmgr_socket, inbox));
        Self { queued }
    }

    pub fn queued(&self, id: QueueId) {
        let _ = self.queued.send(id);
    }
}

async fn run(socket: PathBuf, mut inbox: mpsc::UnboundedReceiver<QueueId>) {
    let mut connection: Option<UnixStream> = None;
    let mut ids = Vec::new();
    while inbox.recv_many(&mut ids, MAX_BATCH).await > 0 {
        let frames = frames_of(&ids);
        // A kept connection may have died with a restarted qmgr: then the
        // notices go again on a fresh one.
        let attempts = if connection.is_some() { 2 } else { 1 };
        for _ in 0..attempts {
            if send(&socket, &mut connection, &frames, ids.len()).await {
                break;
            }
        }
        ids.clear();
    }
}

/// Notices sent in one write at most: the messages of a group commit are
/// queued together, and qmgr reads them with one wake-up.
const MAX_BATCH: usize = 256;

/// The notices of `ids`, framed back to back for one write.
fn frames_of(ids: &[QueueId]) -> Vec<u8> {
    let mut frames = Vec::new();
    for &id in ids {
        // A notice always encodes; one that did not would be left out
        // (append_frame leaves the frames before it intact).
        if let Err(error) = ipc::append_frame(&mut frames, &QmgrNotice::Incoming(id)) {
            tracing::warn!(%error, message_id = %id, "notice not encoded");
        }
    }
    frames
}

/// Sends `frames` (`notices` of them), connecting first if needed. On
/// failure the connection is dropped and `false` returned.
async fn send(
    socket: &Path,
    connection: &mut Option<UnixStream>,
    frames: &[u8],
    notices: usize,
) -> bool {
    let stream = match connection {
        Some(stream) => stream,
        None => match ipc::connect(socket, CONNECT_TIMEOUT).await {
            Ok(stream) => connection.insert(stream),
            Err(error) => {
                tracing::debug!(%error, notices, "qmgr not notified");
                return false;
            }
        },
    };
    let sent = tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(frames)).await;
    if matches!(sent, Ok(Ok(()))) {
        return true;
    }
    tracing::debug!(notices, "qmgr not notified on the kept connection");
    *connection = None;
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use empath_common::ipc::read_frame;
    use tokio::net::UnixListener;

    async fn next_notice(stream: &mut UnixStream) -> Option<QmgrNotice> {
        tokio::time::timeout(Duration::from_secs(5), read_frame(stream))
            .await
            .expect("a notice in time")
            .expect("a readable frame")
    }

    fn incoming(notice: Option<QmgrNotice>) -> Option<QueueId> {
        match notice {
            Some(QmgrNotice::Incoming(id)) => Some(id),
            _ => None,
        }
    }

    #[tokio::test]
    async fn notices_share_one_connection_and_survive_a_qmgr_restart() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("qmgr.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let notifier = Notifier::start(socket.clone());
        let (first, second, third) = (
            QueueId::generate(),
            QueueId::generate(),
            QueueId::generate(),
        );

        notifier.queued(first);
        notifier.queued(second);
        let (mut stream, _) = listener.accept().await.unwrap();
        empath_common::ipc::hello_server(&mut stream, "qmgr")
            .await
            .unwrap();
        assert_eq!(incoming(next_notice(&mut stream).await), Some(first));
        assert_eq!(incoming(next_notice(&mut stream).await), Some(second));

        // qmgr restarts: its end of the kept connection closes and it
        // listens again on the same path.
        drop(stream);
        drop(listener);
        std::fs::remove_file(&socket).unwrap();
        let listener = UnixListener::bind(&socket).unwrap();
        notifier.queued(third);
        let (mut stream, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
            .await
            .expect("a new connection after the restart")
            .unwrap();
        empath_common::ipc::hello_server(&mut stream, "qmgr")
            .await
            .unwrap();
        assert_eq!(incoming(next_notice(&mut stream).await), Some(third));
    }
}
