//! Property tests ("fuzzing" on stable Rust) for the on-disk formats that
//! Empath reads back after a crash: the queue envelope
//! (`empath_common::queue::{encode, decode}`) and the local-submission drop
//! file (`empath_common::maildrop`).
//!
//! Properties:
//! - decoding arbitrary bytes never panics;
//! - `decode(encode(x)) == x` for any envelope or drop file;
//! - every truncation of a valid file is rejected (never trusted);
//! - every bit flip of a valid file is rejected (CRC + END marker).
//!
//! Run longer with `PROPTEST_CASES=100000 cargo test -p empath-common --test props_queue`.

use std::collections::BTreeMap;

use empath_common::maildrop::{self, DropFile};
use empath_common::queue::{
    Body, ClientInfo, DsnParams, Envelope, MessageOptions, Notify, QueueId, Recipient,
    RecipientStatus, Ret, decode, encode,
};
use empath_common::smtp::Reply;
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;

/// Moderate by default so CI stays fast; `PROPTEST_CASES` overrides it.
fn config(default_cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    ProptestConfig::with_cases(cases)
}

fn queue_id() -> impl Strategy<Value = QueueId> {
    any::<u128>().prop_map(|n| {
        ulid::Ulid(n)
            .to_string()
            .parse()
            .unwrap_or_else(|e| panic!("a ULID's text is a queue ID: {e}"))
    })
}

/// Any Unicode text, including control characters and the empty string.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![".{0,40}", "[a-z0-9.@-]{0,30}"]
}

fn reply() -> impl Strategy<Value = Reply> {
    (
        200u16..600,
        proptest::option::of("[245]\\.[0-9]\\.[0-9]"),
        text(),
    )
        .prop_map(|(code, enhanced, text)| Reply {
            code,
            enhanced,
            text,
        })
}

fn status() -> impl Strategy<Value = RecipientStatus> {
    prop_oneof![
        Just(RecipientStatus::Pending),
        (any::<u64>(), text(), reply(), any::<bool>()).prop_map(
            |(at, remote, reply, dsn_passed_on)| RecipientStatus::Delivered {
                at,
                remote,
                reply,
                dsn_passed_on
            }
        ),
        (any::<u64>(), proptest::option::of(text()), reply())
            .prop_map(|(at, remote, reply)| RecipientStatus::Deferred { at, remote, reply }),
        (any::<u64>(), proptest::option::of(text()), reply())
            .prop_map(|(at, remote, reply)| RecipientStatus::Failed { at, remote, reply }),
    ]
}

fn recipient() -> impl Strategy<Value = Recipient> {
    (
        text(),
        proptest::option::of(text()),
        any::<[bool; 4]>(),
        status(),
    )
        .prop_map(|(address, orcpt, flags, status)| Recipient {
            address,
            orcpt,
            notify: Notify {
                explicit: flags[0],
                success: flags[1],
                failure: flags[2],
                delay: flags[3],
            },
            status,
        })
}

fn client() -> impl Strategy<Value = ClientInfo> {
    (
        text(),
        text(),
        proptest::option::of(text()),
        text(),
        proptest::option::of(text()),
        proptest::option::of(text()),
    )
        .prop_map(
            |(addr, helo, name, protocol, tls, authenticated_as)| ClientInfo {
                addr,
                helo,
                name,
                protocol,
                tls,
                authenticated_as,
            },
        )
}

fn dsn() -> impl Strategy<Value = DsnParams> {
    (
        proptest::option::of(prop_oneof![Just(Ret::Full), Just(Ret::Headers)]),
        proptest::option::of(text()),
    )
        .prop_map(|(ret, envid)| DsnParams { ret, envid })
}

prop_compose! {
    fn envelope()(
        id in queue_id(),
        sender in text(),
        recipients in vec(recipient(), 0..6),
        arrival in any::<u64>(),
        attempts in any::<u32>(),
        next_retry in proptest::option::of(any::<u64>()),
        last_error in proptest::option::of(text()),
        client in client(),
        dsn in dsn(),
        metadata in btree_map(text(), text(), 0..4),
        content_size in any::<u64>(),
        flags in any::<[bool; 4]>(),
    ) -> Envelope {
        Envelope {
            id, sender, recipients, arrival, attempts, next_retry, last_error, client, dsn,
            metadata: metadata.into_iter().collect::<BTreeMap<_, _>>(),
            content_size, smtputf8: flags[0], delay_warned: flags[1],
            options: MessageOptions {
                body: if flags[2] { Body::EightBitMime } else { Body::SevenBit },
                requiretls: flags[3],
            },
        }
    }
}

