//! One message being written into the queue: shaped into its canonical
//! form (see [`empath_common::content::shape`]), headers added first, the
//! rest streamed to the content file, then the envelope committed.

use std::collections::BTreeMap;
use std::io;

use empath_common::content::shape::Shaper;
use empath_common::edits::Edit;
use empath_common::protocol::Submission;
use empath_common::queue::{ContentWriter, Envelope, Queue, QueueId};
use empath_common::smtp::Reply;
use empath_common::time::unix_now;

use crate::headers::{self, Stamp};
use crate::rewrite;

/// The metadata key under which a quarantined message keeps the reason.
pub const QUARANTINE_METADATA: &str = "empath.quarantine";
use empath_common::maillog;

/// Why a message was not queued.
#[derive(Debug, thiserror::Error)]
pub enum RefusedError {
    #[error("queue file write failed: {0}")]
    Write(#[from] io::Error),
    #[error("message larger than {limit} bytes")]
    TooBig { limit: u64 },
    #[error("{hops} Received: header fields, more than {limit}: a mail loop")]
    TooManyHops { hops: usize, limit: usize },
}

impl RefusedError {
    /// The reply the client gets.
    pub fn reply(&self) -> Reply {
        match self {
            // RFC 3463: a full disk is 4.3.1.
            Self::Write(error) if error.kind() == io::ErrorKind::StorageFull => {
                Reply::new(452, "4.3.1", "Insufficient system storage")
            }
            Self::Write(_) => Reply::new(451, "4.3.0", "Error: queue file write error"),
            Self::TooBig { .. } => Reply::new(552, "5.3.4", "Error: message file too big"),
            Self::TooManyHops { hops, .. } => Reply::new(
                554,
                "5.4.6",
                format!("Error: too many hops ({hops} Received: header fields); mail loop?"),
            ),
        }
    }
}

/// Where a staged message went.
pub enum Staged {
    /// `incoming/`: its directory entries still need the group commit.
    Incoming(Envelope),
    /// `hold/` (a milter quarantined it), durable already.
    Held { envelope: Envelope, reason: String },
    /// Nothing is queued: the edits left no recipient.
    Discarded,
}

/// The limits a submission is held to.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Octets of content as submitted.
    pub size: u64,
    /// `Received:` header fields.
    pub hops: usize,
}

/// A submission between `Begin` and `End`.
pub struct Incoming {
    id: QueueId,
    submission: Submission,
    content: ContentWriter,
    shaper: Shaper,
    /// Shaped content not yet written (see [`Incoming::shape`]).
    shaped: Vec<u8>,
    /// The start of the message (shaped), held until its header section is
    /// complete, or all of it when `hold_all`.
    head: Option<Vec<u8>>,
    /// Hold the whole message until `End`: it may still be edited (milter
    /// changes, authentication results) and signed.
    hold_all: bool,
    /// Changes to make before the message is sealed.
    edits: Vec<Edit>,
    hostname: String,
    arrival: u64,
    limits: Limits,
    /// Octets submitted so far.
    received: u64,
    /// Set once the message is refused: the rest of it is only counted.
    refused: Option<RefusedError>,
}

impl Incoming {
    /// Starts a message. With `hold_all` the content stays in memory until
    /// the end, for [`Incoming::stage_edited`] (bounded by the size limit).
    /// The queue ID is smtpd's when it chose one (milters saw it).
    pub fn start(
        queue: &Queue,
        hostname: &str,
        submission: Submission,
        limits: Limits,
        hold_all: bool,
    ) -> Self {
        let id = submission.queue_id.unwrap_or_else(QueueId::generate);
        let content = queue.new_content(id);
        Self {
            id,
            submission,
            content,
            shaper: Shaper::new(),
            shaped: Vec::new(),
            head: Some(Vec::new()),
            hold_all,
            edits: Vec::new(),
            hostname: hostname.to_owned(),
            arrival: unix_now(),
            limits,
            received: 0,
            refused: None,
        }
    }

    pub fn id(&self) -> QueueId {
        self.id
    }

    /// The submission's envelope, as the client sent it.
    pub fn submission(&self) -> &Submission {
        &self.submission
    }

    /// The whole (shaped) content so far, when it is held.
    pub fn held(&self) -> Option<&[u8]> {
        self.head.as_deref().filter(|_| self.hold_all)
    }

