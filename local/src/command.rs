//! Delivery to a command (`|command` in an alias or `.forward`): `/bin/sh
//! -c COMMAND` as the right user, in its own process group, with a clean
//! environment, the message on standard input, and a time limit. Its exit
//! status decides (see `status::command_exit`); what it printed goes into
//! the DSN.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::helper::c_path;
use crate::identity::{Identity, switch_in_child};
use crate::status::{Status, command_exit};

/// Output kept for the DSN; the rest is read and dropped.
const OUTPUT_LIMIT: usize = 2048;
/// How long to wait for the output after the command exited (a
/// background process may keep the pipe open).
const OUTPUT_GRACE: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(10);

pub struct Run<'a> {
    pub command: &'a str,
    pub identity: &'a Identity,
    /// Switch to `identity` (a root agent); else run as the agent.
    pub switch: bool,
    pub env: Vec<(String, String)>,
    pub time_limit: Duration,
}

impl Run<'_> {
    /// Runs the command with `input` on its standard input. Blocking.
    pub fn deliver(&self, input: &[Vec<u8>]) -> Status {
        let (reader, writer) = match std::io::pipe() {
            Ok(pipe) => pipe,
            Err(e) => return Status::deferred("4.3.0", format!("cannot create a pipe: {e}")),
        };
        let (stdout, stderr) = match writer.try_clone() {
            Ok(clone) => (writer, clone),
            Err(e) => return Status::deferred("4.3.0", format!("cannot create a pipe: {e}")),
        };
        let mut command = Command::new("/bin/sh");
        command
            .arg("-c")
            .arg(self.command)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0);
        let home = c_path(&self.identity.home);
        let root = c_path(Path::new("/"));
        let (uid, gid, switch) = (self.identity.uid, self.identity.gid, self.switch);
        let groups: Vec<libc::gid_t> = self.identity.groups.clone();
        // SAFETY: only async-signal-safe calls (setgroups, setresgid,
        // setresuid, chdir), on data allocated before fork.
        unsafe {
            command.pre_exec(move || {
                if switch && switch_in_child(uid, gid, &groups) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The home directory when the user may enter it, else /.
                let in_home = home.as_ref().is_some_and(|h| libc::chdir(h.as_ptr()) == 0);
                if !in_home && let Some(root) = &root {
                    libc::chdir(root.as_ptr());
                }
                Ok(())
            });
        }
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                return Status::deferred("4.3.0", format!("cannot run \"{}\": {e}", self.command));
            }
        };
        drop(command);
        let output = collect_output(reader);
        if let Some(mut stdin) = child.stdin.take() {
            let input: Vec<Vec<u8>> = input.to_vec();
            // A command that does not read its input is not an error
            // (EPIPE is ignored), as with Postfix.
            std::thread::spawn(move || {
                for part in &input {
                    if stdin.write_all(part).is_err() {
                        break;
                    }
                }
            });
        }
        let deadline = Instant::now() + self.time_limit;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() >= deadline => break None,
                Ok(None) => std::thread::sleep(POLL),
                Err(e) => {
                    return Status::deferred(
                        "4.3.0",
                        format!("cannot wait for \"{}\": {e}", self.command),
                    );
                }
            }
        };
        let Some(status) = status else {
            // The whole process group: the shell and whatever it started.
            if let Ok(pid) = i32::try_from(child.id()) {
                // SAFETY: signalling the process group we created.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
            }
            let _ = child.wait();
            let said = output.recv_timeout(OUTPUT_GRACE).unwrap_or_default();
            let mut text = format!(
                "Command time limit exceeded: \"{}\" (after {}s)",
                self.command,
                self.time_limit.as_secs()
            );
            if !said.is_empty() {
                text.push_str(". Command output: ");
                text.push_str(&said);
            }
            return Status::failed("5.3.0", text);
        };
        let said = output.recv_timeout(OUTPUT_GRACE).unwrap_or_default();
        match status.code() {
            Some(code) => command_exit(code, self.command, &said),
            None => {
                use std::os::unix::process::ExitStatusExt;
                let signal = status.signal().unwrap_or(0);
                let mut text = format!("Command died with signal {signal}: \"{}\"", self.command);
                if !said.is_empty() {
                    text.push_str(". Command output: ");
                    text.push_str(&said);
                }
                Status::deferred("4.3.0", text)
            }
        }
    }
}

/// Reads the command's output on a thread: the first bytes, as one line
/// of printable text, arrive on the channel once the pipe closes.
fn collect_output(mut reader: std::io::PipeReader) -> mpsc::Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut buffer = [0u8; 4096];
        loop {
            match reader.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let room = OUTPUT_LIMIT.saturating_sub(kept.len());
                    kept.extend_from_slice(&buffer[..n.min(room)]);
                }
            }
        }
        let text: String = String::from_utf8_lossy(&kept)
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let _ = sender.send(text.split_whitespace().collect::<Vec<_>>().join(" "));
    });
    receiver
}

#[cfg(test)]
mod tests {
    use super::*;
    use empath_common::protocol::Outcome;

    fn run(command: &str, limit: Duration) -> Status {
        let me = Identity::current();
        Run {
            command,
            identity: &me,
            switch: false,
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            time_limit: limit,
        }
        .deliver(&[b"From x\n".to_vec(), b"hello\n".to_vec()])
    }

    #[test]
    fn exit_statuses_and_output() {
        let ok = run("cat >/dev/null", Duration::from_secs(10));
        assert_eq!(ok.outcome, Outcome::Delivered, "{ok:?}");
        let tempfail = run("echo busy now; exit 75", Duration::from_secs(10));
        assert_eq!(tempfail.outcome, Outcome::Deferred);
        assert!(
            tempfail.reply.text.ends_with("Command output: busy now"),
            "{tempfail:?}"
        );
        let nouser = run("echo no such user >&2; exit 67", Duration::from_secs(10));
        assert_eq!(nouser.outcome, Outcome::Failed);
        assert_eq!(nouser.reply.enhanced.as_deref(), Some("5.1.1"));
        assert!(nouser.reply.text.contains("no such user"));
        let ignores_input = run("exit 0", Duration::from_secs(10));
        assert_eq!(ignores_input.outcome, Outcome::Delivered);
    }

    #[test]
    fn a_command_over_its_time_is_killed() {
        let started = Instant::now();
        let slow = run("echo started; sleep 30", Duration::from_millis(300));
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(slow.outcome, Outcome::Failed);
        assert!(slow.reply.text.contains("time limit"), "{slow:?}");
    }
}
