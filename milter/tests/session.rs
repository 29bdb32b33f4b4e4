//! The async session against a milter played by the test: a task on a
//! loopback or Unix socket that records every packet and answers from a
//! script.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use empath_common::config::{DefaultAction, MilterAddress};
use empath_common::edits::Edit;
use empath_common::smtp::Reply;
use empath_milter::protocol::{self, Command, Negotiation, Response, flag};
use empath_milter::{Client, Macros, MilterSettings, Milters, Verdict};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the fake milter does after a packet: answer, or wait a while.
enum Step {
    Answer(Response),
    Wait(Duration),
}

impl From<Response> for Step {
    fn from(response: Response) -> Self {
        Self::Answer(response)
    }
}

type Script = Box<dyn FnMut(&Command) -> Vec<Step> + Send>;

fn answers(responses: Vec<Response>) -> Vec<Step> {
    responses.into_iter().map(Step::from).collect()
}

/// What the fake milter saw.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<Command>>>);

impl Seen {
    fn commands(&self) -> Vec<Command> {
        self.0.lock().unwrap().clone()
    }
    fn codes(&self) -> String {
        self.commands()
            .iter()
            .map(|c| char::from(c.code()))
            .collect()
    }
}

fn negotiation(protocol: u32, macros: Vec<(protocol::MacroStage, String)>) -> Response {
    Response::Negotiate(Negotiation {
        version: 6,
        actions: protocol::action::ALL,
        protocol,
        macros,
    })
}

/// Starts a milter on 127.0.0.1 that serves one connection.
async fn fake_milter(mut script: Script) -> (MilterAddress, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Seen::default();
    let record = seen.clone();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        loop {
            let Ok(length) = stream.read_u32().await else {
                return;
            };
            let mut packet = vec![0; length as usize];
            if stream.read_exact(&mut packet).await.is_err() {
                return;
            }
            let command = Command::decode(packet[0], &packet[1..]).unwrap();
            record.0.lock().unwrap().push(command.clone());
            for step in script(&command) {
                match step {
                    Step::Answer(response) => {
                        if stream.write_all(&response.encode()).await.is_err() {
                            return;
                        }
                    }
                    Step::Wait(pause) => tokio::time::sleep(pause).await,
                }
            }
        }
    });
    (
        MilterAddress::Inet {
            host: "127.0.0.1".into(),
            port,
        },
        seen,
    )
}

fn settings(address: MilterAddress, default_action: DefaultAction) -> Arc<MilterSettings> {
    Arc::new(MilterSettings {
        address,
        connect_timeout: Duration::from_secs(2),
        command_timeout: Duration::from_secs(2),
        content_timeout: Duration::from_secs(2),
        default_action,
    })
}

fn client() -> Client {
    Client {
        name: None,
        address: Some("192.0.2.7:4321".parse().unwrap()),
    }
}

fn macros() -> Macros {
    let mut macros = Macros::new();
    macros.set("j", "mx.example.org");
    macros.set("i", "01QUEUEID");
    macros.set("{auth_authen}", "alice");
    macros
}

const MESSAGE: &[u8] = b"From: a@example.org\r\nSubject: hi\r\n there\r\n\r\nbody\r\n";

