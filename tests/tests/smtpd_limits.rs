//! smtpd's limits with real sockets: a client dripping data is cut off at
//! the data_block timeout, 1000 idle connections are held while a new
//! client is still served, and the per-IP limit answers 421.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::time::{Duration, Instant};

use empath_tests::smtpd::RawSmtp;
use empath_tests::{Empath, Sink, TestConfig};

const SINK_DOMAIN: &str = "sink.test";
const READ_TIMEOUT: Duration = Duration::from_secs(20);

fn transaction(client: &mut RawSmtp) {
    for (line, code) in [
        ("EHLO client.test\r\n", "250"),
        ("MAIL FROM:<slow@client.test>\r\n", "250"),
        ("RCPT TO:<bob@sink.test>\r\n", "250"),
        ("DATA\r\n", "354"),
    ] {
        client.send(line.as_bytes()).expect("send");
        let reply = client.reply().expect("reply");
        assert!(reply.starts_with(code), "{line:?} got {reply:?}");
    }
}

#[test]
fn a_client_sending_one_byte_per_second_is_cut_off_at_data_block() {
    let sink = Sink::start();
    let empath = Empath::start(
        TestConfig::new()
            .mx_override(SINK_DOMAIN, sink.addr())
            .listener_field("timeouts", "(data_block_secs: 3)"),
    );
    let mut client = RawSmtp::connect(empath.smtp_addr(), READ_TIMEOUT).expect("connect");
    assert!(client.reply().expect("greeting").starts_with("220"));
    transaction(&mut client);

    let mut writer = client.clone_writer();
    let dripping = std::thread::spawn(move || {
        for byte in b"Subject: one byte per second, never a whole line" {
            if std::io::Write::write_all(&mut writer, &[*byte]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    let started = Instant::now();
    let reply = client
        .reply()
        .unwrap_or_else(|e| panic!("no 421: {e}\n{}", empath.log_tail()));
    assert_eq!(reply, "421 4.4.2 mx.empath.test Error: timeout exceeded");
    assert!(client.closed(), "the connection is closed after the 421");
    // Cut off after about data_block (3 s), not after the 48 s of dripping.
    println!("cut off after {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(15));
    let _ = dripping.join();
    assert!(empath.log().contains("reason=timeout") || empath.log().contains("timeout"));
    assert!(
        empath.queue_counts().is_empty(),
        "{:?}",
        empath.queue_counts()
    );
    assert_eq!(sink.message_count(), 0);
}

/// Lets this process open a few thousand sockets.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
    }
    let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    assert!(soft >= 2100, "need 2100 open files, the limit is {soft}");
}

#[test]
fn a_thousand_idle_connections_and_a_new_client_is_still_served() {
    const IDLE: usize = 1000;
    raise_fd_limit();
    let empath = Empath::start(TestConfig::new().section(
        "smtpd",
        "(max_connections: 1100, max_connections_per_ip: 1100)",
    ));
    let addr = empath.smtp_addr();
    let started = Instant::now();
    let mut idle = Vec::with_capacity(IDLE);
    for index in 0..IDLE {
        let mut client = RawSmtp::connect(addr, READ_TIMEOUT)
            .unwrap_or_else(|e| panic!("connection {index}: {e}\n{}", empath.log_tail()));
        let greeting = client
            .reply()
            .unwrap_or_else(|e| panic!("greeting {index}: {e}\n{}", empath.log_tail()));
        assert!(greeting.starts_with("220"), "{greeting}");
        idle.push(client);
    }
    println!(
        "{IDLE} connections open and greeted in {:?}",
        started.elapsed()
    );
    for pid in empath.child_pids(empath_tests::SMTPD) {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let rss = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .unwrap_or("VmRSS: ?");
        println!("smtpd {pid} with {IDLE} idle connections: {rss}");
    }

    let asked = Instant::now();
    let mut fresh = RawSmtp::connect(addr, Duration::from_secs(5)).expect("connect");
    let greeting = fresh
        .reply()
        .expect("a prompt greeting while 1000 are held");
    assert!(greeting.starts_with("220"), "{greeting}");
    fresh.send(b"EHLO fresh.test\r\n").expect("send");
    assert!(fresh.reply().expect("EHLO reply").starts_with("250"));
    println!("new client greeted and answered in {:?}", asked.elapsed());

    // The idle ones are still held: one of them still talks.
    let first = &mut idle[0];
    first.send(b"NOOP\r\n").expect("send");
    assert!(first.reply().expect("NOOP reply").starts_with("250"));
    drop(idle);
}

#[test]
fn connections_over_the_per_ip_limit_get_421() {
    // 127.0.0.1 is in mynetworks, exempt by default: exempt nobody here.
    let empath = Empath::start(TestConfig::new().section(
        "smtpd",
        "(max_connections_per_ip: 2, client_connection_limit_exceptions: [])",
    ));
    let addr = empath.smtp_addr();
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut client = RawSmtp::connect(addr, READ_TIMEOUT).expect("connect");
        assert!(client.reply().expect("greeting").starts_with("220"));
        held.push(client);
    }
    let mut third = RawSmtp::connect(addr, READ_TIMEOUT).expect("connect");
    let reply = third.reply().expect("a refusal");
    assert_eq!(
        reply,
        "421 4.7.0 mx.empath.test Error: too many connections from your address"
    );
    assert!(third.closed());
    assert!(empath.log().contains("max_connections_per_ip"));
    // A slot frees up when a client leaves.
    drop(held.pop());
    empath.wait_until("a free slot", Duration::from_secs(10), || {
        let mut again = RawSmtp::connect(addr, READ_TIMEOUT).map_err(|e| e.to_string())?;
        let reply = again.reply().map_err(|e| e.to_string())?;
        if reply.starts_with("220") {
            Ok(())
        } else {
            Err(reply)
        }
    });
}

/// Opens a session and returns its first reply.
fn greeting(addr: std::net::SocketAddr) -> (RawSmtp, String) {
    let mut client = RawSmtp::connect(addr, READ_TIMEOUT).expect("connect");
    let reply = client.reply().expect("a first reply");
    (client, reply)
}

#[test]
fn the_per_ip_limit_holds_across_smtpd_processes_and_survives_their_crash() {
    const PROCESSES: usize = 3;
    const PER_IP: usize = 4;
    let empath = Empath::start(TestConfig::new().section(
        "smtpd",
        &format!(
            "(processes: {PROCESSES}, max_connections_per_ip: {PER_IP}, client_connection_limit_exceptions: [])"
        ),
    ));
    let addr = empath.smtp_addr();
    empath.wait_until("every smtpd to run", Duration::from_secs(30), || {
        let running = empath.child_pids("empath-smtpd").len();
        if running == PROCESSES {
            Ok(())
        } else {
            Err(format!("{running} running"))
        }
    });

    // The kernel hands connections to whichever smtpd accepts first: only a
    // count kept for all of them refuses every one past the limit.
    let mut held: Vec<RawSmtp> = (0..PER_IP)
        .map(|n| {
            let (client, reply) = greeting(addr);
            assert!(reply.starts_with("220"), "connection {n}: {reply}");
            client
        })
        .collect();
    for n in 0..2 * PROCESSES {
        let (_, reply) = greeting(addr);
        assert_eq!(
            reply, "421 4.7.0 mx.empath.test Error: too many connections from your address",
            "extra connection {n}"
        );
    }

    // Every smtpd dies with its sessions: what they held is released, and
    // the restarted ones admit the limit again, and no more.
    let killed = empath.kill9_child("empath-smtpd");
    held.clear();
    empath.wait_until(
        "the smtpds to be restarted",
        Duration::from_secs(30),
        || {
            let fresh = empath
                .child_pids("empath-smtpd")
                .into_iter()
                .filter(|pid| !killed.contains(pid))
                .count();
            if fresh == PROCESSES {
                Ok(())
            } else {
                Err(format!("{fresh} restarted"))
            }
        },
    );
    let held: Vec<RawSmtp> = (0..PER_IP)
        .map(|n| {
            let (client, reply) = greeting(addr);
            assert!(
                reply.starts_with("220"),
                "after the crash, connection {n}: {reply}\n{}",
                empath.log_tail()
            );
            client
        })
        .collect();
    let (_, reply) = greeting(addr);
    assert!(reply.starts_with("421"), "{reply}");
    drop(held);
}
