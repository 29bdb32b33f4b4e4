//! Delivery over SMTP to a domain's MX hosts: the TLS policy of each host
//! (see [`crate::policy`]), the connection that meets it, the transaction,
//! and a TLS report record for each session.

use std::collections::HashMap;

use empath_common::protocol::{DeliveryJob, DeliveryReport, Outcome};
use empath_common::queue::{Queue, QueueId};
use empath_common::smtp::Reply;
use empath_common::time::unix_now_ms;

use crate::client::{self, CertProblem, Connection, SessionError, Stream};
use crate::dns::TlsaAnswer;
use crate::policy::{self, HostPolicy, MessageTls, Requirement, Source, Unusable};
use crate::route::{self, NoRoute, Target};
use crate::sts::{self, FailureKind};
use crate::tls::Verdict;
use crate::tlsrpt::{FailureRecord, PolicyRecord, SessionRecord};
use crate::transaction::{Dialect, Finished, Reuse};
use crate::{SmtpOut, everyone, pool, report};

/// How much of the content is read to find `TLS-Required:`.
const HEADER_PEEK: usize = 64 * 1024;

/// How TLS went on an open connection, for TLS reports.
struct TlsOutcome {
    /// TLS is active.
    encrypted: bool,
    /// The certificate check's verdict (made even when not enforced).
    verdict: Option<Verdict>,
}

impl SmtpOut {
    pub(crate) async fn deliver_smtp(&self, job: &DeliveryJob) -> DeliveryReport {
        let received = unix_now_ms();
        let targets = match route::targets(
            &self.config,
            &self.resolver,
            self.myself().await,
            &job.domain,
        )
        .await
        {
            Ok(targets) => targets,
            Err(NoRoute::Permanent(reply)) => {
                return everyone(job, Outcome::Failed, None, &reply, false, received);
            }
            Err(NoRoute::Temporary(reply)) => {
                return everyone(job, Outcome::Deferred, None, &reply, true, received);
            }
        };
        let level = self.config.delivery.tls_level(&job.domain);
        let overridden = self
            .config
            .delivery
            .domains
            .get(&job.domain)
            .is_some_and(|d| d.mx_override.is_some());
        let mut sts = if overridden {
            sts::Lookup::NoPolicy
        } else {
            self.sts.lookup(&job.domain, &self.resolver).await
        };
        // The header is read only when a published policy could apply.
        let published = !matches!(sts, sts::Lookup::NoPolicy)
            || (self.resolver.validating() && targets.iter().any(|t| t.dnssec));
        let message = self.message_tls(job, published && !overridden).await;
        let relaxed = message.tls_required_no && !message.requiretls;
        if relaxed {
            sts = sts::Lookup::NoPolicy;
        }
        if let sts::Lookup::Failed(failure) = &sts {
            let result_type = match failure.kind {
                FailureKind::Fetch => "sts-policy-fetch-error",
                FailureKind::Invalid => "sts-policy-invalid",
                FailureKind::WebPki => "sts-webpki-invalid",
            };
            let policy = PolicyRecord {
                policy_type: "sts".into(),
                strings: Vec::new(),
                domain: job.domain.clone(),
                mx_host: Vec::new(),
            };
            self.record(job, policy, Some(failure_record(result_type, None, None)))
                .await;
        }
        let dane_applies = self.resolver.validating() && !overridden && !relaxed;
        let port = self.config.delivery.smtp_port;
        let mut tlsa: HashMap<String, TlsaAnswer> = HashMap::new();
        // The server (when the reply is its own) and the reply of the
        // last host that was not delivered to.
        let mut last: Option<(Option<String>, Reply)> = None;
        let mut all_permanent = true;
        for target in &targets {
            let remote = target.describe();
            let dane = if dane_applies && target.dnssec {
                if !tlsa.contains_key(&target.name) {
                    let answer = self.resolver.tlsa(&target.name, port).await;
                    tlsa.insert(target.name.clone(), answer);
                }
                tlsa.get(&target.name)
            } else {
                None
            };
            let decided = if overridden {
                override_policy(level, message, &target.name)
            } else {
                policy::decide(&target.name, dane, &sts, level, message)
            };
            let host = match decided {
                Ok(host) => host,
                Err(unusable) => {
                    tracing::warn!(message_id = %job.id, domain = %job.domain, server = %remote, reason = %unusable.reply, "MX host not used");
                    if let Some(result_type) = unusable.report {
                        let policy = self.policy_record(job, target, dane, &sts);
                        let failure = failure_record(result_type, Some(target), Some(&unusable));
                        self.record(job, policy, Some(failure)).await;
                    }
                    all_permanent &= unusable.permanent();
                    last = Some((None, unusable.reply));
                    continue;
                }
            };
            tracing::debug!(message_id = %job.id, domain = %job.domain, server = %remote, tls = %host.requirement.describe(), why = %host.source.describe(), "TLS policy");
            let mut connected = received;
            match self
                .attempt(target, &host, job, &remote, &mut connected)
                .await
            {
                Ok(finished) => return report(job, finished, received, connected),
                Err(error) => {
                    tracing::warn!(message_id = %job.id, domain = %job.domain, server = %remote, %error, "delivery attempt failed; trying the next MX server");
                    let reply = error.reply();
                    all_permanent &= reply.code >= 500;
                    last = Some((Some(remote), reply));
                }
            }
        }
        let (remote, reply) = last.unwrap_or_else(|| {
            (
                None,
                Reply::new(451, "4.4.3", format!("no server to try for {}", job.domain)),
            )
        });
        if all_permanent && reply.code >= 500 {
            everyone(job, Outcome::Failed, remote, &reply, false, received)
        } else {
            everyone(job, Outcome::Deferred, remote, &reply, true, received)
        }
    }

