//! The canonical form cleanup gives every message before it is queued,
//! whatever its source (SMTP DATA or BDAT, sendmail, the maildrop), as
//! Postfix's cleanup(8) does:
//!
//! - every line ends with CRLF: a bare LF or a bare CR ends a line and
//!   becomes CRLF, so that no next hop can read a line ending (or an end
//!   of data) where we did not see one;
//! - no line is longer than [`MAX_LINE`] octets before its CRLF: a long
//!   header line is folded at whitespace (or, with none, continued on a
//!   new line starting with a space), a long body line is broken;
//! - the header section ends with an empty line before the body: a
//!   message whose first line is not a header field gets one, so that the
//!   headers cleanup adds are not run into its text;
//! - the last line ends with CRLF.
//!
//! While shaping, it counts `Received:` fields (the hop count) and notes
//! which of the fields cleanup may add are present. Pure and streaming:
//! input may be split anywhere, and memory is bounded by the longest
//! header line it keeps ([`MAX_HEADER_SECTION`]).

/// RFC 5321 section 4.5.3.1.6: 1000 octets including CRLF.
pub const MAX_LINE: usize = 998;
/// A header section longer than this ends there: the rest is body.
pub const MAX_HEADER_SECTION: usize = 256 * 1024;

/// What the header section holds, as far as cleanup cares.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HeaderFacts {
    pub message_id: bool,
    pub date: bool,
    /// `Received:` fields: the hops the message has made.
    pub received: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    Headers,
    Body,
}

/// The shaper's state between calls to [`Shaper::push`].
#[derive(Debug, Clone)]
pub struct Shaper {
    section: Section,
    /// The header line being gathered (without its line ending), with any
    /// continuation lines of the same field kept apart as whole lines.
    header_line: Vec<u8>,
    /// Octets of the body line written so far (for breaking long lines).
    body_column: usize,
    /// A CR was the last byte seen; whether an LF follows decides if the
    /// line ending is CRLF or a bare CR (which becomes CRLF as well).
    pending_cr: bool,
    /// Octets of header section seen.
    header_bytes: usize,
    /// Any header field seen yet (a continuation line needs one before it).
    seen_field: bool,
    facts: HeaderFacts,
    /// The value of the first `Message-ID:` field (its first line), for
    /// the log.
    message_id: Option<String>,
    /// Bare CRs and LFs turned into CRLF.
    bare_line_endings: u64,
    /// Octets written to the output.
    written: u64,
}

impl Default for Shaper {
    fn default() -> Self {
        Self::new()
    }
}

impl Shaper {
    pub fn new() -> Self {
        Self {
            section: Section::Headers,
            header_line: Vec::new(),
            body_column: 0,
            pending_cr: false,
            header_bytes: 0,
            seen_field: false,
            facts: HeaderFacts::default(),
            message_id: None,
            bare_line_endings: 0,
            written: 0,
        }
    }

    /// What the header section held. Complete once [`Self::in_body`].
    pub fn facts(&self) -> HeaderFacts {
        self.facts
    }

    /// The `Message-ID:` of the message, as written on the field's first
    /// line (what the mail log shows).
    pub fn message_id(&self) -> Option<&str> {
        self.message_id.as_deref()
    }

    /// The header section is over: everything from here on is body.
    pub fn in_body(&self) -> bool {
        self.section == Section::Body
    }

    pub fn bare_line_endings(&self) -> u64 {
        self.bare_line_endings
    }

    /// Shapes `input`, appending the result to `out`.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        // Shaped output is about as long as the input: one allocation
        // rather than a doubling for every few lines of a large piece.
        out.reserve(input.len() + input.len() / 32 + 2);
        let start = out.len();
        let mut rest = input;
        while !rest.is_empty() {
            if self.pending_cr {
                self.pending_cr = false;
                if rest[0] == b'\n' {
                    rest = &rest[1..];
                } else {
                    self.bare_line_endings += 1;
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
                Some(b'\r') => {
                    self.pending_cr = true;
                    rest = &rest[text.len() + 1..];
                }
                Some(_) => {
                    self.bare_line_endings += 1;
                    self.end_line(out);
                    rest = &rest[text.len() + 1..];
                }
            }
        }
        self.note_written(start, out);
    }

