//! Load: 5000 concurrent idle SMTP connections, then a flood of 20000
//! connect/QUIT cycles while a normal client sends mail. Prints smtpd's
//! memory per 1000 connections; checks that a normal client is still
//! served during the flood, that every connection's resources are given
//! back (file descriptors), and that memory stays bounded. No timing
//! assertions: figures are printed.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use empath_tests::mail;
use empath_tests::reliability::{fd_count, rss_kib};
use empath_tests::{Empath, SMTPD, Sink, SmtpSend, TestConfig, poll, run_bounded};

const IDLE_CONNECTIONS: usize = 5000;
const FLOOD_CONNECTIONS: usize = 20_000;
const FLOOD_THREADS: usize = 8;
const SENDER: &str = "normal@client.test";
const RECIPIENT: &str = "rcpt@sink.test";
/// File descriptors the test needs: its own side of every connection.
const NOFILE: u64 = IDLE_CONNECTIONS as u64 + 2048;
const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// Raises this process's open-file limit (inherited by the master and so
/// by smtpd) with util-linux's prlimit. Returns false if it could not.
fn raise_nofile() -> bool {
    let pid = std::process::id().to_string();
    let output = run_bounded(
        Command::new("prlimit")
            .arg("--pid")
            .arg(&pid)
            .arg(format!("--nofile={NOFILE}:{NOFILE}")),
        Duration::from_secs(10),
    );
    if !output.status.success() {
        // Perhaps the hard limit is lower and we are not root: try the soft one.
        let soft = run_bounded(
            Command::new("prlimit")
                .arg("--pid")
                .arg(&pid)
                .arg(format!("--nofile={NOFILE}:")),
            Duration::from_secs(10),
        );
        if !soft.status.success() {
            println!("prlimit failed: {}{}", output.stderr, soft.stderr);
            return false;
        }
    }
    true
}

/// All smtpd processes' RSS and fds, summed.
fn smtpd_usage(empath: &Empath) -> (u64, usize) {
    empath
        .child_pids(SMTPD)
        .iter()
        .fold((0, 0), |(rss, fds), &pid| {
            (
                rss + rss_kib(pid).unwrap_or(0),
                fds + fd_count(pid).unwrap_or(0),
            )
        })
}

/// Connects and reads the 220 banner.
fn connect_with_banner(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut banner = String::new();
    BufReader::new(&stream).read_line(&mut banner)?;
    if banner.starts_with("220") {
        Ok(stream)
    } else {
        Err(std::io::Error::other(format!("banner {banner:?}")))
    }
}

