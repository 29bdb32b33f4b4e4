//! Property tests for the whole content path, from the client's bytes to
//! the next hop's: smtpd's DATA decoder (or BDAT, which passes the bytes
//! on as they are), cleanup's shaping, and smtp-out's DATA encoder.
//!
//! Whatever a client sends, the next hop gets valid RFC 5321 content:
//! CRLF-only lines, none over 1000 octets, correctly dot-stuffed, with
//! exactly one end of data; and what it unstuffs is what cleanup queued.
//!
//! Run longer with `PROPTEST_CASES=100000 cargo test -p empath-smtpd --test props_content_path`.

use empath_common::content::shape::Shaper;
use empath_common::content::wire::{DataEncoder, check_stream, unstuff};
use empath_smtpd::data_decoder::{BareLineEndings, DataDecoder};
use proptest::collection::vec;
use proptest::prelude::*;

fn config(default_cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    ProptestConfig::with_cases(cases)
}

/// Client bytes rich in what matters: CR, LF, dots, and runs long enough
/// to cross the 998-octet limit.
fn client_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        4 => proptest::sample::select(vec![b'\r', b'\n', b'.', b':', b' ', b'a']).prop_map(|b| vec![b]),
        1 => Just(b"\r\n.\r\n".to_vec()),
        1 => Just(b"Received: x\r\n".to_vec()),
        1 => (900usize..2100).prop_map(|n| vec![b'x'; n]),
        1 => any::<u8>().prop_map(|b| vec![b]),
    ];
    vec(piece, 0..60).prop_map(|pieces| pieces.concat())
}

/// Splits `bytes` at the given cut points (as chunks arrive).
fn chunks(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    cuts.sort_unstable();
    let mut out = Vec::new();
    let mut start = 0;
    for cut in cuts {
        out.push(bytes[start..cut].to_vec());
        start = cut;
    }
    out.push(bytes[start..].to_vec());
    out
}

/// cleanup, then smtp-out: the queued content and the wire stream.
fn shape_and_encode(pieces: &[Vec<u8>], wire_cuts: &[usize]) -> (Vec<u8>, Vec<u8>) {
    let mut shaper = Shaper::new();
    let mut queued = Vec::new();
    for piece in pieces {
        shaper.push(piece, &mut queued);
    }
    shaper.finish(&mut queued);
    let mut encoder = DataEncoder::new();
    let mut wire = Vec::new();
    for piece in chunks(&queued, wire_cuts) {
        encoder.encode(&piece, &mut wire);
    }
    encoder.finish(&mut wire);
    (queued, wire)
}

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn data_from_any_client_reaches_the_next_hop_as_valid_content(
        body in client_bytes(),
        read_cuts in vec(any::<usize>(), 0..5),
        wire_cuts in vec(any::<usize>(), 0..5),
    ) {
        // The client's DATA stream, ended by the real marker.
        let mut stream = body.clone();
        stream.extend_from_slice(b"\r\n.\r\n");
        let mut decoder = DataDecoder::new();
        let mut decoded = Vec::new();
        let mut pieces = Vec::new();
        for read in chunks(&stream, &read_cuts) {
            if decoder.is_finished() {
                break;
            }
            let mut out = Vec::new();
            decoder.feed(&read, &mut out);
            decoded.extend_from_slice(&out);
            pieces.push(out);
        }
        prop_assert!(decoder.is_finished());
        let (queued, wire) = shape_and_encode(&pieces, &wire_cuts);
        if let Err(problem) = check_stream(&wire) {
            return Err(TestCaseError::fail(format!("{problem}: {:?}", String::from_utf8_lossy(&wire))));
        }
        prop_assert_eq!(unstuff(&wire), queued);
    }

    #[test]
    fn bdat_from_any_client_reaches_the_next_hop_as_valid_content(
        body in client_bytes(),
        chunk_cuts in vec(any::<usize>(), 0..5),
        wire_cuts in vec(any::<usize>(), 0..5),
    ) {
        let pieces = chunks(&body, &chunk_cuts);
        let mut bare = BareLineEndings::default();
        for piece in &pieces {
            bare.scan(piece);
        }
        let has_bare = body.windows(2).any(|w| w[0] == b'\r' && w[1] != b'\n')
            || body.last() == Some(&b'\r')
            || body.iter().enumerate().any(|(i, &b)| b == b'\n' && (i == 0 || body[i - 1] != b'\r'));
        prop_assert_eq!(bare.found(), has_bare);
        let (queued, wire) = shape_and_encode(&pieces, &wire_cuts);
        if let Err(problem) = check_stream(&wire) {
            return Err(TestCaseError::fail(format!("{problem}: {:?}", String::from_utf8_lossy(&wire))));
        }
        prop_assert_eq!(unstuff(&wire), queued);
    }

    /// The encoder alone, on anything at all (a queue file from an older
    /// version, a bug upstream): the wire is still valid.
    #[test]
    fn the_encoder_makes_any_bytes_valid_content(
        content in vec(any::<u8>(), 0..3000),
        cuts in vec(any::<usize>(), 0..5),
    ) {
        let mut encoder = DataEncoder::new();
        let mut wire = Vec::new();
        for piece in chunks(&content, &cuts) {
            encoder.encode(&piece, &mut wire);
        }
        encoder.finish(&mut wire);
        if let Err(problem) = check_stream(&wire) {
            return Err(TestCaseError::fail(format!("{problem}: {:?}", String::from_utf8_lossy(&wire))));
        }
    }
}
