//! Local submission: who a local user is, and the drop directory that
//! `sendmail` uses while the daemons are down.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use empath_common::maildrop::{self, DropFile};
use empath_common::queue::{ClientInfo, Queue};

/// A drop file this old that still does not decode is broken, not half-written.
const BROKEN_AFTER: Duration = Duration::from_secs(60);

/// What the Received header and the envelope say about a local user.
pub fn client_for_uid(uid: u32) -> ClientInfo {
    ClientInfo {
        addr: "local".into(),
        helo: String::new(),
        // As Postfix writes it: "Received: by host (Empath, from userid 1000)".
        name: Some(format!("userid {uid}")),
        protocol: "local".into(),
        tls: None,
        authenticated_as: None,
    }
}

/// A file waiting in the drop directory.
pub struct Dropped {
    pub name: String,
    pub drop: DropFile,
    pub owner: u32,
}

/// Reads the complete drop files, oldest first. Files that never decode are
/// moved out of the way (to `corrupt/` under a `maildrop-` name) and logged.
pub fn pending(queue: &Queue) -> io::Result<Vec<Dropped>> {
    let dir = queue.maildrop_dir();
    let mut names: Vec<String> = std::fs::read_dir(&dir)?
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with('.'))
        .collect();
    names.sort();
    let mut found = Vec::new();
    for name in names {
        let path = dir.join(&name);
        let Ok(metadata) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if !metadata.is_file() {
            continue;
        }
        match std::fs::read(&path)
            .ok()
            .and_then(|bytes| maildrop::decode(&bytes))
        {
            Some(drop) => found.push(Dropped {
                name,
                drop,
                owner: metadata.uid(),
            }),
            None if is_older_than(&metadata, BROKEN_AFTER) => quarantine(queue, &path, &name),
            None => {}
        }
    }
    Ok(found)
}

fn is_older_than(metadata: &std::fs::Metadata, age: Duration) -> bool {
    metadata
        .modified()
        .ok()
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .is_some_and(|elapsed| elapsed >= age)
}

fn quarantine(queue: &Queue, path: &Path, name: &str) {
    let target = queue
        .root()
        .join("corrupt")
        .join(format!("maildrop-{name}"));
    match std::fs::rename(path, &target) {
        Ok(()) => {
            tracing::error!(file = %name, moved_to = %target.display(), "unreadable drop file moved aside")
        }
        Err(error) => {
            tracing::error!(file = %name, %error, "unreadable drop file could not be moved")
        }
    }
}

/// Removes a drop file once its message is queued.
pub fn remove(queue: &Queue, name: &str) {
    if let Err(error) = std::fs::remove_file(queue.maildrop_dir().join(name)) {
        tracing::warn!(file = %name, %error, "cannot remove picked-up drop file");
    }
}
