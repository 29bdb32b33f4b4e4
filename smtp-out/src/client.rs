//! The outbound SMTP client: one transaction to one host, with a timeout on
//! every phase, and one result per recipient.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use empath_common::config::ClientTimeouts;
use empath_common::ipc;
use empath_common::smtp::{Reply, ReplyLine};
use rustls::pki_types::ServerName;
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader,
    ReadBuf,
};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Replies longer than this many lines, or lines longer than this many
/// bytes, mean the server is broken.
const MAX_REPLY_LINES: usize = 100;
const MAX_LINE: usize = 4096;

/// Why a session ended before the server answered the transaction.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("connect to {host}: {detail}")]
    Connect { host: String, detail: String },
    #[error("{phase} timed out after {secs}s")]
    Timeout { phase: &'static str, secs: u64 },
    #[error("connection lost during {phase}: {detail}")]
    Io { phase: &'static str, detail: String },
    #[error("protocol error during {phase}: {detail}")]
    Protocol { phase: &'static str, detail: String },
    #[error("TLS with {host} failed: {detail}")]
    Tls {
        host: String,
        detail: String,
        /// What was wrong with the certificate, when that ended it.
        problem: Option<CertProblem>,
    },
    #[error("TLS is required for this domain, but {host} does not offer STARTTLS")]
    TlsRequired { host: String },
    /// A policy forbids this host for the message (e.g. REQUIRETLS and
    /// a server that does not offer it): the reply says how final.
    #[error("{reply}")]
    Policy { reply: Reply },
}

/// What was wrong with a server's certificate, for logs and TLS reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertProblem {
    Expired,
    NameMismatch,
    Untrusted,
    /// No DANE TLSA record matches (or another check of ours failed).
    Mismatch,
}

impl CertProblem {
    /// The problem a rustls error describes, if it is about the certificate.
    pub fn of(error: &rustls::Error) -> Option<Self> {
        use rustls::CertificateError as C;
        match error {
            rustls::Error::InvalidCertificate(problem) => Some(match problem {
                C::Expired
                | C::ExpiredContext { .. }
                | C::NotValidYet
                | C::NotValidYetContext { .. } => Self::Expired,
                C::NotValidForName | C::NotValidForNameContext { .. } => Self::NameMismatch,
                C::UnknownIssuer | C::BadSignature | C::BadEncoding => Self::Untrusted,
                _ => Self::Mismatch,
            }),
            _ => None,
        }
    }

    /// RFC 8460's result type for it.
    pub fn result_type(self, dane: bool) -> &'static str {
        match self {
            Self::Expired => "certificate-expired",
            Self::NameMismatch => "certificate-host-mismatch",
            Self::Untrusted if dane => "tlsa-invalid",
            Self::Untrusted => "certificate-not-trusted",
            Self::Mismatch if dane => "tlsa-invalid",
            Self::Mismatch => "validation-failure",
        }
    }
}

impl SessionError {
    /// The reply every recipient gets when this ends the last attempt.
    pub fn reply(&self) -> Reply {
        if let Self::Policy { reply } = self {
            return reply.clone();
        }
        let enhanced = match self {
            Self::Tls { .. } => "4.7.5",
            Self::TlsRequired { .. } => "4.7.4",
            Self::Protocol { .. } => "4.5.0",
            _ => "4.4.1",
        };
        Reply::new(451, enhanced, self.to_string())
    }

    /// The phase it happened in, when it is about one.
    pub fn phase(&self) -> Option<&'static str> {
        match self {
            Self::Timeout { phase, .. } | Self::Io { phase, .. } | Self::Protocol { phase, .. } => {
                Some(phase)
            }
            _ => None,
        }
    }
}

/// What [`Connection::unread`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unread {
    Nothing,
    Bytes(usize),
    Closed,
    Failed(String),
}

