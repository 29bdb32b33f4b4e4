//! Property tests for the SMTP reply parser that smtp-out uses on the
//! remote server's answers (`Reply::parse_lines`): random byte lines never
//! parse into a reply that RFC 5321's grammar rejects (nor the other way
//! round), and a reply survives `to_wire` and back.
//!
//! Run longer with `PROPTEST_CASES=100000 cargo test -p empath-common --test props_reply`.

use empath_common::smtp::Reply;
use proptest::collection::vec;
use proptest::prelude::*;

fn config(default_cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    ProptestConfig::with_cases(cases)
}

/// Reply text lines that cannot be mistaken for an enhanced code.
fn text_line() -> impl Strategy<Value = String> {
    "[A-Za-z][A-Za-z0-9 .,:;<>@()-]{0,40}"
}

/// Lines built mostly from the bytes that matter to the grammar, so that
/// near misses (`2500`, `250\0`, `25`, `25-`) come up often.
fn line_bytes() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        4 => proptest::sample::select(b"0123456789".to_vec()),
        2 => Just(b' '),
        2 => Just(b'-'),
        1 => Just(0u8),
        1 => Just(b'\r'),
        1 => any::<u8>(),
    ];
    vec(byte, 0..8)
}

/// The reply code RFC 5321 section 4.2 gives these lines, or `None` when
/// they are not one reply: each line is three digits (the first 2 to 5)
/// followed by SP, `-` or nothing; all but the last continue with `-`;
/// all have the same code.
fn grammar_code(lines: &[String]) -> Option<u16> {
    let mut code = None;
    for (index, line) in lines.iter().enumerate() {
        let bytes = line.as_bytes();
        if bytes.len() < 3
            || !(b'2'..=b'5').contains(&bytes[0])
            || !bytes[1].is_ascii_digit()
            || !bytes[2].is_ascii_digit()
        {
            return None;
        }
        let continues = match bytes.get(3) {
            None | Some(b' ') => false,
            Some(b'-') => true,
            Some(_) => return None,
        };
        if continues != (index + 1 < lines.len()) {
            return None;
        }
        let this: u16 = line[..3].parse().ok()?;
        if code.is_some_and(|c| c != this) {
            return None;
        }
        code = Some(this);
    }
    code
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn parses_exactly_what_the_grammar_allows(lines in vec(line_bytes(), 0..5)) {
        // As smtp-out reads them: bytes, made text without failing.
        let lines: Vec<String> = lines
            .iter()
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect();
        let expected = grammar_code(&lines);
        match Reply::parse_lines(&lines) {
            Ok(reply) => prop_assert_eq!(Some(reply.code), expected, "{:?} parsed", lines),
            Err(_) => prop_assert_eq!(None, expected, "{:?} refused", lines),
        }
    }

    #[test]
    fn wire_round_trip(
        code in 200u16..600,
        detail in (0u8..8, 0u16..1000),
        with_enhanced in any::<bool>(),
        lines in vec(text_line(), 1..4),
    ) {
        let class = code / 100;
        let enhanced = format!("{class}.{}.{}", detail.0, detail.1);
        let reply = Reply::new(code, if with_enhanced { &enhanced } else { "" }, lines.join("\n"));
        let wire = reply.to_wire();
        let received: Vec<&str> = wire.split_terminator("\r\n").collect();
        prop_assert_eq!(Reply::parse_lines(&received), Ok(reply));
    }
}
