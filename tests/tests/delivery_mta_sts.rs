//! MTA-STS (RFC 8461) and TLS reporting (RFC 8460), against a real HTTPS
//! server (Python's http.server and ssl) that serves the policies with a
//! certificate from the test's own CA, which smtp-out trusts through
//! `delivery.tls_ca_files`.
//!
//! Build the binaries first: `cargo build --workspace --bins`.

use std::time::Duration;

use empath_tests::https::{
    HttpsServer, StsWorld, check_posted_tls_report, check_tls_report, policy,
};
use empath_tests::mx::{loopback, self_signed_tls, sinks_on_one_port};
use empath_tests::{Empath, Sink, SinkPolicy, SmtpSend, mail};
use hickory_proto::rr::RecordType;

const SENDER: &str = "sender@client.test";
const TIMEOUT: Duration = Duration::from_secs(60);

fn send(empath: &Empath, to: &str, tag: &str) {
    let messages = mail::generate(1, SENDER, &[to]);
    let outbox = mail::write_eml_files(&empath.dir().join(format!("outbox-{tag}")), &messages);
    SmtpSend::new(empath.smtp_addr(), SENDER, &[to], &outbox)
        .run()
        .assert_all_accepted(1, || empath.log_tail());
}

fn logged(empath: &Empath, what: &str, count: usize) {
    empath.wait_until(what, TIMEOUT, || {
        let found = empath.log().matches(what).count();
        if found >= count {
            Ok(())
        } else {
            Err(format!("{found} of {count} times"))
        }
    });
}

/// `enforce`: the listed MX with a certificate that verifies gets the
/// mail; an MX the policy does not list and one whose certificate does
/// not verify do not, although the default level (`may`) would deliver to
/// both. The policy is cached on disk: after smtp-out restarts, with the
/// TXT record gone and the web server down, it still holds.
#[test]
fn enforce_mode_refuses_unlisted_hosts_and_bad_certificates_and_survives_a_restart() {
    let world = StsWorld::start(&[
        ("enforce.test", policy("enforce", "mx.enforce.test")),
        ("unlisted.test", policy("enforce", "mx.unlisted.test")),
        ("badcert.test", policy("enforce", "*.badcert.test")),
    ]);
    let (port, sinks) = sinks_on_one_port(
        vec![
            (
                21,
                SinkPolicy::accept_all().starttls(world.ca.server_tls(&["mx.enforce.test"])),
            ),
            (
                22,
                SinkPolicy::accept_all().starttls(world.ca.server_tls(&["mx.elsewhere.test"])),
            ),
            (
                23,
                SinkPolicy::accept_all().starttls(self_signed_tls(&["mx.badcert.test"])),
            ),
        ],
        &[],
    );
    world
        .dns
        .mx("enforce.test", 10, "mx.enforce.test")
        .address("mx.enforce.test", loopback(21))
        .mx("unlisted.test", 10, "mx.elsewhere.test")
        .address("mx.elsewhere.test", loopback(22))
        .mx("badcert.test", 10, "mx.badcert.test")
        .address("mx.badcert.test", loopback(23));
    let empath = Empath::start(world.config(port));

    send(&empath, "rcpt@enforce.test", "enforce");
    send(&empath, "rcpt@unlisted.test", "unlisted");
    send(&empath, "rcpt@badcert.test", "badcert");

    let arrived = sinks[0]
        .wait_for_messages(1, TIMEOUT)
        .unwrap_or_else(|n| panic!("{n} messages\n{}", empath.log_tail()));
    assert_eq!(arrived[0].rcpt_to, ["rcpt@enforce.test"]);
    assert_eq!(sinks[0].tls_handshakes(), 1);
    logged(
        &empath,
        "is not an MX host of the MTA-STS policy of unlisted.test",
        1,
    );
    logged(
        &empath,
        "TLS with mx.badcert.test failed: invalid peer certificate",
        1,
    );
    assert_eq!(
        sinks[1].connections(),
        0,
        "an unlisted MX is never contacted"
    );
    assert_eq!(
        sinks[2].message_count(),
        0,
        "never delivered without a valid certificate"
    );
    let fetched = world
        .web
        .requests()
        .iter()
        .filter(|r| r.starts_with("GET mta-sts.") && r.ends_with(" 200"))
        .count();
    assert_eq!(fetched, 3, "{:?}", world.web.requests());
    let cached = empath.spool().join("private/sts/unlisted.test.json");
    assert!(cached.is_file(), "the policy is cached on disk");
    let show = empath.empathctl_ok(&["tls", "policy", "unlisted.test"]);
    assert!(
        show.contains("enforce") && show.contains("mx.unlisted.test"),
        "{show}"
    );

    // smtp-out restarts; the record is gone and the web server is down:
    // the cached policy (max_age 86400) still applies.
    let killed = empath.kill9_child(empath_tests::SMTP_OUT);
    empath.wait_restarted(empath_tests::SMTP_OUT, &killed, TIMEOUT);
    world.dns.remove("_mta-sts.unlisted.test", RecordType::TXT);
    drop(world.web);
    send(&empath, "rcpt@unlisted.test", "unlisted-again");
    logged(
        &empath,
        "is not an MX host of the MTA-STS policy of unlisted.test",
        3,
    );
    assert_eq!(sinks[1].connections(), 0, "still never contacted");
    let counts = empath.queue_counts();
    assert_eq!(counts.data, 3, "{counts:?}");
}

