//! Aliases and `.forward` with the real binaries and real users: list
//! expansion, `:include:`, a self-reference, a pipe to a command that runs
//! as the configured user (exit 75 defers, 67 bounces with its output in
//! the DSN), a file, an alias loop, a Delivered-To loop, newaliases
//! rebuilding while mail flows, `.forward` to a local user and to a
//! remote address (relayed to the test sink), and a superuser's
//! `.forward`, ignored unless `allow_root_forward` is set.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use empath_common::queue::{Queue, QueueState, RecipientStatus};
use empath_tests::local::{TestUser, read_mailbox, smtp_try};
use empath_tests::{Empath, Sink, SinkMessage, TestConfig};

const TIMEOUT: Duration = Duration::from_secs(120);
const SENDER: &str = "sender@sink.test";

fn start(sink: &Sink, tune: impl FnOnce(TestConfig) -> TestConfig) -> Empath {
    Empath::start(tune(
        TestConfig::new()
            .with_aliases()
            .mx_override("sink.test", sink.addr()),
    ))
}

/// A directory anyone may write to (commands and files run as
/// unprivileged users).
fn open_dir(empath: &Empath, name: &str) -> PathBuf {
    let dir = empath.dir().join(name);
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    dir
}

fn send(empath: &Empath, to: &str, subject: &str) {
    let answer = smtp_try(
        empath.smtp_addr(),
        SENDER,
        &[to],
        &format!("Subject: {subject}\r\n\r\nbody of {subject}\r\n"),
    );
    assert!(answer.contains("\"data\": [250"), "{to}: {answer}");
}

fn mbox_subjects(empath: &Empath, user: &TestUser) -> Vec<String> {
    mbox_subjects_at(&empath.mail_spool().join(&user.name))
}

fn mbox_subjects_at(path: &Path) -> Vec<String> {
    read_mailbox("mbox", path)
        .into_iter()
        .filter_map(|m| m.subject)
        .collect()
}

fn wait_subject(empath: &Empath, path: &Path, subject: &str) {
    empath.wait_until(
        &format!("{subject:?} in {}", path.display()),
        TIMEOUT,
        || {
            let subjects = mbox_subjects_at(path);
            if subjects.iter().any(|s| s == subject) {
                Ok(())
            } else {
                Err(format!("{subjects:?}"))
            }
        },
    );
}

/// DSNs that reached the sender at the sink.
fn wait_dsn(empath: &Empath, sink: &Sink, containing: &str) -> SinkMessage {
    empath.wait_until(&format!("a DSN with {containing:?}"), TIMEOUT, || {
        sink.messages()
            .into_iter()
            .find(|m| {
                // Unfolded: a long reply may be folded at any space.
                let text = String::from_utf8_lossy(&m.data).split("\r\n").fold(
                    String::new(),
                    |mut text, line| {
                        if line.starts_with([' ', '\t']) {
                            text.push(' ');
                            text.push_str(line.trim_start());
                        } else {
                            text.push_str("\r\n");
                            text.push_str(line);
                        }
                        text
                    },
                );
                m.mail_from.is_empty() && text.contains(containing)
            })
            .ok_or_else(|| format!("{} messages at the sink", sink.message_count()))
    })
}

