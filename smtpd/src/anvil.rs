//! smtpd's side of empath-anvil (see `empath_common::protocol::
//! AnvilRequest`): before serving a client, ask whether the system-wide
//! connection limits allow it; before saying goodbye, release it; before
//! AUTH, ask whether the client failed too often, and report failures.
//! One task owns the connection to the anvil and serialises the requests.
//!
//! This process remembers every connection it holds. When the anvil goes
//! away (a restart, a crash), the task reconnects as soon as it is back
//! and registers them again, so the counts stay right. Until then, and
//! whenever the anvil does not answer in time, connections are admitted
//! and AUTH is judged on this process's own counts alone: a slow anvil
//! must not stop mail.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use empath_common::ipc::{self, read_frame, write_frame};
use empath_common::protocol::{AnvilReply, AnvilRequest};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

use crate::limits::Refused;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The anvil answers from memory; anything slower means trouble.
const ASK_TIMEOUT: Duration = Duration::from_secs(1);
/// How often to try again while the anvil is away.
const RECONNECT_INTERVAL: Duration = Duration::from_millis(200);
/// After the anvil failed to answer in time, how long this process counts
/// on its own before it asks again: a hung anvil must not hold up every
/// new connection for [`ASK_TIMEOUT`].
const UNRESPONSIVE_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct AnvilClient {
    requests: mpsc::UnboundedSender<Request>,
}

#[derive(Debug)]
enum Request {
    Acquire(IpAddr, oneshot::Sender<Result<(), Refused>>),
    /// With a sender: answer once the anvil has forgotten the connection.
    Release(IpAddr, Option<oneshot::Sender<()>>),
    /// `AuthAllowed` or `AuthFailed`; the answer is "blocked", if known.
    Auth(AnvilRequest, oneshot::Sender<Option<bool>>),
}

/// A connection this process holds against the system-wide limits,
/// until [`Grant::release`]d or dropped.
#[derive(Debug)]
pub struct Grant {
    client: Arc<AnvilClient>,
    ip: IpAddr,
    released: bool,
}

impl Grant {
    /// Releases the connection and waits (briefly) until the anvil no
    /// longer counts it: said before the last reply to the client, so its
    /// next connection is never judged against this one.
    pub async fn release(mut self) {
        self.released = true;
        let (done, released) = oneshot::channel();
        if self
            .client
            .requests
            .send(Request::Release(self.ip, Some(done)))
            .is_ok()
        {
            let _ = released.await;
        }
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        if !self.released {
            let _ = self.client.requests.send(Request::Release(self.ip, None));
        }
    }
}

impl AnvilClient {
    /// Starts the task that talks to the anvil at `socket`.
    pub fn start(socket: PathBuf) -> Arc<Self> {
        let (requests, inbox) = mpsc::unbounded_channel();
        tokio::spawn(run(Link::new(socket), inbox));
        Arc::new(Self { requests })
    }

    /// Asks whether a client from `ip` may be served. Granted also when
    /// the anvil cannot be asked: this process's own limits apply then.
    pub async fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<Grant, Refused> {
        let (answer, reply) = oneshot::channel();
        let verdict = match self.requests.send(Request::Acquire(ip, answer)) {
            Ok(()) => reply.await.unwrap_or(Ok(())),
            Err(_) => Ok(()),
        };
        verdict.map(|()| Grant {
            client: Arc::clone(self),
            ip,
            released: false,
        })
    }

    /// Whether `ip` failed AUTH too often across every smtpd; `None` when
    /// the anvil cannot be asked.
    pub async fn auth_blocked(&self, ip: IpAddr) -> Option<bool> {
        self.ask_auth(AnvilRequest::AuthAllowed(ip)).await
    }

    /// Reports a failed AUTH from `ip`; whether it is blocked now, if known.
    pub async fn auth_failed(&self, ip: IpAddr) -> Option<bool> {
        self.ask_auth(AnvilRequest::AuthFailed(ip)).await
    }

    async fn ask_auth(&self, request: AnvilRequest) -> Option<bool> {
        let (answer, reply) = oneshot::channel();
        self.requests.send(Request::Auth(request, answer)).ok()?;
        reply.await.ok().flatten()
    }
}

