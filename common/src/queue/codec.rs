//! The on-disk envelope format.
//!
//! ```text
//! "EMPQ" | version: u16 LE | length: u32 LE | postcard payload | crc32: u32 LE | "END\n"
//! ```
//! The CRC covers version, length and payload. A file that is short, has
//! trailing bytes, a wrong CRC or no END marker is corrupt, never trusted.
//! The version lets a newer Empath decode an older queue: version 1 (no
//! message options, no `dsn_passed_on`) is read through [`v1`].

use super::Envelope;

const MAGIC: &[u8; 4] = b"EMPQ";
const END: &[u8; 4] = b"END\n";
/// The format written today.
pub const FORMAT_VERSION: u16 = 2;
/// The oldest format still read.
const OLDEST_VERSION: u16 = 1;
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
    if !(OLDEST_VERSION..=FORMAT_VERSION).contains(&version) {
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
    let payload = &bytes[HEADER_LEN..payload_end];
    let decoded = if version == 1 {
        postcard::from_bytes::<v1::Envelope>(payload).map(Envelope::from)
    } else {
        postcard::from_bytes(payload)
    };
    decoded.map_err(|e| DecodeError::Payload(e.to_string()))
}

/// Format version 1, frozen: the envelope before message options (BODY,
/// REQUIRETLS) and before `Delivered` said whether DSN was passed on.
mod v1 {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use crate::queue::{ClientInfo, DsnParams, Notify, QueueId};
    use crate::smtp::Reply;

    #[derive(Deserialize)]
    pub struct Envelope {
        id: QueueId,
        sender: String,
        recipients: Vec<Recipient>,
        arrival: u64,
        attempts: u32,
        next_retry: Option<u64>,
        last_error: Option<String>,
        client: ClientInfo,
        dsn: DsnParams,
        metadata: BTreeMap<String, String>,
        content_size: u64,
        smtputf8: bool,
        delay_warned: bool,
    }

    #[derive(Deserialize)]
    struct Recipient {
        address: String,
        orcpt: Option<String>,
        notify: Notify,
        status: RecipientStatus,
    }

    #[derive(Deserialize)]
    enum RecipientStatus {
        Pending,
        Delivered {
            at: u64,
            remote: String,
            reply: Reply,
        },
        Deferred {
            at: u64,
            remote: Option<String>,
            reply: Reply,
        },
        Failed {
            at: u64,
            remote: Option<String>,
            reply: Reply,
        },
    }

    impl From<RecipientStatus> for crate::queue::RecipientStatus {
        fn from(status: RecipientStatus) -> Self {
            match status {
                RecipientStatus::Pending => Self::Pending,
                RecipientStatus::Delivered { at, remote, reply } => Self::Delivered {
                    at,
                    remote,
                    reply,
                    dsn_passed_on: false,
                },
                RecipientStatus::Deferred { at, remote, reply } => {
                    Self::Deferred { at, remote, reply }
                }
                RecipientStatus::Failed { at, remote, reply } => Self::Failed { at, remote, reply },
            }
        }
    }

    impl From<Envelope> for crate::queue::Envelope {
        fn from(old: Envelope) -> Self {
            Self {
                id: old.id,
                sender: old.sender,
                recipients: old
                    .recipients
                    .into_iter()
                    .map(|r| crate::queue::Recipient {
                        address: r.address,
                        orcpt: r.orcpt,
                        notify: r.notify,
                        status: r.status.into(),
                    })
                    .collect(),
                arrival: old.arrival,
                attempts: old.attempts,
                next_retry: old.next_retry,
                last_error: old.last_error,
                client: old.client,
                dsn: old.dsn,
                metadata: old.metadata,
                content_size: old.content_size,
                smtputf8: old.smtputf8,
                delay_warned: old.delay_warned,
                options: crate::queue::MessageOptions::default(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{Body, ClientInfo, DsnParams, MessageOptions, QueueId, Recipient};

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
            options: MessageOptions {
                body: Body::EightBitMime,
                requiretls: true,
            },
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

    /// A queue file written by Empath before format 2 (the bytes are the
    /// file version 1 wrote) still reads, with the defaults for what it
    /// did not record.
    #[test]
    fn version_1_files_still_read() {
        let bytes = include_bytes!("../../tests/fixtures/envelope-v1.bin");
        assert_eq!(u16::from_le_bytes([bytes[4], bytes[5]]), 1);
        let envelope = decode(bytes).unwrap();
        assert_eq!(envelope.sender, "alice@example.org");
        assert_eq!(envelope.dsn.envid.as_deref(), Some("env-1"));
        assert_eq!(envelope.options, MessageOptions::default());
        assert_eq!(
            envelope.recipients[0].orcpt.as_deref(),
            Some("rfc822;bob@example.com")
        );
        assert!(envelope.recipients[0].notify.success);
        assert!(matches!(
            &envelope.recipients[0].status,
            crate::queue::RecipientStatus::Delivered { remote, dsn_passed_on: false, .. }
                if remote == "mx.example.com [192.0.2.25]:25"
        ));
        assert!(matches!(
            &envelope.recipients[1].status,
            crate::queue::RecipientStatus::Deferred { remote: None, reply, .. } if reply.code == 451
        ));
        assert_eq!(envelope.client.tls.as_deref(), Some("TLSv1.3"));
        // Rewritten, it is version 2, and reads back the same.
        let rewritten = encode(&envelope);
        assert_eq!(
            u16::from_le_bytes([rewritten[4], rewritten[5]]),
            FORMAT_VERSION
        );
        assert_eq!(decode(&rewritten).unwrap(), envelope);
        // A version from the future is refused, not misread.
        let mut future = rewritten.clone();
        future[4] = 3;
        assert_eq!(decode(&future), Err(DecodeError::UnsupportedVersion(3)));
    }

    #[test]
    fn trailing_garbage_is_rejected() {
        let mut bytes = encode(&sample());
        bytes.extend_from_slice(b"x");
        assert_eq!(decode(&bytes), Err(DecodeError::NoEndMarker));
    }
}