/// A TCP connection before or after STARTTLS.
pub enum Stream {
    Plain(TcpStream),
    /// An LMTP server's Unix socket.
    Unix(UnixStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    // Forwarded so that a vectored write (the content and the end-of-data
    // marker, say) stays one system call and one TCP segment: the default
    // would write only the first non-empty slice at a time.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Unix(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Unix(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// An open SMTP connection, after the greeting.
pub struct Connection<S> {
    stream: BufReader<S>,
    timeouts: ClientTimeouts,
    pub extensions: Vec<String>,
    /// The TLS version and cipher suite, once STARTTLS succeeded.
    pub tls: Option<String>,
}

pub async fn connect(
    addr: SocketAddr,
    timeouts: &ClientTimeouts,
) -> Result<Connection<Stream>, SessionError> {
    let target = addr.to_string();
    let secs = timeouts.connect_secs;
    let stream = tokio::time::timeout(Duration::from_secs(secs), TcpStream::connect(addr))
        .await
        .map_err(|_| SessionError::Timeout {
            phase: "connect",
            secs,
        })?
        .map_err(|e| SessionError::Connect {
            host: target,
            detail: e.to_string(),
        })?;
    let _ = stream.set_nodelay(true);
    Ok(Connection {
        stream: BufReader::new(Stream::Plain(stream)),
        timeouts: timeouts.clone(),
        extensions: Vec::new(),
        tls: None,
    })
}

/// Connects to an LMTP server's Unix socket.
pub async fn connect_unix(
    path: &std::path::Path,
    timeouts: &ClientTimeouts,
) -> Result<Connection<Stream>, SessionError> {
    let secs = timeouts.connect_secs;
    let stream = tokio::time::timeout(Duration::from_secs(secs), UnixStream::connect(path))
        .await
        .map_err(|_| SessionError::Timeout {
            phase: "connect",
            secs,
        })?
        .map_err(|e| SessionError::Connect {
            host: path.display().to_string(),
            detail: e.to_string(),
        })?;
    Ok(Connection {
        stream: BufReader::new(Stream::Unix(stream)),
        timeouts: timeouts.clone(),
        extensions: Vec::new(),
        tls: None,
    })
}

impl Connection<Stream> {
    /// STARTTLS (RFC 3207) after a positive `220`: the handshake, checking
    /// the certificate against `server_name` as `config` says. The caller
    /// says EHLO again afterwards.
    pub async fn start_tls(
        self,
        config: Arc<rustls::ClientConfig>,
        server_name: &str,
    ) -> Result<Self, SessionError> {
        let secs = self.timeouts.starttls_secs;
        let fail = |detail: String| SessionError::Tls {
            host: server_name.to_owned(),
            detail,
            problem: None,
        };
        // Bytes after the 220 would be a plaintext injection (CVE-2011-0411).
        if !self.stream.buffer().is_empty() {
            return Err(fail("server sent data after its STARTTLS reply".into()));
        }
        let name = ServerName::try_from(server_name.to_owned())
            .map_err(|e| fail(format!("invalid server name: {e}")))?;
        let Stream::Plain(tcp) = self.stream.into_inner() else {
            return Err(fail("TLS is already active, or not over TCP".into()));
        };
        let handshake = TlsConnector::from(config).connect(name, tcp);
        let tls = tokio::time::timeout(Duration::from_secs(secs), handshake)
            .await
            .map_err(|_| fail(format!("handshake timed out after {secs}s")))?
            .map_err(|e| {
                let rustls_error = e
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>());
                // Our own checks (DANE) say what failed in their words.
                let detail = match rustls_error {
                    Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(
                        other,
                    ))) => format!("invalid peer certificate: {other}"),
                    _ => e.to_string(),
                };
                SessionError::Tls {
                    host: server_name.to_owned(),
                    detail,
                    problem: rustls_error.and_then(CertProblem::of),
                }
            })?;
        let (_, session) = tls.get_ref();
        let description = format!(
            "{} {}",
            session
                .protocol_version()
                .and_then(|v| v.as_str())
                .unwrap_or("TLS"),
            session
                .negotiated_cipher_suite()
                .and_then(|c| c.suite().as_str())
                .unwrap_or("")
        );
        Ok(Self {
            stream: BufReader::new(Stream::Tls(Box::new(tls))),
            timeouts: self.timeouts,
            extensions: Vec::new(),
            tls: Some(description.trim().to_owned()),
        })
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// A connection over any stream, after the greeting and EHLO, for
    /// tests of the transaction logic.
    #[cfg(test)]
    pub fn over(stream: S, extensions: &[&str]) -> Self {
        Self {
            stream: BufReader::new(stream),
            timeouts: ClientTimeouts::default(),
            extensions: extensions.iter().map(|e| (*e).to_owned()).collect(),
            tls: None,
        }
    }

