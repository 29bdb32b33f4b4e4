//! The compiled alias index, `SOURCE.cdb`: a constant database (cdb)
//! from lower-cased alias names to their targets as written. `compile`
//! writes it to a temporary file, fsyncs it and renames it over the old
//! one, so a reader sees either the old index or the new one, whole.
//! Readers map the file and look names up by hash; they stat the path on
//! each lookup and reopen it when a rebuild replaced the inode.

use std::fs::File;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::source::{SourceError, parse_source};
use crate::safeio;

/// Marks a file as an index that `compile` finished; its value is the
/// format version.
const VERSION_KEY: &[u8] = b"\0empath-aliases";
const VERSION: &[u8] = b"1";

/// The index of alias file `source`: `source.cdb`.
pub fn index_path(source: &Path) -> PathBuf {
    let mut name = source.as_os_str().to_owned();
    name.push(".cdb");
    PathBuf::from(name)
}

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("cannot read {}: {error}", path.display())]
    Read { path: PathBuf, error: io::Error },
    #[error("{}", describe_source_errors(path, errors))]
    Source {
        path: PathBuf,
        errors: Vec<SourceError>,
    },
    #[error("cannot write {}: {error}", path.display())]
    Write { path: PathBuf, error: io::Error },
}

fn describe_source_errors(path: &Path, errors: &[SourceError]) -> String {
    errors
        .iter()
        .map(|e| format!("{}:{}: {}", path.display(), e.line, e.message))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Compiles alias file `source` into its index and returns how many
/// aliases it holds. On any problem in the source, nothing is written and
/// the old index stays. Run as root, the index gets the source's owner
/// (whose privileges its commands and files run with, unless root).
pub fn compile(source: &Path) -> Result<usize, CompileError> {
    let text = std::fs::read_to_string(source).map_err(|error| CompileError::Read {
        path: source.to_owned(),
        error,
    })?;
    let entries = parse_source(&text).map_err(|errors| CompileError::Source {
        path: source.to_owned(),
        errors,
    })?;
    let target = index_path(source);
    let write_error = |error| CompileError::Write {
        path: target.clone(),
        error,
    };
    let source_meta = std::fs::metadata(source).map_err(|error| CompileError::Read {
        path: source.to_owned(),
        error,
    })?;
    let dir = target
        .parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("."));
    let file_name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let written = (|| {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)?;
        let mut make = cdb2::CDBMake::new(file.try_clone()?)?;
        make.add(VERSION_KEY, VERSION)?;
        for entry in &entries {
            make.add(entry.name.as_bytes(), entry.value.as_bytes())?;
        }
        make.finish()?;
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::fchown(&file, Some(source_meta.uid()), Some(source_meta.gid()))?;
        }
        file.sync_all()?;
        std::fs::rename(&tmp, &target)?;
        safeio::fsync_dir(&dir)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(write_error)?;
    Ok(entries.len())
}

/// What an alias lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The targets, as written in the source (parse with
    /// [`super::parse_targets`]).
    pub value: String,
    /// The owner of the index: commands and files of the alias run as
    /// this user, unless it is root.
    pub owner: u32,
    /// The alias file it came from.
    pub source: PathBuf,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum LookupError {
    /// The index cannot be read now; the caller should try again later.
    #[error("alias map {} is unavailable: {reason}", path.display())]
    Unavailable { path: PathBuf, reason: String },
}

struct Opened {
    db: cdb2::CDB,
    dev: u64,
    ino: u64,
    owner: u32,
}

/// One alias file's index, opened on first use and reopened after a rebuild.
pub struct AliasMap {
    source: PathBuf,
    index: PathBuf,
    opened: Mutex<Option<Opened>>,
}

impl std::fmt::Debug for AliasMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AliasMap")
            .field("source", &self.source)
            .finish()
    }
}

