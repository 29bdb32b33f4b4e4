//! `empath-bounce`: tells senders about the recipients that failed, with
//! an RFC 3464 DSN injected through cleanup from the null sender.

mod dsn;

use std::io::{self, Read};
use std::sync::Arc;
use std::time::Duration;

use empath_common::daemon;
use empath_common::ipc::{self, read_frame, write_frame};
use empath_common::protocol::{
    self, BounceReply, BounceRequest, CleanupReply, CleanupRequest, Submission,
};
use empath_common::queue::{ClientInfo, DsnParams, Envelope, Queue, QueueId, Recipient};
use empath_common::time::unix_now;
use tokio::net::UnixStream;

/// Original headers beyond this size are cut from the DSN.
const MAX_HEADERS: usize = 64 * 1024;

struct Bounce {
    queue: Queue,
    hostname: String,
    reporting_mta: String,
}

#[tokio::main]
async fn main() {
    let started = daemon::start("bounce");
    let hostname = started.config.hostname();
    let bounce = Arc::new(Bounce {
        reporting_mta: started
            .config
            .dsn
            .reporting_mta
            .clone()
            .unwrap_or_else(|| hostname.clone()),
        hostname,
        queue: started.queue,
    });
    let path = bounce.queue.private_socket(protocol::BOUNCE);
    let listener = match daemon::bind_socket(&path) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, socket = %path.display(), "cannot listen");
            std::process::exit(1);
        }
    };
    tracing::info!(socket = %path.display(), "bounce ready");
    tokio::select! {
        result = daemon::serve(listener, "bounce", move |stream| Arc::clone(&bounce).connection(stream)) => {
            if let Err(error) = result {
                tracing::error!(%error, "bounce stopped");
            }
        }
        () = daemon::stop_requested() => tracing::info!("bounce stopping"),
    }
}

impl Bounce {
    async fn connection(self: Arc<Self>, mut stream: UnixStream) -> io::Result<()> {
        while let Some(request) = read_frame::<_, BounceRequest>(&mut stream).await? {
            let reply = match self.notify(&request).await {
                Ok(dsn) => BounceReply::Done { dsn },
                Err(error) => {
                    tracing::warn!(message_id = %request.id, %error, "cannot send DSN");
                    BounceReply::Failed(error)
                }
            };
            write_frame(&mut stream, &reply).await?;
        }
        Ok(())
    }

    /// Builds and queues the DSN for the message; `None` if none is due.
    async fn notify(&self, request: &BounceRequest) -> Result<Option<QueueId>, String> {
        let envelope = self
            .queue
            .read(request.state, request.id)
            .map_err(|e| e.to_string())?;
        if request.kind != protocol::BounceKind::Failure || envelope.is_null_sender() {
            // Never bounce a bounce: that is how mail loops start.
            return Ok(None);
        }
        let headers = self.original_headers(&envelope);
        let reporter = dsn::Reporter {
            hostname: &self.hostname,
            reporting_mta: &self.reporting_mta,
            now: unix_now(),
        };
        let Some(message) = dsn::build(&envelope, &headers, &reporter) else {
            return Ok(None);
        };
        let id = self.submit(&envelope.sender, message).await?;
        tracing::info!(message_id = %envelope.id, dsn_id = %id, original_sender = %envelope.sender, "DSN generated");
        Ok(Some(id))
    }

    /// The header section of the queued message, up to [`MAX_HEADERS`].
    fn original_headers(&self, envelope: &Envelope) -> Vec<u8> {
        let mut head = Vec::new();
        if let Ok(file) = self.queue.open_content(envelope.id) {
            let _ = file.take(MAX_HEADERS as u64).read_to_end(&mut head);
        }
        let end = head
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(head.len(), |p| p + 2);
        head.truncate(end);
        head
    }

    async fn submit(&self, recipient: &str, message: Vec<u8>) -> Result<QueueId, String> {
        let socket = self.queue.private_socket(protocol::CLEANUP);
        let mut stream = ipc::connect(&socket, Duration::from_secs(5))
            .await
            .map_err(|e| e.to_string())?;
        let submission = Submission {
            sender: String::new(),
            recipients: vec![Recipient::new(recipient)],
            client: ClientInfo {
                addr: "local".into(),
                protocol: "local".into(),
                ..ClientInfo::default()
            },
            dsn: DsnParams::default(),
            metadata: Default::default(),
            smtputf8: false,
        };
        let send = async {
            write_frame(&mut stream, &CleanupRequest::Begin(submission)).await?;
            for chunk in message.chunks(64 * 1024) {
                write_frame(&mut stream, &CleanupRequest::Chunk(chunk.to_vec())).await?;
            }
            ipc::call::<_, _, CleanupReply>(&mut stream, &CleanupRequest::End).await
        };
        match send.await.map_err(|e| e.to_string())? {
            CleanupReply::Queued { id } => Ok(id),
            CleanupReply::Rejected(reply) => Err(format!("cleanup refused the DSN: {reply}")),
        }
    }
}