    /// Ends the content: a last line without its line ending gets one.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        let start = out.len();
        if self.pending_cr {
            self.pending_cr = false;
            self.bare_line_endings += 1;
            self.end_line(out);
        }
        if !self.header_line.is_empty() || self.body_column > 0 {
            self.end_line(out);
        }
        self.note_written(start, out);
    }

    fn note_written(&mut self, start: usize, out: &[u8]) {
        self.written += (out.len() - start) as u64;
    }

    /// Text inside a line (no CR or LF).
    fn text(&mut self, text: &[u8], out: &mut Vec<u8>) {
        match self.section {
            Section::Headers => {
                self.header_bytes += text.len();
                self.header_line.extend_from_slice(text);
                if self.header_bytes > MAX_HEADER_SECTION {
                    // Give up on the header section: what was gathered is
                    // written as it stands and the rest is body.
                    let line = std::mem::take(&mut self.header_line);
                    self.begin_body(out);
                    self.body_text(&line, out);
                }
            }
            Section::Body => self.body_text(text, out),
        }
    }

    fn body_text(&mut self, mut text: &[u8], out: &mut Vec<u8>) {
        while !text.is_empty() {
            let room = MAX_LINE - self.body_column;
            if room == 0 {
                out.extend_from_slice(b"\r\n");
                self.body_column = 0;
                continue;
            }
            let take = room.min(text.len());
            out.extend_from_slice(&text[..take]);
            self.body_column += take;
            text = &text[take..];
        }
    }

    /// A line ended (CRLF, or a bare CR or LF made CRLF).
    fn end_line(&mut self, out: &mut Vec<u8>) {
        match self.section {
            Section::Body => {
                out.extend_from_slice(b"\r\n");
                self.body_column = 0;
            }
            Section::Headers => {
                self.header_bytes += 2;
                let line = std::mem::take(&mut self.header_line);
                self.header_line_ended(line, out);
            }
        }
    }

    fn header_line_ended(&mut self, line: Vec<u8>, out: &mut Vec<u8>) {
        if line.is_empty() {
            // The empty line that ends the header section.
            out.extend_from_slice(b"\r\n");
            self.section = Section::Body;
            return;
        }
        let continuation = matches!(line[0], b' ' | b'\t');
        if continuation && self.seen_field {
            fold(&line, out);
            return;
        }
        match field_name(&line) {
            Some(name) if !continuation => {
                self.seen_field = true;
                self.note_field(name);
                if self.message_id.is_none() && name.eq_ignore_ascii_case(b"message-id") {
                    let value = &line[name.len()..];
                    let value = value.trim_ascii_start().strip_prefix(b":").unwrap_or(value);
                    self.message_id =
                        Some(String::from_utf8_lossy(value.trim_ascii()).into_owned());
                }
                fold(&line, out);
            }
            _ => {
                // Not a header field: the body starts here, after the
                // empty line the message lacked.
                self.begin_body(out);
                self.body_text(&line, out);
                out.extend_from_slice(b"\r\n");
                self.body_column = 0;
            }
        }
    }

    fn begin_body(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"\r\n");
        self.section = Section::Body;
        self.body_column = 0;
    }

    fn note_field(&mut self, name: &[u8]) {
        if name.eq_ignore_ascii_case(b"received") {
            self.facts.received += 1;
        } else if name.eq_ignore_ascii_case(b"message-id") {
            self.facts.message_id = true;
        } else if name.eq_ignore_ascii_case(b"date") {
            self.facts.date = true;
        }
    }

    /// Octets written so far.
    pub fn written(&self) -> u64 {
        self.written
    }
}

/// The field name of a header line (RFC 5322 `ftext`: printable ASCII but
/// `:`), or `None` when the line is not a header field. Whitespace before
/// the colon is tolerated, as in the obsolete syntax.
fn field_name(line: &[u8]) -> Option<&[u8]> {
    let colon = memchr::memchr(b':', line)?;
    let name = line[..colon].trim_ascii_end();
    let valid = !name.is_empty() && name.iter().all(|&b| (33..=126).contains(&b) && b != b':');
    valid.then_some(name)
}

