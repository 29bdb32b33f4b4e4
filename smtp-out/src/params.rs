//! The MAIL and RCPT parameters passed on to the next hop, as the message
//! was received: SIZE, BODY=8BITMIME (RFC 6152), SMTPUTF8 (RFC 6531),
//! REQUIRETLS (RFC 8689), and RET, ENVID, NOTIFY, ORCPT (RFC 3461) to a
//! server that offers DSN. Pure, so it is easy to test.

use empath_common::protocol::{DeliveryJob, JobRecipient};
use empath_common::queue::{Body, Notify, Ret};
use empath_common::smtp::Reply;

/// What the server offered in its EHLO (or LHLO) reply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Offered {
    pub size: bool,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    pub dsn: bool,
    pub requiretls: bool,
}

/// The `MAIL FROM:` line, without CRLF.
pub fn mail_command(job: &DeliveryJob, offered: Offered) -> String {
    let mut mail = format!("MAIL FROM:<{}>", job.sender);
    if offered.size {
        mail.push_str(&format!(" SIZE={}", job.content_size));
    }
    // A server without 8BITMIME gets the 8-bit body all the same, as
    // Postfix sends it (there is no conversion to 7 bits); only the
    // parameter it does not know is left out.
    if job.pass_on.options.body == Body::EightBitMime && offered.eight_bit_mime {
        mail.push_str(" BODY=8BITMIME");
    }
    if job.smtputf8 && offered.smtputf8 {
        mail.push_str(" SMTPUTF8");
    }
    // Only sent where offered: without it the message is not sent at all
    // (see `policy::requiretls`).
    if job.pass_on.options.requiretls && offered.requiretls {
        mail.push_str(" REQUIRETLS");
    }
    if offered.dsn {
        match job.pass_on.dsn.ret {
            Some(Ret::Full) => mail.push_str(" RET=FULL"),
            Some(Ret::Headers) => mail.push_str(" RET=HDRS"),
            None => {}
        }
        if let Some(envid) = &job.pass_on.dsn.envid {
            mail.push_str(&format!(" ENVID={}", xtext(envid)));
        }
    }
    mail
}

/// The `RCPT TO:` line of `recipient`, without CRLF.
pub fn rcpt_command(job: &DeliveryJob, recipient: &JobRecipient, offered: Offered) -> String {
    let mut rcpt = format!("RCPT TO:<{}>", recipient.address);
    if !offered.dsn {
        return rcpt;
    }
    if let Some(dsn) = job.pass_on.recipient(recipient.index) {
        if dsn.notify.explicit {
            rcpt.push_str(&format!(" NOTIFY={}", notify(dsn.notify)));
        }
        if let Some(orcpt) = &dsn.orcpt
            && let Some((kind, address)) = orcpt.split_once(';')
        {
            rcpt.push_str(&format!(" ORCPT={kind};{}", xtext(address)));
        }
    }
    rcpt
}

fn notify(notify: Notify) -> String {
    let words: Vec<&str> = [
        (notify.success, "SUCCESS"),
        (notify.failure, "FAILURE"),
        (notify.delay, "DELAY"),
    ]
    .into_iter()
    .filter_map(|(set, word)| set.then_some(word))
    .collect();
    if words.is_empty() {
        "NEVER".to_owned()
    } else {
        words.join(",")
    }
}

/// xtext (RFC 3461 section 4): printable ASCII but `+` and `=` as is,
/// every other octet as `+XX`.
pub fn xtext(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if (33..=126).contains(&byte) && byte != b'+' && byte != b'=' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("+{byte:02X}"));
        }
    }
    out
}

