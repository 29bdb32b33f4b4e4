//! `empath-smtp-out`: delivers the jobs qmgr sends, over SMTP, and answers
//! with one result per recipient.

mod cache;
mod client;
mod control;
mod dane;
mod dns;
mod https;
mod module_events;
mod myself;
mod outbound;
mod params;
mod policy;
mod pool;
mod route;
mod sts;
mod tls;
mod tlsrpt;
mod transaction;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use empath_common::config::{Config, DomainTransport, LmtpEndpoint};
use empath_common::daemon;
use empath_common::ipc::write_frame;
use empath_common::maillog;
use empath_common::protocol::{
    self, Appended, DeliveryJob, DeliveryReport, Outcome, RecipientResult,
};
use empath_common::queue::{Queue, QueueId};
use empath_common::smtp::Reply;
use empath_common::time::unix_now_ms;
use empath_common::traces;
use tokio::net::UnixStream;
use tracing::Instrument;

use client::{Connection, SessionError, Stream};
use dns::MxResolver;
use myself::Myself;
use pool::Pool;
use sts::StsPolicies;
use tls::TlsClients;
use tlsrpt::Reports;
use transaction::{Dialect, Finished, Reuse};

struct SmtpOut {
    config: Config,
    queue: Queue,
    hostname: String,
    resolver: MxResolver,
    tls: TlsClients,
    /// The verified client config of the HTTPS client (MTA-STS, TLS-RPT).
    https_tls: Arc<rustls::ClientConfig>,
    sts: StsPolicies,
    reports: Reports,
    pool: Pool,
    /// Our own listeners and names, read at the first delivery.
    myself: tokio::sync::OnceCell<Myself>,
}

#[tokio::main]
async fn main() {
    let started = daemon::start("smtp-out");
    // As in smtpd and qmgr: a module that cannot be loaded is a config
    // error (EX_CONFIG, 78), reported with its reason.
    let modules =
        empath_modules::Modules::load_configured(&started.config.modules).unwrap_or_else(|error| {
            tracing::error!(%error, "cannot load modules");
            eprintln!("empath-smtp-out: cannot load modules: {error}");
            std::process::exit(78);
        });
    let resolver = MxResolver::new(&started.config.dns)
        .unwrap_or_else(|error| {
            tracing::error!(%error, "cannot set up DNS");
            std::process::exit(1);
        })
        .observed_by(module_events::dns_lookups(Arc::new(modules)));
    let tls = TlsClients::new(&started.config.delivery.tls_ca_files).unwrap_or_else(|error| {
        tracing::error!(%error, "cannot set up TLS");
        eprintln!("empath-smtp-out: {error}");
        std::process::exit(78);
    });
    let https_tls = Arc::new(
        rustls::ClientConfig::builder_with_provider(tls.provider())
            .with_safe_default_protocol_versions()
            .map(|builder| {
                builder
                    .with_root_certificates(tls.roots())
                    .with_no_client_auth()
            })
            .unwrap_or_else(|error| {
                tracing::error!(%error, "cannot set up TLS");
                std::process::exit(1);
            }),
    );
    let delivery = &started.config.delivery;
    let sts = StsPolicies::new(
        delivery.mta_sts.clone(),
        started.queue.private_dir("sts"),
        Arc::clone(&https_tls),
    );
    let reports = Reports::new(
        delivery.tls_reports.clone(),
        started.queue.private_dir("tlsrpt"),
    );
    let agent = Arc::new(SmtpOut {
        myself: tokio::sync::OnceCell::new(),
        hostname: started.config.hostname(),
        pool: Pool::new(Duration::from_secs(delivery.connection_idle_secs)),
        sts,
        reports,
        https_tls,
        config: started.config,
        queue: started.queue,
        resolver,
        tls,
    });
    let path = agent.queue.private_socket(protocol::SMTP_OUT);
    let listener = match daemon::bind_socket(&path) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, socket = %path.display(), "cannot listen");
            std::process::exit(1);
        }
    };
    tokio::spawn(close_idle_connections(Arc::clone(&agent)));
    tokio::spawn(send_tls_reports(Arc::clone(&agent)));
    let control_path = agent.queue.private_socket(protocol::SMTP_OUT_CONTROL);
    match daemon::bind_socket(&control_path) {
        Ok(control) => {
            let agent = Arc::clone(&agent);
            tokio::spawn(daemon::serve(control, "smtp-out-control", move |stream| {
                control::serve(Arc::clone(&agent), stream)
            }));
        }
        Err(error) => {
            tracing::warn!(%error, socket = %control_path.display(), "no DNS control socket")
        }
    }
    tracing::info!(socket = %path.display(), nameservers = ?agent.config.dns.nameservers, "smtp-out ready");
    // A stop lets the deliveries in progress finish: their results reach
    // qmgr, none is cut off and counted as a failed attempt.
    tokio::spawn(daemon::drain_on_stop());
    if let Err(error) = daemon::serve(listener, "smtp-out", move |stream| {
        Arc::clone(&agent).connection(stream)
    })
    .await
    {
        tracing::error!(%error, "smtp-out stopped");
    }
    tokio::task::block_in_place(empath_common::traces::shutdown);
}

