//! LMTP to a real Dovecot (Debian's dovecot-lmtpd), over TCP and over a
//! Unix socket: a virtual mailbox domain's mail lands in the users'
//! Maildirs, read back with `doveadm fetch`; a recipient Dovecot rejects
//! gets its own DSN while the others are delivered.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::time::Duration;

use empath_tests::dovecot::Dovecot;
use empath_tests::{Empath, Sink, SmtpSend, TestConfig, mail};

const SENDER: &str = "sender@sink.test";
const TIMEOUT: Duration = Duration::from_secs(120);

#[test]
fn virtual_mailboxes_are_delivered_to_dovecot_over_lmtp() {
    let dovecot = Dovecot::start(&["alice", "bob"]);
    let sink = Sink::start();
    let empath = Empath::start(
        TestConfig::new()
            .mx_override("sink.test", sink.addr())
            .domain_key(
                "virt.test",
                "transport",
                &format!("\"lmtp:inet:{}\"", dovecot.addr()),
            )
            .domain_key(
                "sock.test",
                "transport",
                &format!("\"lmtp:unix:{}\"", dovecot.socket().display()),
            ),
    );
    let recipients = ["alice@virt.test", "nobody@virt.test", "bob@sock.test"];
    let messages = mail::generate(1, SENDER, &recipients);
    let outbox = mail::write_eml_files(&empath.dir().join("outbox"), &messages);
    SmtpSend::new(empath.smtp_addr(), SENDER, &recipients, &outbox)
        .run()
        .assert_all_accepted(1, || empath.log_tail());

    // The DSN for the refused recipient comes back to the sender.
    sink.wait_for_messages(1, TIMEOUT)
        .unwrap_or_else(|e| panic!("no DSN: {e}\n{}", empath.log_tail()));
    empath.wait_queue_empty(TIMEOUT);
    let marker = format!("X-Test-Id: {}\n", messages[0].id);
    for user in ["alice", "bob"] {
        let inbox = dovecot.inbox(user);
        assert_eq!(inbox.len(), 1, "{user}: {inbox:?}\n{}", dovecot.log());
        // doveadm prints LF line endings.
        assert!(
            inbox[0].contains(&marker),
            "{user} got another message: {}\n(expected {marker:?})",
            inbox[0]
        );
        // Dovecot's own trace field: it came over LMTP.
        assert!(inbox[0].contains("with LMTP"), "{}", inbox[0]);
    }
    let dsns = sink.messages();
    assert_eq!(dsns.len(), 1, "{}", empath.log_tail());
    let dsn = String::from_utf8_lossy(&dsns[0].data);
    assert_eq!(dsns[0].rcpt_to, vec![SENDER.to_owned()]);
    assert!(
        dsn.contains("Final-Recipient: rfc822; nobody@virt.test"),
        "{dsn}"
    );
    assert!(dsn.contains("5.1.1"), "{dsn}");
    assert!(
        !dsn.contains("Final-Recipient: rfc822; alice@virt.test"),
        "{dsn}"
    );
}