impl AliasMap {
    pub fn new(source: &Path) -> Self {
        Self {
            source: source.to_owned(),
            index: index_path(source),
            opened: Mutex::new(None),
        }
    }

    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Looks `name` up (case does not matter). An alias file that does not
    /// exist at all has no aliases; one whose index is missing or broken
    /// is unavailable (mail waits rather than bounces).
    pub fn lookup(&self, name: &str) -> Result<Option<Found>, LookupError> {
        let unavailable = |reason: String| LookupError::Unavailable {
            path: self.index.clone(),
            reason,
        };
        let meta = match std::fs::metadata(&self.index) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if self.source.exists() {
                    return Err(unavailable(format!(
                        "{} is not compiled; run newaliases",
                        self.source.display()
                    )));
                }
                return Ok(None);
            }
            Err(e) => return Err(unavailable(e.to_string())),
        };
        let mut opened = self.opened.lock().unwrap_or_else(|p| p.into_inner());
        let current = opened
            .as_ref()
            .is_some_and(|o| o.dev == meta.dev() && o.ino == meta.ino());
        if !current {
            let db = open_index(&self.index).map_err(|e| unavailable(e.to_string()))?;
            if let Ok(source) = std::fs::metadata(&self.source)
                && source.modified().ok() > meta.modified().ok()
            {
                tracing::warn!(source = %self.source.display(), "the alias file is newer than its index; run newaliases");
            }
            tracing::debug!(index = %self.index.display(), "alias index opened");
            *opened = Some(Opened {
                db,
                dev: meta.dev(),
                ino: meta.ino(),
                owner: meta.uid(),
            });
        }
        let Some(open) = opened.as_ref() else {
            return Ok(None);
        };
        match open.db.get(name.to_lowercase().as_bytes()) {
            None => Ok(None),
            Some(Ok(value)) => Ok(Some(Found {
                value: String::from_utf8_lossy(&value).into_owned(),
                owner: open.owner,
                source: self.source.clone(),
            })),
            Some(Err(e)) => Err(unavailable(e.to_string())),
        }
    }
}

fn open_index(path: &Path) -> io::Result<cdb2::CDB> {
    // Opened once by hand first: a clear error for a missing or unreadable
    // file, and no mapping of something that is not a regular file.
    let file = File::open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    let db = cdb2::CDB::open(path)?;
    match db.get(VERSION_KEY) {
        Some(Ok(version)) if version == VERSION => Ok(db),
        _ => Err(io::Error::other(
            "not an alias index of this version; run newaliases",
        )),
    }
}

/// Several alias files, searched in order (Postfix's `alias_maps`).
#[derive(Debug, Default)]
pub struct AliasMaps {
    maps: Vec<AliasMap>,
}

impl AliasMaps {
    pub fn new<'a>(sources: impl IntoIterator<Item = &'a PathBuf>) -> Self {
        Self {
            maps: sources.into_iter().map(|s| AliasMap::new(s)).collect(),
        }
    }

    /// The first map that has `name`.
    pub fn lookup(&self, name: &str) -> Result<Option<Found>, LookupError> {
        for map in &self.maps {
            if let Some(found) = map.lookup(name)? {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiled_aliases_are_found_and_rebuilds_are_seen() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("aliases");
        std::fs::write(&source, "Root: alice\nstaff: a,\n  b\n").unwrap();
        let map = AliasMap::new(&source);
        assert!(matches!(
            map.lookup("root"),
            Err(LookupError::Unavailable { .. })
        ));
        assert_eq!(compile(&source).unwrap(), 2);
        let found = map.lookup("ROOT").unwrap().unwrap();
        assert_eq!(found.value, "alice");
        assert_eq!(map.lookup("staff").unwrap().unwrap().value, "a,\nb");
        assert_eq!(map.lookup("nobody-here").unwrap(), None);
        std::fs::write(&source, "root: bob\n").unwrap();
        compile(&source).unwrap();
        assert_eq!(map.lookup("root").unwrap().unwrap().value, "bob");
        assert_eq!(map.lookup("staff").unwrap(), None);
    }

    #[test]
    fn a_bad_source_keeps_the_old_index() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("aliases");
        std::fs::write(&source, "root: alice\n").unwrap();
        compile(&source).unwrap();
        std::fs::write(&source, "root alice\n").unwrap();
        let error = compile(&source).unwrap_err().to_string();
        assert!(
            error.ends_with("aliases:1: expected `name: targets`"),
            "{error}"
        );
        let map = AliasMap::new(&source);
        assert_eq!(map.lookup("root").unwrap().unwrap().value, "alice");
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 2, "no temporary file is left behind");
    }

    #[test]
    fn a_missing_alias_file_has_no_aliases_and_garbage_is_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let maps = AliasMaps::new(&[dir.path().join("none")]);
        assert_eq!(maps.lookup("root").unwrap(), None);
        let source = dir.path().join("aliases");
        std::fs::write(&source, "root: a\n").unwrap();
        std::fs::write(index_path(&source), vec![7u8; 4096]).unwrap();
        assert!(AliasMap::new(&source).lookup("root").is_err());
    }
}
