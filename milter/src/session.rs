//! One milter's connection for one SMTP session (as Postfix does, since
//! libmilter closes its socket when the SMTP client goes): connect,
//! negotiate, send each event with the macros the milter wants, and read
//! its replies, with a timeout on every read and write. A milter that
//! cannot be reached, times out or breaks the protocol is closed and
//! answers every later event with its default action.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use empath_common::config::{DefaultAction, MilterAddress, MilterFields};
use empath_common::edits::{Edit, is_field_name};
use empath_common::smtp::Reply;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use crate::content;
use crate::macros::{self, Macros};
use crate::protocol::{
    self, Command, Family, MacroStage, Negotiation, ProtocolError, Response, action, code, flag,
};

/// How one milter is reached and how long it may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MilterSettings {
    pub address: MilterAddress,
    /// Connecting.
    pub connect_timeout: Duration,
    /// Each read and write of the negotiation and the SMTP-stage events.
    pub command_timeout: Duration,
    /// Each read and write while the message content is inspected.
    pub content_timeout: Duration,
    pub default_action: DefaultAction,
}

impl From<&MilterFields> for MilterSettings {
    fn from(fields: &MilterFields) -> Self {
        Self {
            address: fields.address.clone(),
            connect_timeout: Duration::from_secs(fields.connect_timeout_secs),
            command_timeout: Duration::from_secs(fields.command_timeout_secs),
            content_timeout: Duration::from_secs(fields.content_timeout_secs),
            default_action: fields.default_action,
        }
    }
}

/// What an event means for the MTA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Go on.
    Continue,
    /// Refuse the command (at connect: the connection) with this reply,
    /// 4xx or 5xx.
    Reject(Reply),
    /// Accept the message and throw it away.
    Discard,
    /// Say this (421) and close the connection.
    Disconnect(Reply),
}

impl Verdict {
    pub fn is_continue(&self) -> bool {
        matches!(self, Self::Continue)
    }
}

#[derive(Debug, Error)]
pub enum MilterError {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("timed out {0}")]
    Timeout(&'static str),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("{0}")]
    Refused(String),
}

/// The SMTP client, for the connect event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// The verified host name, if any.
    pub name: Option<String>,
    /// `None` for local submission.
    pub address: Option<SocketAddr>,
}

impl Client {
    /// What Postfix sends for `sendmail` mail: localhost, 127.0.0.1.
    pub fn local() -> Self {
        Self {
            name: Some("localhost".to_owned()),
            address: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        }
    }

    fn connect_command(&self) -> Command {
        let Some(address) = self.address else {
            return Command::Connect {
                hostname: self.name.clone().unwrap_or_else(|| "localhost".to_owned()),
                family: Family::Unknown,
                port: 0,
                address: String::new(),
            };
        };
        let ip = address.ip().to_canonical();
        Command::Connect {
            // Sendmail's form for a host without a name.
            hostname: self.name.clone().unwrap_or_else(|| format!("[{ip}]")),
            family: if ip.is_ipv4() {
                Family::Inet
            } else {
                Family::Inet6
            },
            port: address.port(),
            address: ip.to_string(),
        }
    }
}

/// The events, with what Postfix attaches to each: the code, the macro
/// class, the flag that lets a milter decline it, the flag by which it
/// declines to answer, and whether the decision covers the whole
/// connection.
#[derive(Debug, Clone, Copy)]
struct Event {
    code: u8,
    stage: Option<MacroStage>,
    unwanted: u32,
    unanswered: u32,
    connection_level: bool,
    content: bool,
}

