//! MTA-STS (RFC 8461): the `_mta-sts.DOMAIN` TXT record says a policy
//! exists and names its version (`id`); the policy itself is fetched over
//! HTTPS from `https://mta-sts.DOMAIN/.well-known/mta-sts.txt` (WebPKI-
//! validated, no redirects, `text/plain`, bounded size and time) and
//! cached on disk by id for its `max_age`, so that it holds across
//! restarts and while an attacker hides the TXT record (section 5.1).
//!
//! The record and policy parsers are mailrs-mta-sts's.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use empath_common::config::MtaSts;
use empath_common::safeio;
use mailrs_mta_sts::{Policy, PolicyMode, StsRecord};
use serde::{Deserialize, Serialize};

use crate::cache::TtlCache;
use crate::dns::{MxResolver, TxtAnswer};
use crate::https::{Https, HttpsError};

/// The policy mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    Enforce,
    Testing,
    None,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Testing => "testing",
            Self::None => "none",
        }
    }
}

/// A domain's policy, as cached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StsPolicy {
    pub domain: String,
    /// The `id` of the TXT record it was fetched under.
    pub id: String,
    pub mode: Mode,
    /// The `mx:` patterns, lower-cased.
    pub mx: Vec<String>,
    pub max_age: u64,
    /// When it was fetched (Unix seconds).
    pub fetched: u64,
    /// The policy as served, for TLS reports (`policy-string`).
    pub text: String,
}

impl StsPolicy {
    /// Whether the policy still holds at `now`.
    pub fn fresh(&self, now: u64) -> bool {
        now < self.fetched.saturating_add(self.max_age)
    }

    /// RFC 8461 section 4.1: `host` is one of the `mx:` patterns.
    pub fn allows(&self, host: &str) -> bool {
        self.mx
            .iter()
            .any(|pattern| mailrs_mta_sts::mx_matches(host, pattern))
    }

    /// The policy's lines, for TLS reports.
    pub fn lines(&self) -> Vec<String> {
        self.text
            .lines()
            .map(|l| l.trim().to_owned())
            .filter(|l| !l.is_empty())
            .collect()
    }
}

/// What is known about a domain's MTA-STS policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// A policy applies (fresh from the web server or from the cache).
    Policy(Arc<StsPolicy>),
    /// The domain publishes none.
    NoPolicy,
    /// The TXT record says there is one, but it could not be had and none
    /// is cached: delivery goes on without (RFC 8461 section 5), and TLS
    /// reports say why.
    Failed(FetchFailure),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchFailure {
    /// `sts-policy-fetch-error`, `sts-policy-invalid` or `sts-webpki-invalid`.
    pub kind: FailureKind,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    Fetch,
    Invalid,
    WebPki,
}

/// How long the answer to a `_mta-sts` TXT lookup is used before the
/// record is looked up again: every message to a domain would otherwise
/// cost a query. A changed policy id is seen within this time.
const RECORD_RECHECK: Duration = Duration::from_secs(300);

/// The policies, cached in memory and in `private/sts/`.
pub struct StsPolicies {
    config: MtaSts,
    dir: PathBuf,
    memory: Mutex<HashMap<String, Arc<StsPolicy>>>,
    /// Recent answers to `_mta-sts` lookups: the id, or none published.
    records: Mutex<TtlCache<Option<String>>>,
    tls: Arc<rustls::ClientConfig>,
}

impl StsPolicies {
    pub fn new(config: MtaSts, dir: PathBuf, tls: Arc<rustls::ClientConfig>) -> Self {
        Self {
            config,
            dir,
            memory: Mutex::new(HashMap::new()),
            records: Mutex::new(TtlCache::new(10_000)),
            tls,
        }
    }

