//! The SMTP session state machine: which commands are allowed when, what
//! the transaction holds, and what to answer. Pure and synchronous; the
//! connection module does all I/O (the TLS handshake, the AUTH exchange,
//! message data) and drives it.

use std::net::IpAddr;
use std::sync::Arc;

use empath_common::queue::{DsnParams, Recipient};
use empath_common::smtp::Reply;

use crate::auth::Mechanism;
use crate::params::{self, MailParams};
use crate::parser::{Command, ForwardPath, Param, ParseError};
use crate::reply::{self, Offer};
use crate::settings::Settings;

/// What the connection must do after a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this reply and read the next command.
    Reply(Reply),
    /// Send this reply and close the connection.
    Close(Reply),
    /// DATA is in order: open the queue, send 354 and receive the message,
    /// then call [`Session::finish_transaction`].
    ReceiveData,
    /// Send 220, run the TLS handshake, then call [`Session::tls_started`].
    StartTls,
    /// Run the SASL exchange, then call [`Session::authenticated`] or
    /// [`Session::auth_failed`].
    Auth {
        mechanism: Mechanism,
        initial: Option<String>,
    },
    /// A BDAT chunk for the transaction: read exactly `size` octets.
    ReceiveChunk { size: u64, last: bool },
    /// A BDAT chunk refused: read and drop `size` octets, then reply.
    DiscardChunk { size: u64, reply: Reply },
}

/// The client's EHLO/HELO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    pub name: String,
    /// True for EHLO (ESMTP), false for HELO.
    pub extended: bool,
}

/// One mail transaction: from MAIL to the end of DATA (or RSET).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Transaction {
    /// The reverse-path; empty for the null sender.
    pub sender: String,
    pub params: MailParams,
    /// With their DSN parameters (NOTIFY, ORCPT).
    pub recipients: Vec<Recipient>,
    /// BDAT has been used: DATA is no longer allowed (RFC 3030).
    pub chunking: bool,
}

impl Transaction {
    pub fn dsn(&self) -> DsnParams {
        DsnParams {
            ret: self.params.ret,
            envid: self.params.envid.clone(),
        }
    }
}

#[derive(Debug)]
pub struct Session {
    settings: Arc<Settings>,
    client_ip: Option<IpAddr>,
    greeting: Option<Greeting>,
    transaction: Option<Transaction>,
    errors: u32,
    tls: bool,
    authenticated: Option<String>,
}

impl Session {
    pub fn new(settings: Arc<Settings>, client_ip: Option<IpAddr>) -> Self {
        Self {
            settings,
            client_ip,
            greeting: None,
            transaction: None,
            errors: 0,
            tls: false,
            authenticated: None,
        }
    }

    pub fn greeting(&self) -> Option<&Greeting> {
        self.greeting.as_ref()
    }

    pub fn transaction(&self) -> Option<&Transaction> {
        self.transaction.as_ref()
    }

    pub fn authenticated_as(&self) -> Option<&str> {
        self.authenticated.as_deref()
    }

    /// The protocol name for the Received header (RFC 3848, RFC 6531).
    pub fn protocol(&self) -> String {
        let Some(greeting) = &self.greeting else {
            return "SMTP".to_owned();
        };
        if !greeting.extended {
            return "SMTP".to_owned();
        }
        let utf8 = self.transaction.as_ref().is_some_and(|t| t.params.smtputf8);
        let mut name = if utf8 { "UTF8SMTP" } else { "ESMTP" }.to_owned();
        if self.tls {
            name.push('S');
        }
        if self.authenticated.is_some() {
            name.push('A');
        }
        name
    }

    /// True once the client made so many protocol errors that the session
    /// should end (checked before each command, as Postfix does).
    pub fn too_many_errors(&self) -> bool {
        self.errors >= self.settings.max_errors
    }

    /// The transaction is over, whatever the outcome of DATA: the next one
    /// starts with MAIL (RFC 5321 section 4.1.1.4).
    pub fn finish_transaction(&mut self) {
        self.transaction = None;
    }

    /// A command line over the length limit.
    pub fn line_too_long(&mut self) -> Reply {
        self.error(reply::line_too_long())
    }

    /// The TLS handshake succeeded: everything known before it is
    /// forgotten, and the client must greet again (RFC 3207 section 4.2).
    pub fn tls_started(&mut self) {
        self.tls = true;
        self.greeting = None;
        self.transaction = None;
        self.authenticated = None;
    }

