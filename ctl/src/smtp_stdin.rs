//! `sendmail -bs`: an SMTP session on standard input and output, as cron
//! daemons and some mail clients use to submit without a network
//! connection. Each message goes through the same submission path as
//! `sendmail` without `-bs` (cleanup's submission socket, or the drop
//! directory while Empath is stopped), as the calling user.

use std::io::{self, BufRead, Write};

use empath_common::smtp::Reply;

/// Where a finished message goes; answers the queue ID or the refusal.
pub trait Submit {
    fn submit(
        &mut self,
        sender: &str,
        recipients: &[String],
        content: Vec<u8>,
    ) -> Result<String, Reply>;
}

/// The longest command line (RFC 5321 section 4.5.3.1.4), without CRLF.
const MAX_COMMAND: usize = 510;

/// Runs the session until QUIT or the end of input.
pub fn serve<R: BufRead, W: Write>(
    mut input: R,
    mut output: W,
    hostname: &str,
    max_size: u64,
    submit: &mut dyn Submit,
) -> io::Result<()> {
    let say = |output: &mut W, reply: &str| -> io::Result<()> {
        output.write_all(reply.as_bytes())?;
        output.write_all(b"\r\n")?;
        output.flush()
    };
    say(
        &mut output,
        &format!("220 {hostname} ESMTP Empath (sendmail -bs)"),
    )?;
    let mut greeted = false;
    let mut sender: Option<String> = None;
    let mut recipients: Vec<String> = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\n']);
        if text.len() > MAX_COMMAND {
            say(&mut output, "500 5.5.0 Line too long")?;
            continue;
        }
        let (verb, argument) = match text.split_once(' ') {
            Some((verb, argument)) => (verb.to_ascii_uppercase(), argument.trim()),
            None => (text.to_ascii_uppercase(), ""),
        };
        match verb.as_str() {
            "EHLO" | "HELO" if argument.is_empty() => {
                say(&mut output, &format!("501 5.5.4 Syntax: {verb} hostname"))?
            }
            "EHLO" => {
                (greeted, sender) = (true, None);
                recipients.clear();
                say(&mut output, &format!("250-{hostname}"))?;
                say(&mut output, &format!("250-SIZE {max_size}"))?;
                say(&mut output, "250-8BITMIME")?;
                say(&mut output, "250 ENHANCEDSTATUSCODES")?;
            }
            "HELO" => {
                (greeted, sender) = (true, None);
                recipients.clear();
                say(&mut output, &format!("250 {hostname}"))?;
            }
            "MAIL" if !greeted => say(&mut output, "503 5.5.1 Error: send HELO/EHLO first")?,
            "MAIL" if sender.is_some() => say(&mut output, "503 5.5.1 Error: nested MAIL command")?,
            "MAIL" => match path_of(argument, "FROM:") {
                Some(path) => {
                    sender = Some(path);
                    say(&mut output, "250 2.1.0 Ok")?;
                }
                None => say(&mut output, "501 5.5.4 Syntax: MAIL FROM:<address>")?,
            },
            "RCPT" if sender.is_none() => say(&mut output, "503 5.5.1 Error: need MAIL command")?,
            "RCPT" => match path_of(argument, "TO:") {
                Some(path) if !path.is_empty() => {
                    recipients.push(path);
                    say(&mut output, "250 2.1.5 Ok")?;
                }
                _ => say(&mut output, "501 5.5.4 Syntax: RCPT TO:<address>")?,
            },
            "DATA" if recipients.is_empty() => {
                say(&mut output, "503 5.5.1 Error: need RCPT command")?
            }
            "DATA" => {
                say(&mut output, "354 End data with <CR><LF>.<CR><LF>")?;
                let Some(content) = read_data(&mut input, max_size)? else {
                    say(&mut output, "552 5.3.4 Error: message file too big")?;
                    (sender, recipients) = (None, Vec::new());
                    continue;
                };
                let from = sender.take().unwrap_or_default();
                let to = std::mem::take(&mut recipients);
                match submit.submit(&from, &to, content) {
                    Ok(id) => say(&mut output, &format!("250 2.0.0 Ok: queued as {id}"))?,
                    Err(reply) => say(&mut output, &reply.to_string())?,
                }
            }
            "RSET" => {
                (sender, recipients) = (None, Vec::new());
                say(&mut output, "250 2.0.0 Ok")?;
            }
            "NOOP" => say(&mut output, "250 2.0.0 Ok")?,
            "VRFY" => say(&mut output, "252 2.0.0 Cannot verify; send some mail")?,
            "HELP" => say(&mut output, "214 2.0.0 See sendmail(1)")?,
            "QUIT" => {
                say(&mut output, "221 2.0.0 Bye")?;
                return Ok(());
            }
            _ => say(&mut output, "502 5.5.2 Error: command not recognized")?,
        }
    }
}

