//! SMTP TLS reporting (RFC 8460). Each session's policy result is
//! appended to `private/tlsrpt/START-END/DOMAIN.jsonl` (one JSON line,
//! grouped by reporting interval, `delivery.tls_reports.interval_secs`,
//! a day by default). Once an interval is over, the sessions of each
//! domain are aggregated into one report (RFC 8460 section 4), which goes
//! to the `rua` addresses of the domain's `_smtp._tls` TXT record: gzip'd
//! JSON in a `multipart/report; report-type=tlsrpt` message queued through
//! cleanup for `mailto:`, or POSTed as `application/tlsrpt+gzip` for
//! `https:`. A report is the best effort RFC 8460 asks for: records are
//! not fsynced, and a domain whose record cannot be read is skipped.
//!
//! The report's types and message are mail-auth's.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use empath_common::config::TlsReports;
use empath_common::protocol::{self, Appended, CleanupReply, Submission};
use empath_common::queue::{ClientInfo, DsnParams, Queue, Recipient};
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::mta_sts::{ReportUri, TlsRpt};
use mail_auth::report::tlsrpt::{
    DateRange, FailureDetails, Policy, PolicyDetails, PolicyType, ResultType, Summary, TlsReport,
};
use serde::{Deserialize, Serialize};

use crate::dns::{MxResolver, TxtAnswer};
use crate::https::Https;

/// How long cleanup may take to queue a report.
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(60);

/// The policy a session was held under (RFC 8460 section 4.3).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PolicyRecord {
    /// `tlsa`, `sts` or `no-policy-found`.
    pub policy_type: String,
    pub strings: Vec<String>,
    pub domain: String,
    pub mx_host: Vec<String>,
}

/// Why a session failed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FailureRecord {
    /// One of RFC 8460 section 4.3's result types.
    pub result_type: String,
    pub sending_mta_ip: Option<IpAddr>,
    pub receiving_mx_hostname: Option<String>,
    pub receiving_ip: Option<IpAddr>,
    pub failure_reason_code: Option<String>,
}

/// One session, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub policy: PolicyRecord,
    /// `None`: the session met its policy.
    pub failure: Option<FailureRecord>,
}

/// Appends session records, and sends the reports that are due.
pub struct Reports {
    config: TlsReports,
    dir: PathBuf,
    /// One writer at a time, so lines never interleave.
    writing: tokio::sync::Mutex<()>,
}

impl Reports {
    pub fn new(config: TlsReports, dir: PathBuf) -> Self {
        Self {
            config,
            dir,
            writing: tokio::sync::Mutex::new(()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.config.enabled
    }

    fn bucket(&self, now: u64) -> (u64, u64) {
        let interval = self.config.interval_secs.max(1);
        let start = now - now % interval;
        (start, start + interval)
    }

    /// Records one session to `domain`.
    pub async fn record(&self, domain: &str, session: SessionRecord) {
        if !self.config.enabled {
            return;
        }
        let (start, end) = self.bucket(empath_common::time::unix_now());
        let dir = self.dir.join(format!("{start}-{end}"));
        let path = dir.join(format!("{}.jsonl", file_stem(domain)));
        let Ok(mut line) = serde_json::to_vec(&session) else {
            return;
        };
        line.push(b'\n');
        let _guard = self.writing.lock().await;
        let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::create_dir_all(&dir)?;
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            file.write_all(&line)
        })
        .await;
        if let Ok(Err(error)) | Err(error) = written.map_err(std::io::Error::other) {
            tracing::warn!(%error, domain, "cannot record the TLS session for reporting");
        }
    }
}

/// A domain name as a file name: DNS names are letters, digits, `-` and
/// `.`; anything else is escaped, and no name starts with a dot.
fn file_stem(domain: &str) -> String {
    let safe: String = domain
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c.to_string()
            } else {
                format!("%{:02x}", u32::from(c))
            }
        })
        .collect();
    safe.trim_start_matches('.').to_owned()
}

