//! Decoding the DATA stream (RFC 5321 section 4.5.2): dot-unstuffing and
//! finding the end-of-data marker, byte by byte, over input that may be
//! split anywhere. Pure and synchronous, with no buffer of its own.
//!
//! Choices, each made against SMTP smuggling (a second message hidden in
//! the first behind an end marker that another MTA reads differently):
//! - The message ends only at `<CRLF>.<CRLF>` with real CRLFs. A line `.`
//!   ended by a bare LF, or following a line ended by a bare LF, is content.
//! - A bare LF ends a line and becomes CRLF in the content. A bare CR is
//!   passed on as content here; cleanup makes it a line ending too (see
//!   `empath_common::content::shape`), so that no next hop sees either.
//!   The decoder notes that it saw one, for `smtpd.bare_line_endings:
//!   reject`.
//! - Lines longer than RFC 5321's 1000 octets are accepted and passed on
//!   unchanged: refusing or folding them would lose mail that other MTAs
//!   accept, and the size limit bounds the message anyway.
//! - A leading dot is removed from every other line that starts with one
//!   (RFC 5321 section 4.5.2), which covers `..` becoming `.`.

/// Where the decoder stands in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line. `after_crlf` says whether the line before
    /// ended with a real CRLF (or this is the first line), which the end
    /// marker requires.
    LineStart { after_crlf: bool },
    /// A line began with a dot, not yet written.
    Dot { after_crlf: bool },
    /// A line began with dot, CR; neither written yet.
    DotCr { after_crlf: bool },
    /// Inside a line.
    Middle,
    /// Inside a line, after a CR not yet written.
    MiddleCr,
    /// The end marker was read.
    Finished,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    /// Input bytes used. After the end marker, the rest of the input is
    /// left alone: it is the client's next (pipelined) command.
    pub consumed: usize,
    pub finished: bool,
}

#[derive(Debug, Clone)]
pub struct DataDecoder {
    state: State,
    /// A bare CR or LF was seen (RFC 5321 section 2.3.8 forbids them).
    bare_line_endings: bool,
}

impl Default for DataDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl DataDecoder {
    pub fn new() -> Self {
        // The CRLF that ended the DATA command counts as the first CRLF of
        // an immediate `<CRLF>.<CRLF>` (an empty message).
        Self {
            state: State::LineStart { after_crlf: true },
            bare_line_endings: false,
        }
    }

    /// Whether the message held a bare CR or LF.
    pub fn saw_bare_line_endings(&self) -> bool {
        self.bare_line_endings
    }

    pub fn is_finished(&self) -> bool {
        self.state == State::Finished
    }

    /// Decodes `input`, appending message content to `out`. Writes at most
    /// twice the input length (a bare LF becomes CRLF).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Decoded {
        let mut index = 0;
        while index < input.len() {
            if self.state == State::Finished {
                break;
            }
            // Fast path: copy the run of ordinary bytes inside a line.
            if self.state == State::Middle {
                let run =
                    memchr::memchr2(b'\r', b'\n', &input[index..]).unwrap_or(input.len() - index);
                out.extend_from_slice(&input[index..index + run]);
                index += run;
                if index == input.len() {
                    break;
                }
            }
            self.step(input[index], out);
            index += 1;
        }
        Decoded {
            consumed: index,
            finished: self.is_finished(),
        }
    }

    fn step(&mut self, byte: u8, out: &mut Vec<u8>) {
        let bare = match (self.state, byte) {
            (State::LineStart { .. } | State::Middle | State::Dot { .. }, b'\n') => true,
            (State::DotCr { .. } | State::MiddleCr, next) => next != b'\n',
            _ => false,
        };
        self.bare_line_endings |= bare;
        self.state = match (self.state, byte) {
            (State::Finished, _) => State::Finished,
            (State::LineStart { after_crlf }, b'.') => State::Dot { after_crlf },
            (State::LineStart { .. } | State::Middle, b'\r') => State::MiddleCr,
            (State::LineStart { .. } | State::Middle, b'\n') => {
                // Bare LF: the line ends, written as CRLF.
                out.extend_from_slice(b"\r\n");
                State::LineStart { after_crlf: false }
            }
            (State::LineStart { .. } | State::Middle, other) => {
                out.push(other);
                State::Middle
            }
            (State::Dot { after_crlf }, b'\r') => State::DotCr { after_crlf },
            (State::Dot { .. }, b'\n') => {
                // `.` ended by a bare LF: a line holding one dot, not the end.
                out.extend_from_slice(b".\r\n");
                State::LineStart { after_crlf: false }
            }
            (State::Dot { .. }, other) => {
                // A leading dot before other text is stuffing: drop it.
                out.push(other);
                State::Middle
            }
            (State::DotCr { after_crlf: true }, b'\n') => State::Finished,
            (State::DotCr { after_crlf: false }, b'\n') => {
                out.extend_from_slice(b".\r\n");
                State::LineStart { after_crlf: true }
            }
            (State::DotCr { .. }, b'\r') => {
                // `.` CR CR: stuffing dot dropped, first CR is content, the
                // second may start a CRLF.
                out.push(b'\r');
                State::MiddleCr
            }
            (State::DotCr { .. }, other) => {
                out.push(b'\r');
                out.push(other);
                State::Middle
            }
            (State::MiddleCr, b'\n') => {
                out.extend_from_slice(b"\r\n");
                State::LineStart { after_crlf: true }
            }
            (State::MiddleCr, b'\r') => {
                out.push(b'\r');
                State::MiddleCr
            }
            (State::MiddleCr, other) => {
                out.push(b'\r');
                out.push(other);
                State::Middle
            }
        };
    }
}

