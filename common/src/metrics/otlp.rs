//! Pushing the system's metrics to an OpenTelemetry collector, as the
//! seeds describe: OTLP/HTTP with protobuf bodies (`POST .../v1/metrics`,
//! `Content-Type: application/x-protobuf`), `metrics.api_key` sent as
//! `Authorization: Bearer <key>`.
//!
//! The process that collects the metrics of every daemon (it serves
//! `/metrics` too) runs one [`Pusher`]: every interval it takes the
//! collected [`Snapshot`] and sends it whole. Counters and histograms are
//! cumulative (since the pusher started), so a push that fails loses
//! nothing: the next one carries the totals; there is no retry queue.
//!
//! Where to push, in order: `metrics.endpoint` (the full URL, as the seeds
//! write it), `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` (also the full URL),
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (the collector's base URL; `/v1/metrics`
//! is appended). None of them: no push. `OTEL_METRIC_EXPORT_INTERVAL`
//! and `OTEL_METRIC_EXPORT_TIMEOUT` (milliseconds; 60000 and 10000 by
//! default) and `OTEL_SERVICE_NAME` (default `empath-mta`, the seeds'
//! name) are read as the OpenTelemetry SDKs read them.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
};
use prost::Message;

use super::snapshot::{Family, Kind, Labels, Snapshot, Value};
use crate::config;
use crate::otlp::{Collector, Env, checked_url, signal_url, string_attribute, unix_nanos};
pub use crate::otlp::{PushError, TargetError};

/// The path of the metrics signal under a collector's base URL.
const METRICS_PATH: &str = "/v1/metrics";
const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and how to push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub url: String,
    /// The `metrics.api_key`, sent as a bearer token.
    pub api_key: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub service_name: String,
}

impl Target {
    /// The push target from the `metrics` section and the environment
    /// (`env` looks a variable up); `None` when there is nowhere to push.
    pub fn resolve(
        metrics: &config::Metrics,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, TargetError> {
        if !metrics.enabled {
            return Ok(None);
        }
        let env = Env(env);
        let (setting, url) = if let Some(url) = &metrics.endpoint {
            ("metrics.endpoint", url.clone())
        } else if let Some(url) = env.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") {
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", url)
        } else if let Some(base) = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") {
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                signal_url(&base, METRICS_PATH),
            )
        } else {
            return Ok(None);
        };
        Ok(Some(Self {
            url: checked_url(setting, &url)?,
            api_key: env.api_key(metrics)?,
            interval: env.millis("OTEL_METRIC_EXPORT_INTERVAL", DEFAULT_INTERVAL)?,
            timeout: env.millis("OTEL_METRIC_EXPORT_TIMEOUT", DEFAULT_TIMEOUT)?,
            service_name: env.service_name(),
        }))
    }

    fn collector(&self) -> Collector {
        Collector {
            url: self.url.clone(),
            api_key: self.api_key.clone(),
            timeout: self.timeout,
        }
    }
}

/// The times of one export, in nanoseconds since the epoch.
#[derive(Debug, Clone, Copy)]
pub struct Times {
    /// Since when counters and histograms have counted.
    pub start_ns: u64,
    pub now_ns: u64,
}

