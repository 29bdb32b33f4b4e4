//! Content as the SMTP client sends it after DATA (RFC 5321 section
//! 4.5.2): dot-stuffed, CRLF line endings only, no line over 1000 octets,
//! and one end-of-data marker.
//!
//! cleanup has already given queued content that shape (see
//! [`super::shape`]); the encoder makes sure of it again for any content,
//! so that nothing in the queue (an older queue file, a bug) can put a
//! bare CR or LF, or a second end of data, on the wire.

use super::shape::MAX_LINE;

/// Encodes content for DATA across chunk boundaries.
#[derive(Debug, Clone, Default)]
pub struct DataEncoder {
    /// Content octets on the current output line (a stuffing dot does not
    /// count, as RFC 5321 section 4.5.3.1.6 says).
    column: usize,
    /// The last input octet was a CR: the line ends whatever follows.
    pending_cr: bool,
}

impl DataEncoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `chunk`, encoded, to `out`.
    pub fn encode(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        let mut rest = chunk;
        while !rest.is_empty() {
            if self.pending_cr {
                self.pending_cr = false;
                if rest[0] == b'\n' {
                    rest = &rest[1..];
                }
                self.end_line(out);
                continue;
            }
            let (text, ending) = match memchr::memchr2(b'\r', b'\n', rest) {
                Some(at) => (&rest[..at], Some(rest[at])),
                None => (rest, None),
            };
            self.text(text, out);
            match ending {
                None => rest = &[],
                Some(ending) => {
                    rest = &rest[text.len() + 1..];
                    if ending == b'\r' {
                        self.pending_cr = true;
                    } else {
                        self.end_line(out);
                    }
                }
            }
        }
    }

    /// Appends the end of the content: CRLF if the last line lacks one,
    /// then the end-of-data marker.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.pending_cr || self.column > 0 {
            self.pending_cr = false;
            self.end_line(out);
        }
        out.extend_from_slice(b".\r\n");
    }

    fn text(&mut self, mut text: &[u8], out: &mut Vec<u8>) {
        while !text.is_empty() {
            if self.column == MAX_LINE {
                self.end_line(out);
            }
            if self.column == 0 && text[0] == b'.' {
                out.push(b'.');
            }
            let take = (MAX_LINE - self.column).min(text.len());
            out.extend_from_slice(&text[..take]);
            self.column += take;
            text = &text[take..];
        }
    }

    fn end_line(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"\r\n");
        self.column = 0;
    }
}

/// Whether `content` is already as [`DataEncoder`] would send it (the
/// end marker aside): CRLF line endings only, the last line ended too, no
/// line that starts with a dot or is longer than [`MAX_LINE`]. cleanup
/// queues most messages in that shape, and they can then go on the wire
/// as they are, uncopied.
pub fn is_wire_ready(content: &[u8]) -> bool {
    let mut line_start = 0;
    let mut ends = memchr::memchr2_iter(b'\r', b'\n', content);
    while let Some(at) = ends.next() {
        // Only CR LF ends a line; the LF found next is this one.
        if content[at] != b'\r' || content.get(at + 1) != Some(&b'\n') {
            return false;
        }
        ends.next();
        let line = &content[line_start..at];
        if line.len() > MAX_LINE || line.first() == Some(&b'.') {
            return false;
        }
        line_start = at + 2;
    }
    line_start == content.len()
}

/// Checks a DATA stream, as a next hop gets it after its 354, up to and
/// including the end marker: CRLF line endings only (no bare CR, no bare
/// LF), no text line over [`MAX_LINE`] octets (a stuffing dot aside), and
/// exactly one `.` line, the last. What [`DataEncoder`] guarantees, in a
/// form that tests of the whole path can check.
pub fn check_stream(raw: &[u8]) -> Result<(), String> {
    for (index, &byte) in raw.iter().enumerate() {
        let previous = index.checked_sub(1).map(|i| raw[i]);
        let next = raw.get(index + 1).copied();
        if byte == b'\n' && previous != Some(b'\r') {
            return Err(format!("bare LF at octet {index}"));
        }
        if byte == b'\r' && next != Some(b'\n') {
            return Err(format!("bare CR at octet {index}"));
        }
    }
    let text = raw
        .strip_suffix(b"\r\n")
        .ok_or("the stream does not end with CRLF")?;
    let lines: Vec<&[u8]> = text
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .collect();
    let ends = lines.iter().filter(|line| *line == b".").count();
    if ends != 1 || lines.last() != Some(&&b"."[..]) {
        return Err(format!(
            "{ends} end-of-data lines; exactly one, the last, expected"
        ));
    }
    for (number, line) in lines.iter().enumerate() {
        let text = line
            .strip_prefix(b".")
            .filter(|_| line.len() > 1)
            .unwrap_or(line);
        if text.len() > MAX_LINE {
            return Err(format!("line {} has {} octets", number + 1, text.len()));
        }
    }
    Ok(())
}

