//! Corrupt and truncated queue files: each goes to `corrupt/` with a log
//! line that names it, and every other message keeps flowing.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::path::PathBuf;
use std::time::Duration;

use empath_common::queue::{self, Envelope, Queue, QueueId, QueueState, Recipient};
use empath_tests::mail::{self, TestMessage};
use empath_tests::{Deliveries, Empath, QMGR, Sink, SmtpSend, TestConfig, Times};

const SENDER: &str = "sender@client.test";
const RECIPIENTS: [&str; 1] = ["rcpt@sink.test"];
const MESSAGES: usize = 100;
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(180);
/// A few of qmgr's 1 s scan intervals (the test config), with margin.
const QUARANTINE_TIMEOUT: Duration = Duration::from_secs(30);

/// A realistic envelope, as cleanup would write it.
fn real_envelope() -> Envelope {
    Envelope {
        id: QueueId::generate(),
        sender: SENDER.to_owned(),
        recipients: vec![Recipient::new(RECIPIENTS[0])],
        arrival: 1_763_287_845,
        attempts: 1,
        next_retry: Some(0),
        last_error: None,
        client: Default::default(),
        dsn: Default::default(),
        metadata: Default::default(),
        content_size: 1234,
        smtputf8: false,
        delay_warned: false,
        options: Default::default(),
    }
}

/// Kinds of damage, each under a fresh queue ID.
fn damaged_files() -> Vec<(QueueId, Vec<u8>, &'static str)> {
    let random: Vec<u8> = (0..300u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let truncated = {
        let envelope = real_envelope();
        let bytes = queue::encode(&envelope);
        (
            envelope.id,
            bytes[..bytes.len() * 2 / 3].to_vec(),
            "truncated envelope",
        )
    };
    let flipped = {
        let envelope = real_envelope();
        let mut bytes = queue::encode(&envelope);
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x40;
        (envelope.id, bytes, "envelope with a flipped bit")
    };
    vec![
        (QueueId::generate(), random, "random bytes"),
        truncated,
        flipped,
        (QueueId::generate(), Vec::new(), "empty file"),
    ]
}

/// Where a queue file named `name` lives in `state`: its hashed
/// subdirectory for a queue ID, the state's directory for anything else.
fn place(empath: &Empath, state: QueueState, name: &str) -> PathBuf {
    match name.parse::<QueueId>() {
        Ok(id) => Queue::new(empath.spool()).envelope_path(state, id),
        Err(_) => empath.spool().join(state.dir_name()).join(name),
    }
}

/// Puts a file into a queue dir the way a real writer would: whole, by a
/// rename from elsewhere on the same filesystem.
fn plant(empath: &Empath, state: QueueState, name: &str, bytes: &[u8]) -> PathBuf {
    let staging = empath.dir().join(format!("staging-{name}"));
    std::fs::write(&staging, bytes).expect("write staging file");
    let target = place(empath, state, name);
    if let Some(bucket) = target.parent() {
        std::fs::create_dir_all(bucket).expect("queue subdirectory");
    }
    std::fs::rename(&staging, &target).expect("rename into the queue");
    target
}

fn wait_quarantined(empath: &Empath, names: &[String]) {
    empath.wait_until(
        "damaged files to reach corrupt/",
        QUARANTINE_TIMEOUT,
        || {
            let missing: Vec<&String> = names
                .iter()
                .filter(|n| !place(empath, QueueState::Corrupt, n).exists())
                .collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!("not in corrupt/ yet: {missing:?}"))
            }
        },
    );
}

fn assert_logged(empath: &Empath, names: &[String]) {
    let log = empath.log();
    for name in names {
        let line = log
            .lines()
            .find(|l| l.contains(name.as_str()) && l.contains("corrupt"));
        assert!(
            line.is_some(),
            "no log line names {name} and corrupt/\n{}",
            empath.log_tail()
        );
        println!("logged: {}", line.unwrap_or_default());
    }
}

