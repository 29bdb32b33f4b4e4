//! One client connection: reads command lines and message data, drives the
//! [`Session`] state machine, streams messages to cleanup, writes replies,
//! and enforces the timeouts. It runs the STARTTLS handshake and the AUTH
//! exchange that the session asks for. Generic over the stream, so that
//! tests run it over in-memory pipes; after STARTTLS the same code runs
//! over the TLS stream.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use empath_common::maillog;
use empath_common::protocol::{Appended, CleanupReply, Submission};
use empath_common::queue::{ClientInfo, QueueId};
use empath_common::smtp::Reply;
use empath_common::traces::{Kind as SpanKind, Span};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};
use tokio::time::Instant;

use crate::auth::{self, Mechanism};
use crate::data_decoder::{BareLineEndings, DataDecoder};
use crate::limits::Admission;
use crate::lines::{self, Line, MAX_COMMAND_LINE};
use crate::mail_filters::{self, EndOfMessage, Refusal, SessionFilters, Stage};
use crate::module_hooks::ModuleHooks;
use crate::parser::{Command, parse_command};
use crate::reply;
use crate::session::{Action, Session};
use crate::settings::Settings;
use empath_common::cleanup_client::{CHUNK_SIZE, CleanupClient};
use empath_common::config::BareLineEndings as BareLineEndingsPolicy;

/// A client stream: TCP, a TLS stream over it, or a test pipe.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}
type BoxedStream = Box<dyn Stream>;

/// Size of the input buffer. It also bounds how many pipelined commands
/// are answered in one write.
const READ_BUFFER: usize = 16 * 1024;

/// The longest we try to deliver a last 421 to a client that does not read.
const FAREWELL_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a connection ended.
#[derive(Debug)]
pub enum End {
    Quit,
    ClientClosed,
    Timeout,
    TooManyErrors,
    TooManyAuthFailures,
    /// A plugin module refused the connection (at Connect or StartTls).
    RejectedByModule,
    /// A milter refused the connection, or said 421.
    RejectedByMilter,
    /// The TLS handshake failed; nothing more can be said in clear.
    TlsFailed(String),
    Io(io::Error),
    /// smtpd is stopping and the session was idle.
    Stopping,
}

impl End {
    /// The session broke rather than ended: what
    /// `empath_smtp_connection_errors_total` counts.
    pub fn is_error(&self) -> bool {
        matches!(self, Self::Timeout | Self::TlsFailed(_) | Self::Io(_))
    }
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Quit => f.write_str("quit"),
            Self::ClientClosed => f.write_str("client closed the connection"),
            Self::Timeout => f.write_str("timeout"),
            Self::TooManyErrors => f.write_str("too many errors"),
            Self::TooManyAuthFailures => f.write_str("too many authentication failures"),
            Self::RejectedByModule => f.write_str("rejected by a module"),
            Self::RejectedByMilter => f.write_str("rejected by a milter"),
            Self::TlsFailed(error) => write!(f, "TLS handshake failed: {error}"),
            Self::Stopping => f.write_str("smtpd is stopping"),
            Self::Io(error) => write!(f, "I/O error: {error}"),
        }
    }
}

/// Serves one client until it quits, fails or times out.
pub async fn serve<S>(stream: S, peer: String, settings: Arc<Settings>) -> End
where
    S: Stream + 'static,
{
    serve_admitted(stream, peer, settings, None).await
}

/// As [`serve`], for a connection that holds `admission` against the
/// connection limits: released before the last reply is written, so the
/// client's next connection is never judged against this one.
pub async fn serve_admitted<S>(
    stream: S,
    peer: String,
    settings: Arc<Settings>,
    admission: Option<Admission>,
) -> End
where
    S: Stream + 'static,
{
    let mut connection = Connection::new(stream, peer, settings);
    maillog::connect(&connection.peer, connection.hooks.session_id());
    connection.hooks.opened();
    let end = connection.run().await;
    if let Some(admission) = admission {
        admission.release().await;
    }
    if end.is_error() {
        empath_common::metrics::get()
            .smtp_connection_errors_total
            .inc();
    }
    connection.close(&end).await;
    connection.filters.quit().await;
    connection.hooks.closed();
    maillog::disconnect(
        &connection.peer,
        &end.to_string(),
        connection.messages,
        connection.tls.is_some(),
        connection.session.authenticated_as().unwrap_or(""),
    );
    end
}

