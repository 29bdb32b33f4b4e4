//! OpenDKIM (Debian's `opendkim`) as a real milter: it signs a message on
//! its way through Empath, and the copy the next hop receives verifies
//! with dkimpy, against the key OpenDKIM signed with.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::time::Duration;

use empath_tests::mail_auth::{OpenDkim, dkim_verify, header_values, send};
use empath_tests::{Empath, Sink, TestConfig, test_dir};

const TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn opendkim_signs_and_the_relayed_copy_verifies() {
    let dir = test_dir();
    let opendkim = OpenDkim::start(dir.path(), "client.test", "od1");
    let sink = Sink::start();
    let empath = Empath::start(
        TestConfig::new()
            .mx_override("sink.test", sink.addr())
            .section(
                "smtpd_milters",
                &format!("[{:?}]", opendkim.server.milter_address()),
            ),
    );
    let message = b"From: Sender <sender@client.test>\r\n\
To: alice@sink.test\r\n\
Subject: signed by OpenDKIM\r\n\
Message-ID: <opendkim-test@client.test>\r\n\
Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n\
\r\n\
A body OpenDKIM signs.\r\n\
With a second line.\r\n";
    let session = send(
        empath.smtp_addr(),
        "client.test",
        "sender@client.test",
        &["alice@sink.test"],
        message,
        dir.path(),
    );
    assert!(
        session.queue_id().is_some(),
        "{session:?}\n{}\n{}",
        empath.log_tail(),
        opendkim.server.log()
    );
    if let Err(arrived) = sink.wait_for_messages(1, TIMEOUT) {
        panic!("{arrived} messages arrived\n{}", empath.log_tail());
    }
    let delivered = sink.messages().remove(0);
    let signatures = header_values(&delivered.data, "DKIM-Signature");
    assert_eq!(
        signatures.len(),
        1,
        "{}\n{}",
        String::from_utf8_lossy(&delivered.data),
        opendkim.server.log()
    );
    let record = "od1._domainkey.client.test";
    let verified = dkim_verify(&delivered.data, &[(record, &opendkim.txt)], dir.path());
    assert_eq!(verified.len(), 1, "{verified:?}");
    assert_eq!(verified[0].domain, "client.test");
    assert_eq!(verified[0].selector, "od1");
    assert!(
        verified[0].verified,
        "dkimpy did not verify OpenDKIM's signature:\n{}",
        String::from_utf8_lossy(&delivered.data)
    );

    // The checker can fail: one changed body byte breaks the signature.
    let mut tampered = delivered.data.clone();
    let at = tampered
        .windows(6)
        .position(|w| w == b"second")
        .expect("the body");
    tampered[at] = b'S';
    let verified = dkim_verify(&tampered, &[(record, &opendkim.txt)], dir.path());
    assert!(!verified[0].verified, "a tampered copy verified");
}
