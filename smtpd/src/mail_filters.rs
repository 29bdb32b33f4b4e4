//! Milters and inbound authentication checks, as one SMTP session sees
//! them. smtpd runs every milter stage (the milter connection belongs to
//! the SMTP session), from connect to the end of the message, and the
//! SPF/DKIM/DMARC checks (it knows the client's address, HELO and MAIL
//! FROM, and a DMARC rejection is the DATA reply). What they decide to
//! change goes to cleanup as [`Edit`]s with the submission; cleanup
//! applies them before it seals the queue file, so that the 250 means
//! "durable, as changed".
//!
//! Milters see each command after smtpd's own checks and before the
//! plugin modules, as in Postfix (restrictions, then milters).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use empath_auth::verify::{CheckInput, InboundChecks};
use empath_common::config::{Config, Network};
use empath_common::edits::{self, Edit};
use empath_common::queue::QueueId;
use empath_common::smtp::Reply;
use empath_milter::{Client, Macros, MilterSettings, Milters, Verdict};

use crate::parser::{Command, Param, ParseError};

/// The field the checks write (RFC 8601).
const AUTHENTICATION_RESULTS: &str = "Authentication-Results";

/// What every session of the process shares.
pub struct FilterSettings {
    milters: Vec<Arc<MilterSettings>>,
    checks: Option<InboundChecks>,
    mynetworks: Vec<Network>,
    hostname: String,
}

impl std::fmt::Debug for FilterSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilterSettings")
            .field("milters", &self.milters)
            .field("checks", &self.checks.is_some())
            .finish_non_exhaustive()
    }
}

impl FilterSettings {
    /// `None` when neither milters nor checks are configured.
    pub fn from_config(config: &Config) -> Result<Option<Arc<Self>>, String> {
        if config.smtpd_milters.is_empty() && !config.auth.enabled {
            return Ok(None);
        }
        let hostname = config.hostname();
        let checks = if config.auth.enabled {
            Some(InboundChecks::new(&config.auth, &config.dns, &hostname)?)
        } else {
            None
        };
        Ok(Some(Arc::new(Self {
            milters: config
                .smtpd_milters
                .iter()
                .map(|m| Arc::new(MilterSettings::from(&m.0)))
                .collect(),
            checks,
            mynetworks: config.smtpd.mynetworks.clone(),
            hostname,
        })))
    }
}

/// A command the milters have a say in, with what they are told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stage {
    Helo(String),
    /// `<sender>` and the ESMTP parameters.
    Mail(Vec<String>),
    /// The ESMTP parameters; the address comes from the transaction
    /// (where `<Postmaster>` is qualified already).
    Rcpt {
        params: Vec<String>,
    },
}

/// The stage of a parsed command, if the milters see it.
pub fn stage_of(command: &Result<Command, ParseError>) -> Option<Stage> {
    match command {
        Ok(Command::Ehlo(name) | Command::Helo(name)) => Some(Stage::Helo(name.clone())),
        Ok(Command::Mail { from, params }) => {
            let mut args = vec![format!("<{from}>")];
            args.extend(params.iter().map(param_text));
            Some(Stage::Mail(args))
        }
        Ok(Command::Rcpt { params, .. }) => Some(Stage::Rcpt {
            params: params.iter().map(param_text).collect(),
        }),
        _ => None,
    }
}

fn param_text(param: &Param) -> String {
    match &param.value {
        Some(value) => format!("{}={value}", param.keyword),
        None => param.keyword.clone(),
    }
}

/// Why a command or the session is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// This reply to the command.
    Reply(Reply),
    /// This reply, then close the connection.
    Close(Reply),
}

/// How the end of the message went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndOfMessage {
    /// Queue it, with these changes.
    Accept(Vec<Edit>),
    Refuse(Refusal),
    /// Answer 250 and throw it away.
    Discard,
}

/// The milters and checks of one SMTP session.
pub struct SessionFilters {
    settings: Option<Arc<FilterSettings>>,
    milters: Milters,
    macros: Macros,
    peer: Option<SocketAddr>,
    queue_id: Option<QueueId>,
    helo: String,
    /// A milter discarded the message at MAIL, RCPT or DATA.
    discard: bool,
}

impl SessionFilters {
    pub fn new(settings: Option<Arc<FilterSettings>>, peer: &str) -> Self {
        let milters = settings
            .as_ref()
            .map_or_else(|| Milters::new(&[]), |s| Milters::new(&s.milters));
        Self {
            settings,
            milters,
            macros: Macros::new(),
            peer: peer.parse().ok(),
            queue_id: None,
            helo: String::new(),
            discard: false,
        }
    }

    fn client_ip(&self) -> Option<IpAddr> {
        self.peer.map(|p| p.ip().to_canonical())
    }

