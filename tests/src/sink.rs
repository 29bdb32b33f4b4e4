//! A real SMTP sink: the remote server that smtp-out delivers to in the
//! system tests.
//!
//! It runs a tokio runtime on its own thread, so tests stay plain `#[test]`
//! functions, and records every accepted transaction. A [`SinkPolicy`]
//! makes it answer 4xx/5xx at RCPT or DATA, or hold transactions open so a
//! test can act while deliveries are in flight.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader,
    ReadHalf, WriteHalf,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The name the sink gives in its greeting and EHLO reply.
pub const SINK_HOSTNAME: &str = "sink.test";
/// Longest command or data line accepted, CRLF included. RFC 5321 allows
/// 1000; the margin keeps a slightly sloppy client from being cut off.
const MAX_LINE: u64 = 64 * 1024;
/// Largest message kept; a bigger one is read to the end and refused.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;
/// A session idle for this long is closed. Generous, because smtp-out may
/// keep a connection open for reuse.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// An SMTP reply the sink gives instead of its usual one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// The text after the code, e.g. `4.3.0 Try again later`.
    pub text: String,
}

impl Reply {
    pub fn new(code: u16, text: impl Into<String>) -> Self {
        Self {
            code,
            text: text.into(),
        }
    }

    fn line(&self) -> String {
        format!("{} {}\r\n", self.code, self.text)
    }
}

/// Where a DATA failure is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataStage {
    /// Instead of `354` to the DATA command: the content is never sent.
    Command,
    /// After the final `.`: the content was sent and is then refused.
    EndOfData,
}

#[derive(Debug, Clone)]
struct DataFailures {
    stage: DataStage,
    count: usize,
    reply: Reply,
}

/// How the sink answers. The default accepts everything.
#[derive(Debug, Clone, Default)]
pub struct SinkPolicy {
    /// Fixed replies to RCPT TO, by lower-cased address.
    rcpt_replies: HashMap<String, Reply>,
    data_failures: Option<DataFailures>,
    hold_after: Option<usize>,
    /// Offer STARTTLS with this server config.
    tls: Option<Arc<rustls::ServerConfig>>,
    /// EHLO keywords after PIPELINING; `None` means just 8BITMIME.
    extensions: Option<Vec<String>>,
}

impl SinkPolicy {
    pub fn accept_all() -> Self {
        Self::default()
    }

    /// Answers `reply` to every `RCPT TO:<address>` (case-insensitive).
    pub fn reply_to_rcpt(mut self, address: &str, reply: Reply) -> Self {
        self.rcpt_replies
            .insert(address.to_ascii_lowercase(), reply);
        self
    }

    /// Answers `reply` to the first `count` DATA commands (counted over all
    /// connections); later ones get `354` and are accepted.
    pub fn fail_first_data(self, count: usize, reply: Reply) -> Self {
        self.fail_first(DataStage::Command, count, reply)
    }

    /// Reads the content of the first `count` transactions and answers
    /// `reply` after the final `.`; later ones are accepted.
    pub fn fail_first_end_of_data(self, count: usize, reply: Reply) -> Self {
        self.fail_first(DataStage::EndOfData, count, reply)
    }

    fn fail_first(mut self, stage: DataStage, count: usize, reply: Reply) -> Self {
        self.data_failures = Some(DataFailures {
            stage,
            count,
            reply,
        });
        self
    }

    /// Once `count` messages have been accepted, later transactions wait
    /// after the final `.` (no reply yet) until [`Sink::release`]. This
    /// freezes deliveries mid-flight so a test can kill a daemon then.
    pub fn hold_after(mut self, count: usize) -> Self {
        self.hold_after = Some(count);
        self
    }

