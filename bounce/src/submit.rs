//! Handing a notice to cleanup, which queues it like any other message:
//! from the null sender, marked in its metadata as a notice.

use std::collections::BTreeMap;
use std::time::Duration;

use empath_common::ipc::{self, write_frame};
use empath_common::protocol::{self, CleanupReply, CleanupRequest, DSN_METADATA, Submission};
use empath_common::queue::{ClientInfo, DsnParams, Queue, QueueId, Recipient};

use crate::dsn::Built;
use crate::policy::NoticeKind;

/// How long cleanup may take to accept the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the whole submission may take (cleanup fsyncs).
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(60);
/// Content is streamed in frames of this size.
const CHUNK: usize = 64 * 1024;

/// Queues `notice` for `recipient` and returns its queue ID.
pub async fn submit(
    queue: &Queue,
    recipient: &str,
    kind: NoticeKind,
    notice: &Built,
) -> Result<QueueId, String> {
    let socket = queue.private_socket(protocol::CLEANUP);
    let mut stream = ipc::connect(&socket, CONNECT_TIMEOUT)
        .await
        .map_err(|e| format!("cannot reach cleanup: {e}"))?;
    let submission = Submission {
        // Never anything but `<>`: a notice must not cause another notice
        // to the sender of the original (RFC 3461 section 6.2).
        sender: String::new(),
        recipients: vec![Recipient::new(recipient)],
        client: ClientInfo {
            addr: "local".into(),
            protocol: "local".into(),
            ..ClientInfo::default()
        },
        dsn: DsnParams::default(),
        metadata: BTreeMap::from([(DSN_METADATA.to_owned(), kind.metadata().to_owned())]),
        smtputf8: notice.smtputf8,
        options: Default::default(),
    };
    let send = async {
        write_frame(&mut stream, &CleanupRequest::Begin(submission)).await?;
        for chunk in notice.message.chunks(CHUNK) {
            write_frame(&mut stream, &CleanupRequest::Chunk(chunk.to_vec())).await?;
        }
        ipc::call::<_, _, CleanupReply>(&mut stream, &CleanupRequest::End).await
    };
    let reply = tokio::time::timeout(SUBMIT_TIMEOUT, send)
        .await
        .map_err(|_| format!("cleanup did not answer within {SUBMIT_TIMEOUT:?}"))?
        .map_err(|e| format!("submitting to cleanup: {e}"))?;
    match reply {
        CleanupReply::Queued { id } => Ok(id),
        CleanupReply::Rejected(reply) => Err(format!("cleanup refused the notice: {reply}")),
    }
}