    /// Whether the inbound checks apply: configured, and the client is
    /// neither in `mynetworks` nor authenticated.
    fn checks_apply(&self, authenticated: bool) -> Option<&InboundChecks> {
        let settings = self.settings.as_ref()?;
        let checks = settings.checks.as_ref()?;
        let internal = authenticated
            || self
                .client_ip()
                .is_none_or(|ip| empath_auth::in_networks(ip, &settings.mynetworks));
        (!internal).then_some(checks)
    }

    /// Whether the connection must keep a copy of the message for
    /// [`SessionFilters::end_of_message`].
    pub fn wants_content(&self, authenticated: bool) -> bool {
        !self.milters.is_empty() || self.checks_apply(authenticated).is_some()
    }

    /// The queue ID the milters were told (`i`), for the submission.
    pub fn queue_id(&self) -> Option<QueueId> {
        self.queue_id
    }

    /// A client connected. `Err` is said instead of the greeting, and
    /// the connection closed: a 5xx becomes 554, as RFC 5321 wants of a
    /// greeting. A 4xx other than 421 lets the session start; the milter
    /// refuses each command after that, as Postfix does.
    pub async fn connect(&mut self) -> Result<(), Reply> {
        if self.milters.is_empty() {
            return Ok(());
        }
        let Some(settings) = self.settings.clone() else {
            return Ok(());
        };
        let hostname = settings.hostname.clone();
        self.macros.set("j", hostname.clone());
        self.macros.set("{daemon_name}", hostname);
        self.macros
            .set("v", format!("Empath {}", env!("CARGO_PKG_VERSION")));
        if let Some(peer) = self.peer {
            let ip = peer.ip().to_canonical();
            self.macros.set("_", format!("unknown [{ip}]"));
            self.macros.set("{client_addr}", ip.to_string());
            self.macros.set("{client_port}", peer.port().to_string());
            self.macros.set("{client_name}", "unknown");
            self.macros.set("{client_ptr}", "unknown");
        }
        let client = Client {
            name: None,
            address: self.peer,
        };
        match self.milters.connect(&client, &self.macros).await {
            Verdict::Continue | Verdict::Discard => Ok(()),
            Verdict::Reject(reply) if reply.is_permanent() => Err(Reply { code: 554, ..reply }),
            Verdict::Reject(reply) if reply.code == 421 => Err(reply),
            Verdict::Reject(_) => Ok(()),
            Verdict::Disconnect(reply) => Err(reply),
        }
    }

    /// The TLS handshake succeeded (the macros of the next HELO).
    pub fn tls_started(&mut self, version: &str, cipher: &str) {
        self.macros.set("{tls_version}", version);
        self.macros.set("{cipher}", cipher);
        let bits = if cipher.contains("128") { "128" } else { "256" };
        self.macros.set("{cipher_bits}", bits);
    }

    /// A command that smtpd (and, before this, nothing else) accepted.
    /// `last_recipient` is the recipient RCPT just added;
    /// `authenticated_as` the AUTH user.
    pub async fn command(
        &mut self,
        stage: Stage,
        last_recipient: Option<&str>,
        authenticated_as: Option<&str>,
    ) -> Result<(), Refusal> {
        if let Stage::Helo(name) = &stage {
            // The checks need it even without milters.
            self.helo = name.clone();
        }
        if self.milters.is_empty() {
            return Ok(());
        }
        let verdict = match stage {
            Stage::Helo(name) => self.milters.helo(&name, &self.macros).await,
            Stage::Mail(args) => {
                self.discard = false;
                let id = QueueId::generate();
                self.queue_id = Some(id);
                self.macros.set("i", id.to_string());
                let sender = args
                    .first()
                    .map(|a| a.trim_start_matches('<').trim_end_matches('>'))
                    .unwrap_or_default()
                    .to_owned();
                self.macros.set("{mail_addr}", sender);
                self.macros.set("{mail_mailer}", "smtp");
                match authenticated_as {
                    Some(user) => self.macros.set("{auth_authen}", user),
                    None => self.macros.remove("{auth_authen}"),
                }
                self.milters.mail(&args, &self.macros).await
            }
            Stage::Rcpt { params, .. } => {
                let recipient = last_recipient.unwrap_or_default();
                self.macros.set("{rcpt_addr}", recipient);
                self.macros.set("{rcpt_mailer}", "smtp");
                let mut args = vec![format!("<{recipient}>")];
                args.extend(params);
                self.milters.rcpt(&args, &self.macros).await
            }
        };
        self.judge(verdict)
    }

    /// DATA (or the first BDAT): the milters may still refuse.
    pub async fn data(&mut self) -> Result<(), Refusal> {
        if self.milters.is_empty() {
            return Ok(());
        }
        let verdict = self.milters.data(&self.macros).await;
        self.judge(verdict)
    }

