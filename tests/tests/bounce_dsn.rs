//! Delivery status notifications end to end: smtplib -> empath -> a sink
//! that refuses; the DSN travels from `<>` through cleanup and smtp-out to
//! the sender's domain (another sink), where Python's `email` package
//! parses it.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use empath_tests::bounce::{
    BounceSetup, POSTMASTER, REPORTING_MTA, SENDER, assert_wire_format, message,
};
use empath_tests::dsn::DsnSend;
use empath_tests::{Reply, SinkPolicy};

const BOB: &str = "bob@sink.test";
const CAROL: &str = "carol@sink.test";
const ALICE: &str = "alice@sink.test";

fn no_such_user() -> Reply {
    Reply::new(550, "5.1.1 No such user")
}

fn start(remote: SinkPolicy) -> BounceSetup {
    BounceSetup::start(
        remote,
        SinkPolicy::accept_all(),
        SinkPolicy::accept_all(),
        "",
        |config| config,
    )
}

#[test]
fn permanent_failure_sends_the_sender_one_dsn_for_all_failed_recipients() {
    let setup = start(
        SinkPolicy::accept_all()
            .reply_to_rcpt(BOB, no_such_user())
            .reply_to_rcpt(CAROL, Reply::new(553, "5.1.3 Bad destination mailbox")),
    );
    let original = message("permanent", BOB, "Hello Bob.");
    DsnSend::new(setup.empath.smtp_addr(), SENDER, &[ALICE, BOB, CAROL]).send(
        &original,
        setup.empath.dir(),
        || setup.empath.log_tail(),
    );

    let arrived = setup.wait_for(&setup.home, 1, "the DSN at the sender's domain");
    setup.wait_settled();
    assert_eq!(setup.home.message_count(), 1, "one DSN per message");
    assert_eq!(setup.remote.message_count(), 1, "alice got the original");
    assert_eq!(setup.postmaster.message_count(), 0);
    let notice = &arrived[0];
    assert_eq!(notice.mail_from, "", "a DSN comes from the null sender");
    assert_eq!(notice.rcpt_to, [SENDER]);
    assert_wire_format(&notice.data);

    let dsn = setup.parse(notice);
    assert_eq!(dsn.defects(), Vec::<String>::new());
    assert_eq!(dsn.content_type(), "multipart/report");
    assert_eq!(dsn.report_type(), "delivery-status");
    assert_eq!(
        dsn.parts(),
        [
            "text/plain",
            "message/delivery-status",
            "text/rfc822-headers"
        ]
    );
    assert!(dsn.to().contains(SENDER), "To: {}", dsn.to());
    assert!(dsn.from().contains(POSTMASTER), "From: {}", dsn.from());

    let per_message = dsn.per_message();
    assert_eq!(
        per_message.get("reporting-mta").map(String::as_str),
        Some(format!("dns; {REPORTING_MTA}").as_str())
    );
    assert!(
        per_message
            .get("arrival-date")
            .is_some_and(|d| d.ends_with("+0000")),
        "{per_message:?}"
    );

    assert_eq!(dsn.recipients().len(), 2, "{:?}", dsn.recipients());
    let bob = dsn.recipient(BOB).expect("a block for bob");
    assert_eq!(bob["action"], "failed");
    assert_eq!(bob["status"], "5.1.1");
    assert_eq!(bob["diagnostic-code"], "smtp; 550 5.1.1 No such user");
    assert_eq!(bob["remote-mta"], "dns; 127.0.0.1");
    assert!(bob["last-attempt-date"].ends_with("+0000"), "{bob:?}");
    let carol = dsn.recipient(CAROL).expect("a block for carol");
    assert_eq!(carol["action"], "failed");
    assert_eq!(carol["status"], "5.1.3");
    assert!(dsn.recipient(ALICE).is_none(), "alice was delivered");

    assert_eq!(
        dsn.returned_headers().get("subject").map(String::as_str),
        Some("bounce test permanent")
    );
    assert!(dsn.human().contains(BOB) && dsn.human().contains(CAROL));
    assert!(
        !String::from_utf8_lossy(&notice.data).contains("Hello Bob."),
        "without RET=FULL only the headers come back"
    );
}

