//! Sessions end to end: the real connection code over an in-memory pipe,
//! against a fake cleanup on a Unix socket in a temporary directory.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use empath_common::ipc::{read_frame, write_frame};
use empath_common::protocol::{CleanupReply, CleanupRequest, Submission};
use empath_common::queue::QueueId;
use empath_common::smtp::Reply;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream, ReadHalf, WriteHalf};
use tokio::net::UnixListener;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use super::{End, serve};
use crate::settings::{Settings, Timeouts};

/// Longest a test waits for anything before it fails.
const PATIENCE: Duration = Duration::from_secs(10);
const PEER: &str = "192.0.2.1:40000";

fn settings(cleanup_socket: PathBuf) -> Settings {
    let long = Duration::from_secs(30);
    let timeouts = Timeouts {
        command: long,
        data_init: long,
        data_block: long,
        data_termination: long,
        connection: long,
    };
    let mut settings = Settings::for_tests("mx.example", cleanup_socket, timeouts);
    settings.metadata = [("listener".to_owned(), "test".to_owned())].into();
    settings
}

/// The client side of a session.
struct Client {
    reader: BufReader<ReadHalf<DuplexStream>>,
    writer: WriteHalf<DuplexStream>,
    server: JoinHandle<End>,
}

impl Client {
    /// Starts a session and reads the greeting.
    async fn connect(settings: Settings) -> Self {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(serve(server, PEER.to_owned(), Arc::new(settings)));
        let (reader, writer) = tokio::io::split(client);
        let mut client = Self {
            reader: BufReader::new(reader),
            writer,
            server,
        };
        assert_eq!(client.reply().await, "220 mx.example ESMTP Empath");
        client
    }

    async fn send(&mut self, text: &[u8]) {
        let written = tokio::time::timeout(PATIENCE, self.writer.write_all(text)).await;
        assert!(matches!(written, Ok(Ok(()))), "cannot write to the server");
    }

    /// One reply, its lines joined by `\n`, without CRLFs.
    async fn reply(&mut self) -> String {
        let read = tokio::time::timeout(PATIENCE, self.read_reply()).await;
        match read {
            Ok(reply) => reply,
            Err(_) => panic!("no reply within {PATIENCE:?}"),
        }
    }

    async fn read_reply(&mut self) -> String {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line).await {
                Ok(0) => {
                    lines.push("<EOF>".to_owned());
                    break;
                }
                Ok(_) => {}
                Err(error) => panic!("read error: {error}"),
            }
            assert!(line.ends_with("\r\n"), "reply line without CRLF: {line:?}");
            let line = line.trim_end_matches("\r\n").to_owned();
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                break;
            }
        }
        lines.join("\n")
    }

    async fn command(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    /// Sends a command and checks the start of its reply.
    async fn expect(&mut self, line: &str, start: &str) {
        let reply = self.command(line).await;
        assert!(
            reply.starts_with(start),
            "{line:?} got {reply:?}, expected {start:?}"
        );
    }

    async fn expect_closed(&mut self) {
        assert_eq!(self.reply().await, "<EOF>");
    }

    /// Waits for the server task and returns why the session ended.
    async fn end(self) -> End {
        match tokio::time::timeout(PATIENCE, self.server).await {
            Ok(Ok(end)) => end,
            _ => panic!("session did not end"),
        }
    }

    /// EHLO, MAIL, one RCPT and DATA up to the 354.
    async fn start_message(&mut self) {
        self.expect("EHLO client.example", "250-mx.example").await;
        self.expect("MAIL FROM:<alice@a.example>", "250 2.1.0")
            .await;
        self.expect("RCPT TO:<bob@b.example>", "250 2.1.5").await;
        self.expect("DATA", "354 ").await;
    }
}

/// What the fake cleanup does with a submission.
#[derive(Clone)]
enum Behaviour {
    Queue,
    Reject(Reply),
    /// Never answers `End`.
    Silent,
    /// Closes the connection right after `Begin`.
    CloseAfterBegin,
    /// Signals `got_end` on `End`, then waits for `release` before queuing.
    Gated {
        got_end: Arc<Notify>,
        release: Arc<Notify>,
    },
}

/// One submission as the fake cleanup saw it.
#[derive(Debug, Default)]
struct Recorded {
    submission: Option<Submission>,
    content: Vec<u8>,
    chunk_sizes: Vec<usize>,
    ended: bool,
    aborted: bool,
    queued_as: Option<QueueId>,
    edits: Vec<empath_common::edits::Edit>,
}

