//! The typed messages that the daemons exchange, defined once.
//!
//! | socket (in `private/`) | client            | request            | reply            |
//! |------------------------|-------------------|--------------------|------------------|
//! | `cleanup.sock`         | smtpd, bounce     | [`CleanupRequest`] | [`CleanupReply`] |
//! | `qmgr.sock`            | cleanup           | [`QmgrNotice`]     | none             |
//! | `smtp-out.sock`        | qmgr              | [`DeliveryJob`]    | [`DeliveryReport`] |
//! | `local.sock`           | qmgr              | [`DeliveryJob`]    | [`DeliveryReport`] |
//! | `bounce.sock`          | qmgr              | [`BounceRequest`]  | [`BounceReply`]  |
//! | `anvil.sock`           | smtpd             | [`AnvilRequest`]   | [`AnvilReply`] (some requests) |
//! | `showq-control.sock`   | the master        | [`crate::control::ControlRequest`] (queue list, view, stats) | [`crate::control::ControlResponse`] |
//!
//! And one in `public/`, which any local user may connect to:
//!
//! | socket (in `public/`)  | client            | request            | replies          |
//! |------------------------|-------------------|--------------------|------------------|
//! | `showq.sock`           | mailq             | [`ShowqRequest`]   | [`ShowqReply`]s: `Entries`..., then `End` or `Error` |

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use crate::edits::Edit;
use crate::queue::{ClientInfo, DsnParams, MessageOptions, Notify, QueueId, Recipient};
use crate::smtp::Reply;

pub const CLEANUP: &str = "cleanup";
pub const QMGR: &str = "qmgr";
pub const SMTP_OUT: &str = "smtp-out";
/// empath-local, the local delivery agent: the same jobs and reports as
/// smtp-out, for recipients at this host's own domains.
pub const LOCAL: &str = "local";
pub const BOUNCE: &str = "bounce";
/// empath-anvil's accounting for smtpd: [`AnvilRequest`] in,
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
/// local (untrusted) clients. Also before `End`, smtpd may send `Edits`:
/// the milters' changes and the inbound authentication results, which
/// cleanup applies before the message is sealed (ignored from local
/// clients too).
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
    Edits(Vec<Edit>),
    End,
    Abort,
}

/// The variant number of [`CleanupRequest::Chunk`], postcard's first byte
/// of its encoding.
const CHUNK_VARIANT: u8 = 1;

/// Appends the frame of a [`CleanupRequest::Chunk`] of `content_len` bytes
/// up to its content (the frame's length, the variant, the content's
/// length): the content follows it uncopied, in the same write.
pub fn append_chunk_frame_head(out: &mut Vec<u8>, content_len: usize) -> std::io::Result<()> {
    // postcard encodes the variant and a byte string's length as varints,
    // as it encodes these two numbers.
    let head = (u32::from(CHUNK_VARIANT), content_len);
    crate::ipc::append_frame_head(out, &head, content_len)
}

/// A frame cleanup reads: content, borrowed from the frame it came in, or
/// another request.
#[derive(Debug)]
// Decoded and matched at once, one at a time: its size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum CleanupFrame<'a> {
    Chunk(&'a [u8]),
    Request(CleanupRequest),
}