struct Connection {
    /// Reads are buffered; writes go straight through to the stream.
    io: BufReader<BoxedStream>,
    /// Replies not written yet: pipelined commands are answered in one
    /// write (RFC 2920), made before we wait for more input.
    out: Vec<u8>,
    session: Session,
    settings: Arc<Settings>,
    peer: String,
    /// When the whole session must be over (`connection_secs`).
    deadline: Instant,
    /// Messages queued in this session, for the log.
    messages: u64,
    client_ip: Option<IpAddr>,
    /// The TLS version and cipher, once STARTTLS succeeded.
    tls: Option<String>,
    /// The message of a BDAT transaction, between chunks.
    chunks: Option<Chunks>,
    /// The plugin modules' view of this session.
    hooks: ModuleHooks,
    /// A copy of the message being received, kept only while a module
    /// wants to read it at Data, or the milters and checks do (and the
    /// message is within the size limit).
    data_copy: Option<Vec<u8>>,
    /// The milters and authentication checks of this session.
    filters: SessionFilters,
    /// The SASL mechanism the client authenticated with, for the log.
    sasl_method: Option<&'static str>,
    /// When the current transaction's MAIL was accepted (Unix
    /// nanoseconds): the start of the message's `receive` span.
    mail_accepted_ns: u64,
}

/// The commands whose acceptance the modules have a say in.
#[derive(Clone, Copy)]
enum Checked {
    Ehlo,
    Mail,
    Rcpt,
}

/// A command whose refusal is logged as Postfix's `reject:` lines: its
/// stage and the addresses it named.
struct Attempt {
    stage: &'static str,
    sender: Option<String>,
    recipient: Option<String>,
}

impl Attempt {
    fn of(command: &Result<Command, crate::parser::ParseError>) -> Option<Self> {
        let (stage, sender, recipient) = match command {
            Ok(Command::Mail { from, .. }) => ("MAIL", Some(from.clone()), None),
            Ok(Command::Rcpt { to, .. }) => {
                let address = match to {
                    crate::parser::ForwardPath::Mailbox(address) => address.clone(),
                    crate::parser::ForwardPath::Postmaster => "Postmaster".to_owned(),
                };
                ("RCPT", None, Some(address))
            }
            Ok(Command::Data) => ("DATA", None, None),
            Ok(Command::Bdat { .. }) => ("BDAT", None, None),
            _ => return None,
        };
        Some(Self {
            stage,
            sender,
            recipient,
        })
    }
}

/// A message arriving in BDAT chunks (RFC 3030).
struct Chunks {
    /// `None` once the submission failed (cleanup gone or message too
    /// big); the remaining chunks are read and dropped.
    sink: Option<CleanupClient>,
    size: u64,
    too_big: bool,
    bare_line_endings: BareLineEndings,
}

