//! Reading command lines with a bound on their length, so that a client
//! cannot make us buffer without limit.

use std::io;

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// Longest command line, line ending included. RFC 5321 allows 512 octets
/// for commands but 1000 for text lines; we accept the larger, because
/// extensions (AUTH, long parameter lists) make command lines grow.
pub const MAX_COMMAND_LINE: usize = 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A line without its CRLF (or bare LF).
    Complete(Vec<u8>),
    /// The line was longer than the limit; it has been read and dropped.
    TooLong,
    /// The client closed the connection (a partial last line is dropped).
    Eof,
}

/// Reads one line of at most `max` bytes including its ending. An overlong
/// line is consumed up to its LF without keeping it.
pub async fn read_line<R: AsyncBufRead + Unpin>(reader: &mut R, max: usize) -> io::Result<Line> {
    let mut line = Vec::new();
    let mut too_long = false;
    loop {
        let buffer = reader.fill_buf().await?;
        if buffer.is_empty() {
            return Ok(Line::Eof);
        }
        let (take, complete) = match buffer.iter().position(|&b| b == b'\n') {
            Some(newline) => (newline + 1, true),
            None => (buffer.len(), false),
        };
        if !too_long {
            if line.len() + take > max {
                too_long = true;
                line = Vec::new();
            } else {
                line.extend_from_slice(&buffer[..take]);
            }
        }
        reader.consume(take);
        if complete {
            if too_long {
                return Ok(Line::TooLong);
            }
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Ok(Line::Complete(line));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8], max: usize) -> Vec<Line> {
        // A small buffer, so that lines span several reads.
        let mut reader = tokio::io::BufReader::with_capacity(4, input);
        let mut out = Vec::new();
        loop {
            let line = read_line(&mut reader, max).await;
            let Ok(line) = line else {
                panic!("read error");
            };
            let end = line == Line::Eof;
            out.push(line);
            if end {
                return out;
            }
        }
    }

    #[tokio::test]
    async fn splits_on_crlf_and_bare_lf() {
        assert_eq!(
            lines(b"EHLO a\r\nNOOP\nQUIT\r\npartial", 100).await,
            vec![
                Line::Complete(b"EHLO a".to_vec()),
                Line::Complete(b"NOOP".to_vec()),
                Line::Complete(b"QUIT".to_vec()),
                Line::Eof
            ]
        );
    }

    #[tokio::test]
    async fn overlong_lines_are_skipped_whole() {
        assert_eq!(
            lines(b"123456789\r\nabcd\r\n", 8).await,
            vec![Line::TooLong, Line::Complete(b"abcd".to_vec()), Line::Eof]
        );
        // Exactly at the limit, ending included.
        assert_eq!(
            lines(b"123456\r\n", 8).await,
            vec![Line::Complete(b"123456".to_vec()), Line::Eof]
        );
    }
}
