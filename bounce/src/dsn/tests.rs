use empath_common::queue::{ClientInfo, DsnParams, Notify, QueueId, Recipient};

use super::*;

const ORIGINAL: &[u8] = b"Subject: hello\r\nFrom: alice@example.org\r\n\r\nbody\r\n";

fn recipient(address: &str, status: RecipientStatus) -> Recipient {
    Recipient {
        status,
        ..Recipient::new(address)
    }
}

fn failed(code: u16, enhanced: &str, text: &str) -> RecipientStatus {
    RecipientStatus::Failed {
        at: 86_400 + 60,
        remote: Some("mx.example.com [192.0.2.7:25]".into()),
        reply: Reply::new(code, enhanced, text),
    }
}

fn envelope(recipients: Vec<Recipient>) -> Envelope {
    Envelope {
        id: QueueId::generate(),
        sender: "alice@example.org".into(),
        recipients,
        arrival: 86_400,
        attempts: 3,
        next_retry: None,
        last_error: None,
        client: ClientInfo::default(),
        dsn: DsnParams::default(),
        metadata: Default::default(),
        content_size: ORIGINAL.len() as u64,
        smtputf8: false,
        delay_warned: false,
        options: Default::default(),
    }
}

/// One delivered, one failed (with ORCPT) recipient.
fn mixed() -> Envelope {
    let mut bob = recipient("bob@example.com", failed(550, "5.1.1", "No such user"));
    bob.orcpt = Some("rfc822;Bob@Example.com".into());
    let ok = recipient(
        "ok@example.com",
        RecipientStatus::Delivered {
            at: 5,
            remote: "mx:25".into(),
            reply: Reply::new(250, "2.0.0", "ok"),
            dsn_passed_on: false,
        },
    );
    envelope(vec![ok, bob])
}

fn reporter() -> Reporter<'static> {
    Reporter {
        hostname: "mx.example.org",
        reporting_mta: "mta.example.org",
        postmaster: "postmaster@example.org",
        now: 86_400 + 120,
        max_queue_lifetime_secs: 5 * 86_400,
    }
}

fn headers_only() -> Returned {
    Returned::Headers {
        bytes: crate::original::header_section(ORIGINAL).to_vec(),
        too_big: false,
    }
}

fn build_text(kind: NoticeKind, envelope: &Envelope, returned: &Returned) -> Option<String> {
    let notice = Notice {
        kind,
        envelope,
        to: "alice@example.org",
        returned,
    };
    build(&notice, &reporter()).map(|b| String::from_utf8(b.message).unwrap())
}

fn failure(envelope: &Envelope) -> String {
    build_text(NoticeKind::Failure, envelope, &headers_only()).expect("a DSN")
}

/// The delivery-status part: from its content type to the next boundary.
fn status_part_of(text: &str) -> &str {
    let start = text.find("Content-Type: message/").expect("a status part");
    let body = &text[start..];
    let body = &body[body.find("\r\n\r\n").unwrap() + 4..];
    &body[..body.find("\r\n--").unwrap()]
}