/// Aggregates `sessions` into the report of one domain (RFC 8460
/// section 4.4).
pub fn aggregate(
    sessions: &[SessionRecord],
    start: u64,
    end: u64,
    organization: &str,
    contact: &str,
    report_id: String,
) -> TlsReport {
    let mut by_policy: BTreeMap<&PolicyRecord, (u32, BTreeMap<&FailureRecord, u32>)> =
        BTreeMap::new();
    for session in sessions {
        let entry = by_policy.entry(&session.policy).or_default();
        match &session.failure {
            None => entry.0 += 1,
            Some(failure) => *entry.1.entry(failure).or_default() += 1,
        }
    }
    let policies = by_policy
        .into_iter()
        .map(|(policy, (successes, failures))| Policy {
            policy: PolicyDetails {
                policy_type: match policy.policy_type.as_str() {
                    "tlsa" => PolicyType::Tlsa,
                    "sts" => PolicyType::Sts,
                    _ => PolicyType::NoPolicyFound,
                },
                policy_string: policy.strings.clone(),
                policy_domain: policy.domain.clone(),
                mx_host: policy.mx_host.clone(),
            },
            summary: Summary {
                total_success: successes,
                total_failure: failures.values().sum(),
            },
            failure_details: failures
                .into_iter()
                .map(|(failure, count)| FailureDetails {
                    result_type: result_type(&failure.result_type),
                    sending_mta_ip: failure.sending_mta_ip,
                    receiving_mx_hostname: failure.receiving_mx_hostname.clone(),
                    receiving_mx_helo: None,
                    receiving_ip: failure.receiving_ip,
                    failed_session_count: count,
                    additional_information: None,
                    failure_reason_code: failure.failure_reason_code.clone(),
                })
                .collect(),
        })
        .collect();
    TlsReport {
        organization_name: Some(organization.to_owned()),
        date_range: DateRange::from_timestamps(start as i64, end as i64),
        contact_info: Some(contact.to_owned()),
        report_id,
        policies,
    }
}

fn result_type(name: &str) -> ResultType {
    match name {
        "starttls-not-supported" => ResultType::StartTlsNotSupported,
        "certificate-host-mismatch" => ResultType::CertificateHostMismatch,
        "certificate-expired" => ResultType::CertificateExpired,
        "certificate-not-trusted" => ResultType::CertificateNotTrusted,
        "tlsa-invalid" => ResultType::TlsaInvalid,
        "dnssec-invalid" => ResultType::DnssecInvalid,
        "dane-required" => ResultType::DaneRequired,
        "sts-policy-fetch-error" => ResultType::StsPolicyFetchError,
        "sts-policy-invalid" => ResultType::StsPolicyInvalid,
        "sts-webpki-invalid" => ResultType::StsWebpkiInvalid,
        _ => ResultType::ValidationFailure,
    }
}

/// The report as RFC 8460 JSON: fields without a value are left out (the
/// format has no nulls).
pub fn to_json(report: &TlsReport) -> Vec<u8> {
    fn strip(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                map.retain(|_, v| !v.is_null());
                map.values_mut().for_each(strip);
            }
            serde_json::Value::Array(list) => list.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut value = serde_json::to_value(report).unwrap_or_default();
    strip(&mut value);
    serde_json::to_vec(&value).unwrap_or_default()
}

fn gzip(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes)?;
    encoder.finish()
}

/// What the reporter needs from smtp-out.
pub struct Sender<'a> {
    pub queue: &'a Queue,
    pub resolver: &'a MxResolver,
    pub tls: Arc<rustls::ClientConfig>,
    pub hostname: &'a str,
}

