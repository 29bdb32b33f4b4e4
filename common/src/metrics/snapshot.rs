//! A process's metric values in a form that crosses a socket (postcard),
//! adding up snapshots of several processes, and the Prometheus text
//! exposition format.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use prometheus::proto::{MetricFamily, MetricType};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub families: Vec<Family>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Family {
    pub name: String,
    pub help: String,
    pub kind: Kind,
    pub samples: Vec<Sample>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
        }
    }
}

/// Label names and values, sorted by name.
pub type Labels = Vec<(String, String)>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub labels: Labels,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    Scalar(f64),
    /// Cumulative counts per upper bound (without +Inf, which is `count`).
    Histogram {
        buckets: Vec<(f64, u64)>,
        sum: f64,
        count: u64,
    },
}

impl Value {
    /// Adds `other` to `self`. Histograms with different buckets cannot
    /// be added; `self` is kept then.
    fn add(&mut self, other: &Value) {
        match (self, other) {
            (Value::Scalar(a), Value::Scalar(b)) => *a += b,
            (
                Value::Histogram {
                    buckets,
                    sum,
                    count,
                },
                Value::Histogram {
                    buckets: more,
                    sum: more_sum,
                    count: more_count,
                },
            ) if buckets.len() == more.len()
                && buckets.iter().zip(more).all(|(a, b)| a.0 == b.0) =>
            {
                for (bucket, extra) in buckets.iter_mut().zip(more) {
                    bucket.1 += extra.1;
                }
                *sum += more_sum;
                *count += more_count;
            }
            _ => {}
        }
    }
}

impl Snapshot {
    /// Only the values that never go down while a process lives (counters
    /// and histograms): what may be carried over when the process is gone.
    pub fn monotonic(&self) -> Self {
        Self {
            families: self
                .families
                .iter()
                .filter(|f| matches!(f.kind, Kind::Counter | Kind::Histogram))
                .cloned()
                .collect(),
        }
    }

    /// True when some counter or histogram count of `self` is lower than
    /// in `earlier`: they cannot come from the same process (its pid was
    /// reused by a new one).
    pub fn went_back_from(&self, earlier: &Self) -> bool {
        let level = |value: &Value| match value {
            Value::Scalar(v) => *v,
            Value::Histogram { count, .. } => *count as f64,
        };
        earlier.families.iter().any(|old| {
            let Some(new) = self
                .families
                .iter()
                .find(|f| f.name == old.name && f.kind == old.kind)
            else {
                return false;
            };
            matches!(old.kind, Kind::Counter | Kind::Histogram)
                && old.samples.iter().any(|sample| {
                    new.samples
                        .iter()
                        .find(|s| s.labels == sample.labels)
                        .is_some_and(|s| level(&s.value) < level(&sample.value))
                })
        })
    }

    /// Converts what a prometheus registry gathered.
    pub fn from_families(gathered: &[MetricFamily]) -> Self {
        let families = gathered
            .iter()
            .filter_map(|family| {
                let kind = match family.get_field_type() {
                    MetricType::COUNTER => Kind::Counter,
                    MetricType::GAUGE => Kind::Gauge,
                    MetricType::HISTOGRAM => Kind::Histogram,
                    _ => return None,
                };
                let samples = family
                    .get_metric()
                    .iter()
                    .map(|metric| {
                        let mut labels: Labels = metric
                            .get_label()
                            .iter()
                            .map(|l| (l.name().to_owned(), l.value().to_owned()))
                            .collect();
                        labels.sort();
                        let value = match kind {
                            Kind::Counter => Value::Scalar(metric.get_counter().get_value()),
                            Kind::Gauge => Value::Scalar(metric.get_gauge().get_value()),
                            Kind::Histogram => {
                                let histogram = metric.get_histogram();
                                Value::Histogram {
                                    buckets: histogram
                                        .get_bucket()
                                        .iter()
                                        .filter(|b| b.upper_bound().is_finite())
                                        .map(|b| (b.upper_bound(), b.cumulative_count()))
                                        .collect(),
                                    sum: histogram.get_sample_sum(),
                                    count: histogram.get_sample_count(),
                                }
                            }
                        };
                        Sample { labels, value }
                    })
                    .collect();
                Some(Family {
                    name: family.name().to_owned(),
                    help: family.help().to_owned(),
                    kind,
                    samples,
                })
            })
            .collect();
        Self { families }
    }
}

/// Adds up snapshots: the same family and labels from several processes
/// become one sample holding the sum.
#[derive(Debug, Default)]
pub struct Merged {
    families: BTreeMap<String, (String, Kind, BTreeMap<Labels, Value>)>,
}

impl Merged {
    pub fn add(&mut self, snapshot: &Snapshot) {
        for family in &snapshot.families {
            let (_, kind, samples) = self
                .families
                .entry(family.name.clone())
                .or_insert_with(|| (family.help.clone(), family.kind, BTreeMap::new()));
            if *kind != family.kind {
                continue;
            }
            for sample in &family.samples {
                samples
                    .entry(sample.labels.clone())
                    .and_modify(|value| value.add(&sample.value))
                    .or_insert_with(|| sample.value.clone());
            }
        }
    }

