//! One mail transaction (MAIL, RCPT..., DATA) on an open connection, with
//! one result per recipient.

use empath_common::protocol::{DeliveryJob, Outcome, RecipientResult};
use empath_common::smtp::Reply;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use crate::client::{Connection, DotStuffer, SessionError};

const CHUNK: usize = 64 * 1024;

/// The outcome a reply means for a recipient.
pub fn outcome_of(reply: &Reply) -> Outcome {
    if reply.is_positive() {
        Outcome::Delivered
    } else if reply.is_transient() {
        Outcome::Deferred
    } else {
        Outcome::Failed
    }
}

/// Runs the transaction. A [`SessionError`] means the connection failed
/// before every recipient had an answer; results known so far are lost,
/// and the caller defers the job.
pub async fn run<S, C>(
    connection: &mut Connection<S>,
    job: &DeliveryJob,
    content: &mut C,
    remote: &str,
) -> Result<Vec<RecipientResult>, SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    C: AsyncRead + Unpin,
{
    let timeouts = connection.timeouts().clone();
    let result = |index, reply: &Reply| RecipientResult {
        index,
        outcome: outcome_of(reply),
        remote: Some(remote.to_owned()),
        reply: reply.clone(),
    };
    let all = |reply: &Reply| {
        job.recipients
            .iter()
            .map(|r| result(r.index, reply))
            .collect::<Vec<_>>()
    };

    let mut mail = format!("MAIL FROM:<{}>", job.sender);
    if connection.offers("SIZE") {
        mail.push_str(&format!(" SIZE={}", job.content_size));
    }
    if job.smtputf8 && connection.offers("SMTPUTF8") {
        mail.push_str(" SMTPUTF8");
    }
    let (mail_reply, rcpt_replies, data_reply) = if connection.offers("PIPELINING") {
        pipelined(connection, job, &mail).await?
    } else {
        one_by_one(connection, job, &mail).await?
    };
    let Some(mut rcpt_replies) = rcpt_replies else {
        return Ok(all(&mail_reply));
    };

    let mut results = Vec::with_capacity(job.recipients.len());
    let mut accepted = Vec::new();
    for (recipient, reply) in job.recipients.iter().zip(rcpt_replies.drain(..)) {
        if reply.is_positive() {
            accepted.push(recipient.index);
        } else {
            results.push(result(recipient.index, &reply));
        }
    }
    let Some(data_reply) = data_reply else {
        // Sent one by one, and nobody was accepted: nothing to send.
        reset(connection).await;
        return Ok(results);
    };
    if data_reply.code != 354 {
        if !accepted.is_empty() {
            results.extend(accepted.into_iter().map(|index| result(index, &data_reply)));
        }
        // A refused DATA leaves the server's transaction open (RFC 5321
        // section 4.1.1.4): without RSET, the next MAIL on this connection
        // would be a nested MAIL.
        reset(connection).await;
        return Ok(results);
    }
    if accepted.is_empty() {
        // A pipelined DATA the server took although it refused every
        // recipient: send an empty message, so the session stays in step.
        connection
            .send("DATA", timeouts.data_secs, b".\r\n")
            .await?;
        connection
            .read_reply("end of data", timeouts.data_secs)
            .await?;
        return Ok(results);
    }
    send_content(connection, content, timeouts.data_secs).await?;
    let final_reply = connection
        .read_reply("end of data", timeouts.data_secs)
        .await?;
    results.extend(
        accepted
            .into_iter()
            .map(|index| result(index, &final_reply)),
    );
    Ok(results)
}

/// Ends an unfinished transaction so the connection can be reused. The
/// results are already known, so a failure here only matters to the next
/// transaction, which then fails on its own and gets a fresh connection.
async fn reset<S>(connection: &mut Connection<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let secs = connection.timeouts().mail_from_secs;
    match connection.command("RSET", secs, "RSET").await {
        Ok(reply) if reply.is_positive() => {}
        Ok(reply) => tracing::debug!(%reply, "RSET refused"),
        Err(error) => tracing::debug!(%error, "RSET failed"),
    }
}

/// Replies to MAIL, to each RCPT (`None` when MAIL was refused), and to
/// DATA (`None` when it was not sent).
type Replies = (Reply, Option<Vec<Reply>>, Option<Reply>);

