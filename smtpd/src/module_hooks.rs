//! The plugin modules' view of one SMTP session: the [`ModuleContext`]
//! that follows the session and its transactions, the validation calls at
//! each point, and turning a module's rejection into an SMTP reply.
//!
//! Metadata has two lifetimes: what the listener `context`, the
//! ConnectionOpened event and the Connect, Ehlo and StartTls validators set
//! belongs to the session; what MailFrom, RcptTo and Data set belongs to
//! the transaction and is forgotten when it ends (RSET, EHLO, a rejected
//! MAIL, or after DATA). The metadata of a transaction goes into its
//! submission, so cleanup stores it with the message and the delivery
//! events see it again.
//!
//! The events of a session: ConnectionOpened and ConnectionClosed,
//! SmtpError for every 4xx or 5xx reply, and SmtpMessageReceived once a
//! message is safely queued.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use empath_common::queue::Recipient;
use empath_common::smtp::Reply;
use empath_modules::{Event, ModuleContext, Modules, Rejection, TlsInfo, Validation, blocking};

/// The modules and the context of one session.
pub struct ModuleHooks {
    modules: Arc<Modules>,
    context: ModuleContext,
    /// The metadata every transaction of the session starts from.
    session_metadata: BTreeMap<String, String>,
}

impl ModuleHooks {
    /// `client_address` is the peer's IP address; `metadata` the listener's
    /// `context`.
    pub fn new(
        modules: Arc<Modules>,
        client_address: String,
        metadata: BTreeMap<String, String>,
    ) -> Self {
        let context = ModuleContext {
            id: session_id(),
            client_address,
            metadata: metadata.clone(),
            ..ModuleContext::default()
        };
        Self {
            modules,
            context,
            session_metadata: metadata,
        }
    }

    /// The session ID modules see from em_context_get_id.
    pub fn session_id(&self) -> &str {
        &self.context.id
    }

    /// True if a module reads the message content at Data, so the
    /// connection must keep a copy.
    pub fn wants_data(&self) -> bool {
        self.modules.wants(Validation::Data)
    }

    pub fn opened(&mut self) {
        self.emit(Event::ConnectionOpened, &[]);
        self.session_metadata = self.context.metadata.clone();
    }

    pub fn closed(&mut self) {
        self.emit(Event::ConnectionClosed, &[]);
    }

    /// smtpd sent `reply`: an SmtpError event if it is a 4xx or 5xx.
    pub fn replied(&mut self, reply: &Reply) {
        if reply.code >= 400 && self.modules.wants_events() {
            let details = [
                ("smtp_error_code", reply.code.to_string()),
                ("smtp_error", reply.to_string()),
            ];
            self.emit(Event::SmtpError, &details);
        }
    }

    /// The message of the current transaction is queued, its file on disk.
    pub fn message_received(&mut self, queue_id: &str, size: u64) {
        if self.modules.wants_events() {
            let details = [
                ("queue_id", queue_id.to_owned()),
                ("message_size", size.to_string()),
            ];
            self.emit(Event::SmtpMessageReceived, &details);
        }
    }

    /// The connection was accepted. What the modules set here stays for
    /// the whole session.
    pub fn connect(&mut self) -> Result<(), Reply> {
        let verdict = self.validate(Validation::Connect);
        self.session_metadata = self.context.metadata.clone();
        verdict
    }

    /// smtpd accepted EHLO or HELO `name` (which ends any transaction).
    pub fn ehlo(&mut self, name: &str) -> Result<(), Reply> {
        self.end_transaction();
        self.context.helo = name.to_owned();
        let verdict = self.validate(Validation::Ehlo);
        if verdict.is_err() {
            self.context.helo.clear();
        }
        self.session_metadata = self.context.metadata.clone();
        verdict
    }

    /// The TLS handshake succeeded with `protocol` ("TLSv1.3") and
    /// `cipher` (as rustls names it).
    pub fn tls_established(&mut self, protocol: &str, cipher: &str) {
        self.context.tls = Some(TlsInfo {
            protocol: protocol.to_owned(),
            cipher: iana_cipher_name(cipher),
        });
    }

    /// The TLS handshake succeeded (no transaction is open, and the client
    /// must greet again).
    pub fn tls_started(&mut self) -> Result<(), Reply> {
        self.end_transaction();
        self.context.helo.clear();
        let verdict = self.validate(Validation::StartTls);
        self.session_metadata = self.context.metadata.clone();
        verdict
    }

