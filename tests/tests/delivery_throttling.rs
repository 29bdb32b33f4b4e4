//! qmgr's per-domain throttles with the real binaries: the token-bucket
//! rate limit (measured at the sink), freeze/unfreeze/process-now through
//! qmgr's socket, and the circuit breaker opening and recovering.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use empath_common::ipc;
use empath_common::protocol::{self, QmgrNotice};
use empath_common::queue::Queue;
use empath_tests::{Empath, Sink, SmtpSend, TestConfig, mail};

const SENDER: &str = "sender@client.test";
const TIMEOUT: Duration = Duration::from_secs(90);

/// Sends `count` messages to `rcpt` on 4 connections.
fn send(empath: &Empath, count: usize, rcpt: &str) {
    let messages = mail::generate(count, SENDER, &[rcpt]);
    let outbox = mail::write_eml_files(&empath.dir().join("outbox"), &messages);
    let report = SmtpSend::new(empath.smtp_addr(), SENDER, &[rcpt], Path::new(&outbox))
        .threads(4)
        .run();
    report.assert_all_accepted(count, || empath.log_tail());
}

/// Tells qmgr something over its socket, as the control plane does.
fn tell_qmgr(empath: &Empath, notice: QmgrNotice) {
    let socket = Queue::new(empath.spool().to_owned()).private_socket(protocol::QMGR);
    // The master publishes its listeners before qmgr listens on its
    // socket: try until qmgr takes the notice.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    empath.wait_until(&format!("qmgr to take {notice:?}"), TIMEOUT, || {
        runtime
            .block_on(ipc::notify(&socket, &notice))
            .map_err(|e| format!("tell qmgr {notice:?}: {e}"))
    });
    // Notices are one-way: give qmgr a moment to act on it.
    std::thread::sleep(Duration::from_millis(300));
}

#[test]
fn the_rate_limit_holds_while_frozen_mail_is_released() {
    const COUNT: usize = 30;
    const RATE: f64 = 5.0;
    const BURST: usize = 5;
    let sink = Sink::start();
    let config = TestConfig::new()
        .mx_override("rate.test", sink.addr())
        .delivery(
            "rate_limit",
            "(messages_per_second: 10000.0, burst_size: 10000, \
         domain_limits: {\"rate.test\": (messages_per_second: 5.0, burst_size: 5)})",
        );
    let empath = Empath::start(config);

    // Frozen, so that all 30 are queued before the first goes: the only
    // thing spacing the deliveries is then the rate limit.
    tell_qmgr(&empath, QmgrNotice::Freeze);
    send(&empath, COUNT, "rcpt@rate.test");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(sink.message_count(), 0, "nothing is delivered while frozen");
    tell_qmgr(&empath, QmgrNotice::Unfreeze);

    if let Err(n) = sink.wait_for_messages(COUNT, TIMEOUT) {
        panic!("{n} of {COUNT} arrived\n{}", empath.log_tail());
    }
    let arrivals = sink.arrival_times();
    let span = arrivals[COUNT - 1]
        .duration_since(arrivals[0])
        .as_secs_f64();
    // After the burst, tokens come at RATE a second.
    let observed = (COUNT - BURST) as f64 / span;
    println!(
        "{COUNT} messages, limit {RATE}/s burst {BURST}: first to last {span:.2}s, \
         {observed:.2} msg/s after the burst"
    );
    assert!(
        observed <= RATE * 1.15,
        "observed {observed:.2} msg/s exceeds the {RATE}/s limit"
    );
    // No window of one second holds more than the burst plus one refill.
    for (i, start) in arrivals.iter().enumerate() {
        let within = arrivals[i..]
            .iter()
            .take_while(|t| t.duration_since(*start) < Duration::from_secs(1))
            .count();
        assert!(
            within <= BURST + RATE as usize + 1,
            "{within} deliveries within one second"
        );
    }
    assert!(
        empath
            .log()
            .contains("Rate limit exceeded, delaying delivery"),
        "{}",
        empath.log_tail()
    );
    empath.wait_queue_empty(TIMEOUT);
    assert!(
        !empath.log().contains("delivery deferred"),
        "being rate limited is a delay, not a failure\n{}",
        empath.log_tail()
    );
}