const CONNECT: Event = Event {
    code: code::CONNECT,
    stage: Some(MacroStage::Connect),
    unwanted: flag::NOCONNECT,
    unanswered: flag::NR_CONN,
    connection_level: true,
    content: false,
};
const HELO: Event = Event {
    code: code::HELO,
    stage: Some(MacroStage::Helo),
    unwanted: flag::NOHELO,
    unanswered: flag::NR_HELO,
    connection_level: true,
    content: false,
};
const MAIL: Event = Event {
    code: code::MAIL,
    stage: Some(MacroStage::Mail),
    unwanted: flag::NOMAIL,
    unanswered: flag::NR_MAIL,
    connection_level: false,
    content: false,
};
const RCPT: Event = Event {
    code: code::RCPT,
    stage: Some(MacroStage::Rcpt),
    unwanted: flag::NORCPT,
    unanswered: flag::NR_RCPT,
    connection_level: false,
    content: false,
};
const DATA: Event = Event {
    code: code::DATA,
    stage: Some(MacroStage::Data),
    unwanted: flag::NODATA,
    unanswered: flag::NR_DATA,
    connection_level: false,
    content: false,
};
const HEADER: Event = Event {
    code: code::HEADER,
    stage: Some(MacroStage::EndOfHeaders),
    unwanted: flag::NOHDRS,
    unanswered: flag::NR_HDR,
    connection_level: false,
    content: true,
};
const END_OF_HEADERS: Event = Event {
    code: code::EOH,
    stage: Some(MacroStage::EndOfHeaders),
    unwanted: flag::NOEOH,
    unanswered: flag::NR_EOH,
    connection_level: false,
    content: true,
};
const BODY: Event = Event {
    code: code::BODY,
    stage: Some(MacroStage::EndOfMessage),
    unwanted: flag::NOBODY,
    unanswered: flag::NR_BODY,
    connection_level: false,
    content: true,
};
const END_OF_BODY: Event = Event {
    code: code::BODYEOB,
    stage: Some(MacroStage::EndOfMessage),
    unwanted: 0,
    unanswered: 0,
    connection_level: false,
    content: true,
};

/// Where a milter's session stands (Postfix's MILTER8_STAT_*).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No connection (not yet, or after QUIT).
    Closed,
    /// Connected; events of the envelope and the message are sent.
    Envelope,
    /// The milter accepted the message: nothing more until the next one.
    AcceptMessage,
    /// The milter accepted the connection: nothing more at all.
    AcceptConnection,
    /// The milter failed, or refused the connection: every event gets
    /// the remembered verdict.
    Done,
}

/// What the option negotiation settled.
#[derive(Debug, Clone)]
struct Negotiated {
    /// `flag::*` bits the milter set: events it does not want or answer.
    protocol: u32,
    /// Events its protocol version does not know.
    unknown_events: u32,
    /// The macros it wants, by stage.
    macros: [Vec<String>; 7],
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One milter, for one SMTP session.
pub struct Milter {
    settings: Arc<MilterSettings>,
    stream: Option<BufReader<Box<dyn Io>>>,
    state: State,
    negotiated: Option<Negotiated>,
    /// The event the milter asked to skip (`SMFIR_SKIP`), until another
    /// event comes.
    skip: Option<u8>,
    /// What every event gets once the session is [`State::Done`].
    final_verdict: Verdict,
    /// A quarantine asked for before the end of the message.
    quarantine: Option<String>,
}

impl Milter {
    pub fn new(settings: Arc<MilterSettings>) -> Self {
        Self {
            settings,
            stream: None,
            state: State::Closed,
            negotiated: None,
            skip: None,
            final_verdict: Verdict::Continue,
            quarantine: None,
        }
    }

    pub fn address(&self) -> &MilterAddress {
        &self.settings.address
    }

    /// Connects, negotiates and sends the connect event.
    pub async fn connect(&mut self, client: &Client, macros: &Macros) -> Verdict {
        if self.state != State::Closed {
            return self.event_skipped();
        }
        if let Err(error) = self.open().await {
            return self.fail(&error);
        }
        self.state = State::Envelope;
        self.event(CONNECT, client.connect_command(), macros, None)
            .await
    }

    pub async fn helo(&mut self, name: &str, macros: &Macros) -> Verdict {
        self.event(HELO, Command::Helo(name.to_owned()), macros, None)
            .await
    }