    /// smtpd accepted MAIL: the transaction starts unless a module rejects.
    pub fn mail_from(&mut self, sender: &str) -> Result<(), Reply> {
        self.end_transaction();
        self.context.sender = sender.to_owned();
        let verdict = self.validate(Validation::MailFrom);
        if verdict.is_err() {
            self.end_transaction();
        }
        verdict
    }

    /// smtpd accepted RCPT: the recipient joins unless a module rejects.
    pub fn rcpt_to(&mut self, recipient: &str) -> Result<(), Reply> {
        self.context.recipients.push(recipient.to_owned());
        let verdict = self.validate(Validation::RcptTo);
        if verdict.is_err() {
            // Removes this recipient, not one a module may have added.
            if let Some(index) = self.context.recipients.iter().rposition(|r| r == recipient) {
                self.context.recipients.remove(index);
            }
        }
        verdict
    }

    /// The whole message has arrived; `content` is empty unless
    /// [`wants_data`](Self::wants_data).
    pub fn data(&mut self, content: Vec<u8>) -> Result<(), Reply> {
        self.context.data = content;
        let verdict = self.validate(Validation::Data);
        self.context.data = Vec::new();
        verdict
    }

    /// The transaction is over (or never started): back to the session's
    /// own state. Cheap, so the connection calls it after every command
    /// that leaves no transaction.
    pub fn end_transaction(&mut self) {
        self.context.sender.clear();
        self.context.recipients.clear();
        self.context.data = Vec::new();
        if self.context.metadata != self.session_metadata {
            self.context.metadata = self.session_metadata.clone();
        }
    }

    /// The metadata for the submission of the current transaction.
    pub fn metadata(&self) -> BTreeMap<String, String> {
        self.context.metadata.clone()
    }

    /// The sender, as a module may have changed it with
    /// em_context_set_sender.
    pub fn sender(&self, client_sender: &str) -> String {
        if self.modules.is_empty() {
            client_sender.to_owned()
        } else {
            address(&self.context.sender)
        }
    }

    /// Recipients that modules added with em_context_add_recipient, for
    /// the submission, after the client's own.
    pub fn added_recipients(&self, accepted: &[Recipient]) -> Vec<Recipient> {
        let mut added: Vec<Recipient> = Vec::new();
        for wanted in &self.context.recipients {
            let wanted = address(wanted);
            let known = accepted.iter().chain(&added).any(|r| r.address == wanted);
            if !known && !wanted.is_empty() {
                added.push(Recipient::new(wanted.as_str()));
            }
        }
        added
    }

    fn validate(&mut self, point: Validation) -> Result<(), Reply> {
        if !self.modules.wants(point) {
            return Ok(());
        }
        let (modules, context) = (&self.modules, &mut self.context);
        blocking(|| modules.validate(point, context)).map_err(|rejection| {
            tracing::info!(
                session = %context.id,
                client = %context.client_address,
                module = %rejection.module,
                ?point,
                code = rejection.code,
                text = %rejection.text,
                "rejected by module"
            );
            reply_for(rejection)
        })
    }

    fn emit(&mut self, event: Event, details: &[(&str, String)]) {
        if self.modules.wants_events() {
            let (modules, context) = (&self.modules, &mut self.context);
            blocking(|| modules.emit(event, context, details));
        }
    }
}

/// The IANA name of a cipher suite: rustls calls the TLS 1.3 suites
/// `TLS13_AES_256_GCM_SHA384`, where IANA and OpenSSL say
/// `TLS_AES_256_GCM_SHA384` (its TLS 1.2 names are IANA's already).
fn iana_cipher_name(rustls_name: &str) -> String {
    match rustls_name.strip_prefix("TLS13_") {
        Some(rest) => format!("TLS_{rest}"),
        None => rustls_name.to_owned(),
    }
}

/// An address from a module, without the control characters (CR, LF)
/// that could smuggle commands into a later SMTP session.
fn address(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).collect()
}

/// A session ID unique within this host for a long time: the process ID,
/// the start time of this process and a counter.
fn session_id() -> String {
    static STARTED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let started = *STARTED.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    });
    let number = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{started:x}{:x}.{number}", std::process::id())
}

