//! The typed messages that the daemons exchange, defined once.
//!
//! | socket (in `private/`) | client            | request            | reply            |
//! |------------------------|-------------------|--------------------|------------------|
//! | `cleanup.sock`         | smtpd, bounce     | [`CleanupRequest`] | [`CleanupReply`] |
//! | `qmgr.sock`            | cleanup           | [`QmgrNotice`]     | none             |
//! | `smtp-out.sock`        | qmgr              | [`DeliveryJob`]    | [`DeliveryReport`] |
//! | `local.sock`           | qmgr              | [`DeliveryJob`]    | [`DeliveryReport`] |
//! | `bounce.sock`          | qmgr              | [`BounceRequest`]  | [`BounceReply`]  |
//! | `showq-control.sock`   | the master        | [`crate::control::ControlRequest`] (queue list, view, stats) | [`crate::control::ControlResponse`] |
//!
//! And one in `public/`, which any local user may connect to:
//!
//! | socket (in `public/`)  | client            | request            | replies          |
//! |------------------------|-------------------|--------------------|------------------|
//! | `showq.sock`           | mailq             | [`ShowqRequest`]   | [`ShowqReply`]s: `Entries`..., then `End` or `Error` |

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::queue::{ClientInfo, DsnParams, QueueId, Recipient};
use crate::smtp::Reply;

pub const CLEANUP: &str = "cleanup";
pub const QMGR: &str = "qmgr";
pub const SMTP_OUT: &str = "smtp-out";
/// empath-local, the local delivery agent: the same jobs and reports as
/// smtp-out, for recipients at this host's own domains.
pub const LOCAL: &str = "local";
pub const BOUNCE: &str = "bounce";
/// The master's connection accounting for smtpd: [`AnvilRequest`] in,
/// [`AnvilReply`] out (named after Postfix's anvil service).
pub const ANVIL: &str = "anvil";
/// qmgr's control socket: [`crate::control::ControlRequest::Queue`] in,
/// [`crate::control::ControlResponse`] out.
pub const QMGR_CONTROL: &str = "qmgr-control";
/// empath-showq's socket in `public/`, for `mailq`: [`ShowqRequest`] in,
/// a stream of [`ShowqReply`] out.
pub const SHOWQ: &str = "showq";
/// empath-showq's control socket in `private/`: the read-only queue
/// commands ([`crate::control::QueueCommand::List`], `View` and `Stats`)
/// in, [`crate::control::ControlResponse`] out.
pub const SHOWQ_CONTROL: &str = "showq-control";
/// smtp-out's control socket: [`crate::control::ControlRequest::Dns`] in,
/// [`crate::control::ControlResponse`] out.
pub const SMTP_OUT_CONTROL: &str = "smtp-out-control";

