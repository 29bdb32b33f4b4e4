//! One mail transaction (MAIL, RCPT..., DATA) on an open connection, with
//! one result per recipient.
//!
//! The invariant this module keeps: a recipient is Delivered only when the
//! server answered 2xx to the end-of-data marker (in LMTP, that
//! recipient's own reply to it), after the whole content and the marker
//! were written, and the server had sent nothing before it was asked to. Any reply that breaks the grammar or the command/reply
//! order is a protocol error ([`SessionError::Protocol`]): the caller
//! defers every recipient with 4.5.0 and closes the connection.

use empath_common::protocol::{DeliveryJob, JobRecipient, Outcome, RecipientResult};
use empath_common::smtp::Reply;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use empath_common::content::wire::{self, DataEncoder};

use crate::client::{Connection, SessionError, Unread};
use crate::params::{self, Offered};

const CHUNK: usize = 64 * 1024;

/// The phase name of the RSET that checks a reused connection; an error
/// in it means the connection, not the message, failed.
pub const RSET_PHASE: &str = "RSET";

/// How a transaction ended.
#[derive(Debug)]
pub struct Finished {
    pub results: Vec<RecipientResult>,
    /// Every command got exactly one reply and nothing else is waiting:
    /// the connection may carry another message.
    pub reusable: bool,
    /// The server offered DSN and was given the recipients' NOTIFY and
    /// ORCPT: it reports on the delivered ones from now on.
    pub dsn_passed_on: bool,
}

/// SMTP, or LMTP (RFC 2033), which answers the end of data once per
/// accepted recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Smtp,
    Lmtp,
}

/// Whether the connection carried a message before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    Fresh,
    /// Kept from an earlier transaction: verified with RSET first, as
    /// Postfix's smtp(8) does, so a server that dropped or desynchronised
    /// the idle connection is found out before anything is sent.
    Kept,
}

/// What a reply to MAIL, RCPT or the end of data means. Only 2xx, 4xx and
/// 5xx are answers to these commands; anything else is a protocol error.
fn verdict(phase: &'static str, reply: &Reply) -> Result<Option<Outcome>, SessionError> {
    match reply.code / 100 {
        2 => Ok(None),
        4 => Ok(Some(Outcome::Deferred)),
        5 => Ok(Some(Outcome::Failed)),
        _ => Err(unexpected(phase, reply)),
    }
}

fn unexpected(phase: &'static str, reply: &Reply) -> SessionError {
    SessionError::Protocol {
        phase,
        detail: format!("unexpected reply: {reply}"),
    }
}

/// The reply to DATA: 354 invites the content; 4xx/5xx refuse the message
/// for every accepted recipient. A 2xx here would claim delivery of a
/// message that was never sent: a protocol error, never a success.
enum DataReply {
    GoAhead,
    Refused(Outcome, Reply),
}

fn data_reply(reply: Reply) -> Result<DataReply, SessionError> {
    match reply.code {
        354 => Ok(DataReply::GoAhead),
        400..=599 => Ok(DataReply::Refused(
            if reply.is_transient() {
                Outcome::Deferred
            } else {
                Outcome::Failed
            },
            reply,
        )),
        _ => Err(unexpected("DATA", &reply)),
    }
}