impl Connection {
    fn new<S: Stream + 'static>(stream: S, peer: String, settings: Arc<Settings>) -> Self {
        let client_ip = peer
            .parse::<SocketAddr>()
            .ok()
            .map(|a| a.ip().to_canonical());
        let boxed: BoxedStream = Box::new(stream);
        let hooks = ModuleHooks::new(
            Arc::clone(&settings.modules),
            client_ip.map_or_else(|| peer.clone(), |ip| ip.to_string()),
            settings.metadata.clone(),
        );
        let filters = SessionFilters::new(settings.filters.clone(), &peer);
        Self {
            filters,
            io: BufReader::with_capacity(READ_BUFFER, boxed),
            out: Vec::new(),
            session: Session::new(Arc::clone(&settings), client_ip),
            deadline: Instant::now() + settings.timeouts.connection,
            settings,
            peer,
            messages: 0,
            client_ip,
            tls: None,
            chunks: None,
            hooks,
            data_copy: None,
            sasl_method: None,
            mail_accepted_ns: 0,
        }
    }

    async fn run(&mut self) -> End {
        // A module's refusal takes the place of the greeting (RFC 5321
        // section 3.1 allows 554 there).
        if let Err(refusal) = self.hooks.connect() {
            self.send(&refusal);
            return End::RejectedByModule;
        }
        if let Err(refusal) = self.filters.connect().await {
            self.send(&refusal);
            return End::RejectedByMilter;
        }
        self.send(&reply::greeting(&self.settings.hostname));
        loop {
            if self.session.too_many_errors() {
                self.send(&reply::too_many_errors(&self.settings.hostname));
                return End::TooManyErrors;
            }
            let line = match self.read_command().await {
                Ok(line) => line,
                Err(end) => return end,
            };
            let action = match line {
                Line::Complete(bytes) => {
                    let command = parse_command(&bytes);
                    let attempt = Attempt::of(&command);
                    let checked = match &command {
                        Ok(Command::Ehlo(_) | Command::Helo(_)) => Some(Checked::Ehlo),
                        Ok(Command::Mail { .. }) => Some(Checked::Mail),
                        Ok(Command::Rcpt { .. }) => Some(Checked::Rcpt),
                        _ => None,
                    };
                    let stage = mail_filters::stage_of(&command);
                    let action = self.session.handle(command);
                    let action = self.verify_local(checked, action).await;
                    let action = self.ask_milters(stage, action).await;
                    let action = self.ask_modules(checked, action);
                    if let (Some(Checked::Mail), Action::Reply(reply)) = (checked, &action)
                        && reply.is_positive()
                    {
                        self.mail_accepted_ns = empath_common::otlp::unix_nanos();
                    }
                    if let (Some(attempt), Action::Reply(reply) | Action::Close(reply)) =
                        (attempt, &action)
                        && !reply.is_positive()
                    {
                        self.log_rejection(attempt.stage, reply, attempt.sender, attempt.recipient);
                    }
                    action
                }
                Line::TooLong => Action::Reply(self.session.line_too_long()),
                Line::Eof => return End::ClientClosed,
            };
            match action {
                Action::Reply(reply) => self.send(&reply),
                Action::Close(reply) => {
                    self.send(&reply);
                    return End::Quit;
                }
                Action::ReceiveData => {
                    if let Err(end) = self.receive_data().await {
                        return end;
                    }
                    // Stopping: this message is done, take no new one.
                    if empath_common::daemon::draining() {
                        self.send(&reply::shutting_down(&self.settings.hostname));
                        return End::Quit;
                    }
                }
                Action::StartTls => {
                    let before = self.tls.is_some();
                    if let Err(end) = self.start_tls().await {
                        return end;
                    }
                    if !before
                        && self.tls.is_some()
                        && let Err(refusal) = self.hooks.tls_started()
                    {
                        self.send(&refusal);
                        return End::RejectedByModule;
                    }
                }
                Action::Auth { mechanism, initial } => {
                    if let Err(end) = self.authenticate(mechanism, initial).await {
                        return end;
                    }
                }
                Action::ReceiveChunk { size, last } => {
                    if let Err(end) = self.receive_chunk(size, last).await {
                        return end;
                    }
                }
                Action::DiscardChunk { size, reply } => {
                    if let Err(end) = self.read_chunk(size, None).await {
                        return end;
                    }
                    self.send(&reply);
                }
            }
            // RSET, EHLO, ... end a BDAT transaction; so does its last
            // chunk. What modules set for the transaction ends with it.
            if self.session.transaction().is_none() {
                self.chunks = None;
                self.data_copy = None;
                self.hooks.end_transaction();
                self.filters.end_transaction().await;
            }
        }
    }

    /// A recipient at a local domain that smtpd accepted must be a user or
    /// an alias: otherwise 550 5.1.1 and it is not added. The lookup
    /// blocks (alias index, user database), so it leaves the async thread.
    async fn verify_local(&mut self, checked: Option<Checked>, action: Action) -> Action {
        let accepted = matches!(&action, Action::Reply(reply) if reply.is_positive());
        if !accepted || !matches!(checked, Some(Checked::Rcpt)) {
            return action;
        }
        let Some(recipient) = self
            .session
            .transaction()
            .and_then(|t| t.recipients.last())
            .map(|r| r.address.clone())
        else {
            return action;
        };
        if !self.settings.local.is_local(&recipient) {
            return action;
        }
        let local = self.settings.local.clone();
        let refusal = tokio::task::spawn_blocking(move || {
            let refusal = local.verify(&recipient);
            (recipient, refusal)
        })
        .await;
        match refusal {
            Ok((_, None)) => action,
            Ok((recipient, Some(refusal))) => {
                tracing::info!(client = %self.peer, %recipient, reply = %refusal, "local recipient refused");
                self.session.drop_last_recipient();
                Action::Reply(refusal)
            }
            Err(_) => {
                self.session.drop_last_recipient();
                Action::Reply(Reply::new(451, "4.3.0", "Temporary lookup failure"))
            }
        }
    }

    /// HELO, MAIL or RCPT that smtpd accepted goes to the milters, which
    /// may still refuse it, as the modules after them may.
    async fn ask_milters(&mut self, stage: Option<Stage>, action: Action) -> Action {
        let accepted = matches!(&action, Action::Reply(reply) if reply.is_positive());
        let Some(stage) = stage.filter(|_| accepted) else {
            return action;
        };
        let is_rcpt = matches!(stage, Stage::Rcpt { .. });
        let last_recipient = self
            .session
            .transaction()
            .and_then(|t| t.recipients.last())
            .map(|r| r.address.clone());
        let verdict = self
            .filters
            .command(
                stage,
                last_recipient.as_deref(),
                self.session.authenticated_as(),
            )
            .await;
        let refusal = match verdict {
            Ok(()) => return action,
            Err(refusal) => refusal,
        };
        if is_rcpt {
            self.session.drop_last_recipient();
        } else if self.session.transaction().is_some() {
            self.session.finish_transaction();
        }
        match refusal {
            Refusal::Reply(reply) => Action::Reply(reply),
            Refusal::Close(reply) => Action::Close(reply),
        }
    }

    /// EHLO, MAIL or RCPT that smtpd accepted goes to the modules, which
    /// may still refuse it: a refused EHLO leaves the client ungreeted, a
    /// refused MAIL starts no transaction, a refused RCPT adds no recipient.
    fn ask_modules(&mut self, checked: Option<Checked>, action: Action) -> Action {
        let accepted = matches!(&action, Action::Reply(reply) if reply.is_positive());
        if accepted && let Some(Checked::Ehlo) = checked {
            let name = self
                .session
                .greeting()
                .map(|g| g.name.clone())
                .unwrap_or_default();
            return match self.hooks.ehlo(&name) {
                Ok(()) => action,
                Err(refusal) => {
                    self.session.forget_greeting();
                    Action::Reply(refusal)
                }
            };
        }
        let Some(transaction) = self.session.transaction().filter(|_| accepted) else {
            return action;
        };
        let verdict = match checked {
            None | Some(Checked::Ehlo) => return action,
            Some(Checked::Mail) => {
                let sender = transaction.sender.clone();
                self.hooks.mail_from(&sender).inspect_err(|_| {
                    self.session.finish_transaction();
                })
            }
            Some(Checked::Rcpt) => {
                let recipient = transaction
                    .recipients
                    .last()
                    .map(|r| r.address.clone())
                    .unwrap_or_default();
                self.hooks.rcpt_to(&recipient).inspect_err(|_| {
                    self.session.drop_last_recipient();
                })
            }
        };
        match verdict {
            Ok(()) => action,
            Err(refusal) => Action::Reply(refusal),
        }
    }

    /// STARTTLS: says 220, and runs the handshake over the same socket.
    async fn start_tls(&mut self) -> Result<(), End> {
        let Some(acceptor) = self.settings.tls.as_ref().and_then(|t| t.acceptor()) else {
            self.send(&reply::tls_unavailable());
            return Ok(());
        };
        self.send(&reply::tls_ready());
        self.flush().await?;
        // Commands pipelined after STARTTLS came in clear text and could
        // be an attacker's (CVE-2011-0411): they go with the buffer,
        // never read as if they came over TLS.
        if !self.io.buffer().is_empty() {
            tracing::warn!(client = %self.peer, "dropped clear-text input after STARTTLS");
        }
        let closed: BoxedStream = Box::new(Closed);
        let plain = std::mem::replace(&mut self.io, BufReader::new(closed));
        let handshake = acceptor.accept(plain.into_inner());
        let limit = self
            .deadline
            .min(Instant::now() + self.settings.timeouts.command);
        let stream = match tokio::time::timeout_at(limit, handshake).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => return Err(End::TlsFailed(error.to_string())),
            Err(_) => return Err(End::TlsFailed("timeout".to_owned())),
        };
        let (_, state) = stream.get_ref();
        let version = state
            .protocol_version()
            .and_then(|v| v.as_str())
            .unwrap_or("TLS");
        let cipher = state
            .negotiated_cipher_suite()
            .and_then(|c| c.suite().as_str())
            .unwrap_or("unknown");
        // "TLSv1_3" as people write it: "TLSv1.3".
        let version = version.replace('_', ".");
        self.hooks.tls_established(&version, cipher);
        self.filters.tls_started(&version, cipher);
        let description = format!("using {version} with cipher {cipher}");
        tracing::info!(client = %self.peer, tls = %description, "STARTTLS");
        self.tls = Some(description);
        let secure: BoxedStream = Box::new(stream);
        self.io = BufReader::with_capacity(READ_BUFFER, secure);
        self.session.tls_started();
        Ok(())
    }

    /// AUTH PLAIN or LOGIN: reads the responses, checks the password, and
    /// counts failures per client address.
    async fn authenticate(
        &mut self,
        mechanism: Mechanism,
        initial: Option<String>,
    ) -> Result<(), End> {
        let Some(state) = self.settings.auth.clone() else {
            self.send(&reply::not_implemented("AUTH"));
            return Ok(());
        };
        if state.blocked(self.client_ip).await {
            tracing::warn!(client = %self.peer, "AUTH refused: too many failures");
            self.send(&reply::too_many_auth_failures(&self.settings.hostname));
            return Err(End::TooManyAuthFailures);
        }
        // None: cancelled; Some(None): undecodable; Some(Some(..)): given.
        let credentials = match mechanism {
            Mechanism::Plain => {
                let response = match initial {
                    Some(response) => Some(response),
                    None => self.sasl_response("").await?,
                };
                response.map(|r| auth::decode_plain(&r))
            }
            Mechanism::Login => {
                let user = match initial {
                    Some(response) => Some(response),
                    None => self.sasl_response(&auth::encode("Username:")).await?,
                };
                match user {
                    None => None,
                    Some(user) => self
                        .sasl_response(&auth::encode("Password:"))
                        .await?
                        .map(|password| auth::decode_text(&user).zip(auth::decode_text(&password))),
                }
            }
        };
        let reply = match credentials {
            None => self.session.auth_failed(reply::auth_aborted()),
            Some(None) => self.session.auth_failed(reply::auth_bad_response()),
            Some(Some((user, password))) => {
                let method = match mechanism {
                    Mechanism::Plain => "PLAIN",
                    Mechanism::Login => "LOGIN",
                };
                if state.verify(&user, &password).await {
                    tracing::info!(client = %self.peer, %user, mechanism = method, "authenticated");
                    self.session.authenticated(user);
                    self.sasl_method = Some(method);
                    reply::auth_ok()
                } else {
                    state.record_failure(self.client_ip).await;
                    maillog::auth_failed(&self.peer, method, &user);
                    self.session.auth_failed(reply::auth_failed())
                }
            }
        };
        self.send(&reply);
        Ok(())
    }

    /// Sends a 334 challenge and reads the client's response; `None` when
    /// the client cancels with `*` (or sends an overlong line).
    async fn sasl_response(&mut self, challenge: &str) -> Result<Option<String>, End> {
        self.send(&reply::auth_challenge(challenge));
        match self.read_command().await? {
            Line::Complete(bytes) => {
                let text = String::from_utf8(bytes).unwrap_or_default();
                Ok((text.trim() != "*").then_some(text))
            }
            Line::TooLong => Ok(None),
            Line::Eof => Err(End::ClientClosed),
        }
    }

    /// One BDAT chunk of the transaction: streamed to cleanup, and the
    /// message committed after the last one.
    async fn receive_chunk(&mut self, size: u64, last: bool) -> Result<(), End> {
        let mut chunks = match self.chunks.take() {
            Some(chunks) => chunks,
            None => {
                if let Err(refusal) = self.filters.data().await {
                    self.read_chunk(size, None).await?;
                    self.session.finish_transaction();
                    return self.refuse(refusal);
                }
                self.data_copy = self.wants_content().then(Vec::new);
                Chunks {
                    sink: self.open_submission().await,
                    size: 0,
                    too_big: false,
                    bare_line_endings: BareLineEndings::default(),
                }
            }
        };
        chunks.size = chunks.size.saturating_add(size);
        if !chunks.too_big
            && self
                .settings
                .size_limit
                .is_some_and(|limit| chunks.size > limit)
        {
            chunks.too_big = true;
            self.data_copy = None;
            if let Some(sink) = chunks.sink.take() {
                sink.abort().await;
            }
        }
        self.read_chunk(
            size,
            Some((&mut chunks.sink, &mut chunks.bare_line_endings)),
        )
        .await?;
        if chunks.too_big {
            tracing::info!(client = %self.peer, size = chunks.size, "message rejected: too big");
            self.session.finish_transaction();
            self.send(&reply::message_too_big());
            return Ok(());
        }
        let Some(sink) = chunks.sink.take() else {
            self.session.finish_transaction();
            self.send(&reply::queue_error());
            return Ok(());
        };
        if !last {
            chunks.sink = Some(sink);
            self.chunks = Some(chunks);
            self.send(&reply::chunk_ok(size));
            return Ok(());
        }
        if chunks.bare_line_endings.found() && self.rejects_bare_line_endings() {
            sink.abort().await;
            self.session.finish_transaction();
            self.send(&reply::bare_line_endings());
            return Ok(());
        }
        let reply = self.commit(sink, chunks.size).await;
        self.session.finish_transaction();
        self.send(&reply);
        closing_after(&reply)
    }

    /// Opens the submission of the current transaction to cleanup.
    async fn open_submission(&mut self) -> Option<CleanupClient> {
        let submission = self.submission()?;
        let timeout = self.settings.timeouts.data_termination;
        match self.settings.cleanup.begin(submission, timeout).await {
            Ok(sink) => Some(sink),
            Err(error) => {
                tracing::warn!(client = %self.peer, %error, "cannot reach cleanup");
                None
            }
        }
    }

    /// Reads exactly `size` octets of BDAT data, streaming them to the
    /// sink if there is one (a sink that fails is dropped). Memory stays
    /// bounded by the read buffer, whatever the chunk size.
    async fn read_chunk(
        &mut self,
        size: u64,
        mut sink: Option<(&mut Option<CleanupClient>, &mut BareLineEndings)>,
    ) -> Result<(), End> {
        let mut remaining = size;
        let mut piece = Vec::with_capacity(CHUNK_SIZE.min(READ_BUFFER));
        let data_block = self.settings.timeouts.data_block;
        let mut block = Block::new(data_block);
        while remaining > 0 {
            let input = within(self.deadline, block.left(), self.io.fill_buf()).await?;
            if input.is_empty() {
                return Err(End::ClientClosed);
            }
            let take = input
                .len()
                .min(usize::try_from(remaining).unwrap_or(usize::MAX));
            piece.clear();
            piece.extend_from_slice(&input[..take]);
            block.progress(&piece, data_block);
            self.io.consume(take);
            remaining -= take as u64;
            if sink.is_some()
                && let Some(copy) = &mut self.data_copy
            {
                copy.extend_from_slice(&piece);
            }
            if let Some((slot, bare_line_endings)) = &mut sink {
                bare_line_endings.scan(&piece);
                if let Some(open) = slot
                    && let Err(error) = open.write(&piece).await
                {
                    tracing::warn!(client = %self.peer, %error, "lost cleanup while receiving a message");
                    **slot = None;
                }
            }
        }
        Ok(())
    }

    /// Says goodbye where there is something to say, and closes.
    async fn close(&mut self, end: &End) {
        if matches!(end, End::Io(_) | End::TlsFailed(_)) {
            return;
        }
        if matches!(end, End::Timeout) {
            self.send(&reply::timeout(&self.settings.hostname));
        }
        if matches!(end, End::Stopping) {
            self.send(&reply::shutting_down(&self.settings.hostname));
        }
        let goodbye = async {
            self.io.write_all(&self.out).await?;
            self.io.flush().await?;
            self.io.shutdown().await
        };
        let _ = tokio::time::timeout(FAREWELL_TIMEOUT, goodbye).await;
        self.out.clear();
    }

    /// Logs a refused MAIL, RCPT, DATA or end of data as Postfix's
    /// `NOQUEUE: reject:` line.
    fn log_rejection(
        &self,
        stage: &str,
        reply: &Reply,
        sender: Option<String>,
        recipient: Option<String>,
    ) {
        let transaction = self.session.transaction();
        let sender = sender.or_else(|| transaction.map(|t| t.sender.clone()));
        let recipient = recipient.or_else(|| {
            transaction
                .filter(|t| t.recipients.len() == 1)
                .and_then(|t| t.recipients.first())
                .map(|r| r.address.clone())
        });
        let greeting = self.session.greeting();
        maillog::rejected(&maillog::Rejection {
            stage,
            peer: &self.peer,
            reply,
            sender: sender.as_deref(),
            recipient: recipient.as_deref(),
            helo: greeting.map(|g| g.name.as_str()),
            esmtp: greeting.is_some_and(|g| g.extended),
        });
    }

    fn send(&mut self, reply: &Reply) {
        self.out.extend_from_slice(reply.to_wire().as_bytes());
        self.hooks.replied(reply);
    }

    async fn flush(&mut self) -> Result<(), End> {
        if self.out.is_empty() {
            return Ok(());
        }
        let (deadline, timeout) = (self.deadline, self.settings.timeouts.command);
        let write = async {
            self.io.write_all(&self.out).await?;
            self.io.flush().await
        };
        within(deadline, timeout, write).await?;
        self.out.clear();
        Ok(())
    }

    async fn read_command(&mut self) -> Result<Line, End> {
        // Answer what we have before we may block: when the buffer holds
        // no complete line, the next read waits for the client.
        let waiting = !self.io.buffer().contains(&b'\n');
        if waiting {
            self.flush().await?;
        }
        let reading = within(
            self.deadline,
            self.settings.timeouts.command,
            lines::read_line(&mut self.io, MAX_COMMAND_LINE),
        );
        if !waiting {
            return reading.await;
        }
        // A session waiting for its client's next command holds nothing a
        // stop would lose: it gets 421 at once rather than holding smtpd
        // until the stop's deadline.
        tokio::select! {
            biased;
            line = reading => line,
            () = empath_common::daemon::draining_started() => Err(End::Stopping),
        }
    }

    /// DATA: opens the submission to cleanup, receives the message while
    /// streaming it there, and answers with cleanup's verdict.
    async fn receive_data(&mut self) -> Result<(), End> {
        let Some(submission) = self.submission() else {
            // The session only asks for data inside a transaction.
            self.send(&reply::bad_sequence("need MAIL command"));
            return Ok(());
        };
        if let Err(refusal) = self.filters.data().await {
            self.session.finish_transaction();
            return self.refuse(refusal);
        }
        let timeout = self.settings.timeouts.data_termination;
        let sink = match self.settings.cleanup.begin(submission, timeout).await {
            Ok(sink) => sink,
            Err(error) => {
                // Refused before 354, so the client does not send a message
                // we cannot keep.
                tracing::warn!(client = %self.peer, %error, "cannot reach cleanup");
                self.session.finish_transaction();
                self.send(&reply::queue_error());
                return Ok(());
            }
        };
        self.send(&reply::start_data());
        self.flush().await?;
        self.data_copy = self.wants_content().then(Vec::new);
        let received = self.read_message(sink).await?;
        let reply = match received {
            Received::TooBig { size } => {
                tracing::info!(client = %self.peer, size, "message rejected: too big");
                reply::message_too_big()
            }
            Received::QueueFailed => reply::queue_error(),
            Received::Complete {
                sink,
                bare_line_endings: true,
                ..
            } if self.rejects_bare_line_endings() => {
                sink.abort().await;
                reply::bare_line_endings()
            }
            Received::Complete { sink, size, .. } => self.commit(sink, size).await,
        };
        if !reply.is_positive() {
            self.log_rejection("END-OF-MESSAGE", &reply, None, None);
        }
        self.session.finish_transaction();
        self.send(&reply);
        closing_after(&reply)
    }

    /// Whether a copy of the message must be kept for its end.
    fn wants_content(&self) -> bool {
        self.hooks.wants_data()
            || self
                .filters
                .wants_content(self.session.authenticated_as().is_some())
    }

    /// Says a milter's refusal of DATA; a 421 closes the session.
    fn refuse(&mut self, refusal: Refusal) -> Result<(), End> {
        match refusal {
            Refusal::Reply(reply) => {
                self.send(&reply);
                closing_after(&reply)
            }
            Refusal::Close(reply) => {
                self.send(&reply);
                Err(End::RejectedByMilter)
            }
        }
    }

    /// Ends the submission and turns cleanup's answer into the reply.
    /// Bounded by data_termination alone, not by the session deadline:
    /// once cleanup has `End` it may queue the message, and the client
    /// must hear the outcome rather than a 421.
    async fn commit(&mut self, sink: CleanupClient, size: u64) -> Reply {
        let (sender, recipients) = self
            .session
            .transaction()
            .map(|t| (t.sender.clone(), t.recipients.len()))
            .unwrap_or_default();
        let content = self.data_copy.take().unwrap_or_default();
        // The milters and checks, then the modules have the last word
        // before cleanup is told to queue.
        let authenticated = self.session.authenticated_as().is_some();
        let edits = match self
            .filters
            .end_of_message(&content, &sender, authenticated)
            .await
        {
            EndOfMessage::Accept(edits) => edits,
            EndOfMessage::Discard => {
                sink.abort().await;
                tracing::info!(client = %self.peer, from = %sender, "message discarded by a milter");
                return match self.filters.queue_id() {
                    Some(id) => reply::queued(id),
                    None => Reply::new(250, "2.0.0", "Ok"),
                };
            }
            EndOfMessage::Refuse(refusal) => {
                sink.abort().await;
                let reply = match refusal {
                    Refusal::Reply(reply) => reply,
                    // Said with a 421, which closes the session.
                    Refusal::Close(reply) => Reply { code: 421, ..reply },
                };
                tracing::info!(client = %self.peer, from = %sender, %reply, "message refused by a milter or the checks");
                return reply;
            }
        };
        if let Err(refusal) = self.hooks.data(content) {
            sink.abort().await;
            return refusal;
        }
        let mut sink = sink;
        if !edits.is_empty()
            && let Err(error) = sink.edits(edits).await
        {
            tracing::warn!(client = %self.peer, %error, "lost cleanup while sending the message's changes");
            return reply::queue_error();
        }
        // Metadata the modules set at Data goes with the message too.
        match sink.commit(self.hooks.metadata()).await {
            Ok(CleanupReply::Queued { id }) => {
                self.messages += 1;
                empath_common::metrics::get()
                    .smtp_messages_received_total
                    .inc();
                let mut span = self.receive_span(id, &sender, recipients, size);
                span.text("empath.outcome", "queued");
                let sasl = self.sasl_method.zip(self.session.authenticated_as());
                span.log_context()
                    .in_scope(|| maillog::received(id, &self.peer, sasl, &sender, recipients));
                span.end();
                self.hooks.message_received(&id.to_string(), size);
                reply::queued(id)
            }
            // 250 only ever follows `Queued`, whatever cleanup says.
            Ok(CleanupReply::Rejected(rejection)) if !rejection.is_positive() => {
                tracing::info!(client = %self.peer, reply = %rejection, "message rejected by cleanup");
                rejection
            }
            Ok(CleanupReply::Rejected(odd)) => {
                tracing::warn!(client = %self.peer, reply = %odd, "cleanup rejected with a positive reply");
                reply::queue_error()
            }
            Err(error) => {
                tracing::warn!(client = %self.peer, %error, "cleanup failed to queue the message");
                reply::queue_error()
            }
        }
    }

    /// The `receive` span of message `id`: from its MAIL to cleanup's
    /// answer.
    fn receive_span(&self, id: QueueId, sender: &str, recipients: usize, size: u64) -> Span {
        let start = match self.mail_accepted_ns {
            0 => empath_common::otlp::unix_nanos(),
            accepted => accepted,
        };
        let mut span = Span::started_at("receive", SpanKind::Server, id, start);
        span.text("empath.sender", sender)
            .number("empath.recipient_count", recipients)
            .number("empath.size", size)
            .text("client.address", &self.peer);
        span
    }

    /// Reads the message up to the end marker, decoding it into `sink`.
    /// After a failure (too big, cleanup gone) it keeps reading to the end
    /// marker, so that the client's next command is read as a command.
    async fn read_message(&mut self, sink: CleanupClient) -> Result<Received, End> {
        let size_limit = self.settings.size_limit;
        let timeouts = self.settings.timeouts;
        let mut sink = Some(sink);
        let mut too_big = false;
        let mut decoder = DataDecoder::new();
        let mut content = Vec::with_capacity(2 * READ_BUFFER);
        let mut size: u64 = 0;
        let mut block = Block::new(timeouts.data_init);
        loop {
            let input = within(self.deadline, block.left(), self.io.fill_buf()).await?;
            if input.is_empty() {
                // Dropping `sink` makes cleanup discard the submission.
                return Err(End::ClientClosed);
            }
            let decoded = decoder.feed(input, &mut content);
            block.progress(&input[..decoded.consumed], timeouts.data_block);
            self.io.consume(decoded.consumed);
            size = size.saturating_add(content.len() as u64);
            if !too_big && size_limit.is_some_and(|limit| size > limit) {
                too_big = true;
                self.data_copy = None;
                if let Some(sink) = sink.take() {
                    sink.abort().await;
                }
            }
            if let Some(open) = &mut sink
                && let Err(error) = open.write(&content).await
            {
                tracing::warn!(client = %self.peer, %error, "lost cleanup while receiving a message");
                sink = None;
            }
            if let Some(copy) = &mut self.data_copy {
                copy.extend_from_slice(&content);
            }
            content.clear();
            if decoded.finished {
                break;
            }
        }
        Ok(match sink {
            _ if too_big => Received::TooBig { size },
            Some(sink) => Received::Complete {
                sink,
                size,
                bare_line_endings: decoder.saw_bare_line_endings(),
            },
            None => Received::QueueFailed,
        })
    }

    /// `smtpd.bare_line_endings: reject`: a message with a bare CR or LF is
    /// refused (after its end, which is never one of them).
    fn rejects_bare_line_endings(&self) -> bool {
        let reject = self.settings.bare_line_endings == BareLineEndingsPolicy::Reject;
        if reject {
            tracing::info!(client = %self.peer, "message rejected: bare CR or LF");
        }
        reject
    }

    fn submission(&self) -> Option<Submission> {
        let transaction = self.session.transaction()?;
        let greeting = self.session.greeting()?;
        let mut recipients = transaction.recipients.clone();
        recipients.extend(self.hooks.added_recipients(&transaction.recipients));
        Some(Submission {
            sender: self.hooks.sender(&transaction.sender),
            recipients,
            client: ClientInfo {
                addr: self.peer.clone(),
                helo: greeting.name.clone(),
                name: None,
                protocol: self.session.protocol(),
                tls: self.tls.clone(),
                authenticated_as: self.session.authenticated_as().map(str::to_owned),
            },
            dsn: transaction.dsn(),
            // The listener's context, and what the modules set.
            metadata: self.hooks.metadata(),
            smtputf8: transaction.params.smtputf8,
            queue_id: self.filters.queue_id(),
            options: Appended(transaction.params.options()),
        })
    }
}

