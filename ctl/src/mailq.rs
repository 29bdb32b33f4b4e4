//! `mailq`: the queue listing in Postfix's format. It asks empath-showq
//! (`public/showq.sock`, open to every local user, as Postfix's showq);
//! when showq is not running it reads the queue directory itself, which
//! needs the mail system's user or root.

use std::io::{self, Write};
use std::time::Duration;

use empath_common::ipc::{self, read_frame, write_frame};
use empath_common::protocol::{self, ShowqReply, ShowqRequest};
use empath_common::queue::lister::{self, MailqEntry};
use empath_common::queue::{Queue, QueueState};
use empath_common::time::short_date;

/// How long to wait to connect to showq, and for each frame of its answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const FRAME_TIMEOUT: Duration = Duration::from_secs(120);

/// The Postfix status mark after the queue ID: `*` active, `!` held.
fn mark(state: QueueState) -> char {
    match state {
        QueueState::Active => '*',
        QueueState::Hold => '!',
        _ => ' ',
    }
}

/// Prints entries as they come, then the total: a listing of a million
/// messages is never held in memory.
pub struct Printer<W: Write> {
    out: W,
    requests: u64,
    bytes: u64,
}

impl<W: Write> Printer<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            requests: 0,
            bytes: 0,
        }
    }

    pub fn entry(&mut self, entry: &MailqEntry) -> io::Result<()> {
        if self.requests == 0 {
            writeln!(
                self.out,
                "{:<27} {:>8} {:<20} -Sender/Recipient-------",
                "-Queue ID-", "--Size--", "----Arrival Time----"
            )?;
        }
        self.requests += 1;
        self.bytes += entry.size;
        let sender = if entry.sender.is_empty() {
            "MAILER-DAEMON"
        } else {
            entry.sender.as_str()
        };
        writeln!(
            self.out,
            "{}{} {:>8} {:<20} {sender}",
            entry.id,
            mark(entry.state),
            entry.size,
            short_date(entry.arrival)
        )?;
        for recipient in &entry.recipients {
            if let Some(reason) = &recipient.reason {
                writeln!(self.out, "{:58}({})", "", reason.replace('\n', " "))?;
            }
            writeln!(self.out, "{:58}{}", "", recipient.address)?;
        }
        writeln!(self.out)
    }

    /// Prints the total line (or says the queue is empty) and flushes.
    pub fn finish(mut self) -> io::Result<W> {
        if self.requests == 0 {
            writeln!(self.out, "Mail queue is empty")?;
        } else {
            let kbytes = self.bytes.div_ceil(1024);
            let requests = self.requests;
            let noun = if requests == 1 { "Request" } else { "Requests" };
            writeln!(self.out, "-- {kbytes} Kbytes in {requests} {noun}.")?;
        }
        self.out.flush()?;
        Ok(self.out)
    }

    /// Whether anything was printed yet.
    pub fn started(&self) -> bool {
        self.requests > 0
    }
}

/// The whole listing as text.
pub fn render(entries: &[MailqEntry]) -> String {
    let mut printer = Printer::new(Vec::new());
    for entry in entries {
        let _ = printer.entry(entry);
    }
    let bytes = printer.finish().unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Why showq gave no listing.
#[derive(Debug, thiserror::Error)]
pub enum ShowqError {
    /// Not running (or not reachable): reading the directory may work.
    #[error("empath-showq is not running at {0}: {1}")]
    Unavailable(String, io::Error),
    /// showq answered with an error before any entry.
    #[error("empath-showq: {0}")]
    Refused(String),
    /// The listing broke off after some of it was printed.
    #[error("the listing from empath-showq was cut short: {0}")]
    CutShort(String),
    #[error("cannot print the listing: {0}")]
    Output(io::Error),
}

/// Asks showq for the listing and prints it as it arrives.
pub async fn from_showq<W: Write>(
    queue: &Queue,
    printer: &mut Printer<W>,
) -> Result<(), ShowqError> {
    let socket = queue.public_socket(protocol::SHOWQ);
    let shown = socket.display().to_string();
    let mut stream = ipc::connect(&socket, CONNECT_TIMEOUT)
        .await
        .map_err(|e| ShowqError::Unavailable(shown.clone(), e))?;
    write_frame(&mut stream, &ShowqRequest::Mailq)
        .await
        .map_err(|e| ShowqError::Unavailable(shown.clone(), e))?;
    loop {
        let frame = tokio::time::timeout(FRAME_TIMEOUT, read_frame::<_, ShowqReply>(&mut stream))
            .await
            .unwrap_or_else(|_| {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer within {FRAME_TIMEOUT:?}"),
                ))
            });
        let broken = |text: String| {
            if printer.started() {
                ShowqError::CutShort(text)
            } else {
                ShowqError::Unavailable(shown.clone(), io::Error::other(text))
            }
        };
        match frame {
            Ok(Some(ShowqReply::Entries(entries))) => {
                for entry in &entries {
                    printer.entry(entry).map_err(ShowqError::Output)?;
                }
            }
            Ok(Some(ShowqReply::End)) => return Ok(()),
            Ok(Some(ShowqReply::Error(text))) if printer.started() => {
                return Err(ShowqError::CutShort(text));
            }
            Ok(Some(ShowqReply::Error(text))) => return Err(ShowqError::Refused(text)),
            Ok(None) => return Err(broken("connection closed".into())),
            Err(error) => return Err(broken(error.to_string())),
        }
    }
}

