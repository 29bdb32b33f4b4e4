//! One message being written into the queue: headers first, then the rest
//! streamed to the content file, then the envelope committed.

use std::collections::BTreeMap;
use std::io;

use empath_common::protocol::Submission;
use empath_common::queue::{ContentWriter, Envelope, Queue, QueueId};
use empath_common::time::unix_now;

use crate::headers::{self, Stamp};

/// A submission between `Begin` and `End`.
pub struct Incoming {
    id: QueueId,
    submission: Submission,
    content: ContentWriter,
    /// The start of the message, held until its header section is complete.
    head: Option<Vec<u8>>,
    hostname: String,
    arrival: u64,
}

impl Incoming {
    pub fn start(queue: &Queue, hostname: &str, submission: Submission) -> io::Result<Self> {
        let id = QueueId::generate();
        let content = queue.create_content(id)?;
        Ok(Self {
            id,
            submission,
            content,
            head: Some(Vec::new()),
            hostname: hostname.to_owned(),
            arrival: unix_now(),
        })
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
        };
        queue.stage_new(self.content, &envelope)?;
        Ok(envelope)
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
        let mut incoming = Incoming::start(&queue, "mx.test", submission()).unwrap();
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
        let mut incoming = Incoming::start(&queue, "mx.test", submission()).unwrap();
        incoming.push(b"Subject: only headers\r\n").unwrap();
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
        let mut incoming = Incoming::start(&queue, "mx.test", submission()).unwrap();
        incoming.push(b"Subject: x\r\n\r\nbody").unwrap();
        let id = incoming.id();
        incoming.abandon(&queue);
        assert!(!queue.content_path(id).exists());
        assert_eq!(queue.locate(id), None);
    }
}