/// A message submission, streamed: one `Begin`, any number of `Chunk`s of
/// content, then `End` (commit) or `Abort`. Content is the message as
/// received, dot-unstuffed, with CRLF line endings. Before `End`, smtpd
/// may send `Metadata` to replace the submission's metadata with what the
/// modules set once the whole message had arrived; cleanup ignores it from
/// local (untrusted) clients.
#[derive(Debug, Clone, Serialize, Deserialize)]
// `Begin` is sent once per message and never stored in bulk, so its size
// does not matter.
#[allow(clippy::large_enum_variant)]
pub enum CleanupRequest {
    Begin(Submission),
    // As bytes, not a sequence of u8: the same wire format, without a
    // per-byte visitor call on each side.
    Chunk(#[serde(with = "serde_bytes")] Vec<u8>),
    Metadata(BTreeMap<String, String>),
    End,
    Abort,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Submission {
    pub sender: String,
    pub recipients: Vec<Recipient>,
    pub client: ClientInfo,
    pub dsn: DsnParams,
    pub metadata: BTreeMap<String, String>,
    pub smtputf8: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum CleanupReply {
    /// The message is durable in `incoming/`.
    Queued { id: QueueId },
    /// Not queued; the reply says why (4xx: try again, 5xx: do not).
    Rejected(Reply),
}

/// Counting SMTP connections across every smtpd process, so that
/// `max_connections` and `max_connections_per_ip` hold for the whole
/// system. Each smtpd keeps one connection to the master's anvil socket;
/// when it closes (the smtpd exited or crashed), everything it held is
/// released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AnvilRequest {
    /// A client connected: may it stay? Answered with an [`AnvilReply`].
    Acquire(std::net::IpAddr),
    /// A granted connection ended. Not answered.
    Release(std::net::IpAddr),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AnvilReply {
    Granted,
    /// `max_connections` are open.
    TooMany,
    /// `max_connections_per_ip` are open from this address.
    TooManyFromIp,
}

/// Notifications to qmgr.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum QmgrNotice {
    /// A new message is in `incoming/`.
    Incoming(QueueId),
    /// Stop starting deliveries (messages in flight finish).
    Freeze,
    /// Start delivering again.
    Unfreeze,
    /// Make every deferred message due now, and rescan `incoming/`.
    ProcessNow,
}

/// One delivery transaction: some recipients of one message, all in one domain.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliveryJob {
    pub id: QueueId,
    pub sender: String,
    pub domain: String,
    pub recipients: Vec<JobRecipient>,
    pub content_size: u64,
    pub smtputf8: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecipient {
    /// Index into the envelope's recipient list.
    pub index: usize,
    pub address: String,
}

/// What happened to each recipient of a [`DeliveryJob`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliveryReport {
    pub results: Vec<RecipientResult>,
    /// No server of the destination took part in a transaction (no
    /// connection, a refused greeting, a broken session, DNS trouble):
    /// what the circuit breaker counts as a failure of the destination.
    pub destination_failed: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecipientResult {
    pub index: usize,
    pub outcome: Outcome,
    /// The host that gave the reply, if a connection was made.
    pub remote: Option<String>,
    pub reply: Reply,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Delivered,
    Deferred,
    Failed,
}

/// Ask bounce to notify the sender about a message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BounceRequest {
    pub id: QueueId,
    pub state: crate::queue::QueueState,
    pub kind: BounceKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BounceKind {
    /// Delivery of the message is over: report the recipients that failed
    /// for good or expired (NOTIFY=FAILURE, the default) and the delivered
    /// ones that asked for NOTIFY=SUCCESS. For a message from the null
    /// sender, bounce sends a double bounce to the postmaster instead if
    /// the message is a notice bounce made (see [`DSN_METADATA`]), once; it
    /// never bounces a double bounce, nor a bounce from elsewhere.
    Final,
    /// Delivery is delayed; the sender is warned (NOTIFY permitting).
    Delay,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum BounceReply {
    /// The notification is queued (or none was due); the original may go.
    Done { dsn: Option<QueueId> },
    /// Could not notify now; keep the original and ask again later.
    Failed(String),
}

/// The metadata key that marks a message bounce generated, so that bounce
/// knows what a failed null-sender message was: one of
/// [`DSN_FAILURE`], [`DSN_SUCCESS`], [`DSN_DELAY`], [`DSN_DOUBLE_BOUNCE`].
pub const DSN_METADATA: &str = "empath.dsn";
/// A DSN about failed recipients, to the sender.
pub const DSN_FAILURE: &str = "failure";
/// A report of successful delivery (NOTIFY=SUCCESS), to the sender.
pub const DSN_SUCCESS: &str = "success";
/// A delay warning, to the sender.
pub const DSN_DELAY: &str = "delay";
/// A notice to the postmaster that a DSN could not be delivered; when it
/// fails too, nobody is told (only the log).
pub const DSN_DOUBLE_BOUNCE: &str = "double-bounce";

/// The largest [`ShowqRequest`] frame empath-showq reads: its socket is
/// open to every local user.
pub const SHOWQ_MAX_REQUEST: usize = 1024;

/// A request on `public/showq.sock`. One per connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShowqRequest {
    /// Every queued message, oldest first, as `mailq` prints them.
    Mailq,
}

/// The answer to [`ShowqRequest::Mailq`]: any number of `Entries` frames
/// (each of a bounded size), then one `End`, or an `Error` instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShowqReply {
    Entries(Vec<crate::queue::lister::MailqEntry>),
    /// The listing is complete.
    End,
    /// The listing could not be made (or was cut short); the text says why.
    Error(String),
}
