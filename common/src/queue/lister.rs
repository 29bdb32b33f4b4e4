//! The one read-only view of the queue, for people: `mailq`, `empathctl
//! queue list|view|stats`, the health check's queue size and the queue
//! gauges. It reads the directories and envelopes and changes nothing, so
//! it runs anywhere (empath-showq, mailq, the health endpoint) except in
//! qmgr's scheduling loop.
//!
//! What it knows comes from the queue directory alone: a message in
//! `active/` is being delivered, one in `hold/` is held, one in
//! `deferred/` waits for the `next_retry` of its envelope. The per-recipient
//! statuses of a message being delivered are those of its envelope on disk
//! (as of its last attempt), and "frozen" is qmgr's marker file.

use std::collections::BTreeMap;
use std::io::{self, Read};

use serde::{Deserialize, Serialize};

use super::{Envelope, Queue, QueueId, QueueState, ReadError, RecipientStatus, domain_of};
use crate::control::{ListStatus, MessageView, QueueEntry, QueueStats, RecipientView};
use crate::time::unix_now;

/// The states that hold queued mail, in the order `mailq` has always
/// named them (`corrupt/` is not mail waiting for delivery).
pub const LISTED: [QueueState; 4] = [
    QueueState::Active,
    QueueState::Incoming,
    QueueState::Deferred,
    QueueState::Hold,
];

/// How much of the content `queue view` shows.
const MAX_HEADERS: usize = 32 * 1024;
const BODY_PREVIEW: usize = 1024;

/// Messages per state, counted from directory entries alone: no file is
/// opened, so it is cheap enough for every health check and scrape.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub incoming: u64,
    pub active: u64,
    pub deferred: u64,
    pub hold: u64,
    pub corrupt: u64,
    /// The arrival of the oldest queued message (not counting `corrupt/`),
    /// in milliseconds since the epoch, from its queue ID.
    pub oldest_ms: Option<u64>,
}

impl Counts {
    pub fn of(&self, state: QueueState) -> u64 {
        match state {
            QueueState::Incoming => self.incoming,
            QueueState::Active => self.active,
            QueueState::Deferred => self.deferred,
            QueueState::Hold => self.hold,
            QueueState::Corrupt => self.corrupt,
        }
    }

    /// Messages waiting for delivery or being delivered (not corrupt).
    pub fn queued(&self) -> u64 {
        LISTED.iter().map(|state| self.of(*state)).sum()
    }
}

/// Counts the queue (see [`Counts`]).
pub fn count(queue: &Queue) -> io::Result<Counts> {
    let mut counts = Counts::default();
    for state in QueueState::ALL {
        let (n, oldest) = queue.count(state)?;
        match state {
            QueueState::Incoming => counts.incoming = n,
            QueueState::Active => counts.active = n,
            QueueState::Deferred => counts.deferred = n,
            QueueState::Hold => counts.hold = n,
            QueueState::Corrupt => counts.corrupt = n,
        }
        if state != QueueState::Corrupt
            && let Some(ms) = oldest
        {
            counts.oldest_ms = Some(counts.oldest_ms.map_or(ms, |o| o.min(ms)));
        }
    }
    Ok(counts)
}

/// Whether delivery is frozen (qmgr's marker in the spool).
pub fn frozen(queue: &Queue) -> bool {
    queue.frozen_marker().exists()
}

/// A queued message and the state it was found in.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    pub state: QueueState,
    pub envelope: Envelope,
}

/// The messages in `states`, oldest first, each envelope read only when
/// the iterator gets to it: memory holds the sorted IDs, not the envelopes.
/// A message that moved to another of `states` meanwhile is read from
/// there; one that left them, or cannot be read (qmgr quarantines those),
/// is skipped.
pub fn messages<'q>(queue: &'q Queue, states: &[QueueState]) -> io::Result<Messages<'q>> {
    let mut ids = Vec::new();
    for &state in states {
        ids.extend(queue.list(state)?.ids.into_iter().map(|id| (id, state)));
    }
    ids.sort_unstable();
    Ok(Messages {
        queue,
        states: states.to_vec(),
        ids: ids.into_iter(),
    })
}

/// See [`messages`].
pub struct Messages<'q> {
    queue: &'q Queue,
    states: Vec<QueueState>,
    ids: std::vec::IntoIter<(QueueId, QueueState)>,
}

