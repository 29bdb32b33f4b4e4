//! Talking to the delivery agents: each job and each bounce request runs on
//! its own task and reports back to the scheduler as an [`Event`]. Jobs
//! reuse idle connections to their agent (smtp-out or empath-local, as
//! `transport` routes them).

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use empath_common::ipc::{self, IdleConnections};
use empath_common::protocol::{
    self, BounceKind, BounceReply, BounceRequest, DeliveryJob, DeliveryReport,
};
use empath_common::queue::{Queue, QueueId, QueueState};
use tokio::net::UnixStream;

use crate::scheduler::{Event, Events};
use crate::transport::{Router, Transport};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections to a delivery agent, kept idle for the next job: smtp-out
/// and empath-local serve jobs one after another on a connection. At most
/// one per concurrent delivery exists.
#[derive(Clone)]
pub struct SmtpOutConnections {
    socket: Arc<PathBuf>,
    idle: IdleConnections,
}

impl SmtpOutConnections {
    pub fn new(queue: &Queue) -> Self {
        Self::to(queue.private_socket(protocol::SMTP_OUT))
    }

    fn to(socket: PathBuf) -> Self {
        Self {
            socket: Arc::new(socket),
            idle: IdleConnections::default(),
        }
    }

    /// Sends `job` and waits for its report.
    async fn call(&self, job: &DeliveryJob) -> Result<DeliveryReport, AgentError> {
        if let Some(mut kept) = self.idle.take() {
            // A kept connection may lead to an agent that has exited since:
            // the write may still succeed (into the socket buffer) and the
            // read then finds the connection closed without a byte. Then
            // the job most likely never arrived: it goes once more, on a
            // fresh connection. Any other failure is the job's.
            if ipc::write_frame(&mut kept, job).await.is_ok() {
                match ipc::read_frame::<_, DeliveryReport>(&mut kept).await {
                    Ok(Some(report)) => {
                        self.idle.put_back(kept);
                        return Ok(report);
                    }
                    Ok(None) => {}
                    Err(error) if error.kind() == io::ErrorKind::ConnectionReset => {}
                    Err(error) => return Err(AgentError::Lost(error)),
                }
            }
        }
        let mut stream = self
            .connect_and_send(job)
            .await
            .map_err(AgentError::Unreachable)?;
        let report = ipc::read_frame(&mut stream)
            .await
            .map_err(AgentError::Lost)?
            .ok_or_else(|| {
                AgentError::Lost(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the agent closed the connection before reporting",
                ))
            })?;
        self.idle.put_back(stream);
        Ok(report)
    }

    async fn connect_and_send(&self, job: &DeliveryJob) -> io::Result<UnixStream> {
        let mut stream = ipc::connect(&self.socket, CONNECT_TIMEOUT).await?;
        ipc::write_frame(&mut stream, job).await?;
        Ok(stream)
    }
}

/// Why a delivery agent gave no report for a job.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The job was never handed over (the agent is down or restarting):
    /// it did not fail, and is not an attempt.
    #[error("cannot reach the delivery agent: {0}")]
    Unreachable(io::Error),
    /// The agent took the job and then failed (it crashed, or dropped the
    /// connection): an attempt that failed.
    #[error("the delivery agent failed during the delivery: {0}")]
    Lost(io::Error),
}

/// Who carries out the scheduler's decisions: the delivery agents and
/// bounce (as chasquid's Courier). Each call reports back later as an
/// [`Event`]. A trait, so the scheduler can be tested without processes.
pub trait Couriers {
    fn deliver(&self, job: DeliveryJob, events: Events);
    fn bounce(&self, id: QueueId, state: QueueState, kind: BounceKind, events: Events);
}

/// The delivery agents' connections, and the router that picks one.
#[derive(Clone)]
pub struct Agents {
    router: Router,
    smtp_out: SmtpOutConnections,
    local: SmtpOutConnections,
    bounce: Arc<PathBuf>,
}

impl Agents {
    pub fn new(queue: &Queue, router: Router) -> Self {
        Self {
            router,
            smtp_out: SmtpOutConnections::new(queue),
            local: SmtpOutConnections::to(queue.private_socket(Transport::Local.service())),
            bounce: Arc::new(queue.private_socket(protocol::BOUNCE)),
        }
    }

    fn for_job(&self, job: &DeliveryJob) -> &SmtpOutConnections {
        match self.router.for_domain(&job.domain) {
            Transport::Smtp => &self.smtp_out,
            Transport::Local => &self.local,
        }
    }
}

impl Couriers for Agents {
    /// Sends `job` to its delivery agent and reports the outcome.
    fn deliver(&self, job: DeliveryJob, events: Events) {
        let connections = self.for_job(&job).clone();
        tokio::spawn(async move {
            let result = connections.call(&job).await;
            let _ = events.send(Event::JobDone { job, result });
        });
    }

    /// Asks bounce to notify the sender of message `id`, which is in
    /// `state`.
    fn bounce(&self, id: QueueId, state: QueueState, kind: BounceKind, events: Events) {
        let socket = Arc::clone(&self.bounce);
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use empath_common::protocol::JobRecipient;
    use tokio::net::UnixListener;

    fn job() -> DeliveryJob {
        DeliveryJob {
            id: QueueId::generate(),
            sender: "a@example.org".into(),
            domain: "example.com".into(),
            recipients: vec![JobRecipient {
                index: 0,
                address: "b@example.com".into(),
            }],
            content_size: 5,
            smtputf8: false,
            active_since_ms: 0,
            attempt: 1,
            pass_on: Default::default(),
        }
    }

    /// Answers `jobs` jobs on one accepted connection, then closes it.
    async fn serve_one_connection(listener: &UnixListener, jobs: usize) {
        let (mut stream, _) = listener.accept().await.unwrap();
        ipc::hello_server(&mut stream, "smtp-out").await.unwrap();
        for _ in 0..jobs {
            let _job: DeliveryJob = ipc::read_frame(&mut stream).await.unwrap().unwrap();
            let report = DeliveryReport {
                results: Vec::new(),
                destination_failed: false,
                dsn_passed_on: Default::default(),
            };
            ipc::write_frame(&mut stream, &report).await.unwrap();
        }
    }

    #[tokio::test]
    async fn jobs_reuse_a_connection_and_survive_an_smtp_out_restart() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("smtp-out.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let connections = SmtpOutConnections::to(socket.clone());

        // Two jobs, one after the other: the server accepts only once.
        let server = serve_one_connection(&listener, 2);
        let client = async {
            connections.call(&job()).await.unwrap();
            connections.call(&job()).await.unwrap();
        };
        tokio::time::timeout(Duration::from_secs(5), async {
            tokio::join!(server, client)
        })
        .await
        .expect("both jobs answered on the first connection");

        // smtp-out exits (closing the kept connection) and a new one
        // listens: the next job still gets its report.
        drop(listener);
        std::fs::remove_file(&socket).unwrap();
        let listener = UnixListener::bind(&socket).unwrap();
        let server = serve_one_connection(&listener, 1);
        let third = job();
        let (_, report) = tokio::time::timeout(Duration::from_secs(5), async {
            tokio::join!(server, connections.call(&third))
        })
        .await
        .expect("the job answered on a new connection");
        assert!(report.is_ok(), "{report:?}");
    }
}
