//! `sendmail`: submit a message from standard input. The message goes to
//! cleanup through the submission socket while Empath runs, and into the
//! drop directory (picked up when Empath starts) while it does not.

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use empath_common::cleanup_client::CleanupClient;
use empath_common::config::{self, Config};
use empath_common::maildrop::{self, DropFile};
use empath_common::protocol::{CleanupReply, Submission};
use empath_common::queue::{ClientInfo, DsnParams, Queue, QueueId, Recipient};
use empath_common::safeio;
use empath_ctl::sendmail::{self, Mode, Options};

/// sysexits.h statuses.
const EX_USAGE: u8 = 64;
const EX_DATAERR: u8 = 65;
const EX_UNAVAILABLE: u8 = 69;
const EX_TEMPFAIL: u8 = 75;
const EX_CONFIG: u8 = 78;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match sendmail::parse_args(&args) {
        Ok(options) => options,
        Err(error) => return fail(EX_USAGE, &error),
    };
    let config_path = options
        .config
        .clone()
        .map_or_else(|| PathBuf::from(config::DEFAULT_PATH), PathBuf::from);
    match options.mode {
        Mode::Version => {
            println!("sendmail {} (Empath)", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Mode::InitializeAliases => return empath_ctl::newaliases::run(&config_path, "sendmail"),
        Mode::Nothing => return ExitCode::SUCCESS,
        _ => {}
    }
    let config = match Config::load(&config_path) {
        Ok(config) => config,
        Err(error) => return fail(EX_CONFIG, &error.to_string()),
    };
    match options.mode {
        Mode::PrintQueue => return print_queue(&config),
        Mode::ProcessQueue => return process_queue(&config_path),
        Mode::Verify => return verify(&config, &options.recipients),
        Mode::Smtp => return smtp_session(&config, options.notify),
        _ => {}
    }
    let mut input = Vec::new();
    if let Err(error) = io::stdin().read_to_end(&mut input) {
        return fail(EX_DATAERR, &format!("cannot read the message: {error}"));
    }
    let sender = options
        .sender
        .clone()
        .unwrap_or_else(|| default_sender(&config));
    let message = sendmail::read_message(&input, options.ignore_dots);
    let (message, found) = sendmail::prepare(&message, &options, &sender);
    let recipients = recipients(&options, found);
    if recipients.is_empty() {
        return fail(
            EX_USAGE,
            "no recipient addresses found (give them as arguments or use -t)",
        );
    }
    // cleanup would refuse it, or set a drop file that large aside.
    let limit = config.local_message_size_limit();
    if message.len() as u64 > limit {
        return fail(
            EX_DATAERR,
            &format!(
                "message of {} bytes is larger than the limit of {limit} (smtpd.max_message_size)",
                message.len()
            ),
        );
    }
    let queue = Queue::new(config.spool.path.clone());
    let drop = DropFile {
        sender,
        recipients,
        content: message,
    };
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(error) => return fail(EX_TEMPFAIL, &format!("cannot start: {error}")),
    };
    match runtime.block_on(submit(&queue, &drop, options.notify)) {
        Ok(_) => ExitCode::SUCCESS,
        Err(Submit::Refused(reply)) => fail(EX_UNAVAILABLE, &format!("message refused: {reply}")),
        Err(Submit::NotRunning) => match write_drop(&queue, &drop) {
            Ok(()) => {
                eprintln!(
                    "sendmail: Empath is not running; the message waits in {} until it starts",
                    queue.maildrop_dir().display()
                );
                ExitCode::SUCCESS
            }
            Err(error) => fail(
                EX_TEMPFAIL,
                &format!(
                    "cannot write to {}: {error}",
                    queue.maildrop_dir().display()
                ),
            ),
        },
        Err(Submit::Failed(error)) => fail(EX_TEMPFAIL, &error),
    }
}

fn fail(status: u8, message: &str) -> ExitCode {
    eprintln!("sendmail: {message}");
    ExitCode::from(status)
}

