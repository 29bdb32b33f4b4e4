//! A misbehaving SMTP server: the next hop as a broken or hostile server
//! would be, for the tests of what smtp-out records as delivered.
//!
//! For its first `bad_transactions` transactions (counted over all
//! connections) it breaks the protocol in one chosen way; afterwards it is
//! a correct server. It records the messages it really accepted: the whole
//! content received up to the final `.`, and only then a 250. Anything
//! smtp-out calls delivered that is not among those is lost mail.
//!
//! It speaks SMTP, or LMTP (RFC 2033: LHLO, and one reply per recipient
//! after the content); in LMTP it records each recipient it accepted.
//!
//! Blocking I/O on a thread per connection: the server is simple enough
//! that its misbehaviour stays easy to read.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the server breaks the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misbehaviour {
    /// `250` to DATA instead of `354`: the content is never sent.
    DataGets250,
    /// After `354`, a `250` once the first content line arrived; then it
    /// stops reading for a while, reads the rest and answers the final `.`
    /// with `451`. The message is not accepted.
    EarlyReplyInBody,
    /// An early `250` in the middle of a short body, then the real `250`
    /// after the final `.` (that message is accepted), keeping the
    /// connection: every later reply on it is one behind.
    EarlyReplyThenReuse,
    /// One reply too many to a pipelined MAIL: every reply after it is
    /// one behind. Nothing is accepted.
    ExtraReplyWhilePipelining,
    /// A malformed line in place of the reply to the final `.`, from
    /// [`MALFORMED_REPLIES`] in turn. Nothing is accepted.
    MalformedFinalReply,
    /// `354`, the content up to the final `.`, then the connection is
    /// closed without a reply.
    CloseAfterContent,
}

/// Lines that a loose parser would read as a `250` reply.
pub const MALFORMED_REPLIES: [&[u8]; 4] = [b"2500 x\r\n", b"250\0x\r\n", b"25\r\n", b"abc\r\n"];

/// One message the server accepted correctly.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    /// The content after dot-unstuffing, without the final `.` line.
    pub data: Vec<u8>,
}

struct Shared {
    lmtp: bool,
    misbehaviour: Misbehaviour,
    bad_transactions: usize,
    /// Transactions that reached DATA, over all connections.
    transactions: AtomicUsize,
    misbehaved: AtomicUsize,
    accepted: Mutex<Vec<Accepted>>,
    stop: AtomicBool,
}

/// A running rogue server on `127.0.0.1`, with an ephemeral port.
pub struct RogueServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl RogueServer {
    pub fn start(misbehaviour: Misbehaviour, bad_transactions: usize) -> Self {
        Self::start_speaking(false, misbehaviour, bad_transactions)
    }

    /// An LMTP server. In LMTP, [`Misbehaviour::MalformedFinalReply`]
    /// answers the first recipient correctly and then sends a malformed
    /// line, and [`Misbehaviour::CloseAfterContent`] answers the first
    /// recipient (accepting it) and then hangs up.
    pub fn start_lmtp(misbehaviour: Misbehaviour, bad_transactions: usize) -> Self {
        Self::start_speaking(true, misbehaviour, bad_transactions)
    }

    fn start_speaking(lmtp: bool, misbehaviour: Misbehaviour, bad_transactions: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the rogue server");
        // A small receive buffer, so that a large body cannot vanish into
        // kernel buffers: the client is still writing when an early reply
        // arrives.
        let fd = std::os::fd::AsFd::as_fd(&listener);
        let _ = nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::RcvBuf, &16_384);
        let addr = listener.local_addr().expect("rogue server address");
        let shared = Arc::new(Shared {
            lmtp,
            misbehaviour,
            bad_transactions,
            transactions: AtomicUsize::new(0),
            misbehaved: AtomicUsize::new(0),
            accepted: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let server = Arc::clone(&shared);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if server.stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let session = Arc::clone(&server);
                std::thread::spawn(move || {
                    // A client that goes away mid-session is expected.
                    let _ = Session::new(stream, session).run();
                });
            }
        });
        Self { addr, shared }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The messages accepted correctly, in order.
    pub fn accepted(&self) -> Vec<Accepted> {
        self.shared
            .accepted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How many transactions the server broke.
    pub fn misbehaved(&self) -> usize {
        self.shared.misbehaved.load(Ordering::Relaxed)
    }
}