/// Runs the transaction. A [`SessionError`] means the connection failed
/// before every recipient had a trustworthy answer; results known so far
/// are dropped, and the caller defers the job.
pub async fn run<S>(
    connection: &mut Connection<S>,
    job: &DeliveryJob,
    content: Content,
    remote: &str,
    reuse: Reuse,
    dialect: Dialect,
) -> Result<Finished, SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let timeouts = connection.timeouts().clone();
    let result = |index, outcome, reply: &Reply| RecipientResult {
        index,
        outcome,
        remote: Some(remote.to_owned()),
        reply: reply.clone(),
    };

    let offered = offered(connection);
    let dsn_passed_on = offered.dsn;
    // Recipients the server cannot take (SMTPUTF8) fail before MAIL; the
    // reply is ours, not the server's.
    let unsendable = params::need_smtputf8(job, offered);
    let mut results: Vec<RecipientResult> = Vec::with_capacity(job.recipients.len());
    results.extend(unsendable.iter().map(|&index| RecipientResult {
        index,
        outcome: Outcome::Failed,
        remote: None,
        reply: params::smtputf8_refused(remote),
    }));
    let recipients: Vec<&JobRecipient> = job
        .recipients
        .iter()
        .filter(|r| !unsendable.contains(&r.index))
        .collect();
    if recipients.is_empty() {
        return Ok(Finished {
            results,
            reusable: true,
            dsn_passed_on,
        });
    }
    let commands = Commands {
        mail: params::mail_command(job, offered),
        rcpts: recipients
            .iter()
            .map(|r| params::rcpt_command(job, r, offered))
            .collect(),
    };
    // LMTP servers always pipeline (RFC 2033 section 4.1).
    let envelope = if dialect == Dialect::Lmtp || connection.offers("PIPELINING") {
        pipelined(connection, &commands, reuse).await?
    } else {
        one_by_one(connection, &commands, reuse).await?
    };

    if let Some(refused) = verdict("MAIL FROM", &envelope.mail)? {
        results.extend(
            recipients
                .iter()
                .map(|r| result(r.index, refused, &envelope.mail)),
        );
        // No transaction is open; a pipelined DATA may still have to be
        // ended.
        let reusable = match envelope.data.map(data_reply) {
            Some(Ok(DataReply::GoAhead)) => finish_unwanted_data(connection).await?,
            Some(Ok(DataReply::Refused(..))) | None => true,
            Some(Err(_)) => false,
        };
        return Ok(Finished {
            results,
            reusable,
            dsn_passed_on,
        });
    }
    let mut accepted = Vec::new();
    for (recipient, reply) in recipients.iter().zip(&envelope.rcpts) {
        match verdict("RCPT TO", reply)? {
            None => accepted.push(recipient.index),
            Some(refused) => results.push(result(recipient.index, refused, reply)),
        }
    }
    if accepted.is_empty() {
        // MAIL was accepted: end the transaction, so the next MAIL on this
        // connection is not a nested one.
        let reusable = match envelope.data.map(data_reply) {
            Some(Ok(DataReply::GoAhead)) => finish_unwanted_data(connection).await?,
            Some(Ok(DataReply::Refused(..))) | None => reset(connection).await,
            // A 2xx for a message without recipients: out of step.
            Some(Err(_)) => false,
        };
        return Ok(Finished {
            results,
            reusable,
            dsn_passed_on,
        });
    }
    let data = match envelope.data {
        Some(data) => data,
        None => {
            connection
                .command("DATA", timeouts.data_secs, "DATA")
                .await?
        }
    };
    match data_reply(data)? {
        DataReply::Refused(outcome, reply) => {
            results.extend(accepted.iter().map(|&index| result(index, outcome, &reply)));
            // A refused DATA leaves the server's transaction open (RFC 5321
            // section 4.1.1.4): without RSET, the next MAIL on this
            // connection would be a nested MAIL.
            let reusable = reset(connection).await;
            return Ok(Finished {
                results,
                reusable,
                dsn_passed_on,
            });
        }
        DataReply::GoAhead => {}
    }
    // More replies than commands so far: out of step.
    connection.expect_silence("DATA").await?;
    send_content(connection, content, timeouts.data_secs).await?;
    let mut replies = Vec::with_capacity(accepted.len());
    let ends = match dialect {
        // One reply for the whole message.
        Dialect::Smtp => 1,
        // RFC 2033: one reply per accepted recipient, in RCPT order.
        Dialect::Lmtp => accepted.len(),
    };
    for _ in 0..ends {
        match connection
            .read_reply("end of data", timeouts.data_secs)
            .await
        {
            Ok(reply) => {
                let outcome = verdict("end of data", &reply)?.unwrap_or(Outcome::Delivered);
                replies.push((outcome, reply));
            }
            // An LMTP server that went away after answering for some
            // recipients: those answers stand, the others are unknown.
            Err(error @ (SessionError::Io { .. } | SessionError::Timeout { .. }))
                if !replies.is_empty() =>
            {
                let unknown = error.reply();
                results.extend(accepted.iter().enumerate().map(|(nth, &index)| {
                    match replies.get(nth) {
                        Some((outcome, reply)) => result(index, *outcome, reply),
                        None => result(index, Outcome::Deferred, &unknown),
                    }
                }));
                return Ok(Finished {
                    results,
                    reusable: false,
                    dsn_passed_on,
                });
            }
            Err(error) => return Err(error),
        }
    }
    // A reply that was already waiting behind the last one means the
    // replies were sent too early (during the content) or out of step:
    // none of them can be trusted.
    let reusable = match connection.unread().await {
        Unread::Nothing => true,
        Unread::Bytes(bytes) => {
            return Err(SessionError::Protocol {
                phase: "end of data",
                detail: format!("{bytes} more bytes after the replies to the end of data"),
            });
        }
        // The server hung up after answering: the answers stand.
        Unread::Closed | Unread::Failed(_) => false,
    };
    results.extend(accepted.iter().enumerate().map(|(nth, &index)| {
        // SMTP: the one reply is every recipient's.
        let (outcome, reply) = &replies[nth.min(replies.len() - 1)];
        result(index, *outcome, reply)
    }));
    Ok(Finished {
        results,
        reusable,
        dsn_passed_on,
    })
}

