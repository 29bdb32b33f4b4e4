//! The commands as an operator and cron use them: sendmail's modes
//! (`-bs`, `-bp`, `-q`, `-bv`, `-N`), empathctl's errors and exit
//! statuses, and config files whose relative paths work from any
//! directory.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::process::Command;
use std::time::Duration;

use empath_tests::run::run_with_stdin;
use empath_tests::{Empath, Reply, Sink, SinkPolicy, TestConfig, binary, run_bounded};

const TIMEOUT: Duration = Duration::from_secs(60);

fn sendmail(empath: &Empath, args: &[&str]) -> Command {
    let mut command = Command::new(binary("sendmail"));
    command.arg("-C").arg(empath.config_path()).args(args);
    command
}

#[test]
fn sendmail_bs_is_an_smtp_session_on_stdin_that_submits_the_mail() {
    let sink = Sink::start();
    let empath = Empath::start(TestConfig::new().mx_override("sink.test", sink.addr()));
    let session = b"EHLO cron.local\r\n\
        MAIL FROM:<cron@mx.empath.test>\r\n\
        RCPT TO:<admin@sink.test>\r\n\
        DATA\r\n\
        Subject: cron output\r\n\
        \r\n\
        ..a line that began with a dot\r\n\
        .\r\n\
        QUIT\r\n";
    let output = run_with_stdin(sendmail(&empath, &["-bs"]), session);
    assert!(output.status.success(), "{output:?}");
    // The last line of each reply (EHLO's has several).
    let replies: Vec<&str> = output
        .stdout
        .lines()
        .filter(|l| l.as_bytes().get(3) != Some(&b'-'))
        .map(|l| &l[..3])
        .collect();
    assert_eq!(
        replies,
        ["220", "250", "250", "250", "354", "250", "221"],
        "{}",
        output.stdout
    );
    assert!(output.stdout.contains("queued as"), "{}", output.stdout);
    let arrived = sink.wait_for_messages(1, TIMEOUT);
    assert!(arrived.is_ok(), "{}", empath.log_tail());
    let message = &sink.messages()[0];
    assert_eq!(message.mail_from, "cron@mx.empath.test");
    assert_eq!(message.rcpt_to, ["admin@sink.test"]);
    let data = String::from_utf8_lossy(&message.data);
    assert!(
        data.contains("\r\n.a line that began with a dot\r\n"),
        "{data}"
    );
    assert!(data.contains("Subject: cron output"), "{data}");
}

#[test]
fn sendmail_bp_lists_the_queue_and_q_delivers_deferred_mail_now() {
    let sink = Sink::with_policy(
        SinkPolicy::accept_all().fail_first_data(1, Reply::new(451, "4.3.0 Not now")),
    );
    let empath = Empath::start(
        TestConfig::new()
            .mx_override("sink.test", sink.addr())
            // Without -q, the retry would wait an hour.
            .delivery("base_retry_delay_secs", "3600")
            .delivery("max_retry_delay_secs", "3600"),
    );
    let sent = empath.sendmail(&["user@sink.test"], "Subject: later\n\nbody\n");
    assert!(sent.status.success(), "{sent:?}");
    empath.wait_until("the message to be deferred", TIMEOUT, || {
        if empath.queue_counts().deferred == 1 {
            Ok(())
        } else {
            Err(format!("{:?}", empath.queue_counts()))
        }
    });
    let listing = run_bounded(&mut sendmail(&empath, &["-bp"]), TIMEOUT);
    assert!(listing.status.success(), "{listing:?}");
    assert!(
        listing.stdout.contains("user@sink.test"),
        "{}",
        listing.stdout
    );
    assert!(listing.stdout.contains("Not now"), "{}", listing.stdout);

    let flush = run_bounded(&mut sendmail(&empath, &["-q"]), TIMEOUT);
    assert!(flush.status.success(), "{flush:?}");
    assert!(
        sink.wait_for_messages(1, TIMEOUT).is_ok(),
        "{}",
        empath.log_tail()
    );
    empath.wait_queue_empty(TIMEOUT);
    let listing = run_bounded(&mut sendmail(&empath, &["-bp"]), TIMEOUT);
    assert!(listing.stdout.contains("empty"), "{}", listing.stdout);
    // -qINTERVAL (for a sendmail daemon) is accepted and does nothing.
    let interval = run_bounded(&mut sendmail(&empath, &["-q30m"]), TIMEOUT);
    assert!(interval.status.success(), "{interval:?}");
}

#[test]
fn sendmail_bv_verifies_local_users_aliases_and_routes() {
    let sink = Sink::start();
    let empath = Empath::start(TestConfig::new().mx_override("sink.test", sink.addr()));
    let good = run_bounded(
        &mut sendmail(
            &empath,
            &["-bv", "root@localhost", "postmaster", "a@sink.test"],
        ),
        TIMEOUT,
    );
    assert!(good.status.success(), "{good:?}");
    assert!(
        good.stdout
            .contains("root@localhost... deliverable: mailer local, user root"),
        "{}",
        good.stdout
    );
    assert!(
        good.stdout
            .contains("postmaster@mx.empath.test... deliverable: mailer local"),
        "{}",
        good.stdout
    );
    assert!(
        good.stdout.contains(&format!(
            "a@sink.test... deliverable: mailer smtp, host {}",
            sink.addr()
        )),
        "{}",
        good.stdout
    );
    let bad = run_bounded(
        &mut sendmail(&empath, &["-bv", "no-such-user-here@localhost"]),
        TIMEOUT,
    );
    assert_eq!(bad.status.code(), Some(67), "{bad:?}");
    assert!(bad.stdout.contains("User unknown"), "{}", bad.stdout);
    // Nothing was sent.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sink.message_count(), 0);
    assert!(empath.queue_counts().is_empty());
}

