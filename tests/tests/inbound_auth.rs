//! Checks of incoming mail with the real binaries: SPF (HELO and MAIL
//! FROM), DKIM and DMARC against records a DNS server on loopback serves,
//! recorded in one `Authentication-Results:` field that Python's authres
//! parses; forged fields with our authserv-id removed; `p=reject`
//! enforced only when configured.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::process::Command;
use std::time::Duration;

use empath_tests::dns::TestDns;
use empath_tests::mail_auth::{AuthResult, authres, dkim_sign, header_values, send};
use empath_tests::run::run_bounded;
use empath_tests::{Empath, Sink, SinkMessage, TestConfig, test_dir};

const TIMEOUT: Duration = Duration::from_secs(60);
const AUTHSERV_ID: &str = "mx.empath.test";

/// A key pair made with openssl (not with Empath), and its TXT record.
fn openssl_key(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, String) {
    use base64::Engine;
    let key = dir.join(format!("{name}.pem"));
    let der = dir.join(format!("{name}.pub.der"));
    for args in [
        vec![
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            key.to_str().unwrap_or_default(),
        ],
        vec![
            "pkey",
            "-pubout",
            "-outform",
            "DER",
            "-in",
            key.to_str().unwrap_or_default(),
            "-out",
            der.to_str().unwrap_or_default(),
        ],
    ] {
        let output = run_bounded(Command::new("openssl").args(&args), TIMEOUT);
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            output.combined()
        );
    }
    let public = std::fs::read(&der).expect("public key");
    let txt = format!(
        "v=DKIM1; k=rsa; p={}",
        base64::engine::general_purpose::STANDARD.encode(public)
    );
    (key, txt)
}

/// The zone: pass.test does everything right for mail from 127.0.0.1;
/// fail.test publishes policies that 127.0.0.1 and its signature fail.
fn dns(dir: &std::path::Path) -> (TestDns, std::path::PathBuf, std::path::PathBuf) {
    let dns = TestDns::start();
    let (good_key, good_txt) = openssl_key(dir, "good");
    let (wrong_key, _) = openssl_key(dir, "wrong");
    dns.txt("pass.test", "v=spf1 ip4:127.0.0.1 -all")
        .txt("mx.pass.test", "v=spf1 ip4:127.0.0.1 -all")
        .txt("sel._domainkey.pass.test", &good_txt)
        .txt("_dmarc.pass.test", "v=DMARC1; p=reject")
        .txt("fail.test", "v=spf1 ip4:192.0.2.1 -all")
        .txt("mx.fail.test", "v=spf1 ip4:192.0.2.1 -all")
        // The record says good, the message is signed with wrong.
        .txt("sel._domainkey.fail.test", &good_txt)
        .txt("_dmarc.fail.test", "v=DMARC1; p=reject");
    (dns, good_key, wrong_key)
}

fn config(sink: &Sink, dns: &TestDns, enforce: bool) -> TestConfig {
    TestConfig::new()
        .mx_override("sink.test", sink.addr())
        // 127.0.0.1 is outside: nobody is in mynetworks.
        .section("smtpd", "(mynetworks: [], relay_domains: [\"sink.test\"])")
        .section("dns", &format!("(nameservers: [\"{}\"])", dns.addr()))
        .section(
            "auth",
            &format!("(enabled: true, reject_dmarc_failures: {enforce})"),
        )
}

fn message(domain: &str, extra: &str) -> Vec<u8> {
    format!(
        "{extra}From: Sender <sender@{domain}>\r\n\
To: alice@sink.test\r\n\
Subject: checked on arrival\r\n\
Message-ID: <inbound@{domain}>\r\n\
Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n\
\r\n\
Hello from {domain}.\r\n"
    )
    .into_bytes()
}

fn delivered(sink: &Sink, count: usize, empath: &Empath) -> Vec<SinkMessage> {
    match sink.wait_for_messages(count, TIMEOUT) {
        Ok(messages) => messages,
        Err(arrived) => panic!("{arrived} of {count} arrived\n{}", empath.log_tail()),
    }
}

