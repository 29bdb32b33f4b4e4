//! Property tests ("fuzzing" on stable Rust) for the pure parts of smtpd
//! that see raw client bytes: the command parser and the DATA decoder.
//!
//! Properties:
//! - `parse_command` never panics, on random bytes or on valid commands
//!   with mutations (bytes flipped, inserted, cut);
//! - valid MAIL/RCPT commands parse to the address that was sent, in any
//!   letter case and with a CRLF, LF or no line ending;
//! - the DATA decoder never panics, never writes more than twice its
//!   input, and gives the same result however the input is split;
//! - dot-stuffed content followed by `<CRLF>.<CRLF>` decodes to exactly
//!   the original, and the bytes after the end marker are left alone.
//!
//! Run longer with `PROPTEST_CASES=100000 cargo test -p empath-smtpd --test props_parser`.

use empath_smtpd::data_decoder::DataDecoder;
use empath_smtpd::parser::{Command, ForwardPath, parse_command};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

fn config(default_cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    ProptestConfig::with_cases(cases)
}

/// A simple, valid mailbox: dot-atom local part at a domain.
fn mailbox() -> impl Strategy<Value = String> {
    (
        "[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,20}(\\.[A-Za-z0-9_-]{1,10}){0,2}",
        "[a-z0-9]{1,15}(\\.[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?){0,3}\\.[a-z]{2,6}",
    )
        .prop_map(|(local, domain)| format!("{local}@{domain}"))
}

/// A command as a client would send it.
fn valid_command() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9.-]{1,30}".prop_map(|d| format!("EHLO {d}")),
        "[a-z0-9.-]{1,30}".prop_map(|d| format!("HELO {d}")),
        mailbox().prop_map(|a| format!("MAIL FROM:<{a}>")),
        mailbox().prop_map(|a| format!("MAIL FROM:<{a}> SIZE=1000 BODY=8BITMIME")),
        Just("MAIL FROM:<>".to_owned()),
        mailbox().prop_map(|a| format!("RCPT TO:<{a}>")),
        // ORCPT is xtext, where `=` and `+` must be encoded: keep it plain.
        mailbox()
            .prop_map(|a| format!("RCPT TO:<{a}> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;u@x.example")),
        Just("RCPT TO:<Postmaster>".to_owned()),
        Just("DATA".to_owned()),
        Just("RSET".to_owned()),
        Just("NOOP".to_owned()),
        Just("QUIT".to_owned()),
        Just("HELP".to_owned()),
        Just("STARTTLS".to_owned()),
        Just("AUTH PLAIN dGVzdAB0ZXN0AHRlc3Q=".to_owned()),
        Just("BDAT 100 LAST".to_owned()),
        mailbox().prop_map(|a| format!("VRFY {a}")),
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(Index, u8),
    Insert(Index, u8),
    Remove(Index),
    Truncate(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip(at, bit)),
        (any::<Index>(), any::<u8>()).prop_map(|(at, b)| Mutation::Insert(at, b)),
        any::<Index>().prop_map(Mutation::Remove),
        any::<Index>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for mutation in mutations {
        match mutation {
            Mutation::Flip(at, bit) if !bytes.is_empty() => {
                let index = at.index(bytes.len());
                bytes[index] ^= 1 << bit;
            }
            Mutation::Insert(at, byte) => {
                let index = at.index(bytes.len() + 1);
                bytes.insert(index, *byte);
            }
            Mutation::Remove(at) if !bytes.is_empty() => {
                bytes.remove(at.index(bytes.len()));
            }
            Mutation::Truncate(at) => bytes.truncate(at.index(bytes.len() + 1)),
            _ => {}
        }
    }
    bytes
}