/// Recipients that cannot go to a server without SMTPUTF8 (RFC 6531
/// section 3.2): a message whose sender or recipient address is not ASCII
/// needs it. A message that declared SMTPUTF8 but has only ASCII
/// addresses goes without it, as Postfix's SMTPUTF8 autodetection does.
/// Returns the refused recipients' envelope indices: every one of them
/// when the sender is the problem, else those with a UTF-8 address.
pub fn need_smtputf8(job: &DeliveryJob, offered: Offered) -> Vec<usize> {
    if offered.smtputf8 {
        return Vec::new();
    }
    let sender_needs = !job.sender.is_ascii();
    job.recipients
        .iter()
        .filter(|r| sender_needs || !r.address.is_ascii())
        .map(|r| r.index)
        .collect()
}

/// The reply for a recipient that needs SMTPUTF8 from a server without it.
pub fn smtputf8_refused(server: &str) -> Reply {
    Reply::new(
        550,
        "5.6.7",
        format!(
            "{server} does not support SMTPUTF8, which this message's non-ASCII addresses need"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use empath_common::protocol::{Appended, PassOn, RecipientDsn};
    use empath_common::queue::{DsnParams, MessageOptions, QueueId};

    fn job() -> DeliveryJob {
        DeliveryJob {
            id: QueueId::generate(),
            sender: "alice@example.org".into(),
            domain: "example.com".into(),
            recipients: vec![
                JobRecipient {
                    index: 0,
                    address: "bob@example.com".into(),
                },
                JobRecipient {
                    index: 3,
                    address: "j\u{f6}rg@example.com".into(),
                },
            ],
            content_size: 120,
            smtputf8: true,
            active_since_ms: 0,
            attempt: 1,
            pass_on: Appended(PassOn {
                options: MessageOptions {
                    body: Body::EightBitMime,
                    requiretls: true,
                },
                dsn: DsnParams {
                    ret: Some(Ret::Headers),
                    envid: Some("id+1=2 x".into()),
                },
                recipients: vec![RecipientDsn {
                    index: 0,
                    notify: Notify {
                        explicit: true,
                        success: true,
                        failure: true,
                        delay: false,
                    },
                    orcpt: Some("rfc822;Bob+x@example.com".into()),
                }],
            }),
        }
    }

    const ALL: Offered = Offered {
        size: true,
        eight_bit_mime: true,
        smtputf8: true,
        dsn: true,
        requiretls: true,
    };

    #[test]
    fn everything_received_is_passed_on_where_offered() {
        let job = job();
        assert_eq!(
            mail_command(&job, ALL),
            "MAIL FROM:<alice@example.org> SIZE=120 BODY=8BITMIME SMTPUTF8 REQUIRETLS \
             RET=HDRS ENVID=id+2B1+3D2+20x"
        );
        assert_eq!(
            rcpt_command(&job, &job.recipients[0], ALL),
            "RCPT TO:<bob@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Bob+2Bx@example.com"
        );
        // No DSN parameters given: none passed on.
        assert_eq!(
            rcpt_command(&job, &job.recipients[1], ALL),
            "RCPT TO:<j\u{f6}rg@example.com>"
        );
    }

    #[test]
    fn nothing_is_sent_that_the_server_does_not_offer() {
        let job = job();
        let none = Offered::default();
        assert_eq!(mail_command(&job, none), "MAIL FROM:<alice@example.org>");
        assert_eq!(
            rcpt_command(&job, &job.recipients[0], none),
            "RCPT TO:<bob@example.com>"
        );
    }

    #[test]
    fn notify_never_and_smtputf8_needs() {
        let never = Notify {
            explicit: true,
            success: false,
            failure: false,
            delay: false,
        };
        assert_eq!(notify(never), "NEVER");
        let mut job = job();
        let none = Offered::default();
        assert_eq!(need_smtputf8(&job, none), vec![3]);
        assert!(need_smtputf8(&job, ALL).is_empty());
        job.sender = "\u{e9}l\u{e8}ve@example.org".into();
        assert_eq!(need_smtputf8(&job, none), vec![0, 3]);
        job.sender = "a@b".into();
        job.recipients.truncate(1);
        assert!(need_smtputf8(&job, none).is_empty());
    }
}
