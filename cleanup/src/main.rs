//! `empath-cleanup`: receives submissions from smtpd (and from bounce and
//! local submission), adds the trace headers, writes the queue file
//! durably, answers the queue ID, and tells qmgr.

mod group_commit;
mod headers;
mod incoming;
mod local;
mod notifier;

use std::io::{self, Read};
use std::sync::Arc;
use std::time::Duration;

use empath_common::config::LocalDomains;
use empath_common::daemon;
use empath_common::ipc::{read_frame, write_frame};
use empath_common::maildrop::DropError;
use empath_common::protocol::{self, CleanupReply, CleanupRequest, Submission};
use empath_common::queue::{ClientInfo, DsnParams, Queue, QueueId, Recipient};
use empath_common::smtp::Reply;
use tokio::net::UnixStream;
use tokio::net::unix::OwnedReadHalf;

use group_commit::GroupCommit;
use incoming::{Incoming, Limits, RefusedError};
use notifier::Notifier;

struct Cleanup {
    queue: Queue,
    hostname: String,
    /// For messages from smtpd and bounce.
    daemon_limits: Limits,
    /// For messages from local users.
    local_limits: Limits,
    /// Qualifies the unqualified addresses of local submissions
    /// (`sendmail root`).
    domains: LocalDomains,
    group_commit: GroupCommit,
    notifier: Notifier,
}

/// Content is written to the queue file in batches of at least this size.
const WRITE_BATCH: usize = 256 * 1024;
/// How often the drop directory is checked for messages left by `sendmail`.
const MAILDROP_INTERVAL: Duration = Duration::from_secs(5);
/// The local submission socket in `public/`: any local user may submit.
const SUBMIT_SOCKET: &str = "submit.sock";

/// Why a drop file was not queued.
enum PickUpError {
    /// It never will be (damaged, too big, refused for good): it is set
    /// aside for an operator.
    Unusable(String),
    /// Not now (a full disk, say): it stays for the next round.
    Later(Reply),
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone, Copy)]
enum Origin {
    /// smtpd or bounce, on the private socket: their envelope is trusted.
    Daemon,
    /// A local user (sendmail), on the public socket: identity comes from
    /// the kernel, not from what the client says.
    Local,
}

#[tokio::main]
async fn main() {
    let started = daemon::start("cleanup");
    let hops = started.config.cleanup.hopcount_limit;
    let cleanup = Arc::new(Cleanup {
        hostname: started.config.hostname(),
        daemon_limits: Limits {
            size: started.config.smtp_message_size_limit(),
            hops,
        },
        local_limits: Limits {
            size: started.config.local_message_size_limit(),
            hops,
        },
        domains: started.config.local_domains(),
        group_commit: GroupCommit::start(started.queue.clone()),
        notifier: Notifier::start(started.queue.private_socket(protocol::QMGR)),
        queue: started.queue,
    });
    let private = cleanup.queue.private_socket(protocol::CLEANUP);
    let public = cleanup.queue.public_path(SUBMIT_SOCKET);
    let (daemons, locals) = match (
        daemon::bind_socket(&private),
        daemon::bind_socket_with_mode(&public, 0o666),
    ) {
        (Ok(daemons), Ok(locals)) => (daemons, locals),
        (Err(error), _) | (_, Err(error)) => {
            tracing::error!(%error, "cannot listen on the cleanup sockets");
            std::process::exit(1);
        }
    };
    tracing::info!(socket = %private.display(), submit = %public.display(), "cleanup ready");
    let for_daemons = Arc::clone(&cleanup);
    let for_locals = Arc::clone(&cleanup);
    tokio::select! {
        result = daemon::serve(daemons, "cleanup", move |stream| Arc::clone(&for_daemons).connection(stream, Origin::Daemon)) => {
            if let Err(error) = result {
                tracing::error!(%error, "cleanup stopped");
            }
        }
        result = daemon::serve(locals, "cleanup", move |stream| Arc::clone(&for_locals).connection(stream, Origin::Local)) => {
            if let Err(error) = result {
                tracing::error!(%error, "cleanup stopped");
            }
        }
        () = cleanup.pick_up_maildrop() => {}
        () = daemon::stop_requested() => tracing::info!("cleanup stopping"),
    }
}

