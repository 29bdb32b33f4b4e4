//! The one client of cleanup's protocol (see [`crate::protocol`]), for
//! every program that queues mail: smtpd streams a message as it
//! arrives; bounce, sendmail and empath-local hand over one they hold
//! ([`submit`]). `Begin`, content in `Chunk`s of about 64 KiB, then `End`
//! and cleanup's answer, or `Abort`. Every step is bounded by a timeout,
//! so a stuck cleanup cannot hold its client forever.
//!
//! `Begin` waits until there is content to send with it: a message that
//! fits in one chunk goes to cleanup whole at commit, in one write, and
//! smtpd sends it over a connection kept from an earlier message
//! ([`CleanupConnections`]) rather than a new one with its own hello. So
//! does one of up to [`WHOLE_LIMIT`] while the memory all of smtpd's
//! sessions hold for such messages stays within a budget.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{self, IoSlice};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::edits::Edit;
use crate::ipc::{self, IdleConnections};
use crate::protocol::{self, CleanupReply, CleanupRequest, Submission};
use serde::Serialize;
use tokio::net::UnixStream;

/// Content is sent in frames of this size: large enough to keep framing
/// overhead small, small enough to bound the memory of every session.
pub const CHUNK_SIZE: usize = 64 * 1024;

/// A message up to this size is held whole and sent at its end over a
/// kept connection, when the budget below allows: most mail with an
/// attachment is larger than a chunk, and streaming costs a connection of
/// its own.
pub const WHOLE_LIMIT: usize = 256 * 1024;

/// What the sessions of one process may hold together, beyond a chunk
/// each, for messages held whole: a message that finds it spent streams.
const WHOLE_BUDGET: usize = 32 * 1024 * 1024;

/// The longest we wait to tell cleanup a submission is abandoned; cleanup
/// drops it anyway when the connection closes.
const ABORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections to cleanup, and whether they are kept between messages.
///
/// A kept connection may lead to a cleanup that has closed it since: one
/// retiring after a reload closes its idle connections. A connection is
/// checked before it is used, and a message whose submission fails on a
/// kept connection before cleanup answered anything goes once more on a
/// new one; a message that has to stream (larger than [`WHOLE_LIMIT`], or
/// larger than a chunk when the budget for whole messages is spent)
/// always gets a new one. (cleanup acts on a submission only at its `End`, and
/// never closes a connection on which a request has arrived without
/// answering it, so a submission lost on a closing connection was not
/// queued.)
#[derive(Debug, Clone)]
pub struct CleanupConnections {
    socket: Arc<PathBuf>,
    idle: Option<IdleConnections>,
    /// For messages held whole beyond a chunk; only with kept connections.
    whole_budget: Option<Arc<WholeBudget>>,
}

impl CleanupConnections {
    /// Connections to `socket`, kept for the next message: for smtpd.
    pub fn kept(socket: PathBuf) -> Self {
        Self::kept_with_budget(socket, WHOLE_BUDGET)
    }

    fn kept_with_budget(socket: PathBuf, whole_budget: usize) -> Self {
        Self {
            socket: Arc::new(socket),
            idle: Some(IdleConnections::default()),
            whole_budget: Some(Arc::new(WholeBudget {
                limit: whole_budget,
                held: AtomicUsize::new(0),
            })),
        }
    }

    /// A new connection for every submission: for programs that queue a
    /// message now and then.
    pub fn one_off(socket: &Path) -> Self {
        Self {
            socket: Arc::new(socket.to_owned()),
            idle: None,
            whole_budget: None,
        }
    }

