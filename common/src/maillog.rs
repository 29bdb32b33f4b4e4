//! The mail log: one event for each thing that happens to a message or
//! a session, defined once for every daemon. Each event carries
//!
//! - the fields the seeds' queries use (`message_id` is always the queue
//!   ID, `message_id_header` the `Message-ID:` field, `domain`,
//!   `recipient`, `smtp_code`, `server`, `delivery_attempt`, ...), which
//!   the human and JSON formats write; and
//! - the same line as Postfix writes it (`postfix`), which the syslog
//!   format writes, so pflogsumm reads an Empath log as a Postfix one
//!   (`pflogsumm --syslog-name=empath`) and fail2ban's filters match.
//!
//! The level follows the outcome: a delivery that will be retried is a
//! warning, one that failed for good an error.

use std::fmt;
use std::net::SocketAddr;

use crate::protocol::{DeliveryJob, Outcome};
use crate::queue::QueueId;
use crate::smtp::Reply;

/// An event's line as Postfix writes it, formatted only by the log
/// format that shows it (syslog): the others never pay for it. Written
/// `%postfix` in an event, with `postfix` made by [`postfix_line`].
struct PostfixLine<F>(F);

impl<F: Fn(&mut fmt::Formatter<'_>) -> fmt::Result> fmt::Display for PostfixLine<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (self.0)(f)
    }
}

fn postfix_line<F: Fn(&mut fmt::Formatter<'_>) -> fmt::Result>(write: F) -> PostfixLine<F> {
    PostfixLine(write)
}

/// `unknown[192.0.2.1]`: the client as Postfix names it. Empath does not
/// look up client host names, so the name is always `unknown`.
pub fn client_name(peer: &str) -> String {
    match peer.parse::<SocketAddr>() {
        Ok(addr) => format!("unknown[{}]", addr.ip().to_canonical()),
        Err(_) if peer.is_empty() || peer == "local" => "localhost[127.0.0.1]".to_owned(),
        Err(_) => format!("unknown[{peer}]"),
    }
}

/// A client connected (`connect from unknown[192.0.2.1]`).
pub fn connect(peer: &str, session: &str) {
    let postfix = postfix_line(|f| write!(f, "connect from {}", client_name(peer)));
    tracing::info!(%postfix, client = peer, session, "connect");
}

/// A client left (`disconnect from unknown[192.0.2.1]`), and why.
pub fn disconnect(peer: &str, reason: &str, messages: u64, tls: bool, user: &str) {
    let postfix = postfix_line(|f| write!(f, "disconnect from {}", client_name(peer)));
    tracing::info!(
        %postfix,
        client = peer,
        reason,
        messages,
        tls,
        user,
        "disconnect"
    );
}

/// smtpd queued a message (`QUEUEID: client=unknown[192.0.2.1]`, with
/// the SASL method and user of an authenticated client): what pflogsumm
/// counts as received.
pub fn received(id: QueueId, peer: &str, sasl: Option<(&str, &str)>, sender: &str, nrcpt: usize) {
    let postfix = postfix_line(|f| {
        write!(f, "{id}: client={}", client_name(peer))?;
        match sasl {
            Some((method, user)) => write!(f, ", sasl_method={method}, sasl_username={user}"),
            None => Ok(()),
        }
    });
    tracing::info!(
        %postfix,
        message_id = %id,
        client = peer,
        sender,
        recipient_count = nrcpt,
        user = sasl.map_or("", |(_, user)| user),
        "queued"
    );
}

/// smtpd refused a command of a transaction with 4xx or 5xx
/// (`NOQUEUE: reject: RCPT from unknown[192.0.2.1]: 554 5.7.1 <...>: Relay
/// access denied; from=<...> to=<...> proto=ESMTP helo=<...>`): what
/// pflogsumm counts as rejected.
pub struct Rejection<'a> {
    /// `MAIL`, `RCPT`, `DATA` or `END-OF-MESSAGE`.
    pub stage: &'a str,
    pub peer: &'a str,
    pub reply: &'a Reply,
    pub sender: Option<&'a str>,
    pub recipient: Option<&'a str>,
    pub helo: Option<&'a str>,
    pub esmtp: bool,
}

