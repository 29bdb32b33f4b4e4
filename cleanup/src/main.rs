//! `empath-cleanup`: receives submissions from smtpd (and from bounce and
//! local submission), adds the trace headers, writes the queue file
//! durably, answers the queue ID, and tells qmgr.

mod headers;
mod incoming;

use std::io;
use std::sync::Arc;

use empath_common::daemon;
use empath_common::ipc::{self, read_frame, write_frame};
use empath_common::protocol::{self, CleanupReply, CleanupRequest, QmgrNotice};
use empath_common::queue::Queue;
use empath_common::smtp::Reply;
use tokio::net::UnixStream;
use tokio::net::unix::OwnedReadHalf;

use incoming::Incoming;

struct Cleanup {
    queue: Queue,
    hostname: String,
}

#[tokio::main]
async fn main() {
    let started = daemon::start("cleanup");
    let cleanup = Arc::new(Cleanup {
        hostname: started.config.hostname(),
        queue: started.queue,
    });
    let path = cleanup.queue.private_socket(protocol::CLEANUP);
    let listener = match daemon::bind_socket(&path) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, socket = %path.display(), "cannot listen");
            std::process::exit(1);
        }
    };
    tracing::info!(socket = %path.display(), "cleanup ready");
    tokio::select! {
        result = daemon::serve(listener, "cleanup", move |stream| Arc::clone(&cleanup).connection(stream)) => {
            if let Err(error) = result {
                tracing::error!(%error, "cleanup stopped");
            }
        }
        () = daemon::stop_requested() => tracing::info!("cleanup stopping"),
    }
}

impl Cleanup {
    /// One client connection: any number of submissions, one after another.
    async fn connection(self: Arc<Self>, stream: UnixStream) -> io::Result<()> {
        let (mut reader, mut writer) = stream.into_split();
        while let Some(request) = read_frame::<_, CleanupRequest>(&mut reader).await? {
            let CleanupRequest::Begin(submission) = request else {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "expected Begin"));
            };
            let Some(reply) = self.submission(&mut reader, submission).await else {
                return Ok(());
            };
            write_frame(&mut writer, &reply).await?;
        }
        Ok(())
    }

    /// Receives one message. `None` when the client went away mid-message.
    async fn submission(
        &self,
        reader: &mut OwnedReadHalf,
        submission: protocol::Submission,
    ) -> Option<CleanupReply> {
        if submission.recipients.is_empty() {
            return Some(CleanupReply::Rejected(Reply::new(
                554,
                "5.5.1",
                "Error: no valid recipients",
            )));
        }
        let mut incoming = match Incoming::start(&self.queue, &self.hostname, submission) {
            Ok(incoming) => incoming,
            Err(error) => return Some(write_error(&error)),
        };
        loop {
            let request = match read_frame::<_, CleanupRequest>(reader).await {
                Ok(Some(request)) => request,
                Ok(None) | Err(_) => {
                    incoming.abandon(&self.queue);
                    return None;
                }
            };
            match request {
                CleanupRequest::Chunk(bytes) => {
                    if let Err(error) = tokio::task::block_in_place(|| incoming.push(&bytes)) {
                        incoming.abandon(&self.queue);
                        return Some(write_error(&error));
                    }
                }
                CleanupRequest::End => return Some(self.commit(incoming)),
                CleanupRequest::Abort | CleanupRequest::Begin(_) => {
                    incoming.abandon(&self.queue);
                    return Some(CleanupReply::Rejected(Reply::new(
                        451,
                        "4.3.0",
                        "Error: submission aborted",
                    )));
                }
            }
        }
    }

    fn commit(&self, incoming: Incoming) -> CleanupReply {
        let id = incoming.id();
        match tokio::task::block_in_place(|| incoming.commit(&self.queue)) {
            Ok(envelope) => {
                tracing::info!(
                    message_id = %id,
                    sender = %envelope.sender,
                    recipient_count = envelope.recipients.len(),
                    size = envelope.content_size,
                    client = %envelope.client.addr,
                    "message queued"
                );
                let qmgr = self.queue.private_socket(protocol::QMGR);
                tokio::spawn(async move {
                    // qmgr's directory scan finds the message if this fails.
                    if let Err(error) = ipc::notify(&qmgr, &QmgrNotice::Incoming(id)).await {
                        tracing::debug!(%error, "qmgr not notified");
                    }
                });
                CleanupReply::Queued { id }
            }
            Err(error) => write_error(&error),
        }
    }
}

/// The reply for a failed queue write; a full disk is 452 4.3.1 (RFC 3463).
fn write_error(error: &io::Error) -> CleanupReply {
    tracing::error!(%error, "queue file write failed");
    if error.kind() == io::ErrorKind::StorageFull {
        CleanupReply::Rejected(Reply::new(452, "4.3.1", "Insufficient system storage"))
    } else {
        CleanupReply::Rejected(Reply::new(451, "4.3.0", "Error: queue file write error"))
    }
}
