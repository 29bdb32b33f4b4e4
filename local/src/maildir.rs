//! Maildir delivery: the message is written under a unique name in
//! `tmp/`, fsynced, and renamed into `new/`, whose directory entry is
//! fsynced too before success is reported. Readers never see half a
//! message.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::status::DeliveryError;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Delivers `parts` into the Maildir `dir` (created with `tmp/`, `new/`
/// and `cur/` if missing) and returns the new file's path.
pub fn deliver(dir: &Path, hostname: &str, parts: &[Vec<u8>]) -> Result<PathBuf, DeliveryError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true).mode(0o700);
    for sub in ["tmp", "new", "cur"] {
        let path = dir.join(sub);
        builder
            .create(&path)
            .map_err(|e| DeliveryError::io(&path, &e))?;
    }
    loop {
        let name = unique_name(hostname);
        let tmp = dir.join("tmp").join(&name);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp);
        let mut file = match file {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(DeliveryError::io(&tmp, &e)),
        };
        let new = dir.join("new").join(&name);
        let written = parts
            .iter()
            .try_for_each(|part| file.write_all(part))
            .and_then(|()| file.sync_all())
            .and_then(|()| std::fs::rename(&tmp, &new))
            .and_then(|()| std::fs::File::open(dir.join("new"))?.sync_all());
        if let Err(error) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(DeliveryError::io(&new, &error));
        }
        return Ok(new);
    }
}

/// `SECONDS.MMICROSPPIDQCOUNT.HOST`, unique per host (the pid and a
/// counter tell deliveries in the same microsecond apart).
fn unique_name(hostname: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let host: String = hostname
        .chars()
        .map(|c| match c {
            '/' => "\\057".to_owned(),
            ':' => "\\072".to_owned(),
            c => c.to_string(),
        })
        .collect();
    format!(
        "{}.M{}P{}Q{}.{host}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivers_into_new_with_unique_names() {
        let dir = tempfile::tempdir().unwrap();
        let maildir = dir.path().join("Maildir");
        let a = deliver(&maildir, "h/o:st", &[b"a\n".to_vec()]).unwrap();
        let b = deliver(&maildir, "h/o:st", &[b"b\n".to_vec()]).unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(maildir.join("new")));
        assert!(a.to_string_lossy().ends_with(".h\\057o\\072st"));
        assert_eq!(std::fs::read(&b).unwrap(), b"b\n");
        assert_eq!(std::fs::read_dir(maildir.join("tmp")).unwrap().count(), 0);
        assert!(maildir.join("cur").is_dir());
    }
}
