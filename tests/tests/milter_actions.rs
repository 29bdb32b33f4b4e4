//! Milters with the real binaries and a milter written for the tests in
//! Python (`tests/clients/test_milter.py`, speaking the protocol itself):
//! every modification action reaches the next hop byte for byte, replies
//! become SMTP replies, discard and quarantine, the timeouts, and the
//! default action when a milter is down.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::process::{Command, Stdio};
use std::time::Duration;

use empath_tests::mail_auth::{TestMilter, body, free_port, header_names, header_values, send};
use empath_tests::{Empath, Sink, TestConfig, binary, test_dir};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(60);

const MESSAGE: &[u8] = b"From: Sender <sender@client.test>\r\n\
To: alice@sink.test\r\n\
Subject: original subject\r\n\
X-Remove: this goes\r\n\
Message-ID: <milter-test@client.test>\r\n\
Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n\
\r\n\
original body\r\n";

/// Waits until the sink has `count` messages.
fn wait_delivered(sink: &Sink, count: usize, empath: &Empath) {
    if let Err(arrived) = sink.wait_for_messages(count, TIMEOUT) {
        panic!(
            "{arrived} of {count} messages arrived\n{}",
            empath.log_tail()
        );
    }
}

/// Empath relaying `sink.test` to the sink, with these `smtpd_milters`.
fn config(sink: &Sink, milters: &str) -> TestConfig {
    TestConfig::new()
        .mx_override("sink.test", sink.addr())
        .section("smtpd_milters", milters)
}

