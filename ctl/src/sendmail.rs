//! The message handling of `sendmail`: reading stdin the traditional way,
//! extracting recipients with `-t`, and adding a `From:` header. Pure
//! functions over bytes.

/// What sendmail is asked to do (`-b` modes, `-q`, `--version`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `-bm` (the default): a message on standard input.
    #[default]
    Deliver,
    /// `-bs`: an SMTP session on standard input and output.
    Smtp,
    /// `-bp`: list the queue (mailq).
    PrintQueue,
    /// `-bv`: say whether each recipient is deliverable; send nothing.
    Verify,
    /// `-bi`: rebuild the alias indexes (newaliases).
    InitializeAliases,
    /// `-q`: deliver the deferred mail now. (`-qINTERVAL`, a queue run
    /// interval for a sendmail daemon, is accepted and ignored, as
    /// Postfix does.)
    ProcessQueue,
    /// `--version`.
    Version,
    /// `-qINTERVAL`: nothing to do (Empath's qmgr runs the queue).
    Nothing,
}

/// `-N never` or `-N success,failure,delay` (RFC 3461 NOTIFY).
pub fn parse_notify(text: &str) -> Result<Notify, String> {
    let mut notify = Notify {
        explicit: true,
        success: false,
        failure: false,
        delay: false,
    };
    for word in text.split(',').map(|w| w.trim().to_ascii_lowercase()) {
        match word.as_str() {
            "never" if text.split(',').count() == 1 => {}
            "success" => notify.success = true,
            "failure" => notify.failure = true,
            "delay" => notify.delay = true,
            _ => {
                return Err(format!(
                    "-N {text:?}: expected never, or success, failure and delay separated by commas"
                ));
            }
        }
    }
    Ok(notify)
}

pub use empath_common::queue::Notify;

/// Command-line options, parsed by hand because sendmail's flags (`-oi`,
/// `-fADDR`, `-bm`) predate getopt conventions.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Options {
    pub mode: Mode,
    /// `-N`: the NOTIFY of every recipient.
    pub notify: Option<Notify>,
    pub extract_recipients: bool,
    pub ignore_dots: bool,
    pub sender: Option<String>,
    pub full_name: Option<String>,
    pub config: Option<String>,
    pub recipients: Vec<String>,
}

pub fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut options = Options::default();
    let mut index = 0;
    let value = |index: &mut usize, flag: &str, inline: &str| -> Result<String, String> {
        if !inline.is_empty() {
            return Ok(inline.to_owned());
        }
        *index += 1;
        args.get(*index)
            .cloned()
            .ok_or_else(|| format!("option {flag} needs a value"))
    };
    while index < args.len() {
        let arg = args[index].as_str();
        match arg {
            "--" => {
                options.recipients.extend(args[index + 1..].iter().cloned());
                break;
            }
            "-t" => options.extract_recipients = true,
            "-i" | "-oi" => options.ignore_dots = true,
            "-bm" | "-v" => {}
            "-bi" => options.mode = Mode::InitializeAliases,
            "-bs" => options.mode = Mode::Smtp,
            "-bp" => options.mode = Mode::PrintQueue,
            "-bv" => options.mode = Mode::Verify,
            "-q" => options.mode = Mode::ProcessQueue,
            "--version" => options.mode = Mode::Version,
            // -qINTERVAL: a queue run interval, for a sendmail daemon.
            _ if arg.starts_with("-q") => options.mode = Mode::Nothing,
            _ if arg.starts_with("-N") => {
                options.notify = Some(parse_notify(&value(&mut index, "-N", &arg[2..])?)?)
            }
            _ if arg.starts_with("-b") => {
                return Err(format!(
                    "unsupported mode {arg} (supported: -bm, -bs, -bp, -bv, -bi)"
                ));
            }
            _ if arg.starts_with("-f") || arg.starts_with("-r") => {
                options.sender = Some(value(&mut index, &arg[..2], &arg[2..])?)
            }
            _ if arg.starts_with("-F") => {
                options.full_name = Some(value(&mut index, "-F", &arg[2..])?)
            }
            _ if arg.starts_with("-C") => {
                options.config = Some(value(&mut index, "-C", &arg[2..])?)
            }
            // Other -o options (e.g. -oem, -odb) are accepted and ignored, as Postfix does.
            _ if arg.starts_with("-o") => {}
            _ if arg.starts_with('-') => return Err(format!("unknown option {arg}")),
            _ => options.recipients.push(arg.to_owned()),
        }
        index += 1;
    }
    Ok(options)
}

