//! The queue listing: `mailq` works for any local user through
//! empath-showq, as Postfix's mailq does through showq; showq's public
//! socket survives bad input; and listing a big queue (100,000 messages)
//! does not delay the delivery of new mail, because no listing runs in
//! qmgr's scheduling loop.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use empath_common::protocol;
use empath_common::queue::Queue;
use empath_tests::nobody::{as_nobody, binary_for_nobody, setpriv_available};
use empath_tests::reliability::TmpfsMount;
use empath_tests::smtpd::RawSmtp;
use empath_tests::{Empath, Sink, SmtpSend, TestConfig, binary, mail, run_bounded};

const SENDER: &str = "lister@client.test";
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
fn queued_ids(empath: &Empath) -> Vec<String> {
    let text = empath.empathctl_ok(&["--json", "queue", "list"]);
    let value: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    value["QueueList"]
        .as_array()
        .expect("a queue list")
        .iter()
        .map(|e| e["id"].as_str().expect("id").to_owned())
        .collect()
}

#[test]
fn mailq_works_for_an_ordinary_user_through_showq() {
    assert!(
        setpriv_available(),
        "setpriv (util-linux) is needed to run mailq as nobody"
    );
    let sink = Sink::start();
    let mut empath = Empath::start(TestConfig::new().mx_override("sink.test", sink.addr()));
    empath.empathctl_ok(&["queue", "freeze"]);
    let messages = mail::generate(2, SENDER, &["a@sink.test", "b@sink.test"]);
    let outbox = mail::write_eml_files(&empath.dir().join("outbox"), &messages);
    SmtpSend::new(
        empath.smtp_addr(),
        SENDER,
        &["a@sink.test", "b@sink.test"],
        &outbox,
    )
    .run()
    .assert_all_accepted(2, || empath.log_tail());
    let ids = queued_ids(&empath);
    assert_eq!(ids.len(), 2);

    let mailq = binary_for_nobody("mailq", empath.dir());
    let nobody_mailq = |empath: &Empath| {
        let mut command = as_nobody(&mailq);
        command.arg("-C").arg(empath.config_path());
        run_bounded(&mut command, COMMAND_TIMEOUT)
    };
    // nobody cannot read the queue directory itself...
    let mut ls = as_nobody(Path::new("ls"));
    ls.arg(empath.spool().join("incoming"));
    let ls = run_bounded(&mut ls, COMMAND_TIMEOUT);
    assert!(
        !ls.status.success(),
        "nobody can list incoming/: {}",
        ls.combined()
    );

    // ...so this listing comes from showq.
    let output = nobody_mailq(&empath);
    assert!(output.status.success(), "{}", output.combined());
    let listing = output.stdout;
    println!("{listing}");
    assert!(listing.starts_with("-Queue ID-"), "{listing}");
    for expected in ids
        .iter()
        .map(String::as_str)
        .chain([SENDER, "a@sink.test", "b@sink.test"])
    {
        assert!(listing.contains(expected), "{expected} missing:\n{listing}");
    }
    assert!(listing.trim_end().ends_with("in 2 Requests."), "{listing}");

    // With the daemons down, nobody gets a clear error, not a listing of
    // nothing; root still reads the directory (control.rs tests that).
    empath.stop();
    let output = nobody_mailq(&empath);
    assert_eq!(output.status.code(), Some(69), "{}", output.combined());
    assert!(
        output.stderr.contains("empath-showq is not running")
            && output.stderr.contains("Permission denied"),
        "{}",
        output.combined()
    );
}

