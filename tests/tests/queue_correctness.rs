//! The scheduler at its edges: results written as each job ends, agents
//! that die, circuit breakers that must not use up attempts, and a disk
//! that fills while mail is being deferred.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use empath_tests::mail::{self, TestMessage};
use empath_tests::reliability::{TmpfsMount, fill_filesystem};
use empath_tests::{Empath, QMGR, Reply, SMTP_OUT, Sink, SinkPolicy, SmtpSend, TestConfig};

const SENDER: &str = "sender@client.test";
const TIMEOUT: Duration = Duration::from_secs(90);

fn send(empath: &Empath, name: &str, messages: &[TestMessage], to: &[&str]) {
    let outbox = mail::write_eml_files(&empath.dir().join(name), messages);
    SmtpSend::new(empath.smtp_addr(), SENDER, to, &outbox)
        .run()
        .assert_all_accepted(messages.len(), || empath.log_tail());
}

/// How many copies of test message `id` `sink` got.
fn copies(sink: &Sink, id: usize) -> usize {
    sink.inspect(|all| {
        all.iter()
            .filter(|m| mail::test_id(&m.data) == Some(id))
            .count()
    })
}

/// A message to two domains; the first is delivered, the second is still
/// in flight when qmgr is killed. The next qmgr must not deliver to the
/// first domain again: its result was written when its job ended.
#[test]
fn a_qmgr_crash_after_one_domain_does_not_deliver_it_twice() {
    let quick = Sink::start();
    let slow = Sink::with_policy(SinkPolicy::accept_all().hold_after(0));
    let mut empath = Empath::start(
        TestConfig::new()
            .mx_override("quick.test", quick.addr())
            .mx_override("slow.test", slow.addr()),
    );
    let message = mail::generate(1, SENDER, &["a@quick.test", "b@slow.test"]);
    send(
        &empath,
        "outbox",
        &message,
        &["a@quick.test", "b@slow.test"],
    );
    assert!(slow.wait_for_held(1, TIMEOUT), "{}", empath.log_tail());
    empath.wait_until("quick.test's result to be recorded", TIMEOUT, || {
        // smtp-out logs the result; qmgr writes it on receipt.
        if copies(&quick, 0) == 1 && empath.log().contains("recipient=\"a@quick.test\"") {
            Ok(())
        } else {
            Err("not yet".into())
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let killed = empath.kill9_child(QMGR);
    empath.wait_restarted(QMGR, &killed, TIMEOUT);
    slow.release();
    empath.wait_queue_empty(TIMEOUT);
    assert!(copies(&slow, 0) >= 1);
    assert_eq!(
        copies(&quick, 0),
        1,
        "quick.test got a second copy after the qmgr crash\n{}",
        empath.log_tail()
    );
    empath.stop();
}

/// smtp-out dies in the middle of every delivery: each is an attempt that
/// failed, and after `max_attempts` the message bounces instead of being
/// resent for ever.
#[test]
fn an_agent_that_dies_mid_job_uses_up_attempts_and_the_message_bounces() {
    let hanging = Sink::with_policy(SinkPolicy::accept_all().hold_after(0));
    let senders = Sink::start();
    let empath = Empath::start(
        TestConfig::new()
            .mx_override("hang.test", hanging.addr())
            .mx_override("client.test", senders.addr())
            .delivery("max_attempts", "2"),
    );
    send(
        &empath,
        "outbox",
        &mail::generate(1, SENDER, &["x@hang.test"]),
        &["x@hang.test"],
    );
    for attempt in 1..=2 {
        assert!(
            hanging.wait_for_held(attempt, TIMEOUT),
            "attempt {attempt} never reached the server\n{}",
            empath.log_tail()
        );
        let killed = empath.kill9_child(SMTP_OUT);
        empath.wait_restarted(SMTP_OUT, &killed, TIMEOUT);
    }
    // The sender hears about it.
    let bounce = senders
        .wait_for_messages(1, TIMEOUT)
        .unwrap_or_else(|n| panic!("{n} bounces\n{}", empath.log_tail()));
    let text = String::from_utf8_lossy(&bounce[0].data);
    let unfolded = text.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(unfolded.contains("too many delivery attempts"), "{text}");
    assert!(unfolded.contains("Delivery attempts: 2"), "{text}");
    assert!(
        empath
            .log()
            .matches("delivery agent failed during the job")
            .count()
            >= 2,
        "{}",
        empath.log_tail()
    );
    hanging.release();
}

/// A server that refuses connections, counted.
struct DeadServer {
    port: u16,
    connections: Arc<AtomicUsize>,
}

impl DeadServer {
    /// Accepts and closes at once: every connection fails at the greeting.
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&connections);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                counter.fetch_add(1, Ordering::SeqCst);
                drop(stream);
            }
        });
        Self { port, connections }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