    pub async fn mail(&mut self, args: &[String], macros: &Macros) -> Verdict {
        self.event(MAIL, Command::Mail(args.to_vec()), macros, None)
            .await
    }

    pub async fn rcpt(&mut self, args: &[String], macros: &Macros) -> Verdict {
        self.event(RCPT, Command::Rcpt(args.to_vec()), macros, None)
            .await
    }

    pub async fn data(&mut self, macros: &Macros) -> Verdict {
        self.event(DATA, Command::Data, macros, None).await
    }

    /// The message: each header field, the end of the headers, the body in
    /// chunks and the end of the body, after which the milter says what
    /// to change. The changes come back only when the verdict is
    /// [`Verdict::Continue`].
    pub async fn message(&mut self, message: &[u8], macros: &Macros) -> (Verdict, Vec<Edit>) {
        if self.state != State::Envelope {
            let verdict = self.event_skipped();
            self.end_message();
            return (verdict, Vec::new());
        }
        let leading_space = self
            .negotiated
            .as_ref()
            .is_some_and(|n| n.protocol & flag::HDR_LEADSPC != 0);
        let (fields, body) = content::split(message);
        for field in &fields {
            let value = content::value_for_milter(&field.value, leading_space).to_vec();
            let command = Command::Header {
                name: field.name.clone(),
                value,
            };
            let verdict = self.event(HEADER, command, macros, None).await;
            if !self.in_message(&verdict) {
                return self.message_over(verdict);
            }
        }
        let verdict = self
            .event(END_OF_HEADERS, Command::EndOfHeaders, macros, None)
            .await;
        if !self.in_message(&verdict) {
            return self.message_over(verdict);
        }
        for chunk in content::body_chunks(body) {
            let verdict = self
                .event(BODY, Command::Body(chunk.to_vec()), macros, None)
                .await;
            if !self.in_message(&verdict) {
                return self.message_over(verdict);
            }
            // SMFIR_SKIP: the milter has seen enough of the body.
            if self.skip == Some(code::BODY) {
                break;
            }
        }
        let mut edits = Vec::new();
        let verdict = self
            .event(END_OF_BODY, Command::EndOfBody, macros, Some(&mut edits))
            .await;
        if let Some(reason) = self.quarantine.take() {
            edits.insert(0, Edit::Quarantine { reason });
        }
        self.end_message();
        if verdict.is_continue() {
            (verdict, edits)
        } else {
            (verdict, Vec::new())
        }
    }

    /// True while the message's events should go on.
    fn in_message(&self, verdict: &Verdict) -> bool {
        verdict.is_continue() && self.state == State::Envelope
    }

    fn message_over(&mut self, verdict: Verdict) -> (Verdict, Vec<Edit>) {
        let mut edits = Vec::new();
        if verdict.is_continue()
            && let Some(reason) = self.quarantine.take()
        {
            edits.push(Edit::Quarantine { reason });
        }
        self.end_message();
        (verdict, edits)
    }

    fn end_message(&mut self) {
        if self.state == State::AcceptMessage {
            self.state = State::Envelope;
        }
        self.quarantine = None;
        self.skip = None;
    }

    /// The transaction ended without a complete message (RSET, a
    /// rejection, a lost client): the milter forgets it.
    pub async fn abort(&mut self) {
        self.quarantine = None;
        self.skip = None;
        if !matches!(self.state, State::Envelope | State::AcceptMessage) {
            return;
        }
        self.state = State::Envelope;
        let timeout = self.settings.command_timeout;
        if let Err(error) = self.send(&Command::Abort.encode(), timeout).await {
            self.fail(&error);
        }
    }

    /// The SMTP session is over.
    pub async fn quit(&mut self) {
        if self.stream.is_some() {
            let timeout = self.settings.command_timeout;
            let _ = self.send(&Command::Quit.encode(), timeout).await;
        }
        self.close();
        self.state = State::Closed;
    }

