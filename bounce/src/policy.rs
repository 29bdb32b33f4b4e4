//! Whom to tell about a message, if anyone. Pure; the loop-safety rules
//! live here and nowhere else:
//!
//! - Nothing is ever sent to the null sender `<>`.
//! - A DSN that Empath generated (metadata `empath.dsn` = `failure`,
//!   `success` or `delay`) and that failed is reported once to the postmaster, as a
//!   double bounce (`empath.dsn` = `double-bounce`).
//! - A double bounce that fails is only logged.
//! - A null-sender message from elsewhere (someone else's bounce) that
//!   fails is only logged: telling the postmaster about every forged
//!   bounce that passes through would turn backscatter into mail for them.

use empath_common::protocol::{
    BounceKind, DSN_DELAY, DSN_DOUBLE_BOUNCE, DSN_FAILURE, DSN_METADATA, DSN_SUCCESS,
};
use empath_common::queue::{Envelope, RecipientStatus};

/// What kind of notice to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeKind {
    /// Recipients failed (and maybe others were delivered with
    /// NOTIFY=SUCCESS): tell the sender.
    Failure,
    /// Recipients that asked for NOTIFY=SUCCESS were delivered, and none
    /// failed that wants to hear of it: tell the sender.
    Success,
    /// Recipients are still waiting: warn the sender.
    Delay,
    /// Our own DSN could not be delivered: tell the postmaster.
    DoubleBounce,
}

