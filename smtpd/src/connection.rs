//! One client connection: reads command lines and message data, drives the
//! [`Session`] state machine, streams messages to cleanup, writes replies,
//! and enforces the timeouts. Generic over the stream, so that tests run
//! it over in-memory pipes and STARTTLS can later hand it a TLS stream.

use std::fmt;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use empath_common::protocol::{CleanupReply, Submission};
use empath_common::queue::{ClientInfo, DsnParams, Recipient};
use empath_common::smtp::Reply;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::time::Instant;

use crate::cleanup_client::CleanupClient;
use crate::data_decoder::DataDecoder;
use crate::lines::{self, Line, MAX_COMMAND_LINE};
use crate::parser::parse_command;
use crate::reply;
use crate::session::{Action, Session};
use crate::settings::Settings;

/// Size of the input buffer. It also bounds how many pipelined commands
/// are answered in one write.
const READ_BUFFER: usize = 16 * 1024;

/// The longest we try to deliver a last 421 to a client that does not read.
const FAREWELL_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a connection ended.
#[derive(Debug)]
pub enum End {
    Quit,
    ClientClosed,
    Timeout,
    TooManyErrors,
    Io(io::Error),
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Quit => f.write_str("quit"),
            Self::ClientClosed => f.write_str("client closed the connection"),
            Self::Timeout => f.write_str("timeout"),
            Self::TooManyErrors => f.write_str("too many errors"),
            Self::Io(error) => write!(f, "I/O error: {error}"),
        }
    }
}

/// Serves one client until it quits, fails or times out.
pub async fn serve<S>(stream: S, peer: String, settings: Arc<Settings>) -> End
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tracing::info!(client = %peer, "connect");
    let mut connection = Connection::new(stream, peer, settings);
    let end = connection.run().await;
    connection.close(&end).await;
    tracing::info!(
        client = %connection.peer,
        reason = %end,
        messages = connection.messages,
        "disconnect"
    );
    end
}

struct Connection<S> {
    /// Reads are buffered; writes go straight through to the stream.
    io: BufReader<S>,
    /// Replies not written yet: pipelined commands are answered in one
    /// write (RFC 2920), made before we wait for more input.
    out: Vec<u8>,
    session: Session,
    settings: Arc<Settings>,
    peer: String,
    /// When the whole session must be over (`connection_secs`).
    deadline: Instant,
    /// Messages queued in this session, for the log.
    messages: u64,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    fn new(stream: S, peer: String, settings: Arc<Settings>) -> Self {
        Self {
            io: BufReader::with_capacity(READ_BUFFER, stream),
            out: Vec::new(),
            session: Session::new(Arc::clone(&settings)),
            deadline: Instant::now() + settings.timeouts.connection,
            settings,
            peer,
            messages: 0,
        }
    }

    async fn run(&mut self) -> End {
        self.send(&reply::greeting(&self.settings.hostname));
        loop {
            if self.session.too_many_errors() {
                self.send(&reply::too_many_errors(&self.settings.hostname));
                return End::TooManyErrors;
            }
            let line = match self.read_command().await {
                Ok(line) => line,
                Err(end) => return end,
            };
            let action = match line {
                Line::Complete(bytes) => self.session.handle(parse_command(&bytes)),
                Line::TooLong => Action::Reply(self.session.line_too_long()),
                Line::Eof => return End::ClientClosed,
            };
            match action {
                Action::Reply(reply) => self.send(&reply),
                Action::Close(reply) => {
                    self.send(&reply);
                    return End::Quit;
                }
                Action::ReceiveData => {
                    if let Err(end) = self.receive_data().await {
                        return end;
                    }
                }
            }
        }
    }

    /// Says goodbye where there is something to say, and closes.
    async fn close(&mut self, end: &End) {
        if matches!(end, End::Io(_)) {
            return;
        }
        if matches!(end, End::Timeout) {
            self.send(&reply::timeout(&self.settings.hostname));
        }
        let goodbye = async {
            self.io.write_all(&self.out).await?;
            self.io.flush().await?;
            self.io.shutdown().await
        };
        let _ = tokio::time::timeout(FAREWELL_TIMEOUT, goodbye).await;
        self.out.clear();
    }

    fn send(&mut self, reply: &Reply) {
        self.out.extend_from_slice(reply.to_wire().as_bytes());
    }

    async fn flush(&mut self) -> Result<(), End> {
        if self.out.is_empty() {
            return Ok(());
        }
        let (deadline, timeout) = (self.deadline, self.settings.timeouts.command);
        let write = async {
            self.io.write_all(&self.out).await?;
            self.io.flush().await
        };
        within(deadline, timeout, write).await?;
        self.out.clear();
        Ok(())
    }

    async fn read_command(&mut self) -> Result<Line, End> {
        // Answer what we have before we may block: when the buffer holds
        // no complete line, the next read waits for the client.
        if !self.io.buffer().contains(&b'\n') {
            self.flush().await?;
        }
        within(
            self.deadline,
            self.settings.timeouts.command,
            lines::read_line(&mut self.io, MAX_COMMAND_LINE),
        )
        .await
    }