struct FakeCleanup {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    recorded: mpsc::UnboundedReceiver<Recorded>,
}

impl FakeCleanup {
    fn start(behaviour: Behaviour) -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let socket = dir.path().join("cleanup.sock");
        let listener = UnixListener::bind(&socket).unwrap_or_else(|e| panic!("bind: {e}"));
        let (sender, recorded) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let sender = sender.clone();
                let behaviour = behaviour.clone();
                tokio::spawn(async move {
                    let record = serve_submission(stream, behaviour).await;
                    let _ = sender.send(record);
                });
            }
        });
        Self {
            _dir: dir,
            socket,
            recorded,
        }
    }

    /// Checks that nothing was queued: cleanup heard nothing of the
    /// message (one that fits in a chunk goes to cleanup only at its end),
    /// or the submission ended without `End`.
    async fn nothing_queued(&mut self) {
        match tokio::time::timeout(Duration::from_millis(300), self.recorded.recv()).await {
            Err(_) | Ok(None) => {}
            Ok(Some(record)) => assert!(
                !record.ended && record.queued_as.is_none(),
                "the message was committed: {record:?}"
            ),
        }
    }

    async fn next(&mut self) -> Recorded {
        match tokio::time::timeout(PATIENCE, self.recorded.recv()).await {
            Ok(Some(record)) => record,
            _ => panic!("cleanup received no submission"),
        }
    }
}

async fn serve_submission(mut stream: tokio::net::UnixStream, behaviour: Behaviour) -> Recorded {
    let mut record = Recorded::default();
    if empath_common::ipc::hello_server(&mut stream, "cleanup")
        .await
        .is_err()
    {
        return record;
    }
    loop {
        let request: Option<CleanupRequest> = match read_frame(&mut stream).await {
            Ok(request) => request,
            Err(_) => break,
        };
        match request {
            Some(CleanupRequest::Begin(submission)) => {
                record.submission = Some(submission);
                if matches!(behaviour, Behaviour::CloseAfterBegin) {
                    break;
                }
            }
            Some(CleanupRequest::Chunk(bytes)) => {
                record.chunk_sizes.push(bytes.len());
                record.content.extend_from_slice(&bytes);
            }
            Some(CleanupRequest::End) => {
                record.ended = true;
                let reply = match &behaviour {
                    Behaviour::Queue | Behaviour::CloseAfterBegin => None,
                    Behaviour::Reject(reply) => Some(CleanupReply::Rejected(reply.clone())),
                    Behaviour::Silent => {
                        tokio::time::sleep(PATIENCE * 2).await;
                        break;
                    }
                    Behaviour::Gated { got_end, release } => {
                        got_end.notify_one();
                        release.notified().await;
                        None
                    }
                };
                let reply = reply.unwrap_or_else(|| {
                    let id = QueueId::generate();
                    record.queued_as = Some(id);
                    CleanupReply::Queued { id }
                });
                let _ = write_frame(&mut stream, &reply).await;
                break;
            }
            Some(CleanupRequest::Metadata(metadata)) => {
                if let Some(submission) = &mut record.submission {
                    submission.metadata = metadata;
                }
            }
            Some(CleanupRequest::Edits(edits)) => record.edits.extend(edits),
            Some(CleanupRequest::Abort) => {
                record.aborted = true;
                break;
            }
            None => break,
        }
    }
    record
}