fn start() -> (
    Sink,
    Empath,
    Vec<TestMessage>,
    std::thread::JoinHandle<empath_tests::SendReport>,
) {
    let sink = Sink::start();
    let empath = Empath::start(TestConfig::new().mx_override("sink.test", sink.addr()));
    let messages = mail::generate(MESSAGES, SENDER, &RECIPIENTS);
    let outbox = mail::write_eml_files(&empath.dir().join("outbox"), &messages);
    let client = SmtpSend::new(empath.smtp_addr(), SENDER, &RECIPIENTS, &outbox).threads(2);
    let sending = std::thread::spawn(move || client.run());
    (sink, empath, messages, sending)
}

/// The good mail all arrives exactly once; only the damaged files remain.
fn finish(
    sink: &Sink,
    empath: &Empath,
    messages: &[TestMessage],
    sending: std::thread::JoinHandle<empath_tests::SendReport>,
    damaged: usize,
) {
    let report = sending.join().expect("client thread");
    report.assert_all_accepted(MESSAGES, || empath.log_tail());
    empath.wait_until("the good mail to be delivered", DELIVERY_TIMEOUT, || {
        let queue = empath.queue_counts();
        let done = sink.inspect(|arrived| Deliveries::new(arrived).distinct_recipients());
        if done >= MESSAGES && queue.incoming + queue.active + queue.deferred == 0 {
            Ok(())
        } else {
            Err(format!("{done} delivered, queue {queue:?}"))
        }
    });
    sink.inspect(|arrived| {
        Deliveries::new(arrived)
            .check_recipients(messages, &RECIPIENTS, Times::ExactlyOnce)
            .unwrap_or_else(|e| panic!("{e}\n{}", empath.log_tail()));
    });
    assert_eq!(
        empath.queue_counts().corrupt,
        damaged,
        "only the damaged files are in corrupt/"
    );
}

fn wait_mail_flowing(sink: &Sink, empath: &Empath) {
    empath.wait_until("mail to flow", DELIVERY_TIMEOUT, || {
        (sink.message_count() >= 10)
            .then_some(())
            .ok_or("waiting".to_owned())
    });
}

/// Plants every kind of damaged file in `state` and returns their names.
fn plant_damaged(empath: &Empath, state: QueueState) -> Vec<String> {
    damaged_files()
        .into_iter()
        .map(|(id, bytes, what)| {
            plant(empath, state, &id.to_string(), &bytes);
            println!("planted {what} as {}/{id}", state.dir_name());
            id.to_string()
        })
        .collect()
}

#[test]
fn damaged_files_in_incoming_go_to_corrupt_while_mail_flows() {
    let (sink, empath, messages, sending) = start();
    wait_mail_flowing(&sink, &empath);

    let mut names = plant_damaged(&empath, QueueState::Incoming);
    // A file whose name is not a queue ID at all.
    plant(&empath, QueueState::Incoming, "not-a-queue-id", b"junk");
    names.push("not-a-queue-id".to_owned());

    wait_quarantined(&empath, &names);
    assert_logged(&empath, &names);
    finish(&sink, &empath, &messages, sending, names.len());
}

/// Damaged files in `deferred/` are found when qmgr (re)starts: it rebuilds
/// its deferred index from the directory then.
#[test]
fn damaged_files_in_deferred_go_to_corrupt_when_qmgr_restarts() {
    let (sink, empath, messages, sending) = start();
    let names = plant_damaged(&empath, QueueState::Deferred);
    let killed = empath.kill9_child(QMGR);
    empath.wait_restarted(QMGR, &killed, Duration::from_secs(30));

    wait_quarantined(&empath, &names);
    assert_logged(&empath, &names);
    finish(&sink, &empath, &messages, sending, names.len());
}

/// Directory scans are the source of truth (ARCHITECTURE.md), so a file
/// that appears in `deferred/` while qmgr runs must be looked at too.
#[test]
fn damaged_files_in_deferred_go_to_corrupt_while_mail_flows() {
    let (sink, empath, messages, sending) = start();
    wait_mail_flowing(&sink, &empath);
    let names = plant_damaged(&empath, QueueState::Deferred);
    wait_quarantined(&empath, &names);
    assert_logged(&empath, &names);
    finish(&sink, &empath, &messages, sending, names.len());
}