#[tokio::test]
async fn every_stage_goes_to_the_milter_with_its_macros() {
    let script: Script = Box::new(|command| match command {
        Command::Negotiate(_) => answers(vec![negotiation(
            flag::NR_HDR,
            vec![(protocol::MacroStage::Mail, "{auth_authen} i".into())],
        )]),
        Command::Macros { .. } | Command::Header { .. } => answers(vec![]),
        _ => answers(vec![Response::Continue]),
    });
    let (address, seen) = fake_milter(script).await;
    let mut milters = Milters::new(&[settings(address, DefaultAction::Tempfail)]);
    let macros = macros();
    assert_eq!(milters.connect(&client(), &macros).await, Verdict::Continue);
    assert_eq!(
        milters.helo("client.example", &macros).await,
        Verdict::Continue
    );
    let mail = vec!["<a@example.org>".to_owned(), "SIZE=100".to_owned()];
    assert_eq!(milters.mail(&mail, &macros).await, Verdict::Continue);
    assert_eq!(
        milters.rcpt(&["<b@example.com>".to_owned()], &macros).await,
        Verdict::Continue
    );
    assert_eq!(milters.data(&macros).await, Verdict::Continue);
    let (verdict, edits) = milters.message(MESSAGE, &macros).await;
    assert_eq!((verdict, edits), (Verdict::Continue, vec![]));
    milters.quit().await;
    tokio::time::sleep(Duration::from_millis(50)).await;

    let commands = seen.commands();
    assert_eq!(seen.codes(), "ODCHDMDRDTDLDLDNDBDEQ", "{commands:?}");
    assert!(matches!(&commands[0], Command::Negotiate(n) if n.version == 6));
    assert_eq!(
        commands[2],
        Command::Connect {
            hostname: "[192.0.2.7]".into(),
            family: protocol::Family::Inet,
            port: 4321,
            address: "192.0.2.7".into()
        }
    );
    // The milter's own list for MAIL, in its spelling.
    assert_eq!(
        commands[4],
        Command::Macros {
            event: b'M',
            pairs: vec![
                ("{auth_authen}".into(), "alice".into()),
                ("i".into(), "01QUEUEID".into())
            ]
        }
    );
    assert_eq!(commands[5], Command::Mail(mail));
    // Headers without the space after the colon, folding as newlines.
    assert_eq!(
        commands[13],
        Command::Header {
            name: "Subject".into(),
            value: b"hi\n there".to_vec()
        }
    );
    assert_eq!(commands[17], Command::Body(b"body\r\n".to_vec()));
}

#[tokio::test]
async fn end_of_message_brings_every_modification() {
    let script: Script = Box::new(|command| match command {
        Command::Negotiate(_) => answers(vec![negotiation(
            flag::NOHELO | flag::NR_CONN | flag::NR_MAIL | flag::NR_RCPT,
            vec![],
        )]),
        Command::EndOfBody => answers(vec![
            Response::Progress,
            Response::AddHeader {
                name: "X-Added".into(),
                value: b"yes".to_vec(),
            },
            Response::InsertHeader {
                index: 0,
                name: "X-Top".into(),
                value: b"first".to_vec(),
            },
            Response::ChangeHeader {
                index: 1,
                name: "Subject".into(),
                value: b"changed".to_vec(),
            },
            Response::ChangeHeader {
                index: 1,
                name: "X-Gone".into(),
                value: Vec::new(),
            },
            Response::ReplaceBody(b"new ".to_vec()),
            Response::ReplaceBody(b"body\r\n".to_vec()),
            Response::AddRecipient("<c@example.com>".into()),
            Response::AddRecipientWithParameters {
                address: "<d@example.com>".into(),
                parameters: "NOTIFY=NEVER".into(),
            },
            Response::DeleteRecipient("<b@example.com>".into()),
            Response::ChangeSender {
                address: "<bounces@example.org>".into(),
                parameters: String::new(),
            },
            Response::Quarantine("looks odd".into()),
            Response::Continue,
        ]),
        Command::Macros { .. } => answers(vec![]),
        Command::Connect { .. } | Command::Mail(_) | Command::Rcpt(_) => answers(vec![]),
        _ => answers(vec![Response::Continue]),
    });
    let (address, seen) = fake_milter(script).await;
    let mut milters = Milters::new(&[settings(address, DefaultAction::Tempfail)]);
    let macros = macros();
    assert!(milters.connect(&client(), &macros).await.is_continue());
    assert!(milters.helo("h", &macros).await.is_continue());
    assert!(
        milters
            .mail(&["<a@example.org>".into()], &macros)
            .await
            .is_continue()
    );
    assert!(
        milters
            .rcpt(&["<b@example.com>".into()], &macros)
            .await
            .is_continue()
    );
    let (verdict, edits) = milters.message(MESSAGE, &macros).await;
    assert_eq!(verdict, Verdict::Continue);
    assert_eq!(
        edits,
        vec![
            Edit::Quarantine {
                reason: "looks odd".into()
            },
            Edit::AddHeader {
                name: "X-Added".into(),
                value: b" yes".to_vec()
            },
            Edit::InsertHeader {
                index: 0,
                name: "X-Top".into(),
                value: b" first".to_vec()
            },
            Edit::ChangeHeader {
                name: "Subject".into(),
                occurrence: 1,
                value: b" changed".to_vec()
            },
            Edit::DeleteHeader {
                name: "X-Gone".into(),
                occurrence: 1
            },
            Edit::AddRecipient {
                address: "<c@example.com>".into(),
                parameters: String::new()
            },
            Edit::AddRecipient {
                address: "<d@example.com>".into(),
                parameters: "NOTIFY=NEVER".into()
            },
            Edit::DeleteRecipient {
                address: "<b@example.com>".into()
            },
            Edit::ChangeSender {
                address: "<bounces@example.org>".into(),
                parameters: String::new()
            },
            Edit::ReplaceBody {
                body: b"new body\r\n".to_vec()
            },
        ]
    );
    // No HELO was sent: the milter did not want it.
    assert!(!seen.codes().contains('H'), "{}", seen.codes());
}