    /// Room to hold a message whole up to [`WHOLE_LIMIT`], if the budget
    /// has it.
    fn reserve_whole(&self) -> Option<WholeReservation> {
        let budget = self.whole_budget.as_ref()?;
        let bytes = WHOLE_LIMIT - CHUNK_SIZE;
        budget
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(bytes)
                    .filter(|&after| after <= budget.limit)
            })
            .ok()?;
        Some(WholeReservation {
            budget: Arc::clone(budget),
            bytes,
        })
    }

    /// Starts a submission, on a kept connection if one is idle, else on a
    /// new one (whose connect and hello say at once whether cleanup is
    /// there).
    pub async fn begin(
        &self,
        submission: Submission,
        timeout: Duration,
    ) -> io::Result<CleanupClient> {
        let kept = self.idle.as_ref().and_then(IdleConnections::take);
        let (stream, kept) = match kept {
            Some(stream) => (stream, true),
            None => (ipc::connect(&self.socket, timeout).await?, false),
        };
        Ok(CleanupClient {
            connections: self.clone(),
            stream,
            kept,
            metadata: submission.metadata.clone(),
            begin: Some(Box::new(submission)),
            edits: None,
            held: Vec::new(),
            pending: Vec::with_capacity(CHUNK_SIZE),
            whole: None,
            timeout,
        })
    }

    fn put_back(&self, stream: UnixStream) {
        if let Some(idle) = &self.idle {
            idle.put_back(stream);
        }
    }
}

/// The memory the sessions of a process hold for messages held whole.
#[derive(Debug)]
struct WholeBudget {
    limit: usize,
    held: AtomicUsize,
}

/// A share of the [`WholeBudget`], given back when dropped.
#[derive(Debug)]
struct WholeReservation {
    budget: Arc<WholeBudget>,
    bytes: usize,
}

impl Drop for WholeReservation {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// An open submission to cleanup. Dropping it without [`commit`] closes
/// the connection, which makes cleanup discard the submission.
///
/// [`commit`]: CleanupClient::commit
#[derive(Debug)]
pub struct CleanupClient {
    connections: CleanupConnections,
    stream: UnixStream,
    /// The connection was kept from an earlier submission.
    kept: bool,
    /// `Begin`, until it is sent (boxed: the client is moved around in
    /// smtpd's session states).
    begin: Option<Box<Submission>>,
    /// The message's changes, when they came before `Begin` was sent.
    edits: Option<Vec<Edit>>,
    /// Full chunks of a message held whole, not sent yet: each is sent as
    /// it is, never copied into a larger buffer.
    held: Vec<Vec<u8>>,
    /// The chunk being filled.
    pending: Vec<u8>,
    /// Room to hold chunks up to [`WHOLE_LIMIT`] in all (else a full chunk
    /// is sent).
    whole: Option<WholeReservation>,
    timeout: Duration,
    /// The metadata sent with `Begin`.
    metadata: BTreeMap<String, String>,
}

impl CleanupClient {
    /// Connects to cleanup and starts a submission, on a connection of its
    /// own.
    pub async fn begin(
        socket: &Path,
        submission: Submission,
        timeout: Duration,
    ) -> io::Result<Self> {
        CleanupConnections::one_off(socket)
            .begin(submission, timeout)
            .await
    }

