//! The on-disk envelope format.
//!
//! ```text
//! "EMPQ" | version: u16 LE | length: u32 LE | postcard payload | crc32: u32 LE | "END\n"
//! ```
//! The CRC covers version, length and payload. A file that is short, has
//! trailing bytes, a wrong CRC or no END marker is corrupt, never trusted.
//! The version lets a newer Empath decode an older queue.

use super::Envelope;

const MAGIC: &[u8; 4] = b"EMPQ";
const END: &[u8; 4] = b"END\n";
/// The format written today.
pub const FORMAT_VERSION: u16 = 1;
const HEADER_LEN: usize = 4 + 2 + 4;
const TRAILER_LEN: usize = 4 + 4;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not an Empath queue file (bad magic)")]
    BadMagic,
    #[error("unsupported queue file version {0}")]
    UnsupportedVersion(u16),
    #[error("truncated queue file ({0} bytes)")]
    Truncated(usize),
    #[error("checksum mismatch")]
    Checksum,
    #[error("missing END marker")]
    NoEndMarker,
    #[error("undecodable envelope: {0}")]
    Payload(String),
}

pub fn encode(envelope: &Envelope) -> Vec<u8> {
    // postcard only fails on writer errors, and a Vec writer has none.
    let payload = postcard::to_stdvec(envelope).unwrap_or_default();
    let length = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + TRAILER_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(&payload);
    let crc = crc32fast::hash(&out[4..]);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(END);
    out
}

pub fn decode(bytes: &[u8]) -> Result<Envelope, DecodeError> {
    if bytes.len() < HEADER_LEN + TRAILER_LEN {
        return Err(if bytes.starts_with(MAGIC) || MAGIC.starts_with(bytes) {
            DecodeError::Truncated(bytes.len())
        } else {
            DecodeError::BadMagic
        });
    }
    if &bytes[..4] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version != FORMAT_VERSION {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    let length = u32::from_le_bytes([bytes[6], bytes[7], bytes[8], bytes[9]]) as usize;
    let payload_end = HEADER_LEN
        .checked_add(length)
        .ok_or(DecodeError::Truncated(bytes.len()))?;
    if bytes.len() < payload_end + TRAILER_LEN {
        return Err(DecodeError::Truncated(bytes.len()));
    }
    if &bytes[payload_end + 4..payload_end + TRAILER_LEN] != END
        || bytes.len() != payload_end + TRAILER_LEN
    {
        return Err(DecodeError::NoEndMarker);
    }
    let stored_crc = u32::from_le_bytes([
        bytes[payload_end],
        bytes[payload_end + 1],
        bytes[payload_end + 2],
        bytes[payload_end + 3],
    ]);
    if crc32fast::hash(&bytes[4..payload_end]) != stored_crc {
        return Err(DecodeError::Checksum);
    }
    postcard::from_bytes(&bytes[HEADER_LEN..payload_end])
        .map_err(|e| DecodeError::Payload(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{ClientInfo, DsnParams, QueueId, Recipient};

    fn sample() -> Envelope {
        Envelope {
            id: QueueId::generate(),
            sender: "alice@example.org".into(),
            recipients: vec![
                Recipient::new("bob@example.com"),
                Recipient::new("carol@example.net"),
            ],
            arrival: 1_763_287_845,
            attempts: 0,
            next_retry: None,
            last_error: None,
            client: ClientInfo::default(),
            dsn: DsnParams::default(),
            metadata: [("service".to_owned(), "smtp".to_owned())].into(),
            content_size: 1234,
            smtputf8: false,
            delay_warned: false,
        }
    }

    #[test]
    fn round_trip() {
        let envelope = sample();
        assert_eq!(decode(&encode(&envelope)).unwrap(), envelope);
    }

    #[test]
    fn every_truncation_is_detected() {
        let bytes = encode(&sample());
        for len in 0..bytes.len() {
            assert!(
                decode(&bytes[..len]).is_err(),
                "truncated to {len} bytes was accepted"
            );
        }
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let bytes = encode(&sample());
        for index in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[index] ^= 0x10;
            assert!(
                decode(&damaged).is_err(),
                "flip at byte {index} was accepted"
            );
        }
    }

    #[test]
    fn trailing_garbage_is_rejected() {
        let mut bytes = encode(&sample());
        bytes.extend_from_slice(b"x");
        assert_eq!(decode(&bytes), Err(DecodeError::NoEndMarker));
    }
}
