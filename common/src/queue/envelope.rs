//! The envelope of a queued message: everything but the content.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::QueueId;
use crate::smtp::Reply;

/// The envelope, as stored in `incoming/`, `active/`, `deferred/` or `hold/`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub id: QueueId,
    /// The reverse-path without angle brackets; empty for the null sender `<>`.
    pub sender: String,
    pub recipients: Vec<Recipient>,
    /// When cleanup queued the message (Unix seconds).
    pub arrival: u64,
    /// Delivery attempts made so far.
    pub attempts: u32,
    /// When a deferred message becomes due again (Unix seconds).
    pub next_retry: Option<u64>,
    /// The last error that affected the whole message (e.g. no route to host).
    pub last_error: Option<String>,
    pub client: ClientInfo,
    pub dsn: DsnParams,
    /// Key-value pairs from the listener's `context` and from plugin modules.
    pub metadata: BTreeMap<String, String>,
    /// Length of the content file, so a truncated one is detected.
    pub content_size: u64,
    /// Set for messages that need SMTPUTF8 from the next hop.
    pub smtputf8: bool,
    /// The sender has been warned that delivery is delayed.
    pub delay_warned: bool,
    /// What the client declared with MAIL beyond SMTPUTF8 (BODY,
    /// REQUIRETLS), passed on to the next hop. Added in format version 2;
    /// a version 1 envelope has the defaults.
    pub options: MessageOptions,
}

/// The MAIL parameters that travel with the message to every next hop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageOptions {
    /// The declared body type (RFC 6152).
    pub body: Body,
    /// RFC 8689: deliver only over authenticated TLS (DANE or MTA-STS) to
    /// servers that offer REQUIRETLS, else return the message (5.7.30).
    pub requiretls: bool,
}

/// The body type the client declared with `BODY=` (RFC 6152).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    #[default]
    SevenBit,
    EightBitMime,
}

impl Envelope {
    pub fn is_null_sender(&self) -> bool {
        self.sender.is_empty()
    }

    /// Recipients still waiting for delivery (pending or deferred).
    pub fn undelivered(&self) -> impl Iterator<Item = (usize, &Recipient)> {
        self.recipients
            .iter()
            .enumerate()
            .filter(|(_, r)| r.status.is_open())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipient {
    pub address: String,
    /// The ORCPT parameter (RFC 3461), as `addr-type;address`.
    pub orcpt: Option<String>,
    pub notify: Notify,
    pub status: RecipientStatus,
}

impl Recipient {
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            orcpt: None,
            notify: Notify::default(),
            status: RecipientStatus::Pending,
        }
    }

    /// The domain part of the address, lower-cased.
    pub fn domain(&self) -> String {
        domain_of(&self.address)
    }
}

/// The domain of an address, lower-cased; empty if it has none.
pub fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map(|(_, d)| d.to_ascii_lowercase())
        .unwrap_or_default()
}

/// Where one recipient stands. `remote` names the server whose own reply
/// `reply` is; it is `None` when Empath produced the reply itself (a DNS
/// failure, a refused connection, a TLS policy failure, a protocol error),
/// which DSNs report as `X-Empath;` without a `Remote-MTA`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RecipientStatus {
    Pending,
    Delivered {
        at: u64,
        remote: String,
        reply: Reply,
        /// The next hop offered DSN and was given the recipient's NOTIFY
        /// and ORCPT: a success notice is its job now, not ours (RFC 3461
        /// section 6.2.1), so there is no "relayed" notice.
        dsn_passed_on: bool,
    },
    Deferred {
        at: u64,
        remote: Option<String>,
        reply: Reply,
    },
    Failed {
        at: u64,
        remote: Option<String>,
        reply: Reply,
    },
}

impl RecipientStatus {
    /// True while the recipient still needs a delivery attempt.
    pub fn is_open(&self) -> bool {
        matches!(self, Self::Pending | Self::Deferred { .. })
    }
}

/// The NOTIFY parameter (RFC 3461). The default (no NOTIFY) means failures and delays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notify {
    pub explicit: bool,
    pub success: bool,
    pub failure: bool,
    pub delay: bool,
}

impl Default for Notify {
    fn default() -> Self {
        Self {
            explicit: false,
            success: false,
            failure: true,
            delay: true,
        }
    }
}

/// Message-wide DSN parameters (RFC 3461).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DsnParams {
    pub ret: Option<Ret>,
    pub envid: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ret {
    Full,
    Headers,
}

/// Who handed us the message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    /// Peer address, e.g. `192.0.2.1:50312`; `local` for local submission.
    pub addr: String,
    /// The name given in EHLO/HELO.
    pub helo: String,
    /// The reverse-DNS name, when known.
    pub name: Option<String>,
    /// `SMTP`, `ESMTP`, `ESMTPS`, `ESMTPA`, ... for the Received header.
    pub protocol: String,
    pub tls: Option<String>,
    pub authenticated_as: Option<String>,
}