/// Writes one header line, CRLF-terminated, folded so that no line is
/// longer than [`MAX_LINE`]: before the last whitespace that fits (RFC
/// 5322 section 2.2.3 folding keeps the field's meaning), or, where there
/// is none, by continuing on a new line that starts with a space, as
/// Postfix's smtp(8) does.
fn fold(line: &[u8], out: &mut Vec<u8>) {
    let is_space = |b: &u8| *b == b' ' || *b == b'\t';
    let mut rest = line;
    // The output line begins with a space cleanup inserted.
    let mut indent = false;
    loop {
        let room = MAX_LINE - usize::from(indent);
        if indent {
            out.push(b' ');
        }
        if rest.len() <= room {
            out.extend_from_slice(rest);
            out.extend_from_slice(b"\r\n");
            return;
        }
        // Never break before the first octet: a continuation line starts
        // with its whitespace, and the line must make progress.
        match rest[1..=room].iter().rposition(is_space) {
            Some(position) => {
                let at = position + 1;
                out.extend_from_slice(&rest[..at]);
                rest = &rest[at..];
                indent = false;
            }
            None => {
                out.extend_from_slice(&rest[..room]);
                rest = &rest[room..];
                indent = !rest.first().is_some_and(is_space);
            }
        }
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(input: &[u8]) -> (Vec<u8>, HeaderFacts) {
        let mut shaper = Shaper::new();
        let mut out = Vec::new();
        shaper.push(input, &mut out);
        shaper.finish(&mut out);
        assert_eq!(shaper.written(), out.len() as u64);
        (out, shaper.facts())
    }

    fn lines(content: &[u8]) -> Vec<&[u8]> {
        let text = content.strip_suffix(b"\r\n").unwrap_or(content);
        text.split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .collect()
    }

    #[test]
    fn a_well_formed_message_is_unchanged() {
        let input = b"From: a@example.org\r\nSubject: hi\r\n\tthere\r\n\r\nbody\r\n.dot\r\n";
        let (out, facts) = shape(input);
        assert_eq!(out, input);
        assert_eq!(facts, HeaderFacts::default());
    }

    #[test]
    fn bare_line_endings_become_crlf() {
        let (out, _) = shape(b"Subject: x\n\nline\rnext\nlast\r");
        assert_eq!(out, b"Subject: x\r\n\r\nline\r\nnext\r\nlast\r\n");
        let (out, _) = shape(b"A: b\r\n\r\na\r\r\nb");
        assert_eq!(out, b"A: b\r\n\r\na\r\n\r\nb\r\n");
    }

    #[test]
    fn a_message_without_headers_gets_the_empty_line() {
        let (out, _) = shape(b"hello world\r\nsecond\r\n");
        assert_eq!(out, b"\r\nhello world\r\nsecond\r\n");
        let (out, _) = shape(b"Subject: x\r\nthis is text\r\n");
        assert_eq!(out, b"Subject: x\r\n\r\nthis is text\r\n");
        // A leading continuation line is not a header.
        let (out, _) = shape(b" indented\r\n");
        assert_eq!(out, b"\r\n indented\r\n");
    }

    #[test]
    fn long_header_lines_are_folded_at_whitespace() {
        let words: Vec<String> = (0..1000).map(|i| format!("word{i}")).collect();
        let subject = format!("Subject: {}", words.join(" "));
        let input = format!("{subject}\r\n\r\nbody\r\n");
        let (out, _) = shape(input.as_bytes());
        for line in lines(&out) {
            assert!(line.len() <= MAX_LINE, "{} octets", line.len());
        }
        // Unfolding gives the original field back.
        let headers = &out[..out.windows(4).position(|w| w == b"\r\n\r\n").unwrap()];
        let unfolded = String::from_utf8_lossy(headers).replace("\r\n", "");
        assert_eq!(unfolded, subject);
    }

    #[test]
    fn long_header_lines_without_whitespace_are_continued() {
        let input = format!("X-Long: {}\r\n\r\nb\r\n", "a".repeat(5000));
        let (out, _) = shape(input.as_bytes());
        let all = lines(&out);
        for line in &all {
            assert!(line.len() <= MAX_LINE, "{} octets", line.len());
        }
        // Still one field: every line after the first until the empty line
        // is a continuation.
        let end = all.iter().position(|l| l.is_empty()).unwrap();
        assert!(all[1..end].iter().all(|l| l.starts_with(b" ")));
        assert_eq!(all[end + 1], b"b");
    }

    #[test]
    fn long_body_lines_are_broken() {
        let input = format!("A: b\r\n\r\n{}\r\nshort\r\n", "x".repeat(2500));
        let (out, _) = shape(input.as_bytes());
        let all = lines(&out);
        assert_eq!(all[2].len(), MAX_LINE);
        assert_eq!(all[3].len(), MAX_LINE);
        assert_eq!(all[4].len(), 2500 - 2 * MAX_LINE);
        assert_eq!(all[5], b"short");
    }

    #[test]
    fn received_fields_are_counted_and_added_fields_noted() {
        let (_, facts) = shape(
            b"Received: from a\r\nreceived: from b\r\n\tby c\r\nMessage-ID: <x@y>\r\nDATE: now\r\n\r\nReceived: body\r\n",
        );
        assert_eq!(
            facts,
            HeaderFacts {
                message_id: true,
                date: true,
                received: 2
            }
        );
    }

    #[test]
    fn any_split_gives_the_same_result() {
        let input: &[u8] = b"From: a\nSubject: b\r\n c\r\rX: y\r\n\r\nbody\r\nmore\rend";
        let (whole, _) = shape(input);
        for split in 0..=input.len() {
            let mut shaper = Shaper::new();
            let mut out = Vec::new();
            shaper.push(&input[..split], &mut out);
            shaper.push(&input[split..], &mut out);
            shaper.finish(&mut out);
            assert_eq!(out, whole, "split at {split}");
        }
    }
}
