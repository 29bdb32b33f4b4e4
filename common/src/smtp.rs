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

    /// Parses the lines of one (possibly multi-line) reply, without CRLF.
    /// The enhanced code is recognised on the first line when it matches the
    /// reply class. Returns `None` when the lines are not a reply.
    pub fn parse_lines<S: AsRef<str>>(lines: &[S]) -> Option<Self> {
        let first = lines.first()?.as_ref();
        let code: u16 = first.get(..3)?.parse().ok()?;
        if !(200..600).contains(&code) {
            return None;
        }
        let mut enhanced = None;
        let mut texts = Vec::with_capacity(lines.len());
        for (index, line) in lines.iter().enumerate() {
            let line = line.as_ref();
            let mut text = line.get(4..).unwrap_or("");
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
            texts.push(text);
        }
        Some(Self {
            code,
            enhanced,
            text: texts.join("\n"),
        })
    }
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
        assert!(Reply::parse_lines(&["hello"]).is_none());
    }
}