impl Reports {
    /// Sends the reports of every interval that is over, then forgets its
    /// records. A domain whose `_smtp._tls` record cannot be looked up
    /// now is tried again at the next pass, for one more interval.
    pub async fn send_due(&self, sender: &Sender<'_>) {
        if !self.config.enabled {
            return;
        }
        let now = empath_common::time::unix_now();
        let dir = self.dir.clone();
        let buckets = tokio::task::spawn_blocking(move || due_buckets(&dir, now))
            .await
            .unwrap_or_default();
        for (bucket, start, end) in buckets {
            let interval = end - start;
            let give_up = now >= end.saturating_add(interval);
            let domains = {
                let bucket = bucket.clone();
                tokio::task::spawn_blocking(move || read_bucket(&bucket))
                    .await
                    .unwrap_or_default()
            };
            for (domain, (path, sessions)) in domains {
                let done = match self.send_one(sender, &domain, start, end, &sessions).await {
                    Ok(()) => true,
                    Err(error) => {
                        tracing::warn!(domain, %error, "TLS report not sent");
                        give_up
                    }
                };
                if done {
                    let _ = tokio::fs::remove_file(&path).await;
                }
            }
            // Removed once empty (a bucket still being written is not due).
            let _ = tokio::fs::remove_dir(&bucket).await;
        }
    }

    async fn send_one(
        &self,
        sender: &Sender<'_>,
        domain: &str,
        start: u64,
        end: u64,
        sessions: &[SessionRecord],
    ) -> Result<(), String> {
        let rua = match sender.resolver.txt(&format!("_smtp._tls.{domain}")).await {
            TxtAnswer::Records(records) => records
                .iter()
                .filter(|r| r.trim_start().starts_with("v=TLSRPTv1"))
                .find_map(|r| TlsRpt::parse(r.as_bytes()).ok())
                .map(|record| record.rua),
            TxtAnswer::None => None,
            TxtAnswer::Failed(error) => return Err(error),
        };
        let Some(rua) = rua else {
            tracing::debug!(domain, "no TLSRPT record: no report");
            return Ok(());
        };
        let organization = self
            .config
            .organization_name
            .clone()
            .unwrap_or_else(|| sender.hostname.to_owned());
        let contact = self
            .config
            .contact_info
            .clone()
            .unwrap_or_else(|| format!("postmaster@{}", sender.hostname));
        let report_id = format!("{start}.{}@{}", ulid::Ulid::new(), sender.hostname);
        let report = aggregate(sessions, start, end, &organization, &contact, report_id);
        let gzipped = gzip(&to_json(&report)).map_err(|e| e.to_string())?;
        let from = self
            .config
            .from
            .clone()
            .unwrap_or_else(|| format!("noreply-smtp-tls-reporting@{}", sender.hostname));
        let mut mailto = Vec::new();
        for uri in &rua {
            match uri {
                ReportUri::Mail(address) => mailto.push(address.clone()),
                ReportUri::Http(url) => {
                    if let Err(error) = self.post(sender, url, &gzipped).await {
                        tracing::warn!(domain, url, %error, "TLS report not posted");
                    } else {
                        tracing::info!(domain, url, "TLS report posted");
                    }
                }
            }
        }
        if mailto.is_empty() {
            return Ok(());
        }
        let mut message = Vec::new();
        report
            .write_rfc5322_from_bytes(
                domain,
                sender.hostname,
                from.as_str(),
                mailto.iter().map(String::as_str),
                &gzipped,
                &mut message,
            )
            .map_err(|e| e.to_string())?;
        let submission = Submission {
            sender: from.clone(),
            recipients: mailto.iter().map(Recipient::new).collect(),
            client: ClientInfo {
                addr: "local".into(),
                protocol: "local".into(),
                name: Some("empath-smtp-out".into()),
                ..ClientInfo::default()
            },
            // Reports are not worth a DSN (RFC 8460 section 5.3 asks for
            // best effort).
            dsn: DsnParams::default(),
            metadata: Default::default(),
            smtputf8: false,
            queue_id: None,
            options: Appended::default(),
        };
        let socket = sender.queue.private_socket(protocol::CLEANUP);
        let reply =
            empath_common::cleanup_client::submit(&socket, submission, &message, SUBMIT_TIMEOUT)
                .await
                .map_err(|e| e.to_string())?;
        match reply {
            CleanupReply::Queued { id } => {
                tracing::info!(domain, message_id = %id, rua = ?mailto, "TLS report queued");
                Ok(())
            }
            CleanupReply::Rejected(reply) => Err(format!("cleanup refused the report: {reply}")),
        }
    }

