//! smtp-out against a next hop that breaks the protocol: nothing is ever
//! recorded as delivered unless the server received the whole content and
//! accepted it after the end of data; the mail is deferred and delivered
//! once the server behaves.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::collections::HashMap;
use std::time::Duration;

use empath_tests::mail::{self, TestMessage};
use empath_tests::rogue::{Misbehaviour, RogueServer};
use empath_tests::{Empath, SmtpSend, TestConfig};

const SENDER: &str = "sender@client.test";
const RECIPIENT: &str = "user@rogue.test";
const QUEUE_EMPTY_TIMEOUT: Duration = Duration::from_secs(180);

/// The queue IDs smtp-out logged as delivered, one entry per record.
fn delivered_records(log: &str) -> Vec<String> {
    log.lines()
        .filter(|line| line.contains("empath_smtp_out") && line.contains("Delivery successful"))
        .filter_map(|line| {
            let start = line.find("message_id=")? + "message_id=".len();
            let id: String = line[start..]
                .chars()
                .take_while(char::is_ascii_alphanumeric)
                .collect();
            Some(id)
        })
        .collect()
}

/// The queue ID in the `Received:` header Empath added (`... id QUEUEID`).
fn queue_id_of(data: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(data);
    let start = text.find(" id ")? + 4;
    Some(
        text[start..]
            .chars()
            .take_while(char::is_ascii_alphanumeric)
            .collect(),
    )
}

/// Sends `messages` through Empath to a server misbehaving as `how` for
/// its first `bad` transactions, waits for the queue to empty, and checks
/// that every delivery Empath recorded is one the server really made,
/// and that every message got through in the end.
fn check(how: Misbehaviour, bad: usize, messages: &[TestMessage]) {
    let rogue = RogueServer::start(how, bad);
    // One delivery at a time, so every message after a broken one goes
    // over the connection it left behind, if smtp-out kept it.
    let empath = Empath::start(
        TestConfig::new()
            .mx_override("rogue.test", rogue.addr())
            .domain_key("rogue.test", "max_concurrency", "1"),
    );
    let outbox = mail::write_eml_files(&empath.dir().join("outbox"), messages);
    let report = SmtpSend::new(empath.smtp_addr(), SENDER, &[RECIPIENT], &outbox).run();
    report.assert_all_accepted(messages.len(), || empath.log_tail());
    empath.wait_queue_empty(QUEUE_EMPTY_TIMEOUT);

    let log = empath.log();
    let accepted = rogue.accepted();
    assert!(
        rogue.misbehaved() >= 1,
        "{how:?}: the server never misbehaved\n{}",
        empath.log_tail()
    );
    // Every message reached the server, whole, once it behaved.
    for message in messages {
        let copies = accepted
            .iter()
            .filter(|a| mail::test_id(&a.data) == Some(message.id))
            .count();
        assert!(
            copies >= 1,
            "{how:?}: message {} never accepted by the server\n{}",
            message.id,
            empath.log_tail()
        );
    }
    for copy in &accepted {
        let original = messages
            .iter()
            .find(|m| mail::test_id(&copy.data) == Some(m.id))
            .expect("the server accepted a message nobody sent");
        assert!(
            copy.data.ends_with(&original.bytes),
            "{how:?}: message {} arrived altered or cut",
            original.id
        );
    }
    // Every delivery Empath recorded matches one the server made.
    let mut made: HashMap<String, usize> = HashMap::new();
    for copy in &accepted {
        *made
            .entry(queue_id_of(&copy.data).unwrap_or_default())
            .or_default() += 1;
    }
    let mut recorded: HashMap<String, usize> = HashMap::new();
    for id in delivered_records(&log) {
        *recorded.entry(id).or_default() += 1;
    }
    assert_eq!(
        recorded.values().sum::<usize>(),
        messages.len(),
        "{how:?}: one delivery record per message expected\n{}",
        empath.log_tail()
    );
    for (id, count) in &recorded {
        let real = made.get(id).copied().unwrap_or(0);
        assert!(
            *count <= real,
            "{how:?}: {id} recorded delivered {count} times, accepted {real} times\n{}",
            empath.log_tail()
        );
    }
    // The broken transactions were deferred with a status smtp-out made.
    assert!(
        log.contains("4.5.0") || log.contains("4.4.1"),
        "{how:?}: no deferral logged\n{}",
        empath.log_tail()
    );
}

fn small_messages(count: usize) -> Vec<TestMessage> {
    mail::generate(count, SENDER, &[RECIPIENT])
}

#[test]
fn a_2xx_reply_to_data_is_not_a_delivery() {
    check(Misbehaviour::DataGets250, 3, &small_messages(3));
}

/// 8 MiB, more than the kernel buffers hold while the server does not
/// read: the client is still sending when the early reply arrives.
#[test]
fn a_250_in_the_middle_of_the_body_is_not_a_delivery() {
    let mut message = small_messages(1).remove(0);
    let line = "This line makes the body long enough to outlast every buffer.\r\n";
    let mut body = String::from_utf8(message.bytes.clone()).expect("generated mail is text");
    while body.len() < 8 << 20 {
        body.push_str(line);
    }
    message.bytes = body.into_bytes();
    check(Misbehaviour::EarlyReplyInBody, 1, &[message]);
}

