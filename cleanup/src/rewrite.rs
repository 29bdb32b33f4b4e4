//! The changes smtpd's milters and checks asked for (or the milters of
//! local submission), applied to a message held whole. Pure, so that it
//! is easy to test; the work is in `empath_common::edits`, shared with
//! smtpd, which applies the same changes to show each milter what the
//! ones before it did.

use empath_common::edits::{self, Edit};
use empath_common::queue::Recipient;

/// A message after its edits.
#[derive(Debug, Clone, PartialEq)]
pub struct Rewritten {
    pub content: Vec<u8>,
    pub sender: String,
    pub recipients: Vec<Recipient>,
    /// Set when a milter quarantined the message: it goes to `hold/`.
    pub quarantine: Option<String>,
}

pub fn rewrite(
    content: &[u8],
    edits: &[Edit],
    sender: &str,
    recipients: &[Recipient],
) -> Rewritten {
    let envelope = edits::apply_to_envelope(sender, recipients, edits);
    for edit in edits {
        if let Edit::ChangeSender {
            address,
            parameters,
        } = edit
            && !parameters.is_empty()
        {
            tracing::info!(%address, %parameters, "sender changed by a milter; its ESMTP parameters are not kept");
        }
    }
    Rewritten {
        content: edits::apply_to_content(content, edits),
        sender: envelope.sender,
        recipients: envelope.recipients,
        quarantine: envelope.quarantine,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_and_envelope_edits_both_apply() {
        let edits = vec![
            Edit::AddHeader {
                name: "X-Checked".into(),
                value: b" yes".to_vec(),
            },
            Edit::AddRecipient {
                address: "<archive@example.org>".into(),
                parameters: String::new(),
            },
            Edit::Quarantine {
                reason: "suspicious".into(),
            },
        ];
        let rewritten = rewrite(
            b"Subject: s\r\n\r\nbody\r\n",
            &edits,
            "a@example.org",
            &[Recipient::new("b@example.com")],
        );
        assert_eq!(
            rewritten.content,
            b"Subject: s\r\nX-Checked: yes\r\n\r\nbody\r\n".to_vec()
        );
        assert_eq!(rewritten.recipients.len(), 2);
        assert_eq!(rewritten.quarantine.as_deref(), Some("suspicious"));
    }
}
