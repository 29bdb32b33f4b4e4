//! Handing a notice to cleanup, which queues it like any other message:
//! from the null sender, marked in its metadata as a notice.

use std::collections::BTreeMap;
use std::time::Duration;

use empath_common::cleanup_client;
use empath_common::protocol::{self, CleanupReply, DSN_METADATA, Submission};
use empath_common::queue::{ClientInfo, DsnParams, Queue, QueueId, Recipient};

use crate::dsn::Built;
use crate::policy::NoticeKind;

/// How long each step of the submission may take (cleanup fsyncs).
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(60);

/// Queues `notice` for `recipient` and returns its queue ID.
pub async fn submit(
    queue: &Queue,
    recipient: &str,
    kind: NoticeKind,
    notice: &Built,
) -> Result<QueueId, String> {
    let socket = queue.private_socket(protocol::CLEANUP);
    let submission = Submission {
        // Never anything but `<>`: a notice must not cause another notice
        // to the sender of the original (RFC 3461 section 6.2).
        sender: String::new(),
        recipients: vec![Recipient::new(recipient)],
        client: ClientInfo {
            addr: "local".into(),
            protocol: "local".into(),
            ..ClientInfo::default()
        },
        dsn: DsnParams::default(),
        metadata: BTreeMap::from([(DSN_METADATA.to_owned(), kind.metadata().to_owned())]),
        smtputf8: notice.smtputf8,
        queue_id: None,
        options: Default::default(),
    };
    let reply = cleanup_client::submit(&socket, submission, &notice.message, SUBMIT_TIMEOUT)
        .await
        .map_err(|e| format!("submitting to cleanup: {e}"))?;
    match reply {
        CleanupReply::Queued { id } => Ok(id),
        CleanupReply::Rejected(reply) => Err(format!("cleanup refused the notice: {reply}")),
    }
}