/// The reply for a module's rejection. Every reply keeps an enhanced
/// status code (RFC 3463): a module text without one gets 5.7.1 or 4.7.1,
/// and a rejection with a success code becomes a 550, since a module that
/// rejected must not make the client think it was accepted.
pub fn reply_for(rejection: Rejection) -> Reply {
    let code = if (400..600).contains(&rejection.code) {
        rejection.code
    } else {
        550
    };
    let text = rejection.text.trim();
    // An enhanced code counts only if its class is the reply's.
    let class = char::from(b'0' + u8::try_from(code / 100).unwrap_or(5));
    let fits = |word: &str| is_enhanced_code(word) && word.starts_with(class);
    let (enhanced, rest) = match text.split_once(' ') {
        Some((first, rest)) if fits(first) => (first.to_owned(), rest.trim()),
        None if fits(text) => (text.to_owned(), ""),
        _ => {
            let class = if code >= 500 { "5.7.1" } else { "4.7.1" };
            (class.to_owned(), text)
        }
    };
    let rest = if rest.is_empty() {
        format!("Rejected by policy module {}", rejection.module)
    } else {
        rest.to_owned()
    };
    Reply::new(code, &enhanced, rest)
}

/// `class.subject.detail`, class 2, 4 or 5 (RFC 3463).
fn is_enhanced_code(word: &str) -> bool {
    let parts: Vec<&str> = word.split('.').collect();
    let digits = |part: &str, max: usize| {
        !part.is_empty() && part.len() <= max && part.bytes().all(|b| b.is_ascii_digit())
    };
    parts.len() == 3
        && matches!(parts[0], "2" | "4" | "5")
        && digits(parts[1], 3)
        && digits(parts[2], 3)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejection(code: u16, text: &str) -> Rejection {
        Rejection {
            module: "m".to_owned(),
            code,
            text: text.to_owned(),
        }
    }

    #[test]
    fn a_module_reply_keeps_its_enhanced_code() {
        let reply = reply_for(rejection(
            550,
            "5.7.1 Mail from spam.test is not accepted here",
        ));
        assert_eq!(
            reply.to_wire(),
            "550 5.7.1 Mail from spam.test is not accepted here\r\n"
        );
        let reply = reply_for(rejection(451, "4.3.0 try later"));
        assert_eq!(reply.to_wire(), "451 4.3.0 try later\r\n");
    }

    #[test]
    fn a_module_reply_without_enhanced_code_gets_one() {
        assert_eq!(
            reply_for(rejection(554, "go away")).to_wire(),
            "554 5.7.1 go away\r\n"
        );
        assert_eq!(
            reply_for(rejection(421, "busy")).to_wire(),
            "421 4.7.1 busy\r\n"
        );
        assert_eq!(
            reply_for(rejection(550, "5.7")).to_wire(),
            "550 5.7.1 5.7\r\n"
        );
    }

    #[test]
    fn a_rejection_never_reads_as_success() {
        assert_eq!(
            reply_for(rejection(250, "2.0.0 fine")).to_wire(),
            "550 5.7.1 2.0.0 fine\r\n"
        );
        assert_eq!(
            reply_for(rejection(451, "5.7.1 mismatched")).to_wire(),
            "451 4.7.1 5.7.1 mismatched\r\n"
        );
        assert_eq!(
            reply_for(rejection(550, "")).to_wire(),
            "550 5.7.1 Rejected by policy module m\r\n"
        );
    }

    #[test]
    fn transaction_metadata_ends_with_the_transaction() {
        let mut hooks = ModuleHooks::new(
            Arc::new(Modules::default()),
            "192.0.2.1".to_owned(),
            [("listener".to_owned(), "in".to_owned())].into(),
        );
        assert!(hooks.connect().is_ok());
        assert!(hooks.mail_from("a@b.example").is_ok());
        hooks
            .context
            .metadata
            .insert("tx".to_owned(), "1".to_owned());
        assert_eq!(hooks.metadata().len(), 2);
        hooks.end_transaction();
        assert_eq!(
            hooks.metadata(),
            BTreeMap::from([("listener".to_owned(), "in".to_owned())])
        );
    }

    #[test]
    fn cipher_names_are_iana_names() {
        assert_eq!(
            iana_cipher_name("TLS13_AES_256_GCM_SHA384"),
            "TLS_AES_256_GCM_SHA384"
        );
        assert_eq!(
            iana_cipher_name("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"),
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
        );
    }

    #[test]
    fn session_ids_differ() {
        assert_ne!(session_id(), session_id());
    }
}
