//! The headers cleanup adds: `Received:` always, `Message-ID:` and `Date:`
//! when the message lacks them (what it has, the shaper found out). Pure
//! functions, so they are easy to test.

use empath_common::content::shape::HeaderFacts;
use empath_common::queue::{ClientInfo, QueueId};
use empath_common::time::rfc5322_date;

/// The trace and missing headers, CRLF-terminated, to put before the message.
pub fn prefix(present: HeaderFacts, stamp: &Stamp<'_>) -> String {
    let mut out = received(stamp);
    if !present.message_id {
        out.push_str(&format!(
            "Message-ID: {}\r\n",
            generated_message_id(stamp.id, stamp.hostname)
        ));
    }
    if !present.date {
        out.push_str(&format!("Date: {}\r\n", rfc5322_date(stamp.now)));
    }
    out
}

/// The `Message-ID:` cleanup gives a message that has none.
pub fn generated_message_id(id: QueueId, hostname: &str) -> String {
    format!("<{id}@{hostname}>")
}

/// What goes into the `Received:` header.
pub struct Stamp<'a> {
    pub id: QueueId,
    pub hostname: &'a str,
    pub client: &'a ClientInfo,
    /// The recipient, when there is exactly one (RFC 5321 section 4.4 `for`).
    pub single_recipient: Option<&'a str>,
    pub now: u64,
}

fn received(stamp: &Stamp<'_>) -> String {
    let client = stamp.client;
    let ip = client
        .addr
        .parse::<std::net::SocketAddr>()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|_| client.addr.clone());
    let mut out = if client.helo.is_empty() && client.addr == "local" {
        match &client.name {
            Some(user) => format!(
                "Received: by {} (Empath, from {})",
                stamp.hostname,
                sanitize_comment(user)
            ),
            None => format!("Received: by {} (Empath)", stamp.hostname),
        }
    } else {
        let name = client.name.as_deref().unwrap_or("unknown");
        format!(
            "Received: from {} ({name} [{ip}])\r\n\tby {} (Empath)",
            sanitize(&client.helo),
            stamp.hostname
        )
    };
    let protocol = if client.protocol.is_empty() {
        "SMTP"
    } else {
        client.protocol.as_str()
    };
    out.push_str(&format!(" with {protocol} id {}", stamp.id));
    if let Some(tls) = &client.tls {
        out.push_str(&format!("\r\n\t({})", sanitize_comment(tls)));
    }
    if let Some(recipient) = stamp.single_recipient {
        out.push_str(&format!("\r\n\tfor <{}>", sanitize(recipient)));
    }
    out.push_str(&format!("; {}\r\n", rfc5322_date(stamp.now)));
    out
}

/// Like [`sanitize`], but keeps spaces (for text inside a comment).
fn sanitize_comment(text: &str) -> String {
    text.split(' ').map(sanitize).collect::<Vec<_>>().join(" ")
}

/// Keeps client-supplied text from breaking the header: printable ASCII
/// only, no parentheses that would unbalance the comment.
fn sanitize(text: &str) -> String {
    let cleaned: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '(' && c != ')' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cleaned.is_empty() {
        "unknown".to_owned()
    } else {
        cleaned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(client: &ClientInfo) -> Stamp<'_> {
        Stamp {
            id: "01JCXYZ5ABCDEFGHJKMNPQRSTV".parse().unwrap(),
            hostname: "mx.example.org",
            client,
            single_recipient: Some("bob@example.com"),
            now: 0,
        }
    }

    #[test]
    fn received_names_the_client_and_missing_headers_are_added() {
        let client = ClientInfo {
            addr: "192.0.2.1:4000".into(),
            helo: "client.example".into(),
            protocol: "ESMTP".into(),
            ..ClientInfo::default()
        };
        let text = prefix(HeaderFacts::default(), &stamp(&client));
        assert!(text.starts_with("Received: from client.example (unknown [192.0.2.1])\r\n\tby mx.example.org (Empath) with ESMTP id 01JCXYZ5ABCDEFGHJKMNPQRSTV\r\n\tfor <bob@example.com>; Thu, 01 Jan 1970"), "{text}");
        assert!(text.contains("\r\nMessage-ID: <01JCXYZ5ABCDEFGHJKMNPQRSTV@mx.example.org>\r\n"));
        assert!(text.ends_with("Date: Thu, 01 Jan 1970 00:00:00 +0000\r\n"));
    }

    #[test]
    fn hostile_helo_cannot_inject_header_lines() {
        let client = ClientInfo {
            addr: "192.0.2.1:4000".into(),
            helo: "evil\r\nBcc: x@y (".into(),
            ..ClientInfo::default()
        };
        let text = prefix(
            HeaderFacts {
                message_id: true,
                date: true,
                received: 0,
            },
            &stamp(&client),
        );
        assert_eq!(text.matches("\r\n").count(), 3, "{text}");
        assert!(!text.contains("\r\nBcc"));
    }
}