#[tokio::test]
async fn rejections_carry_the_milters_reply_text() {
    let script: Script = Box::new(|command| match command {
        Command::Negotiate(_) => answers(vec![negotiation(0, vec![])]),
        Command::Rcpt(args) if args[0] == "<spam@example.com>" => {
            answers(vec![Response::ReplyCode(
                b"550 5.1.1 No such user here".to_vec(),
            )])
        }
        Command::EndOfBody => answers(vec![Response::ReplyCode(
            b"554-5.7.1 Gtube pattern\r\n554 5.7.1 100%% spam".to_vec(),
        )]),
        Command::Macros { .. } => answers(vec![]),
        _ => answers(vec![Response::Continue]),
    });
    let (address, _seen) = fake_milter(script).await;
    let mut milters = Milters::new(&[settings(address, DefaultAction::Accept)]);
    let macros = macros();
    assert!(milters.connect(&client(), &macros).await.is_continue());
    assert!(
        milters
            .mail(&["<a@example.org>".into()], &macros)
            .await
            .is_continue()
    );
    assert_eq!(
        milters.rcpt(&["<spam@example.com>".into()], &macros).await,
        Verdict::Reject(Reply::new(550, "5.1.1", "No such user here"))
    );
    assert!(
        milters
            .rcpt(&["<ok@example.com>".into()], &macros)
            .await
            .is_continue()
    );
    let (verdict, edits) = milters.message(MESSAGE, &macros).await;
    assert_eq!(
        verdict,
        Verdict::Reject(Reply::new(554, "5.7.1", "Gtube pattern\n100% spam"))
    );
    assert!(edits.is_empty());
}

#[tokio::test]
async fn a_dead_milter_gets_the_default_action_every_time() {
    // A port with nothing listening.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let dead = MilterAddress::Inet {
        host: "127.0.0.1".into(),
        port,
    };
    let macros = macros();
    let tempfail = Reply::new(451, "4.7.1", "Service unavailable - try again later");
    let mut milters = Milters::new(&[settings(dead.clone(), DefaultAction::Tempfail)]);
    assert_eq!(
        milters.connect(&client(), &macros).await,
        Verdict::Reject(tempfail.clone())
    );
    assert_eq!(
        milters.mail(&["<a@b>".into()], &macros).await,
        Verdict::Reject(tempfail)
    );
    let mut milters = Milters::new(&[settings(dead.clone(), DefaultAction::Reject)]);
    assert_eq!(
        milters.connect(&client(), &macros).await,
        Verdict::Reject(Reply::new(550, "5.5.0", "Service unavailable"))
    );
    let mut milters = Milters::new(&[settings(dead, DefaultAction::Accept)]);
    assert!(milters.connect(&client(), &macros).await.is_continue());
    assert!(milters.message(MESSAGE, &macros).await.0.is_continue());
}