/// A 421 reply ends the session (RFC 5321 section 3.8): said, then the
/// connection closes.
fn closing_after(reply: &Reply) -> Result<(), End> {
    if reply.code == 421 {
        Err(End::RejectedByMilter)
    } else {
        Ok(())
    }
}

/// The data_block timeout bounds a block of message data, not each read:
/// the clock restarts only when a line ends or a good amount of data has
/// come, so a client that drips a byte at a time cannot hold a session
/// open (Postfix's per-record deadline).
struct Block {
    deadline: Instant,
    since_restart: usize,
    /// Data has come: the first wait (data_init) is over.
    started: bool,
}

impl Block {
    /// Bytes that count as progress even without a line end.
    const BULK: usize = 1024;

    fn new(first: Duration) -> Self {
        Self {
            deadline: Instant::now() + first,
            since_restart: 0,
            started: false,
        }
    }

    fn left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    fn progress(&mut self, data: &[u8], data_block: Duration) {
        self.since_restart = self.since_restart.saturating_add(data.len());
        if !self.started || data.contains(&b'\n') || self.since_restart >= Self::BULK {
            self.started = true;
            self.deadline = Instant::now() + data_block;
            self.since_restart = 0;
        }
    }
}

/// How the message data ended.
// One per message, moved once: the size of its largest variant does not
// matter.
#[allow(clippy::large_enum_variant)]
enum Received {
    Complete {
        sink: CleanupClient,
        size: u64,
        bare_line_endings: bool,
    },
    TooBig {
        size: u64,
    },
    QueueFailed,
}

/// Runs an I/O step with the phase's timeout, cut short by the session
/// deadline.
async fn within<T>(
    deadline: Instant,
    phase: Duration,
    operation: impl Future<Output = io::Result<T>>,
) -> Result<T, End> {
    let limit = deadline.min(Instant::now() + phase);
    match tokio::time::timeout_at(limit, operation).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(End::Io(error)),
        Err(_) => Err(End::Timeout),
    }
}

/// The stand-in for the stream while STARTTLS moves it into TLS.
struct Closed;

impl AsyncRead for Closed {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Closed {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, _: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Err(io::ErrorKind::NotConnected.into()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests;
