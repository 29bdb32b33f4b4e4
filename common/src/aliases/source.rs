//! The aliases(5) source format:
//!
//! ```text
//! # comment
//! postmaster: root
//! root:       alice,
//!             bob@example.org      (a line starting with white space continues)
//! staff:      :include:/etc/mail/staff
//! log:        /var/log/mail.archive
//! robot:      "|/usr/local/bin/robot --quiet"
//! ```

use super::targets::parse_targets;

/// One alias: its name (lower-cased, as lookups use it), its targets as
/// written (continuation lines joined), and where it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AliasEntry {
    pub name: String,
    pub value: String,
    pub line: usize,
}

/// A problem in the source, with its line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct SourceError {
    pub line: usize,
    pub message: String,
}

/// Parses an alias file. Every entry is checked; all the problems are
/// returned, so that one run of `newaliases` shows them all. A name
/// defined twice keeps its first definition (and is reported).
pub fn parse_source(text: &str) -> Result<Vec<AliasEntry>, Vec<SourceError>> {
    let mut logical: Vec<(usize, String)> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let continues = line.starts_with([' ', '\t']);
        match logical.last_mut() {
            Some((_, text)) if continues => {
                text.push('\n');
                text.push_str(trimmed);
            }
            _ => logical.push((index + 1, trimmed.to_owned())),
        }
    }
    let mut entries: Vec<AliasEntry> = Vec::new();
    let mut errors = Vec::new();
    for (line, text) in logical {
        match entry(&text) {
            Ok((name, value)) => {
                if let Some(first) = entries.iter().find(|e| e.name == name) {
                    errors.push(SourceError {
                        line,
                        message: format!(
                            "alias {name:?} is already defined on line {}",
                            first.line
                        ),
                    });
                    continue;
                }
                entries.push(AliasEntry { name, value, line });
            }
            Err(message) => errors.push(SourceError { line, message }),
        }
    }
    if errors.is_empty() {
        Ok(entries)
    } else {
        Err(errors)
    }
}

fn entry(text: &str) -> Result<(String, String), String> {
    let quoted = text.starts_with('"');
    let (name, value) = if let Some(rest) = text.strip_prefix('"') {
        let (name, rest) = rest
            .split_once('"')
            .ok_or("the alias name has no closing double quote")?;
        let value = rest
            .trim_start()
            .strip_prefix(':')
            .ok_or("expected `name: targets`")?;
        (name, value)
    } else {
        text.split_once(':').ok_or("expected `name: targets`")?
    };
    let name = name.trim();
    let bad_char = |c: char| c.is_control() || (!quoted && c.is_whitespace());
    if name.is_empty() || name.chars().any(bad_char) {
        return Err(format!("{name:?} is not an alias name"));
    }
    let value = value.trim();
    parse_targets(value).map_err(|e| format!("alias {name:?}: {e}"))?;
    Ok((name.to_lowercase(), value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_continuations_and_quotes() {
        let entries = parse_source(
            "# the usual\nPostmaster: root\n\nroot: alice,\n  bob@example.org\n# between\n\tcarol\n\"with space\": x\nrobot: \"|/bin/robot, --quiet\"\n",
        )
        .unwrap();
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["postmaster", "root", "with space", "robot"]);
        assert_eq!(entries[1].value, "alice,\nbob@example.org\ncarol");
        assert_eq!(entries[1].line, 4);
        assert_eq!(entries[3].value, "\"|/bin/robot, --quiet\"");
    }

    #[test]
    fn every_problem_is_reported_with_its_line() {
        let errors =
            parse_source("ok: a\nno colon here\nroot: a\nroot: b\nempty:\nq: \"|x\n").unwrap_err();
        let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [2, 4, 5, 6]);
        assert!(errors[1].message.contains("already defined on line 3"));
    }
}
