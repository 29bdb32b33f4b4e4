//! Changes to a message on its way into the queue: what milters ask for
//! (the Sendmail milter modification actions) and what the inbound
//! authentication checks add. smtpd decides them and sends them with the
//! submission ([`crate::protocol::CleanupRequest::Edits`]); cleanup applies
//! them, in order, before the queue file is sealed, so that the 250 means
//! "durable, as modified". The functions here are pure, so that smtpd (to
//! show a later milter what an earlier one changed) and cleanup (for the
//! queue file) get the same bytes.
//!
//! Header positions follow the milter protocol as Postfix implements it,
//! counted over the header fields the client sent (the fields cleanup adds,
//! such as `Received:`, come later and are not counted): an insert at
//! index 0 goes to the top, a change or delete names the n-th field of
//! that name (from 1), and a change of a field that is not there adds it.

use serde::{Deserialize, Serialize};

use crate::queue::{Notify, Recipient};

/// One change to a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Edit {
    /// Appends a field at the end of the header section.
    AddHeader {
        name: String,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Inserts a field before the `index`-th field (0: at the top; past
    /// the end: at the end).
    InsertHeader {
        index: usize,
        name: String,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Replaces the value of the `occurrence`-th (from 1) field called
    /// `name`; when there are fewer, appends the field.
    ChangeHeader {
        name: String,
        occurrence: usize,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Removes the `occurrence`-th (from 1) field called `name`, if any.
    DeleteHeader { name: String, occurrence: usize },
    /// Removes every `Authentication-Results:` field that claims to come
    /// from `authserv_id` (RFC 8601 section 5: a forgery, when it arrives
    /// from outside).
    RemoveAuthenticationResults { authserv_id: String },
    /// Replaces the body (everything after the empty line).
    ReplaceBody {
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
    },
    /// Replaces the envelope sender; `parameters` are ESMTP MAIL
    /// parameters (kept for the log only).
    ChangeSender { address: String, parameters: String },
    /// Adds an envelope recipient; `parameters` are ESMTP RCPT
    /// parameters, of which NOTIFY and ORCPT are used.
    AddRecipient { address: String, parameters: String },
    /// Removes an envelope recipient.
    DeleteRecipient { address: String },
    /// Queue the message in `hold/`, not for delivery.
    Quarantine { reason: String },
}

impl Edit {
    /// True for the edits that change the content rather than the envelope.
    pub fn changes_content(&self) -> bool {
        matches!(
            self,
            Self::AddHeader { .. }
                | Self::InsertHeader { .. }
                | Self::ChangeHeader { .. }
                | Self::DeleteHeader { .. }
                | Self::RemoveAuthenticationResults { .. }
                | Self::ReplaceBody { .. }
        )
    }
}

/// A message split into header fields and the rest.
struct Parts {
    /// Each field with its continuation lines and line ends, as written.
    fields: Vec<Vec<u8>>,
    /// The empty line and the body, or nothing for a message that is all
    /// header.
    rest: Vec<u8>,
}

fn split(message: &[u8]) -> Parts {
    let mut fields: Vec<Vec<u8>> = Vec::new();
    let mut position = 0;
    while position < message.len() {
        let end = message[position..]
            .iter()
            .position(|b| *b == b'\n')
            .map_or(message.len(), |offset| position + offset + 1);
        let line = &message[position..end];
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        let continues = matches!(line.first(), Some(b' ' | b'\t'));
        match fields.last_mut() {
            Some(field) if continues => field.extend_from_slice(line),
            _ => fields.push(line.to_vec()),
        }
        position = end;
    }
    Parts {
        fields,
        rest: message[position..].to_vec(),
    }
}

fn join(parts: Parts) -> Vec<u8> {
    let size = parts.fields.iter().map(Vec::len).sum::<usize>() + parts.rest.len();
    let mut out = Vec::with_capacity(size);
    for field in &parts.fields {
        out.extend_from_slice(field);
        // A field that ended the message without a line end would run
        // into what follows.
        if !field.ends_with(b"\n") {
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(&parts.rest);
    out
}

/// The field name of a header field, without surrounding blanks.
fn field_name(field: &[u8]) -> Option<&[u8]> {
    let colon = field.iter().position(|b| *b == b':')?;
    let name = field[..colon].trim_ascii();
    (!name.is_empty()).then_some(name)
}

fn named(field: &[u8], name: &str) -> bool {
    field_name(field).is_some_and(|n| n.eq_ignore_ascii_case(name.as_bytes()))
}

/// A valid field name (RFC 5322 section 2.2: printable ASCII but colon).
pub fn is_field_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| (33..=126).contains(&b) && b != b':')
}

/// A header field `name:value` with CRLF line ends. Every line after the
/// first starts with a blank and none is empty, so a value cannot end the
/// header section or start a field of its own.
pub fn header_field(name: &str, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + value.len() + 3);
    out.extend_from_slice(name.as_bytes());
    out.push(b':');
    for (index, line) in value.split(|b| *b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if index > 0 {
            if line.trim_ascii().is_empty() {
                continue;
            }
            out.extend_from_slice(b"\r\n");
            if !matches!(line.first(), Some(b' ' | b'\t')) {
                out.push(b'\t');
            }
        }
        out.extend(line.iter().copied().filter(|b| *b != b'\r'));
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// The authserv-id of an `Authentication-Results:` value (RFC 8601 section
/// 2.2): its first token, comments skipped.
pub fn authserv_id(value: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(value);
    let mut cleaned = String::with_capacity(text.len());
    let mut depth = 0usize;
    for c in text.chars() {
        match c {
            '(' => depth += 1,
            ')' if depth > 0 => depth -= 1,
            _ if depth == 0 => cleaned.push(c),
            _ => {}
        }
    }
    let before_results = cleaned.split(';').next().unwrap_or("");
    let token = before_results.split_whitespace().next()?;
    Some(token.to_owned())
}

/// The message with every content edit of `edits` applied, in order.
/// Envelope edits are left to [`apply_to_envelope`].
pub fn apply_to_content(message: &[u8], edits: &[Edit]) -> Vec<u8> {
    if !edits.iter().any(Edit::changes_content) {
        return message.to_vec();
    }
    let mut parts = split(message);
    for edit in edits {
        match edit {
            Edit::AddHeader { name, value } if is_field_name(name) => {
                parts.fields.push(header_field(name, value));
            }
            Edit::InsertHeader { index, name, value } if is_field_name(name) => {
                let at = (*index).min(parts.fields.len());
                parts.fields.insert(at, header_field(name, value));
            }
            Edit::ChangeHeader {
                name,
                occurrence,
                value,
            } if is_field_name(name) => match nth_named(&parts.fields, name, *occurrence) {
                Some(at) => parts.fields[at] = header_field(name, value),
                None => parts.fields.push(header_field(name, value)),
            },
            Edit::DeleteHeader { name, occurrence } => {
                if let Some(at) = nth_named(&parts.fields, name, *occurrence) {
                    parts.fields.remove(at);
                }
            }
            Edit::RemoveAuthenticationResults { authserv_id: ours } => {
                parts.fields.retain(|field| {
                    let forged = named(field, "Authentication-Results")
                        && field
                            .iter()
                            .position(|b| *b == b':')
                            .and_then(|colon| authserv_id(&field[colon + 1..]))
                            .is_some_and(|id| id.eq_ignore_ascii_case(ours));
                    !forged
                });
            }
            Edit::ReplaceBody { body } => {
                let mut rest = b"\r\n".to_vec();
                rest.extend_from_slice(body);
                parts.rest = rest;
            }
            _ => {}
        }
    }
    join(parts)
}

/// The index of the `occurrence`-th (from 1; 0 counts as 1, as Sendmail
/// does) field called `name`.
fn nth_named(fields: &[Vec<u8>], name: &str, occurrence: usize) -> Option<usize> {
    fields
        .iter()
        .enumerate()
        .filter(|(_, field)| named(field, name))
        .nth(occurrence.max(1) - 1)
        .map(|(index, _)| index)
}

/// An address from a milter: without angle brackets, blanks and control
/// characters (which could smuggle commands into a later SMTP session).
pub fn clean_address(address: &str) -> String {
    let trimmed = address.trim();
    let bare = trimmed
        .strip_prefix('<')
        .and_then(|a| a.strip_suffix('>'))
        .unwrap_or(trimmed);
    bare.chars().filter(|c| !c.is_control()).collect()
}

/// What the envelope edits leave: the sender, the recipients, and the
/// quarantine reason if the message is to be held.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvelopeAfterEdits {
    pub sender: String,
    pub recipients: Vec<Recipient>,
    pub quarantine: Option<String>,
}

/// Applies the envelope edits of `edits` to `sender` and `recipients`.
pub fn apply_to_envelope(
    sender: &str,
    recipients: &[Recipient],
    edits: &[Edit],
) -> EnvelopeAfterEdits {
    let mut result = EnvelopeAfterEdits {
        sender: sender.to_owned(),
        recipients: recipients.to_vec(),
        quarantine: None,
    };
    for edit in edits {
        match edit {
            Edit::ChangeSender { address, .. } => result.sender = clean_address(address),
            Edit::AddRecipient {
                address,
                parameters,
            } => {
                let address = clean_address(address);
                let known = result
                    .recipients
                    .iter()
                    .any(|r| r.address.eq_ignore_ascii_case(&address));
                if !address.is_empty() && !known {
                    result
                        .recipients
                        .push(recipient_with_parameters(address, parameters));
                }
            }
            Edit::DeleteRecipient { address } => {
                let address = clean_address(address);
                result
                    .recipients
                    .retain(|r| !r.address.eq_ignore_ascii_case(&address));
            }
            Edit::Quarantine { reason } => {
                result.quarantine.get_or_insert_with(|| reason.clone());
            }
            _ => {}
        }
    }
    result
}

/// A recipient with the NOTIFY and ORCPT parameters (RFC 3461) of an
/// `SMFIR_ADDRCPT_PAR`; others are ignored.
fn recipient_with_parameters(address: String, parameters: &str) -> Recipient {
    let mut recipient = Recipient::new(address);
    for parameter in parameters.split_ascii_whitespace() {
        let Some((key, value)) = parameter.split_once('=') else {
            continue;
        };
        if key.eq_ignore_ascii_case("ORCPT") && !value.is_empty() {
            recipient.orcpt = Some(value.to_owned());
        } else if key.eq_ignore_ascii_case("NOTIFY") {
            let mut notify = Notify {
                explicit: true,
                success: false,
                failure: false,
                delay: false,
            };
            for word in value.split(',') {
                match word.to_ascii_uppercase().as_str() {
                    "SUCCESS" => notify.success = true,
                    "FAILURE" => notify.failure = true,
                    "DELAY" => notify.delay = true,
                    _ => {}
                }
            }
            recipient.notify = notify;
        }
    }
    recipient
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESSAGE: &[u8] = b"From: a@example.org\r\nX-Tag: one\r\nSubject: hi\r\n folded\r\nX-Tag: two\r\n\r\nbody line\r\n";

    fn text(bytes: &[u8]) -> String {
        String::from_utf8_lossy(bytes).into_owned()
    }

    fn header(name: &str, value: &str) -> (String, Vec<u8>) {
        (name.to_owned(), value.as_bytes().to_vec())
    }

    #[test]
    fn no_edits_leave_the_message_alone() {
        assert_eq!(apply_to_content(MESSAGE, &[]), MESSAGE);
        let envelope_only = [Edit::Quarantine { reason: "x".into() }];
        assert_eq!(apply_to_content(MESSAGE, &envelope_only), MESSAGE);
    }

    #[test]
    fn headers_are_added_inserted_changed_and_deleted_by_position() {
        let (name, value) = header("X-Added", " at the end");
        let (top, top_value) = header("X-Top", " first");
        let edits = [
            Edit::AddHeader { name, value },
            Edit::InsertHeader {
                index: 0,
                name: top,
                value: top_value,
            },
            Edit::ChangeHeader {
                name: "x-tag".into(),
                occurrence: 2,
                value: b" second\n\tline".to_vec(),
            },
            Edit::DeleteHeader {
                name: "X-Tag".into(),
                occurrence: 1,
            },
            Edit::ChangeHeader {
                name: "X-New".into(),
                occurrence: 1,
                value: b" appended".to_vec(),
            },
        ];
        assert_eq!(
            text(&apply_to_content(MESSAGE, &edits)),
            "X-Top: first\r\nFrom: a@example.org\r\nSubject: hi\r\n folded\r\nx-tag: second\r\n\tline\r\nX-Added: at the end\r\nX-New: appended\r\n\r\nbody line\r\n"
        );
    }

    #[test]
    fn occurrence_zero_means_the_first_and_a_missing_one_is_not_deleted() {
        let edits = [
            Edit::DeleteHeader {
                name: "X-Tag".into(),
                occurrence: 0,
            },
            Edit::DeleteHeader {
                name: "X-Tag".into(),
                occurrence: 5,
            },
        ];
        assert_eq!(
            text(&apply_to_content(MESSAGE, &edits)),
            "From: a@example.org\r\nSubject: hi\r\n folded\r\nX-Tag: two\r\n\r\nbody line\r\n"
        );
    }

    #[test]
    fn the_body_is_replaced_and_a_message_without_one_gets_the_empty_line() {
        let edits = [Edit::ReplaceBody {
            body: b"new\r\n".to_vec(),
        }];
        assert!(text(&apply_to_content(MESSAGE, &edits)).ends_with("X-Tag: two\r\n\r\nnew\r\n"));
        assert_eq!(
            text(&apply_to_content(b"Subject: x\r\n", &edits)),
            "Subject: x\r\n\r\nnew\r\n"
        );
    }

    #[test]
    fn values_cannot_inject_fields_or_end_the_header_section() {
        let edits = [Edit::AddHeader {
            name: "X-Evil".into(),
            value: b" a\r\n\r\nBcc: victim@example.org\nX: y".to_vec(),
        }];
        let edited = text(&apply_to_content(b"A: b\r\n\r\nbody\r\n", &edits));
        assert_eq!(
            edited,
            "A: b\r\nX-Evil: a\r\n\tBcc: victim@example.org\r\n\tX: y\r\n\r\nbody\r\n"
        );
        let bad_name = [Edit::AddHeader {
            name: "Bad Name".into(),
            value: b" x".to_vec(),
        }];
        assert_eq!(apply_to_content(MESSAGE, &bad_name), MESSAGE);
    }

    #[test]
    fn forged_authentication_results_with_our_id_are_removed() {
        let message = b"Authentication-Results: (comment) MX.example.org; spf=pass\r\nAuthentication-Results: other.example; dkim=pass\r\nAuthentication-Results: mx.example.org.evil; none\r\nSubject: s\r\n\r\n";
        let edits = [Edit::RemoveAuthenticationResults {
            authserv_id: "mx.example.org".into(),
        }];
        assert_eq!(
            text(&apply_to_content(message, &edits)),
            "Authentication-Results: other.example; dkim=pass\r\nAuthentication-Results: mx.example.org.evil; none\r\nSubject: s\r\n\r\n"
        );
    }

    #[test]
    fn authserv_id_skips_comments_and_stops_at_the_semicolon() {
        assert_eq!(
            authserv_id(b" (x) mx.example;spf=pass").as_deref(),
            Some("mx.example")
        );
        assert_eq!(
            authserv_id(b" mx.example 1; none").as_deref(),
            Some("mx.example")
        );
        assert_eq!(authserv_id(b" ; none"), None);
    }

    #[test]
    fn envelope_edits_change_sender_and_recipients_and_hold() {
        let recipients = vec![Recipient::new("a@x.test"), Recipient::new("b@x.test")];
        let edits = [
            Edit::ChangeSender {
                address: "<new@x.test>".into(),
                parameters: String::new(),
            },
            Edit::DeleteRecipient {
                address: "<A@x.test>".into(),
            },
            Edit::AddRecipient {
                address: "c@x.test".into(),
                parameters: "NOTIFY=SUCCESS,DELAY ORCPT=rfc822;c@x.test".into(),
            },
            Edit::AddRecipient {
                address: "b@x.test".into(),
                parameters: String::new(),
            },
            Edit::Quarantine {
                reason: "first".into(),
            },
            Edit::Quarantine {
                reason: "second".into(),
            },
        ];
        let result = apply_to_envelope("old@x.test", &recipients, &edits);
        assert_eq!(result.sender, "new@x.test");
        let addresses: Vec<&str> = result
            .recipients
            .iter()
            .map(|r| r.address.as_str())
            .collect();
        assert_eq!(addresses, ["b@x.test", "c@x.test"]);
        let added = &result.recipients[1];
        assert_eq!(added.orcpt.as_deref(), Some("rfc822;c@x.test"));
        assert!(added.notify.explicit && added.notify.success && added.notify.delay);
        assert!(!added.notify.failure);
        assert_eq!(result.quarantine.as_deref(), Some("first"));
    }

    #[test]
    fn addresses_lose_brackets_and_control_characters() {
        assert_eq!(clean_address(" <a@b\r\nRCPT>"), "a@bRCPT");
        assert_eq!(clean_address("<>"), "");
    }
}
