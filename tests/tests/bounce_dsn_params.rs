//! DSNs that honour the SMTP DSN extension's parameters (RFC 3461): RET,
//! ENVID, NOTIFY and ORCPT, as given by the SMTP client and stored by smtpd.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use empath_tests::bounce::{BounceSetup, SENDER, message};
use empath_tests::dsn::DsnSend;
use empath_tests::{Reply, SinkPolicy};

const BOB: &str = "bob@sink.test";

fn refusing_bob(reply: Reply, dsn_extra: &str, lifetime_secs: Option<u64>) -> BounceSetup {
    BounceSetup::start(
        SinkPolicy::accept_all().reply_to_rcpt(BOB, reply),
        SinkPolicy::accept_all(),
        SinkPolicy::accept_all(),
        dsn_extra,
        |config| match lifetime_secs {
            Some(secs) => config.delivery("max_queue_lifetime_secs", &secs.to_string()),
            None => config,
        },
    )
}

fn no_such_user() -> Reply {
    Reply::new(550, "5.1.1 No such user")
}

#[test]
fn ret_full_returns_the_whole_message() {
    let setup = refusing_bob(no_such_user(), "", None);
    DsnSend::new(setup.empath.smtp_addr(), SENDER, &[BOB])
        .mail_option("RET=FULL")
        .send(
            &message("full", BOB, "BODY-MARKER-FULL"),
            setup.empath.dir(),
            || setup.empath.log_tail(),
        );

    let arrived = setup.wait_for(&setup.home, 1, "the DSN");
    let dsn = setup.parse(&arrived[0]);
    assert_eq!(dsn.defects(), Vec::<String>::new());
    assert_eq!(
        dsn.parts(),
        ["text/plain", "message/delivery-status", "message/rfc822"]
    );
    assert_eq!(dsn.returned_headers()["subject"], "bounce test full");
    let body = dsn.returned_body().expect("the returned body");
    assert!(body.contains("BODY-MARKER-FULL"), "{body:?}");
    setup.wait_settled();
}

#[test]
fn ret_full_over_the_size_cap_returns_the_headers() {
    let setup = refusing_bob(no_such_user(), "max_return_size: 2000", None);
    let body = "BODY-MARKER-BIG ".repeat(1000);
    DsnSend::new(setup.empath.smtp_addr(), SENDER, &[BOB])
        .mail_option("RET=FULL")
        .send(&message("too-big", BOB, &body), setup.empath.dir(), || {
            setup.empath.log_tail()
        });

    let arrived = setup.wait_for(&setup.home, 1, "the DSN");
    let dsn = setup.parse(&arrived[0]);
    assert_eq!(dsn.returned_type().as_deref(), Some("text/rfc822-headers"));
    assert_eq!(dsn.returned_headers()["subject"], "bounce test too-big");
    assert!(!String::from_utf8_lossy(&arrived[0].data).contains("BODY-MARKER-BIG"));
    assert!(dsn.human().contains("too large"), "{}", dsn.human());
    setup.wait_settled();
}

#[test]
fn envid_and_orcpt_come_back_in_the_report() {
    let setup = refusing_bob(no_such_user(), "", None);
    DsnSend::new(setup.empath.smtp_addr(), SENDER, &[BOB])
        .mail_option("ENVID=QQ314159")
        .rcpt_option("ORCPT=rfc822;Bob@Sink.test")
        .send(
            &message("envid", BOB, "Where did it go?"),
            setup.empath.dir(),
            || setup.empath.log_tail(),
        );

    let arrived = setup.wait_for(&setup.home, 1, "the DSN");
    let dsn = setup.parse(&arrived[0]);
    assert_eq!(
        dsn.per_message()
            .get("original-envelope-id")
            .map(String::as_str),
        Some("QQ314159")
    );
    let bob = dsn.recipient(BOB).expect("a block for bob");
    let orcpt = bob.get("original-recipient").expect("Original-Recipient");
    let (kind, address) = orcpt.split_once(';').expect("type;address");
    assert_eq!(kind.trim(), "rfc822");
    assert_eq!(address.trim(), "Bob@Sink.test");
    setup.wait_settled();
}

