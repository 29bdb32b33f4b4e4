//! One message being written into the queue: headers first, then the rest
//! streamed to the content file, then the envelope committed.

use std::collections::BTreeMap;
use std::io;

use empath_common::edits::Edit;
use empath_common::protocol::Submission;
use empath_common::queue::{ContentWriter, Envelope, Queue, QueueId};
use empath_common::time::unix_now;

use crate::headers::{self, Stamp};
use crate::rewrite;

/// The metadata key under which a quarantined message keeps the reason.
pub const QUARANTINE_METADATA: &str = "empath.quarantine";

/// A submission between `Begin` and `End`.
pub struct Incoming {
    id: QueueId,
    submission: Submission,
    content: ContentWriter,
    /// The start of the message, held until its header section is complete
    /// (or all of it, see `hold_all`).
    head: Option<Vec<u8>>,
    /// Hold the whole message until `End`, up to this size: it may still
    /// be edited (milter changes, authentication results) and signed.
    hold_limit: Option<u64>,
    /// Changes to make before the message is sealed.
    edits: Vec<Edit>,
    hostname: String,
    arrival: u64,
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

impl Incoming {
    /// Starts a message. With a `hold_limit` the content stays in memory
    /// until the end, for [`Incoming::stage_edited`]; more than that many
    /// bytes fail with [`io::ErrorKind::FileTooLarge`].
    pub fn start(
        queue: &Queue,
        hostname: &str,
        submission: Submission,
        hold_limit: Option<u64>,
    ) -> io::Result<Self> {
        let id = submission.queue_id.unwrap_or_else(QueueId::generate);
        let content = queue.create_content(id)?;
        Ok(Self {
            id,
            submission,
            content,
            head: Some(Vec::new()),
            hold_limit,
            edits: Vec::new(),
            hostname: hostname.to_owned(),
            arrival: unix_now(),
        })
    }

    /// The submission's envelope, as the client sent it.
    pub fn submission(&self) -> &Submission {
        &self.submission
    }

    /// The whole content so far, when it is held.
    pub fn held(&self) -> Option<&[u8]> {
        self.head.as_deref().filter(|_| self.is_holding())
    }

    pub fn is_holding(&self) -> bool {
        self.hold_limit.is_some()
    }

    /// Adds changes to make before the message is sealed.
    pub fn add_edits(&mut self, edits: Vec<Edit>) {
        self.edits.extend(edits);
    }

    pub fn id(&self) -> QueueId {
        self.id
    }

    /// Replaces the metadata the message will be queued with.
    pub fn set_metadata(&mut self, metadata: BTreeMap<String, String>) {
        self.submission.metadata = metadata;
    }

    /// Adds content. The header section is buffered until it is complete, so
    /// that the added headers can be decided before anything is written.
    pub fn push(&mut self, bytes: &[u8]) -> io::Result<()> {
        let Some(head) = &mut self.head else {
            return self.content.write_all(bytes);
        };
        if let Some(limit) = self.hold_limit {
            if (head.len() + bytes.len()) as u64 > limit {
                return Err(io::Error::new(
                    io::ErrorKind::FileTooLarge,
                    format!("message over {limit} bytes"),
                ));
            }
            head.extend_from_slice(bytes);
            return Ok(());
        }
        head.extend_from_slice(bytes);
        if headers::header_end(head).is_some() || head.len() > headers::MAX_HEADER_SCAN {
            self.write_head()?;
        }
        Ok(())
    }

    fn write_head(&mut self) -> io::Result<()> {
        let Some(head) = self.head.take() else {
            return Ok(());
        };
        let section = &head[..headers::header_end(&head).unwrap_or(head.len())];
        let recipients = &self.submission.recipients;
        let stamp = Stamp {
            id: self.id,
            hostname: &self.hostname,
            client: &self.submission.client,
            single_recipient: (recipients.len() == 1).then(|| recipients[0].address.as_str()),
            now: self.arrival,
        };
        let prefix = headers::prefix(headers::scan(section), &stamp);
        self.content.write_all(prefix.as_bytes())?;
        self.content.write_all(&head)
    }

    /// Queues the message in `incoming/` ([`Queue::stage_new`]: one file,
    /// one fsync). The directory entries still need
    /// [`Queue::sync_new_entries`] (group commit) before the message may be
    /// acknowledged. On error nothing of it is left.
    pub fn stage(mut self, queue: &Queue) -> io::Result<Envelope> {
        if let Err(error) = self.write_head() {
            self.abandon(queue);
            return Err(error);
        }
        let envelope = self.envelope();
        queue.stage_new(self.content, &envelope)?;
        Ok(envelope)
    }

