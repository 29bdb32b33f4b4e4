//! The spool's gauges: how much the queue holds on disk, and how much room
//! its filesystem has left.

use super::{Family, Kind, Sample, Value};
use crate::queue::Queue;

/// The directories whose files make up the spool's size.
const DIRECTORIES: [&str; 7] = [
    "data", "tmp", "incoming", "active", "deferred", "hold", "corrupt",
];

/// `empath_spool_size_bytes` (the bytes the queue's files take),
/// `empath_spool_available_bytes` and
/// `empath_spool_filesystem_size_bytes` (the filesystem's room, for the
/// SpoolDiskSpaceLow alert).
pub fn families(queue: &Queue) -> Vec<Family> {
    let gauge = |name: &str, help: &str, value: f64| Family {
        name: name.into(),
        help: help.into(),
        kind: Kind::Gauge,
        samples: vec![Sample {
            labels: Vec::new(),
            value: Value::Scalar(value),
        }],
    };
    let mut families = vec![gauge(
        "empath_spool_size_bytes",
        "Bytes taken by the files in the spool (messages, envelopes, files being written).",
        size_of(queue) as f64,
    )];
    if let Ok(stats) = nix::sys::statvfs::statvfs(queue.root()) {
        let fragment = stats.fragment_size() as f64;
        families.push(gauge(
            "empath_spool_available_bytes",
            "Bytes available to the daemons on the spool's filesystem.",
            stats.blocks_available() as f64 * fragment,
        ));
        families.push(gauge(
            "empath_spool_filesystem_size_bytes",
            "Size of the spool's filesystem.",
            stats.blocks() as f64 * fragment,
        ));
    }
    families
}

/// The sizes of the files in the queue directories, added up: those in
/// the hashed subdirectories (`deferred/TV/...`) and any directly in a
/// queue directory (`corrupt/`, a flat spool before its migration). Files
/// that vanish meanwhile (delivered) are skipped.
fn size_of(queue: &Queue) -> u64 {
    DIRECTORIES
        .iter()
        .map(|dir| size_under(&queue.root().join(dir), 1))
        .sum()
}

/// The sizes of the files in `dir`, and in its subdirectories down to
/// `depth` more levels.
fn size_under(dir: &std::path::Path, depth: u32) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_file() => meta.len(),
            Ok(meta) if meta.is_dir() && depth > 0 => size_under(&entry.path(), depth - 1),
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_size_is_the_queues_not_the_filesystems() {
        let dir = tempfile::tempdir().expect("tempdir");
        let queue = Queue::new(dir.path().to_owned());
        queue.create_dirs().expect("dirs");
        std::fs::write(dir.path().join("data/a"), vec![0u8; 1000]).expect("write");
        std::fs::create_dir_all(dir.path().join("deferred/TV")).expect("mkdir");
        std::fs::write(dir.path().join("deferred/TV/b"), vec![0u8; 234]).expect("write");
        let families = families(&queue);
        let size = families
            .iter()
            .find(|f| f.name == "empath_spool_size_bytes")
            .expect("size");
        assert_eq!(size.samples[0].value, Value::Scalar(1234.0));
        assert!(
            families
                .iter()
                .any(|f| f.name == "empath_spool_filesystem_size_bytes")
        );
    }
}