    fn close(&mut self) {
        self.stream = None;
    }

    /// What an event gets without being sent.
    fn event_skipped(&self) -> Verdict {
        match self.state {
            State::Done => self.final_verdict.clone(),
            _ => Verdict::Continue,
        }
    }

    /// The verdict of the default action, after a failure.
    fn default_verdict(&self) -> Verdict {
        match self.settings.default_action {
            DefaultAction::Accept => Verdict::Continue,
            DefaultAction::Tempfail => Verdict::Reject(Reply::new(
                451,
                "4.7.1",
                "Service unavailable - try again later",
            )),
            DefaultAction::Reject => {
                Verdict::Reject(Reply::new(550, "5.5.0", "Service unavailable"))
            }
        }
    }

    /// Gives up on the milter: closes it, and every later event gets the
    /// default action.
    fn fail(&mut self, error: &MilterError) -> Verdict {
        tracing::warn!(milter = %self.settings.address, %error, action = ?self.settings.default_action, "milter failed; using its default action");
        self.close();
        self.state = State::Done;
        self.final_verdict = self.default_verdict();
        self.final_verdict.clone()
    }

    /// A decision for the whole connection: remembered for every later
    /// event, and the socket closed (libmilter expects no more).
    fn decide_connection(&mut self, verdict: Verdict) -> Verdict {
        self.close();
        if verdict.is_continue() {
            self.state = State::AcceptConnection;
        } else {
            self.state = State::Done;
            self.final_verdict = verdict.clone();
        }
        verdict
    }

    async fn open(&mut self) -> Result<(), MilterError> {
        let settings = Arc::clone(&self.settings);
        let connect = async {
            let stream: Box<dyn Io> = match &settings.address {
                MilterAddress::Inet { host, port } => {
                    let stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                    stream.set_nodelay(true)?;
                    Box::new(stream)
                }
                MilterAddress::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
            };
            Ok::<_, std::io::Error>(stream)
        };
        let stream = tokio::time::timeout(settings.connect_timeout, connect)
            .await
            .map_err(|_| MilterError::Timeout("connecting"))?
            .map_err(MilterError::Connect)?;
        self.stream = Some(BufReader::new(stream));
        let offer = Command::Negotiate(Negotiation {
            version: protocol::VERSION,
            actions: action::ALL,
            protocol: flag::OFFERED,
            macros: Vec::new(),
        });
        self.send(&offer.encode(), settings.command_timeout).await?;
        let Response::Negotiate(answer) = self.receive(settings.command_timeout).await? else {
            return Err(MilterError::Refused(
                "the milter did not answer the option negotiation".to_owned(),
            ));
        };
        self.negotiated = Some(negotiate(&answer)?);
        Ok(())
    }

    async fn send(&mut self, bytes: &[u8], timeout: Duration) -> Result<(), MilterError> {
        let Some(stream) = self.stream.as_mut() else {
            return Err(MilterError::Refused("not connected".to_owned()));
        };
        let write = async {
            let inner = stream.get_mut();
            inner.write_all(bytes).await?;
            inner.flush().await
        };
        tokio::time::timeout(timeout, write)
            .await
            .map_err(|_| MilterError::Timeout("writing"))??;
        Ok(())
    }

    async fn receive(&mut self, timeout: Duration) -> Result<Response, MilterError> {
        let Some(stream) = self.stream.as_mut() else {
            return Err(MilterError::Refused("not connected".to_owned()));
        };
        let read = async {
            let length = stream.read_u32().await? as usize;
            if length == 0 || length > protocol::MAX_PACKET {
                return Err(MilterError::Protocol(ProtocolError::BadLength(length)));
            }
            let mut packet = vec![0; length];
            stream.read_exact(&mut packet).await?;
            Ok(Response::decode(packet[0], &packet[1..])?)
        };
        tokio::time::timeout(timeout, read)
            .await
            .map_err(|_| MilterError::Timeout("waiting for the milter"))?
    }