fn random_case(text: &str, upper: &[bool]) -> String {
    text.chars()
        .zip(upper.iter().cycle())
        .map(|(c, &up)| {
            if up {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

fn line_ending() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("\r\n"), Just("\n"), Just("")]
}

/// Decodes `input` fed in pieces cut at `cuts`; returns the content, the
/// bytes consumed and whether the end marker was seen.
fn decode_in_pieces(input: &[u8], cuts: &[Index]) -> (Vec<u8>, usize, bool) {
    let mut points: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
    points.push(0);
    points.push(input.len());
    points.sort_unstable();
    let mut decoder = DataDecoder::new();
    let mut out = Vec::new();
    let mut consumed = 0;
    for window in points.windows(2) {
        if decoder.is_finished() {
            break;
        }
        let piece = &input[window[0]..window[1]];
        let before = out.len();
        let decoded = decoder.feed(piece, &mut out);
        assert!(decoded.consumed <= piece.len());
        assert!(
            out.len() - before <= 2 * piece.len() + 2,
            "wrote {} bytes for a {}-byte piece",
            out.len() - before,
            piece.len()
        );
        consumed += decoded.consumed;
        if decoded.finished {
            break;
        }
    }
    (out, consumed, decoder.is_finished())
}

/// Dot-stuffs CRLF content for the wire and adds the end marker.
fn stuff(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 8);
    let mut at_line_start = true;
    for &byte in content {
        if at_line_start && byte == b'.' {
            out.push(b'.');
        }
        out.push(byte);
        at_line_start = byte == b'\n';
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// Content as the decoder produces it: CRLF-terminated lines without bare
/// CR or LF.
fn content() -> impl Strategy<Value = Vec<u8>> {
    let line = prop_oneof![
        vec(
            any::<u8>().prop_filter("no CR/LF", |b| *b != b'\r' && *b != b'\n'),
            0..80
        ),
        Just(b".".to_vec()),
        Just(b"..".to_vec()),
        Just(b". x".to_vec()),
        "\\.{1,3}[a-z ]{0,5}".prop_map(String::into_bytes),
    ];
    vec(line, 0..30).prop_map(|lines| {
        let mut out = Vec::new();
        for line in lines {
            out.extend_from_slice(&line);
            out.extend_from_slice(b"\r\n");
        }
        out
    })
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn parser_never_panics_on_random_bytes(line in vec(any::<u8>(), 0..600)) {
        let _ = parse_command(&line);
    }

    #[test]
    fn parser_never_panics_on_mutated_commands(
        command in valid_command(),
        mutations in vec(mutation(), 1..6),
    ) {
        let _ = parse_command(&mutate(command.into_bytes(), &mutations));
    }

    #[test]
    fn valid_commands_parse(command in valid_command(), ending in line_ending()) {
        let line = format!("{command}{ending}");
        prop_assert!(parse_command(line.as_bytes()).is_ok(), "{:?} was refused", line);
    }

    #[test]
    fn mail_from_gives_back_the_sender(
        address in mailbox(),
        upper in vec(any::<bool>(), 1..10),
        ending in line_ending(),
    ) {
        let verb = random_case("MAIL FROM:", &upper);
        let line = format!("{verb}<{address}>{ending}");
        match parse_command(line.as_bytes()) {
            Ok(Command::Mail { from, params }) => {
                prop_assert_eq!(from, address);
                prop_assert!(params.is_empty());
            }
            other => prop_assert!(false, "{:?} parsed as {:?}", line, other),
        }
    }

    #[test]
    fn rcpt_to_gives_back_the_recipient(address in mailbox(), upper in vec(any::<bool>(), 1..10)) {
        let verb = random_case("RCPT TO:", &upper);
        let line = format!("{verb}<{address}>\r\n");
        match parse_command(line.as_bytes()) {
            Ok(Command::Rcpt { to: ForwardPath::Mailbox(to), .. }) => prop_assert_eq!(to, address),
            other => prop_assert!(false, "{:?} parsed as {:?}", line, other),
        }
    }

    #[test]
    fn decoder_never_panics_and_splitting_does_not_matter(
        input in vec(prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'.'), any::<u8>()], 0..400),
        cuts in vec(any::<Index>(), 0..8),
    ) {
        let whole = decode_in_pieces(&input, &[]);
        let pieces = decode_in_pieces(&input, &cuts);
        prop_assert_eq!(whole, pieces);
    }

    #[test]
    fn stuffed_content_decodes_to_the_original(
        content in content(),
        next_command in "(QUIT|RSET|MAIL FROM:<a@b.c>)?\r\n",
        cuts in vec(any::<Index>(), 0..8),
    ) {
        let mut wire = stuff(&content);
        let end = wire.len();
        wire.extend_from_slice(next_command.as_bytes());
        let (decoded, consumed, finished) = decode_in_pieces(&wire, &cuts);
        prop_assert!(finished, "the end marker was not found");
        prop_assert_eq!(consumed, end, "the pipelined command was eaten");
        prop_assert_eq!(decoded, content);
    }
}