    fn judge(&mut self, verdict: Verdict) -> Result<(), Refusal> {
        match verdict {
            Verdict::Continue => Ok(()),
            Verdict::Discard => {
                self.discard = true;
                Ok(())
            }
            Verdict::Reject(reply) => Err(Refusal::Reply(reply)),
            Verdict::Disconnect(reply) => Err(Refusal::Close(reply)),
        }
    }

    /// The whole message arrived: the checks first (on the message as
    /// received), then each milter, which sees the message without forged
    /// `Authentication-Results:` and with what the milters before it
    /// changed. Our `Authentication-Results:` goes on top last.
    pub async fn end_of_message(
        &mut self,
        content: &[u8],
        sender: &str,
        authenticated: bool,
    ) -> EndOfMessage {
        if self.discard {
            self.milters.abort().await;
            return EndOfMessage::Discard;
        }
        let mut edits = Vec::new();
        let mut results = None;
        if let (Some(checks), Some(ip)) = (self.checks_apply(authenticated), self.client_ip()) {
            let outcome = checks
                .check(CheckInput {
                    client_ip: ip,
                    helo: &self.helo,
                    mail_from: sender,
                    message: content,
                })
                .await;
            tracing::info!(client = %ip, checks = %outcome.summary, "authentication checks");
            if let Some(domain) = outcome.dmarc_reject {
                self.milters.abort().await;
                return EndOfMessage::Refuse(Refusal::Reply(Reply::new(
                    550,
                    "5.7.1",
                    format!("Email rejected per DMARC policy for {domain}"),
                )));
            }
            edits.push(Edit::RemoveAuthenticationResults {
                authserv_id: checks.authserv_id().to_owned(),
            });
            results = Some(outcome.header_value);
        }
        if !self.milters.is_empty() {
            let view = edits::apply_to_content(content, &edits);
            match self.milters.message(&view, &self.macros).await {
                (Verdict::Continue, milter_edits) => edits.extend(milter_edits),
                (Verdict::Discard, _) => return EndOfMessage::Discard,
                (Verdict::Reject(reply), _) => return EndOfMessage::Refuse(Refusal::Reply(reply)),
                (Verdict::Disconnect(reply), _) => {
                    return EndOfMessage::Refuse(Refusal::Close(reply));
                }
            }
        }
        if let Some(value) = results {
            edits.push(Edit::InsertHeader {
                index: 0,
                name: AUTHENTICATION_RESULTS.to_owned(),
                value: format!(" {value}").into_bytes(),
            });
        }
        EndOfMessage::Accept(edits)
    }

    /// The transaction is over; milters that saw part of it forget it.
    pub async fn end_transaction(&mut self) {
        self.discard = false;
        self.milters.abort().await;
        self.macros.remove("i");
        self.macros.remove("{mail_addr}");
        self.macros.remove("{rcpt_addr}");
    }

    /// The session is over.
    pub async fn quit(&mut self) {
        self.milters.quit().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parser::parse_command;

    #[test]
    fn milters_are_told_the_envelope_as_sendmail_does() {
        assert_eq!(
            stage_of(&parse_command(
                b"MAIL FROM:<a@example.org> SIZE=100 BODY=8BITMIME"
            )),
            Some(Stage::Mail(vec![
                "<a@example.org>".into(),
                "SIZE=100".into(),
                "BODY=8BITMIME".into()
            ]))
        );
        assert_eq!(
            stage_of(&parse_command(b"MAIL FROM:<>")),
            Some(Stage::Mail(vec!["<>".into()]))
        );
        assert_eq!(
            stage_of(&parse_command(b"RCPT TO:<Postmaster> NOTIFY=NEVER")),
            Some(Stage::Rcpt {
                params: vec!["NOTIFY=NEVER".into()]
            })
        );
        assert_eq!(
            stage_of(&parse_command(b"EHLO client.example")),
            Some(Stage::Helo("client.example".into()))
        );
        assert_eq!(stage_of(&parse_command(b"NOOP")), None);
    }

    #[tokio::test]
    async fn without_settings_nothing_is_asked_or_changed() {
        let mut filters = SessionFilters::new(None, "192.0.2.1:25");
        assert!(!filters.wants_content(false));
        assert_eq!(filters.connect().await, Ok(()));
        assert_eq!(
            filters
                .command(Stage::Mail(vec!["<a@b>".into()]), None, None)
                .await,
            Ok(())
        );
        assert_eq!(filters.queue_id(), None);
        assert_eq!(
            filters.end_of_message(b"A: b\r\n\r\n", "a@b", false).await,
            EndOfMessage::Accept(Vec::new())
        );
    }
}
