//! SIGTERM is a graceful stop: during a 500-message load the master stops
//! accepting, lets what is in flight finish, stops its daemons and exits;
//! after a restart on the same spool every message that got a 250 is
//! delivered. Duplicates (a delivery cut short after the remote server
//! took it) are counted and printed, not forbidden.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::collections::BTreeSet;
use std::time::Duration;

use empath_tests::deliveries::Deliveries;
use empath_tests::mail;
use empath_tests::{Empath, Sink, SmtpSend, TestConfig};

const SENDER: &str = "sender@client.test";
const RECIPIENT: &str = "user@sink.test";
const MESSAGES: usize = 500;
/// SIGTERM once about this many messages were accepted (queued or
/// delivered): the load is under way, with mail in every stage.
const SIGTERM_AFTER: usize = 150;
const TIMEOUT: Duration = Duration::from_secs(240);

#[test]
fn sigterm_during_a_500_message_load_loses_nothing() {
    let sink = Sink::start();
    let mut empath = Empath::start(TestConfig::new().mx_override("sink.test", sink.addr()));
    let messages = mail::generate(MESSAGES, SENDER, &[RECIPIENT]);
    let outbox = mail::write_eml_files(&empath.dir().join("outbox"), &messages);
    let client = SmtpSend::new(empath.smtp_addr(), SENDER, &[RECIPIENT], &outbox)
        .threads(4)
        .timeout(TIMEOUT);
    let sending = std::thread::spawn(move || client.run());

    empath.wait_until("the load to be under way", TIMEOUT, || {
        let accepted = empath.queue_counts().data + sink.message_count();
        if accepted >= SIGTERM_AFTER {
            Ok(())
        } else {
            Err(format!("about {accepted} messages accepted"))
        }
    });
    let (status, survivors) = empath.stop();
    assert!(
        status.success(),
        "the master exited with {status}\n{}",
        empath.log_tail()
    );
    assert!(
        survivors.is_empty(),
        "daemons outlived the master: {survivors:?}"
    );
    assert!(
        empath.log().contains("stopping: no new mail"),
        "no graceful stop in the log\n{}",
        empath.log_tail()
    );

    let report = sending.join().expect("the client thread");
    let accepted: BTreeSet<String> = report
        .results
        .iter()
        .filter(|r| r.ok)
        .map(|r| r.file.clone())
        .collect();
    let accepted_ids: BTreeSet<usize> = messages
        .iter()
        .filter(|m| accepted.contains(&m.file_name()))
        .map(|m| m.id)
        .collect();
    println!(
        "accepted {} of {MESSAGES} before the stop; {} delivered before the stop",
        accepted_ids.len(),
        sink.message_count()
    );
    assert!(accepted_ids.len() >= SIGTERM_AFTER / 2, "{accepted_ids:?}");
    assert!(
        accepted_ids.len() < MESSAGES,
        "every message was accepted before the SIGTERM took effect: the test did not stop a load"
    );

    empath.restart_master();
    empath.wait_until("every accepted message to be delivered", TIMEOUT, || {
        sink.inspect(|arrived| {
            let delivered: BTreeSet<usize> = arrived
                .iter()
                .filter_map(|m| mail::test_id(&m.data))
                .collect();
            let missing: Vec<&usize> = accepted_ids.difference(&delivered).collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "{} accepted messages not delivered, e.g. {:?}",
                    missing.len(),
                    &missing[..missing.len().min(10)]
                ))
            }
        })
    });
    empath.wait_queue_empty(Duration::from_secs(60));
    let duplicates = sink.inspect(|arrived| Deliveries::new(arrived).duplicates());
    println!("duplicate deliveries across the SIGTERM: {duplicates}");
    // A client told "no" will send the message again: nothing it was
    // refused may have been queued anyway (cleanup finishes its
    // submissions, and answers them, before it stops).
    let refused: BTreeSet<usize> = messages
        .iter()
        .filter(|m| {
            report
                .results
                .iter()
                .any(|r| !r.ok && r.file == m.file_name())
        })
        .map(|m| m.id)
        .collect();
    let delivered_anyway: Vec<usize> = sink.inspect(|arrived| {
        arrived
            .iter()
            .filter_map(|m| mail::test_id(&m.data))
            .filter(|id| refused.contains(id))
            .collect()
    });
    assert!(
        delivered_anyway.is_empty(),
        "refused but delivered (the client will send them twice): {delivered_anyway:?}"
    );
}

/// An idle session does not hold up a stop: it hears 421 at once, and the
/// master is gone well within its deadline.
#[test]
fn sigterm_with_an_idle_session_ends_it_at_once() {
    let sink = Sink::start();
    let mut empath = Empath::start(
        TestConfig::new()
            .mx_override("sink.test", sink.addr())
            .section("shutdown_timeout_secs", "10"),
    );
    let mut idle =
        empath_tests::smtpd::RawSmtp::connect(empath.smtp_addr(), TIMEOUT).expect("connect");
    assert!(idle.reply().expect("greeting").starts_with("220"));
    idle.send(b"EHLO idle.test\r\n").expect("EHLO");
    assert!(idle.reply().expect("EHLO reply").starts_with("250"));
    let started = std::time::Instant::now();
    let (status, survivors) = empath.stop();
    let took = started.elapsed();
    assert!(
        status.success() && survivors.is_empty(),
        "{status} {survivors:?}"
    );
    assert!(
        took < Duration::from_secs(5),
        "the stop took {took:?} with an idle session (deadline 10 s)\n{}",
        empath.log_tail()
    );
    let farewell = idle.reply().expect("a reply before the close");
    assert!(farewell.starts_with("421"), "{farewell}");
}
