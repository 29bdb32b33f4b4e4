//! Durable file operations: every state change in the queue is built from
//! these few steps (write a temp file, fsync it, rename it, fsync the directory).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Makes the directory entries of `dir` durable (after a create, rename or unlink).
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `path` exclusively with mode 0600; fails if it exists.
pub fn create_new(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// Writes `bytes` to `tmp`, fsyncs it and renames it to `target`.
/// The caller fsyncs the target directory (so several renames can share one fsync).
pub fn write_then_rename(tmp: &Path, target: &Path, bytes: &[u8]) -> io::Result<()> {
    write_then_rename_with_mode(tmp, target, bytes, 0o600)
}

/// [`write_then_rename`], the file created with `mode` (before the umask).
pub fn write_then_rename_with_mode(
    tmp: &Path,
    target: &Path,
    bytes: &[u8],
    mode: u32,
) -> io::Result<()> {
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(tmp, target)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    result
}