/// The connection to the anvil, and what this process holds.
struct Link {
    socket: PathBuf,
    stream: Option<UnixStream>,
    /// Every connection this process holds that the anvil should count:
    /// granted, or admitted while it could not be asked.
    held: HashMap<IpAddr, u32>,
    /// Whether the loss of the link has been logged.
    lost_logged: bool,
    /// Set when the anvil did not answer in time: not asked before then.
    quiet_until: Option<tokio::time::Instant>,
    /// When to try to reconnect while the link is down.
    retry_at: tokio::time::Instant,
}

/// What woke the task.
enum Wake {
    Request(Option<Request>),
    /// The link may have closed, or it is time to try to reconnect.
    Tend,
}

async fn run(mut link: Link, mut inbox: mpsc::UnboundedReceiver<Request>) {
    link.connect().await;
    loop {
        // Only cancel-safe waits in here: a request never interrupts a
        // frame being written.
        let wake = tokio::select! {
            request = inbox.recv() => Wake::Request(request),
            () = link.idle() => Wake::Tend,
        };
        match wake {
            Wake::Request(None) => return,
            Wake::Request(Some(request)) => link.handle(request).await,
            Wake::Tend => link.tend().await,
        }
    }
}

impl Link {
    fn new(socket: PathBuf) -> Self {
        Self {
            socket,
            stream: None,
            held: HashMap::new(),
            lost_logged: false,
            quiet_until: None,
            retry_at: tokio::time::Instant::now(),
        }
    }

    /// Resolves when the link needs looking after: the anvil closed it
    /// (it never speaks unasked), or it is down and a retry is due.
    async fn idle(&self) {
        match &self.stream {
            Some(stream) => {
                let _ = stream.readable().await;
            }
            None => tokio::time::sleep_until(self.retry_at).await,
        }
    }

