//! Test messages: generating them, and checking what arrived at the sink
//! against what was sent.
//!
//! Empath may only add header fields in front of a message (`Received:`,
//! and `Message-ID:`/`Date:` where missing). So a delivered message must be
//! `added header lines + original bytes`, and [`added_headers`] checks that.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The header that identifies a test message wherever it ends up.
pub const TEST_ID_HEADER: &str = "X-Test-Id";
/// Header fields Empath may add in front of a message.
pub const ADDABLE_HEADERS: [&str; 3] = ["received", "message-id", "date"];

/// A generated message, as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestMessage {
    pub id: usize,
    /// The exact bytes given to the client: CRLF line ends, ends with CRLF.
    pub bytes: Vec<u8>,
    pub has_message_id: bool,
    pub has_date: bool,
}

impl TestMessage {
    pub fn file_name(&self) -> String {
        format!("msg-{:04}.eml", self.id)
    }
}

/// Body lines that exercise dot-stuffing and transparency: a lone `.`
/// would end DATA if the client did not stuff it.
const TRICKY_LINES: [&str; 8] = [
    ".",
    "..",
    ".leading dot",
    "..two leading dots",
    "...",
    "From the start of a line",
    "trailing spaces   ",
    "\ttab-indented",
];

/// `count` varied messages. Message `n` carries `X-Test-Id: n`; every
/// fourth has both Message-ID and Date, others one or neither; every tenth
/// has a long body (about 100 KiB), and every fiftieth a very long one
/// (about 400 KiB: several of smtpd's chunks and of cleanup's write batches).
/// Every seventh has no line that starts with a dot, so that smtp-out can
/// send it as it is queued (the others it must dot-stuff).
pub fn generate(count: usize, from: &str, to: &[&str]) -> Vec<TestMessage> {
    (0..count).map(|id| generate_one(id, from, to)).collect()
}

fn generate_one(id: usize, from: &str, to: &[&str]) -> TestMessage {
    let (has_message_id, has_date) = match id % 4 {
        0 => (true, true),
        1 => (true, false),
        2 => (false, true),
        _ => (false, false),
    };
    let mut text = String::new();
    let _ = write!(text, "From: Test Sender <{from}>\r\n");
    let _ = write!(text, "To: {}\r\n", to.join(",\r\n "));
    let _ = write!(text, "Subject: Test message {id}\r\n");
    let _ = write!(text, "{TEST_ID_HEADER}: {id}\r\n");
    if has_message_id {
        let _ = write!(text, "Message-ID: <test-{id}@client.test>\r\n");
    }
    if has_date {
        text.push_str("Date: Tue, 1 Apr 2025 12:00:00 +0000\r\n");
    }
    // A folded header of the original must arrive folded the same way.
    text.push_str("X-Folded: first part\r\n\tsecond part\r\n");
    text.push_str("\r\n");
    text.push_str(&body(id));
    TestMessage {
        id,
        bytes: text.into_bytes(),
        has_message_id,
        has_date,
    }
}

fn body(id: usize) -> String {
    let mut body = format!("Hello, this is message {id}.\r\n\r\n");
    // Rotate the tricky lines so each appears at the start, middle and end.
    let tricky = id % 7 != 6;
    for k in (0..TRICKY_LINES.len()).filter(|_| tricky) {
        body.push_str(TRICKY_LINES[(id + k) % TRICKY_LINES.len()]);
        body.push_str("\r\n");
    }
    let lines = if id.is_multiple_of(50) {
        5000
    } else if id.is_multiple_of(10) {
        1600
    } else {
        5 + id % 17
    };
    for line in 0..lines {
        let _ = write!(
            body,
            "{id:04}-{line:05} The quick brown fox jumps over the lazy dog 0123456789\r\n"
        );
    }
    // Some messages end with a blank line, some with a lone dot.
    match id % 3 {
        0 => body.push_str("\r\n"),
        1 if tricky => body.push_str(".\r\n"),
        _ => body.push_str("-- \r\nend\r\n"),
    }
    body
}

/// Writes each message to `dir/msg-NNNN.eml`.
pub fn write_eml_files(dir: &Path, messages: &[TestMessage]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    for message in messages {
        let path = dir.join(message.file_name());
        std::fs::write(&path, &message.bytes)
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
    dir.to_owned()
}

/// The header section: everything before the first empty line.
fn header_section(data: &[u8]) -> &[u8] {
    let end = data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(data.len(), |p| p + 2);
    &data[..end]
}

/// The `X-Test-Id` of a message, found in its header section.
pub fn test_id(data: &[u8]) -> Option<usize> {
    let headers = String::from_utf8_lossy(header_section(data));
    headers.split("\r\n").find_map(|line| {
        let (name, value) = line.split_once(':')?;
        if name.eq_ignore_ascii_case(TEST_ID_HEADER) {
            value.trim().parse().ok()
        } else {
            None
        }
    })
}

/// The header fields Empath put in front of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedHeaders {
    /// Lower-cased field names, one per field, in order.
    pub names: Vec<String>,
    /// The added bytes.
    pub raw: Vec<u8>,
}

impl AddedHeaders {
    pub fn count(&self, name: &str) -> usize {
        self.names
            .iter()
            .filter(|n| n.eq_ignore_ascii_case(name))
            .count()
    }
}

