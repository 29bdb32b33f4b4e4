//! Plugin modules with the real binaries: the C examples of the modules
//! crate, built with gcc and loaded by smtpd (validation) and qmgr
//! (delivery events) from the config's `modules` list.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::path::Path;
use std::time::Duration;

use empath_tests::modules::{build_example, modules_section, transaction};
use empath_tests::run::run_bounded;
use empath_tests::{Empath, SMTPD, Sink, TestConfig, empath_command, poll, test_dir};

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
fn queued_metadata(empath: &Empath, id: &str) -> Vec<(String, String)> {
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

#[test]
fn metadata_set_in_smtpd_is_seen_at_delivery_in_qmgr() {
    let build = test_dir();
    let library = build_example("delivery_audit", build.path());
    let audit_log = build.path().join("audit.log");
    let audit_arg = audit_log.display().to_string();
    let sink = Sink::start();
    let empath = Empath::start(config(&sink, &[(&library, &[audit_arg.as_str()])]));
    empath.empathctl_ok(&["queue", "freeze"]);

    let sent = transaction(empath.smtp_addr(), "audited@client.test", RECIPIENT);
    let id = sent
        .queue_id()
        .unwrap_or_else(|| panic!("not queued: {sent:?}\n{}", empath.log_tail()))
        .to_owned();
    // In the queue file, as smtpd's module set it.
    let metadata = queued_metadata(&empath, &id);
    let correlation = metadata
        .iter()
        .find(|(key, _)| key == "correlation_id")
        .map(|(_, value)| value.clone())
        .unwrap_or_else(|| panic!("no correlation_id in {metadata:?}"));
    assert!(
        correlation.starts_with("cid-") && correlation.ends_with("-127.0.0.1"),
        "{correlation}"
    );
    assert!(
        !audit_log.exists(),
        "nothing is delivered while the queue is frozen"
    );

    empath.empathctl_ok(&["queue", "unfreeze"]);
    wait_delivered(&empath, &sink, 1);
    // qmgr's module read the same metadata back at DeliverySuccess.
    let line = empath.wait_until("the audit log line", TIMEOUT, || {
        let log = std::fs::read_to_string(&audit_log).map_err(|e| e.to_string())?;
        log.lines()
            .find(|line| line.starts_with(&format!("{id} ")))
            .map(str::to_owned)
            .ok_or(log)
    });
    // ... and what it set at Data, once the whole message had arrived.
    assert!(
        metadata.contains(&("data_checked".to_owned(), "checked".to_owned())),
        "{metadata:?}"
    );
    assert_eq!(line, format!("{id} {correlation} delivered 1 checked"));
}

#[test]
fn nul_bytes_in_module_strings_are_removed() {
    let build = test_dir();
    let library = build_example("nul_bytes", build.path());
    let sink = Sink::start();
    let empath = Empath::start(config(&sink, &[(&library, &[])]));

    let refused = transaction(empath.smtp_addr(), "nul@test.example", RECIPIENT);
    assert_eq!(
        refused.mail.as_deref(),
        Some("554 5.7.1 beforeafter"),
        "{refused:?}"
    );

    empath.empathctl_ok(&["queue", "freeze"]);
    let sent = transaction(empath.smtp_addr(), "other@test.example", RECIPIENT);
    let id = sent
        .queue_id()
        .unwrap_or_else(|| panic!("not queued: {sent:?}\n{}", empath.log_tail()))
        .to_owned();
    let metadata = queued_metadata(&empath, &id);
    assert!(
        metadata.contains(&("nul_test".to_owned(), "abc".to_owned())),
        "{metadata:?}"
    );
    empath.empathctl_ok(&["queue", "unfreeze"]);
    assert_eq!(wait_delivered(&empath, &sink, 1), ["other@test.example"]);
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
    let sink = Sink::start();
    let empath = Empath::start(config(&sink, &[(&library, &[])]).section(
        "supervisor",
        "(restart_delay_ms: 50, throttle_after_crashes: 2, throttle_secs: 60)",
    ));
    let expected = format!(
        "empath-smtpd: cannot load modules: module {} (reject_domain) failed to initialise",
        library.display()
    );
    empath.wait_until("smtpd's reason and the throttling", TIMEOUT, || {
        let log = empath.log();
        if log.contains(&expected) && log.contains("throttling empath-smtpd") {
            Ok(())
        } else {
            Err("not yet in the log".to_owned())
        }
    });
    assert!(empath.master_running(), "{}", empath.log_tail());
    assert!(!empath.log().contains("panicked"), "{}", empath.log_tail());
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