impl<'a> CleanupFrame<'a> {
    /// Decodes a frame's payload without copying the content of a chunk.
    pub fn decode(payload: &'a [u8]) -> Result<Self, postcard::Error> {
        if payload.first() == Some(&CHUNK_VARIANT) {
            #[derive(Deserialize)]
            enum Borrowed<'a> {
                #[allow(dead_code)]
                Begin,
                Chunk(#[serde(borrow)] &'a [u8]),
            }
            match postcard::from_bytes::<Borrowed<'_>>(payload)? {
                Borrowed::Chunk(content) => return Ok(Self::Chunk(content)),
                Borrowed::Begin => return Err(postcard::Error::DeserializeBadEnum),
            }
        }
        postcard::from_bytes(payload).map(Self::Request)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Submission {
    pub sender: String,
    pub recipients: Vec<Recipient>,
    pub client: ClientInfo,
    pub dsn: DsnParams,
    pub metadata: BTreeMap<String, String>,
    pub smtputf8: bool,
    /// The queue ID to use, when the client chose it already (smtpd does
    /// when milters run, so that they see it in the `i` macro); cleanup
    /// makes one otherwise, and always for local clients.
    pub queue_id: Option<QueueId>,
    /// BODY and REQUIRETLS, as the client declared them.
    pub options: Appended<MessageOptions>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum CleanupReply {
    /// The message is durable in `incoming/`.
    Queued { id: QueueId },
    /// Not queued; the reply says why (4xx: try again, 5xx: do not).
    Rejected(Reply),
}

/// Counting SMTP connections and AUTH failures across every smtpd
/// process, so that `max_connections`, `max_connections_per_ip` and
/// `smtpd.auth.max_failures` hold for the whole system. Each smtpd keeps
/// one connection to empath-anvil's socket; when it closes (the smtpd
/// exited or crashed), every connection it held is released. When the
/// anvil restarts, smtpd connects again and [`AnvilRequest::Register`]s
/// the connections it still holds.
///
/// The variants only ever grow, at the end: postcard numbers them by
/// position, and an smtpd and an anvil of different versions meet during
/// a rolling restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AnvilRequest {
    /// A client connected: may it stay? Answered with
    /// [`AnvilReply::Granted`], [`AnvilReply::TooMany`] or
    /// [`AnvilReply::TooManyFromIp`].
    Acquire(std::net::IpAddr),
    /// A granted connection ended. Not answered.
    Release(std::net::IpAddr),
    /// This many connections from the address are open already (admitted
    /// while the anvil was unreachable, or granted by an anvil that has
    /// since restarted): count them, without a limit check. Answered with
    /// [`AnvilReply::Registered`] once they count.
    Register(std::net::IpAddr, u32),
    /// A granted connection ends: answered with
    /// [`AnvilReply::Disconnected`] once it is no longer counted, so that
    /// smtpd says goodbye to the client only then, and the client's next
    /// connection is never judged against its last one.
    Disconnect(std::net::IpAddr),
    /// May a client from the address try to authenticate? Answered with
    /// [`AnvilReply::AuthPermitted`] or [`AnvilReply::AuthBlocked`].
    AuthAllowed(std::net::IpAddr),
    /// An AUTH attempt from the address failed. Answered like
    /// [`AnvilRequest::AuthAllowed`], counting this failure.
    AuthFailed(std::net::IpAddr),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AnvilReply {
    Granted,
    /// `max_connections` are open.
    TooMany,
    /// `max_connections_per_ip` are open from this address.
    TooManyFromIp,
    /// The connection of a [`AnvilRequest::Disconnect`] is released.
    Disconnected,
    /// Fewer than `smtpd.auth.max_failures` recent failures from the address.
    AuthPermitted,
    /// `smtpd.auth.max_failures` failures from the address within
    /// `smtpd.auth.failure_window_secs`: refuse its AUTH attempts.
    AuthBlocked,
    /// The connections of a [`AnvilRequest::Register`] count.
    Registered,
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
    /// When qmgr took the message into `active/` (Unix milliseconds), so
    /// that the agent's log line splits the delay as Postfix's
    /// `delays=a/b/c/d` does.
    pub active_since_ms: u64,
    /// This attempt's number: 1 for the first.
    pub attempt: u32,
    /// What the next hop is told about the message, as it was received.
    pub pass_on: Appended<PassOn>,
}

/// The message's MAIL and RCPT parameters, for the next hop: BODY and
/// REQUIRETLS always; RET, ENVID, NOTIFY and ORCPT when it offers DSN.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PassOn {
    pub options: MessageOptions,
    pub dsn: DsnParams,
    /// NOTIFY and ORCPT of the job's recipients, by envelope index.
    pub recipients: Vec<RecipientDsn>,
}

impl PassOn {
    /// The DSN parameters of the recipient at envelope index `index`.
    pub fn recipient(&self, index: usize) -> Option<&RecipientDsn> {
        self.recipients.iter().find(|r| r.index == index)
    }
}

/// One recipient's DSN parameters (RFC 3461).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientDsn {
    pub index: usize,
    pub notify: Notify,
    /// `addr-type;address`, decoded.
    pub orcpt: Option<String>,
}

/// A field added to a frame after its first release, always one of the
/// last fields of a top-level frame. A frame from an older peer ends
/// before it, and it decodes as its default instead of failing, so that
/// daemons of two versions still understand each other during an
/// upgrade; an older peer ignores it (postcard reads no further than the
/// fields it knows).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Appended<T>(pub T);

impl<'de, T: Deserialize<'de> + Default> Deserialize<'de> for Appended<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // The only error here is the end of an older peer's frame.
        Ok(Self(T::deserialize(deserializer).unwrap_or_default()))
    }
}