#[test]
fn lists_includes_commands_files_and_loops() {
    let alice = TestUser::create("alice");
    let bob = TestUser::create("bob");
    let runner = TestUser::create("runner");
    let sink = Sink::start();
    let empath = start(&sink, |c| {
        c.local_delivery("default_privs", &format!("{:?}", runner.name))
    });
    let out = open_dir(&empath, "out");
    let staff = empath.dir().join("staff.list");
    std::fs::write(
        &staff,
        format!("# the staff\n{}\n{}\n", alice.name, bob.name),
    )
    .expect("write");
    std::fs::set_permissions(&staff, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    empath.set_aliases(&format!(
        "list: {alice}, {bob}\n\
         staff: :include:{staff}\n\
         {alice}: {alice}, {out}/alice-copy\n\
         robot: \"|id -un > {out}/robot.who; cat > {out}/robot.msg\"\n\
         busy: \"|echo try later; exit 75\"\n\
         gone: \"|echo no such mailbox here; exit 67\"\n\
         archive: {out}/archive\n\
         loop1: loop2\n\
         loop2: loop1\n",
        alice = alice.name,
        bob = bob.name,
        staff = staff.display(),
        out = out.display(),
    ));

    send(&empath, "list@localhost", "to the list");
    send(&empath, "staff@localhost", "to the staff");
    send(
        &empath,
        &format!("{}@localhost", alice.name),
        "to alice herself",
    );
    send(&empath, "robot@localhost", "to the robot");
    send(&empath, "archive@localhost", "to the archive");

    let alice_box = empath.mail_spool().join(&alice.name);
    let bob_box = empath.mail_spool().join(&bob.name);
    for subject in ["to the list", "to the staff", "to alice herself"] {
        wait_subject(&empath, &alice_box, subject);
    }
    for subject in ["to the list", "to the staff"] {
        wait_subject(&empath, &bob_box, subject);
    }
    // The self-reference delivered to alice's mailbox and the file beside it.
    wait_subject(&empath, &out.join("alice-copy"), "to alice herself");
    wait_subject(&empath, &out.join("archive"), "to the archive");

    // The command ran as default_privs, with the message (mbox format)
    // on its input.
    let who = out.join("robot.who");
    empath.wait_until("the robot to run", TIMEOUT, || {
        std::fs::read_to_string(&who).map_err(|e| e.to_string())
    });
    assert_eq!(
        std::fs::read_to_string(&who).expect("who").trim(),
        runner.name
    );
    let input = std::fs::read_to_string(out.join("robot.msg")).expect("robot.msg");
    assert!(input.starts_with(&format!("From {SENDER} ")), "{input}");
    assert!(input.contains("Delivered-To: robot@localhost\n"), "{input}");
    assert!(input.contains("body of to the robot"), "{input}");

    // Exit 67 bounces with 5.1.1 and the command's output in the DSN.
    send(&empath, "gone@localhost", "to nobody");
    let dsn = wait_dsn(&empath, &sink, "no such mailbox here");
    let text = String::from_utf8_lossy(&dsn.data);
    assert!(text.contains("Status: 5.1.1"), "{text}");
    assert_eq!(dsn.rcpt_to, [SENDER]);

    // An alias loop bounces with 5.4.6.
    send(&empath, "loop1@localhost", "round and round");
    let dsn = wait_dsn(&empath, &sink, "alias database loop");
    assert!(String::from_utf8_lossy(&dsn.data).contains("Status: 5.4.6"));

    // Exit 75 defers: the message waits in deferred/ with 4.3.0 and the
    // output, and no DSN goes out.
    send(&empath, "busy@localhost", "come back later");
    let queue = Queue::new(empath.spool().to_owned());
    let reply = empath.wait_until("the busy message to be deferred", TIMEOUT, || {
        let listing = queue
            .list(QueueState::Deferred)
            .map_err(|e| e.to_string())?;
        for id in listing.ids {
            if let Ok(envelope) = queue.read(QueueState::Deferred, id)
                && let Some(RecipientStatus::Deferred { reply, .. }) =
                    envelope.recipients.first().map(|r| r.status.clone())
            {
                return Ok(reply);
            }
        }
        Err("nothing deferred yet".to_owned())
    });
    assert_eq!(reply.enhanced.as_deref(), Some("4.3.0"), "{reply:?}");
    assert!(reply.text.contains("try later"), "{reply:?}");
    assert!(
        !sink
            .messages()
            .iter()
            .any(|m| String::from_utf8_lossy(&m.data).contains("come back later")),
        "a deferred message must not bounce"
    );
    // Each list member got each message once.
    let alice_list = mbox_subjects(&empath, &alice)
        .iter()
        .filter(|s| *s == "to the list")
        .count();
    assert_eq!(alice_list, 1);
}

#[test]
fn a_message_that_was_delivered_here_before_bounces_as_a_loop() {
    let dora = TestUser::create("dora");
    let sink = Sink::start();
    let empath = start(&sink, |c| c);
    let to = format!("{}@localhost", dora.name);
    let answer = smtp_try(
        empath.smtp_addr(),
        SENDER,
        &[to.as_str()],
        &format!("Delivered-To: {to}\r\nSubject: again\r\n\r\nback\r\n"),
    );
    assert!(answer.contains("\"data\": [250"), "{answer}");
    let dsn = wait_dsn(&empath, &sink, "mail forwarding loop");
    assert!(String::from_utf8_lossy(&dsn.data).contains("Status: 5.4.6"));
    assert!(mbox_subjects(&empath, &dora).is_empty());
}

#[test]
fn newaliases_rebuilds_while_mail_flows() {
    let alice = TestUser::create("flowa");
    let bob = TestUser::create("flowb");
    let sink = Sink::start();
    let empath = start(&sink, |c| c);
    let aliases =
        |target: &str, n: usize| format!("flow: {target}\n# rebuild {n}\nother{n}: {target}\n");
    empath.set_aliases(&aliases(&alice.name, 0));
    const MESSAGES: usize = 30;
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for n in 0..MESSAGES {
                send(&empath, "flow@localhost", &format!("flow {n}"));
            }
        });
        for n in 1..=15 {
            let target = if n % 2 == 0 { &alice.name } else { &bob.name };
            empath.set_aliases(&aliases(target, n));
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    // Every message reached one of the two, once; none bounced or waited.
    empath.wait_until("every flow message to be delivered", TIMEOUT, || {
        let total = mbox_subjects(&empath, &alice).len() + mbox_subjects(&empath, &bob).len();
        if total >= MESSAGES {
            Ok(())
        } else {
            Err(format!("{total} of {MESSAGES}"))
        }
    });
    empath.wait_queue_empty(Duration::from_secs(60));
    let mut all: Vec<String> = mbox_subjects(&empath, &alice);
    all.extend(mbox_subjects(&empath, &bob));
    all.sort();
    let mut expected: Vec<String> = (0..MESSAGES).map(|n| format!("flow {n}")).collect();
    expected.sort();
    assert_eq!(all, expected);
    assert_eq!(sink.message_count(), 0, "no DSN");
    // The last rebuild is what new mail follows.
    empath.set_aliases(&aliases(&bob.name, 99));
    send(&empath, "flow@localhost", "after the rebuilds");
    wait_subject(
        &empath,
        &empath.mail_spool().join(&bob.name),
        "after the rebuilds",
    );
}