#[test]
fn notify_never_sends_nothing() {
    let setup = refusing_bob(no_such_user(), "", None);
    DsnSend::new(setup.empath.smtp_addr(), SENDER, &[BOB])
        .rcpt_option("NOTIFY=NEVER")
        .send(
            &message("never", BOB, "Do not tell me."),
            setup.empath.dir(),
            || setup.empath.log_tail(),
        );

    // bounce queues any notice before it lets qmgr remove the original,
    // so once the queue is empty every notice due has been delivered.
    setup.wait_settled();
    assert_eq!(setup.home.message_count(), 0);
    assert!(
        setup.empath.log().contains("no recipient to report on"),
        "{}",
        setup.empath.log_tail()
    );
}

#[test]
fn notify_failure_gets_no_delay_warning() {
    let setup = refusing_bob(
        Reply::new(452, "4.2.2 Mailbox full"),
        "delay_warning_secs: 1",
        Some(5),
    );
    DsnSend::new(setup.empath.smtp_addr(), SENDER, &[BOB])
        .rcpt_option("NOTIFY=FAILURE")
        .send(
            &message("failure-only", BOB, "Only bad news, please."),
            setup.empath.dir(),
            || setup.empath.log_tail(),
        );

    let arrived = setup.wait_for(&setup.home, 1, "the failure DSN");
    setup.wait_settled();
    assert_eq!(setup.home.message_count(), 1, "no delay warning");
    let dsn = setup.parse(&arrived[0]);
    assert_eq!(dsn.recipient(BOB).expect("bob")["action"], "failed");
}

#[test]
fn notify_success_reports_the_delivery() {
    let setup = BounceSetup::start(
        SinkPolicy::accept_all(),
        SinkPolicy::accept_all(),
        SinkPolicy::accept_all(),
        "",
        |config| config,
    );
    DsnSend::new(setup.empath.smtp_addr(), SENDER, &[BOB])
        .rcpt_option("NOTIFY=SUCCESS")
        .send(
            &message("success", BOB, "Tell me when it is there."),
            setup.empath.dir(),
            || setup.empath.log_tail(),
        );

    let arrived = setup.wait_for(&setup.home, 1, "the success report");
    let dsn = setup.parse(&arrived[0]);
    assert_eq!(dsn.defects(), Vec::<String>::new());
    assert_eq!(dsn.subject(), "Successful Mail Delivery Report");
    assert_eq!(
        dsn.parts(),
        [
            "text/plain",
            "message/delivery-status",
            "text/rfc822-headers"
        ]
    );
    let bob = dsn.recipient(BOB).expect("a block for bob");
    assert_eq!(bob.get("action").map(String::as_str), Some("relayed"));
    let status = bob.get("status").expect("Status");
    assert!(status.starts_with("2."), "{status}");
    assert_eq!(dsn.returned_headers()["subject"], "bounce test success");
    setup.wait_settled();
    assert_eq!(setup.remote.message_count(), 1, "the message itself");
    assert_eq!(setup.home.message_count(), 1, "one report");
}

#[test]
fn one_final_report_covers_the_failed_and_the_delivered() {
    const CAROL: &str = "carol@sink.test";
    let setup = refusing_bob(no_such_user(), "", None);
    DsnSend::new(setup.empath.smtp_addr(), SENDER, &[BOB, CAROL])
        .rcpt_option("NOTIFY=SUCCESS,FAILURE")
        .send(
            &message("both", BOB, "One of two."),
            setup.empath.dir(),
            || setup.empath.log_tail(),
        );

    let arrived = setup.wait_for(&setup.home, 1, "the DSN");
    let dsn = setup.parse(&arrived[0]);
    assert_eq!(dsn.subject(), "Undelivered Mail Returned to Sender");
    let action = |address: &str| {
        dsn.recipient(address)
            .and_then(|fields| fields.get("action").cloned())
    };
    assert_eq!(action(BOB).as_deref(), Some("failed"));
    assert_eq!(action(CAROL).as_deref(), Some("relayed"));
    setup.wait_settled();
    assert_eq!(setup.home.message_count(), 1, "one report for both");
}
