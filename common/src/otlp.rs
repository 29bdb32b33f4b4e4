//! What the OTLP/HTTP exports of metrics ([`crate::metrics::otlp`]) and
//! traces ([`crate::traces`]) share: where the collector is, its key, the
//! environment's settings as the OpenTelemetry SDKs read them, the
//! resource that names this process, and the POST itself
//! (`Content-Type: application/x-protobuf`, `Authorization: Bearer`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;

use crate::config;

/// The seeds' service name, unless `OTEL_SERVICE_NAME` says otherwise.
pub const DEFAULT_SERVICE_NAME: &str = "empath-mta";
/// `metrics.api_key: "$ENV:NAME"` reads the key from the environment.
const ENV_PREFIX: &str = "$ENV:";
/// The most of a collector's answer that is read.
const MAX_RESPONSE: u64 = 64 * 1024;

/// Why the export settings cannot be used. Each names the setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("{setting}: {url:?} is not an http:// or https:// URL")]
    BadUrl { setting: &'static str, url: String },
    #[error("metrics.api_key: the environment variable {0} is not set")]
    MissingKey(String),
    #[error("{0}: must be a positive number of milliseconds")]
    BadDuration(&'static str),
    #[error("{0}: must be a positive whole number")]
    BadNumber(&'static str),
}

/// Why one export failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("cannot reach {url}: {reason}")]
    Transport { url: String, reason: String },
    #[error("{url} answered HTTP {status}")]
    Refused { url: String, status: u16 },
}

/// The environment as the settings see it: a variable that is set but
/// blank counts as unset, as in the OpenTelemetry SDKs.
pub struct Env<F>(pub F);

impl<F: Fn(&str) -> Option<String>> Env<F> {
    pub fn get(&self, name: &str) -> Option<String> {
        (self.0)(name).filter(|value| !value.trim().is_empty())
    }

    /// A duration in milliseconds (`OTEL_*_TIMEOUT`, `OTEL_*_INTERVAL`).
    pub fn millis(&self, name: &'static str, default: Duration) -> Result<Duration, TargetError> {
        match self.get(name) {
            None => Ok(default),
            Some(text) => match text.trim().parse::<u64>() {
                Ok(ms) if ms > 0 => Ok(Duration::from_millis(ms)),
                _ => Err(TargetError::BadDuration(name)),
            },
        }
    }

    /// A positive count (`OTEL_BSP_MAX_QUEUE_SIZE`, ...).
    pub fn count(&self, name: &'static str, default: usize) -> Result<usize, TargetError> {
        match self.get(name) {
            None => Ok(default),
            Some(text) => match text.trim().parse::<usize>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(TargetError::BadNumber(name)),
            },
        }
    }

    /// `OTEL_SERVICE_NAME`, else the seeds' name.
    pub fn service_name(&self) -> String {
        self.get("OTEL_SERVICE_NAME")
            .unwrap_or_else(|| DEFAULT_SERVICE_NAME.into())
    }

    /// The `metrics.api_key`, read from the environment when it says
    /// `$ENV:NAME`.
    pub fn api_key(&self, metrics: &config::Metrics) -> Result<Option<String>, TargetError> {
        match metrics.api_key.as_deref() {
            Some(key) => match key.strip_prefix(ENV_PREFIX) {
                Some(name) => Ok(Some(
                    self.get(name)
                        .ok_or_else(|| TargetError::MissingKey(name.into()))?,
                )),
                None => Ok(Some(key.to_owned())),
            },
            None => Ok(None),
        }
    }
}

/// A collector URL, checked; `setting` names where it came from.
pub fn checked_url(setting: &'static str, url: &str) -> Result<String, TargetError> {
    let url = url.trim().to_owned();
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(url)
    } else {
        Err(TargetError::BadUrl { setting, url })
    }
}

/// `base` (a collector's base URL, `OTEL_EXPORTER_OTLP_ENDPOINT`) with a
/// signal's path (`/v1/metrics`, `/v1/traces`) appended.
pub fn signal_url(base: &str, path: &str) -> String {
    format!("{}{path}", base.trim().trim_end_matches('/'))
}

/// Where and how to send one signal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collector {
    pub url: String,
    /// The `metrics.api_key`, sent as a bearer token.
    pub api_key: Option<String>,
    pub timeout: Duration,
}

impl Collector {
    /// POSTs one protobuf body and returns the collector's answer (at
    /// most 64 KiB of it) when it is a success.
    pub fn post(&self, body: &[u8]) -> Result<Vec<u8>, PushError> {
        let transport = |reason: String| PushError::Transport {
            url: self.url.clone(),
            reason,
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(self.timeout))
            .http_status_as_error(false)
            .build()
            .into();
        let mut post = agent
            .post(&self.url)
            .header("Content-Type", "application/x-protobuf");
        if let Some(key) = &self.api_key {
            post = post.header("Authorization", &format!("Bearer {key}"));
        }
        let mut response = post.send(body).map_err(|e| transport(e.to_string()))?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            return Err(PushError::Refused {
                url: self.url.clone(),
                status,
            });
        }
        Ok(response
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE)
            .read_to_vec()
            .unwrap_or_default())
    }
}

pub fn string_attribute(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..Default::default()
    }
}

pub fn int_attribute(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

/// The resource every export names: the service, its version and host,
/// and any `extra` attributes (the process, for traces).
pub fn resource(service_name: &str, extra: Vec<KeyValue>) -> Resource {
    let mut attributes = vec![
        string_attribute("service.name", service_name),
        string_attribute("service.version", env!("CARGO_PKG_VERSION")),
    ];
    if let Ok(host) = nix::unistd::gethostname() {
        attributes.push(string_attribute("host.name", &host.to_string_lossy()));
    }
    attributes.extend(extra);
    Resource {
        attributes,
        ..Default::default()
    }
}

/// Now, in nanoseconds since the epoch.
pub fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
