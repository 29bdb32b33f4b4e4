//! The SMTP session state machine: which commands are allowed when, what
//! the transaction holds, and what to answer. Pure and synchronous; the
//! connection module does all I/O and drives it.

use std::sync::Arc;

use empath_common::smtp::Reply;

use crate::parser::{Command, ForwardPath, Param, ParseError};
use crate::reply;
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
}

/// The client's EHLO/HELO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    pub name: String,
    /// True for EHLO (ESMTP), false for HELO.
    pub extended: bool,
}

/// One mail transaction: from MAIL to the end of DATA (or RSET).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transaction {
    /// The reverse-path; empty for the null sender.
    pub sender: String,
    pub sender_params: Vec<Param>,
    pub recipients: Vec<String>,
}

#[derive(Debug)]
pub struct Session {
    settings: Arc<Settings>,
    greeting: Option<Greeting>,
    transaction: Option<Transaction>,
    errors: u32,
}

impl Session {
    pub fn new(settings: Arc<Settings>) -> Self {
        Self {
            settings,
            greeting: None,
            transaction: None,
            errors: 0,
        }
    }

    pub fn greeting(&self) -> Option<&Greeting> {
        self.greeting.as_ref()
    }

    pub fn transaction(&self) -> Option<&Transaction> {
        self.transaction.as_ref()
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
                reply::ehlo(hostname, settings.size_limit)
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
                Some(_) => return Action::ReceiveData,
            },
            Command::Rset => {
                self.transaction = None;
                reply::ok()
            }
            Command::Noop => reply::ok(),
            Command::Quit => return Action::Close(reply::bye()),
            Command::Vrfy(_) => reply::cannot_vrfy(),
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

    fn mail(&mut self, sender: String, params: Vec<Param>) -> Reply {
        if self.greeting.is_none() {
            return self.error(reply::bad_sequence("send HELO/EHLO first"));
        }
        if self.transaction.is_some() {
            return self.error(reply::bad_sequence("nested MAIL command"));
        }
        // Other parameters (BODY, RET, ENVID, ...) are accepted and ignored
        // until the extensions they belong to are implemented.
        if let Some(size) = params.iter().find(|p| p.keyword == "SIZE") {
            let Some(declared) = size.value.as_deref().and_then(|v| v.parse::<u64>().ok()) else {
                return self.error(reply::bad_size_param());
            };
            // Not counted as a protocol error: the client did nothing wrong.
            if self
                .settings
                .size_limit
                .is_some_and(|limit| declared > limit)
            {
                return reply::message_too_big();
            }
        }
        self.transaction = Some(Transaction {
            sender,
            sender_params: params,
            recipients: Vec::new(),
        });
        reply::sender_ok()
    }

    fn rcpt(&mut self, to: ForwardPath, _params: Vec<Param>) -> Reply {
        let max_recipients = self.settings.max_recipients;
        let address = match to {
            ForwardPath::Mailbox(address) => address,
            ForwardPath::Postmaster => format!("postmaster@{}", self.settings.hostname),
        };
        let Some(transaction) = &mut self.transaction else {
            return self.error(reply::bad_sequence("need MAIL command"));
        };
        if transaction.recipients.len() >= max_recipients {
            // Not a protocol error: RFC 5321 section 4.5.3.1.10 has the
            // client send the rest in a later transaction.
            return reply::too_many_recipients();
        }
        transaction.recipients.push(address);
        reply::recipient_ok()
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
        Arc::new(Settings {
            hostname: "mx.example".into(),
            size_limit,
            max_recipients: 3,
            max_errors: 20,
            timeouts: Timeouts {
                command: second,
                data_init: second,
                data_block: second,
                data_termination: second,
                connection: second,
            },
            metadata: Default::default(),
            cleanup_socket: "/nonexistent".into(),
        })
    }

    fn code(session: &mut Session, line: &str) -> u16 {
        match session.handle(parse_command(line.as_bytes())) {
            Action::Reply(reply) | Action::Close(reply) => reply.code,
            Action::ReceiveData => 354,
        }
    }

    #[test]
    fn a_transaction_in_order() {
        let mut session = Session::new(settings(None));
        assert_eq!(code(&mut session, "EHLO client.example"), 250);
        assert_eq!(code(&mut session, "MAIL FROM:<a@b.example>"), 250);
        assert_eq!(code(&mut session, "RCPT TO:<c@d.example>"), 250);
        assert_eq!(code(&mut session, "RCPT TO:<Postmaster>"), 250);
        assert_eq!(code(&mut session, "DATA"), 354);
        let transaction = session.transaction().cloned().unwrap_or_default();
        assert_eq!(transaction.sender, "a@b.example");
        assert_eq!(
            transaction.recipients,
            ["c@d.example", "postmaster@mx.example"]
        );
        session.finish_transaction();
        assert_eq!(code(&mut session, "MAIL FROM:<>"), 250);
        assert_eq!(code(&mut session, "QUIT"), 221);
    }

    #[test]
    fn out_of_order_commands_get_503() {
        let mut session = Session::new(settings(None));
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
        let mut session = Session::new(settings(Some(100)));
        code(&mut session, "EHLO client");
        assert_eq!(code(&mut session, "MAIL FROM:<a@b.example> SIZE=101"), 552);
        assert_eq!(code(&mut session, "MAIL FROM:<a@b.example> SIZE=x"), 501);
        assert_eq!(code(&mut session, "MAIL FROM:<a@b.example> SIZE=100"), 250);
    }

    #[test]
    fn recipient_limit() {
        let mut session = Session::new(settings(None));
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
        let mut session = Session::new(settings(None));
        for _ in 0..19 {
            assert_eq!(code(&mut session, "BOGUS"), 500);
        }
        assert!(!session.too_many_errors());
        assert_eq!(session.line_too_long().code, 500);
        assert!(session.too_many_errors());
    }

    #[test]
    fn ehlo_resets_the_transaction() {
        let mut session = Session::new(settings(None));
        code(&mut session, "EHLO client");
        code(&mut session, "MAIL FROM:<a@b.example>");
        assert_eq!(code(&mut session, "EHLO client"), 250);
        assert!(session.transaction().is_none());
        assert_eq!(session.greeting().map(|g| g.extended), Some(true));
    }
}