    /// The id in the domain's `_mta-sts` record, from a recent lookup or
    /// a new one.
    async fn record(&self, domain: &str, resolver: &MxResolver) -> Option<String> {
        let records = || self.records.lock().unwrap_or_else(|e| e.into_inner());
        let recent = records().get(domain, Instant::now());
        if let Some(id) = recent {
            return id;
        }
        let id = match resolver.txt(&format!("_mta-sts.{domain}")).await {
            TxtAnswer::Records(records) => sts_record(&records),
            TxtAnswer::None => None,
            // DNS trouble: the cached policy, if any, holds (section
            // 5.1); the record is looked up again next time.
            TxtAnswer::Failed(error) => {
                tracing::debug!(domain, %error, "MTA-STS record lookup failed");
                return None;
            }
        };
        let now = Instant::now();
        records().insert(domain, id.clone(), now + RECORD_RECHECK, now);
        id
    }

    pub fn enabled(&self) -> bool {
        self.config.enabled
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<StsPolicy>>> {
        self.memory.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The policy that applies to `domain` now.
    pub async fn lookup(&self, domain: &str, resolver: &MxResolver) -> Lookup {
        if !self.config.enabled {
            return Lookup::NoPolicy;
        }
        let domain = domain.to_ascii_lowercase();
        let now = empath_common::time::unix_now();
        let cached = self.cached(&domain).await.filter(|p| p.fresh(now));
        let Some(id) = self.record(&domain, resolver).await else {
            return cached.map_or(Lookup::NoPolicy, Lookup::Policy);
        };
        if let Some(policy) = cached.as_ref().filter(|p| p.id == id) {
            return Lookup::Policy(Arc::clone(policy));
        }
        match self.fetch(&domain, &id, resolver).await {
            Ok(policy) => {
                let policy = Arc::new(policy);
                self.store(Arc::clone(&policy)).await;
                tracing::info!(
                    domain,
                    id,
                    mode = policy.mode.as_str(),
                    max_age = policy.max_age,
                    "MTA-STS policy fetched"
                );
                Lookup::Policy(policy)
            }
            Err(failure) => {
                tracing::warn!(domain, id, error = %failure.detail, "cannot fetch the MTA-STS policy");
                match cached {
                    Some(policy) => Lookup::Policy(policy),
                    None => Lookup::Failed(failure),
                }
            }
        }
    }

    /// The cached policy of `domain`, from memory or `private/sts/`.
    pub async fn cached(&self, domain: &str) -> Option<Arc<StsPolicy>> {
        if let Some(policy) = self.memory().get(domain) {
            return Some(Arc::clone(policy));
        }
        let path = self.dir.join(file_name(domain));
        let read = tokio::task::spawn_blocking(move || std::fs::read(path))
            .await
            .ok()?
            .ok()?;
        let policy: StsPolicy = serde_json::from_slice(&read).ok()?;
        if policy.domain != domain {
            return None;
        }
        let policy = Arc::new(policy);
        self.memory().insert(domain.to_owned(), Arc::clone(&policy));
        Some(policy)
    }

    /// Keeps `policy` in memory and on disk (fsynced, renamed into place).
    async fn store(&self, policy: Arc<StsPolicy>) {
        self.memory()
            .insert(policy.domain.clone(), Arc::clone(&policy));
        let dir = self.dir.clone();
        let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::create_dir_all(&dir)?;
            let name = file_name(&policy.domain);
            let bytes = serde_json::to_vec(&*policy).map_err(std::io::Error::other)?;
            let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
            safeio::write_then_rename(&tmp, &dir.join(&name), &bytes)?;
            safeio::fsync_dir(&dir)
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "cannot cache the MTA-STS policy on disk"),
            Err(error) => tracing::warn!(%error, "cannot cache the MTA-STS policy on disk"),
        }
    }

