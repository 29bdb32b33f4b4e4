//! What the client declared travels on (issue 18): BODY=8BITMIME and the
//! DSN parameters (RET, ENVID, NOTIFY, ORCPT) reach a next hop that
//! offers them, byte for byte as the sink recorded the MAIL and RCPT
//! commands; a message with UTF-8 addresses never reaches a server
//! without SMTPUTF8 and comes back with 5.6.7; where the next hop took
//! the NOTIFY, Empath sends no "relayed" report of its own.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use empath_tests::SinkPolicy;
use empath_tests::bounce::{BounceSetup, SENDER, message};
use empath_tests::dsn::DsnSend;

const BOB: &str = "bob@sink.test";

fn setup(remote: SinkPolicy) -> BounceSetup {
    BounceSetup::start(
        remote,
        SinkPolicy::accept_all(),
        SinkPolicy::accept_all(),
        "",
        |config| config,
    )
}

/// An 8-bit body, as a client that declared BODY=8BITMIME sends it.
fn eight_bit(tag: &str) -> Vec<u8> {
    let mut body = message(tag, BOB, "");
    body.truncate(body.len() - 2);
    body.extend_from_slice("Gr\u{fc}\u{df}e aus K\u{f6}ln, \u{e7}a va?\r\n".as_bytes());
    body
}

#[test]
fn body_8bitmime_is_passed_on_to_a_server_that_offers_it() {
    let setup = setup(SinkPolicy::accept_all().extensions(&["8BITMIME", "SIZE"]));
    let sent = eight_bit("8bit");
    DsnSend::new(setup.empath.smtp_addr(), SENDER, &[BOB])
        .mail_option("BODY=8BITMIME")
        .send(&sent, setup.empath.dir(), || setup.empath.log_tail());

    let arrived = setup.wait_for(&setup.remote, 1, "the message");
    let size = arrived[0].data.len();
    assert_eq!(
        arrived[0].mail_command,
        format!("MAIL FROM:<{SENDER}> SIZE={size} BODY=8BITMIME")
    );
    assert_eq!(arrived[0].rcpt_commands, [format!("RCPT TO:<{BOB}>")]);
    // The 8-bit body arrives as it was sent, after cleanup's Received:.
    assert!(arrived[0].data.ends_with(&sent), "the content changed");
    setup.wait_settled();
}

#[test]
fn body_8bitmime_is_not_claimed_to_a_server_without_it() {
    let setup = setup(SinkPolicy::accept_all().extensions(&[]));
    DsnSend::new(setup.empath.smtp_addr(), SENDER, &[BOB])
        .mail_option("BODY=8BITMIME")
        .send(&eight_bit("no-8bit"), setup.empath.dir(), || {
            setup.empath.log_tail()
        });
    let arrived = setup.wait_for(&setup.remote, 1, "the message");
    assert_eq!(arrived[0].mail_command, format!("MAIL FROM:<{SENDER}>"));
    setup.wait_settled();
}

#[test]
fn dsn_parameters_go_to_a_server_that_offers_dsn_and_it_reports() {
    let setup = setup(SinkPolicy::accept_all().extensions(&["8BITMIME", "DSN"]));
    DsnSend::new(setup.empath.smtp_addr(), SENDER, &[BOB])
        .mail_option("RET=HDRS")
        .mail_option("ENVID=QQ314159+2Bx")
        .rcpt_option("NOTIFY=SUCCESS,FAILURE")
        .rcpt_option("ORCPT=rfc822;Bob+2B1@Sink.test")
        .send(
            &message("dsn-pass", BOB, "Tell me when it is there."),
            setup.empath.dir(),
            || setup.empath.log_tail(),
        );

    let arrived = setup.wait_for(&setup.remote, 1, "the message");
    assert_eq!(
        arrived[0].mail_command,
        format!("MAIL FROM:<{SENDER}> RET=HDRS ENVID=QQ314159+2Bx")
    );
    assert_eq!(
        arrived[0].rcpt_commands,
        [format!(
            "RCPT TO:<{BOB}> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Bob+2B1@Sink.test"
        )]
    );
    // The next hop took the NOTIFY=SUCCESS: the report is its to send.
    setup.wait_settled();
    assert_eq!(setup.home.message_count(), 0, "no 'relayed' report from us");
}