fn recipients(options: &Options, found: Vec<String>) -> Vec<String> {
    let mut all: Vec<String> = options.recipients.iter().cloned().chain(found).collect();
    let mut seen = std::collections::HashSet::new();
    all.retain(|address| seen.insert(address.to_ascii_lowercase()));
    all
}

/// `login@origin` for the calling user (`local_delivery.origin`, by
/// default the host name).
fn default_sender(config: &Config) -> String {
    let user = nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .or_else(|| std::env::var("LOGNAME").ok())
        .unwrap_or_else(|| "nobody".to_owned());
    format!("{user}@{}", config.local_domains().origin())
}

enum Submit {
    NotRunning,
    Refused(String),
    Failed(String),
}

fn runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// `-bp`: the queue, as mailq lists it.
fn print_queue(config: &Config) -> ExitCode {
    let queue = Queue::new(config.spool.path.clone());
    match empath_ctl::mailq::print_listing(&queue) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failed) => fail(failed.status, &failed.message),
    }
}

/// `-q`: every deferred message is due now (empathctl queue process-now),
/// through the control socket.
fn process_queue(config_path: &std::path::Path) -> ExitCode {
    use empath_common::control::{ControlRequest, ControlResponse, QueueCommand};
    let socket = match empath_ctl::client::socket_path(None, Some(config_path)) {
        Ok(socket) => socket,
        Err(error) => return fail(EX_CONFIG, &error.to_string()),
    };
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(error) => return fail(EX_TEMPFAIL, &format!("cannot start: {error}")),
    };
    let request = ControlRequest::Queue(QueueCommand::ProcessNow);
    let token = std::env::var("EMPATH_TOKEN").ok();
    match runtime.block_on(empath_ctl::client::send(&socket, token, request)) {
        Ok(ControlResponse::Error(error)) => fail(EX_UNAVAILABLE, &error),
        Ok(_) => ExitCode::SUCCESS,
        Err(error) => fail(error.exit_status(), &error.to_string()),
    }
}

/// `-bv`: whether each recipient can be delivered, without sending
/// anything: local recipients must be users or aliases; other domains are
/// relayed by smtp-out (through their `mx_override`, if any).
fn verify(config: &Config, recipients: &[String]) -> ExitCode {
    const EX_NOUSER: u8 = 67;
    if recipients.is_empty() {
        return fail(EX_USAGE, "-bv: give the addresses to verify");
    }
    let local = empath_common::local_recipients::LocalRecipients::new(config);
    let mut all_good = true;
    for recipient in recipients {
        let address = local.domains().qualify(recipient);
        let domain = empath_common::queue::domain_of(&address);
        let verdict = if local.domains().is_local_address(&address) {
            match local.check(&address) {
                Ok(Some(_)) => Ok(format!(
                    "deliverable: mailer local, user {}",
                    empath_common::local_recipients::local_part(&address)
                )),
                Ok(None) => Err("User unknown".to_owned()),
                Err(error) => Err(format!("cannot verify now: {error}")),
            }
        } else if domain.is_empty() || !domain.contains('.') && domain != "localhost" {
            Err("Host unknown (not a domain name)".to_owned())
        } else {
            let relay = config
                .delivery
                .domains
                .get(&domain)
                .and_then(|policy| policy.mx_override.as_ref())
                .map_or_else(|| domain.clone(), ToString::to_string);
            Ok(format!("deliverable: mailer smtp, host {relay}"))
        };
        match verdict {
            Ok(text) => println!("{address}... {text}"),
            Err(text) => {
                all_good = false;
                println!("{address}... {text}");
            }
        }
    }
    if all_good {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EX_NOUSER)
    }
}