#[test]
fn an_early_250_then_connection_reuse_is_not_taken_for_deliveries() {
    check(Misbehaviour::EarlyReplyThenReuse, 1, &small_messages(10));
}

#[test]
fn replies_out_of_step_after_pipelining_are_not_deliveries() {
    check(
        Misbehaviour::ExtraReplyWhilePipelining,
        3,
        &small_messages(3),
    );
}

#[test]
fn malformed_reply_lines_are_not_deliveries() {
    check(Misbehaviour::MalformedFinalReply, 4, &small_messages(4));
}

#[test]
fn a_close_after_the_content_is_not_a_delivery() {
    check(Misbehaviour::CloseAfterContent, 2, &small_messages(2));
}

// LMTP: the same checks, per recipient: a recipient is delivered only on
// its own reply after the end of data.

const LMTP_RECIPIENTS: [&str; 2] = ["alice@lmtp.test", "bob@lmtp.test"];

/// (queue ID, recipient) of each record smtp-out logged as delivered.
fn delivered_recipients(log: &str) -> Vec<(String, String)> {
    log.lines()
        .filter(|line| line.contains("empath_smtp_out") && line.contains("Delivery successful"))
        .filter_map(|line| {
            let id_at = line.find("message_id=")? + "message_id=".len();
            let id: String = line[id_at..]
                .chars()
                .take_while(char::is_ascii_alphanumeric)
                .collect();
            let rcpt_at = line.find("recipient=\"")? + "recipient=\"".len();
            let recipient: String = line[rcpt_at..].chars().take_while(|c| *c != '"').collect();
            Some((id, recipient))
        })
        .collect()
}

fn check_lmtp(how: Misbehaviour, bad: usize, messages: &[TestMessage]) {
    let rogue = RogueServer::start_lmtp(how, bad);
    let empath = Empath::start(
        TestConfig::new()
            .domain_key(
                "lmtp.test",
                "transport",
                &format!("\"lmtp:inet:{}\"", rogue.addr()),
            )
            .domain_key("lmtp.test", "max_concurrency", "1"),
    );
    let outbox = mail::write_eml_files(&empath.dir().join("outbox"), messages);
    let report = SmtpSend::new(empath.smtp_addr(), SENDER, &LMTP_RECIPIENTS, &outbox).run();
    report.assert_all_accepted(messages.len(), || empath.log_tail());
    empath.wait_queue_empty(QUEUE_EMPTY_TIMEOUT);

    let log = empath.log();
    let accepted = rogue.accepted();
    assert!(
        rogue.misbehaved() >= 1,
        "{how:?}: the server never misbehaved"
    );
    let mut made: HashMap<(String, String), usize> = HashMap::new();
    for copy in &accepted {
        let id = queue_id_of(&copy.data).unwrap_or_default();
        for recipient in &copy.rcpt_to {
            *made.entry((id.clone(), recipient.clone())).or_default() += 1;
        }
    }
    let records = delivered_recipients(&log);
    assert_eq!(
        records.len(),
        messages.len() * LMTP_RECIPIENTS.len(),
        "{how:?}: one delivery record per recipient expected\n{}",
        empath.log_tail()
    );
    let mut recorded: HashMap<(String, String), usize> = HashMap::new();
    for pair in records {
        *recorded.entry(pair).or_default() += 1;
    }
    for (pair, count) in &recorded {
        let real = made.get(pair).copied().unwrap_or(0);
        assert!(
            *count <= real,
            "{how:?}: {pair:?} recorded delivered {count} times, accepted {real} times\n{}",
            empath.log_tail()
        );
    }
    // Every recipient of every message was accepted in the end.
    for message in messages {
        for recipient in LMTP_RECIPIENTS {
            let got = accepted.iter().any(|a| {
                mail::test_id(&a.data) == Some(message.id)
                    && a.rcpt_to.iter().any(|r| r == recipient)
            });
            assert!(
                got,
                "{how:?}: message {} never reached {recipient}",
                message.id
            );
        }
    }
}

#[test]
fn lmtp_a_2xx_reply_to_data_is_not_a_delivery() {
    check_lmtp(Misbehaviour::DataGets250, 2, &small_messages(2));
}

#[test]
fn lmtp_a_malformed_reply_for_one_recipient_is_not_a_delivery() {
    check_lmtp(Misbehaviour::MalformedFinalReply, 2, &small_messages(2));
}

#[test]
fn lmtp_a_hang_up_after_one_recipient_keeps_only_that_delivery() {
    check_lmtp(Misbehaviour::CloseAfterContent, 2, &small_messages(2));
}

#[test]
fn lmtp_replies_out_of_step_are_not_deliveries() {
    check_lmtp(
        Misbehaviour::ExtraReplyWhilePipelining,
        2,
        &small_messages(2),
    );
}