pub fn rejected(rejection: &Rejection<'_>) {
    let postfix = postfix_line(|f| {
        write!(
            f,
            "NOQUEUE: reject: {} from {}: {}; ",
            rejection.stage,
            client_name(rejection.peer),
            rejection.reply
        )?;
        if let Some(sender) = rejection.sender {
            write!(f, "from=<{sender}> ")?;
        }
        if let Some(recipient) = rejection.recipient {
            write!(f, "to=<{recipient}> ")?;
        }
        f.write_str(if rejection.esmtp {
            "proto=ESMTP"
        } else {
            "proto=SMTP"
        })?;
        match rejection.helo {
            Some(helo) => write!(f, " helo=<{helo}>"),
            None => Ok(()),
        }
    });
    let level_warn = rejection.reply.code >= 500;
    let (client, stage, reply) = (rejection.peer, rejection.stage, rejection.reply);
    let sender = rejection.sender.unwrap_or("");
    let recipient = rejection.recipient.unwrap_or("");
    if level_warn {
        tracing::warn!(%postfix, client, stage, smtp_code = reply.code, %reply, sender, recipient, "command rejected");
    } else {
        tracing::info!(%postfix, client, stage, smtp_code = reply.code, %reply, sender, recipient, "command rejected");
    }
}

/// A failed AUTH (`warning: unknown[192.0.2.1]: SASL PLAIN authentication
/// failed: ...`): what fail2ban's filter (etc/fail2ban) watches.
pub fn auth_failed(peer: &str, mechanism: &str, user: &str) {
    let postfix = postfix_line(|f| {
        write!(
            f,
            "warning: {}: SASL {mechanism} authentication failed: authentication failure, sasl_username={user}",
            client_name(peer)
        )
    });
    tracing::warn!(%postfix, client = peer, %user, mechanism, "authentication failed");
}

/// cleanup read the header of a message: `QUEUEID: message-id=<...>`,
/// the line that ties the queue ID to the message's own identity.
pub fn message_id(id: QueueId, header: &str) {
    let postfix = postfix_line(|f| write!(f, "{id}: message-id={}", angle(header)));
    tracing::info!(%postfix, message_id = %id, message_id_header = header, "message-id");
}

/// A local user submitted a message (sendmail, the maildrop), logged
/// as Postfix's pickup does: `QUEUEID: uid=1000 from=<user@host>`.
pub fn picked_up(id: QueueId, uid: Option<u32>, sender: &str) {
    let uid_text = uid.map_or_else(|| "unknown".to_owned(), |uid| uid.to_string());
    let postfix = postfix_line(|f| write!(f, "{id}: uid={uid_text} from=<{sender}>"));
    tracing::info!(
        %postfix,
        syslog_program = "pickup",
        message_id = %id,
        uid = uid_text,
        sender,
        "local submission"
    );
}

/// qmgr took a message in for delivery:
/// `QUEUEID: from=<...>, size=N, nrcpt=N (queue active)`.
pub fn activated(id: QueueId, sender: &str, size: u64, nrcpt: usize, attempts: u32) {
    let postfix = postfix_line(|f| {
        write!(
            f,
            "{id}: from=<{sender}>, size={size}, nrcpt={nrcpt} (queue active)"
        )
    });
    tracing::info!(
        %postfix,
        message_id = %id,
        sender,
        size,
        recipient_count = nrcpt,
        delivery_attempt = attempts + 1,
        "message active"
    );
}

/// qmgr is done with a message: `QUEUEID: removed`.
pub fn removed(id: QueueId) {
    let postfix = postfix_line(|f| write!(f, "{id}: removed"));
    tracing::info!(%postfix, message_id = %id, "message done");
}

/// Some recipients of a message wait for another attempt at `domain`.
pub fn retry_scheduled(id: QueueId, domain: &str, attempt: u32, delay_secs: u64, due_unix: u64) {
    let next_retry_at = crate::time::rfc3339(due_unix);
    tracing::info!(
        message_id = %id,
        domain,
        delivery_attempt = attempt,
        retry_delay_secs = delay_secs,
        next_retry_at,
        "Scheduled retry with exponential backoff (delivery deferred)"
    );
}