impl<T> std::ops::Deref for Appended<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
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
    /// Envelope indices of the delivered recipients whose NOTIFY and
    /// ORCPT the next hop took (it offered DSN): it reports on them now.
    pub dsn_passed_on: Appended<Vec<usize>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecipientResult {
    pub index: usize,
    pub outcome: Outcome,
    /// The server whose own reply `reply` is. `None` when the agent
    /// produced the reply itself (DNS failure, refused connection, TLS
    /// policy, protocol error): DSNs then say `X-Empath;` and name no
    /// `Remote-MTA`.
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    #[test]
    fn a_chunk_framed_around_its_content_is_the_framed_request() {
        for size in [
            0, 1, 127, 128, 300, 16_383, 16_384, 65_536, 300_000, 2_097_152,
        ] {
            let content: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let mut framed = Vec::new();
            crate::ipc::append_frame(&mut framed, &CleanupRequest::Chunk(content.clone())).unwrap();
            let mut by_head = Vec::new();
            append_chunk_frame_head(&mut by_head, size).unwrap();
            by_head.extend_from_slice(&content);
            assert_eq!(by_head, framed, "{size} bytes");
        }
    }

    #[test]
    fn a_chunk_decodes_borrowed_and_other_requests_owned() {
        let content = b"Subject: x\r\n\r\nbody\r\n".repeat(10);
        let chunk = postcard::to_stdvec(&CleanupRequest::Chunk(content.clone())).unwrap();
        match CleanupFrame::decode(&chunk).unwrap() {
            CleanupFrame::Chunk(bytes) => {
                assert_eq!(bytes, content);
                // Borrowed from the frame, not copied.
                assert!(chunk.as_ptr_range().contains(&bytes.as_ptr()));
            }
            other => panic!("decoded as {other:?}"),
        }
        let end = postcard::to_stdvec(&CleanupRequest::End).unwrap();
        assert!(matches!(
            CleanupFrame::decode(&end),
            Ok(CleanupFrame::Request(CleanupRequest::End))
        ));
        let metadata = BTreeMap::from([("k".to_owned(), "v".to_owned())]);
        let encoded = postcard::to_stdvec(&CleanupRequest::Metadata(metadata.clone())).unwrap();
        match CleanupFrame::decode(&encoded).unwrap() {
            CleanupFrame::Request(CleanupRequest::Metadata(decoded)) => {
                assert_eq!(decoded, metadata)
            }
            other => panic!("decoded as {other:?}"),
        }
        // A chunk cut short is an error, not a shorter chunk.
        assert!(CleanupFrame::decode(&chunk[..chunk.len() - 1]).is_err());
    }

    /// The anvil's frames cross between an smtpd and an anvil of different
    /// versions during a rolling restart: the variants keep their numbers.
    #[test]
    fn anvil_frames_keep_their_encoding() {
        let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let encode = |request: &AnvilRequest| postcard::to_stdvec(request).unwrap();
        assert_eq!(encode(&AnvilRequest::Acquire(ip)), [0, 0, 192, 0, 2, 1]);
        assert_eq!(encode(&AnvilRequest::Release(ip))[0], 1);
        assert_eq!(
            encode(&AnvilRequest::Register(ip, 300)),
            [2, 0, 192, 0, 2, 1, 0xac, 0x02]
        );
        assert_eq!(encode(&AnvilRequest::Disconnect(ip))[0], 3);
        assert_eq!(encode(&AnvilRequest::AuthAllowed(ip))[0], 4);
        assert_eq!(encode(&AnvilRequest::AuthFailed(ip))[0], 5);
        let replies = [
            AnvilReply::Granted,
            AnvilReply::TooMany,
            AnvilReply::TooManyFromIp,
            AnvilReply::Disconnected,
            AnvilReply::AuthPermitted,
            AnvilReply::AuthBlocked,
            AnvilReply::Registered,
        ];
        for (index, reply) in replies.iter().enumerate() {
            assert_eq!(postcard::to_stdvec(reply).unwrap(), [index as u8]);
        }
    }
}

#[cfg(test)]
mod appended_tests {
    use super::*;

    /// The frames as an older peer knows them.
    #[derive(Serialize, Deserialize)]
    struct OldReport {
        results: Vec<RecipientResult>,
        destination_failed: bool,
    }

    fn result() -> RecipientResult {
        RecipientResult {
            index: 2,
            outcome: Outcome::Delivered,
            remote: Some("mx [192.0.2.1]:25".into()),
            reply: Reply::new(250, "2.0.0", "ok"),
        }
    }

    #[test]
    fn an_older_peers_frame_decodes_with_the_defaults() {
        let old = OldReport {
            results: vec![result()],
            destination_failed: true,
        };
        let bytes = postcard::to_stdvec(&old).unwrap();
        let new: DeliveryReport = postcard::from_bytes(&bytes).unwrap();
        assert!(new.destination_failed);
        assert_eq!(new.results[0].index, 2);
        assert!(new.dsn_passed_on.is_empty());
    }

    #[test]
    fn an_older_peer_reads_a_newer_frame() {
        let new = DeliveryReport {
            results: vec![result()],
            destination_failed: false,
            dsn_passed_on: Appended(vec![2, 5]),
        };
        let bytes = postcard::to_stdvec(&new).unwrap();
        let old: OldReport = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(old.results.len(), 1);
        let again: DeliveryReport = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(*again.dsn_passed_on, vec![2, 5]);
    }
}
