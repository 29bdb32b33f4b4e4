//! `/health/ready` as a load balancer needs it: not ready (503) from the
//! moment a stop begins, while the stop still finishes the work in
//! flight, and not ready while the spool has no space left. A second
//! SIGTERM stops everything at once.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::path::Path;
use std::time::{Duration, Instant};

use empath_tests::reliability::{TmpfsMount, fill_filesystem};
use empath_tests::smtpd::RawSmtp;
use empath_tests::{Empath, TestConfig, procfs};
use nix::sys::signal::Signal;

const TIMEOUT: Duration = Duration::from_secs(30);

fn wait_ready(empath: &Empath, ready: bool) -> serde_json::Value {
    let want = if ready { 200 } else { 503 };
    empath.wait_until(&format!("/health/ready to answer {want}"), TIMEOUT, || {
        let (status, json) = empath.readiness();
        if status == want {
            Ok(json)
        } else {
            Err(format!("{status}: {json}"))
        }
    })
}

#[test]
fn readiness_fails_as_soon_as_a_stop_begins_and_a_second_sigterm_stops_at_once() {
    let mut empath = Empath::start(
        TestConfig::new()
            .with_health()
            .section("shutdown_timeout_secs", "60"),
    );
    wait_ready(&empath, true);

    // A message half sent: smtpd finishes it before it stops, so the
    // graceful stop takes as long as the client (up to 60 s).
    let mut client = RawSmtp::connect(empath.smtp_addr(), TIMEOUT).expect("connect");
    assert!(client.reply().expect("greeting").starts_with("220"));
    for (line, code) in [
        ("EHLO slow.client.test\r\n", "250"),
        ("MAIL FROM:<slow@client.test>\r\n", "250"),
        ("RCPT TO:<postmaster@mx.empath.test>\r\n", "250"),
        ("DATA\r\n", "354"),
    ] {
        client.send(line.as_bytes()).expect("send");
        let reply = client.reply().expect("reply");
        assert!(reply.starts_with(code), "{line:?}: {reply}");
    }
    client
        .send(b"Subject: never finished\r\n\r\nstill typing")
        .expect("send");

    let daemons = procfs::children_of(empath.master_pid());
    empath.signal_master(Signal::SIGTERM);
    let stop_began = Instant::now();
    let json = wait_ready(&empath, false);
    let flipped = stop_began.elapsed();
    println!("not ready {flipped:?} after SIGTERM: {json}");
    assert!(flipped < Duration::from_secs(5), "{flipped:?}");
    assert_eq!(json["ready"], false);
    assert_eq!(json["smtp_ready"], false, "{json}");
    assert_eq!(json["alive"], true, "{json}");
    assert_eq!(
        json.as_object().map(|fields| fields.len()),
        Some(8),
        "the seeds' eight fields: {json}"
    );
    assert_eq!(
        empath_tests::master::http_get(empath.health_addr(), "/health/live").0,
        200
    );
    // Still stopping: the half-sent message holds smtpd.
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        empath.master_running(),
        "the master stopped before the session ended\n{}",
        empath.log_tail()
    );
    assert_eq!(empath.readiness().0, 503);

    // The second SIGTERM: no more waiting.
    empath.signal_master(Signal::SIGTERM);
    let forced = Instant::now();
    let status = empath
        .wait_master_exited(Duration::from_secs(5))
        .unwrap_or_else(|| {
            panic!(
                "still running 5 s after the second SIGTERM\n{}",
                empath.log_tail()
            )
        });
    let took = forced.elapsed();
    println!("exited {took:?} after the second SIGTERM ({status})");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert!(
        empath
            .log()
            .contains("second stop signal: killing every daemon now"),
        "{}",
        empath.log_tail()
    );
    empath_tests::poll(Duration::from_secs(5), || {
        let running: Vec<String> = daemons
            .iter()
            .filter(|d| procfs::still_running(d))
            .map(|d| format!("{} ({})", d.comm, d.pid))
            .collect();
        if running.is_empty() {
            Ok(())
        } else {
            Err(format!("{running:?}"))
        }
    })
    .unwrap_or_else(|running| panic!("daemons outlived the master: {running}"));
    assert!(client.closed(), "the half-sent session is cut");
}

#[test]
fn readiness_fails_while_the_spool_is_full() {
    let mut mount_error = None;
    let mut mount = None;
    // The mount outlives the master: it is declared first, dropped last.
    let mut empath =
        Empath::start_prepared(
            TestConfig::new().with_health(),
            |dir: &Path| match TmpfsMount::mount(&dir.join("spool"), 16 * 1024) {
                Ok(m) => mount = Some(m),
                Err(e) => mount_error = Some(e),
            },
        );
    let Some(mount) = mount else {
        println!("SKIPPED: cannot mount a tmpfs for the spool: {mount_error:?}");
        return;
    };
    let json = wait_ready(&empath, true);
    assert_eq!(json["spool_ready"], true, "{json}");

    let filler = mount.path().join("filler");
    let filled = fill_filesystem(&filler);
    let json = wait_ready(&empath, false);
    println!("spool full after {filled} bytes: {json}");
    assert_eq!(json["spool_ready"], false, "{json}");
    assert_eq!(json["smtp_ready"], true, "{json}");
    assert_eq!(json["delivery_ready"], true, "{json}");

    std::fs::remove_file(&filler).expect("remove the filler");
    let json = wait_ready(&empath, true);
    assert_eq!(json["spool_ready"], true, "{json}");

    empath.stop();
    drop(mount);
}
