//! REQUIRETLS (RFC 8689): a message whose client asked for it, over TLS,
//! goes on only over TLS that DANE or MTA-STS authenticates, to a server
//! that offers REQUIRETLS and is told (`MAIL ... REQUIRETLS`); anywhere
//! else it comes back with 5.7.30. `TLS-Required: No` lets a message past
//! the recipient domain's MTA-STS policy.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::time::Duration;

use empath_tests::dsn::DsnSend;
use empath_tests::https::{StsWorld, policy};
use empath_tests::mx::{loopback, sinks_on_one_port};
use empath_tests::smtpd::TestCert;
use empath_tests::{Empath, Sink, SinkPolicy};

const SENDER: &str = "sender@client.test";
const TIMEOUT: Duration = Duration::from_secs(60);

fn message(to: &str, extra_header: &str) -> Vec<u8> {
    format!(
        "From: <{SENDER}>\r\nTo: <{to}>\r\nSubject: requiretls\r\n{extra_header}\r\nSecret.\r\n"
    )
    .into_bytes()
}

#[test]
fn requiretls_goes_only_over_authenticated_tls_to_servers_that_offer_it() {
    let world = StsWorld::start(&[
        ("sts-ok.test", policy("enforce", "mx.sts-ok.test")),
        ("sts-noext.test", policy("enforce", "mx.sts-noext.test")),
        (
            "sts-unlisted.test",
            policy("enforce", "mx.sts-unlisted.test"),
        ),
    ]);
    let requiretls = ["8BITMIME", "REQUIRETLS"];
    let (port, sinks) = sinks_on_one_port(
        vec![
            (
                31,
                SinkPolicy::accept_all()
                    .starttls(world.ca.server_tls(&["mx.sts-ok.test"]))
                    .extensions(&requiretls),
            ),
            (
                32,
                SinkPolicy::accept_all().starttls(world.ca.server_tls(&["mx.sts-noext.test"])),
            ),
            (
                33,
                SinkPolicy::accept_all()
                    .starttls(world.ca.server_tls(&["mx.plain.test"]))
                    .extensions(&requiretls),
            ),
            (34, SinkPolicy::accept_all()),
        ],
        &[],
    );
    world
        .dns
        .mx("sts-ok.test", 10, "mx.sts-ok.test")
        .address("mx.sts-ok.test", loopback(31))
        .mx("sts-noext.test", 10, "mx.sts-noext.test")
        .address("mx.sts-noext.test", loopback(32))
        .mx("plain.test", 10, "mx.plain.test")
        .address("mx.plain.test", loopback(33))
        .mx("sts-unlisted.test", 10, "mx.elsewhere.test")
        .address("mx.elsewhere.test", loopback(34));
    let home = Sink::start();
    let cert = TestCert::write(
        world.ca_file.parent().expect("the test dir"),
        "smtpd",
        "mx.empath.test",
    );
    let config = world
        .config(port)
        .mx_override("client.test", home.addr())
        .listener_field("extensions", &format!("[{}]", cert.extension()));
    let empath = Empath::start(config);
    let send = |to: &str, header: &str| {
        DsnSend::new(empath.smtp_addr(), SENDER, &[to])
            .starttls()
            .mail_option("REQUIRETLS")
            .send(&message(to, header), empath.dir(), || empath.log_tail());
    };

    // MTA-STS authenticates the host, and it offers REQUIRETLS.
    send("a@sts-ok.test", "");
    let arrived = sinks[0]
        .wait_for_messages(1, TIMEOUT)
        .unwrap_or_else(|n| panic!("{n} messages\n{}", empath.log_tail()));
    assert!(
        arrived[0].mail_command.ends_with(" REQUIRETLS"),
        "{}",
        arrived[0].mail_command
    );
    assert_eq!(sinks[0].tls_handshakes(), 1);

    // Authenticated, but the server does not offer REQUIRETLS.
    send("b@sts-noext.test", "");
    // TLS with a valid certificate, but no policy authenticates the host.
    send("c@plain.test", "");
    // TLS-Required: No does not weaken REQUIRETLS (RFC 8689 section 5).
    send("d@sts-unlisted.test", "TLS-Required: No\r\n");

    let bounces = home
        .wait_for_messages(3, TIMEOUT)
        .unwrap_or_else(|n| panic!("{n} DSNs\n{}", empath.log_tail()));
    for (bounce, to) in
        bounces
            .iter()
            .zip(["b@sts-noext.test", "c@plain.test", "d@sts-unlisted.test"])
    {
        let dsn = empath_tests::dsn::ParsedDsn::parse(&bounce.data, empath.dir());
        let block = dsn
            .recipient(to)
            .unwrap_or_else(|| panic!("no block for {to}: {:?}", dsn.recipients()));
        assert_eq!(
            block.get("status").map(String::as_str),
            Some("5.7.30"),
            "{block:?}"
        );
    }
    assert_eq!(sinks[1].message_count(), 0);
    assert_eq!(sinks[2].message_count(), 0);
    assert_eq!(sinks[2].connections(), 0, "no policy: never contacted");
    assert_eq!(sinks[3].message_count(), 0);
    empath.wait_queue_empty(TIMEOUT);
}

#[test]
fn tls_required_no_gets_a_message_past_mta_sts() {
    let world = StsWorld::start(&[(
        "sts-unlisted.test",
        policy("enforce", "mx.sts-unlisted.test"),
    )]);
    let (port, sinks) = sinks_on_one_port(vec![(35, SinkPolicy::accept_all())], &[]);
    world
        .dns
        .mx("sts-unlisted.test", 10, "mx.elsewhere.test")
        .address("mx.elsewhere.test", loopback(35));
    let empath = Empath::start(world.config(port));
    let send = |to: &str, header: &str| {
        DsnSend::new(empath.smtp_addr(), SENDER, &[to]).send(
            &message(to, header),
            empath.dir(),
            || empath.log_tail(),
        );
    };
    send("relaxed@sts-unlisted.test", "TLS-Required: No\r\n");
    send("strict@sts-unlisted.test", "");
    let arrived = sinks[0]
        .wait_for_messages(1, TIMEOUT)
        .unwrap_or_else(|n| panic!("{n} messages\n{}", empath.log_tail()));
    assert_eq!(arrived[0].rcpt_to, ["relaxed@sts-unlisted.test"]);
    assert!(
        String::from_utf8_lossy(&arrived[0].data).contains("TLS-Required: No"),
        "the header travels on"
    );
    empath.wait_until("the other to be deferred", TIMEOUT, || {
        if empath
            .log()
            .contains("is not an MX host of the MTA-STS policy")
        {
            Ok(())
        } else {
            Err("not yet".into())
        }
    });
    assert_eq!(sinks[0].message_count(), 1);
}
