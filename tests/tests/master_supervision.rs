//! Supervision: a daemon that dies is restarted with backoff; one that
//! keeps dying before it has served anything is throttled, and the log
//! says why; once it serves, its deaths no longer count as a crash loop.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use empath_tests::{DAEMONS, Empath, SMTPD, Sink, SmtpSend, TestConfig, mail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const KILLS: usize = 10;
const THROTTLE_SECS: u64 = 4;
const RESTART_TIMEOUT: Duration = Duration::from_secs(15);
const THROTTLE_LINE: &str = "throttling empath-smtpd: 10 consecutive crashes before serving";

fn throttle_lines(empath: &Empath) -> usize {
    empath.log().matches("throttling empath-smtpd:").count()
}

#[test]
fn a_daemon_killed_ten_times_before_serving_is_restarted_then_throttled() {
    let empath = Empath::start(TestConfig::new().section(
        "supervisor",
        &format!(
            "(restart_delay_ms: 50, max_restart_delay_secs: 1, stable_after_secs: 60, \
             throttle_after_crashes: {KILLS}, throttle_secs: {THROTTLE_SECS})"
        ),
    ));
    // Kills 1..9: each is followed by a prompt restart.
    for kill in 1..KILLS {
        let killed = empath.kill9_child(SMTPD);
        empath.wait_restarted(SMTPD, &killed, RESTART_TIMEOUT);
        assert_eq!(
            throttle_lines(&empath),
            0,
            "throttled after only {kill} kills\n{}",
            empath.log_tail()
        );
    }
    // Kill 10: throttled, with the reason in the log.
    let killed = empath.kill9_child(SMTPD);
    let killed_at = Instant::now();
    empath.wait_until("the throttling log line", RESTART_TIMEOUT, || {
        if empath.log().contains(THROTTLE_LINE) {
            Ok(())
        } else {
            Err(format!("no {THROTTLE_LINE:?} yet"))
        }
    });
    // Throttled: no smtpd for a while (the restart delay would be 1 s).
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        empath.child_pids(SMTPD).is_empty(),
        "smtpd was restarted within 2 s despite throttling\n{}",
        empath.log_tail()
    );
    let restarted = empath.wait_restarted(SMTPD, &killed, RESTART_TIMEOUT);
    let waited = killed_at.elapsed();
    assert!(
        waited >= Duration::from_secs(THROTTLE_SECS - 1),
        "restarted after {waited:?}, before the throttle delay of {THROTTLE_SECS} s"
    );

    // Once smtpd has served a connection, a death is not a crash loop:
    // it is restarted at once, without a new throttling line.
    empath.wait_until("smtpd to accept a connection", RESTART_TIMEOUT, || {
        TcpStream::connect_timeout(&empath.smtp_addr(), Duration::from_secs(5))
            .map_err(|e| e.to_string())
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(empath.child_pids(SMTPD), vec![restarted]);
    let killed = empath.kill9_child(SMTPD);
    let again = Instant::now();
    empath.wait_restarted(SMTPD, &killed, RESTART_TIMEOUT);
    assert!(
        again.elapsed() < Duration::from_secs(THROTTLE_SECS - 1),
        "a daemon that had served was throttled ({:?})\n{}",
        again.elapsed(),
        empath.log_tail()
    );
    assert_eq!(throttle_lines(&empath), 1, "{}", empath.log_tail());
}

fn send_one(empath: &Empath, name: &str) {
    let messages = mail::generate(1, "sender@client.test", &["user@sink.test"]);
    let outbox = mail::write_eml_files(&empath.dir().join(name), &messages);
    SmtpSend::new(
        empath.smtp_addr(),
        "sender@client.test",
        &["user@sink.test"],
        &outbox,
    )
    .run()
    .assert_all_accepted(1, || empath.log_tail());
}

fn daemon_pids(empath: &Empath) -> Vec<i32> {
    DAEMONS
        .iter()
        .filter_map(|name| empath.child_pid(name))
        .collect()
}

fn sighup(empath: &Empath) {
    kill(Pid::from_raw(empath.master_pid()), Signal::SIGHUP).expect("SIGHUP the master");
}

#[test]
fn sighup_applies_a_valid_config_with_a_rolling_restart_and_ignores_an_invalid_one() {
    let first = Sink::start();
    let second = Sink::start();
    let config = |sink: &Sink| TestConfig::new().mx_override("sink.test", sink.addr());
    let empath = Empath::start(config(&first));
    send_one(&empath, "outbox-1");
    if let Err(got) = first.wait_for_messages(1, RESTART_TIMEOUT) {
        panic!("{got} messages at the first sink\n{}", empath.log_tail());
    }
    let listeners = std::fs::read_to_string(empath.spool().join("listeners")).expect("listeners");
    empath.wait_until("every daemon", RESTART_TIMEOUT, || {
        let pids = daemon_pids(&empath);
        if pids.len() == DAEMONS.len() {
            Ok(())
        } else {
            Err(format!("{pids:?}"))
        }
    });
    let before = daemon_pids(&empath);

    // An invalid config: logged, and nothing restarts.
    std::fs::write(empath.config_path(), "Empath(bogus: 1)").expect("write a broken config");
    sighup(&empath);
    empath.wait_until("the reload to be refused", RESTART_TIMEOUT, || {
        if empath
            .log()
            .contains("config reload failed; keeping the running config")
        {
            Ok(())
        } else {
            Err("not yet".to_owned())
        }
    });
    assert_eq!(
        daemon_pids(&empath),
        before,
        "daemons restarted for an invalid config"
    );

    // A valid one that routes sink.test elsewhere: every daemon is
    // replaced, the listeners stay, and mail follows the new route.
    config(&second).write(empath.config_path(), empath.spool());
    sighup(&empath);
    empath.wait_until("the reload", RESTART_TIMEOUT, || {
        if empath
            .log()
            .contains("config reloaded; every daemon runs with it")
        {
            Ok(())
        } else {
            Err("not yet".to_owned())
        }
    });
    let after = empath.wait_until("new daemons", RESTART_TIMEOUT, || {
        let pids = daemon_pids(&empath);
        if pids.len() == DAEMONS.len() {
            Ok(pids)
        } else {
            Err(format!("{pids:?}"))
        }
    });
    for pid in &after {
        assert!(
            !before.contains(pid),
            "{pid} was not restarted: {before:?} -> {after:?}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(empath.spool().join("listeners")).expect("listeners"),
        listeners
    );
    send_one(&empath, "outbox-2");
    if let Err(got) = second.wait_for_messages(1, RESTART_TIMEOUT) {
        panic!("{got} messages at the second sink\n{}", empath.log_tail());
    }
    assert_eq!(first.message_count(), 1);
    empath.wait_queue_empty(RESTART_TIMEOUT);
}

/// A SIGHUP restarts every daemon, one at a time, while mail flows: not a
/// single SMTP transaction may fail.
#[test]
fn sighup_during_a_2000_message_load_refuses_nothing() {
    let sink = Sink::start();
    let empath = Empath::start(TestConfig::new().mx_override("sink.test", sink.addr()));
    let messages = mail::generate(2000, "sender@client.test", &["user@sink.test"]);
    let outbox = mail::write_eml_files(&empath.dir().join("outbox"), &messages);
    let client = SmtpSend::new(
        empath.smtp_addr(),
        "sender@client.test",
        &["user@sink.test"],
        &outbox,
    )
    .threads(8)
    .timeout(Duration::from_secs(600));
    let sending = std::thread::spawn(move || client.run());
    for reloads in 1..=2 {
        empath.wait_until("the load to be under way", Duration::from_secs(120), || {
            let accepted = sink.message_count() + empath.queue_counts().data;
            if accepted >= 400 * reloads {
                Ok(())
            } else {
                Err(format!("{accepted} accepted"))
            }
        });
        sighup(&empath);
        empath.wait_until("the reload", Duration::from_secs(120), || {
            let done = empath
                .log()
                .matches("config reloaded; every daemon runs with it")
                .count();
            if done >= reloads {
                Ok(())
            } else {
                Err(format!("{done} reloads done"))
            }
        });
    }
    let report = sending.join().expect("the client thread");
    let failures = report.failures();
    assert!(
        failures.is_empty(),
        "{} transactions failed during the reloads, e.g. {:?}\n{}",
        failures.len(),
        failures.first(),
        empath.log_tail()
    );
    report.assert_all_accepted(messages.len(), || empath.log_tail());
    empath.wait_queue_empty(Duration::from_secs(240));
}
