//! Connection accounting for every smtpd process (Postfix's anvil): each
//! smtpd asks here before it serves a client, so `smtpd.max_connections`
//! and `smtpd.max_connections_per_ip` hold across `smtpd.processes`. What
//! an smtpd held is released when its connection here closes, so a crashed
//! smtpd leaks nothing.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::os::unix::fs::chown;
use std::sync::{Arc, Mutex, PoisonError};

use empath_common::config::Config;
use empath_common::daemon;
use empath_common::ipc::{read_frame, write_frame};
use empath_common::protocol::{self, AnvilReply, AnvilRequest};
use empath_common::queue::Queue;
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

use crate::privileges::RunAs;

/// The counts of the whole system, and the limits they are held to.
#[derive(Debug, Default)]
pub struct Anvil {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    max_total: usize,
    max_per_ip: usize,
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// What one smtpd holds, to release when it goes away.
#[derive(Debug, Default)]
pub struct Held(HashMap<IpAddr, usize>);

impl Anvil {
    pub fn new(config: &Config) -> Arc<Self> {
        let anvil = Arc::new(Self::default());
        anvil.set_limits(config);
        anvil
    }

    /// Takes the limits of a (re)loaded config; open connections stay.
    pub fn set_limits(&self, config: &Config) {
        let mut state = self.lock();
        state.max_total = config.smtpd.max_connections;
        state.max_per_ip = config.smtpd.max_connections_per_ip;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The counts stay consistent even if a holder panicked.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn acquire(&self, held: &mut Held, ip: IpAddr) -> AnvilReply {
        let mut state = self.lock();
        if state.total >= state.max_total {
            return AnvilReply::TooMany;
        }
        let max_per_ip = state.max_per_ip;
        let from_ip = state.per_ip.entry(ip).or_insert(0);
        if *from_ip >= max_per_ip {
            return AnvilReply::TooManyFromIp;
        }
        *from_ip += 1;
        state.total += 1;
        *held.0.entry(ip).or_insert(0) += 1;
        AnvilReply::Granted
    }

    /// Releases one connection from `ip`, if this smtpd holds one.
    pub fn release(&self, held: &mut Held, ip: IpAddr) {
        let Some(count) = held.0.get_mut(&ip) else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            held.0.remove(&ip);
        }
        self.lock().forget(ip, 1);
    }

    /// Releases everything an smtpd held.
    pub fn release_all(&self, held: Held) {
        let mut state = self.lock();
        for (ip, count) in held.0 {
            state.forget(ip, count);
        }
    }

    /// Open connections in total, and from `ip`.
    #[cfg(test)]
    pub fn open(&self, ip: IpAddr) -> (usize, usize) {
        let state = self.lock();
        (state.total, state.per_ip.get(&ip).copied().unwrap_or(0))
    }
}

impl State {
    fn forget(&mut self, ip: IpAddr, count: usize) {
        self.total = self.total.saturating_sub(count);
        if let Some(from_ip) = self.per_ip.get_mut(&ip) {
            *from_ip = from_ip.saturating_sub(count);
            if *from_ip == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }
}

/// Binds `private/anvil.sock` for the daemons' user and serves it. Without
/// it, each smtpd falls back to counting its own connections only.
pub fn start(anvil: &Arc<Anvil>, queue: &Queue, run_as: Option<RunAs>) -> Option<JoinHandle<()>> {
    let path = queue.private_socket(protocol::ANVIL);
    let listener = match daemon::bind_socket(&path) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, socket = %path.display(), "cannot bind the anvil socket; connection limits count per smtpd process");
            return None;
        }
    };
    if let Some(run_as) = run_as
        && let Err(error) = chown(&path, Some(run_as.uid), Some(run_as.gid))
    {
        tracing::error!(%error, socket = %path.display(), "cannot give the anvil socket to the daemons' user");
    }
    Some(tokio::spawn(serve(Arc::clone(anvil), listener)))
}

async fn serve(anvil: Arc<Anvil>, listener: UnixListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(client(Arc::clone(&anvil), stream));
            }
            Err(error) => {
                tracing::warn!(%error, "anvil: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// One smtpd, until it closes its connection.
async fn client(anvil: Arc<Anvil>, mut stream: UnixStream) {
    if let Err(error) = empath_common::ipc::hello_server(&mut stream, "anvil").await {
        tracing::error!(%error, "anvil: connection refused");
        return;
    }
    let mut held = Held::default();
    if let Err(error) = requests(&anvil, &mut stream, &mut held).await {
        tracing::warn!(%error, "anvil: a client connection failed");
    }
    anvil.release_all(held);
}

async fn requests(anvil: &Anvil, stream: &mut UnixStream, held: &mut Held) -> io::Result<()> {
    while let Some(request) = read_frame::<_, AnvilRequest>(stream).await? {
        match request {
            AnvilRequest::Acquire(ip) => {
                let reply = anvil.acquire(held, ip);
                write_frame(stream, &reply).await?;
            }
            AnvilRequest::Release(ip) => anvil.release(held, ip),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anvil(max_total: usize, max_per_ip: usize) -> Anvil {
        let anvil = Anvil::default();
        {
            let mut state = anvil.lock();
            state.max_total = max_total;
            state.max_per_ip = max_per_ip;
        }
        anvil
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn limits_hold_across_smtpd_processes() {
        let anvil = anvil(3, 2);
        let (mut first, mut second) = (Held::default(), Held::default());
        assert_eq!(anvil.acquire(&mut first, A), AnvilReply::Granted);
        assert_eq!(anvil.acquire(&mut second, A), AnvilReply::Granted);
        assert_eq!(anvil.acquire(&mut first, A), AnvilReply::TooManyFromIp);
        assert_eq!(anvil.acquire(&mut second, B), AnvilReply::Granted);
        assert_eq!(anvil.acquire(&mut first, B), AnvilReply::TooMany);
        anvil.release(&mut first, A);
        assert_eq!(anvil.open(A), (2, 1));
        assert_eq!(anvil.acquire(&mut first, B), AnvilReply::Granted);
    }

    #[test]
    fn a_release_of_what_a_process_does_not_hold_is_ignored() {
        let anvil = anvil(10, 10);
        let (mut holder, mut other) = (Held::default(), Held::default());
        anvil.acquire(&mut holder, A);
        anvil.release(&mut other, A);
        assert_eq!(anvil.open(A), (1, 1));
    }

    #[test]
    fn a_departed_process_releases_everything_it_held() {
        let anvil = anvil(10, 10);
        let (mut crashed, mut alive) = (Held::default(), Held::default());
        for _ in 0..3 {
            anvil.acquire(&mut crashed, A);
        }
        anvil.acquire(&mut crashed, B);
        anvil.acquire(&mut alive, A);
        anvil.release_all(crashed);
        assert_eq!(anvil.open(A), (1, 1));
        assert_eq!(anvil.open(B), (1, 0));
    }
}
