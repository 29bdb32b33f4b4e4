//! What the master tells empath-anvil about its daemons, without reading
//! anything back: `private/master.status`, a small RON file that the
//! master replaces atomically ([`Queue::replace_private_file`]) whenever
//! a daemon starts or exits, a restart is counted, a throttle begins or
//! ends, or a stop begins. empath-anvil reads it for `/health/ready` and
//! the `empath_process_*` metrics. The master only writes it, so the root
//! process parses nothing that an unprivileged process controls.

use std::io;

use serde::{Deserialize, Serialize};

use crate::queue::Queue;

/// The file's name in `private/`.
pub const STATUS_FILE: &str = "master.status";

/// The master's view of the system at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MasterStatus {
    /// Names one run of the master (its pid and start time): totals that
    /// empath-anvil carries across daemon restarts belong to one run.
    pub run: String,
    /// A stop (SIGTERM or SIGINT) has begun: not ready any more.
    pub stopping: bool,
    /// The SMTP listeners are bound and held for smtpd.
    pub listeners_bound: bool,
    /// One entry per supervised process (several for `smtpd.processes`).
    pub daemons: Vec<DaemonStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonStatus {
    /// The executable, e.g. `empath-smtpd`.
    pub name: String,
    /// Its pid while it runs.
    pub pid: Option<u32>,
    /// Times the master restarted it after it died.
    pub restarts: u64,
    /// Held back after crashing repeatedly before serving.
    pub throttled: bool,
}

impl MasterStatus {
    /// Running processes called `name`.
    pub fn running(&self, name: &str) -> usize {
        self.daemons
            .iter()
            .filter(|d| d.name == name && d.pid.is_some())
            .count()
    }

    /// True when every process called `name` runs (and there is one).
    pub fn all_running(&self, name: &str) -> bool {
        let wanted = self.daemons.iter().filter(|d| d.name == name).count();
        wanted > 0 && self.running(name) == wanted
    }

    /// Writes the status for empath-anvil (the master's side).
    pub fn publish(&self, queue: &Queue) -> io::Result<()> {
        let text = ron::ser::to_string_pretty(self, ron::ser::PrettyConfig::default())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        queue.replace_private_file(STATUS_FILE, text.as_bytes())
    }

    /// Reads the status the master published (empath-anvil's side).
    pub fn read(queue: &Queue) -> io::Result<Self> {
        let text = std::fs::read_to_string(queue.private_file(STATUS_FILE))?;
        ron::from_str(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_published_status_reads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("private")).unwrap();
        let queue = Queue::new(dir.path());
        let daemon = |name: &str, pid: Option<u32>| DaemonStatus {
            name: name.into(),
            pid,
            restarts: 2,
            throttled: pid.is_none(),
        };
        let status = MasterStatus {
            run: "42-1700000000000".into(),
            stopping: false,
            listeners_bound: true,
            daemons: vec![
                daemon("empath-smtpd", Some(10)),
                daemon("empath-smtpd", None),
                daemon("empath-qmgr", Some(12)),
            ],
        };
        status.publish(&queue).unwrap();
        // A leftover temp file of a writer that died does not get in the way.
        std::fs::write(dir.path().join("private/.master.status.tmp"), "junk").unwrap();
        status.publish(&queue).unwrap();
        let read = MasterStatus::read(&queue).unwrap();
        assert_eq!(read, status);
        assert_eq!(read.running("empath-smtpd"), 1);
        assert!(!read.all_running("empath-smtpd"));
        assert!(read.all_running("empath-qmgr"));
        assert!(!read.all_running("empath-bounce"));
    }
}