impl Messages<'_> {
    /// How many IDs are left to read.
    pub fn remaining(&self) -> usize {
        self.ids.len()
    }

    fn read(&self, id: QueueId, state: QueueState) -> Option<Listed> {
        match self.queue.read(state, id) {
            Ok(envelope) => Some(Listed { state, envelope }),
            Err(ReadError::Io(e)) if e.kind() == io::ErrorKind::NotFound => {
                let moved = self.queue.locate(id).filter(|s| self.states.contains(s))?;
                let envelope = self.queue.read(moved, id).ok()?;
                Some(Listed {
                    state: moved,
                    envelope,
                })
            }
            Err(_) => None,
        }
    }
}

impl Iterator for Messages<'_> {
    type Item = Listed;

    fn next(&mut self) -> Option<Listed> {
        loop {
            let (id, state) = self.ids.next()?;
            if let Some(listed) = self.read(id, state) {
                return Some(listed);
            }
        }
    }
}

/// The `queue list` entries that match, oldest first, read lazily: stop
/// early to read only as many envelopes as are needed.
pub fn matching<'q>(
    queue: &'q Queue,
    status: Option<ListStatus>,
    domain: Option<String>,
) -> io::Result<impl Iterator<Item = QueueEntry> + 'q> {
    // Only `failed` can be found in any state (it wins over the state).
    let states: Vec<QueueState> = match status {
        Some(ListStatus::Pending) => vec![QueueState::Incoming],
        Some(ListStatus::Active) => vec![QueueState::Active],
        Some(ListStatus::Retry) => vec![QueueState::Deferred],
        Some(ListStatus::Held) => vec![QueueState::Hold],
        Some(ListStatus::Failed) | None => LISTED.to_vec(),
    };
    Ok(messages(queue, &states)?
        .map(|listed| entry(listed.state, &listed.envelope))
        .filter(move |e| status.is_none_or(|s| e.status == s))
        .filter(move |e| {
            domain
                .as_ref()
                .is_none_or(|d| e.domains.iter().any(|x| x.eq_ignore_ascii_case(d)))
        }))
}

/// The answer to `queue stats`: reads every queued envelope.
pub fn stats(queue: &Queue) -> io::Result<QueueStats> {
    let mut total = 0;
    let mut by_status: BTreeMap<&'static str, usize> =
        ListStatus::ALL.iter().map(|s| (s.name(), 0)).collect();
    let mut by_domain: BTreeMap<String, usize> = BTreeMap::new();
    let mut oldest_arrival: Option<u64> = None;
    for listed in messages(queue, &LISTED)? {
        let entry = entry(listed.state, &listed.envelope);
        total += 1;
        *by_status.entry(entry.status.name()).or_default() += 1;
        for domain in entry.domains {
            *by_domain.entry(domain).or_default() += 1;
        }
        oldest_arrival = Some(oldest_arrival.map_or(entry.arrival, |o| o.min(entry.arrival)));
    }
    let now = unix_now();
    let mut by_domain: Vec<(String, usize)> = by_domain.into_iter().collect();
    by_domain.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Ok(QueueStats {
        total,
        by_status: by_status
            .into_iter()
            .map(|(s, n)| (s.to_owned(), n))
            .collect(),
        by_domain,
        oldest_age_secs: oldest_arrival.map(|arrival| now.saturating_sub(arrival)),
        frozen: frozen(queue),
    })
}

/// The answer to `queue view`, or `None` if the message is not queued.
pub fn view(queue: &Queue, id: QueueId) -> Option<MessageView> {
    let state = queue.locate(id).filter(|s| LISTED.contains(s))?;
    let envelope = queue.read(state, id).ok()?;
    let (headers, body_preview) = content_preview(queue, id);
    Some(MessageView {
        entry: entry(state, &envelope),
        recipients: envelope.recipients.iter().map(recipient_view).collect(),
        metadata: envelope
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        client: format!(
            "{} (helo {}, {})",
            envelope.client.addr, envelope.client.helo, envelope.client.protocol
        ),
        headers,
        body_preview,
    })
}

/// The header section (up to [`MAX_HEADERS`]) and the start of the body.
fn content_preview(queue: &Queue, id: QueueId) -> (String, String) {
    let mut head = Vec::new();
    if let Ok(file) = queue.open_content(id) {
        let _ = file
            .take((MAX_HEADERS + BODY_PREVIEW) as u64)
            .read_to_end(&mut head);
    }
    let split = head
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4);
    let (headers, body) = match split {
        Some(at) => head.split_at(at),
        None => (&head[..head.len().min(MAX_HEADERS)], &[][..]),
    };
    let body = &body[..body.len().min(BODY_PREVIEW)];
    (
        String::from_utf8_lossy(headers).replace('\r', ""),
        String::from_utf8_lossy(body).replace('\r', ""),
    )
}