    pub fn is_holding(&self) -> bool {
        self.hold_all
    }

    /// Adds changes to make before the message is sealed.
    pub fn add_edits(&mut self, edits: Vec<Edit>) {
        self.edits.extend(edits);
    }

    /// Replaces the metadata the message will be queued with.
    pub fn set_metadata(&mut self, metadata: BTreeMap<String, String>) {
        self.submission.metadata = metadata;
    }

    /// Adds content and writes it: [`Self::shape`], then
    /// [`Self::write_shaped`].
    pub fn push(&mut self, bytes: &[u8]) {
        self.shape(bytes);
        self.write_shaped();
    }

    /// Adds content, shaped into memory until [`Self::write_shaped`]
    /// writes it: no I/O. Once the message is refused (too big, too many
    /// hops, a write error), the rest is only counted; [`Self::stage`] then
    /// returns why. The header section is held until it is complete, so
    /// that the added headers can be decided before anything is written.
    pub fn shape(&mut self, bytes: &[u8]) {
        if self.refused.is_some() {
            return;
        }
        self.received += bytes.len() as u64;
        if self.received > self.limits.size {
            self.refused = Some(RefusedError::TooBig {
                limit: self.limits.size,
            });
            return;
        }
        self.shaper.push(bytes, &mut self.shaped);
    }

    /// Shaped content not written yet.
    pub fn unwritten(&self) -> usize {
        self.shaped.len()
    }

    /// Writes the shaped content: to the file (which may block), or into
    /// the held start of the message.
    pub fn write_shaped(&mut self) {
        if self.refused.is_none()
            && let Err(error) = self.write_out()
        {
            self.refused = Some(error);
        }
        self.shaped.clear();
    }

    fn write_out(&mut self) -> Result<(), RefusedError> {
        match &mut self.head {
            None => Ok(self.content.write_all(&self.shaped)?),
            Some(head) => {
                head.extend_from_slice(&self.shaped);
                if self.shaper.in_body() && !self.hold_all {
                    self.write_head()?;
                }
                Ok(())
            }
        }
    }

    /// Refuses a message that went round too often.
    fn check_hops(&self) -> Result<(), RefusedError> {
        let hops = self.shaper.facts().received;
        if hops > self.limits.hops {
            return Err(RefusedError::TooManyHops {
                hops,
                limit: self.limits.hops,
            });
        }
        Ok(())
    }

    fn write_head(&mut self) -> Result<(), RefusedError> {
        let Some(head) = self.head.take() else {
            return Ok(());
        };
        self.check_hops()?;
        let facts = self.shaper.facts();
        let recipients = &self.submission.recipients;
        let stamp = Stamp {
            id: self.id,
            hostname: &self.hostname,
            client: &self.submission.client,
            single_recipient: (recipients.len() == 1).then(|| recipients[0].address.as_str()),
            now: self.arrival,
        };
        let prefix = headers::prefix(facts, &stamp);
        let message_id = match self.shaper.message_id() {
            Some(present) => present.to_owned(),
            None => headers::generated_message_id(self.id, &self.hostname),
        };
        maillog::message_id(self.id, &message_id);
        self.content.write_all(prefix.as_bytes())?;
        Ok(self.content.write_all(&head)?)
    }

    /// Queues the message in `incoming/` ([`Queue::stage_new`]: one file,
    /// one fsync). The directory entries still need
    /// [`Queue::sync_new_entries`] (group commit) before the message may be
    /// acknowledged. On error nothing of it is left.
    /// `linked` is called once its directory entries exist (see
    /// [`Queue::stage_new_then`]).
    pub fn stage(mut self, queue: &Queue, linked: impl FnOnce()) -> Result<Envelope, RefusedError> {
        if let Err(error) = self.finish() {
            self.abandon(queue);
            return Err(error);
        }
        let envelope = self.envelope();
        queue.stage_new_then(self.content, &envelope, linked)?;
        Ok(envelope)
    }