/// The OTLP request for `snapshot`: counters become monotonic cumulative
/// sums, gauges gauges, histograms cumulative explicit-bucket histograms;
/// labels become attributes. Families without samples are left out.
pub fn encode(
    snapshot: &Snapshot,
    service_name: &str,
    times: Times,
) -> ExportMetricsServiceRequest {
    let metrics = snapshot
        .families
        .iter()
        .filter(|family| !family.samples.is_empty())
        .map(|family| metric(family, times))
        .collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(crate::otlp::resource(service_name, Vec::new())),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "empath".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn attributes(labels: &Labels) -> Vec<KeyValue> {
    labels
        .iter()
        .map(|(key, value)| string_attribute(key, value))
        .collect()
}

fn metric(family: &Family, times: Times) -> Metric {
    let numbers = || {
        family
            .samples
            .iter()
            .filter_map(|sample| match sample.value {
                Value::Scalar(value) => Some(NumberDataPoint {
                    attributes: attributes(&sample.labels),
                    start_time_unix_nano: times.start_ns,
                    time_unix_nano: times.now_ns,
                    value: Some(number_data_point::Value::AsDouble(value)),
                    ..Default::default()
                }),
                Value::Histogram { .. } => None,
            })
            .collect()
    };
    let data = match family.kind {
        Kind::Counter => metric::Data::Sum(Sum {
            data_points: numbers(),
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
            is_monotonic: true,
        }),
        Kind::Gauge => metric::Data::Gauge(Gauge {
            data_points: numbers(),
        }),
        Kind::Histogram => metric::Data::Histogram(Histogram {
            data_points: family
                .samples
                .iter()
                .filter_map(|sample| histogram_point(&sample.labels, &sample.value, times))
                .collect(),
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
        }),
    };
    Metric {
        name: family.name.clone(),
        description: family.help.clone(),
        data: Some(data),
        ..Default::default()
    }
}

/// Prometheus buckets count everything up to their bound; OTLP buckets
/// count what falls between two bounds, with one more past the last.
fn histogram_point(labels: &Labels, value: &Value, times: Times) -> Option<HistogramDataPoint> {
    let Value::Histogram {
        buckets,
        sum,
        count,
    } = value
    else {
        return None;
    };
    let mut below = 0;
    let mut bucket_counts: Vec<u64> = buckets
        .iter()
        .map(|(_, cumulative)| {
            let in_bucket = cumulative.saturating_sub(below);
            below = *cumulative;
            in_bucket
        })
        .collect();
    bucket_counts.push(count.saturating_sub(below));
    Some(HistogramDataPoint {
        attributes: attributes(labels),
        start_time_unix_nano: times.start_ns,
        time_unix_nano: times.now_ns,
        count: *count,
        sum: Some(*sum),
        bucket_counts,
        explicit_bounds: buckets.iter().map(|(bound, _)| *bound).collect(),
        ..Default::default()
    })
}

/// Sends one request. A collector that accepts only part of it says so
/// in its answer; that is logged, not an error.
pub fn push(target: &Target, request: &ExportMetricsServiceRequest) -> Result<(), PushError> {
    let body = target.collector().post(&request.encode_to_vec())?;
    if let Ok(answer) = ExportMetricsServiceResponse::decode(&body[..])
        && let Some(partial) = answer.partial_success
        && partial.rejected_data_points > 0
    {
        tracing::warn!(
            url = %target.url,
            rejected = partial.rejected_data_points,
            reason = %partial.error_message,
            "the OTLP collector rejected some metrics"
        );
    }
    Ok(())
}

/// A thread that pushes every interval, and once more when stopped.
pub struct Pusher {
    /// Stops the thread; what is sent is told when the last collection
    /// is done.
    stop: Option<mpsc::Sender<mpsc::SyncSender<()>>>,
    thread: Option<JoinHandle<()>>,
}

/// A pusher making its last push.
pub struct Stopping {
    thread: Option<JoinHandle<()>>,
}

impl Stopping {
    /// Waits for the last push (at most one request's timeout).
    pub fn finish(mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Pusher {
    /// Starts pushing what `collect` returns to `target`.
    pub fn start(
        target: Target,
        collect: impl Fn() -> Snapshot + Send + 'static,
    ) -> std::io::Result<Self> {
        let (stop, stopped) = mpsc::channel::<mpsc::SyncSender<()>>();
        let start_ns = unix_nanos();
        tracing::info!(
            url = %target.url,
            interval_secs = target.interval.as_secs_f64(),
            authorization = target.api_key.is_some(),
            "pushing metrics over OTLP/HTTP"
        );
        let thread = std::thread::Builder::new()
            .name("otlp".into())
            .spawn(move || {
                let mut failing = false;
                loop {
                    let (last, collected) = match stopped.recv_timeout(target.interval) {
                        Err(RecvTimeoutError::Timeout) => (false, None),
                        Ok(collected) => (true, Some(collected)),
                        Err(RecvTimeoutError::Disconnected) => (true, None),
                    };
                    let times = Times {
                        start_ns,
                        now_ns: unix_nanos(),
                    };
                    let request = encode(&collect(), &target.service_name, times);
                    if let Some(collected) = collected {
                        let _ = collected.send(());
                    }
                    match push(&target, &request) {
                        Ok(()) if failing => {
                            failing = false;
                            tracing::info!(url = %target.url, "metrics pushed again");
                        }
                        Ok(()) => tracing::debug!(url = %target.url, "metrics pushed"),
                        Err(error) if !failing => {
                            failing = true;
                            tracing::warn!(%error, "cannot push metrics; will try again");
                        }
                        Err(error) => tracing::debug!(%error, "metrics push failed again"),
                    }
                    if last {
                        return;
                    }
                }
            })?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Starts a pusher for the `metrics` section, if it has somewhere to
    /// push (see the module documentation); problems are logged.
    pub fn from_config(
        metrics: &config::Metrics,
        collect: impl Fn() -> Snapshot + Send + 'static,
    ) -> Option<Self> {
        match Target::resolve(metrics, |name| std::env::var(name).ok()) {
            Ok(Some(target)) => Self::start(target, collect)
                .map_err(|error| tracing::error!(%error, "cannot start the OTLP metrics push"))
                .ok(),
            Ok(None) => None,
            Err(error) => {
                tracing::error!(%error, "metrics are not pushed");
                None
            }
        }
    }

    /// Collects the metrics one last time and returns once that is done
    /// (so the caller can then stop the processes they come from); the
    /// push goes on in the background until [`Stopping::finish`].
    /// Blocking: from async code, call it in `spawn_blocking`.
    pub fn stop_collecting(mut self) -> Stopping {
        if let Some(stop) = self.stop.take() {
            let (collected, wait) = mpsc::sync_channel(1);
            if stop.send(collected).is_ok() {
                let _ = wait.recv();
            }
        }
        Stopping {
            thread: self.thread.take(),
        }
    }

    /// Pushes one last time and waits for it (at most one request's
    /// timeout). Blocking, as [`Pusher::stop_collecting`].
    pub fn stop(self) {
        self.stop_collecting().finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Sample;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    fn metrics(endpoint: Option<&str>, api_key: Option<&str>) -> config::Metrics {
        config::Metrics {
            endpoint: endpoint.map(Into::into),
            api_key: api_key.map(Into::into),
            ..config::Metrics::default()
        }
    }

    #[test]
    fn the_endpoint_comes_from_the_config_then_the_environment() {
        let none = Target::resolve(&metrics(None, None), env(&[])).unwrap();
        assert_eq!(none, None, "nowhere to push");
        let base = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")];
        let target = Target::resolve(&metrics(None, None), env(&base))
            .unwrap()
            .unwrap();
        assert_eq!(target.url, "http://collector:4318/v1/metrics");
        assert_eq!(target.interval, DEFAULT_INTERVAL);
        assert_eq!(target.service_name, "empath-mta");
        let signal = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://other:4318/x"),
        ];
        let target = Target::resolve(&metrics(None, None), env(&signal))
            .unwrap()
            .unwrap();
        assert_eq!(target.url, "http://other:4318/x");
        let config = metrics(Some("https://otel.example/v1/metrics"), Some("k"));
        let target = Target::resolve(&config, env(&signal)).unwrap().unwrap();
        assert_eq!(target.url, "https://otel.example/v1/metrics");
        assert_eq!(target.api_key.as_deref(), Some("k"));
        let disabled = config::Metrics {
            enabled: false,
            ..config.clone()
        };
        assert_eq!(Target::resolve(&disabled, env(&signal)).unwrap(), None);
    }

    #[test]
    fn bad_settings_are_named() {
        let error = Target::resolve(&metrics(Some("otel:4318"), None), env(&[])).unwrap_err();
        assert!(error.to_string().contains("metrics.endpoint"), "{error}");
        let from_env = metrics(Some("http://c/v1/metrics"), Some("$ENV:METRICS_API_KEY"));
        let error = Target::resolve(&from_env, env(&[])).unwrap_err();
        assert_eq!(error, TargetError::MissingKey("METRICS_API_KEY".into()));
        let key = [("METRICS_API_KEY", "s3cret")];
        let target = Target::resolve(&from_env, env(&key)).unwrap().unwrap();
        assert_eq!(target.api_key.as_deref(), Some("s3cret"));
        let interval = [
            ("METRICS_API_KEY", "s3cret"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "soon"),
        ];
        let error = Target::resolve(&from_env, env(&interval)).unwrap_err();
        assert!(error.to_string().contains("OTEL_METRIC_EXPORT_INTERVAL"));
    }

    #[test]
    fn histograms_become_per_bucket_counts_and_counters_cumulative_sums() {
        let family = |name: &str, kind: Kind, value: Value| Family {
            name: name.into(),
            help: "h".into(),
            kind,
            samples: vec![Sample {
                labels: vec![("domain".into(), "a.example".into())],
                value,
            }],
        };
        let snapshot = Snapshot {
            families: vec![
                family("c_total", Kind::Counter, Value::Scalar(3.0)),
                family(
                    "h_seconds",
                    Kind::Histogram,
                    Value::Histogram {
                        buckets: vec![(1.0, 2), (5.0, 2), (10.0, 5)],
                        sum: 30.5,
                        count: 7,
                    },
                ),
                Family {
                    name: "empty".into(),
                    help: String::new(),
                    kind: Kind::Gauge,
                    samples: Vec::new(),
                },
            ],
        };
        let times = Times {
            start_ns: 1,
            now_ns: 2,
        };
        let request = encode(&snapshot, "svc", times);
        let bytes = request.encode_to_vec();
        let decoded = ExportMetricsServiceRequest::decode(&bytes[..]).unwrap();
        let metrics = &decoded.resource_metrics[0].scope_metrics[0].metrics;
        assert_eq!(metrics.len(), 2, "families without samples are left out");
        let Some(metric::Data::Sum(sum)) = &metrics[0].data else {
            panic!("{:?}", metrics[0]);
        };
        assert!(sum.is_monotonic);
        assert_eq!(
            sum.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        assert_eq!(
            sum.data_points[0].value,
            Some(number_data_point::Value::AsDouble(3.0))
        );
        assert_eq!(sum.data_points[0].attributes[0].key, "domain");
        let Some(metric::Data::Histogram(histogram)) = &metrics[1].data else {
            panic!("{:?}", metrics[1]);
        };
        let point = &histogram.data_points[0];
        assert_eq!(point.explicit_bounds, [1.0, 5.0, 10.0]);
        assert_eq!(point.bucket_counts, [2, 0, 3, 2]);
        assert_eq!((point.count, point.sum), (7, Some(30.5)));
    }
}