/// What the server's EHLO (or LHLO) reply offered.
pub fn offered<S: AsyncRead + AsyncWrite + Unpin>(connection: &Connection<S>) -> Offered {
    Offered {
        size: connection.offers("SIZE"),
        eight_bit_mime: connection.offers("8BITMIME"),
        smtputf8: connection.offers("SMTPUTF8"),
        dsn: connection.offers("DSN"),
        requiretls: connection.offers("REQUIRETLS"),
    }
}

/// The envelope commands of one transaction, parameters included.
struct Commands {
    mail: String,
    /// One per recipient that is sent, in order.
    rcpts: Vec<String>,
}

/// The server accepted DATA although it had no recipient for the message
/// (a pipelined DATA goes out before the RCPT replies are known): send an
/// empty message, so the session stays in step. Returns whether the
/// connection is still in step.
async fn finish_unwanted_data<S>(connection: &mut Connection<S>) -> Result<bool, SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let secs = connection.timeouts().data_secs;
    connection.send("DATA", secs, b".\r\n").await?;
    connection.read_reply("end of data", secs).await?;
    Ok(connection.unread().await == Unread::Nothing)
}

/// Ends an unfinished transaction. The results are already known, so a
/// failure here only means the connection is not reused.
async fn reset<S>(connection: &mut Connection<S>) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let secs = connection.timeouts().mail_from_secs;
    match connection.command(RSET_PHASE, secs, "RSET").await {
        Ok(reply) if reply.is_completion() => connection.unread().await == Unread::Nothing,
        Ok(reply) => {
            tracing::debug!(%reply, "RSET refused");
            false
        }
        Err(error) => {
            tracing::debug!(%error, "RSET failed");
            false
        }
    }
}

/// The replies to the envelope commands: MAIL, each RCPT (empty when MAIL
/// was refused without pipelining), and DATA (`None` when not sent yet).
struct EnvelopeReplies {
    mail: Reply,
    rcpts: Vec<Reply>,
    data: Option<Reply>,
}

/// Reads the reply to the RSET that checks a kept connection.
async fn check_reset<S>(connection: &mut Connection<S>) -> Result<(), SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let secs = connection.timeouts().mail_from_secs;
    let reply = connection.read_reply(RSET_PHASE, secs).await?;
    if reply.is_completion() {
        Ok(())
    } else {
        Err(unexpected(RSET_PHASE, &reply))
    }
}

/// RFC 2920: [RSET,] MAIL, every RCPT and DATA in one write, then exactly
/// one reply per command, in order.
async fn pipelined<S>(
    connection: &mut Connection<S>,
    commands: &Commands,
    reuse: Reuse,
) -> Result<EnvelopeReplies, SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let timeouts = connection.timeouts().clone();
    let mut batch = String::new();
    if reuse == Reuse::Kept {
        batch.push_str("RSET\r\n");
    }
    batch.push_str(&commands.mail);
    batch.push_str("\r\n");
    for rcpt in &commands.rcpts {
        batch.push_str(rcpt);
        batch.push_str("\r\n");
    }
    batch.push_str("DATA\r\n");
    let first_phase = match reuse {
        Reuse::Kept => RSET_PHASE,
        Reuse::Fresh => "MAIL FROM",
    };
    connection
        .send(first_phase, timeouts.mail_from_secs, batch.as_bytes())
        .await?;
    if reuse == Reuse::Kept {
        check_reset(connection).await?;
    }
    // Each reply is checked as it arrives: one that cannot answer its
    // command means the replies are out of step, and waiting for the rest
    // would only end in a timeout.
    let mail = connection
        .read_reply("MAIL FROM", timeouts.mail_from_secs)
        .await?;
    verdict("MAIL FROM", &mail)?;
    let mut rcpts = Vec::with_capacity(commands.rcpts.len());
    for _ in &commands.rcpts {
        let reply = connection
            .read_reply("RCPT TO", timeouts.rcpt_to_secs)
            .await?;
        verdict("RCPT TO", &reply)?;
        rcpts.push(reply);
    }
    let data = connection.read_reply("DATA", timeouts.data_secs).await?;
    Ok(EnvelopeReplies {
        mail,
        rcpts,
        data: Some(data),
    })
}

