//! The agent: takes jobs from qmgr on `private/local.sock` and answers
//! each with one result per recipient, like smtp-out. A job is delivered
//! on a blocking thread: the mailbox writers, the delivery helpers and the
//! commands all block.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Arc;

use empath_common::config::{Config, LocalDomains};
use empath_common::ipc::{read_frame, write_frame};
use empath_common::local_recipients::LocalRecipients;
use empath_common::protocol::{self, DeliveryJob, DeliveryReport, RecipientResult};
use empath_common::queue::Queue;
use tokio::net::UnixStream;

use crate::expand::Job;
use crate::helper::Helper;
use crate::identity::Identity;
use crate::message::Message;
use crate::status::Status;

pub struct Agent {
    pub config: Config,
    pub queue: Queue,
    pub recipients: LocalRecipients,
    pub hostname: String,
    pub helper: Helper,
    /// Root: deliveries switch to the recipient (or alias owner).
    pub privileged: bool,
    pub me: Identity,
    /// Commands and files of root-owned alias files run as this user.
    pub default_privs: Identity,
    pub cleanup_socket: PathBuf,
}

/// Why the agent cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("local_delivery.default_privs: no user {0:?}")]
    NoDefaultPrivs(String),
    #[error("local_delivery.default_privs: {0:?} is root; it must be an unprivileged user")]
    RootDefaultPrivs(String),
    #[error("cannot find the empath-local executable for its delivery helper: {0}")]
    Helper(io::Error),
}

impl Agent {
    pub fn new(config: Config, queue: Queue) -> Result<Self, StartError> {
        let privileged = nix::unistd::geteuid().is_root();
        let me = Identity::current();
        let name = &config.local_delivery.default_privs;
        let default_privs = match empath_common::local_recipients::system_user(name) {
            Some(user) if user.uid.is_root() => {
                return Err(StartError::RootDefaultPrivs(name.clone()));
            }
            Some(user) => Identity::of_user(&user),
            // Unprivileged, everything runs as the agent anyway.
            None if !privileged => me.clone(),
            None => return Err(StartError::NoDefaultPrivs(name.clone())),
        };
        Ok(Self {
            recipients: LocalRecipients::new(&config),
            hostname: config.hostname(),
            helper: Helper::new(privileged).map_err(StartError::Helper)?,
            cleanup_socket: queue.private_socket(protocol::CLEANUP),
            privileged,
            me,
            default_privs,
            config,
            queue,
        })
    }

    pub fn domains(&self) -> &LocalDomains {
        self.recipients.domains()
    }

    pub async fn connection(self: Arc<Self>, mut stream: UnixStream) -> io::Result<()> {
        while let Some(job) = read_frame::<_, DeliveryJob>(&mut stream).await? {
            let agent = Arc::clone(&self);
            let runtime = tokio::runtime::Handle::current();
            let job = Arc::new(job);
            let running = Arc::clone(&job);
            let span = empath_common::traces::delivery_attempt(&job, "local");
            let log_context = span.log_context();
            let report = match tokio::task::spawn_blocking(move || {
                log_context.in_scope(|| agent.deliver(&running, &runtime))
            })
            .await
            {
                Ok(report) => report,
                Err(error) => {
                    tracing::error!(message_id = %job.id, %error, "a delivery thread failed");
                    let status = Status::deferred("4.3.0", "local delivery failed unexpectedly");
                    self.report(
                        &job,
                        job.recipients
                            .iter()
                            .map(|r| (r.index, status.clone()))
                            .collect(),
                    )
                }
            };
            empath_common::traces::end_delivery_attempt(span, &report);
            write_frame(&mut stream, &report).await?;
        }
        Ok(())
    }

    /// Delivers one job. Blocking.
    pub fn deliver(&self, job: &DeliveryJob, runtime: &tokio::runtime::Handle) -> DeliveryReport {
        let content = match self.read_content(job) {
            Ok(content) => content,
            Err(error) => {
                let status =
                    Status::deferred("4.3.0", format!("cannot read the queued message: {error}"));
                return self.report(
                    job,
                    job.recipients
                        .iter()
                        .map(|r| (r.index, status.clone()))
                        .collect(),
                );
            }
        };
        let message = Message::new(&job.sender, content);
        let mut delivery = Job::new(self, &message);
        let mut statuses: BTreeMap<usize, Status> = BTreeMap::new();
        for recipient in &job.recipients {
            let status = delivery.recipient(recipient.index, &recipient.address);
            statuses.insert(recipient.index, status);
        }
        delivery.send_forwards(runtime, &mut statuses);
        self.report(job, statuses)
    }

    fn read_content(&self, job: &DeliveryJob) -> io::Result<Vec<u8>> {
        let (file, len) = self.queue.open_content_with_len(job.id)?;
        let mut content = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        file.take(len).read_to_end(&mut content)?;
        Ok(content)
    }

    fn report(&self, job: &DeliveryJob, statuses: BTreeMap<usize, Status>) -> DeliveryReport {
        let results: Vec<RecipientResult> = statuses
            .into_iter()
            .map(|(index, status)| {
                let recipient = job
                    .recipients
                    .iter()
                    .find(|r| r.index == index)
                    .map(|r| r.address.as_str())
                    .unwrap_or("");
                let now = empath_common::time::unix_now_ms();
                empath_common::maillog::delivery(&empath_common::maillog::Delivered {
                    id: job.id,
                    recipient,
                    domain: &job.domain,
                    relay: "local".to_owned(),
                    server: None,
                    delays: empath_common::maillog::Delays::measure(job, now, now, now),
                    reply: &status.reply,
                    outcome: status.outcome,
                    attempt: job.attempt,
                });
                RecipientResult {
                    index,
                    outcome: status.outcome,
                    remote: None,
                    reply: status.reply,
                }
            })
            .collect();
        DeliveryReport {
            results,
            destination_failed: false,
            dsn_passed_on: Default::default(),
        }
    }
}