#[tokio::test]
async fn message_is_acknowledged_only_after_cleanup_queues_it() {
    let got_end = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let mut cleanup = FakeCleanup::start(Behaviour::Gated {
        got_end: Arc::clone(&got_end),
        release: Arc::clone(&release),
    });
    let mut client = Client::connect(settings(cleanup.socket.clone())).await;
    client.start_message().await;
    client
        .send(b"Subject: dots\r\n\r\n..leading dot\r\n.\r\n" as &[u8])
        .await;
    // The lone "." above ends the message; what cleanup must receive:
    let expected: &[u8] = b"Subject: dots\r\n\r\n.leading dot\r\n";

    tokio::time::timeout(PATIENCE, got_end.notified())
        .await
        .unwrap_or_else(|_| panic!("cleanup never saw End"));
    let early = tokio::time::timeout(Duration::from_millis(300), client.read_reply()).await;
    assert!(early.is_err(), "replied before cleanup queued: {early:?}");
    release.notify_one();

    let reply = client.reply().await;
    let record = cleanup.next().await;
    let id = record.queued_as.unwrap_or_else(|| panic!("not queued"));
    assert_eq!(reply, format!("250 2.0.0 Ok: queued as {id}"));
    assert_eq!(record.content, expected);
    assert!(record.ended && !record.aborted);

    let submission = record.submission.unwrap_or_else(|| panic!("no Begin"));
    assert_eq!(submission.sender, "alice@a.example");
    let recipients: Vec<&str> = submission
        .recipients
        .iter()
        .map(|r| r.address.as_str())
        .collect();
    assert_eq!(recipients, ["bob@b.example"]);
    assert_eq!(submission.client.addr, PEER);
    assert_eq!(submission.client.helo, "client.example");
    assert_eq!(submission.client.protocol, "ESMTP");
    assert_eq!(
        submission.metadata.get("listener").map(String::as_str),
        Some("test")
    );
    assert!(!submission.smtputf8);

    client.expect("QUIT", "221 2.0.0").await;
    client.expect_closed().await;
    assert!(matches!(client.end().await, End::Quit));
}

#[tokio::test]
async fn large_message_is_streamed_in_bounded_chunks() {
    let mut cleanup = FakeCleanup::start(Behaviour::Queue);
    let mut client = Client::connect(settings(cleanup.socket.clone())).await;
    client.start_message().await;
    let line = format!(".{}\r\n", "x".repeat(98));
    let mut expected = Vec::new();
    for _ in 0..3000 {
        client.send(line.as_bytes()).await;
        expected.extend_from_slice(&line.as_bytes()[1..]);
    }
    client.send(b".\r\n").await;
    assert!(client.reply().await.starts_with("250 2.0.0 Ok: queued as "));
    let record = cleanup.next().await;
    assert_eq!(record.content.len(), expected.len());
    assert!(record.content == expected, "content differs");
    assert!(record.chunk_sizes.len() > 1);
    assert!(
        record
            .chunk_sizes
            .iter()
            .all(|&size| size <= empath_common::cleanup_client::CHUNK_SIZE)
    );
}

#[tokio::test]
async fn pipelined_commands_are_all_answered_in_order() {
    let mut cleanup = FakeCleanup::start(Behaviour::Queue);
    let mut client = Client::connect(settings(cleanup.socket.clone())).await;
    client
        .send(b"EHLO c\r\nMAIL FROM:<> BODY=8BITMIME\r\nRCPT TO:<x@y.example>\r\nRCPT TO:<z@y.example>\r\nDATA\r\n")
        .await;
    let ehlo = client.reply().await;
    assert_eq!(
        ehlo,
        "250-mx.example\n250-PIPELINING\n250-8BITMIME\n250-ENHANCEDSTATUSCODES\n\
         250-SMTPUTF8\n250-DSN\n250 CHUNKING"
    );
    assert!(client.reply().await.starts_with("250 2.1.0"));
    assert!(client.reply().await.starts_with("250 2.1.5"));
    assert!(client.reply().await.starts_with("250 2.1.5"));
    assert!(client.reply().await.starts_with("354 "));
    // The command after the end marker arrives in the same write.
    client.send(b"hello\r\n.\r\nQUIT\r\n").await;
    assert!(client.reply().await.starts_with("250 2.0.0 Ok: queued as "));
    assert_eq!(client.reply().await, "221 2.0.0 Bye");
    let record = cleanup.next().await;
    assert_eq!(record.content, b"hello\r\n");
    let submission = record.submission.unwrap_or_else(|| panic!("no Begin"));
    assert_eq!(submission.sender, "");
    assert_eq!(submission.recipients.len(), 2);
}

#[tokio::test]
async fn several_transactions_in_one_session() {
    let mut cleanup = FakeCleanup::start(Behaviour::Queue);
    let mut client = Client::connect(settings(cleanup.socket.clone())).await;
    client.expect("HELO old.example", "250 mx.example").await;
    for body in ["first", "second"] {
        client.expect("MAIL FROM:<a@a.example>", "250 ").await;
        client.expect("RCPT TO:<b@b.example>", "250 ").await;
        client.expect("DATA", "354 ").await;
        client
            .expect(&format!("{body}\r\n."), "250 2.0.0 Ok: queued")
            .await;
        let record = cleanup.next().await;
        assert_eq!(record.content, format!("{body}\r\n").as_bytes());
        let submission = record.submission.unwrap_or_else(|| panic!("no Begin"));
        assert_eq!(submission.client.protocol, "SMTP");
    }
    // The transaction ended with the message.
    client.expect("RCPT TO:<b@b.example>", "503 5.5.1").await;
}