impl Cleanup {
    /// One client connection: any number of submissions, one after another.
    async fn connection(self: Arc<Self>, stream: UnixStream, origin: Origin) -> io::Result<()> {
        let local_client = match origin {
            Origin::Daemon => None,
            Origin::Local => Some(local::client_for_uid(stream.peer_cred()?.uid())),
        };
        let (mut reader, mut writer) = stream.into_split();
        while let Some(request) = read_frame::<_, CleanupRequest>(&mut reader).await? {
            let CleanupRequest::Begin(mut submission) = request else {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "expected Begin"));
            };
            if let Some(client) = &local_client {
                submission = local_submission(
                    &self.domains,
                    submission.sender,
                    submission.recipients,
                    client.clone(),
                );
            }
            let trusted = local_client.is_none();
            let Some(reply) = self.submission(&mut reader, submission, trusted).await else {
                return Ok(());
            };
            write_frame(&mut writer, &reply).await?;
        }
        Ok(())
    }

    /// Receives one message. `None` when the client went away mid-message.
    /// Only a `trusted` client (a daemon) may replace the metadata.
    async fn submission(
        &self,
        reader: &mut OwnedReadHalf,
        submission: protocol::Submission,
        trusted: bool,
    ) -> Option<CleanupReply> {
        if submission.recipients.is_empty() {
            return Some(CleanupReply::Rejected(Reply::new(
                554,
                "5.5.1",
                "Error: no valid recipients",
            )));
        }
        let limits = if trusted {
            self.daemon_limits
        } else {
            self.local_limits
        };
        let mut incoming = match Incoming::start(&self.queue, &self.hostname, submission, limits) {
            Ok(incoming) => incoming,
            Err(error) => return Some(refused(RefusedError::Write(error))),
        };
        // Content is gathered in memory and written in batches: each write
        // leaves the async thread (block_in_place), which costs more than
        // the write itself for a typical message of a few kilobytes.
        let mut unwritten = Vec::new();
        loop {
            let request = match read_frame::<_, CleanupRequest>(reader).await {
                Ok(Some(request)) => request,
                Ok(None) | Err(_) => {
                    incoming.abandon(&self.queue);
                    return None;
                }
            };
            match request {
                CleanupRequest::Chunk(bytes) => {
                    if unwritten.is_empty() {
                        unwritten = bytes;
                    } else {
                        unwritten.extend_from_slice(&bytes);
                    }
                    if unwritten.len() < WRITE_BATCH {
                        continue;
                    }
                    // A refused message (too big, say) is still read to its
                    // end, so the client hears why at the end of data.
                    tokio::task::block_in_place(|| incoming.push(&unwritten));
                    unwritten.clear();
                }
                CleanupRequest::Metadata(metadata) if trusted => incoming.set_metadata(metadata),
                CleanupRequest::Metadata(_) => {
                    tracing::warn!("metadata from a local client ignored");
                }
                CleanupRequest::End => return Some(self.commit(incoming, &unwritten).await),
                CleanupRequest::Abort | CleanupRequest::Begin(_) => {
                    incoming.abandon(&self.queue);
                    return Some(CleanupReply::Rejected(Reply::new(
                        451,
                        "4.3.0",
                        "Error: submission aborted",
                    )));
                }
            }
        }
    }

    /// Queues what `sendmail` left in the drop directory, now and every
    /// few seconds, then removes each file once its message is durable.
    async fn pick_up_maildrop(&self) {
        let mut tick = tokio::time::interval(MAILDROP_INTERVAL);
        loop {
            tick.tick().await;
            let pending = match tokio::task::block_in_place(|| local::pending(&self.queue)) {
                Ok(pending) => pending,
                Err(error) => {
                    tracing::warn!(%error, "cannot read the drop directory");
                    continue;
                }
            };
            for dropped in pending {
                match self.pick_up(&dropped).await {
                    Ok(id) => {
                        tracing::info!(file = %dropped.name, message_id = %id, "picked up a message from the drop directory");
                        local::remove(&self.queue, &dropped.name);
                    }
                    Err(PickUpError::Unusable(why)) => {
                        local::set_aside(&self.queue, &dropped, &why)
                    }
                    Err(PickUpError::Later(reply)) => {
                        tracing::warn!(file = %dropped.name, %reply, "cannot queue a dropped message yet");
                    }
                }
            }
        }
    }

    /// Streams one drop file into the queue: the content is never held in
    /// memory whole, and the file's checksum is checked before the message
    /// is committed.
    async fn pick_up(&self, dropped: &local::Dropped) -> Result<QueueId, PickUpError> {
        let unusable = |why: String| PickUpError::Unusable(why);
        let mut stream = match tokio::task::block_in_place(|| local::open(&self.queue, dropped)) {
            Ok(stream) => stream,
            Err(DropError::Io(error)) if error.kind() == io::ErrorKind::NotFound => {
                return Err(PickUpError::Later(Reply::new(
                    451,
                    "4.3.0",
                    "drop file gone",
                )));
            }
            Err(error) => return Err(unusable(error.to_string())),
        };
        if stream.content_len > self.local_limits.size {
            return Err(unusable(format!(
                "{} bytes, larger than the message size limit of {}",
                stream.content_len, self.local_limits.size
            )));
        }
        let recipients = stream
            .header
            .recipients
            .iter()
            .map(Recipient::new)
            .collect();
        let submission = local_submission(
            &self.domains,
            stream.header.sender.clone(),
            recipients,
            local::client_for_uid(dropped.owner),
        );
        let mut incoming = tokio::task::block_in_place(|| {
            Incoming::start(&self.queue, &self.hostname, submission, self.local_limits)
        })
        .map_err(|error| PickUpError::Later(RefusedError::Write(error).reply()))?;
        let mut piece = vec![0u8; WRITE_BATCH];
        let streamed = tokio::task::block_in_place(|| {
            loop {
                let read = stream.read(&mut piece)?;
                if read == 0 {
                    break;
                }
                incoming.push(&piece[..read]);
            }
            stream.verify()
        });
        if let Err(error) = streamed {
            incoming.abandon(&self.queue);
            return Err(unusable(error.to_string()));
        }
        match self.commit(incoming, &[]).await {
            CleanupReply::Queued { id } => Ok(id),
            CleanupReply::Rejected(reply) if reply.is_permanent() => {
                Err(unusable(reply.to_string()))
            }
            CleanupReply::Rejected(reply) => Err(PickUpError::Later(reply)),
        }
    }

    /// Adds the last of the content, makes the message durable (its own
    /// file here, the directory entries in a shared group commit) and only
    /// then answers `Queued`.
    async fn commit(&self, mut incoming: Incoming, rest: &[u8]) -> CleanupReply {
        let id = incoming.id();
        let staged = tokio::task::block_in_place(|| {
            incoming.push(rest);
            incoming.stage(&self.queue)
        });
        let durable = match staged {
            Ok(envelope) => match self.group_commit.sync().await {
                Ok(()) => Ok(envelope),
                Err(error) => {
                    self.queue.unstage_new(id);
                    Err(RefusedError::Write(error))
                }
            },
            Err(error) => Err(error),
        };
        match durable {
            Ok(envelope) => {
                tracing::info!(
                    message_id = %id,
                    sender = %envelope.sender,
                    recipient_count = envelope.recipients.len(),
                    size = envelope.content_size,
                    client = %envelope.client.addr,
                    "message queued"
                );
                self.notifier.queued(id);
                CleanupReply::Queued { id }
            }
            Err(error) => refused(error),
        }
    }
}

/// The reply for a message that was not queued, logged.
fn refused(error: RefusedError) -> CleanupReply {
    match &error {
        RefusedError::Write(_) => tracing::error!(%error, "queue file write failed"),
        _ => tracing::warn!(%error, "message refused"),
    }
    CleanupReply::Rejected(error.reply())
}

/// A submission from a local user: only the sender, the recipients and the
/// content come from the user. Unqualified addresses (`root`) get the
/// origin domain.
fn local_submission(
    domains: &LocalDomains,
    sender: String,
    recipients: Vec<Recipient>,
    client: ClientInfo,
) -> Submission {
    Submission {
        sender: domains.qualify(&sender),
        recipients: recipients
            .into_iter()
            .map(|r| Recipient::new(domains.qualify(&r.address)))
            .collect(),
        client,
        dsn: DsnParams::default(),
        metadata: Default::default(),
        smtputf8: false,
        options: Default::default(),
    }
}
