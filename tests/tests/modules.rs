//! Plugin modules with the real binaries: C modules written the original
//! Empath's way (`Mod`, `EM_DECLARE_MODULE`, `Context *`, the em_*
//! functions), built with gcc against empath.h and linked with -lempath,
//! loaded by smtpd (validation, SMTP events), qmgr (delivery events) and
//! smtp-out (DNS events) from the config's `modules` list.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use empath_tests::dns::TestDns;
use empath_tests::modules::{build_example, build_module_source, modules_section, transaction};
use empath_tests::mx::{loopback, sinks_on_one_port, with_dns};
use empath_tests::run::run_bounded;
use empath_tests::smtpd::{RawSmtp, TestCert, python};
use empath_tests::{
    Empath, QMGR, SMTP_OUT, SMTPD, Sink, SinkPolicy, TestConfig, empath_command, poll, test_dir,
};

const SINK_DOMAIN: &str = "sink.test";
const RECIPIENT: &str = "alice@sink.test";
const TIMEOUT: Duration = Duration::from_secs(60);

fn config(sink: &Sink, modules: &[(&Path, &[&str])]) -> TestConfig {
    TestConfig::new()
        .mx_override(SINK_DOMAIN, sink.addr())
        .section("modules", &modules_section(modules))
}

/// Waits until the sink has `count` messages, and returns their senders.
fn wait_delivered(empath: &Empath, sink: &Sink, count: usize) -> Vec<String> {
    empath.wait_until("delivery to the sink", TIMEOUT, || {
        let arrived = sink.messages();
        if arrived.len() >= count {
            Ok(arrived.iter().map(|m| m.mail_from.clone()).collect())
        } else {
            Err(format!("{} of {count} messages arrived", arrived.len()))
        }
    })
}

/// The metadata of a queued message, from `empathctl --json queue view`.
fn queued_metadata(empath: &Empath, id: &str) -> BTreeMap<String, String> {
    let text = empath.empathctl_ok(&["--json", "queue", "view", id]);
    let view: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("queue view printed invalid JSON ({e}):\n{text}"));
    view["Message"]["metadata"]
        .as_array()
        .unwrap_or_else(|| panic!("no metadata in {text}"))
        .iter()
        .filter_map(|pair| Some((pair[0].as_str()?.to_owned(), pair[1].as_str()?.to_owned())))
        .collect()
}

/// The lines of the delivery_log example's file that start with `event`.
fn logged(log: &Path, event: &str) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|line| line.split(' ').next() == Some(event))
        .map(str::to_owned)
        .collect()
}

/// Waits for a line of the event log that starts with `event` and holds
/// every one of `parts`.
fn wait_logged(empath: &Empath, log: &Path, event: &str, parts: &[&str]) -> String {
    empath.wait_until(&format!("a {event} line with {parts:?}"), TIMEOUT, || {
        logged(log, event)
            .into_iter()
            .find(|line| parts.iter().all(|part| line.contains(part)))
            .ok_or_else(|| std::fs::read_to_string(log).unwrap_or_default())
    })
}

#[test]
fn a_module_rejecting_a_sender_domain_gets_its_reply_to_the_client() {
    let build = test_dir();
    let library = build_example("reject_domain", build.path());
    let sink = Sink::start();
    let empath = Empath::start(config(&sink, &[(&library, &["spam.test"])]));

    let refused = transaction(empath.smtp_addr(), "x@spam.test", RECIPIENT);
    assert_eq!(
        refused.mail.as_deref(),
        Some("550 5.7.1 Mail from spam.test is not accepted here"),
        "{refused:?}\n{}",
        empath.log_tail()
    );
    assert_eq!(refused.rcpt, None, "no transaction after a refused MAIL");
    assert!(
        empath.queue_counts().is_empty(),
        "{:?}",
        empath.queue_counts()
    );

    let accepted = transaction(empath.smtp_addr(), "x@fine.test", RECIPIENT);
    assert!(
        accepted.queue_id().is_some(),
        "{accepted:?}\n{}",
        empath.log_tail()
    );
    let senders = wait_delivered(&empath, &sink, 1);
    assert_eq!(senders, ["x@fine.test"]);
    empath.wait_queue_empty(TIMEOUT);
    assert_eq!(
        sink.message_count(),
        1,
        "the refused sender was never queued"
    );
}

