//! The setting of the bounce tests: Empath, a remote sink for the
//! recipients (`sink.test`), a sink for the sender's own domain
//! (`client.test`, where DSNs arrive) and one for the postmaster
//! (`pm.test`, where double bounces arrive).

use std::time::Duration;

use crate::dsn::ParsedDsn;
use crate::{Empath, Sink, SinkMessage, SinkPolicy, TestConfig};

pub const SENDER: &str = "sender@client.test";
pub const POSTMASTER: &str = "postmaster@pm.test";
pub const REPORTING_MTA: &str = "reporter.empath.test";
/// Generous: debug binaries on a small, busy CI machine.
pub const DSN_TIMEOUT: Duration = Duration::from_secs(120);

pub struct BounceSetup {
    /// Where the original recipients live.
    pub remote: Sink,
    /// The sender's domain: DSNs arrive here.
    pub home: Sink,
    /// The postmaster's domain: double bounces arrive here.
    pub postmaster: Sink,
    pub empath: Empath,
}

/// The config the bounce tests share, with the three domains routed.
pub fn bounce_config(remote: &Sink, home: &Sink, postmaster: &Sink, dsn_extra: &str) -> TestConfig {
    TestConfig::new()
        .mx_override("sink.test", remote.addr())
        .mx_override("client.test", home.addr())
        .mx_override("pm.test", postmaster.addr())
        .section(
            "dsn",
            &format!("(postmaster: {POSTMASTER:?}, reporting_mta: {REPORTING_MTA:?}, {dsn_extra})"),
        )
}

impl BounceSetup {
    /// Starts the sinks with these policies and Empath; `dsn_extra` adds
    /// keys to the `dsn` section, `tune` changes the rest of the config.
    pub fn start(
        remote: SinkPolicy,
        home: SinkPolicy,
        postmaster: SinkPolicy,
        dsn_extra: &str,
        tune: impl FnOnce(TestConfig) -> TestConfig,
    ) -> Self {
        let remote = Sink::with_policy(remote);
        let home = Sink::with_policy(home);
        let postmaster = Sink::with_policy(postmaster);
        let config = tune(bounce_config(&remote, &home, &postmaster, dsn_extra));
        let empath = Empath::start(config);
        Self {
            remote,
            home,
            postmaster,
            empath,
        }
    }

    /// Waits until `sink` has accepted `count` messages, and returns them.
    pub fn wait_for(&self, sink: &Sink, count: usize, what: &str) -> Vec<SinkMessage> {
        self.empath.wait_until(what, DSN_TIMEOUT, || {
            let messages = sink.messages();
            if messages.len() >= count {
                Ok(messages)
            } else {
                Err(format!("{} of {count} arrived", messages.len()))
            }
        })
    }

    /// Waits for the queue to empty: every notice due has been queued and
    /// delivered (bounce queues a notice before the original goes).
    pub fn wait_settled(&self) {
        self.empath.wait_queue_empty(DSN_TIMEOUT);
    }

    /// Parses a received notice with Python's `email` package.
    pub fn parse(&self, message: &SinkMessage) -> ParsedDsn {
        ParsedDsn::parse(&message.data, self.empath.dir())
    }
}

/// A small test message with a recognisable subject and body.
pub fn message(tag: &str, to: &str, body: &str) -> Vec<u8> {
    format!(
        "From: Sender <{SENDER}>\r\n\
         To: <{to}>\r\n\
         Subject: bounce test {tag}\r\n\
         Message-ID: <{tag}@client.test>\r\n\
         \r\n\
         {body}\r\n"
    )
    .into_bytes()
}

/// Panics unless every line of `raw` ends in CRLF and is at most 998
/// octets long (RFC 5322 section 2.1.1).
pub fn assert_wire_format(raw: &[u8]) {
    assert!(raw.ends_with(b"\r\n"), "the message does not end in CRLF");
    for (number, line) in raw.split(|&b| b == b'\n').enumerate() {
        if line.is_empty() {
            continue; // after the final LF
        }
        assert!(
            line.ends_with(b"\r"),
            "line {} ends in a bare LF: {:?}",
            number + 1,
            String::from_utf8_lossy(line)
        );
        assert!(
            line.len() - 1 <= 998,
            "line {} is {} octets long",
            number + 1,
            line.len() - 1
        );
        assert!(
            !line[..line.len() - 1].contains(&b'\r'),
            "line {} has a bare CR",
            number + 1
        );
    }
}