/// A bounce notice was queued for a message:
/// `QUEUEID: sender non-delivery notification: DSNID`.
pub fn notified(
    id: QueueId,
    dsn: QueueId,
    kind: &str,
    to: &str,
    original_sender: &str,
    count: usize,
) {
    let what = match kind {
        "delay" => "sender delay notification",
        "success" => "sender delivery status notification",
        "double-bounce" => "postmaster non-delivery notification",
        _ => "sender non-delivery notification",
    };
    let postfix = postfix_line(|f| write!(f, "{id}: {what}: {dsn}"));
    tracing::info!(
        %postfix,
        message_id = %id,
        dsn_id = %dsn,
        original_sender,
        kind,
        to,
        recipients = count,
        "DSN generated"
    );
}

/// Where a message spent its time, in seconds, as Postfix's
/// `delays=a/b/c/d`: before qmgr took it in (`a`), in qmgr before the
/// delivery agent got it (`b`), setting up the connection (`c`: DNS,
/// connect, greeting, EHLO, TLS), and the transaction (`d`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Delays {
    pub before_active: f64,
    pub in_active: f64,
    pub setup: f64,
    pub transmission: f64,
}

impl Delays {
    /// From the job's times (Unix milliseconds): the queue ID tells when
    /// the message arrived, the job when qmgr took it in; `received` is
    /// when the agent got the job, `connected` when its connection was
    /// ready (`received` if none was made), `done` when the result came.
    pub fn measure(job: &DeliveryJob, received: u64, connected: u64, done: u64) -> Self {
        let arrival = job.id.timestamp_ms();
        let active = if job.active_since_ms == 0 {
            received
        } else {
            job.active_since_ms.clamp(arrival, received.max(arrival))
        };
        let seconds = |from: u64, to: u64| to.saturating_sub(from) as f64 / 1000.0;
        let connected = connected.clamp(received, done.max(received));
        Self {
            before_active: seconds(arrival, active),
            in_active: seconds(active, received),
            setup: seconds(received, connected),
            transmission: seconds(connected, done),
        }
    }

    pub fn total(&self) -> f64 {
        self.before_active + self.in_active + self.setup + self.transmission
    }
}

