//! Local submission: the drop file that `sendmail` leaves in
//! `public/maildrop/` when the daemons are down, and that cleanup picks up.
//!
//! ```text
//! "EMPD" | version: u16 LE | length: u32 LE | postcard(DropFile) | crc32: u32 LE | "END\n"
//! ```

use serde::{Deserialize, Serialize};

/// A message waiting in the drop directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropFile {
    pub sender: String,
    pub recipients: Vec<String>,
    /// The message, CRLF line endings.
    pub content: Vec<u8>,
}

const MAGIC: &[u8; 4] = b"EMPD";
const END: &[u8; 4] = b"END\n";
const VERSION: u16 = 1;

pub fn encode(drop: &DropFile) -> Vec<u8> {
    let payload = postcard::to_stdvec(drop).unwrap_or_default();
    let mut out = Vec::with_capacity(payload.len() + 18);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(
        &u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    out.extend_from_slice(&payload);
    out.extend_from_slice(&crc32fast::hash(&out[4..]).to_le_bytes());
    out.extend_from_slice(END);
    out
}

/// Decodes a drop file; `None` if it is not a complete, intact one.
pub fn decode(bytes: &[u8]) -> Option<DropFile> {
    let body = bytes.strip_prefix(MAGIC)?.strip_suffix(END)?;
    let (checked, crc) = body.split_at_checked(body.len().checked_sub(4)?)?;
    if crc32fast::hash(checked).to_le_bytes() != crc {
        return None;
    }
    let (version, rest) = checked.split_at_checked(2)?;
    if u16::from_le_bytes([version[0], version[1]]) != VERSION {
        return None;
    }
    let (length, payload) = rest.split_at_checked(4)?;
    if u32::from_le_bytes([length[0], length[1], length[2], length[3]]) as usize != payload.len() {
        return None;
    }
    postcard::from_bytes(payload).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage_detection() {
        let drop = DropFile {
            sender: "alice@example.org".into(),
            recipients: vec!["bob@example.com".into()],
            content: b"Subject: x\r\n\r\nhi\r\n".to_vec(),
        };
        let bytes = encode(&drop);
        assert_eq!(decode(&bytes), Some(drop));
        for len in 0..bytes.len() {
            assert_eq!(decode(&bytes[..len]), None);
        }
        let mut flipped = bytes.clone();
        flipped[12] ^= 1;
        assert_eq!(decode(&flipped), None);
    }
}
