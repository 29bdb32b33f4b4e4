//! What arrived at the sink, grouped by test message, and the checks the
//! scenarios make on it.
//!
//! smtp-out may deliver a message's recipients in one transaction or
//! several, so the unit of counting is the (message, recipient) pair.

use std::collections::BTreeMap;

use crate::mail::{self, TestMessage};
use crate::sink::SinkMessage;

/// How often each recipient may receive each message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Times {
    /// The normal case: no loss, no duplicate.
    ExactlyOnce,
    /// After a crash, a duplicate is allowed (SMTP cannot avoid it when a
    /// 250 is lost); a loss is not.
    AtLeastOnce,
}

/// Sink transactions grouped by their `X-Test-Id`.
#[derive(Debug)]
pub struct Deliveries<'a> {
    by_id: BTreeMap<usize, Vec<&'a SinkMessage>>,
    /// Transactions without a test id (e.g. a DSN): always an error.
    unidentified: Vec<&'a SinkMessage>,
}

impl<'a> Deliveries<'a> {
    pub fn new(messages: &'a [SinkMessage]) -> Self {
        let mut by_id: BTreeMap<usize, Vec<&SinkMessage>> = BTreeMap::new();
        let mut unidentified = Vec::new();
        for message in messages {
            match mail::test_id(&message.data) {
                Some(id) => by_id.entry(id).or_default().push(message),
                None => unidentified.push(message),
            }
        }
        Self {
            by_id,
            unidentified,
        }
    }

    /// How many times `id` was delivered to each of its recipients.
    fn recipient_counts(&self, id: usize) -> BTreeMap<&str, usize> {
        let mut counts = BTreeMap::new();
        for transaction in self.by_id.get(&id).into_iter().flatten() {
            for rcpt in &transaction.rcpt_to {
                *counts.entry(rcpt.as_str()).or_default() += 1;
            }
        }
        counts
    }

    /// Distinct (message, recipient) pairs delivered.
    pub fn distinct_recipients(&self) -> usize {
        self.by_id
            .keys()
            .map(|&id| self.recipient_counts(id).len())
            .sum()
    }

    /// (message, recipient) deliveries beyond the first.
    pub fn duplicates(&self) -> usize {
        self.by_id
            .keys()
            .flat_map(|&id| self.recipient_counts(id).into_values())
            .map(|count| count - 1)
            .sum()
    }

    /// SMTP transactions seen, for reports.
    pub fn transactions(&self) -> usize {
        self.by_id.values().map(Vec::len).sum::<usize>() + self.unidentified.len()
    }

    /// Checks that each sent message reached exactly `recipients`, `times`.
    pub fn check_recipients(
        &self,
        sent: &[TestMessage],
        recipients: &[&str],
        times: Times,
    ) -> Result<(), String> {
        let mut problems = Vec::new();
        if !self.unidentified.is_empty() {
            problems.push(format!(
                "{} transactions without {}: first one {:?}",
                self.unidentified.len(),
                mail::TEST_ID_HEADER,
                summarize(self.unidentified[0])
            ));
        }
        for message in sent {
            let counts = self.recipient_counts(message.id);
            for rcpt in recipients {
                match (counts.get(rcpt).copied().unwrap_or(0), times) {
                    (0, _) => problems.push(format!("message {} never reached {rcpt}", message.id)),
                    (1, _) | (_, Times::AtLeastOnce) => {}
                    (n, Times::ExactlyOnce) => {
                        problems.push(format!("message {} reached {rcpt} {n} times", message.id));
                    }
                }
            }
            for rcpt in counts.keys().filter(|rcpt| !recipients.contains(rcpt)) {
                problems.push(format!("message {} went to unexpected {rcpt}", message.id));
            }
        }
        let unknown: Vec<usize> = self
            .by_id
            .keys()
            .filter(|id| !sent.iter().any(|m| m.id == **id))
            .copied()
            .collect();
        if !unknown.is_empty() {
            problems.push(format!(
                "messages that were never sent arrived: {unknown:?}"
            ));
        }
        report(problems)
    }

    /// Checks every delivered copy: the envelope sender, and content that
    /// is the original with only Empath's own header fields in front (one
    /// `Received:`, and `Message-ID:`/`Date:` exactly where the original
    /// lacked them).
    pub fn check_content(&self, sent: &[TestMessage], sender: &str) -> Result<(), String> {
        let mut problems = Vec::new();
        for message in sent {
            for copy in self.by_id.get(&message.id).into_iter().flatten() {
                if let Err(problem) = check_copy(message, copy, sender) {
                    problems.push(format!("message {}: {problem}", message.id));
                }
            }
        }
        report(problems)
    }
}

fn check_copy(message: &TestMessage, copy: &SinkMessage, sender: &str) -> Result<(), String> {
    if copy.mail_from != sender {
        return Err(format!(
            "envelope sender {:?}, sent as {sender:?}",
            copy.mail_from
        ));
    }
    // What came over the wire, dot-stuffed: CRLF only, short lines, and
    // one end of data, the last line.
    empath_common::content::wire::check_stream(&copy.raw)
        .map_err(|problem| format!("not RFC 5321 DATA on the wire: {problem}"))?;
    let added = mail::added_headers(&copy.data, &message.bytes)?;
    let expected = [
        ("Received", 1),
        ("Message-ID", usize::from(!message.has_message_id)),
        ("Date", usize::from(!message.has_date)),
    ];
    for (name, count) in expected {
        if added.count(name) != count {
            return Err(format!(
                "{} {name}: field(s) added, expected {count}; added:\n{}",
                added.count(name),
                String::from_utf8_lossy(&added.raw)
            ));
        }
    }
    Ok(())
}