/// Says QUIT on connections that were idle too long.
async fn close_idle_connections(agent: Arc<SmtpOut>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        for mut connection in agent.pool.expired() {
            tokio::spawn(async move { connection.quit().await });
        }
    }
}

/// Sends the TLS reports of intervals that are over; looks often enough
/// that a report goes out soon after its interval ends.
async fn send_tls_reports(agent: Arc<SmtpOut>) {
    if !agent.reports.enabled() {
        return;
    }
    let every = (agent.config.delivery.tls_reports.interval_secs / 4).clamp(1, 300);
    let mut tick = tokio::time::interval(Duration::from_secs(every));
    loop {
        tick.tick().await;
        let sender = tlsrpt::Sender {
            queue: &agent.queue,
            resolver: &agent.resolver,
            tls: Arc::clone(&agent.https_tls),
            hostname: &agent.hostname,
        };
        agent.reports.send_due(&sender).await;
    }
}

impl SmtpOut {
    async fn connection(self: Arc<Self>, mut stream: UnixStream) -> io::Result<()> {
        while let Some(job) = daemon::next_request::<DeliveryJob, _>(&mut stream).await? {
            let report = self.deliver(&job).await;
            write_frame(&mut stream, &report).await?;
        }
        Ok(())
    }

    /// One job, traced as one `delivery attempt` span.
    async fn deliver(&self, job: &DeliveryJob) -> DeliveryReport {
        let lmtp = self
            .config
            .delivery
            .domains
            .get(&job.domain)
            .and_then(|policy| policy.transport.clone());
        let transport = if lmtp.is_some() { "lmtp" } else { "smtp" };
        let span = traces::delivery_attempt(job, transport);
        let delivering = async {
            match &lmtp {
                Some(DomainTransport::Lmtp(endpoint)) => self.deliver_lmtp(job, endpoint).await,
                None => self.deliver_smtp(job).await,
            }
        };
        let report = delivering.instrument(span.log_context()).await;
        traces::end_delivery_attempt(span, &report);
        report
    }

    /// Our listeners and names. Until the master has published its
    /// listeners, nothing is recognised (and the lookup is tried again).
    async fn myself(&self) -> &Myself {
        static NOBODY: std::sync::OnceLock<Myself> = std::sync::OnceLock::new();
        let queue = self.queue.clone();
        let hostname = self.hostname.clone();
        let found = self
            .myself
            .get_or_try_init(|| async move {
                tokio::task::spawn_blocking(move || Myself::discover(&queue, &hostname))
                    .await
                    .map_err(std::io::Error::other)?
            })
            .await;
        match found {
            Ok(myself) => myself,
            Err(error) => {
                tracing::warn!(%error, "cannot read the master's listeners yet: mail loops through them are not recognised");
                NOBODY.get_or_init(Myself::default)
            }
        }
    }

    /// LMTP (RFC 2033) to the domain's server, e.g. Dovecot: one reply per
    /// recipient after the content. A new connection per message; the
    /// server is local, so there is nothing to gain from keeping it.
    async fn deliver_lmtp(&self, job: &DeliveryJob, endpoint: &LmtpEndpoint) -> DeliveryReport {
        let remote = match endpoint {
            LmtpEndpoint::Unix(path) => path.display().to_string(),
            LmtpEndpoint::Inet(target) => target.to_string(),
        };
        let received = unix_now_ms();
        let mut connected = received;
        let attempt = async {
            let timeouts = &self.config.delivery.smtp_timeouts;
            let mut connection = match endpoint {
                LmtpEndpoint::Unix(path) => client::connect_unix(path, timeouts).await?,
                LmtpEndpoint::Inet(target) => {
                    let addr = tokio::net::lookup_host((target.host.as_str(), target.port))
                        .await
                        .ok()
                        .and_then(|mut addrs| addrs.next())
                        .ok_or_else(|| SessionError::Connect {
                            host: target.to_string(),
                            detail: "cannot resolve the LMTP server".into(),
                        })?;
                    client::connect(addr, timeouts).await?
                }
            };
            let greeting = connection.greeting().await?;
            if !greeting.is_completion() {
                return Err(SessionError::Protocol {
                    phase: "greeting",
                    detail: greeting.to_string(),
                });
            }
            connection.lhlo(&self.hostname).await?;
            connected = unix_now_ms();
            let finished = self
                .transaction(&mut connection, job, &remote, Reuse::Fresh, Dialect::Lmtp)
                .await?;
            if finished.reusable {
                connection.quit().await;
            }
            Ok(finished)
        };
        match attempt.await {
            Ok(finished) => report(job, finished, received, connected),
            Err(error) => {
                tracing::warn!(message_id = %job.id, domain = %job.domain, server = %remote, %error, "LMTP delivery attempt failed");
                everyone(
                    job,
                    Outcome::Deferred,
                    Some(remote),
                    &error.reply(),
                    true,
                    received,
                )
            }
        }
    }

