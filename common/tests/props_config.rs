//! Property tests for the config loader (`Config::parse`): whatever the
//! text, it returns a config or an error and never panics, and an error
//! in a syntactically broken file always says on which line.
//!
//! The inputs are random text and, more usefully, the user guide's full
//! example config with structure-aware mutations (a character range
//! deleted, random text inserted, a line duplicated or dropped, a value
//! replaced by another kind of value).
//!
//! Run longer with `PROPTEST_CASES=100000 cargo test -p empath-common --test props_config`.

use std::path::Path;

use empath_common::config::{Config, ConfigError};
use proptest::prelude::*;
use proptest::sample::Index;

fn config(default_cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    ProptestConfig::with_cases(cases)
}

const GUIDE: &str = include_str!("fixtures/guide.ron");
const PATH: &str = "empath.config.ron";

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new(PATH), text)
}

/// True if RON itself cannot read the text (whatever the schema says).
fn syntactically_broken(text: &str) -> bool {
    ron::Options::default()
        .with_default_extension(ron::extensions::Extensions::IMPLICIT_SOME)
        .from_str::<ron::Value>(text)
        .is_err()
}

/// Checks what every error must give an operator: the file, a line inside
/// the file (or just past its end, for an unexpected end of file) when it
/// has one, a message, and a line whenever the text is not even RON.
fn check_error(text: &str, error: &ConfigError) -> Result<(), TestCaseError> {
    prop_assert_eq!(&error.path, Path::new(PATH));
    prop_assert!(
        !error.message.trim().is_empty(),
        "empty message: {:?}",
        error
    );
    let lines = text.lines().count().max(1);
    if let Some(line) = error.line {
        prop_assert!(
            (1..=lines + 1).contains(&line),
            "line {} outside a {}-line file: {}",
            line,
            lines,
            error
        );
    }
    if syntactically_broken(text) {
        prop_assert!(
            error.line.is_some(),
            "syntax error without a line: {}",
            error
        );
    }
    Ok(())
}

#[derive(Debug, Clone)]
enum Mutation {
    DeleteRange(Index, usize),
    Insert(Index, String),
    DuplicateLine(Index),
    DropLine(Index),
    /// Replaces the value after a `key:` with another token.
    ReplaceValue(Index, String),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let token = prop_oneof![
        Just("\"\"".to_owned()),
        Just("-1".to_owned()),
        Just("99999999999999999999".to_owned()),
        Just("true".to_owned()),
        Just("None".to_owned()),
        Just("Some(".to_owned()),
        Just("[".to_owned()),
        Just("(".to_owned()),
        Just("{".to_owned()),
        Just("\"unterminated".to_owned()),
        Just("\"256.1.1.1:99999\"".to_owned()),
        Just("unknown_key: 1,".to_owned()),
        "[a-z_]{1,12}",
        ".{0,12}",
    ];
    prop_oneof![
        (any::<Index>(), 1usize..40).prop_map(|(at, len)| Mutation::DeleteRange(at, len)),
        (any::<Index>(), token.clone()).prop_map(|(at, s)| Mutation::Insert(at, s)),
        any::<Index>().prop_map(Mutation::DuplicateLine),
        any::<Index>().prop_map(Mutation::DropLine),
        (any::<Index>(), token).prop_map(|(at, s)| Mutation::ReplaceValue(at, s)),
    ]
}

/// The nearest char boundary at or before `index`.
fn floor_boundary(text: &str, mut index: usize) -> usize {
    index = index.min(text.len());
    while !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}

fn apply(text: &str, mutation: &Mutation) -> String {
    let mut lines: Vec<&str> = text.split_inclusive('\n').collect();
    match mutation {
        Mutation::DeleteRange(at, len) => {
            let start = floor_boundary(text, at.index(text.len()));
            let end = floor_boundary(text, start + len);
            format!("{}{}", &text[..start], &text[end..])
        }
        Mutation::Insert(at, insert) => {
            let at = floor_boundary(text, at.index(text.len()));
            format!("{}{insert}{}", &text[..at], &text[at..])
        }
        Mutation::DuplicateLine(at) => {
            let index = at.index(lines.len());
            lines.insert(index, lines[index]);
            lines.concat()
        }
        Mutation::DropLine(at) => {
            lines.remove(at.index(lines.len()));
            lines.concat()
        }
        Mutation::ReplaceValue(at, value) => {
            let index = at.index(lines.len());
            let line = lines[index];
            let Some(colon) = line.find(':') else {
                return text.to_owned();
            };
            let replaced = format!("{} {value},\n", &line[..=colon]);
            let mut out: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
            out[index] = replaced;
            out.concat()
        }
    }
}

#[test]
fn the_unmutated_guide_config_loads() {
    parse(GUIDE).unwrap_or_else(|e| panic!("{e}"));
    // Else the syntax property below would hold vacuously.
    assert!(!syntactically_broken(GUIDE));
}

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn random_text_never_panics(text in ".{0,300}") {
        if let Err(error) = parse(&text) {
            check_error(&text, &error)?;
        }
    }

    #[test]
    fn random_ron_like_text_never_panics(text in "[(){}\\[\\]:,\"a-z0-9_. \n]{0,200}") {
        let text = format!("Empath({text})");
        if let Err(error) = parse(&text) {
            check_error(&text, &error)?;
        }
    }

    #[test]
    fn mutated_guide_config_never_panics_and_errors_say_where(
        mutations in proptest::collection::vec(mutation(), 1..4),
    ) {
        let text = mutations.iter().fold(GUIDE.to_owned(), |text, m| apply(&text, m));
        if let Err(error) = parse(&text) {
            check_error(&text, &error)?;
        }
    }
}
