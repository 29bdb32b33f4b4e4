//! The mail path end to end: smtplib -> empath (smtpd, cleanup, qmgr,
//! smtp-out) -> the test sink, with the real binaries.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::path::PathBuf;
use std::time::Duration;

use empath_tests::mail::{self, TestMessage};
use empath_tests::{
    DAEMONS, Deliveries, Empath, QMGR, Reply, SMTP_OUT, SendReport, Sink, SinkPolicy, SmtpSend,
    TestConfig, Times,
};

const SENDER: &str = "sender@client.test";
const RECIPIENTS: [&str; 3] = ["alice@sink.test", "bob@sink.test", "carol@sink.test"];
const SINK_DOMAIN: &str = "sink.test";
/// Generous: debug binaries on a small, busy CI machine.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(240);
const QUEUE_EMPTY_TIMEOUT: Duration = Duration::from_secs(60);
const RESTART_TIMEOUT: Duration = Duration::from_secs(30);

fn start_empath(sink: &Sink) -> Empath {
    Empath::start(TestConfig::new().mx_override(SINK_DOMAIN, sink.addr()))
}

/// Writes `messages` as .eml files into the test's dir.
fn write_outbox(empath: &Empath, messages: &[TestMessage]) -> PathBuf {
    mail::write_eml_files(&empath.dir().join("outbox"), messages)
}

fn client(empath: &Empath, outbox: &std::path::Path, to: &[&str], threads: usize) -> SmtpSend {
    SmtpSend::new(empath.smtp_addr(), SENDER, to, outbox).threads(threads)
}

/// Sends `messages` to every address in `to` and checks that Empath
/// accepted them all.
fn send_all(empath: &Empath, messages: &[TestMessage], to: &[&str], threads: usize) -> SendReport {
    let outbox = write_outbox(empath, messages);
    let report = client(empath, &outbox, to, threads).run();
    report.assert_all_accepted(messages.len(), || empath.log_tail());
    report
}

/// Waits until each of `messages` has reached each of `recipients` at
/// least once.
fn wait_all_delivered(empath: &Empath, sink: &Sink, messages: &[TestMessage], recipients: &[&str]) {
    let expected = messages.len() * recipients.len();
    empath.wait_until("every recipient to get every message", DELIVERY_TIMEOUT, || {
        sink.inspect(|arrived| {
            let deliveries = Deliveries::new(arrived);
            let delivered = deliveries.distinct_recipients();
            if delivered >= expected {
                Ok(())
            } else {
                Err(format!(
                    "{delivered} of {expected} (message, recipient) pairs delivered in {} transactions",
                    deliveries.transactions()
                ))
            }
        })
    });
}

/// The final checks, once the queue is empty and nothing more can arrive.
/// Returns the number of duplicate deliveries.
fn check_final_deliveries(
    empath: &Empath,
    sink: &Sink,
    messages: &[TestMessage],
    recipients: &[&str],
    times: Times,
) -> usize {
    sink.inspect(|arrived| {
        let deliveries = Deliveries::new(arrived);
        let checks = deliveries
            .check_recipients(messages, recipients, times)
            .and_then(|()| deliveries.check_content(messages, SENDER));
        if let Err(problems) = checks {
            panic!("{problems}\n{}", empath.log_tail());
        }
        deliveries.duplicates()
    })
}

#[test]
fn two_hundred_messages_arrive_once_and_intact() {
    let sink = Sink::start();
    let empath = start_empath(&sink);
    let messages = mail::generate(200, SENDER, &RECIPIENTS);

    send_all(&empath, &messages, &RECIPIENTS, 4);

    wait_all_delivered(&empath, &sink, &messages, &RECIPIENTS);
    empath.wait_queue_empty(QUEUE_EMPTY_TIMEOUT);
    // Exactly once, byte-identical after Empath's added header fields, and
    // Message-ID/Date added to the messages that lacked them.
    check_final_deliveries(&empath, &sink, &messages, &RECIPIENTS, Times::ExactlyOnce);
    println!(
        "200 messages x {} recipients delivered in {} SMTP transactions",
        RECIPIENTS.len(),
        sink.message_count()
    );
    print_added_headers(&sink, &messages[3]);
}

/// Shows what Empath put in front of `message` (for the test output).
fn print_added_headers(sink: &Sink, message: &TestMessage) {
    sink.inspect(|arrived| {
        let copy = arrived
            .iter()
            .find(|m| mail::test_id(&m.data) == Some(message.id));
        if let Some(Ok(added)) = copy.map(|c| mail::added_headers(&c.data, &message.bytes)) {
            println!(
                "header fields Empath added to message {}:\n{}",
                message.id,
                String::from_utf8_lossy(&added.raw)
            );
        }
    });
}