    /// The sum so far, as one snapshot (to store or send).
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            families: self
                .families
                .iter()
                .map(|(name, (help, kind, samples))| Family {
                    name: name.clone(),
                    help: help.clone(),
                    kind: *kind,
                    samples: samples
                        .iter()
                        .map(|(labels, value)| Sample {
                            labels: labels.clone(),
                            value: value.clone(),
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    /// The value of one sample, for tests and readiness checks.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<&Value> {
        let mut wanted: Labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        wanted.sort();
        self.families.get(name)?.2.get(&wanted)
    }

    /// The sums as one snapshot, e.g. to push them elsewhere.
    pub fn into_snapshot(self) -> Snapshot {
        Snapshot {
            families: self
                .families
                .into_iter()
                .map(|(name, (help, kind, samples))| Family {
                    name,
                    help,
                    kind,
                    samples: samples
                        .into_iter()
                        .map(|(labels, value)| Sample { labels, value })
                        .collect(),
                })
                .collect(),
        }
    }

    /// The Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // A family without samples yet still gets its HELP and TYPE, so
        // that every metric is discoverable from the first scrape.
        for (name, (help, kind, samples)) in &self.families {
            let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
            let _ = writeln!(out, "# TYPE {name} {}", kind.as_str());
            for (labels, value) in samples {
                match value {
                    Value::Scalar(v) => {
                        let _ = writeln!(out, "{name}{} {}", label_set(labels, None), number(*v));
                    }
                    Value::Histogram {
                        buckets,
                        sum,
                        count,
                    } => {
                        for (bound, cumulative) in buckets {
                            let le = number(*bound);
                            let _ = writeln!(
                                out,
                                "{name}_bucket{} {cumulative}",
                                label_set(labels, Some(&le))
                            );
                        }
                        let _ = writeln!(
                            out,
                            "{name}_bucket{} {count}",
                            label_set(labels, Some("+Inf"))
                        );
                        let _ = writeln!(
                            out,
                            "{name}_sum{} {}",
                            label_set(labels, None),
                            number(*sum)
                        );
                        let _ = writeln!(out, "{name}_count{} {count}", label_set(labels, None));
                    }
                }
            }
        }
        out
    }
}

/// Renders snapshots as one exposition.
pub fn render(snapshots: &[Snapshot]) -> String {
    let mut merged = Merged::default();
    for snapshot in snapshots {
        merged.add(snapshot);
    }
    merged.render()
}

fn label_set(labels: &Labels, le: Option<&str>) -> String {
    if labels.is_empty() && le.is_none() {
        return String::new();
    }
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    format!("{{{}}}", parts.join(","))
}

fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_owned()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        value.to_string()
    }
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn family(name: &str, kind: Kind, samples: Vec<Sample>) -> Family {
        Family {
            name: name.into(),
            help: format!("help for {name}"),
            kind,
            samples,
        }
    }

    #[test]
    fn snapshots_of_several_processes_are_summed() {
        let one = |labels: Labels, v: f64| Snapshot {
            families: vec![family(
                "x_total",
                Kind::Counter,
                vec![Sample {
                    labels,
                    value: Value::Scalar(v),
                }],
            )],
        };
        let a = vec![("domain".to_owned(), "a\"b".to_owned())];
        let text = render(&[one(a.clone(), 2.0), one(a, 3.0), one(Vec::new(), 1.0)]);
        assert_eq!(
            text,
            "# HELP x_total help for x_total\n# TYPE x_total counter\nx_total 1\nx_total{domain=\"a\\\"b\"} 5\n"
        );
    }

    #[test]
    fn histograms_render_cumulative_buckets_sum_and_count() {
        let h = Snapshot {
            families: vec![family(
                "d_seconds",
                Kind::Histogram,
                vec![Sample {
                    labels: Vec::new(),
                    value: Value::Histogram {
                        buckets: vec![(0.5, 1), (1.0, 2)],
                        sum: 1.25,
                        count: 3,
                    },
                }],
            )],
        };
        let text = render(&[h.clone(), h]);
        assert!(text.contains("d_seconds_bucket{le=\"0.5\"} 2\n"), "{text}");
        assert!(text.contains("d_seconds_bucket{le=\"+Inf\"} 6\n"), "{text}");
        assert!(
            text.contains("d_seconds_sum 2.5\nd_seconds_count 6\n"),
            "{text}"
        );
    }

    #[test]
    fn only_counters_and_histograms_are_monotonic_and_a_reset_is_seen() {
        let scalar = |name: &str, kind: Kind, v: f64| {
            family(
                name,
                kind,
                vec![Sample {
                    labels: Vec::new(),
                    value: Value::Scalar(v),
                }],
            )
        };
        let earlier = Snapshot {
            families: vec![
                scalar("sent_total", Kind::Counter, 5.0),
                scalar("active", Kind::Gauge, 3.0),
            ],
        };
        let kept = earlier.monotonic();
        assert_eq!(kept.families.len(), 1);
        assert_eq!(kept.families[0].name, "sent_total");
        let later = Snapshot {
            families: vec![
                scalar("sent_total", Kind::Counter, 7.0),
                scalar("active", Kind::Gauge, 0.0),
            ],
        };
        assert!(!later.went_back_from(&earlier), "a gauge may go down");
        let reset = Snapshot {
            families: vec![scalar("sent_total", Kind::Counter, 1.0)],
        };
        assert!(reset.went_back_from(&earlier));
        let mut merged = Merged::default();
        merged.add(&earlier);
        merged.add(&later);
        assert_eq!(
            merged.snapshot().families[1].samples[0].value,
            Value::Scalar(12.0)
        );
    }
}