    /// Queues a message held whole: the edits applied to content and
    /// envelope, the result shaped again (edits are held to the same
    /// rules), the trace headers added, then `sign` asked for signature
    /// fields for the final message, which go on top. A quarantined
    /// message goes to `hold/`; one left without recipients is dropped.
    /// On error nothing of it is left.
    pub fn stage_edited(
        mut self,
        queue: &Queue,
        sign: impl FnOnce(&[u8], &Submission) -> Vec<u8>,
    ) -> Result<Staged, RefusedError> {
        let quarantine = match self.write_edited(sign) {
            Ok(Some(quarantine)) => quarantine,
            Ok(None) => {
                self.abandon(queue);
                return Ok(Staged::Discarded);
            }
            Err(error) => {
                self.abandon(queue);
                return Err(error);
            }
        };
        let mut envelope = self.envelope();
        match quarantine {
            None => {
                queue.stage_new(self.content, &envelope)?;
                Ok(Staged::Incoming(envelope))
            }
            Some(reason) => {
                envelope
                    .metadata
                    .insert(QUARANTINE_METADATA.to_owned(), reason.clone());
                queue.stage_new_held(self.content, &envelope)?;
                Ok(Staged::Held { envelope, reason })
            }
        }
    }

    /// Writes the held message, edited, stamped and signed. `Ok(None)`: no
    /// recipient is left; `Ok(Some(quarantine))` otherwise.
    fn write_edited(
        &mut self,
        sign: impl FnOnce(&[u8], &Submission) -> Vec<u8>,
    ) -> Result<Option<Option<String>>, RefusedError> {
        if let Some(refused) = self.refused.take() {
            return Err(refused);
        }
        let mut held = self.head.take().unwrap_or_default();
        self.shaper.finish(&mut held);
        self.check_hops()?;
        let submission = &self.submission;
        let rewritten = rewrite::rewrite(
            &held,
            &self.edits,
            &submission.sender,
            &submission.recipients,
        );
        drop(held);
        if rewritten.recipients.is_empty() {
            return Ok(None);
        }
        let mut reshaper = Shaper::new();
        let mut content = Vec::with_capacity(rewritten.content.len());
        reshaper.push(&rewritten.content, &mut content);
        reshaper.finish(&mut content);
        let recipients = &rewritten.recipients;
        let stamp = Stamp {
            id: self.id,
            hostname: &self.hostname,
            client: &self.submission.client,
            single_recipient: (recipients.len() == 1).then(|| recipients[0].address.as_str()),
            now: self.arrival,
        };
        let mut message = headers::prefix(reshaper.facts(), &stamp).into_bytes();
        message.extend_from_slice(&content);
        drop(content);
        self.submission.sender = rewritten.sender;
        self.submission.recipients = rewritten.recipients;
        let signatures = sign(&message, &self.submission);
        self.content.write_all(&signatures)?;
        self.content.write_all(&message)?;
        Ok(Some(rewritten.quarantine))
    }

    fn envelope(&self) -> Envelope {
        let submission = &self.submission;
        Envelope {
            id: self.id,
            sender: submission.sender.clone(),
            recipients: submission.recipients.clone(),
            arrival: self.arrival,
            attempts: 0,
            next_retry: None,
            last_error: None,
            client: submission.client.clone(),
            dsn: submission.dsn.clone(),
            metadata: submission.metadata.clone(),
            content_size: self.content.written(),
            smtputf8: submission.smtputf8,
            delay_warned: false,
            options: submission.options.0,
        }
    }

    /// Shapes and writes the last of the content.
    fn finish(&mut self) -> Result<(), RefusedError> {
        if let Some(refused) = self.refused.take() {
            return Err(refused);
        }
        self.shaper.finish(&mut self.shaped);
        self.write_out()?;
        self.shaped.clear();
        self.write_head()?;
        if self.shaper.bare_line_endings() > 0 {
            tracing::info!(
                message_id = %self.id,
                count = self.shaper.bare_line_endings(),
                "bare CR or LF line endings made CRLF"
            );
        }
        Ok(())
    }

