//! The seeds' empathctl invocations (DEPLOYMENT.md "Queue Management",
//! ALERT_RUNBOOKS.md): every `queue list --status` they name, and `queue
//! delete` asking for confirmation on a terminal (a real pseudo-terminal,
//! driven by tests/clients/on_a_terminal.py) while `--yes` serves scripts.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use empath_tests::run::run_bounded;
use empath_tests::{Empath, Sink, SinkPolicy, SmtpSend, TestConfig, binary, mail, seeds};

const SENDER: &str = "ops@client.test";
const TIMEOUT: Duration = Duration::from_secs(60);

fn send(empath: &Empath, to: &str, count: usize) {
    let messages = mail::generate(count, SENDER, &[to]);
    let outbox = mail::write_eml_files(&empath.dir().join(format!("outbox-{count}")), &messages);
    SmtpSend::new(empath.smtp_addr(), SENDER, &[to], &outbox)
        .run()
        .assert_all_accepted(count, || empath.log_tail());
}

/// The queue IDs that `empathctl --json queue list ARGS` lists.
fn listed(empath: &Empath, args: &[&str]) -> Vec<String> {
    let mut all = vec!["--json", "queue", "list"];
    all.extend_from_slice(args);
    let text = empath.empathctl_ok(&all);
    let json: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    json["QueueList"]
        .as_array()
        .unwrap_or_else(|| panic!("no list in {text}"))
        .iter()
        .map(|entry| entry["id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn the_seeds_queue_list_statuses_are_accepted_or_explained() {
    // DEPLOYMENT.md lists the statuses the original empathctl knows.
    let deployment = seeds::read("DEPLOYMENT.md");
    for status in [
        "pending",
        "in-progress",
        "completed",
        "failed",
        "retry",
        "expired",
    ] {
        assert!(deployment.contains(&format!("# - {status}")), "{status}");
    }

    // Deliveries hang after the final dot, so the messages stay in flight.
    let sink = Sink::with_policy(SinkPolicy::accept_all().hold_after(0));
    let empath = Empath::start(TestConfig::new().mx_override("sink.test", sink.addr()));
    send(&empath, "user@sink.test", 2);
    assert!(sink.wait_for_held(2, TIMEOUT), "{}", empath.log_tail());

    let active = listed(&empath, &["--status", "active"]);
    assert_eq!(active.len(), 2, "{active:?}");
    // `--status=in-progress` (DEPLOYMENT.md) and `--status in-progress`.
    assert_eq!(listed(&empath, &["--status=in-progress"]), active);
    assert_eq!(listed(&empath, &["--status", "in-progress"]), active);
    // The runbooks' other forms work as they are.
    for args in [
        vec!["--status=failed"],
        vec!["--status=retry"],
        vec!["--status", "pending", "--limit", "1"],
        vec!["--status", "retry"],
    ] {
        assert_eq!(listed(&empath, &args), Vec::<String>::new(), "{args:?}");
    }
    // No such states in a queue of undelivered mail: the answer says what
    // to use instead.
    for (status, instead) in [("completed", "active"), ("expired", "failed")] {
        let out = empath.empathctl(&["queue", "list", &format!("--status={status}")]);
        assert!(!out.status.success(), "{}", out.combined());
        assert!(
            out.stderr.contains(&format!("no `{status}` messages")) && out.stderr.contains(instead),
            "{}",
            out.combined()
        );
    }

    sink.release();
    if let Err(got) = sink.wait_for_messages(2, TIMEOUT) {
        panic!("the sink got {got} of 2\n{}", empath.log_tail());
    }
}

/// Runs `empathctl ARGS` on a pseudo-terminal and answers `answer` to its
/// question. Returns (exit status, what it printed, whether it asked).
fn on_a_terminal(empath: &Empath, args: &[&str], answer: &str) -> (i64, String, bool) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/on_a_terminal.py");
    let mut command = Command::new("python3");
    command
        .arg(script)
        .args(["[y/N]", answer, "--"])
        .arg(binary("empathctl"))
        .arg("--control-socket")
        .arg(empath.control_socket())
        .args(args)
        .env_remove("EMPATH_TOKEN");
    let out = run_bounded(&mut command, TIMEOUT);
    assert!(out.status.success(), "{}", out.combined());
    let json: serde_json::Value =
        serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", out.stdout));
    (
        json["status"].as_i64().unwrap_or(-1),
        json["output"].as_str().unwrap_or_default().to_owned(),
        json["asked"].as_bool().unwrap_or(false),
    )
}

#[test]
fn queue_delete_asks_on_a_terminal_and_scripts_say_yes() {
    // DEPLOYMENT.md: "empathctl queue delete 01JCXYZ..." (with confirmation)
    // and "... --yes" (without).
    seeds::line_containing("DEPLOYMENT.md", "# Delete message (with confirmation)");
    seeds::line_containing("DEPLOYMENT.md", "empathctl queue delete 01JCXYZ... --yes");

    let sink = Sink::start();
    let empath = Empath::start(TestConfig::new().mx_override("sink.test", sink.addr()));
    empath.empathctl_ok(&["queue", "freeze"]);
    send(&empath, "user@sink.test", 3);
    let ids = listed(&empath, &[]);
    assert_eq!(ids.len(), 3, "{ids:?}");

    // "n" (or just Enter) keeps the message.
    let (status, output, asked) = on_a_terminal(&empath, &["queue", "delete", &ids[0]], "n");
    assert!(asked, "empathctl did not ask: {output}");
    assert!(
        output.contains(&format!("Delete message {} from the queue? [y/N]", ids[0])),
        "{output}"
    );
    assert_ne!(status, 0, "{output}");
    assert!(output.contains("not deleted"), "{output}");
    assert_eq!(
        listed(&empath, &[]),
        ids,
        "a refused deletion deleted something"
    );

    // "y" deletes it.
    let (status, output, asked) = on_a_terminal(&empath, &["queue", "delete", &ids[0]], "y");
    assert!(asked && status == 0, "{status}: {output}");
    assert!(output.contains("deleted"), "{output}");
    assert_eq!(listed(&empath, &[]), ids[1..].to_vec());

    // --yes on a terminal does not ask.
    let (status, output, asked) =
        on_a_terminal(&empath, &["queue", "delete", &ids[1], "--yes"], "n");
    assert!(!asked && status == 0, "{status}: {output}");

    // A script (no terminal) is never asked: it must say --yes.
    let refused = empath.empathctl(&["queue", "delete", &ids[2]]);
    assert_eq!(refused.status.code(), Some(64), "{}", refused.combined());
    assert!(refused.stderr.contains("--yes"), "{}", refused.combined());
    assert_eq!(listed(&empath, &[]), vec![ids[2].clone()]);
    empath.empathctl_ok(&["queue", "delete", &ids[2], "--yes"]);
    assert_eq!(listed(&empath, &[]), Vec::<String>::new());

    empath.empathctl_ok(&["queue", "unfreeze"]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(sink.message_count(), 0, "a deleted message was delivered");
}
