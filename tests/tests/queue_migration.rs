//! A spool of the flat layout of earlier versions (`data/ID`,
//! `<state>/ID`) is moved into the hashed layout when the master starts,
//! and every message in it is delivered, once, byte for byte; also when the
//! master is killed in the middle of the migration.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::collections::HashMap;
use std::time::Duration;

use empath_common::queue::{Envelope, Queue, QueueId, Recipient, RecipientStatus};
use empath_common::smtp::Reply;
use empath_common::time::unix_now;
use empath_tests::flat_spool::{self, FlatMessage, FlatState};
use empath_tests::{Empath, Sink, TestConfig, mail};

const SENDER: &str = "old@client.test";
const RECIPIENT: &str = "rcpt@sink.test";
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(300);

/// Messages as the flat layout held them: new ones in `incoming/`, and
/// deferred ones that are due now.
fn flat_messages(count: usize, id: impl Fn() -> QueueId) -> Vec<FlatMessage> {
    mail::generate(count, SENDER, &[RECIPIENT])
        .into_iter()
        .enumerate()
        .map(|(n, message)| {
            let state = if n % 2 == 0 {
                FlatState::Incoming
            } else {
                FlatState::Deferred
            };
            let mut recipient = Recipient::new(RECIPIENT);
            if state == FlatState::Deferred {
                recipient.status = RecipientStatus::Deferred {
                    at: unix_now(),
                    remote: None,
                    reply: Reply::new(451, "4.4.1", "no answer from the old days"),
                };
            }
            let envelope = Envelope {
                id: id(),
                sender: SENDER.into(),
                recipients: vec![recipient],
                arrival: unix_now(),
                attempts: u32::from(state == FlatState::Deferred),
                next_retry: (state == FlatState::Deferred).then_some(0),
                last_error: None,
                client: Default::default(),
                dsn: Default::default(),
                metadata: Default::default(),
                content_size: message.bytes.len() as u64,
                smtputf8: false,
                delay_warned: false,
                options: Default::default(),
            };
            FlatMessage {
                envelope,
                content: message.bytes,
                state,
            }
        })
        .collect()
}

/// Every message arrives exactly once with the content it had in the
/// queue, and nothing is left of the flat layout or of the queue.
fn assert_all_delivered(sink: &Sink, empath: &Empath, messages: &[FlatMessage]) {
    empath.wait_until(
        "the migrated mail to be delivered",
        DELIVERY_TIMEOUT,
        || {
            let arrived = sink.message_count();
            let queue = empath.queue_counts();
            if arrived >= messages.len() && queue.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "{arrived} of {} arrived, queue {queue:?}",
                    messages.len()
                ))
            }
        },
    );
    let expected: HashMap<&[u8], usize> =
        messages.iter().map(|m| (m.content.as_slice(), 0)).collect();
    sink.inspect(|arrived| {
        assert_eq!(arrived.len(), messages.len(), "one delivery per message");
        let mut seen = expected.clone();
        for message in arrived {
            assert_eq!(message.mail_from, SENDER);
            assert_eq!(message.rcpt_to, [RECIPIENT]);
            let count = seen.get_mut(message.data.as_slice()).unwrap_or_else(|| {
                panic!(
                    "delivered content that was not queued (or changed):\n{}",
                    String::from_utf8_lossy(&message.data)
                )
            });
            *count += 1;
        }
        assert!(seen.values().all(|n| *n == 1), "every message once");
    });
    assert_eq!(flat_spool::flat_files(empath.spool()), 0);
}

#[test]
fn a_flat_spool_is_migrated_at_start_and_all_its_mail_delivered() {
    let sink = Sink::start();
    let messages = flat_messages(120, flat_spool::old_style_id);
    let empath = Empath::start_prepared(
        TestConfig::new().mx_override("sink.test", sink.addr()),
        |dir| flat_spool::write_flat_spool(&dir.join("spool"), &messages),
    );
    assert_all_delivered(&sink, &empath, &messages);
    // 120 content files, 60 envelopes in incoming/ and 60 in deferred/.
    let log = empath.log();
    let line = log
        .lines()
        .find(|l| l.contains("moved to the hashed layout"))
        .unwrap_or_else(|| panic!("no migration log line\n{}", empath.log_tail()));
    assert!(line.contains("moved=240"), "{line}");
    // The hashed layout is what the queue API sees.
    assert_eq!(
        Queue::new(empath.spool())
            .count_content()
            .expect("count data/"),
        0
    );
}

#[test]
fn a_migration_killed_midway_loses_nothing_and_the_next_start_finishes_it() {
    let sink = Sink::start();
    // Old-style IDs spread over every subdirectory: the migration fsyncs
    // hundreds of them, which leaves time to kill it in the middle.
    let messages = flat_messages(1500, flat_spool::old_style_id);
    let (empath, interrupted) = Empath::start_after_killed_migration(
        TestConfig::new().mx_override("sink.test", sink.addr()),
        &messages,
    );
    let interrupted = interrupted.unwrap_or_else(|| {
        panic!(
            "the migration ended before the master could be killed in the middle\n{}",
            empath.all_logs()
        )
    });
    println!("killed with {interrupted:?}");
    assert_all_delivered(&sink, &empath, &messages);
}