#[test]
fn a_null_sender_message_that_fails_produces_no_dsn() {
    let setup = start(SinkPolicy::accept_all().reply_to_rcpt(BOB, no_such_user()));
    DsnSend::new(setup.empath.smtp_addr(), "", &[BOB]).send(
        &message("null-sender", BOB, "A bounce of someone else's."),
        setup.empath.dir(),
        || setup.empath.log_tail(),
    );

    // bounce queues any notice before it lets qmgr remove the original,
    // so once the queue is empty every notice due has been delivered.
    setup.wait_settled();
    assert_eq!(setup.home.message_count(), 0);
    assert_eq!(setup.postmaster.message_count(), 0);
    assert_eq!(setup.remote.message_count(), 0);
    assert!(
        setup.empath.log().contains("never bounced"),
        "bounce was asked and said no\n{}",
        setup.empath.log_tail()
    );
}

#[test]
fn ret_hdrs_returns_the_headers_only() {
    let setup = start(SinkPolicy::accept_all().reply_to_rcpt(BOB, no_such_user()));
    DsnSend::new(setup.empath.smtp_addr(), SENDER, &[BOB])
        .mail_option("RET=HDRS")
        .send(
            &message("hdrs", BOB, "BODY-MARKER-HDRS"),
            setup.empath.dir(),
            || setup.empath.log_tail(),
        );

    let arrived = setup.wait_for(&setup.home, 1, "the DSN");
    let dsn = setup.parse(&arrived[0]);
    assert_eq!(dsn.returned_type().as_deref(), Some("text/rfc822-headers"));
    let headers = dsn.returned_headers();
    assert_eq!(headers["subject"], "bounce test hdrs");
    assert_eq!(headers["message-id"], "<hdrs@client.test>");
    assert!(headers.contains_key("received"), "{headers:?}");
    assert!(!String::from_utf8_lossy(&arrived[0].data).contains("BODY-MARKER-HDRS"));
    setup.wait_settled();
}

#[test]
fn an_expired_deferred_message_fails_with_its_last_temporary_status() {
    let setup = BounceSetup::start(
        SinkPolicy::accept_all().reply_to_rcpt(BOB, Reply::new(451, "4.3.0 Mailbox busy")),
        SinkPolicy::accept_all(),
        SinkPolicy::accept_all(),
        "",
        |config| config.delivery("max_queue_lifetime_secs", "3"),
    );
    DsnSend::new(setup.empath.smtp_addr(), SENDER, &[BOB]).send(
        &message("expired", BOB, "Still waiting."),
        setup.empath.dir(),
        || setup.empath.log_tail(),
    );

    let arrived = setup.wait_for(&setup.home, 1, "the DSN of the expired message");
    setup.wait_settled();
    assert_eq!(setup.home.message_count(), 1);
    let dsn = setup.parse(&arrived[0]);
    assert_eq!(dsn.defects(), Vec::<String>::new());
    assert_eq!(dsn.content_type(), "multipart/report");
    let bob = dsn.recipient(BOB).expect("a block for bob");
    assert_eq!(bob["action"], "failed");
    assert!(bob["status"].starts_with("4."), "{bob:?}");
    assert_eq!(bob["status"], "4.3.0");
    assert!(
        bob["diagnostic-code"].starts_with("smtp; 451 4.3.0 Mailbox busy"),
        "{bob:?}"
    );
    assert!(bob["diagnostic-code"].contains("expired"), "{bob:?}");
}

