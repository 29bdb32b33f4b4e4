//! Local submission: who a local user is, and the drop directory that
//! `sendmail` uses while the daemons are down.

use std::fs::File;
use std::io::{self, BufReader};
use std::os::unix::fs::MetadataExt;

use empath_common::maildrop::{DropError, DropStream};
use empath_common::queue::{ClientInfo, Queue};

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
    pub owner: u32,
    pub len: u64,
}

/// The drop files ready to be picked up, oldest first. Half-written files
/// (still named `.NAME.tmp` by sendmail) are skipped.
pub fn pending(queue: &Queue) -> io::Result<Vec<Dropped>> {
    let dir = queue.maildrop_dir();
    let mut found: Vec<Dropped> = std::fs::read_dir(&dir)?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let metadata = std::fs::symlink_metadata(entry.path()).ok()?;
            (!name.starts_with('.') && metadata.is_file()).then(|| Dropped {
                name,
                owner: metadata.uid(),
                len: metadata.len(),
            })
        })
        .collect();
    found.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(found)
}

/// Opens a drop file for streaming.
pub fn open(queue: &Queue, dropped: &Dropped) -> Result<DropStream<BufReader<File>>, DropError> {
    let file = File::open(queue.maildrop_dir().join(&dropped.name))?;
    DropStream::open(BufReader::new(file), dropped.len)
}

/// Moves a drop file that cannot be queued out of the way (to `corrupt/`
/// under a `maildrop-` name), where an operator finds it.
pub fn set_aside(queue: &Queue, dropped: &Dropped, why: &str) {
    let path = queue.maildrop_dir().join(&dropped.name);
    let name = &dropped.name;
    let target = queue
        .root()
        .join("corrupt")
        .join(format!("maildrop-{name}"));
    match std::fs::rename(&path, &target) {
        Ok(()) => {
            tracing::error!(file = %name, moved_to = %target.display(), why, "drop file set aside")
        }
        Err(error) => {
            tracing::error!(file = %name, %error, why, "drop file could not be set aside")
        }
    }
}

/// Removes a drop file once its message is queued.
pub fn remove(queue: &Queue, name: &str) {
    if let Err(error) = std::fs::remove_file(queue.maildrop_dir().join(name)) {
        tracing::warn!(file = %name, %error, "cannot remove picked-up drop file");
    }
}