    /// Reads one reply, with the phase's timeout.
    pub async fn read_reply(
        &mut self,
        phase: &'static str,
        secs: u64,
    ) -> Result<Reply, SessionError> {
        tokio::time::timeout(Duration::from_secs(secs), self.read_reply_untimed(phase))
            .await
            .map_err(|_| SessionError::Timeout { phase, secs })?
    }

    /// Reads one reply line by line, checking each against the grammar as
    /// it arrives: a malformed line ends the session, so that nothing a
    /// broken server sends is ever taken for a reply.
    async fn read_reply_untimed(&mut self, phase: &'static str) -> Result<Reply, SessionError> {
        let protocol = |detail: String| SessionError::Protocol { phase, detail };
        let mut raw_lines = Vec::new();
        loop {
            let mut raw = Vec::new();
            let read = (&mut self.stream)
                .take(MAX_LINE as u64)
                .read_until(b'\n', &mut raw)
                .await
                .map_err(|e| SessionError::Io {
                    phase,
                    detail: e.to_string(),
                })?;
            if read == 0 {
                return Err(SessionError::Io {
                    phase,
                    detail: "server closed the connection".into(),
                });
            }
            if !raw.ends_with(b"\n") {
                let detail = if raw.len() >= MAX_LINE {
                    format!("reply line longer than {MAX_LINE} bytes")
                } else {
                    "server closed the connection in the middle of a reply line".into()
                };
                return Err(protocol(detail));
            }
            let text = String::from_utf8_lossy(&raw)
                .trim_end_matches('\n')
                .trim_end_matches('\r')
                .to_owned();
            let line = ReplyLine::parse(&text).map_err(|e| protocol(e.to_string()))?;
            let continues = line.continues;
            raw_lines.push(text);
            if !continues {
                break;
            }
            if raw_lines.len() >= MAX_REPLY_LINES {
                return Err(protocol("reply too long".into()));
            }
        }
        Reply::parse_lines(&raw_lines).map_err(|e| protocol(e.to_string()))
    }

    /// What the server has sent that was not read yet, without waiting.
    /// Used to check that the server sent nothing it was not asked for:
    /// before the end of data any reply is premature (a server replies to
    /// the end of data, not during it), and after the last reply more
    /// bytes mean the replies are out of step with the commands. Either
    /// way, the replies on this connection cannot be trusted.
    pub async fn unread(&mut self) -> Unread {
        std::future::poll_fn(|cx| {
            Poll::Ready(match Pin::new(&mut self.stream).poll_fill_buf(cx) {
                Poll::Ready(Ok([])) => Unread::Closed,
                Poll::Ready(Ok(buffered)) => Unread::Bytes(buffered.len()),
                Poll::Ready(Err(error)) => Unread::Failed(error.to_string()),
                Poll::Pending => Unread::Nothing,
            })
        })
        .await
    }

    /// Fails unless nothing is waiting to be read (see [`Self::unread`]).
    pub async fn expect_silence(&mut self, phase: &'static str) -> Result<(), SessionError> {
        match self.unread().await {
            Unread::Nothing => Ok(()),
            Unread::Bytes(bytes) => Err(SessionError::Protocol {
                phase,
                detail: format!("server sent {bytes} bytes that answer no command"),
            }),
            Unread::Closed => Err(SessionError::Io {
                phase,
                detail: "server closed the connection".into(),
            }),
            Unread::Failed(detail) => Err(SessionError::Io { phase, detail }),
        }
    }

    pub async fn send(
        &mut self,
        phase: &'static str,
        secs: u64,
        bytes: &[u8],
    ) -> Result<(), SessionError> {
        self.send_parts(phase, secs, &[bytes]).await
    }

    /// Sends `parts` one after another, in as few writes as the stream
    /// allows.
    pub async fn send_parts(
        &mut self,
        phase: &'static str,
        secs: u64,
        parts: &[&[u8]],
    ) -> Result<(), SessionError> {
        let write = async {
            let mut slices: Vec<IoSlice<'_>> =
                parts.iter().map(|part| IoSlice::new(part)).collect();
            ipc::write_all_vectored(self.stream.get_mut(), &mut slices).await?;
            self.stream.get_mut().flush().await
        };
        tokio::time::timeout(Duration::from_secs(secs), write)
            .await
            .map_err(|_| SessionError::Timeout { phase, secs })?
            .map_err(|e| SessionError::Io {
                phase,
                detail: e.to_string(),
            })
    }