#[test]
fn a_delay_warning_comes_once_before_the_failure() {
    let setup = BounceSetup::start(
        SinkPolicy::accept_all().reply_to_rcpt(BOB, Reply::new(452, "4.2.2 Mailbox full")),
        SinkPolicy::accept_all(),
        SinkPolicy::accept_all(),
        "delay_warning_secs: 1",
        |config| config.delivery("max_queue_lifetime_secs", "6"),
    );
    DsnSend::new(setup.empath.smtp_addr(), SENDER, &[BOB]).send(
        &message("delayed", BOB, "Slowly."),
        setup.empath.dir(),
        || setup.empath.log_tail(),
    );

    let arrived = setup.wait_for(&setup.home, 2, "a delay warning and then a DSN");
    setup.wait_settled();
    assert_eq!(
        setup.home.message_count(),
        2,
        "one warning and one failure notice"
    );
    let warning = setup.parse(&arrived[0]);
    assert_eq!(warning.defects(), Vec::<String>::new());
    assert!(
        warning.subject().contains("Delayed"),
        "{}",
        warning.subject()
    );
    let bob = warning.recipient(BOB).expect("a block for bob");
    assert_eq!(bob["action"], "delayed");
    assert_eq!(bob["status"], "4.2.2");
    assert!(bob["will-retry-until"].ends_with("+0000"), "{bob:?}");
    assert_eq!(
        warning.returned_type().as_deref(),
        Some("text/rfc822-headers")
    );

    let failure = setup.parse(&arrived[1]);
    let bob = failure.recipient(BOB).expect("a block for bob");
    assert_eq!(bob["action"], "failed");
    assert_eq!(bob["status"], "4.2.2");
}

#[test]
fn a_failed_dsn_goes_to_the_postmaster_once() {
    let setup = BounceSetup::start(
        SinkPolicy::accept_all().reply_to_rcpt(BOB, no_such_user()),
        // The sender's own domain does not know the sender.
        SinkPolicy::accept_all().reply_to_rcpt(SENDER, Reply::new(550, "5.1.1 Who?")),
        SinkPolicy::accept_all(),
        "",
        |config| config,
    );
    DsnSend::new(setup.empath.smtp_addr(), SENDER, &[BOB]).send(
        &message("double", BOB, "Nobody hears of this."),
        setup.empath.dir(),
        || setup.empath.log_tail(),
    );

    let arrived = setup.wait_for(&setup.postmaster, 1, "the double bounce");
    setup.wait_settled();
    assert_eq!(setup.postmaster.message_count(), 1, "exactly one");
    assert_eq!(setup.home.message_count(), 0);
    let notice = &arrived[0];
    assert_eq!(notice.mail_from, "");
    assert_eq!(notice.rcpt_to, [POSTMASTER]);
    assert_wire_format(&notice.data);
    let dsn = setup.parse(notice);
    assert_eq!(dsn.defects(), Vec::<String>::new());
    assert_eq!(dsn.content_type(), "multipart/report");
    assert!(dsn.from().contains("MAILER-DAEMON"), "{}", dsn.from());
    assert!(dsn.to().contains(POSTMASTER), "{}", dsn.to());
    let sender = dsn
        .recipient(SENDER)
        .expect("a block for the DSN's recipient");
    assert_eq!(sender["action"], "failed");
    assert_eq!(sender["status"], "5.1.1");
    assert!(sender["diagnostic-code"].contains("550 5.1.1 Who?"));
    // The failed DSN's headers come back.
    let headers = dsn.returned_headers();
    assert_eq!(headers["subject"], "Undelivered Mail Returned to Sender");
    assert!(headers["to"].contains(SENDER), "{headers:?}");
}

#[test]
fn a_failed_double_bounce_is_only_logged() {
    let setup = BounceSetup::start(
        SinkPolicy::accept_all().reply_to_rcpt(BOB, no_such_user()),
        SinkPolicy::accept_all().reply_to_rcpt(SENDER, Reply::new(550, "5.1.1 Who?")),
        SinkPolicy::accept_all().reply_to_rcpt(POSTMASTER, Reply::new(550, "5.1.1 No postmaster")),
        "",
        |config| config,
    );
    DsnSend::new(setup.empath.smtp_addr(), SENDER, &[BOB]).send(
        &message("loop", BOB, "Round and round?"),
        setup.empath.dir(),
        || setup.empath.log_tail(),
    );

    setup.wait_settled();
    assert!(
        setup.empath.log().contains("a double bounce failed"),
        "{}",
        setup.empath.log_tail()
    );
    assert_eq!(setup.home.message_count(), 0);
    assert_eq!(setup.postmaster.message_count(), 0);
    let log = setup.empath.log();
    let generated: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("empath_bounce") && line.contains("DSN generated"))
        .collect();
    assert_eq!(
        generated.len(),
        2,
        "the DSN and one double bounce: {generated:#?}"
    );
}