    /// Offers STARTTLS (RFC 3207) with `config` (see `empath_tests::mx::self_signed_tls`).
    pub fn starttls(mut self, config: Arc<rustls::ServerConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// Offers these EHLO keywords after PIPELINING (and STARTTLS) instead
    /// of the default `8BITMIME`, e.g. `["8BITMIME", "SMTPUTF8", "DSN"]`;
    /// `[]` offers none. `REQUIRETLS` is offered only once TLS is active,
    /// as RFC 8689 has it. The sink does not check that a client uses
    /// only what was offered: [`SinkMessage::mail_command`] shows what it
    /// sent.
    pub fn extensions(mut self, keywords: &[&str]) -> Self {
        self.extensions = Some(keywords.iter().map(|k| (*k).to_owned()).collect());
        self
    }
}

/// One accepted transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkMessage {
    /// The EHLO/HELO argument of the session.
    pub helo: String,
    /// The reverse path without angle brackets (empty for the null sender).
    pub mail_from: String,
    /// The accepted forward paths, without angle brackets, in RCPT order.
    pub rcpt_to: Vec<String>,
    /// The MAIL command as sent, parameters included, without CRLF.
    pub mail_command: String,
    /// The accepted RCPT commands as sent, without CRLF, in order.
    pub rcpt_commands: Vec<String>,
    /// The content after dot-unstuffing, without the final `.` line.
    pub data: Vec<u8>,
    /// The content as it came over the wire after the 354: dot-stuffed,
    /// with every line ending as sent, up to and including the end marker.
    pub raw: Vec<u8>,
}

#[derive(Debug, Default)]
struct State {
    policy: SinkPolicy,
    messages: Vec<SinkMessage>,
    connections: usize,
    /// DATA commands given with at least one accepted recipient.
    data_commands: usize,
    /// Contents received up to the final `.`.
    ends_of_data: usize,
    /// Transactions waiting for [`Sink::release`].
    held: usize,
    /// Completed TLS handshakes.
    tls_handshakes: usize,
    /// When each of `messages` was accepted.
    arrivals: Vec<Instant>,
}

/// State shared between the test thread and the server tasks.
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    /// `true` once [`Sink::release`] was called.
    released: watch::Sender<bool>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere must not hide what the sink recorded.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update<T>(&self, change: impl FnOnce(&mut State) -> T) -> T {
        let result = change(&mut self.lock());
        self.changed.notify_all();
        result
    }
}

/// A running SMTP sink on `127.0.0.1` with an ephemeral port. Dropping it
/// stops the server and closes every connection.
pub struct Sink {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Sink {
    /// Starts a sink that accepts everything.
    pub fn start() -> Self {
        Self::with_policy(SinkPolicy::accept_all())
    }

    pub fn with_policy(policy: SinkPolicy) -> Self {
        Self::bind(SocketAddr::from(([127, 0, 0, 1], 0)), policy)
            .unwrap_or_else(|e| panic!("bind the sink: {e}"))
    }

