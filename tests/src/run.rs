//! Running a command to completion with a time limit, output captured.

use std::fs::File;
use std::io::{Read, Seek};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::procfs;

/// What a finished command printed, and how it ended.
#[derive(Debug)]
pub struct RunOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl RunOutput {
    /// stdout and stderr together, for assertions and failure messages.
    pub fn combined(&self) -> String {
        format!(
            "status: {}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `command` with stdout and stderr captured (in anonymous files, so a
/// chatty child cannot block on a full pipe). Panics, after killing it, if
/// it runs longer than `timeout`.
pub fn run_bounded(command: &mut Command, timeout: Duration) -> RunOutput {
    let stdout = tempfile::tempfile().expect("temp file for stdout");
    let stderr = tempfile::tempfile().expect("temp file for stderr");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(clone(&stdout))
        .stderr(clone(&stderr))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            break status;
        }
        if Instant::now() >= deadline {
            kill_with_children(&mut child);
            panic!(
                "{command:?} still running after {timeout:?}; killed it\n--- stdout ---\n{}--- stderr ---\n{}",
                read_all(stdout),
                read_all(stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    RunOutput {
        status,
        stdout: read_all(stdout),
        stderr: read_all(stderr),
    }
}

/// Kills `child` and whatever it started (an `empath` that should have
/// failed may have spawned its daemons), so nothing outlives the test.
fn kill_with_children(child: &mut Child) {
    let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
    let children = procfs::children_of(pid);
    let _ = child.kill();
    let _ = child.wait();
    for orphan in children.iter().filter(|c| procfs::still_running(c)) {
        let _ = kill(Pid::from_raw(orphan.pid), Signal::SIGKILL);
    }
}

fn clone(file: &File) -> Stdio {
    Stdio::from(file.try_clone().expect("duplicate a temp file handle"))
}

fn read_all(mut file: File) -> String {
    let mut bytes = Vec::new();
    let _ = file.rewind();
    let _ = file.read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Runs `command` with `input` on its stdin, capturing its output.
pub fn run_with_stdin(mut command: Command, input: &[u8]) -> RunOutput {
    use std::io::Write;
    command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().expect("spawn");
    // A child that exits early (refusing the input) closes the pipe.
    let _ = child.stdin.take().expect("stdin").write_all(input);
    let output = child.wait_with_output().expect("wait");
    RunOutput {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}