    /// Sends one event (after its macros) and reads the milter's answer;
    /// at the end of the body, its modification requests go to `edits`.
    async fn event(
        &mut self,
        event: Event,
        command: Command,
        macros: &Macros,
        edits: Option<&mut Vec<Edit>>,
    ) -> Verdict {
        match self.state {
            State::Envelope => {}
            State::AcceptMessage if event.connection_level => {}
            _ => return self.event_skipped(),
        }
        let Some(negotiated) = self.negotiated.as_ref() else {
            return self.event_skipped();
        };
        if event.unwanted & negotiated.unknown_events != 0 {
            return Verdict::Continue;
        }
        if let Some(skipped) = self.skip {
            if skipped == event.code {
                return Verdict::Continue;
            }
            self.skip = None;
        }
        let timeout = if event.content {
            self.settings.content_timeout
        } else {
            self.settings.command_timeout
        };
        // The macros go even when the event itself does not, as Postfix
        // sends them.
        let mut bytes = Vec::new();
        if let Some(stage) = event.stage {
            let pairs = macros.pairs(&negotiated.macros[stage as usize]);
            if !pairs.is_empty() {
                bytes.extend(
                    Command::Macros {
                        event: event.code,
                        pairs,
                    }
                    .encode(),
                );
            }
        }
        let wanted = event.unwanted & negotiated.protocol == 0;
        let answered = event.unanswered & negotiated.protocol == 0;
        let leading_space = negotiated.protocol & flag::HDR_LEADSPC != 0;
        if wanted {
            bytes.extend(command.encode());
        }
        if !bytes.is_empty()
            && let Err(error) = self.send(&bytes, timeout).await
        {
            return self.fail(&error);
        }
        if !wanted || !answered {
            return Verdict::Continue;
        }
        match self.answer(event, timeout, edits, leading_space).await {
            Ok(verdict) => verdict,
            Err(error) => self.fail(&error),
        }
    }

