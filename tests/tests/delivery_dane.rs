//! DANE (RFC 7672) against a real DNSSEC-signed zone: `ldns-signzone`
//! signs it, NSD serves it, and smtp-out validates its answers with the
//! zone's key as the trust anchor (`dns.trust_anchor`).
//!
//! - good.dane.test: TLSA `3 1 1` names the MX's self-signed key: the
//!   message is delivered over TLS (no WebPKI, no name check).
//! - bad.dane.test: the TLSA record names another key: deferred (4.7.5),
//!   never sent.
//! - bogus.dane.test: the TLSA record was changed after signing, to name
//!   the right key: its signature is bogus, so it is not believed, and the
//!   message is deferred.
//! - plain.dane.test: an unsigned zone (an insecure delegation) whose
//!   TLSA record names another key: DANE does not apply, and the default
//!   policy (`may`) delivers.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::time::Duration;

use empath_tests::mx::{self_signed_tls_with_spki, sinks_on_one_port};
use empath_tests::nsd::{SignedDns, ZoneSpec};
use empath_tests::{Empath, SinkPolicy, SmtpSend, TestConfig, mail};
use sha2::{Digest, Sha256};

const SENDER: &str = "sender@client.test";
const TIMEOUT: Duration = Duration::from_secs(60);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn send(empath: &Empath, to: &str) {
    let messages = mail::generate(1, SENDER, &[to]);
    let outbox = mail::write_eml_files(&empath.dir().join(format!("outbox-{to}")), &messages);
    SmtpSend::new(empath.smtp_addr(), SENDER, &[to], &outbox)
        .run()
        .assert_all_accepted(1, || empath.log_tail());
}

#[test]
fn dane_authenticates_defers_on_mismatch_and_bogus_and_falls_back_when_unsigned() {
    let (tls, spki) = self_signed_tls_with_spki(&["self-signed.example"]);
    let (port, sinks) = sinks_on_one_port(
        [11, 12, 13, 14]
            .into_iter()
            .map(|n| (n, SinkPolicy::accept_all().starttls(tls.clone())))
            .collect(),
        &[],
    );
    let right = hex(&Sha256::digest(&spki));
    let wrong = hex(&Sha256::digest(b"some other key"));
    let tlsa = |host: &str, hash: &str| format!("_{port}._tcp.{host} IN TLSA 3 1 1 {hash}");
    let signed = vec![
        "good IN MX 10 mx-good.dane.test.".to_owned(),
        "mx-good IN A 127.0.0.11".to_owned(),
        tlsa("mx-good", &right),
        "bad IN MX 10 mx-bad.dane.test.".to_owned(),
        "mx-bad IN A 127.0.0.12".to_owned(),
        tlsa("mx-bad", &wrong),
        "bogus IN MX 10 mx-bogus.dane.test.".to_owned(),
        "mx-bogus IN A 127.0.0.13".to_owned(),
        tlsa("mx-bogus", &wrong),
        // An insecure delegation: NSEC proves there is no DS.
        "plain IN NS ns.dane.test.".to_owned(),
    ];
    let unsigned = vec![
        "@ IN MX 10 mx.plain.dane.test.".to_owned(),
        "mx IN A 127.0.0.14".to_owned(),
        tlsa("mx", &wrong),
    ];
    let bogus_owner = format!("_{port}._tcp.mx-bogus.dane.test.");
    let dns = SignedDns::start(
        vec![
            ZoneSpec::signed("dane.test", &signed),
            ZoneSpec::unsigned("plain.dane.test", &unsigned),
        ],
        |_, text| {
            // The right key, after signing: the signature no longer fits.
            text.lines()
                .map(|line| {
                    if line.starts_with(&bogus_owner) && line.contains("\tTLSA\t") {
                        line.replace(&wrong.to_ascii_uppercase(), &right.to_ascii_uppercase())
                            .replace(&wrong, &right)
                    } else {
                        line.to_owned()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n")
                + "\n"
        },
    );
    let config = TestConfig::new()
        .section(
            "dns",
            &format!(
                "(nameservers: [\"{}\"], timeout_secs: 2, attempts: 1, trust_anchor: {:?})",
                dns.addr(),
                dns.trust_anchor().display().to_string()
            ),
        )
        .delivery("smtp_port", &port.to_string());
    let empath = Empath::start(config);

    for to in [
        "rcpt@good.dane.test",
        "rcpt@bad.dane.test",
        "rcpt@bogus.dane.test",
        "rcpt@plain.dane.test",
    ] {
        send(&empath, to);
    }
    let context = || format!("{}\nNSD:\n{}", empath.log_tail(), dns.log());
    for (sink, to) in [(&sinks[0], "good"), (&sinks[3], "plain")] {
        let arrived = sink
            .wait_for_messages(1, TIMEOUT)
            .unwrap_or_else(|n| panic!("{n} messages for {to}.dane.test\n{}", context()));
        assert_eq!(arrived[0].rcpt_to, [format!("rcpt@{to}.dane.test")]);
        assert_eq!(sink.tls_handshakes(), 1, "{to}: over TLS");
    }
    empath.wait_until(
        "the mismatching and bogus domains to be deferred",
        TIMEOUT,
        || {
            let log = empath.log();
            let mismatch = log.contains("no TLSA record matches");
            let bogus =
                log.contains("DNSSEC validation of the TLSA records of mx-bogus.dane.test failed");
            if mismatch && bogus {
                Ok(())
            } else {
                Err(format!(
                    "mismatch logged: {mismatch}, bogus logged: {bogus}"
                ))
            }
        },
    );
    assert_eq!(
        sinks[1].message_count(),
        0,
        "bad.dane.test must not be delivered"
    );
    assert_eq!(
        sinks[2].message_count(),
        0,
        "bogus.dane.test must not be delivered"
    );
    assert_eq!(
        sinks[2].connections(),
        0,
        "a host with bogus TLSA records is not even contacted"
    );
    assert!(sinks[1].tls_handshakes() <= 1 && sinks[1].connections() >= 1);
    empath.wait_until("the delivered messages to leave the queue", TIMEOUT, || {
        let counts = empath.queue_counts();
        if counts.data == 2 {
            Ok(())
        } else {
            Err(format!("{counts:?}"))
        }
    });
    let log = empath.log();
    assert!(log.contains("4.7.5"), "{}", context());
}