#[test]
fn process_now_makes_deferred_mail_due_at_once() {
    let sink = Sink::start();
    let port_holder = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = port_holder.local_addr().expect("addr");
    drop(port_holder);
    // Retries an hour apart: only process-now brings the message back.
    let config = TestConfig::new()
        .mx_override("later.test", addr)
        .delivery("base_retry_delay_secs", "3600")
        .delivery("max_retry_delay_secs", "3600");
    let empath = Empath::start(config);
    send(&empath, 1, "rcpt@later.test");
    empath.wait_until("the message to be deferred", TIMEOUT, || {
        match empath.queue_counts().deferred {
            1 => Ok(()),
            n => Err(format!("{n} deferred")),
        }
    });
    // The destination comes up, but the message waits for its hour...
    let sink_here = Sink::bind(addr, empath_tests::SinkPolicy::accept_all()).expect("bind sink");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(sink_here.message_count(), 0);
    // ... unless the operator says otherwise.
    tell_qmgr(&empath, QmgrNotice::ProcessNow);
    if let Err(n) = sink_here.wait_for_messages(1, TIMEOUT) {
        panic!("{n} arrived after process-now\n{}", empath.log_tail());
    }
    empath.wait_queue_empty(TIMEOUT);
    drop(sink);
}

/// A server that accepts TCP connections and closes them at once,
/// counting them: a destination that is down in the way that matters.
struct SlamDoor {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SlamDoor {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (accepted, stop) = (Arc::clone(&accepted), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            accepted.fetch_add(1, Ordering::SeqCst);
                            drop(stream);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        Self {
            addr,
            accepted,
            stop,
            thread: Some(thread),
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Closes the listening socket, freeing the address.
    fn close(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn the_circuit_breaker_opens_after_failures_and_recovers() {
    const OPEN_SECS: u64 = 6;
    let door = SlamDoor::start();
    let addr = door.addr;
    let config = TestConfig::new()
        .mx_override("flaky.test", addr)
        .delivery("max_retry_delay_secs", "1")
        .delivery(
            "circuit_breaker",
            &format!("(failure_threshold: 2, open_secs: {OPEN_SECS})"),
        );
    let empath = Empath::start(config);
    send(&empath, 3, "rcpt@flaky.test");

    empath.wait_until("the breaker to open", TIMEOUT, || {
        if empath.log().contains("Circuit breaker opened") {
            Ok(())
        } else {
            Err(format!("{} connections so far", door.accepted()))
        }
    });
    let opened = Instant::now();
    let at_open = door.accepted();
    // Open: retries come every second, but nobody calls the destination.
    std::thread::sleep(Duration::from_secs(OPEN_SECS - 3));
    assert_eq!(
        door.accepted(),
        at_open,
        "the destination was contacted while the breaker was open"
    );
    // Each recipient held back is logged as deferred, with the reason.
    let log = empath.log();
    assert!(
        log.lines().any(|line| line.contains("Delivery deferred")
            && line.contains("circuit breaker open for flaky.test")),
        "{}",
        empath.log_tail()
    );

    // The destination recovers; the half-open probe finds it and closes
    // the breaker, and everything is delivered.
    door.close();
    let sink = Sink::bind(addr, empath_tests::SinkPolicy::accept_all()).expect("rebind");
    if let Err(n) = sink.wait_for_messages(3, TIMEOUT) {
        panic!("{n} of 3 arrived\n{}", empath.log_tail());
    }
    assert!(
        opened.elapsed() >= Duration::from_secs(OPEN_SECS - 1),
        "delivered before the breaker could go half-open"
    );
    empath.wait_queue_empty(TIMEOUT);
    let log = empath.log();
    assert!(
        log.contains("Circuit breaker half-open"),
        "{}",
        empath.log_tail()
    );
    assert!(
        log.contains("Circuit breaker closed"),
        "{}",
        empath.log_tail()
    );
    println!("connections refused before the breaker opened: {at_open}");
}