/// A line of `queue list` for a message in `state`.
pub fn entry(state: QueueState, envelope: &Envelope) -> QueueEntry {
    let any_failed = envelope
        .recipients
        .iter()
        .any(|r| matches!(r.status, RecipientStatus::Failed { .. }));
    let mut domains: Vec<String> = envelope
        .undelivered()
        .map(|(_, r)| domain_of(&r.address))
        .collect();
    domains.sort();
    domains.dedup();
    let last_error = envelope.last_error.clone().or_else(|| {
        envelope
            .recipients
            .iter()
            .rev()
            .find_map(|r| match &r.status {
                RecipientStatus::Deferred { reply, .. } | RecipientStatus::Failed { reply, .. } => {
                    Some(reply.to_string())
                }
                _ => None,
            })
    });
    QueueEntry {
        id: envelope.id,
        status: ListStatus::of(state, any_failed),
        sender: envelope.sender.clone(),
        domains,
        recipients: envelope.recipients.len(),
        size: envelope.content_size,
        arrival: envelope.arrival,
        attempts: envelope.attempts,
        next_retry: envelope
            .next_retry
            .filter(|_| state == QueueState::Deferred),
        last_error,
    }
}

fn recipient_view(recipient: &super::Recipient) -> RecipientView {
    let (status, reply, remote) = match &recipient.status {
        RecipientStatus::Pending => ("pending", None, None),
        RecipientStatus::Delivered { reply, remote, .. } => {
            ("delivered", Some(reply), Some(remote.clone()))
        }
        RecipientStatus::Deferred { reply, remote, .. } => {
            ("deferred", Some(reply), remote.clone())
        }
        RecipientStatus::Failed { reply, remote, .. } => ("failed", Some(reply), remote.clone()),
    };
    RecipientView {
        address: recipient.address.clone(),
        status: status.to_owned(),
        reply: reply.map(ToString::to_string),
        remote,
    }
}

/// What `mailq` shows of a message: what Postfix's showq shows any local
/// user (no content, no client, no metadata).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailqEntry {
    pub id: QueueId,
    pub state: QueueState,
    pub size: u64,
    /// Unix seconds.
    pub arrival: u64,
    /// Empty for the null sender.
    pub sender: String,
    /// The recipients not yet delivered.
    pub recipients: Vec<MailqRecipient>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailqRecipient {
    pub address: String,
    /// Why its last attempt was deferred, if it was.
    pub reason: Option<String>,
}

impl MailqEntry {
    pub fn of(listed: &Listed) -> Self {
        let envelope = &listed.envelope;
        Self {
            id: envelope.id,
            state: listed.state,
            size: envelope.content_size,
            arrival: envelope.arrival,
            sender: envelope.sender.clone(),
            recipients: envelope
                .undelivered()
                .map(|(_, r)| MailqRecipient {
                    address: r.address.clone(),
                    reason: match &r.status {
                        RecipientStatus::Deferred { reply, .. } => Some(reply.to_string()),
                        _ => None,
                    },
                })
                .collect(),
        }
    }

    /// Roughly how many bytes it takes in a frame, to keep frames small.
    pub fn weight(&self) -> usize {
        64 + self.sender.len()
            + self
                .recipients
                .iter()
                .map(|r| 8 + r.address.len() + r.reason.as_ref().map_or(0, String::len))
                .sum::<usize>()
    }
}