/// Our one `Authentication-Results:` field, parsed by authres.
fn our_results(copy: &[u8]) -> Vec<AuthResult> {
    let fields = header_values(copy, "Authentication-Results");
    let ours: Vec<&String> = fields
        .iter()
        .filter(|v| v.trim_start().starts_with(AUTHSERV_ID))
        .collect();
    assert_eq!(ours.len(), 1, "{}", String::from_utf8_lossy(copy));
    let (id, results) = authres(&format!("Authentication-Results:{}", ours[0]));
    assert_eq!(id, AUTHSERV_ID);
    results
}

fn result<'a>(results: &'a [AuthResult], method: &str, property: &str) -> &'a AuthResult {
    results
        .iter()
        .find(|r| {
            r.method == method && (property.is_empty() || r.properties.contains_key(property))
        })
        .unwrap_or_else(|| panic!("no {method} ({property}) result in {results:?}"))
}

#[test]
fn spf_dkim_and_dmarc_pass_and_fail_in_one_authentication_results_field() {
    let dir = test_dir();
    let (dns, good_key, wrong_key) = dns(dir.path());
    let sink = Sink::start();
    let empath = Empath::start(config(&sink, &dns, false));

    // Everything right: SPF for HELO and MAIL FROM, an aligned DKIM
    // signature, and DMARC passes. A forged field with our name goes.
    let forged =
        format!("Authentication-Results: {AUTHSERV_ID}; spf=pass smtp.mailfrom=forged.test\r\n");
    let signed = dkim_sign(
        &message("pass.test", &forged),
        "pass.test",
        "sel",
        &good_key,
        dir.path(),
    );
    let session = send(
        empath.smtp_addr(),
        "mx.pass.test",
        "sender@pass.test",
        &["alice@sink.test"],
        &signed,
        dir.path(),
    );
    assert!(
        session.queue_id().is_some(),
        "{session:?}\n{}",
        empath.log_tail()
    );
    let copy = delivered(&sink, 1, &empath).remove(0).data;
    let text = String::from_utf8_lossy(&copy).into_owned();
    assert!(
        !text.contains("forged.test"),
        "the forged field is still there:\n{text}"
    );
    let results = our_results(&copy);
    let helo = result(&results, "spf", "smtp.helo");
    assert_eq!(
        (helo.result.as_str(), helo.properties["smtp.helo"].as_str()),
        ("pass", "mx.pass.test")
    );
    let mail_from = result(&results, "spf", "smtp.mailfrom");
    assert_eq!(mail_from.result, "pass", "{results:?}");
    assert_eq!(mail_from.properties["smtp.mailfrom"], "sender@pass.test");
    let dkim = result(&results, "dkim", "");
    assert_eq!(dkim.result, "pass", "{results:?}");
    // header.i when the signature has an i= tag (dkimpy's has), else header.d.
    let signer = dkim
        .properties
        .get("header.i")
        .or_else(|| dkim.properties.get("header.d"))
        .map(String::as_str);
    assert_eq!(signer, Some("@pass.test"), "{results:?}");
    assert_eq!(dkim.properties["header.s"], "sel");
    let dmarc = result(&results, "dmarc", "");
    assert_eq!(dmarc.result, "pass", "{results:?}");
    assert_eq!(dmarc.properties["header.from"], "pass.test");
    assert_eq!(dmarc.properties["policy.dmarc"], "reject");

    // Everything wrong: SPF fails for both, the signature does not verify,
    // DMARC fails under p=reject; not enforced here, so it is delivered.
    let signed = dkim_sign(
        &message("fail.test", ""),
        "fail.test",
        "sel",
        &wrong_key,
        dir.path(),
    );
    let session = send(
        empath.smtp_addr(),
        "mx.fail.test",
        "sender@fail.test",
        &["alice@sink.test"],
        &signed,
        dir.path(),
    );
    assert!(session.queue_id().is_some(), "{session:?}");
    let copy = delivered(&sink, 2, &empath).remove(1).data;
    let results = our_results(&copy);
    assert_eq!(
        result(&results, "spf", "smtp.helo").result,
        "fail",
        "{results:?}"
    );
    assert_eq!(
        result(&results, "spf", "smtp.mailfrom").result,
        "fail",
        "{results:?}"
    );
    assert_eq!(result(&results, "dkim", "").result, "fail", "{results:?}");
    let dmarc = result(&results, "dmarc", "");
    assert_eq!(dmarc.result, "fail", "{results:?}");
    assert_eq!(dmarc.properties["policy.dmarc"], "reject");

    // No records at all: none, and no signature means dkim=none.
    let session = send(
        empath.smtp_addr(),
        "client.unknown.test",
        "sender@unknown.test",
        &["alice@sink.test"],
        &message("unknown.test", ""),
        dir.path(),
    );
    assert!(session.queue_id().is_some(), "{session:?}");
    let copy = delivered(&sink, 3, &empath).remove(2).data;
    let results = our_results(&copy);
    assert_eq!(
        result(&results, "spf", "smtp.mailfrom").result,
        "none",
        "{results:?}"
    );
    assert_eq!(result(&results, "dkim", "").result, "none", "{results:?}");
    assert_eq!(result(&results, "dmarc", "").result, "none", "{results:?}");
}