#[test]
fn dot_forward_to_a_local_user_and_a_remote_address() {
    let erin = TestUser::create("erin");
    let frank = TestUser::create("frank");
    let sink = Sink::start();
    let empath = start(&sink, |c| c);
    erin.write_home_file(
        ".forward",
        &format!("# mine\n{}, far.away@sink.test\n", frank.name),
    );
    let to = format!("{}@localhost", erin.name);
    send(&empath, &to, "passed on");
    wait_subject(&empath, &empath.mail_spool().join(&frank.name), "passed on");
    let relayed = empath.wait_until("the forwarded copy at the sink", TIMEOUT, || {
        sink.messages()
            .into_iter()
            .find(|m| m.rcpt_to == ["far.away@sink.test"])
            .ok_or_else(|| format!("{} messages", sink.message_count()))
    });
    assert_eq!(relayed.mail_from, SENDER, "the original sender stays");
    let text = String::from_utf8_lossy(&relayed.data);
    assert!(text.contains(&format!("Delivered-To: {to}\r\n")), "{text}");
    assert!(text.contains("body of passed on"), "{text}");
    empath.wait_queue_empty(Duration::from_secs(60));
    assert!(
        mbox_subjects(&empath, &erin).is_empty(),
        "erin forwards everything"
    );
}

/// A `.forward` in a uid-0 user's home is not followed by default (a
/// file there could make root's mail run commands as root); with
/// `allow_root_forward: true` it is.
#[test]
fn a_superusers_dot_forward_is_ignored_unless_allowed() {
    let toor = TestUser::create_superuser("toor");
    let frank = TestUser::create("frank");
    toor.write_home_file(".forward", &format!("{}\n", frank.name));
    let to = format!("{}@localhost", toor.name);
    let sink = Sink::start();

    let strict = start(&sink, |c| c);
    send(&strict, &to, "kept for root");
    wait_subject(
        &strict,
        &strict.mail_spool().join(&toor.name),
        "kept for root",
    );
    strict.wait_queue_empty(Duration::from_secs(60));
    assert!(
        mbox_subjects(&strict, &frank).is_empty(),
        "the superuser's .forward was followed"
    );
    drop(strict);

    let allowing = start(&sink, |c| c.local_delivery("allow_root_forward", "true"));
    send(&allowing, &to, "passed on by root");
    wait_subject(
        &allowing,
        &allowing.mail_spool().join(&frank.name),
        "passed on by root",
    );
    allowing.wait_queue_empty(Duration::from_secs(60));
    assert!(mbox_subjects(&allowing, &toor).is_empty());
}
