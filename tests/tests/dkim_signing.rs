//! Native DKIM signing with the real binaries: keys made by `empathctl
//! dkim keygen`, the signatures of the relayed copy checked by dkimpy
//! (RSA-SHA256 and Ed25519-SHA256), signing after the milters, and no
//! signature for mail from outside or from a domain without a key.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::time::Duration;

use empath_tests::mail_auth::{GeneratedKey, TestMilter, dkim_verify, header_values, keygen, send};
use empath_tests::{Empath, Sink, SinkMessage, TestConfig, test_dir};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(60);

fn message(from: &str) -> Vec<u8> {
    format!(
        "From: Sender <{from}>\r\n\
To: alice@sink.test\r\n\
Subject: signed by Empath\r\n\
Message-ID: <{}@client.test>\r\n\
Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n\
\r\n\
A body Empath signs.\r\n",
        from.replace('@', ".")
    )
    .into_bytes()
}

fn dkim_section(keys: &[(&str, &str, &GeneratedKey)]) -> String {
    let entries: Vec<String> = keys
        .iter()
        .map(|(domain, selector, key)| {
            format!(
                "(domain: {domain:?}, selector: {selector:?}, private_key: {:?})",
                key.private_key.display().to_string()
            )
        })
        .collect();
    format!("(keys: [{}])", entries.join(", "))
}

fn delivered(sink: &Sink, count: usize, empath: &Empath) -> Vec<SinkMessage> {
    match sink.wait_for_messages(count, TIMEOUT) {
        Ok(messages) => messages,
        Err(arrived) => panic!("{arrived} of {count} arrived\n{}", empath.log_tail()),
    }
}

#[test]
fn rsa_and_ed25519_signatures_verify_with_dkimpy() {
    let dir = test_dir();
    let rsa = keygen(dir.path(), "client.test", "rsa1", "rsa");
    let ed = keygen(dir.path(), "client.test", "ed1", "ed25519");
    assert_eq!(rsa.record_name, "rsa1._domainkey.client.test");
    assert!(rsa.txt.starts_with("v=DKIM1; k=rsa; p="), "{}", rsa.txt);
    assert!(ed.txt.starts_with("v=DKIM1; k=ed25519; p="), "{}", ed.txt);
    let sink = Sink::start();
    let empath = Empath::start(
        TestConfig::new()
            .mx_override("sink.test", sink.addr())
            .section(
                "dkim",
                &dkim_section(&[("client.test", "rsa1", &rsa), ("client.test", "ed1", &ed)]),
            ),
    );
    // From 127.0.0.1, in mynetworks: our side, signed.
    let session = send(
        empath.smtp_addr(),
        "client.test",
        "sender@client.test",
        &["alice@sink.test"],
        &message("sender@client.test"),
        dir.path(),
    );
    assert!(
        session.queue_id().is_some(),
        "{session:?}\n{}",
        empath.log_tail()
    );
    let copy = delivered(&sink, 1, &empath).remove(0).data;
    let records = [
        (rsa.record_name.as_str(), rsa.txt.as_str()),
        (ed.record_name.as_str(), ed.txt.as_str()),
    ];
    let signatures = dkim_verify(&copy, &records, dir.path());
    let text = String::from_utf8_lossy(&copy);
    assert_eq!(signatures.len(), 2, "{text}");
    let mut algorithms: Vec<&str> = signatures.iter().map(|s| s.algorithm.as_str()).collect();
    algorithms.sort_unstable();
    assert_eq!(algorithms, ["ed25519-sha256", "rsa-sha256"]);
    for signature in &signatures {
        assert!(signature.verified, "{signature:?} did not verify:\n{text}");
        assert_eq!(signature.domain, "client.test");
        // From is signed once more than it occurs, so no From can be added.
        let signed: Vec<String> = signature
            .headers
            .split(':')
            .map(|h| h.trim().to_ascii_lowercase())
            .collect();
        assert_eq!(
            signed.iter().filter(|h| *h == "from").count(),
            2,
            "{signature:?}"
        );
        for wanted in ["to", "subject", "date", "message-id"] {
            assert!(
                signed.iter().any(|h| h == wanted),
                "{wanted} not in {signature:?}"
            );
        }
        assert!(!signed.iter().any(|h| h == "received"), "{signature:?}");
    }
    // The signatures are on top, above our Received.
    let names = empath_tests::mail_auth::header_names(&copy);
    assert_eq!(
        &names[..3],
        ["DKIM-Signature", "DKIM-Signature", "Received"],
        "{text}"
    );

    // A second From, added on the way, breaks them.
    let mut forged = b"From: mallory@client.test\r\n".to_vec();
    forged.extend_from_slice(&copy);
    let signatures = dkim_verify(&forged, &records, dir.path());
    assert!(signatures.iter().all(|s| !s.verified), "{signatures:?}");
}