/// A client that tries MAIL in clear text, then STARTTLS (TLS 1.3), then a
/// transaction; prints the replies and what the client's TLS stack saw.
const STARTTLS_SCRIPT: &str = r#"
import json, smtplib, ssl, sys
host, port, rcpt = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def text(code, message):
    return "%d %s" % (code, message.decode("utf-8", "replace"))
out = {}
s = smtplib.SMTP(host, port, timeout=30)
s.ehlo("client.test")
out["plain_mail"] = text(*s.mail("tls@client.test"))
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
context.minimum_version = ssl.TLSVersion.TLSv1_3
s.starttls(context=context)
out["protocol"] = s.sock.version()
out["cipher"] = s.sock.cipher()[0]
s.ehlo("client.test")
out["mail"] = text(*s.mail("tls@client.test"))
out["rcpt"] = text(*s.rcpt(rcpt))
out["data"] = text(*s.data(b"Subject: over TLS\r\n\r\nhello\r\n"))
s.quit()
print(json.dumps(out))
"#;

#[test]
fn a_module_reads_the_tls_protocol_and_cipher_after_starttls() {
    let build = test_dir();
    let library = build_example("require_tls", build.path());
    let tls_log = build.path().join("tls.log");
    let tls_arg = tls_log.display().to_string();
    let cert = TestCert::write(build.path(), "mx", "mx.test");
    let sink = Sink::start();
    let empath = Empath::start(
        config(&sink, &[(&library, &[tls_arg.as_str()])])
            .listener_field("extensions", &format!("[{}]", cert.extension())),
    );
    empath.empathctl_ok(&["queue", "freeze"]);

    let addr = empath.smtp_addr();
    let output = python(
        STARTTLS_SCRIPT,
        &[
            addr.ip().to_string(),
            addr.port().to_string(),
            RECIPIENT.to_owned(),
        ],
        TIMEOUT,
    );
    let seen: serde_json::Value = serde_json::from_str(output.stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "no JSON ({e}):\n{}\n{}",
            output.combined(),
            empath.log_tail()
        )
    });
    let field = |name: &str| seen[name].as_str().unwrap_or_default().to_owned();
    // Before TLS the module refuses, with its own reply.
    assert_eq!(
        field("plain_mail"),
        "530 5.7.0 Must issue a STARTTLS command first"
    );
    assert_eq!(field("mail"), "250 2.1.0 Ok", "{seen}");
    let id = field("data")
        .strip_prefix("250 2.0.0 Ok: queued as ")
        .unwrap_or_else(|| panic!("not queued: {seen}\n{}", empath.log_tail()))
        .to_owned();
    // The module saw what the client negotiated.
    let (protocol, cipher) = (field("protocol"), field("cipher"));
    assert_eq!(protocol, "TLSv1.3");
    assert!(cipher.starts_with("TLS_"), "{cipher}");
    let lines = std::fs::read_to_string(&tls_log).unwrap_or_default();
    let words: Vec<&str> = lines.split_whitespace().collect();
    assert_eq!(words.len(), 3, "one STARTTLS, one line: {lines:?}");
    assert_eq!(&words[1..], [protocol.as_str(), cipher.as_str()]);
    // ... and stored it with the message.
    let metadata = queued_metadata(&empath, &id);
    assert_eq!(metadata.get("tls_protocol"), Some(&protocol));
    assert_eq!(metadata.get("tls_cipher"), Some(&cipher));

    empath.empathctl_ok(&["queue", "unfreeze"]);
    assert_eq!(wait_delivered(&empath, &sink, 1), ["tls@client.test"]);
}

