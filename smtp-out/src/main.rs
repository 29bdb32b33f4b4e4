//! `empath-smtp-out`: delivers the jobs qmgr sends, over SMTP, and answers
//! with one result per recipient.

mod client;
mod route;
mod transaction;

use std::io;
use std::sync::Arc;

use empath_common::config::Config;
use empath_common::daemon;
use empath_common::ipc::{read_frame, write_frame};
use empath_common::protocol::{self, DeliveryJob, DeliveryReport, Outcome, RecipientResult};
use empath_common::queue::Queue;
use empath_common::smtp::Reply;
use tokio::net::UnixStream;

use client::SessionError;

struct SmtpOut {
    config: Config,
    queue: Queue,
    hostname: String,
}

#[tokio::main]
async fn main() {
    let started = daemon::start("smtp-out");
    let agent = Arc::new(SmtpOut {
        hostname: started.config.hostname(),
        config: started.config,
        queue: started.queue,
    });
    let path = agent.queue.private_socket(protocol::SMTP_OUT);
    let listener = match daemon::bind_socket(&path) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, socket = %path.display(), "cannot listen");
            std::process::exit(1);
        }
    };
    tracing::info!(socket = %path.display(), "smtp-out ready");
    tokio::select! {
        result = daemon::serve(listener, "smtp-out", move |stream| Arc::clone(&agent).connection(stream)) => {
            if let Err(error) = result {
                tracing::error!(%error, "smtp-out stopped");
            }
        }
        () = daemon::stop_requested() => tracing::info!("smtp-out stopping"),
    }
}

impl SmtpOut {
    async fn connection(self: Arc<Self>, mut stream: UnixStream) -> io::Result<()> {
        while let Some(job) = read_frame::<_, DeliveryJob>(&mut stream).await? {
            let report = self.deliver(&job).await;
            write_frame(&mut stream, &report).await?;
        }
        Ok(())
    }

    async fn deliver(&self, job: &DeliveryJob) -> DeliveryReport {
        let hosts = match route::destinations(&self.config, &job.domain) {
            Ok(hosts) => hosts,
            Err(reply) => return everyone(job, Outcome::Deferred, None, &reply),
        };
        let mut last_error = None;
        for host in &hosts {
            let remote = host.to_string();
            match self.attempt(&host.host, host.port, job, &remote).await {
                Ok(results) => {
                    log_results(job, &results);
                    return DeliveryReport { results };
                }
                Err(error) => {
                    tracing::warn!(message_id = %job.id, server = %remote, %error, "delivery attempt failed; trying the next MX server");
                    last_error = Some((remote, error));
                }
            }
        }
        let (remote, error) = last_error.unwrap_or_else(|| {
            (
                String::new(),
                SessionError::Connect {
                    host: job.domain.clone(),
                    detail: "no hosts".into(),
                },
            )
        });
        let reply = Reply::new(451, "4.4.1", error.to_string());
        everyone(
            job,
            Outcome::Deferred,
            (!remote.is_empty()).then_some(remote),
            &reply,
        )
    }

    async fn attempt(
        &self,
        host: &str,
        port: u16,
        job: &DeliveryJob,
        remote: &str,
    ) -> Result<Vec<RecipientResult>, SessionError> {
        let mut content = tokio::fs::File::open(self.queue.content_path(job.id))
            .await
            .map_err(|e| SessionError::Io {
                phase: "opening queued content",
                detail: e.to_string(),
            })?;
        let mut connection =
            client::connect(host, port, &self.config.delivery.smtp_timeouts).await?;
        let greeting = connection.greeting().await?;
        if !greeting.is_positive() {
            return Err(SessionError::Protocol {
                phase: "greeting",
                detail: greeting.to_string(),
            });
        }
        let hello = connection.hello(&self.hostname).await?;
        if !hello.is_positive() {
            return Err(SessionError::Protocol {
                phase: "HELO",
                detail: hello.to_string(),
            });
        }
        let results = transaction::run(&mut connection, job, &mut content, remote).await?;
        connection.quit().await;
        Ok(results)
    }
}

/// The same outcome for every recipient of the job.
fn everyone(
    job: &DeliveryJob,
    outcome: Outcome,
    remote: Option<String>,
    reply: &Reply,
) -> DeliveryReport {
    tracing::info!(message_id = %job.id, domain = %job.domain, smtp_code = reply.code, %reply, "delivery not possible now");
    DeliveryReport {
        results: job
            .recipients
            .iter()
            .map(|r| RecipientResult {
                index: r.index,
                outcome,
                remote: remote.clone(),
                reply: reply.clone(),
            })
            .collect(),
    }
}

fn log_results(job: &DeliveryJob, results: &[RecipientResult]) {
    for result in results {
        let recipient = job
            .recipients
            .iter()
            .find(|r| r.index == result.index)
            .map(|r| r.address.as_str())
            .unwrap_or("");
        tracing::info!(
            message_id = %job.id,
            recipient,
            domain = %job.domain,
            server = result.remote.as_deref().unwrap_or(""),
            smtp_code = result.reply.code,
            outcome = ?result.outcome,
            reply = %result.reply,
            "delivery result"
        );
    }
}