#[test]
fn failure_report_has_the_rfc3464_fields() {
    let mut env = mixed();
    env.dsn.envid = Some("QQ314159".into());
    let text = failure(&env);
    assert!(
        text.contains(
            "Content-Type: multipart/report; report-type=delivery-status;\r\n boundary=\""
        )
    );
    assert!(text.contains("To: <alice@example.org>\r\n"));
    assert!(text.contains("From: Mail Delivery System <postmaster@example.org>\r\n"));
    assert!(text.contains("Auto-Submitted: auto-replied\r\n"));
    let status = status_part_of(&text);
    assert_eq!(
        status,
        format!(
            "Original-Envelope-Id: QQ314159\r\n\
             Reporting-MTA: dns; mta.example.org\r\n\
             X-Empath-Queue-ID: {}\r\n\
             X-Empath-Sender: rfc822; alice@example.org\r\n\
             Arrival-Date: Fri, 02 Jan 1970 00:00:00 +0000\r\n\
             \r\n\
             Final-Recipient: rfc822; bob@example.com\r\n\
             Original-Recipient: rfc822;Bob@Example.com\r\n\
             Action: failed\r\n\
             Status: 5.1.1\r\n\
             Remote-MTA: dns; mx.example.com\r\n\
             Diagnostic-Code: smtp; 550 5.1.1 No such user\r\n\
             Last-Attempt-Date: Fri, 02 Jan 1970 00:01:00 +0000\r\n",
            env.id
        )
    );
    assert!(
        !status.contains("ok@example.com"),
        "delivered recipients are not reported"
    );
    assert!(
        text.contains(
            "<bob@example.com>: host mx.example.com [192.0.2.7:25] said: 550 5.1.1 No\r\n    such user\r\n"
        ),
        "{text}"
    );
    assert!(text.contains(
        "Content-Type: text/rfc822-headers\r\n\r\nSubject: hello\r\nFrom: alice@example.org\r\n\r\n--"
    ));
    assert!(text.ends_with("--\r\n"));
}

