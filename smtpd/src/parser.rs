//! The SMTP command parser (RFC 5321 section 4.1): pure and synchronous, so
//! that it is easy to test and fuzz. It never panics, whatever the bytes.
//!
//! It only checks syntax. Whether a command is allowed now (MAIL before
//! EHLO, ...) and whether its parameters are acceptable (SIZE over the
//! limit, ...) is the session's business.

use std::fmt;

/// Longest reverse- or forward-path, angle brackets included (RFC 5321
/// section 4.5.3.1.3).
const MAX_PATH: usize = 256;
/// Longest local part (RFC 5321 section 4.5.3.1.1).
const MAX_LOCAL_PART: usize = 64;
/// Longest domain (RFC 5321 section 4.5.3.1.2).
const MAX_DOMAIN: usize = 255;

/// One parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Ehlo(String),
    Helo(String),
    /// `MAIL FROM:<path> params`; `from` is empty for the null sender `<>`.
    Mail {
        from: String,
        params: Vec<Param>,
    },
    Rcpt {
        to: ForwardPath,
        params: Vec<Param>,
    },
    Data,
    Rset,
    Noop,
    Quit,
    Vrfy(String),
    Expn(String),
    Help(Option<String>),
    StartTls,
    /// `AUTH mechanism [initial-response]` (RFC 4954); the mechanism is
    /// upper-cased, the response left as sent (base64 or `=`).
    Auth {
        mechanism: String,
        initial: Option<String>,
    },
    /// `BDAT size [LAST]` (RFC 3030): exactly `size` octets follow.
    Bdat {
        size: u64,
        last: bool,
    },
    /// A command we know but do not offer (yet), by its canonical name.
    NotImplemented(&'static str),
}

/// The argument of `RCPT TO:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardPath {
    /// `local@domain`, without the angle brackets.
    Mailbox(String),
    /// The bare `<Postmaster>` that every server must accept (RFC 5321
    /// section 4.5.1); the session qualifies it with its own host name.
    Postmaster,
}

/// One ESMTP parameter of MAIL or RCPT (`SIZE=123`, `BODY=8BITMIME`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// The keyword, upper-cased: keywords are case-insensitive.
    pub keyword: String,
    pub value: Option<String>,
}

/// Why a command line was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Not an SMTP command at all (500 5.5.1).
    Unrecognized,
    /// A known command with bad arguments (501 5.5.4); the text is the
    /// expected usage, such as `"MAIL FROM:<address>"`.
    Syntax(&'static str),
    /// The reverse-path of MAIL is malformed (501 5.1.7).
    BadSender,
    /// The forward-path of RCPT is malformed (501 5.1.3).
    BadRecipient,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unrecognized => f.write_str("command not recognized"),
            Self::Syntax(usage) => write!(f, "syntax: {usage}"),
            Self::BadSender => f.write_str("bad sender address syntax"),
            Self::BadRecipient => f.write_str("bad recipient address syntax"),
        }
    }
}

/// Commands that exist but that this server does not offer.
const NOT_IMPLEMENTED: &[&str] = &["TURN", "ETRN", "ATRN", "SEND", "SOML", "SAML", "VERB"];

