//! The logs, read by the tools operators use on them: real mail goes
//! through Empath (swaks and sendmail in, a sink out, one recipient
//! deferred, one bounced, one relay attempt refused, two failed AUTHs),
//! then
//!
//! - Debian's `pflogsumm` reads the syslog log and counts what happened;
//! - `fail2ban-regex` tries the shipped AUTH filter on it;
//! - `jq` runs the seeds' log queries (EMPATH_GUIDE.md) on the JSON log;
//! - `LOG_LEVEL` (the seeds' legacy variable) sets the level.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use empath_tests::smtpd::bcrypt_hash;
use empath_tests::syslog::SyslogSocket;
use empath_tests::{Empath, Reply, RunOutput, Sink, SinkPolicy, TestConfig, run_bounded};

const TIMEOUT: Duration = Duration::from_secs(90);
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);
/// Four recipients in three messages are delivered: the first, the two of
/// the second, and the one sendmail submits.
const DELIVERED: usize = 4;

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn config(sink: &Sink) -> TestConfig {
    TestConfig::new()
        .mx_override("sink.test", sink.addr())
        .mx_override("defer.test", sink.addr())
        .section(
            "smtpd",
            &format!(
                r#"(mynetworks: [], relay_domains: ["sink.test", "defer.test"],
                   auth: (allow_insecure: true, users: {{"admin": "{}"}}))"#,
                bcrypt_hash("secret")
            ),
        )
        .section("dsn", "(enabled: false)")
        // The deferred recipient is tried every few seconds meanwhile.
        .delivery("base_retry_delay_secs", "2")
        .delivery("max_retry_delay_secs", "4")
}

fn sink() -> Sink {
    Sink::with_policy(
        SinkPolicy::accept_all()
            .reply_to_rcpt("later@defer.test", Reply::new(451, "4.3.0 Try again later"))
            .reply_to_rcpt(
                "nobody@sink.test",
                Reply::new(550, "5.1.1 No such user here"),
            ),
    )
}

fn swaks(empath: &Empath, to: &str, extra: &[&str]) -> RunOutput {
    let addr = empath.smtp_addr();
    let mut command = Command::new("swaks");
    command
        .args(["--server", &addr.ip().to_string()])
        .args(["--port", &addr.port().to_string()])
        .args(["--helo", "client.test", "--from", "alice@client.test"])
        .args(["--to", to, "--timeout", "30"])
        .args(extra);
    run_bounded(&mut command, TOOL_TIMEOUT)
}

/// The mail of every test here: what each log must then show.
fn send_the_mail(empath: &Empath) {
    for to in [
        "ok1@sink.test",
        "ok2@sink.test,ok3@sink.test",
        "later@defer.test",
        "nobody@sink.test",
    ] {
        let sent = swaks(empath, to, &["--header", "Message-Id: <m-1@client.test>"]);
        assert!(sent.status.success(), "swaks to {to}: {sent:?}");
    }
    // Not ours, not from mynetworks: 554 at RCPT.
    let refused = swaks(empath, "someone@elsewhere.test", &[]);
    assert!(refused.stdout.contains("<** 554"), "{refused:?}");
    for _ in 0..2 {
        let failed = swaks(
            empath,
            "ok1@sink.test",
            &[
                "--auth",
                "PLAIN",
                "--auth-user",
                "admin",
                "--auth-password",
                "wrong",
            ],
        );
        assert!(failed.stdout.contains("<** 535"), "{failed:?}");
    }
    let submitted = empath.sendmail(
        &["ok4@sink.test"],
        "From: alice@client.test\nSubject: from cron\n\nhello\n",
    );
    assert!(submitted.status.success(), "{submitted:?}");
}

fn count_lines(lines: &[String], needle: &str) -> usize {
    lines.iter().filter(|l| l.contains(needle)).count()
}

/// Runs a tool and returns its standard output; fails the test if it fails.
fn run_tool(command: &mut Command) -> String {
    let output = run_bounded(command, TOOL_TIMEOUT);
    assert!(output.status.success(), "{command:?}: {output:?}");
    output.stdout
}

/// pflogsumm's "Grand Totals": `      5   received` and so on.
fn grand_total(report: &str, what: &str) -> usize {
    report
        .lines()
        .find_map(|line| {
            let mut words = line.split_whitespace();
            let number = words.next()?.parse::<usize>().ok()?;
            (words.next()? == what).then_some(number)
        })
        .unwrap_or_else(|| panic!("no {what} total in the pflogsumm report:\n{report}"))
}