    /// Adds content, sending full chunks as they fill up. A message that
    /// fills its first chunk is held whole up to [`WHOLE_LIMIT`] instead,
    /// if the budget has room.
    pub async fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            if self.pending.len() < CHUNK_SIZE {
                let take = (CHUNK_SIZE - self.pending.len()).min(data.len());
                self.pending.extend_from_slice(&data[..take]);
                data = &data[take..];
                continue;
            }
            // A full chunk, and more to come: hold it if the message may
            // still go whole, else send what waits.
            if self.may_hold_another_chunk() {
                let full = std::mem::replace(&mut self.pending, Vec::with_capacity(CHUNK_SIZE));
                self.held.push(full);
                continue;
            }
            let timeout = self.timeout;
            bounded(timeout, self.send_pending()).await?;
        }
        Ok(())
    }

    /// Whether the full chunk in `pending` may be held, reserving room in
    /// the budget for the first one: the chunks held and one more being
    /// filled stay within [`WHOLE_LIMIT`].
    fn may_hold_another_chunk(&mut self) -> bool {
        if self.begin.is_none() || (self.held.len() + 2) * CHUNK_SIZE > WHOLE_LIMIT {
            return false;
        }
        if self.whole.is_none() {
            self.whole = self.connections.reserve_whole();
        }
        self.whole.is_some()
    }

    /// Sends the content waiting (and `Begin`, if it has not gone yet):
    /// the message streams from here on, on a connection of its own.
    async fn send_pending(&mut self) -> io::Result<()> {
        if self.begin.is_some() && self.kept {
            // Not retried once it streams: a kept connection stays with
            // the small messages.
            let fresh = ipc::connect(&self.connections.socket, self.timeout).await?;
            let kept = std::mem::replace(&mut self.stream, fresh);
            self.kept = false;
            self.connections.put_back(kept);
        }
        let held = std::mem::take(&mut self.held);
        let mut frames = Frames::default();
        if let Some(submission) = self.begin.take() {
            frames.frame(&CleanupRequest::Begin(*submission))?;
        }
        frames.content(&held, &self.pending)?;
        frames.send(&mut self.stream).await?;
        self.pending.clear();
        // Streaming from here on: chunk by chunk.
        self.whole = None;
        Ok(())
    }

    /// Sends the changes the milters and checks decided, which cleanup
    /// applies before it seals the message.
    pub async fn edits(&mut self, edits: Vec<Edit>) -> io::Result<()> {
        if self.begin.is_some() {
            self.edits = Some(edits);
            return Ok(());
        }
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
            let whole = self.begin.is_some();
            let held = std::mem::take(&mut self.held);
            let pending = std::mem::take(&mut self.pending);
            let mut frames = Frames::default();
            if let Some(submission) = self.begin.take() {
                frames.frame(&CleanupRequest::Begin(*submission))?;
            }
            frames.content(&held, &pending)?;
            if let Some(edits) = self.edits.take() {
                frames.frame(&CleanupRequest::Edits(edits))?;
            }
            if metadata != self.metadata {
                frames.frame(&CleanupRequest::Metadata(metadata))?;
            }
            frames.frame(&CleanupRequest::End)?;
            match exchange(&mut self.stream, &frames).await {
                Ok(reply) => {
                    self.connections.put_back(self.stream);
                    Ok(reply)
                }
                Err(Exchange::Unanswered(error)) if self.kept && whole => {
                    tracing::debug!(%error, "a kept connection to cleanup was closed; sending on a new one");
                    let mut fresh = ipc::connect(&self.connections.socket, timeout).await?;
                    let reply = exchange(&mut fresh, &frames).await.map_err(Exchange::into_error)?;
                    self.connections.put_back(fresh);
                    Ok(reply)
                }
                Err(failed) => Err(failed.into_error()),
            }
        })
        .await
    }

    /// Abandons the submission. One that cleanup has not heard of yet
    /// leaves its connection clean, for the next message.
    pub async fn abort(mut self) {
        if self.begin.is_some() {
            return self.connections.put_back(self.stream);
        }
        let timeout = self.timeout.min(ABORT_TIMEOUT);
        let _ = bounded(
            timeout,
            ipc::write_frame(&mut self.stream, &CleanupRequest::Abort),
        )
        .await;
    }
}

/// How sending a submission and reading the answer failed.
enum Exchange {
    /// The connection failed before any of the answer arrived.
    Unanswered(io::Error),
    /// Part of an answer, or a broken one.
    Failed(io::Error),
}

impl Exchange {
    fn into_error(self) -> io::Error {
        match self {
            Self::Unanswered(error) | Self::Failed(error) => error,
        }
    }
}

/// Frames for one write: requests encoded here, content chunks framed
/// around the caller's buffers, uncopied.
#[derive(Default)]
struct Frames<'a> {
    encoded: Vec<u8>,
    /// In order: a range of `encoded`, or content.
    pieces: Vec<Piece<'a>>,
}

enum Piece<'a> {
    Encoded(Range<usize>),
    Content(&'a [u8]),
}

impl<'a> Frames<'a> {
    fn frame<T: Serialize>(&mut self, value: &T) -> io::Result<()> {
        let start = self.encoded.len();
        ipc::append_frame(&mut self.encoded, value)?;
        self.encoded_since(start);
        Ok(())
    }