    async fn post(&self, sender: &Sender<'_>, url: &str, body: &[u8]) -> Result<(), String> {
        let uri: hyper::Uri = url.parse().map_err(|e| format!("bad rua {url}: {e}"))?;
        let host = uri.host().ok_or_else(|| format!("no host in {url}"))?;
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let https = Https {
            resolver: sender.resolver,
            tls: Arc::clone(&sender.tls),
            timeout: Duration::from_secs(self.config.post_timeout_secs),
            max_body: 64 * 1024,
        };
        let response = https
            .post(
                host,
                uri.port_u16().unwrap_or(443),
                path,
                "application/tlsrpt+gzip",
                body.to_vec(),
            )
            .await
            .map_err(|e| e.to_string())?;
        if (200..300).contains(&response.status) {
            Ok(())
        } else {
            Err(format!("{url} answered {}", response.status))
        }
    }
}

/// The interval directories that are over at `now`: (path, start, end).
fn due_buckets(dir: &Path, now: u64) -> Vec<(PathBuf, u64, u64)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut due: Vec<_> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let (start, end) = name.split_once('-')?;
            let (start, end) = (start.parse().ok()?, end.parse().ok()?);
            (end <= now && start < end).then(|| (entry.path(), start, end))
        })
        .collect();
    due.sort_by_key(|(_, start, _)| *start);
    due
}

/// The sessions of each domain in an interval directory.
fn read_bucket(bucket: &Path) -> BTreeMap<String, (PathBuf, Vec<SessionRecord>)> {
    let mut domains = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(bucket) else {
        return domains;
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let Some(domain) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".jsonl"))
            .map(str::to_owned)
        else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        // A line cut short by a crash is skipped, not fatal.
        let sessions = text
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect();
        domains.insert(domain, (path, sessions));
    }
    domains
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(policy_type: &str, failure: Option<&str>) -> SessionRecord {
        SessionRecord {
            policy: PolicyRecord {
                policy_type: policy_type.into(),
                strings: vec!["version: STSv1".into(), "mode: testing".into()],
                domain: "d.example".into(),
                mx_host: vec!["mx.d.example".into()],
            },
            failure: failure.map(|kind| FailureRecord {
                result_type: kind.into(),
                sending_mta_ip: None,
                receiving_mx_hostname: Some("mx.d.example".into()),
                receiving_ip: Some("192.0.2.1".parse().unwrap()),
                failure_reason_code: None,
            }),
        }
    }

    #[test]
    fn sessions_aggregate_per_policy_and_failure_without_nulls() {
        let sessions = [
            session("sts", None),
            session("sts", Some("certificate-expired")),
            session("sts", Some("certificate-expired")),
            session("sts", None),
        ];
        let report = aggregate(&sessions, 0, 86_400, "Org", "postmaster@x", "id-1".into());
        let json: serde_json::Value = serde_json::from_slice(&to_json(&report)).unwrap();
        let policy = &json["policies"][0];
        assert_eq!(policy["policy"]["policy-type"], "sts");
        assert_eq!(policy["summary"]["total-successful-session-count"], 2);
        assert_eq!(policy["summary"]["total-failure-session-count"], 2);
        let failure = &policy["failure-details"][0];
        assert_eq!(failure["result-type"], "certificate-expired");
        assert_eq!(failure["failed-session-count"], 2);
        assert!(failure.get("receiving-mx-helo").is_none(), "no nulls");
        assert_eq!(json["date-range"]["start-datetime"], "1970-01-01T00:00:00Z");
        assert_eq!(file_stem(".Evil/../x"), "evil%2f..%2fx");
    }
}
