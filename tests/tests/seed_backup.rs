//! Backing up and restoring a spool, with the README's own commands (the
//! seeds' procedure copies a `queue_state.bin` that Empath never writes;
//! the spool directories are the state): a live backup of an instance
//! whose mail is deferred, restored into a new instance, delivers every
//! message exactly once, intact, with its delivery history kept.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use empath_tests::run::run_bounded;
use empath_tests::{
    Empath, Reply, Sink, SinkPolicy, SmtpSend, TestConfig, binary, mail, seeds, test_dir,
};

const SENDER: &str = "sender@client.test";
const MESSAGES: usize = 5;
const TIMEOUT: Duration = Duration::from_secs(90);

/// The README's ```sh block that starts with `# {title}`.
fn readme_block(title: &str) -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .expect("read README.md");
    let start = readme
        .find(&format!("```sh\n# {title}"))
        .unwrap_or_else(|| panic!("no ```sh block \"# {title}\" in README.md"));
    let block = &readme[start + "```sh\n".len()..];
    block[..block.find("```").expect("the block ends")].to_owned()
}

/// Runs a README block with `sh -e`, with this test's spool, archive and
/// empathctl in place of the documented ones. `systemctl` lines are left
/// to the harness, which starts and stops the instances; without a
/// running instance (`empath_socket`), so are the `empathctl` lines.
fn run_block(block: &str, empath_socket: Option<&Path>, spool: &Path, archive: &Path) {
    let empathctl = empath_socket.map(|socket| {
        format!(
            "{} --control-socket {}",
            binary("empathctl").display(),
            socket.display()
        )
    });
    let script: String = block
        .lines()
        .filter(|line| !line.trim_start().starts_with("systemctl"))
        .filter(|line| empathctl.is_some() || !line.trim_start().starts_with("empathctl"))
        .map(|line| {
            line.replace("/var/spool/empath", &spool.display().to_string())
                .replace(
                    "/backup/empath-spool.tar.gz",
                    &archive.display().to_string(),
                )
                .replace("empathctl", empathctl.as_deref().unwrap_or("empathctl"))
        })
        .collect::<Vec<_>>()
        .join("\n");
    let out = run_bounded(Command::new("sh").args(["-ec", &script]), TIMEOUT);
    assert!(out.status.success(), "{script}\n{}", out.combined());
}

#[test]
fn a_live_backup_restored_into_a_new_instance_delivers_everything_once() {
    // What the seeds do, and why it does not apply.
    let deployment = seeds::read("DEPLOYMENT.md");
    assert!(deployment.contains("queue_state.bin"));
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .expect("README.md");
    assert!(readme.contains("Empath never writes"));

    // The old host: its next hop defers everything.
    let refusing = Sink::with_policy(
        SinkPolicy::accept_all().fail_first_data(usize::MAX, Reply::new(451, "4.3.0 Try later")),
    );
    let old = Empath::start(TestConfig::new().mx_override("sink.test", refusing.addr()));
    let to = "user@sink.test";
    let messages = mail::generate(MESSAGES, SENDER, &[to]);
    let outbox = mail::write_eml_files(&old.dir().join("outbox"), &messages);
    SmtpSend::new(old.smtp_addr(), SENDER, &[to], &outbox)
        .run()
        .assert_all_accepted(MESSAGES, || old.log_tail());
    old.wait_until("every message deferred at least once", TIMEOUT, || {
        let counts = old.queue_counts();
        if counts.deferred == MESSAGES && refusing.data_commands() >= MESSAGES {
            Ok(())
        } else {
            Err(format!("{counts:?}, {} DATA", refusing.data_commands()))
        }
    });

    // The README's live backup, while qmgr keeps retrying every second.
    let archive_dir = test_dir();
    let archive = archive_dir.path().join("empath-spool.tar.gz");
    run_block(
        &readme_block("Back up a running Empath"),
        Some(&old.control_socket()),
        old.spool(),
        &archive,
    );
    let listing = run_bounded(Command::new("tar").arg("-tzf").arg(&archive), TIMEOUT);
    assert!(
        listing.stdout.contains("deferred/"),
        "{}",
        listing.combined()
    );
    for foreign in ["tmp/", "private/", "public/", "master.pid", "frozen"] {
        assert!(
            !listing.stdout.lines().any(|l| l.starts_with(foreign)),
            "{foreign} is in the backup:\n{}",
            listing.stdout
        );
    }
    // The old host is gone for good (its next hop never took anything).
    drop(old);
    assert_eq!(refusing.message_count(), 0);

    // The new host: restore, then start it.
    let sink = Sink::start();
    let dir = test_dir();
    let spool = dir.path().join("spool");
    std::fs::create_dir(&spool).expect("create the new spool");
    let restore = readme_block("Restore");
    run_block(&restore, None, &spool, &archive);
    let new = Empath::start_in(dir, TestConfig::new().mx_override("sink.test", sink.addr()));
    // Each message came back deferred, with its attempts.
    let listed = new.empathctl_ok(&["--json", "queue", "list"]);
    let json: serde_json::Value = serde_json::from_str(&listed).expect("JSON");
    let entries = json["QueueList"].as_array().expect("a list");
    assert_eq!(entries.len(), MESSAGES, "{listed}");
    for entry in entries {
        assert!(entry["attempts"].as_u64() >= Some(1), "{entry}");
    }
    // The block's last step, once the instance runs.
    assert!(
        restore.contains("\nempathctl queue process-now"),
        "{restore}"
    );
    new.empathctl_ok(&["queue", "process-now"]);

    let delivered = sink
        .wait_for_messages(MESSAGES, TIMEOUT)
        .unwrap_or_else(|got| panic!("{got} of {MESSAGES} delivered\n{}", new.log_tail()));
    new.wait_queue_empty(TIMEOUT);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        sink.message_count(),
        MESSAGES,
        "a message was delivered twice"
    );
    let ids: BTreeSet<usize> = delivered
        .iter()
        .map(|m| mail::test_id(&m.data).expect("an X-Test-Id"))
        .collect();
    let sent: BTreeSet<usize> = messages.iter().map(|m| m.id).collect();
    assert_eq!(ids, sent);
    for message in &messages {
        let copy = delivered
            .iter()
            .find(|m| mail::test_id(&m.data) == Some(message.id))
            .expect("delivered");
        mail::added_headers(&copy.data, &message.bytes)
            .unwrap_or_else(|e| panic!("message {} changed: {e}", message.id));
    }
}