#[test]
fn pflogsumm_and_fail2ban_read_the_syslog_log() {
    let sink = sink();
    let dir = empath_tests::test_dir();
    let syslog = SyslogSocket::bind(&dir.path().join("log.sock"));
    let empath = Empath::start(config(&sink).log_format("syslog").raw(&format!(
        "logging: (syslog_socket: {:?})",
        syslog.path().display().to_string()
    )));
    send_the_mail(&empath);
    let lines = empath.wait_until("every outcome in the syslog log", TIMEOUT, || {
        let lines = syslog.lines();
        let (sent, deferred, bounced) = (
            count_lines(&lines, "status=sent"),
            count_lines(&lines, "status=deferred"),
            count_lines(&lines, "status=bounced"),
        );
        if sent >= DELIVERED && deferred >= 1 && bounced >= 1 {
            Ok(lines)
        } else {
            Err(format!(
                "sent {sent}, deferred {deferred}, bounced {bounced}\n{}",
                lines.join("\n")
            ))
        }
    });
    // Nothing went to stderr while syslog was there.
    let log = std::fs::read_to_string(empath.dir().join("empath.stderr")).unwrap_or_default();
    assert!(!log.contains("status=sent"), "{log}");
    // The tags, the facility (mail = 2: <22> is mail.info) and the lines
    // operators grep for.
    for tag in [
        "empath/smtpd[",
        "empath/cleanup[",
        "empath/qmgr[",
        "empath/smtp-out[",
    ] {
        assert!(lines.iter().any(|l| l.contains(tag)), "no {tag} line");
    }
    let sent = lines
        .iter()
        .find(|l| l.contains("to=<ok1@sink.test>") && l.contains("status=sent"))
        .expect("the delivery of ok1");
    assert!(sent.starts_with("<22>"), "{sent}");
    let relay = format!(
        "relay={}[{}]:{}",
        sink.addr().ip(),
        sink.addr().ip(),
        sink.addr().port()
    );
    for field in [
        relay.as_str(),
        ", delay=",
        ", delays=",
        ", dsn=2.0.0, status=sent (250",
    ] {
        assert!(sent.contains(field), "{field} missing: {sent}");
    }
    let delays = sent
        .split("delays=")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .expect("delays");
    assert_eq!(delays.split('/').count(), 4, "{sent}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains(": message-id=<m-1@client.test>")),
        "no message-id line"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("empath/qmgr[") && l.contains(", nrcpt=2 (queue active)"))
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("connect from unknown[127.0.0.1]"))
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("empath/pickup[") && l.contains(": uid="))
    );
    assert!(
        lines.iter().any(|l| l
            .contains("NOQUEUE: reject: RCPT from unknown[127.0.0.1]: 554 5.7.1")
            && l.contains("to=<someone@elsewhere.test>")),
        "no reject line"
    );

    let host = "mx";
    let file = empath.dir().join("mail.log");
    std::fs::write(&file, syslog.as_log_file(host)).expect("write mail.log");
    let report = run_tool(
        Command::new("pflogsumm")
            .arg("--syslog-name=empath")
            .arg(&file),
    );
    // swaks 4 + sendmail 1.
    assert_eq!(grand_total(&report, "received"), 5, "{report}");
    assert_eq!(grand_total(&report, "delivered"), DELIVERED, "{report}");
    assert_eq!(grand_total(&report, "deferred"), 1, "{report}");
    assert_eq!(grand_total(&report, "bounced"), 1, "{report}");
    assert_eq!(grand_total(&report, "rejected"), 1, "{report}");
    assert!(report.contains("sink.test"), "{report}");

    let filter = repo_file("etc/fail2ban/filter.d/empath-auth.conf");
    let matched = run_tool(
        Command::new("fail2ban-regex")
            .arg("--print-all-matched")
            .arg(&file)
            .arg(&filter),
    );
    assert!(
        matched.contains("Lines: ") && matched.contains(" 2 matched"),
        "fail2ban-regex should match the two failed AUTHs:\n{matched}"
    );
    assert!(matched.contains("127.0.0.1"), "{matched}");
}

/// The JSON lines of one run, through jq with `expression` (`-R`: lines
/// that are not JSON are skipped, as Loki's `| json` drops them).
fn jq(log: &Path, expression: &str) -> String {
    run_tool(
        Command::new("jq")
            .arg("-c")
            .arg("-R")
            .arg(format!("fromjson? | {expression}"))
            .arg(log),
    )
}

