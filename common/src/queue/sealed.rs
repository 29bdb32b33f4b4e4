//! Sealed content files: the content, then the message's first envelope,
//! then a trailer. cleanup writes and fsyncs this one file and hard-links it
//! into `incoming/`, so a new message costs one inode and one file fsync.
//!
//! ```text
//! content | envelope record (see codec) | content length: u64 LE | "EMPT"
//! ```
//! An envelope file ends with "END\n", never with "EMPT", so the last four
//! bytes tell the two apart.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

use super::Envelope;
use super::codec::{self, DecodeError};

const MAGIC: &[u8; 4] = b"EMPT";
pub const TRAILER_LEN: u64 = 12;

/// The bytes that follow the content: the envelope and the trailer.
pub fn tail(envelope: &Envelope, content_len: u64) -> Vec<u8> {
    let mut out = codec::encode(envelope);
    out.extend_from_slice(&content_len.to_le_bytes());
    out.extend_from_slice(MAGIC);
    out
}

/// The content length recorded in the trailer of a sealed file of `size`
/// bytes, or `None` if the file is not sealed (a plain envelope file, or
/// content still being written). Reads at an offset (`pread`): the file's
/// position is left alone.
pub fn content_len(file: &File, size: u64) -> io::Result<Option<u64>> {
    if size < TRAILER_LEN {
        return Ok(None);
    }
    let mut trailer = [0u8; TRAILER_LEN as usize];
    file.read_exact_at(&mut trailer, size - TRAILER_LEN)?;
    if &trailer[8..] != MAGIC {
        return Ok(None);
    }
    let mut length = [0u8; 8];
    length.copy_from_slice(&trailer[..8]);
    let length = u64::from_le_bytes(length);
    Ok((length <= size - TRAILER_LEN).then_some(length))
}

/// Reads the envelope of an envelope file or of a sealed content file (a
/// file just opened: an envelope file is read from its position). Three
/// system calls for a sealed file: its size, its trailer, its envelope.
pub fn read_envelope(file: &mut File) -> Result<Envelope, ReadEnvelopeError> {
    let size = file.metadata()?.len();
    let Some(content_len) = content_len(file, size)? else {
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        file.read_to_end(&mut bytes)?;
        return Ok(codec::decode(&bytes)?);
    };
    let record_len = size - TRAILER_LEN - content_len;
    let mut record = vec![0u8; usize::try_from(record_len).map_err(|_| DecodeError::Truncated(0))?];
    file.read_exact_at(&mut record, content_len)?;
    Ok(codec::decode(&record)?)
}

#[derive(Debug, thiserror::Error)]
pub enum ReadEnvelopeError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Decode(#[from] DecodeError),
}
