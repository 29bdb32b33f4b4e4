//! Group commit of directory entries. Every message needs the entries of
//! its content file (`data/`) and its envelope (`incoming/`) on disk before
//! smtpd may answer 250. Instead of two directory fsyncs per message, one
//! task does them for all the messages staged while the previous round
//! ran: a message is acknowledged only by a round that started after its
//! rename, so nothing is acknowledged early.

use std::io;

use empath_common::queue::Queue;
use tokio::sync::{mpsc, oneshot};

/// The round's outcome, as an error's kind and text: `io::Error` cannot be
/// cloned for every waiter, and the kind is what decides the reply (a
/// full disk is 452, not 451).
type Outcome = Result<(), (io::ErrorKind, String)>;
type Waiter = oneshot::Sender<Outcome>;

#[derive(Clone)]
pub struct GroupCommit {
    requests: mpsc::UnboundedSender<Waiter>,
}

impl GroupCommit {
    pub fn start(queue: Queue) -> Self {
        let (requests, inbox) = mpsc::unbounded_channel();
        tokio::spawn(run(queue, inbox));
        Self { requests }
    }

    /// Waits until the directory entries of everything staged before this
    /// call are durable.
    pub async fn sync(&self) -> io::Result<()> {
        let (done, wait) = oneshot::channel();
        self.requests
            .send(done)
            .map_err(|_| io::Error::other("group commit task has stopped"))?;
        wait.await
            .map_err(|_| io::Error::other("group commit task has stopped"))?
            .map_err(|(kind, text)| io::Error::new(kind, text))
    }
}

async fn run(queue: Queue, mut inbox: mpsc::UnboundedReceiver<Waiter>) {
    while let Some(first) = inbox.recv().await {
        let mut round = vec![first];
        while let Ok(next) = inbox.try_recv() {
            round.push(next);
        }
        let queue = queue.clone();
        let result: Outcome =
            match tokio::task::spawn_blocking(move || queue.sync_new_entries()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(error)) => Err((error.kind(), error.to_string())),
                Err(error) => Err((io::ErrorKind::Other, error.to_string())),
            };
        if round.len() > 1 {
            tracing::trace!(messages = round.len(), "group commit");
        }
        for waiter in round {
            let _ = waiter.send(result.clone());
        }
    }
}