/// The `mailq` entries of every queued message, oldest first, read lazily.
pub fn mailq(queue: &Queue) -> io::Result<impl Iterator<Item = MailqEntry> + '_> {
    Ok(messages(queue, &LISTED)?.map(|listed| MailqEntry::of(&listed)))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{envelope, queue};
    use super::*;
    use crate::smtp::Reply;

    fn stage(queue: &Queue, recipients: &[&str]) -> QueueId {
        let id = QueueId::generate();
        let mut content = queue.new_content(id);
        content
            .write_all(b"Subject: hi\r\nFrom: a@example.org\r\n\r\nthe body\r\n")
            .unwrap();
        let mut env = envelope(id);
        env.recipients = recipients
            .iter()
            .map(|r| super::super::Recipient::new(*r))
            .collect();
        env.content_size = content.written();
        queue.stage_new(content, &env).unwrap();
        queue.sync_new_entries().unwrap();
        id
    }

    fn defer(queue: &Queue, id: QueueId, reason: &str) {
        let mut env = queue.read(QueueState::Incoming, id).unwrap();
        env.attempts = 1;
        env.next_retry = Some(4_000_000_000);
        for r in &mut env.recipients {
            r.status = RecipientStatus::Deferred {
                reply: Reply::new(451, "4.4.1", reason),
                remote: None,
                at: 1,
            };
        }
        queue
            .rewrite_and_move(&env, QueueState::Incoming, QueueState::Deferred)
            .unwrap();
    }

    #[test]
    fn counts_come_from_the_directories() {
        let (_dir, queue) = queue();
        let a = stage(&queue, &["x@one.test"]);
        let b = stage(&queue, &["y@two.test"]);
        defer(&queue, b, "try later");
        std::fs::write(queue.root().join("corrupt/junk"), b"x").unwrap();
        let counts = count(&queue).unwrap();
        assert_eq!(
            (
                counts.incoming,
                counts.deferred,
                counts.corrupt,
                counts.queued()
            ),
            (1, 1, 1, 2)
        );
        assert_eq!(
            counts.oldest_ms,
            Some(a.timestamp_ms().min(b.timestamp_ms()))
        );
        assert_eq!(queue.count_content().unwrap(), 2);
    }

    #[test]
    fn list_stats_view_and_mailq_agree_with_the_envelopes() {
        let (_dir, queue) = queue();
        let first = stage(&queue, &["x@one.test", "y@two.test"]);
        let second = stage(&queue, &["z@two.test"]);
        defer(&queue, second, "no answer");

        let all: Vec<QueueEntry> = matching(&queue, None, None).unwrap().collect();
        assert_eq!(
            all.iter().map(|e| e.id).collect::<Vec<_>>(),
            [first, second]
        );
        assert_eq!(all[0].status, ListStatus::Pending);
        assert_eq!(all[0].domains, ["one.test", "two.test"]);
        assert_eq!(all[1].status, ListStatus::Retry);
        assert_eq!(all[1].next_retry, Some(4_000_000_000));
        let retry: Vec<QueueId> = matching(&queue, Some(ListStatus::Retry), None)
            .unwrap()
            .map(|e| e.id)
            .collect();
        assert_eq!(retry, [second]);
        let one: Vec<QueueId> = matching(&queue, None, Some("ONE.test".into()))
            .unwrap()
            .map(|e| e.id)
            .collect();
        assert_eq!(one, [first]);

        let stats = stats(&queue).unwrap();
        assert_eq!(stats.total, 2);
        assert!(stats.by_status.contains(&("pending".to_owned(), 1)));
        assert!(stats.by_status.contains(&("retry".to_owned(), 1)));
        assert_eq!(stats.by_domain[0], ("two.test".to_owned(), 2));
        assert!(!stats.frozen);
        std::fs::write(queue.frozen_marker(), b"").unwrap();
        assert!(super::stats(&queue).unwrap().frozen);

        let view = view(&queue, first).unwrap();
        assert_eq!(view.headers, "Subject: hi\nFrom: a@example.org\n\n");
        assert_eq!(view.body_preview, "the body\n");
        assert_eq!(view.recipients.len(), 2);
        assert!(super::view(&queue, QueueId::generate()).is_none());

        let mailq: Vec<MailqEntry> = mailq(&queue).unwrap().collect();
        assert_eq!(mailq.len(), 2);
        assert_eq!(mailq[1].state, QueueState::Deferred);
        assert_eq!(
            mailq[1].recipients[0].reason.as_deref(),
            Some("451 4.4.1 no answer")
        );
    }

    #[test]
    fn a_message_that_moves_while_listed_is_read_where_it_went() {
        let (_dir, queue) = queue();
        let id = stage(&queue, &["x@one.test"]);
        let mut listing = messages(&queue, &LISTED).unwrap();
        queue
            .move_to(id, QueueState::Incoming, QueueState::Active)
            .unwrap();
        assert_eq!(listing.next().map(|l| l.state), Some(QueueState::Active));
        assert_eq!(listing.next(), None);
    }
}