#[test]
fn signing_covers_what_the_milters_changed_and_only_our_domains() {
    let dir = test_dir();
    let key = keygen(dir.path(), "client.test", "s1", "rsa");
    let milter = TestMilter::start(
        dir.path(),
        "rewrite",
        &json!({"eom": [["replbody", "Body replaced by the milter.\r\n"], ["chgheader", 1, "Subject", "subject from the milter"]]}),
    );
    let sink = Sink::start();
    let empath = Empath::start(
        TestConfig::new()
            .mx_override("sink.test", sink.addr())
            .section("dkim", &dkim_section(&[("client.test", "s1", &key)]))
            .section("smtpd_milters", &format!("[{:?}]", milter.address())),
    );
    let session = send(
        empath.smtp_addr(),
        "client.test",
        "sender@client.test",
        &["alice@sink.test"],
        &message("sender@news.client.test"),
        dir.path(),
    );
    assert!(session.queue_id().is_some(), "{session:?}");
    let copy = delivered(&sink, 1, &empath).remove(0).data;
    let text = String::from_utf8_lossy(&copy);
    assert!(
        text.ends_with("\r\n\r\nBody replaced by the milter.\r\n"),
        "{text}"
    );
    assert_eq!(
        header_values(&copy, "Subject"),
        [" subject from the milter"]
    );
    // Mail from a subdomain is signed with its parent's key.
    let signatures = dkim_verify(
        &copy,
        &[(key.record_name.as_str(), key.txt.as_str())],
        dir.path(),
    );
    assert_eq!(signatures.len(), 1, "{text}");
    assert!(signatures[0].verified, "{signatures:?}\n{text}");

    // A domain without a key: not signed.
    let session = send(
        empath.smtp_addr(),
        "client.test",
        "sender@other.test",
        &["alice@sink.test"],
        &message("sender@other.test"),
        dir.path(),
    );
    assert!(session.queue_id().is_some(), "{session:?}");
    let copy = delivered(&sink, 2, &empath).remove(1).data;
    assert!(header_values(&copy, "DKIM-Signature").is_empty());
}

#[test]
fn mail_from_outside_is_not_signed() {
    let dir = test_dir();
    let key = keygen(dir.path(), "client.test", "s1", "ed25519");
    let sink = Sink::start();
    // Nobody is in mynetworks: 127.0.0.1 is outside, and may only send
    // to the domains we take mail for.
    let empath = Empath::start(
        TestConfig::new()
            .mx_override("sink.test", sink.addr())
            .section("dkim", &dkim_section(&[("client.test", "s1", &key)]))
            .section("smtpd", "(mynetworks: [], relay_domains: [\"sink.test\"])"),
    );
    let session = send(
        empath.smtp_addr(),
        "client.test",
        "sender@client.test",
        &["alice@sink.test"],
        &message("sender@client.test"),
        dir.path(),
    );
    assert!(session.queue_id().is_some(), "{session:?}");
    let copy = delivered(&sink, 1, &empath).remove(0).data;
    assert!(
        header_values(&copy, "DKIM-Signature").is_empty(),
        "{}",
        String::from_utf8_lossy(&copy)
    );
}

#[test]
fn a_key_that_does_not_load_is_a_config_error() {
    let dir = test_dir();
    let broken = dir.path().join("broken.pem");
    std::fs::write(
        &broken,
        "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
    )
    .expect("write the broken key");
    let config = TestConfig::new().section(
        "dkim",
        &format!(
            "(keys: [(domain: \"client.test\", selector: \"s1\", private_key: {:?})])",
            broken.display().to_string()
        ),
    );
    let path = config.write_to(dir.path());
    let output = empath_tests::run::run_bounded(
        empath_tests::empath_command()
            .arg("check-config")
            .arg("--config")
            .arg(&path),
        Duration::from_secs(10),
    );
    assert_eq!(output.status.code(), Some(78), "{}", output.combined());
    assert!(
        output.stderr.contains("dkim.keys[0].private_key") && output.stderr.contains("broken.pem"),
        "{}",
        output.combined()
    );
}
