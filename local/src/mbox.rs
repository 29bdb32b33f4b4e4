//! Appending to an mbox file the way mail readers expect: a dot-lock
//! (`FILE.lock`, created exclusively) and an fcntl lock on the file, both
//! held while writing, as Postfix, mutt and mail(1) do. An open-file-
//! description lock is used: it conflicts with the classic fcntl locks of
//! other programs and, unlike them, also between threads of this process.
//! The write is fsynced before success is reported; a failed write is cut
//! off again, so the mailbox never keeps half a message.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use rand::Rng;

use crate::status::DeliveryError;

/// A dot-lock older than this is left over from a crash and removed
/// (Postfix's `stale_lock_time`).
const STALE_LOCK: Duration = Duration::from_secs(500);

/// Where and how to append.
#[derive(Debug, Clone)]
pub struct Mbox<'a> {
    pub path: &'a Path,
    /// A new mailbox is given to this uid and gid (a root agent creating
    /// a user's mailbox in the spool).
    pub create_owner: Option<(u32, u32)>,
    /// An existing mailbox must belong to this uid.
    pub required_owner: Option<u32>,
    /// 0: no limit.
    pub size_limit: u64,
    pub lock_timeout: Duration,
}

impl Mbox<'_> {
    /// Appends `parts` as one message.
    pub fn append(&self, parts: &[Vec<u8>]) -> Result<(), DeliveryError> {
        let deadline = Instant::now() + self.lock_timeout;
        let dotlock = DotLock::acquire(self.path, deadline)?;
        let result = self.append_locked(parts, deadline);
        drop(dotlock);
        result
    }

    fn append_locked(&self, parts: &[Vec<u8>], deadline: Instant) -> Result<(), DeliveryError> {
        let io_error = |e: &io::Error| DeliveryError::io(self.path, e);
        let mut file = self.open().map_err(|e| io_error(&e))?;
        self.check(&file)?;
        lock_file(&file, self.path, deadline)?;
        let size = file.metadata().map_err(|e| io_error(&e))?.len();
        let adding: u64 = parts.iter().map(|p| p.len() as u64).sum();
        if self.size_limit > 0 && size.saturating_add(adding) > self.size_limit {
            return Err(DeliveryError::MailboxFull {
                path: self.path.display().to_string(),
                size,
                limit: self.size_limit,
            });
        }
        let written = parts
            .iter()
            .try_for_each(|part| file.write_all(part))
            .and_then(|()| file.sync_data());
        if let Err(error) = written {
            // Cut the partial message off, so the next one starts on a
            // clean `From ` line.
            let _ = file.set_len(size);
            let _ = file.sync_data();
            return Err(io_error(&error));
        }
        Ok(())
    }

    /// Opens the mailbox for appending, creating it (mode 0600) if it does
    /// not exist; never through a symbolic link.
    fn open(&self) -> io::Result<File> {
        let mut options = std::fs::OpenOptions::new();
        options
            .append(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NOCTTY);
        match options.open(self.path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            other => return other,
        }
        let file = match options.clone().create_new(true).mode(0o600).open(self.path) {
            // Created by someone else meanwhile: open theirs.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return options.open(self.path),
            other => other?,
        };
        if let Some((uid, gid)) = self.create_owner {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
        }
        Ok(file)
    }

    /// A mailbox must be a plain file with one name, owned by its user: a
    /// hard link or a device would send the mail somewhere else.
    fn check(&self, file: &File) -> Result<(), DeliveryError> {
        let unsafe_because = |detail: String| DeliveryError::Unsafe {
            path: self.path.display().to_string(),
            detail,
        };
        let meta = file
            .metadata()
            .map_err(|e| DeliveryError::io(self.path, &e))?;
        if !meta.is_file() {
            return Err(unsafe_because("not a regular file".into()));
        }
        if meta.nlink() != 1 {
            return Err(unsafe_because(format!(
                "it has {} hard links",
                meta.nlink()
            )));
        }
        if let Some(uid) = self.required_owner
            && meta.uid() != uid
        {
            return Err(unsafe_because(format!(
                "owned by uid {}, not the recipient's uid {uid}",
                meta.uid()
            )));
        }
        Ok(())
    }
}

/// Takes the fcntl write lock on the whole file, waiting until `deadline`.
fn lock_file(file: &File, path: &Path, deadline: Instant) -> Result<(), DeliveryError> {
    let lock = libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    loop {
        // SAFETY: fcntl on an fd we own, with a lock description that
        // lives across the call.
        let result = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &lock) };
        if result == 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        let busy = matches!(
            error.raw_os_error(),
            Some(libc::EAGAIN) | Some(libc::EACCES) | Some(libc::EINTR)
        );
        if !busy {
            return Err(DeliveryError::Locked {
                path: path.display().to_string(),
                detail: error.to_string(),
            });
        }
        if Instant::now() >= deadline {
            return Err(DeliveryError::Locked {
                path: path.display().to_string(),
                detail: "another program holds the lock".into(),
            });
        }
        pause();
    }
}

