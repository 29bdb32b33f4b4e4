//! What became of one delivery, and the typed errors of the mailbox
//! writers, with the enhanced status codes (RFC 3463) that DSNs carry.

use empath_common::protocol::Outcome;
use empath_common::smtp::Reply;
use serde::{Deserialize, Serialize};

/// The result of delivering to one target (a mailbox, a file, a command,
/// a forward), or of a whole expansion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub outcome: Outcome,
    pub reply: Reply,
}

impl Status {
    pub fn delivered(detail: impl Into<String>) -> Self {
        Self {
            outcome: Outcome::Delivered,
            reply: Reply::new(250, "2.0.0", detail),
        }
    }

    /// A temporary failure: the recipient is tried again later.
    pub fn deferred(enhanced: &str, text: impl Into<String>) -> Self {
        Self {
            outcome: Outcome::Deferred,
            reply: Reply::new(reply_code(enhanced), enhanced, text),
        }
    }

    /// A permanent failure: the sender gets a DSN.
    pub fn failed(enhanced: &str, text: impl Into<String>) -> Self {
        Self {
            outcome: Outcome::Failed,
            reply: Reply::new(reply_code(enhanced), enhanced, text),
        }
    }

    /// How bad this is: a deferral outweighs a failure (the whole
    /// recipient is tried again), a failure outweighs a delivery.
    fn weight(&self) -> u8 {
        match self.outcome {
            Outcome::Delivered => 0,
            Outcome::Failed => 1,
            Outcome::Deferred => 2,
        }
    }

    /// The status of a recipient whose expansion had these results.
    pub fn worst(statuses: impl IntoIterator<Item = Status>) -> Option<Status> {
        statuses.into_iter().reduce(|worst, next| {
            if next.weight() > worst.weight() {
                next
            } else {
                worst
            }
        })
    }
}

/// An SMTP-style code for an enhanced status code, for logs and DSNs.
fn reply_code(enhanced: &str) -> u16 {
    match enhanced {
        "5.2.2" => 552,
        e if e.starts_with("5.3") || e.starts_with("5.4") => 554,
        e if e.starts_with('5') => 550,
        e if e.starts_with("4.2") => 450,
        _ => 451,
    }
}

/// Why writing a mailbox or a file failed. Crosses from the delivery
/// helper to the agent, so it is serializable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum DeliveryError {
    #[error("mailbox {path} is full: {size} bytes and the limit is {limit}")]
    MailboxFull { path: String, size: u64, limit: u64 },
    #[error("cannot lock {path}: {detail}")]
    Locked { path: String, detail: String },
    #[error("refusing to deliver to {path}: {detail}")]
    Unsafe { path: String, detail: String },
    #[error("cannot write {path}: {detail}")]
    Io {
        path: String,
        detail: String,
        errno: i32,
    },
}

impl DeliveryError {
    pub fn io(path: &std::path::Path, error: &std::io::Error) -> Self {
        Self::Io {
            path: path.display().to_string(),
            detail: error.to_string(),
            errno: error.raw_os_error().unwrap_or(0),
        }
    }

    /// A full disk or a quota waits; a file too big or over quota
    /// bounces (5.2.2, as Postfix); anything else waits for the operator.
    pub fn status(&self) -> Status {
        let text = self.to_string();
        match self {
            Self::MailboxFull { .. } => Status::failed("5.2.2", text),
            Self::Io { errno, .. } if *errno == libc::EDQUOT || *errno == libc::EFBIG => {
                Status::failed("5.2.2", text)
            }
            Self::Io { errno, .. } if *errno == libc::ENOSPC => Status::deferred("4.3.1", text),
            Self::Locked { .. } | Self::Unsafe { .. } | Self::Io { .. } => {
                Status::deferred("4.2.0", text)
            }
        }
    }
}

/// What a command's exit status means for the recipient, after the
/// sysexits.h table that Postfix uses: 75 (EX_TEMPFAIL) and 71
/// (EX_OSERR) try again later, 0 is delivered, the rest bounce.
pub fn command_exit(code: i32, command: &str, output: &str) -> Status {
    let said = |what: &str| {
        let mut text = format!("Command died with status {code}: \"{command}\" ({what})");
        if !output.is_empty() {
            text.push_str(". Command output: ");
            text.push_str(output);
        }
        text
    };
    match code {
        0 => Status::delivered(format!("delivered to command: {command}")),
        64 => Status::failed("5.3.0", said("command line usage error")),
        65 => Status::failed("5.6.0", said("data format error")),
        66 => Status::failed("5.3.0", said("cannot open input")),
        67 => Status::failed("5.1.1", said("user unknown")),
        68 => Status::failed("5.1.2", said("host name unknown")),
        69 => Status::failed("5.3.0", said("service unavailable")),
        70 => Status::failed("5.3.0", said("internal software error")),
        71 => Status::deferred("4.3.0", said("system resource problem")),
        72 => Status::failed("5.3.0", said("critical OS file missing")),
        73 => Status::failed("5.2.0", said("can't create user output file")),
        74 => Status::failed("5.3.0", said("input/output error")),
        75 => Status::deferred("4.3.0", said("temporary failure")),
        76 => Status::failed("5.5.0", said("remote error in protocol")),
        77 => Status::failed("5.7.0", said("permission denied")),
        78 => Status::failed("5.3.5", said("local configuration error")),
        _ => Status::failed("5.3.0", said("unknown error")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysexits_decide_between_retry_and_bounce() {
        let tempfail = command_exit(75, "x", "busy");
        assert_eq!(tempfail.outcome, Outcome::Deferred);
        assert_eq!(tempfail.reply.enhanced.as_deref(), Some("4.3.0"));
        assert!(tempfail.reply.text.ends_with("Command output: busy"));
        let nouser = command_exit(67, "x", "");
        assert_eq!(nouser.outcome, Outcome::Failed);
        assert_eq!(nouser.reply.code, 550);
        assert_eq!(nouser.reply.enhanced.as_deref(), Some("5.1.1"));
        assert_eq!(command_exit(1, "x", "").outcome, Outcome::Failed);
        assert_eq!(command_exit(0, "x", "").outcome, Outcome::Delivered);
    }

    #[test]
    fn the_worst_status_wins() {
        let worst = Status::worst([
            Status::delivered("a"),
            Status::failed("5.1.1", "b"),
            Status::deferred("4.2.0", "c"),
            Status::failed("5.1.1", "d"),
        ])
        .unwrap();
        assert_eq!(worst.reply.text, "c");
        let full = DeliveryError::MailboxFull {
            path: "/var/mail/a".into(),
            size: 10,
            limit: 5,
        };
        assert_eq!(full.status().reply.code, 552);
    }
}
