//! What the spool and the master's status file say, as metrics: queue
//! sizes, the oldest message, free space, and the `empath_process_*`
//! series about the supervised daemons.

use std::time::{SystemTime, UNIX_EPOCH};

use empath_common::metrics::{Family, Kind, Sample, Snapshot, Value};
use empath_common::queue::{Queue, QueueState, lister};
use empath_common::supervision::MasterStatus;

/// Message counts per queue state and the arrival of the oldest message,
/// from the lister's count of the queue directories (no file is opened).
pub struct QueueView {
    pub counts: Vec<(&'static str, u64)>,
    pub oldest_ms: Option<u64>,
}

impl QueueView {
    /// The `status` label of each queue directory.
    const STATES: [(QueueState, &'static str); 4] = [
        (QueueState::Incoming, "pending"),
        (QueueState::Active, "active"),
        (QueueState::Deferred, "deferred"),
        (QueueState::Hold, "held"),
    ];

    pub fn read(queue: &Queue) -> Self {
        let counts = lister::count(queue).unwrap_or_default();
        Self {
            counts: Self::STATES
                .iter()
                .map(|(state, label)| (*label, counts.of(*state)))
                .collect(),
            oldest_ms: counts.oldest_ms,
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().map(|(_, n)| n).sum()
    }
}

/// Free space on the spool's filesystem, for the daemons' user.
#[derive(Debug, Clone, Copy)]
pub struct SpoolSpace {
    pub available_bytes: f64,
    pub inodes_left: bool,
}

impl SpoolSpace {
    /// Below this, the spool counts as full: a message of any size could
    /// not be queued.
    pub const MIN_FREE_BYTES: u64 = 1024 * 1024;

    pub fn of(queue: &Queue) -> Option<Self> {
        let stats = nix::sys::statvfs::statvfs(queue.root()).ok()?;
        let fragment = stats.fragment_size() as f64;
        Some(Self {
            available_bytes: stats.blocks_available() as f64 * fragment,
            inodes_left: stats.files_available() > 0,
        })
    }

    /// Room for another message: at least [`Self::MIN_FREE_BYTES`] and a
    /// free inode.
    pub fn has_room(&self) -> bool {
        self.available_bytes >= Self::MIN_FREE_BYTES as f64 && self.inodes_left
    }
}

fn gauge(name: &str, help: &str, value: f64) -> Family {
    Family {
        name: name.into(),
        help: help.into(),
        kind: Kind::Gauge,
        samples: vec![Sample {
            labels: Vec::new(),
            value: Value::Scalar(value),
        }],
    }
}

/// The queue gauges and the spool's free space.
pub fn queue_snapshot(queue: &Queue) -> Snapshot {
    let view = QueueView::read(queue);
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let oldest = view
        .oldest_ms
        .map_or(0.0, |ms| now_ms.saturating_sub(ms) as f64 / 1000.0);
    let mut families = Vec::new();
    // The spool's size and its filesystem's room (SpoolDiskSpaceLow).
    families.extend(empath_common::metrics::spool::families(queue));
    families.push(Family {
        name: "empath_delivery_queue_size".into(),
        help: "Messages in the queue, by status (pending: not yet tried; active: being delivered; deferred: waiting to retry; held).".into(),
        kind: Kind::Gauge,
        samples: view
            .counts
            .iter()
            .map(|(label, n)| Sample {
                labels: vec![("status".into(), (*label).into())],
                value: Value::Scalar(*n as f64),
            })
            .collect(),
    });
    families.push(gauge(
        "empath_delivery_queue_oldest_seconds",
        "Age of the oldest message in the queue (0 when empty).",
        oldest,
    ));
    Snapshot { families }
}

/// `empath_process_up`, `empath_process_restarts_total` and
/// `empath_process_throttled` per daemon, from the master's status. The
/// restart count is the master's own, so it never goes back while the
/// master runs, whoever restarts.
pub fn process_snapshot(status: &MasterStatus) -> Snapshot {
    let mut names: Vec<&str> = status.daemons.iter().map(|d| d.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let per_daemon = |value: &dyn Fn(&str) -> f64| -> Vec<Sample> {
        names
            .iter()
            .map(|name| Sample {
                labels: vec![("daemon".into(), (*name).into())],
                value: Value::Scalar(value(name)),
            })
            .collect()
    };
    let restarts = |name: &str| -> f64 {
        status
            .daemons
            .iter()
            .filter(|d| d.name == name)
            .map(|d| d.restarts as f64)
            .sum()
    };
    let throttled = |name: &str| -> f64 {
        let any = status.daemons.iter().any(|d| d.name == name && d.throttled);
        f64::from(u8::from(any))
    };
    let family = |name: &str, help: &str, kind: Kind, samples: Vec<Sample>| Family {
        name: name.into(),
        help: help.into(),
        kind,
        samples,
    };
    Snapshot {
        families: vec![
            family(
                "empath_process_up",
                "Daemon processes running, by daemon.",
                Kind::Gauge,
                per_daemon(&|name| status.running(name) as f64),
            ),
            family(
                "empath_process_restarts_total",
                "Times the master restarted a daemon that died.",
                Kind::Counter,
                per_daemon(&restarts),
            ),
            family(
                "empath_process_throttled",
                "1 while a daemon is throttled after crashing before serving.",
                Kind::Gauge,
                per_daemon(&throttled),
            ),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use empath_common::metrics::snapshot::render;
    use empath_common::supervision::DaemonStatus;

    #[test]
    fn process_series_add_up_the_processes_of_a_daemon() {
        let daemon = |name: &str, pid: Option<u32>, restarts: u64, throttled: bool| DaemonStatus {
            name: name.into(),
            pid,
            restarts,
            throttled,
        };
        let status = MasterStatus {
            daemons: vec![
                daemon("empath-qmgr", None, 4, true),
                daemon("empath-smtpd", Some(10), 1, false),
                daemon("empath-smtpd", Some(11), 2, false),
            ],
            ..MasterStatus::default()
        };
        let text = render(&[process_snapshot(&status)]);
        for line in [
            "empath_process_up{daemon=\"empath-smtpd\"} 2\n",
            "empath_process_up{daemon=\"empath-qmgr\"} 0\n",
            "empath_process_restarts_total{daemon=\"empath-smtpd\"} 3\n",
            "empath_process_restarts_total{daemon=\"empath-qmgr\"} 4\n",
            "empath_process_throttled{daemon=\"empath-qmgr\"} 1\n",
            "empath_process_throttled{daemon=\"empath-smtpd\"} 0\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from\n{text}");
        }
    }
}
