//! `private/showq-control.sock`: the read-only queue commands the master
//! routes here (`empathctl queue list`, `view`, `stats`). Commands that
//! change the queue go to qmgr.

use std::io;
use std::sync::Arc;

use empath_common::control::{ControlRequest, ControlResponse, QueueCommand, QueueEntry};
use empath_common::ipc::{read_frame, write_frame};
use empath_common::queue::{Queue, lister};
use tokio::net::UnixStream;

/// A `queue list` answer is one frame: past about this many bytes the
/// caller is asked to narrow the listing instead (the frame limit is 16 MiB).
const LIST_BYTES: usize = 8 * 1024 * 1024;

pub struct Control {
    queue: Queue,
}

impl Control {
    pub fn new(queue: Queue) -> Self {
        Self { queue }
    }

    pub async fn connection(self: Arc<Self>, mut stream: UnixStream) -> io::Result<()> {
        while let Some(request) = read_frame::<_, ControlRequest>(&mut stream).await? {
            let queue = self.queue.clone();
            let response = tokio::task::spawn_blocking(move || answer(&queue, request))
                .await
                .unwrap_or_else(|e| ControlResponse::Error(format!("showq failed: {e}")));
            write_frame(&mut stream, &response).await?;
        }
        Ok(())
    }
}

fn answer(queue: &Queue, request: ControlRequest) -> ControlResponse {
    let command = match request {
        ControlRequest::Queue(command) => command,
        other => return ControlResponse::Error(format!("showq does not handle {other:?}")),
    };
    let cannot = |e: io::Error| ControlResponse::Error(format!("cannot list the queue: {e}"));
    match command {
        QueueCommand::List {
            status,
            domain,
            limit,
        } => match lister::matching(queue, status, domain) {
            Ok(entries) => bounded_list(entries.take(limit.unwrap_or(usize::MAX))),
            Err(e) => cannot(e),
        },
        QueueCommand::View { id } => match lister::view(queue, id) {
            Some(view) => ControlResponse::Message(Box::new(view)),
            None => ControlResponse::Error(format!("no message {id} in the queue")),
        },
        QueueCommand::Stats => lister::stats(queue).map_or_else(cannot, ControlResponse::Stats),
        other => ControlResponse::Error(format!(
            "showq only lists the queue; {other:?} is carried out by qmgr"
        )),
    }
}

/// The entries as one answer, or an error asking for a narrower listing
/// if they would not fit in one frame.
fn bounded_list(entries: impl Iterator<Item = QueueEntry>) -> ControlResponse {
    let mut listed = Vec::new();
    let mut bytes = 0;
    for entry in entries {
        bytes += weight(&entry);
        if bytes > LIST_BYTES {
            return ControlResponse::Error(format!(
                "too many messages for one answer (more than {}); narrow the listing with --limit, --status or --domain, or use mailq",
                listed.len()
            ));
        }
        listed.push(entry);
    }
    ControlResponse::QueueList(listed)
}

/// Roughly the bytes an entry takes in a frame.
fn weight(entry: &QueueEntry) -> usize {
    64 + entry.sender.len()
        + entry.domains.iter().map(|d| d.len() + 2).sum::<usize>()
        + entry.last_error.as_ref().map_or(0, String::len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use empath_common::control::ListStatus;
    use empath_common::queue::QueueId;

    fn entry(sender_len: usize) -> QueueEntry {
        QueueEntry {
            id: QueueId::generate(),
            status: ListStatus::Pending,
            sender: "s".repeat(sender_len),
            domains: vec!["example.org".into()],
            recipients: 1,
            size: 10,
            arrival: 1,
            attempts: 0,
            next_retry: None,
            last_error: None,
        }
    }

    #[test]
    fn a_listing_too_big_for_one_frame_asks_to_be_narrowed() {
        let small = bounded_list((0..1000).map(|_| entry(20)));
        assert!(matches!(small, ControlResponse::QueueList(ref l) if l.len() == 1000));
        let huge = bounded_list((0..100_000).map(|_| entry(100)));
        let ControlResponse::Error(text) = huge else {
            panic!("{huge:?}")
        };
        assert!(text.contains("--limit"), "{text}");
    }
}
