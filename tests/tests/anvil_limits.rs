//! The limits empath-anvil keeps for every smtpd process together:
//! AUTH failures per client address, the per-IP connection limit with its
//! exceptions, connections released before the goodbye, and counts that
//! survive a kill -9 of empath-anvil.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use empath_tests::smtpd::{RawSmtp, bcrypt_hash};
use empath_tests::sockets::{self, TCP_LISTEN};
use empath_tests::{ANVIL, Empath, SMTPD, Sink, TestConfig};

const READ_TIMEOUT: Duration = Duration::from_secs(20);
const TOO_MANY: &str = "421 4.7.0 mx.empath.test Error: too many connections from your address";

/// Waits until every smtpd runs and cleanup takes messages.
fn wait_for_smtpds(empath: &Empath, processes: usize) -> Vec<i32> {
    let cleanup = empath.spool().join("private/cleanup.sock");
    empath.wait_until("cleanup to listen", Duration::from_secs(30), || {
        if cleanup.exists() {
            Ok(())
        } else {
            Err(format!("no {}", cleanup.display()))
        }
    });
    empath.wait_until("every smtpd to run", Duration::from_secs(30), || {
        let pids = empath.child_pids(SMTPD);
        if pids.len() == processes {
            Ok(pids)
        } else {
            Err(format!("{} of {processes} running", pids.len()))
        }
    })
}

/// smtplib, one connection per attempt: connect and EHLO, print the local
/// port, wait for a line on stdin (the test finds which smtpd serves the
/// connection meanwhile), AUTH PLAIN with a wrong password, print the code.
const AUTH_CLIENT: &str = r#"
import smtplib, sys
host, port, attempts = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for n in range(attempts):
    s = smtplib.SMTP(host, port, timeout=30)
    s.ehlo('auth.client.test')
    print('port', s.sock.getsockname()[1], flush=True)
    sys.stdin.readline()
    s.user, s.password = 'bob', 'wrong password'
    try:
        s.auth('PLAIN', s.auth_plain)
        code = 235
    except smtplib.SMTPAuthenticationError as e:
        code = e.smtp_code
    except smtplib.SMTPServerDisconnected:
        code = 0
    print('code', code, flush=True)
    try:
        s.quit()
    except Exception:
        s.close()
"#;

#[test]
fn auth_failures_are_limited_per_address_across_all_smtpd_processes() {
    const PROCESSES: usize = 4;
    const ATTEMPTS: usize = 16;
    const MAX_FAILURES: usize = 3;
    let hash = bcrypt_hash("right password");
    let empath = Empath::start(TestConfig::new().section(
        "smtpd",
        &format!(
            "(processes: {PROCESSES}, auth: (users: {{\"bob\": {hash:?}}}, allow_insecure: true, max_failures: {MAX_FAILURES}))"
        ),
    ));
    let smtpds = wait_for_smtpds(&empath, PROCESSES);
    let addr = empath.smtp_addr();
    let mut client = Command::new("python3")
        .arg("-c")
        .arg(AUTH_CLIENT)
        .args([
            addr.ip().to_string(),
            addr.port().to_string(),
            ATTEMPTS.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut to_client = client.stdin.take().expect("stdin");
    let mut from_client = BufReader::new(client.stdout.take().expect("stdout")).lines();
    let mut attempts: Vec<(i32, u16)> = Vec::new();
    for n in 0..ATTEMPTS {
        let line = from_client
            .next()
            .and_then(Result::ok)
            .unwrap_or_else(|| panic!("attempt {n}: the client stopped\n{}", empath.log_tail()));
        let port: u16 = line
            .strip_prefix("port ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected {line:?}"));
        let server = empath.wait_until("the smtpd serving the attempt", READ_TIMEOUT, || {
            sockets::inet_sockets()
                .into_iter()
                .find(|s| s.remote.port() == port && s.local == addr && s.state != TCP_LISTEN)
                .and_then(|s| sockets::holder(s.inode, &smtpds))
                .ok_or_else(|| format!("no smtpd holds the connection from port {port}"))
        });
        writeln!(to_client, "go").expect("tell the client to go on");
        let line = from_client
            .next()
            .and_then(Result::ok)
            .unwrap_or_else(|| panic!("attempt {n}: no code\n{}", empath.log_tail()));
        let code = line
            .strip_prefix("code ")
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("unexpected {line:?}"));
        attempts.push((server, code));
    }
    assert!(client.wait().expect("the client exits").success());
    println!("(smtpd pid, AUTH reply) per attempt: {attempts:?}");

    let codes: Vec<u16> = attempts.iter().map(|(_, code)| *code).collect();
    assert_eq!(
        codes[..MAX_FAILURES],
        [535; MAX_FAILURES],
        "the first {MAX_FAILURES} wrong passwords get 535\n{}",
        empath.log_tail()
    );
    assert!(
        codes[MAX_FAILURES..].iter().all(|code| *code == 421),
        "after {MAX_FAILURES} failures in total, every smtpd refuses AUTH from the address: {codes:?}\n{}",
        empath.log_tail()
    );
    // The point: refused by processes that had not seen 3 failures
    // themselves (each would have allowed 3 more on its own count).
    let mut failures_seen: BTreeMap<i32, usize> = BTreeMap::new();
    for (pid, _) in &attempts[..MAX_FAILURES] {
        *failures_seen.entry(*pid).or_insert(0) += 1;
    }
    let refused_elsewhere = attempts[MAX_FAILURES..]
        .iter()
        .filter(|(pid, _)| failures_seen.get(pid).copied().unwrap_or(0) < MAX_FAILURES)
        .count();
    assert!(
        refused_elsewhere > 0,
        "every attempt went to one smtpd ({attempts:?}); nothing shows the count is shared"
    );
    println!(
        "{refused_elsewhere} refusals by smtpd processes that saw fewer than {MAX_FAILURES} failures"
    );
}

