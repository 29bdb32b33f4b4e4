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

    /// Asks for a round making the directory entries of everything staged
    /// before this call durable, without waiting for it yet: a caller that
    /// still has work of its own (its file's fsync) does it meanwhile.
    /// Does not block.
    pub fn ask(&self) -> Round {
        let (done, wait) = oneshot::channel();
        let asked = self.requests.send(done).is_ok();
        Round { wait, asked }
    }
}

/// A group commit round asked for with [`GroupCommit::ask`].
pub struct Round {
    wait: oneshot::Receiver<Outcome>,
    asked: bool,
}

impl Round {
    /// Waits until the round is done.
    pub async fn wait(self) -> io::Result<()> {
        let stopped = || io::Error::other("group commit task has stopped");
        if !self.asked {
            return Err(stopped());
        }
        self.wait
            .await
            .map_err(|_| stopped())?
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
