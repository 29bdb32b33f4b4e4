//! Building an RFC 3464 delivery status notification: a `multipart/report`
//! with a human-readable part, a `message/delivery-status` part and the
//! original message or its headers (RFC 3462). Pure functions.
//!
//! Every line is CRLF-terminated and at most 998 octets: reply texts are
//! cleaned of control characters, capped and folded at spaces. A message
//! that needs SMTPUTF8 gets the RFC 6533 types (`message/global-*`).

use std::fmt::Write;

use empath_common::queue::{Envelope, RecipientStatus};
use empath_common::smtp::Reply;
use empath_common::time::rfc5322_date;

use crate::original::Returned;
use crate::policy::NoticeKind;

/// Who is reporting, when, and the settings that show in the report.
pub struct Reporter<'a> {
    pub hostname: &'a str,
    pub reporting_mta: &'a str,
    pub postmaster: &'a str,
    pub now: u64,
    /// `delivery.max_queue_lifetime_secs`, for `Will-Retry-Until:`.
    pub max_queue_lifetime_secs: u64,
}

/// One notice to build.
pub struct Notice<'a> {
    pub kind: NoticeKind,
    /// The message reported on.
    pub envelope: &'a Envelope,
    /// Who receives the notice.
    pub to: &'a str,
    pub returned: &'a Returned,
}

/// A built notice.
#[derive(Debug)]
pub struct Built {
    pub message: Vec<u8>,
    /// The notice needs SMTPUTF8 (non-ASCII addresses).
    pub smtputf8: bool,
    /// How many recipients it reports on.
    pub recipients: usize,
}

/// Folded lines are kept to this length where the words allow.
const FOLD_AT: usize = 76;
/// Longest text (in octets) taken from a reply or a parameter: with
/// folding, every line stays below the 998-octet limit.
const MAX_TEXT: usize = 900;

/// One recipient's entry in the report.
struct Entry<'a> {
    address: &'a str,
    orcpt: Option<&'a str>,
    action: &'static str,
    status: String,
    reply: Option<&'a Reply>,
    remote: Option<&'a str>,
    at: Option<u64>,
}

/// The recipients a notice of `kind` reports on, honouring NOTIFY: a final
/// report covers both the failed and the delivered recipients that asked.
fn entries(envelope: &Envelope, kind: NoticeKind) -> Vec<Entry<'_>> {
    let mut entries = Vec::new();
    for recipient in &envelope.recipients {
        let (action, reply, remote, at) = match (&recipient.status, kind) {
            (RecipientStatus::Failed { at, remote, reply }, NoticeKind::Failure)
                if recipient.notify.failure =>
            {
                ("failed", Some(reply), remote.as_deref(), Some(*at))
            }
            // Our own DSN carries no NOTIFY worth honouring: the
            // postmaster always hears of its failure.
            (RecipientStatus::Failed { at, remote, reply }, NoticeKind::DoubleBounce) => {
                ("failed", Some(reply), remote.as_deref(), Some(*at))
            }
            // Delivered by SMTP to a server that was not asked to report
            // further: "relayed" (RFC 3461, 6.2.1). A server that offered
            // DSN was given the NOTIFY and reports itself: nothing here.
            (
                RecipientStatus::Delivered {
                    at,
                    remote,
                    reply,
                    dsn_passed_on: false,
                },
                NoticeKind::Failure | NoticeKind::Success,
            ) if recipient.notify.success => {
                ("relayed", Some(reply), Some(remote.as_str()), Some(*at))
            }
            (RecipientStatus::Deferred { at, remote, reply }, NoticeKind::Delay)
                if recipient.notify.delay =>
            {
                ("delayed", Some(reply), remote.as_deref(), Some(*at))
            }
            (RecipientStatus::Pending, NoticeKind::Delay) if recipient.notify.delay => {
                ("delayed", None, None, None)
            }
            _ => continue,
        };
        let mut status = reply.map_or_else(|| "4.0.0".to_owned(), status_code);
        if action == "delayed" && !status.starts_with('4') {
            status = "4.0.0".to_owned();
        }
        entries.push(Entry {
            address: &recipient.address,
            orcpt: recipient.orcpt.as_deref(),
            action,
            status,
            reply,
            remote,
            at,
        });
    }
    entries
}

/// The RFC 3463 status of a reply: its enhanced code when that is well
/// formed and of the reply's class, else `class.0.0`.
pub fn status_code(reply: &Reply) -> String {
    let class = match reply.code / 100 {
        2 => "2",
        4 => "4",
        _ => "5",
    };
    match &reply.enhanced {
        Some(code) if is_status(code, class) => code.clone(),
        _ => format!("{class}.0.0"),
    }
}