    /// DATA: opens the submission to cleanup, receives the message while
    /// streaming it there, and answers with cleanup's verdict.
    async fn receive_data(&mut self) -> Result<(), End> {
        let Some(submission) = self.submission() else {
            // The session only asks for data inside a transaction.
            self.send(&reply::bad_sequence("need MAIL command"));
            return Ok(());
        };
        let sender = submission.sender.clone();
        let recipients = submission.recipients.len();
        let timeout = self.settings.timeouts.data_termination;
        let sink =
            match CleanupClient::begin(&self.settings.cleanup_socket, submission, timeout).await {
                Ok(sink) => sink,
                Err(error) => {
                    // Refused before 354, so the client does not send a message
                    // we cannot keep.
                    tracing::warn!(client = %self.peer, %error, "cannot reach cleanup");
                    self.session.finish_transaction();
                    self.send(&reply::queue_error());
                    return Ok(());
                }
            };
        self.send(&reply::start_data());
        self.flush().await?;
        let received = self.read_message(sink).await?;
        let reply = match received {
            Received::TooBig { size } => {
                tracing::info!(client = %self.peer, size, "message rejected: too big");
                reply::message_too_big()
            }
            Received::QueueFailed => reply::queue_error(),
            // Bounded by data_termination alone, not by the session
            // deadline: once cleanup has `End` it may queue the message,
            // and the client must hear the outcome rather than a 421.
            Received::Complete { sink, size } => match sink.commit().await {
                Ok(CleanupReply::Queued { id }) => {
                    self.messages += 1;
                    tracing::info!(
                        queue_id = %id,
                        from = %sender,
                        nrcpt = recipients,
                        size,
                        client = %self.peer,
                        "queued"
                    );
                    reply::queued(id)
                }
                // 250 only ever follows `Queued`, whatever cleanup says.
                Ok(CleanupReply::Rejected(rejection)) if !rejection.is_positive() => {
                    tracing::info!(client = %self.peer, reply = %rejection, "message rejected by cleanup");
                    rejection
                }
                Ok(CleanupReply::Rejected(odd)) => {
                    tracing::warn!(client = %self.peer, reply = %odd, "cleanup rejected with a positive reply");
                    reply::queue_error()
                }
                Err(error) => {
                    tracing::warn!(client = %self.peer, %error, "cleanup failed to queue the message");
                    reply::queue_error()
                }
            },
        };
        self.session.finish_transaction();
        self.send(&reply);
        Ok(())
    }

    /// Reads the message up to the end marker, decoding it into `sink`.
    /// After a failure (too big, cleanup gone) it keeps reading to the end
    /// marker, so that the client's next command is read as a command.
    async fn read_message(&mut self, sink: CleanupClient) -> Result<Received, End> {
        let size_limit = self.settings.size_limit;
        let timeouts = self.settings.timeouts;
        let mut sink = Some(sink);
        let mut too_big = false;
        let mut decoder = DataDecoder::new();
        let mut content = Vec::with_capacity(2 * READ_BUFFER);
        let mut size: u64 = 0;
        let mut phase = timeouts.data_init;
        loop {
            let input = within(self.deadline, phase, self.io.fill_buf()).await?;
            if input.is_empty() {
                // Dropping `sink` makes cleanup discard the submission.
                return Err(End::ClientClosed);
            }
            let decoded = decoder.feed(input, &mut content);
            self.io.consume(decoded.consumed);
            phase = timeouts.data_block;
            size = size.saturating_add(content.len() as u64);
            if !too_big && size_limit.is_some_and(|limit| size > limit) {
                too_big = true;
                if let Some(sink) = sink.take() {
                    sink.abort().await;
                }
            }
            if let Some(open) = &mut sink
                && let Err(error) = open.write(&content).await
            {
                tracing::warn!(client = %self.peer, %error, "lost cleanup while receiving a message");
                sink = None;
            }
            content.clear();
            if decoded.finished {
                break;
            }
        }
        Ok(match sink {
            _ if too_big => Received::TooBig { size },
            Some(sink) => Received::Complete { sink, size },
            None => Received::QueueFailed,
        })
    }

    fn submission(&self) -> Option<Submission> {
        let transaction = self.session.transaction()?;
        let greeting = self.session.greeting()?;
        Some(Submission {
            sender: transaction.sender.clone(),
            recipients: transaction
                .recipients
                .iter()
                .map(|address| Recipient::new(address.as_str()))
                .collect(),
            client: ClientInfo {
                addr: self.peer.clone(),
                helo: greeting.name.clone(),
                name: None,
                protocol: if greeting.extended { "ESMTP" } else { "SMTP" }.to_owned(),
                tls: None,
                authenticated_as: None,
            },
            dsn: DsnParams::default(),
            metadata: self.settings.metadata.clone(),
            smtputf8: false,
        })
    }
}

/// How the message data ended.
enum Received {
    Complete { sink: CleanupClient, size: u64 },
    TooBig { size: u64 },
    QueueFailed,
}

/// Runs an I/O step with the phase's timeout, cut short by the session
/// deadline.
async fn within<T>(
    deadline: Instant,
    phase: Duration,
    operation: impl Future<Output = io::Result<T>>,
) -> Result<T, End> {
    let limit = deadline.min(Instant::now() + phase);
    match tokio::time::timeout_at(limit, operation).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(End::Io(error)),
        Err(_) => Err(End::Timeout),
    }
}

#[cfg(test)]
mod tests;