/// One flood connection: connect, QUIT; every other one does not wait for
/// any reply and just hangs up.
fn flood_one(addr: SocketAddr, polite: bool) -> std::io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.write_all(b"QUIT\r\n")?;
    if polite {
        let mut reader = BufReader::new(&stream);
        let mut line = String::new();
        while reader.read_line(&mut line)? > 0 {
            if line.starts_with("221") {
                break;
            }
            line.clear();
        }
    }
    Ok(())
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[test]
fn five_thousand_connections_and_a_flood_stay_bounded() {
    if !raise_nofile() {
        println!("SKIPPED: cannot raise RLIMIT_NOFILE to {NOFILE}");
        return;
    }
    let sink = Sink::start();
    // All 5000 connections come from 127.0.0.1: lift smtpd's per-address
    // and total limits, which would otherwise (rightly) refuse them.
    let empath = Empath::start(
        TestConfig::new()
            .mx_override("sink.test", sink.addr())
            .section(
                "smtpd",
                "(max_connections: 12000, max_connections_per_ip: 12000)",
            ),
    );
    let addr = empath.smtp_addr();
    empath.wait_child(SMTPD, Duration::from_secs(30));
    // One connection first, so that lazily built state is in the baseline.
    drop(connect_with_banner(addr).expect("first connection"));
    std::thread::sleep(Duration::from_millis(500));
    let (base_rss, base_fds) = smtpd_usage(&empath);

    // 5000 idle connections, each greeted.
    let started = Instant::now();
    let mut idle = Vec::with_capacity(IDLE_CONNECTIONS);
    for n in 0..IDLE_CONNECTIONS {
        match connect_with_banner(addr) {
            Ok(stream) => idle.push(stream),
            Err(e) => panic!(
                "connection {n} of {IDLE_CONNECTIONS}: {e}\n{}",
                empath.log_tail()
            ),
        }
    }
    let opened_in = started.elapsed();
    let (peak_rss, peak_fds) = smtpd_usage(&empath);
    let per_thousand =
        peak_rss.saturating_sub(base_rss) as f64 / (IDLE_CONNECTIONS as f64 / 1000.0);
    println!(
        "{IDLE_CONNECTIONS} idle connections opened in {opened_in:.1?}: smtpd RSS {:.1} MiB -> {:.1} MiB \
         ({:.2} MiB per 1000 connections), fds {base_fds} -> {peak_fds}",
        mib(base_rss),
        mib(peak_rss),
        per_thousand / 1024.0
    );
    assert!(
        peak_fds >= base_fds + IDLE_CONNECTIONS,
        "smtpd holds {peak_fds} fds for {IDLE_CONNECTIONS} connections (baseline {base_fds})"
    );
    drop(idle);
    empath.wait_until(
        "smtpd to close the idle connections",
        Duration::from_secs(120),
        || {
            let (_, fds) = smtpd_usage(&empath);
            if fds <= base_fds + 16 {
                Ok(())
            } else {
                Err(format!("smtpd still holds {fds} fds (baseline {base_fds})"))
            }
        },
    );

    // A flood of short connections, with a normal client sending meanwhile.
    let messages = mail::generate(20, SENDER, &[RECIPIENT]);
    let outbox = mail::write_eml_files(&empath.dir().join("outbox"), &messages);
    let done = AtomicUsize::new(0);
    let errors = AtomicUsize::new(0);
    let started = Instant::now();
    let (report, normal_took) = std::thread::scope(|scope| {
        for thread in 0..FLOOD_THREADS {
            let (done, errors) = (&done, &errors);
            scope.spawn(move || {
                for n in (thread..FLOOD_CONNECTIONS).step_by(FLOOD_THREADS) {
                    if flood_one(addr, n % 2 == 0).is_err() {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        // Let the flood get going, then send like a normal client.
        let _ = poll(Duration::from_secs(60), || {
            (done.load(Ordering::Relaxed) >= FLOOD_CONNECTIONS / 10)
                .then_some(())
                .ok_or(String::new())
        });
        let sent_at = Instant::now();
        let report = SmtpSend::new(addr, SENDER, &[RECIPIENT], &outbox)
            .timeout(Duration::from_secs(300))
            .run();
        (report, sent_at.elapsed())
    });
    let flood_took = started.elapsed();
    let flood_errors = errors.load(Ordering::Relaxed);
    println!(
        "flood: {FLOOD_CONNECTIONS} connect/QUIT in {flood_took:.1?} ({:.0}/s), {flood_errors} client-side errors; \
         a normal client sent {} messages meanwhile in {normal_took:.1?}",
        FLOOD_CONNECTIONS as f64 / flood_took.as_secs_f64(),
        messages.len()
    );
    report.assert_all_accepted(messages.len(), || empath.log_tail());
    if let Err(arrived) = sink.wait_for_messages(messages.len(), Duration::from_secs(120)) {
        panic!(
            "only {arrived} of {} messages delivered\n{}",
            messages.len(),
            empath.log_tail()
        );
    }

    empath.wait_until(
        "smtpd to close the flood's connections",
        Duration::from_secs(120),
        || {
            let (_, fds) = smtpd_usage(&empath);
            if fds <= base_fds + 16 {
                Ok(())
            } else {
                Err(format!("smtpd still holds {fds} fds (baseline {base_fds})"))
            }
        },
    );
    let (after_rss, _) = smtpd_usage(&empath);
    println!(
        "smtpd RSS after the flood: {:.1} MiB (baseline {:.1} MiB, with {IDLE_CONNECTIONS} connections {:.1} MiB)",
        mib(after_rss),
        mib(base_rss),
        mib(peak_rss)
    );
    // Bounded: 20000 short connections must not cost more than holding
    // 5000 open did, give or take allocator slack.
    let bound = peak_rss + peak_rss.saturating_sub(base_rss) / 2 + 32 * 1024;
    assert!(
        after_rss <= bound,
        "smtpd RSS grew to {:.1} MiB after the flood (bound {:.1} MiB)",
        mib(after_rss),
        mib(bound)
    );
    assert!(
        flood_errors < FLOOD_CONNECTIONS / 100,
        "{flood_errors} of {FLOOD_CONNECTIONS} flood connections failed\n{}",
        empath.log_tail()
    );
}
