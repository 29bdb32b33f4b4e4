//! Every reply the server sends, in one place, so codes and texts stay
//! consistent.
//!
//! Replies carry an enhanced status code (RFC 2034, RFC 3463), except the
//! greeting and the answers to EHLO/HELO, which RFC 2034 exempts, and the
//! 354 go-ahead, whose class 3 has no enhanced codes.

use empath_common::queue::QueueId;
use empath_common::smtp::Reply;

use crate::parser::ParseError;

pub fn greeting(hostname: &str) -> Reply {
    Reply::new(220, "", format!("{hostname} ESMTP Empath"))
}

/// The EHLO answer: the greeting line, then one keyword per line.
pub fn ehlo(hostname: &str, size_limit: Option<u64>) -> Reply {
    let mut lines = vec![hostname.to_owned(), "PIPELINING".to_owned()];
    if let Some(limit) = size_limit {
        lines.push(format!("SIZE {limit}"));
    }
    lines.push("8BITMIME".to_owned());
    lines.push("ENHANCEDSTATUSCODES".to_owned());
    Reply::new(250, "", lines.join("\n"))
}

pub fn helo(hostname: &str) -> Reply {
    Reply::new(250, "", hostname)
}

pub fn ok() -> Reply {
    Reply::new(250, "2.0.0", "Ok")
}

pub fn sender_ok() -> Reply {
    Reply::new(250, "2.1.0", "Ok")
}

pub fn recipient_ok() -> Reply {
    Reply::new(250, "2.1.5", "Ok")
}

pub fn start_data() -> Reply {
    Reply::new(354, "", "End data with <CR><LF>.<CR><LF>")
}

pub fn queued(id: QueueId) -> Reply {
    Reply::new(250, "2.0.0", format!("Ok: queued as {id}"))
}

pub fn bye() -> Reply {
    Reply::new(221, "2.0.0", "Bye")
}

pub fn cannot_vrfy() -> Reply {
    Reply::new(252, "2.5.2", "Cannot VRFY user")
}

pub fn help() -> Reply {
    Reply::new(
        214,
        "2.0.0",
        "Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP",
    )
}

pub fn parse_error(error: ParseError) -> Reply {
    match error {
        ParseError::Unrecognized => Reply::new(500, "5.5.1", "Error: command not recognized"),
        ParseError::Syntax(usage) => Reply::new(501, "5.5.4", format!("Syntax: {usage}")),
        ParseError::BadSender => Reply::new(501, "5.1.7", "Bad sender address syntax"),
        ParseError::BadRecipient => Reply::new(501, "5.1.3", "Bad recipient address syntax"),
    }
}

pub fn not_implemented(command: &str) -> Reply {
    Reply::new(502, "5.5.1", format!("Error: {command} not implemented"))
}

pub fn bad_size_param() -> Reply {
    Reply::new(501, "5.5.4", "Syntax: SIZE=<number>")
}

/// Commands out of order (RFC 5321 section 4.1.4).
pub fn bad_sequence(text: &str) -> Reply {
    Reply::new(503, "5.5.1", format!("Error: {text}"))
}

pub fn line_too_long() -> Reply {
    Reply::new(500, "5.5.2", "Error: line too long")
}

pub fn too_many_recipients() -> Reply {
    Reply::new(452, "4.5.3", "Error: too many recipients")
}

pub fn message_too_big() -> Reply {
    Reply::new(552, "5.3.4", "Message size exceeds fixed limit")
}

pub fn queue_error() -> Reply {
    Reply::new(451, "4.3.0", "Error: queue file write error")
}

pub fn too_many_errors(hostname: &str) -> Reply {
    Reply::new(421, "4.7.0", format!("{hostname} Error: too many errors"))
}

pub fn timeout(hostname: &str) -> Reply {
    Reply::new(421, "4.4.2", format!("{hostname} Error: timeout exceeded"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ehlo_lists_size_only_when_configured() {
        assert_eq!(
            ehlo("mx.example", Some(1000)).to_wire(),
            "250-mx.example\r\n250-PIPELINING\r\n250-SIZE 1000\r\n\
             250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n"
        );
        assert!(!ehlo("mx.example", None).to_wire().contains("SIZE"));
    }

    #[test]
    fn error_replies_carry_enhanced_codes() {
        assert_eq!(
            parse_error(ParseError::BadSender).to_wire(),
            "501 5.1.7 Bad sender address syntax\r\n"
        );
        assert_eq!(
            timeout("mx.example").to_wire(),
            "421 4.4.2 mx.example Error: timeout exceeded\r\n"
        );
    }
}
