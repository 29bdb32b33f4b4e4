//! Delivery events for plugin modules: DeliverySuccess and DeliveryFailure,
//! with the message's metadata as it was stored at reception.

use empath_common::protocol::{DeliveryReport, Outcome};
use empath_common::queue::Envelope;
use empath_modules::{Event, ModuleContext, Modules};

/// Tells the modules which recipients of `envelope` this report delivered
/// and which failed for good.
pub fn report(modules: &Modules, envelope: &Envelope, report: &DeliveryReport) {
    if modules.is_empty() {
        return;
    }
    for (outcome, event) in [
        (Outcome::Delivered, Event::DeliverySuccess),
        (Outcome::Failed, Event::DeliveryFailure),
    ] {
        let recipients: Vec<String> = report
            .results
            .iter()
            .filter(|r| r.outcome == outcome)
            .filter_map(|r| {
                envelope
                    .recipients
                    .get(r.index)
                    .map(|rcpt| rcpt.address.clone())
            })
            .collect();
        if !recipients.is_empty() {
            emit(modules, envelope, recipients, event);
        }
    }
}

/// Tells the modules that `recipients` failed (e.g. the message expired).
pub fn failed(modules: &Modules, envelope: &Envelope, recipients: Vec<String>) {
    if !modules.is_empty() && !recipients.is_empty() {
        emit(modules, envelope, recipients, Event::DeliveryFailure);
    }
}

fn emit(modules: &Modules, envelope: &Envelope, recipients: Vec<String>, event: Event) {
    let mut context = ModuleContext {
        id: envelope.id.to_string(),
        sender: envelope.sender.clone(),
        recipients,
        data: Vec::new(),
        metadata: envelope.metadata.clone(),
        client_address: envelope.client.addr.clone(),
        response: None,
    };
    modules.emit(event, &mut context);
}
