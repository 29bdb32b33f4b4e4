//! `empath-queue-fill`: fills a queue directory with real messages, fast,
//! for the scale benchmark (bench/scale.sh) and the tests that need a big
//! queue. Not installed; not for production spools.
//!
//! Each message goes in the way cleanup queues one, through
//! [`Queue::new_content`], [`Queue::stage_new`] (content and first
//! envelope sealed into one file, fsynced, hard-linked into `incoming/`)
//! and [`Queue::sync_new_entries`] (one group commit per batch). With
//! `--state deferred` each is then deferred the way qmgr defers one after
//! a failed attempt ([`Queue::rewrite_and_move`]: an envelope file of its
//! own with the attempt, the reason and the next retry, in `deferred/`).
//! With `--state hold` each is moved to `hold/` as it is. So the files are
//! exactly what a real run would have left, only made without the network
//! and the scheduler.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use clap::{Parser, ValueEnum};
use empath_common::queue::{
    ClientInfo, Envelope, Queue, QueueId, QueueState, Recipient, RecipientStatus,
};
use empath_common::smtp::Reply;
use empath_common::time::{rfc5322_date, unix_now};

/// Messages per group commit.
const BATCH: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FillState {
    /// New mail, as cleanup leaves it (qmgr delivers it at once).
    Incoming,
    /// Mail that failed one attempt and waits for its next retry.
    Deferred,
    /// Mail on hold, which qmgr leaves alone (its first envelope, moved
    /// without a directory fsync: the quickest way to a big queue that
    /// the scheduler does not touch, for listing tests).
    Hold,
}

#[derive(Debug, Parser)]
#[command(
    name = "empath-queue-fill",
    about = "Fill an Empath queue directory with real queue files (benchmarks and tests)"
)]
struct Args {
    /// The queue directory (`spool.path` of the config); created if missing.
    #[arg(long)]
    spool: std::path::PathBuf,
    /// How many messages.
    #[arg(long)]
    count: u64,
    #[arg(long, value_enum, default_value_t = FillState::Deferred)]
    state: FillState,
    /// Recipient; with --domains N, `local@dK.<domain>` for K in 0..N.
    #[arg(long, default_value = "user@sink.test")]
    to: String,
    /// Spread the recipients over this many domains.
    #[arg(long, default_value_t = 1)]
    domains: u64,
    #[arg(long, default_value = "bench@client.test")]
    from: String,
    /// Body bytes per message (headers come on top).
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Deferred messages are due this many seconds from now.
    #[arg(long, default_value_t = 86_400)]
    retry_in: u64,
    /// Writer threads (the fsyncs of parallel writers share journal commits).
    #[arg(long, default_value_t = 8)]
    threads: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.count == 0 || args.threads == 0 || args.domains == 0 {
        eprintln!("empath-queue-fill: --count, --threads and --domains must be at least 1");
        return ExitCode::from(64);
    }
    if !args.to.contains('@') {
        eprintln!("empath-queue-fill: --to must be an address");
        return ExitCode::from(64);
    }
    let queue = Queue::new(&args.spool);
    if let Err(error) = queue.create_dirs() {
        eprintln!(
            "empath-queue-fill: cannot create {}: {error}",
            args.spool.display()
        );
        return ExitCode::from(73);
    }
    let started = Instant::now();
    let done = AtomicU64::new(0);
    let failed = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..args.threads)
            .map(|worker| {
                let share =
                    args.count / args.threads + u64::from(worker < args.count % args.threads);
                let (queue, args, done) = (queue.clone(), &args, &done);
                scope.spawn(move || fill(&queue, args, share, done, started))
            })
            .collect();
        workers
            .into_iter()
            .filter_map(|w| match w.join() {
                Ok(Ok(())) => None,
                Ok(Err(error)) => Some(error),
                Err(_) => Some("a writer thread panicked".to_owned()),
            })
            .next()
    });
    let written = done.load(Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{written} messages written to {} ({:?}) in {secs:.1} s: {:.0} msg/s",
        args.spool.display(),
        args.state,
        written as f64 / secs.max(1e-9)
    );
    match failed {
        Some(error) => {
            eprintln!("empath-queue-fill: {error}");
            ExitCode::from(74)
        }
        None => ExitCode::SUCCESS,
    }
}

