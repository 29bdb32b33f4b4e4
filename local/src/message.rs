//! The message as local mailboxes store it: Unix line endings, a
//! `Return-Path:` and a `Delivered-To:` header in front, and for mbox (and
//! for commands and files, as Postfix writes them) a `From ` line first,
//! body lines starting with `From ` quoted as `>From `, and an empty line
//! at the end.

use std::collections::HashSet;

use empath_common::time::unix_now;

/// One queued message, read once per job and shared by its deliveries.
pub struct Message {
    /// The envelope sender; empty for the null sender.
    pub sender: String,
    /// The content with LF line endings.
    lf: Vec<u8>,
    /// `lf` with `From ` lines quoted, made on first use.
    quoted: std::sync::OnceLock<Vec<u8>>,
    /// The addresses of its `Delivered-To:` headers, lower-cased.
    delivered_to: HashSet<String>,
    /// The original content (CRLF), for forwarding.
    pub crlf: Vec<u8>,
    arrival: u64,
}

impl Message {
    pub fn new(sender: &str, crlf: Vec<u8>) -> Self {
        let lf = to_lf(&crlf);
        let delivered_to = delivered_to_headers(&lf);
        Self {
            sender: sender.to_owned(),
            lf,
            quoted: std::sync::OnceLock::new(),
            delivered_to,
            crlf,
            arrival: unix_now(),
        }
    }

    /// Whether the message already went through `address` here: a mail
    /// forwarding loop.
    pub fn was_delivered_to(&self, address: &str) -> bool {
        self.delivered_to.contains(&address.to_lowercase())
    }

    /// The sender as `Return-Path:` and the `From ` line name it.
    fn sender_or_daemon(&self) -> &str {
        if self.sender.is_empty() {
            "MAILER-DAEMON"
        } else {
            &self.sender
        }
    }

    fn headers(&self, delivered_to: &str) -> String {
        format!(
            "Return-Path: <{}>\nDelivered-To: {delivered_to}\n",
            self.sender
        )
    }

    /// mbox format, for mailboxes, files and commands: the `From ` line,
    /// the headers, the quoted message and an empty line.
    pub fn mbox(&self, delivered_to: &str) -> Vec<Vec<u8>> {
        let from_line = format!(
            "From {} {}\n",
            self.sender_or_daemon(),
            asctime(self.arrival)
        );
        let body = self.quoted.get_or_init(|| quote_from_lines(&self.lf));
        let mut parts = vec![
            from_line.into_bytes(),
            self.headers(delivered_to).into_bytes(),
            body.clone(),
        ];
        if !body.ends_with(b"\n") {
            parts.push(b"\n".to_vec());
        }
        parts.push(b"\n".to_vec());
        parts
    }

    /// Maildir format: the headers and the message as it is.
    pub fn maildir(&self, delivered_to: &str) -> Vec<Vec<u8>> {
        vec![self.headers(delivered_to).into_bytes(), self.lf.clone()]
    }

    /// The forwarded copy: a `Delivered-To:` header on top, so that a
    /// forwarding loop through other hosts comes back recognisable.
    pub fn forwarded(&self, delivered_to: &str) -> Vec<u8> {
        let mut out = format!("Delivered-To: {delivered_to}\r\n").into_bytes();
        out.extend_from_slice(&self.crlf);
        out
    }
}

fn to_lf(crlf: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(crlf.len());
    let mut bytes = crlf.iter().peekable();
    while let Some(&byte) = bytes.next() {
        if byte == b'\r' && bytes.peek() == Some(&&b'\n') {
            continue;
        }
        out.push(byte);
    }
    out
}

fn quote_from_lines(lf: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(lf.len() + 16);
    for line in lf.split_inclusive(|b| *b == b'\n') {
        if line.starts_with(b"From ") {
            out.push(b'>');
        }
        out.extend_from_slice(line);
    }
    out
}

/// The addresses of the `Delivered-To:` fields in the header section.
fn delivered_to_headers(lf: &[u8]) -> HashSet<String> {
    let mut found = HashSet::new();
    let mut current: Option<String> = None;
    for line in lf.split(|b| *b == b'\n') {
        if line.is_empty() {
            break;
        }
        let text = String::from_utf8_lossy(line);
        if line[0] == b' ' || line[0] == b'\t' {
            if let Some(value) = &mut current {
                value.push_str(&text);
            }
            continue;
        }
        if let Some(value) = current.take() {
            found.insert(value.trim().to_lowercase());
        }
        match text.split_once(':') {
            Some((name, value)) if name.trim().eq_ignore_ascii_case("delivered-to") => {
                current = Some(value.to_owned());
            }
            Some(_) => {}
            // Not a header line: the header section is over.
            None => break,
        }
    }
    if let Some(value) = current {
        found.insert(value.trim().to_lowercase());
    }
    found
}

const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `Thu Jan  1 00:00:00 1970`, the asctime(3) form of the mbox `From `
/// line (UTC).
fn asctime(unix_secs: u64) -> String {
    let days = unix_secs / 86_400;
    let secs = unix_secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{} {} {day:2} {:02}:{:02}:{:02} {year}",
        DAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    )
}

fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + u64::from(month <= 2), month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(parts: Vec<Vec<u8>>) -> String {
        String::from_utf8(parts.concat()).unwrap()
    }

    #[test]
    fn mbox_format_quotes_from_lines_and_ends_with_an_empty_line() {
        let message = Message::new(
            "a@example.org",
            b"Subject: x\r\n\r\nFrom here\r\n>From there\r\nend".to_vec(),
        );
        let text = joined(message.mbox("bob@localhost"));
        let (from_line, rest) = text.split_once('\n').unwrap();
        assert!(from_line.starts_with("From a@example.org "), "{from_line}");
        assert_eq!(from_line.len(), "From a@example.org ".len() + 24);
        assert_eq!(
            rest,
            "Return-Path: <a@example.org>\nDelivered-To: bob@localhost\nSubject: x\n\n>From here\n>From there\nend\n\n"
        );
        let null = Message::new("", b"S: x\r\n\r\nb\r\n".to_vec());
        assert!(joined(null.mbox("x")).starts_with("From MAILER-DAEMON "));
        assert_eq!(
            joined(null.maildir("x")),
            "Return-Path: <>\nDelivered-To: x\nS: x\n\nb\n"
        );
    }

    #[test]
    fn delivered_to_headers_are_found_in_the_header_section_only() {
        let message = Message::new(
            "",
            b"Delivered-To: Root@LocalHost\r\nDELIVERED-TO:\r\n  alice@localhost\r\nSubject: s\r\n\r\nDelivered-To: bob@localhost\r\n".to_vec(),
        );
        assert!(message.was_delivered_to("root@localhost"));
        assert!(message.was_delivered_to("alice@localhost"));
        assert!(!message.was_delivered_to("bob@localhost"));
    }

    #[test]
    fn asctime_matches_the_c_library() {
        assert_eq!(asctime(0), "Thu Jan  1 00:00:00 1970");
        assert_eq!(asctime(1_763_287_845), "Sun Nov 16 10:10:45 2025");
    }
}
