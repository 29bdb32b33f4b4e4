//! Helpers for the plugin module tests: C modules (the examples, or source
//! written by a test) built with gcc against empath.h and linked with the
//! libempath.so cargo built (`-lempath`), their config entries, and an
//! smtplib session that reports the reply to each step.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::run::run_bounded;

const GCC_TIMEOUT: Duration = Duration::from_secs(60);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// The modules crate, which holds include/empath.h and examples/.
fn modules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../modules")
}

/// The directory of the libempath.so cargo built with these tests (the
/// package depends on empath-ffi for that).
pub fn libempath_dir() -> PathBuf {
    empath_modules::built_libempath_dir().unwrap_or_else(|| {
        panic!("no libempath.so next to the test binary: cargo builds it with empath-tests")
    })
}

/// Builds `modules/examples/<name>.c` into `<dir>/lib<name>.so`.
pub fn build_example(name: &str, dir: &Path) -> PathBuf {
    let source = modules_dir().join("examples").join(format!("{name}.c"));
    build_module(
        &source,
        &modules_dir().join("include"),
        &libempath_dir(),
        dir,
    )
}

/// Builds a module from C `source` text into `<dir>/lib<name>.so`.
pub fn build_module_source(name: &str, source: &str, dir: &Path) -> PathBuf {
    let file = dir.join(format!("{name}.c"));
    std::fs::write(&file, source).unwrap_or_else(|e| panic!("write {}: {e}", file.display()));
    build_module(&file, &modules_dir().join("include"), &libempath_dir(), dir)
}

/// Builds the module `source` into `<dir>/lib<stem>.so` as a module author
/// would: empath.h from `include`, `-lempath` from `lib` (with an rpath, so
/// that the daemons' loader finds libempath.so there).
pub fn build_module(source: &Path, include: &Path, lib: &Path, dir: &Path) -> PathBuf {
    let stem = source
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let output = dir.join(format!("lib{stem}.so"));
    let result = run_bounded(
        Command::new("gcc")
            .args(empath_modules::GCC_FLAGS)
            .arg("-I")
            .arg(include)
            .arg(source)
            .arg("-L")
            .arg(lib)
            .arg(format!("-Wl,-rpath,{}", lib.display()))
            .arg("-lempath")
            .arg("-o")
            .arg(&output),
        GCC_TIMEOUT,
    );
    assert!(
        result.status.success(),
        "gcc failed on {}:\n{}",
        source.display(),
        result.combined()
    );
    output
}

/// The RON for the config's `modules` list.
pub fn modules_section(modules: &[(&Path, &[&str])]) -> String {
    let entries: Vec<String> = modules
        .iter()
        .map(|(path, arguments)| {
            let arguments: Vec<String> = arguments.iter().map(|a| format!("{a:?}")).collect();
            format!(
                "(type: \"SharedLibrary\", name: {:?}, arguments: [{}])",
                path.display().to_string(),
                arguments.join(", ")
            )
        })
        .collect();
    format!("[{}]", entries.join(", "))
}

/// The replies of one smtplib transaction, each as "CODE text"; `None`
/// for steps not reached. `error` is set when the connection failed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transaction {
    pub mail: Option<String>,
    pub rcpt: Option<String>,
    pub data: Option<String>,
    pub error: Option<String>,
}

impl Transaction {
    /// The queue ID of "250 2.0.0 Ok: queued as ID".
    pub fn queue_id(&self) -> Option<&str> {
        self.data
            .as_deref()
            .filter(|reply| reply.starts_with("250 "))?
            .rsplit(' ')
            .next()
    }
}

const TRANSACTION_SCRIPT: &str = r#"
import json, smtplib, sys
host, port, sender, rcpt = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
out = {}
def text(code, message):
    return "%d %s" % (code, message.decode("utf-8", "replace"))
try:
    s = smtplib.SMTP(host, port, timeout=30)
    s.ehlo("client.test")
    code, message = s.mail(sender)
    out["mail"] = text(code, message)
    if code == 250:
        code, message = s.rcpt(rcpt)
        out["rcpt"] = text(code, message)
        if code == 250:
            try:
                code, message = s.data(b"Subject: module test\r\n\r\nhello from the module test\r\n")
                out["data"] = text(code, message)
            except smtplib.SMTPDataError as e:
                out["data"] = text(e.smtp_code, e.smtp_error)
    s.quit()
except (smtplib.SMTPException, OSError) as e:
    out["error"] = repr(e)
print(json.dumps(out))
"#;

/// One MAIL / RCPT / DATA transaction with Python's smtplib, stopping at
/// the first refusal.
pub fn transaction(server: SocketAddr, from: &str, to: &str) -> Transaction {
    let output = crate::smtpd::python(
        TRANSACTION_SCRIPT,
        &[
            server.ip().to_string(),
            server.port().to_string(),
            from.to_owned(),
            to.to_owned(),
        ],
        CLIENT_TIMEOUT,
    );
    let value: serde_json::Value = serde_json::from_str(output.stdout.trim())
        .unwrap_or_else(|e| panic!("the client printed no JSON ({e}):\n{}", output.combined()));
    let field = |name: &str| value.get(name).and_then(|v| v.as_str()).map(str::to_owned);
    Transaction {
        mail: field("mail"),
        rcpt: field("rcpt"),
        data: field("data"),
        error: field("error"),
    }
}
