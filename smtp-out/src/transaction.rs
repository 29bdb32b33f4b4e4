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
    let reply = connection
        .command("MAIL FROM", timeouts.mail_from_secs, &mail)
        .await?;
    if !reply.is_positive() {
        return Ok(all(&reply));
    }

    let mut results = Vec::with_capacity(job.recipients.len());
    let mut accepted = Vec::new();
    for recipient in &job.recipients {
        let line = format!("RCPT TO:<{}>", recipient.address);
        let reply = connection
            .command("RCPT TO", timeouts.rcpt_to_secs, &line)
            .await?;
        if reply.is_positive() {
            accepted.push(recipient.index);
        } else {
            results.push(result(recipient.index, &reply));
        }
    }
    if accepted.is_empty() {
        connection
            .command("RSET", timeouts.mail_from_secs, "RSET")
            .await?;
        return Ok(results);
    }

    let reply = connection
        .command("DATA", timeouts.data_secs, "DATA")
        .await?;
    let final_reply = if reply.code == 354 {
        send_content(connection, content, timeouts.data_secs).await?;
        connection
            .read_reply("end of data", timeouts.data_secs)
            .await?
    } else {
        reply
    };
    results.extend(
        accepted
            .into_iter()
            .map(|index| result(index, &final_reply)),
    );
    Ok(results)
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
