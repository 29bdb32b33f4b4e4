//! One message being written into the queue: shaped into its canonical
//! form (see [`empath_common::content::shape`]), headers added first, the
//! rest streamed to the content file, then the envelope committed.

use std::collections::BTreeMap;
use std::io;

use empath_common::content::shape::Shaper;
use empath_common::protocol::Submission;
use empath_common::queue::{ContentWriter, Envelope, Queue, QueueId};
use empath_common::smtp::Reply;
use empath_common::time::unix_now;

use crate::headers::{self, Stamp};

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
    /// Shaped content not yet written.
    shaped: Vec<u8>,
    /// The start of the message, held until its header section is complete.
    head: Option<Vec<u8>>,
    hostname: String,
    arrival: u64,
    limits: Limits,
    /// Octets submitted so far.
    received: u64,
    /// Set once the message is refused: the rest of it is only counted.
    refused: Option<RefusedError>,
}

impl Incoming {
    pub fn start(
        queue: &Queue,
        hostname: &str,
        submission: Submission,
        limits: Limits,
    ) -> io::Result<Self> {
        let id = QueueId::generate();
        let content = queue.create_content(id)?;
        Ok(Self {
            id,
            submission,
            content,
            shaper: Shaper::new(),
            shaped: Vec::new(),
            head: Some(Vec::new()),
            hostname: hostname.to_owned(),
            arrival: unix_now(),
            limits,
            received: 0,
            refused: None,
        })
    }

    pub fn id(&self) -> QueueId {
        self.id
    }

    /// Replaces the metadata the message will be queued with.
    pub fn set_metadata(&mut self, metadata: BTreeMap<String, String>) {
        self.submission.metadata = metadata;
    }

    /// Adds content. Once the message is refused (too big, too many hops,
    /// a write error), the rest is not written; [`Self::stage`] then
    /// returns why. The header section is held until it is complete, so
    /// that the added headers can be decided before anything is written.
    pub fn push(&mut self, bytes: &[u8]) {
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
        self.shaped.clear();
        self.shaper.push(bytes, &mut self.shaped);
        if let Err(error) = self.write_shaped() {
            self.refused = Some(error);
        }
    }

    fn write_shaped(&mut self) -> Result<(), RefusedError> {
        match &mut self.head {
            None => Ok(self.content.write_all(&self.shaped)?),
            Some(head) => {
                head.extend_from_slice(&self.shaped);
                if self.shaper.in_body() {
                    self.write_head()?;
                }
                Ok(())
            }
        }
    }

    fn write_head(&mut self) -> Result<(), RefusedError> {
        let Some(head) = self.head.take() else {
            return Ok(());
        };
        let facts = self.shaper.facts();
        if facts.received > self.limits.hops {
            return Err(RefusedError::TooManyHops {
                hops: facts.received,
                limit: self.limits.hops,
            });
        }
        let recipients = &self.submission.recipients;
        let stamp = Stamp {
            id: self.id,
            hostname: &self.hostname,
            client: &self.submission.client,
            single_recipient: (recipients.len() == 1).then(|| recipients[0].address.as_str()),
            now: self.arrival,
        };
        let prefix = headers::prefix(facts, &stamp);
        self.content.write_all(prefix.as_bytes())?;
        Ok(self.content.write_all(&head)?)
    }

    /// Queues the message in `incoming/` ([`Queue::stage_new`]: one file,
    /// one fsync). The directory entries still need
    /// [`Queue::sync_new_entries`] (group commit) before the message may be
    /// acknowledged. On error nothing of it is left.
    pub fn stage(mut self, queue: &Queue) -> Result<Envelope, RefusedError> {
        match self.finish() {
            Ok(()) => {}
            Err(error) => {
                self.abandon(queue);
                return Err(error);
            }
        }
        let submission = self.submission;
        let envelope = Envelope {
            id: self.id,
            sender: submission.sender,
            recipients: submission.recipients,
            arrival: self.arrival,
            attempts: 0,
            next_retry: None,
            last_error: None,
            client: submission.client,
            dsn: submission.dsn,
            metadata: submission.metadata,
            content_size: self.content.written(),
            smtputf8: submission.smtputf8,
            delay_warned: false,
            options: submission.options.0,
        };
        queue.stage_new(self.content, &envelope)?;
        Ok(envelope)
    }

    /// Shapes and writes the last of the content.
    fn finish(&mut self) -> Result<(), RefusedError> {
        if let Some(refused) = self.refused.take() {
            return Err(refused);
        }
        self.shaped.clear();
        self.shaper.finish(&mut self.shaped);
        self.write_shaped()?;
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
            options: Default::default(),
        }
    }

    #[test]
    fn content_is_the_added_headers_then_the_original_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::new(dir.path());
        queue.create_dirs().unwrap();
        let original = b"Subject: hi\r\nMessage-ID: <a@b>\r\n\r\nline 1\r\n.line 2\r\n";
        let mut incoming = Incoming::start(&queue, "mx.test", submission(), LIMITS).unwrap();
        // Split inside the header section, to exercise the buffering.
        incoming.push(&original[..5]);
        incoming.push(&original[5..]);
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
        let mut incoming = Incoming::start(&queue, "mx.test", submission(), LIMITS).unwrap();
        incoming.push(b"Subject: only headers\r\n");
        let envelope = incoming.stage(&queue).unwrap();
        queue.sync_new_entries().unwrap();
        let stored = String::from_utf8(read_content(&queue, envelope.id)).unwrap();
        assert!(stored.contains("Message-ID: <"));
        assert!(stored.ends_with("Subject: only headers\r\n"));
    }

    #[test]
    fn abandoned_submission_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::new(dir.path());
        queue.create_dirs().unwrap();
        let mut incoming = Incoming::start(&queue, "mx.test", submission(), LIMITS).unwrap();
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
        let mut incoming = Incoming::start(&queue, "mx.test", submission(), LIMITS).unwrap();
        let id = incoming.id();
        for _ in 0..20 {
            incoming.push(&[b'x'; 64 * 1024]);
        }
        let error = incoming.stage(&queue).unwrap_err();
        assert_eq!(error.reply().code, 552, "{error}");
        assert!(!queue.content_path(id).exists());
    }

    #[test]
    fn too_many_received_fields_is_a_loop() {
        let (_dir, queue) = queue();
        let mut incoming = Incoming::start(&queue, "mx.test", submission(), LIMITS).unwrap();
        incoming.push(&b"Received: from a\r\n".repeat(4));
        incoming.push(b"\r\nbody\r\n");
        let error = incoming.stage(&queue).unwrap_err();
        let reply = error.reply();
        assert_eq!(
            (reply.code, reply.enhanced.as_deref()),
            (554, Some("5.4.6"))
        );
    }

    #[test]
    fn a_message_without_headers_is_not_run_into_the_added_ones() {
        let (_dir, queue) = queue();
        let mut incoming = Incoming::start(&queue, "mx.test", submission(), LIMITS).unwrap();
        incoming.push(b"just text, no header\r\n");
        let envelope = incoming.stage(&queue).unwrap();
        let stored = String::from_utf8(read_content(&queue, envelope.id)).unwrap();
        assert!(
            stored.ends_with("\r\n\r\njust text, no header\r\n"),
            "{stored}"
        );
    }
}