#[test]
fn metadata_set_at_mail_from_is_read_at_delivery_success_after_the_delivery_daemons_restart() {
    let build = test_dir();
    let tag = build_example("correlation_tag", build.path());
    let listener = build_example("delivery_log", build.path());
    let log = build.path().join("events.log");
    let log_arg = log.display().to_string();
    // The first delivery is deferred; retries are an hour apart, so only
    // process-now brings it back, once the daemons have restarted.
    let sink = Sink::with_policy(
        SinkPolicy::accept_all()
            .reply_to_rcpt(RECIPIENT, empath_tests::Reply::new(451, "4.3.0 try later")),
    );
    let empath = Empath::start(
        config(&sink, &[(&tag, &[]), (&listener, &[log_arg.as_str()])])
            .delivery("base_retry_delay_secs", "3600")
            .delivery("max_retry_delay_secs", "3600"),
    );

    let sent = transaction(empath.smtp_addr(), "tagged@client.test", RECIPIENT);
    let id = sent
        .queue_id()
        .unwrap_or_else(|| panic!("not queued: {sent:?}\n{}", empath.log_tail()))
        .to_owned();
    let correlation = queued_metadata(&empath, &id)
        .get("correlation_id")
        .cloned()
        .unwrap_or_else(|| panic!("correlation_tag set no correlation_id"));
    assert!(correlation.ends_with("/127.0.0.1"), "{correlation}");
    // smtpd told the listener once the message was on disk.
    let received = wait_logged(&empath, &log, "SmtpMessageReceived", &[&id]);
    assert!(
        received.contains(&format!("correlation={correlation}"))
            && received.contains("sender=tagged@client.test"),
        "{received}"
    );
    // qmgr: the attempt, and its temporary failure with the sink's reply.
    let message = format!("message={id}");
    wait_logged(&empath, &log, "DeliveryAttempt", &[&message, "attempts=1"]);
    let deferred = wait_logged(&empath, &log, "DeliveryFailure", &[&message]);
    assert!(
        deferred.contains("domain=sink.test")
            && deferred.contains(&format!("server={} attempts=1", sink.addr()))
            && deferred.contains("error=451 4.3.0 try later")
            && deferred.contains(&format!("correlation={correlation} rcpt={RECIPIENT}")),
        "{deferred}"
    );
    empath.wait_until("the message to be deferred", TIMEOUT, || {
        match empath.queue_counts().deferred {
            1 => Ok(()),
            n => Err(format!("{n} deferred")),
        }
    });

    // The delivery daemons die and come back: nothing of the reception is
    // left in any process, only the queue file.
    let qmgr = empath.kill9_child(QMGR);
    let smtp_out = empath.kill9_child(SMTP_OUT);
    empath.wait_restarted(QMGR, &qmgr, TIMEOUT);
    empath.wait_restarted(SMTP_OUT, &smtp_out, TIMEOUT);
    sink.set_policy(SinkPolicy::accept_all());
    poll(TIMEOUT, || {
        let done = empath.empathctl(&["queue", "process-now"]);
        if done.status.success() {
            Ok(())
        } else {
            Err(done.combined())
        }
    })
    .unwrap_or_else(|e| panic!("process-now: {e}\n{}", empath.log_tail()));

    assert_eq!(wait_delivered(&empath, &sink, 1), ["tagged@client.test"]);
    let success = wait_logged(&empath, &log, "DeliverySuccess", &[&message]);
    assert!(
        success.contains(&format!("correlation={correlation} rcpt={RECIPIENT}"))
            && success.contains("domain=sink.test")
            && success.contains(&format!("server={} attempts=2", sink.addr())),
        "{success}"
    );
    empath.wait_queue_empty(TIMEOUT);
}

#[test]
fn a_module_lists_the_recipients_and_the_message_at_data() {
    let build = test_dir();
    let library = build_example("list_message", build.path());
    let copies = test_dir();
    let copies_arg = copies.path().display().to_string();
    let sink = Sink::start();
    let empath = Empath::start(config(&sink, &[(&library, &[copies_arg.as_str()])]));

    // A leading dot (stuffed by smtplib on the wire) and a NUL byte.
    let content = b"Subject: listed\r\n\r\n.hidden dot\r\nnul\x00byte\r\n";
    let script = r#"
import smtplib, sys
s = smtplib.SMTP(sys.argv[1], int(sys.argv[2]), timeout=30)
s.sendmail("lister@client.test", ["alice@sink.test", "bob@sink.test"], bytes.fromhex(sys.argv[3]))
s.quit()
"#;
    let hex: String = content.iter().map(|b| format!("{b:02x}")).collect();
    let addr = empath.smtp_addr();
    let output = python(
        script,
        &[addr.ip().to_string(), addr.port().to_string(), hex],
        TIMEOUT,
    );
    assert!(
        output.status.success(),
        "{}\n{}",
        output.combined(),
        empath.log_tail()
    );
    let files: Vec<_> = std::fs::read_dir(copies.path())
        .expect("the copies dir")
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let copy = std::fs::read(&files[0]).expect("the module's copy");
    // What the module saw: the recipients, and the message unstuffed,
    // without the NUL byte, its length counted without it.
    let without_nul: Vec<u8> = content.iter().copied().filter(|b| *b != 0).collect();
    let mut expected = format!(
        "recipients 2\nalice@sink.test\nbob@sink.test\ndata {}\n",
        without_nul.len()
    )
    .into_bytes();
    expected.extend_from_slice(&without_nul);
    assert_eq!(
        String::from_utf8_lossy(&copy),
        String::from_utf8_lossy(&expected)
    );
    wait_delivered(&empath, &sink, 1);
}

