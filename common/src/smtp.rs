//! SMTP types shared by the server, the client and the queue.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An SMTP reply: code, optional enhanced status code (RFC 3463) and text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub code: u16,
    pub enhanced: Option<String>,
    /// The text; several lines are separated by `\n`.
    pub text: String,
}

impl Reply {
    pub fn new(code: u16, enhanced: &str, text: impl Into<String>) -> Self {
        Self {
            code,
            enhanced: (!enhanced.is_empty()).then(|| enhanced.to_owned()),
            text: text.into(),
        }
    }

    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// The reply as sent on the wire, CRLF-terminated, multi-line where needed.
    pub fn to_wire(&self) -> String {
        let lines: Vec<&str> = if self.text.is_empty() {
            vec![""]
        } else {
            self.text.lines().collect()
        };
        let mut out = String::new();
        for (index, line) in lines.iter().enumerate() {
            let separator = if index + 1 == lines.len() { ' ' } else { '-' };
            out.push_str(&self.code.to_string());
            out.push(separator);
            if let Some(enhanced) = &self.enhanced {
                out.push_str(enhanced);
                out.push(' ');
            }
            out.push_str(line);
            out.push_str("\r\n");
        }
        out
    }

    /// Parses the lines of one (possibly multi-line) reply, without CRLF,
    /// by the grammar of RFC 5321 section 4.2 (see [`ReplyLine::parse`]):
    /// every line has the same code, every line but the last continues
    /// with `-`, and the last does not. The enhanced code is recognised on
    /// the first line when it matches the reply class.
    pub fn parse_lines<S: AsRef<str>>(lines: &[S]) -> Result<Self, ReplyError> {
        let (last, earlier) = lines.split_last().ok_or(ReplyError::Empty)?;
        let mut parsed = Vec::with_capacity(lines.len());
        for line in earlier {
            let line = ReplyLine::parse(line.as_ref())?;
            if !line.continues {
                return Err(ReplyError::EndedEarly);
            }
            parsed.push(line);
        }
        let final_line = ReplyLine::parse(last.as_ref())?;
        if final_line.continues {
            return Err(ReplyError::Unfinished);
        }
        parsed.push(final_line);
        Self::from_lines(&parsed)
    }

    /// Joins the lines of one reply, checking that they share one code.
    pub fn from_lines(lines: &[ReplyLine<'_>]) -> Result<Self, ReplyError> {
        let code = lines.first().ok_or(ReplyError::Empty)?.code;
        if let Some(other) = lines.iter().find(|l| l.code != code) {
            return Err(ReplyError::MixedCodes {
                first: code,
                later: other.code,
            });
        }
        let mut enhanced = None;
        let mut texts = Vec::with_capacity(lines.len());
        for (index, line) in lines.iter().enumerate() {
            let mut text = line.text;
            if let Some((candidate, rest)) = text.split_once(' ').or(Some((text, "")))
                && is_enhanced_code(candidate, code)
            {
                if index == 0 {
                    enhanced = Some(candidate.to_owned());
                }
                if enhanced.as_deref() == Some(candidate) {
                    text = rest;
                }
            }
            texts.push(printable(text));
        }
        Ok(Self {
            code,
            enhanced,
            text: texts.join("\n"),
        })
    }

    /// 2xx: the command was carried out. Only such a reply to the end of
    /// data delivers a message.
    pub fn is_completion(&self) -> bool {
        (200..300).contains(&self.code)
    }
}

/// Why a server's lines are not an SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("no reply line")]
    Empty,
    #[error("malformed reply line {0:?}")]
    Malformed(String),
    #[error("reply code {later} in the middle of a {first} reply")]
    MixedCodes { first: u16, later: u16 },
    #[error("reply ended before its last line")]
    EndedEarly,
    #[error("last reply line continues with '-'")]
    Unfinished,
}

/// One line of a reply: `Reply-code [ SP textstring ] CRLF` or, for all
/// but the last line, `Reply-code "-" [ textstring ] CRLF` (RFC 5321
/// section 4.2), with the code's first digit 2 to 5.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyLine<'a> {
    pub code: u16,
    /// A `-` follows the code: more lines of this reply follow.
    pub continues: bool,
    pub text: &'a str,
}