#[test]
fn dsn_parameters_stay_here_when_the_server_has_no_dsn() {
    let setup = setup(SinkPolicy::accept_all());
    DsnSend::new(setup.empath.smtp_addr(), SENDER, &[BOB])
        .mail_option("ENVID=QQ1")
        .rcpt_option("NOTIFY=SUCCESS")
        .send(
            &message("dsn-stay", BOB, "Tell me."),
            setup.empath.dir(),
            || setup.empath.log_tail(),
        );
    let arrived = setup.wait_for(&setup.remote, 1, "the message");
    assert_eq!(arrived[0].mail_command, format!("MAIL FROM:<{SENDER}>"));
    assert_eq!(arrived[0].rcpt_commands, [format!("RCPT TO:<{BOB}>")]);
    let reports = setup.wait_for(&setup.home, 1, "our 'relayed' report");
    let dsn = setup.parse(&reports[0]);
    assert_eq!(
        dsn.recipient(BOB)
            .and_then(|fields| fields.get("action").cloned())
            .as_deref(),
        Some("relayed")
    );
    setup.wait_settled();
}

#[test]
fn utf8_addresses_never_reach_a_server_without_smtputf8() {
    let utf8_rcpt = "j\u{f6}rg@sink.test";
    let setup = setup(SinkPolicy::accept_all());
    DsnSend::new(setup.empath.smtp_addr(), SENDER, &[utf8_rcpt, BOB])
        .mail_option("SMTPUTF8")
        .send(
            &message("utf8", BOB, "F\u{fc}r J\u{f6}rg."),
            setup.empath.dir(),
            || setup.empath.log_tail(),
        );

    let reports = setup.wait_for(&setup.home, 1, "the DSN");
    setup.wait_settled();
    // Bob's address is ASCII: he gets the message, without SMTPUTF8.
    let arrived = setup.remote.messages();
    assert_eq!(arrived.len(), 1);
    assert_eq!(arrived[0].rcpt_to, [BOB]);
    assert_eq!(arrived[0].mail_command, format!("MAIL FROM:<{SENDER}>"));
    let dsn = setup.parse(&reports[0]);
    let jorg = dsn.recipient(utf8_rcpt).unwrap_or_else(|| {
        panic!(
            "no block for the UTF-8 recipient: {:?} {:?}",
            dsn.parts(),
            dsn.recipients()
        )
    });
    assert_eq!(jorg.get("status").map(String::as_str), Some("5.6.7"));
    let diagnostic = jorg.get("diagnostic-code").cloned().unwrap_or_default();
    assert!(
        diagnostic.starts_with("X-Empath; 550 5.6.7"),
        "{diagnostic}"
    );
    assert!(!jorg.contains_key("remote-mta"), "{jorg:?}");
}

#[test]
fn utf8_addresses_go_with_smtputf8_where_offered() {
    let utf8_rcpt = "j\u{f6}rg@sink.test";
    let setup = setup(SinkPolicy::accept_all().extensions(&["8BITMIME", "SMTPUTF8"]));
    DsnSend::new(setup.empath.smtp_addr(), SENDER, &[utf8_rcpt])
        .mail_option("SMTPUTF8")
        .send(
            &message("utf8-ok", utf8_rcpt, "F\u{fc}r J\u{f6}rg."),
            setup.empath.dir(),
            || setup.empath.log_tail(),
        );
    let arrived = setup.wait_for(&setup.remote, 1, "the message");
    assert_eq!(
        arrived[0].mail_command,
        format!("MAIL FROM:<{SENDER}> SMTPUTF8")
    );
    assert_eq!(arrived[0].rcpt_commands, [format!("RCPT TO:<{utf8_rcpt}>")]);
    setup.wait_settled();
    assert_eq!(setup.home.message_count(), 0, "no DSN");
}
