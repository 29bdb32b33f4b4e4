//! Nothing unsafe crosses the border: what a hostile client sends never
//! reaches the next hop as smuggled mail, routed mail, overlong lines or
//! a loop, and never forges or colours a log line. Each test checks what
//! the next hop (a byte-exact sink) received, not only what we answered.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use empath_tests::run::run_with_stdin;
use empath_tests::smtpd::{RawSmtp, bcrypt_hash};
use empath_tests::syslog::SyslogSocket;
use empath_tests::wire::check_data_stream;
use empath_tests::{Empath, Sink, SinkMessage, TestConfig, binary};

const TIMEOUT: Duration = Duration::from_secs(20);
const DELIVERY: Duration = Duration::from_secs(60);

fn start(sink: &Sink, extra: impl FnOnce(TestConfig) -> TestConfig) -> Empath {
    Empath::start(extra(
        TestConfig::new().mx_override("sink.test", sink.addr()),
    ))
}

/// A raw session, greeted and past EHLO.
fn session(empath: &Empath) -> RawSmtp {
    let mut smtp = RawSmtp::connect(empath.smtp_addr(), TIMEOUT).expect("connect");
    assert!(smtp.reply().expect("greeting").starts_with("220"));
    command(&mut smtp, "EHLO client.test");
    smtp
}

fn command(smtp: &mut RawSmtp, line: &str) -> String {
    smtp.send(format!("{line}\r\n").as_bytes()).expect("send");
    smtp.reply().expect("reply")
}

fn expect(reply: &str, code: &str, what: &str) {
    assert!(reply.starts_with(code), "{what}: {reply}");
}

/// Waits until the sink holds `count` messages and returns them.
fn wait_for(sink: &Sink, count: usize, empath: &Empath) -> Vec<SinkMessage> {
    empath.wait_until("the sink to receive the mail", DELIVERY, || {
        let arrived = sink.messages();
        if arrived.len() >= count {
            Ok(arrived)
        } else {
            Err(format!("{} of {count} messages", arrived.len()))
        }
    })
}

/// Every smuggling sequence we know, each followed by a forged second
/// transaction that a lenient next hop would run.
const SMUGGLING_ENDS: [&[u8]; 7] = [
    b"\r.\r",
    b"\r.\r\n",
    b"\n.\n",
    b"\n.\r\n",
    b"\r\n.\n",
    b"\r\n.\r",
    b"\r\n.\r\r\n",
];

fn smuggling_content() -> Vec<u8> {
    let mut content = b"From: a@client.test\r\nSubject: smuggling\r\n\r\nfirst line".to_vec();
    for end in SMUGGLING_ENDS {
        content.extend_from_slice(end);
        content.extend_from_slice(
            b"MAIL FROM:<forged@evil.test>\r\nRCPT TO:<victim@sink.test>\r\nDATA\r\nSubject: forged\r\n\r\nsmuggled",
        );
    }
    content.extend_from_slice(b"\r\nlast line\r\n");
    content
}

/// The one delivered message: from the real sender, with nothing
/// smuggled past the next hop and valid RFC 5321 content on the wire.
fn check_one_clean_delivery(sink: &Sink, empath: &Empath) {
    wait_for(sink, 1, empath);
    empath.wait_queue_empty(DELIVERY);
    let arrived = sink.messages();
    assert_eq!(
        arrived.len(),
        1,
        "the next hop saw more than one transaction"
    );
    let message = &arrived[0];
    assert_eq!(message.mail_from, "a@client.test");
    assert_eq!(message.rcpt_to, vec!["rcpt@sink.test".to_owned()]);
    check_data_stream(&message.raw)
        .unwrap_or_else(|problem| panic!("{problem}\n{:?}", String::from_utf8_lossy(&message.raw)));
    let text = String::from_utf8_lossy(&message.data);
    assert!(
        text.contains("first line") && text.contains("last line"),
        "{text}"
    );
    assert!(text.contains("smuggled"), "content was dropped: {text}");
}

#[test]
fn smuggling_sequences_in_data_never_reach_the_next_hop() {
    let sink = Sink::start();
    let empath = start(&sink, |c| c);
    let mut smtp = session(&empath);
    expect(
        &command(&mut smtp, "MAIL FROM:<a@client.test>"),
        "250",
        "MAIL",
    );
    expect(
        &command(&mut smtp, "RCPT TO:<rcpt@sink.test>"),
        "250",
        "RCPT",
    );
    expect(&command(&mut smtp, "DATA"), "354", "DATA");
    smtp.send(&smuggling_content()).expect("content");
    smtp.send(b".\r\n").expect("end");
    expect(&smtp.reply().expect("reply"), "250", "end of data");
    command(&mut smtp, "QUIT");
    check_one_clean_delivery(&sink, &empath);
}