/// The message from stdin with CRLF line endings. Without `ignore_dots`, a
/// line holding only "." ends the message.
pub fn read_message(input: &[u8], ignore_dots: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() + input.len() / 32);
    for line in input.split_inclusive(|b| *b == b'\n') {
        let text = line.strip_suffix(b"\n").unwrap_or(line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if !ignore_dots && text == b"." {
            break;
        }
        out.extend_from_slice(text);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Splits `message` into its header fields (unfolded text, raw byte range)
/// and the index where the rest starts (the separating empty line).
fn header_fields(message: &[u8]) -> (Vec<(String, std::ops::Range<usize>)>, usize) {
    let mut fields: Vec<(String, std::ops::Range<usize>)> = Vec::new();
    let mut position = 0;
    while position < message.len() {
        let end = message[position..]
            .iter()
            .position(|b| *b == b'\n')
            .map_or(message.len(), |p| position + p + 1);
        let line = &message[position..end];
        if line == b"\r\n" || line == b"\n" {
            // The body starts with the empty line that separates it.
            return (fields, position);
        }
        let continuation = line.first().is_some_and(|b| *b == b' ' || *b == b'\t');
        match fields.last_mut() {
            Some((text, range)) if continuation => {
                text.push_str(&String::from_utf8_lossy(line));
                range.end = end;
            }
            _ if line.contains(&b':') => {
                fields.push((String::from_utf8_lossy(line).into_owned(), position..end))
            }
            // Not a header line: the message has no header section.
            _ => return (fields, position),
        }
        position = end;
    }
    (fields, message.len())
}

fn field_name(field: &str) -> &str {
    field.split(':').next().unwrap_or("").trim()
}

/// The addresses in an address-list header value: `a@b, "X" <c@d>, e@f (x)`.
pub fn addresses(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut in_quote, mut comment_depth, mut current) = (false, 0u32, String::new());
    for c in value.chars().chain(std::iter::once(',')) {
        match c {
            '(' if !in_quote => {
                comment_depth += 1;
                continue;
            }
            ')' if !in_quote && comment_depth > 0 => {
                comment_depth -= 1;
                continue;
            }
            _ if comment_depth > 0 => continue,
            '"' => in_quote = !in_quote,
            ',' | ';' if !in_quote => {
                if let Some(address) = address_of(current.trim()) {
                    out.push(address);
                }
                current.clear();
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    out
}

/// The address in one mailbox: `Name <a@b>` or `a@b`; groups (`list: a@b`)
/// give their members.
fn address_of(mailbox: &str) -> Option<String> {
    let address = match (mailbox.rfind('<'), mailbox.rfind('>')) {
        (Some(open), Some(close)) if open < close => &mailbox[open + 1..close],
        _ => mailbox.rsplit(':').next().unwrap_or(mailbox),
    };
    let address = address.trim();
    address.contains('@').then(|| address.to_owned())
}

/// Applies `-t` and the `From:` default: returns the final message and the
/// recipients found in To/Cc/Bcc (Bcc is removed from the message).
pub fn prepare(message: &[u8], options: &Options, sender: &str) -> (Vec<u8>, Vec<String>) {
    let (fields, body_start) = header_fields(message);
    let mut found = Vec::new();
    let mut out = Vec::with_capacity(message.len() + 64);
    let has_from = fields
        .iter()
        .any(|(f, _)| field_name(f).eq_ignore_ascii_case("from"));
    if !has_from {
        let from = match &options.full_name {
            Some(name) => format!(
                "From: \"{}\" <{sender}>\r\n",
                name.replace(['"', '\\', '\r', '\n'], "")
            ),
            None => format!("From: {sender}\r\n"),
        };
        out.extend_from_slice(from.as_bytes());
    }
    for (field, range) in &fields {
        let name = field_name(field);
        let is = |n: &str| name.eq_ignore_ascii_case(n);
        if options.extract_recipients && (is("to") || is("cc") || is("bcc")) {
            let value = field.split_once(':').map_or("", |(_, v)| v);
            found.extend(addresses(value));
        }
        if options.extract_recipients && is("bcc") {
            continue;
        }
        out.extend_from_slice(&message[range.clone()]);
    }
    out.extend_from_slice(&message[body_start.min(message.len())..]);
    (out, found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn parses_traditional_flags() {
        let options = parse_args(&args(&[
            "-t",
            "-oi",
            "-fbounces@x.org",
            "-F",
            "Alice",
            "-odb",
            "bob@y.org",
        ]))
        .unwrap();
        assert!(options.extract_recipients && options.ignore_dots);
        assert_eq!(options.sender.as_deref(), Some("bounces@x.org"));
        assert_eq!(options.full_name.as_deref(), Some("Alice"));
        assert_eq!(options.recipients, ["bob@y.org"]);
        assert!(parse_args(&args(&["-f"])).is_err());
        assert!(parse_args(&args(&["-bd"])).is_err());
        assert!(parse_args(&args(&["-Z"])).is_err());
    }

    #[test]
    fn parses_modes_and_notify() {
        let mode = |list: &[&str]| parse_args(&args(list)).unwrap().mode;
        assert_eq!(mode(&["-bs"]), Mode::Smtp);
        assert_eq!(mode(&["-bp"]), Mode::PrintQueue);
        assert_eq!(mode(&["-bv", "a@b"]), Mode::Verify);
        assert_eq!(mode(&["-bi"]), Mode::InitializeAliases);
        assert_eq!(mode(&["-q"]), Mode::ProcessQueue);
        assert_eq!(mode(&["-q30m"]), Mode::Nothing);
        assert_eq!(mode(&["--version"]), Mode::Version);
        assert_eq!(mode(&["a@b"]), Mode::Deliver);
        let notify = parse_args(&args(&["-N", "success,delay", "a@b"]))
            .unwrap()
            .notify
            .unwrap();
        assert!(notify.explicit && notify.success && notify.delay && !notify.failure);
        let never = parse_args(&args(&["-Nnever", "a@b"]))
            .unwrap()
            .notify
            .unwrap();
        assert!(never.explicit && !never.success && !never.failure && !never.delay);
        assert!(parse_args(&args(&["-N", "never,success"])).is_err());
        assert!(parse_args(&args(&["-N", "sometimes"])).is_err());
    }

    #[test]
    fn a_lone_dot_ends_input_unless_ignored() {
        assert_eq!(read_message(b"a\n.\nb\n", false), b"a\r\n");
        assert_eq!(read_message(b"a\n.\nb", true), b"a\r\n.\r\nb\r\n");
    }

    #[test]
    fn extracts_recipients_and_drops_bcc() {
        let message = read_message(
            b"To: Bob <bob@y.org>, \"Smith, C\" <c@z.org>\nCc: d@w.org (Dee)\nBcc: secret@v.org\nSubject: hi\n\nbody\n",
            true,
        );
        let options = Options {
            extract_recipients: true,
            full_name: Some("Alice A".into()),
            ..Options::default()
        };
        let (out, found) = prepare(&message, &options, "alice@x.org");
        assert_eq!(found, ["bob@y.org", "c@z.org", "d@w.org", "secret@v.org"]);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("From: \"Alice A\" <alice@x.org>\r\nTo: Bob"));
        assert!(!text.contains("Bcc"));
        assert!(text.ends_with("Subject: hi\r\n\r\nbody\r\n"));
    }

    #[test]
    fn keeps_an_existing_from() {
        let message = read_message(b"From: me@x.org\nSubject: s\n\nb\n", true);
        let (out, found) = prepare(&message, &Options::default(), "other@x.org");
        assert_eq!(out, message);
        assert!(found.is_empty());
    }
}