    /// A sink on a chosen address, e.g. `127.0.0.3` with the port of
    /// another sink (MX hosts share one port).
    pub fn bind(addr: SocketAddr, policy: SinkPolicy) -> io::Result<Self> {
        // Bind here, not on the server thread, so the address is known (and
        // a bind failure is reported) before this returns.
        let listener = std::net::TcpListener::bind(addr)?;
        listener
            .set_nonblocking(true)
            .expect("make the sink socket non-blocking");
        let addr = listener.local_addr().expect("sink address");
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                policy,
                ..State::default()
            }),
            changed: Condvar::new(),
            released: watch::channel(false).0,
        });
        let (shutdown, shutdown_rx) = tokio::sync::oneshot::channel();
        let server_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("smtp-sink-{}", addr.port()))
            .spawn(move || run_server(listener, server_shared, shutdown_rx))
            .expect("start the sink thread");
        Ok(Self {
            addr,
            shared,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the policy; sessions in progress see it from their next command.
    pub fn set_policy(&self, policy: SinkPolicy) {
        self.shared.update(|state| state.policy = policy);
    }

    /// Lets every held transaction (and all later ones) complete.
    pub fn release(&self) {
        self.shared.released.send_replace(true);
    }

    pub fn messages(&self) -> Vec<SinkMessage> {
        self.shared.lock().messages.clone()
    }

    /// Looks at the accepted messages without copying them.
    pub fn inspect<T>(&self, look: impl FnOnce(&[SinkMessage]) -> T) -> T {
        look(&self.shared.lock().messages)
    }

    pub fn message_count(&self) -> usize {
        self.shared.lock().messages.len()
    }

    pub fn connections(&self) -> usize {
        self.shared.lock().connections
    }

    /// When each accepted message arrived, in order.
    pub fn arrival_times(&self) -> Vec<Instant> {
        self.shared.lock().arrivals.clone()
    }

    /// STARTTLS handshakes that completed.
    pub fn tls_handshakes(&self) -> usize {
        self.shared.lock().tls_handshakes
    }

    /// DATA commands seen with at least one accepted recipient, whether
    /// answered with 354 or refused.
    pub fn data_commands(&self) -> usize {
        self.shared.lock().data_commands
    }

    /// Transactions whose content was received up to the final `.`,
    /// whether accepted or refused.
    pub fn ends_of_data(&self) -> usize {
        self.shared.lock().ends_of_data
    }

    /// Transactions currently waiting for [`Sink::release`].
    pub fn held(&self) -> usize {
        self.shared.lock().held
    }

    /// Waits until at least `count` messages were accepted. On timeout
    /// returns how many there were.
    pub fn wait_for_messages(
        &self,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<SinkMessage>, usize> {
        self.wait_until(timeout, |state| state.messages.len() >= count)
            .map(|state| state.messages.clone())
            .map_err(|state| state.messages.len())
    }

    /// Waits until at least `count` transactions are held.
    pub fn wait_for_held(&self, count: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |state| state.held >= count)
            .is_ok()
    }

    fn wait_until(
        &self,
        timeout: Duration,
        done: impl Fn(&State) -> bool,
    ) -> Result<MutexGuard<'_, State>, MutexGuard<'_, State>> {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        loop {
            if done(&state) {
                return Ok(state);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(state);
            }
            state = match self.shared.changed.wait_timeout(state, left) {
                Ok((state, _)) => state,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run_server(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    shutdown: tokio::sync::oneshot::Receiver<()>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("smtp sink: cannot start a runtime: {e}");
            return;
        }
    };
    runtime.block_on(async move {
        let listener = match TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(e) => {
                eprintln!("smtp sink: cannot use the listening socket: {e}");
                return;
            }
        };
        tokio::select! {
            () = accept_loop(listener, shared) => {}
            _ = shutdown => {}
        }
    });
    // Dropping the runtime cancels the sessions still running.
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                shared.update(|state| state.connections += 1);
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    // A session error only ends that session; the client
                    // sees the connection close, as with a real server.
                    let _ = Session::new(stream, shared).run().await;
                });
            }
            Err(e) => {
                // E.g. EMFILE: back off rather than spin.
                eprintln!("smtp sink: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// What one line of input turned out to be.
enum Line {
    /// A complete line, CRLF (or LF) included.
    Complete(Vec<u8>),
    /// Longer than [`MAX_LINE`] without a line end.
    TooLong,
    /// The client closed the connection.
    Closed,
}

/// Reads one line of at most [`MAX_LINE`] bytes, with the idle timeout.
async fn read_line<R: AsyncBufRead + Unpin>(reader: &mut R) -> io::Result<Line> {
    let mut line = Vec::new();
    let mut limited = (&mut *reader).take(MAX_LINE);
    let n = tokio::time::timeout(IDLE_TIMEOUT, limited.read_until(b'\n', &mut line))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "client idle too long"))??;
    Ok(if n == 0 {
        Line::Closed
    } else if line.ends_with(b"\n") {
        Line::Complete(line)
    } else if n as u64 >= MAX_LINE {
        Line::TooLong
    } else {
        // EOF in the middle of a line.
        Line::Closed
    })
}

/// A session's byte stream, before or after STARTTLS.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// The state of one SMTP session.
struct Session {
    reader: BufReader<ReadHalf<Box<dyn Io>>>,
    writer: WriteHalf<Box<dyn Io>>,
    tls_active: bool,
    shared: Arc<Shared>,
    helo: Option<String>,
    mail_from: Option<String>,
    rcpt_to: Vec<String>,
    mail_command: String,
    rcpt_commands: Vec<String>,
}

/// Whether the session goes on after a command.
enum Next {
    Continue,
    Quit,
}

