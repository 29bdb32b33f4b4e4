//! Properties of the packet codec: what is encoded decodes to the same
//! thing, and no input, however broken, makes the decoders panic.

use empath_milter::content;
use empath_milter::protocol::{Command, Family, Response, split_packet};
use proptest::prelude::*;

/// Text that can travel in a NUL-terminated string.
fn text() -> impl Strategy<Value = String> {
    "[^\u{0}]{0,40}"
}

fn bytes_without_nul() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(1u8..=255, 0..60)
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        (text(), any::<u16>(), text()).prop_map(|(hostname, port, address)| Command::Connect {
            hostname,
            family: Family::Inet6,
            port,
            address
        }),
        text().prop_map(Command::Helo),
        proptest::collection::vec(text(), 0..4).prop_map(Command::Mail),
        proptest::collection::vec(text(), 0..4).prop_map(Command::Rcpt),
        (text(), bytes_without_nul()).prop_map(|(name, value)| Command::Header { name, value }),
        proptest::collection::vec(any::<u8>(), 0..200).prop_map(Command::Body),
        (
            any::<u8>(),
            proptest::collection::vec((text(), text()), 0..4)
        )
            .prop_map(|(event, pairs)| Command::Macros { event, pairs }),
        Just(Command::EndOfBody),
        Just(Command::Abort),
    ]
}

fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        (text(), bytes_without_nul()).prop_map(|(name, value)| Response::AddHeader { name, value }),
        (any::<u32>(), text(), bytes_without_nul())
            .prop_map(|(index, name, value)| Response::InsertHeader { index, name, value }),
        (any::<u32>(), text(), bytes_without_nul())
            .prop_map(|(index, name, value)| Response::ChangeHeader { index, name, value }),
        text().prop_map(Response::AddRecipient),
        (text(), "[^\u{0}]{1,20}").prop_map(|(address, parameters)| {
            Response::AddRecipientWithParameters {
                address,
                parameters,
            }
        }),
        text().prop_map(Response::DeleteRecipient),
        proptest::collection::vec(any::<u8>(), 0..200).prop_map(Response::ReplaceBody),
        bytes_without_nul().prop_map(Response::ReplyCode),
        Just(Response::Continue),
        Just(Response::Progress),
    ]
}

proptest! {
    #[test]
    fn commands_round_trip(command in command()) {
        let bytes = command.encode();
        let raw = split_packet(&bytes).unwrap().unwrap();
        prop_assert_eq!(raw.size, bytes.len());
        prop_assert_eq!(Command::decode(raw.code, raw.data).unwrap(), command);
    }

    #[test]
    fn responses_round_trip(response in response()) {
        let bytes = response.encode();
        let raw = split_packet(&bytes).unwrap().unwrap();
        prop_assert_eq!(Response::decode(raw.code, raw.data).unwrap(), response);
    }

    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(Some(raw)) = split_packet(&bytes) {
            prop_assert!(raw.size <= bytes.len());
            let _ = Response::decode(raw.code, raw.data);
            let _ = Command::decode(raw.code, raw.data);
        }
        if let Some((&code, data)) = bytes.split_first() {
            let _ = Response::decode(code, data);
            let _ = Command::decode(code, data);
        }
        let _ = empath_milter::protocol::reply_lines(&bytes);
        let _ = content::split(&bytes);
    }

    #[test]
    fn header_events_cover_every_field(
        names in proptest::collection::vec("[A-Za-z][A-Za-z0-9-]{0,10}", 1..6),
        body in "[a-z \r\n]{0,50}",
    ) {
        let mut message = String::new();
        for name in &names {
            message.push_str(&format!("{name}: value of {name}\r\n"));
        }
        message.push_str("\r\n");
        message.push_str(&body);
        let (fields, rest) = content::split(message.as_bytes());
        let seen: Vec<&str> = fields.iter().map(|f| f.name.as_str()).collect();
        prop_assert_eq!(seen, names.iter().map(String::as_str).collect::<Vec<_>>());
        prop_assert_eq!(rest, body.as_bytes());
    }
}
