//! The test sink and the Python client, checked against each other with no
//! Empath in between: if these fail, the system tests cannot be trusted.

use std::time::Duration;

use empath_tests::mail::{self, TestMessage};
use empath_tests::{Reply, SendReport, Sink, SinkPolicy, SmtpSend, test_dir};

const SENDER: &str = "sender@client.test";
const RECIPIENTS: [&str; 2] = ["alice@sink.test", "bob@sink.test"];
const WAIT: Duration = Duration::from_secs(30);

/// Sends `messages` straight to the sink with smtplib.
fn send_to_sink(sink: &Sink, messages: &[TestMessage], to: &[&str], threads: usize) -> SendReport {
    let dir = test_dir();
    mail::write_eml_files(dir.path(), messages);
    SmtpSend::new(sink.addr(), SENDER, to, dir.path())
        .threads(threads)
        .timeout(Duration::from_secs(60))
        .run()
}

#[test]
fn sink_accepts_smtplib() {
    let sink = Sink::start();
    let messages = mail::generate(20, SENDER, &RECIPIENTS);

    let report = send_to_sink(&sink, &messages, &RECIPIENTS, 2);

    report.assert_all_accepted(messages.len(), String::new);
    assert!(report.results.iter().all(|r| r.code == Some(250)));
    let received = sink.messages();
    assert_eq!(received.len(), messages.len());
    for message in &messages {
        let copy = received
            .iter()
            .find(|m| mail::test_id(&m.data) == Some(message.id))
            .unwrap_or_else(|| panic!("message {} did not arrive", message.id));
        assert_eq!(copy.mail_from, SENDER);
        assert_eq!(copy.rcpt_to, RECIPIENTS);
        assert_eq!(copy.helo, "client.test");
        // No MTA in between: the bytes must come through untouched, which
        // proves smtplib's dot-stuffing and the sink's unstuffing agree.
        assert!(
            copy.data == message.bytes,
            "message {} changed in transit: {}",
            message.id,
            mail::added_headers(&copy.data, &message.bytes)
                .err()
                .unwrap_or_default()
        );
    }
    // Two threads, one reused connection each.
    assert_eq!(sink.connections(), 2);
}

#[test]
fn sink_fails_the_first_data_commands_as_told() {
    let sink = Sink::with_policy(
        SinkPolicy::accept_all().fail_first_data(1, Reply::new(451, "4.3.0 Try again later")),
    );
    let messages = mail::generate(3, SENDER, &RECIPIENTS);

    let report = send_to_sink(&sink, &messages, &RECIPIENTS, 1);

    assert!(
        !report.status.success(),
        "a refused message must fail the client"
    );
    let codes: Vec<Option<u16>> = report.results.iter().map(|r| r.code).collect();
    assert_eq!(codes, [Some(451), Some(250), Some(250)]);
    assert!(report.results[0].reply.contains("4.3.0"));
    assert_eq!(sink.data_commands(), 3);
    assert_eq!(sink.ends_of_data(), 2);
    assert_eq!(sink.message_count(), 2);
}

#[test]
fn sink_refuses_after_the_content_as_told() {
    let sink = Sink::with_policy(
        SinkPolicy::accept_all().fail_first_end_of_data(2, Reply::new(452, "4.3.1 Full")),
    );
    let messages = mail::generate(3, SENDER, &RECIPIENTS);

    let report = send_to_sink(&sink, &messages, &RECIPIENTS, 1);

    let codes: Vec<Option<u16>> = report.results.iter().map(|r| r.code).collect();
    assert_eq!(codes, [Some(452), Some(452), Some(250)]);
    assert_eq!(sink.ends_of_data(), 3);
    let received = sink.messages();
    assert_eq!(received.len(), 1);
    assert_eq!(mail::test_id(&received[0].data), Some(2));
}

#[test]
fn sink_refuses_recipients_as_told() {
    let sink = Sink::with_policy(
        SinkPolicy::accept_all()
            .reply_to_rcpt("Bob@sink.test", Reply::new(550, "5.1.1 No such user")),
    );
    let messages = mail::generate(1, SENDER, &RECIPIENTS);

    let report = send_to_sink(&sink, &messages, &RECIPIENTS, 1);

    // smtplib sends to the accepted recipient and reports the refused one.
    assert!(!report.status.success());
    assert_eq!(report.results[0].code, Some(550));
    assert!(
        report.results[0].reply.contains("bob@sink.test"),
        "{:?}",
        report.results
    );
    let received = sink.wait_for_messages(1, WAIT).expect("one message");
    assert_eq!(received[0].rcpt_to, ["alice@sink.test"]);

    // When every recipient is refused, nothing is sent.
    let report = send_to_sink(&sink, &messages, &["bob@sink.test"], 1);
    assert_eq!(report.results[0].code, Some(550));
    assert!(report.results[0].reply.contains("all recipients refused"));
    assert_eq!(sink.message_count(), 1);
}

#[test]
fn sink_holds_transactions_until_released() {
    let sink = Sink::with_policy(SinkPolicy::accept_all().hold_after(1));
    let messages = mail::generate(3, SENDER, &RECIPIENTS);
    let dir = test_dir();
    mail::write_eml_files(dir.path(), &messages);
    let client = SmtpSend::new(sink.addr(), SENDER, &RECIPIENTS, dir.path());

    let sending = std::thread::spawn(move || client.run());

    assert!(
        sink.wait_for_held(1, WAIT),
        "the second message was not held"
    );
    assert_eq!(sink.message_count(), 1);
    sink.release();
    let report = sending.join().expect("client thread");
    report.assert_all_accepted(3, String::new);
    assert_eq!(sink.held(), 0);
    assert_eq!(sink.message_count(), 3);
}

#[test]
fn client_reports_an_unreachable_server() {
    // A port that was just free: nothing listens there.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("free port");
    let dir = test_dir();
    mail::write_eml_files(dir.path(), &mail::generate(2, SENDER, &RECIPIENTS));

    let report = SmtpSend::new(addr, SENDER, &RECIPIENTS, dir.path()).run();

    assert!(!report.status.success());
    assert_eq!(report.results.len(), 2, "{}", report.stderr);
    assert!(report.results.iter().all(|r| !r.ok && r.code.is_none()));
    assert!(
        report.results[0].reply.contains("Connection"),
        "{:?}",
        report.results
    );
}
