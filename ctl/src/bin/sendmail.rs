//! `sendmail`: submit a message from standard input. The message goes to
//! cleanup through the submission socket while Empath runs, and into the
//! drop directory (picked up when Empath starts) while it does not.

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use empath_common::config::{self, Config};
use empath_common::ipc::{self, write_frame};
use empath_common::maildrop::{self, DropFile};
use empath_common::protocol::{CleanupReply, CleanupRequest, Submission};
use empath_common::queue::{ClientInfo, DsnParams, Queue, QueueId, Recipient};
use empath_common::safeio;
use empath_ctl::sendmail::{self, Options};

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
    if options.initialize_aliases {
        return empath_ctl::newaliases::run(&config_path, "sendmail");
    }
    let config = match Config::load(&config_path) {
        Ok(config) => config,
        Err(error) => return fail(EX_CONFIG, &error.to_string()),
    };
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
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return fail(EX_TEMPFAIL, &format!("cannot start: {error}")),
    };
    match runtime.block_on(submit(&queue, &drop)) {
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

async fn submit(queue: &Queue, drop: &DropFile) -> Result<QueueId, Submit> {
    let socket = queue.public_path("submit.sock");
    let mut stream = match ipc::connect(&socket, Duration::from_secs(5)).await {
        Ok(stream) => stream,
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
    let submission = Submission {
        sender: drop.sender.clone(),
        recipients: drop.recipients.iter().map(Recipient::new).collect(),
        // cleanup replaces this with what it knows about the caller.
        client: ClientInfo::default(),
        dsn: DsnParams::default(),
        metadata: Default::default(),
        smtputf8: false,
        options: Default::default(),
    };
    let exchange = async {
        write_frame(&mut stream, &CleanupRequest::Begin(submission)).await?;
        for chunk in drop.content.chunks(64 * 1024) {
            write_frame(&mut stream, &CleanupRequest::Chunk(chunk.to_vec())).await?;
        }
        ipc::call::<_, _, CleanupReply>(&mut stream, &CleanupRequest::End).await
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