#[test]
fn showq_refuses_bad_requests_and_keeps_serving() {
    let sink = Sink::start();
    let empath = Empath::start(TestConfig::new().mx_override("sink.test", sink.addr()));
    let socket = Queue::new(empath.spool()).public_socket(protocol::SHOWQ);
    empath.wait_until("showq to listen", COMMAND_TIMEOUT, || {
        socket
            .exists()
            .then_some(())
            .ok_or_else(|| "not yet".to_owned())
    });
    let mode = std::fs::metadata(&socket)
        .expect("showq socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o666, "anyone may connect");
    // A 4 GiB frame announced, garbage, and a client that never asks.
    for bytes in [&u32::MAX.to_be_bytes()[..], b"\x00\x00\x00\x03abc", b""] {
        let mut stream = UnixStream::connect(&socket).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(40)))
            .expect("timeout");
        stream.write_all(bytes).expect("write");
        if bytes.is_empty() {
            continue;
        }
        let mut rest = Vec::new();
        // showq hangs up without an answer (or with nothing usable).
        let _ = stream.read_to_end(&mut rest);
        assert!(rest.len() < 64, "{rest:?}");
    }
    let mut command = Command::new(binary("mailq"));
    command.arg("-C").arg(empath.config_path());
    let output = run_bounded(&mut command, COMMAND_TIMEOUT);
    assert!(output.status.success(), "{}", output.combined());
    assert_eq!(output.stdout, "Mail queue is empty\n");
    assert!(
        empath.log().contains("showq"),
        "showq logged nothing:\n{}",
        empath.log_tail()
    );
}

/// Sends one message over SMTP and returns how long it took from the 250
/// to its arrival at the sink.
fn delivery_latency(empath: &Empath, sink: &Sink, n: usize) -> Duration {
    let before = sink.message_count();
    let mut smtp = RawSmtp::connect(empath.smtp_addr(), Duration::from_secs(30)).expect("connect");
    let expect = |smtp: &mut RawSmtp, line: &[u8], code: &str| {
        if !line.is_empty() {
            smtp.send(line).expect("send");
        }
        let reply = smtp.reply().expect("reply");
        assert!(reply.starts_with(code), "{reply}");
    };
    expect(&mut smtp, b"", "220");
    expect(&mut smtp, b"EHLO client.test\r\n", "250");
    expect(
        &mut smtp,
        format!("MAIL FROM:<{SENDER}>\r\n").as_bytes(),
        "250",
    );
    expect(&mut smtp, b"RCPT TO:<now@sink.test>\r\n", "250");
    expect(&mut smtp, b"DATA\r\n", "354");
    let body = format!("Subject: latency {n}\r\n\r\nnew mail while the queue is listed\r\n.\r\n");
    expect(&mut smtp, body.as_bytes(), "250");
    let accepted = Instant::now();
    let _ = smtp.send(b"QUIT\r\n");
    let deadline = accepted + Duration::from_secs(60);
    while sink.message_count() <= before {
        assert!(
            Instant::now() < deadline,
            "message {n} not delivered within 60 s"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    sink.arrival_times()[before].saturating_duration_since(accepted)
}

/// Pause between two measured messages, so that each starts from rest.
const BETWEEN: Duration = Duration::from_millis(100);

fn latencies(empath: &Empath, sink: &Sink, count: usize, first: usize) -> Vec<Duration> {
    let mut all: Vec<Duration> = (first..first + count)
        .map(|n| {
            std::thread::sleep(BETWEEN);
            delivery_latency(empath, sink, n)
        })
        .collect();
    all.sort();
    all
}

fn median(sorted: &[Duration]) -> Duration {
    sorted[sorted.len() / 2]
}

/// Runs `command` over and over until `stop`, counting completed runs.
fn keep_running(
    mut make: impl FnMut() -> Command + Send + 'static,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    check: impl Fn(&str) + Send + 'static,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            let output = make()
                .stderr(Stdio::piped())
                .stdout(Stdio::piped())
                .output()
                .expect("run a lister");
            assert!(output.status.success(), "{output:?}");
            check(&String::from_utf8_lossy(&output.stdout));
            done.fetch_add(1, Ordering::SeqCst);
        }
    })
}

const BIG_QUEUE: u64 = 100_000;
/// 100,000 content files of about 1.5 KiB take a 4 KiB page each.
const SPOOL_KIB: u64 = 1024 * 1024;
const SAMPLES: usize = 15;