    /// Drops a submission that will not be committed.
    pub fn abandon(self, queue: &Queue) {
        let id = self.id;
        drop(self);
        queue.abandon_content(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use empath_common::queue::{ClientInfo, DsnParams, QueueId, QueueState, Recipient};
    use std::io::Read;

    fn read_content(queue: &Queue, id: QueueId) -> Vec<u8> {
        let mut content = Vec::new();
        queue
            .open_content(id)
            .unwrap()
            .read_to_end(&mut content)
            .unwrap();
        content
    }

    const LIMITS: Limits = Limits {
        size: 1 << 20,
        hops: 3,
    };

    fn submission() -> Submission {
        Submission {
            sender: "alice@example.org".into(),
            recipients: vec![Recipient::new("bob@example.com")],
            client: ClientInfo {
                addr: "127.0.0.1:5000".into(),
                helo: "client".into(),
                protocol: "ESMTP".into(),
                ..ClientInfo::default()
            },
            dsn: DsnParams::default(),
            metadata: Default::default(),
            smtputf8: false,
            queue_id: None,
            options: Default::default(),
        }
    }

    #[test]
    fn content_is_the_added_headers_then_the_original_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::new(dir.path());
        queue.create_dirs().unwrap();
        let original = b"Subject: hi\r\nMessage-ID: <a@b>\r\n\r\nline 1\r\n.line 2\r\n";
        let mut incoming = Incoming::start(&queue, "mx.test", submission(), LIMITS, false);
        // Split inside the header section, to exercise the buffering.
        incoming.push(&original[..5]);
        incoming.push(&original[5..]);
        let envelope = incoming.stage(&queue, || {}).unwrap();
        queue.sync_new_entries().unwrap();

        let stored = read_content(&queue, envelope.id);
        assert!(stored.starts_with(b"Received: from client"));
        assert!(stored.ends_with(original));
        let added = &stored[..stored.len() - original.len()];
        let added = String::from_utf8_lossy(added);
        assert!(
            !added.contains("Message-ID"),
            "Message-ID was present already: {added}"
        );
        assert!(added.contains("\r\nDate: "), "{added}");
        assert_eq!(envelope.content_size, stored.len() as u64);
        assert_eq!(
            queue.read(QueueState::Incoming, envelope.id).unwrap(),
            envelope
        );
    }

    #[test]
    fn a_message_without_a_body_still_gets_its_headers() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::new(dir.path());
        queue.create_dirs().unwrap();
        let mut incoming = Incoming::start(&queue, "mx.test", submission(), LIMITS, false);
        incoming.push(b"Subject: only headers\r\n");
        let envelope = incoming.stage(&queue, || {}).unwrap();
        queue.sync_new_entries().unwrap();
        let stored = String::from_utf8(read_content(&queue, envelope.id)).unwrap();
        assert!(stored.contains("Message-ID: <"));
        assert!(stored.ends_with("Subject: only headers\r\n"));
    }