impl Session {
    fn new(stream: TcpStream, shared: Arc<Shared>) -> Self {
        let boxed: Box<dyn Io> = Box::new(stream);
        let (read, writer) = tokio::io::split(boxed);
        Self {
            reader: BufReader::new(read),
            writer,
            tls_active: false,
            shared,
            helo: None,
            mail_from: None,
            rcpt_to: Vec::new(),
            mail_command: String::new(),
            rcpt_commands: Vec::new(),
        }
    }

    async fn run(mut self) -> io::Result<()> {
        self.reply(&format!("220 {SINK_HOSTNAME} ESMTP test sink\r\n"))
            .await?;
        loop {
            let line = match read_line(&mut self.reader).await? {
                Line::Complete(line) => line,
                Line::TooLong => {
                    return self.reply("500 5.5.6 Line too long\r\n").await;
                }
                Line::Closed => return Ok(()),
            };
            if let Next::Quit = self.command(&line).await? {
                return Ok(());
            }
        }
    }

    async fn reply(&mut self, text: &str) -> io::Result<()> {
        self.writer.write_all(text.as_bytes()).await?;
        self.writer.flush().await
    }

    fn reset(&mut self) {
        self.mail_from = None;
        self.rcpt_to.clear();
        self.mail_command.clear();
        self.rcpt_commands.clear();
    }

    async fn command(&mut self, line: &[u8]) -> io::Result<Next> {
        let line = String::from_utf8_lossy(line);
        let line = line.trim_end_matches(['\r', '\n']);
        let (verb, argument) = line.split_once(' ').unwrap_or((line, ""));
        match verb.to_ascii_uppercase().as_str() {
            "EHLO" => self.hello(argument, true).await?,
            "HELO" => self.hello(argument, false).await?,
            "MAIL" => self.mail(line, argument).await?,
            "RCPT" => self.rcpt(line, argument).await?,
            "DATA" => self.data().await?,
            "RSET" => {
                self.reset();
                self.reply("250 2.0.0 OK\r\n").await?;
            }
            "NOOP" => self.reply("250 2.0.0 OK\r\n").await?,
            "STARTTLS" => return self.start_tls().await,
            "VRFY" => self.reply("252 2.1.5 Cannot VRFY\r\n").await?,
            "QUIT" => {
                self.reply(&format!("221 2.0.0 {SINK_HOSTNAME} closing\r\n"))
                    .await?;
                return Ok(Next::Quit);
            }
            _ => self.reply("502 5.5.2 Command not recognized\r\n").await?,
        }
        Ok(Next::Continue)
    }

    async fn hello(&mut self, argument: &str, extended: bool) -> io::Result<()> {
        let name = argument.trim();
        if name.is_empty() {
            return self.reply("501 5.5.4 Domain name required\r\n").await;
        }
        self.helo = Some(name.to_owned());
        self.reset();
        let (offer_tls, extensions) = {
            let state = self.shared.lock();
            let extensions = state
                .policy
                .extensions
                .clone()
                .unwrap_or_else(|| vec!["8BITMIME".to_owned()]);
            (!self.tls_active && state.policy.tls.is_some(), extensions)
        };
        if extended {
            let mut lines = vec![format!("{SINK_HOSTNAME} greets {name}")];
            if offer_tls {
                lines.push("STARTTLS".to_owned());
            }
            lines.push("PIPELINING".to_owned());
            lines.extend(
                extensions
                    .into_iter()
                    .filter(|e| self.tls_active || !e.eq_ignore_ascii_case("REQUIRETLS")),
            );
            let last = lines.len() - 1;
            let reply: String = lines
                .iter()
                .enumerate()
                .map(|(n, line)| format!("250{}{line}\r\n", if n == last { ' ' } else { '-' }))
                .collect();
            self.reply(&reply).await
        } else {
            self.reply(&format!("250 {SINK_HOSTNAME} greets {name}\r\n"))
                .await
        }
    }