/// `clients` threads, each opening a connection, sending one message and
/// closing with QUIT (reading the 221), `rounds` times, as fast as
/// possible: Postfix's smtp-source without connection reuse. Returns the
/// messages accepted and the connections refused with 421.
fn one_message_per_connection(empath: &Empath, clients: usize, rounds: usize) -> (usize, usize) {
    let addr = empath.smtp_addr();
    let started = std::time::Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|client_number| {
            std::thread::spawn(move || {
                let (mut accepted, mut refused) = (0, 0);
                for round in 0..rounds {
                    let mut client = RawSmtp::connect(addr, READ_TIMEOUT).expect("connect");
                    let greeting = client.reply().expect("greeting");
                    if greeting.starts_with("421") {
                        refused += 1;
                        continue;
                    }
                    assert!(greeting.starts_with("220"), "{greeting}");
                    let message = format!(
                        "Subject: {client_number}.{round}\r\n\r\nOne message per connection.\r\n.\r\n"
                    );
                    for (line, code) in [
                        ("EHLO source.test\r\n", "250"),
                        ("MAIL FROM:<source@client.test>\r\n", "250"),
                        ("RCPT TO:<user@sink.test>\r\n", "250"),
                        ("DATA\r\n", "354"),
                        (message.as_str(), "250"),
                        ("QUIT\r\n", "221"),
                    ] {
                        client.send(line.as_bytes()).expect("send");
                        let reply = client.reply().expect("reply");
                        assert!(reply.starts_with(code), "{line:?}: {reply}");
                    }
                    accepted += 1;
                }
                (accepted, refused)
            })
        })
        .collect();
    let totals = threads
        .into_iter()
        .map(|t| t.join().expect("a client thread"))
        .fold((0, 0), |(a, r), (accepted, refused)| {
            (a + accepted, r + refused)
        });
    let elapsed = started.elapsed();
    println!(
        "{clients} clients x {rounds} connections: {totals:?} (accepted, refused) in {elapsed:?}, {:.0} connections/s",
        (clients * rounds) as f64 / elapsed.as_secs_f64()
    );
    totals
}

#[test]
fn clients_in_mynetworks_are_exempt_from_the_per_ip_limit() {
    const CLIENTS: usize = 60;
    const ROUNDS: usize = 10;
    // 127.0.0.1 is in the default mynetworks, and the exceptions default
    // to mynetworks: 60 concurrent clients with a limit of 50.
    let sink = Sink::start();
    let empath = Empath::start(
        TestConfig::new()
            .mx_override("sink.test", sink.addr())
            .section("smtpd", "(processes: 2, max_connections_per_ip: 50)"),
    );
    wait_for_smtpds(&empath, 2);
    let (served, refused) = one_message_per_connection(&empath, CLIENTS, ROUNDS);
    assert_eq!(
        (served, refused),
        (CLIENTS * ROUNDS, 0),
        "an exempt client was refused\n{}",
        empath.log_tail()
    );
}

