//! Turning an envelope into delivery jobs, and the results back into
//! recipient statuses. Pure functions.

use std::collections::BTreeMap;

use empath_common::protocol::{
    Appended, DeliveryJob, DeliveryReport, JobRecipient, Outcome, PassOn, RecipientDsn,
};
use empath_common::queue::{Envelope, RecipientStatus, domain_of};

/// One job per destination domain, covering the recipients still open.
/// Planned as the message becomes active, so the job says when that was.
pub fn plan(envelope: &Envelope) -> Vec<DeliveryJob> {
    let active_since_ms = empath_common::time::unix_now_ms();
    let mut by_domain: BTreeMap<String, Vec<JobRecipient>> = BTreeMap::new();
    for (index, recipient) in envelope.undelivered() {
        by_domain
            .entry(domain_of(&recipient.address))
            .or_default()
            .push(JobRecipient {
                index,
                address: recipient.address.clone(),
            });
    }
    by_domain
        .into_iter()
        .map(|(domain, recipients)| DeliveryJob {
            id: envelope.id,
            sender: envelope.sender.clone(),
            domain,
            content_size: envelope.content_size,
            smtputf8: envelope.smtputf8,
            active_since_ms,
            attempt: envelope.attempts + 1,
            pass_on: Appended(pass_on(envelope, &recipients)),
            recipients,
        })
        .collect()
}

/// What the next hop is told about the job's recipients.
fn pass_on(envelope: &Envelope, recipients: &[JobRecipient]) -> PassOn {
    PassOn {
        options: envelope.options,
        dsn: envelope.dsn.clone(),
        recipients: recipients
            .iter()
            .filter_map(|job| {
                let recipient = envelope.recipients.get(job.index)?;
                Some(RecipientDsn {
                    index: job.index,
                    notify: recipient.notify,
                    orcpt: recipient.orcpt.clone(),
                })
            })
            .collect(),
    }
}

/// Records a report in the envelope. Results for recipients that are not
/// in the envelope (a confused agent) are ignored.
pub fn apply(envelope: &mut Envelope, report: &DeliveryReport, now: u64) {
    for result in &report.results {
        let Some(recipient) = envelope.recipients.get_mut(result.index) else {
            tracing::warn!(message_id = %envelope.id, index = result.index, "result for an unknown recipient");
            continue;
        };
        let reply = result.reply.clone();
        let remote = result.remote.clone();
        recipient.status = match result.outcome {
            Outcome::Delivered => RecipientStatus::Delivered {
                at: now,
                remote: remote.unwrap_or_default(),
                reply,
                dsn_passed_on: report.dsn_passed_on.contains(&result.index),
            },
            Outcome::Deferred => RecipientStatus::Deferred {
                at: now,
                remote,
                reply,
            },
            Outcome::Failed => RecipientStatus::Failed {
                at: now,
                remote,
                reply,
            },
        };
    }
}

/// Turns every open recipient into a failure (the message gave up).
pub fn fail_open_recipients(envelope: &mut Envelope, now: u64, why: &str) {
    for recipient in &mut envelope.recipients {
        let (remote, reply) = match &recipient.status {
            RecipientStatus::Deferred { remote, reply, .. } => (remote.clone(), reply.clone()),
            RecipientStatus::Pending => (None, empath_common::smtp::Reply::new(451, "4.4.7", why)),
            _ => continue,
        };
        let mut reply = reply;
        if !reply.text.contains(why) {
            reply.text = format!("{} ({why})", reply.text);
        }
        recipient.status = RecipientStatus::Failed {
            at: now,
            remote,
            reply,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use empath_common::protocol::RecipientResult;
    use empath_common::queue::{ClientInfo, DsnParams, QueueId, Recipient};
    use empath_common::smtp::Reply;

    fn envelope(recipients: &[&str]) -> Envelope {
        Envelope {
            id: QueueId::generate(),
            sender: "a@example.org".into(),
            recipients: recipients.iter().map(|r| Recipient::new(*r)).collect(),
            arrival: 0,
            attempts: 0,
            next_retry: None,
            last_error: None,
            client: ClientInfo::default(),
            dsn: DsnParams::default(),
            metadata: Default::default(),
            content_size: 10,
            smtputf8: false,
            delay_warned: false,
            options: Default::default(),
        }
    }

    #[test]
    fn one_job_per_domain_for_open_recipients_only() {
        let mut env = envelope(&["x@One.example", "y@two.example", "z@one.example"]);
        env.recipients[1].status = RecipientStatus::Delivered {
            at: 1,
            remote: "mx".into(),
            reply: Reply::new(250, "2.0.0", "ok"),
            dsn_passed_on: false,
        };
        let jobs = plan(&env);
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].domain, "one.example");
        let indexes: Vec<usize> = jobs[0].recipients.iter().map(|r| r.index).collect();
        assert_eq!(indexes, [0, 2]);
    }

    #[test]
    fn results_set_statuses_and_expiry_fails_the_rest() {
        let mut env = envelope(&["a@d.example", "b@d.example", "c@d.example"]);
        let result = |index, outcome, code| RecipientResult {
            index,
            outcome,
            remote: Some("mx.d.example".into()),
            reply: Reply::new(code, "", "text"),
        };
        let report = DeliveryReport {
            results: vec![
                result(0, Outcome::Delivered, 250),
                result(1, Outcome::Deferred, 451),
                result(2, Outcome::Failed, 550),
                result(9, Outcome::Failed, 550),
            ],
            destination_failed: false,
            dsn_passed_on: Default::default(),
        };
        apply(&mut env, &report, 5);
        assert!(matches!(
            env.recipients[0].status,
            RecipientStatus::Delivered { .. }
        ));
        assert!(env.recipients[1].status.is_open());
        assert!(matches!(
            env.recipients[2].status,
            RecipientStatus::Failed { .. }
        ));
        fail_open_recipients(&mut env, 6, "message expired");
        let RecipientStatus::Failed { reply, .. } = &env.recipients[1].status else {
            panic!()
        };
        assert_eq!(reply.code, 451);
        assert!(reply.text.contains("message expired"));
        assert_eq!(env.undelivered().count(), 0);
    }
}
