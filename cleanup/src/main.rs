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

use std::io::{self, Read};
use std::sync::Arc;
use std::time::Duration;

use empath_common::config::LocalDomains;
use empath_common::daemon;
use empath_common::edits::Edit;
use empath_common::ipc::{self, write_frame};
use empath_common::maildrop::DropError;
use empath_common::maillog;
use empath_common::protocol::{self, CleanupFrame, CleanupReply, CleanupRequest, Submission};
use empath_common::queue::{ClientInfo, DsnParams, Envelope, Queue, QueueId, Recipient};
use empath_common::smtp::Reply;
use empath_common::traces::{self, Kind as SpanKind, Span};
use tokio::io::BufReader;
use tokio::net::UnixStream;
use tokio::net::unix::OwnedReadHalf;
use tracing::Instrument;

use group_commit::GroupCommit;
use incoming::{Incoming, Limits, RefusedError, Staged};
use mail_filters::{LocalVerdict, MailFilters};
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
    /// Local-submission milters and DKIM signing.
    filters: MailFilters,
}

/// Exit status for config errors (sysexits EX_CONFIG), as the master's.
const EX_CONFIG: i32 = 78;

/// Content is written to the queue file in batches of at least this size.
const WRITE_BATCH: usize = 256 * 1024;
/// How much of a client's frames one read takes: a whole small message
/// (its `Begin`, its one `Chunk` and `End`) usually arrives in one.
const READ_BUFFER: usize = 16 * 1024;
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
    let hops = started.config.cleanup.hopcount_limit;
    let cleanup = Arc::new(Cleanup {
        filters,
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
    // A stop lets every submission in progress finish and hear its
    // answer: a message cleanup made durable must not get a 451, or the
    // client sends it twice.
    tokio::spawn(daemon::drain_on_stop());
    let serving = async {
        let (from_daemons, from_locals) = tokio::join!(
            daemon::serve(daemons, "cleanup", move |stream| {
                Arc::clone(&for_daemons).connection(stream, Origin::Daemon)
            }),
            daemon::serve(locals, "cleanup", move |stream| {
                Arc::clone(&for_locals).connection(stream, Origin::Local)
            }),
        );
        for result in [from_daemons, from_locals] {
            if let Err(error) = result {
                tracing::error!(%error, "cleanup stopped");
            }
        }
    };
    tokio::select! {
        () = serving => {}
        () = cleanup.pick_up_maildrop() => {}
    }
    tokio::task::block_in_place(traces::shutdown);
}

impl Cleanup {
    /// One client connection: any number of submissions, one after another.
    async fn connection(self: Arc<Self>, stream: UnixStream, origin: Origin) -> io::Result<()> {
        let local_client = match origin {
            Origin::Daemon => None,
            Origin::Local => Some(local::client_for_uid(stream.peer_cred()?.uid())),
        };
        let (reader, mut writer) = stream.into_split();
        let mut reader = BufReader::with_capacity(READ_BUFFER, reader);
        while let Some(request) = daemon::next_request::<CleanupRequest, _>(&mut reader).await? {
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
        reader: &mut BufReader<OwnedReadHalf>,
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
        let sender = submission.sender.clone();
        let recipients = submission.recipients.len();
        let mut incoming = self.start(submission, !trusted);
        let mut span = Span::start("queue", SpanKind::Internal, incoming.id());
        span.text("empath.sender", &sender)
            .number("empath.recipient_count", recipients);
        // Content is shaped as it comes and written in batches: each write
        // leaves the async thread (block_in_place), which costs more than
        // the write itself for a typical message of a few kilobytes. Each
        // frame is read into `frame`, and a chunk is shaped from there.
        let mut frame = Vec::new();
        loop {
            let decoded = match ipc::read_payload(reader, &mut frame, ipc::MAX_FRAME).await {
                Ok(true) => CleanupFrame::decode(&frame).ok(),
                Ok(false) | Err(_) => None,
            };
            let request = match decoded {
                Some(CleanupFrame::Chunk(content)) => {
                    // A refused message (too big, say) is still read to its
                    // end, so the client hears why at the end of data.
                    incoming.shape(content);
                    if incoming.unwritten() >= WRITE_BATCH {
                        tokio::task::block_in_place(|| incoming.write_shaped());
                    }
                    continue;
                }
                Some(CleanupFrame::Request(request)) => request,
                // Gone, or broken: the submission is dropped.
                None => {
                    incoming.abandon(&self.queue);
                    return None;
                }
            };
            match request {
                // Chunks decode borrowed, above.
                CleanupRequest::Chunk(content) => incoming.shape(&content),
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
                    let reply = self
                        .commit(incoming, from)
                        .instrument(span.log_context())
                        .await;
                    end_queue_span(span, &reply);
                    return Some(reply);
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
            if daemon::draining() {
                return std::future::pending().await;
            }
            // During a reload the old cleanup and its successor run side by
            // side: one round at a time, or a drop file could be queued twice.
            let Some(_round) = tokio::task::block_in_place(|| local::lock_rounds(&self.queue))
            else {
                continue;
            };
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
        let mut incoming = self.start(submission, true);
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
        match self.commit(incoming, Source::Maildrop).await {
            CleanupReply::Queued { id } => Ok(id),
            CleanupReply::Rejected(reply) if reply.is_permanent() => {
                Err(unusable(reply.to_string()))
            }
            CleanupReply::Rejected(reply) => Err(PickUpError::Later(reply)),
        }
    }

    /// Starts a message with the limits of its source; it is held whole
    /// when it may still change (milters, checks, DKIM signing).
    fn start(&self, submission: Submission, local: bool) -> Incoming {
        let mut limits = if local {
            self.local_limits
        } else {
            self.daemon_limits
        };
        let hold = self.filters.hold_limit(local);
        if let Some(hold) = hold {
            limits.size = limits.size.min(hold);
        }
        Incoming::start(
            &self.queue,
            &self.hostname,
            submission,
            limits,
            hold.is_some(),
        )
    }

    /// Adds the last of the content, makes the message durable (its own
    /// file here, the directory entries in a shared group commit) and only
    /// then answers `Queued`. A message held whole first goes through the
    /// local milters (for local mail), its edits and DKIM signing.
    async fn commit(&self, mut incoming: Incoming, from: Source) -> CleanupReply {
        if incoming.is_holding() {
            // Held whole in memory: nothing of it is written yet.
            incoming.write_shaped();
            return self.commit_edited(incoming, from).await;
        }
        // One trip off the async thread for the rest of the message: for a
        // small one, creating its file, writing, sealing, linking and the
        // fsync (see `Queue::new_content`). The group commit round is asked
        // for as soon as the message is linked, so that its directory
        // fsyncs run while the file's does.
        let mut round = None;
        let staged = tokio::task::block_in_place(|| {
            incoming.write_shaped();
            incoming.stage(&self.queue, || round = Some(self.group_commit.ask()))
        });
        match staged {
            Ok(envelope) => {
                let round = round.unwrap_or_else(|| self.group_commit.ask());
                self.make_durable(envelope, round).await
            }
            Err(error) => refused(error),
        }
    }

    /// The group commit, then the notice to qmgr: the message is queued.
    async fn make_durable(&self, envelope: Envelope, round: group_commit::Round) -> CleanupReply {
        let id = envelope.id;
        if let Err(error) = round.wait().await {
            self.queue.unstage_new(id);
            return refused(RefusedError::Write(error));
        }
        tracing::info!(
            message_id = %id,
            sender = %envelope.sender,
            recipient_count = envelope.recipients.len(),
            size = envelope.content_size,
            client = %envelope.client.addr,
            "message queued"
        );
        if envelope.client.protocol == "local" {
            let uid = envelope
                .client
                .name
                .as_deref()
                .and_then(|name| name.strip_prefix("userid "))
                .and_then(|uid| uid.parse().ok());
            maillog::picked_up(id, uid, &envelope.sender);
        }
        self.notifier.queued(id);
        CleanupReply::Queued { id }
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
            Ok(Staged::Incoming(envelope)) => {
                let round = self.group_commit.ask();
                self.make_durable(envelope, round).await
            }
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
            Err(error) => refused(error),
        }
    }
}

/// Ends a message's `queue` span with cleanup's answer: an error unless
/// the message was queued.
fn end_queue_span(mut span: Span, reply: &CleanupReply) {
    match reply {
        CleanupReply::Queued { .. } => {
            span.text("empath.outcome", "queued");
        }
        CleanupReply::Rejected(reply) => {
            span.text("empath.outcome", "rejected")
                .number("empath.smtp_code", reply.code)
                .fail(&reply.to_string());
        }
    }
    span.end();
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
            // Only the address is qualified; the user's NOTIFY (sendmail -N) stays.
            .map(|r| Recipient {
                notify: r.notify,
                ..Recipient::new(domains.qualify(&r.address))
            })
            .collect(),
        client,
        dsn: DsnParams::default(),
        metadata: Default::default(),
        smtputf8: false,
        queue_id: None,
        options: Default::default(),
    }
}
