//! The control plane with the real binaries: `empathctl` (every command,
//! human and JSON output), the control socket's token check and audit log,
//! `mailq`, and `sendmail` with the daemons down and up.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use empath_tests::mail;
use empath_tests::run::run_bounded;
use empath_tests::run::run_with_stdin;
use empath_tests::{Empath, Reply, SendReport, Sink, SinkPolicy, SmtpSend, TestConfig, binary};

const SENDER: &str = "ops@client.test";
const TIMEOUT: Duration = Duration::from_secs(60);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs empathctl with `--json` and parses the answer.
fn json(empath: &Empath, args: &[&str]) -> serde_json::Value {
    let mut with_json = vec!["--json"];
    with_json.extend_from_slice(args);
    let text = empath.empathctl_ok(&with_json);
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("empathctl {args:?} printed invalid JSON ({e}):\n{text}"))
}

fn send(empath: &Empath, to: &[&str], count: usize) -> SendReport {
    let messages = mail::generate(count, SENDER, to);
    let outbox = mail::write_eml_files(
        &empath.dir().join(format!("outbox-{}", to.join("-"))),
        &messages,
    );
    let report = SmtpSend::new(empath.smtp_addr(), SENDER, to, &outbox).run();
    report.assert_all_accepted(count, || empath.log_tail());
    report
}

/// The queue IDs `queue list --json` shows.
fn listed_ids(empath: &Empath, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["queue", "list"];
    args.extend_from_slice(extra);
    let value = json(empath, &args);
    value["QueueList"]
        .as_array()
        .unwrap_or_else(|| panic!("not a queue list: {value}"))
        .iter()
        .map(|e| e["id"].as_str().expect("id is a string").to_owned())
        .collect()
}

/// Waits for `count` messages at the sink, failing with the log if they do not come.
fn expect_messages(sink: &Sink, count: usize, empath: &Empath) {
    if let Err(arrived) = sink.wait_for_messages(count, TIMEOUT) {
        panic!(
            "{arrived} of {count} messages arrived\n{}",
            empath.log_tail()
        );
    }
}

fn start(sink: &Sink) -> Empath {
    Empath::start(
        TestConfig::new()
            .mx_override("sink.test", sink.addr())
            .mx_override("other.test", sink.addr()),
    )
}

#[test]
fn ping_status_and_overrides_in_both_formats() {
    let sink = Sink::start();
    let empath = start(&sink);

    assert_eq!(empath.empathctl_ok(&["system", "ping"]).trim(), "pong");
    assert_eq!(
        json(&empath, &["system", "ping"]),
        serde_json::json!("Pong")
    );

    let status = empath.empathctl_ok(&["system", "status"]);
    for expected in [
        "Version:",
        "Uptime:",
        "Queue size:",
        "empath-qmgr",
        "empath-smtpd",
        "running",
    ] {
        assert!(
            status.contains(expected),
            "{expected:?} missing from:\n{status}"
        );
    }
    let status = json(&empath, &["system", "status"]);
    let processes = status["Status"]["processes"].as_array().expect("processes");
    for name in [
        "empath-smtpd",
        "empath-cleanup",
        "empath-qmgr",
        "empath-smtp-out",
        "empath-bounce",
    ] {
        let process = processes
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing: {status}"));
        assert_eq!(process["running"], true, "{status}");
        let pid = process["pid"].as_i64().expect("pid");
        assert_eq!(
            empath.child_pid(name).map(i64::from),
            Some(pid),
            "pid of {name}"
        );
    }
    assert_eq!(status["Status"]["queue_size"], 0);

    let overrides = empath.empathctl_ok(&["dns", "list-overrides"]);
    assert!(
        overrides.contains("sink.test") && overrides.contains(&sink.addr().to_string()),
        "{overrides}"
    );
    let overrides = json(&empath, &["dns", "list-overrides"]);
    assert!(
        overrides["Overrides"]
            .as_array()
            .is_some_and(|o| o.len() == 2),
        "{overrides}"
    );
}

