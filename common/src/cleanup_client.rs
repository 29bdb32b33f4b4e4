//! The one client of cleanup's protocol (see [`crate::protocol`]), for
//! every program that queues mail: smtpd streams a message as it
//! arrives; bounce, sendmail and empath-local hand over one they hold
//! ([`submit`]). `Begin`, content in `Chunk`s of about 64 KiB, then `End`
//! and cleanup's answer, or `Abort`. Every step is bounded by a timeout,
//! so a stuck cleanup cannot hold its client forever.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::path::Path;
use std::time::Duration;

use crate::edits::Edit;
use crate::ipc;
use crate::protocol::{CleanupReply, CleanupRequest, Submission};
use tokio::net::UnixStream;

/// Content is sent in frames of this size: large enough to keep framing
/// overhead small, small enough to bound the memory of every session.
pub const CHUNK_SIZE: usize = 64 * 1024;

/// The longest we wait to tell cleanup a submission is abandoned; cleanup
/// drops it anyway when the connection closes.
const ABORT_TIMEOUT: Duration = Duration::from_secs(5);

/// An open submission to cleanup. Dropping it without [`commit`] closes
/// the connection, which makes cleanup discard the submission.
///
/// [`commit`]: CleanupClient::commit
#[derive(Debug)]
pub struct CleanupClient {
    stream: UnixStream,
    pending: Vec<u8>,
    timeout: Duration,
    /// The metadata sent with `Begin`.
    metadata: BTreeMap<String, String>,
}

impl CleanupClient {
    /// Connects to cleanup and starts a submission.
    pub async fn begin(
        socket: &Path,
        submission: Submission,
        timeout: Duration,
    ) -> io::Result<Self> {
        let mut stream = ipc::connect(socket, timeout).await?;
        let metadata = submission.metadata.clone();
        bounded(
            timeout,
            ipc::write_frame(&mut stream, &CleanupRequest::Begin(submission)),
        )
        .await?;
        Ok(Self {
            stream,
            pending: Vec::with_capacity(CHUNK_SIZE),
            timeout,
            metadata,
        })
    }

    /// Adds content, sending full chunks as they fill up.
    pub async fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let take = (CHUNK_SIZE - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() >= CHUNK_SIZE {
                self.send_pending().await?;
            }
        }
        Ok(())
    }

    async fn send_pending(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let chunk = CleanupRequest::Chunk(std::mem::take(&mut self.pending));
        bounded(self.timeout, ipc::write_frame(&mut self.stream, &chunk)).await?;
        // Keep the allocation for the next chunk.
        if let CleanupRequest::Chunk(mut buffer) = chunk {
            buffer.clear();
            self.pending = buffer;
        }
        Ok(())
    }

    /// Sends the changes the milters and checks decided, which cleanup
    /// applies before it seals the message.
    pub async fn edits(&mut self, edits: Vec<Edit>) -> io::Result<()> {
        let timeout = self.timeout;
        bounded(timeout, async {
            self.send_pending().await?;
            ipc::write_frame(&mut self.stream, &CleanupRequest::Edits(edits)).await
        })
        .await
    }

    /// Sends the rest of the content, the final `metadata` if it changed
    /// since `Begin`, and `End`, and waits for cleanup's answer: `Queued`
    /// only once the message is durable.
    pub async fn commit(mut self, metadata: BTreeMap<String, String>) -> io::Result<CleanupReply> {
        let timeout = self.timeout;
        bounded(timeout, async move {
            self.send_pending().await?;
            if metadata != self.metadata {
                ipc::write_frame(&mut self.stream, &CleanupRequest::Metadata(metadata)).await?;
            }
            ipc::call(&mut self.stream, &CleanupRequest::End).await
        })
        .await
    }

    /// Abandons the submission.
    pub async fn abort(mut self) {
        let timeout = self.timeout.min(ABORT_TIMEOUT);
        let _ = bounded(
            timeout,
            ipc::write_frame(&mut self.stream, &CleanupRequest::Abort),
        )
        .await;
    }
}

/// Queues one whole message and returns cleanup's answer: `Queued` only
/// once the message is durable.
pub async fn submit(
    socket: &Path,
    submission: Submission,
    content: &[u8],
    timeout: Duration,
) -> io::Result<CleanupReply> {
    let metadata = submission.metadata.clone();
    let mut client = CleanupClient::begin(socket, submission, timeout).await?;
    client.write(content).await?;
    client.commit(metadata).await
}

async fn bounded<T>(
    timeout: Duration,
    operation: impl Future<Output = io::Result<T>>,
) -> io::Result<T> {
    tokio::time::timeout(timeout, operation)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "cleanup did not answer in time"))?
}