    async fn fetch(
        &self,
        domain: &str,
        id: &str,
        resolver: &MxResolver,
    ) -> Result<StsPolicy, FetchFailure> {
        let host = format!("mta-sts.{domain}");
        let https = Https {
            resolver,
            tls: Arc::clone(&self.tls),
            timeout: Duration::from_secs(self.config.fetch_timeout_secs),
            max_body: self.config.max_policy_size,
        };
        let failure = |kind, detail: String| FetchFailure { kind, detail };
        let response = https
            .get(&host, self.config.https_port, "/.well-known/mta-sts.txt")
            .await
            .map_err(|e| match e {
                HttpsError::Tls { .. } => failure(FailureKind::WebPki, e.to_string()),
                HttpsError::TooLarge(_) => failure(FailureKind::Invalid, e.to_string()),
                other => failure(FailureKind::Fetch, other.to_string()),
            })?;
        // Section 3.3: only a 200 counts; redirects are not followed.
        if response.status != 200 {
            return Err(failure(
                FailureKind::Fetch,
                format!(
                    "https://{host}/.well-known/mta-sts.txt answered {}",
                    response.status
                ),
            ));
        }
        let media_type = response
            .content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if media_type != "text/plain" {
            return Err(failure(
                FailureKind::Invalid,
                format!(
                    "policy served as {:?}, not text/plain",
                    response.content_type
                ),
            ));
        }
        let text = String::from_utf8(response.body.to_vec())
            .map_err(|_| failure(FailureKind::Invalid, "policy is not UTF-8".into()))?;
        let parsed = Policy::parse(&text)
            .map_err(|e| failure(FailureKind::Invalid, format!("invalid policy: {e}")))?;
        Ok(StsPolicy {
            domain: domain.to_owned(),
            id: id.to_owned(),
            mode: match parsed.mode {
                PolicyMode::Enforce => Mode::Enforce,
                PolicyMode::Testing => Mode::Testing,
                PolicyMode::None => Mode::None,
            },
            mx: parsed.mx.iter().map(|p| p.to_string()).collect(),
            // Section 3.2: at most a year.
            max_age: parsed.max_age.min(31_557_600),
            fetched: empath_common::time::unix_now(),
            text,
        })
    }
}

/// The `id` of the domain's one STS record (section 3.1: several records
/// starting with `v=STSv1`, or none valid, mean no policy).
fn sts_record(records: &[String]) -> Option<String> {
    let mut sts = records
        .iter()
        .filter(|r| r.trim_start().starts_with("v=STSv1"));
    let first = sts.next()?;
    if sts.next().is_some() {
        return None;
    }
    StsRecord::parse(first).ok().map(|r| r.id.to_string())
}

/// A file name for `domain`'s policy: the domain, which DNS already limits
/// to letters, digits, `-` and `.`; anything else is escaped.
fn file_name(domain: &str) -> String {
    let safe: String = domain
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c.to_string()
            } else {
                format!("%{:02x}", u32::from(c))
            }
        })
        .collect();
    format!("{}.json", safe.trim_start_matches('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_valid_sts_record_names_the_policy_version() {
        let one = |r: &[&str]| sts_record(&r.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
        assert_eq!(
            one(&["v=STSv1; id=20240101T000000;", "other"]).as_deref(),
            Some("20240101T000000")
        );
        assert_eq!(one(&["v=STSv1; id=a;", "v=STSv1; id=b;"]), None);
        assert_eq!(one(&["v=spf1 -all"]), None);
    }

    #[test]
    fn mx_patterns_and_freshness() {
        let policy = StsPolicy {
            domain: "example.com".into(),
            id: "1".into(),
            mode: Mode::Enforce,
            mx: vec!["mx1.example.com".into(), "*.mail.example.com".into()],
            max_age: 100,
            fetched: 1000,
            text: String::new(),
        };
        assert!(policy.allows("mx1.example.com"));
        assert!(policy.allows("a.mail.example.com"));
        assert!(!policy.allows("a.b.mail.example.com"));
        assert!(!policy.allows("evil.example"));
        assert!(policy.fresh(1099) && !policy.fresh(1100));
        assert_eq!(file_name("a-b.example"), "a-b.example.json");
        assert_eq!(file_name("../x"), "%2fx.json");
    }
}
