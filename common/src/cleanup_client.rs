//! The client side of cleanup's submission protocol (`private/cleanup.sock`,
//! [`CleanupRequest`]): one message, streamed in frames, committed with
//! `End`, answered with its queue ID once it is durable. For daemons that
//! queue mail of their own (smtp-out's TLS reports; bounce and empath-local
//! have their own copies from before this one).

use std::time::Duration;

use crate::ipc::{self, write_frame};
use crate::protocol::{self, CleanupReply, CleanupRequest, Submission};
use crate::queue::{Queue, QueueId};
use crate::smtp::Reply;

/// How long cleanup may take to accept the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the whole submission may take (cleanup fsyncs).
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(60);
/// Content is streamed in frames of this size.
const CHUNK: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("cannot reach cleanup: {0}")]
    Unreachable(std::io::Error),
    #[error("submitting to cleanup: {0}")]
    Io(std::io::Error),
    #[error("cleanup did not answer within {0:?}")]
    Timeout(Duration),
    #[error("cleanup refused the message: {0}")]
    Refused(Reply),
}

/// Queues `content` (CRLF lines) for `submission`'s envelope.
pub async fn submit(
    queue: &Queue,
    submission: Submission,
    content: &[u8],
) -> Result<QueueId, SubmitError> {
    let socket = queue.private_socket(protocol::CLEANUP);
    let mut stream = ipc::connect(&socket, CONNECT_TIMEOUT)
        .await
        .map_err(SubmitError::Unreachable)?;
    let send = async {
        write_frame(&mut stream, &CleanupRequest::Begin(submission)).await?;
        for chunk in content.chunks(CHUNK) {
            write_frame(&mut stream, &CleanupRequest::Chunk(chunk.to_vec())).await?;
        }
        ipc::call::<_, _, CleanupReply>(&mut stream, &CleanupRequest::End).await
    };
    match tokio::time::timeout(SUBMIT_TIMEOUT, send).await {
        Err(_) => Err(SubmitError::Timeout(SUBMIT_TIMEOUT)),
        Ok(Err(error)) => Err(SubmitError::Io(error)),
        Ok(Ok(CleanupReply::Queued { id })) => Ok(id),
        Ok(Ok(CleanupReply::Rejected(reply))) => Err(SubmitError::Refused(reply)),
    }
}