    /// `Chunk` frames of the `held` chunks, then of `pending` (in frames
    /// of a chunk at most).
    fn content(&mut self, held: &'a [Vec<u8>], pending: &'a [u8]) -> io::Result<()> {
        let pieces = held.iter().map(Vec::as_slice).chain([pending]);
        for piece in pieces.flat_map(|chunk| chunk.chunks(CHUNK_SIZE)) {
            let start = self.encoded.len();
            protocol::append_chunk_frame_head(&mut self.encoded, piece.len())?;
            self.encoded_since(start);
            self.pieces.push(Piece::Content(piece));
        }
        Ok(())
    }

    fn encoded_since(&mut self, start: usize) {
        let end = self.encoded.len();
        match self.pieces.last_mut() {
            Some(Piece::Encoded(range)) if range.end == start => range.end = end,
            _ => self.pieces.push(Piece::Encoded(start..end)),
        }
    }

    /// Writes every frame, in as few writes as the socket allows.
    async fn send(&self, stream: &mut UnixStream) -> io::Result<()> {
        let mut slices: Vec<IoSlice<'_>> = self
            .pieces
            .iter()
            .map(|piece| match piece {
                Piece::Encoded(range) => IoSlice::new(&self.encoded[range.clone()]),
                Piece::Content(content) => IoSlice::new(content),
            })
            .collect();
        ipc::write_all_vectored(stream, &mut slices).await
    }
}

