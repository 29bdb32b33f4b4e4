//! `/metrics` counters never go backwards when a daemon restarts: a
//! scraper watches them while qmgr and then empath-anvil itself are
//! killed with SIGKILL, and the totals at the end equal the traffic.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use empath_tests::master::http_get;
use empath_tests::{ANVIL, Empath, QMGR, Sink, SmtpSend, TestConfig, mail};

const SENDER: &str = "sender@client.test";
const RECIPIENT: &str = "user@sink.test";
const BATCH: usize = 10;
const TIMEOUT: Duration = Duration::from_secs(60);

/// The counters watched: every sample of each is summed.
const COUNTERS: [&str; 4] = [
    "empath_delivery_attempts_total",
    "empath_smtp_messages_received_total",
    "empath_smtp_connections_total",
    "empath_delivery_queue_age_seconds_count",
];

/// The sum of every sample of `name` in an exposition (`name` or
/// `name{...}` lines).
fn sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let metric = series.split('{').next()?;
            (metric == name).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

fn counters(health: SocketAddr) -> BTreeMap<&'static str, f64> {
    let (status, text) = http_get(health, "/metrics");
    assert_eq!(status, 200, "{text}");
    COUNTERS
        .iter()
        .map(|name| (*name, sum(&text, name)))
        .collect()
}

/// As [`counters`], `None` for a failed scrape: a scrape that empath-anvil
/// was answering when it was killed gets a reset, as Prometheus would.
fn try_counters(health: SocketAddr) -> Option<BTreeMap<&'static str, f64>> {
    let mut stream = TcpStream::connect_timeout(&health, Duration::from_secs(10)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {health}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, text) = response.split_once("\r\n\r\n")?;
    (head.split_whitespace().nth(1) == Some("200")).then(|| {
        COUNTERS
            .iter()
            .map(|name| (*name, sum(text, name)))
            .collect()
    })
}

fn send_batch(empath: &Empath, name: &str) {
    let messages = mail::generate(BATCH, SENDER, &[RECIPIENT]);
    let outbox = mail::write_eml_files(&empath.dir().join(name), &messages);
    SmtpSend::new(empath.smtp_addr(), SENDER, &[RECIPIENT], &outbox)
        .run()
        .assert_all_accepted(BATCH, || empath.log_tail());
}

/// Waits until the scrape shows `delivered` delivered attempts (and as
/// many messages received), and returns the counters then.
fn wait_counted(empath: &Empath, delivered: usize) -> BTreeMap<&'static str, f64> {
    let health = empath.health_addr();
    empath.wait_until("the counters to catch up", TIMEOUT, || {
        let now = counters(health);
        let expected = delivered as f64;
        if now["empath_delivery_attempts_total"] == expected
            && now["empath_smtp_messages_received_total"] == expected
            && now["empath_delivery_queue_age_seconds_count"] == expected
        {
            Ok(now)
        } else {
            Err(format!("{now:?}, want {delivered} delivered"))
        }
    })
}

#[test]
fn counters_never_decrease_across_a_kill_of_qmgr_and_of_empath_anvil() {
    let sink = Sink::start();
    let empath = Empath::start(
        TestConfig::new()
            .with_health()
            .mx_override("sink.test", sink.addr()),
    );
    let health = empath.health_addr();

    // A scraper that checks every scrape against the one before.
    let stop = Arc::new(AtomicBool::new(false));
    let backwards: Arc<Mutex<Vec<String>>> = Arc::default();
    let scrapes = Arc::new(Mutex::new(0usize));
    let failed = Arc::new(Mutex::new(0usize));
    let scraper = {
        let (stop, backwards, scrapes, failed) = (
            Arc::clone(&stop),
            Arc::clone(&backwards),
            Arc::clone(&scrapes),
            Arc::clone(&failed),
        );
        std::thread::spawn(move || {
            let mut last = counters(health);
            while !stop.load(Ordering::SeqCst) {
                let Some(now) = try_counters(health) else {
                    *failed.lock().unwrap() += 1;
                    continue;
                };
                for name in COUNTERS {
                    if now[name] < last[name] {
                        backwards
                            .lock()
                            .unwrap()
                            .push(format!("{name}: {} -> {}", last[name], now[name]));
                    }
                }
                last = now;
                *scrapes.lock().unwrap() += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };

    send_batch(&empath, "outbox-1");
    sink.wait_for_messages(BATCH, TIMEOUT)
        .unwrap_or_else(|got| panic!("{got} delivered\n{}", empath.log_tail()));
    let first = wait_counted(&empath, BATCH);

    // qmgr dies with its counts; the collector keeps them.
    let killed = empath.kill9_child(QMGR);
    empath.wait_restarted(QMGR, &killed, TIMEOUT);
    let after_qmgr = counters(health);
    assert_eq!(
        after_qmgr["empath_delivery_attempts_total"], BATCH as f64,
        "a restarted qmgr's zero replaced what the old one counted"
    );
    send_batch(&empath, "outbox-2");
    sink.wait_for_messages(2 * BATCH, TIMEOUT)
        .unwrap_or_else(|got| panic!("{got} delivered\n{}", empath.log_tail()));
    wait_counted(&empath, 2 * BATCH);

    // The collector itself dies: the totals it carried for the dead qmgr
    // are read back from private/anvil.totals.
    let killed = empath.kill9_child(ANVIL);
    empath.wait_restarted(ANVIL, &killed, TIMEOUT);
    let after_anvil = counters(health);
    assert_eq!(
        after_anvil["empath_delivery_attempts_total"],
        2.0 * BATCH as f64,
        "empath-anvil's restart lost the carried totals\n{}",
        empath.log_tail()
    );
    // And both again, qmgr while the anvil is away.
    let anvil = empath.kill9_child(ANVIL);
    let qmgr = empath.kill9_child(QMGR);
    empath.wait_restarted(ANVIL, &anvil, TIMEOUT);
    empath.wait_restarted(QMGR, &qmgr, TIMEOUT);
    send_batch(&empath, "outbox-3");
    sink.wait_for_messages(3 * BATCH, TIMEOUT)
        .unwrap_or_else(|got| panic!("{got} delivered\n{}", empath.log_tail()));
    let last = wait_counted(&empath, 3 * BATCH);

    stop.store(true, Ordering::SeqCst);
    scraper.join().expect("the scraper");
    let backwards = backwards.lock().unwrap().clone();
    let scrapes = *scrapes.lock().unwrap();
    let failed = *failed.lock().unwrap();
    println!("{scrapes} scrapes ({failed} cut by a kill); first {first:?}, last {last:?}");
    assert!(
        failed <= 3,
        "{failed} failed scrapes for 3 kills of empath-anvil"
    );
    assert!(scrapes >= 10, "only {scrapes} scrapes");
    assert!(
        backwards.is_empty(),
        "counters went backwards: {backwards:?}\n{}",
        empath.log_tail()
    );
    for name in COUNTERS {
        assert!(last[name] >= first[name], "{name}");
    }
}