#[test]
fn freeze_holds_delivery_and_unfreeze_resumes_it() {
    let sink = Sink::start();
    let empath = start(&sink);
    assert!(empath.empathctl_ok(&["queue", "freeze"]).contains("frozen"));

    send(&empath, &["a@sink.test"], 3);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(sink.message_count(), 0, "delivered while frozen");
    let stats = json(&empath, &["queue", "stats"]);
    assert_eq!(stats["Stats"]["frozen"], true, "{stats}");
    assert_eq!(stats["Stats"]["total"], 3, "{stats}");
    let human = empath.empathctl_ok(&["queue", "stats"]);
    assert!(
        human.contains("frozen") && human.contains("sink.test"),
        "{human}"
    );

    empath.empathctl_ok(&["queue", "unfreeze"]);
    expect_messages(&sink, 3, &empath);
    empath.wait_queue_empty(TIMEOUT);
    assert_eq!(json(&empath, &["queue", "stats"])["Stats"]["frozen"], false);
}

#[test]
fn list_filters_view_and_delete_act_on_the_named_message_only() {
    let sink = Sink::start();
    let empath = start(&sink);
    empath.empathctl_ok(&["queue", "freeze"]);
    send(&empath, &["a@sink.test"], 2);
    send(&empath, &["b@other.test"], 1);

    let all = listed_ids(&empath, &[]);
    assert_eq!(all.len(), 3, "{all:?}");
    assert_eq!(listed_ids(&empath, &["--domain", "other.test"]).len(), 1);
    assert_eq!(listed_ids(&empath, &["--status", "pending"]).len(), 3);
    assert_eq!(listed_ids(&empath, &["--status", "retry"]).len(), 0);
    assert_eq!(listed_ids(&empath, &["--limit", "2"]), all[..2].to_vec());
    let human = empath.empathctl_ok(&["queue", "list", "--domain", "other.test"]);
    assert!(
        human.contains("domain: other.test,") && human.contains("id: "),
        "{human}"
    );
    let bad = empath.empathctl(&["queue", "list", "--status", "lost"]);
    assert!(
        !bad.status.success() && bad.stderr.contains("unknown status"),
        "{}",
        bad.combined()
    );

    let victim = &all[0];
    let view = empath.empathctl_ok(&["queue", "view", victim]);
    assert!(
        view.contains("Recipients:") && view.contains("a@sink.test") && view.contains("Subject:"),
        "{view}"
    );
    let view = json(&empath, &["queue", "view", victim]);
    assert_eq!(view["Message"]["entry"]["id"], victim.as_str());
    assert_eq!(view["Message"]["recipients"][0]["status"], "pending");

    let refused = empath.empathctl(&["queue", "delete", victim]);
    assert_eq!(refused.status.code(), Some(64), "{}", refused.combined());
    assert!(
        empath
            .empathctl_ok(&["queue", "delete", victim, "--yes"])
            .contains("deleted")
    );
    let missing = empath.empathctl(&["queue", "view", victim]);
    assert!(
        !missing.status.success() && missing.stderr.contains("no message"),
        "{}",
        missing.combined()
    );

    empath.empathctl_ok(&["queue", "unfreeze"]);
    expect_messages(&sink, 2, &empath);
    empath.wait_queue_empty(TIMEOUT);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sink.message_count(), 2, "the deleted message was delivered");
    let delivered: Vec<String> = sink.inspect(|m| m.iter().map(|m| m.rcpt_to.join(",")).collect());
    assert!(
        delivered.contains(&"b@other.test".to_owned()),
        "{delivered:?}"
    );
}

#[test]
fn retry_makes_only_the_named_deferred_message_due() {
    // Every first attempt is refused, and the next retry would be an hour away.
    let sink = Sink::with_policy(
        SinkPolicy::accept_all().fail_first_data(2, Reply::new(451, "4.3.0 Busy")),
    );
    let empath = Empath::start(
        TestConfig::new()
            .mx_override("sink.test", sink.addr())
            .delivery("base_retry_delay_secs", "3600")
            .delivery("max_retry_delay_secs", "7200"),
    );
    send(&empath, &["a@sink.test"], 2);
    empath.wait_until("both messages deferred", TIMEOUT, || {
        let retry = listed_ids(&empath, &["--status", "retry"]);
        if retry.len() == 2 {
            Ok(retry)
        } else {
            Err(format!("{retry:?}"))
        }
    });
    let retry = listed_ids(&empath, &["--status", "retry"]);
    let human = empath.empathctl_ok(&["queue", "list", "--status", "retry"]);
    assert!(
        human.contains("status: retry") && human.contains("next: in "),
        "{human}"
    );

    assert!(
        empath
            .empathctl_ok(&["queue", "retry", &retry[1]])
            .contains("retried now")
    );
    expect_messages(&sink, 1, &empath);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        listed_ids(&empath, &["--status", "retry"]),
        vec![retry[0].clone()]
    );

    let done = json(&empath, &["queue", "process-now"]);
    assert!(
        done["Done"]
            .as_str()
            .is_some_and(|d| d.contains("1 deferred")),
        "{done}"
    );
    expect_messages(&sink, 2, &empath);
    empath.wait_queue_empty(TIMEOUT);
}

