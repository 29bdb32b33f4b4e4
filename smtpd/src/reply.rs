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

/// What EHLO advertises besides the fixed extensions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Offer {
    pub size_limit: Option<u64>,
    pub starttls: bool,
    pub auth: bool,
    /// RFC 8689: only on a TLS session.
    pub requiretls: bool,
}

/// The EHLO answer: the greeting line, then one keyword per line.
pub fn ehlo(hostname: &str, offer: Offer) -> Reply {
    let mut lines = vec![hostname.to_owned(), "PIPELINING".to_owned()];
    if let Some(limit) = offer.size_limit {
        lines.push(format!("SIZE {limit}"));
    }
    for keyword in [
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
        "SMTPUTF8",
        "DSN",
        "CHUNKING",
    ] {
        lines.push(keyword.to_owned());
    }
    if offer.requiretls {
        lines.push("REQUIRETLS".to_owned());
    }
    if offer.starttls {
        lines.push("STARTTLS".to_owned());
    }
    if offer.auth {
        lines.push("AUTH PLAIN LOGIN".to_owned());
    }
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

/// VRFY or EXPN, as configured: 252 (we do not say, but will try) or 502.
pub fn verify_refused(command: &str, code: u16) -> Reply {
    if code == 252 {
        Reply::new(
            252,
            "2.5.2",
            format!("Cannot {command} user, but will accept message and attempt delivery"),
        )
    } else {
        Reply::new(
            502,
            "5.5.1",
            format!("Error: {command} command is disabled"),
        )
    }
}

pub fn help() -> Reply {
    Reply::new(
        214,
        "2.0.0",
        "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY EXPN HELP STARTTLS AUTH",
    )
}

pub fn relay_denied() -> Reply {
    Reply::new(554, "5.7.1", "Relay access denied")
}

/// REQUIRETLS (RFC 8689) on a session without TLS, where it is not offered.
pub fn requiretls_without_tls() -> Reply {
    Reply::new(530, "5.7.10", "REQUIRETLS needs a TLS session")
}

pub fn utf8_not_declared() -> Reply {
    Reply::new(553, "5.6.7", "Non-ASCII address without SMTPUTF8")
}

pub fn tls_ready() -> Reply {
    Reply::new(220, "2.0.0", "Ready to start TLS")
}

pub fn tls_unavailable() -> Reply {
    Reply::new(454, "4.7.0", "TLS not available due to temporary reason")
}

pub fn encryption_required() -> Reply {
    Reply::new(
        538,
        "5.7.11",
        "Encryption required for requested authentication mechanism",
    )
}

pub fn unknown_mechanism() -> Reply {
    Reply::new(504, "5.5.4", "Unrecognized authentication type")
}

pub fn auth_challenge(text: &str) -> Reply {
    Reply::new(334, "", text)
}

pub fn auth_ok() -> Reply {
    Reply::new(235, "2.7.0", "Authentication successful")
}

pub fn auth_failed() -> Reply {
    Reply::new(535, "5.7.8", "Authentication credentials invalid")
}

pub fn auth_aborted() -> Reply {
    Reply::new(501, "5.0.0", "Authentication aborted")
}

pub fn auth_bad_response() -> Reply {
    Reply::new(501, "5.5.2", "Cannot decode the response")
}

pub fn too_many_auth_failures(hostname: &str) -> Reply {
    Reply::new(
        421,
        "4.7.0",
        format!("{hostname} Error: too many authentication failures"),
    )
}

pub fn too_many_connections(hostname: &str) -> Reply {
    Reply::new(
        421,
        "4.7.0",
        format!("{hostname} Error: too many connections"),
    )
}

pub fn too_many_connections_from_you(hostname: &str) -> Reply {
    Reply::new(
        421,
        "4.7.0",
        format!("{hostname} Error: too many connections from your address"),
    )
}

pub fn chunk_ok(size: u64) -> Reply {
    Reply::new(250, "2.0.0", format!("Ok: {size} octets received"))
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

/// `smtpd.bare_line_endings: reject` (RFC 5321 section 2.3.8).
pub fn bare_line_endings() -> Reply {
    Reply::new(
        550,
        "5.6.0",
        "Message contains bare CR or LF line endings (RFC 5321 section 2.3.8)",
    )
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

/// Sent after a message when smtpd is stopping (SIGTERM).
pub fn shutting_down(hostname: &str) -> Reply {
    Reply::new(
        421,
        "4.3.2",
        format!("{hostname} Service shutting down, try again later"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ehlo_lists_size_only_when_configured() {
        assert_eq!(
            ehlo(
                "mx.example",
                Offer {
                    size_limit: Some(1000),
                    starttls: true,
                    auth: true,
                    requiretls: false,
                }
            )
            .to_wire(),
            "250-mx.example\r\n250-PIPELINING\r\n250-SIZE 1000\r\n\
             250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n\
             250-DSN\r\n250-CHUNKING\r\n250-STARTTLS\r\n250 AUTH PLAIN LOGIN\r\n"
        );
        let plain = ehlo("mx.example", Offer::default()).to_wire();
        assert!(!plain.contains("SIZE") && !plain.contains("STARTTLS") && !plain.contains("AUTH"));
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