#[tokio::test]
async fn cleanup_down_gets_451_and_never_250() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let mut client = Client::connect(settings(dir.path().join("missing.sock"))).await;
    client.expect("EHLO c", "250-").await;
    client.expect("MAIL FROM:<a@a.example>", "250 ").await;
    client.expect("RCPT TO:<b@b.example>", "250 ").await;
    client
        .expect("DATA", "451 4.3.0 Error: queue file write error")
        .await;
    // The transaction is over; a new one may start.
    client.expect("MAIL FROM:<a@a.example>", "250 ").await;
}

#[tokio::test]
async fn cleanup_breaking_off_gets_451() {
    let mut cleanup = FakeCleanup::start(Behaviour::CloseAfterBegin);
    let mut client = Client::connect(settings(cleanup.socket.clone())).await;
    client.start_message().await;
    // More than one chunk, so that some writes meet the closed socket.
    let big = "y".repeat(70) + "\r\n";
    for _ in 0..2000 {
        client.send(big.as_bytes()).await;
    }
    client.expect(".", "451 4.3.0").await;
    assert!(!cleanup.next().await.ended);
    client.expect("NOOP", "250 ").await;
}

#[tokio::test]
async fn cleanup_that_never_answers_gets_451() {
    let cleanup = FakeCleanup::start(Behaviour::Silent);
    let mut config = settings(cleanup.socket.clone());
    config.timeouts.data_termination = Duration::from_secs(1);
    let mut client = Client::connect(config).await;
    client.start_message().await;
    client.expect("body\r\n.", "451 4.3.0").await;
}

#[tokio::test]
async fn cleanup_rejection_is_passed_on() {
    let rejection = Reply::new(554, "5.7.1", "Message refused");
    let mut cleanup = FakeCleanup::start(Behaviour::Reject(rejection));
    let mut client = Client::connect(settings(cleanup.socket.clone())).await;
    client.start_message().await;
    client
        .expect("body\r\n.", "554 5.7.1 Message refused")
        .await;
    assert!(cleanup.next().await.ended);
}

#[tokio::test]
async fn out_of_order_commands_get_503() {
    let cleanup = FakeCleanup::start(Behaviour::Queue);
    let mut client = Client::connect(settings(cleanup.socket.clone())).await;
    client
        .expect(
            "MAIL FROM:<a@a.example>",
            "503 5.5.1 Error: send HELO/EHLO first",
        )
        .await;
    client.expect("EHLO c", "250-").await;
    client.expect("RCPT TO:<b@b.example>", "503 5.5.1").await;
    client.expect("DATA", "503 5.5.1").await;
    client.expect("MAIL FROM:<a@a.example>", "250 ").await;
    client
        .expect("DATA", "503 5.5.1 Error: need RCPT command")
        .await;
    client
        .expect(
            "MAIL FROM:<a@a.example>",
            "503 5.5.1 Error: nested MAIL command",
        )
        .await;
}

#[tokio::test]
async fn syntax_errors_and_other_commands() {
    let cleanup = FakeCleanup::start(Behaviour::Queue);
    let mut client = Client::connect(settings(cleanup.socket.clone())).await;
    client.expect("EHLO", "501 5.5.4").await;
    client.expect("EHLO c", "250-").await;
    client.expect("MAIL FROM:a@a.example", "501 5.1.7").await;
    client.expect("MAIL FROM:<a@a.example>", "250 ").await;
    client.expect("RCPT TO:<>", "501 5.1.3").await;
    client.expect("FROB", "500 5.5.1").await;
    client.expect("EXPN staff", "502 5.5.1").await;
    client
        .expect("VRFY bob", "252 2.5.2 Cannot VRFY user")
        .await;
    client.expect("HELP", "214 2.0.0").await;
    client.expect("NOOP", "250 2.0.0").await;
    client.expect("RSET", "250 2.0.0").await;
}

