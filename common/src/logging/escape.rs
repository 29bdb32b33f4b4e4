//! Making a formatted log line safe to store and show.

use std::borrow::Cow;

/// How a log line is made safe: client input (a HELO, an address, an AUTH
/// name, a remote server's reply, a header) must never split a line in
/// two, forge another one, or reach an operator's terminal as a control
/// sequence. Every line is escaped once, whole, after formatting, so no
/// field can be forgotten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    /// `\r`, `\n`, `\t`, `\x1b` and `\u{...}`: for text lines.
    Text,
    /// `\u001b` and so on: the only raw characters a JSON line can hold are
    /// inside its strings, where these are valid escapes.
    Json,
}

/// Characters that a terminal or a log reader may act on: C0 and C1
/// controls, DEL, the Unicode line and paragraph separators, and the
/// bidirectional overrides that reorder what a reader sees.
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Escapes the unsafe characters of one log line (without its newline).
pub fn escape(line: &str, how: Escape) -> Cow<'_, str> {
    if !line.chars().any(is_unsafe) {
        return Cow::Borrowed(line);
    }
    let mut out = String::with_capacity(line.len() + 16);
    for c in line.chars() {
        if !is_unsafe(c) {
            out.push(c);
            continue;
        }
        match (how, c) {
            (Escape::Text, '\r') => out.push_str("\\r"),
            (Escape::Text, '\n') => out.push_str("\\n"),
            (Escape::Text, '\t') => out.push_str("\\t"),
            (Escape::Text, c) if (c as u32) < 0x100 => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            (Escape::Text, c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            (Escape::Json, c) => out.push_str(&format!("\\u{:04x}", c as u32)),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_a_client_sends_can_split_or_colour_a_line() {
        let forged =
            "admin\r\n2026-01-01 INFO authenticated user=admin\x1b[31m\u{9b}31m\u{2028}\u{202e}";
        let text = escape(forged, Escape::Text);
        assert!(!text.chars().any(is_unsafe), "{text}");
        assert_eq!(
            text,
            "admin\\r\\n2026-01-01 INFO authenticated user=admin\\x1b[31m\\x9b31m\\u{2028}\\u{202e}"
        );
        let json = escape(forged, Escape::Json);
        assert!(!json.chars().any(is_unsafe), "{json}");
        assert!(json.contains("\\u001b[31m\\u009b"), "{json}");
        assert_eq!(escape("plain text", Escape::Text), "plain text");
    }
}
