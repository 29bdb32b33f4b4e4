//! What of the original message goes back with a DSN: the whole message
//! (RET=FULL, within the size cap) or its header section.

use std::io::{self, Read};

/// A header section longer than this is cut (at a line end).
pub const MAX_HEADERS: usize = 64 * 1024;

/// The part of the original that the DSN returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Returned {
    /// The whole message, as queued.
    Full(Vec<u8>),
    /// The header section, ending in CRLF (empty if the content is lost).
    /// `too_big` is set when the whole message was asked for but exceeded
    /// the size cap.
    Headers { bytes: Vec<u8>, too_big: bool },
}

impl Returned {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Self::Full(bytes) | Self::Headers { bytes, .. } => bytes,
        }
    }
}

/// Reads what to return from `content` (the queued message, CRLF line
/// ends): everything if `full` and it is at most `cap` bytes, else the
/// headers. Reads at most `max(cap, MAX_HEADERS) + 1` bytes.
pub fn select(content: impl Read, full: bool, cap: u64) -> io::Result<Returned> {
    let limit = if full {
        cap.max(MAX_HEADERS as u64)
    } else {
        MAX_HEADERS as u64
    };
    let mut bytes = Vec::new();
    content
        .take(limit.saturating_add(1))
        .read_to_end(&mut bytes)?;
    if full && bytes.len() as u64 <= cap {
        return Ok(Returned::Full(bytes));
    }
    Ok(Returned::Headers {
        bytes: header_section(&bytes).to_vec(),
        too_big: full,
    })
}

/// The header section of `message`, up to [`MAX_HEADERS`] bytes and cut
/// at a line end, without the blank line that ends it.
pub fn header_section(message: &[u8]) -> &[u8] {
    let head = &message[..message.len().min(MAX_HEADERS)];
    if head.starts_with(b"\r\n") {
        return &[];
    }
    if let Some(blank) = head.windows(4).position(|w| w == b"\r\n\r\n") {
        return &head[..blank + 2];
    }
    // No blank line in reach: the message is all headers, or they are
    // longer than the cap. Keep whole lines only.
    match head.windows(2).rposition(|w| w == b"\r\n") {
        Some(end) => &head[..end + 2],
        None => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESSAGE: &[u8] = b"Subject: hi\r\nFrom: a@b\r\n\r\nbody\r\n";

    #[test]
    fn headers_end_before_the_blank_line() {
        assert_eq!(header_section(MESSAGE), b"Subject: hi\r\nFrom: a@b\r\n");
        assert_eq!(header_section(b"Subject: only\r\n"), b"Subject: only\r\n");
        assert_eq!(header_section(b"\r\nbody\r\n"), b"");
        assert_eq!(header_section(b"no line end"), b"");
    }

    #[test]
    fn overlong_headers_are_cut_at_a_line_end() {
        let mut message = Vec::new();
        while message.len() < MAX_HEADERS + 100 {
            message.extend_from_slice(b"X-Filler: 0123456789012345678901234567890123456789\r\n");
        }
        let cut = header_section(&message);
        assert!(cut.len() <= MAX_HEADERS);
        assert!(cut.ends_with(b"\r\n"));
    }

    #[test]
    fn full_return_within_the_cap() {
        assert_eq!(
            select(MESSAGE, true, 1000).unwrap(),
            Returned::Full(MESSAGE.to_vec())
        );
    }

    #[test]
    fn full_return_over_the_cap_falls_back_to_headers() {
        let mut big = MESSAGE.to_vec();
        big.extend(std::iter::repeat_n(b'x', 100_000));
        assert_eq!(
            select(&big[..], true, 1000).unwrap(),
            Returned::Headers {
                bytes: b"Subject: hi\r\nFrom: a@b\r\n".to_vec(),
                too_big: true
            }
        );
        // Exactly at the cap still fits.
        assert_eq!(
            select(MESSAGE, true, MESSAGE.len() as u64).unwrap(),
            Returned::Full(MESSAGE.to_vec())
        );
    }

    #[test]
    fn headers_only_unless_full_is_asked_for() {
        assert_eq!(
            select(MESSAGE, false, 1000).unwrap(),
            Returned::Headers {
                bytes: b"Subject: hi\r\nFrom: a@b\r\n".to_vec(),
                too_big: false
            }
        );
    }
}
