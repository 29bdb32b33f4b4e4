//! Collecting every daemon's metrics from `private/metrics/<svc>.<pid>.sock`
//! so that the counters of the whole system never go backwards.
//!
//! A daemon's counters start at zero when it restarts. The collector
//! keeps the last counters and histograms it saw of each process; when a
//! process is gone (its socket refuses, or is removed, or its counters
//! went back because its pid was reused), they are added to the carried
//! totals, and the new process counts on top. A daemon that is slow to
//! answer is counted with the last values it gave. The totals are
//! persisted in `private/anvil.totals` (postcard) whenever they change,
//! so that they survive a restart of empath-anvil too; they belong to one
//! run of the master, and start again from zero with the next.
//!
//! A process's increments after its last collection are lost when it is
//! killed: collection runs every [`COLLECT_INTERVAL`] and on every scrape.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use empath_common::metrics::exporter;
use empath_common::metrics::snapshot::{Merged, Snapshot};
use empath_common::queue::Queue;
use serde::{Deserialize, Serialize};

/// The file in `private/` holding the carried totals.
pub const TOTALS_FILE: &str = "anvil.totals";
/// How often every daemon is asked, besides every scrape.
pub const COLLECT_INTERVAL: Duration = Duration::from_secs(1);
/// How long one daemon may take to hand over its metrics.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(1);

/// The counters of processes that are gone, and the last seen of those
/// that run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Totals {
    /// The master's run these totals belong to.
    run: String,
    /// The sum of the counters and histograms of processes that are gone.
    carried: Snapshot,
    /// Per metrics socket name (`<svc>.<pid>.sock`): the process's last
    /// counters and histograms.
    last_seen: BTreeMap<String, Snapshot>,
}

/// What one process said in one collection.
#[derive(Debug)]
enum Seen {
    Answered(Snapshot),
    /// Its socket refuses connections or is gone: the process is dead.
    Gone,
    /// It did not answer in time, or sent something unreadable.
    Silent,
}

impl Totals {
    fn carry(&mut self, gone: &Snapshot) {
        let mut merged = Merged::default();
        merged.add(&self.carried);
        merged.add(gone);
        self.carried = merged.snapshot();
    }

    /// Starts again from zero for a new run of the master.
    fn belong_to(&mut self, run: &str) {
        if self.run != run {
            if !self.run.is_empty() {
                tracing::info!("a new run of the master: metric totals start from zero");
            }
            *self = Self {
                run: run.to_owned(),
                ..Self::default()
            };
        }
    }

    /// Takes one collection in; returns what the live processes count now.
    fn observe(&mut self, round: Vec<(String, Seen)>) -> Vec<Snapshot> {
        let present: BTreeSet<&String> = round.iter().map(|(name, _)| name).collect();
        let vanished: Vec<String> = self
            .last_seen
            .keys()
            .filter(|name| !present.contains(name))
            .cloned()
            .collect();
        for name in vanished {
            if let Some(last) = self.last_seen.remove(&name) {
                self.carry(&last);
            }
        }
        let mut live = Vec::new();
        for (name, seen) in round {
            match seen {
                Seen::Answered(snapshot) => {
                    let counters = snapshot.monotonic();
                    if let Some(last) = self.last_seen.get(&name)
                        && counters.went_back_from(last)
                    {
                        // Not the process we saw last: a new one with its pid.
                        let last = last.clone();
                        self.carry(&last);
                    }
                    self.last_seen.insert(name, counters);
                    live.push(snapshot);
                }
                Seen::Gone => {
                    if let Some(last) = self.last_seen.remove(&name) {
                        self.carry(&last);
                    }
                }
                Seen::Silent => {
                    if let Some(last) = self.last_seen.get(&name) {
                        live.push(last.clone());
                    }
                }
            }
        }
        live
    }
}

/// The collector of the whole system's metrics.
pub struct Collector {
    queue: Queue,
    totals: Mutex<Totals>,
}

