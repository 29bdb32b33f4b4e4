//! Local submission: the drop file that `sendmail` leaves in
//! `public/maildrop/` when the daemons are down, and that cleanup picks up.
//!
//! Version 2, which cleanup reads as a stream (the content is never held
//! in memory whole):
//!
//! ```text
//! "EMPD" | version: u16 LE = 2 | header length: u32 LE | postcard(DropHeader)
//!        | content length: u64 LE | content | crc32: u32 LE | "END\n"
//! ```
//!
//! The CRC covers everything between the magic and itself. Version 1
//! (`"EMPD" | 1 | length: u32 | postcard(DropFile) | crc32 | "END\n"`),
//! written by older `sendmail`s, is still read.

use std::io::{self, Read};

use serde::{Deserialize, Serialize};

/// A message waiting in the drop directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropFile {
    pub sender: String,
    pub recipients: Vec<String>,
    /// The message, CRLF line endings.
    pub content: Vec<u8>,
}

/// The envelope part of a drop file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropHeader {
    pub sender: String,
    pub recipients: Vec<String>,
}

const MAGIC: &[u8; 4] = b"EMPD";
const END: &[u8; 4] = b"END\n";
const VERSION_1: u16 = 1;
const VERSION: u16 = 2;
/// Header fields longer than this are not a sendmail's doing.
const MAX_HEADER: u32 = 16 << 20;
/// The octets after the content: CRC and END.
const TRAILER: u64 = 8;

/// Why a drop file cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum DropError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("not an intact drop file: {0}")]
    Damaged(&'static str),
}

/// Encodes a drop file (version 2).
pub fn encode(drop: &DropFile) -> Vec<u8> {
    let header = DropHeader {
        sender: drop.sender.clone(),
        recipients: drop.recipients.clone(),
    };
    let header = postcard::to_stdvec(&header).unwrap_or_default();
    let mut out = Vec::with_capacity(header.len() + drop.content.len() + 30);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(
        &u32::try_from(header.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    out.extend_from_slice(&header);
    out.extend_from_slice(&(drop.content.len() as u64).to_le_bytes());
    out.extend_from_slice(&drop.content);
    out.extend_from_slice(&crc32fast::hash(&out[4..]).to_le_bytes());
    out.extend_from_slice(END);
    out
}

/// Decodes a whole drop file of either version; `None` if it is not a
/// complete, intact one.
pub fn decode(bytes: &[u8]) -> Option<DropFile> {
    let mut stream = DropStream::open(bytes, bytes.len() as u64).ok()?;
    let mut content = Vec::new();
    stream.read_to_end(&mut content).ok()?;
    let (sender, recipients) = (
        stream.header.sender.clone(),
        stream.header.recipients.clone(),
    );
    stream.verify().ok()?;
    Some(DropFile {
        sender,
        recipients,
        content,
    })
}

/// A drop file being read: the header first, then the content as a
/// [`Read`], then [`DropStream::verify`] for the CRC and the end marker.
pub struct DropStream<R> {
    pub header: DropHeader,
    /// Octets of content.
    pub content_len: u64,
    source: Source<R>,
    remaining: u64,
    crc: crc32fast::Hasher,
}

enum Source<R> {
    Streaming(R),
    /// A version-1 file, decoded whole (it was checked when read).
    Whole(io::Cursor<Vec<u8>>),
}

impl<R: Read> DropStream<R> {
    /// Reads the header of a drop file of `file_len` octets. The lengths
    /// it states must add up to the file's length, so that a file cut
    /// short is found before any content is used.
    pub fn open(mut reader: R, file_len: u64) -> Result<Self, DropError> {
        let mut fixed = [0u8; 10];
        reader.read_exact(&mut fixed)?;
        if &fixed[..4] != MAGIC {
            return Err(DropError::Damaged("no magic"));
        }
        let version = u16::from_le_bytes([fixed[4], fixed[5]]);
        let header_len = u32::from_le_bytes([fixed[6], fixed[7], fixed[8], fixed[9]]);
        if header_len > MAX_HEADER || 10 + u64::from(header_len) > file_len {
            return Err(DropError::Damaged("header length does not fit the file"));
        }
        match version {
            VERSION => Self::open_v2(reader, &fixed[4..], header_len, file_len),
            VERSION_1 => Self::open_v1(reader, &fixed, header_len, file_len),
            _ => Err(DropError::Damaged("unknown version")),
        }
    }

    fn open_v2(
        mut reader: R,
        version_and_len: &[u8],
        header_len: u32,
        file_len: u64,
    ) -> Result<Self, DropError> {
        let mut crc = crc32fast::Hasher::new();
        crc.update(version_and_len);
        let mut header = vec![0u8; header_len as usize];
        reader.read_exact(&mut header)?;
        crc.update(&header);
        let mut content_len = [0u8; 8];
        reader.read_exact(&mut content_len)?;
        crc.update(&content_len);
        let content_len = u64::from_le_bytes(content_len);
        let expected = 10 + u64::from(header_len) + 8 + content_len.saturating_add(TRAILER);
        if expected != file_len {
            return Err(DropError::Damaged("length does not match the file"));
        }
        let header: DropHeader =
            postcard::from_bytes(&header).map_err(|_| DropError::Damaged("bad header"))?;
        Ok(Self {
            header,
            content_len,
            source: Source::Streaming(reader),
            remaining: content_len,
            crc,
        })
    }

    fn open_v1(
        mut reader: R,
        fixed: &[u8; 10],
        payload_len: u32,
        file_len: u64,
    ) -> Result<Self, DropError> {
        if 10 + u64::from(payload_len) + TRAILER != file_len {
            return Err(DropError::Damaged("length does not match the file"));
        }
        let mut rest = vec![0u8; payload_len as usize + TRAILER as usize];
        reader.read_exact(&mut rest)?;
        let whole = [fixed.as_slice(), &rest].concat();
        let drop = decode_v1(&whole).ok_or(DropError::Damaged("version 1 file"))?;
        Ok(Self {
            header: DropHeader {
                sender: drop.sender,
                recipients: drop.recipients,
            },
            content_len: drop.content.len() as u64,
            remaining: drop.content.len() as u64,
            source: Source::Whole(io::Cursor::new(drop.content)),
            crc: crc32fast::Hasher::new(),
        })
    }

    /// Checks the CRC and the end marker, once all the content was read.
    pub fn verify(self) -> Result<(), DropError> {
        if self.remaining > 0 {
            return Err(DropError::Damaged("content not read to its end"));
        }
        let Source::Streaming(mut reader) = self.source else {
            return Ok(());
        };
        let mut trailer = [0u8; 8];
        reader.read_exact(&mut trailer)?;
        if trailer[..4] != self.crc.finalize().to_le_bytes() {
            return Err(DropError::Damaged("checksum mismatch"));
        }
        if &trailer[4..] != END {
            return Err(DropError::Damaged("no end marker"));
        }
        Ok(())
    }
}

impl<R: Read> Read for DropStream<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let read = match &mut self.source {
            Source::Streaming(reader) => reader.read(&mut buf[..want])?,
            Source::Whole(cursor) => cursor.read(&mut buf[..want])?,
        };
        if read == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if let Source::Streaming(_) = self.source {
            self.crc.update(&buf[..read]);
        }
        self.remaining -= read as u64;
        Ok(read)
    }
}