/// Parses one command line. A trailing CRLF or LF is allowed and ignored.
pub fn parse_command(line: &[u8]) -> Result<Command, ParseError> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let (verb, rest) = match line.iter().position(|&b| b == b' ') {
        Some(space) => (&line[..space], &line[space + 1..]),
        None => (line, &[][..]),
    };
    if verb.is_empty() || !verb.iter().all(u8::is_ascii_alphabetic) {
        return Err(ParseError::Unrecognized);
    }
    let is = |name: &str| verb.eq_ignore_ascii_case(name.as_bytes());
    if is("EHLO") {
        domain_argument(rest, "EHLO hostname").map(Command::Ehlo)
    } else if is("HELO") {
        domain_argument(rest, "HELO hostname").map(Command::Helo)
    } else if is("MAIL") {
        parse_mail(rest)
    } else if is("RCPT") {
        parse_rcpt(rest)
    } else if is("DATA") {
        no_argument(rest, Command::Data, "DATA")
    } else if is("RSET") {
        no_argument(rest, Command::Rset, "RSET")
    } else if is("QUIT") {
        no_argument(rest, Command::Quit, "QUIT")
    } else if is("NOOP") {
        // RFC 5321 allows (and says to ignore) an argument to NOOP.
        Ok(Command::Noop)
    } else if is("VRFY") {
        match ascii_text(rest) {
            Some(text) if !text.is_empty() => Ok(Command::Vrfy(text.to_owned())),
            _ => Err(ParseError::Syntax("VRFY address")),
        }
    } else if is("EXPN") {
        match ascii_text(rest) {
            Some(text) if !text.is_empty() => Ok(Command::Expn(text.to_owned())),
            _ => Err(ParseError::Syntax("EXPN list")),
        }
    } else if is("STARTTLS") {
        no_argument(rest, Command::StartTls, "STARTTLS")
    } else if is("AUTH") {
        parse_auth(rest)
    } else if is("BDAT") {
        parse_bdat(rest)
    } else if is("HELP") {
        let topic = ascii_text(rest)
            .filter(|t| !t.is_empty())
            .map(str::to_owned);
        Ok(Command::Help(topic))
    } else if let Some(name) = NOT_IMPLEMENTED.iter().find(|name| is(name)) {
        Ok(Command::NotImplemented(name))
    } else {
        Err(ParseError::Unrecognized)
    }
}

/// The text after the verb, trimmed, if it is printable ASCII. Only
/// addresses may be UTF-8 (SMTPUTF8), not command arguments.
fn ascii_text(rest: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(rest).ok()?;
    let text = text.trim_matches([' ', '\t']);
    text.bytes()
        .all(|b| b == b' ' || b == b'\t' || b.is_ascii_graphic())
        .then_some(text)
}

fn no_argument(rest: &[u8], command: Command, usage: &'static str) -> Result<Command, ParseError> {
    match ascii_text(rest) {
        Some("") => Ok(command),
        _ => Err(ParseError::Syntax(usage)),
    }
}

/// The EHLO/HELO argument: one word of printable ASCII. It ends up in a
/// `Received:` header, so nothing else may pass.
fn domain_argument(rest: &[u8], usage: &'static str) -> Result<String, ParseError> {
    match ascii_text(rest) {
        Some(name)
            if !name.is_empty()
                && name.len() <= MAX_DOMAIN
                && name.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Ok(name.to_owned())
        }
        _ => Err(ParseError::Syntax(usage)),
    }
}

fn parse_auth(rest: &[u8]) -> Result<Command, ParseError> {
    const USAGE: &str = "AUTH mechanism [initial-response]";
    let text = ascii_text(rest).ok_or(ParseError::Syntax(USAGE))?;
    let mut words = text.split([' ', '\t']).filter(|w| !w.is_empty());
    let mechanism = words.next().ok_or(ParseError::Syntax(USAGE))?;
    let initial = words.next();
    let valid_mechanism = mechanism.len() <= 20
        && mechanism
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid_mechanism || words.next().is_some() {
        return Err(ParseError::Syntax(USAGE));
    }
    Ok(Command::Auth {
        mechanism: mechanism.to_ascii_uppercase(),
        initial: initial.map(str::to_owned),
    })
}

fn parse_bdat(rest: &[u8]) -> Result<Command, ParseError> {
    const USAGE: &str = "BDAT size [LAST]";
    let text = ascii_text(rest).ok_or(ParseError::Syntax(USAGE))?;
    let mut words = text.split(' ').filter(|w| !w.is_empty());
    let size = words
        .next()
        .filter(|w| w.len() <= 19 && w.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|w| w.parse::<u64>().ok())
        .ok_or(ParseError::Syntax(USAGE))?;
    let last = match words.next() {
        None => false,
        Some(word) if word.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(ParseError::Syntax(USAGE)),
    };
    if words.next().is_some() {
        return Err(ParseError::Syntax(USAGE));
    }
    Ok(Command::Bdat { size, last })
}

fn parse_mail(rest: &[u8]) -> Result<Command, ParseError> {
    const USAGE: &str = "MAIL FROM:<address>";
    let after = strip_keyword(rest, b"FROM:").ok_or(ParseError::Syntax(USAGE))?;
    let (path, params) = split_path(after).ok_or(ParseError::BadSender)?;
    let from = if path.is_empty() {
        String::new()
    } else {
        mailbox(path).ok_or(ParseError::BadSender)?
    };
    let params = parse_params(params).ok_or(ParseError::Syntax(USAGE))?;
    Ok(Command::Mail { from, params })
}

