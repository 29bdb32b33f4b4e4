//! The delivery helper: `empath-local` run again, as the recipient (or
//! as the owner of an alias file), for every file operation in a place
//! that user controls: a Maildir or mailbox under a home directory, a
//! file named in an alias or `.forward`, reading a `.forward` or
//! `:include:` file. The agent switches identity between fork and exec,
//! so the helper has no privilege the user lacks; it receives one request
//! frame and the message on its standard input and answers one frame.
//!
//! Frames are a 4-byte big-endian length and a postcard value, as on the
//! daemon sockets.

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::identity::{Identity, switch_in_child};
use crate::maildir;
use crate::mbox::Mbox;
use crate::status::DeliveryError;

/// The first argument that makes `empath-local` a helper.
pub const HELPER_ARG: &str = "--delivery-helper";

/// `.forward` and `:include:` files larger than this are refused.
pub const MAX_LIST_FILE: u64 = 1 << 20;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// Append the message (on stdin) to an mbox file.
    AppendMbox {
        path: PathBuf,
        size_limit: u64,
        lock_timeout_secs: u64,
    },
    /// Deliver the message (on stdin) into a Maildir.
    Maildir { dir: PathBuf, hostname: String },
    /// Read a list file (`.forward`, `:include:`).
    ReadFile { path: PathBuf },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Reply {
    Delivered {
        detail: String,
    },
    /// The file's content and owner; `None` when it does not exist.
    File(Option<(Vec<u8>, u32)>),
    Failed(DeliveryError),
}

/// How the agent reaches the helper.
#[derive(Debug, Clone)]
pub struct Helper {
    executable: PathBuf,
    /// False when the agent is not root: the helper runs as the agent.
    switch: bool,
}

impl Helper {
    pub fn new(switch: bool) -> std::io::Result<Self> {
        Ok(Self {
            executable: std::env::current_exe()?,
            switch,
        })
    }

    /// Runs `request` as `identity` with `input` on its standard input.
    /// Blocking.
    pub fn run(
        &self,
        identity: &Identity,
        request: &Request,
        input: &[Vec<u8>],
    ) -> Result<Reply, DeliveryError> {
        let path = match request {
            Request::AppendMbox { path, .. } | Request::ReadFile { path } => path.clone(),
            Request::Maildir { dir, .. } => dir.clone(),
        };
        let failed = |e: std::io::Error| DeliveryError::io(&path, &e);
        let mut command = Command::new(&self.executable);
        command
            .arg(HELPER_ARG)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if self.switch {
            let (uid, gid) = (identity.uid, identity.gid);
            let groups: Vec<libc::gid_t> = identity.groups.clone();
            // SAFETY: only async-signal-safe calls (setgroups, setresgid,
            // setresuid, prctl), on data allocated before fork.
            unsafe {
                command.pre_exec(move || {
                    if switch_in_child(uid, gid, &groups) < 0
                        || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = command.spawn().map_err(failed)?;
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| failed(broken("no stdin")))?;
        let frame = encode(request).map_err(failed)?;
        // The helper reads all its input before it answers, so writing
        // everything first cannot deadlock.
        let written = stdin
            .write_all(&frame)
            .and_then(|()| input.iter().try_for_each(|part| stdin.write_all(part)));
        drop(stdin);
        let mut answer = Vec::new();
        if let Some(mut stdout) = child.stdout.take() {
            let _ = stdout.read_to_end(&mut answer);
        }
        let status = child.wait().map_err(failed)?;
        match decode::<Reply>(&answer) {
            Ok(reply) => Ok(reply),
            Err(_) => {
                let why = match written {
                    Err(e) => format!("the delivery helper did not take the message: {e}"),
                    Ok(()) => format!("the delivery helper failed ({status})"),
                };
                Err(failed(broken(&why)))
            }
        }
    }
}

fn broken(why: &str) -> std::io::Error {
    std::io::Error::other(why.to_owned())
}

fn encode<T: Serialize>(value: &T) -> std::io::Result<Vec<u8>> {
    let payload = postcard::to_stdvec(value).map_err(std::io::Error::other)?;
    let length = u32::try_from(payload.len()).map_err(std::io::Error::other)?;
    let mut frame = length.to_be_bytes().to_vec();
    frame.extend_from_slice(&payload);
    Ok(frame)
}

fn decode<T: for<'de> Deserialize<'de>>(frame: &[u8]) -> std::io::Result<T> {
    let (header, payload) = frame
        .split_at_checked(4)
        .ok_or_else(|| broken("short frame"))?;
    let length = u32::from_be_bytes(header.try_into().map_err(std::io::Error::other)?) as usize;
    let payload = payload.get(..length).ok_or_else(|| broken("short frame"))?;
    postcard::from_bytes(payload).map_err(std::io::Error::other)
}

/// The helper process: reads the request and the message, does the one
/// thing asked, answers, and exits.
pub fn main() -> ! {
    let reply = match serve() {
        Ok(reply) => reply,
        Err(error) => Reply::Failed(error),
    };
    let status = match encode(&reply) {
        Ok(frame) => {
            let mut stdout = std::io::stdout().lock();
            if stdout
                .write_all(&frame)
                .and_then(|()| stdout.flush())
                .is_ok()
            {
                0
            } else {
                1
            }
        }
        Err(_) => 1,
    };
    std::process::exit(status)
}

fn serve() -> Result<Reply, DeliveryError> {
    let mut input = Vec::new();
    std::io::stdin()
        .lock()
        .read_to_end(&mut input)
        .map_err(|e| DeliveryError::io(Path::new("(stdin)"), &e))?;
    let request: Request =
        decode(&input).map_err(|e| DeliveryError::io(Path::new("(stdin)"), &e))?;
    let body_start = 4 + u32::from_be_bytes([input[0], input[1], input[2], input[3]]) as usize;
    let body = vec![input.split_off(body_start.min(input.len()))];
    match request {
        Request::AppendMbox {
            path,
            size_limit,
            lock_timeout_secs,
        } => {
            Mbox {
                path: &path,
                create_owner: None,
                required_owner: None,
                size_limit,
                lock_timeout: Duration::from_secs(lock_timeout_secs),
            }
            .append(&body)?;
            Ok(Reply::Delivered {
                detail: format!("delivered to file: {}", path.display()),
            })
        }
        Request::Maildir { dir, hostname } => {
            let file = maildir::deliver(&dir, &hostname, &body)?;
            Ok(Reply::Delivered {
                detail: format!("delivered to maildir: {}", file.display()),
            })
        }
        Request::ReadFile { path } => read_list_file(&path),
    }
}

fn read_list_file(path: &Path) -> Result<Reply, DeliveryError> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Reply::File(None)),
        Err(e) => return Err(DeliveryError::io(path, &e)),
    };
    let meta = file.metadata().map_err(|e| DeliveryError::io(path, &e))?;
    if !meta.is_file() || meta.len() > MAX_LIST_FILE {
        return Err(DeliveryError::Unsafe {
            path: path.display().to_string(),
            detail: format!("not a regular file of at most {MAX_LIST_FILE} bytes"),
        });
    }
    let mut content = Vec::new();
    file.take(MAX_LIST_FILE)
        .read_to_end(&mut content)
        .map_err(|e| DeliveryError::io(path, &e))?;
    Ok(Reply::File(Some((content, meta.uid()))))
}

/// A path as a C string for calls between fork and exec.
pub fn c_path(path: &Path) -> Option<CString> {
    CString::new(path.as_os_str().as_bytes()).ok()
}