fn is_status(code: &str, class: &str) -> bool {
    let parts: Vec<&str> = code.split('.').collect();
    let number =
        |part: &str| (1..=3).contains(&part.len()) && part.bytes().all(|b| b.is_ascii_digit());
    parts.len() == 3 && parts[0] == class && number(parts[1]) && number(parts[2])
}

/// The host part of smtp-out's server description (`name [ip:port]` or
/// `ip:port`), for `Remote-MTA:`.
pub fn remote_host(remote: &str) -> &str {
    if let Some((name, _)) = remote.split_once(" [") {
        return name;
    }
    let host = match remote.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => remote,
    };
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// `code enhanced text`, on one line.
fn reply_line(reply: &Reply) -> String {
    match &reply.enhanced {
        Some(enhanced) => format!("{} {enhanced} {}", reply.code, reply.text),
        None => format!("{} {}", reply.code, reply.text),
    }
}

/// `text` with control characters (line breaks included) turned into
/// spaces, runs of spaces collapsed, and cut to [`MAX_TEXT`] characters.
fn clean(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if c == ' ' && (out.is_empty() || out.ends_with(' ')) {
            continue;
        }
        if out.len() + c.len_utf8() > MAX_TEXT {
            break;
        }
        out.push(c);
    }
    out.trim_end().to_owned()
}

/// Appends `first` followed by `text`, wrapped at spaces: continuation
/// lines start with `indent` (whitespace, so a header field stays one
/// field once unfolded).
fn push_wrapped(out: &mut String, first: &str, text: &str, indent: &str) {
    let mut line = first.to_owned();
    let mut fresh = true;
    for word in clean(text).split(' ').filter(|w| !w.is_empty()) {
        if !fresh && line.len() + 1 + word.len() > FOLD_AT {
            out.push_str(&line);
            out.push_str("\r\n");
            line = format!("{indent}{word}");
            continue;
        }
        if !line.is_empty() && !line.ends_with(' ') {
            line.push(' ');
        }
        line.push_str(word);
        fresh = false;
    }
    out.push_str(&line);
    out.push_str("\r\n");
}

/// A header (or delivery-status) field, folded.
fn push_field(out: &mut String, name: &str, value: &str) {
    push_wrapped(out, &format!("{name}:"), value, " ");
}

fn is_ascii(text: &str) -> bool {
    text.is_ascii()
}

/// `rfc822; addr`, or `utf-8; addr` for an internationalised address.
fn typed_address(address: &str) -> String {
    let address = clean(address);
    if is_ascii(&address) {
        format!("rfc822; {address}")
    } else {
        format!("utf-8; {address}")
    }
}

/// "3 hours", "1 day", "45 seconds": the largest unit that fits.
pub fn duration_words(secs: u64) -> String {
    let (amount, unit) = match secs {
        s if s >= 86_400 => (s / 86_400, "day"),
        s if s >= 3_600 => (s / 3_600, "hour"),
        s if s >= 60 => (s / 60, "minute"),
        s => (s, "second"),
    };
    if amount == 1 {
        format!("1 {unit}")
    } else {
        format!("{amount} {unit}s")
    }
}