#[test]
fn smuggling_sequences_in_bdat_never_reach_the_next_hop() {
    let sink = Sink::start();
    let empath = start(&sink, |c| c);
    let mut smtp = session(&empath);
    expect(
        &command(&mut smtp, "MAIL FROM:<a@client.test>"),
        "250",
        "MAIL",
    );
    expect(
        &command(&mut smtp, "RCPT TO:<rcpt@sink.test>"),
        "250",
        "RCPT",
    );
    let content = smuggling_content();
    // Cut inside the sequences, to try every chunk boundary trick.
    let (first, second) = content.split_at(content.len() / 3);
    smtp.send(format!("BDAT {}\r\n", first.len()).as_bytes())
        .expect("BDAT");
    smtp.send(first).expect("chunk");
    expect(&smtp.reply().expect("reply"), "250", "first chunk");
    smtp.send(format!("BDAT {} LAST\r\n", second.len()).as_bytes())
        .expect("BDAT");
    smtp.send(second).expect("chunk");
    expect(&smtp.reply().expect("reply"), "250", "last chunk");
    command(&mut smtp, "QUIT");
    check_one_clean_delivery(&sink, &empath);
}

#[test]
fn bare_line_endings_can_be_refused() {
    let sink = Sink::start();
    let empath = start(&sink, |c| {
        c.section("smtpd", r#"(bare_line_endings: "reject")"#)
    });
    let mut smtp = session(&empath);
    for (content, use_bdat) in [
        (&b"Subject: x\r\n\r\nbare\nLF\r\n"[..], false),
        (b"Subject: x\r\n\r\nbare\rCR\r\n", false),
        (b"Subject: x\r\n\r\nbare\nLF\r\n", true),
    ] {
        expect(
            &command(&mut smtp, "MAIL FROM:<a@client.test>"),
            "250",
            "MAIL",
        );
        expect(
            &command(&mut smtp, "RCPT TO:<rcpt@sink.test>"),
            "250",
            "RCPT",
        );
        if use_bdat {
            smtp.send(format!("BDAT {} LAST\r\n", content.len()).as_bytes())
                .expect("BDAT");
            smtp.send(content).expect("content");
        } else {
            expect(&command(&mut smtp, "DATA"), "354", "DATA");
            smtp.send(content).expect("content");
            smtp.send(b".\r\n").expect("end");
        }
        let reply = smtp.reply().expect("reply");
        assert!(reply.starts_with("550 5.6.0"), "{reply}");
    }
    // A clean message still goes.
    expect(
        &command(&mut smtp, "MAIL FROM:<a@client.test>"),
        "250",
        "MAIL",
    );
    expect(
        &command(&mut smtp, "RCPT TO:<rcpt@sink.test>"),
        "250",
        "RCPT",
    );
    expect(&command(&mut smtp, "DATA"), "354", "DATA");
    smtp.send(b"Subject: clean\r\n\r\nfine\r\n.\r\n")
        .expect("content");
    expect(&smtp.reply().expect("reply"), "250", "clean message");
    command(&mut smtp, "QUIT");
    wait_for(&sink, 1, &empath);
    empath.wait_queue_empty(DELIVERY);
    assert_eq!(sink.message_count(), 1);
}

#[test]
fn strangers_cannot_route_through_our_domains() {
    let sink = Sink::start();
    // No trusted network: the test client is a stranger.
    let empath = start(&sink, |c| {
        c.section("smtpd", r#"(mynetworks: [], relay_domains: ["ours.test"])"#)
            .mx_override("ours.test", sink.addr())
    });
    let mut smtp = session(&empath);
    expect(
        &command(&mut smtp, "MAIL FROM:<a@client.test>"),
        "250",
        "MAIL",
    );
    for routed in [
        "user%evil.test@ours.test",
        "\"user@evil.test\"@ours.test",
        "evil.test!user@ours.test",
    ] {
        let reply = command(&mut smtp, &format!("RCPT TO:<{routed}>"));
        assert!(reply.starts_with("554 5.7.1"), "{routed}: {reply}");
    }
    expect(
        &command(&mut smtp, "RCPT TO:<user@ours.test>"),
        "250",
        "plain RCPT",
    );
    expect(&command(&mut smtp, "DATA"), "354", "DATA");
    smtp.send(b"Subject: plain\r\n\r\nok\r\n.\r\n")
        .expect("content");
    expect(&smtp.reply().expect("reply"), "250", "end of data");
    command(&mut smtp, "QUIT");
    wait_for(&sink, 1, &empath);
    empath.wait_queue_empty(DELIVERY);
    let arrived = sink.messages();
    assert_eq!(arrived.len(), 1);
    assert_eq!(arrived[0].rcpt_to, vec!["user@ours.test".to_owned()]);
}

/// A forged line the client tries to plant in the log.
const FORGED: &str =
    "2030-01-01T00:00:00.000000Z  INFO empath_smtpd::connection: authenticated user=admin";

fn hostile_session(empath: &Empath) {
    let mut smtp = RawSmtp::connect(empath.smtp_addr(), TIMEOUT).expect("connect");
    assert!(smtp.reply().expect("greeting").starts_with("220"));
    // ESC sequences in the HELO name (a line cannot carry CR or LF); smtpd
    // refuses the name, then a good one follows.
    command(&mut smtp, "EHLO evil\x1b[31m\x1b]0;pwned\x07.test");
    command(&mut smtp, "EHLO client.test");
    // An AUTH name carrying a whole forged line.
    let user = format!("nobody\r\n{FORGED}\x1b[2J");
    let plain = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("\0{user}\0wrong"),
    );
    let reply = command(&mut smtp, &format!("AUTH PLAIN {plain}"));
    assert!(reply.starts_with("535"), "{reply}");
    command(&mut smtp, "MAIL FROM:<a\x1b[31m@client.test>");
    command(&mut smtp, "QUIT");
}

fn hostile_config(sink: &Sink, format: &str) -> TestConfig {
    TestConfig::new()
        .mx_override("sink.test", sink.addr())
        .section(
            "smtpd",
            &format!(
                r#"(auth: (allow_insecure: true, users: {{"admin": "{}"}}))"#,
                bcrypt_hash("secret")
            ),
        )
        .log_format(format)
}

fn check_log_is_clean(log: &str) {
    assert!(!log.contains('\x1b'), "an ESC reached the log");
    assert!(!log.contains('\x07'), "a BEL reached the log");
    for line in log.lines() {
        assert!(
            !line.trim_start().starts_with("2030-01-01"),
            "a forged line: {line}"
        );
    }
}

#[test]
fn client_input_cannot_split_or_colour_human_log_lines() {
    let sink = Sink::start();
    let empath = Empath::start(hostile_config(&sink, "human"));
    hostile_session(&empath);
    let log = empath.wait_until("the failed AUTH to be logged", TIMEOUT, || {
        let log = empath.log();
        if log.contains("authentication failed") {
            Ok(log)
        } else {
            Err("not yet".into())
        }
    });
    check_log_is_clean(&log);
    // The name is there, escaped, on the one line that reports it.
    let line = log
        .lines()
        .find(|l| l.contains("authentication failed"))
        .expect("the AUTH failure line");
    assert!(line.contains(r"nobody\r\n2030-01-01"), "{line}");
}

#[test]
fn client_input_cannot_split_or_colour_json_log_lines() {
    let sink = Sink::start();
    let empath = Empath::start(hostile_config(&sink, "json"));
    hostile_session(&empath);
    let log = empath.wait_until("the failed AUTH to be logged", TIMEOUT, || {
        let log = empath.log();
        if log.contains("authentication failed") {
            Ok(log)
        } else {
            Err("not yet".into())
        }
    });
    check_log_is_clean(&log);
    let stderr = log
        .split("--- empath stderr ---\n")
        .nth(1)
        .and_then(|rest| rest.split("--- end of empath output ---").next())
        .expect("stderr part");
    let mut found = false;
    for line in stderr.lines().filter(|l| !l.is_empty()) {
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line}"));
        let fields = value["fields"].to_string();
        if fields.contains("authentication failed") {
            found = true;
            assert!(fields.contains("2030-01-01"), "{fields}");
        }
    }
    assert!(found, "no AUTH failure line");
}