impl<'a> ReplyLine<'a> {
    /// Parses a line without its CRLF. Anything but exactly three digits
    /// followed by SP, `-` or the end of the line is malformed: a loose
    /// reading (`2500 x` or `250\0x` as 250) would let a broken or
    /// hostile server fake a delivery.
    pub fn parse(line: &'a str) -> Result<Self, ReplyError> {
        let malformed =
            || ReplyError::Malformed(printable(&line.chars().take(64).collect::<String>()));
        let bytes = line.as_bytes();
        let digits = bytes.get(..3).ok_or_else(malformed)?;
        let valid_digits = matches!(digits[0], b'2'..=b'5')
            && digits[1].is_ascii_digit()
            && digits[2].is_ascii_digit();
        if !valid_digits {
            return Err(malformed());
        }
        let code = digits
            .iter()
            .fold(0u16, |code, digit| code * 10 + u16::from(digit - b'0'));
        let (continues, text) = match bytes.get(3) {
            None => (false, ""),
            Some(b' ') => (false, &line[4..]),
            Some(b'-') => (true, &line[4..]),
            Some(_) => return Err(malformed()),
        };
        Ok(Self {
            code,
            continues,
            text,
        })
    }
}

/// Reply text with control characters replaced by `?`, as Postfix's
/// smtp(8) prints remote replies: the text goes into logs and DSNs.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() && c != '\t' { '?' } else { c })
        .collect()
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(enhanced) = &self.enhanced {
            write!(f, " {enhanced}")?;
        }
        write!(f, " {}", self.text.replace('\n', " "))
    }
}

/// `class.subject.detail` whose class matches the reply code's first digit.
fn is_enhanced_code(candidate: &str, code: u16) -> bool {
    let mut parts = candidate.split('.');
    let (Some(class), Some(subject), Some(detail), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let numeric = |p: &str, max_len| {
        !p.is_empty() && p.len() <= max_len && p.bytes().all(|b| b.is_ascii_digit())
    };
    numeric(class, 1)
        && numeric(subject, 3)
        && numeric(detail, 3)
        && class == (code / 100).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_single_and_multi_line() {
        assert_eq!(Reply::new(250, "2.0.0", "Ok").to_wire(), "250 2.0.0 Ok\r\n");
        assert_eq!(Reply::new(250, "", "a\nb").to_wire(), "250-a\r\n250 b\r\n");
    }

    #[test]
    fn parses_enhanced_codes_only_when_they_match_the_class() {
        let reply = Reply::parse_lines(&["550-5.1.1 no such user", "550 5.1.1 try again"]).unwrap();
        assert_eq!(reply.enhanced.as_deref(), Some("5.1.1"));
        assert_eq!(reply.text, "no such user\ntry again");
        let plain = Reply::parse_lines(&["451 4.3.0"]).unwrap();
        assert_eq!(
            (plain.enhanced.as_deref(), plain.text.as_str()),
            (Some("4.3.0"), "")
        );
        let mismatched = Reply::parse_lines(&["250 5.1.1 odd"]).unwrap();
        assert_eq!(mismatched.enhanced, None);
        assert!(Reply::parse_lines(&["hello"]).is_err());
    }

    #[test]
    fn only_three_digits_and_a_separator_make_a_reply_line() {
        for bad in [
            "2500 x", "250\0x", "25", "abc", "", "199 x", "600 x", "650 x", " 250 x", "2x0 ok",
        ] {
            assert!(ReplyLine::parse(bad).is_err(), "{bad:?} parsed");
        }
        assert_eq!(
            ReplyLine::parse("250").unwrap(),
            ReplyLine {
                code: 250,
                continues: false,
                text: ""
            }
        );
        assert_eq!(
            ReplyLine::parse("354-go").unwrap(),
            ReplyLine {
                code: 354,
                continues: true,
                text: "go"
            }
        );
    }

    #[test]
    fn a_multi_line_reply_keeps_one_code_and_ends_once() {
        assert_eq!(
            Reply::parse_lines(&["250-a", "251 b"]),
            Err(ReplyError::MixedCodes {
                first: 250,
                later: 251
            })
        );
        assert_eq!(
            Reply::parse_lines(&["250 a", "250 b"]),
            Err(ReplyError::EndedEarly)
        );
        assert_eq!(Reply::parse_lines(&["250-a"]), Err(ReplyError::Unfinished));
        assert_eq!(Reply::parse_lines::<&str>(&[]), Err(ReplyError::Empty));
    }

    #[test]
    fn control_characters_in_the_text_are_made_printable() {
        let reply = Reply::parse_lines(&["550 5.7.1 bad\x1b[31m\rline\0"]).unwrap();
        assert_eq!(reply.text, "bad?[31m?line?");
    }
}