/// `FROM:<a@b> PARAMS` -> `a@b` (parameters are ignored; the null sender
/// is the empty string).
fn path_of(argument: &str, keyword: &str) -> Option<String> {
    let head = argument.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = argument[keyword.len()..].trim_start();
    let inner = rest.strip_prefix('<')?;
    let end = inner.find('>')?;
    Some(inner[..end].to_owned())
}

/// The message up to the line holding only `.`, dot-unstuffed, with CRLF
/// line endings; `None` (after reading to the end) when it is larger
/// than `max_size`.
fn read_data<R: BufRead>(input: &mut R, max_size: u64) -> io::Result<Option<Vec<u8>>> {
    let mut content = Vec::new();
    let mut too_big = false;
    let mut line = Vec::new();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if text == b"." {
            break;
        }
        let text = text.strip_prefix(b".").unwrap_or(text);
        if !too_big {
            content.extend_from_slice(text);
            content.extend_from_slice(b"\r\n");
            too_big = content.len() as u64 > max_size;
            if too_big {
                content = Vec::new();
            }
        }
    }
    Ok((!too_big).then_some(content))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Kept(Vec<(String, Vec<String>, Vec<u8>)>);

    impl Submit for Kept {
        fn submit(
            &mut self,
            sender: &str,
            recipients: &[String],
            content: Vec<u8>,
        ) -> Result<String, Reply> {
            self.0
                .push((sender.to_owned(), recipients.to_vec(), content));
            Ok(format!("ID{}", self.0.len()))
        }
    }

    #[test]
    fn a_session_submits_each_message() {
        let input = b"EHLO cron\r\nMAIL FROM:<root@host> SIZE=10\r\nRCPT TO:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\nSubject: hi\r\n\r\n..dot\r\n.\r\nMAIL FROM:<>\r\nRCPT TO:<c@x>\r\nDATA\r\nbody\n.\nQUIT\r\n";
        let mut output = Vec::new();
        let mut kept = Kept(Vec::new());
        serve(&input[..], &mut output, "mx.test", 1000, &mut kept).unwrap();
        let output = String::from_utf8(output).unwrap();
        assert!(output.starts_with("220 mx.test"), "{output}");
        assert!(
            output.contains("250 2.0.0 Ok: queued as ID1\r\n"),
            "{output}"
        );
        assert!(
            output.contains("250 2.0.0 Ok: queued as ID2\r\n"),
            "{output}"
        );
        assert!(output.ends_with("221 2.0.0 Bye\r\n"), "{output}");
        assert_eq!(kept.0[0].0, "root@host");
        assert_eq!(kept.0[0].1, ["a@x", "b@x"]);
        assert_eq!(kept.0[0].2, b"Subject: hi\r\n\r\n.dot\r\n");
        assert_eq!(kept.0[1].0, "");
        assert_eq!(kept.0[1].2, b"body\r\n");
    }

    #[test]
    fn commands_out_of_order_and_big_messages_are_refused() {
        let input = b"MAIL FROM:<a@b>\r\nHELO x\r\nRCPT TO:<a@b>\r\nDATA\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n0123456789012345\r\n.\r\nQUIT\r\n";
        let mut output = Vec::new();
        let mut kept = Kept(Vec::new());
        serve(&input[..], &mut output, "mx.test", 10, &mut kept).unwrap();
        let output = String::from_utf8(output).unwrap();
        let codes: Vec<&str> = output.lines().map(|l| &l[..3]).collect();
        assert_eq!(
            codes,
            [
                "220", "503", "250", "503", "503", "250", "250", "354", "552", "221"
            ]
        );
        assert!(kept.0.is_empty());
    }
}
