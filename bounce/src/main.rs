//! `empath-bounce`: tells senders about recipients that failed or are
//! delayed, with RFC 3464 DSNs injected through cleanup from the null
//! sender, and tells the postmaster when such a DSN fails in turn.
//!
//! qmgr asks (one [`BounceRequest`] per message); [`policy`] decides whom
//! to tell, [`original`] picks what of the message goes back, [`dsn`]
//! builds the notice and [`submit`] queues it.

mod dsn;
mod original;
mod policy;
mod submit;

use std::io;
use std::sync::Arc;

use empath_common::daemon;
use empath_common::ipc::write_frame;
use empath_common::protocol::{self, BounceReply, BounceRequest};
use empath_common::queue::{Envelope, Queue, QueueId, Ret};
use empath_common::time::unix_now;
use tokio::net::UnixStream;

use crate::original::Returned;
use crate::policy::{Decision, NoticeKind};

/// Settings and state of the daemon.
struct Bounce {
    queue: Queue,
    enabled: bool,
    hostname: String,
    reporting_mta: String,
    postmaster: String,
    max_return_size: u64,
    max_queue_lifetime_secs: u64,
}

#[tokio::main]
async fn main() {
    let started = daemon::start("bounce");
    let config = &started.config;
    let hostname = config.hostname();
    let bounce = Arc::new(Bounce {
        enabled: config.dsn.enabled,
        reporting_mta: config
            .dsn
            .reporting_mta
            .clone()
            .unwrap_or_else(|| hostname.clone()),
        postmaster: config.dsn.postmaster_or(&hostname),
        max_return_size: config.dsn.max_return_size,
        max_queue_lifetime_secs: config.delivery.max_queue_lifetime_secs,
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
    tokio::spawn(daemon::drain_on_stop());
    if let Err(error) = daemon::serve(listener, "bounce", move |stream| {
        Arc::clone(&bounce).connection(stream)
    })
    .await
    {
        tracing::error!(%error, "bounce stopped");
    }
}

impl Bounce {
    async fn connection(self: Arc<Self>, mut stream: UnixStream) -> io::Result<()> {
        while let Some(request) = daemon::next_request::<BounceRequest, _>(&mut stream).await? {
            let reply = match self.notify(&request).await {
                Ok(dsn) => BounceReply::Done { dsn },
                Err(error) => {
                    tracing::warn!(message_id = %request.id, %error, "Failed to spool DSN");
                    BounceReply::Failed(error)
                }
            };
            write_frame(&mut stream, &reply).await?;
        }
        Ok(())
    }

    /// Builds and queues the notice for the message; `None` if none is due.
    async fn notify(&self, request: &BounceRequest) -> Result<Option<QueueId>, String> {
        let Some(envelope) = self.load(request)? else {
            tracing::warn!(message_id = %request.id, "message to report on is gone; nothing sent");
            return Ok(None);
        };
        let (kind, to) = match policy::decide(
            &envelope,
            request.kind,
            self.enabled,
            &self.postmaster,
        ) {
            Decision::Send { kind, to } => (kind, to),
            Decision::Nothing(reason) => {
                tracing::info!(message_id = %envelope.id, sender = %envelope.sender, reason, "no DSN sent");
                return Ok(None);
            }
        };
        let returned = self.returned(&envelope, kind)?;
        let reporter = dsn::Reporter {
            hostname: &self.hostname,
            reporting_mta: &self.reporting_mta,
            postmaster: &self.postmaster,
            now: unix_now(),
            max_queue_lifetime_secs: self.max_queue_lifetime_secs,
        };
        let notice = dsn::Notice {
            kind,
            envelope: &envelope,
            to: &to,
            returned: &returned,
        };
        let Some(built) = dsn::build(&notice, &reporter) else {
            tracing::info!(message_id = %envelope.id, kind = kind.metadata(), "no recipient to report on (NOTIFY or status); no DSN sent");
            return Ok(None);
        };
        let id = submit::submit(&self.queue, &to, kind, &built).await?;
        empath_common::maillog::notified(
            envelope.id,
            id,
            kind.metadata(),
            &to.to_string(),
            &envelope.sender,
            built.recipients,
        );
        Ok(Some(id))
    }

    /// The envelope, from where qmgr said it is or, if it has moved on
    /// since (a deferred message picked up again), from where it is now.
    fn load(&self, request: &BounceRequest) -> Result<Option<Envelope>, String> {
        match self.queue.read(request.state, request.id) {
            Ok(envelope) => return Ok(Some(envelope)),
            Err(error) if !error.is_not_found() => return Err(error.to_string()),
            Err(_) => {}
        }
        let Some(state) = self.queue.locate(request.id) else {
            return Ok(None);
        };
        match self.queue.read(state, request.id) {
            Ok(envelope) => Ok(Some(envelope)),
            Err(error) if error.is_not_found() => Ok(None),
            Err(error) => Err(error.to_string()),
        }
    }

    /// What of the original goes back: all of it for a failure with
    /// RET=FULL (within `dsn.max_return_size`), else the headers.
    fn returned(&self, envelope: &Envelope, kind: NoticeKind) -> Result<Returned, String> {
        let full = kind == NoticeKind::Failure && envelope.dsn.ret == Some(Ret::Full);
        match self.queue.open_content(envelope.id) {
            Ok(file) => original::select(file, full, self.max_return_size)
                .map_err(|e| format!("reading the message content: {e}")),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                // The report matters more than the copy: send it without.
                tracing::warn!(message_id = %envelope.id, "message content is missing; the DSN returns no headers");
                Ok(Returned::Headers {
                    bytes: Vec::new(),
                    too_big: false,
                })
            }
            Err(error) => Err(format!("opening the message content: {error}")),
        }
    }
}