    /// STARTTLS: `220`, then the handshake on the same connection; the
    /// session starts over (RFC 3207 section 4.2). A failed handshake
    /// ends the session.
    async fn start_tls(&mut self) -> io::Result<Next> {
        let config = self.shared.lock().policy.tls.clone();
        let Some(config) = config.filter(|_| !self.tls_active) else {
            self.reply("454 4.7.0 TLS not available\r\n").await?;
            return Ok(Next::Continue);
        };
        self.reply("220 2.0.0 Ready to start TLS\r\n").await?;
        let placeholder: Box<dyn Io> = Box::new(tokio::io::duplex(1).0);
        let (dummy_read, dummy_write) = tokio::io::split(placeholder);
        let reader = std::mem::replace(&mut self.reader, BufReader::new(dummy_read));
        let writer = std::mem::replace(&mut self.writer, dummy_write);
        let plain = reader.into_inner().unsplit(writer);
        let tls = tokio_rustls::TlsAcceptor::from(config)
            .accept(plain)
            .await?;
        self.shared.update(|state| state.tls_handshakes += 1);
        let boxed: Box<dyn Io> = Box::new(tls);
        let (read, write) = tokio::io::split(boxed);
        self.reader = BufReader::new(read);
        self.writer = write;
        self.tls_active = true;
        self.helo = None;
        self.reset();
        Ok(Next::Continue)
    }

    async fn mail(&mut self, line: &str, argument: &str) -> io::Result<()> {
        if self.helo.is_none() {
            return self.reply("503 5.5.1 Send EHLO or HELO first\r\n").await;
        }
        if self.mail_from.is_some() {
            return self.reply("503 5.5.1 Nested MAIL command\r\n").await;
        }
        match parse_path(argument, "FROM:") {
            Some(path) => {
                self.mail_from = Some(path);
                self.mail_command = line.to_owned();
                self.reply("250 2.1.0 OK\r\n").await
            }
            None => {
                self.reply("501 5.5.4 Syntax: MAIL FROM:<address>\r\n")
                    .await
            }
        }
    }

    async fn rcpt(&mut self, line: &str, argument: &str) -> io::Result<()> {
        if self.mail_from.is_none() {
            return self.reply("503 5.5.1 Need MAIL first\r\n").await;
        }
        let Some(path) = parse_path(argument, "TO:") else {
            return self.reply("501 5.5.4 Syntax: RCPT TO:<address>\r\n").await;
        };
        let forced = self
            .shared
            .lock()
            .policy
            .rcpt_replies
            .get(&path.to_ascii_lowercase())
            .cloned();
        match forced {
            Some(reply) => self.reply(&reply.line()).await,
            None => {
                self.rcpt_to.push(path);
                self.rcpt_commands.push(line.to_owned());
                self.reply("250 2.1.5 OK\r\n").await
            }
        }
    }

    async fn data(&mut self) -> io::Result<()> {
        if self.mail_from.is_none() {
            return self.reply("503 5.5.1 Need MAIL first\r\n").await;
        }
        if self.rcpt_to.is_empty() {
            return self.reply("554 5.5.1 No valid recipients\r\n").await;
        }
        let refusal = self.shared.update(|state| {
            state.data_commands += 1;
            failure_for(state, DataStage::Command, state.data_commands)
        });
        if let Some(reply) = refusal {
            self.reset();
            return self.reply(&reply.line()).await;
        }
        self.reply("354 End data with <CR><LF>.<CR><LF>\r\n")
            .await?;
        let Some((data, raw)) = self.read_content().await? else {
            // The content was too big or the client vanished; the reply,
            // if any, was already given.
            self.reset();
            return Ok(());
        };
        let (refusal, hold) = self.shared.update(|state| {
            state.ends_of_data += 1;
            let refusal = failure_for(state, DataStage::EndOfData, state.ends_of_data);
            let hold = state
                .policy
                .hold_after
                .is_some_and(|count| state.messages.len() >= count);
            (refusal, hold)
        });
        if let Some(reply) = refusal {
            self.reset();
            return self.reply(&reply.line()).await;
        }
        if hold {
            self.wait_for_release().await;
        }
        self.accept(data, raw).await
    }

