//! The real SMTP client of the system tests: Python's smtplib, driven by
//! `tests/clients/smtp_send.py`. Using a client we did not write keeps our
//! own SMTP bugs from cancelling out.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use crate::run::run_bounded;

/// The client script.
pub fn script_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/smtp_send.py")
}

/// One run of `smtp_send.py`: every `.eml` file in `dir` goes from `from`
/// to all of `to`.
#[derive(Debug, Clone)]
pub struct SmtpSend {
    server: SocketAddr,
    from: String,
    to: Vec<String>,
    dir: PathBuf,
    threads: usize,
    timeout: Duration,
}

/// The outcome of one message, as the client printed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendResult {
    pub file: String,
    pub ok: bool,
    /// The SMTP reply code, if the server gave one.
    pub code: Option<u16>,
    pub reply: String,
}

/// The outcome of a whole run.
#[derive(Debug)]
pub struct SendReport {
    pub status: ExitStatus,
    pub results: Vec<SendResult>,
    pub stdout: String,
    pub stderr: String,
}

impl SmtpSend {
    pub fn new(server: SocketAddr, from: &str, to: &[&str], dir: &Path) -> Self {
        Self {
            server,
            from: from.to_owned(),
            to: to.iter().map(|s| (*s).to_owned()).collect(),
            dir: dir.to_owned(),
            threads: 1,
            timeout: Duration::from_secs(180),
        }
    }

    /// Parallel connections, each reused for many messages.
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads;
        self
    }

    /// Limit on the whole run.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn run(&self) -> SendReport {
        let mut command = Command::new("python3");
        command
            .arg(script_path())
            .arg("--host")
            .arg(self.server.ip().to_string())
            .arg("--port")
            .arg(self.server.port().to_string())
            .arg("--from")
            .arg(&self.from)
            .arg("--dir")
            .arg(&self.dir)
            .arg("--threads")
            .arg(self.threads.to_string());
        for to in &self.to {
            command.arg("--to").arg(to);
        }
        let output = run_bounded(&mut command, self.timeout);
        let results = output.stdout.lines().filter_map(parse_result).collect();
        SendReport {
            status: output.status,
            results,
            stdout: output.stdout,
            stderr: output.stderr,
        }
    }
}

/// Parses one JSON line of the client; other lines are ignored.
fn parse_result(line: &str) -> Option<SendResult> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    Some(SendResult {
        file: value.get("file")?.as_str()?.to_owned(),
        ok: value.get("ok")?.as_bool()?,
        code: value
            .get("code")
            .and_then(serde_json::Value::as_u64)
            .and_then(|code| u16::try_from(code).ok()),
        reply: value
            .get("reply")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned(),
    })
}

impl SendReport {
    pub fn accepted(&self) -> usize {
        self.results.iter().filter(|r| r.ok).count()
    }

    pub fn failures(&self) -> Vec<&SendResult> {
        self.results.iter().filter(|r| !r.ok).collect()
    }

    /// Panics unless exactly `expected` messages were sent and all were
    /// accepted. `context` (e.g. the server's log) is added to the message.
    pub fn assert_all_accepted(&self, expected: usize, context: impl FnOnce() -> String) {
        if self.status.success() && self.results.len() == expected && self.accepted() == expected {
            return;
        }
        let failures: Vec<String> = self
            .failures()
            .iter()
            .take(20)
            .map(|r| format!("  {} -> {:?} {}", r.file, r.code, r.reply))
            .collect();
        panic!(
            "the SMTP client did not get all {expected} messages accepted: \
             {} results, {} accepted, client {}\nfirst failures:\n{}\n--- client stderr ---\n{}\n{}",
            self.results.len(),
            self.accepted(),
            self.status,
            failures.join("\n"),
            self.stderr,
            context()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_lines_are_parsed() {
        let ok = parse_result(
            r#"{"file": "msg-0001.eml", "ok": true, "code": 250, "reply": "2.0.0 queued"}"#,
        )
        .expect("parses");
        assert_eq!(ok.file, "msg-0001.eml");
        assert!(ok.ok);
        assert_eq!(ok.code, Some(250));
        let failed = parse_result(
            r#"{"file": "b.eml", "ok": false, "code": null, "reply": "connection refused"}"#,
        )
        .expect("parses");
        assert!(!failed.ok);
        assert_eq!(failed.code, None);
        assert!(parse_result("Traceback (most recent call last):").is_none());
    }
}