/// `-bs`: SMTP on standard input and output, each message submitted as
/// a message from standard input would be.
fn smtp_session(config: &Config, notify: Option<empath_ctl::sendmail::Notify>) -> ExitCode {
    struct Submitter {
        queue: Queue,
        runtime: tokio::runtime::Runtime,
        notify: Option<empath_ctl::sendmail::Notify>,
    }
    impl empath_ctl::smtp_stdin::Submit for Submitter {
        fn submit(
            &mut self,
            sender: &str,
            recipients: &[String],
            content: Vec<u8>,
        ) -> Result<String, empath_common::smtp::Reply> {
            use empath_common::smtp::Reply;
            let drop = DropFile {
                sender: sender.to_owned(),
                recipients: recipients.to_vec(),
                content,
            };
            match self
                .runtime
                .block_on(submit(&self.queue, &drop, self.notify))
            {
                Ok(id) => Ok(id.to_string()),
                Err(Submit::Refused(reply)) => Err(Reply::new(554, "", reply)),
                Err(Submit::NotRunning) => match write_drop(&self.queue, &drop) {
                    Ok(()) => Ok("(drop directory; Empath is not running)".to_owned()),
                    Err(error) => Err(Reply::new(451, "4.3.0", format!("cannot queue: {error}"))),
                },
                Err(Submit::Failed(error)) => Err(Reply::new(451, "4.3.0", error)),
            }
        }
    }
    let mut submitter = Submitter {
        queue: Queue::new(config.spool.path.clone()),
        runtime: match runtime() {
            Ok(runtime) => runtime,
            Err(error) => return fail(EX_TEMPFAIL, &format!("cannot start: {error}")),
        },
        notify,
    };
    let stdin = io::stdin();
    let stdout = io::stdout();
    match empath_ctl::smtp_stdin::serve(
        stdin.lock(),
        stdout.lock(),
        &config.hostname(),
        config.local_message_size_limit(),
        &mut submitter,
    ) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(EX_TEMPFAIL, &format!("SMTP session: {error}")),
    }
}

async fn submit(
    queue: &Queue,
    drop: &DropFile,
    notify: Option<empath_ctl::sendmail::Notify>,
) -> Result<QueueId, Submit> {
    let socket = queue.public_path("submit.sock");
    let submission = Submission {
        sender: drop.sender.clone(),
        recipients: drop
            .recipients
            .iter()
            .map(|address| Recipient {
                notify: notify.unwrap_or_default(),
                ..Recipient::new(address)
            })
            .collect(),
        // cleanup replaces this with what it knows about the caller.
        client: ClientInfo::default(),
        dsn: DsnParams::default(),
        metadata: Default::default(),
        smtputf8: false,
        queue_id: None,
        options: Default::default(),
    };
    let metadata = submission.metadata.clone();
    let timeout = Duration::from_secs(60);
    let mut client = match CleanupClient::begin(&socket, submission, timeout).await {
        Ok(client) => client,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(Submit::NotRunning);
        }
        Err(e) => return Err(Submit::Failed(e.to_string())),
    };
    let exchange = async {
        client.write(&drop.content).await?;
        client.commit(metadata).await
    };
    match exchange.await {
        Ok(CleanupReply::Queued { id }) => Ok(id),
        Ok(CleanupReply::Rejected(reply)) => Err(Submit::Refused(reply.to_string())),
        Err(error) => Err(Submit::Failed(format!("submission failed: {error}"))),
    }
}

/// Writes the drop file under a temporary name, fsyncs it, and renames it
/// into place, so cleanup never picks up half a file.
fn write_drop(queue: &Queue, drop: &DropFile) -> io::Result<()> {
    let dir = queue.maildrop_dir();
    let name = QueueId::generate().to_string();
    let tmp = dir.join(format!(".{name}.tmp"));
    let result = (|| {
        let mut file = safeio::create_new(&tmp)?;
        file.write_all(&maildrop::encode(drop))?;
        file.sync_all()?;
        std::fs::rename(&tmp, dir.join(&name))?;
        safeio::fsync_dir(&dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