#[test]
fn sendmail_n_success_asks_for_a_delivery_report() {
    let sink = Sink::start();
    let empath = Empath::start(TestConfig::new().mx_override("sink.test", sink.addr()));
    // NOTIFY travels through cleanup's submission socket (the drop
    // directory, used while Empath is stopped, keeps addresses only).
    let submit = empath.spool().join("public/submit.sock");
    empath.wait_until("cleanup's submission socket", TIMEOUT, || {
        if submit.exists() {
            Ok(())
        } else {
            Err("not yet".to_owned())
        }
    });
    let sent = empath.sendmail(
        &[
            "-f",
            "sender@sink.test",
            "-N",
            "success,failure",
            "user@sink.test",
        ],
        "Subject: tell me\n\nbody\n",
    );
    assert!(sent.status.success(), "{sent:?}");
    assert!(
        sink.wait_for_messages(2, TIMEOUT).is_ok(),
        "{}",
        empath.log_tail()
    );
    let report = sink
        .messages()
        .into_iter()
        .find(|m| m.rcpt_to == ["sender@sink.test"])
        .expect("the delivery report to the sender");
    let text = String::from_utf8_lossy(&report.data);
    assert!(text.contains("Action: relayed"), "{text}");
    assert_eq!(report.mail_from, "");
    let refused = empath.sendmail(&["-N", "sometimes", "user@sink.test"], "x\n");
    assert_eq!(refused.status.code(), Some(64), "{refused:?}");
}

#[test]
fn empathctl_refuses_a_config_it_cannot_read_and_usage_errors_exit_64() {
    let dir = empath_tests::test_dir();
    let missing = run_bounded(
        Command::new(binary("empathctl")).args(["--config", "/nonexistent.ron", "queue", "stats"]),
        TIMEOUT,
    );
    assert_eq!(missing.status.code(), Some(78), "{missing:?}");
    assert!(missing.stderr.contains("/nonexistent.ron"), "{missing:?}");
    assert!(!missing.stderr.contains("not running"), "{missing:?}");

    let typo = dir.path().join("typo.ron");
    std::fs::write(
        &typo,
        "Empath(\n  smtp_controller: (listeners: [{ socket: \"127.0.0.1:0\" }]),\n  spool: (path: \"spool\"),\n  contrl_socket: \"x\",\n)\n",
    )
    .expect("write");
    let typo_run = run_bounded(
        Command::new(binary("empathctl"))
            .arg("--config")
            .arg(&typo)
            .args(["queue", "stats"]),
        TIMEOUT,
    );
    assert_eq!(typo_run.status.code(), Some(78), "{typo_run:?}");
    assert!(
        typo_run.stderr.contains("typo.ron:4") && typo_run.stderr.contains("contrl_socket"),
        "{typo_run:?}"
    );

    for args in [&["queue", "frobnicate"][..], &["--no-such-flag"], &[]] {
        let usage = run_bounded(Command::new(binary("empathctl")).args(args), TIMEOUT);
        assert_eq!(
            usage.status.code(),
            Some(64),
            "empathctl {args:?}: {usage:?}"
        );
    }
    let help = run_bounded(Command::new(binary("empathctl")).arg("--help"), TIMEOUT);
    assert!(help.status.success(), "{help:?}");
}

#[test]
fn relative_paths_in_a_config_work_from_any_directory() {
    let sink = Sink::start();
    let empath = Empath::start(TestConfig::new().mx_override("sink.test", sink.addr()));
    // The same instance, described by a config in etc/ that names the
    // spool relative to itself.
    let etc = empath.dir().join("etc");
    std::fs::create_dir_all(&etc).expect("etc/");
    let relative = etc.join("relative.ron");
    std::fs::write(
        &relative,
        "Empath(\n  smtp_controller: (listeners: [{ socket: \"127.0.0.1:0\" }]),\n  spool: (path: \"../spool\"),\n)\n",
    )
    .expect("write");
    let sent = empath.sendmail(&["user@sink.test"], "Subject: x\n\nbody\n");
    assert!(sent.status.success(), "{sent:?}");
    assert!(sink.wait_for_messages(1, TIMEOUT).is_ok());
    for (program, args) in [("empathctl", &["queue", "stats"][..]), ("mailq", &[][..])] {
        let mut command = Command::new(binary(program));
        command
            .arg(if program == "mailq" { "-C" } else { "--config" })
            .arg(&relative)
            .args(args)
            // Somewhere else entirely.
            .current_dir("/");
        let output = run_bounded(&mut command, TIMEOUT);
        assert!(output.status.success(), "{program}: {output:?}");
    }
}
