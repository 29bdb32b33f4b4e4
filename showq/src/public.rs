//! `public/showq.sock`: the `mailq` listing for any local user. Bounded in
//! every way a local user could abuse: a small request read within a
//! timeout, a few listings at a time, frames of bounded size, and a
//! client that stops reading is dropped.

use std::io;
use std::time::Duration;

use empath_common::ipc::{read_frame_limited, write_frame};
use empath_common::protocol::{SHOWQ_MAX_REQUEST, ShowqReply, ShowqRequest};
use empath_common::queue::{Queue, lister};
use tokio::net::UnixStream;
use tokio::sync::{Semaphore, mpsc};

/// Connections served at once; more are told to try again.
const MAX_CONNECTIONS: usize = 32;
/// Listings read at once; the other connections wait their turn.
const MAX_LISTINGS: usize = 2;
/// How long a client may take to send its request, and to read a frame.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Entries are sent in frames of about this many bytes.
const FRAME_BYTES: usize = 64 * 1024;
/// Frames read ahead of the client.
const READ_AHEAD: usize = 4;

pub struct Mailq {
    queue: Queue,
    connections: Semaphore,
    listings: Semaphore,
}

impl Mailq {
    pub fn new(queue: Queue) -> Self {
        Self {
            queue,
            connections: Semaphore::new(MAX_CONNECTIONS),
            listings: Semaphore::new(MAX_LISTINGS),
        }
    }

    pub async fn connection(self: std::sync::Arc<Self>, mut stream: UnixStream) -> io::Result<()> {
        let Ok(_connection) = self.connections.try_acquire() else {
            return send(
                &mut stream,
                &ShowqReply::Error("too many mailq requests at once; try again".into()),
            )
            .await;
        };
        let request = tokio::time::timeout(
            CLIENT_TIMEOUT,
            read_frame_limited::<_, ShowqRequest>(&mut stream, SHOWQ_MAX_REQUEST),
        )
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no request"))??;
        match request {
            None => Ok(()),
            Some(ShowqRequest::Mailq) => {
                let _listing = self
                    .listings
                    .acquire()
                    .await
                    .map_err(|_| io::Error::other("closed"))?;
                self.stream_mailq(&mut stream).await
            }
        }
    }

    /// Reads the queue on a blocking thread and sends what it reads as it
    /// goes: memory holds a few frames, not the listing.
    async fn stream_mailq(&self, stream: &mut UnixStream) -> io::Result<()> {
        let (frames, mut outbox) = mpsc::channel(READ_AHEAD);
        let queue = self.queue.clone();
        let reader = tokio::task::spawn_blocking(move || read_mailq(&queue, &frames));
        while let Some(frame) = outbox.recv().await {
            send(stream, &frame).await?;
        }
        // The reader stops at its next frame once the receiver is gone.
        drop(outbox);
        let _ = reader.await;
        Ok(())
    }
}

/// Sends the listing as frames; stops when nobody is listening any more.
fn read_mailq(queue: &Queue, frames: &mpsc::Sender<ShowqReply>) {
    let entries = match lister::mailq(queue) {
        Ok(entries) => entries,
        Err(error) => {
            tracing::warn!(%error, "cannot list the queue");
            let _ =
                frames.blocking_send(ShowqReply::Error(format!("cannot list the queue: {error}")));
            return;
        }
    };
    let mut batch = Vec::new();
    let mut bytes = 0;
    for entry in entries {
        bytes += entry.weight();
        batch.push(entry);
        if bytes >= FRAME_BYTES {
            if frames
                .blocking_send(ShowqReply::Entries(std::mem::take(&mut batch)))
                .is_err()
            {
                return;
            }
            bytes = 0;
        }
    }
    if !batch.is_empty() && frames.blocking_send(ShowqReply::Entries(batch)).is_err() {
        return;
    }
    let _ = frames.blocking_send(ShowqReply::End);
}

async fn send(stream: &mut UnixStream, reply: &ShowqReply) -> io::Result<()> {
    tokio::time::timeout(CLIENT_TIMEOUT, write_frame(stream, reply))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "client stopped reading"))?
}
