//! `empath-cleanup`: receives submissions from smtpd (and from bounce and
//! local submission), adds the trace headers, writes the queue file
//! durably, answers the queue ID, and tells qmgr.

mod group_commit;
mod headers;
mod incoming;
mod local;
mod mail_filters;
mod notifier;
mod rewrite;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use empath_common::daemon;
use empath_common::edits::Edit;
use empath_common::ipc::{read_frame, write_frame};
use empath_common::protocol::{self, CleanupReply, CleanupRequest, Submission};
use empath_common::queue::{ClientInfo, DsnParams, Envelope, Queue, Recipient};
use empath_common::smtp::Reply;
use tokio::net::UnixStream;
use tokio::net::unix::OwnedReadHalf;

use group_commit::GroupCommit;
use incoming::{Incoming, Staged};
use mail_filters::{LocalVerdict, MailFilters};
use notifier::Notifier;

struct Cleanup {
    queue: Queue,
    hostname: String,
    group_commit: GroupCommit,
    notifier: Notifier,
    /// Local-submission milters and DKIM signing.
    filters: MailFilters,
}

/// Exit status for config errors (sysexits EX_CONFIG), as the master's.
const EX_CONFIG: i32 = 78;

/// Content is written to the queue file in batches of at least this size.
const WRITE_BATCH: usize = 256 * 1024;
/// How often the drop directory is checked for messages left by `sendmail`.
const MAILDROP_INTERVAL: Duration = Duration::from_secs(5);
/// The local submission socket in `public/`: any local user may submit.
const SUBMIT_SOCKET: &str = "submit.sock";

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
    // A signing key that does not load is a config error: better to stop
    // (the master logs why) than to send mail unsigned unnoticed.
    let filters = match MailFilters::load(&started.config) {
        Ok(filters) => filters,
        Err(error) => {
            tracing::error!(%error, "empath-cleanup cannot run");
            eprintln!("empath-cleanup: {error}");
            std::process::exit(EX_CONFIG);
        }
    };
    let cleanup = Arc::new(Cleanup {
        filters,
        hostname: started.config.hostname(),
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
                submission =
                    local_submission(submission.sender, submission.recipients, client.clone());
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
        let hold_limit = self.filters.hold_limit(!trusted);
        let mut incoming =
            match Incoming::start(&self.queue, &self.hostname, submission, hold_limit) {
                Ok(incoming) => incoming,
                Err(error) => return Some(write_error(&error)),
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
                    if let Err(error) = tokio::task::block_in_place(|| incoming.push(&unwritten)) {
                        incoming.abandon(&self.queue);
                        return Some(write_error(&error));
                    }
                    unwritten.clear();
                }
                CleanupRequest::Metadata(metadata) if trusted => incoming.set_metadata(metadata),
                CleanupRequest::Metadata(_) => {
                    tracing::warn!("metadata from a local client ignored");
                }
                CleanupRequest::Edits(edits) if trusted => incoming.add_edits(edits),
                CleanupRequest::Edits(_) => {
                    tracing::warn!("message edits from a local client ignored");
                }
                CleanupRequest::End => {
                    let from = if trusted {
                        Source::Daemon
                    } else {
                        Source::Sendmail
                    };
                    return Some(self.commit(incoming, &unwritten, from).await);
                }
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
                let recipients = dropped.drop.recipients.iter().map(Recipient::new).collect();
                let submission = local_submission(
                    dropped.drop.sender,
                    recipients,
                    local::client_for_uid(dropped.owner),
                );
                let hold_limit = self.filters.hold_limit(true);
                let started = tokio::task::block_in_place(|| {
                    Incoming::start(&self.queue, &self.hostname, submission, hold_limit)
                });
                let reply = match started {
                    Ok(incoming) => {
                        self.commit(incoming, &dropped.drop.content, Source::Maildrop)
                            .await
                    }
                    Err(error) => write_error(&error),
                };
                match reply {
                    CleanupReply::Queued { id } => {
                        tracing::info!(file = %dropped.name, message_id = %id, "picked up a message from the drop directory");
                        local::remove(&self.queue, &dropped.name);
                    }
                    CleanupReply::Rejected(reply) => {
                        tracing::warn!(file = %dropped.name, %reply, "cannot queue a dropped message yet");
                    }
                }
            }
        }
    }

    /// Adds the last of the content, makes the message durable (its own
    /// file here, the directory entries in a shared group commit) and only
    /// then answers `Queued`. A message held whole first goes through the
    /// local milters (for local mail), its edits and DKIM signing.
    async fn commit(&self, mut incoming: Incoming, rest: &[u8], from: Source) -> CleanupReply {
        if incoming.is_holding() {
            if let Err(error) = tokio::task::block_in_place(|| incoming.push(rest)) {
                incoming.abandon(&self.queue);
                return write_error(&error);
            }
            return self.commit_edited(incoming, from).await;
        }
        let staged = tokio::task::block_in_place(|| match incoming.push(rest) {
            Ok(()) => incoming.stage(&self.queue),
            Err(error) => {
                incoming.abandon(&self.queue);
                Err(error)
            }
        });
        let durable = match staged {
            Ok(envelope) => self.make_durable(envelope).await,
            Err(error) => Err(error),
        };
        durable.unwrap_or_else(|error| write_error(&error))
    }

    /// The group commit, then the notice to qmgr: the message is queued.
    async fn make_durable(&self, envelope: Envelope) -> Result<CleanupReply, io::Error> {
        let id = envelope.id;
        if let Err(error) = self.group_commit.sync().await {
            self.queue.unstage_new(id);
            return Err(error);
        }
        tracing::info!(
            message_id = %id,
            sender = %envelope.sender,
            recipient_count = envelope.recipients.len(),
            size = envelope.content_size,
            client = %envelope.client.addr,
            "message queued"
        );
        self.notifier.queued(id);
        Ok(CleanupReply::Queued { id })
    }

    async fn commit_edited(&self, mut incoming: Incoming, from: Source) -> CleanupReply {
        let id = incoming.id();
        if from != Source::Daemon && self.filters.has_local_milters() {
            let content = incoming.held().unwrap_or_default().to_vec();
            match self
                .filters
                .run_local_milters(id, incoming.submission(), &content)
                .await
            {
                LocalVerdict::Continue(edits) => incoming.add_edits(edits),
                LocalVerdict::Discard => {
                    tracing::info!(message_id = %id, "message discarded by a milter");
                    incoming.abandon(&self.queue);
                    return CleanupReply::Queued { id };
                }
                // Nobody is waiting for a dropped message, and dropping it
                // would lose it: it waits in hold/ for the operator.
                LocalVerdict::Reject(reply) if from == Source::Maildrop && reply.is_permanent() => {
                    tracing::warn!(message_id = %id, %reply, "a milter refused a dropped message; it is held");
                    incoming.add_edits(vec![Edit::Quarantine {
                        reason: format!("refused by a milter: {reply}"),
                    }]);
                }
                LocalVerdict::Reject(reply) => {
                    tracing::info!(message_id = %id, %reply, "message refused by a milter");
                    incoming.abandon(&self.queue);
                    return CleanupReply::Rejected(reply);
                }
            }
        }
        let filters = &self.filters;
        let staged = tokio::task::block_in_place(|| {
            incoming.stage_edited(&self.queue, |message, submission| {
                filters.signatures(message, submission)
            })
        });
        match staged {
            Ok(Staged::Incoming(envelope)) => self
                .make_durable(envelope)
                .await
                .unwrap_or_else(|error| write_error(&error)),
            Ok(Staged::Held { envelope, reason }) => {
                tracing::warn!(
                    message_id = %id,
                    sender = %envelope.sender,
                    recipient_count = envelope.recipients.len(),
                    %reason,
                    "message quarantined in hold/"
                );
                CleanupReply::Queued { id }
            }
            Ok(Staged::Discarded) => {
                tracing::info!(message_id = %id, "message discarded: the milters removed every recipient");
                CleanupReply::Queued { id }
            }
            Err(error) => write_error(&error),
        }
    }
}