/// Reads the queue directory itself (root or the mail system's user).
pub fn from_directory<W: Write>(queue: &Queue, printer: &mut Printer<W>) -> io::Result<()> {
    for entry in lister::mailq(queue)? {
        printer.entry(&entry)?;
    }
    Ok(())
}

/// Why no listing could be printed, with the sysexits status to exit with.
#[derive(Debug)]
pub struct ListingFailed {
    pub status: u8,
    pub message: String,
}

/// sysexits.h statuses.
const EX_UNAVAILABLE: u8 = 69;
const EX_TEMPFAIL: u8 = 75;

/// The whole `mailq` flow, shared by `mailq` and `sendmail -bp`: asks
/// showq, falls back to the directory when showq is down and nothing was
/// printed yet, and prints to stdout. A reader that stops early
/// (`mailq | head`) is not a failure.
pub fn print_listing(queue: &Queue) -> Result<(), ListingFailed> {
    let mut printer = Printer::new(io::BufWriter::new(io::stdout().lock()));
    let asked = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(from_showq(queue, &mut printer)),
        Err(error) => Err(ShowqError::Refused(format!("cannot start: {error}"))),
    };
    let tempfail = |message: String| ListingFailed {
        status: EX_TEMPFAIL,
        message,
    };
    match asked {
        Ok(()) => {}
        // showq is down or busy, and nothing was printed yet: read the
        // directory, which works for root and the mail system's user.
        Err(why @ (ShowqError::Unavailable(..) | ShowqError::Refused(_))) => {
            match from_directory(queue, &mut printer) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
                Err(error) => {
                    return Err(ListingFailed {
                        status: EX_UNAVAILABLE,
                        message: format!(
                            "{why}; and cannot read the queue in {} directly: {error}",
                            queue.root().display()
                        ),
                    });
                }
            }
        }
        Err(ShowqError::Output(error)) if error.kind() == io::ErrorKind::BrokenPipe => {
            return Ok(());
        }
        Err(error) => return Err(tempfail(error.to_string())),
    }
    match printer.finish().and_then(|mut out| out.flush()) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(error) => Err(tempfail(format!("cannot print the listing: {error}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use empath_common::queue::QueueId;
    use empath_common::queue::lister::MailqRecipient;

    fn entry(state: QueueState, sender: &str, reason: Option<&str>) -> MailqEntry {
        MailqEntry {
            id: QueueId::generate(),
            state,
            size: 1500,
            arrival: 1_763_287_845,
            sender: sender.into(),
            recipients: vec![MailqRecipient {
                address: "b@example.com".into(),
                reason: reason.map(Into::into),
            }],
        }
    }

    #[test]
    fn prints_postfix_style() {
        assert_eq!(render(&[]), "Mail queue is empty\n");
        let active = entry(QueueState::Active, "a@example.org", None);
        let deferred = entry(QueueState::Deferred, "", Some("451 4.4.1\nno answer"));
        let text = render(&[active.clone(), deferred.clone()]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("-Queue ID-"), "{text}");
        assert!(
            lines[1].starts_with(&format!("{}*     1500 ", active.id)),
            "{text}"
        );
        assert!(lines[1].ends_with("a@example.org"), "{text}");
        assert_eq!(lines[2].trim(), "b@example.com");
        assert!(
            lines[4].starts_with(&format!("{}  ", deferred.id)),
            "{text}"
        );
        assert!(lines[4].ends_with("MAILER-DAEMON"), "{text}");
        assert_eq!(lines[5].trim(), "(451 4.4.1 no answer)");
        assert_eq!(lines.last(), Some(&"-- 3 Kbytes in 2 Requests."));
        let held = render(&[entry(QueueState::Hold, "a@example.org", None)]);
        assert!(held.contains("! "), "{held}");
        assert!(held.ends_with("in 1 Request.\n"), "{held}");
    }
}