impl NoticeKind {
    /// The value of the `empath.dsn` metadata of the notice.
    pub fn metadata(self) -> &'static str {
        match self {
            Self::Failure => DSN_FAILURE,
            Self::Success => DSN_SUCCESS,
            Self::Delay => DSN_DELAY,
            Self::DoubleBounce => DSN_DOUBLE_BOUNCE,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Send {
        kind: NoticeKind,
        to: String,
    },
    /// Nobody is told; the reason is logged.
    Nothing(&'static str),
}

/// Decides whom to tell about `envelope` for a request of `kind`.
pub fn decide(envelope: &Envelope, kind: BounceKind, enabled: bool, postmaster: &str) -> Decision {
    if !enabled {
        return Decision::Nothing("DSNs are disabled");
    }
    if !envelope.is_null_sender() {
        let kind = match kind {
            BounceKind::Final if reports_a_failure(envelope) => NoticeKind::Failure,
            BounceKind::Final => NoticeKind::Success,
            BounceKind::Delay => NoticeKind::Delay,
        };
        return Decision::Send {
            kind,
            to: envelope.sender.clone(),
        };
    }
    if kind == BounceKind::Delay {
        return Decision::Nothing("no delay warnings for the null sender");
    }
    match envelope.metadata.get(DSN_METADATA).map(String::as_str) {
        Some(DSN_FAILURE | DSN_SUCCESS | DSN_DELAY) => Decision::Send {
            kind: NoticeKind::DoubleBounce,
            to: postmaster.to_owned(),
        },
        Some(DSN_DOUBLE_BOUNCE) => Decision::Nothing("a double bounce failed; nobody is told"),
        _ => Decision::Nothing("a message from the null sender failed; it is never bounced"),
    }
}

/// Some recipient failed and wants to be told (NOTIFY=FAILURE).
fn reports_a_failure(envelope: &Envelope) -> bool {
    envelope
        .recipients
        .iter()
        .any(|r| r.notify.failure && matches!(r.status, RecipientStatus::Failed { .. }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use empath_common::queue::{ClientInfo, DsnParams, Notify, QueueId, Recipient};
    use empath_common::smtp::Reply;

    const POSTMASTER: &str = "postmaster@mx.example.org";

    /// A message with one recipient that failed for good.
    fn envelope(sender: &str, dsn: Option<&str>) -> Envelope {
        let failed = Recipient {
            status: RecipientStatus::Failed {
                at: 1,
                remote: None,
                reply: Reply::new(550, "5.1.1", "no such user"),
            },
            ..Recipient::new("bob@example.com")
        };
        Envelope {
            id: QueueId::generate(),
            sender: sender.into(),
            recipients: vec![failed],
            arrival: 0,
            attempts: 0,
            next_retry: None,
            last_error: None,
            client: ClientInfo::default(),
            dsn: DsnParams::default(),
            metadata: dsn
                .map(|v| (DSN_METADATA.to_owned(), v.to_owned()))
                .into_iter()
                .collect(),
            content_size: 0,
            smtputf8: false,
            delay_warned: false,
            options: Default::default(),
        }
    }

    #[test]
    fn a_sender_gets_failures_and_delay_warnings() {
        let env = envelope("alice@example.org", None);
        assert_eq!(
            decide(&env, BounceKind::Final, true, POSTMASTER),
            Decision::Send {
                kind: NoticeKind::Failure,
                to: "alice@example.org".into()
            }
        );
        assert_eq!(
            decide(&env, BounceKind::Delay, true, POSTMASTER),
            Decision::Send {
                kind: NoticeKind::Delay,
                to: "alice@example.org".into()
            }
        );
    }

    #[test]
    fn the_final_report_is_a_success_report_when_nothing_failed_that_asked() {
        let delivered = RecipientStatus::Delivered {
            at: 1,
            remote: "mx:25".into(),
            reply: Reply::new(250, "2.0.0", "ok"),
            dsn_passed_on: false,
        };
        let failed = RecipientStatus::Failed {
            at: 1,
            remote: None,
            reply: Reply::new(550, "5.1.1", "no"),
        };
        let mut env = envelope("alice@example.org", None);
        env.recipients = vec![
            Recipient {
                status: delivered,
                ..Recipient::new("ok@example.com")
            },
            Recipient {
                status: failed,
                notify: Notify {
                    explicit: true,
                    success: false,
                    failure: false,
                    delay: false,
                },
                ..Recipient::new("never@example.com")
            },
        ];
        let kind_of = |env: &Envelope| match decide(env, BounceKind::Final, true, POSTMASTER) {
            Decision::Send { kind, .. } => Some(kind),
            Decision::Nothing(_) => None,
        };
        assert_eq!(kind_of(&env), Some(NoticeKind::Success));
        env.recipients[1].notify.failure = true;
        assert_eq!(kind_of(&env), Some(NoticeKind::Failure));
    }

    #[test]
    fn our_failed_dsn_goes_to_the_postmaster_once() {
        for marker in [DSN_FAILURE, DSN_SUCCESS, DSN_DELAY] {
            let env = envelope("", Some(marker));
            assert_eq!(
                decide(&env, BounceKind::Final, true, POSTMASTER),
                Decision::Send {
                    kind: NoticeKind::DoubleBounce,
                    to: POSTMASTER.into()
                }
            );
        }
        let failed_double = envelope("", Some(DSN_DOUBLE_BOUNCE));
        assert!(matches!(
            decide(&failed_double, BounceKind::Final, true, POSTMASTER),
            Decision::Nothing(_)
        ));
    }

    #[test]
    fn nothing_is_ever_sent_for_a_foreign_null_sender_message() {
        for marker in [None, Some("something-else")] {
            let env = envelope("", marker);
            for kind in [BounceKind::Final, BounceKind::Delay] {
                assert!(matches!(
                    decide(&env, kind, true, POSTMASTER),
                    Decision::Nothing(_)
                ));
            }
        }
    }

    #[test]
    fn a_metadata_marker_does_not_matter_when_there_is_a_sender() {
        // Only the null sender makes a message a bounce.
        let env = envelope("alice@example.org", Some(DSN_DOUBLE_BOUNCE));
        assert!(matches!(
            decide(&env, BounceKind::Final, true, POSTMASTER),
            Decision::Send {
                kind: NoticeKind::Failure,
                ..
            }
        ));
    }

    #[test]
    fn disabled_means_silence() {
        let env = envelope("alice@example.org", None);
        assert!(matches!(
            decide(&env, BounceKind::Final, false, POSTMASTER),
            Decision::Nothing(_)
        ));
    }
}