    /// Queues a message held whole: the edits applied to content and
    /// envelope, the trace headers added, then `sign` asked for signature
    /// fields for the final message, which go on top. A quarantined
    /// message goes to `hold/`; one left without recipients is dropped.
    /// On error nothing of it is left.
    pub fn stage_edited(
        mut self,
        queue: &Queue,
        sign: impl FnOnce(&[u8], &Submission) -> Vec<u8>,
    ) -> io::Result<Staged> {
        let held = self.head.take().unwrap_or_default();
        let submission = &self.submission;
        let rewritten = rewrite::rewrite(
            &held,
            &self.edits,
            &submission.sender,
            &submission.recipients,
        );
        drop(held);
        if rewritten.recipients.is_empty() {
            self.abandon(queue);
            return Ok(Staged::Discarded);
        }
        let section = &rewritten.content
            [..headers::header_end(&rewritten.content).unwrap_or(rewritten.content.len())];
        let recipients = &rewritten.recipients;
        let stamp = Stamp {
            id: self.id,
            hostname: &self.hostname,
            client: &self.submission.client,
            single_recipient: (recipients.len() == 1).then(|| recipients[0].address.as_str()),
            now: self.arrival,
        };
        let mut message = headers::prefix(headers::scan(section), &stamp).into_bytes();
        message.extend_from_slice(&rewritten.content);
        self.submission.sender = rewritten.sender;
        self.submission.recipients = rewritten.recipients;
        let signatures = sign(&message, &self.submission);
        let written = self
            .content
            .write_all(&signatures)
            .and_then(|()| self.content.write_all(&message));
        if let Err(error) = written {
            self.abandon(queue);
            return Err(error);
        }
        let mut envelope = self.envelope();
        match rewritten.quarantine {
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
        }
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
        }
    }

    #[test]
    fn content_is_the_added_headers_then_the_original_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::new(dir.path());
        queue.create_dirs().unwrap();
        let original = b"Subject: hi\r\nMessage-ID: <a@b>\r\n\r\nline 1\r\n.line 2\r\n";
        let mut incoming = Incoming::start(&queue, "mx.test", submission(), None).unwrap();
        // Split inside the header section, to exercise the buffering.
        incoming.push(&original[..5]).unwrap();
        incoming.push(&original[5..]).unwrap();
        let envelope = incoming.stage(&queue).unwrap();
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
        let mut incoming = Incoming::start(&queue, "mx.test", submission(), None).unwrap();
        incoming.push(b"Subject: only headers\r\n").unwrap();
        let envelope = incoming.stage(&queue).unwrap();
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
        let mut incoming = Incoming::start(&queue, "mx.test", submission(), Some(1 << 20)).unwrap();
        incoming.push(b"Subject: hi\r\n").unwrap();
        incoming.push(b"\r\nbody\r\n").unwrap();
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
        let mut incoming = Incoming::start(&queue, "mx.test", submission(), Some(1 << 20)).unwrap();
        incoming.push(b"Subject: q\r\n\r\n").unwrap();
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

        let mut incoming = Incoming::start(&queue, "mx.test", submission(), Some(1 << 20)).unwrap();
        let id = incoming.id();
        incoming.push(b"Subject: gone\r\n\r\n").unwrap();
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
    fn a_held_message_may_not_outgrow_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::new(dir.path());
        queue.create_dirs().unwrap();
        let mut incoming = Incoming::start(&queue, "mx.test", submission(), Some(10)).unwrap();
        incoming.push(b"Subject: 1").unwrap();
        let error = incoming.push(b"!").unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::FileTooLarge);
        incoming.abandon(&queue);
    }

    #[test]
    fn a_queue_id_chosen_by_smtpd_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::new(dir.path());
        queue.create_dirs().unwrap();
        let chosen = QueueId::generate();
        let mut with_id = submission();
        with_id.queue_id = Some(chosen);
        let incoming = Incoming::start(&queue, "mx.test", with_id, None).unwrap();
        assert_eq!(incoming.id(), chosen);
        incoming.abandon(&queue);
    }

    #[test]
    fn abandoned_submission_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::new(dir.path());
        queue.create_dirs().unwrap();
        let mut incoming = Incoming::start(&queue, "mx.test", submission(), None).unwrap();
        incoming.push(b"Subject: x\r\n\r\nbody").unwrap();
        let id = incoming.id();
        incoming.abandon(&queue);
        assert!(!queue.content_path(id).exists());
        assert_eq!(queue.locate(id), None);
    }
}