/// A short random wait between lock attempts, so that many deliveries to
/// one mailbox take turns rather than retrying in step.
fn pause() {
    let millis = rand::rng().random_range(5..50);
    std::thread::sleep(Duration::from_millis(millis));
}

/// `FILE.lock`, created exclusively; removed when dropped. Where the
/// directory is not writable to us, there is no dot-lock and the fcntl
/// lock alone protects the file (as for Postfix's file deliveries).
struct DotLock {
    path: Option<PathBuf>,
}

impl DotLock {
    fn acquire(mailbox: &Path, deadline: Instant) -> Result<Self, DeliveryError> {
        let mut name = mailbox.as_os_str().to_owned();
        name.push(".lock");
        let path = PathBuf::from(name);
        loop {
            let created = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path);
            match created {
                Ok(mut file) => {
                    let _ = writeln!(file, "{}", std::process::id());
                    return Ok(Self { path: Some(path) });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    if is_stale(&path) {
                        let _ = std::fs::remove_file(&path);
                        continue;
                    }
                }
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS)
                    ) =>
                {
                    return Ok(Self { path: None });
                }
                Err(e) => return Err(DeliveryError::io(&path, &e)),
            }
            if Instant::now() >= deadline {
                return Err(DeliveryError::Locked {
                    path: path.display().to_string(),
                    detail: "the dot-lock is held by another program".into(),
                });
            }
            pause();
        }
    }
}

fn is_stale(path: &Path) -> bool {
    std::fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|modified| SystemTime::now().duration_since(modified).ok())
        .is_some_and(|age| age > STALE_LOCK)
}

impl Drop for DotLock {
    fn drop(&mut self) {
        if let Some(path) = &self.path {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mbox(path: &Path) -> Mbox<'_> {
        Mbox {
            path,
            create_owner: None,
            required_owner: None,
            size_limit: 0,
            lock_timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn appends_and_leaves_no_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alice");
        mbox(&path)
            .append(&[b"From a\n".to_vec(), b"x\n\n".to_vec()])
            .unwrap();
        mbox(&path)
            .append(&[b"From b\n".to_vec(), b"y\n\n".to_vec()])
            .unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"From a\nx\n\nFrom b\ny\n\n");
        assert!(!dir.path().join("alice.lock").exists());
    }

    #[test]
    fn concurrent_appends_do_not_interleave() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("box");
        std::thread::scope(|scope| {
            for n in 0..8 {
                let path = &path;
                scope.spawn(move || {
                    let line = format!("{n}").repeat(10_000);
                    mbox(path)
                        .append(&[
                            format!("From {n}\n").into_bytes(),
                            line.into_bytes(),
                            b"\n\n".to_vec(),
                        ])
                        .unwrap();
                });
            }
        });
        let text = std::fs::read_to_string(&path).unwrap();
        let messages: Vec<&str> = text.split("From ").filter(|m| !m.is_empty()).collect();
        assert_eq!(messages.len(), 8);
        for message in messages {
            let (n, body) = message.split_once('\n').unwrap();
            assert_eq!(body.trim_end(), n.repeat(10_000));
        }
    }

    #[test]
    fn limits_links_and_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("full");
        std::fs::write(&path, vec![b'x'; 100]).unwrap();
        let mut limited = mbox(&path);
        limited.size_limit = 120;
        let error = limited.append(&[vec![b'y'; 30]]).unwrap_err();
        assert!(
            matches!(error, DeliveryError::MailboxFull { .. }),
            "{error}"
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 100);
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(mbox(&link).append(&[b"z".to_vec()]).is_err());
        let hard = dir.path().join("hard");
        std::fs::hard_link(&path, &hard).unwrap();
        let error = mbox(&hard).append(&[b"z".to_vec()]).unwrap_err();
        assert!(matches!(error, DeliveryError::Unsafe { .. }), "{error}");
    }

    #[test]
    fn a_held_dotlock_times_out_and_a_stale_one_is_broken() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("held");
        std::fs::write(dir.path().join("held.lock"), b"1").unwrap();
        let mut quick = mbox(&path);
        quick.lock_timeout = Duration::from_millis(200);
        let error = quick.append(&[b"x".to_vec()]).unwrap_err();
        assert!(matches!(error, DeliveryError::Locked { .. }), "{error}");
        let old = SystemTime::now() - Duration::from_secs(3600);
        File::options()
            .write(true)
            .open(dir.path().join("held.lock"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        quick.append(&[b"x".to_vec()]).unwrap();
    }
}