#[tokio::test]
async fn a_silent_milter_times_out_and_a_busy_one_keeps_alive() {
    let script: Script = Box::new(|command| match command {
        Command::Negotiate(_) => answers(vec![negotiation(0, vec![])]),
        // Never answers the end of the body.
        Command::EndOfBody | Command::Macros { .. } => answers(vec![]),
        _ => answers(vec![Response::Continue]),
    });
    let (address, _seen) = fake_milter(script).await;
    let mut impatient = (*settings(address, DefaultAction::Tempfail)).clone();
    impatient.content_timeout = Duration::from_millis(300);
    let mut milters = Milters::new(&[Arc::new(impatient)]);
    let macros = macros();
    assert!(milters.connect(&client(), &macros).await.is_continue());
    let started = Instant::now();
    let (verdict, _) = milters.message(MESSAGE, &macros).await;
    let waited = started.elapsed();
    assert!(
        matches!(verdict, Verdict::Reject(ref r) if r.code == 451),
        "{verdict:?}"
    );
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(2),
        "{waited:?}"
    );

    // A milter that works for 800 ms but says "progress" every 200 ms
    // stays within a 300 ms timeout; one that is silent as long does not.
    for (keepalive, expect_continue) in [(true, true), (false, false)] {
        let script: Script = Box::new(move |command| match command {
            Command::Negotiate(_) => answers(vec![negotiation(0, vec![])]),
            Command::EndOfBody if keepalive => {
                let mut steps = Vec::new();
                for _ in 0..4 {
                    steps.push(Step::Wait(Duration::from_millis(200)));
                    steps.push(Step::Answer(Response::Progress));
                }
                steps.push(Step::Answer(Response::Continue));
                steps
            }
            Command::EndOfBody => vec![
                Step::Wait(Duration::from_millis(800)),
                Step::Answer(Response::Continue),
            ],
            Command::Macros { .. } => vec![],
            _ => answers(vec![Response::Continue]),
        });
        let (address, _seen) = fake_milter(script).await;
        let mut impatient = (*settings(address, DefaultAction::Tempfail)).clone();
        impatient.content_timeout = Duration::from_millis(300);
        let mut milters = Milters::new(&[Arc::new(impatient)]);
        assert!(milters.connect(&client(), &macros).await.is_continue());
        let (verdict, _) = milters.message(MESSAGE, &macros).await;
        assert_eq!(
            verdict.is_continue(),
            expect_continue,
            "keepalive {keepalive}: {verdict:?}"
        );
    }
}

#[tokio::test]
async fn a_second_milter_sees_what_the_first_changed_and_a_unix_socket_works() {
    let first: Script = Box::new(|command| match command {
        Command::Negotiate(_) => answers(vec![negotiation(0, vec![])]),
        Command::EndOfBody => answers(vec![
            Response::AddHeader {
                name: "X-First".into(),
                value: b"was here".to_vec(),
            },
            Response::Continue,
        ]),
        Command::Macros { .. } => vec![],
        _ => answers(vec![Response::Continue]),
    });
    let (first_address, _) = fake_milter(first).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("milter.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let headers = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&headers);
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        loop {
            let Ok(length) = stream.read_u32().await else {
                return;
            };
            let mut packet = vec![0; length as usize];
            if stream.read_exact(&mut packet).await.is_err() {
                return;
            }
            let command = Command::decode(packet[0], &packet[1..]).unwrap();
            let answer = match &command {
                Command::Negotiate(_) => Some(negotiation(0, vec![])),
                Command::Header { name, .. } => {
                    record.lock().unwrap().push(name.clone());
                    Some(Response::Continue)
                }
                Command::Macros { .. } | Command::Quit => None,
                _ => Some(Response::Continue),
            };
            if let Some(answer) = answer
                && stream.write_all(&answer.encode()).await.is_err()
            {
                return;
            }
        }
    });
    let mut milters = Milters::new(&[
        settings(first_address, DefaultAction::Tempfail),
        settings(MilterAddress::Unix(path), DefaultAction::Tempfail),
    ]);
    let macros = macros();
    assert!(milters.connect(&client(), &macros).await.is_continue());
    let (verdict, edits) = milters.message(MESSAGE, &macros).await;
    assert!(verdict.is_continue());
    assert_eq!(edits.len(), 1);
    assert_eq!(*headers.lock().unwrap(), ["From", "Subject", "X-First"]);
}