    /// Records the transaction, then answers 250. Recording first is what a
    /// real server does (commit, then reply), so a lost 250 can cause a
    /// duplicate but never a loss.
    async fn accept(&mut self, data: Vec<u8>, raw: Vec<u8>) -> io::Result<()> {
        let message = SinkMessage {
            helo: self.helo.clone().unwrap_or_default(),
            mail_from: self.mail_from.take().unwrap_or_default(),
            rcpt_to: std::mem::take(&mut self.rcpt_to),
            mail_command: std::mem::take(&mut self.mail_command),
            rcpt_commands: std::mem::take(&mut self.rcpt_commands),
            data,
            raw,
        };
        let number = self.shared.update(|state| {
            state.messages.push(message);
            state.arrivals.push(Instant::now());
            state.messages.len()
        });
        self.reply(&format!("250 2.0.0 OK queued as sink-{number}\r\n"))
            .await
    }

    async fn wait_for_release(&mut self) {
        self.shared.update(|state| state.held += 1);
        let mut released = self.shared.released.subscribe();
        // The sender lives as long as `shared`, so this only ends on release.
        let _ = released.wait_for(|released| *released).await;
        self.shared.update(|state| state.held -= 1);
    }

    /// Reads the content up to the final `.`, undoing dot-stuffing: the
    /// content, and the wire bytes. Returns `None` (after replying) when
    /// the message is too big. Like a lenient MTA, it takes `.` ended by
    /// a bare LF as the end too: a client that sends one smuggles.
    async fn read_content(&mut self) -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
        let mut data = Vec::new();
        let mut raw = Vec::new();
        let mut too_big = false;
        loop {
            let line = match read_line(&mut self.reader).await? {
                Line::Complete(line) => line,
                Line::TooLong => {
                    self.reply("500 5.5.6 Line too long\r\n").await?;
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
                }
                Line::Closed => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed during DATA",
                    ));
                }
            };
            too_big |= raw.len() + line.len() > 2 * MAX_MESSAGE;
            if !too_big {
                raw.extend_from_slice(&line);
            }
            if line == b".\r\n" || line == b".\n" {
                break;
            }
            let unstuffed = line.strip_prefix(b".").unwrap_or(&line);
            too_big |= data.len() + unstuffed.len() > MAX_MESSAGE;
            if !too_big {
                data.extend_from_slice(unstuffed);
            }
        }
        if too_big {
            self.reply("552 5.3.4 Message too big\r\n").await?;
            return Ok(None);
        }
        Ok(Some((data, raw)))
    }
}

/// The refusal the policy gives to the `nth` event at `stage`, if any.
fn failure_for(state: &State, stage: DataStage, nth: usize) -> Option<Reply> {
    state
        .policy
        .data_failures
        .as_ref()
        .filter(|failures| failures.stage == stage && nth <= failures.count)
        .map(|failures| failures.reply.clone())
}

/// Parses `FROM:<path> [params]` or `TO:<path> [params]` and returns the
/// path without brackets. `keyword` is matched case-insensitively and may
/// be followed by spaces, which some clients send.
fn parse_path(argument: &str, keyword: &str) -> Option<String> {
    let head = argument.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = argument[keyword.len()..].trim_start();
    let rest = rest.strip_prefix('<')?;
    let end = rest.find('>')?;
    Some(rest[..end].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_parsed_without_brackets_and_parameters() {
        assert_eq!(
            parse_path("FROM:<a@b.test> BODY=8BITMIME", "FROM:"),
            Some("a@b.test".to_owned())
        );
        assert_eq!(parse_path("from: <>", "FROM:"), Some(String::new()));
        assert_eq!(
            parse_path("To:<c@d.test>", "TO:"),
            Some("c@d.test".to_owned())
        );
        assert_eq!(parse_path("TO:c@d.test", "TO:"), None);
        assert_eq!(parse_path("FROM", "FROM:"), None);
    }

    #[test]
    fn only_the_first_data_commands_fail() {
        let mut state = State {
            policy: SinkPolicy::accept_all().fail_first_data(2, Reply::new(451, "4.3.0 later")),
            ..State::default()
        };
        assert!(failure_for(&state, DataStage::Command, 1).is_some());
        assert!(failure_for(&state, DataStage::Command, 2).is_some());
        assert!(failure_for(&state, DataStage::Command, 3).is_none());
        assert!(failure_for(&state, DataStage::EndOfData, 1).is_none());
        state.policy = SinkPolicy::accept_all();
        assert!(failure_for(&state, DataStage::Command, 1).is_none());
    }
}