/// Writes `frames` and reads cleanup's answer.
async fn exchange(stream: &mut UnixStream, frames: &Frames<'_>) -> Result<CleanupReply, Exchange> {
    let unanswered = |error: io::Error| match error.kind() {
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => Exchange::Unanswered(error),
        _ => Exchange::Failed(error),
    };
    frames.send(stream).await.map_err(unanswered)?;
    match ipc::read_frame(stream).await {
        Ok(Some(reply)) => Ok(reply),
        Ok(None) => Err(Exchange::Unanswered(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "cleanup closed the connection without answering",
        ))),
        Err(error) => Err(unanswered(error)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{QueueId, Recipient};
    use tokio::net::UnixListener;

    fn submission() -> Submission {
        Submission {
            sender: "a@example.org".into(),
            recipients: vec![Recipient::new("b@example.com")],
            client: Default::default(),
            dsn: Default::default(),
            metadata: BTreeMap::new(),
            smtputf8: false,
            queue_id: None,
            options: Default::default(),
        }
    }

    /// What a fake cleanup does with the submissions on one connection.
    #[derive(Clone, Copy)]
    enum Serve {
        /// Answers this many, then closes.
        Answer(usize),
        /// Answers this many, then reads the next and closes without an
        /// answer (as a connection closed just as the client used it).
        AnswerThenDrop(usize),
    }

    /// Accepts connections, serving each as `plan` says in turn; returns
    /// the content of every submission answered, per connection.
    async fn fake_cleanup(listener: UnixListener, plan: Vec<Serve>) -> Vec<Vec<usize>> {
        let mut served = Vec::new();
        for serve in plan {
            let (mut stream, _) = listener.accept().await.unwrap();
            ipc::hello_server(&mut stream, "cleanup").await.unwrap();
            let (answer, drop_next) = match serve {
                Serve::Answer(n) => (n, false),
                Serve::AnswerThenDrop(n) => (n, true),
            };
            let mut sizes = Vec::new();
            for turn in 0..answer + usize::from(drop_next) {
                let mut size = 0;
                loop {
                    let request: CleanupRequest =
                        ipc::read_frame(&mut stream).await.unwrap().unwrap();
                    match request {
                        CleanupRequest::Chunk(bytes) => size += bytes.len(),
                        CleanupRequest::End => break,
                        _ => {}
                    }
                }
                if turn == answer {
                    break;
                }
                sizes.push(size);
                let reply = CleanupReply::Queued {
                    id: QueueId::generate(),
                };
                ipc::write_frame(&mut stream, &reply).await.unwrap();
            }
            served.push(sizes);
        }
        served
    }

    /// A socket for a fake cleanup, and kept connections to it.
    fn listening() -> (tempfile::TempDir, UnixListener, CleanupConnections) {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("cleanup.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        (dir, listener, CleanupConnections::kept(socket))
    }

    async fn send(connections: &CleanupConnections, size: usize) -> CleanupReply {
        let mut client = connections
            .begin(submission(), Duration::from_secs(5))
            .await
            .unwrap();
        client.write(&vec![b'x'; size]).await.unwrap();
        client.commit(BTreeMap::new()).await.unwrap()
    }

    #[tokio::test]
    async fn small_messages_share_a_kept_connection_and_survive_its_closing() {
        let (_dir, listener, connections) = listening();
        let server = tokio::spawn(fake_cleanup(
            listener,
            vec![
                // Two messages on the first connection, which then closes
                // while idle (a cleanup retiring after a reload).
                Serve::Answer(2),
                // The next takes a new one, which is closed as the
                // following message is sent on it: that message goes
                // again, on a new connection.
                Serve::AnswerThenDrop(1),
                Serve::Answer(1),
            ],
        ));
        for _ in 0..2 {
            assert!(matches!(
                send(&connections, 100).await,
                CleanupReply::Queued { .. }
            ));
        }
        // Until the closing has been seen, the connection looks open.
        tokio::time::sleep(Duration::from_millis(100)).await;
        for _ in 0..2 {
            assert!(matches!(
                send(&connections, 200).await,
                CleanupReply::Queued { .. }
            ));
        }
        let served = tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("every connection served")
            .unwrap();
        assert_eq!(served, [vec![100, 100], vec![200], vec![200]]);
    }

    #[tokio::test]
    async fn a_message_up_to_the_whole_limit_goes_whole_on_the_kept_connection() {
        let (_dir, listener, connections) = listening();
        let server = tokio::spawn(async move {
            // One connection for both; a second would never be accepted.
            let (mut stream, _) = listener.accept().await.unwrap();
            ipc::hello_server(&mut stream, "cleanup").await.unwrap();
            let mut submissions = Vec::new();
            for _ in 0..2 {
                let mut frames = Vec::new();
                loop {
                    match ipc::read_frame::<_, CleanupRequest>(&mut stream)
                        .await
                        .unwrap()
                        .unwrap()
                    {
                        CleanupRequest::Chunk(bytes) => frames.push(bytes.len()),
                        CleanupRequest::End => break,
                        _ => {}
                    }
                }
                submissions.push(frames);
                let reply = CleanupReply::Queued {
                    id: QueueId::generate(),
                };
                ipc::write_frame(&mut stream, &reply).await.unwrap();
            }
            submissions
        });
        send(&connections, 10).await;
        tokio::time::timeout(Duration::from_secs(5), send(&connections, WHOLE_LIMIT))
            .await
            .expect("sent on the kept connection");
        let submissions = server.await.unwrap();
        assert_eq!(submissions[0], [10]);
        // Whole, in frames of a chunk at most.
        assert_eq!(submissions[1].iter().sum::<usize>(), WHOLE_LIMIT);
        assert!(submissions[1].iter().all(|&size| size <= CHUNK_SIZE));
        let budget = connections.whole_budget.as_ref().unwrap();
        assert_eq!(budget.held.load(Ordering::Acquire), 0, "budget given back");
    }

    /// Whatever its size, and however smtpd's writes cut it, cleanup gets
    /// the content byte for byte, in frames of a chunk at most: held whole
    /// on the kept connection or streamed on a new one.
    #[tokio::test]
    async fn content_arrives_byte_for_byte_in_frames_of_a_chunk_at_most() {
        let (_dir, listener, connections) = listening();
        let (received_tx, mut received) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let received_tx = received_tx.clone();
                tokio::spawn(async move {
                    ipc::hello_server(&mut stream, "cleanup").await.unwrap();
                    let mut content = Vec::new();
                    while let Ok(Some(request)) =
                        ipc::read_frame::<_, CleanupRequest>(&mut stream).await
                    {
                        match request {
                            CleanupRequest::Chunk(bytes) => {
                                assert!(bytes.len() <= CHUNK_SIZE, "a frame of {}", bytes.len());
                                content.extend_from_slice(&bytes);
                            }
                            CleanupRequest::End => {
                                received_tx.send(std::mem::take(&mut content)).unwrap();
                                let reply = CleanupReply::Queued {
                                    id: QueueId::generate(),
                                };
                                ipc::write_frame(&mut stream, &reply).await.unwrap();
                            }
                            _ => {}
                        }
                    }
                });
            }
        });
        for size in [
            0,
            CHUNK_SIZE - 1,
            CHUNK_SIZE,
            CHUNK_SIZE + 1,
            3 * CHUNK_SIZE + 5,
            WHOLE_LIMIT,
            WHOLE_LIMIT + 1,
            2 * WHOLE_LIMIT + 7,
        ] {
            let content: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let mut client = connections
                .begin(submission(), Duration::from_secs(5))
                .await
                .unwrap();
            for piece in content.chunks(7_777) {
                client.write(piece).await.unwrap();
            }
            let reply = client.commit(BTreeMap::new()).await.unwrap();
            assert!(matches!(reply, CleanupReply::Queued { .. }));
            let got = received.recv().await.unwrap();
            assert!(got == content, "{size} bytes: {} arrived", got.len());
        }
        let budget = connections.whole_budget.as_ref().unwrap();
        assert_eq!(budget.held.load(Ordering::Acquire), 0, "budget given back");
    }

    #[tokio::test]
    async fn with_the_budget_spent_a_message_over_a_chunk_streams() {
        let (dir, listener, _) = listening();
        let connections = CleanupConnections::kept_with_budget(dir.path().join("cleanup.sock"), 0);
        let large = CHUNK_SIZE * 2 + 10;
        let server = tokio::spawn(async move {
            // The small message's connection stays open and idle; the
            // large one must come on a second.
            let (mut kept, _) = listener.accept().await.unwrap();
            ipc::hello_server(&mut kept, "cleanup").await.unwrap();
            while !matches!(
                ipc::read_frame::<_, CleanupRequest>(&mut kept)
                    .await
                    .unwrap(),
                Some(CleanupRequest::End)
            ) {}
            let reply = CleanupReply::Queued {
                id: QueueId::generate(),
            };
            ipc::write_frame(&mut kept, &reply).await.unwrap();
            let served = fake_cleanup(listener, vec![Serve::Answer(1)]).await;
            (served, kept)
        });
        send(&connections, 10).await;
        send(&connections, large).await;
        let (served, _kept) = server.await.unwrap();
        assert_eq!(served, [vec![large]]);
    }

    #[tokio::test]
    async fn a_message_that_streams_takes_a_connection_of_its_own() {
        let (_dir, listener, connections) = listening();
        let large = WHOLE_LIMIT + 10;
        let server = tokio::spawn(async move {
            // The first connection answers the small message, then stays
            // open and idle; the large one must come on a second.
            let (mut kept, _) = listener.accept().await.unwrap();
            ipc::hello_server(&mut kept, "cleanup").await.unwrap();
            let mut requests = 0;
            while !matches!(
                ipc::read_frame::<_, CleanupRequest>(&mut kept)
                    .await
                    .unwrap(),
                Some(CleanupRequest::End)
            ) {
                requests += 1;
            }
            let reply = CleanupReply::Queued {
                id: QueueId::generate(),
            };
            ipc::write_frame(&mut kept, &reply).await.unwrap();
            let served = fake_cleanup(listener, vec![Serve::Answer(1)]).await;
            (requests, served, kept)
        });
        send(&connections, 10).await;
        send(&connections, large).await;
        let (requests, served, _kept) = server.await.unwrap();
        assert_eq!(requests, 2, "Begin and the one chunk, then End");
        assert_eq!(served, [vec![large]]);
    }
}