    /// A plugin module refused the EHLO or HELO just accepted: the client
    /// must greet again.
    pub fn forget_greeting(&mut self) {
        self.greeting = None;
    }

    /// A plugin module refused the recipient that RCPT just accepted.
    pub fn drop_last_recipient(&mut self) {
        if let Some(transaction) = &mut self.transaction {
            transaction.recipients.pop();
        }
    }

    pub fn authenticated(&mut self, user: String) {
        self.authenticated = Some(user);
    }

    /// A failed or aborted AUTH counts as a protocol error.
    pub fn auth_failed(&mut self, reply: Reply) -> Reply {
        self.error(reply)
    }

    fn starttls_offered(&self) -> bool {
        !self.tls && self.settings.tls.as_ref().is_some_and(|t| t.available())
    }

    fn auth_offered(&self) -> bool {
        self.authenticated.is_none()
            && self
                .settings
                .auth
                .as_ref()
                .is_some_and(|auth| self.tls || auth.allow_insecure())
    }

    pub fn handle(&mut self, parsed: Result<Command, ParseError>) -> Action {
        let command = match parsed {
            Ok(command) => command,
            Err(error) => return Action::Reply(self.error(reply::parse_error(error))),
        };
        // A handle of its own, so that replies can borrow it while the
        // state changes.
        let settings = Arc::clone(&self.settings);
        let hostname = &settings.hostname;
        let reply = match command {
            Command::Ehlo(name) => {
                self.greet(name, true);
                let offer = Offer {
                    size_limit: settings.size_limit,
                    starttls: self.starttls_offered(),
                    auth: self.auth_offered(),
                    requiretls: self.tls,
                };
                reply::ehlo(hostname, offer)
            }
            Command::Helo(name) => {
                self.greet(name, false);
                reply::helo(hostname)
            }
            Command::Mail { from, params } => self.mail(from, params),
            Command::Rcpt { to, params } => self.rcpt(to, params),
            Command::Data => match &self.transaction {
                None => self.error(reply::bad_sequence("need MAIL command")),
                Some(t) if t.recipients.is_empty() => {
                    self.error(reply::bad_sequence("need RCPT command"))
                }
                Some(t) if t.chunking => self.error(reply::bad_sequence("DATA after BDAT")),
                Some(_) => return Action::ReceiveData,
            },
            Command::Bdat { size, last } => return self.bdat(size, last),
            Command::StartTls => return self.starttls(),
            Command::Auth { mechanism, initial } => return self.auth(&mechanism, initial),
            Command::Rset => {
                self.transaction = None;
                reply::ok()
            }
            Command::Noop => reply::ok(),
            Command::Quit => return Action::Close(reply::bye()),
            Command::Vrfy(_) => reply::verify_refused("VRFY", settings.vrfy_code),
            Command::Expn(_) => reply::verify_refused("EXPN", settings.expn_code),
            Command::Help(_) => reply::help(),
            Command::NotImplemented(name) => self.error(reply::not_implemented(name)),
        };
        Action::Reply(reply)
    }

    /// EHLO and HELO start over: any transaction is dropped (RFC 5321
    /// section 4.1.4).
    fn greet(&mut self, name: String, extended: bool) {
        self.transaction = None;
        self.greeting = Some(Greeting { name, extended });
    }

    fn starttls(&mut self) -> Action {
        let reply = if self.tls {
            self.error(reply::bad_sequence("TLS already active"))
        } else if self.settings.tls.is_none() {
            self.error(reply::not_implemented("STARTTLS"))
        } else if !self.starttls_offered() {
            reply::tls_unavailable()
        } else if self.greeting.is_none() {
            self.error(reply::bad_sequence("send HELO/EHLO first"))
        } else if self.transaction.is_some() {
            self.error(reply::bad_sequence("mail transaction in progress"))
        } else {
            return Action::StartTls;
        };
        Action::Reply(reply)
    }