#[tokio::test]
async fn oversized_messages_get_552() {
    let mut cleanup = FakeCleanup::start(Behaviour::Queue);
    let mut config = settings(cleanup.socket.clone());
    config.size_limit = Some(100);
    let mut client = Client::connect(config).await;
    let ehlo = client.command("EHLO c").await;
    assert!(ehlo.contains("\n250-SIZE 100\n"), "{ehlo}");
    client
        .expect("MAIL FROM:<a@a.example> SIZE=101", "552 5.3.4")
        .await;
    client
        .expect("MAIL FROM:<a@a.example> SIZE=100", "250 ")
        .await;
    client.expect("RCPT TO:<b@b.example>", "250 ").await;
    client.expect("DATA", "354 ").await;
    client.send("z".repeat(150).as_bytes()).await;
    client
        .expect("\r\n.", "552 5.3.4 Message size exceeds fixed limit")
        .await;
    cleanup.nothing_queued().await;
    // The rest of the message was read, so commands work again.
    client.expect("NOOP", "250 ").await;
}

#[tokio::test]
async fn data_timeout_gets_421() {
    let mut cleanup = FakeCleanup::start(Behaviour::Queue);
    let mut config = settings(cleanup.socket.clone());
    config.timeouts.data_init = Duration::from_secs(1);
    let mut client = Client::connect(config).await;
    client.start_message().await;
    assert_eq!(
        client.reply().await,
        "421 4.4.2 mx.example Error: timeout exceeded"
    );
    client.expect_closed().await;
    assert!(matches!(client.end().await, End::Timeout));
    assert!(!cleanup.next().await.ended);
}

#[tokio::test]
async fn stalling_in_the_middle_of_data_gets_421() {
    let cleanup = FakeCleanup::start(Behaviour::Queue);
    let mut config = settings(cleanup.socket.clone());
    config.timeouts.data_block = Duration::from_secs(1);
    let mut client = Client::connect(config).await;
    client.start_message().await;
    client.send(b"Subject: partial\r\n").await;
    assert_eq!(
        client.reply().await,
        "421 4.4.2 mx.example Error: timeout exceeded"
    );
    client.expect_closed().await;
}

#[tokio::test]
async fn command_timeout_gets_421() {
    let cleanup = FakeCleanup::start(Behaviour::Queue);
    let mut config = settings(cleanup.socket.clone());
    config.timeouts.command = Duration::from_secs(1);
    let mut client = Client::connect(config).await;
    assert_eq!(
        client.reply().await,
        "421 4.4.2 mx.example Error: timeout exceeded"
    );
    client.expect_closed().await;
}

#[tokio::test]
async fn session_deadline_gets_421() {
    let cleanup = FakeCleanup::start(Behaviour::Queue);
    let mut config = settings(cleanup.socket.clone());
    config.timeouts.connection = Duration::from_secs(1);
    let mut client = Client::connect(config).await;
    client.expect("NOOP", "250 ").await;
    assert_eq!(
        client.reply().await,
        "421 4.4.2 mx.example Error: timeout exceeded"
    );
}

#[tokio::test]
async fn overlong_command_line_gets_500() {
    let cleanup = FakeCleanup::start(Behaviour::Queue);
    let mut client = Client::connect(settings(cleanup.socket.clone())).await;
    let long = format!("NOOP {}", "a".repeat(2000));
    client.expect(&long, "500 5.5.2 Error: line too long").await;
    client.expect("NOOP", "250 2.0.0").await;
}

#[tokio::test]
async fn too_many_errors_close_the_session() {
    let cleanup = FakeCleanup::start(Behaviour::Queue);
    let mut client = Client::connect(settings(cleanup.socket.clone())).await;
    for _ in 0..20 {
        client.expect("BOGUS", "500 5.5.1").await;
    }
    assert_eq!(
        client.reply().await,
        "421 4.7.0 mx.example Error: too many errors"
    );
    client.expect_closed().await;
    assert!(matches!(client.end().await, End::TooManyErrors));
}

#[tokio::test]
async fn client_disconnect_mid_message_abandons_the_submission() {
    let mut cleanup = FakeCleanup::start(Behaviour::Queue);
    let mut client = Client::connect(settings(cleanup.socket.clone())).await;
    client.start_message().await;
    client.send(b"Subject: cut\r\n").await;
    let _ = client.writer.shutdown().await;
    assert!(matches!(client.end().await, End::ClientClosed));
    assert!(!cleanup.next().await.ended);
}

