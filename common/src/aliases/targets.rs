//! The right-hand side of an alias (also a `.forward` or `:include:`
//! file): a comma- or newline-separated list of targets. A target in
//! double quotes may hold commas and spaces (`"|/usr/bin/vacation alice"`).

use std::path::PathBuf;

/// One place mail goes to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// Another address: `user` (local, aliases apply) or `user@domain`.
    Address(String),
    /// `\user`: that user's mailbox, with no alias or `.forward` lookup.
    Mailbox(String),
    /// `|command`: run by `/bin/sh -c` with the message on its input.
    Command(String),
    /// `/path`: appended in mbox format; a path ending in `/` is a Maildir.
    File(PathBuf),
    /// `:include:/path`: a file with more targets.
    Include(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("unbalanced double quote")]
    UnbalancedQuote,
    #[error("no targets")]
    Empty,
    #[error("{0:?}: an :include: file must be an absolute path")]
    RelativeInclude(String),
    #[error("{0:?}: a command must not be empty")]
    EmptyCommand(String),
    #[error("{0:?} is not an address (spaces or control characters)")]
    BadAddress(String),
}

/// Splits `text` into targets. Empty items (`a,,b`) are skipped; a list
/// with no target at all is an error.
pub fn parse_targets(text: &str) -> Result<Vec<Target>, TargetError> {
    let mut targets = Vec::new();
    for token in split(text)? {
        targets.push(classify(&token)?);
    }
    if targets.is_empty() {
        return Err(TargetError::Empty);
    }
    Ok(targets)
}

/// Splits on commas and newlines outside double quotes; a quoted token
/// loses its quotes.
fn split(text: &str) -> Result<Vec<String>, TargetError> {
    let mut tokens = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut was_quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                was_quoted = true;
            }
            '\\' if quoted => {
                if let Some(next) = chars.next() {
                    current.push(next);
                }
            }
            ',' | '\n' | '\r' if !quoted => {
                push_token(&mut tokens, &mut current, was_quoted);
                was_quoted = false;
            }
            _ => current.push(c),
        }
    }
    if quoted {
        return Err(TargetError::UnbalancedQuote);
    }
    push_token(&mut tokens, &mut current, was_quoted);
    Ok(tokens)
}

fn push_token(tokens: &mut Vec<String>, current: &mut String, was_quoted: bool) {
    let token = if was_quoted {
        current.clone()
    } else {
        current.trim().to_owned()
    };
    let token = token.trim_matches(|c: char| c == ' ' || c == '\t');
    if !token.is_empty() {
        tokens.push(token.to_owned());
    }
    current.clear();
}

fn classify(token: &str) -> Result<Target, TargetError> {
    if let Some(command) = token.strip_prefix('|') {
        let command = command.trim();
        if command.is_empty() {
            return Err(TargetError::EmptyCommand(token.to_owned()));
        }
        return Ok(Target::Command(command.to_owned()));
    }
    if token.starts_with('/') {
        return Ok(Target::File(PathBuf::from(token)));
    }
    if let Some(path) = strip_prefix_ignore_case(token, ":include:") {
        let path = path.trim();
        if !path.starts_with('/') {
            return Err(TargetError::RelativeInclude(token.to_owned()));
        }
        return Ok(Target::Include(PathBuf::from(path)));
    }
    if let Some(user) = token.strip_prefix('\\') {
        check_address(user, token)?;
        return Ok(Target::Mailbox(user.to_owned()));
    }
    // `Name <address>`: the address.
    let address = match (token.rfind('<'), token.rfind('>')) {
        (Some(open), Some(close)) if open < close => token[open + 1..close].trim(),
        _ => token,
    };
    check_address(address, token)?;
    Ok(Target::Address(address.to_owned()))
}

fn check_address(address: &str, token: &str) -> Result<(), TargetError> {
    let bad = address.is_empty()
        || address.starts_with('@')
        || address.ends_with('@')
        || address
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>');
    if bad {
        Err(TargetError::BadAddress(token.to_owned()))
    } else {
        Ok(())
    }
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_target() {
        let targets = parse_targets(
            "alice, bob@example.org,\n \\carol, \"|/usr/bin/vacation -a x, y\", /var/log/mail.log, /srv/box/, :include:/etc/mail/staff, Dee <dee@example.org>",
        )
        .unwrap();
        assert_eq!(
            targets,
            [
                Target::Address("alice".into()),
                Target::Address("bob@example.org".into()),
                Target::Mailbox("carol".into()),
                Target::Command("/usr/bin/vacation -a x, y".into()),
                Target::File("/var/log/mail.log".into()),
                Target::File("/srv/box/".into()),
                Target::Include("/etc/mail/staff".into()),
                Target::Address("dee@example.org".into()),
            ]
        );
    }

    #[test]
    fn an_unquoted_command_ends_at_a_comma() {
        assert_eq!(
            parse_targets("|cat > /dev/null, bob").unwrap(),
            [
                Target::Command("cat > /dev/null".into()),
                Target::Address("bob".into())
            ]
        );
    }

    #[test]
    fn bad_lists_are_errors() {
        assert_eq!(parse_targets(" , ,"), Err(TargetError::Empty));
        assert_eq!(parse_targets("\"|x"), Err(TargetError::UnbalancedQuote));
        assert!(matches!(
            parse_targets(":include:relative"),
            Err(TargetError::RelativeInclude(_))
        ));
        assert!(matches!(
            parse_targets("|"),
            Err(TargetError::EmptyCommand(_))
        ));
        assert!(matches!(
            parse_targets("a b"),
            Err(TargetError::BadAddress(_))
        ));
    }
}