#[test]
fn dmarc_reject_is_enforced_only_when_configured() {
    let dir = test_dir();
    let (dns, good_key, wrong_key) = dns(dir.path());
    let sink = Sink::start();
    let empath = Empath::start(config(&sink, &dns, true));
    let signed = dkim_sign(
        &message("fail.test", ""),
        "fail.test",
        "sel",
        &wrong_key,
        dir.path(),
    );
    let session = send(
        empath.smtp_addr(),
        "mx.fail.test",
        "sender@fail.test",
        &["alice@sink.test"],
        &signed,
        dir.path(),
    );
    assert_eq!(
        session.data.as_deref(),
        Some("550 5.7.1 Email rejected per DMARC policy for fail.test"),
        "{session:?}\n{}",
        empath.log_tail()
    );
    assert!(
        empath.queue_counts().is_empty(),
        "{:?}",
        empath.queue_counts()
    );

    // Passing mail still goes through.
    let signed = dkim_sign(
        &message("pass.test", ""),
        "pass.test",
        "sel",
        &good_key,
        dir.path(),
    );
    let session = send(
        empath.smtp_addr(),
        "mx.pass.test",
        "sender@pass.test",
        &["alice@sink.test"],
        &signed,
        dir.path(),
    );
    assert!(session.queue_id().is_some(), "{session:?}");
    delivered(&sink, 1, &empath);
}

#[test]
fn mail_from_mynetworks_is_not_checked() {
    let dir = test_dir();
    let (dns, _, wrong_key) = dns(dir.path());
    let sink = Sink::start();
    let empath = Empath::start(
        config(&sink, &dns, true).section("smtpd", "(mynetworks: [\"127.0.0.0/8\"])"),
    );
    let signed = dkim_sign(
        &message("fail.test", ""),
        "fail.test",
        "sel",
        &wrong_key,
        dir.path(),
    );
    let session = send(
        empath.smtp_addr(),
        "mx.fail.test",
        "sender@fail.test",
        &["alice@sink.test"],
        &signed,
        dir.path(),
    );
    assert!(session.queue_id().is_some(), "{session:?}");
    let copy = delivered(&sink, 1, &empath).remove(0).data;
    assert!(
        header_values(&copy, "Authentication-Results").is_empty(),
        "{}",
        String::from_utf8_lossy(&copy)
    );
}

#[test]
fn arc_is_checked_when_asked() {
    let dir = test_dir();
    let (dns, _, _) = dns(dir.path());
    let sink = Sink::start();
    let empath =
        Empath::start(config(&sink, &dns, false).section("auth", "(enabled: true, arc: true)"));
    let session = send(
        empath.smtp_addr(),
        "mx.pass.test",
        "sender@pass.test",
        &["alice@sink.test"],
        &message("pass.test", ""),
        dir.path(),
    );
    assert!(session.queue_id().is_some(), "{session:?}");
    let copy = delivered(&sink, 1, &empath).remove(0).data;
    let results = our_results(&copy);
    let arc = result(&results, "arc", "");
    assert_eq!(arc.result, "none", "{results:?}");
    assert_eq!(arc.properties["smtp.remote-ip"], "127.0.0.1");
}