    /// What `empathctl tls policy DOMAIN` shows: the policy each MX host
    /// would get for an ordinary message now, and why.
    pub(crate) async fn tls_policy_view(
        &self,
        domain: &str,
    ) -> empath_common::control::TlsPolicyView {
        use empath_common::control::{TlsHostView, TlsPolicyView};
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let delivery = &self.config.delivery;
        let level = delivery.tls_level(&domain);
        let mx_override = delivery
            .domains
            .get(&domain)
            .and_then(|d| d.mx_override.as_ref())
            .map(ToString::to_string);
        let mut view = TlsPolicyView {
            domain: domain.clone(),
            configured_level: level.to_string(),
            mx_override: mx_override.clone(),
            dnssec: self.resolver.validating(),
            mta_sts: String::new(),
            hosts: Vec::new(),
            error: None,
        };
        let sts = if mx_override.is_some() {
            view.mta_sts = "not applied (mx_override)".into();
            sts::Lookup::NoPolicy
        } else {
            let lookup = self.sts.lookup(&domain, &self.resolver).await;
            view.mta_sts = match &lookup {
                sts::Lookup::Policy(policy) => format!(
                    "mode {}, id {}, mx {}, max_age {}s, fetched {}s ago",
                    policy.mode.as_str(),
                    policy.id,
                    policy.mx.join(" "),
                    policy.max_age,
                    empath_common::time::unix_now().saturating_sub(policy.fetched)
                ),
                sts::Lookup::NoPolicy if !self.sts.enabled() => "off (delivery.mta_sts)".into(),
                sts::Lookup::NoPolicy => "none published".into(),
                sts::Lookup::Failed(failure) => format!("cannot be had: {}", failure.detail),
            };
            lookup
        };
        let targets = match route::targets(
            &self.config,
            &self.resolver,
            self.myself().await,
            &domain,
        )
        .await
        {
            Ok(targets) => targets,
            Err(NoRoute::Permanent(reply) | NoRoute::Temporary(reply)) => {
                view.error = Some(reply.to_string());
                return view;
            }
        };
        let port = delivery.smtp_port;
        let mut seen = std::collections::HashSet::new();
        for target in targets {
            if !seen.insert(target.name.clone()) {
                continue;
            }
            let dane = if self.resolver.validating() && target.dnssec && mx_override.is_none() {
                Some(self.resolver.tlsa(&target.name, port).await)
            } else {
                None
            };
            let decided = if mx_override.is_some() {
                override_policy(level, MessageTls::default(), &target.name)
            } else {
                policy::decide(
                    &target.name,
                    dane.as_ref(),
                    &sts,
                    level,
                    MessageTls::default(),
                )
            };
            let (policy, source) = match decided {
                Ok(host) => {
                    let mut source = host.source.describe();
                    if let Some(testing) = &host.sts_testing {
                        source.push_str(&format!(
                            "; MTA-STS policy {} in testing mode is reported on",
                            testing.id
                        ));
                    }
                    (host.requirement.describe(), source)
                }
                Err(unusable) => (format!("not used: {}", unusable.reply), "policy".into()),
            };
            view.hosts.push(TlsHostView {
                host: target.name,
                dnssec: target.dnssec,
                policy,
                source,
            });
        }
        view
    }