#[tokio::test]
async fn bdat_chunks_are_taken_verbatim_and_pipelined() {
    let mut cleanup = FakeCleanup::start(Behaviour::Queue);
    let mut client = Client::connect(settings(cleanup.socket.clone())).await;
    client.expect("EHLO client.example", "250-mx.example").await;
    // The whole transaction pipelined; the chunk data is binary-exact,
    // with a line "." that DATA would take as the end.
    client
        .send(
            b"MAIL FROM:<alice@a.example> BODY=8BITMIME RET=FULL ENVID=e+2B1\r\n\
              RCPT TO:<bob@b.example> NOTIFY=SUCCESS ORCPT=rfc822;bob@b.example\r\n\
              BDAT 11\r\n.\r\nabc\r\n..\r\
              BDAT 3 LAST\r\n\nz\nNOOP\r\n",
        )
        .await;
    assert!(client.reply().await.starts_with("250 2.1.0"));
    assert!(client.reply().await.starts_with("250 2.1.5"));
    assert_eq!(client.reply().await, "250 2.0.0 Ok: 11 octets received");
    assert!(client.reply().await.starts_with("250 2.0.0 Ok: queued as"));
    assert!(client.reply().await.starts_with("250 2.0.0"), "NOOP");
    let recorded = cleanup.next().await;
    assert_eq!(recorded.content, b".\r\nabc\r\n..\r\nz\n");
    let submission = recorded.submission.unwrap_or_else(|| panic!("no Begin"));
    assert_eq!(submission.dsn.envid.as_deref(), Some("e+1"));
    assert_eq!(submission.dsn.ret, Some(empath_common::queue::Ret::Full));
    assert!(submission.recipients[0].notify.success);
    assert_eq!(
        submission.recipients[0].orcpt.as_deref(),
        Some("rfc822;bob@b.example")
    );
    assert_eq!(
        submission.metadata.get("listener").map(String::as_str),
        Some("test")
    );
    client.expect("DATA", "503").await;
    client.expect("QUIT", "221").await;
}

#[tokio::test]
async fn bdat_over_the_size_limit_gets_552_and_its_data_is_skipped() {
    let mut cleanup = FakeCleanup::start(Behaviour::Queue);
    let mut settings = settings(cleanup.socket.clone());
    settings.size_limit = Some(5);
    let mut client = Client::connect(settings).await;
    client.expect("EHLO client.example", "250-mx.example").await;
    client.expect("MAIL FROM:<alice@a.example>", "250").await;
    client.expect("RCPT TO:<bob@b.example>", "250").await;
    client.send(b"BDAT 8 LAST\r\nQUIT\r\nxx").await;
    assert!(client.reply().await.starts_with("552 5.3.4"));
    cleanup.nothing_queued().await;
    // The 8 octets were data, not a QUIT.
    client.send(b"BDAT 2 LAST\r\nab").await;
    assert!(client.reply().await.starts_with("503"));
    client.expect("NOOP", "250").await;
}

#[tokio::test]
async fn auth_plain_and_login_when_allowed_without_tls() {
    let cleanup = FakeCleanup::start(Behaviour::Queue);
    let mut settings = settings(cleanup.socket.clone());
    let hash = bcrypt::hash("secret", 4).unwrap_or_default();
    let config = empath_common::config::SmtpdAuth {
        users: [("bob".to_owned(), hash)].into(),
        allow_insecure: true,
        max_failures: 3,
        ..Default::default()
    };
    settings.auth = crate::auth::AuthState::new(&config);
    let mut client = Client::connect(settings.clone()).await;
    let ehlo = client.command("EHLO client.example").await;
    assert!(ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo}");
    let wrong = crate::auth::encode("\0bob\0wrong");
    client
        .expect(&format!("AUTH PLAIN {wrong}"), "535 5.7.8")
        .await;
    client.expect("AUTH LOGIN", "334 VXNlcm5hbWU6").await;
    client
        .expect(&crate::auth::encode("bob"), "334 UGFzc3dvcmQ6")
        .await;
    client
        .expect(&crate::auth::encode("secret"), "235 2.7.0")
        .await;
    client.expect("AUTH LOGIN", "503").await;
    client.expect("QUIT", "221").await;

    // Three failures from this address: the next AUTH is refused.
    let mut client = Client::connect(settings).await;
    client.expect("EHLO client.example", "250").await;
    client.expect("AUTH PLAIN", "334").await;
    client.expect("*", "501 5.0.0").await;
    client.expect("AUTH PLAIN", "334").await;
    client.expect(&wrong, "535").await;
    client.expect(&format!("AUTH PLAIN {wrong}"), "535").await;
    client.expect("AUTH PLAIN", "421 4.7.0").await;
    client.expect_closed().await;
}

