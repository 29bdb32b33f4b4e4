//! Properties of the message edits that milters and checks ask for:
//! header edits never touch the body, a value can never end the header
//! section or start a field of its own, and nothing panics.

use empath_common::edits::{Edit, apply_to_content, header_field};
use proptest::prelude::*;

fn name() -> impl Strategy<Value = String> {
    "[A-Za-z][A-Za-z0-9-]{0,12}"
}

fn header_edit() -> impl Strategy<Value = Edit> {
    let value = proptest::collection::vec(any::<u8>(), 0..40);
    prop_oneof![
        (name(), value.clone()).prop_map(|(name, value)| Edit::AddHeader { name, value }),
        (0usize..8, name(), value.clone()).prop_map(|(index, name, value)| Edit::InsertHeader {
            index,
            name,
            value
        }),
        (name(), 0usize..4, value).prop_map(|(name, occurrence, value)| Edit::ChangeHeader {
            name,
            occurrence,
            value
        }),
        (name(), 0usize..4).prop_map(|(name, occurrence)| Edit::DeleteHeader { name, occurrence }),
        name().prop_map(|authserv_id| Edit::RemoveAuthenticationResults { authserv_id }),
    ]
}

fn message() -> impl Strategy<Value = (Vec<String>, String)> {
    (
        proptest::collection::vec((name(), "[ -~]{0,20}"), 0..6).prop_map(|fields| {
            fields
                .into_iter()
                .map(|(n, v)| format!("{n}: {v}\r\n"))
                .collect()
        }),
        "([ -~]{0,30}\r\n){0,4}",
    )
}

/// The body: everything after the first empty line.
fn body(message: &[u8]) -> Option<&[u8]> {
    if message.starts_with(b"\r\n") {
        return Some(&message[2..]);
    }
    message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| &message[at + 4..])
}

proptest! {
    #[test]
    fn header_edits_leave_the_body_alone(
        (fields, text) in message(),
        edits in proptest::collection::vec(header_edit(), 0..8),
    ) {
        let original = format!("{}\r\n{text}", fields.concat());
        let edited = apply_to_content(original.as_bytes(), &edits);
        prop_assert_eq!(body(&edited), Some(text.as_bytes()));
    }

    #[test]
    fn a_field_is_one_field_whatever_its_value(name in name(), value in proptest::collection::vec(any::<u8>(), 0..80)) {
        let field = header_field(&name, &value);
        prop_assert!(field.ends_with(b"\r\n"));
        let inner = &field[..field.len() - 2];
        // No empty line, and every line after the first is a continuation.
        prop_assert!(!inner.windows(4).any(|w| w == b"\r\n\r\n"));
        for line in inner.split(|b| *b == b'\n').skip(1) {
            prop_assert!(matches!(line.first(), Some(b' ' | b'\t')), "{:?}", String::from_utf8_lossy(&field));
        }
        prop_assert!(!inner.contains(&b'\r') || inner.windows(2).filter(|w| w[0] == b'\r').all(|w| w[1] == b'\n'));
    }

    #[test]
    fn deleting_an_existing_field_removes_exactly_one(
        (fields, text) in message(),
        pick in any::<prop::sample::Index>(),
    ) {
        prop_assume!(!fields.is_empty());
        let original = format!("{}\r\n{text}", fields.concat());
        let chosen = &fields[pick.index(fields.len())];
        let chosen_name = chosen.split(':').next().unwrap_or_default().to_owned();
        let count = |message: &[u8]| {
            let text = String::from_utf8_lossy(message).into_owned();
            let head = text.split("\r\n\r\n").next().unwrap_or_default().to_owned();
            head.split("\r\n")
                .filter(|line| line.split(':').next().is_some_and(|n| n.eq_ignore_ascii_case(&chosen_name)))
                .count()
        };
        let before = count(original.as_bytes());
        let edited = apply_to_content(
            original.as_bytes(),
            &[Edit::DeleteHeader { name: chosen_name.clone(), occurrence: 1 }],
        );
        prop_assert_eq!(count(&edited), before - 1);
    }

    #[test]
    fn any_bytes_and_edits_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..200),
        edits in proptest::collection::vec(header_edit(), 0..6),
        body in proptest::collection::vec(any::<u8>(), 0..40),
    ) {
        let mut all = edits;
        all.push(Edit::ReplaceBody { body });
        let _ = apply_to_content(&bytes, &all);
    }
}