fn summarize(message: &SinkMessage) -> String {
    let head = &message.data[..message.data.len().min(300)];
    format!(
        "from {:?} to {:?}: {}",
        message.mail_from,
        message.rcpt_to,
        String::from_utf8_lossy(head)
    )
}

/// Joins problems into one error, showing the first 30.
fn report(problems: Vec<String>) -> Result<(), String> {
    if problems.is_empty() {
        return Ok(());
    }
    let shown: Vec<&str> = problems.iter().take(30).map(String::as_str).collect();
    Err(format!(
        "{} problem(s):\n  {}{}",
        problems.len(),
        shown.join("\n  "),
        if problems.len() > shown.len() {
            "\n  ..."
        } else {
            ""
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SENDER: &str = "s@client.test";
    const TO: [&str; 2] = ["a@sink.test", "b@sink.test"];

    /// What Empath would deliver for `message`.
    fn delivered(message: &TestMessage, rcpt_to: &[&str]) -> SinkMessage {
        let mut data =
            b"Received: from client.test\r\n\tby mx.empath.test; Tue, 1 Apr 2025\r\n".to_vec();
        if !message.has_message_id {
            data.extend_from_slice(b"Message-ID: <x@mx.empath.test>\r\n");
        }
        if !message.has_date {
            data.extend_from_slice(b"Date: Tue, 1 Apr 2025 12:00:00 +0000\r\n");
        }
        data.extend_from_slice(&message.bytes);
        // As a client sends it: dot-stuffed, then the end of data.
        let mut raw = Vec::new();
        let mut encoder = empath_common::content::wire::DataEncoder::new();
        encoder.encode(&data, &mut raw);
        encoder.finish(&mut raw);
        SinkMessage {
            helo: "mx.empath.test".to_owned(),
            mail_from: SENDER.to_owned(),
            rcpt_to: rcpt_to.iter().map(|r| (*r).to_owned()).collect(),
            mail_command: String::new(),
            rcpt_commands: Vec::new(),
            raw,
            data,
        }
    }

    #[test]
    fn split_transactions_count_once_per_recipient() {
        let sent = mail::generate(4, SENDER, &TO);
        let mut arrived: Vec<SinkMessage> = sent.iter().map(|m| delivered(m, &TO)).collect();
        arrived[1] = delivered(&sent[1], &TO[..1]);
        arrived.push(delivered(&sent[1], &TO[1..]));
        let deliveries = Deliveries::new(&arrived);
        assert_eq!(deliveries.distinct_recipients(), 8);
        assert_eq!(deliveries.duplicates(), 0);
        assert_eq!(deliveries.transactions(), 5);
        deliveries
            .check_recipients(&sent, &TO, Times::ExactlyOnce)
            .expect("exactly once");
        deliveries.check_content(&sent, SENDER).expect("content");
    }

    #[test]
    fn losses_and_duplicates_are_reported() {
        let sent = mail::generate(3, SENDER, &TO);
        let arrived = vec![
            delivered(&sent[0], &TO),
            delivered(&sent[0], &TO[..1]),
            delivered(&sent[1], &TO),
        ];
        let deliveries = Deliveries::new(&arrived);
        assert_eq!(deliveries.duplicates(), 1);
        let error = deliveries
            .check_recipients(&sent, &TO, Times::ExactlyOnce)
            .expect_err("duplicate and loss");
        assert!(
            error.contains("message 0 reached a@sink.test 2 times"),
            "{error}"
        );
        assert!(error.contains("message 2 never reached"), "{error}");
        let error = deliveries
            .check_recipients(&sent, &TO, Times::AtLeastOnce)
            .expect_err("loss");
        assert!(!error.contains("2 times"), "{error}");
    }

    #[test]
    fn missing_or_extra_added_headers_are_reported() {
        let sent = mail::generate(4, SENDER, &TO);
        // Message 3 has neither Message-ID nor Date; deliver it as sent.
        let mut copy = delivered(&sent[3], &TO);
        copy.data = [&b"Received: x\r\n"[..], &sent[3].bytes].concat();
        let arrived = [copy];
        let error = Deliveries::new(&arrived)
            .check_content(&sent, SENDER)
            .expect_err("Message-ID and Date missing");
        assert!(error.contains("Message-ID"), "{error}");
    }

    #[test]
    fn content_that_broke_the_wire_format_is_reported() {
        let sent = mail::generate(1, SENDER, &TO);
        let mut copy = delivered(&sent[0], &TO);
        // A bare LF before the end of data, as a smuggling client sends.
        copy.raw = [&copy.raw[..copy.raw.len() - 3], b"\n.\r\n"].concat();
        let arrived = [copy];
        let error = Deliveries::new(&arrived)
            .check_content(&sent, SENDER)
            .expect_err("bare LF on the wire");
        assert!(error.contains("not RFC 5321 DATA"), "{error}");
    }
}