#[tokio::test]
async fn a_client_dripping_data_is_cut_off_at_data_block() {
    let mut cleanup = FakeCleanup::start(Behaviour::Queue);
    let mut settings = settings(cleanup.socket.clone());
    settings.timeouts.data_block = Duration::from_millis(500);
    let mut client = Client::connect(settings).await;
    client.start_message().await;
    // One byte every 200 ms: each read comes well within data_block, but
    // no line ever ends.
    for byte in b"Subject: slow" {
        client.send(&[*byte]).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        if client.server.is_finished() {
            break;
        }
    }
    assert_eq!(
        client.reply().await,
        "421 4.4.2 mx.example Error: timeout exceeded"
    );
    assert!(matches!(client.end().await, End::Timeout));
    assert!(!cleanup.next().await.ended);
}

/// A policy module in C, written the original Empath's way and built
/// with gcc: refuses clients from 192.0.2.99 at Connect, EHLO
/// bad.example, the recipient nobody@b.example at RcptTo, and messages
/// that contain "VIRUS" at Data; sets metadata at Connect and MailFrom.
const POLICY_MODULE: &str = r#"
#include <string.h>
#include "empath.h"
static int validate_connect(Context *ctx) {
    em_context_set_metadata(ctx, "seen_at_connect", "yes");
    String client = em_context_get_client_address(ctx);
    int refuse = strcmp(client.data, "192.0.2.99") == 0;
    em_free_string(client);
    if (refuse)
        em_context_set_response(ctx, 554, "go away");
    return refuse;
}
static int validate_ehlo(Context *ctx) {
    String name = em_context_get_helo(ctx);
    int refuse = strcmp(name.data, "bad.example") == 0;
    em_free_string(name);
    if (refuse)
        em_context_set_response(ctx, 550, "5.7.1 not you");
    return refuse;
}
static int validate_mail_from(Context *ctx) {
    String sender = em_context_get_sender(ctx);
    em_context_set_metadata(ctx, "tx_sender", sender.data);
    em_free_string(sender);
    return 0;
}
static int validate_rcpt_to(Context *ctx) {
    StringVector recipients = em_context_get_recipients(ctx);
    int refuse = recipients.len > 0 && strcmp(recipients.data[recipients.len - 1].data, "nobody@b.example") == 0;
    em_free_string_vector(recipients);
    if (refuse)
        em_context_set_response(ctx, 550, "5.1.1 no such user");
    return refuse;
}
static int validate_data(Context *ctx) {
    String data = em_context_get_data(ctx);
    int refuse = strstr(data.data, "VIRUS") != NULL;
    em_free_string(data);
    if (refuse)
        em_context_set_response(ctx, 554, "5.7.1 infected");
    return refuse;
}
static int init(StringVector arguments) { (void)arguments; return 0; }
EM_DECLARE_MODULE(Validation, .validation_listener = {
    "policy", init,
    {.validate_connect = validate_connect, .validate_ehlo = validate_ehlo,
     .validate_mail_from = validate_mail_from, .validate_rcpt_to = validate_rcpt_to,
     .validate_data = validate_data}});
"#;

/// Settings with [`POLICY_MODULE`] loaded; keep the dir while they live.
fn settings_with_policy(cleanup_socket: PathBuf) -> (Settings, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let source = dir.path().join("policy.c");
    let library = dir.path().join("libpolicy.so");
    std::fs::write(&source, POLICY_MODULE).unwrap_or_else(|e| panic!("write: {e}"));
    let include = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../modules/include");
    let lib = empath_modules::built_libempath_dir()
        .unwrap_or_else(|| panic!("cargo built libempath.so (dev-dependency empath-ffi)"));
    let status = std::process::Command::new("gcc")
        .args(empath_modules::GCC_FLAGS)
        .arg("-I")
        .arg(include)
        .arg(&source)
        .arg("-L")
        .arg(&lib)
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-lempath")
        .arg("-o")
        .arg(&library)
        .status()
        .unwrap_or_else(|e| panic!("gcc: {e}"));
    assert!(status.success(), "gcc failed");
    let modules = empath_modules::Modules::load([(library.as_path(), &[][..])])
        .unwrap_or_else(|e| panic!("{e}"));
    let mut settings = settings(cleanup_socket);
    settings.modules = Arc::new(modules);
    (settings, dir)
}