prop_compose! {
    fn drop_file()(
        sender in text(),
        recipients in vec(text(), 0..5),
        content in vec(any::<u8>(), 0..2048),
    ) -> DropFile {
        DropFile { sender, recipients, content }
    }
}

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn queue_decode_never_panics_on_random_bytes(bytes in vec(any::<u8>(), 0..512)) {
        let _ = decode(&bytes);
    }

    /// Random bytes behind a valid header: the checks past the magic
    /// (version, length, CRC, END) must hold for hostile lengths too.
    #[test]
    fn queue_decode_never_panics_behind_a_valid_header(
        length in any::<u32>(),
        rest in vec(any::<u8>(), 0..256),
    ) {
        let mut bytes = b"EMPQ".to_vec();
        bytes.extend_from_slice(&1u16.to_le_bytes());
        bytes.extend_from_slice(&length.to_le_bytes());
        bytes.extend_from_slice(&rest);
        prop_assert!(decode(&bytes).is_err() || length as usize <= rest.len());
    }

    #[test]
    fn queue_round_trip(envelope in envelope()) {
        prop_assert_eq!(decode(&encode(&envelope)), Ok(envelope));
    }

    #[test]
    fn queue_every_truncation_is_rejected(envelope in envelope(), cut in any::<prop::sample::Index>()) {
        let bytes = encode(&envelope);
        let len = cut.index(bytes.len());
        prop_assert!(decode(&bytes[..len]).is_err(), "a file cut to {} of {} bytes was accepted", len, bytes.len());
    }

    #[test]
    fn queue_every_bit_flip_is_rejected(
        envelope in envelope(),
        at in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let mut bytes = encode(&envelope);
        let index = at.index(bytes.len());
        bytes[index] ^= 1 << bit;
        prop_assert!(decode(&bytes).is_err(), "a flip of bit {} at byte {} was accepted", bit, index);
    }

    /// A valid payload whose postcard bytes are mutated but re-sealed with
    /// a correct length, CRC and END marker: only the payload decoder
    /// stands between the bytes and the daemons, and it must not panic.
    #[test]
    fn queue_resealed_garbage_payload_never_panics(
        envelope in envelope(),
        edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let bytes = encode(&envelope);
        let mut payload = bytes[10..bytes.len() - 8].to_vec();
        for (at, value) in &edits {
            let index = at.index(payload.len().max(1));
            if let Some(byte) = payload.get_mut(index) {
                *byte = *value;
            }
        }
        payload.truncate(cut.index(payload.len() + 1));
        let _ = decode(&seal(b"EMPQ", &payload));
    }

    #[test]
    fn maildrop_decode_never_panics(bytes in vec(any::<u8>(), 0..512)) {
        let _ = maildrop::decode(&bytes);
    }

    #[test]
    fn maildrop_round_trip(drop in drop_file()) {
        prop_assert_eq!(maildrop::decode(&maildrop::encode(&drop)), Some(drop));
    }

    #[test]
    fn maildrop_every_truncation_and_flip_is_rejected(
        drop in drop_file(),
        cut in any::<prop::sample::Index>(),
        at in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let bytes = maildrop::encode(&drop);
        let len = cut.index(bytes.len());
        prop_assert_eq!(maildrop::decode(&bytes[..len]), None);
        let mut flipped = bytes.clone();
        let index = at.index(flipped.len());
        flipped[index] ^= 1 << bit;
        prop_assert_eq!(maildrop::decode(&flipped), None);
    }

    #[test]
    fn maildrop_resealed_garbage_payload_never_panics(payload in vec(any::<u8>(), 0..512)) {
        let _ = maildrop::decode(&seal(b"EMPD", &payload));
    }
}

/// Frames `payload` as a version-1 file with a correct length, CRC and
/// END marker (the layout both formats share).
fn seal(magic: &[u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut out = magic.to_vec();
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(
        &u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out[4..]);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(b"END\n");
    out
}