fn fill(
    queue: &Queue,
    args: &Args,
    count: u64,
    done: &AtomicU64,
    started: Instant,
) -> Result<(), String> {
    let mut left = count;
    let (local, domain) = args.to.rsplit_once('@').unwrap_or((&args.to, "sink.test"));
    while left > 0 {
        let batch = left.min(BATCH as u64);
        let mut staged = Vec::with_capacity(BATCH);
        for _ in 0..batch {
            let n = done.fetch_add(1, Ordering::Relaxed);
            let to = if args.domains > 1 {
                format!("{local}@d{}.{domain}", n % args.domains)
            } else {
                args.to.clone()
            };
            staged.push(stage(queue, args, &to, n)?);
            if (n + 1).is_multiple_of(100_000) {
                eprintln!(
                    "empath-queue-fill: {} messages, {:.0} s",
                    n + 1,
                    started.elapsed().as_secs_f64()
                );
            }
        }
        queue
            .sync_new_entries()
            .map_err(|e| format!("cannot sync the queue directories: {e}"))?;
        match args.state {
            FillState::Incoming => {}
            FillState::Deferred => {
                for envelope in &mut staged {
                    defer(queue, envelope, args.retry_in)?;
                }
            }
            FillState::Hold => {
                for envelope in &staged {
                    queue
                        .move_unsynced(envelope.id, QueueState::Incoming, QueueState::Hold)
                        .map_err(|e| format!("cannot hold {}: {e}", envelope.id))?;
                }
            }
        }
        left -= batch;
    }
    Ok(())
}

/// Queues one message the way cleanup does.
fn stage(queue: &Queue, args: &Args, to: &str, n: u64) -> Result<Envelope, String> {
    let id = QueueId::generate();
    let now = unix_now();
    let mut content = queue.new_content(id);
    let headers = format!(
        "Received: from bench.client.test (localhost [127.0.0.1])\r\n\tby bench.empath.test with ESMTP id {id};\r\n\t{date}\r\n\
         Message-ID: <{id}@bench.empath.test>\r\nDate: {date}\r\nFrom: <{from}>\r\nTo: <{to}>\r\n\
         Subject: queue fill {n}\r\n\r\n",
        date = rfc5322_date(now),
        from = args.from,
    );
    let line = b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n";
    let mut body = Vec::with_capacity(args.size + line.len());
    while body.len() < args.size {
        body.extend_from_slice(line);
    }
    body.truncate(args.size.saturating_sub(2));
    body.extend_from_slice(b"\r\n");
    content
        .write_all(headers.as_bytes())
        .and_then(|()| content.write_all(&body))
        .map_err(|e| format!("cannot write the content of {id}: {e}"))?;
    let envelope = Envelope {
        id,
        sender: args.from.clone(),
        recipients: vec![Recipient::new(to)],
        arrival: now,
        attempts: 0,
        next_retry: None,
        last_error: None,
        client: ClientInfo {
            addr: "127.0.0.1:2525".into(),
            helo: "bench.client.test".into(),
            name: None,
            protocol: "ESMTP".into(),
            tls: None,
            authenticated_as: None,
        },
        dsn: Default::default(),
        metadata: Default::default(),
        content_size: content.written(),
        smtputf8: false,
        delay_warned: false,
        options: Default::default(),
    };
    queue
        .stage_new(content, &envelope)
        .map_err(|e| format!("cannot queue {id}: {e}"))?;
    Ok(envelope)
}

/// Records a failed attempt the way qmgr does, and moves it to `deferred/`.
fn defer(queue: &Queue, envelope: &mut Envelope, retry_in: u64) -> Result<(), String> {
    let now = unix_now();
    envelope.attempts = 1;
    envelope.next_retry = Some(now + retry_in);
    for recipient in &mut envelope.recipients {
        recipient.status = RecipientStatus::Deferred {
            at: now,
            remote: None,
            reply: Reply::new(451, "4.4.1", "bench: connection refused by the sink"),
        };
    }
    queue
        .rewrite_and_move(envelope, QueueState::Incoming, QueueState::Deferred)
        .map_err(|e| format!("cannot defer {}: {e}", envelope.id))
}