/// Undoes the dot-stuffing of a checked stream: the content it carries.
pub fn unstuff(raw: &[u8]) -> Vec<u8> {
    let mut content = Vec::with_capacity(raw.len());
    let body = raw.strip_suffix(b".\r\n").unwrap_or(raw);
    for line in body.split_inclusive(|&b| b == b'\n') {
        content.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
    }
    content
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode(chunks: &[&[u8]]) -> Vec<u8> {
        let mut encoder = DataEncoder::new();
        let mut out = Vec::new();
        for chunk in chunks {
            encoder.encode(chunk, &mut out);
        }
        encoder.finish(&mut out);
        out
    }

    #[test]
    fn dots_at_line_starts_are_doubled_across_chunks() {
        assert_eq!(
            encode(&[b".a\r\nb\r\n", b".", b"c\r\n"]),
            b"..a\r\nb\r\n..c\r\n.\r\n"
        );
        assert_eq!(encode(&[b"a.b\r\n"]), b"a.b\r\n.\r\n");
    }

    #[test]
    fn missing_final_crlf_is_added() {
        assert_eq!(encode(&[b"no newline"]), b"no newline\r\n.\r\n");
        assert_eq!(encode(&[]), b".\r\n");
    }

    /// The smuggling sequences: whatever the content holds, the only
    /// `<CRLF>.<CRLF>` on the wire is the real end.
    #[test]
    fn bare_line_endings_never_reach_the_wire() {
        assert_eq!(encode(&[b"a\r.\r\nb\r\n"]), b"a\r\n..\r\nb\r\n.\r\n");
        assert_eq!(encode(&[b"a\n.\nb\r\n"]), b"a\r\n..\r\nb\r\n.\r\n");
        assert_eq!(encode(&[b"a\r.\rb"]), b"a\r\n..\r\nb\r\n.\r\n");
        assert_eq!(encode(&[b"a\r", b"\n.\r", b"\n"]), b"a\r\n..\r\n.\r\n");
    }

    #[test]
    fn long_lines_are_broken() {
        let out = encode(&[&b"x".repeat(2000)]);
        let lines: Vec<&[u8]> = out.split(|&b| b == b'\n').collect();
        assert_eq!(lines[0].len(), MAX_LINE + 1);
        assert_eq!(lines[1].len(), MAX_LINE + 1);
        assert_eq!(lines[2], b"xxxx\r");
        // A stuffing dot does not count towards the limit.
        let line = [b".".as_slice(), &b"y".repeat(MAX_LINE - 1)].concat();
        assert_eq!(
            encode(&[&line]),
            [b".", line.as_slice(), b"\r\n.\r\n"].concat()
        );
    }

    #[test]
    fn wire_ready_content_is_the_content_the_encoder_would_send() {
        assert!(is_wire_ready(b""));
        assert!(is_wire_ready(b"a\r\n\r\nb.c\r\n"));
        assert!(is_wire_ready(
            &[&b"x".repeat(MAX_LINE)[..], b"\r\n"].concat()
        ));
        assert!(!is_wire_ready(
            &[&b"x".repeat(MAX_LINE + 1)[..], b"\r\n"].concat()
        ));
        assert!(!is_wire_ready(b"a\r\n.b\r\n"));
        assert!(!is_wire_ready(b"a\r\nb"));
        assert!(!is_wire_ready(b"a\nb\r\n"));
        assert!(!is_wire_ready(b"a\rb\r\n"));
        assert!(!is_wire_ready(b"a\r\r\n"));
        assert!(!is_wire_ready(b"a\r"));
    }

    proptest! {
        /// Exactly the content that encodes to itself (and the end
        /// marker) is wire ready.
        #[test]
        fn wire_ready_is_exactly_unchanged_by_encoding(
            pieces in proptest::collection::vec(
                prop_oneof![
                    Just(b"\r\n".to_vec()),
                    Just(b"\r".to_vec()),
                    Just(b"\n".to_vec()),
                    Just(b".".to_vec()),
                    Just(b"ab".to_vec()),
                    (0usize..1100).prop_map(|n| vec![b'y'; n]),
                ],
                0..12,
            )
        ) {
            let content = pieces.concat();
            let unchanged = encode(&[&content]) == [content.as_slice(), b".\r\n"].concat();
            prop_assert_eq!(is_wire_ready(&content), unchanged);
        }
    }

    #[test]
    fn the_stream_check_accepts_rfc_content_and_refuses_the_rest() {
        assert_eq!(check_stream(b"a\r\n..b\r\n.\r\n"), Ok(()));
        assert_eq!(check_stream(b".\r\n"), Ok(()));
        assert!(check_stream(b"a\n.\r\n").is_err());
        assert!(check_stream(b"a\r.\r\n.\r\n").is_err());
        assert!(check_stream(b"a\r\n.\r\nb\r\n.\r\n").is_err());
        assert!(check_stream(b"a\r\n").is_err());
        let long = [vec![b'x'; 999], b"\r\n.\r\n".to_vec()].concat();
        assert!(check_stream(&long).is_err());
        let stuffed = [b"..".to_vec(), vec![b'x'; 997], b"\r\n.\r\n".to_vec()].concat();
        assert_eq!(check_stream(&stuffed), Ok(()));
        assert_eq!(unstuff(b"a\r\n..b\r\n.\r\n"), b"a\r\n.b\r\n");
    }
}
