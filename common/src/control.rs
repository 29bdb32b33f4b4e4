//! The control protocol spoken on the control socket (`empathctl` to the
//! master). The master checks the caller, then answers system commands
//! itself, routes queue commands to qmgr and DNS and TLS commands to
//! smtp-out. Enums only grow, at the end.

use serde::{Deserialize, Serialize};

use crate::queue::{QueueId, QueueState};

/// One request on the control socket, with its optional bearer token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ControlEnvelope {
    pub token: Option<String>,
    pub request: ControlRequest,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlRequest {
    Queue(QueueCommand),
    System(SystemCommand),
    Dns(DnsCommand),
    Tls(TlsCommand),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TlsCommand {
    /// Which TLS policy applies to a domain's MX hosts, and why.
    Policy { domain: String },
}

/// The answer to `tls policy DOMAIN`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsPolicyView {
    pub domain: String,
    /// The configured level for the domain (`none`, `may`, `encrypt`,
    /// `verify`), after `require_tls` and `accept_invalid_certs`.
    pub configured_level: String,
    /// The domain's `mx_override`, which no DANE or MTA-STS applies to.
    pub mx_override: Option<String>,
    /// DNSSEC validation is on (`dns.dnssec`): DANE can apply.
    pub dnssec: bool,
    /// The domain's MTA-STS policy: mode, id, `mx` patterns, expiry, or
    /// why there is none.
    pub mta_sts: String,
    pub hosts: Vec<TlsHostView>,
    /// Why there are no hosts (DNS trouble, null MX, ...).
    pub error: Option<String>,
}

/// One MX host in a [`TlsPolicyView`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsHostView {
    pub host: String,
    /// Its MX and address records were DNSSEC-secure.
    pub dnssec: bool,
    /// What a connection must achieve (`may`, `verify`, `dane[3 1 1 ...]`),
    /// or `not used: REASON`.
    pub policy: String,
    /// Why.
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueueCommand {
    List {
        status: Option<ListStatus>,
        domain: Option<String>,
        limit: Option<usize>,
    },
    View {
        id: QueueId,
    },
    Delete {
        id: QueueId,
    },
    /// Make a deferred (or, with `force`, held or active) message due now.
    Retry {
        id: QueueId,
        force: bool,
    },
    Freeze,
    Unfreeze,
    Stats,
    ProcessNow,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SystemCommand {
    Ping,
    Status,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DnsCommand {
    ListCache,
    ClearCache,
    Refresh { domain: String },
    ListOverrides,
}

/// The statuses an operator filters the queue listing by. `pending` is new
/// mail, `active` is being delivered, `retry` waits for its next attempt,
/// `held` is on hold, and `failed` has recipients that failed for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ListStatus {
    Pending,
    Active,
    Retry,
    Held,
    Failed,
}

impl ListStatus {
    pub const ALL: [Self; 5] = [
        Self::Pending,
        Self::Active,
        Self::Retry,
        Self::Held,
        Self::Failed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Active => "active",
            Self::Retry => "retry",
            Self::Held => "held",
            Self::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|s| s.name().eq_ignore_ascii_case(text))
    }

    /// The status a message in `state` is listed with.
    pub fn of(state: QueueState, any_failed: bool) -> Self {
        match state {
            _ if any_failed => Self::Failed,
            QueueState::Incoming => Self::Pending,
            QueueState::Active => Self::Active,
            QueueState::Deferred => Self::Retry,
            QueueState::Hold => Self::Held,
            QueueState::Corrupt => Self::Failed,
        }
    }
}

/// A line of `queue list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueEntry {
    pub id: QueueId,
    pub status: ListStatus,
    pub sender: String,
    /// Domains of the recipients still open, sorted.
    pub domains: Vec<String>,
    pub recipients: usize,
    pub size: u64,
    pub arrival: u64,
    pub attempts: u32,
    pub next_retry: Option<u64>,
    pub last_error: Option<String>,
}

/// The answer to `queue view`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageView {
    pub entry: QueueEntry,
    pub recipients: Vec<RecipientView>,
    pub metadata: Vec<(String, String)>,
    pub client: String,
    pub headers: String,
    pub body_preview: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecipientView {
    pub address: String,
    /// pending, delivered, deferred or failed.
    pub status: String,
    pub reply: Option<String>,
    pub remote: Option<String>,
}

/// The answer to `queue stats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QueueStats {
    pub total: usize,
    pub by_status: Vec<(String, usize)>,
    pub by_domain: Vec<(String, usize)>,
    pub oldest_age_secs: Option<u64>,
    pub frozen: bool,
}

/// One process under the master.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessStatus {
    pub name: String,
    pub pid: Option<u32>,
    pub restarts: u64,
    pub running: bool,
}

/// The answer to `system status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SystemStatus {
    pub version: String,
    pub uptime_secs: u64,
    pub processes: Vec<ProcessStatus>,
    pub queue_size: usize,
    pub dns_cache_entries: Option<usize>,
    pub frozen: Option<bool>,
}

/// One cached DNS answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsCacheEntry {
    pub domain: String,
    /// `(host, port, priority)`, in the order they are tried.
    pub hosts: Vec<(String, u16, u16)>,
    pub ttl_remaining_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ControlResponse {
    Pong,
    /// A command that changed something, with what it did.
    Done(String),
    Error(String),
    QueueList(Vec<QueueEntry>),
    Message(Box<MessageView>),
    Stats(QueueStats),
    Status(SystemStatus),
    DnsCache(Vec<DnsCacheEntry>),
    Overrides(Vec<(String, String)>),
    TlsPolicy(Box<TlsPolicyView>),
}