#[test]
fn client_input_cannot_split_or_colour_syslog_lines() {
    let sink = Sink::start();
    let dir = empath_tests::test_dir();
    let syslog = SyslogSocket::bind(&dir.path().join("log.sock"));
    let empath = Empath::start(hostile_config(&sink, "syslog").raw(&format!(
        "logging: (syslog_socket: {:?})",
        syslog.path().display().to_string()
    )));
    hostile_session(&empath);
    let lines = empath.wait_until("the failed AUTH to reach syslog", TIMEOUT, || {
        let lines = syslog.lines();
        if lines.iter().any(|l| l.contains("authentication failed")) {
            Ok(lines)
        } else {
            Err("not yet".into())
        }
    });
    // Every datagram is one line, with nothing a terminal acts on.
    for line in &lines {
        check_log_is_clean(line);
        assert!(!line.contains('\n') && !line.contains('\r'), "{line:?}");
        assert!(
            !line.chars().any(|c| c.is_control()
                || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}')),
            "{line:?}"
        );
        assert!(line.starts_with('<'), "a syslog line: {line:?}");
    }
    let line = lines
        .iter()
        .find(|l| l.contains("authentication failed"))
        .expect("the AUTH failure line");
    assert!(
        line.contains(r"sasl_username=nobody\r\n2030-01-01"),
        "{line}"
    );
    assert!(
        line.contains("warning: unknown[127.0.0.1]: SASL PLAIN"),
        "{line}"
    );
}