#[test]
fn dns_cache_commands_reach_smtp_out() {
    let sink = Sink::start();
    let empath = start(&sink);
    let cache = json(&empath, &["dns", "list-cache"]);
    assert_eq!(cache["DnsCache"], serde_json::json!([]), "{cache}");
    assert!(
        empath
            .empathctl_ok(&["dns", "list-cache"])
            .contains("DNS Cache (0 entries)")
    );
    assert!(
        !empath
            .empathctl_ok(&["dns", "clear-cache"])
            .trim()
            .is_empty()
    );
    // No DNS server is reachable in this test: refreshing must fail with a
    // clear message rather than hang or pretend.
    let refresh = empath.empathctl(&["dns", "refresh", "nowhere.invalid"]);
    assert!(!refresh.combined().trim().is_empty());
}

#[test]
fn a_wrong_token_is_refused_and_logged() {
    let sink = Sink::start();
    // The config holds only the token's SHA-256, as control_auth expects.
    let digest = sha256_hex("right-token");
    let empath = Empath::start(
        TestConfig::new()
            .mx_override("sink.test", sink.addr())
            .section(
                "control_auth",
                &format!("(enabled: true, token_hashes: [\"{digest}\"])"),
            ),
    );
    let denied = empath.empathctl(&["--token", "wrong-token", "system", "ping"]);
    assert_eq!(denied.status.code(), Some(1), "{}", denied.combined());
    assert!(
        denied.stderr.contains("authentication failed"),
        "{}",
        denied.combined()
    );
    let missing = empath.empathctl(&["system", "ping"]);
    assert!(
        missing.stderr.contains("authentication required"),
        "{}",
        missing.combined()
    );
    assert_eq!(
        empath
            .empathctl_ok(&["--token", "right-token", "system", "ping"])
            .trim(),
        "pong"
    );

    empath.wait_until("the refusal in the audit log", TIMEOUT, || {
        let log = empath.log();
        if log.contains("Control command refused") && log.contains("authentication failed") {
            Ok(())
        } else {
            Err("not logged yet".to_owned())
        }
    });
    // Every command is audited with who ran it and how it ended.
    let log = empath.log();
    let audit: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Control command"))
        .collect();
    assert!(audit.len() >= 3, "{log}");
    for line in audit {
        assert!(
            line.contains("uid=") && line.contains("user=") && line.contains("result="),
            "{line}"
        );
    }
}

#[test]
fn empathctl_names_the_socket_when_the_daemon_is_not_running() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("control.sock");
    let mut command = Command::new(binary("empathctl"));
    command
        .arg("--control-socket")
        .arg(&socket)
        .args(["system", "ping"]);
    let output = run_bounded(&mut command, COMMAND_TIMEOUT);
    assert_eq!(output.status.code(), Some(69), "{}", output.combined());
    assert!(
        output
            .stderr
            .contains(&format!("daemon not running at {}", socket.display())),
        "{}",
        output.combined()
    );
}

#[test]
fn mailq_lists_the_queue_even_with_the_daemon_down() {
    let sink = Sink::start();
    let mut empath = start(&sink);
    let mailq = |empath: &Empath| {
        let mut command = Command::new(binary("mailq"));
        command.arg("-C").arg(empath.config_path());
        let output = run_bounded(&mut command, COMMAND_TIMEOUT);
        assert!(output.status.success(), "{}", output.combined());
        output.stdout
    };
    assert_eq!(mailq(&empath), "Mail queue is empty\n");
    empath.empathctl_ok(&["queue", "freeze"]);
    send(&empath, &["a@sink.test", "b@sink.test"], 1);
    let id = listed_ids(&empath, &[])[0].clone();
    empath.stop();

    let listing = mailq(&empath);
    assert!(listing.starts_with("-Queue ID-"), "{listing}");
    assert!(
        listing.contains(&id) && listing.contains(SENDER),
        "{listing}"
    );
    assert!(
        listing.contains("a@sink.test") && listing.contains("b@sink.test"),
        "{listing}"
    );
    assert!(listing.trim_end().ends_with("in 1 Request."), "{listing}");
}