fn decode_v1(bytes: &[u8]) -> Option<DropFile> {
    let body = bytes.strip_prefix(MAGIC)?.strip_suffix(END)?;
    let (checked, crc) = body.split_at_checked(body.len().checked_sub(4)?)?;
    if crc32fast::hash(checked).to_le_bytes() != crc {
        return None;
    }
    let (version, rest) = checked.split_at_checked(2)?;
    if u16::from_le_bytes([version[0], version[1]]) != VERSION_1 {
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

    fn drop_file() -> DropFile {
        DropFile {
            sender: "alice@example.org".into(),
            recipients: vec!["bob@example.com".into()],
            content: b"Subject: x\r\n\r\nhi\r\n".to_vec(),
        }
    }

    #[test]
    fn round_trip_and_damage_detection() {
        let drop = drop_file();
        let bytes = encode(&drop);
        assert_eq!(decode(&bytes), Some(drop));
        for len in 0..bytes.len() {
            assert_eq!(decode(&bytes[..len]), None);
        }
        for index in 4..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[index] ^= 1;
            assert_eq!(decode(&flipped), None, "flip at {index}");
        }
    }

    #[test]
    fn version_1_files_are_still_read() {
        let drop = drop_file();
        let payload = postcard::to_stdvec(&drop).unwrap();
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&VERSION_1.to_le_bytes());
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&payload);
        let crc = crc32fast::hash(&bytes[4..]);
        bytes.extend_from_slice(&crc.to_le_bytes());
        bytes.extend_from_slice(END);
        assert_eq!(decode(&bytes), Some(drop));
    }

    #[test]
    fn the_content_streams_in_pieces() {
        let mut drop = drop_file();
        drop.content = b"x".repeat(100_000);
        let bytes = encode(&drop);
        let mut stream = DropStream::open(bytes.as_slice(), bytes.len() as u64).unwrap();
        assert_eq!(stream.content_len, 100_000);
        let mut piece = [0u8; 4096];
        let mut total = 0;
        loop {
            let read = stream.read(&mut piece).unwrap();
            if read == 0 {
                break;
            }
            total += read;
        }
        assert_eq!(total, 100_000);
        stream.verify().unwrap();
    }
}