    /// REQUIRETLS from the envelope; `TLS-Required: No` from the header,
    /// when `read_header` (it only matters where DANE or MTA-STS applies).
    async fn message_tls(&self, job: &DeliveryJob, read_header: bool) -> MessageTls {
        let requiretls = job.pass_on.options.requiretls;
        let queue = self.queue.clone();
        let id = job.id;
        let tls_required_no = read_header
            && !requiretls
            && tokio::task::spawn_blocking(move || header_section(&queue, id))
                .await
                .ok()
                .and_then(Result::ok)
                .is_some_and(|header| tls_required_no(&header));
        MessageTls {
            requiretls,
            tls_required_no,
        }
    }

    /// Delivers on a kept connection to `target` if there is one, else on
    /// a new one; keeps the connection afterwards for the next message.
    async fn attempt(
        &self,
        target: &Target,
        host: &HostPolicy,
        job: &DeliveryJob,
        remote: &str,
        connected: &mut u64,
    ) -> Result<Finished, SessionError> {
        let key = pool::Key {
            addr: target.addr,
            name: target.name.clone(),
            tls: format!(
                "{}{}",
                host.requirement.describe(),
                if host.requiretls { "+requiretls" } else { "" }
            ),
        };
        if let Some(mut connection) = self.pool.take(&key) {
            *connected = unix_now_ms();
            match self
                .transaction(&mut connection, job, remote, Reuse::Kept, Dialect::Smtp)
                .await
            {
                Ok(finished) => return Ok(self.keep(key, connection, finished).await),
                // The kept connection failed its RSET check (the server
                // closed it while idle, or it is out of step): the server
                // accepted nothing on it, so a new connection is safe.
                Err(error) if error.phase() == Some(crate::transaction::RSET_PHASE) => {
                    tracing::debug!(server = %remote, %error, "kept connection failed its check; opening a new one");
                }
                Err(error) => return Err(error),
            }
        }
        let opened = self.open(target, host, &job.domain).await;
        self.report_session(job, target, host, &opened).await;
        let (mut connection, _) = opened?;
        *connected = unix_now_ms();
        let finished = self
            .transaction(&mut connection, job, remote, Reuse::Fresh, Dialect::Smtp)
            .await?;
        Ok(self.keep(key, connection, finished).await)
    }

    /// Keeps the connection for the next message if the transaction left
    /// it in step; otherwise it is closed.
    async fn keep(
        &self,
        key: pool::Key,
        connection: Connection<Stream>,
        finished: Finished,
    ) -> Finished {
        if finished.reusable
            && let Some(mut connection) = self.pool.put(key, connection)
        {
            connection.quit().await;
        }
        finished
    }

    /// Connects, greets, and negotiates TLS as the host's policy says.
    /// `may` falls back to a new connection in the clear when the
    /// handshake fails, as Postfix does.
    async fn open(
        &self,
        target: &Target,
        host: &HostPolicy,
        domain: &str,
    ) -> Result<(Connection<Stream>, TlsOutcome), SessionError> {
        match self
            .open_with(target, host, &host.requirement, domain)
            .await
        {
            Err(SessionError::Tls { detail, .. })
                if host.requirement == Requirement::Opportunistic =>
            {
                tracing::info!(domain, server = %target.describe(), %detail, "TLS handshake failed; trying again in the clear (level may)");
                self.open_with(target, host, &Requirement::Plain, domain)
                    .await
            }
            other => other,
        }
    }