#[test]
fn every_modification_action_reaches_the_next_hop() {
    let dir = test_dir();
    let milter = TestMilter::start(
        dir.path(),
        "modify",
        &json!({
            "protocol": 1 << 7, // SMFIP_NR_HDR: no reply per header
            "macros": {"2": "i {mail_addr} {auth_authen}"},
            "eom": [
                ["addheader", "X-Added", "by the milter"],
                ["insheader", 0, "X-Top", "inserted first"],
                ["chgheader", 1, "Subject", "changed subject"],
                ["chgheader", 1, "X-Remove", ""],
                ["replbody", "replaced body\r\n"],
                ["addrcpt", "<extra@sink.test>"],
                ["addrcpt_par", "<par@sink.test>", "NOTIFY=NEVER"],
                ["delrcpt", "<gone@sink.test>"],
                ["chgfrom", "<changed@client.test>"],
            ],
        }),
    );
    let sink = Sink::start();
    let empath = Empath::start(config(&sink, &format!("[{:?}]", milter.address())));

    let session = send(
        empath.smtp_addr(),
        "client.test",
        "sender@client.test",
        &["alice@sink.test", "gone@sink.test"],
        MESSAGE,
        dir.path(),
    );
    let id = session
        .queue_id()
        .unwrap_or_else(|| panic!("not queued: {session:?}\n{}", empath.log_tail()))
        .to_owned();
    wait_delivered(&sink, 1, &empath);
    empath.wait_queue_empty(TIMEOUT);

    let delivered = sink.messages().remove(0);
    assert_eq!(delivered.mail_from, "changed@client.test");
    let mut recipients = delivered.rcpt_to.clone();
    recipients.sort();
    assert_eq!(
        recipients,
        ["alice@sink.test", "extra@sink.test", "par@sink.test"]
    );
    // Byte for byte after our own Received: the inserted field on top of
    // the client's, the changed one in place, the deleted one gone, the
    // added one at the end, and the new body.
    let text = String::from_utf8_lossy(&delivered.data).into_owned();
    let client_part = text
        .split_once("X-Top:")
        .map(|(_, rest)| format!("X-Top:{rest}"))
        .unwrap_or_else(|| panic!("no X-Top field:\n{text}"));
    assert_eq!(
        client_part,
        "X-Top: inserted first\r\n\
From: Sender <sender@client.test>\r\n\
To: alice@sink.test\r\n\
Subject: changed subject\r\n\
Message-ID: <milter-test@client.test>\r\n\
Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n\
X-Added: by the milter\r\n\
\r\n\
replaced body\r\n"
    );
    assert_eq!(header_names(&delivered.data)[0], "Received", "{text}");

    // What the milter was told: the client, the envelope, the queue ID
    // in `i` from MAIL on, and the macros it asked for.
    let connect = milter.event("connect").expect("a connect event");
    assert_eq!(connect["address"], "127.0.0.1");
    assert_eq!(connect["hostname"], "[127.0.0.1]");
    assert_eq!(connect["family"], "4");
    assert_eq!(connect["macros"]["j"], "mx.empath.test");
    assert_eq!(connect["macros"]["{client_addr}"], "127.0.0.1");
    let helo = milter.event("helo").expect("a helo event");
    assert_eq!(helo["name"], "client.test");
    let mail = milter.event("mail").expect("a mail event");
    assert_eq!(mail["args"][0], "<sender@client.test>");
    assert_eq!(mail["macros"]["i"], id.as_str());
    assert_eq!(mail["macros"]["{mail_addr}"], "sender@client.test");
    let rcpts: Vec<String> = milter
        .events()
        .iter()
        .filter(|e| e["event"] == "rcpt")
        .map(|e| e["args"][0].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(rcpts, ["<alice@sink.test>", "<gone@sink.test>"]);
    let headers: Vec<(String, String)> = milter
        .events()
        .iter()
        .filter(|e| e["event"] == "header")
        .map(|e| {
            (
                e["name"].as_str().unwrap_or_default().to_owned(),
                e["value"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(headers[2], ("Subject".into(), "original subject".into()));
    assert_eq!(headers.len(), 6, "{headers:?}");
    let body_events: Vec<String> = milter
        .events()
        .iter()
        .filter(|e| e["event"] == "body")
        .map(|e| e["text"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(body_events, ["original body\r\n"]);
    let names = milter.event_names();
    let tail: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .skip_while(|e| *e != "data")
        .collect();
    assert_eq!(
        tail.iter()
            .filter(|e| **e != "header")
            .copied()
            .collect::<Vec<_>>(),
        ["data", "eoh", "body", "eom", "quit"],
        "{names:?}"
    );
}

#[test]
fn milter_replies_refuse_recipients_and_messages_with_their_text() {
    let dir = test_dir();
    let milter = TestMilter::start(
        dir.path(),
        "reject",
        &json!({
            "replies": {"rcpt:<bad@sink.test>": ["reply", "550 5.1.1 No such user here"]},
            "eom_reply": ["reply", "554-5.7.1 Rejected by the test milter\r\n554 5.7.1 Second line, 100%% sure"],
        }),
    );
    let sink = Sink::start();
    let empath = Empath::start(config(&sink, &format!("[{:?}]", milter.address())));
    let session = send(
        empath.smtp_addr(),
        "client.test",
        "sender@client.test",
        &["bad@sink.test", "alice@sink.test"],
        MESSAGE,
        dir.path(),
    );
    assert_eq!(
        session.rcpts,
        ["550 5.1.1 No such user here", "250 2.1.5 Ok"],
        "{session:?}"
    );
    assert_eq!(
        session.data.as_deref(),
        Some("554 5.7.1 Rejected by the test milter\n5.7.1 Second line, 100% sure"),
        "{session:?}\n{}",
        empath.log_tail()
    );
    assert!(
        empath.queue_counts().is_empty(),
        "{:?}",
        empath.queue_counts()
    );

    let milter = TestMilter::start(
        dir.path(),
        "tempfail",
        &json!({"replies": {"mail": "tempfail"}}),
    );
    let empath = Empath::start(config(&sink, &format!("[{:?}]", milter.address())));
    let session = send(
        empath.smtp_addr(),
        "client.test",
        "sender@client.test",
        &["alice@sink.test"],
        MESSAGE,
        dir.path(),
    );
    assert_eq!(
        session.mail.as_deref(),
        Some("451 4.7.1 Service unavailable - try again later"),
        "{session:?}"
    );
    assert!(session.rcpts.is_empty());
    assert_eq!(sink.message_count(), 0);
}

#[test]
fn discarded_mail_is_answered_but_dropped_and_quarantined_mail_is_held() {
    let dir = test_dir();
    let discarding = TestMilter::start(dir.path(), "discard", &json!({"eom_reply": "discard"}));
    let quarantining = TestMilter::start(
        dir.path(),
        "quarantine",
        &json!({"eom": [["quarantine", "held by the test milter"]]}),
    );
    let sink = Sink::start();
    let empath = Empath::start(config(&sink, &format!("[{:?}]", discarding.address())));
    let session = send(
        empath.smtp_addr(),
        "client.test",
        "sender@client.test",
        &["alice@sink.test"],
        MESSAGE,
        dir.path(),
    );
    assert!(session.queue_id().is_some(), "{session:?}");
    assert!(
        empath.queue_counts().is_empty(),
        "{:?}",
        empath.queue_counts()
    );

    let empath = Empath::start(config(&sink, &format!("[{:?}]", quarantining.address())));
    let session = send(
        empath.smtp_addr(),
        "client.test",
        "sender@client.test",
        &["alice@sink.test"],
        MESSAGE,
        dir.path(),
    );
    let id = session
        .queue_id()
        .unwrap_or_else(|| panic!("{session:?}\n{}", empath.log_tail()))
        .to_owned();
    let counts = empath.queue_counts();
    assert_eq!((counts.hold, counts.incoming), (1, 0), "{counts:?}");
    let view = empath.empathctl_ok(&["--json", "queue", "view", &id]);
    assert!(view.contains("held by the test milter"), "{view}");
    // Held: not delivered, until an operator releases it.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(sink.message_count(), 0);
    empath.empathctl_ok(&["queue", "retry", "--force", &id]);
    wait_delivered(&sink, 1, &empath);
    empath.wait_queue_empty(TIMEOUT);
}

#[test]
fn a_milter_that_is_too_slow_or_down_gets_its_default_action() {
    let dir = test_dir();
    let sink = Sink::start();
    let dead = format!("inet:127.0.0.1:{}", free_port());
    let with = |action: &str, address: &str, timeout: u64| {
        format!(
            "[(address: {address:?}, default_action: {action:?}, content_timeout_secs: {timeout}, connect_timeout_secs: 2)]"
        )
    };

    // Down, tempfail: the session starts, and each command is refused
    // with 451, as Postfix does.
    let empath = Empath::start(config(&sink, &with("tempfail", &dead, 30)));
    let session = send(
        empath.smtp_addr(),
        "client.test",
        "sender@client.test",
        &["alice@sink.test"],
        MESSAGE,
        dir.path(),
    );
    assert_eq!(
        session.greeting.as_deref().map(|g| &g[..4]),
        Some("220 "),
        "{session:?}"
    );
    assert_eq!(
        session.ehlo.as_deref(),
        Some("451 4.7.1 Service unavailable - try again later"),
        "{session:?}"
    );
    drop(empath);

    // Down, reject: the connection is refused at the greeting.
    let empath = Empath::start(config(&sink, &with("reject", &dead, 30)));
    let session = send(
        empath.smtp_addr(),
        "client.test",
        "sender@client.test",
        &["alice@sink.test"],
        MESSAGE,
        dir.path(),
    );
    assert_eq!(
        session.greeting.as_deref(),
        Some("554 5.5.0 Service unavailable"),
        "{session:?}"
    );
    drop(empath);

    // Down, accept: mail flows as if there were no milter.
    let empath = Empath::start(config(&sink, &with("accept", &dead, 30)));
    let session = send(
        empath.smtp_addr(),
        "client.test",
        "sender@client.test",
        &["alice@sink.test"],
        MESSAGE,
        dir.path(),
    );
    assert!(session.queue_id().is_some(), "{session:?}");
    wait_delivered(&sink, 1, &empath);
    drop(empath);

    // Silent for 4 s at the end of the message, with a content timeout of
    // 1 s: tempfail, nothing queued.
    let slow = TestMilter::start(dir.path(), "slow", &json!({"eom_sleep": 4}));
    let empath = Empath::start(config(&sink, &with("tempfail", &slow.address(), 1)));
    let started = std::time::Instant::now();
    let session = send(
        empath.smtp_addr(),
        "client.test",
        "sender@client.test",
        &["alice@sink.test"],
        MESSAGE,
        dir.path(),
    );
    assert_eq!(
        session.data.as_deref(),
        Some("451 4.7.1 Service unavailable - try again later"),
        "{session:?}\n{}",
        empath.log_tail()
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert!(
        empath.queue_counts().is_empty(),
        "{:?}",
        empath.queue_counts()
    );
    drop(empath);

    // Busy as long, but saying "progress" every half second: accepted.
    let busy = TestMilter::start(
        dir.path(),
        "busy",
        &json!({"eom_sleep": 3, "eom_progress": 0.5, "eom": [["addheader", "X-Busy", "done"]]}),
    );
    let empath = Empath::start(config(&sink, &with("tempfail", &busy.address(), 1)));
    let session = send(
        empath.smtp_addr(),
        "client.test",
        "sender@client.test",
        &["alice@sink.test"],
        MESSAGE,
        dir.path(),
    );
    assert!(
        session.queue_id().is_some(),
        "{session:?}\n{}",
        empath.log_tail()
    );
    wait_delivered(&sink, 2, &empath);
    let last = sink.messages().pop().expect("a message");
    assert_eq!(header_values(&last.data, "X-Busy"), [" done"]);
}

#[test]
fn non_smtpd_milters_filter_sendmail_mail() {
    let dir = test_dir();
    let milter = TestMilter::start(
        dir.path(),
        "local",
        &json!({"eom": [["addheader", "X-Local-Milter", "checked"], ["replbody", "body from the milter\r\n"]]}),
    );
    let sink = Sink::start();
    let empath = Empath::start(
        TestConfig::new()
            .mx_override("sink.test", sink.addr())
            .section("non_smtpd_milters", &format!("[{:?}]", milter.address())),
    );
    let mut command = Command::new(binary("sendmail"));
    command
        .arg("-C")
        .arg(empath.config_path())
        .args(["-f", "local-user@client.test", "alice@sink.test"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("run sendmail");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(b"Subject: local\n\nfrom sendmail\n")
            .expect("write the message");
    }
    let output = child.wait_with_output().expect("sendmail");
    assert!(
        output.status.success(),
        "sendmail: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    wait_delivered(&sink, 1, &empath);
    let delivered = sink.messages().remove(0);
    assert_eq!(
        header_values(&delivered.data, "X-Local-Milter"),
        [" checked"]
    );
    assert_eq!(body(&delivered.data), b"body from the milter\r\n");
    let connect = milter.event("connect").expect("a connect event");
    assert_eq!(connect["hostname"], "localhost");
    assert_eq!(connect["address"], "127.0.0.1");
    let mail = milter.event("mail").expect("a mail event");
    assert_eq!(mail["args"][0], "<local-user@client.test>");
}