#[test]
fn the_three_parts_come_in_order_within_one_boundary() {
    let text = failure(&mixed());
    let boundary = text
        .split("boundary=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap();
    let delimiter = format!("\r\n--{boundary}\r\n");
    let parts: Vec<&str> = text.split(&delimiter).collect();
    assert_eq!(parts.len(), 4, "preamble + 3 parts: {text}");
    assert!(parts[1].contains("Content-Type: text/plain"));
    assert!(parts[2].contains("Content-Type: message/delivery-status"));
    assert!(parts[3].contains("Content-Type: text/rfc822-headers"));
    assert!(parts[3].ends_with(&format!("\r\n--{boundary}--\r\n")));
}

#[test]
fn notify_decides_who_is_reported() {
    let mut env = mixed();
    env.recipients[1].notify = Notify {
        explicit: true,
        success: false,
        failure: false,
        delay: false,
    };
    assert!(
        build_text(NoticeKind::Failure, &env, &headers_only()).is_none(),
        "NOTIFY=NEVER"
    );
    env.recipients[1].notify.delay = true;
    assert!(
        build_text(NoticeKind::Failure, &env, &headers_only()).is_none(),
        "NOTIFY=DELAY"
    );
    env.recipients[1].notify.failure = true;
    assert!(
        build_text(NoticeKind::Failure, &env, &headers_only()).is_some(),
        "NOTIFY=FAILURE"
    );
}

fn wants_success(recipient: &mut Recipient) {
    recipient.notify = Notify {
        explicit: true,
        success: true,
        failure: true,
        delay: false,
    };
}

#[test]
fn delivered_recipients_that_asked_are_reported_as_relayed() {
    let mut env = mixed();
    wants_success(&mut env.recipients[0]);
    let text = build_text(NoticeKind::Success, &env, &headers_only()).expect("a report");
    assert!(text.contains("Subject: Successful Mail Delivery Report\r\n"));
    let status = status_part_of(&text);
    assert!(
        status.contains(
            "Final-Recipient: rfc822; ok@example.com\r\n\
             Action: relayed\r\n\
             Status: 2.0.0\r\n\
             Remote-MTA: dns; mx\r\n\
             Diagnostic-Code: smtp; 250 2.0.0 ok\r\n"
        ),
        "{status}"
    );
    assert!(
        !status.contains("bob@example.com"),
        "a success report leaves the failed out: {status}"
    );
    assert!(text.contains("<ok@example.com>: delivered to host mx:25: 250 2.0.0 ok\r\n"));
    assert!(text.contains("Content-Description: Delivered Message Headers\r\n"));

    // The final report of a message with a failure covers both.
    let text = failure(&env);
    let status = status_part_of(&text);
    assert!(status.contains("Action: relayed\r\n") && status.contains("Action: failed\r\n"));
}

#[test]
fn delivered_recipients_are_not_reported_without_notify_success() {
    let env = mixed();
    assert!(build_text(NoticeKind::Success, &env, &headers_only()).is_none());
}

#[test]
fn no_report_without_failures() {
    let env = envelope(vec![recipient("a@example.com", RecipientStatus::Pending)]);
    assert!(build_text(NoticeKind::Failure, &env, &headers_only()).is_none());
}

#[test]
fn an_expired_message_fails_with_its_last_temporary_status() {
    let env = envelope(vec![recipient(
        "slow@example.com",
        failed(451, "4.3.0", "Try again later (message expired in queue)"),
    )]);
    let status = failure(&env);
    let status = status_part_of(&status);
    assert!(
        status.contains("Action: failed\r\nStatus: 4.3.0\r\n"),
        "{status}"
    );
    assert!(
        status.contains(
            "Diagnostic-Code: smtp; 451 4.3.0 Try again later (message expired in queue)\r\n"
        ),
        "{status}"
    );
}

#[test]
fn delay_warning_lists_open_recipients_that_asked_for_it() {
    let mut quiet = recipient("quiet@example.com", RecipientStatus::Pending);
    quiet.notify.delay = false;
    let env = envelope(vec![
        recipient(
            "deferred@example.com",
            RecipientStatus::Deferred {
                at: 86_400 + 30,
                remote: Some("192.0.2.9:25".into()),
                reply: Reply::new(451, "4.7.1", "greylisted"),
            },
        ),
        recipient("pending@example.com", RecipientStatus::Pending),
        quiet,
        recipient("gone@example.com", failed(550, "5.1.1", "No such user")),
    ]);
    let text = build_text(NoticeKind::Delay, &env, &headers_only()).expect("a warning");
    assert!(text.contains("Subject: Delayed Mail (still being retried)\r\n"));
    assert!(text.contains("THIS IS A WARNING ONLY"));
    let status = status_part_of(&text);
    assert!(
        status.contains(
            "Final-Recipient: rfc822; deferred@example.com\r\n\
         Action: delayed\r\n\
         Status: 4.7.1\r\n\
         Remote-MTA: dns; 192.0.2.9\r\n\
         Diagnostic-Code: smtp; 451 4.7.1 greylisted\r\n\
         Last-Attempt-Date: Fri, 02 Jan 1970 00:00:30 +0000\r\n\
         Will-Retry-Until: Wed, 07 Jan 1970 00:00:00 +0000\r\n"
        ),
        "{status}"
    );
    assert!(status.contains(
        "Final-Recipient: rfc822; pending@example.com\r\nAction: delayed\r\nStatus: 4.0.0\r\nWill-Retry-Until:"
    ), "{status}");
    assert!(!status.contains("quiet@"), "NOTIFY without DELAY");
    assert!(!status.contains("gone@"), "failures are not delays");
    assert!(text.contains("Content-Type: text/rfc822-headers\r\n"));
}

#[test]
fn ret_full_returns_the_message_and_says_so_when_it_could_not() {
    let full = Returned::Full(ORIGINAL.to_vec());
    let text = build_text(NoticeKind::Failure, &mixed(), &full).unwrap();
    assert!(text.contains("Content-Type: message/rfc822\r\n\r\nSubject: hello\r\nFrom: alice@example.org\r\n\r\nbody\r\n\r\n--"), "{text}");
    assert!(!text.contains("text/rfc822-headers"));

    let too_big = Returned::Headers {
        bytes: b"Subject: hello\r\n".to_vec(),
        too_big: true,
    };
    let text = build_text(NoticeKind::Failure, &mixed(), &too_big).unwrap();
    assert!(text.contains("Content-Type: text/rfc822-headers\r\n\r\nSubject: hello\r\n"));
    assert!(text.contains("too large to return in full"));
}

#[test]
fn double_bounce_goes_from_the_mailer_daemon_to_the_postmaster() {
    let mut env = envelope(vec![recipient(
        "alice@example.org",
        failed(550, "5.1.1", "No such user"),
    )]);
    env.sender = String::new();
    env.recipients[0].notify.failure = false; // a DSN's NOTIFY is ignored
    let returned = headers_only();
    let notice = Notice {
        kind: NoticeKind::DoubleBounce,
        envelope: &env,
        to: "postmaster@example.org",
        returned: &returned,
    };
    let text = String::from_utf8(build(&notice, &reporter()).unwrap().message).unwrap();
    assert!(text.contains("From: Mail Delivery System <MAILER-DAEMON@mx.example.org>\r\n"));
    assert!(text.contains("To: <postmaster@example.org>\r\n"));
    assert!(text.contains("Final-Recipient: rfc822; alice@example.org\r\nAction: failed\r\n"));
    assert!(text.contains("Diagnostic-Code: smtp; 550 5.1.1 No such user"));
    assert!(!text.contains("X-Empath-Sender"), "the DSN had no sender");
    assert!(text.contains("Original sender:   <>"));
}

#[test]
fn lines_are_crlf_and_short_whatever_the_reply() {
    let long_text = format!(
        "first line\nsecond\tline {} {}",
        "word ".repeat(400),
        "x".repeat(3000)
    );
    let mut env = envelope(vec![recipient(
        "bob@example.com",
        failed(550, "5.7.1", &long_text),
    )]);
    env.dsn.envid = Some("id\r\nBcc: injected@example.net".into());
    let text = failure(&env);
    for line in text.split("\r\n") {
        assert!(line.len() <= 998, "line of {} octets", line.len());
        assert!(
            !line.contains('\n') && !line.contains('\r'),
            "bare CR or LF in {line:?}"
        );
    }
    assert!(
        !text.contains("\r\nBcc:"),
        "a parameter cannot inject a field"
    );
    // The diagnostic is one field, folded.
    let status = status_part_of(&text);
    let diagnostic = status
        .split("Diagnostic-Code: ")
        .nth(1)
        .unwrap()
        .split("\r\nLast-Attempt-Date")
        .next()
        .unwrap();
    assert!(diagnostic.contains("\r\n "), "folded");
    assert!(diagnostic.starts_with("smtp; 550 5.7.1 first line second line word"));
}

#[test]
fn the_boundary_never_occurs_in_the_returned_message() {
    let env = mixed();
    let now = reporter().now;
    let trap = format!("=_empath_{}_{now}", env.id);
    let content = format!("Subject: trap\r\n\r\n--{trap}\r\n--{trap}_1\r\n");
    let returned = Returned::Full(content.clone().into_bytes());
    let text = build_text(NoticeKind::Failure, &env, &returned).unwrap();
    assert!(text.contains(&format!("boundary=\"{trap}_2\"")), "{text}");
}

#[test]
fn internationalised_addresses_use_the_rfc6533_types() {
    let mut env = envelope(vec![recipient(
        "jürgen@example.com",
        failed(550, "5.1.1", "unknown"),
    )]);
    env.smtputf8 = true;
    let returned = headers_only();
    let notice = Notice {
        kind: NoticeKind::Failure,
        envelope: &env,
        to: "alice@example.org",
        returned: &returned,
    };
    let built = build(&notice, &reporter()).unwrap();
    assert!(built.smtputf8);
    let text = String::from_utf8(built.message).unwrap();
    assert!(text.contains("Content-Type: message/global-delivery-status\r\n"));
    assert!(text.contains("Final-Recipient: utf-8; jürgen@example.com\r\n"));
    assert!(text.contains("Content-Type: message/global-headers\r\n"));
    assert!(text.contains("charset=utf-8"));
}

#[test]
fn eight_bit_content_is_labelled() {
    let returned = Returned::Full(
        "Subject: caf\u{e9}\r\n\r\nna\u{ef}ve\r\n"
            .as_bytes()
            .to_vec(),
    );
    let text = build_text(NoticeKind::Failure, &mixed(), &returned).unwrap();
    assert!(text.contains("Content-Type: message/rfc822\r\nContent-Transfer-Encoding: 8bit\r\n"));
    let top = &text[..text.find("\r\n\r\n").unwrap()];
    assert!(top.contains("Content-Transfer-Encoding: 8bit"));
}

#[test]
fn status_comes_from_the_enhanced_code_of_the_right_class() {
    assert_eq!(status_code(&Reply::new(550, "5.1.1", "x")), "5.1.1");
    assert_eq!(status_code(&Reply::new(550, "", "x")), "5.0.0");
    assert_eq!(status_code(&Reply::new(451, "5.1.1", "x")), "4.0.0");
    assert_eq!(status_code(&Reply::new(421, "4.4.2", "x")), "4.4.2");
    assert_eq!(status_code(&Reply::new(554, "5.x.1", "x")), "5.0.0");
}

#[test]
fn remote_mta_is_the_host_without_the_port() {
    assert_eq!(
        remote_host("mx.example.com [192.0.2.1:25]"),
        "mx.example.com"
    );
    assert_eq!(remote_host("192.0.2.1:2525"), "192.0.2.1");
    assert_eq!(remote_host("[::1]:25"), "::1");
    assert_eq!(remote_host("mx.example.com"), "mx.example.com");
}

#[test]
fn durations_are_words() {
    assert_eq!(duration_words(1), "1 second");
    assert_eq!(duration_words(150), "2 minutes");
    assert_eq!(duration_words(3 * 3600), "3 hours");
    assert_eq!(duration_words(5 * 86_400), "5 days");
}

/// A reply Empath produced itself (no server said it) is `X-Empath;`,
/// with no `Remote-MTA`; a server's reply is `smtp;` with its name.
#[test]
fn our_own_diagnostics_are_x_empath_without_a_remote_mta() {
    let refused = RecipientStatus::Failed {
        at: 86_400 + 60,
        remote: None,
        reply: Reply::new(451, "4.4.1", "connect to 192.0.2.7:25: Connection refused"),
    };
    let env = envelope(vec![
        recipient("carol@example.com", refused),
        recipient("bob@example.com", failed(550, "5.1.1", "No such user")),
    ]);
    let status = status_part_of(&failure(&env)).to_owned();
    let (carol, bob) = status.split_at(status.find("Final-Recipient: rfc822; bob").unwrap());
    assert!(
        carol.contains("Diagnostic-Code: X-Empath; 451 4.4.1 connect to 192.0.2.7:25:"),
        "{carol}"
    );
    assert!(!carol.contains("Remote-MTA"), "{carol}");
    assert!(bob.contains("Remote-MTA: dns; mx.example.com\r\n"), "{bob}");
    assert!(
        bob.contains("Diagnostic-Code: smtp; 550 5.1.1 No such user"),
        "{bob}"
    );
}

/// NOTIFY=SUCCESS: "relayed" only where the next hop was not given the
/// NOTIFY (it did not offer DSN); where it was, it reports, not us.
#[test]
fn a_recipient_whose_notify_was_passed_on_is_not_reported_relayed() {
    let delivered = |dsn_passed_on| RecipientStatus::Delivered {
        at: 5,
        remote: "mx:25".into(),
        reply: Reply::new(250, "2.0.0", "ok"),
        dsn_passed_on,
    };
    let mut relayed = recipient("relayed@example.com", delivered(false));
    let mut passed = recipient("passed@example.com", delivered(true));
    for r in [&mut relayed, &mut passed] {
        r.notify.success = true;
        r.notify.explicit = true;
    }
    let env = envelope(vec![relayed, passed.clone()]);
    let text = build_text(NoticeKind::Success, &env, &headers_only()).expect("a report");
    assert!(text.contains("Final-Recipient: rfc822; relayed@example.com\r\nAction: relayed\r\n"));
    assert!(!text.contains("passed@example.com"), "{text}");
    let only_passed = envelope(vec![passed]);
    assert!(
        build_text(NoticeKind::Success, &only_passed, &headers_only()).is_none(),
        "nothing to report"
    );
}
