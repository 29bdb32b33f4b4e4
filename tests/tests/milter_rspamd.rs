//! rspamd (Debian's `rspamd`) as a real milter, its proxy worker in milter
//! mode on a loopback port with a private config: it rejects the GTUBE
//! test string at the end of the message, with its reply text, and lets a
//! normal message through with the headers it adds.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::time::Duration;

use empath_tests::mail_auth::{Rspamd, header_values, send};
use empath_tests::{Empath, Sink, TestConfig, test_dir};

const TIMEOUT: Duration = Duration::from_secs(60);

/// The Generic Test for Unsolicited Bulk Email, which rspamd always rejects.
const GTUBE: &str = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";

#[test]
fn rspamd_rejects_gtube_and_passes_a_normal_message_with_its_headers() {
    let dir = test_dir();
    let rspamd = Rspamd::start(dir.path());
    let sink = Sink::start();
    let empath = Empath::start(
        TestConfig::new()
            .mx_override("sink.test", sink.addr())
            .section(
                "smtpd_milters",
                &format!(
                    "[(address: {:?}, content_timeout_secs: 60)]",
                    rspamd.server.milter_address()
                ),
            ),
    );
    let spam = format!(
        "From: spammer@client.test\r\nTo: alice@sink.test\r\nSubject: test\r\n\
Message-ID: <gtube@client.test>\r\nDate: Thu, 01 Jan 2026 00:00:00 +0000\r\n\r\n{GTUBE}\r\n"
    );
    let session = send(
        empath.smtp_addr(),
        "client.test",
        "spammer@client.test",
        &["alice@sink.test"],
        spam.as_bytes(),
        dir.path(),
    );
    let reply = session.data.clone().unwrap_or_default();
    assert!(
        reply.starts_with("554 5.7.1 "),
        "{session:?}\n{}\n{}",
        empath.log_tail(),
        rspamd.server.log()
    );
    assert!(reply.contains("Gtube pattern"), "{reply}");
    assert!(
        empath.queue_counts().is_empty(),
        "{:?}",
        empath.queue_counts()
    );

    let ham = "From: friend@client.test\r\nTo: alice@sink.test\r\nSubject: lunch\r\n\
Message-ID: <ham@client.test>\r\nDate: Thu, 01 Jan 2026 00:00:00 +0000\r\n\r\nLunch at noon?\r\n";
    let session = send(
        empath.smtp_addr(),
        "client.test",
        "friend@client.test",
        &["alice@sink.test"],
        ham.as_bytes(),
        dir.path(),
    );
    assert!(
        session.queue_id().is_some(),
        "{session:?}\n{}",
        rspamd.server.log()
    );
    if let Err(arrived) = sink.wait_for_messages(1, TIMEOUT) {
        panic!("{arrived} messages arrived\n{}", empath.log_tail());
    }
    let delivered = sink.messages().remove(0);
    let text = String::from_utf8_lossy(&delivered.data);
    let result = header_values(&delivered.data, "X-Spamd-Result");
    assert_eq!(result.len(), 1, "{text}");
    assert!(result[0].contains("default:"), "{text}");
    assert_eq!(
        header_values(&delivered.data, "X-Rspamd-Queue-Id")
            .first()
            .map(|v| v.trim().to_owned()),
        session.queue_id().map(str::to_owned),
        "rspamd names the message by the queue ID it got in the `i` macro:\n{text}"
    );
    assert!(text.ends_with("\r\n\r\nLunch at noon?\r\n"), "{text}");
}