    #[test]
    fn a_held_message_is_edited_stamped_and_signed_before_it_is_sealed() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::new(dir.path());
        queue.create_dirs().unwrap();
        let mut incoming = Incoming::start(&queue, "mx.test", submission(), LIMITS, true);
        incoming.push(b"Subject: hi\r\n");
        incoming.push(b"\r\nbody\r\n");
        assert_eq!(incoming.held(), Some(&b"Subject: hi\r\n\r\nbody\r\n"[..]));
        assert!(
            !queue
                .content_path(incoming.id())
                .metadata()
                .is_ok_and(|m| m.len() > 0)
        );
        incoming.add_edits(vec![
            Edit::AddHeader {
                name: "X-Milter".into(),
                value: b" seen".to_vec(),
            },
            Edit::AddRecipient {
                address: "carol@example.com".into(),
                parameters: String::new(),
            },
        ]);
        let mut signed_over = Vec::new();
        let staged = incoming
            .stage_edited(&queue, |message, submission| {
                signed_over = message.to_vec();
                assert_eq!(submission.recipients.len(), 2);
                b"DKIM-Signature: v=1; test\r\n".to_vec()
            })
            .unwrap();
        let Staged::Incoming(envelope) = staged else {
            panic!("not queued in incoming/");
        };
        queue.sync_new_entries().unwrap();
        let stored = String::from_utf8(read_content(&queue, envelope.id)).unwrap();
        assert!(
            stored.starts_with("DKIM-Signature: v=1; test\r\nReceived: from client"),
            "{stored}"
        );
        assert!(
            stored.ends_with("Subject: hi\r\nX-Milter: seen\r\n\r\nbody\r\n"),
            "{stored}"
        );
        assert_eq!(
            stored.as_bytes()[27..],
            signed_over[..],
            "the signature covers the rest"
        );
        assert_eq!(envelope.recipients.len(), 2);
        assert_eq!(
            queue.read(QueueState::Incoming, envelope.id).unwrap(),
            envelope
        );
    }

    #[test]
    fn a_quarantined_message_goes_to_hold_and_one_without_recipients_nowhere() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::new(dir.path());
        queue.create_dirs().unwrap();
        let mut incoming = Incoming::start(&queue, "mx.test", submission(), LIMITS, true);
        incoming.push(b"Subject: q\r\n\r\n");
        incoming.add_edits(vec![Edit::Quarantine {
            reason: "milter says so".into(),
        }]);
        let Staged::Held { envelope, reason } =
            incoming.stage_edited(&queue, |_, _| Vec::new()).unwrap()
        else {
            panic!("not held");
        };
        assert_eq!(reason, "milter says so");
        assert_eq!(queue.locate(envelope.id), Some(QueueState::Hold));
        assert_eq!(
            envelope
                .metadata
                .get(QUARANTINE_METADATA)
                .map(String::as_str),
            Some("milter says so")
        );

        let mut incoming = Incoming::start(&queue, "mx.test", submission(), LIMITS, true);
        let id = incoming.id();
        incoming.push(b"Subject: gone\r\n\r\n");
        incoming.add_edits(vec![Edit::DeleteRecipient {
            address: "<bob@example.com>".into(),
        }]);
        assert!(matches!(
            incoming.stage_edited(&queue, |_, _| Vec::new()).unwrap(),
            Staged::Discarded
        ));
        assert_eq!(queue.locate(id), None);
        assert!(!queue.content_path(id).exists());
    }

    #[test]
    fn a_queue_id_chosen_by_smtpd_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::new(dir.path());
        queue.create_dirs().unwrap();
        let chosen = QueueId::generate();
        let mut with_id = submission();
        with_id.queue_id = Some(chosen);
        let incoming = Incoming::start(&queue, "mx.test", with_id, LIMITS, false);
        assert_eq!(incoming.id(), chosen);
        incoming.abandon(&queue);
    }

    #[test]
    fn abandoned_submission_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::new(dir.path());
        queue.create_dirs().unwrap();
        let mut incoming = Incoming::start(&queue, "mx.test", submission(), LIMITS, false);
        incoming.push(b"Subject: x\r\n\r\nbody");
        let id = incoming.id();
        incoming.abandon(&queue);
        assert!(!queue.content_path(id).exists());
        assert_eq!(queue.locate(id), None);
    }

    fn queue() -> (tempfile::TempDir, Queue) {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::new(dir.path());
        queue.create_dirs().unwrap();
        (dir, queue)
    }

    #[test]
    fn a_message_over_the_size_limit_is_refused_and_leaves_nothing() {
        let (_dir, queue) = queue();
        let mut incoming = Incoming::start(&queue, "mx.test", submission(), LIMITS, false);
        let id = incoming.id();
        for _ in 0..20 {
            incoming.push(&[b'x'; 64 * 1024]);
        }
        let error = incoming.stage(&queue, || {}).unwrap_err();
        assert_eq!(error.reply().code, 552, "{error}");
        assert!(!queue.content_path(id).exists());
    }

    #[test]
    fn too_many_received_fields_is_a_loop() {
        let (_dir, queue) = queue();
        let mut incoming = Incoming::start(&queue, "mx.test", submission(), LIMITS, false);
        incoming.push(&b"Received: from a\r\n".repeat(4));
        incoming.push(b"\r\nbody\r\n");
        let error = incoming.stage(&queue, || {}).unwrap_err();
        let reply = error.reply();
        assert_eq!(
            (reply.code, reply.enhanced.as_deref()),
            (554, Some("5.4.6"))
        );
    }

    #[test]
    fn a_message_without_headers_is_not_run_into_the_added_ones() {
        let (_dir, queue) = queue();
        let mut incoming = Incoming::start(&queue, "mx.test", submission(), LIMITS, false);
        incoming.push(b"just text, no header\r\n");
        let envelope = incoming.stage(&queue, || {}).unwrap();
        let stored = String::from_utf8(read_content(&queue, envelope.id)).unwrap();
        assert!(
            stored.ends_with("\r\n\r\njust text, no header\r\n"),
            "{stored}"
        );
    }
}