fn jq_lines(log: &Path, expression: &str) -> Vec<serde_json::Value> {
    jq(log, expression)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

#[test]
fn the_seeds_log_queries_find_what_they_describe() {
    let sink = sink();
    let empath = Empath::start(config(&sink).log_format("json"));
    send_the_mail(&empath);
    let log = empath.dir().join("empath.stderr");
    empath.wait_until("every outcome in the JSON log", TIMEOUT, || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let (sent, retry, failed) = (
            text.matches("Delivery successful").count(),
            text.matches("Scheduled retry").count(),
            text.matches("Delivery failed permanently").count(),
        );
        if sent >= DELIVERED && retry >= 1 && failed >= 1 {
            Ok(())
        } else {
            Err(format!("sent {sent}, retries {retry}, failed {failed}"))
        }
    });

    // {service="empath"} | json | fields.message=~"Delivery successful"
    let delivered = jq_lines(
        &log,
        r#"select(.fields.message | test("Delivery successful"))"#,
    );
    assert_eq!(delivered.len(), DELIVERED, "{delivered:?}");
    for line in &delivered {
        assert_eq!(line["level"], "INFO", "{line}");
        assert_eq!(line["fields"]["smtp_code"], 250, "{line}");
        assert_eq!(line["fields"]["component"], "delivery", "{line}");
        assert_eq!(line["fields"]["domain"], "sink.test", "{line}");
        assert!(
            line["fields"]["delivery_attempt"].as_u64() >= Some(1),
            "{line}"
        );
    }

    // {service="empath"} | json | fields.message_id="01JCXYZ123ABC": every
    // daemon that handled the message says so under the same name.
    let id = delivered[0]["fields"]["message_id"]
        .as_str()
        .expect("a message_id")
        .to_owned();
    let about = jq_lines(&log, &format!(r#"select(.fields.message_id == "{id}")"#));
    let services: BTreeSet<&str> = about.iter().filter_map(|l| l["service"].as_str()).collect();
    for service in ["smtpd", "cleanup", "qmgr", "smtp-out"] {
        assert!(
            services.contains(service),
            "{service} missing from {about:?}"
        );
    }
    assert!(
        about
            .iter()
            .any(|l| l["fields"]["message_id_header"] == "<m-1@client.test>"),
        "the Message-ID header is logged: {about:?}"
    );
    let sizes: BTreeSet<u64> = about
        .iter()
        .filter_map(|l| l["fields"]["size"].as_u64())
        .collect();
    assert_eq!(sizes.len(), 1, "one size for one message: {about:?}");

    // {service="empath"} | json | level="ERROR" | fields.domain="example.com"
    let failures = jq_lines(
        &log,
        r#"select(.level == "ERROR" and .fields.domain == "sink.test")"#,
    );
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0]["fields"]["recipient"], "nobody@sink.test");
    assert_eq!(failures[0]["fields"]["smtp_code"], 550);
    // ALERT_RUNBOOKS: level="ERROR" | fields.component="delivery"
    let delivery_errors = jq_lines(
        &log,
        r#"select(.level == "ERROR" and .fields.component == "delivery")"#,
    );
    assert_eq!(delivery_errors.len(), 1, "{delivery_errors:?}");

    // {service="empath"} | json | fields.message=~"retry"
    //   | line_format "{{.fields.domain}}: attempt {{.fields.delivery_attempt}}"
    let retries = jq_lines(&log, r#"select(.fields.message | test("retry"))"#);
    assert!(retries.len() >= 2, "{retries:?}");
    for line in &retries {
        assert_eq!(line["fields"]["domain"], "defer.test", "{line}");
        assert!(
            line["fields"]["delivery_attempt"].as_u64() >= Some(1),
            "{line}"
        );
    }
    // The deferral itself is a warning, not INFO.
    assert!(
        retries
            .iter()
            .any(|l| l["level"] == "WARN" && l["fields"]["smtp_code"] == 451),
        "{retries:?}"
    );
    // Scheduled retries say when, and the domain.
    let scheduled = jq_lines(&log, r#"select(.fields.message | test("Scheduled retry"))"#);
    assert!(!scheduled.is_empty());
    for line in &scheduled {
        let at = line["fields"]["next_retry_at"]
            .as_str()
            .expect("next_retry_at");
        assert!(at > line["timestamp"].as_str().unwrap_or(""), "{line}");
        assert!(
            line["fields"]["retry_delay_secs"].as_u64().is_some(),
            "{line}"
        );
        assert!(
            line["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("delivery deferred"))
        );
    }

    // sum by (fields_domain) (count_over_time({...} | json | fields.delivery_attempt > 0 [1h]))
    let by_domain = jq(
        &log,
        r#"select((.fields.delivery_attempt // 0) > 0) | .fields.domain // empty"#,
    );
    let domains: BTreeSet<&str> = by_domain.lines().map(|d| d.trim_matches('"')).collect();
    assert!(
        domains.contains("sink.test") && domains.contains("defer.test"),
        "{domains:?}"
    );

    // {service="empath"} | json | fields.smtp_code >= 400
    let codes: BTreeSet<u64> = jq_lines(&log, r#"select((.fields.smtp_code // 0) >= 400)"#)
        .iter()
        .filter_map(|l| l["fields"]["smtp_code"].as_u64())
        .collect();
    for code in [451, 550, 554] {
        assert!(codes.contains(&code), "{code} missing from {codes:?}");
    }

    // Every line is JSON with the fields the queries use.
    let text = std::fs::read_to_string(&log).expect("the log");
    for line in text.lines().filter(|l| !l.is_empty()) {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(value["fields"]["component"].is_string(), "{line}");
        assert!(
            value["timestamp"].is_string() && value["level"].is_string(),
            "{line}"
        );
    }
}

#[test]
fn log_level_sets_the_level_when_rust_log_does_not() {
    let sink = Sink::start();
    let quiet = Empath::start(
        TestConfig::new()
            .mx_override("sink.test", sink.addr())
            .log_format("json")
            .env("RUST_LOG", "")
            .env("LOG_LEVEL", "warn"),
    );
    let chatty = Empath::start(
        TestConfig::new()
            .mx_override("sink.test", sink.addr())
            .log_format("json")
            .env("RUST_LOG", "")
            .env("LOG_LEVEL", "debug"),
    );
    for empath in [&quiet, &chatty] {
        empath.wait_child(empath_tests::QMGR, TIMEOUT);
        empath.wait_child(empath_tests::SMTP_OUT, TIMEOUT);
    }
    let levels = |empath: &Empath| -> BTreeSet<String> {
        let log = empath.dir().join("empath.stderr");
        jq(&log, ".level").lines().map(str::to_owned).collect()
    };
    chatty.wait_until("debug lines", TIMEOUT, || {
        let found = levels(&chatty);
        if found.contains("\"DEBUG\"") {
            Ok(())
        } else {
            Err(format!("{found:?}"))
        }
    });
    let quiet_levels = levels(&quiet);
    assert!(
        !quiet_levels.contains("\"INFO\"") && !quiet_levels.contains("\"DEBUG\""),
        "LOG_LEVEL=warn: {quiet_levels:?}"
    );
}

#[test]
fn without_syslog_lines_go_to_stderr_until_it_is_back() {
    let sink = Sink::start();
    let dir = empath_tests::test_dir();
    let socket_path = dir.path().join("late.sock");
    let empath = Empath::start(
        TestConfig::new()
            .mx_override("sink.test", sink.addr())
            .log_format("syslog")
            .raw(&format!(
                "logging: (syslog_socket: {:?})",
                socket_path.display().to_string()
            )),
    );
    let stderr = empath.dir().join("empath.stderr");
    let first = swaks(&empath, "one@sink.test", &[]);
    assert!(first.status.success(), "{first:?}");
    // Nothing is lost: the delivery is on stderr, as a syslog file has it.
    let log = empath.wait_until("the delivery on stderr", TIMEOUT, || {
        let log = std::fs::read_to_string(&stderr).unwrap_or_default();
        if log.contains("to=<one@sink.test>") && log.contains("status=sent") {
            Ok(log)
        } else {
            Err(log)
        }
    });
    assert!(
        log.contains("cannot reach syslog"),
        "one warning says why: {log}"
    );
    let line = log
        .lines()
        .find(|l| l.contains("to=<one@sink.test>"))
        .expect("the line");
    assert!(line.contains(" empath/smtp-out["), "{line}");
    assert!(!line.starts_with('<'), "no priority on stderr: {line}");

    // syslog starts: the daemons find it again.
    let syslog = SyslogSocket::bind(&socket_path);
    std::thread::sleep(Duration::from_millis(1500));
    let second = swaks(&empath, "two@sink.test", &[]);
    assert!(second.status.success(), "{second:?}");
    empath.wait_until("the delivery in syslog", TIMEOUT, || {
        if syslog
            .lines()
            .iter()
            .any(|l| l.contains("to=<two@sink.test>") && l.contains("status=sent"))
        {
            Ok(())
        } else {
            Err(syslog.lines().join("\n"))
        }
    });
}
