//! The queue listing in Postfix's `mailq` format, read straight from the
//! queue directory so that it works while the daemons are down.

use std::fmt::Write;

use empath_common::queue::{Envelope, Queue, QueueState, RecipientStatus};
use empath_common::time::short_date;

/// One queued message, as listed.
pub struct Entry {
    pub state: QueueState,
    pub envelope: Envelope,
}

/// Reads every envelope in the live states (not `corrupt/`).
/// Unreadable files are skipped: qmgr moves them to `corrupt/` itself.
pub fn read_queue(queue: &Queue) -> std::io::Result<Vec<Entry>> {
    let mut entries = Vec::new();
    for state in [
        QueueState::Active,
        QueueState::Incoming,
        QueueState::Deferred,
        QueueState::Hold,
    ] {
        for id in queue.list(state)?.ids {
            if let Ok(envelope) = queue.read(state, id) {
                entries.push(Entry { state, envelope });
            }
        }
    }
    entries.sort_by_key(|e| e.envelope.id);
    Ok(entries)
}

/// The Postfix status mark after the queue ID: `*` active, `!` held.
fn mark(state: QueueState) -> char {
    match state {
        QueueState::Active => '*',
        QueueState::Hold => '!',
        _ => ' ',
    }
}

pub fn render(entries: &[Entry]) -> String {
    if entries.is_empty() {
        return "Mail queue is empty\n".to_owned();
    }
    let mut out = format!(
        "{:<27} {:>8} {:<20} {}\n",
        "-Queue ID-", "--Size--", "----Arrival Time----", "-Sender/Recipient-------"
    );
    let mut total_bytes = 0;
    for entry in entries {
        let envelope = &entry.envelope;
        total_bytes += envelope.content_size;
        let sender = if envelope.sender.is_empty() {
            "MAILER-DAEMON"
        } else {
            envelope.sender.as_str()
        };
        let _ = writeln!(
            out,
            "{}{} {:>8} {:<20} {sender}",
            envelope.id,
            mark(entry.state),
            envelope.content_size,
            short_date(envelope.arrival)
        );
        for recipient in envelope.undelivered().map(|(_, r)| r) {
            if let RecipientStatus::Deferred { reply, .. } = &recipient.status {
                let _ = writeln!(out, "{:58}({})", "", reply.to_string().replace('\n', " "));
            }
            let _ = writeln!(out, "{:58}{}", "", recipient.address);
        }
        out.push('\n');
    }
    let kbytes = total_bytes.div_ceil(1024);
    let requests = entries.len();
    let noun = if requests == 1 { "Request" } else { "Requests" };
    let _ = writeln!(out, "-- {kbytes} Kbytes in {requests} {noun}.");
    out
}