/// Without PIPELINING: each command waits for its reply, and DATA is only
/// sent when a recipient was accepted.
async fn one_by_one<S>(
    connection: &mut Connection<S>,
    commands: &Commands,
    reuse: Reuse,
) -> Result<EnvelopeReplies, SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let timeouts = connection.timeouts().clone();
    if reuse == Reuse::Kept {
        connection
            .send(RSET_PHASE, timeouts.mail_from_secs, b"RSET\r\n")
            .await?;
        check_reset(connection).await?;
    }
    let mail = connection
        .command("MAIL FROM", timeouts.mail_from_secs, &commands.mail)
        .await?;
    let mut rcpts = Vec::with_capacity(commands.rcpts.len());
    if verdict("MAIL FROM", &mail)?.is_none() {
        for line in &commands.rcpts {
            let reply = connection
                .command("RCPT TO", timeouts.rcpt_to_secs, line)
                .await?;
            verdict("RCPT TO", &reply)?;
            rcpts.push(reply);
        }
    }
    Ok(EnvelopeReplies {
        mail,
        rcpts,
        data: None,
    })
}

/// A message's content, as a transaction sends it.
pub enum Content {
    /// Read whole into memory.
    Whole(Vec<u8>),
    /// Read from the file as it is sent (large content).
    Streamed(Box<dyn AsyncRead + Unpin + Send>),
}

/// Writes the dot-stuffed content and the end-of-data marker. Before each
/// piece, checks that the server has not replied yet: a reply during the
/// content is premature, and taking it as the answer to the end of data
/// would record a delivery the server never made.
async fn send_content<S>(
    connection: &mut Connection<S>,
    content: Content,
    secs: u64,
) -> Result<(), SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match content {
        // Most queued content is in its wire form already: it goes as it
        // is, with no copy.
        Content::Whole(whole) if wire::is_wire_ready(&whole) => {
            let mut pieces = whole.chunks(CHUNK).peekable();
            while let Some(piece) = pieces.next() {
                if pieces.peek().is_none() {
                    return send_piece(connection, secs, &[piece, END_OF_DATA]).await;
                }
                send_piece(connection, secs, &[piece]).await?;
            }
            send_piece(connection, secs, &[END_OF_DATA]).await
        }
        // Rare (an older queue file): encoded as content read from a file.
        Content::Whole(whole) => send_encoded(connection, &mut whole.as_slice(), secs).await,
        Content::Streamed(mut reader) => send_encoded(connection, &mut reader, secs).await,
    }
}

/// The end-of-data marker after content that ends with its line.
const END_OF_DATA: &[u8] = b".\r\n";

/// Sends content as [`DataEncoder`] encodes it, piece by piece as it is
/// read.
async fn send_encoded<S>(
    connection: &mut Connection<S>,
    content: &mut (dyn AsyncRead + Unpin + Send),
    secs: u64,
) -> Result<(), SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut encoder = DataEncoder::new();
    let mut buffer = vec![0u8; CHUNK];
    let mut out = Vec::with_capacity(CHUNK + CHUNK / 8);
    loop {
        let read = content
            .read(&mut buffer)
            .await
            .map_err(|e| SessionError::Io {
                phase: "reading queued content",
                detail: e.to_string(),
            })?;
        if read == 0 {
            break;
        }
        out.clear();
        encoder.encode(&buffer[..read], &mut out);
        send_piece(connection, secs, &[&out]).await?;
    }
    out.clear();
    encoder.finish(&mut out);
    send_piece(connection, secs, &[&out]).await
}