    async fn open_with(
        &self,
        target: &Target,
        host: &HostPolicy,
        requirement: &Requirement,
        domain: &str,
    ) -> Result<(Connection<Stream>, TlsOutcome), SessionError> {
        let mut connection =
            client::connect(target.addr, &self.config.delivery.smtp_timeouts).await?;
        let greeting = connection.greeting().await?;
        if !greeting.is_completion() {
            return Err(SessionError::Protocol {
                phase: "greeting",
                detail: greeting.to_string(),
            });
        }
        self.hello(&mut connection).await?;
        let clear = TlsOutcome {
            encrypted: false,
            verdict: None,
        };
        if *requirement == Requirement::Plain {
            return Ok((connection, clear));
        }
        if !connection.offers("STARTTLS") {
            if requirement.mandatory() {
                return Err(SessionError::TlsRequired {
                    host: target.describe(),
                });
            }
            return Ok((connection, clear));
        }
        let secs = connection.timeouts().starttls_secs;
        let reply = connection.command("STARTTLS", secs, "STARTTLS").await?;
        if reply.code != 220 {
            if requirement.mandatory() {
                return Err(SessionError::Tls {
                    host: target.describe(),
                    detail: format!("STARTTLS refused: {reply}"),
                    problem: None,
                });
            }
            tracing::info!(domain, server = %target.describe(), %reply, "STARTTLS refused; continuing without TLS");
            return Ok((connection, clear));
        }
        let (authentication, enforce) = match requirement {
            Requirement::Authenticated(authentication) => (Some(authentication), true),
            _ => (None, false),
        };
        let delivery = &self.config.delivery;
        if authentication.is_none()
            && delivery
                .domains
                .get(domain)
                .and_then(|d| d.accept_invalid_certs)
                .unwrap_or(delivery.accept_invalid_certs)
        {
            tracing::warn!(
                domain,
                server = %target.describe(),
                "SECURITY WARNING: TLS certificate validation is disabled for this connection"
            );
        }
        let (config, verdict) =
            self.tls
                .client(authentication, enforce)
                .map_err(|e| SessionError::Tls {
                    host: target.describe(),
                    detail: e.to_string(),
                    problem: None,
                })?;
        let mut connection = connection.start_tls(config, &target.name).await?;
        tracing::debug!(domain, server = %target.describe(), tls = connection.tls.as_deref().unwrap_or(""), "TLS established");
        self.hello(&mut connection).await?;
        // RFC 8689 section 4.2.1: only to a server that offers REQUIRETLS.
        if host.requiretls && !connection.offers("REQUIRETLS") {
            return Err(SessionError::Policy {
                reply: Reply::new(
                    550,
                    "5.7.30",
                    format!(
                        "REQUIRETLS: {} does not offer REQUIRETLS, so the message may not go there",
                        target.describe()
                    ),
                ),
            });
        }
        Ok((
            connection,
            TlsOutcome {
                encrypted: true,
                verdict: Some(verdict),
            },
        ))
    }

    async fn hello(&self, connection: &mut Connection<Stream>) -> Result<(), SessionError> {
        let hello = connection.hello(&self.hostname).await?;
        if hello.is_completion() {
            Ok(())
        } else {
            Err(SessionError::Protocol {
                phase: "HELO",
                detail: hello.to_string(),
            })
        }
    }

    /// The TLS report's policy for a session with `target`.
    fn policy_record(
        &self,
        job: &DeliveryJob,
        target: &Target,
        dane: Option<&TlsaAnswer>,
        sts: &sts::Lookup,
    ) -> PolicyRecord {
        let mut record = PolicyRecord {
            policy_type: "no-policy-found".into(),
            strings: Vec::new(),
            domain: job.domain.clone(),
            mx_host: Vec::new(),
        };
        if matches!(
            dane,
            Some(TlsaAnswer::Secure(_) | TlsaAnswer::Bogus(_) | TlsaAnswer::Failed(_))
        ) {
            record.policy_type = "tlsa".into();
            record.strings = records_of(dane);
            record.mx_host = vec![target.name.clone()];
        } else if let sts::Lookup::Policy(policy) = sts
            && policy.mode != sts::Mode::None
        {
            record.policy_type = "sts".into();
            record.strings = policy.lines();
            record.mx_host = policy.mx.clone();
        }
        record
    }

    /// Records how TLS went with `target` for the domain's TLS report.
    async fn report_session(
        &self,
        job: &DeliveryJob,
        target: &Target,
        host: &HostPolicy,
        opened: &Result<(Connection<Stream>, TlsOutcome), SessionError>,
    ) {
        if !self.reports.enabled() {
            return;
        }
        let (policy, dane) = match (&host.source, &host.sts_testing) {
            (Source::Dane(records), _) => (
                PolicyRecord {
                    policy_type: "tlsa".into(),
                    strings: records.clone(),
                    domain: job.domain.clone(),
                    mx_host: vec![target.name.clone()],
                },
                true,
            ),
            (Source::Sts(policy), _) | (_, Some(policy)) => (
                PolicyRecord {
                    policy_type: "sts".into(),
                    strings: policy.lines(),
                    domain: job.domain.clone(),
                    mx_host: policy.mx.clone(),
                },
                false,
            ),
            _ => (
                PolicyRecord {
                    policy_type: "no-policy-found".into(),
                    strings: Vec::new(),
                    domain: job.domain.clone(),
                    mx_host: Vec::new(),
                },
                false,
            ),
        };
        let failure = match opened {
            Ok((_, outcome)) => {
                let testing = host.sts_testing.as_ref();
                if let Some(policy) = testing.filter(|p| !p.allows(&target.name)) {
                    Some(failure_with(
                        "validation-failure",
                        target,
                        format!("{} is not in the MTA-STS policy's mx list", target.name)
                            + &format!(" ({})", policy.mx.join(" ")),
                    ))
                } else if !outcome.encrypted && (testing.is_some() || dane) {
                    Some(failure_with(
                        "starttls-not-supported",
                        target,
                        String::new(),
                    ))
                } else if let Some(Err(error)) =
                    testing.and(outcome.verdict.as_ref().and_then(Verdict::get))
                {
                    let problem = CertProblem::of(&error).unwrap_or(CertProblem::Mismatch);
                    Some(failure_with(
                        problem.result_type(false),
                        target,
                        error.to_string(),
                    ))
                } else {
                    None
                }
            }
            Err(SessionError::TlsRequired { .. }) => Some(failure_with(
                "starttls-not-supported",
                target,
                String::new(),
            )),
            Err(SessionError::Tls {
                problem: Some(problem),
                detail,
                ..
            }) => Some(failure_with(
                problem.result_type(dane),
                target,
                detail.clone(),
            )),
            Err(SessionError::Tls { detail, .. }) => {
                Some(failure_with("validation-failure", target, detail.clone()))
            }
            // Not about TLS: nothing to report.
            Err(_) => return,
        };
        self.record(job, policy, failure).await;
    }