#[test]
fn a_closed_connection_is_released_before_the_next_is_judged_and_the_limit_is_exact() {
    const PER_IP: usize = 50;
    const ROUNDS: usize = 20;
    let sink = Sink::start();
    let empath = Empath::start(
        TestConfig::new()
            .mx_override("sink.test", sink.addr())
            .section(
                "smtpd",
                &format!(
                    "(processes: 2, max_connections_per_ip: {PER_IP}, client_connection_limit_exceptions: [])"
                ),
            ),
    );
    wait_for_smtpds(&empath, 2);
    // As many concurrent clients as the limit, each reconnecting as soon
    // as its QUIT is answered, while the mail they sent is written and
    // delivered: never over the limit, so never refused.
    let (served, refused) = one_message_per_connection(&empath, PER_IP, ROUNDS);
    assert_eq!(
        (served, refused),
        (PER_IP * ROUNDS, 0),
        "a closed connection still counted against the next one\n{}",
        empath.log_tail()
    );
    // The limit itself holds exactly, across both smtpd processes.
    let addr = empath.smtp_addr();
    let mut held = Vec::new();
    for n in 0..PER_IP {
        let mut client = RawSmtp::connect(addr, READ_TIMEOUT).expect("connect");
        let greeting = client.reply().expect("greeting");
        assert!(greeting.starts_with("220"), "connection {n}: {greeting}");
        held.push(client);
    }
    for n in 0..4 {
        let mut client = RawSmtp::connect(addr, READ_TIMEOUT).expect("connect");
        assert_eq!(client.reply().expect("a refusal"), TOO_MANY, "extra {n}");
    }
}

/// How many smtpd processes hold a Unix connection to empath-anvil.
fn anvil_links(empath: &Empath) -> usize {
    let Some(anvil) = empath.child_pid(ANVIL) else {
        return 0;
    };
    let anvil_sockets = sockets::socket_inodes(anvil);
    let peers = sockets::unix_peers();
    empath
        .child_pids(SMTPD)
        .into_iter()
        .filter(|smtpd| {
            sockets::socket_inodes(*smtpd).iter().any(|inode| {
                peers
                    .get(inode)
                    .is_some_and(|peer| anvil_sockets.contains(peer))
            })
        })
        .count()
}

#[test]
fn the_per_ip_limit_holds_after_empath_anvil_is_killed() {
    const PROCESSES: usize = 2;
    const PER_IP: usize = 4;
    let empath = Empath::start(TestConfig::new().section(
        "smtpd",
        &format!(
            "(processes: {PROCESSES}, max_connections_per_ip: {PER_IP}, client_connection_limit_exceptions: [])"
        ),
    ));
    wait_for_smtpds(&empath, PROCESSES);
    let addr = empath.smtp_addr();
    let mut held: Vec<RawSmtp> = (0..PER_IP)
        .map(|n| {
            let mut client = RawSmtp::connect(addr, READ_TIMEOUT).expect("connect");
            let greeting = client.reply().expect("greeting");
            assert!(greeting.starts_with("220"), "connection {n}: {greeting}");
            client
        })
        .collect();
    let mut extra = RawSmtp::connect(addr, READ_TIMEOUT).expect("connect");
    assert_eq!(extra.reply().expect("a refusal"), TOO_MANY);

    // Every smtpd is connected to the anvil (the later ones connect as
    // they start).
    empath.wait_until(
        "every smtpd to be linked to the anvil",
        Duration::from_secs(15),
        || {
            let linked = anvil_links(&empath);
            if linked == PROCESSES {
                Ok(())
            } else {
                Err(format!("{linked} of {PROCESSES} linked"))
            }
        },
    );
    // kill -9: the new empath-anvil knows nothing until every smtpd has
    // registered again what it holds.
    let killed = empath.kill9_child(ANVIL);
    empath.wait_restarted(ANVIL, &killed, Duration::from_secs(15));
    empath.wait_until(
        "every smtpd to register again",
        Duration::from_secs(15),
        || {
            let back = empath.log().matches("empath-anvil is back").count();
            if back >= PROCESSES {
                Ok(())
            } else {
                Err(format!("{back} of {PROCESSES} smtpd processes back"))
            }
        },
    );
    for n in 0..2 * PROCESSES {
        let mut client = RawSmtp::connect(addr, READ_TIMEOUT).expect("connect");
        assert_eq!(
            client.reply().expect("a refusal"),
            TOO_MANY,
            "extra connection {n} after the anvil restarted\n{}",
            empath.log_tail()
        );
    }
    // A connection that closes is released in the new anvil too: exactly
    // one more gets in.
    let mut leaving = held.pop().expect("a held connection");
    leaving.send(b"QUIT\r\n").expect("QUIT");
    assert!(leaving.reply().expect("221").starts_with("221"));
    let mut again = RawSmtp::connect(addr, READ_TIMEOUT).expect("connect");
    assert!(again.reply().expect("greeting").starts_with("220"));
    held.push(again);
    let mut over = RawSmtp::connect(addr, READ_TIMEOUT).expect("connect");
    assert_eq!(over.reply().expect("a refusal"), TOO_MANY);
}