/// Sends a piece of the content, once sure that the server has not
/// replied during it.
async fn send_piece<S>(
    connection: &mut Connection<S>,
    secs: u64,
    parts: &[&[u8]],
) -> Result<(), SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    connection.expect_silence("DATA").await?;
    connection.send_parts("DATA", secs, parts).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use empath_common::protocol::JobRecipient;
    use empath_common::queue::QueueId;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream};

    fn job() -> DeliveryJob {
        DeliveryJob {
            id: QueueId::generate(),
            sender: "a@example.org".into(),
            domain: "example.com".into(),
            recipients: vec![JobRecipient {
                index: 0,
                address: "nobody@example.com".into(),
            }],
            content_size: 5,
            smtputf8: false,
            active_since_ms: 0,
            attempt: 1,
            pass_on: Default::default(),
        }
    }

    /// The scripted server side of a test connection.
    struct Server(BufReader<DuplexStream>);

    impl Server {
        /// Reads one line, without its line ending.
        async fn line(&mut self) -> String {
            let mut line = String::new();
            self.0.read_line(&mut line).await.unwrap();
            line.trim_end().to_owned()
        }

        /// Reads the content after the 354, as it came, up to and
        /// including the end-of-data line.
        async fn raw_content(&mut self) -> Vec<u8> {
            let mut raw = Vec::new();
            loop {
                let start = raw.len();
                if self.0.read_until(b'\n', &mut raw).await.unwrap() == 0 {
                    return raw;
                }
                if raw[start..] == *b".\r\n" {
                    return raw;
                }
            }
        }

        async fn lines(&mut self, count: usize) -> Vec<String> {
            let mut lines = Vec::new();
            for _ in 0..count {
                lines.push(self.line().await);
            }
            lines
        }

        async fn say(&mut self, bytes: &[u8]) {
            self.0.get_mut().write_all(bytes).await.unwrap();
        }

        /// Keeps the connection open until the client drops it, so the
        /// client does not see it closed.
        async fn until_closed(mut self) {
            let mut rest = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut self.0, &mut rest).await;
        }

        /// Reads content lines up to and including the final `.`.
        async fn content(&mut self) -> usize {
            let mut lines = 0;
            while self.line().await != "." {
                lines += 1;
            }
            lines
        }
    }

    /// Runs one transaction for `job()` with `content` against `script`,
    /// on a connection offering `extensions`.
    async fn transact<F, Fut>(
        extensions: &[&str],
        reuse: Reuse,
        content: &[u8],
        buffer: usize,
        script: F,
    ) -> Result<Finished, SessionError>
    where
        F: FnOnce(Server) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let session = Session {
            dialect: Dialect::Smtp,
            job: job(),
            extensions,
            reuse,
            content,
            buffer,
            streamed: false,
        };
        session.run(script).await
    }

    /// One test transaction's client side.
    struct Session<'a> {
        dialect: Dialect,
        job: DeliveryJob,
        extensions: &'a [&'a str],
        reuse: Reuse,
        content: &'a [u8],
        buffer: usize,
        /// Sent as content read from a file, not held whole.
        streamed: bool,
    }

    impl Session<'_> {
        async fn run<F, Fut>(self, script: F) -> Result<Finished, SessionError>
        where
            F: FnOnce(Server) -> Fut + Send + 'static,
            Fut: std::future::Future<Output = ()> + Send + 'static,
        {
            let (client, server) = tokio::io::duplex(self.buffer);
            let server = tokio::spawn(script(Server(BufReader::new(server))));
            let mut connection = Connection::over(client, self.extensions);
            let content = if self.streamed {
                Content::Streamed(Box::new(std::io::Cursor::new(self.content.to_vec())))
            } else {
                Content::Whole(self.content.to_vec())
            };
            let result = run(
                &mut connection,
                &self.job,
                content,
                "mx:25",
                self.reuse,
                self.dialect,
            )
            .await;
            drop(connection);
            server.await.unwrap();
            result
        }
    }

    fn three_recipients() -> DeliveryJob {
        let mut job = job();
        job.recipients = ["a", "b", "c"]
            .iter()
            .enumerate()
            .map(|(index, name)| JobRecipient {
                index,
                address: format!("{name}@example.com"),
            })
            .collect();
        job
    }

    async fn lmtp<F, Fut>(script: F) -> Result<Finished, SessionError>
    where
        F: FnOnce(Server) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let session = Session {
            dialect: Dialect::Lmtp,
            job: three_recipients(),
            extensions: &[],
            reuse: Reuse::Fresh,
            content: b"x\r\n",
            buffer: 4096,
            streamed: false,
        };
        session.run(script).await
    }

    fn outcomes(finished: &Finished) -> Vec<(usize, Outcome, u16)> {
        let mut all: Vec<_> = finished
            .results
            .iter()
            .map(|r| (r.index, r.outcome, r.reply.code))
            .collect();
        all.sort_by_key(|r| r.0);
        all
    }

    /// LMTP: each accepted recipient gets its own reply after the content.
    #[tokio::test]
    async fn lmtp_gives_each_recipient_its_own_reply() {
        let finished = lmtp(|mut s| async move {
            // Pipelined even without the extension being announced.
            assert_eq!(s.lines(5).await[4], "DATA");
            s.say(b"250 ok\r\n250 ok\r\n550 5.1.1 no such user\r\n250 ok\r\n354 go\r\n")
                .await;
            s.content().await;
            s.say(b"250 2.0.0 a saved\r\n452 4.2.2 c over quota\r\n")
                .await;
            s.until_closed().await;
        })
        .await
        .unwrap();
        assert_eq!(
            outcomes(&finished),
            vec![
                (0, Outcome::Delivered, 250),
                (1, Outcome::Failed, 550),
                (2, Outcome::Deferred, 452)
            ]
        );
    }

    /// The server goes away after answering for the first recipient: that
    /// answer stands, the others are deferred.
    #[tokio::test]
    async fn lmtp_answers_given_before_a_hang_up_stand() {
        let finished = lmtp(|mut s| async move {
            s.lines(5).await;
            s.say(b"250 ok\r\n250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n")
                .await;
            s.content().await;
            s.say(b"250 2.0.0 a saved\r\n").await;
        })
        .await
        .unwrap();
        assert_eq!(
            outcomes(&finished),
            vec![
                (0, Outcome::Delivered, 250),
                (1, Outcome::Deferred, 451),
                (2, Outcome::Deferred, 451)
            ]
        );
        assert!(!finished.reusable);
    }

    /// More replies than recipients, or a malformed one: nothing is
    /// trusted.
    #[tokio::test]
    async fn lmtp_replies_out_of_step_are_protocol_errors() {
        let extra = lmtp(|mut s| async move {
            s.lines(5).await;
            s.say(b"250 ok\r\n250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n")
                .await;
            s.content().await;
            s.say(b"250 a\r\n250 b\r\n250 c\r\n250 d\r\n").await;
            s.until_closed().await;
        })
        .await;
        assert!(is_protocol_error(&extra), "{extra:?}");
        let malformed = lmtp(|mut s| async move {
            s.lines(5).await;
            s.say(b"250 ok\r\n250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n")
                .await;
            s.content().await;
            s.say(b"250 a\r\n2500 b\r\n").await;
            s.until_closed().await;
        })
        .await;
        assert!(is_protocol_error(&malformed), "{malformed:?}");
    }

    fn is_protocol_error(result: &Result<Finished, SessionError>) -> bool {
        matches!(result, Err(SessionError::Protocol { .. }))
    }

    /// A server that refuses the only recipient and then DATA must get an
    /// RSET, or the next transaction on the connection is a nested MAIL.
    #[tokio::test]
    async fn refused_data_is_followed_by_rset() {
        let finished = transact(
            &["PIPELINING"],
            Reuse::Fresh,
            b"hello",
            4096,
            |mut s| async move {
                assert_eq!(s.lines(3).await[2], "DATA");
                s.say(
                    b"250 2.1.0 ok\r\n550 5.1.1 no such user\r\n554 5.5.1 no valid recipients\r\n",
                )
                .await;
                assert_eq!(s.line().await, "RSET");
                s.say(b"250 2.0.0 ok\r\n").await;
                s.until_closed().await;
            },
        )
        .await
        .unwrap();
        assert_eq!(finished.results.len(), 1);
        assert_eq!(finished.results[0].outcome, Outcome::Failed);
        assert_eq!(finished.results[0].reply.code, 550);
        assert!(finished.reusable);
    }

    #[tokio::test]
    async fn a_clean_transaction_delivers_and_may_be_reused() {
        let finished = transact(
            &["PIPELINING"],
            Reuse::Fresh,
            b"hello\r\n",
            4096,
            |mut s| async move {
                s.lines(3).await;
                s.say(b"250 ok\r\n250 ok\r\n354 go\r\n").await;
                assert_eq!(s.content().await, 1);
                s.say(b"250 2.0.0 queued\r\n").await;
                s.until_closed().await;
            },
        )
        .await
        .unwrap();
        assert_eq!(finished.results[0].outcome, Outcome::Delivered);
        assert!(finished.reusable);
    }

    /// A 2xx to DATA claims a message that was never sent.
    #[tokio::test]
    async fn a_2xx_reply_to_data_is_a_protocol_error() {
        for extensions in [&["PIPELINING"][..], &[][..]] {
            let pipelining = !extensions.is_empty();
            let result = transact(
                extensions,
                Reuse::Fresh,
                b"hello\r\n",
                4096,
                move |mut s| async move {
                    if pipelining {
                        s.lines(3).await;
                        s.say(b"250 ok\r\n250 ok\r\n250 DATA accepted without content\r\n")
                            .await;
                    } else {
                        for reply in [&b"250 ok\r\n"[..], b"250 ok\r\n", b"250 DATA accepted\r\n"] {
                            s.line().await;
                            s.say(reply).await;
                        }
                    }
                },
            )
            .await;
            assert!(is_protocol_error(&result), "{extensions:?}: {result:?}");
        }
    }

    /// What the next hop receives after its 354, byte for byte, for
    /// content held whole (sent as it is when it is in wire form) and for
    /// content streamed from its file: what the encoder makes of it.
    #[tokio::test]
    async fn the_next_hop_receives_the_encoded_content_byte_for_byte() {
        let long_line = "x".repeat(2500);
        let contents: Vec<Vec<u8>> = vec![
            b"Subject: a\r\n\r\nbody\r\n".to_vec(),
            b"a\r\n.\r\nb\r\n".to_vec(),
            b"a\n.\nb\r\n".to_vec(),
            b"a\r.\rb".to_vec(),
            b"no final line end".to_vec(),
            Vec::new(),
            "line\r\n".repeat(30_000).into_bytes(),
            format!("{long_line}\r\n").repeat(100).into_bytes(),
            ["line\r\n".repeat(20_000), ".dot\r\n".to_owned()]
                .concat()
                .into_bytes(),
        ];
        for content in &contents {
            let mut expected = Vec::new();
            let mut encoder = DataEncoder::new();
            encoder.encode(content, &mut expected);
            encoder.finish(&mut expected);
            for streamed in [false, true] {
                let (received_tx, received) = tokio::sync::oneshot::channel();
                let session = Session {
                    dialect: Dialect::Smtp,
                    job: job(),
                    extensions: &["PIPELINING"],
                    reuse: Reuse::Fresh,
                    content,
                    buffer: 4096,
                    streamed,
                };
                let result = session
                    .run(|mut s| async move {
                        s.lines(3).await;
                        s.say(b"250 ok\r\n250 ok\r\n354 go\r\n").await;
                        let raw = s.raw_content().await;
                        s.say(b"250 queued\r\n").await;
                        let _ = received_tx.send(raw);
                    })
                    .await
                    .unwrap();
                assert_eq!(outcomes(&result), [(0, Outcome::Delivered, 250)]);
                let raw = received.await.unwrap();
                assert_eq!(wire::check_stream(&raw), Ok(()));
                assert!(
                    raw == expected,
                    "{} bytes of content, streamed: {streamed}",
                    content.len()
                );
            }
        }
    }

    /// A reply that arrives while the content is still being sent is not
    /// the answer to the end of data.
    #[tokio::test]
    async fn a_reply_during_the_content_is_a_protocol_error() {
        // Larger than one write, through a small pipe: the client is still
        // writing when the early reply arrives. Content in wire form (sent
        // as it is) and content the encoder changes (a bare LF).
        for content in [
            "line of content\r\n".repeat(20_000),
            "line of content\n".repeat(20_000),
        ] {
            let result = transact(
                &["PIPELINING"],
                Reuse::Fresh,
                content.as_bytes(),
                1024,
                |mut s| async move {
                    s.lines(3).await;
                    s.say(b"250 ok\r\n250 ok\r\n354 go\r\n").await;
                    s.line().await;
                    s.say(b"250 ok early\r\n").await;
                    // Read on, so the client is not stuck writing.
                    let mut sink = Vec::new();
                    let _ = tokio::io::AsyncReadExt::read_to_end(&mut s.0, &mut sink).await;
                },
            )
            .await;
            assert!(is_protocol_error(&result), "{result:?}");
        }
    }

    /// Two replies after the end of data: the first was premature.
    #[tokio::test]
    async fn more_replies_after_the_end_of_data_are_a_protocol_error() {
        let result = transact(
            &["PIPELINING"],
            Reuse::Fresh,
            b"x\r\n",
            4096,
            |mut s| async move {
                s.lines(3).await;
                s.say(b"250 ok\r\n250 ok\r\n354 go\r\n").await;
                s.content().await;
                s.say(b"250 ok\r\n250 ok\r\n").await;
            },
        )
        .await;
        assert!(is_protocol_error(&result), "{result:?}");
    }

    /// Replies out of step with a pipelined batch: one too many before the
    /// 354, or one missing.
    #[tokio::test]
    async fn out_of_step_pipelining_replies_are_protocol_errors() {
        let extra = transact(
            &["PIPELINING"],
            Reuse::Fresh,
            b"x\r\n",
            4096,
            |mut s| async move {
                s.lines(3).await;
                s.say(b"250 ok\r\n250 ok\r\n354 go\r\n250 extra\r\n").await;
                let mut sink = Vec::new();
                let _ = tokio::io::AsyncReadExt::read_to_end(&mut s.0, &mut sink).await;
            },
        )
        .await;
        assert!(is_protocol_error(&extra), "{extra:?}");
        let missing = transact(
            &["PIPELINING"],
            Reuse::Fresh,
            b"x\r\n",
            4096,
            |mut s| async move {
                s.lines(3).await;
                // No reply to RCPT: the 354 lands on it.
                s.say(b"250 ok\r\n354 go\r\n").await;
                let mut sink = Vec::new();
                let _ = tokio::io::AsyncReadExt::read_to_end(&mut s.0, &mut sink).await;
            },
        )
        .await;
        assert!(is_protocol_error(&missing), "{missing:?}");
    }

    #[tokio::test]
    async fn malformed_replies_are_protocol_errors() {
        for bad in [&b"2500 x\r\n"[..], b"250\0x\r\n", b"25\r\n", b"abc\r\n"] {
            let result = transact(
                &["PIPELINING"],
                Reuse::Fresh,
                b"x\r\n",
                4096,
                move |mut s| async move {
                    s.lines(3).await;
                    s.say(b"250 ok\r\n250 ok\r\n354 go\r\n").await;
                    s.content().await;
                    s.say(bad).await;
                },
            )
            .await;
            assert!(
                is_protocol_error(&result),
                "{:?}: {result:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// A kept connection is checked with RSET, pipelined ahead of MAIL; a
    /// stale reply queued on it shifts every later reply, so DATA gets a
    /// 250 instead of 354.
    #[tokio::test]
    async fn a_kept_connection_is_checked_with_rset() {
        let clean = transact(
            &["PIPELINING"],
            Reuse::Kept,
            b"x\r\n",
            4096,
            |mut s| async move {
                assert_eq!(s.lines(4).await[0], "RSET");
                s.say(b"250 reset\r\n250 ok\r\n250 ok\r\n354 go\r\n").await;
                s.content().await;
                s.say(b"250 ok\r\n").await;
            },
        )
        .await
        .unwrap();
        assert_eq!(clean.results[0].outcome, Outcome::Delivered);
        let stale = transact(
            &["PIPELINING"],
            Reuse::Kept,
            b"x\r\n",
            4096,
            |mut s| async move {
                s.lines(4).await;
                s.say(b"250 stale\r\n250 reset\r\n250 ok\r\n250 ok\r\n354 go\r\n")
                    .await;
                let mut sink = Vec::new();
                let _ = tokio::io::AsyncReadExt::read_to_end(&mut s.0, &mut sink).await;
            },
        )
        .await;
        assert!(is_protocol_error(&stale), "{stale:?}");
        let refused = transact(&[], Reuse::Kept, b"x\r\n", 4096, |mut s| async move {
            assert_eq!(s.line().await, "RSET");
            s.say(b"500 what\r\n").await;
        })
        .await;
        assert!(
            matches!(&refused, Err(e) if e.phase() == Some(RSET_PHASE)),
            "{refused:?}"
        );
    }

    /// The server hangs up after 354: nothing is delivered.
    #[tokio::test]
    async fn a_close_before_the_final_reply_delivers_nothing() {
        let result = transact(
            &["PIPELINING"],
            Reuse::Fresh,
            b"x\r\n",
            4096,
            |mut s| async move {
                s.lines(3).await;
                s.say(b"250 ok\r\n250 ok\r\n354 go\r\n").await;
                s.content().await;
            },
        )
        .await;
        assert!(matches!(result, Err(SessionError::Io { .. })), "{result:?}");
    }

    /// 3xx to RCPT is not an answer RCPT can have.
    #[tokio::test]
    async fn an_intermediate_reply_to_rcpt_is_a_protocol_error() {
        let result = transact(&[], Reuse::Fresh, b"x\r\n", 4096, |mut s| async move {
            s.line().await;
            s.say(b"250 ok\r\n").await;
            s.line().await;
            s.say(b"354 go\r\n").await;
        })
        .await;
        assert!(is_protocol_error(&result), "{result:?}");
    }
}
