//! Helpers for the local delivery tests: real system users (useradd,
//! removed again on drop), alias files compiled with the real
//! `newaliases`, `sendmail` runs, and mailboxes read with Python's
//! `mailbox` module.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::run::{RunOutput, run_bounded};
use crate::{Empath, binary};

const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// A system user made for one test (`useradd -m`), removed with its home
/// directory when dropped. Names are unique per process and run.
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

impl TestUser {
    pub fn create(tag: &str) -> Self {
        Self::create_with(tag, &[])
    }

    /// A second superuser (`useradd --non-unique --uid 0`) with a home of
    /// its own: what root's `~/.forward` handling applies to, without
    /// touching the real root's home.
    pub fn create_superuser(tag: &str) -> Self {
        Self::create_with(tag, &["--non-unique", "--uid", "0"])
    }

    fn create_with(tag: &str, options: &[&str]) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "et{}{}{}",
            tag.chars().take(6).collect::<String>(),
            std::process::id() % 100_000,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let output = run_bounded(
            Command::new("useradd")
                .args(["--create-home", "--shell", "/bin/sh"])
                .args(options)
                .arg(&name),
            COMMAND_TIMEOUT,
        );
        assert!(
            output.status.success(),
            "useradd {name} (the local delivery tests need root): {}",
            output.combined()
        );
        let user = nix::unistd::User::from_name(&name)
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("user {name} was not created"));
        Self {
            name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            home: user.dir,
        }
    }

    /// Writes a file in the home directory, owned by the user.
    pub fn write_home_file(&self, name: &str, content: &str) -> PathBuf {
        let path = self.home.join(name);
        std::fs::write(&path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        std::os::unix::fs::chown(&path, Some(self.uid), Some(self.gid)).expect("chown");
        path
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel")
            .args(["--remove", "--force"])
            .arg(&self.name)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Empath {
    /// The alias file the local tests use: `aliases` in the test dir.
    pub fn aliases_path(&self) -> PathBuf {
        self.dir().join("aliases")
    }

    /// Writes the alias file and runs the real `newaliases` on it.
    pub fn set_aliases(&self, text: &str) {
        std::fs::write(self.aliases_path(), text).expect("write aliases");
        let output = self.newaliases();
        assert!(
            output.status.success(),
            "newaliases failed: {}",
            output.combined()
        );
    }

    pub fn newaliases(&self) -> RunOutput {
        run_bounded(
            Command::new(binary("newaliases"))
                .arg("-C")
                .arg(self.config_path()),
            COMMAND_TIMEOUT,
        )
    }

    /// Runs `sendmail -C CONFIG ARGS` with `input` on standard input.
    pub fn sendmail(&self, args: &[&str], input: &str) -> RunOutput {
        let dir = self.dir().join("sendmail-input");
        std::fs::create_dir_all(&dir).expect("input dir");
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let file = dir.join(NEXT.fetch_add(1, Ordering::Relaxed).to_string());
        std::fs::write(&file, input).expect("write input");
        let stdin = std::fs::File::open(&file).expect("open input");
        let stdout = tempfile::tempfile().expect("temp");
        let stderr = tempfile::tempfile().expect("temp");
        let mut child = Command::new(binary("sendmail"))
            .arg("-C")
            .arg(self.config_path())
            .args(args)
            .stdin(stdin)
            .stdout(stdout.try_clone().expect("clone"))
            .stderr(stderr.try_clone().expect("clone"))
            .spawn()
            .expect("run sendmail");
        let status = child.wait().expect("wait for sendmail");
        let read = |mut file: std::fs::File| {
            use std::io::{Read, Seek};
            let mut text = String::new();
            let _ = file.rewind();
            let _ = file.read_to_string(&mut text);
            text
        };
        RunOutput {
            status,
            stdout: read(stdout),
            stderr: read(stderr),
        }
    }

    /// The mail spool directory the harness configures (`mail/` in the
    /// test dir).
    pub fn mail_spool(&self) -> PathBuf {
        self.dir().join("mail")
    }
}

/// One message as Python's `mailbox` module read it.
#[derive(Debug, Clone)]
pub struct MailboxMessage {
    pub from_line: Option<String>,
    pub return_path: Option<String>,
    pub delivered_to: Vec<String>,
    pub subject: Option<String>,
    pub body: String,
}

/// Reads an mbox file (`kind` "mbox") or a Maildir ("maildir") with
/// Python's `mailbox` module. A missing mailbox has no messages.
pub fn read_mailbox(kind: &str, path: &Path) -> Vec<MailboxMessage> {
    if !path.exists() {
        return Vec::new();
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/read_mailbox.py");
    let output = run_bounded(
        Command::new("python3").arg(script).arg(kind).arg(path),
        COMMAND_TIMEOUT,
    );
    assert!(
        output.status.success(),
        "reading {} failed: {}",
        path.display(),
        output.combined()
    );
    let values: Vec<serde_json::Value> = serde_json::from_str(output.stdout.trim())
        .unwrap_or_else(|e| panic!("{e}: {}", output.stdout));
    let text =
        |v: &serde_json::Value, key: &str| v.get(key).and_then(|s| s.as_str()).map(str::to_owned);
    values
        .iter()
        .map(|v| MailboxMessage {
            from_line: text(v, "from_line"),
            return_path: text(v, "return_path"),
            delivered_to: v
                .get("delivered_to")
                .and_then(|d| d.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            subject: text(v, "subject"),
            body: text(v, "body").unwrap_or_default(),
        })
        .collect()
}

/// Sends one message with Python's smtplib and returns the RCPT reply of
/// each recipient and the final result (`sent` or the error).
pub fn smtp_try(server: std::net::SocketAddr, from: &str, to: &[&str], message: &str) -> String {
    let script = r#"
import smtplib, sys, json
host, port, sender = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rcpts = sys.argv[4:]
message = sys.stdin.read()
s = smtplib.SMTP(host, port, timeout=60)
s.ehlo("client.test")
s.mail(sender)
replies = {}
for r in rcpts:
    code, text = s.rcpt(r)
    replies[r] = [code, text.decode()]
accepted = [r for r in rcpts if replies[r][0] < 300]
result = "no recipients"
if accepted:
    code, text = s.data(message)
    result = [code, text.decode()]
s.quit()
print(json.dumps({"rcpt": replies, "data": result}))
"#;
    let mut command = Command::new("python3");
    command
        .arg("-c")
        .arg(script)
        .arg(server.ip().to_string())
        .arg(server.port().to_string())
        .arg(from)
        .args(to);
    let input = tempfile::tempfile().expect("temp");
    {
        use std::io::{Seek, Write};
        let mut input = &input;
        input.write_all(message.as_bytes()).expect("write");
        input.rewind().expect("rewind");
    }
    let stdout = tempfile::tempfile().expect("temp");
    let status = command
        .stdin(input)
        .stdout(stdout.try_clone().expect("clone"))
        .status()
        .expect("python3");
    use std::io::{Read, Seek};
    let mut out = String::new();
    let mut stdout = stdout;
    let _ = stdout.rewind();
    let _ = stdout.read_to_string(&mut out);
    assert!(status.success(), "smtplib failed: {out}");
    out
}
