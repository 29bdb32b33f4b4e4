//! IPC framing over Unix stream sockets: a 4-byte big-endian length, then a
//! postcard-encoded value. The same framing carries every daemon protocol.
//!
//! Every connection starts with a [`Hello`] each way, carrying
//! [`PROTOCOL_VERSION`]. postcard encodes fields by position, so two
//! Empath versions whose frames differ would misread each other; during an
//! upgrade (new binaries, daemons restarted one at a time) the hello makes
//! such a pair refuse to talk, with a log line that says why, instead.
//! [`connect`] and `daemon::serve` exchange it, so no protocol client or
//! server can forget to.

use std::io::{self, IoSlice};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;

/// Frames larger than this are refused: a peer sending one is broken.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

/// The version of every frame type the daemons exchange (`protocol`,
/// `control`, the metrics snapshot). Bump it whenever one changes its
/// encoding; `common/tests/protocol_pins.rs` fails until it is bumped.
pub const PROTOCOL_VERSION: u32 = 6;

const HELLO_MAGIC: [u8; 4] = *b"EMPH";

/// The first frame each way on every connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Hello {
    magic: [u8; 4],
    version: u32,
}

impl Hello {
    pub fn ours() -> Self {
        Self {
            magic: HELLO_MAGIC,
            version: PROTOCOL_VERSION,
        }
    }
}

fn version_error(peer: &str, detail: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "{peer}: {detail} (this program speaks Empath IPC version {PROTOCOL_VERSION}; a daemon of another Empath version is still running? restart it)"
        ),
    )
}

/// The client's side of the hello: ours out, the server's in and checked.
pub async fn hello_client<S>(stream: &mut S, peer: &str) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    write_frame(stream, &Hello::ours()).await?;
    match read_frame::<_, Hello>(stream).await {
        Ok(Some(hello)) if hello == Hello::ours() => Ok(()),
        Ok(Some(hello)) if hello.magic == HELLO_MAGIC => Err(version_error(
            peer,
            format!("the server speaks Empath IPC version {}", hello.version),
        )),
        Ok(_) | Err(_) => Err(version_error(
            peer,
            "the server did not answer the hello (an older Empath?)".to_owned(),
        )),
    }
}

/// The server's side: the client's hello in and checked, ours out (also
/// on a mismatch, so the client can say why).
pub async fn hello_server<S>(stream: &mut S, service: &str) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let theirs = read_frame::<_, Hello>(stream).await;
    let _ = write_frame(stream, &Hello::ours()).await;
    match theirs {
        Ok(Some(hello)) if hello == Hello::ours() => Ok(()),
        Ok(Some(hello)) if hello.magic == HELLO_MAGIC => Err(version_error(
            service,
            format!(
                "refused a client that speaks Empath IPC version {}",
                hello.version
            ),
        )),
        Ok(None) => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "client left before its hello",
        )),
        Ok(Some(_)) | Err(_) => Err(version_error(
            service,
            "refused a client that did not start with a hello (an older Empath?)".to_owned(),
        )),
    }
}

pub async fn write_frame<W, T>(writer: &mut W, value: &T) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let mut frame = Vec::new();
    append_frame(&mut frame, value)?;
    writer.write_all(&frame).await?;
    writer.flush().await
}

/// Writes all of `slices`, in as few writes as `writer` allows (one
/// `writev` for a socket that takes them whole). Not only for IPC:
/// smtp-out's SMTP connection sends content through it too.
pub async fn write_all_vectored<W>(writer: &mut W, slices: &mut [IoSlice<'_>]) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    let mut unsent = slices;
    while !unsent.is_empty() {
        let written = writer.write_vectored(unsent).await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut unsent, written);
    }
    Ok(())
}

/// Encodes `value` as a frame at the end of `buffer`: several frames can
/// then go in one write.
pub fn append_frame<T: Serialize>(buffer: &mut Vec<u8>, value: &T) -> io::Result<()> {
    append_frame_head(buffer, value, 0)
}