/// Looks for bare CRs and LFs in content that arrives in pieces (BDAT,
/// which is not dot-stuffed and has no end marker to find).
#[derive(Debug, Clone, Copy, Default)]
pub struct BareLineEndings {
    after_cr: bool,
    found: bool,
}

impl BareLineEndings {
    pub fn scan(&mut self, mut piece: &[u8]) {
        while !piece.is_empty() {
            if self.after_cr {
                self.after_cr = false;
                if piece[0] == b'\n' {
                    piece = &piece[1..];
                    continue;
                }
                self.found = true;
            }
            match memchr::memchr2(b'\r', b'\n', piece) {
                None => return,
                Some(at) if piece[at] == b'\n' => {
                    self.found = true;
                    piece = &piece[at + 1..];
                }
                Some(at) => {
                    self.after_cr = true;
                    piece = &piece[at + 1..];
                }
            }
        }
    }

    /// Whether any were found, once the last piece was scanned.
    pub fn found(&self) -> bool {
        self.found || self.after_cr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes all of `input` at once: (content, consumed, finished).
    fn decode(input: &[u8]) -> (Vec<u8>, usize, bool) {
        let mut out = Vec::new();
        let decoded = DataDecoder::new().feed(input, &mut out);
        (out, decoded.consumed, decoded.finished)
    }

    #[test]
    fn plain_message_and_end_marker() {
        let input = b"Subject: hi\r\n\r\nbody\r\n.\r\nQUIT\r\n";
        let (out, consumed, finished) = decode(input);
        assert_eq!(out, b"Subject: hi\r\n\r\nbody\r\n");
        assert!(finished);
        assert_eq!(&input[consumed..], b"QUIT\r\n");
    }

    #[test]
    fn empty_message() {
        assert_eq!(decode(b".\r\n"), (Vec::new(), 3, true));
    }

    #[test]
    fn dot_unstuffing() {
        let (out, _, finished) = decode(b"..\r\n...x\r\n.y\r\na.b\r\n.\r\n");
        assert!(finished);
        assert_eq!(out, b".\r\n..x\r\ny\r\na.b\r\n");
    }

    #[test]
    fn bare_line_feeds_become_crlf_but_never_end_the_message() {
        let (out, _, finished) = decode(b"a\n.\nb\r\n");
        assert!(!finished);
        assert_eq!(out, b"a\r\n.\r\nb\r\n");
        // `<LF>.<CRLF>`: the line before ended with a bare LF.
        let (out, _, finished) = decode(b"a\n.\r\nb\r\n");
        assert!(!finished);
        assert_eq!(out, b"a\r\n.\r\nb\r\n");
        // `<CRLF>.<LF>`.
        let (_, _, finished) = decode(b"a\r\n.\nb\r\n");
        assert!(!finished);
        // A bare CR before the dot does not end a line.
        let (out, _, finished) = decode(b"a\r.\r\nb\r\n");
        assert!(!finished);
        assert_eq!(out, b"a\r.\r\nb\r\n");
        // The real marker after all that still works.
        let (_, _, finished) = decode(b"a\n.\r\nb\r\n.\r\n");
        assert!(finished);
    }

    #[test]
    fn carriage_returns_inside_lines_are_kept() {
        let (out, _, _) = decode(b"a\rb\r\r\n.\r\r\n.\rx\r\n");
        assert_eq!(out, b"a\rb\r\r\n\r\r\n\rx\r\n");
    }

    #[test]
    fn any_split_gives_the_same_result() {
        let input: &[u8] = b"From: a\r\n..dots\r\n.\n\rx\r\r\n\n.a\r\n.\r.\r\nend\r\n.\r\nNEXT";
        let (whole, whole_consumed, whole_finished) = decode(input);
        assert!(whole_finished);
        for split in 0..=input.len() {
            let mut decoder = DataDecoder::new();
            let mut out = Vec::new();
            let first = decoder.feed(&input[..split], &mut out);
            let mut consumed = first.consumed;
            if !first.finished {
                consumed += decoder.feed(&input[split..], &mut out).consumed;
            }
            assert_eq!(out, whole, "split at {split}");
            assert_eq!(consumed, whole_consumed, "split at {split}");
            assert!(decoder.is_finished());
        }
        // And byte by byte.
        let mut decoder = DataDecoder::new();
        let mut out = Vec::new();
        for &byte in input {
            if decoder.is_finished() {
                break;
            }
            decoder.feed(&[byte], &mut out);
        }
        assert_eq!(out, whole);
    }

    #[test]
    fn output_is_bounded_by_twice_the_input() {
        let input = b"\n".repeat(100);
        let (out, _, _) = decode(&input);
        assert_eq!(out.len(), 200);
    }

    #[test]
    fn bare_line_endings_are_noticed() {
        for (input, bare) in [
            (&b"a\r\nb\r\n.\r\n"[..], false),
            (b"a\nb\r\n.\r\n", true),
            (b"a\rb\r\n.\r\n", true),
            (b"a\r\n.\rx\r\n.\r\n", true),
            (b"a\r\n.\nx\r\n.\r\n", true),
            (b"a\r\r\n.\r\n", true),
        ] {
            let mut decoder = DataDecoder::new();
            decoder.feed(input, &mut Vec::new());
            assert_eq!(
                decoder.saw_bare_line_endings(),
                bare,
                "{:?}",
                String::from_utf8_lossy(input)
            );
            let mut chunks = BareLineEndings::default();
            for byte in input {
                chunks.scan(std::slice::from_ref(byte));
            }
            assert_eq!(
                chunks.found(),
                bare,
                "{:?} in pieces",
                String::from_utf8_lossy(input)
            );
        }
        let mut chunk = BareLineEndings::default();
        chunk.scan(b"ends with CR\r");
        assert!(chunk.found());
    }
}
