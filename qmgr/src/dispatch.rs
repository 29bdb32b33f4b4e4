//! Talking to the delivery agents: each job and each bounce request runs on
//! its own task and reports back to the scheduler as an [`Event`].

use std::time::Duration;

use empath_common::ipc;
use empath_common::protocol::{
    self, BounceKind, BounceReply, BounceRequest, DeliveryJob, DeliveryReport,
};
use empath_common::queue::{Queue, QueueId, QueueState};
use tokio::sync::mpsc;

use crate::scheduler::Event;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends `job` to smtp-out and reports the outcome.
pub fn deliver(queue: &Queue, job: DeliveryJob, events: mpsc::UnboundedSender<Event>) {
    let socket = queue.private_socket(protocol::SMTP_OUT);
    tokio::spawn(async move {
        let result = async {
            let mut stream = ipc::connect(&socket, CONNECT_TIMEOUT).await?;
            ipc::call::<_, _, DeliveryReport>(&mut stream, &job).await
        }
        .await
        .map_err(|e| e.to_string());
        let _ = events.send(Event::JobDone { job, result });
    });
}

/// Asks bounce to notify the sender of message `id`, which is in `state`.
pub fn bounce(
    queue: &Queue,
    id: QueueId,
    state: QueueState,
    kind: BounceKind,
    events: mpsc::UnboundedSender<Event>,
) {
    let socket = queue.private_socket(protocol::BOUNCE);
    tokio::spawn(async move {
        let request = BounceRequest { id, state, kind };
        let result = async {
            let mut stream = ipc::connect(&socket, CONNECT_TIMEOUT).await?;
            ipc::call::<_, _, BounceReply>(&mut stream, &request).await
        }
        .await
        .map_err(|e| e.to_string());
        let _ = events.send(Event::BounceDone { id, kind, result });
    });
}