    /// Reads replies until the milter decides.
    async fn answer(
        &mut self,
        event: Event,
        timeout: Duration,
        mut edits: Option<&mut Vec<Edit>>,
        leading_space: bool,
    ) -> Result<Verdict, MilterError> {
        let mut new_body: Option<Vec<u8>> = None;
        let verdict = loop {
            let response = self.receive(timeout).await?;
            let response_code = response.code();
            match response {
                // Keep-alive: the milter is still working on it.
                Response::Progress => continue,
                Response::Continue => break Verdict::Continue,
                Response::Accept => {
                    if event.connection_level {
                        return Ok(self.decide_connection(Verdict::Continue));
                    }
                    self.state = State::AcceptMessage;
                    break Verdict::Continue;
                }
                Response::Discard if event.connection_level => {
                    tracing::warn!(milter = %self.settings.address, "DISCARD is not allowed at connect or HELO; ignored");
                    break Verdict::Continue;
                }
                Response::Discard => {
                    self.state = State::AcceptMessage;
                    break Verdict::Discard;
                }
                Response::Reject => {
                    break Verdict::Reject(Reply::new(550, "5.7.1", "Command rejected"));
                }
                Response::Tempfail => {
                    break Verdict::Reject(Reply::new(
                        451,
                        "4.7.1",
                        "Service unavailable - try again later",
                    ));
                }
                Response::Shutdown => {
                    return Ok(self.decide_connection(Verdict::Disconnect(Reply::new(
                        421,
                        "4.7.0",
                        "Service unavailable",
                    ))));
                }
                Response::ReplyCode(text) => {
                    let lines = protocol::reply_lines(&text)?;
                    let reply = Reply::parse_lines(&lines)
                        .map_err(|_| MilterError::Refused("unreadable reply".to_owned()))?;
                    break Verdict::Reject(reply);
                }
                Response::Quarantine(reason) => {
                    // Not a decision: the message goes on, to hold/.
                    let reason = if reason.trim().is_empty() {
                        "quarantined by a milter".to_owned()
                    } else {
                        reason
                            .chars()
                            .filter(|c| !c.is_control())
                            .take(100)
                            .collect()
                    };
                    self.quarantine.get_or_insert(reason);
                    continue;
                }
                Response::Skip => {
                    self.skip = Some(event.code);
                    break Verdict::Continue;
                }
                Response::ReplaceBody(chunk) if edits.is_some() => {
                    new_body.get_or_insert_with(Vec::new).extend(chunk);
                    continue;
                }
                modification => match (edits.as_deref_mut(), edit_for(modification, leading_space))
                {
                    (Some(edits), Ok(Some(edit))) => {
                        edits.push(edit);
                        continue;
                    }
                    (_, Err(error)) => return Err(error),
                    (None, _) | (Some(_), Ok(None)) => {
                        return Err(MilterError::Refused(format!(
                            "unexpected reply {:?} to event {:?}",
                            char::from(response_code),
                            char::from(event.code)
                        )));
                    }
                },
            }
        };
        if let (Some(edits), Some(body)) = (edits, new_body) {
            edits.push(Edit::ReplaceBody { body });
        }
        if event.connection_level && !verdict.is_continue() {
            return Ok(self.decide_connection(verdict));
        }
        Ok(verdict)
    }
}

/// The edit a modification request stands for; `None` for a response
/// that is not a modification.
fn edit_for(response: Response, leading_space: bool) -> Result<Option<Edit>, MilterError> {
    // Without SMFIP_HDR_LEADSPC the milter's value lacks the space after
    // the colon, which Sendmail adds back.
    let value = |value: Vec<u8>| {
        if leading_space {
            value
        } else {
            let mut spaced = Vec::with_capacity(value.len() + 1);
            spaced.push(b' ');
            spaced.extend(value);
            spaced
        }
    };
    let checked = |name: String| {
        if is_field_name(&name) {
            Ok(name)
        } else {
            Err(MilterError::Refused(format!(
                "invalid header name {name:?}"
            )))
        }
    };
    Ok(Some(match response {
        Response::AddHeader { name, value: v } => Edit::AddHeader {
            name: checked(name)?,
            value: value(v),
        },
        Response::InsertHeader {
            index,
            name,
            value: v,
        } => Edit::InsertHeader {
            index: index as usize,
            name: checked(name)?,
            value: value(v),
        },
        Response::ChangeHeader {
            index,
            name,
            value: v,
        } if v.is_empty() => Edit::DeleteHeader {
            name: checked(name)?,
            occurrence: index as usize,
        },
        Response::ChangeHeader {
            index,
            name,
            value: v,
        } => Edit::ChangeHeader {
            name: checked(name)?,
            occurrence: index as usize,
            value: value(v),
        },
        Response::AddRecipient(address) => Edit::AddRecipient {
            address,
            parameters: String::new(),
        },
        Response::AddRecipientWithParameters {
            address,
            parameters,
        } => Edit::AddRecipient {
            address,
            parameters,
        },
        Response::DeleteRecipient(address) => Edit::DeleteRecipient { address },
        Response::ChangeSender {
            address,
            parameters,
        } => Edit::ChangeSender {
            address,
            parameters,
        },
        _ => return Ok(None),
    }))
}

/// Checks the milter's side of the negotiation, as Postfix does: no newer
/// protocol than ours, no action we did not offer. A milter of an older
/// version gets only the events its version knows.
fn negotiate(answer: &Negotiation) -> Result<Negotiated, MilterError> {
    if answer.version > protocol::VERSION || answer.version < 2 {
        return Err(MilterError::Refused(format!(
            "protocol version {} is not supported (2 to {})",
            answer.version,
            protocol::VERSION
        )));
    }
    if answer.actions & !action::ALL != 0 {
        return Err(MilterError::Refused(format!(
            "the milter asks for actions 0x{:x}, offered 0x{:x}",
            answer.actions,
            action::ALL
        )));
    }
    let unknown_events = flag::NOSEND_MASK & !flag::events_of_version(answer.version);
    let mut macros: [Vec<String>; 7] = MacroStage::ALL.map(macros::default_names);
    for (stage, names) in &answer.macros {
        macros[*stage as usize] = macros::parse_names(names);
    }
    Ok(Negotiated {
        protocol: answer.protocol,
        unknown_events,
        macros,
    })
}

/// The milters of one SMTP session (or one local submission), in order.
/// An event goes to each in turn until one does not say continue.
pub struct Milters {
    milters: Vec<Milter>,
    in_transaction: bool,
}

impl Milters {
    pub fn new(settings: &[Arc<MilterSettings>]) -> Self {
        Self {
            milters: settings.iter().cloned().map(Milter::new).collect(),
            in_transaction: false,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.milters.is_empty()
    }

    pub async fn connect(&mut self, client: &Client, macros: &Macros) -> Verdict {
        for milter in &mut self.milters {
            let verdict = milter.connect(client, macros).await;
            if !verdict.is_continue() {
                return verdict;
            }
        }
        Verdict::Continue
    }

    /// HELO or EHLO; a transaction in progress is aborted first.
    pub async fn helo(&mut self, name: &str, macros: &Macros) -> Verdict {
        self.abort().await;
        for milter in &mut self.milters {
            let verdict = milter.helo(name, macros).await;
            if !verdict.is_continue() {
                return verdict;
            }
        }
        Verdict::Continue
    }

    /// MAIL: `args` are `<address>` and the ESMTP parameters.
    pub async fn mail(&mut self, args: &[String], macros: &Macros) -> Verdict {
        self.abort().await;
        self.in_transaction = true;
        for milter in &mut self.milters {
            let verdict = milter.mail(args, macros).await;
            if !verdict.is_continue() {
                return verdict;
            }
        }
        Verdict::Continue
    }

    pub async fn rcpt(&mut self, args: &[String], macros: &Macros) -> Verdict {
        for milter in &mut self.milters {
            let verdict = milter.rcpt(args, macros).await;
            if !verdict.is_continue() {
                return verdict;
            }
        }
        Verdict::Continue
    }

    pub async fn data(&mut self, macros: &Macros) -> Verdict {
        for milter in &mut self.milters {
            let verdict = milter.data(macros).await;
            if !verdict.is_continue() {
                return verdict;
            }
        }
        Verdict::Continue
    }

    /// The message, to each milter in turn; each sees what the ones
    /// before it changed. Returns the verdict and, when it is
    /// [`Verdict::Continue`], every milter's changes in order.
    pub async fn message(&mut self, message: &[u8], macros: &Macros) -> (Verdict, Vec<Edit>) {
        let mut all_edits: Vec<Edit> = Vec::new();
        let mut current: Option<Vec<u8>> = None;
        for milter in &mut self.milters {
            let view = current.as_deref().unwrap_or(message);
            let (verdict, edits) = milter.message(view, macros).await;
            if !verdict.is_continue() {
                self.in_transaction = false;
                return (verdict, Vec::new());
            }
            if edits.iter().any(Edit::changes_content) {
                current = Some(empath_common::edits::apply_to_content(view, &edits));
            }
            all_edits.extend(edits);
        }
        self.in_transaction = false;
        (Verdict::Continue, all_edits)
    }

    /// The transaction ended without a message: milters that saw it are
    /// told to forget it.
    pub async fn abort(&mut self) {
        if !self.in_transaction {
            return;
        }
        self.in_transaction = false;
        for milter in &mut self.milters {
            milter.abort().await;
        }
    }

    /// The session is over.
    pub async fn quit(&mut self) {
        for milter in &mut self.milters {
            milter.quit().await;
        }
    }
}
