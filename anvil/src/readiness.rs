//! `/health/ready`: the seeds' readiness JSON (eight fields), from the
//! master's status file and the spool.

use empath_common::config::Config;
use empath_common::queue::Queue;
use empath_common::supervision::MasterStatus;
use serde::Serialize;

use crate::system::{QueueView, SpoolSpace};

const SMTPD: &str = "empath-smtpd";
const QMGR: &str = "empath-qmgr";
const SMTP_OUT: &str = "empath-smtp-out";

/// The readiness JSON, field for field as in the seeds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Readiness {
    pub alive: bool,
    pub ready: bool,
    pub smtp_ready: bool,
    pub spool_ready: bool,
    pub delivery_ready: bool,
    pub dns_ready: bool,
    pub queue_size: u64,
    pub max_queue_size: u64,
}

/// What readiness is judged on, gathered from the system.
#[derive(Debug, Clone)]
pub struct Observed {
    /// `None` when the master's status cannot be read.
    pub status: Option<MasterStatus>,
    pub spool_writable: bool,
    pub spool_has_room: bool,
    pub queue_size: u64,
}

impl Observed {
    pub fn gather(queue: &Queue) -> Self {
        let status = MasterStatus::read(queue)
            .map_err(|error| tracing::warn!(%error, "cannot read the master's status"))
            .ok();
        Self {
            status,
            spool_writable: queue.check_writable().is_ok(),
            spool_has_room: SpoolSpace::of(queue).is_some_and(|space| space.has_room()),
            queue_size: QueueView::read(queue).total(),
        }
    }
}

/// Ready when every part is, the queue is below `health.max_queue_size`,
/// and no stop has begun: a stopping MTA takes no new mail, so a load
/// balancer should send none.
pub fn judge(config: &Config, observed: &Observed) -> Readiness {
    let status = observed.status.as_ref();
    let stopping = status.is_none_or(|s| s.stopping);
    let smtp_ready = !stopping && status.is_some_and(|s| s.listeners_bound && s.all_running(SMTPD));
    let spool_ready = observed.spool_writable && observed.spool_has_room;
    let delivery_ready = status.is_some_and(|s| s.running(QMGR) > 0 && s.running(SMTP_OUT) > 0);
    // smtp-out owns the resolver; it is operational while smtp-out runs.
    let dns_ready = status.is_some_and(|s| s.running(SMTP_OUT) > 0);
    let max_queue_size = config.health.max_queue_size;
    Readiness {
        alive: true,
        ready: !stopping
            && smtp_ready
            && spool_ready
            && delivery_ready
            && dns_ready
            && observed.queue_size < max_queue_size,
        smtp_ready,
        spool_ready,
        delivery_ready,
        dns_ready,
        queue_size: observed.queue_size,
        max_queue_size,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use empath_common::supervision::DaemonStatus;

    use super::*;

    fn config() -> Config {
        Config::parse(
            Path::new("test.ron"),
            "Empath(smtp_controller: (listeners: [{ socket: \"127.0.0.1:2525\" }]), spool: (path: \"/tmp/x\"), health: (max_queue_size: 10))",
        )
        .unwrap()
    }

    fn running() -> Observed {
        let daemon = |name: &str| DaemonStatus {
            name: name.into(),
            pid: Some(1),
            restarts: 0,
            throttled: false,
        };
        Observed {
            status: Some(MasterStatus {
                run: "1-1".into(),
                stopping: false,
                listeners_bound: true,
                daemons: [SMTPD, SMTPD, QMGR, SMTP_OUT]
                    .into_iter()
                    .map(daemon)
                    .collect(),
            }),
            spool_writable: true,
            spool_has_room: true,
            queue_size: 3,
        }
    }

    #[test]
    fn ready_when_everything_runs() {
        let readiness = judge(&config(), &running());
        assert!(readiness.ready, "{readiness:?}");
        assert_eq!((readiness.queue_size, readiness.max_queue_size), (3, 10));
    }

    #[test]
    fn each_cause_makes_it_not_ready() {
        let config = config();
        let mut stopping = running();
        if let Some(s) = stopping.status.as_mut() {
            s.stopping = true;
        }
        let readiness = judge(&config, &stopping);
        assert!(!readiness.ready && !readiness.smtp_ready && readiness.delivery_ready);

        let mut one_smtpd_down = running();
        if let Some(s) = one_smtpd_down.status.as_mut() {
            s.daemons[1].pid = None;
        }
        assert!(!judge(&config, &one_smtpd_down).smtp_ready);

        let full = Observed {
            spool_has_room: false,
            ..running()
        };
        let readiness = judge(&config, &full);
        assert!(!readiness.ready && !readiness.spool_ready && readiness.smtp_ready);

        let over = Observed {
            queue_size: 10,
            ..running()
        };
        assert!(!judge(&config, &over).ready);

        let unknown = Observed {
            status: None,
            ..running()
        };
        let readiness = judge(&config, &unknown);
        assert!(readiness.alive && !readiness.ready && !readiness.dns_ready);
    }
}
