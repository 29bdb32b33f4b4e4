//! Forwarding: addresses that an alias or a `.forward` sends elsewhere
//! are queued again as a new message through cleanup (as Postfix's
//! local(8) does), with the same sender and a `Delivered-To:` header.

use std::path::Path;
use std::time::Duration;

use empath_common::ipc;
use empath_common::protocol::{CleanupReply, CleanupRequest, Submission};
use empath_common::queue::{ClientInfo, DsnParams, QueueId, Recipient};

const TIMEOUT: Duration = Duration::from_secs(60);
const CHUNK: usize = 64 * 1024;

/// Queues `content` from `sender` to `recipients`; the new queue ID, or
/// why not.
pub async fn submit(
    socket: &Path,
    sender: &str,
    recipients: &[String],
    content: &[u8],
) -> Result<QueueId, String> {
    let exchange = async {
        let mut stream = ipc::connect(socket, TIMEOUT).await?;
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
            options: Default::default(),
        };
        ipc::write_frame(&mut stream, &CleanupRequest::Begin(submission)).await?;
        for chunk in content.chunks(CHUNK) {
            ipc::write_frame(&mut stream, &CleanupRequest::Chunk(chunk.to_vec())).await?;
        }
        ipc::call::<_, _, CleanupReply>(&mut stream, &CleanupRequest::End).await
    };
    match tokio::time::timeout(TIMEOUT, exchange).await {
        Ok(Ok(CleanupReply::Queued { id })) => Ok(id),
        Ok(Ok(CleanupReply::Rejected(reply))) => Err(format!("cleanup refused it: {reply}")),
        Ok(Err(error)) => Err(format!("cannot reach cleanup: {error}")),
        Err(_) => Err("cleanup did not answer in time".into()),
    }
}