    /// Sends a command line and reads its reply.
    pub async fn command(
        &mut self,
        phase: &'static str,
        secs: u64,
        line: &str,
    ) -> Result<Reply, SessionError> {
        self.send(phase, secs, format!("{line}\r\n").as_bytes())
            .await?;
        self.read_reply(phase, secs).await
    }

    pub async fn greeting(&mut self) -> Result<Reply, SessionError> {
        let secs = self.timeouts.ehlo_secs;
        self.read_reply("greeting", secs).await
    }

    /// EHLO, falling back to HELO for servers that do not know it.
    pub async fn hello(&mut self, name: &str) -> Result<Reply, SessionError> {
        let secs = self.timeouts.ehlo_secs;
        let reply = self.command("EHLO", secs, &format!("EHLO {name}")).await?;
        if reply.is_completion() {
            self.extensions = reply
                .text
                .lines()
                .skip(1)
                .map(|l| l.trim().to_ascii_uppercase())
                .collect();
            return Ok(reply);
        }
        self.extensions.clear();
        self.command("HELO", secs, &format!("HELO {name}")).await
    }

    /// LHLO (RFC 2033): LMTP has no HELO to fall back to.
    pub async fn lhlo(&mut self, name: &str) -> Result<Reply, SessionError> {
        let secs = self.timeouts.ehlo_secs;
        let reply = self.command("LHLO", secs, &format!("LHLO {name}")).await?;
        if !reply.is_completion() {
            return Err(SessionError::Protocol {
                phase: "LHLO",
                detail: reply.to_string(),
            });
        }
        self.extensions = reply
            .text
            .lines()
            .skip(1)
            .map(|l| l.trim().to_ascii_uppercase())
            .collect();
        Ok(reply)
    }

    pub fn offers(&self, extension: &str) -> bool {
        self.extensions
            .iter()
            .any(|e| e.split_whitespace().next() == Some(extension))
    }

    pub fn timeouts(&self) -> &ClientTimeouts {
        &self.timeouts
    }

    /// QUIT after the transaction; its failure does not matter.
    pub async fn quit(&mut self) {
        let secs = self.timeouts.quit_secs;
        if let Err(error) = self.command("QUIT", secs, "QUIT").await {
            tracing::debug!(%error, "QUIT failed after the transaction");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_multiline_replies_and_parses_extensions() {
        let (client, mut server) = tokio::io::duplex(4096);
        let mut connection = Connection {
            stream: BufReader::new(client),
            timeouts: ClientTimeouts::default(),
            extensions: Vec::new(),
            tls: None,
        };
        server
            .write_all(
                b"250-mx.example Hello\r\n250-PIPELINING\r\n250-size 1000\r\n250 8BITMIME\r\n",
            )
            .await
            .unwrap();
        let reply = connection.hello("client.example").await.unwrap();
        assert_eq!(reply.code, 250);
        assert!(
            connection.offers("PIPELINING")
                && connection.offers("SIZE")
                && !connection.offers("STARTTLS")
        );
    }

    /// The content and the end-of-data marker leave in one system call
    /// (and so, on a quiet connection, in one TCP segment), not one each.
    #[tokio::test]
    async fn a_vectored_write_sends_every_slice_in_one_call() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let mut stream = Stream::Plain(client);
        assert!(stream.is_write_vectored());
        let content = vec![b'x'; 5000];
        let written = stream
            .write_vectored(&[IoSlice::new(&content), IoSlice::new(b".\r\n")])
            .await
            .unwrap();
        assert_eq!(written, 5003);
        let mut received = vec![0; 5003];
        tokio::io::AsyncReadExt::read_exact(&mut server, &mut received)
            .await
            .unwrap();
        assert!(received.ends_with(b"xx.\r\n"));
    }

    #[tokio::test]
    async fn silent_server_times_out() {
        let (client, _server) = tokio::io::duplex(64);
        let mut connection = Connection {
            stream: BufReader::new(client),
            timeouts: ClientTimeouts::default(),
            extensions: Vec::new(),
            tls: None,
        };
        let error = connection.read_reply("greeting", 1).await.unwrap_err();
        assert_eq!(
            error,
            SessionError::Timeout {
                phase: "greeting",
                secs: 1
            }
        );
    }
}
