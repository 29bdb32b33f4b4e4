//! smtpd's ESMTP extensions with real clients: swaks (STARTTLS, AUTH
//! PLAIN, SIZE, PIPELINING), openssl s_client (the TLS handshake and the
//! certificate reload on SIGHUP), Python smtplib (SMTPUTF8 and BDAT), and
//! an open-relay probe.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::process::Command;
use std::time::Duration;

use empath_tests::smtpd::{TestCert, bcrypt_hash, pem_base64, python};
use empath_tests::{Empath, SMTPD, Sink, SinkPolicy, TestConfig, run_bounded};

const HOSTNAME: &str = "mx.empath.test";
const SINK_DOMAIN: &str = "sink.test";
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(120);
const SIZE_LIMIT: usize = 20_000;

/// STARTTLS with `cert`, a SIZE limit, user alice (password "secret"),
/// and a `mynetworks` that excludes loopback, so that relaying to the
/// sink needs AUTH.
fn tls_auth_config(cert: &TestCert, sink: &Sink) -> TestConfig {
    TestConfig::new()
        .hostname(HOSTNAME)
        .mx_override(SINK_DOMAIN, sink.addr())
        .listener_field(
            "extensions",
            &format!("[{}, {{ \"size\": {SIZE_LIMIT} }}]", cert.extension()),
        )
        .section(
            "smtpd",
            &format!(
                "(mynetworks: [\"10.0.0.0/8\"], auth: (users: {{\"alice\": {:?}}}))",
                bcrypt_hash("secret")
            ),
        )
}

fn swaks(empath: &Empath, extra: &[&str]) -> empath_tests::RunOutput {
    let addr = empath.smtp_addr();
    let mut command = Command::new("swaks");
    command
        .args([
            "--server",
            &addr.ip().to_string(),
            "--port",
            &addr.port().to_string(),
        ])
        .args(["--helo", "client.test", "--from", "alice@client.test"])
        .args(["--to", "bob@sink.test", "--timeout", "30"])
        .args(extra);
    run_bounded(&mut command, CLIENT_TIMEOUT)
}

#[test]
fn swaks_starttls_auth_plain_size_and_pipelining() {
    let sink = Sink::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let cert = TestCert::write(dir.path(), "mx", HOSTNAME);
    let empath = Empath::start(tls_auth_config(&cert, &sink));
    let auth = [
        "--tls",
        "--auth",
        "PLAIN",
        "--auth-user",
        "alice",
        "--auth-password",
        "secret",
        "--pipeline",
    ];

    let mut args = auth.to_vec();
    args.extend(["--header", "Subject: via swaks"]);
    let sent = swaks(&empath, &args);
    let transcript = sent.combined();
    assert!(sent.status.success(), "{transcript}\n{}", empath.log_tail());
    for expected in [
        "250 STARTTLS",
        "250-PIPELINING",
        &format!("250-SIZE {SIZE_LIMIT}"),
        "250 AUTH PLAIN LOGIN",
        "235 2.7.0 Authentication successful",
        "250 2.0.0 Ok: queued as",
    ] {
        assert!(
            transcript.contains(expected),
            "no {expected:?} in\n{transcript}"
        );
    }
    // Before STARTTLS, AUTH is not offered (no passwords in clear).
    let before_tls = transcript.split("STARTTLS").next().unwrap_or("");
    assert!(!before_tls.contains("AUTH PLAIN"), "{transcript}");

    assert!(
        sink.wait_for_messages(1, DELIVERY_TIMEOUT).is_ok(),
        "not delivered\n{}",
        empath.log_tail()
    );
    let delivered = sink.messages();
    let data = String::from_utf8_lossy(&delivered[0].data);
    assert!(data.contains("Subject: via swaks"), "{data}");
    let received = data.lines().take(4).collect::<Vec<_>>().join("\n");
    assert!(received.contains("with ESMTPSA"), "{received}");
    assert!(received.contains("using TLS"), "{received}");

    // Too big: refused at the end of DATA with 552, and nothing queued.
    let body = "x".repeat(SIZE_LIMIT + 1000);
    let mut args = auth.to_vec();
    args.extend(["--body", &body]);
    let refused = swaks(&empath, &args);
    assert!(!refused.status.success());
    assert!(
        refused.stdout.contains("552 5.3.4"),
        "{}",
        refused.combined()
    );

    // Without AUTH, relaying to the sink is refused.
    let anonymous = swaks(&empath, &["--tls"]);
    assert!(
        anonymous.stdout.contains("554 5.7.1"),
        "{}",
        anonymous.combined()
    );
    empath.wait_queue_empty(DELIVERY_TIMEOUT);
    assert_eq!(sink.message_count(), 1);
}

