//! Whom the daemons run as. A master started as root binds the listeners
//! and prepares the queue, then starts every daemon as the configured
//! unprivileged user and group (supplementary groups dropped, see
//! `spawn`). A master started as anyone else runs its daemons as itself:
//! the development setup.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use empath_common::config::{Config, DEFAULT_USER};
use nix::unistd::{Gid, Group, Uid, User};

/// The identity the daemons take between fork and exec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

/// The daemons' identity, if it differs from the master's. Errors name
/// the config key to change.
pub fn resolve(config: &Config) -> Result<Option<RunAs>, String> {
    if !Uid::effective().is_root() {
        let me = User::from_uid(Uid::effective())
            .ok()
            .flatten()
            .map(|u| u.name);
        if let Some(user) = &config.user
            && me.as_deref() != Some(user.as_str())
        {
            tracing::warn!(
                configured = %user,
                running_as = me.as_deref().unwrap_or("?"),
                "not started as root: the daemons run as the master's own user, not the configured `user`"
            );
        }
        return Ok(None);
    }
    let name = match (&config.user, config.allow_root) {
        (Some(name), _) => name.as_str(),
        // Explicitly allowed, and nobody else named: keep root.
        (None, true) => return Ok(None),
        (None, false) => DEFAULT_USER,
    };
    let user = User::from_name(name)
        .map_err(|e| format!("user: cannot look up {name:?}: {e}"))?
        .ok_or_else(|| {
            format!(
                "user: the daemons' user {name:?} does not exist; create it (e.g. `useradd --system --home-dir /var/spool/empath --shell /usr/sbin/nologin {name}`) or set `user` in {}",
                config.path.display()
            )
        })?;
    let gid = match &config.group {
        Some(group) => {
            Group::from_name(group)
                .map_err(|e| format!("group: cannot look up {group:?}: {e}"))?
                .ok_or_else(|| format!("group: the daemons' group {group:?} does not exist"))?
                .gid
        }
        None => user.gid,
    };
    if user.uid.is_root() && !config.allow_root {
        return Err(format!(
            "user: refusing to run the daemons as root ({name:?}); name an unprivileged user, or set `allow_root: true` if you really mean it"
        ));
    }
    if user.uid.is_root() && gid == Gid::from_raw(0) {
        return Ok(None);
    }
    Ok(Some(RunAs {
        uid: user.uid.as_raw(),
        gid: gid.as_raw(),
    }))
}

/// Hands the queue tree to the daemons' user: everything under the spool
/// that is not theirs yet (a first start, or a queue written by a root
/// run). The master's own files go too; it only needs them as root.
pub fn chown_spool(root: &Path, run_as: RunAs) -> Result<(), String> {
    let mut pending = vec![root.to_owned()];
    while let Some(path) = pending.pop() {
        let metadata = std::fs::symlink_metadata(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if metadata.uid() != run_as.uid || metadata.gid() != run_as.gid {
            std::os::unix::fs::lchown(&path, Some(run_as.uid), Some(run_as.gid))
                .map_err(|e| format!("cannot give {} to the daemons' user: {e}", path.display()))?;
        }
        if metadata.is_dir() {
            let entries = std::fs::read_dir(&path)
                .map_err(|e| format!("cannot list {}: {e}", path.display()))?;
            pending.extend(entries.flatten().map(|entry| entry.path()));
        }
    }
    Ok(())
}

/// Fails early, with the fix, when the daemons could not read the config
/// file: otherwise each would die at start and be throttled.
pub fn check_config_readable(path: &Path, run_as: RunAs) -> Result<(), String> {
    let metadata =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mode = metadata.permissions().mode();
    let readable = (metadata.uid() == run_as.uid && mode & 0o400 != 0)
        || (metadata.gid() == run_as.gid && mode & 0o040 != 0)
        || mode & 0o004 != 0;
    if readable {
        Ok(())
    } else {
        Err(format!(
            "the daemons run as uid {} gid {} and cannot read {} (mode {:o}); make it readable by their group, e.g. `chgrp {} {} && chmod 0640 {}`",
            run_as.uid,
            run_as.gid,
            path.display(),
            mode & 0o7777,
            run_as.gid,
            path.display(),
            path.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_readability_follows_owner_group_and_other_bits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empath.config.ron");
        std::fs::write(&path, "Empath()").unwrap();
        let metadata = std::fs::metadata(&path).unwrap();
        let stranger = RunAs {
            uid: metadata.uid() + 4242,
            gid: metadata.gid() + 4242,
        };
        let group_member = RunAs {
            uid: stranger.uid,
            gid: metadata.gid(),
        };
        let set = |mode: u32| {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        set(0o600);
        let error = check_config_readable(&path, stranger).unwrap_err();
        assert!(error.contains("chmod 0640"), "{error}");
        assert!(check_config_readable(&path, group_member).is_err());
        set(0o640);
        assert!(check_config_readable(&path, group_member).is_ok());
        assert!(check_config_readable(&path, stranger).is_err());
        set(0o644);
        assert!(check_config_readable(&path, stranger).is_ok());
    }
}