    async fn tend(&mut self) {
        match &self.stream {
            Some(stream) => {
                let mut byte = [0u8; 1];
                match stream.try_read(&mut byte) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    // Closed, broken, or speaking unasked: drop it.
                    _ => self.lost(),
                }
            }
            None => {
                if !self.connect().await {
                    let next = tokio::time::Instant::now() + RECONNECT_INTERVAL;
                    self.retry_at = self.retry_at.max(next);
                }
            }
        }
    }

    /// Connects, and registers every connection this process holds.
    async fn connect(&mut self) -> bool {
        let Ok(mut stream) = ipc::connect(&self.socket, CONNECT_TIMEOUT).await else {
            return false;
        };
        let held: Vec<(IpAddr, u32)> = self.held.iter().map(|(ip, n)| (*ip, *n)).collect();
        // Sent together, then confirmed: once this process says it is
        // back, the anvil counts everything it holds.
        let registered = tokio::time::timeout(ASK_TIMEOUT, async {
            for (ip, count) in &held {
                write_frame(&mut stream, &AnvilRequest::Register(*ip, *count)).await?;
            }
            for _ in &held {
                let reply = read_frame::<_, AnvilReply>(&mut stream).await?;
                if reply != Some(AnvilReply::Registered) {
                    return Err(std::io::Error::other(
                        "the anvil did not confirm a registration",
                    ));
                }
            }
            Ok(())
        })
        .await;
        match registered {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return false,
            Err(_) => {
                self.unresponsive();
                return false;
            }
        }
        if self.lost_logged {
            let connections: u32 = held.iter().map(|(_, n)| n).sum();
            tracing::info!(
                connections,
                "empath-anvil is back; registered the connections this process holds"
            );
            self.lost_logged = false;
        }
        self.stream = Some(stream);
        true
    }

    /// The anvil did not answer in time: drop the link and leave it be
    /// for [`UNRESPONSIVE_BACKOFF`].
    fn unresponsive(&mut self) {
        self.lost();
        let quiet = tokio::time::Instant::now() + UNRESPONSIVE_BACKOFF;
        self.quiet_until = Some(quiet);
        self.retry_at = quiet;
    }

    /// Whether the anvil may be asked now.
    fn may_ask(&self) -> bool {
        self.quiet_until
            .is_none_or(|quiet| tokio::time::Instant::now() >= quiet)
    }

    fn lost(&mut self) {
        self.stream = None;
        self.retry_at = tokio::time::Instant::now() + RECONNECT_INTERVAL;
        if !self.lost_logged {
            tracing::warn!(
                "lost the connection to empath-anvil; counting this process's connections and AUTH failures only until it is back"
            );
            self.lost_logged = true;
        }
    }

    async fn handle(&mut self, request: Request) {
        match request {
            Request::Acquire(ip, answer) => {
                let verdict = match self.ask(AnvilRequest::Acquire(ip)).await {
                    Some(AnvilReply::TooMany) => Err(Refused::Total),
                    Some(AnvilReply::TooManyFromIp) => Err(Refused::PerIp),
                    // Granted, or admitted on this process's own limits.
                    _ => Ok(()),
                };
                if verdict.is_ok() {
                    *self.held.entry(ip).or_insert(0) += 1;
                }
                let _ = answer.send(verdict);
            }
            Request::Release(ip, done) => {
                let Some(count) = self.held.get_mut(&ip) else {
                    return;
                };
                *count -= 1;
                if *count == 0 {
                    self.held.remove(&ip);
                }
                if done.is_some() {
                    // Answered: the anvil has forgotten it when we go on.
                    self.ask(AnvilRequest::Disconnect(ip)).await;
                } else {
                    self.tell(AnvilRequest::Release(ip)).await;
                }
                if let Some(done) = done {
                    let _ = done.send(());
                }
            }
            Request::Auth(request, answer) => {
                let blocked = match self.ask(request).await {
                    Some(AnvilReply::AuthPermitted) => Some(false),
                    Some(AnvilReply::AuthBlocked) => Some(true),
                    _ => None,
                };
                let _ = answer.send(blocked);
            }
        }
    }

    /// Sends a request that has a reply, and waits for it. `None` when the
    /// anvil cannot be asked (the link is then dropped, to be re-made).
    async fn ask(&mut self, request: AnvilRequest) -> Option<AnvilReply> {
        if self.stream.is_none() && !(self.may_ask() && self.connect().await) {
            return None;
        }
        let stream = self.stream.as_mut()?;
        let asked = tokio::time::timeout(ASK_TIMEOUT, async {
            write_frame(stream, &request).await?;
            read_frame::<_, AnvilReply>(stream).await
        })
        .await;
        match asked {
            Ok(Ok(Some(reply))) if answers(request, reply) => Some(reply),
            Ok(_) => {
                self.lost();
                None
            }
            Err(_) => {
                self.unresponsive();
                None
            }
        }
    }

    /// Sends a request that has no reply.
    async fn tell(&mut self, request: AnvilRequest) {
        let Some(stream) = self.stream.as_mut() else {
            return;
        };
        match tokio::time::timeout(ASK_TIMEOUT, write_frame(stream, &request)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => self.lost(),
            Err(_) => self.unresponsive(),
        }
    }
}

