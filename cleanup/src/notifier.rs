//! Tells qmgr about newly queued messages over one long-lived connection,
//! instead of a new connection per message. Notices are only a speed-up:
//! qmgr's directory scan finds any message whose notice is lost, so a
//! failed write just drops the connection, to be reopened for the next one.

use std::path::PathBuf;
use std::time::Duration;

use empath_common::ipc;
use empath_common::protocol::QmgrNotice;
use empath_common::queue::QueueId;
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
    while let Some(id) = inbox.recv().await {
        let stream = match connection.as_mut() {
            Some(stream) => stream,
            None => match ipc::connect(&socket, CONNECT_TIMEOUT).await {
                Ok(stream) => connection.insert(stream),
                Err(error) => {
                    tracing::debug!(%error, message_id = %id, "qmgr not notified");
                    continue;
                }
            },
        };
        let sent = tokio::time::timeout(
            WRITE_TIMEOUT,
            ipc::write_frame(stream, &QmgrNotice::Incoming(id)),
        )
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            tracing::debug!(message_id = %id, "qmgr not notified; reconnecting for the next notice");
            connection = None;
        }
    }
}
