//! smtpd's side of the master's anvil (see `empath_common::protocol::
//! AnvilRequest`): before serving a client, ask whether the system-wide
//! connection limits allow it; when the session ends, say so. One task
//! owns the connection to the master and serialises the requests.
//!
//! When the master cannot be asked (its socket is missing, or does not
//! answer in time), the connection is admitted on this process's own
//! limits alone: a slower master must not stop mail.

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
/// The master answers from memory; anything slower means trouble.
const ASK_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct AnvilClient {
    requests: mpsc::UnboundedSender<Request>,
}

#[derive(Debug)]
enum Request {
    Acquire(IpAddr, oneshot::Sender<Option<(AnvilReply, u64)>>),
    /// The address, and the connection (generation) it was granted on.
    Release(IpAddr, u64),
}

/// A connection the master counts, until dropped.
#[derive(Debug)]
pub struct Grant {
    client: Arc<AnvilClient>,
    ip: IpAddr,
    generation: u64,
}

impl Drop for Grant {
    fn drop(&mut self) {
        let _ = self
            .client
            .requests
            .send(Request::Release(self.ip, self.generation));
    }
}

impl AnvilClient {
    /// Starts the task that talks to the master's anvil at `socket`.
    pub fn start(socket: PathBuf) -> Arc<Self> {
        let (requests, inbox) = mpsc::unbounded_channel();
        tokio::spawn(run(socket, inbox));
        Arc::new(Self { requests })
    }

    /// Asks the master whether a client from `ip` may be served.
    /// `Ok(None)`: the master could not be asked.
    pub async fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<Option<Grant>, Refused> {
        let (answer, reply) = oneshot::channel();
        if self.requests.send(Request::Acquire(ip, answer)).is_err() {
            return Ok(None);
        }
        match reply.await.ok().flatten() {
            Some((AnvilReply::Granted, generation)) => Ok(Some(Grant {
                client: Arc::clone(self),
                ip,
                generation,
            })),
            Some((AnvilReply::TooMany, _)) => Err(Refused::Total),
            Some((AnvilReply::TooManyFromIp, _)) => Err(Refused::PerIp),
            None => Ok(None),
        }
    }
}

/// The connection to the master, numbered: a release is sent only on the
/// connection its grant came from (the master forgets a closed
/// connection's grants by itself).
struct Link {
    stream: Option<UnixStream>,
    generation: u64,
}

async fn run(socket: PathBuf, mut inbox: mpsc::UnboundedReceiver<Request>) {
    let mut link = Link {
        stream: None,
        generation: 0,
    };
    while let Some(request) = inbox.recv().await {
        match request {
            Request::Acquire(ip, answer) => {
                let reply = ask(&socket, &mut link, ip).await;
                let _ = answer.send(reply.map(|r| (r, link.generation)));
            }
            Request::Release(ip, generation) => {
                if generation != link.generation {
                    continue;
                }
                let Some(stream) = link.stream.as_mut() else {
                    continue;
                };
                let sent = tokio::time::timeout(
                    ASK_TIMEOUT,
                    write_frame(stream, &AnvilRequest::Release(ip)),
                )
                .await;
                if !matches!(sent, Ok(Ok(()))) {
                    lost(&mut link);
                }
            }
        }
    }
}

async fn ask(socket: &std::path::Path, link: &mut Link, ip: IpAddr) -> Option<AnvilReply> {
    if link.stream.is_none() {
        match ipc::connect(socket, CONNECT_TIMEOUT).await {
            Ok(stream) => {
                link.stream = Some(stream);
                link.generation += 1;
            }
            Err(error) => {
                tracing::debug!(%error, "anvil unavailable; counting this process's connections only");
                return None;
            }
        }
    }
    let stream = link.stream.as_mut()?;
    let asked = tokio::time::timeout(ASK_TIMEOUT, async {
        write_frame(stream, &AnvilRequest::Acquire(ip)).await?;
        read_frame::<_, AnvilReply>(stream).await
    })
    .await;
    match asked {
        Ok(Ok(Some(reply))) => Some(reply),
        _ => {
            lost(link);
            None
        }
    }
}

fn lost(link: &mut Link) {
    tracing::warn!(
        "lost the connection to the master's anvil; counting this process's connections only until it is back"
    );
    link.stream = None;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

    /// A fake master that grants the first `grants` acquisitions, refuses
    /// the rest per IP, and records every request.
    async fn fake_master(listener: UnixListener, grants: usize) -> Vec<AnvilRequest> {
        let (mut stream, _) = listener.accept().await.unwrap();
        empath_common::ipc::hello_server(&mut stream, "anvil")
            .await
            .unwrap();
        let mut seen = Vec::new();
        let mut granted = 0;
        while let Ok(Some(request)) = read_frame::<_, AnvilRequest>(&mut stream).await {
            seen.push(request);
            if let AnvilRequest::Acquire(_) = request {
                let reply = if granted < grants {
                    granted += 1;
                    AnvilReply::Granted
                } else {
                    AnvilReply::TooManyFromIp
                };
                write_frame(&mut stream, &reply).await.unwrap();
            }
        }
        seen
    }

    #[tokio::test]
    async fn grants_refusals_and_releases_reach_the_master() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("anvil.sock");
        let master = tokio::spawn(fake_master(UnixListener::bind(&socket).unwrap(), 1));
        let client = AnvilClient::start(socket);

        let grant = client.acquire(A).await.expect("granted").expect("asked");
        assert_eq!(client.acquire(A).await.err(), Some(Refused::PerIp));
        drop(grant);
        drop(client);

        let seen = tokio::time::timeout(Duration::from_secs(5), master)
            .await
            .expect("the client hung up")
            .unwrap();
        assert_eq!(
            seen,
            [
                AnvilRequest::Acquire(A),
                AnvilRequest::Acquire(A),
                AnvilRequest::Release(A)
            ]
        );
    }

    #[tokio::test]
    async fn without_a_master_connections_are_admitted_on_local_limits() {
        let dir = tempfile::tempdir().unwrap();
        let client = AnvilClient::start(dir.path().join("missing.sock"));
        assert!(matches!(client.acquire(A).await, Ok(None)));
    }
}
