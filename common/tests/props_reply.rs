//! Property tests for the SMTP reply parser that smtp-out uses on the
//! remote server's answers (`Reply::parse_lines`): it never panics on
//! hostile lines, and a reply survives `to_wire` and back.
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

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn parse_lines_never_panics(lines in vec(".{0,60}", 0..5)) {
        if let Some(reply) = Reply::parse_lines(&lines) {
            prop_assert!((200..600).contains(&reply.code));
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
        prop_assert_eq!(Reply::parse_lines(&received), Some(reply));
    }
}