#[tokio::test]
async fn modules_refuse_recipients_and_content_and_tag_the_submission() {
    let mut cleanup = FakeCleanup::start(Behaviour::Queue);
    let (settings, _dir) = settings_with_policy(cleanup.socket.clone());
    let mut client = Client::connect(settings).await;
    // A refused EHLO leaves the client ungreeted.
    assert_eq!(
        client.command("EHLO bad.example").await,
        "550 5.7.1 not you"
    );
    client.expect("MAIL FROM:<alice@a.example>", "503").await;
    client.expect("EHLO client.example", "250-mx.example").await;
    client
        .expect("MAIL FROM:<alice@a.example>", "250 2.1.0")
        .await;
    assert_eq!(
        client.command("RCPT TO:<nobody@b.example>").await,
        "550 5.1.1 no such user"
    );
    client.expect("RCPT TO:<bob@b.example>", "250 2.1.5").await;
    client.expect("DATA", "354").await;
    client.send(b"Subject: clean\r\n\r\nfine\r\n.\r\n").await;
    assert!(client.reply().await.starts_with("250 2.0.0 Ok: queued as"));
    let record = cleanup.next().await;
    let submission = record.submission.unwrap_or_else(|| panic!("no Begin"));
    let recipients: Vec<&str> = submission
        .recipients
        .iter()
        .map(|r| r.address.as_str())
        .collect();
    assert_eq!(recipients, ["bob@b.example"], "the refused one is not kept");
    let metadata: Vec<(&str, &str)> = submission
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        metadata,
        [
            ("listener", "test"),
            ("seen_at_connect", "yes"),
            ("tx_sender", "alice@a.example")
        ]
    );

    // Refused content: nothing is queued.
    client.expect("MAIL FROM:<carol@a.example>", "250").await;
    client.expect("RCPT TO:<bob@b.example>", "250").await;
    client.expect("DATA", "354").await;
    client.send(b"Subject: bad\r\n\r\nVIRUS\r\n.\r\n").await;
    assert_eq!(client.reply().await, "554 5.7.1 infected");
    cleanup.nothing_queued().await;
    // The same with BDAT.
    client.expect("MAIL FROM:<carol@a.example>", "250").await;
    client.expect("RCPT TO:<bob@b.example>", "250").await;
    client.send(b"BDAT 5 LAST\r\nVIRUS").await;
    assert_eq!(client.reply().await, "554 5.7.1 infected");
    cleanup.nothing_queued().await;

    // What MAIL set belongs to its transaction only.
    client.expect("MAIL FROM:<dave@a.example>", "250").await;
    client.expect("RSET", "250").await;
    client.expect("MAIL FROM:<erin@a.example>", "250").await;
    client.expect("RCPT TO:<bob@b.example>", "250").await;
    client.send(b"BDAT 2 LAST\r\nok").await;
    assert!(client.reply().await.starts_with("250 2.0.0 Ok: queued as"));
    let submission = cleanup
        .next()
        .await
        .submission
        .unwrap_or_else(|| panic!("no Begin"));
    assert_eq!(
        submission.metadata.get("tx_sender").map(String::as_str),
        Some("erin@a.example")
    );
    client.expect("QUIT", "221").await;
}

#[tokio::test]
async fn a_module_refusing_the_client_replaces_the_greeting() {
    let cleanup = FakeCleanup::start(Behaviour::Queue);
    let (settings, _dir) = settings_with_policy(cleanup.socket.clone());
    let (client, server) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(serve(
        server,
        "192.0.2.99:4000".to_owned(),
        Arc::new(settings),
    ));
    let (reader, writer) = tokio::io::split(client);
    let mut client = Client {
        reader: BufReader::new(reader),
        writer,
        server,
    };
    assert_eq!(client.reply().await, "554 5.7.1 go away");
    client.expect_closed().await;
    assert!(matches!(client.end().await, End::RejectedByModule));
}