impl Collector {
    /// Starts from the persisted totals, if any.
    pub fn load(queue: &Queue) -> Self {
        let path = queue.private_file(TOTALS_FILE);
        let totals = match std::fs::read(&path) {
            Ok(bytes) => postcard::from_bytes(&bytes).unwrap_or_else(|error| {
                tracing::warn!(%error, file = %path.display(), "unreadable metric totals; starting from zero");
                Totals::default()
            }),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Totals::default(),
            Err(error) => {
                tracing::warn!(%error, file = %path.display(), "cannot read the metric totals; starting from zero");
                Totals::default()
            }
        };
        Self {
            queue: queue.clone(),
            totals: Mutex::new(totals),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Totals> {
        self.totals.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Asks every daemon for its values, and returns the sum for the
    /// system: what is carried plus what the live processes count.
    /// `run` is the master's current run, when known.
    pub fn collect(&self, run: Option<&str>) -> Merged {
        let mut totals = self.lock();
        let before = totals.clone();
        if let Some(run) = run {
            totals.belong_to(run);
        }
        let live = totals.observe(self.ask_every_daemon());
        if *totals != before
            && let Err(error) = self.persist(&totals)
        {
            tracing::warn!(%error, "cannot save the metric totals");
        }
        let mut merged = Merged::default();
        merged.add(&totals.carried);
        for snapshot in &live {
            merged.add(snapshot);
        }
        merged
    }

    fn persist(&self, totals: &Totals) -> io::Result<()> {
        let bytes = postcard::to_stdvec(totals)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        self.queue.replace_private_file(TOTALS_FILE, &bytes)
    }

    fn ask_every_daemon(&self) -> Vec<(String, Seen)> {
        let Ok(entries) = std::fs::read_dir(exporter::socket_dir(&self.queue)) else {
            return Vec::new();
        };
        let mut round = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|ext| ext != "sock") {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let seen = match exporter::fetch(&path, SCRAPE_TIMEOUT) {
                Ok(snapshot) => Seen::Answered(snapshot),
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound
                    ) =>
                {
                    let _ = std::fs::remove_file(&path);
                    Seen::Gone
                }
                Err(error) => {
                    tracing::debug!(%error, socket = %path.display(), "no metrics from a daemon");
                    Seen::Silent
                }
            };
            round.push((name, seen));
        }
        round
    }
}

#[cfg(test)]
mod tests {
    use empath_common::metrics::{Family, Kind, Sample, Value};

    use super::*;

    fn process(delivered: f64, active: f64) -> Snapshot {
        let one = |name: &str, kind: Kind, value: f64| Family {
            name: name.into(),
            help: String::new(),
            kind,
            samples: vec![Sample {
                labels: Vec::new(),
                value: Value::Scalar(value),
            }],
        };
        Snapshot {
            families: vec![
                one("delivered_total", Kind::Counter, delivered),
                one("active", Kind::Gauge, active),
            ],
        }
    }

    fn sum(totals: &Totals, live: &[Snapshot], name: &str) -> f64 {
        let mut merged = Merged::default();
        merged.add(&totals.carried);
        for snapshot in live {
            merged.add(snapshot);
        }
        match merged.value(name, &[]) {
            Some(Value::Scalar(v)) => *v,
            _ => 0.0,
        }
    }

    #[test]
    fn counters_of_a_restarted_daemon_continue_from_where_they_were() {
        let mut totals = Totals::default();
        totals.belong_to("run-1");
        let live = totals.observe(vec![
            ("qmgr.10.sock".into(), Seen::Answered(process(1020.0, 4.0))),
            ("smtpd.11.sock".into(), Seen::Answered(process(5.0, 1.0))),
        ]);
        assert_eq!(sum(&totals, &live, "delivered_total"), 1025.0);
        // qmgr dies and a new one starts from zero.
        let live = totals.observe(vec![
            ("qmgr.10.sock".into(), Seen::Gone),
            ("qmgr.12.sock".into(), Seen::Answered(process(50.0, 2.0))),
            ("smtpd.11.sock".into(), Seen::Answered(process(6.0, 1.0))),
        ]);
        assert_eq!(sum(&totals, &live, "delivered_total"), 1076.0);
        assert_eq!(
            sum(&totals, &live, "active"),
            3.0,
            "gauges of the dead are not carried"
        );
        // A slow daemon counts with its last values; a vanished socket is
        // a dead process.
        let live = totals.observe(vec![("qmgr.12.sock".into(), Seen::Silent)]);
        assert_eq!(sum(&totals, &live, "delivered_total"), 1076.0);
        // The same pid again, but a new process: its counters went back.
        let live = totals.observe(vec![(
            "qmgr.12.sock".into(),
            Seen::Answered(process(1.0, 0.0)),
        )]);
        assert_eq!(sum(&totals, &live, "delivered_total"), 1077.0);
        // A new master run starts from zero.
        totals.belong_to("run-2");
        let live = totals.observe(vec![(
            "qmgr.20.sock".into(),
            Seen::Answered(process(2.0, 0.0)),
        )]);
        assert_eq!(sum(&totals, &live, "delivered_total"), 2.0);
    }

    #[test]
    fn totals_survive_a_restart_of_the_collector() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("private/metrics")).unwrap();
        let queue = Queue::new(dir.path());
        let collector = Collector::load(&queue);
        {
            let mut totals = collector.lock();
            totals.belong_to("run-1");
            totals.observe(vec![(
                "qmgr.10.sock".into(),
                Seen::Answered(process(7.0, 1.0)),
            )]);
            collector.persist(&totals).unwrap();
        }
        // Restarted: qmgr.10's socket is gone meanwhile, so its last
        // values are carried.
        let again = Collector::load(&queue);
        let merged = again.collect(Some("run-1"));
        assert_eq!(
            merged.value("delivered_total", &[]),
            Some(&Value::Scalar(7.0))
        );
        assert!(again.lock().last_seen.is_empty());
    }
}
