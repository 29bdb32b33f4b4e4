//! Queue commands from operators (`empathctl queue ...`), carried out by
//! the scheduler itself so that they see and change its live state.

use std::collections::BTreeMap;

use empath_common::control::{
    ControlResponse, ListStatus, MessageView, QueueCommand, QueueEntry, QueueStats, RecipientView,
};
use empath_common::queue::{Envelope, QueueId, QueueState, RecipientStatus, domain_of};
use empath_common::time::unix_now;

use super::Scheduler;
use crate::dispatch::Couriers;
use crate::store::Store;

/// How much of the content `queue view` shows.
const MAX_HEADERS: usize = 32 * 1024;
const BODY_PREVIEW: usize = 1024;

impl<S: Store, C: Couriers> Scheduler<S, C> {
    pub(super) fn control(&mut self, command: QueueCommand) -> ControlResponse {
        match command {
            QueueCommand::List {
                status,
                domain,
                limit,
            } => {
                let mut entries: Vec<QueueEntry> = self
                    .all_messages()
                    .into_iter()
                    .map(|(state, envelope)| entry(state, &envelope))
                    .filter(|e| status.is_none_or(|s| e.status == s))
                    .filter(|e| {
                        domain
                            .as_ref()
                            .is_none_or(|d| e.domains.iter().any(|x| x.eq_ignore_ascii_case(d)))
                    })
                    .collect();
                entries.truncate(limit.unwrap_or(usize::MAX));
                ControlResponse::QueueList(entries)
            }
            QueueCommand::View { id } => self.view(id),
            QueueCommand::Delete { id } => self.delete(id),
            QueueCommand::Retry { id, force } => self.retry_now(id, force),
            QueueCommand::Freeze => {
                self.set_frozen(true);
                ControlResponse::Done(
                    "delivery frozen: mail is accepted and queued, but not delivered".into(),
                )
            }
            QueueCommand::Unfreeze => {
                self.set_frozen(false);
                ControlResponse::Done("delivery resumed".into())
            }
            QueueCommand::Stats => ControlResponse::Stats(self.stats()),
            QueueCommand::ProcessNow => {
                let deferred = self.deferred.len();
                self.process_now();
                ControlResponse::Done(format!("{deferred} deferred message(s) are due now"))
            }
        }
    }

    /// Freezing is remembered in the spool, so a restarted qmgr stays frozen.
    pub(super) fn set_frozen(&mut self, frozen: bool) {
        self.frozen = frozen;
        if let Err(error) = self.queue.set_frozen(frozen) {
            tracing::warn!(%error, "cannot record the freeze in the spool; it lasts until qmgr restarts");
        }
        tracing::info!(
            running = self.running,
            "delivery {}",
            if frozen { "frozen" } else { "unfrozen" }
        );
    }

    /// Every queued message with its state, oldest first. Active messages
    /// come from memory (their statuses are newer than the file).
    fn all_messages(&self) -> Vec<(QueueState, Envelope)> {
        let mut all: Vec<(QueueState, Envelope)> = self
            .active
            .values()
            .map(|m| (QueueState::Active, m.envelope.clone()))
            .collect();
        for state in [QueueState::Incoming, QueueState::Deferred, QueueState::Hold] {
            let Ok(listing) = self.queue.list(state) else {
                continue;
            };
            for id in listing.ids {
                if self.active.contains_key(&id) {
                    continue;
                }
                if let Ok(envelope) = self.queue.read(state, id) {
                    all.push((state, envelope));
                }
            }
        }
        all.sort_by_key(|(_, e)| e.id);
        all
    }

    fn find(&self, id: QueueId) -> Option<(QueueState, Envelope)> {
        if let Some(message) = self.active.get(&id) {
            return Some((QueueState::Active, message.envelope.clone()));
        }
        let state = self.queue.locate(id)?;
        self.queue
            .read(state, id)
            .ok()
            .map(|envelope| (state, envelope))
    }