/// `testing`: the MX is not in the policy and its certificate is
/// self-signed, yet the mail is delivered; the failure goes into the TLS
/// report, which is mailed to the domain's `mailto:` rua and POSTed to its
/// `https:` rua once the (short) reporting interval is over, and is valid
/// RFC 8460 JSON.
#[test]
fn testing_mode_delivers_and_the_report_is_mailed_to_the_rua() {
    let world = StsWorld::start(&[("testing.test", policy("testing", "mx.testing.test"))]);
    let (port, sinks) = sinks_on_one_port(
        vec![(
            24,
            SinkPolicy::accept_all().starttls(self_signed_tls(&["mx.other.test"])),
        )],
        &[],
    );
    let reports = Sink::start();
    let web_dir = empath_tests::test_dir();
    let collector = HttpsServer::start(
        web_dir.path(),
        &world.ca,
        &["tlsrpt.reports.test"],
        loopback(1),
    );
    world
        .dns
        .mx("testing.test", 10, "mx.other.test")
        .address("mx.other.test", loopback(24))
        .address("tlsrpt.reports.test", loopback(1))
        .txt(
            "_smtp._tls.testing.test",
            &format!(
                "v=TLSRPTv1; rua=mailto:tlsrpt@reports.test,https://tlsrpt.reports.test:{}/v1/tlsrpt",
                collector.port()
            ),
        );
    let config = world
        .config(port)
        .delivery(
            "tls_reports",
            "(enabled: true, interval_secs: 3, organization_name: \"Empath Test\")",
        )
        .mx_override("reports.test", reports.addr());
    let empath = Empath::start(config);

    send(&empath, "rcpt@testing.test", "testing");
    let arrived = sinks[0]
        .wait_for_messages(1, TIMEOUT)
        .unwrap_or_else(|n| panic!("{n} messages\n{}", empath.log_tail()));
    assert_eq!(arrived[0].rcpt_to, ["rcpt@testing.test"]);

    let mailed = reports
        .wait_for_messages(1, TIMEOUT)
        .unwrap_or_else(|n| panic!("{n} reports\n{}", empath.log_tail()));
    let report = &mailed[0];
    assert_eq!(report.rcpt_to, ["tlsrpt@reports.test"]);
    assert_eq!(
        report.mail_from,
        "noreply-smtp-tls-reporting@mx.empath.test"
    );
    let checked = check_tls_report(&report.data, empath.dir());
    assert_eq!(checked["schema_errors"], serde_json::json!([]), "{checked}");
    assert_eq!(checked["content_type"], "multipart/report");
    assert_eq!(checked["report_type"], "tlsrpt");
    assert_eq!(checked["attachment_type"], "application/tlsrpt+gzip");
    assert_eq!(checked["report_domain"], "testing.test");
    let json = &checked["report"];
    assert_eq!(json["organization-name"], "Empath Test");
    let policy = &json["policies"][0];
    assert_eq!(policy["policy"]["policy-type"], "sts");
    assert_eq!(policy["policy"]["policy-domain"], "testing.test");
    assert_eq!(
        policy["policy"]["mx-host"],
        serde_json::json!(["mx.testing.test"])
    );
    assert!(
        policy["policy"]["policy-string"]
            .as_array()
            .is_some_and(|lines| lines.iter().any(|l| l == "mode: testing")),
        "{policy}"
    );
    assert_eq!(policy["summary"]["total-failure-session-count"], 1);
    let failure = &policy["failure-details"][0];
    assert_eq!(failure["result-type"], "validation-failure");
    assert_eq!(failure["receiving-mx-hostname"], "mx.other.test");
    assert_eq!(failure["receiving-ip"], "127.0.0.24");
    assert_eq!(failure["failed-session-count"], 1);

    let posted = collector.posted();
    assert_eq!(posted.len(), 1, "{:?}", collector.requests());
    assert_eq!(posted[0].0, "application/tlsrpt+gzip");
    let checked = check_posted_tls_report(&posted[0].1);
    assert_eq!(checked["schema_errors"], serde_json::json!([]), "{checked}");
    assert_eq!(
        checked["report"]["policies"], json["policies"],
        "the same report"
    );
    assert!(
        collector
            .requests()
            .contains(&"POST tlsrpt.reports.test /v1/tlsrpt 200".to_owned()),
        "{:?}",
        collector.requests()
    );
    empath.wait_queue_empty(TIMEOUT);
}
