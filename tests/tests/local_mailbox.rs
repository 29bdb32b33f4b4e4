//! Local delivery into mailboxes, with the real binaries, real system
//! users (useradd; the tests run as root) and real readers (Python's
//! `mailbox` module): `sendmail root` and SMTP mail to root@localhost
//! reach the mbox of the user root is aliased to; unknown local
//! recipients are refused at RCPT; bsd-mailx reads the mbox; 20
//! parallel deliveries to one mbox stay intact; Maildir under the home
//! directory.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::time::Duration;

use empath_tests::local::{TestUser, read_mailbox, smtp_try};
use empath_tests::mail;
use empath_tests::{Empath, SmtpSend, TestConfig};

const DELIVERY_TIMEOUT: Duration = Duration::from_secs(120);

fn wait_for_messages(
    empath: &Empath,
    kind: &str,
    path: &std::path::Path,
    count: usize,
) -> Vec<empath_tests::local::MailboxMessage> {
    empath.wait_until(
        &format!("{count} messages in {}", path.display()),
        DELIVERY_TIMEOUT,
        || {
            let messages = read_mailbox(kind, path);
            if messages.len() >= count {
                Ok(messages)
            } else {
                Err(format!("{} messages", messages.len()))
            }
        },
    )
}

#[test]
fn sendmail_root_and_smtp_to_root_reach_the_mbox_root_is_aliased_to() {
    let alice = TestUser::create("alice");
    let empath = Empath::start(TestConfig::new().with_aliases());
    empath.set_aliases(&format!("# who reads root's mail\nroot: {}\n", alice.name));

    let sent = empath.sendmail(
        &["root"],
        "Subject: from cron\n\nhi\nFrom the start of a line\n",
    );
    assert!(sent.status.success(), "sendmail: {}", sent.combined());
    let answer = smtp_try(
        empath.smtp_addr(),
        "someone@client.test",
        &["root@localhost"],
        "Subject: over smtp\r\n\r\nhello root\r\n",
    );
    assert!(answer.contains("\"data\": [250"), "{answer}");

    let mbox = empath.mail_spool().join(&alice.name);
    let messages = wait_for_messages(&empath, "mbox", &mbox, 2);
    assert_eq!(messages.len(), 2, "{messages:?}");
    let cron = messages
        .iter()
        .find(|m| m.subject.as_deref() == Some("from cron"))
        .unwrap_or_else(|| panic!("no sendmail message in {messages:?}"));
    // Qualified with the origin (the host name), then aliased.
    assert_eq!(
        cron.delivered_to,
        [format!("{}@mx.empath.test", alice.name)],
        "{cron:?}"
    );
    assert!(
        cron.return_path
            .as_deref()
            .is_some_and(|r| r.contains("@mx.empath.test"))
    );
    assert!(
        cron.from_line
            .as_deref()
            .is_some_and(|f| f.contains("@mx.empath.test")),
        "{cron:?}"
    );
    // mbox readers keep the `>` of a quoted line (mboxo, as Postfix writes).
    assert_eq!(cron.body.trim_end(), "hi\n>From the start of a line");
    let smtp = messages
        .iter()
        .find(|m| m.subject.as_deref() == Some("over smtp"))
        .unwrap_or_else(|| panic!("no SMTP message in {messages:?}"));
    assert_eq!(smtp.return_path.as_deref(), Some("<someone@client.test>"));
    assert!(
        smtp.from_line
            .as_deref()
            .is_some_and(|f| f.starts_with("someone@client.test "))
    );
    assert_eq!(smtp.body.trim_end(), "hello root");

    // A real mail reader (bsd-mailx) sees the same two messages.
    let mut reader = std::process::Command::new("mail");
    reader.arg("-f").arg(&mbox);
    let shown = empath_tests::run::run_with_stdin(reader, b"x\n");
    assert!(shown.status.success(), "mail -f: {}", shown.combined());
    assert!(
        shown.stdout.contains("2 messages")
            && shown.stdout.contains("from cron")
            && shown.stdout.contains("over smtp"),
        "mail -f {}: {}",
        mbox.display(),
        shown.combined()
    );

    // The mailbox belongs to the user, readable by nobody else; no lock
    // is left behind.
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&mbox).expect("mbox");
    assert_eq!((meta.uid(), meta.mode() & 0o777), (alice.uid, 0o600));
    assert!(!mbox.with_extension("lock").exists());
    empath.wait_queue_empty(Duration::from_secs(30));
}