/// Postfix's way with delays: two significant digits below 10 s.
fn seconds(value: f64) -> String {
    if value >= 10.0 {
        format!("{value:.0}")
    } else if value >= 0.1 {
        format!("{value:.2}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_owned()
    } else if value > 0.0 {
        format!("{value:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_owned()
    } else {
        "0".to_owned()
    }
}

/// `relay=` of a result: `mx.example[192.0.2.1]:25` from smtp-out's
/// `mx.example [192.0.2.1:25]` or `192.0.2.1:25`; `none` when no server
/// was reached.
pub fn relay(remote: Option<&str>) -> String {
    let Some(remote) = remote.filter(|r| !r.is_empty()) else {
        return "none".to_owned();
    };
    let (name, address) = match remote.split_once(" [") {
        Some((name, rest)) => (Some(name), rest.trim_end_matches(']')),
        None => (None, remote),
    };
    match address.parse::<SocketAddr>() {
        Ok(addr) => format!(
            "{}[{}]:{}",
            name.map_or_else(|| addr.ip().to_string(), str::to_owned),
            addr.ip(),
            addr.port()
        ),
        Err(_) => remote.replace(' ', ""),
    }
}

/// The enhanced status code of a reply, or the class's generic one.
fn dsn_of(reply: &Reply) -> String {
    reply.enhanced.clone().unwrap_or_else(|| match reply.code {
        200..=299 => "2.0.0".to_owned(),
        400..=499 => "4.0.0".to_owned(),
        _ => "5.0.0".to_owned(),
    })
}

/// One recipient's result of one delivery attempt.
pub struct Delivered<'a> {
    pub id: QueueId,
    pub recipient: &'a str,
    pub domain: &'a str,
    /// What `relay=` shows: see [`relay`], or `local`.
    pub relay: String,
    /// The server as smtp-out describes it, for the structured field.
    pub server: Option<&'a str>,
    pub delays: Delays,
    pub reply: &'a Reply,
    pub outcome: Outcome,
    /// This attempt's number (1 for the first).
    pub attempt: u32,
}

/// `QUEUEID: to=<...>, relay=..., delay=..., delays=a/b/c/d, dsn=...,
/// status=sent (reply)`: the line operators grep for, and what pflogsumm
/// counts as delivered, deferred and bounced. Successes are INFO,
/// deferrals WARN and permanent failures ERROR.
pub fn delivery(result: &Delivered<'_>) {
    let status = match result.outcome {
        Outcome::Delivered => "sent",
        Outcome::Deferred => "deferred",
        Outcome::Failed => "bounced",
    };
    let delays = &result.delays;
    let postfix = postfix_line(|f| {
        write!(
            f,
            "{}: to=<{}>, relay={}, delay={}, delays={}/{}/{}/{}, dsn={}, status={status} ({})",
            result.id,
            result.recipient,
            result.relay,
            seconds(delays.total()),
            seconds(delays.before_active),
            seconds(delays.in_active),
            seconds(delays.setup),
            seconds(delays.transmission),
            dsn_of(result.reply),
            result.reply
        )
    });
    let (id, recipient, domain) = (result.id, result.recipient, result.domain);
    let server = result.server.unwrap_or("");
    let reply = result.reply;
    // Milliseconds are what the clocks measure.
    let delay = (delays.total() * 1000.0).round() / 1000.0;
    let attempt = result.attempt;
    macro_rules! log {
        ($level:ident, $message:literal) => {
            tracing::$level!(
                %postfix,
                message_id = %id,
                recipient,
                domain,
                server,
                relay = %result.relay,
                smtp_code = reply.code,
                dsn = %dsn_of(reply),
                reply = %reply,
                delay_seconds = delay,
                delivery_attempt = attempt,
                status,
                $message
            )
        };
    }
    match result.outcome {
        Outcome::Delivered => log!(info, "Delivery successful"),
        Outcome::Deferred => log!(warn, "Delivery deferred, will retry"),
        Outcome::Failed => log!(error, "Delivery failed permanently"),
    }
}

fn angle(text: &str) -> String {
    let trimmed = text.trim();
    if trimmed.starts_with('<') && trimmed.ends_with('>') {
        trimmed.to_owned()
    } else {
        format!("<{trimmed}>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relays_are_written_as_postfix_does() {
        assert_eq!(
            relay(Some("mx.example [192.0.2.1:25]")),
            "mx.example[192.0.2.1]:25"
        );
        assert_eq!(relay(Some("127.0.0.1:2526")), "127.0.0.1[127.0.0.1]:2526");
        assert_eq!(relay(Some("[::1]:25")), "::1[::1]:25");
        assert_eq!(relay(None), "none");
    }

    #[test]
    fn clients_are_named_unknown_with_their_address() {
        assert_eq!(client_name("192.0.2.1:4242"), "unknown[192.0.2.1]");
        assert_eq!(client_name("[::ffff:127.0.0.1]:4242"), "unknown[127.0.0.1]");
    }

    #[test]
    fn delays_split_the_time_since_arrival() {
        let id = QueueId::generate();
        let arrival = id.timestamp_ms();
        let job = DeliveryJob {
            id,
            sender: String::new(),
            domain: "example.org".into(),
            recipients: Vec::new(),
            content_size: 0,
            smtputf8: false,
            active_since_ms: arrival + 1_000,
            attempt: 1,
            pass_on: Default::default(),
        };
        let delays = Delays::measure(&job, arrival + 1_500, arrival + 1_750, arrival + 3_000);
        assert_eq!(
            delays,
            Delays {
                before_active: 1.0,
                in_active: 0.5,
                setup: 0.25,
                transmission: 1.25,
            }
        );
        assert_eq!(seconds(delays.total()), "3");
        assert_eq!(seconds(0.25), "0.25");
        assert_eq!(seconds(0.004), "0.004");
        assert_eq!(seconds(12.4), "12");
    }
}