#[test]
fn long_lines_are_folded_or_broken_and_a_missing_header_section_is_added() {
    let sink = Sink::start();
    let empath = start(&sink, |c| c);
    let words: Vec<String> = (0..700).map(|i| format!("w{i}")).collect();
    let subject = format!("Subject: {}", words.join(" "));
    let long_body_line = "b".repeat(3000);
    let mut smtp = session(&empath);
    let messages = [
        format!(
            "From: a@client.test\r\n{subject}\r\nX-Blob: {}\r\n\r\n{long_body_line}\r\nend\r\n",
            "h".repeat(2500)
        ),
        "this message has no header section\r\nsecond line\r\n".to_owned(),
    ];
    for content in &messages {
        expect(
            &command(&mut smtp, "MAIL FROM:<a@client.test>"),
            "250",
            "MAIL",
        );
        expect(
            &command(&mut smtp, "RCPT TO:<rcpt@sink.test>"),
            "250",
            "RCPT",
        );
        expect(&command(&mut smtp, "DATA"), "354", "DATA");
        smtp.send(content.as_bytes()).expect("content");
        smtp.send(b".\r\n").expect("end");
        expect(&smtp.reply().expect("reply"), "250", "end of data");
    }
    command(&mut smtp, "QUIT");
    wait_for(&sink, 2, &empath);
    empath.wait_queue_empty(DELIVERY);
    let arrived = sink.messages();
    for message in &arrived {
        check_data_stream(&message.raw)
            .unwrap_or_else(|p| panic!("{p}\n{}", String::from_utf8_lossy(&message.raw)));
    }
    let text = |m: &SinkMessage| String::from_utf8_lossy(&m.data).into_owned();
    let long = arrived
        .iter()
        .map(text)
        .find(|t| t.contains("X-Blob"))
        .expect("the long message");
    let (headers, body) = long.split_once("\r\n\r\n").expect("a header section");
    // Unfolded, the Subject is what was sent.
    let unfolded = headers.replace("\r\n", "");
    assert!(unfolded.contains(&subject), "Subject changed");
    // The body line was broken, not cut: all its octets are there.
    assert_eq!(body.matches('b').count(), 3000);
    let plain = arrived
        .iter()
        .map(text)
        .find(|t| t.contains("no header section"))
        .expect("the headerless message");
    let (headers, body) = plain
        .split_once("\r\n\r\n")
        .expect("an empty line was added");
    assert!(headers.starts_with("Received: "), "{headers}");
    assert_eq!(
        body,
        "this message has no header section\r\nsecond line\r\n"
    );
}

#[test]
fn a_message_that_went_round_too_often_is_refused() {
    let sink = Sink::start();
    let empath = start(&sink, |c| c.section("cleanup", "(hopcount_limit: 50)"));
    let mut smtp = session(&empath);
    let received = "Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n";
    for (hops, code) in [(50, "250"), (51, "554 5.4.6")] {
        expect(
            &command(&mut smtp, "MAIL FROM:<a@client.test>"),
            "250",
            "MAIL",
        );
        expect(
            &command(&mut smtp, "RCPT TO:<rcpt@sink.test>"),
            "250",
            "RCPT",
        );
        expect(&command(&mut smtp, "DATA"), "354", "DATA");
        let content = format!(
            "{}Subject: hops\r\n\r\nbody\r\n.\r\n",
            received.repeat(hops)
        );
        smtp.send(content.as_bytes()).expect("content");
        let reply = smtp.reply().expect("reply");
        assert!(reply.starts_with(code), "{hops} hops: {reply}");
    }
    command(&mut smtp, "QUIT");
    wait_for(&sink, 1, &empath);
    empath.wait_queue_empty(DELIVERY);
    assert_eq!(sink.message_count(), 1);
}

/// A free loopback port, for a listener that must be known before start.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