#[test]
fn an_unknown_local_recipient_is_refused_at_rcpt_and_nothing_is_queued() {
    let alice = TestUser::create("known");
    let empath = Empath::start(TestConfig::new().with_aliases());
    empath.set_aliases("postmaster: root\nlist: root\n");
    let answer = smtp_try(
        empath.smtp_addr(),
        "someone@client.test",
        &["no-such-user-here@localhost"],
        "Subject: x\r\n\r\nx\r\n",
    );
    assert!(answer.contains("[550, \"5.1.1 <no-such-user-here@localhost>: Recipient address rejected: User unknown in local recipient table\"]"), "{answer}");
    assert!(answer.contains("\"data\": \"no recipients\""), "{answer}");
    // A user and an alias are accepted in the same transaction; the
    // unknown one is left out.
    let known = format!("{}@LOCALHOST", alice.name);
    let answer = smtp_try(
        empath.smtp_addr(),
        "someone@client.test",
        &["ghost@localhost", known.as_str(), "list@mx.empath.test"],
        "Subject: x\r\n\r\nx\r\n",
    );
    assert!(answer.contains("\"ghost@localhost\": [550"), "{answer}");
    assert!(answer.contains(&format!("\"{known}\": [250")), "{answer}");
    assert!(answer.contains("\"list@mx.empath.test\": [250"), "{answer}");
    empath.wait_queue_empty(Duration::from_secs(60));
    let counts = empath.queue_counts();
    assert!(counts.is_empty(), "{counts:?}");
}

#[test]
fn twenty_parallel_deliveries_to_one_mbox_are_all_intact() {
    let bob = TestUser::create("bob");
    let empath = Empath::start(TestConfig::new());
    let to = format!("{}@localhost", bob.name);
    let messages = mail::generate(20, "sender@client.test", &[to.as_str()]);
    let outbox = mail::write_eml_files(&empath.dir().join("outbox"), &messages);
    let report = SmtpSend::new(
        empath.smtp_addr(),
        "sender@client.test",
        &[to.as_str()],
        &outbox,
    )
    .threads(20)
    .run();
    report.assert_all_accepted(20, || empath.log_tail());
    let mbox = empath.mail_spool().join(&bob.name);
    wait_for_messages(&empath, "mbox", &mbox, 20);
    empath.wait_queue_empty(Duration::from_secs(60));
    let delivered = read_mailbox("mbox", &mbox);
    assert_eq!(delivered.len(), 20);
    // Each message whole: the raw mbox holds every original body line in
    // order (with `From ` lines quoted), and exactly 20 From_ lines.
    let raw = std::fs::read_to_string(&mbox).expect("mbox");
    assert_eq!(raw.lines().filter(|l| l.starts_with("From ")).count(), 20);
    for message in &messages {
        let text = String::from_utf8_lossy(&message.bytes).replace("\r\n", "\n");
        let body = text.split_once("\n\n").map_or("", |(_, b)| b);
        let quoted: String = body
            .lines()
            .map(|l| {
                if l.starts_with("From ") {
                    format!(">{l}\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        assert!(
            raw.contains(&quoted),
            "message {} is not intact in the mbox",
            message.id
        );
    }
}

#[test]
fn maildir_under_the_home_directory() {
    let carol = TestUser::create("carol");
    let empath = Empath::start(TestConfig::new().local_delivery("home_mailbox", "\"Maildir/\""));
    let to = format!("{}@localhost", carol.name);
    let answer = smtp_try(
        empath.smtp_addr(),
        "someone@client.test",
        &[to.as_str()],
        "Subject: to a maildir\r\n\r\nFrom here on\r\n",
    );
    assert!(answer.contains("\"data\": [250"), "{answer}");
    let maildir = carol.home.join("Maildir");
    let messages = wait_for_messages(&empath, "maildir", &maildir, 1);
    assert_eq!(messages[0].subject.as_deref(), Some("to a maildir"));
    assert_eq!(messages[0].delivered_to, [to.to_lowercase()]);
    // Maildir keeps the body as it is: no From_ quoting.
    assert_eq!(messages[0].body, "From here on\n");
    use std::os::unix::fs::MetadataExt;
    let file = std::fs::read_dir(maildir.join("new"))
        .expect("new/")
        .next()
        .expect("a file")
        .expect("entry");
    let meta = file.metadata().expect("metadata");
    assert_eq!(meta.uid(), carol.uid, "written as the user");
    assert_eq!(
        std::fs::read_dir(maildir.join("tmp"))
            .expect("tmp/")
            .count(),
        0
    );
}
