//! `private/anvil.sock`: one connection per smtpd process, carrying
//! [`AnvilRequest`]s. What an smtpd held is released when its connection
//! closes, so a crashed smtpd leaks nothing.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use empath_common::daemon;
use empath_common::ipc::{read_frame, write_frame};
use empath_common::protocol::{AnvilReply, AnvilRequest};
use tokio::net::{UnixListener, UnixStream};

use crate::accounting::{Accounting, Held};

/// The accounting, shared by the connections of every smtpd.
#[derive(Debug, Clone)]
pub struct Shared(Arc<Mutex<Accounting>>);

impl Shared {
    pub fn new(accounting: Accounting) -> Self {
        Self(Arc::new(Mutex::new(accounting)))
    }

    fn lock(&self) -> MutexGuard<'_, Accounting> {
        // The counts stay consistent even if a holder panicked.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Serves the anvil socket until the process stops.
pub async fn serve(listener: UnixListener, shared: Shared) -> io::Result<()> {
    daemon::serve(listener, "anvil", move |stream| {
        let shared = shared.clone();
        async move { client(shared, stream).await }
    })
    .await
}

/// One smtpd, until it closes its connection.
async fn client(shared: Shared, mut stream: UnixStream) -> io::Result<()> {
    let mut held = Held::default();
    let result = requests(&shared, &mut stream, &mut held).await;
    shared.lock().release_all(held);
    result
}

async fn requests(shared: &Shared, stream: &mut UnixStream, held: &mut Held) -> io::Result<()> {
    while let Some(request) = read_frame::<_, AnvilRequest>(stream).await? {
        if let Some(reply) = answer(shared, held, request) {
            write_frame(stream, &reply).await?;
        }
    }
    Ok(())
}

/// Applies one request; the reply, for the requests that have one.
fn answer(shared: &Shared, held: &mut Held, request: AnvilRequest) -> Option<AnvilReply> {
    let mut accounting = shared.lock();
    match request {
        AnvilRequest::Acquire(ip) => Some(accounting.acquire(held, ip.to_canonical())),
        AnvilRequest::Release(ip) => {
            accounting.release(held, ip.to_canonical());
            None
        }
        AnvilRequest::Register(ip, count) => {
            accounting.register(held, ip.to_canonical(), count);
            Some(AnvilReply::Registered)
        }
        AnvilRequest::Disconnect(ip) => {
            accounting.release(held, ip.to_canonical());
            Some(AnvilReply::Disconnected)
        }
        AnvilRequest::AuthAllowed(ip) => {
            Some(accounting.auth_allowed(ip.to_canonical(), Instant::now()))
        }
        AnvilRequest::AuthFailed(ip) => {
            Some(accounting.auth_failed(ip.to_canonical(), Instant::now()))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::time::Duration;

    use super::*;
    use crate::accounting::Limits;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

    async fn ask(stream: &mut UnixStream, request: AnvilRequest) -> AnvilReply {
        write_frame(stream, &request).await.unwrap();
        read_frame(stream).await.unwrap().unwrap()
    }

    #[tokio::test]
    async fn a_closed_connection_releases_what_its_smtpd_held() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("anvil.sock");
        let shared = Shared::new(Accounting::new(Limits {
            max_total: 10,
            max_per_ip: 2,
            max_auth_failures: 3,
            auth_failure_window: Duration::from_secs(60),
        }));
        tokio::spawn(serve(UnixListener::bind(&path).unwrap(), shared.clone()));
        let mut first = UnixStream::connect(&path).await.unwrap();
        let mut second = UnixStream::connect(&path).await.unwrap();
        for stream in [&mut first, &mut second] {
            empath_common::ipc::hello_client(stream, "anvil")
                .await
                .unwrap();
        }
        assert_eq!(
            ask(&mut first, AnvilRequest::Register(A, 1)).await,
            AnvilReply::Registered
        );
        assert_eq!(
            ask(&mut first, AnvilRequest::Acquire(A)).await,
            AnvilReply::Granted
        );
        assert_eq!(
            ask(&mut second, AnvilRequest::Acquire(A)).await,
            AnvilReply::TooManyFromIp
        );
        assert_eq!(
            ask(&mut first, AnvilRequest::Disconnect(A)).await,
            AnvilReply::Disconnected
        );
        assert_eq!(
            ask(&mut second, AnvilRequest::Acquire(A)).await,
            AnvilReply::Granted
        );
        drop(first);
        // The first smtpd's remaining connection goes with it.
        let deadline = Instant::now() + Duration::from_secs(5);
        while shared.lock().open(A) != (1, 1) {
            assert!(Instant::now() < deadline, "{:?}", shared.lock().open(A));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