fn parse_rcpt(rest: &[u8]) -> Result<Command, ParseError> {
    const USAGE: &str = "RCPT TO:<address>";
    let after = strip_keyword(rest, b"TO:").ok_or(ParseError::Syntax(USAGE))?;
    let (path, params) = split_path(after).ok_or(ParseError::BadRecipient)?;
    let to = if path.eq_ignore_ascii_case(b"postmaster") {
        ForwardPath::Postmaster
    } else {
        ForwardPath::Mailbox(mailbox(path).ok_or(ParseError::BadRecipient)?)
    };
    let params = parse_params(params).ok_or(ParseError::Syntax(USAGE))?;
    Ok(Command::Rcpt { to, params })
}

/// Strips `FROM:` / `TO:` (any case) and the spaces that many clients put
/// after the colon.
fn strip_keyword<'a>(rest: &'a [u8], keyword: &[u8]) -> Option<&'a [u8]> {
    let head = rest.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let after = &rest[keyword.len()..];
    let start = after.iter().position(|&b| b != b' ').unwrap_or(after.len());
    Some(&after[start..])
}

/// Splits `<path> params` into the text between the angle brackets and the
/// parameters. A `>` inside a quoted local part does not close the path.
fn split_path(text: &[u8]) -> Option<(&[u8], &[u8])> {
    let inner = text.strip_prefix(b"<")?;
    let mut quoted = false;
    let mut escaped = false;
    let mut close = None;
    for (index, &byte) in inner.iter().enumerate() {
        if escaped {
            escaped = false;
        } else if quoted && byte == b'\\' {
            escaped = true;
        } else if byte == b'"' {
            quoted = !quoted;
        } else if byte == b'>' && !quoted {
            close = Some(index);
            break;
        }
    }
    let close = close?;
    if close + 2 > MAX_PATH {
        return None;
    }
    let path = &inner[..close];
    let params = &inner[close + 1..];
    // `<a@b>x` is a malformed path, not a parameter.
    if !params.is_empty() && params[0] != b' ' {
        return None;
    }
    Some((path, params))
}

/// Validates `[@route,@route:]local@domain` and returns `local@domain`: the
/// source route is obsolete, and RFC 5321 says to accept and ignore it.
fn mailbox(path: &[u8]) -> Option<String> {
    let path = std::str::from_utf8(path).ok()?;
    let path = match path.strip_prefix('@') {
        Some(_) => {
            let (route, mailbox) = path.split_once(':')?;
            let valid_route = route
                .split(',')
                .all(|hop| hop.strip_prefix('@').is_some_and(is_domain));
            if !valid_route {
                return None;
            }
            mailbox
        }
        None => path,
    };
    // An unqualified `<root>`: the session qualifies it for trusted
    // clients and refuses it for others.
    let Some((local, domain)) = path.rsplit_once('@') else {
        let valid = path.len() <= MAX_LOCAL_PART && is_dot_string(path);
        return valid.then(|| path.to_owned());
    };
    let valid = local.len() <= MAX_LOCAL_PART
        && (is_dot_string(local) || is_quoted_string(local))
        && (is_domain(domain) || is_address_literal(domain));
    valid.then(|| path.to_owned())
}

/// `atext` of RFC 5321: letters, digits and these symbols.
fn is_atext(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&byte)
}

/// `Atom *("." Atom)`: no empty atoms, so no leading, trailing or double
/// dots. Non-ASCII characters count as atext (RFC 6531); the session
/// accepts them only in an SMTPUTF8 transaction.
fn is_dot_string(text: &str) -> bool {
    !text.is_empty()
        && text.split('.').all(|atom| {
            !atom.is_empty()
                && atom
                    .chars()
                    .all(|c| !c.is_ascii() && !c.is_control() || c.is_ascii() && is_atext(c as u8))
        })
}

/// `DQUOTE *(qtextSMTP / quoted-pairSMTP) DQUOTE`.
fn is_quoted_string(text: &str) -> bool {
    let Some(inner) = text
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
    else {
        return false;
    };
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(' '..='~') => {}
                _ => return false,
            },
            ' ' | '!' | '#'..='[' | ']'..='~' => {}
            c if !c.is_ascii() && !c.is_control() => {}
            _ => return false,
        }
    }
    true
}