/// Checks that `delivered` is `original` with only header fields named in
/// [`ADDABLE_HEADERS`] in front, and returns those fields.
pub fn added_headers(delivered: &[u8], original: &[u8]) -> Result<AddedHeaders, String> {
    let Some(prefix) = delivered.strip_suffix(original) else {
        return Err(describe_mismatch(delivered, original));
    };
    let text = std::str::from_utf8(prefix).map_err(|_| {
        format!(
            "added text is not UTF-8: {:?}",
            String::from_utf8_lossy(prefix)
        )
    })?;
    if !text.is_empty() && !text.ends_with("\r\n") {
        return Err(format!("added text does not end with CRLF: {text:?}"));
    }
    let mut names = Vec::new();
    for line in text.split_terminator("\r\n") {
        if line.contains(['\r', '\n']) {
            return Err(format!("bare CR or LF in added header line {line:?}"));
        }
        if line.starts_with([' ', '\t']) {
            if names.is_empty() {
                return Err(format!(
                    "added text starts with a continuation line {line:?}"
                ));
            }
            continue;
        }
        let name = line
            .split_once(':')
            .map(|(name, _)| name.to_ascii_lowercase())
            .filter(|name| ADDABLE_HEADERS.contains(&name.as_str()))
            .ok_or_else(|| format!("unexpected added line {line:?}"))?;
        names.push(name);
    }
    Ok(AddedHeaders {
        names,
        raw: prefix.to_vec(),
    })
}

/// Explains how `delivered` differs from `original`, for failure messages.
fn describe_mismatch(delivered: &[u8], original: &[u8]) -> String {
    let same_tail = delivered
        .iter()
        .rev()
        .zip(original.iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    let context = |data: &[u8]| {
        let end = data.len() - same_tail;
        let start = end.saturating_sub(60);
        String::from_utf8_lossy(&data[start..(end + 20).min(data.len())]).into_owned()
    };
    format!(
        "delivered content ({} bytes) does not end with the original ({} bytes); \
         they differ {} bytes before the end of the original\n  original:  ...{:?}\n  delivered: ...{:?}",
        delivered.len(),
        original.len(),
        same_tail,
        context(original),
        context(delivered),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const TO: [&str; 2] = ["a@sink.test", "b@sink.test"];

    #[test]
    fn generated_messages_are_crlf_and_carry_their_id() {
        for message in generate(40, "s@client.test", &TO) {
            let bytes = &message.bytes;
            assert!(bytes.ends_with(b"\r\n"));
            let bare_lf = bytes
                .iter()
                .enumerate()
                .any(|(i, &b)| b == b'\n' && (i == 0 || bytes[i - 1] != b'\r'));
            assert!(!bare_lf, "message {} has a bare LF", message.id);
            assert_eq!(test_id(bytes), Some(message.id));
            let text = String::from_utf8_lossy(bytes);
            // Every seventh has no line that starts with a dot.
            let tricky = message.id % 7 != 6;
            assert_eq!(
                text.contains("\r\n.\r\n"),
                tricky,
                "lone-dot line in {}",
                message.id
            );
            assert_eq!(
                text.contains("\r\n."),
                tricky,
                "dot lines in {}",
                message.id
            );
            assert_eq!(text.contains("\r\nMessage-ID:"), message.has_message_id);
            assert_eq!(text.contains("\r\nDate:"), message.has_date);
        }
    }

    #[test]
    fn all_header_combinations_and_a_long_body_occur() {
        let messages = generate(10, "s@client.test", &TO);
        for (with_id, with_date) in [(true, true), (true, false), (false, true), (false, false)] {
            assert!(
                messages
                    .iter()
                    .any(|m| m.has_message_id == with_id && m.has_date == with_date)
            );
        }
        assert!(messages[0].bytes.len() > 100_000);
    }

    #[test]
    fn added_headers_are_found_in_front_of_the_original() {
        let original = b"Subject: x\r\n\r\nbody\r\n";
        let delivered = [
            &b"Received: from client.test\r\n\tby mx.empath.test; Tue, 1 Apr 2025\r\nMessage-ID: <1@mx>\r\n"[..],
            original,
        ]
        .concat();
        let added = added_headers(&delivered, original).expect("valid");
        assert_eq!(added.names, ["received", "message-id"]);
        assert_eq!(added.count("Received"), 1);
        assert_eq!(added.count("date"), 0);
        assert!(
            added_headers(original, original)
                .expect("nothing added")
                .names
                .is_empty()
        );
    }

    #[test]
    fn changes_to_the_original_or_other_headers_are_rejected() {
        let original = b"Subject: x\r\n\r\nbody\r\n";
        let changed = b"Received: x\r\nSubject: x\r\n\r\nbody \r\n";
        assert!(added_headers(changed, original).is_err());
        let other = [&b"X-Spam: yes\r\n"[..], original].concat();
        assert!(added_headers(&other, original).is_err());
        let continuation_first = [&b" folded\r\n"[..], original].concat();
        assert!(added_headers(&continuation_first, original).is_err());
    }

    #[test]
    fn test_id_is_read_from_the_header_section_only() {
        assert_eq!(
            test_id(b"Received: x\r\nX-Test-Id: 17\r\n\r\nX-Test-Id: 3\r\n"),
            Some(17)
        );
        assert_eq!(test_id(b"Subject: x\r\n\r\nX-Test-Id: 3\r\n"), None);
    }
}