#[test]
fn sendmail_queues_while_down_and_delivers_once_started() {
    let sink = Sink::start();
    let mut empath = start(&sink);
    empath.stop();

    let config = empath.config_path().to_owned();
    let sendmail = |args: &[&str], message: &str| {
        let mut command = Command::new(binary("sendmail"));
        command.arg("-C").arg(&config).args(args);
        command.stdin(std::process::Stdio::piped());
        let output = run_with_stdin(command, message.as_bytes());
        assert!(
            output.status.success(),
            "sendmail {args:?}: {}",
            output.combined()
        );
        output
    };
    let offline = sendmail(
        &["-f", "me@client.test", "down@sink.test"],
        "Subject: sent while down\n\nqueued in the drop directory\n.\nnot part of it\n",
    );
    assert!(
        offline.stderr.contains("not running"),
        "{}",
        offline.combined()
    );
    assert_eq!(
        std::fs::read_dir(empath.spool().join("public/maildrop"))
            .unwrap()
            .count(),
        1
    );

    empath.restart_master();
    expect_messages(&sink, 1, &empath);
    sendmail(
        &["-t", "-i"],
        "To: up@sink.test\nBcc: hidden@sink.test\nSubject: sent while up\n\n.\nline after a dot\n",
    );
    expect_messages(&sink, 2, &empath);
    empath.wait_queue_empty(TIMEOUT);

    sink.inspect(|messages| {
        let down = messages
            .iter()
            .find(|m| m.rcpt_to == ["down@sink.test"])
            .expect("the dropped message");
        let text = String::from_utf8_lossy(&down.data);
        assert!(
            text.contains("Subject: sent while down")
                && text.contains("queued in the drop directory"),
            "{text}"
        );
        assert!(
            !text.contains("not part of it"),
            "a lone dot must end the message without -i:\n{text}"
        );
        assert!(
            text.contains("Received: by ") && text.contains("from userid"),
            "{text}"
        );
        let up = messages
            .iter()
            .find(|m| m.rcpt_to.contains(&"up@sink.test".to_owned()))
            .expect("the -t message");
        assert!(
            up.rcpt_to.contains(&"hidden@sink.test".to_owned()),
            "Bcc recipient missing: {:?}",
            up.rcpt_to
        );
        let text = String::from_utf8_lossy(&up.data);
        assert!(
            !text.contains("Bcc:") && text.contains("\r\n.\r\nline after a dot"),
            "{text}"
        );
    });
    assert_eq!(
        std::fs::read_dir(empath.spool().join("public/maildrop"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn man_pages_render_without_warnings() {
    let man = Path::new(env!("CARGO_MANIFEST_DIR")).join("../man");
    let Ok(_) = Command::new("man").arg("--version").output() else {
        panic!("man is not installed (apt-get install man-db)");
    };
    for entry in std::fs::read_dir(&man).unwrap() {
        let page = entry.unwrap().path();
        let mut command = Command::new("man");
        command
            .args(["--warnings", "-l"])
            .arg(&page)
            .env("MANWIDTH", "80");
        let output = run_bounded(&mut command, COMMAND_TIMEOUT);
        assert!(
            output.status.success(),
            "{}: {}",
            page.display(),
            output.combined()
        );
        assert!(
            output.stderr.trim().is_empty(),
            "{} has warnings:\n{}",
            page.display(),
            output.stderr
        );
        assert!(
            output.stdout.contains("NAME"),
            "{} rendered nothing",
            page.display()
        );
    }
}

fn sha256_hex(text: &str) -> String {
    let mut command = Command::new("sha256sum");
    command.stdin(std::process::Stdio::piped());
    let output = run_with_stdin(command, text.as_bytes());
    output
        .stdout
        .split_whitespace()
        .next()
        .expect("sha256sum output")
        .to_owned()
}