/// Who hands cleanup the message being committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// smtpd or bounce: any milter ran in smtpd already.
    Daemon,
    /// `sendmail` on the submission socket, waiting for the answer.
    Sendmail,
    /// A file `sendmail` left in the drop directory: nobody is waiting.
    Maildrop,
}

/// The reply for a failed queue write; a full disk is 452 4.3.1 (RFC 3463).
fn write_error(error: &io::Error) -> CleanupReply {
    tracing::error!(%error, "queue file write failed");
    if error.kind() == io::ErrorKind::StorageFull {
        CleanupReply::Rejected(Reply::new(452, "4.3.1", "Insufficient system storage"))
    } else if error.kind() == io::ErrorKind::FileTooLarge {
        CleanupReply::Rejected(Reply::new(552, "5.3.4", "Message too big for system"))
    } else {
        CleanupReply::Rejected(Reply::new(451, "4.3.0", "Error: queue file write error"))
    }
}

/// A submission from a local user: only the sender, the recipients and the
/// content come from the user.
fn local_submission(sender: String, recipients: Vec<Recipient>, client: ClientInfo) -> Submission {
    Submission {
        sender,
        recipients: recipients
            .into_iter()
            .map(|r| Recipient::new(r.address))
            .collect(),
        client,
        dsn: DsnParams::default(),
        metadata: Default::default(),
        smtputf8: false,
        queue_id: None,
    }
}