/// Whether `reply` is one `request` can get: anything else means the two
/// sides are out of step.
fn answers(request: AnvilRequest, reply: AnvilReply) -> bool {
    use AnvilReply::*;
    match request {
        AnvilRequest::Acquire(_) => matches!(reply, Granted | TooMany | TooManyFromIp),
        AnvilRequest::Disconnect(_) => reply == Disconnected,
        AnvilRequest::AuthAllowed(_) | AnvilRequest::AuthFailed(_) => {
            matches!(reply, AuthPermitted | AuthBlocked)
        }
        AnvilRequest::Register(..) => reply == Registered,
        AnvilRequest::Release(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

    /// A fake anvil on one accepted connection: grants the first `grants`
    /// acquisitions, refuses the rest per IP, answers the rest, and
    /// records every request until the client hangs up.
    async fn fake_anvil(listener: &UnixListener, grants: usize) -> Vec<AnvilRequest> {
        let (mut stream, _) = listener.accept().await.unwrap();
        empath_common::ipc::hello_server(&mut stream, "anvil")
            .await
            .unwrap();
        let mut seen = Vec::new();
        let mut granted = 0;
        while let Ok(Some(request)) = read_frame::<_, AnvilRequest>(&mut stream).await {
            seen.push(request);
            let reply = match request {
                AnvilRequest::Acquire(_) if granted < grants => {
                    granted += 1;
                    AnvilReply::Granted
                }
                AnvilRequest::Acquire(_) => AnvilReply::TooManyFromIp,
                AnvilRequest::Disconnect(_) => AnvilReply::Disconnected,
                AnvilRequest::AuthAllowed(_) => AnvilReply::AuthPermitted,
                AnvilRequest::AuthFailed(_) => AnvilReply::AuthBlocked,
                AnvilRequest::Register(..) => AnvilReply::Registered,
                AnvilRequest::Release(_) => continue,
            };
            write_frame(&mut stream, &reply).await.unwrap();
        }
        seen
    }

    #[tokio::test]
    async fn grants_refusals_releases_and_auth_reach_the_anvil() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("anvil.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let client = AnvilClient::start(socket);
        let anvil = tokio::spawn(async move { fake_anvil(&listener, 2).await });

        let first = client.acquire(A).await.expect("granted");
        let second = client.acquire(A).await.expect("granted");
        assert_eq!(client.acquire(A).await.err(), Some(Refused::PerIp));
        assert_eq!(client.auth_blocked(A).await, Some(false));
        assert_eq!(client.auth_failed(A).await, Some(true));
        first.release().await;
        drop(second);
        drop(client);

        let seen = tokio::time::timeout(Duration::from_secs(5), anvil)
            .await
            .expect("the client hung up")
            .unwrap();
        assert_eq!(
            seen,
            [
                AnvilRequest::Acquire(A),
                AnvilRequest::Acquire(A),
                AnvilRequest::Acquire(A),
                AnvilRequest::AuthAllowed(A),
                AnvilRequest::AuthFailed(A),
                AnvilRequest::Disconnect(A),
                AnvilRequest::Release(A),
            ]
        );
    }

    #[tokio::test]
    async fn held_connections_are_registered_again_when_the_anvil_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("anvil.sock");
        // No anvil yet: admitted on local limits, and remembered.
        let client = AnvilClient::start(socket.clone());
        let early = client.acquire(A).await.expect("admitted without the anvil");
        assert_eq!(client.auth_blocked(A).await, None);
        let listener = UnixListener::bind(&socket).unwrap();
        let (mut stream, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
            .await
            .expect("the client reconnects by itself")
            .unwrap();
        empath_common::ipc::hello_server(&mut stream, "anvil")
            .await
            .unwrap();
        let registered: Option<AnvilRequest> = read_frame(&mut stream).await.unwrap();
        assert_eq!(registered, Some(AnvilRequest::Register(A, 1)));
        write_frame(&mut stream, &AnvilReply::Registered)
            .await
            .unwrap();
        // The anvil restarts: the client comes back with what it holds.
        drop(stream);
        let (mut stream, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
            .await
            .expect("the client reconnects after a restart")
            .unwrap();
        empath_common::ipc::hello_server(&mut stream, "anvil")
            .await
            .unwrap();
        let registered: Option<AnvilRequest> = read_frame(&mut stream).await.unwrap();
        assert_eq!(registered, Some(AnvilRequest::Register(A, 1)));
        write_frame(&mut stream, &AnvilReply::Registered)
            .await
            .unwrap();
        drop(early);
        let released: Option<AnvilRequest> = read_frame(&mut stream).await.unwrap();
        assert_eq!(released, Some(AnvilRequest::Release(A)));
    }

    #[tokio::test]
    async fn a_hung_anvil_holds_up_one_connection_then_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("anvil.sock");
        // Accepts, reads, never answers.
        let listener = UnixListener::bind(&socket).unwrap();
        let hung = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let _ = empath_common::ipc::hello_server(&mut stream, "anvil").await;
                held.push(stream);
            }
        });
        let client = AnvilClient::start(socket);
        let started = tokio::time::Instant::now();
        let first = client.acquire(A).await.expect("admitted on local limits");
        let waited = started.elapsed();
        assert!(
            waited >= ASK_TIMEOUT && waited < 3 * ASK_TIMEOUT,
            "{waited:?}"
        );
        let started = tokio::time::Instant::now();
        let second = client.acquire(A).await.expect("admitted on local limits");
        assert_eq!(client.auth_blocked(A).await, None);
        assert!(
            started.elapsed() < Duration::from_millis(200),
            "asked the hung anvil again: {:?}",
            started.elapsed()
        );
        drop((first, second));
        hung.abort();
    }
}