/// `openssl s_client -starttls smtp`, verifying against `cert`; returns
/// the base64 of the certificate the server showed.
fn s_client(empath: &Empath, cert: &TestCert) -> (bool, String) {
    let addr = empath.smtp_addr();
    let output = run_bounded(
        Command::new("openssl")
            .args([
                "s_client",
                "-starttls",
                "smtp",
                "-connect",
                &addr.to_string(),
            ])
            .args(["-CAfile", &cert.certificate.display().to_string()])
            .args(["-verify_return_error", "-verify_hostname", HOSTNAME]),
        CLIENT_TIMEOUT,
    );
    let combined = output.combined();
    let handshake = output.status.success() && combined.contains("Verify return code: 0 (ok)");
    (handshake, pem_base64(&output.stdout))
}

#[test]
fn openssl_s_client_handshake_and_certificate_reload_on_sighup() {
    let sink = Sink::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let first = TestCert::write(dir.path(), "mx", HOSTNAME);
    let empath = Empath::start(tls_auth_config(&first, &sink));

    let (ok, shown) = s_client(&empath, &first);
    assert!(ok, "handshake failed\n{}", empath.log_tail());
    assert_eq!(shown, first.base64());
    let log = empath.log();
    assert!(log.contains("STARTTLS"), "{log}");

    let hup = |empath: &Empath| {
        for pid in empath.child_pids(SMTPD) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGHUP,
            );
        }
    };

    // A new certificate at the same paths is served after SIGHUP.
    let second = TestCert::write(dir.path(), "mx", HOSTNAME);
    assert_ne!(first.base64(), second.base64());
    hup(&empath);
    empath.wait_until(
        "the new certificate",
        Duration::from_secs(20),
        || match s_client(&empath, &second) {
            (true, shown) if shown == second.base64() => Ok(()),
            (ok, _) => Err(format!("handshake ok: {ok}, still the old certificate")),
        },
    );

    // A broken one is refused, logged, and the last good one stays.
    std::fs::write(&second.certificate, "not a certificate").expect("break the certificate");
    hup(&empath);
    empath.wait_until(
        "the reload error in the log",
        Duration::from_secs(20),
        || {
            if empath.log().contains("cannot load the TLS certificate") {
                Ok(())
            } else {
                Err("no error logged yet".to_owned())
            }
        },
    );
    std::fs::write(&second.certificate, &second.pem).expect("restore for the client's CA file");
    let (ok, shown) = s_client(&empath, &second);
    assert!(ok && shown == second.base64(), "{}", empath.log_tail());
    assert!(
        !empath.child_pids(SMTPD).is_empty(),
        "smtpd survived the SIGHUPs"
    );
}

const SMTPUTF8_AND_BDAT: &str = r#"
import smtplib, sys
s = smtplib.SMTP(sys.argv[1], int(sys.argv[2]), timeout=30)
s.ehlo("client.test")
assert s.has_extn("smtputf8") and s.has_extn("chunking"), s.esmtp_features
msg = "From: j\u00f6rg@client.test\r\nTo: bob@sink.test\r\nSubject: Gr\u00fc\u00dfe\r\n\r\nHallo J\u00f6rg\r\n"
s.sendmail("j\u00f6rg@client.test", ["bob@sink.test"], msg.encode("utf-8"),
           mail_options=["SMTPUTF8", "BODY=8BITMIME"])