#[test]
fn mail_whose_next_hop_is_ourselves_bounces_at_once() {
    let sink = Sink::start();
    let port = free_port();
    let empath = Empath::start(
        TestConfig::new()
            .listeners([format!("127.0.0.1:{port}")])
            .mx_override("sink.test", sink.addr())
            .mx_override("loop.test", format!("127.0.0.1:{port}")),
    );
    let mut smtp = session(&empath);
    expect(
        &command(&mut smtp, "MAIL FROM:<sender@sink.test>"),
        "250",
        "MAIL",
    );
    expect(
        &command(&mut smtp, "RCPT TO:<user@loop.test>"),
        "250",
        "RCPT",
    );
    expect(&command(&mut smtp, "DATA"), "354", "DATA");
    smtp.send(b"Subject: round and round\r\n\r\nbody\r\n.\r\n")
        .expect("content");
    expect(&smtp.reply().expect("reply"), "250", "end of data");
    command(&mut smtp, "QUIT");
    // The sender gets the bounce.
    wait_for(&sink, 1, &empath);
    empath.wait_queue_empty(DELIVERY);
    let arrived = sink.messages();
    let bounce = String::from_utf8_lossy(&arrived[0].data).into_owned();
    assert_eq!(arrived[0].rcpt_to, vec!["sender@sink.test".to_owned()]);
    assert!(bounce.contains("5.4.6"), "{bounce}");
    assert!(bounce.contains("loops back to myself"), "{bounce}");
    // Empath never sent it to itself: only the original and its bounce
    // were ever queued.
    let queued = empath.log().matches("message queued").count();
    assert_eq!(queued, 2, "{}", empath.log_tail());
}

#[test]
fn local_submissions_are_held_to_the_size_limit_and_streamed() {
    let sink = Sink::start();
    let mut empath = start(&sink, |c| {
        c.section("smtpd", "(max_message_size: 50000000)")
    });
    let config = empath.config_path().to_owned();
    // sendmail refuses what cleanup would refuse.
    let mut small_limit = std::fs::read_to_string(&config).expect("config");
    small_limit = small_limit.replace("max_message_size: 50000000", "max_message_size: 1000");
    let small_config = empath.dir().join("small.ron");
    std::fs::write(&small_config, small_limit).expect("write config");
    let mut command = Command::new(binary("sendmail"));
    command.arg("-C").arg(&small_config).arg("rcpt@sink.test");
    let output = run_with_stdin(
        command,
        &[b"Subject: big\n\n".as_slice(), &[b'x'; 5000]].concat(),
    );
    assert_eq!(output.status.code(), Some(65), "{}", output.combined());

    // A drop file over the limit (written by hand, as a hacked sendmail
    // could) is set aside, never queued.
    empath.stop();
    let maildrop = empath.spool().join("public/maildrop");
    let drop = |content: Vec<u8>| empath_common::maildrop::DropFile {
        sender: "a@client.test".into(),
        recipients: vec!["rcpt@sink.test".into()],
        content,
    };
    let big = [b"Subject: big\r\n\r\n".as_slice(), &b"y".repeat(60_000_000)].concat();
    std::fs::write(
        maildrop.join("01-too-big"),
        empath_common::maildrop::encode(&drop(big)),
    )
    .expect("write drop file");
    // One within the limit but large: streamed, not read whole.
    let mut large = b"Subject: large\r\n\r\n".to_vec();
    while large.len() < 40_000_000 {
        large.extend_from_slice(b"a line of a large message that cleanup streams\r\n");
    }
    std::fs::write(
        maildrop.join("02-large"),
        empath_common::maildrop::encode(&drop(large)),
    )
    .expect("write drop file");
    empath.restart_master();
    wait_for(&sink, 1, &empath);
    // Not `wait_queue_empty`: the set-aside drop file is in corrupt/.
    empath.wait_until("the queue to empty", DELIVERY, || {
        let counts = empath.queue_counts();
        if counts.incoming + counts.active + counts.deferred + counts.data == 0 {
            Ok(())
        } else {
            Err(format!("{counts:?}"))
        }
    });
    let arrived = sink.messages();
    assert_eq!(arrived.len(), 1);
    assert!(String::from_utf8_lossy(&arrived[0].data).contains("Subject: large"));
    assert!(
        empath.spool().join("corrupt/maildrop-01-too-big").exists(),
        "{}",
        empath.log_tail()
    );
    let cleanup = empath
        .child_pid(empath_tests::CLEANUP)
        .expect("cleanup runs");
    let status = std::fs::read_to_string(format!("/proc/{cleanup}/status")).expect("status");
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    assert!(
        peak_kib < 30 * 1024,
        "cleanup peaked at {peak_kib} KiB for a 40 MB drop file: it was not streamed"
    );
}