#[test]
fn listing_a_hundred_thousand_messages_does_not_delay_new_mail() {
    let sink = Sink::start();
    // The spool on a tmpfs of its own: writing and removing 200,000 files
    // on the shared disk would take minutes, and what is measured here is
    // whether listing holds up delivery, not the disk. (Declared before
    // `empath`, so that it is unmounted after the master stopped.)
    let mut spool_mount = None;
    let empath = Empath::start_prepared(
        TestConfig::new().mx_override("sink.test", sink.addr()),
        |dir| {
            spool_mount = Some(
                TmpfsMount::mount(&dir.join("spool"), SPOOL_KIB)
                    .unwrap_or_else(|e| panic!("this test needs a tmpfs (run as root): {e}")),
            );
            // On hold: qmgr leaves them alone, so only the listing reads them.
            let started = Instant::now();
            let mut fill = Command::new(binary("empath-queue-fill"));
            fill.arg("--spool").arg(dir.join("spool")).args([
                "--count",
                &BIG_QUEUE.to_string(),
                "--state",
                "hold",
            ]);
            let output = run_bounded(&mut fill, Duration::from_secs(600));
            assert!(output.status.success(), "{}", output.combined());
            println!(
                "filled in {:?}: {}",
                started.elapsed(),
                output.stdout.trim()
            );
        },
    );
    // Every daemon on the path up, a warm-up (connections, caches), then
    // the baseline.
    let queue = Queue::new(empath.spool());
    let sockets = [
        queue.private_socket(protocol::CLEANUP),
        queue.private_socket(protocol::SHOWQ_CONTROL),
        queue.public_socket(protocol::SHOWQ),
    ];
    empath.wait_until("the daemons to listen", COMMAND_TIMEOUT, || {
        sockets
            .iter()
            .all(|s| s.exists())
            .then_some(())
            .ok_or_else(|| "not yet".to_owned())
    });
    latencies(&empath, &sink, 3, 0);
    let quiet = latencies(&empath, &sink, SAMPLES, 100);

    let stop = Arc::new(AtomicBool::new(false));
    let listings = Arc::new(AtomicUsize::new(0));
    let config = empath.config_path().to_owned();
    let started = Instant::now();
    let mailq = keep_running(
        move || {
            let mut command = Command::new(binary("mailq"));
            command.arg("-C").arg(&config);
            command
        },
        Arc::clone(&stop),
        Arc::clone(&listings),
        |listing| {
            let last = listing.lines().last().unwrap_or_default();
            let requests: u64 = last
                .split_whitespace()
                .nth(4)
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            assert!(requests >= BIG_QUEUE, "an incomplete listing ends {last:?}");
        },
    );
    let socket = empath.control_socket();
    let stats_runs = Arc::new(AtomicUsize::new(0));
    let stats = keep_running(
        move || {
            let mut command = Command::new(binary("empathctl"));
            command
                .arg("--control-socket")
                .arg(&socket)
                .args(["queue", "stats"]);
            command
        },
        Arc::clone(&stop),
        Arc::clone(&stats_runs),
        |text| assert!(text.contains("Total"), "{text}"),
    );
    // Measure once both listers are at work, for as long as it takes a
    // whole mailq listing of the big queue to complete.
    std::thread::sleep(Duration::from_secs(2));
    let mut busy = Vec::new();
    while busy.len() < SAMPLES || listings.load(Ordering::SeqCst) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no mailq listing of {BIG_QUEUE} messages completed in 300 s"
        );
        std::thread::sleep(BETWEEN);
        busy.push(delivery_latency(&empath, &sink, 200 + busy.len()));
    }
    let measured = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let _ = mailq.join();
    let _ = stats.join();
    println!("listers stopped after {:?}", started.elapsed());
    busy.sort();
    let samples = busy.len();
    println!(
        "quiet: median {:?} max {:?}; while listing: median {:?} max {:?} ({samples} deliveries); \
         {} full mailq listings and {} queue stats in {:?} ({measured:?} of measurement)",
        median(&quiet),
        quiet[SAMPLES - 1],
        median(&busy),
        busy[samples - 1],
        listings.load(Ordering::SeqCst),
        stats_runs.load(Ordering::SeqCst),
        started.elapsed(),
    );
    // A listing run by the scheduler (as before) holds every delivery
    // that comes during it for the rest of the listing (a second or more
    // for 100,000 envelopes); here deliveries go on beside it.
    let allowed = median(&quiet) * 3 + Duration::from_millis(100);
    assert!(
        median(&busy) <= allowed,
        "delivery slowed down while the queue was listed: median {:?} against {:?} quiet",
        median(&busy),
        median(&quiet)
    );
    assert!(
        busy[samples - 1] < Duration::from_millis(750).max(quiet[SAMPLES - 1] * 3),
        "a delivery waited {:?} while the queue was listed",
        busy[samples - 1]
    );
}