impl Drop for RogueServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

struct Session {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    shared: Arc<Shared>,
    mail_from: String,
    rcpt_to: Vec<String>,
}

enum Next {
    Continue,
    Close,
}

impl Session {
    fn new(stream: TcpStream, shared: Arc<Shared>) -> Self {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(120)));
        let writer = stream.try_clone().expect("clone the rogue stream");
        Self {
            reader: BufReader::new(stream),
            writer,
            shared,
            mail_from: String::new(),
            rcpt_to: Vec::new(),
        }
    }

    fn say(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.writer.write_all(bytes)
    }

    fn line(&mut self) -> io::Result<Option<Vec<u8>>> {
        let mut line = Vec::new();
        if self.reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(None);
        }
        Ok(Some(line))
    }

    fn run(mut self) -> io::Result<()> {
        self.say(b"220 rogue.test ESMTP\r\n")?;
        while let Some(line) = self.line()? {
            let text = String::from_utf8_lossy(&line).trim_end().to_owned();
            let verb = text
                .split([' ', ':'])
                .next()
                .unwrap_or("")
                .to_ascii_uppercase();
            let next = match verb.as_str() {
                "EHLO" | "LHLO" => self
                    .say(b"250-rogue.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
                    .map(|()| Next::Continue)?,
                "HELO" | "NOOP" => self.say(b"250 ok\r\n").map(|()| Next::Continue)?,
                "RSET" => {
                    self.mail_from.clear();
                    self.rcpt_to.clear();
                    self.say(b"250 2.0.0 reset\r\n").map(|()| Next::Continue)?
                }
                "MAIL" => self.mail(&text)?,
                "RCPT" => {
                    self.rcpt_to.push(path(&text));
                    self.say(b"250 2.1.5 ok\r\n").map(|()| Next::Continue)?
                }
                "DATA" => self.data()?,
                "QUIT" => {
                    self.say(b"221 bye\r\n")?;
                    Next::Close
                }
                _ => self.say(b"500 5.5.2 what?\r\n").map(|()| Next::Continue)?,
            };
            if let Next::Close = next {
                break;
            }
        }
        let _ = self.writer.shutdown(Shutdown::Both);
        Ok(())
    }

    /// Counts one more transaction, at the point where it would break the
    /// rules, and says whether it does.
    fn take_turn(&self) -> bool {
        let number = self.shared.transactions.fetch_add(1, Ordering::SeqCst);
        let bad = number < self.shared.bad_transactions;
        if bad {
            self.shared.misbehaved.fetch_add(1, Ordering::SeqCst);
        }
        bad
    }

    /// The pipelining misbehaviour happens at MAIL, the others at DATA.
    fn breaks_at_mail(&self) -> bool {
        self.shared.misbehaviour == Misbehaviour::ExtraReplyWhilePipelining
    }

    fn mail(&mut self, text: &str) -> io::Result<Next> {
        self.mail_from = path(text);
        self.rcpt_to.clear();
        if self.breaks_at_mail() && self.take_turn() {
            self.say(b"250 2.1.0 ok\r\n250 2.1.0 ok again\r\n")?;
        } else {
            self.say(b"250 2.1.0 ok\r\n")?;
        }
        Ok(Next::Continue)
    }

    fn data(&mut self) -> io::Result<Next> {
        if self.rcpt_to.is_empty() {
            self.say(b"554 5.5.1 no valid recipients\r\n")?;
            return Ok(Next::Continue);
        }
        if self.breaks_at_mail() || !self.take_turn() {
            return self.accept_content();
        }
        match self.shared.misbehaviour {
            Misbehaviour::DataGets250 => {
                self.say(b"250 2.0.0 DATA accepted without content\r\n")?;
                Ok(Next::Continue)
            }
            Misbehaviour::EarlyReplyInBody => {
                self.say(b"354 go ahead\r\n")?;
                self.line()?;
                self.say(b"250 2.0.0 ok early\r\n")?;
                // Let the client run into its full send buffer.
                std::thread::sleep(Duration::from_millis(300));
                self.read_content()?;
                self.say(b"451 4.3.0 that early reply was not an answer\r\n")?;
                Ok(Next::Continue)
            }
            Misbehaviour::EarlyReplyThenReuse => {
                self.say(b"354 go ahead\r\n")?;
                self.line()?;
                self.say(b"250 2.0.0 ok early\r\n")?;
                let data = self.read_content()?;
                self.say(b"250 2.0.0 ok\r\n")?;
                self.record(data);
                Ok(Next::Continue)
            }
            Misbehaviour::MalformedFinalReply => {
                self.say(b"354 go ahead\r\n")?;
                let data = self.read_content()?;
                if self.shared.lmtp {
                    // The first recipient's reply is fine; the next is not.
                    self.say(b"250 2.0.0 first recipient saved\r\n")?;
                    self.record_first(&data);
                }
                let which = self.shared.misbehaved.load(Ordering::SeqCst) - 1;
                self.say(MALFORMED_REPLIES[which % MALFORMED_REPLIES.len()])?;
                Ok(Next::Continue)
            }
            Misbehaviour::CloseAfterContent => {
                self.say(b"354 go ahead\r\n")?;
                let data = self.read_content()?;
                if self.shared.lmtp {
                    // The first recipient really is delivered.
                    self.say(b"250 2.0.0 first recipient saved\r\n")?;
                    self.record_first(&data);
                }
                Ok(Next::Close)
            }
            Misbehaviour::ExtraReplyWhilePipelining => unreachable!("it breaks at MAIL"),
        }
    }

    fn accept_content(&mut self) -> io::Result<Next> {
        self.say(b"354 go ahead\r\n")?;
        let data = self.read_content()?;
        if self.shared.lmtp {
            for _ in 0..self.rcpt_to.len() {
                self.say(b"250 2.0.0 saved\r\n")?;
            }
        } else {
            self.say(b"250 2.0.0 ok: queued\r\n")?;
        }
        self.record(data);
        Ok(Next::Continue)
    }

    /// Records the first recipient alone as accepted (LMTP, where each
    /// recipient has its own reply).
    fn record_first(&mut self, data: &[u8]) {
        let first = self.rcpt_to.first().cloned().unwrap_or_default();
        self.shared
            .accepted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Accepted {
                mail_from: self.mail_from.clone(),
                rcpt_to: vec![first],
                data: data.to_vec(),
            });
    }

    fn record(&mut self, data: Vec<u8>) {
        let accepted = Accepted {
            mail_from: std::mem::take(&mut self.mail_from),
            rcpt_to: std::mem::take(&mut self.rcpt_to),
            data,
        };
        self.shared
            .accepted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(accepted);
    }

    /// The content up to the final `.`, dot-unstuffed.
    fn read_content(&mut self) -> io::Result<Vec<u8>> {
        let mut data = Vec::new();
        loop {
            let Some(line) = self.line()? else {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "client left during DATA",
                ));
            };
            if line == b".\r\n" {
                return Ok(data);
            }
            let unstuffed = line.strip_prefix(b".").unwrap_or(&line);
            data.extend_from_slice(unstuffed);
        }
    }
}

/// The address inside `<...>` of a MAIL or RCPT command.
fn path(command: &str) -> String {
    command
        .split_once('<')
        .and_then(|(_, rest)| rest.split_once('>'))
        .map(|(address, _)| address.to_owned())
        .unwrap_or_default()
}
