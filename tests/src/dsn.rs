//! Helpers for the bounce tests: sending one message with DSN parameters
//! (RET, ENVID, NOTIFY, ORCPT) through Python's smtplib, and reading a
//! received DSN with Python's `email` package (`tests/clients/dsn_tool.py`),
//! so that Empath's DSNs are checked by a parser we did not write.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::run::run_bounded;

/// The tool script.
pub fn tool_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/dsn_tool.py")
}

const TOOL_TIMEOUT: Duration = Duration::from_secs(120);

/// Names for the files handed to the tool, unique within the process.
fn scratch_file(dir: &Path, suffix: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    dir.join(format!(
        "dsn-tool-{}{suffix}",
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

/// One message to send with smtplib, with ESMTP parameters.
#[derive(Debug, Clone)]
pub struct DsnSend {
    server: SocketAddr,
    from: String,
    to: Vec<String>,
    mail_options: Vec<String>,
    rcpt_options: Vec<String>,
    starttls: bool,
}

impl DsnSend {
    /// `from` may be empty: the null sender.
    pub fn new(server: SocketAddr, from: &str, to: &[&str]) -> Self {
        Self {
            server,
            from: from.to_owned(),
            to: to.iter().map(|s| (*s).to_owned()).collect(),
            mail_options: Vec::new(),
            rcpt_options: Vec::new(),
            starttls: false,
        }
    }

    /// Says STARTTLS first (the server's certificate is not checked).
    pub fn starttls(mut self) -> Self {
        self.starttls = true;
        self
    }

    /// Adds a MAIL FROM parameter, e.g. `RET=FULL` or `ENVID=abc`.
    pub fn mail_option(mut self, option: &str) -> Self {
        self.mail_options.push(option.to_owned());
        self
    }

    /// Adds a parameter to every RCPT TO, e.g. `NOTIFY=NEVER`.
    pub fn rcpt_option(mut self, option: &str) -> Self {
        self.rcpt_options.push(option.to_owned());
        self
    }

    /// Sends `message` (CRLF line ends) and panics unless it is accepted.
    /// `dir` holds the scratch file; `context` is added to a failure.
    pub fn send(&self, message: &[u8], dir: &Path, context: impl FnOnce() -> String) {
        let file = scratch_file(dir, ".eml");
        std::fs::write(&file, message).unwrap_or_else(|e| panic!("write {}: {e}", file.display()));
        let mut command = Command::new("python3");
        command
            .arg(tool_path())
            .arg("send")
            .arg("--host")
            .arg(self.server.ip().to_string())
            .arg("--port")
            .arg(self.server.port().to_string())
            .arg(format!("--from={}", self.from))
            .arg("--file")
            .arg(&file);
        for to in &self.to {
            command.arg("--to").arg(to);
        }
        for option in &self.mail_options {
            command.arg(format!("--mail-option={option}"));
        }
        for option in &self.rcpt_options {
            command.arg(format!("--rcpt-option={option}"));
        }
        if self.starttls {
            command.arg("--starttls");
        }
        let output = run_bounded(&mut command, TOOL_TIMEOUT);
        assert!(
            output.status.success(),
            "the message was not accepted: {}\n{}",
            output.combined(),
            context()
        );
    }
}

/// A DSN as Python's `email` package sees it.
#[derive(Debug, Clone)]
pub struct ParsedDsn {
    json: Value,
}

/// One block of delivery-status fields; names are lower-case.
pub type Fields = BTreeMap<String, String>;

fn to_fields(value: &Value) -> Fields {
    value
        .as_object()
        .map(|map| {
            map.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

impl ParsedDsn {
    /// Parses `raw` (as received by a sink) with the `email` package;
    /// `dir` holds the scratch file.
    pub fn parse(raw: &[u8], dir: &Path) -> Self {
        let file = scratch_file(dir, ".dsn");
        std::fs::write(&file, raw).unwrap_or_else(|e| panic!("write {}: {e}", file.display()));
        let mut command = Command::new("python3");
        command.arg(tool_path()).arg("parse").arg(&file);
        let output = run_bounded(&mut command, TOOL_TIMEOUT);
        assert!(
            output.status.success(),
            "the email package could not parse the DSN: {}",
            output.combined()
        );
        let json = serde_json::from_str(&output.stdout)
            .unwrap_or_else(|e| panic!("bad JSON from the tool ({e}): {}", output.stdout));
        Self { json }
    }

    fn text(&self, key: &str) -> String {
        self.json[key].as_str().unwrap_or_default().to_owned()
    }

    /// e.g. `multipart/report`.
    pub fn content_type(&self) -> String {
        self.text("content_type")
    }

    /// The `report-type` parameter.
    pub fn report_type(&self) -> String {
        self.text("report_type")
    }

    pub fn subject(&self) -> String {
        self.text("subject")
    }

    pub fn to(&self) -> String {
        self.text("to")
    }

    pub fn from(&self) -> String {
        self.text("from")
    }

    /// The text of the human-readable part.
    pub fn human(&self) -> String {
        self.text("human")
    }

    /// Problems the parser found, in any part.
    pub fn defects(&self) -> Vec<String> {
        self.json["defects"]
            .as_array()
            .map(|list| {
                list.iter()
                    .filter_map(|d| d.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The content types of the parts, in order.
    pub fn parts(&self) -> Vec<String> {
        self.json["parts"]
            .as_array()
            .map(|list| {
                list.iter()
                    .filter_map(|p| p.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The per-message fields of the delivery-status part.
    pub fn per_message(&self) -> Fields {
        to_fields(&self.json["per_message"])
    }

    /// The per-recipient blocks of the delivery-status part.
    pub fn recipients(&self) -> Vec<Fields> {
        self.json["per_recipient"]
            .as_array()
            .map(|list| list.iter().map(to_fields).collect())
            .unwrap_or_default()
    }

    /// The block whose `Final-Recipient` is `address`.
    pub fn recipient(&self, address: &str) -> Option<Fields> {
        self.recipients().into_iter().find(|block| {
            block
                .get("final-recipient")
                .and_then(|v| v.split_once(';'))
                .is_some_and(|(_, a)| a.trim().eq_ignore_ascii_case(address))
        })
    }

    /// The content type of the third part (`text/rfc822-headers`,
    /// `message/rfc822`, ...), if there is one.
    pub fn returned_type(&self) -> Option<String> {
        self.json["returned"]["content_type"]
            .as_str()
            .map(str::to_owned)
    }

    /// The header fields of the returned message (or headers).
    pub fn returned_headers(&self) -> Fields {
        to_fields(&self.json["returned"]["headers"])
    }

    /// The body of the returned message, when the whole of it came back.
    pub fn returned_body(&self) -> Option<String> {
        self.json["returned"]["body"].as_str().map(str::to_owned)
    }
}
