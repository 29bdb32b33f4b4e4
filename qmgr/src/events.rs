//! Delivery events for plugin modules, with the message's metadata as it
//! was stored at reception: DeliveryAttempt when a job goes to smtp-out,
//! DeliverySuccess for the recipients it delivered, DeliveryFailure for
//! those that failed, for now (4xx, deferred) or for good (5xx, or given
//! up). Recipients with the same server and reply share one event.

use empath_common::protocol::{DeliveryJob, DeliveryReport, Outcome};
use empath_common::queue::{Envelope, RecipientStatus, domain_of};
use empath_modules::{DeliveryInfo, Event, ModuleContext, Modules};

/// `job` of `envelope` is about to be delivered.
pub fn attempt(modules: &Modules, envelope: Option<&Envelope>, job: &DeliveryJob) {
    let Some(envelope) = envelope.filter(|_| modules.wants_events()) else {
        return;
    };
    let recipients = job.recipients.iter().map(|r| r.address.clone()).collect();
    let delivery = DeliveryInfo {
        message_id: envelope.id.to_string(),
        domain: job.domain.clone(),
        attempts: envelope.attempts + 1,
        ..DeliveryInfo::default()
    };
    emit(
        modules,
        envelope,
        Event::DeliveryAttempt,
        recipients,
        delivery,
    );
}

/// smtp-out reported on `job` of `envelope`.
pub fn report(modules: &Modules, envelope: &Envelope, job: &DeliveryJob, report: &DeliveryReport) {
    if !modules.wants_events() {
        return;
    }
    // The attempt is counted when the whole message is done with.
    let attempts = envelope.attempts + 1;
    let outcomes = report.results.iter().filter_map(|result| {
        let recipient = envelope.recipients.get(result.index)?;
        let (event, error) = match result.outcome {
            Outcome::Delivered => (Event::DeliverySuccess, String::new()),
            Outcome::Deferred | Outcome::Failed => {
                (Event::DeliveryFailure, result.reply.to_string())
            }
        };
        let delivery = DeliveryInfo {
            message_id: envelope.id.to_string(),
            domain: job.domain.clone(),
            server: result.remote.clone().unwrap_or_default(),
            error,
            attempts,
        };
        Some((event, delivery, recipient.address.clone()))
    });
    emit_grouped(modules, envelope, outcomes);
}

/// qmgr gave up on `recipients` of `envelope` (too many attempts, or the
/// message expired): their final status is in the envelope.
pub fn failed(modules: &Modules, envelope: &Envelope, recipients: Vec<String>) {
    if !modules.wants_events() {
        return;
    }
    let outcomes = envelope.recipients.iter().filter_map(|recipient| {
        if !recipients.contains(&recipient.address) {
            return None;
        }
        let RecipientStatus::Failed { remote, reply, .. } = &recipient.status else {
            return None;
        };
        let delivery = DeliveryInfo {
            message_id: envelope.id.to_string(),
            domain: domain_of(&recipient.address),
            server: remote.clone().unwrap_or_default(),
            error: reply.to_string(),
            attempts: envelope.attempts,
        };
        Some((Event::DeliveryFailure, delivery, recipient.address.clone()))
    });
    emit_grouped(modules, envelope, outcomes);
}

/// One event for the recipients with the same event and delivery details,
/// in the order of the first recipient of each.
fn emit_grouped(
    modules: &Modules,
    envelope: &Envelope,
    outcomes: impl Iterator<Item = (Event, DeliveryInfo, String)>,
) {
    let mut groups: Vec<(Event, DeliveryInfo, Vec<String>)> = Vec::new();
    for (event, delivery, recipient) in outcomes {
        match groups
            .iter_mut()
            .find(|(e, d, _)| *e == event && *d == delivery)
        {
            Some((_, _, recipients)) => recipients.push(recipient),
            None => groups.push((event, delivery, vec![recipient])),
        }
    }
    for (event, delivery, recipients) in groups {
        emit(modules, envelope, event, recipients, delivery);
    }
}

fn emit(
    modules: &Modules,
    envelope: &Envelope,
    event: Event,
    recipients: Vec<String>,
    delivery: DeliveryInfo,
) {
    let client = &envelope.client.addr;
    let mut context = ModuleContext {
        id: envelope.id.to_string(),
        sender: envelope.sender.clone(),
        recipients,
        metadata: envelope.metadata.clone(),
        // "192.0.2.1:50312" in the queue file; modules get the address.
        client_address: client
            .parse::<std::net::SocketAddr>()
            .map_or_else(|_| client.clone(), |a| a.ip().to_string()),
        helo: envelope.client.helo.clone(),
        delivery: Some(delivery),
        ..ModuleContext::default()
    };
    empath_modules::blocking(|| modules.emit(event, &mut context, &[]));
}