/// Encodes the start of a frame whose payload is `head` followed by
/// `tail_len` more bytes, which the caller sends right after it (content,
/// uncopied, in a vectored write).
pub fn append_frame_head<T: Serialize>(
    buffer: &mut Vec<u8>,
    head: &T,
    tail_len: usize,
) -> io::Result<()> {
    // Serialized straight after room for the length prefix: no copy.
    let start = buffer.len();
    buffer.extend_from_slice(&[0u8; 4]);
    *buffer = postcard::to_extend(head, std::mem::take(buffer))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let payload_len = buffer.len() - start - 4 + tail_len;
    match u32::try_from(payload_len) {
        Ok(length) if payload_len <= MAX_FRAME => {
            buffer[start..start + 4].copy_from_slice(&length.to_be_bytes());
            Ok(())
        }
        _ => {
            buffer.truncate(start);
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "frame too large",
            ))
        }
    }
}

/// Reads one frame. `Ok(None)` means the peer closed the connection cleanly
/// between frames.
pub async fn read_frame<R, T>(reader: &mut R) -> io::Result<Option<T>>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    read_frame_limited(reader, MAX_FRAME).await
}

/// Reads one frame of at most `max` bytes: for sockets that anyone may
/// connect to, whose requests are small.
pub async fn read_frame_limited<R, T>(reader: &mut R, max: usize) -> io::Result<Option<T>>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let mut payload = Vec::new();
    if !read_payload(reader, &mut payload, max).await? {
        return Ok(None);
    }
    postcard::from_bytes(&payload)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Reads the payload of one frame of at most `max` bytes into `payload`
/// (replacing what it held), for a reader that decodes it in place:
/// content borrowed from the frame is never copied out of it. `false`
/// means the peer closed the connection cleanly between frames.
pub async fn read_payload<R>(reader: &mut R, payload: &mut Vec<u8>, max: usize) -> io::Result<bool>
where
    R: AsyncRead + Unpin,
{
    let mut header = [0u8; 4];
    match reader.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(e) => return Err(e),
    }
    let length = u32::from_be_bytes(header) as usize;
    if length > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {length} bytes exceeds the limit"),
        ));
    }
    payload.clear();
    payload.reserve_exact(length);
    // Read into the spare capacity: a frame's memory is not zeroed first.
    while payload.len() < length {
        let wanted = (length - payload.len()) as u64;
        if (&mut *reader).take(wanted).read_buf(payload).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(true)
}

/// Sends a request and waits for its reply on an open connection.
pub async fn call<S, Req, Resp>(stream: &mut S, request: &Req) -> io::Result<Resp>
where
    S: AsyncRead + AsyncWrite + Unpin,
    Req: Serialize,
    Resp: DeserializeOwned,
{
    write_frame(stream, request).await?;
    read_frame(stream).await?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "peer closed the connection before replying",
        )
    })
}

/// Connects to a daemon socket and exchanges the hello, with a bound on
/// the time it may take.
pub async fn connect(path: &Path, timeout: Duration) -> io::Result<UnixStream> {
    let connecting = async {
        let mut stream = UnixStream::connect(path)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        hello_client(&mut stream, &path.display().to_string()).await?;
        Ok(stream)
    };
    tokio::time::timeout(timeout, connecting)
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connecting to {}", path.display()),
            )
        })?
}

/// A kept connection idle for longer is closed rather than used.
const MAX_IDLE: Duration = Duration::from_secs(30);

/// At most this many idle connections are kept.
const MAX_KEPT: usize = 1024;

/// Open connections to a daemon that are not in use, kept for the next
/// request: the daemons serve requests one after another on a connection,
/// and a new connection costs a connect, the hello and an accept and a
/// task on the other side. Shared by the clones of one value.
///
/// A kept connection may lead to a daemon that has closed it since (it
/// exited, or retired after a reload): [`IdleConnections::take`] skips the
/// ones whose end is already readable, but one may still close as it is
/// used, so a caller sends again on a new connection what got no answer at
/// all, where that is safe.
#[derive(Debug, Clone, Default)]
pub struct IdleConnections {
    idle: Arc<Mutex<Vec<(UnixStream, Instant)>>>,
}

impl IdleConnections {
    /// The connection that became idle last and is still open, if any.
    pub fn take(&self) -> Option<UnixStream> {
        let mut idle = self.idle.lock().ok()?;
        while let Some((stream, since)) = idle.pop() {
            if since.elapsed() < MAX_IDLE && still_open(&stream) {
                return Some(stream);
            }
        }
        None
    }

    /// Keeps `stream`, which has no request in flight, for a later one.
    pub fn put_back(&self, stream: UnixStream) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_KEPT
        {
            idle.push((stream, Instant::now()));
        }
    }
}

