//! The health listener, inherited from the master: it binds
//! `health.listen_address` (privileged work) and passes the socket as fd
//! 3 with `EMPATH_LISTEN_FDS=1`; `0` when health is disabled or the
//! address could not be bound.

use std::ffi::OsStr;
use std::net::TcpListener;
use std::os::fd::{FromRawFd, RawFd};

use nix::sys::socket::{getsockopt, sockopt};

/// The environment variable that holds the number of inherited listeners.
pub const LISTEN_FDS_VAR: &str = "EMPATH_LISTEN_FDS";
const HEALTH_FD: RawFd = 3;

/// How many listeners the master passed: 0 or 1.
pub fn listen_fd_count(value: Option<&OsStr>) -> Result<usize, String> {
    let value = value.ok_or_else(|| {
        format!("{LISTEN_FDS_VAR} is not set: empath-anvil must be started by the empath master")
    })?;
    match value.to_str().map(str::trim) {
        Some("0") => Ok(0),
        Some("1") => Ok(1),
        _ => Err(format!(
            "{LISTEN_FDS_VAR}={value:?}: expected 0 or 1 (the health listener)"
        )),
    }
}

/// The inherited health listener, if the master passed one.
pub fn health_listener() -> Result<Option<TcpListener>, String> {
    if listen_fd_count(std::env::var_os(LISTEN_FDS_VAR).as_deref())? == 0 {
        return Ok(None);
    }
    // SAFETY: F_GETFD only asks whether the fd is open; it touches
    // nothing. Checked first because owning a closed fd is undefined
    // behaviour.
    if unsafe { nix::libc::fcntl(HEALTH_FD, nix::libc::F_GETFD) } < 0 {
        return Err(format!(
            "fd {HEALTH_FD} is not open: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: the fd is open, and the master's contract gives it to this
    // process alone; nothing else in the process uses it.
    let listener = unsafe { TcpListener::from_raw_fd(HEALTH_FD) };
    let listening = getsockopt(&listener, sockopt::AcceptConn)
        .map_err(|e| format!("fd {HEALTH_FD} is not a socket: {e}"))?;
    if !listening {
        return Err(format!("fd {HEALTH_FD} is not a listening socket"));
    }
    Ok(Some(listener))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_or_one_listener() {
        assert_eq!(listen_fd_count(Some(OsStr::new("0"))), Ok(0));
        assert_eq!(listen_fd_count(Some(OsStr::new("1"))), Ok(1));
        for bad in [None, Some("2"), Some("x"), Some("")] {
            assert!(listen_fd_count(bad.map(OsStr::new)).is_err(), "{bad:?}");
        }
    }
}
