//! Whom a delivery runs as: a user's uid, gid, groups and home, resolved
//! before any process is started (nothing is looked up between fork and
//! exec).

use std::ffi::CString;
use std::path::PathBuf;

use nix::unistd::{Gid, Uid, User};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (with the primary group).
    pub groups: Vec<u32>,
    pub home: PathBuf,
    pub shell: PathBuf,
}

impl Identity {
    pub fn of_user(user: &User) -> Self {
        let groups = CString::new(user.name.as_bytes())
            .ok()
            .and_then(|name| nix::unistd::getgrouplist(&name, user.gid).ok())
            .unwrap_or_else(|| vec![user.gid])
            .into_iter()
            .map(Gid::as_raw)
            .collect();
        Self {
            name: user.name.clone(),
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            groups,
            home: user.dir.clone(),
            shell: user.shell.clone(),
        }
    }

    pub fn of_uid(uid: u32) -> Option<Self> {
        User::from_uid(Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|user| Self::of_user(&user))
    }

    /// The process's own identity (an unprivileged agent runs everything
    /// as itself).
    pub fn current() -> Self {
        let uid = Uid::effective();
        Self::of_uid(uid.as_raw()).unwrap_or_else(|| Self {
            name: uid.to_string(),
            uid: uid.as_raw(),
            gid: Gid::effective().as_raw(),
            groups: vec![Gid::effective().as_raw()],
            home: PathBuf::from("/"),
            shell: PathBuf::from("/bin/sh"),
        })
    }

    pub fn is_root(&self) -> bool {
        self.uid == 0
    }
}

/// Takes on `identity` in a child between fork and exec: groups first
/// (after setresuid they could no longer change), then gid, then uid.
/// Returns -1 on failure, with errno set.
///
/// # Safety
/// Only async-signal-safe calls, and `groups` was allocated before fork.
pub unsafe fn switch_in_child(uid: u32, gid: u32, groups: &[libc::gid_t]) -> libc::c_int {
    // SAFETY: plain system calls on values prepared before fork.
    unsafe {
        if libc::setgroups(groups.len(), groups.as_ptr()) < 0
            || libc::setresgid(gid, gid, gid) < 0
            || libc::setresuid(uid, uid, uid) < 0
        {
            return -1;
        }
    }
    0
}