print("utf8 sent")
code, text = s.mail("bdat@client.test")
assert code == 250, (code, text)
code, text = s.rcpt("carol@sink.test")
assert code == 250, (code, text)
first = b"Subject: chunked\r\n\r\nfirst chunk\r\n.\r\n"
second = b"second chunk\r\n"
s.send(b"BDAT %d\r\n" % len(first) + first)
code, text = s.getreply()
assert code == 250, (code, text)
s.send(b"BDAT %d LAST\r\n" % len(second) + second)
code, text = s.getreply()
assert code == 250 and b"queued" in text, (code, text)
print("bdat sent")
s.quit()
"#;

#[test]
fn smtplib_sends_smtputf8_and_bdat_messages() {
    // The next hop must offer SMTPUTF8 for the UTF-8 sender to go on.
    let sink = Sink::with_policy(SinkPolicy::accept_all().extensions(&["8BITMIME", "SMTPUTF8"]));
    let empath = Empath::start(TestConfig::new().mx_override(SINK_DOMAIN, sink.addr()));
    let addr = empath.smtp_addr();
    let sent = python(
        SMTPUTF8_AND_BDAT,
        &[addr.ip().to_string(), addr.port().to_string()],
        CLIENT_TIMEOUT,
    );
    assert!(
        sent.status.success(),
        "{}\n{}",
        sent.combined(),
        empath.log_tail()
    );
    assert!(
        sink.wait_for_messages(2, DELIVERY_TIMEOUT).is_ok(),
        "not delivered\n{}",
        empath.log_tail()
    );
    let messages = sink.messages();
    let utf8 = messages
        .iter()
        .find(|m| m.rcpt_to.iter().any(|r| r.contains("bob@")))
        .expect("the SMTPUTF8 message");
    assert!(
        utf8.mail_from.contains("j\u{f6}rg@client.test"),
        "{}",
        utf8.mail_from
    );
    assert!(
        utf8.mail_command.ends_with(" SMTPUTF8"),
        "{}",
        utf8.mail_command
    );
    let data = String::from_utf8_lossy(&utf8.data);
    assert!(data.contains("Hallo J\u{f6}rg"), "{data}");
    assert!(data.contains("with UTF8SMTP"), "{data}");
    let chunked = messages
        .iter()
        .find(|m| m.rcpt_to.iter().any(|r| r.contains("carol@")))
        .expect("the BDAT message");
    let data = String::from_utf8_lossy(&chunked.data);
    // The chunks are joined byte for byte; the "." line is content.
    assert!(
        data.contains("first chunk\r\n.\r\nsecond chunk\r\n"),
        "{data:?}"
    );
}

const RELAY_PROBE: &str = r#"
import smtplib, sys
s = smtplib.SMTP(sys.argv[1], int(sys.argv[2]), timeout=30)
s.ehlo("probe.test")
print("mail", s.mail("spammer@evil.test"))
print("foreign", s.rcpt("victim@foreign.test"))
print("ours", s.rcpt("bob@ours.test"))
print("vrfy", s.verify("bob"))
print("expn", s.expn("staff"))
print("help", s.help())
s.rset()
s.quit()
"#;

#[test]
fn open_relay_probe_is_refused() {
    // Loopback is not in mynetworks here, so the test client is foreign.
    let empath = Empath::start(TestConfig::new().section(
        "smtpd",
        "(mynetworks: [\"10.0.0.0/8\"], relay_domains: [\"ours.test\"])",
    ));
    let addr = empath.smtp_addr();
    let probe = python(
        RELAY_PROBE,
        &[addr.ip().to_string(), addr.port().to_string()],
        CLIENT_TIMEOUT,
    );
    let out = probe.combined();
    assert!(probe.status.success(), "{out}");
    assert!(
        out.contains("foreign (554, b'5.7.1 Relay access denied')"),
        "{out}"
    );
    assert!(out.contains("ours (250, b'2.1.5 Ok')"), "{out}");
    assert!(out.contains("vrfy (252,"), "{out}");
    assert!(out.contains("expn (502,"), "{out}");
    assert!(
        out.contains("help (214") || out.contains("help b'2.0.0 Commands"),
        "{out}"
    );
    assert!(empath.log().contains("relay access denied"));
    assert!(empath.queue_counts().is_empty());
}