    fn auth(&mut self, mechanism: &str, initial: Option<String>) -> Action {
        let reply = if self.settings.auth.is_none() {
            self.error(reply::not_implemented("AUTH"))
        } else if self.greeting.as_ref().is_none_or(|g| !g.extended) {
            self.error(reply::bad_sequence("send EHLO first"))
        } else if self.authenticated.is_some() {
            self.error(reply::bad_sequence("already authenticated"))
        } else if self.transaction.is_some() {
            self.error(reply::bad_sequence("mail transaction in progress"))
        } else if !self.auth_offered() {
            reply::encryption_required()
        } else if let Some(mechanism) = Mechanism::parse(mechanism) {
            return Action::Auth { mechanism, initial };
        } else {
            self.error(reply::unknown_mechanism())
        };
        Action::Reply(reply)
    }

    fn bdat(&mut self, size: u64, last: bool) -> Action {
        let refusal = match &mut self.transaction {
            None => reply::bad_sequence("need MAIL command"),
            Some(t) if t.recipients.is_empty() => reply::bad_sequence("need RCPT command"),
            Some(t) => {
                t.chunking = true;
                return Action::ReceiveChunk { size, last };
            }
        };
        let reply = self.error(refusal);
        Action::DiscardChunk { size, reply }
    }

    fn mail(&mut self, sender: String, params: Vec<Param>) -> Reply {
        if self.greeting.is_none() {
            return self.error(reply::bad_sequence("send HELO/EHLO first"));
        }
        if self.transaction.is_some() {
            return self.error(reply::bad_sequence("nested MAIL command"));
        }
        let params = match params::mail_params(&params) {
            Ok(params) => params,
            Err(reply) => return self.error(reply),
        };
        if !sender.is_ascii() && !params.smtputf8 {
            return self.error(reply::utf8_not_declared());
        }
        // RFC 8689 section 4.1: REQUIRETLS is only offered, so only
        // accepted, over TLS.
        if params.requiretls && !self.tls {
            return self.error(reply::requiretls_without_tls());
        }
        let Some(sender) = self.qualify(sender) else {
            return self.error(reply::parse_error(ParseError::BadSender));
        };
        // Not counted as a protocol error: the client did nothing wrong.
        if let (Some(declared), Some(limit)) = (params.size, self.settings.size_limit)
            && declared > limit
        {
            return reply::message_too_big();
        }
        self.transaction = Some(Transaction {
            sender,
            params,
            recipients: Vec::new(),
            chunking: false,
        });
        reply::sender_ok()
    }

    fn rcpt(&mut self, to: ForwardPath, params: Vec<Param>) -> Reply {
        let settings = Arc::clone(&self.settings);
        let (address, postmaster) = match to {
            ForwardPath::Mailbox(address) => match self.qualify(address) {
                Some(address) => (address, false),
                None => return self.error(reply::parse_error(ParseError::BadRecipient)),
            },
            ForwardPath::Postmaster => (format!("postmaster@{}", settings.hostname), true),
        };
        let Some(transaction) = &self.transaction else {
            return self.error(reply::bad_sequence("need MAIL command"));
        };
        if transaction.recipients.len() >= settings.max_recipients {
            // Not a protocol error: RFC 5321 section 4.5.3.1.10 has the
            // client send the rest in a later transaction.
            return reply::too_many_recipients();
        }
        if !address.is_ascii() && !transaction.params.smtputf8 {
            return self.error(reply::utf8_not_declared());
        }
        let params = match params::rcpt_params(&params) {
            Ok(params) => params,
            Err(reply) => return self.error(reply),
        };
        let allowed = postmaster
            || settings
                .relay
                .allows(&address, self.client_ip, self.authenticated.is_some());
        if !allowed {
            tracing::info!(
                client = ?self.client_ip,
                recipient = %address,
                "relay access denied"
            );
            return self.error(reply::relay_denied());
        }
        let mut recipient = Recipient::new(address.as_str());
        recipient.notify = params.notify;
        recipient.orcpt = params.orcpt;
        if let Some(transaction) = &mut self.transaction {
            transaction.recipients.push(recipient);
        }
        reply::recipient_ok()
    }

    /// Completes an unqualified address (`root`) with the origin domain,
    /// for trusted clients only (mynetworks or authenticated), as Postfix
    /// does for its own users; others must send `local@domain`. `None`
    /// refuses it. The null sender stays empty.
    fn qualify(&self, address: String) -> Option<String> {
        if address.is_empty() || address.contains('@') {
            return Some(address);
        }
        let trusted = self.authenticated.is_some() || self.settings.relay.trusts(self.client_ip);
        if trusted {
            self.settings.local.qualify(&address)
        } else {
            None
        }
    }

