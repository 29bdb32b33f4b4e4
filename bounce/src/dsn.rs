//! Building an RFC 3464 delivery status notification: a `multipart/report`
//! with a human-readable part, a `message/delivery-status` part and the
//! original headers. Pure functions.

use std::fmt::Write;

use empath_common::queue::{Envelope, RecipientStatus};
use empath_common::time::rfc5322_date;

/// Who is reporting and when.
pub struct Reporter<'a> {
    pub hostname: &'a str,
    pub reporting_mta: &'a str,
    pub now: u64,
}

/// The recipients that failed, with what we know about each.
struct Failure<'a> {
    address: &'a str,
    orcpt: Option<&'a str>,
    status: String,
    diagnostic: String,
    remote: Option<&'a str>,
    at: u64,
}

fn failures(envelope: &Envelope) -> Vec<Failure<'_>> {
    envelope
        .recipients
        .iter()
        .filter(|r| r.notify.failure)
        .filter_map(|recipient| {
            let RecipientStatus::Failed { at, remote, reply } = &recipient.status else {
                return None;
            };
            let class = if reply.is_transient() { '4' } else { '5' };
            let status = reply
                .enhanced
                .clone()
                .unwrap_or_else(|| format!("{class}.0.0"));
            let diagnostic = format!("smtp; {} {}", reply.code, reply.text.replace('\n', " "));
            Some(Failure {
                address: &recipient.address,
                orcpt: recipient.orcpt.as_deref(),
                status,
                diagnostic,
                remote: remote.as_deref(),
                at: *at,
            })
        })
        .collect()
}

/// The DSN for the failed recipients of `envelope`, or `None` when there is
/// none to report (none failed, or NOTIFY excludes failures).
pub fn build(
    envelope: &Envelope,
    original_headers: &[u8],
    reporter: &Reporter<'_>,
) -> Option<Vec<u8>> {
    let failed = failures(envelope);
    if failed.is_empty() {
        return None;
    }
    let boundary = format!("{}/{}", envelope.id, reporter.hostname);
    let mut out = String::new();
    let _ = write!(
        out,
        "From: Mail Delivery System <MAILER-DAEMON@{host}>\r\n\
         To: <{sender}>\r\n\
         Subject: Undelivered Mail Returned to Sender\r\n\
         Date: {date}\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\
         \tboundary=\"{boundary}\"\r\n\
         \r\n\
         This is a MIME-encapsulated message.\r\n\r\n",
        host = reporter.hostname,
        sender = envelope.sender,
        date = rfc5322_date(reporter.now),
    );
    human_part(&mut out, &boundary, reporter, &failed);
    status_part(&mut out, &boundary, envelope, reporter, &failed);
    let _ = write!(
        out,
        "--{boundary}\r\nContent-Description: Undelivered Message Headers\r\nContent-Type: text/rfc822-headers\r\n\r\n"
    );
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(original_headers);
    if !original_headers.ends_with(b"\r\n") {
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    Some(bytes)
}

fn human_part(out: &mut String, boundary: &str, reporter: &Reporter<'_>, failed: &[Failure<'_>]) {
    let _ = write!(
        out,
        "--{boundary}\r\n\
         Content-Description: Notification\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\
         \r\n\
         This is the mail system at host {host}.\r\n\
         \r\n\
         I'm sorry to have to inform you that your message could not\r\n\
         be delivered to one or more recipients.\r\n\
         \r\n",
        host = reporter.hostname
    );
    for failure in failed {
        let _ = write!(
            out,
            "<{}>: {}\r\n",
            failure.address,
            failure.diagnostic.trim_start_matches("smtp; ")
        );
        if let Some(remote) = failure.remote {
            let _ = write!(out, "    (server: {remote})\r\n");
        }
    }
    out.push_str("\r\n");
}

fn status_part(
    out: &mut String,
    boundary: &str,
    envelope: &Envelope,
    reporter: &Reporter<'_>,
    failed: &[Failure<'_>],
) {
    let _ = write!(
        out,
        "--{boundary}\r\nContent-Description: Delivery report\r\nContent-Type: message/delivery-status\r\n\r\n"
    );
    let _ = write!(out, "Reporting-MTA: dns; {}\r\n", reporter.reporting_mta);
    if let Some(envid) = &envelope.dsn.envid {
        let _ = write!(out, "Original-Envelope-Id: {envid}\r\n");
    }
    let _ = write!(out, "Arrival-Date: {}\r\n", rfc5322_date(envelope.arrival));
    for failure in failed {
        out.push_str("\r\n");
        let _ = write!(out, "Final-Recipient: rfc822; {}\r\n", failure.address);
        if let Some(orcpt) = failure.orcpt {
            let _ = write!(out, "Original-Recipient: {orcpt}\r\n");
        }
        let _ = write!(out, "Action: failed\r\nStatus: {}\r\n", failure.status);
        if let Some(remote) = failure.remote {
            let host = remote.rsplit_once(':').map_or(remote, |(host, _)| host);
            let _ = write!(out, "Remote-MTA: dns; {host}\r\n");
        }
        let _ = write!(out, "Diagnostic-Code: {}\r\n", failure.diagnostic);
        let _ = write!(out, "Last-Attempt-Date: {}\r\n", rfc5322_date(failure.at));
    }
    out.push_str("\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use empath_common::queue::{ClientInfo, DsnParams, QueueId, Recipient};
    use empath_common::smtp::Reply;

    fn envelope() -> Envelope {
        let mut delivered = Recipient::new("ok@example.com");
        delivered.status = RecipientStatus::Delivered {
            at: 5,
            remote: "mx:25".into(),
            reply: Reply::new(250, "2.0.0", "ok"),
        };
        let mut failed = Recipient::new("nobody@example.com");
        failed.status = RecipientStatus::Failed {
            at: 6,
            remote: Some("mx.example.com:25".into()),
            reply: Reply::new(550, "5.1.1", "no such user"),
        };
        Envelope {
            id: QueueId::generate(),
            sender: "alice@example.org".into(),
            recipients: vec![delivered, failed],
            arrival: 0,
            attempts: 1,
            next_retry: None,
            last_error: None,
            client: ClientInfo::default(),
            dsn: DsnParams::default(),
            metadata: Default::default(),
            content_size: 1,
            smtputf8: false,
            delay_warned: false,
        }
    }

    fn reporter() -> Reporter<'static> {
        Reporter {
            hostname: "mx.example.org",
            reporting_mta: "mx.example.org",
            now: 10,
        }
    }

    #[test]
    fn reports_only_the_failed_recipient_with_its_fields() {
        let dsn = build(&envelope(), b"Subject: hello\r\n", &reporter()).unwrap();
        let text = String::from_utf8(dsn).unwrap();
        assert!(text.contains("Content-Type: multipart/report; report-type=delivery-status;"));
        assert!(text.contains("Final-Recipient: rfc822; nobody@example.com\r\nAction: failed\r\nStatus: 5.1.1\r\nRemote-MTA: dns; mx.example.com\r\nDiagnostic-Code: smtp; 550 no such user\r\n"));
        assert!(!text.contains("ok@example.com"));
        assert!(text.contains("Content-Type: text/rfc822-headers\r\n\r\nSubject: hello\r\n"));
        assert!(text.ends_with("--\r\n"));
    }

    #[test]
    fn nothing_to_report_without_failures_or_when_notify_excludes_them() {
        let mut env = envelope();
        env.recipients[1].notify.failure = false;
        assert!(build(&env, b"", &reporter()).is_none());
    }
}