#[test]
fn smtp_errors_and_dns_lookups_reach_event_listeners() {
    let build = test_dir();
    let listener = build_example("delivery_log", build.path());
    let log = build.path().join("events.log");
    let log_arg = log.display().to_string();
    let (port, sinks) = sinks_on_one_port(vec![(1, SinkPolicy::accept_all())], &[]);
    let dns = TestDns::start();
    dns.mx("dns.test", 10, "mx.dns.test")
        .address("mx.dns.test", loopback(1));
    let empath = Empath::start(with_dns(
        TestConfig::new().section(
            "modules",
            &modules_section(&[(&listener, &[log_arg.as_str()])]),
        ),
        &dns,
        port,
    ));

    // Every 4xx/5xx smtpd sends is an SmtpError, with the reply.
    let mut client = RawSmtp::connect(empath.smtp_addr(), TIMEOUT).expect("connect");
    let greeting = client.reply().expect("greeting");
    assert!(greeting.starts_with("220 "), "{greeting}");
    client.send(b"EHLO client.test\r\n").expect("send");
    client.reply().expect("EHLO reply");
    client.send(b"RCPT TO:<x@dns.test>\r\n").expect("send");
    let refused = client.reply().expect("RCPT reply");
    assert!(refused.starts_with("503 "), "{refused}");
    client.send(b"QUIT\r\n").expect("send");
    let _ = client.reply();
    let code = &refused[..3];
    wait_logged(
        &empath,
        &log,
        "SmtpError",
        &[&format!("code={code} reply={refused}")],
    );
    wait_logged(&empath, &log, "ConnectionOpened", &["client=127.0.0.1"]);
    wait_logged(&empath, &log, "ConnectionClosed", &["client=127.0.0.1"]);

    // smtp-out looks dns.test up once, then answers from its cache.
    for n in 1..=2 {
        let sent = transaction(empath.smtp_addr(), "dns@client.test", "rcpt@dns.test");
        assert!(sent.queue_id().is_some(), "{sent:?}\n{}", empath.log_tail());
        if let Err(got) = sinks[0].wait_for_messages(n, TIMEOUT) {
            panic!("{got} of {n} at the MX\n{}", empath.log_tail());
        }
    }
    wait_logged(&empath, &log, "DnsLookup", &["domain=dns.test cache=hit"]);
    let lookups = logged(&log, "DnsLookup");
    assert_eq!(
        lookups,
        [
            "DnsLookup domain=dns.test cache=miss",
            "DnsLookup domain=dns.test cache=hit"
        ]
    );
}

/// A module built against Empath's own header before it took the original
/// API: `declare_module` returned an `em_module` by value, with no
/// `em_module_api_version` beside it.
const OLD_API_MODULE: &str = r#"
#include <stdint.h>
typedef struct {
    uint32_t api_version;
    const char *name;
    int (*init)(int argc, const char *const *argv);
    void *callbacks[9];
} em_module;
em_module declare_module(void) {
    em_module module = {1, "old_api", 0, {0}};
    return module;
}
"#;

/// Built against a newer empath.h than this Empath's.
const FUTURE_API_MODULE: &str = r#"
#include <empath.h>
const uint32_t em_module_api_version = 3;
Mod declare_module(void) {
    return (Mod){ValidationListener, {.validation_listener = {"future_api", NULL, {0}}}};
}
"#;