    /// Counts a client error and passes its reply through.
    fn error(&mut self, reply: Reply) -> Reply {
        self.errors = self.errors.saturating_add(1);
        reply
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parser::parse_command;
    use crate::settings::Timeouts;
    use std::time::Duration;

    fn settings(size_limit: Option<u64>) -> Arc<Settings> {
        let second = Duration::from_secs(1);
        let timeouts = Timeouts {
            command: second,
            data_init: second,
            data_block: second,
            data_termination: second,
            connection: second,
        };
        let mut settings = Settings::for_tests("mx.example", "/nonexistent".into(), timeouts);
        settings.size_limit = size_limit;
        settings.max_recipients = 3;
        Arc::new(settings)
    }

    /// A session from 192.0.2.1, which is outside `mynetworks`.
    fn stranger() -> Session {
        let mut settings = (*settings(None)).clone();
        let mynetworks: Vec<_> = ["10.0.0.0/8"]
            .iter()
            .filter_map(|n| n.parse().ok())
            .collect();
        settings.relay = Arc::new(crate::relay::RelayPolicy::with(
            &["ours.example"],
            &mynetworks,
        ));
        Session::new(Arc::new(settings), "192.0.2.1".parse().ok())
    }

    fn new_session(size_limit: Option<u64>) -> Session {
        Session::new(settings(size_limit), "192.0.2.1".parse().ok())
    }

    fn code(session: &mut Session, line: &str) -> u16 {
        match session.handle(parse_command(line.as_bytes())) {
            Action::Reply(reply) | Action::Close(reply) => reply.code,
            Action::ReceiveData => 354,
            Action::StartTls => 220,
            Action::Auth { .. } => 334,
            Action::ReceiveChunk { .. } => 250,
            Action::DiscardChunk { reply, .. } => reply.code,
        }
    }

    #[test]
    fn a_transaction_in_order() {
        let mut session = new_session(None);
        assert_eq!(code(&mut session, "EHLO client.example"), 250);
        assert_eq!(code(&mut session, "MAIL FROM:<a@b.example>"), 250);
        assert_eq!(code(&mut session, "RCPT TO:<c@d.example>"), 250);
        assert_eq!(code(&mut session, "RCPT TO:<Postmaster>"), 250);
        assert_eq!(code(&mut session, "DATA"), 354);
        let transaction = session.transaction().cloned().unwrap_or_default();
        assert_eq!(transaction.sender, "a@b.example");
        let addresses: Vec<&str> = transaction
            .recipients
            .iter()
            .map(|r| r.address.as_str())
            .collect();
        assert_eq!(addresses, ["c@d.example", "postmaster@mx.example"]);
        session.finish_transaction();
        assert_eq!(code(&mut session, "MAIL FROM:<>"), 250);
        assert_eq!(code(&mut session, "QUIT"), 221);
    }

    #[test]
    fn unqualified_addresses_are_qualified_for_trusted_clients_only() {
        let mut settings = (*stranger().settings).clone();
        settings.local =
            crate::local::LocalPolicy::new(empath_common::local_recipients::LocalRecipients::with(
                empath_common::config::LocalDomains::new(
                    ["ours.example".to_owned()],
                    "ours.example",
                ),
                Default::default(),
            ));
        let settings = Arc::new(settings);
        let mut stranger = Session::new(Arc::clone(&settings), "192.0.2.1".parse().ok());
        assert_eq!(code(&mut stranger, "EHLO client"), 250);
        assert_eq!(code(&mut stranger, "MAIL FROM:<root>"), 501);
        assert_eq!(code(&mut stranger, "MAIL FROM:<a@b.example>"), 250);
        assert_eq!(code(&mut stranger, "RCPT TO:<bob>"), 501);
        let mut trusted = Session::new(settings, "10.1.2.3".parse().ok());
        assert_eq!(code(&mut trusted, "EHLO client"), 250);
        assert_eq!(code(&mut trusted, "MAIL FROM:<root>"), 250);
        assert_eq!(code(&mut trusted, "RCPT TO:<bob>"), 250);
        let transaction = trusted.transaction().cloned().unwrap_or_default();
        assert_eq!(transaction.sender, "root@ours.example");
        assert_eq!(transaction.recipients[0].address, "bob@ours.example");
        // Without an origin (no local delivery configured) even a trusted
        // client must qualify its addresses.
        let mut bare = Session::new(settings_from(stranger.settings), "10.1.2.3".parse().ok());
        assert_eq!(code(&mut bare, "EHLO client"), 250);
        assert_eq!(code(&mut bare, "MAIL FROM:<root>"), 501);
    }

    fn settings_from(settings: Arc<Settings>) -> Arc<Settings> {
        let mut plain = (*settings).clone();
        plain.local = crate::local::LocalPolicy::default();
        let mynetworks: Vec<_> = ["10.0.0.0/8"]
            .iter()
            .filter_map(|n| n.parse().ok())
            .collect();
        plain.relay = Arc::new(crate::relay::RelayPolicy::with(
            &["ours.example"],
            &mynetworks,
        ));
        Arc::new(plain)
    }

    #[test]
    fn out_of_order_commands_get_503() {
        let mut session = new_session(None);
        assert_eq!(code(&mut session, "MAIL FROM:<a@b.example>"), 503);
        assert_eq!(code(&mut session, "HELO client"), 250);
        assert_eq!(code(&mut session, "RCPT TO:<c@d.example>"), 503);
        assert_eq!(code(&mut session, "DATA"), 503);
        assert_eq!(code(&mut session, "MAIL FROM:<a@b.example>"), 250);
        assert_eq!(code(&mut session, "DATA"), 503);
        assert_eq!(code(&mut session, "MAIL FROM:<a@b.example>"), 503);
        assert_eq!(code(&mut session, "RSET"), 250);
        assert_eq!(code(&mut session, "RCPT TO:<c@d.example>"), 503);
    }

    #[test]
    fn size_parameter_is_checked() {
        let mut session = new_session(Some(100));
        code(&mut session, "EHLO client");
        assert_eq!(code(&mut session, "MAIL FROM:<a@b.example> SIZE=101"), 552);
        assert_eq!(code(&mut session, "MAIL FROM:<a@b.example> SIZE=x"), 501);
        assert_eq!(code(&mut session, "MAIL FROM:<a@b.example> SIZE=100"), 250);
    }

    #[test]
    fn recipient_limit() {
        let mut session = new_session(None);
        code(&mut session, "EHLO client");
        code(&mut session, "MAIL FROM:<a@b.example>");
        for _ in 0..3 {
            assert_eq!(code(&mut session, "RCPT TO:<c@d.example>"), 250);
        }
        assert_eq!(code(&mut session, "RCPT TO:<c@d.example>"), 452);
        assert!(!session.too_many_errors());
    }

    #[test]
    fn errors_are_counted_up_to_the_limit() {
        let mut session = new_session(None);
        for _ in 0..19 {
            assert_eq!(code(&mut session, "BOGUS"), 500);
        }
        assert!(!session.too_many_errors());
        assert_eq!(session.line_too_long().code, 500);
        assert!(session.too_many_errors());
    }

    #[test]
    fn ehlo_resets_the_transaction() {
        let mut session = new_session(None);
        code(&mut session, "EHLO client");
        code(&mut session, "MAIL FROM:<a@b.example>");
        assert_eq!(code(&mut session, "EHLO client"), 250);
        assert!(session.transaction().is_none());
        assert_eq!(session.greeting().map(|g| g.extended), Some(true));
    }

    #[test]
    fn open_relay_is_refused() {
        let mut session = stranger();
        code(&mut session, "EHLO client");
        code(&mut session, "MAIL FROM:<a@b.example>");
        assert_eq!(code(&mut session, "RCPT TO:<victim@foreign.example>"), 554);
        assert_eq!(code(&mut session, "RCPT TO:<bob@ours.example>"), 250);
        assert_eq!(code(&mut session, "RCPT TO:<postmaster>"), 250);
        session.authenticated("bob".into());
        assert_eq!(code(&mut session, "RCPT TO:<victim@foreign.example>"), 250);
        assert_eq!(session.protocol(), "ESMTPA");
    }

    #[test]
    fn dsn_parameters_are_kept() {
        let mut session = new_session(None);
        code(&mut session, "EHLO client");
        assert_eq!(
            code(
                &mut session,
                "MAIL FROM:<a@b.example> RET=HDRS ENVID=id+2B1"
            ),
            250
        );
        assert_eq!(
            code(
                &mut session,
                "RCPT TO:<c@d.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;c+40d.example"
            ),
            250
        );
        assert_eq!(
            code(&mut session, "RCPT TO:<e@d.example> NOTIFY=BOGUS"),
            501
        );
        let transaction = session.transaction().cloned().unwrap_or_default();
        assert_eq!(transaction.dsn().envid.as_deref(), Some("id+1"));
        assert_eq!(
            transaction.dsn().ret,
            Some(empath_common::queue::Ret::Headers)
        );
        let recipient = &transaction.recipients[0];
        assert!(recipient.notify.explicit && recipient.notify.success && !recipient.notify.delay);
        assert_eq!(recipient.orcpt.as_deref(), Some("rfc822;c@d.example"));
    }

    /// RFC 8689: REQUIRETLS is offered, and accepted, on TLS sessions only.
    #[test]
    fn requiretls_needs_tls() {
        let mut session = new_session(None);
        let ehlo = |session: &mut Session| match session.handle(parse_command(b"EHLO client")) {
            Action::Reply(reply) => reply.text,
            _ => String::new(),
        };
        assert!(!ehlo(&mut session).contains("REQUIRETLS"));
        assert_eq!(
            code(&mut session, "MAIL FROM:<a@b.example> REQUIRETLS"),
            530
        );
        session.tls_started();
        assert!(ehlo(&mut session).lines().any(|l| l == "REQUIRETLS"));
        assert_eq!(
            code(
                &mut session,
                "MAIL FROM:<a@b.example> REQUIRETLS BODY=8BITMIME"
            ),
            250
        );
        let options = session.transaction().map(|t| t.params.options());
        assert_eq!(
            options,
            Some(empath_common::queue::MessageOptions {
                body: empath_common::queue::Body::EightBitMime,
                requiretls: true,
            })
        );
    }

    #[test]
    fn utf8_addresses_need_smtputf8() {
        let mut session = new_session(None);
        code(&mut session, "EHLO client");
        assert_eq!(code(&mut session, "MAIL FROM:<j\u{f6}rg@b.example>"), 553);
        assert_eq!(code(&mut session, "MAIL FROM:<a@b.example>"), 250);
        assert_eq!(code(&mut session, "RCPT TO:<j\u{f6}rg@d.example>"), 553);
        code(&mut session, "RSET");
        assert_eq!(
            code(&mut session, "MAIL FROM:<j\u{f6}rg@b.example> SMTPUTF8"),
            250
        );
        assert_eq!(code(&mut session, "RCPT TO:<j\u{f6}rg@d.example>"), 250);
        assert_eq!(session.protocol(), "UTF8SMTP");
    }

    #[test]
    fn bdat_rules() {
        let mut session = new_session(None);
        code(&mut session, "EHLO client");
        let discard = session.handle(parse_command(b"BDAT 10 LAST"));
        assert!(matches!(discard, Action::DiscardChunk { size: 10, reply } if reply.code == 503));
        code(&mut session, "MAIL FROM:<a@b.example>");
        code(&mut session, "RCPT TO:<c@d.example>");
        let chunk = session.handle(parse_command(b"BDAT 10"));
        assert_eq!(
            chunk,
            Action::ReceiveChunk {
                size: 10,
                last: false
            }
        );
        assert_eq!(code(&mut session, "DATA"), 503);
    }

    #[test]
    fn starttls_and_auth_when_not_configured() {
        let mut session = new_session(None);
        code(&mut session, "EHLO client");
        assert_eq!(code(&mut session, "STARTTLS"), 502);
        assert_eq!(code(&mut session, "AUTH PLAIN"), 502);
        let ehlo = session.handle(parse_command(b"EHLO client"));
        let Action::Reply(ehlo) = ehlo else {
            panic!("EHLO gets a reply");
        };
        assert!(!ehlo.text.contains("STARTTLS") && !ehlo.text.contains("AUTH"));
        assert!(ehlo.text.contains("CHUNKING") && ehlo.text.contains("DSN"));
    }

    #[test]
    fn vrfy_and_expn_as_configured() {
        let mut session = new_session(None);
        assert_eq!(code(&mut session, "VRFY bob"), 252);
        assert_eq!(code(&mut session, "EXPN staff"), 502);
        assert!(!session.too_many_errors());
    }
}