    async fn record(
        &self,
        job: &DeliveryJob,
        policy: PolicyRecord,
        failure: Option<FailureRecord>,
    ) {
        self.reports
            .record(&job.domain, SessionRecord { policy, failure })
            .await;
    }
}

fn records_of(dane: Option<&TlsaAnswer>) -> Vec<String> {
    match dane {
        Some(TlsaAnswer::Secure(records)) => crate::dane::usable(records)
            .iter()
            .map(crate::dane::Tlsa::presentation)
            .collect(),
        _ => Vec::new(),
    }
}

fn failure_record(
    result_type: &str,
    target: Option<&Target>,
    unusable: Option<&Unusable>,
) -> FailureRecord {
    FailureRecord {
        result_type: result_type.to_owned(),
        sending_mta_ip: None,
        receiving_mx_hostname: target.map(|t| t.name.clone()),
        receiving_ip: target.map(|t| t.addr.ip()),
        failure_reason_code: unusable.map(|u| u.reply.text.clone()),
    }
}

fn failure_with(result_type: &str, target: &Target, detail: String) -> FailureRecord {
    FailureRecord {
        result_type: result_type.to_owned(),
        sending_mta_ip: None,
        receiving_mx_hostname: Some(target.name.clone()),
        receiving_ip: Some(target.addr.ip()),
        failure_reason_code: (!detail.is_empty()).then_some(detail),
    }
}

/// An `mx_override` host: the operator chose it, so neither DANE nor
/// MTA-STS applies, and REQUIRETLS mail cannot go there.
fn override_policy(
    level: empath_common::config::SecurityLevel,
    message: MessageTls,
    host: &str,
) -> Result<HostPolicy, Unusable> {
    if message.requiretls {
        return policy::decide(host, None, &sts::Lookup::NoPolicy, level, message);
    }
    Ok(HostPolicy {
        requirement: policy::configured(level),
        source: Source::Override(level),
        sts_testing: None,
        requiretls: false,
    })
}

/// The start of the message, up to the end of its header section.
fn header_section(queue: &Queue, id: QueueId) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let (file, len) = queue.open_content_with_len(id)?;
    let mut head = Vec::with_capacity(4096);
    file.take(len.min(HEADER_PEEK as u64))
        .read_to_end(&mut head)?;
    if let Some(end) = memchr::memmem::find(&head, b"\r\n\r\n") {
        head.truncate(end + 2);
    }
    Ok(head)
}

/// RFC 8689 section 5: the header has `TLS-Required: No`.
pub fn tls_required_no(header: &[u8]) -> bool {
    let text = String::from_utf8_lossy(header);
    // Unfolded: a line that starts with white space continues the field.
    let mut fields: Vec<String> = Vec::new();
    for line in text.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = fields.last_mut() {
                last.push_str(line);
            }
        } else {
            fields.push(line.to_owned());
        }
    }
    fields.iter().any(|field| {
        field.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("TLS-Required")
                && value.trim().eq_ignore_ascii_case("No")
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_required_no_is_found_in_the_header_only() {
        assert!(tls_required_no(b"Subject: x\r\nTLS-Required:  no\r\n"));
        assert!(tls_required_no(b"Subject: x\r\ntls-required:\r\n No\r\n"));
        assert!(!tls_required_no(b"Subject: x\r\nTLS-Required: Yes\r\n"));
        assert!(!tls_required_no(b"Subject: TLS-Required: No\r\n"));
    }
}