/// Starts Empath with `library` and waits for every daemon that loads
/// modules to refuse it with `reason`, and for the master to throttle
/// smtpd; the master itself keeps running and nothing panics.
fn refused_at_start_up(library: &Path, reason: &str) {
    let sink = Sink::start();
    let empath = Empath::start(config(&sink, &[(library, &[])]).section(
        "supervisor",
        "(restart_delay_ms: 50, throttle_after_crashes: 2, throttle_secs: 60)",
    ));
    empath.wait_until("the daemons' reason and the throttling", TIMEOUT, || {
        let log = empath.log();
        let said = ["empath-smtpd", "empath-qmgr", "empath-smtp-out"]
            .iter()
            .all(|daemon| {
                log.lines()
                    .any(|l| l.contains(daemon) && l.contains(reason))
            });
        if said && log.contains("throttling empath-smtpd") {
            Ok(())
        } else {
            Err("not yet in the log".to_owned())
        }
    });
    assert!(empath.master_running(), "{}", empath.log_tail());
    let log = empath.log();
    assert!(
        !log.contains("panicked") && !log.contains("SIGSEGV") && !log.contains("signal 11"),
        "{}",
        empath.log_tail()
    );
}

#[test]
fn a_module_with_the_wrong_declare_module_is_refused_at_start_up() {
    let build = test_dir();
    let library = build_module_source("old_api", OLD_API_MODULE, build.path());
    refused_at_start_up(
        &library,
        "does not say which module API it was built for (it exports no em_module_api_version)",
    );
}

#[test]
fn a_module_for_another_api_version_is_refused_at_start_up() {
    let build = test_dir();
    let library = build_module_source("future_api", FUTURE_API_MODULE, build.path());
    refused_at_start_up(
        &library,
        "was built for module API version 3, Empath provides 2",
    );
}

#[test]
fn a_missing_module_file_is_a_config_error_naming_it() {
    let dir = test_dir();
    let missing = dir.path().join("libmissing.so");
    let config = TestConfig::new().section("modules", &modules_section(&[(&missing, &[])]));
    let config_path = config.write_to(dir.path());
    for args in [&["check-config"][..], &[][..]] {
        let output = run_bounded(
            empath_command()
                .arg("--config")
                .arg(&config_path)
                .args(args)
                .current_dir(dir.path()),
            TIMEOUT,
        );
        assert_eq!(
            output.status.code(),
            Some(78),
            "{args:?}: {}",
            output.combined()
        );
        let expected = format!(
            "modules[0].name: module {} does not exist",
            missing.display()
        );
        assert!(
            output.stderr.contains(&expected),
            "{args:?}: {}",
            output.combined()
        );
    }
}

#[test]
fn a_module_whose_init_fails_is_reported_and_smtpd_throttled() {
    let build = test_dir();
    // reject_domain needs the domain to refuse: without it, init fails.
    let library = build_example("reject_domain", build.path());
    refused_at_start_up(
        &library,
        &format!(
            "module {} (reject_domain) failed to initialise",
            library.display()
        ),
    );
}

#[test]
fn a_crashing_module_takes_down_only_its_smtpd_which_is_restarted() {
    let build = test_dir();
    let library = build_example("crash_on_rcpt", build.path());
    let sink = Sink::start();
    let empath = Empath::start(config(&sink, &[(&library, &[])]));
    let before = empath.wait_child(SMTPD, TIMEOUT);

    let crashed = transaction(empath.smtp_addr(), "x@client.test", "crash@sink.test");
    assert!(
        crashed.rcpt.is_none() && crashed.error.is_some(),
        "the connection drops: {crashed:?}"
    );
    let after = empath.wait_restarted(SMTPD, &[before], TIMEOUT);
    assert_ne!(before, after);

    // The new smtpd serves, and nothing else was disturbed.
    let sent = poll(TIMEOUT, || {
        let sent = transaction(empath.smtp_addr(), "x@client.test", RECIPIENT);
        if sent.queue_id().is_some() {
            Ok(sent)
        } else {
            Err(format!("{sent:?}"))
        }
    });
    assert!(sent.is_ok(), "{sent:?}\n{}", empath.log_tail());
    assert_eq!(wait_delivered(&empath, &sink, 1), ["x@client.test"]);
    assert!(empath.master_running());
}
