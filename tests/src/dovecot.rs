//! A real Dovecot (Debian's `dovecot-lmtpd`) for the LMTP tests: its own
//! config in a temp dir, LMTP on a loopback port and a Unix socket,
//! Maildirs for a fixed set of virtual users, and `doveadm` to read them.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::run::run_bounded;
use crate::{poll, test_dir};

const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running Dovecot instance; stopped when dropped.
pub struct Dovecot {
    dir: TempDir,
    addr: SocketAddr,
}

impl Dovecot {
    /// Starts Dovecot with these users (local parts; any domain).
    pub fn start(users: &[&str]) -> Self {
        let dir = test_dir();
        let root = dir.path();
        for sub in ["run", "mail"] {
            std::fs::create_dir_all(root.join(sub)).expect("dovecot dirs");
        }
        // Mail is written as `nobody`.
        let mail = root.join("mail");
        std::fs::set_permissions(&mail, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .expect("chmod mail");
        let users_file = root.join("users");
        let entries: String = users
            .iter()
            .map(|user| format!("{user}:{{PLAIN}}unused::::::\n"))
            .collect();
        std::fs::write(&users_file, entries).expect("users file");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let config = format!(
            "base_dir = {run}\n\
             state_dir = {run}/state\n\
             instance_name = empath-test-{port}\n\
             protocols = lmtp\n\
             listen = 127.0.0.1\n\
             log_path = {root}/dovecot.log\n\
             ssl = no\n\
             mail_location = maildir:{mail}/%Ln\n\
             default_internal_user = dovecot\n\
             default_login_user = dovenull\n\
             first_valid_uid = 0\n\
             auth_username_format = %Ln\n\
             passdb {{\n  driver = passwd-file\n  args = {users}\n}}\n\
             userdb {{\n  driver = passwd-file\n  args = {users}\n  default_fields = uid=nobody gid=nogroup home={mail}/%Ln\n}}\n\
             service lmtp {{\n  inet_listener lmtp {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n  unix_listener lmtp {{\n    mode = 0666\n  }}\n}}\n",
            run = root.join("run").display(),
            root = root.display(),
            mail = mail.display(),
            users = users_file.display(),
        );
        let config_path = root.join("dovecot.conf");
        std::fs::write(&config_path, config).expect("dovecot.conf");
        let output = run_bounded(
            Command::new("dovecot").arg("-c").arg(&config_path),
            START_TIMEOUT,
        );
        assert!(
            output.status.success(),
            "dovecot did not start (is dovecot-lmtpd installed?): {}",
            output.combined()
        );
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let dovecot = Self { dir, addr };
        poll(START_TIMEOUT, || {
            std::net::TcpStream::connect(addr)
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .unwrap_or_else(|e| panic!("dovecot's LMTP port did not open: {e}\n{}", dovecot.log()));
        dovecot
    }

    /// The LMTP listener on loopback.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The LMTP Unix socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("run/lmtp")
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("dovecot.conf")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dovecot.log")).unwrap_or_default()
    }

    /// The full text of every message in `user`'s INBOX, as `doveadm
    /// fetch` reads it.
    pub fn inbox(&self, user: &str) -> Vec<String> {
        let output = run_bounded(
            Command::new("doveadm")
                .arg("-c")
                .arg(self.config())
                .args(["fetch", "-u", user, "text", "mailbox", "INBOX"]),
            START_TIMEOUT,
        );
        if !output.status.success() {
            // A user nobody wrote to has no mailbox yet.
            return Vec::new();
        }
        output
            .stdout
            .split("\u{c}\n")
            .map(|message| message.trim_start_matches("text:\n").to_owned())
            .filter(|message| !message.trim().is_empty())
            .collect()
    }

    pub fn mail_dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        let _ = run_bounded(
            Command::new("doveadm")
                .arg("-c")
                .arg(self.config())
                .arg("stop"),
            START_TIMEOUT,
        );
    }
}