    async fn transaction(
        &self,
        connection: &mut Connection<Stream>,
        job: &DeliveryJob,
        remote: &str,
        reuse: Reuse,
        dialect: Dialect,
    ) -> Result<Finished, SessionError> {
        let queue = self.queue.clone();
        let id = job.id;
        let opened = tokio::task::spawn_blocking(move || read_queued_content(&queue, id))
            .await
            .map_err(std::io::Error::other)
            .and_then(|opened| opened);
        let content = opened.map_err(|e| SessionError::Io {
            phase: "opening queued content",
            detail: e.to_string(),
        })?;
        transaction::run(connection, job, content, remote, reuse, dialect).await
    }
}

/// Content up to this size is read into memory in the blocking call that
/// opens it; larger content is streamed from the file. tokio's file reads
/// each cost a trip to the blocking pool, which dominates for typical
/// messages of a few kilobytes.
const READ_WHOLE_LIMIT: u64 = 1 << 20;

/// Opens a message's content, without the sealed envelope that may follow it.
fn read_queued_content(queue: &Queue, id: QueueId) -> std::io::Result<transaction::Content> {
    let (file, len) = queue.open_content_with_len(id)?;
    if len > READ_WHOLE_LIMIT {
        let file = tokio::fs::File::from_std(file);
        return Ok(transaction::Content::Streamed(Box::new(
            tokio::io::AsyncReadExt::take(file, len),
        )));
    }
    let mut content = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    std::io::Read::read_to_end(&mut std::io::Read::take(file, len), &mut content)?;
    Ok(transaction::Content::Whole(content))
}

/// The report of a finished transaction. `received` is when the job
/// came, `connected` when its connection was ready (for the log's delays).
fn report(job: &DeliveryJob, finished: Finished, received: u64, connected: u64) -> DeliveryReport {
    log_results(job, &finished.results, received, connected);
    let dsn_passed_on = if finished.dsn_passed_on {
        finished
            .results
            .iter()
            .filter(|r| r.outcome == Outcome::Delivered)
            .map(|r| r.index)
            .collect()
    } else {
        Vec::new()
    };
    DeliveryReport {
        results: finished.results,
        destination_failed: false,
        dsn_passed_on: Appended(dsn_passed_on),
    }
}

/// The same outcome for every recipient of the job. `remote` names the
/// server only when `reply` is its own.
fn everyone(
    job: &DeliveryJob,
    outcome: Outcome,
    remote: Option<String>,
    reply: &Reply,
    destination_failed: bool,
    received: u64,
) -> DeliveryReport {
    let results: Vec<RecipientResult> = job
        .recipients
        .iter()
        .map(|r| RecipientResult {
            index: r.index,
            outcome,
            remote: remote.clone(),
            reply: reply.clone(),
        })
        .collect();
    log_results(job, &results, received, unix_now_ms());
    DeliveryReport {
        results,
        destination_failed,
        dsn_passed_on: Appended::default(),
    }
}

/// One line per recipient, as Postfix's smtp(8) writes them (see
/// [`maillog::delivery`]).
fn log_results(job: &DeliveryJob, results: &[RecipientResult], received: u64, connected: u64) {
    let delays = maillog::Delays::measure(job, received, connected, unix_now_ms());
    for result in results {
        let recipient = job
            .recipients
            .iter()
            .find(|r| r.index == result.index)
            .map(|r| r.address.as_str())
            .unwrap_or("");
        maillog::delivery(&maillog::Delivered {
            id: job.id,
            recipient,
            domain: &job.domain,
            relay: maillog::relay(result.remote.as_deref()),
            server: result.remote.as_deref(),
            delays,
            reply: &result.reply,
            outcome: result.outcome,
            attempt: job.attempt,
        });
    }
}