/// A MIME boundary that does not occur in `content`.
fn boundary_for(envelope: &Envelope, now: u64, content: &[u8]) -> String {
    let base = format!("=_empath_{}_{now}", envelope.id);
    let mut boundary = base.clone();
    let mut n = 0;
    while contains(content, boundary.as_bytes()) {
        n += 1;
        boundary = format!("{base}_{n}");
    }
    boundary
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Builds the notice, or `None` when it would report on nobody (nobody
/// failed, was delivered with NOTIFY=SUCCESS or is delayed, or NOTIFY
/// excludes them all).
pub fn build(notice: &Notice<'_>, reporter: &Reporter<'_>) -> Option<Built> {
    let envelope = notice.envelope;
    let entries = entries(envelope, notice.kind);
    if entries.is_empty() {
        return None;
    }
    let smtputf8 = envelope.smtputf8
        || !is_ascii(notice.to)
        || entries
            .iter()
            .any(|e| !is_ascii(e.address) || !e.orcpt.is_none_or(is_ascii));
    let returned = notice.returned.bytes();
    let eight_bit = !returned.is_ascii();
    let boundary = boundary_for(envelope, reporter.now, returned);

    let mut out = String::new();
    headers(&mut out, notice, reporter, &boundary, smtputf8 || eight_bit);
    let _ = write!(
        out,
        "This is a MIME-encapsulated message.\r\n\r\n--{boundary}\r\n"
    );
    human_part(&mut out, notice, reporter, &entries, smtputf8);
    let _ = write!(out, "\r\n--{boundary}\r\n");
    status_part(&mut out, notice, reporter, &entries, smtputf8);
    let _ = write!(out, "\r\n--{boundary}\r\n");
    returned_part_headers(&mut out, notice, smtputf8, eight_bit);

    let mut message = out.into_bytes();
    message.extend_from_slice(returned);
    if !returned.is_empty() && !returned.ends_with(b"\r\n") {
        message.extend_from_slice(b"\r\n");
    }
    message.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    Some(Built {
        message,
        smtputf8,
        recipients: entries.len(),
    })
}

fn headers(
    out: &mut String,
    notice: &Notice<'_>,
    reporter: &Reporter<'_>,
    boundary: &str,
    eight_bit: bool,
) {
    let (from, subject) = match notice.kind {
        NoticeKind::Failure => (
            reporter.postmaster.to_owned(),
            "Undelivered Mail Returned to Sender",
        ),
        NoticeKind::Success => (
            reporter.postmaster.to_owned(),
            "Successful Mail Delivery Report",
        ),
        NoticeKind::Delay => (
            reporter.postmaster.to_owned(),
            "Delayed Mail (still being retried)",
        ),
        NoticeKind::DoubleBounce => (
            format!("MAILER-DAEMON@{}", reporter.hostname),
            "Undelivered Delivery Status Notification",
        ),
    };
    let _ = write!(
        out,
        "From: Mail Delivery System <{from}>\r\n\
         To: <{to}>\r\n\
         Subject: {subject}\r\n\
         Date: {date}\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n \
         boundary=\"{boundary}\"\r\n",
        to = clean(notice.to),
        date = rfc5322_date(reporter.now),
    );
    if eight_bit {
        out.push_str("Content-Transfer-Encoding: 8bit\r\n");
    }
    out.push_str("\r\n");
}

fn human_part(
    out: &mut String,
    notice: &Notice<'_>,
    reporter: &Reporter<'_>,
    entries: &[Entry<'_>],
    utf8: bool,
) {
    let envelope = notice.envelope;
    let (content_type, encoding) = if utf8 {
        ("text/plain; charset=utf-8", Some("8bit"))
    } else {
        ("text/plain; charset=us-ascii", Some("7bit"))
    };
    part_headers(out, "Notification", content_type, encoding);
    let _ = write!(
        out,
        "This is the mail system at host {host}.\r\n\r\n",
        host = reporter.hostname,
    );
    let attached = match notice.returned {
        Returned::Full(_) => "It is attached below.",
        Returned::Headers { .. } => "Its headers are attached below.",
    };
    match notice.kind {
        NoticeKind::Failure => {
            let _ = write!(
                out,
                "I'm sorry to have to inform you that your message could not\r\n\
                 be delivered to one or more recipients. {attached}\r\n\r\n"
            );
            if let Returned::Headers { too_big: true, .. } = notice.returned {
                out.push_str(
                    "The message was too large to return in full; only its\r\n\
                     headers are included.\r\n\r\n",
                );
            }
        }
        NoticeKind::Success => {
            let _ = write!(
                out,
                "Your message was delivered to the mail servers of the recipients\r\n\
                 listed below, as you asked. Those servers may still send their own\r\n\
                 notifications. {attached}\r\n\r\n"
            );
        }
        NoticeKind::Delay => {
            let waited = reporter.now.saturating_sub(envelope.arrival);
            let _ = write!(
                out,
                "####################################################################\r\n\
                 # THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #\r\n\
                 ####################################################################\r\n\
                 \r\n\
                 Your message could not be delivered for {waited}. It will be\r\n\
                 retried until it is {lifetime} old. {attached}\r\n\r\n",
                waited = duration_words(waited),
                lifetime = duration_words(reporter.max_queue_lifetime_secs),
            );
        }
        NoticeKind::DoubleBounce => {
            let _ = write!(
                out,
                "A delivery status notification sent by this mail system could\r\n\
                 not be delivered to its recipient. {attached}\r\n\r\n"
            );
        }
    }
    let _ = write!(
        out,
        "For further assistance, please send mail to <{}>.\r\n\r\n",
        reporter.postmaster
    );
    for entry in entries {
        let reason = match (entry.reply, entry.remote) {
            (Some(reply), Some(remote)) if entry.action == "relayed" => {
                format!("delivered to host {remote}: {}", reply_line(reply))
            }
            (Some(reply), Some(remote)) => format!("host {remote} said: {}", reply_line(reply)),
            (Some(reply), None) => reply_line(reply),
            (None, _) => "not yet delivered".to_owned(),
        };
        push_wrapped(
            out,
            &format!("<{}>:", clean(entry.address)),
            &reason,
            "    ",
        );
    }
    out.push_str("\r\nMessage details:\r\n");
    let sender = if envelope.is_null_sender() {
        "<>".to_owned()
    } else {
        format!("<{}>", clean(&envelope.sender))
    };
    let _ = write!(
        out,
        "  Original sender:   {sender}\r\n  Queue ID:          {id}\r\n  Arrival date:      {arrival}\r\n  Delivery attempts: {attempts}\r\n",
        id = envelope.id,
        arrival = rfc5322_date(envelope.arrival),
        attempts = envelope.attempts,
    );
}

fn status_part(
    out: &mut String,
    notice: &Notice<'_>,
    reporter: &Reporter<'_>,
    entries: &[Entry<'_>],
    utf8: bool,
) {
    let envelope = notice.envelope;
    let (content_type, encoding) = if utf8 {
        ("message/global-delivery-status", Some("8bit"))
    } else {
        ("message/delivery-status", Some("7bit"))
    };
    part_headers(out, "Delivery report", content_type, encoding);
    if let Some(envid) = &envelope.dsn.envid {
        push_field(out, "Original-Envelope-Id", envid);
    }
    push_field(
        out,
        "Reporting-MTA",
        &format!("dns; {}", reporter.reporting_mta),
    );
    push_field(out, "X-Empath-Queue-ID", &envelope.id.to_string());
    if !envelope.is_null_sender() {
        push_field(out, "X-Empath-Sender", &typed_address(&envelope.sender));
    }
    push_field(out, "Arrival-Date", &rfc5322_date(envelope.arrival));
    for entry in entries {
        out.push_str("\r\n");
        push_field(out, "Final-Recipient", &typed_address(entry.address));
        if let Some(orcpt) = entry.orcpt {
            push_field(out, "Original-Recipient", orcpt);
        }
        push_field(out, "Action", entry.action);
        push_field(out, "Status", &entry.status);
        if let Some(remote) = entry.remote {
            push_field(out, "Remote-MTA", &format!("dns; {}", remote_host(remote)));
        }
        if let Some(reply) = entry.reply {
            // Only a server's own reply is `smtp;`; what Empath concluded
            // itself (DNS, connection, TLS policy) is `X-Empath;`, as
            // Postfix says `X-Postfix;` (RFC 3464 section 2.3.6).
            let kind = if entry.remote.is_some() {
                "smtp"
            } else {
                "X-Empath"
            };
            push_field(
                out,
                "Diagnostic-Code",
                &format!("{kind}; {}", reply_line(reply)),
            );
        }
        if let Some(at) = entry.at {
            push_field(out, "Last-Attempt-Date", &rfc5322_date(at));
        }
        if entry.action == "delayed" {
            let until = envelope
                .arrival
                .saturating_add(reporter.max_queue_lifetime_secs);
            push_field(out, "Will-Retry-Until", &rfc5322_date(until));
        }
    }
}

fn returned_part_headers(out: &mut String, notice: &Notice<'_>, utf8: bool, eight_bit: bool) {
    let (description, content_type) = match (notice.returned, notice.kind, utf8) {
        (Returned::Full(_), _, false) => ("Undelivered Message", "message/rfc822"),
        (Returned::Full(_), _, true) => ("Undelivered Message", "message/global"),
        (Returned::Headers { .. }, NoticeKind::Delay, false) => {
            ("Delayed Message Headers", "text/rfc822-headers")
        }
        (Returned::Headers { .. }, NoticeKind::Delay, true) => {
            ("Delayed Message Headers", "message/global-headers")
        }
        (Returned::Headers { .. }, NoticeKind::Success, false) => {
            ("Delivered Message Headers", "text/rfc822-headers")
        }
        (Returned::Headers { .. }, NoticeKind::Success, true) => {
            ("Delivered Message Headers", "message/global-headers")
        }
        (Returned::Headers { .. }, _, false) => {
            ("Undelivered Message Headers", "text/rfc822-headers")
        }
        (Returned::Headers { .. }, _, true) => {
            ("Undelivered Message Headers", "message/global-headers")
        }
    };
    part_headers(out, description, content_type, eight_bit.then_some("8bit"));
}

/// The header section of one part of the report, and the blank line.
fn part_headers(out: &mut String, description: &str, content_type: &str, encoding: Option<&str>) {
    let _ = write!(
        out,
        "Content-Description: {description}\r\nContent-Type: {content_type}\r\n"
    );
    if let Some(encoding) = encoding {
        let _ = write!(out, "Content-Transfer-Encoding: {encoding}\r\n");
    }
    out.push_str("\r\n");
}

#[cfg(test)]
mod tests;