/// Whether an idle connection is still open at the other end: a peek that
/// does not wait, where a closed connection reads as its end at once.
fn still_open(stream: &UnixStream) -> bool {
    use nix::sys::socket::{MsgFlags, recv};
    let mut byte = [0u8; 1];
    matches!(
        recv(
            stream.as_raw_fd(),
            &mut byte,
            MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT
        ),
        Err(nix::errno::Errno::EAGAIN)
    )
}

/// Sends one frame on a fresh connection and does not wait for a reply:
/// used for notifications, which are only a speed-up over directory scans.
pub async fn notify<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let mut stream = connect(path, Duration::from_secs(1)).await?;
    write_frame(&mut stream, value).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_hello_refuses_another_version_and_says_why() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        let (ours, theirs) = tokio::join!(
            hello_client(&mut client, "qmgr.sock"),
            hello_server(&mut server, "qmgr")
        );
        assert!(ours.is_ok() && theirs.is_ok());

        // A client of another version.
        let (mut client, mut server) = tokio::io::duplex(1024);
        let other = Hello {
            magic: HELLO_MAGIC,
            version: PROTOCOL_VERSION + 1,
        };
        let (sent, refused) = tokio::join!(
            write_frame(&mut client, &other),
            hello_server(&mut server, "qmgr")
        );
        sent.unwrap();
        let error = refused.unwrap_err().to_string();
        assert!(
            error.contains(&format!("version {}", PROTOCOL_VERSION + 1)),
            "{error}"
        );
        let answer: Option<Hello> = read_frame(&mut client).await.unwrap();
        assert_eq!(answer, Some(Hello::ours()));

        // An old client that starts with its request.
        let (mut client, mut server) = tokio::io::duplex(1024);
        let request = ("a request".to_owned(), 7u64);
        let (sent, refused) = tokio::join!(
            write_frame(&mut client, &request),
            hello_server(&mut server, "qmgr")
        );
        sent.unwrap();
        assert!(
            refused
                .unwrap_err()
                .to_string()
                .contains("did not start with a hello")
        );
    }

    #[tokio::test]
    async fn frames_round_trip_and_eof_is_clean() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        write_frame(&mut a, &("hello".to_owned(), 42u32))
            .await
            .unwrap();
        drop(a);
        let value: Option<(String, u32)> = read_frame(&mut b).await.unwrap();
        assert_eq!(value, Some(("hello".to_owned(), 42)));
        let end: Option<(String, u32)> = read_frame(&mut b).await.unwrap();
        assert_eq!(end, None);
    }

    /// A large frame through a small pipe arrives in many reads; the
    /// buffer is reused from frame to frame, and a frame cut short by the
    /// peer closing is an error, not a shorter frame.
    #[tokio::test]
    async fn payloads_arrive_whole_through_a_small_pipe_and_cut_short_is_an_error() {
        let (mut a, mut b) = tokio::io::duplex(1000);
        let large: Vec<u8> = (0..200_000).map(|i| (i % 253) as u8).collect();
        let writer = tokio::spawn(async move {
            write_frame(&mut a, &large).await.unwrap();
            write_frame(&mut a, &vec![7u8; 10]).await.unwrap();
            // A header promising more than follows.
            a.write_all(&100u32.to_be_bytes()).await.unwrap();
            a.write_all(&[1, 2, 3]).await.unwrap();
        });
        let mut payload = Vec::new();
        assert!(read_payload(&mut b, &mut payload, MAX_FRAME).await.unwrap());
        let decoded: Vec<u8> = postcard::from_bytes(&payload).unwrap();
        assert_eq!(decoded.len(), 200_000);
        assert!(
            decoded
                .iter()
                .enumerate()
                .all(|(i, &b)| b == (i % 253) as u8)
        );
        assert!(read_payload(&mut b, &mut payload, MAX_FRAME).await.unwrap());
        assert_eq!(
            postcard::from_bytes::<Vec<u8>>(&payload).unwrap(),
            [7u8; 10]
        );
        writer.await.unwrap();
        let cut = read_payload(&mut b, &mut payload, MAX_FRAME).await;
        assert_eq!(cut.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn oversized_frame_header_is_rejected() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let result: io::Result<Option<u32>> = read_frame(&mut b).await;
        assert!(result.is_err());
    }
}
