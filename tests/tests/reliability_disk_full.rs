//! A full disk: with the spool on a small tmpfs filled to the last block,
//! clients get 452 4.3.1 (never a 250 for a message that is then lost),
//! and service comes back by itself once space is freed.
//!
//! Needs root (to mount a tmpfs); without it the test prints why and
//! passes without checking anything. Build the binaries first:
//! `cargo build --workspace --bins`.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use empath_tests::mail::{self, TestMessage};
use empath_tests::reliability::{TmpfsMount, fill_filesystem};
use empath_tests::{Empath, SendReport, Sink, SmtpSend, TestConfig};

const SENDER: &str = "full@client.test";
const RECIPIENT: &str = "rcpt@sink.test";
/// Big enough for the queue dirs and a few messages, small enough to fill
/// in an instant.
const SPOOL_KIB: u64 = 4096;
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(120);

fn batch(ids: std::ops::Range<usize>, body_lines: usize) -> Vec<TestMessage> {
    ids.map(|id| TestMessage {
        id,
        bytes: format!(
            "From: <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: disk full {id}\r\n{}: {id}\r\n\
             Message-ID: <full-{id}@client.test>\r\nDate: Tue, 1 Apr 2025 12:00:00 +0000\r\n\r\n{}",
            mail::TEST_ID_HEADER,
            "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ\r\n"
                .repeat(body_lines)
        )
        .into_bytes(),
        has_message_id: true,
        has_date: true,
    })
    .collect()
}

fn send(empath: &Empath, name: &str, messages: &[TestMessage]) -> SendReport {
    let outbox = empath.dir().join(name);
    mail::write_eml_files(&outbox, messages);
    SmtpSend::new(empath.smtp_addr(), SENDER, &[RECIPIENT], &outbox)
        .timeout(DELIVERY_TIMEOUT)
        .run()
}

fn accepted_ids(report: &SendReport) -> BTreeSet<usize> {
    report
        .results
        .iter()
        .filter(|r| r.ok)
        .filter_map(|r| {
            r.file
                .trim_start_matches("msg-")
                .trim_end_matches(".eml")
                .parse()
                .ok()
        })
        .collect()
}

/// Every refusal must be the full-disk one; returns how many there were.
fn check_refusals(empath: &Empath, report: &SendReport) -> usize {
    let refusals = report.failures();
    for failure in &refusals {
        assert!(
            failure.code == Some(452) && failure.reply.starts_with("4.3.1"),
            "a full disk must give 452 4.3.1, got {:?} {:?}\n{}",
            failure.code,
            failure.reply,
            empath.log_tail()
        );
    }
    refusals.len()
}

fn wait_delivered(empath: &Empath, sink: &Sink, ids: &BTreeSet<usize>) {
    empath.wait_until("accepted messages to arrive", DELIVERY_TIMEOUT, || {
        let arrived: BTreeSet<usize> = sink.inspect(|messages| {
            messages
                .iter()
                .filter_map(|m| mail::test_id(&m.data))
                .collect()
        });
        let missing: Vec<&usize> = ids.difference(&arrived).collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("not delivered: {missing:?}"))
        }
    });
}

#[test]
fn full_disk_gives_452_and_service_recovers() {
    let mut mount_error = None;
    let mut mount = None;
    let sink = Sink::start();
    let config = TestConfig::new().mx_override("sink.test", sink.addr());
    // The mount outlives the master: it is declared first, so dropped last.
    let empath = Empath::start_prepared(config, |dir: &Path| {
        match TmpfsMount::mount(&dir.join("spool"), SPOOL_KIB) {
            Ok(m) => mount = Some(m),
            Err(e) => mount_error = Some(e),
        }
    });
    let Some(mount) = mount else {
        println!("SKIPPED: cannot mount a tmpfs for the spool: {mount_error:?}");
        return;
    };
    let filler = mount.path().join("filler");
    let empath = empath;

    // Sanity: it works before the disk fills up.
    let before = send(&empath, "outbox-before", &batch(0..3, 10));
    before.assert_all_accepted(3, || empath.log_tail());

    // Delivered and removed first: a message leaving the queue would free
    // space and let the next one in.
    wait_delivered(&empath, &sink, &(0..3).collect());
    empath.wait_queue_empty(DELIVERY_TIMEOUT);

    // Completely full: every message is refused with 452 4.3.1.
    let filled = fill_filesystem(&filler);
    let full = send(&empath, "outbox-full", &batch(100..110, 200));
    let refused = check_refusals(&empath, &full);
    let accepted_while_full = accepted_ids(&full);
    println!(
        "disk full ({filled} filler bytes): {refused} refused, {} accepted",
        accepted_while_full.len()
    );
    assert_eq!(
        refused,
        10,
        "a full spool accepted mail\n{}",
        empath.log_tail()
    );

    // Nearly full: some fit and some do not; each 250 must be delivered.
    let filler_len = std::fs::metadata(&filler).map(|m| m.len()).unwrap_or(0);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .expect("open filler");
    file.set_len(filler_len.saturating_sub(256 * 1024))
        .expect("shrink filler");
    drop(file);
    let nearly = send(&empath, "outbox-nearly", &batch(200..230, 400));
    let refused_nearly = check_refusals(&empath, &nearly);
    let accepted_nearly = accepted_ids(&nearly);
    println!(
        "disk nearly full (256 KiB free): {refused_nearly} refused, {} accepted",
        accepted_nearly.len()
    );

    // Space returns: service recovers without a restart.
    std::fs::remove_file(&filler).expect("remove filler");
    let after = send(&empath, "outbox-after", &batch(300..305, 10));
    after.assert_all_accepted(5, || empath.log_tail());

    let mut must_arrive: BTreeSet<usize> = (0..3).chain(300..305).collect();
    must_arrive.extend(accepted_while_full);
    must_arrive.extend(accepted_nearly);
    wait_delivered(&empath, &sink, &must_arrive);
    empath.wait_queue_empty(DELIVERY_TIMEOUT);
    println!("all {} accepted messages delivered", must_arrive.len());

    // Stop, unmount, and only then let the temp dir go: a mount point in it
    // would stop its removal.
    let mut empath = empath;
    empath.stop();
    drop(mount);
}