    fn view(&self, id: QueueId) -> ControlResponse {
        let Some((state, envelope)) = self.find(id) else {
            return not_found(id);
        };
        let (headers, body_preview) = self.content_preview(id);
        ControlResponse::Message(Box::new(MessageView {
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
        }))
    }

    fn content_preview(&self, id: QueueId) -> (String, String) {
        let head = self
            .queue
            .content_head(id, (MAX_HEADERS + BODY_PREVIEW) as u64);
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

    fn delete(&mut self, id: QueueId) -> ControlResponse {
        if let Some(message) = self.active.get_mut(&id) {
            // Its delivery attempt is running: it goes as soon as that ends.
            message.cancelled = true;
            return ControlResponse::Done(format!(
                "{id} is being delivered; it will be deleted when this attempt ends"
            ));
        }
        let Some(state) = self.queue.locate(id) else {
            return not_found(id);
        };
        self.deferred.retain(|(_, queued)| *queued != id);
        self.incoming.retain(|queued| *queued != id);
        self.incoming_known.remove(&id);
        match self.queue.remove(state, id) {
            Ok(()) => {
                tracing::info!(message_id = %id, %state, "message deleted by an operator");
                ControlResponse::Done(format!("deleted {id}"))
            }
            Err(error) => ControlResponse::Error(format!("cannot delete {id}: {error}")),
        }
    }

    fn retry_now(&mut self, id: QueueId, force: bool) -> ControlResponse {
        if self.active.contains_key(&id) {
            return ControlResponse::Done(format!("{id} is being delivered now"));
        }
        match self.queue.locate(id) {
            None => not_found(id),
            Some(QueueState::Deferred) => {
                // An operator's explicit request: tried even if the
                // destination's circuit breaker is open.
                self.deferred.retain(|(_, queued)| *queued != id);
                self.deferred.insert((0, id));
                self.forced.insert(id);
                ControlResponse::Done(format!("{id} will be retried now"))
            }
            Some(QueueState::Incoming) => {
                ControlResponse::Done(format!("{id} is already waiting for delivery"))
            }
            Some(QueueState::Hold) if force => {
                match self
                    .queue
                    .move_to(id, QueueState::Hold, QueueState::Incoming)
                {
                    Ok(()) => {
                        self.note_incoming(id);
                        ControlResponse::Done(format!(
                            "{id} released from hold and will be delivered now"
                        ))
                    }
                    Err(error) => ControlResponse::Error(format!("cannot release {id}: {error}")),
                }
            }
            Some(QueueState::Hold) => {
                ControlResponse::Error(format!("{id} is on hold; use --force to release it"))
            }
            Some(state) => {
                ControlResponse::Error(format!("{id} is in {state}/ and cannot be retried"))
            }
        }
    }

    pub(super) fn stats(&self) -> QueueStats {
        let messages = self.all_messages();
        let mut by_status: BTreeMap<&'static str, usize> =
            ListStatus::ALL.iter().map(|s| (s.name(), 0)).collect();
        let mut by_domain: BTreeMap<String, usize> = BTreeMap::new();
        for (state, envelope) in &messages {
            let entry = entry(*state, envelope);
            *by_status.entry(entry.status.name()).or_default() += 1;
            for domain in entry.domains {
                *by_domain.entry(domain).or_default() += 1;
            }
        }
        let now = unix_now();
        let mut by_domain: Vec<(String, usize)> = by_domain.into_iter().collect();
        by_domain.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        QueueStats {
            total: messages.len(),
            by_status: by_status
                .into_iter()
                .map(|(s, n)| (s.to_owned(), n))
                .collect(),
            by_domain,
            oldest_age_secs: messages
                .iter()
                .map(|(_, e)| now.saturating_sub(e.arrival))
                .max(),
            frozen: self.frozen,
        }
    }
}

fn not_found(id: QueueId) -> ControlResponse {
    ControlResponse::Error(format!("no message {id} in the queue"))
}

fn entry(state: QueueState, envelope: &Envelope) -> QueueEntry {
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

fn recipient_view(recipient: &empath_common::queue::Recipient) -> RecipientView {
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