/// A host name: dot-separated labels of letters, digits and inner hyphens
/// (non-ASCII letters too: U-labels, RFC 6531).
fn is_domain(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_DOMAIN
        && text.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c.is_alphanumeric())
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// `[192.0.2.1]`, `[IPv6:2001:db8::1]`, or a general literal: printable
/// ASCII without brackets or backslashes.
fn is_address_literal(text: &str) -> bool {
    let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) else {
        return false;
    };
    !inner.is_empty()
        && inner.len() <= MAX_DOMAIN
        && inner
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'[' | b']' | b'\\'))
}

/// `KEYWORD[=VALUE]` words separated by spaces (RFC 5321 section 4.1.2).
fn parse_params(text: &[u8]) -> Option<Vec<Param>> {
    let text = std::str::from_utf8(text).ok()?;
    text.split(' ')
        .filter(|word| !word.is_empty())
        .map(|word| {
            let (keyword, value) = match word.split_once('=') {
                Some((keyword, value)) => (keyword, Some(value)),
                None => (word, None),
            };
            let keyword_ok = keyword
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric())
                && keyword
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-');
            // esmtp-value: one or more of %d33-60 / %d62-126.
            let value_ok = value.is_none_or(|v| {
                !v.is_empty() && v.bytes().all(|b| b.is_ascii_graphic() && b != b'=')
            });
            (keyword_ok && value_ok).then(|| Param {
                keyword: keyword.to_ascii_uppercase(),
                value: value.map(str::to_owned),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Command, ParseError> {
        parse_command(line.as_bytes())
    }

    fn mail(from: &str, params: &[(&str, Option<&str>)]) -> Command {
        Command::Mail {
            from: from.to_owned(),
            params: params
                .iter()
                .map(|(k, v)| Param {
                    keyword: (*k).to_owned(),
                    value: v.map(str::to_owned),
                })
                .collect(),
        }
    }

    fn rcpt(to: &str) -> Command {
        Command::Rcpt {
            to: ForwardPath::Mailbox(to.to_owned()),
            params: Vec::new(),
        }
    }

    #[test]
    fn simple_commands_in_any_case() {
        assert_eq!(parse("DATA"), Ok(Command::Data));
        assert_eq!(parse("data\r\n"), Ok(Command::Data));
        assert_eq!(parse("Rset\n"), Ok(Command::Rset));
        assert_eq!(parse("QUIT"), Ok(Command::Quit));
        assert_eq!(parse("QUIT  "), Ok(Command::Quit));
        assert_eq!(parse("NOOP"), Ok(Command::Noop));
        assert_eq!(parse("NOOP anything at all"), Ok(Command::Noop));
        assert_eq!(parse("HELP"), Ok(Command::Help(None)));
        assert_eq!(parse("HELP mail"), Ok(Command::Help(Some("mail".into()))));
        assert_eq!(parse("VRFY bob"), Ok(Command::Vrfy("bob".into())));
    }

    #[test]
    fn ehlo_and_helo_take_one_word() {
        assert_eq!(
            parse("EHLO client.example"),
            Ok(Command::Ehlo("client.example".into()))
        );
        assert_eq!(
            parse("helo [192.0.2.1]"),
            Ok(Command::Helo("[192.0.2.1]".into()))
        );
        assert_eq!(parse("EHLO"), Err(ParseError::Syntax("EHLO hostname")));
        assert_eq!(parse("EHLO   "), Err(ParseError::Syntax("EHLO hostname")));
        assert_eq!(parse("EHLO a b"), Err(ParseError::Syntax("EHLO hostname")));
        assert_eq!(
            parse("EHLO caf\u{e9}"),
            Err(ParseError::Syntax("EHLO hostname"))
        );
    }

    #[test]
    fn mail_from_paths_and_params() {
        assert_eq!(
            parse("MAIL FROM:<a@b.example>"),
            Ok(mail("a@b.example", &[]))
        );
        assert_eq!(parse("mail from:<>"), Ok(mail("", &[])));
        assert_eq!(
            parse("MAIL FROM: <a@b.example>"),
            Ok(mail("a@b.example", &[]))
        );
        assert_eq!(
            parse("MAIL FROM:<a@b.example> SIZE=123 body=8BITMIME  SMTPUTF8"),
            Ok(mail(
                "a@b.example",
                &[
                    ("SIZE", Some("123")),
                    ("BODY", Some("8BITMIME")),
                    ("SMTPUTF8", None)
                ]
            ))
        );
        assert_eq!(
            parse("MAIL FROM:<\"john doe\"@b.example>"),
            Ok(mail("\"john doe\"@b.example", &[]))
        );
        assert_eq!(
            parse("MAIL FROM:<\"a>b\\\"c\"@b.example>"),
            Ok(mail("\"a>b\\\"c\"@b.example", &[]))
        );
        assert_eq!(
            parse("MAIL FROM:<@relay.example,@r2.example:a@b.example>"),
            Ok(mail("a@b.example", &[]))
        );
        assert_eq!(
            parse("MAIL FROM:<a@[192.0.2.1]>"),
            Ok(mail("a@[192.0.2.1]", &[]))
        );
    }

    #[test]
    fn bad_senders() {
        for line in [
            "MAIL FROM:a@b.example",
            "MAIL FROM:<a@b.example",
            "MAIL FROM:<a@b.example>x",
            "MAIL FROM:<@b.example>",
            "MAIL FROM:<a@>",
            "MAIL FROM:<a..b@c.example>",
            "MAIL FROM:<.a@c.example>",
            "MAIL FROM:<a b@c.example>",
            "MAIL FROM:<a@-c.example>",
            "MAIL FROM:<a@c..example>",
            "MAIL FROM:<\"unterminated@c.example>",
        ] {
            assert_eq!(parse(line), Err(ParseError::BadSender), "{line}");
        }
        let long_local = format!("MAIL FROM:<{}@b.example>", "a".repeat(65));
        assert_eq!(parse(&long_local), Err(ParseError::BadSender));
        let long_path = format!("MAIL FROM:<a@{}.example>", "b.".repeat(130));
        assert_eq!(parse(&long_path), Err(ParseError::BadSender));
    }

    #[test]
    fn mail_syntax_errors() {
        let usage = Err(ParseError::Syntax("MAIL FROM:<address>"));
        assert_eq!(parse("MAIL"), usage);
        assert_eq!(parse("MAIL TO:<a@b.example>"), usage);
        assert_eq!(parse("MAIL FROM <a@b.example>"), usage);
        assert_eq!(parse("MAIL FROM:<a@b.example> SIZE="), usage);
        assert_eq!(parse("MAIL FROM:<a@b.example> =1"), usage);
        assert_eq!(parse("MAIL FROM:<a@b.example> A=b=c"), usage);
    }

    #[test]
    fn rcpt_to() {
        assert_eq!(parse("RCPT TO:<a@b.example>"), Ok(rcpt("a@b.example")));
        assert_eq!(parse("rcpt to: <a@b.example> "), Ok(rcpt("a@b.example")));
        assert_eq!(
            parse("RCPT TO:<Postmaster>"),
            Ok(Command::Rcpt {
                to: ForwardPath::Postmaster,
                params: vec![]
            })
        );
        assert_eq!(
            parse("RCPT TO:<a@b.example> NOTIFY=NEVER"),
            Ok(Command::Rcpt {
                to: ForwardPath::Mailbox("a@b.example".into()),
                params: vec![Param {
                    keyword: "NOTIFY".into(),
                    value: Some("NEVER".into())
                }]
            })
        );
        for line in ["RCPT TO:<>", "RCPT TO:a@b.example", "RCPT TO:<a@b"] {
            assert_eq!(parse(line), Err(ParseError::BadRecipient), "{line}");
        }
        assert_eq!(
            parse("RCPT FROM:<a@b.example>"),
            Err(ParseError::Syntax("RCPT TO:<address>"))
        );
    }

    #[test]
    fn arguments_where_none_are_allowed() {
        assert_eq!(parse("DATA now"), Err(ParseError::Syntax("DATA")));
        assert_eq!(parse("RSET x"), Err(ParseError::Syntax("RSET")));
        assert_eq!(parse("QUIT x"), Err(ParseError::Syntax("QUIT")));
        assert_eq!(parse("VRFY"), Err(ParseError::Syntax("VRFY address")));
    }

    #[test]
    fn unknown_and_unimplemented() {
        assert_eq!(parse(""), Err(ParseError::Unrecognized));
        assert_eq!(parse("\r\n"), Err(ParseError::Unrecognized));
        assert_eq!(parse(" DATA"), Err(ParseError::Unrecognized));
        assert_eq!(parse("FOO"), Err(ParseError::Unrecognized));
        assert_eq!(parse("DA7A"), Err(ParseError::Unrecognized));
        assert_eq!(parse("MAILFROM:<a@b>"), Err(ParseError::Unrecognized));
        assert_eq!(parse("EXPN list"), Ok(Command::Expn("list".into())));
        assert_eq!(parse("turn"), Ok(Command::NotImplemented("TURN")));
        assert_eq!(parse("starttls"), Ok(Command::StartTls));
        assert_eq!(parse("STARTTLS now"), Err(ParseError::Syntax("STARTTLS")));
    }

    #[test]
    fn auth_and_bdat() {
        assert_eq!(
            parse("AUTH plain dGVzdA=="),
            Ok(Command::Auth {
                mechanism: "PLAIN".into(),
                initial: Some("dGVzdA==".into())
            })
        );
        assert_eq!(
            parse("AUTH LOGIN"),
            Ok(Command::Auth {
                mechanism: "LOGIN".into(),
                initial: None
            })
        );
        for bad in ["AUTH", "AUTH PLAIN a b", "AUTH PL@IN"] {
            assert!(matches!(parse(bad), Err(ParseError::Syntax(_))), "{bad}");
        }
        assert_eq!(
            parse("BDAT 1000 LAST"),
            Ok(Command::Bdat {
                size: 1000,
                last: true
            })
        );
        assert_eq!(
            parse("bdat 0"),
            Ok(Command::Bdat {
                size: 0,
                last: false
            })
        );
        for bad in [
            "BDAT",
            "BDAT -1",
            "BDAT 1 FIRST",
            "BDAT 99999999999999999999",
            "BDAT 1 LAST x",
        ] {
            assert!(matches!(parse(bad), Err(ParseError::Syntax(_))), "{bad}");
        }
    }

    #[test]
    fn utf8_addresses_parse() {
        assert_eq!(
            parse("MAIL FROM:<caf\u{e9}@b\u{fc}cher.example> SMTPUTF8"),
            Ok(mail("caf\u{e9}@b\u{fc}cher.example", &[("SMTPUTF8", None)]))
        );
    }

    /// A small deterministic generator, so the test needs no extra crate.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn never_panics_on_arbitrary_bytes() {
        // Random bytes drawn mostly from the characters that matter to the
        // grammar, so the generator reaches deep into the parser.
        const ALPHABET: &[u8] =
            b"<>@:\"\\.,=[] \r\nMAILFROMRCPTOmailfromrcptoSIZE=1aZ9-\x00\xff\xc3\xa9";
        let prefixes: &[&[u8]] = &[
            b"",
            b"MAIL FROM:",
            b"MAIL FROM:<",
            b"RCPT TO:<",
            b"EHLO ",
            b"HELO ",
            b"VRFY ",
            b"MAIL FROM:<\"",
            b"RCPT TO:<@",
        ];
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for round in 0..50_000 {
            let prefix = prefixes[round % prefixes.len()];
            let length = (rng.next() % 64) as usize;
            let mut line = prefix.to_vec();
            for _ in 0..length {
                let choice = rng.next();
                if choice & 3 == 0 {
                    line.push((choice >> 8) as u8);
                } else {
                    line.push(ALPHABET[(choice >> 8) as usize % ALPHABET.len()]);
                }
            }
            let _ = parse_command(&line);
        }
        // Edge cases: every single byte, and long runs of special characters.
        for byte in 0..=255u8 {
            let _ = parse_command(&[byte]);
            let _ = parse_command(&[
                b'M', b'A', b'I', b'L', b' ', b'F', b'R', b'O', b'M', b':', byte,
            ]);
        }
        for special in [b'<', b'>', b'"', b'\\', b'@', b':', b'=', b' '] {
            let mut line = b"MAIL FROM:".to_vec();
            line.extend(std::iter::repeat_n(special, 2000));
            let _ = parse_command(&line);
        }
    }
}