/// Sends one message to a sink that refuses its first two attempts, and
/// checks that it was deferred, retried and delivered once. `attempts`
/// reads the sink's count of the refused step.
fn deferred_twice_then_delivered(refusal: SinkPolicy, attempts: fn(&Sink) -> usize) {
    let sink = Sink::with_policy(refusal);
    let empath = start_empath(&sink);
    let messages = mail::generate(1, SENDER, &RECIPIENTS);

    send_all(&empath, &messages, &RECIPIENTS, 1);

    // Poll often enough to see the envelope in deferred/ while it waits
    // (at least base_retry_delay_secs = 1 s) for its next attempt.
    let mut seen_deferred = false;
    empath.wait_until("delivery after two refusals", DELIVERY_TIMEOUT, || {
        seen_deferred |= empath.queue_counts().deferred > 0;
        if sink.message_count() > 0 {
            Ok(())
        } else {
            Err(format!("{} attempts so far", attempts(&sink)))
        }
    });
    empath.wait_queue_empty(QUEUE_EMPTY_TIMEOUT);
    assert!(
        seen_deferred,
        "the message was never seen in deferred/\n{}",
        empath.log_tail()
    );
    assert_eq!(
        attempts(&sink),
        3,
        "two refused attempts and one that succeeded\n{}",
        empath.log_tail()
    );
    check_final_deliveries(&empath, &sink, &messages, &RECIPIENTS, Times::ExactlyOnce);
}

#[test]
fn temporary_failure_is_deferred_then_delivered() {
    deferred_twice_then_delivered(
        SinkPolicy::accept_all().fail_first_data(2, Reply::new(451, "4.3.0 Try again later")),
        Sink::data_commands,
    );
}

#[test]
fn temporary_failure_after_the_content_is_deferred_then_delivered() {
    deferred_twice_then_delivered(
        SinkPolicy::accept_all()
            .fail_first_end_of_data(2, Reply::new(451, "4.3.0 Try again later")),
        Sink::ends_of_data,
    );
}

/// Sends 100 messages; once some are delivered and others are in flight
/// (held open by the sink), SIGKILLs `daemon`. The master must restart it
/// and every message must still reach every recipient.
fn killing_mid_run_loses_nothing(daemon: &str) {
    const COUNT: usize = 100;
    const DELIVERED_BEFORE_KILL: usize = 10;
    let sink = Sink::with_policy(SinkPolicy::accept_all().hold_after(DELIVERED_BEFORE_KILL));
    let empath = start_empath(&sink);
    let messages = mail::generate(COUNT, SENDER, &RECIPIENTS);
    let sender = client(&empath, &write_outbox(&empath, &messages), &RECIPIENTS, 2);
    let sending = std::thread::spawn(move || sender.run());

    empath.wait_until("deliveries to be under way", DELIVERY_TIMEOUT, || {
        let (delivered, in_flight) = (sink.message_count(), sink.held());
        if delivered >= DELIVERED_BEFORE_KILL && in_flight > 0 {
            Ok(())
        } else {
            Err(format!("{delivered} delivered, {in_flight} in flight"))
        }
    });
    let killed = empath.kill9_child(daemon);
    let restarted = empath.wait_restarted(daemon, &killed, RESTART_TIMEOUT);
    println!(
        "killed {daemon} {killed:?} with {} messages delivered and {} in flight; restarted as {restarted}",
        sink.message_count(),
        sink.held()
    );
    sink.release();

    let report = sending.join().expect("client thread");
    report.assert_all_accepted(COUNT, || empath.log_tail());
    wait_all_delivered(&empath, &sink, &messages, &RECIPIENTS);
    empath.wait_queue_empty(QUEUE_EMPTY_TIMEOUT);
    let duplicates =
        check_final_deliveries(&empath, &sink, &messages, &RECIPIENTS, Times::AtLeastOnce);
    println!(
        "after kill -9 of {daemon}: {duplicates} duplicate deliveries in {} transactions",
        sink.message_count()
    );
}

#[test]
fn killing_qmgr_mid_run_loses_nothing() {
    killing_mid_run_loses_nothing(QMGR);
}

#[test]
fn killing_smtp_out_mid_run_loses_nothing() {
    killing_mid_run_loses_nothing(SMTP_OUT);
}

#[test]
fn sigterm_stops_master_and_every_daemon() {
    let sink = Sink::start();
    let mut empath = start_empath(&sink);
    for daemon in DAEMONS {
        empath.wait_child(daemon, RESTART_TIMEOUT);
    }

    let (status, survivors) = empath.stop();

    assert!(
        survivors.is_empty(),
        "daemons outlived the master: {survivors:?}\n{}",
        empath.log_tail()
    );
    assert!(
        status.success(),
        "SIGTERM is a graceful stop, but empath exited with {status}\n{}",
        empath.log_tail()
    );
}