/// RFC 2920: MAIL, every RCPT and DATA in one write, then the replies in
/// order.
async fn pipelined<S>(
    connection: &mut Connection<S>,
    job: &DeliveryJob,
    mail: &str,
) -> Result<Replies, SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let timeouts = connection.timeouts().clone();
    let mut batch = format!("{mail}\r\n");
    for recipient in &job.recipients {
        batch.push_str(&format!("RCPT TO:<{}>\r\n", recipient.address));
    }
    batch.push_str("DATA\r\n");
    connection
        .send("MAIL FROM", timeouts.mail_from_secs, batch.as_bytes())
        .await?;
    let mail_reply = connection
        .read_reply("MAIL FROM", timeouts.mail_from_secs)
        .await?;
    let mut rcpt_replies = Vec::with_capacity(job.recipients.len());
    for _ in &job.recipients {
        rcpt_replies.push(
            connection
                .read_reply("RCPT TO", timeouts.rcpt_to_secs)
                .await?,
        );
    }
    let data_reply = connection.read_reply("DATA", timeouts.data_secs).await?;
    if !mail_reply.is_positive() {
        if data_reply.code == 354 {
            connection
                .send("DATA", timeouts.data_secs, b".\r\n")
                .await?;
            connection
                .read_reply("end of data", timeouts.data_secs)
                .await?;
        }
        return Ok((mail_reply, None, None));
    }
    Ok((mail_reply, Some(rcpt_replies), Some(data_reply)))
}

/// Without PIPELINING: each command waits for its reply, and DATA is only
/// sent when a recipient was accepted.
async fn one_by_one<S>(
    connection: &mut Connection<S>,
    job: &DeliveryJob,
    mail: &str,
) -> Result<Replies, SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let timeouts = connection.timeouts().clone();
    let mail_reply = connection
        .command("MAIL FROM", timeouts.mail_from_secs, mail)
        .await?;
    if !mail_reply.is_positive() {
        return Ok((mail_reply, None, None));
    }
    let mut rcpt_replies = Vec::with_capacity(job.recipients.len());
    for recipient in &job.recipients {
        let line = format!("RCPT TO:<{}>", recipient.address);
        rcpt_replies.push(
            connection
                .command("RCPT TO", timeouts.rcpt_to_secs, &line)
                .await?,
        );
    }
    if !rcpt_replies.iter().any(Reply::is_positive) {
        return Ok((mail_reply, Some(rcpt_replies), None));
    }
    let data_reply = connection
        .command("DATA", timeouts.data_secs, "DATA")
        .await?;
    Ok((mail_reply, Some(rcpt_replies), Some(data_reply)))
}

async fn send_content<S, C>(
    connection: &mut Connection<S>,
    content: &mut C,
    secs: u64,
) -> Result<(), SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    C: AsyncRead + Unpin,
{
    let mut stuffer = DotStuffer::default();
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
        stuffer.stuff(&buffer[..read], &mut out);
        connection.send("DATA", secs, &out).await?;
    }
    connection.send("DATA", secs, stuffer.finish()).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use empath_common::protocol::JobRecipient;
    use empath_common::queue::QueueId;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

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
        }
    }

    /// A server that refuses the only recipient and then DATA must get an
    /// RSET, or the next transaction on the connection is a nested MAIL.
    #[tokio::test]
    async fn refused_data_is_followed_by_rset() {
        let (client, server) = tokio::io::duplex(4096);
        let server = tokio::spawn(async move {
            let mut server = BufReader::new(server);
            let mut commands = Vec::new();
            let mut line = String::new();
            // MAIL, RCPT and DATA arrive in one pipelined batch.
            for _ in 0..3 {
                line.clear();
                server.read_line(&mut line).await.unwrap();
                commands.push(line.trim_end().to_owned());
            }
            server
                .get_mut()
                .write_all(
                    b"250 2.1.0 ok\r\n550 5.1.1 no such user\r\n554 5.5.1 no valid recipients\r\n",
                )
                .await
                .unwrap();
            line.clear();
            server.read_line(&mut line).await.unwrap();
            commands.push(line.trim_end().to_owned());
            server
                .get_mut()
                .write_all(b"250 2.0.0 ok\r\n")
                .await
                .unwrap();
            commands
        });
        let mut connection = Connection::over(client, &["PIPELINING"]);
        let mut content: &[u8] = b"hello";
        let results = run(&mut connection, &job(), &mut content, "mx:25")
            .await
            .unwrap();
        assert_eq!(results.len(), 1);
        assert_eq!(results[0].outcome, Outcome::Failed);
        assert_eq!(results[0].reply.code, 550);
        let commands = server.await.unwrap();
        assert_eq!(
            commands.last().map(String::as_str),
            Some("RSET"),
            "{commands:?}"
        );
    }
}