#[test]
fn an_open_circuit_breaker_uses_up_no_attempts_and_process_now_probes_it() {
    let dead = DeadServer::start();
    let empath = Empath::start(
        TestConfig::new()
            .mx_override("down.test", format!("127.0.0.1:{}", dead.port))
            .delivery("max_attempts", "3")
            .delivery(
                "circuit_breaker",
                "(enabled: true, failure_threshold: 1, open_secs: 600)",
            ),
    );
    // The first message opens the breaker.
    send(
        &empath,
        "first",
        &mail::generate(1, SENDER, &["a@down.test"]),
        &["a@down.test"],
    );
    empath.wait_until("the breaker to open", TIMEOUT, || {
        if empath.log().contains("Circuit breaker opened") {
            Ok(())
        } else {
            Err("not yet".into())
        }
    });
    let seen = dead.connections();
    // Six more: held back, not bounced, however long we wait.
    let more: Vec<TestMessage> = (10..16)
        .map(|i| {
            let mut m = mail::generate(1, SENDER, &["b@down.test"]).remove(0);
            m.id = i;
            m
        })
        .collect();
    send(&empath, "more", &more, &["b@down.test"]);
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        dead.connections(),
        seen,
        "the open breaker let mail through"
    );
    let listing = empath.empathctl_ok(&["queue", "list", "--json"]);
    let entries: serde_json::Value = serde_json::from_str(&listing).expect("JSON listing");
    let entries = entries["QueueList"].as_array().expect("a list");
    assert_eq!(entries.len(), 7, "{listing}");
    let unattempted = entries
        .iter()
        .filter(|e| e["attempts"].as_u64() == Some(0))
        .count();
    assert_eq!(unattempted, 6, "held-back mail counted attempts: {listing}");
    assert!(!empath.log().contains("too many delivery attempts"));

    // An operator's process-now tries the destination at once.
    empath.empathctl_ok(&["queue", "process-now"]);
    empath.wait_until("a probe despite the open breaker", TIMEOUT, || {
        if dead.connections() > seen {
            Ok(())
        } else {
            Err("no connection yet".into())
        }
    });
}

/// The disk fills up while mail is being deferred: the deferrals cannot be
/// written, the messages stay scheduled (and counted), and once space
/// comes back they are delivered, without a restart.
#[test]
fn mail_deferred_on_a_full_disk_is_delivered_when_space_returns() {
    let sink = Sink::with_policy(
        SinkPolicy::accept_all().fail_first_end_of_data(1000, Reply::new(451, "4.3.0 try later")),
    );
    let mut mount = None;
    let mut mount_error = None;
    let empath = Empath::start_prepared(
        TestConfig::new().mx_override("sink.test", sink.addr()),
        |dir: &Path| match TmpfsMount::mount(&dir.join("spool"), 4096) {
            Ok(m) => mount = Some(m),
            Err(e) => mount_error = Some(e),
        },
    );
    let Some(mount) = mount else {
        println!("SKIPPED: cannot mount a tmpfs for the spool: {mount_error:?}");
        return;
    };
    let qmgr = empath.wait_child(QMGR, TIMEOUT);
    empath.empathctl_ok(&["queue", "freeze"]);
    send(
        &empath,
        "outbox",
        &mail::generate(5, SENDER, &["r@sink.test"]),
        &["r@sink.test"],
    );
    let filler = mount.path().join("filler");
    fill_filesystem(&filler);
    empath.empathctl_ok(&["queue", "unfreeze"]);
    empath.wait_until("deferrals that cannot be written", TIMEOUT, || {
        let failures = empath
            .log()
            .matches("cannot defer message; will try again")
            .count();
        if failures >= 5 {
            Ok(())
        } else {
            Err(format!("{failures} failed deferrals"))
        }
    });
    // Still scheduled and counted.
    let stats: serde_json::Value =
        serde_json::from_str(&empath.empathctl_ok(&["queue", "stats", "--json"]))
            .expect("JSON stats");
    assert_eq!(stats["Stats"]["total"].as_u64(), Some(5), "{stats}");

    sink.set_policy(SinkPolicy::accept_all());
    std::fs::remove_file(&filler).expect("free the space");
    empath.wait_queue_empty(TIMEOUT);
    for id in 0..5 {
        assert!(copies(&sink, id) >= 1, "message {id} lost");
    }
    assert_eq!(empath.child_pid(QMGR), Some(qmgr), "qmgr was restarted");
    let mut empath = empath;
    empath.stop();
    drop(mount);
}
