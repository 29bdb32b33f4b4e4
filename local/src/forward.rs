//! Forwarding: addresses that an alias or a `.forward` sends elsewhere
//! are queued again as a new message through cleanup (as Postfix's
//! local(8) does), with the same sender and a `Delivered-To:` header.

use std::path::Path;
use std::time::Duration;

use empath_common::cleanup_client;
use empath_common::protocol::{CleanupReply, Submission};
use empath_common::queue::{ClientInfo, DsnParams, QueueId, Recipient};

const TIMEOUT: Duration = Duration::from_secs(60);

/// Queues `content` from `sender` to `recipients`; the new queue ID, or
/// why not.
pub async fn submit(
    socket: &Path,
    sender: &str,
    recipients: &[String],
    content: &[u8],
) -> Result<QueueId, String> {
    let submission = Submission {
        sender: sender.to_owned(),
        recipients: recipients.iter().map(Recipient::new).collect(),
        client: ClientInfo {
            addr: "local".into(),
            helo: String::new(),
            name: Some("empath-local".into()),
            protocol: "local".into(),
            tls: None,
            authenticated_as: None,
        },
        dsn: DsnParams::default(),
        metadata: Default::default(),
        smtputf8: !sender.is_ascii() || recipients.iter().any(|r| !r.is_ascii()),
        queue_id: None,
        options: Default::default(),
    };
    match cleanup_client::submit(socket, submission, content, TIMEOUT).await {
        Ok(CleanupReply::Queued { id }) => Ok(id),
        Ok(CleanupReply::Rejected(reply)) => Err(format!("cleanup refused it: {reply}")),
        Err(error) => Err(format!("cannot reach cleanup: {error}")),
    }
}
