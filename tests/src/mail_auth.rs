//! Helpers for the milter and mail-authentication tests: real milters
//! (OpenDKIM, rspamd, and a Python milter written for the tests), an
//! smtplib session that reports each reply, and the reference checkers
//! (dkimpy for DKIM signatures, authres for `Authentication-Results:`).

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::poll;
use crate::run::run_bounded;

const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);
const START_TIMEOUT: Duration = Duration::from_secs(60);

fn client_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("clients")
        .join(name)
}

/// A free loopback port, for servers that cannot report the one they
/// bound (OpenDKIM, rspamd). The port is released before it is returned,
/// so another process could take it first; the tests start the server at
/// once.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("find a free port")
}

/// Waits until something accepts connections on `port`.
fn wait_listening(port: u16, what: &str, child: &mut Child, log: &Path) {
    let ready = poll(START_TIMEOUT, || {
        if let Ok(Some(status)) = child.try_wait() {
            return Ok(Err(format!("{what} exited ({status})")));
        }
        std::net::TcpStream::connect(("127.0.0.1", port))
            .map(|_| Ok(()))
            .map_err(|e| e.to_string())
    });
    match ready {
        Ok(Ok(())) => {}
        Ok(Err(problem)) | Err(problem) => panic!(
            "{what} did not listen on port {port}: {problem}\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        ),
    }
}

/// A server process a test started; stopped when dropped.
pub struct Server {
    child: Child,
    pub port: u16,
    log: PathBuf,
}

impl Server {
    /// `inet:127.0.0.1:PORT`, for `smtpd_milters`.
    pub fn milter_address(&self) -> String {
        format!("inet:127.0.0.1:{}", self.port)
    }

    /// What the server wrote to its log file.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        for _ in 0..50 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The milter of `tests/clients/test_milter.py`, with its plan (see the
/// script) and the events it logged.
pub struct TestMilter {
    server: Server,
    events: PathBuf,
}

impl TestMilter {
    pub fn start(dir: &Path, name: &str, plan: &serde_json::Value) -> Self {
        let events = dir.join(format!("{name}.events"));
        let log = dir.join(format!("{name}.log"));
        let stderr = std::fs::File::create(&log).expect("milter log file");
        let mut child = Command::new("python3")
            .arg(client_script("test_milter.py"))
            .arg(plan.to_string())
            .arg(&events)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start the test milter");
        let stdout = child.stdout.take().expect("milter stdout");
        let mut first = String::new();
        let read = BufReader::new(stdout).read_line(&mut first);
        let port = match (read, first.trim().strip_prefix("PORT ")) {
            (Ok(_), Some(port)) => port.parse().expect("a port number"),
            _ => panic!(
                "the test milter did not start: {first:?}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            ),
        };
        Self {
            server: Server { child, port, log },
            events,
        }
    }

    pub fn address(&self) -> String {
        self.server.milter_address()
    }

    /// Every event so far, as the milter logged it.
    pub fn events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.events)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// The names of the events so far, in order.
    pub fn event_names(&self) -> Vec<String> {
        self.events()
            .iter()
            .filter_map(|e| e["event"].as_str().map(str::to_owned))
            .collect()
    }

    /// The first event called `name`.
    pub fn event(&self, name: &str) -> Option<serde_json::Value> {
        self.events().into_iter().find(|e| e["event"] == name)
    }

    pub fn log(&self) -> String {
        self.server.log()
    }
}

/// OpenDKIM, signing for `domain` with a key made by `openssl`, as a
/// milter on a loopback port, with its own config (no system files).
pub struct OpenDkim {
    pub server: Server,
    /// The TXT record of the key (`v=DKIM1; k=rsa; p=...`).
    pub txt: String,
}

impl OpenDkim {
    pub fn start(dir: &Path, domain: &str, selector: &str) -> Self {
        let key = dir.join("opendkim.key");
        let made = run_bounded(
            Command::new("openssl")
                .args([
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    "rsa_keygen_bits:2048",
                    "-out",
                ])
                .arg(&key),
            CLIENT_TIMEOUT,
        );
        assert!(
            made.status.success(),
            "openssl genpkey: {}",
            made.combined()
        );
        let public = run_bounded(
            Command::new("openssl")
                .args(["pkey", "-pubout", "-outform", "DER", "-in"])
                .arg(&key)
                .arg("-out")
                .arg(dir.join("opendkim.pub.der")),
            CLIENT_TIMEOUT,
        );
        assert!(
            public.status.success(),
            "openssl pkey: {}",
            public.combined()
        );
        let der = std::fs::read(dir.join("opendkim.pub.der")).expect("public key");
        let txt = format!("v=DKIM1; k=rsa; p={}", BASE64.encode(&der));
        let port = free_port();
        let log = dir.join("opendkim.log");
        let config = dir.join("opendkim.conf");
        std::fs::write(
            &config,
            format!(
                "Socket inet:{port}@127.0.0.1\n\
                 Mode sv\n\
                 Domain {domain}\n\
                 Selector {selector}\n\
                 KeyFile {key}\n\
                 Canonicalization relaxed/relaxed\n\
                 InternalHosts 127.0.0.1\n\
                 RequireSafeKeys no\n\
                 Background no\n\
                 Syslog no\n\
                 LogWhy yes\n\
                 PidFile {pid}\n\
                 UserID root\n",
                key = key.display(),
                pid = dir.join("opendkim.pid").display(),
            ),
        )
        .expect("write opendkim.conf");
        let output = std::fs::File::create(&log).expect("opendkim log");
        let mut child = Command::new("opendkim")
            .arg("-f")
            .arg("-x")
            .arg(&config)
            .arg("-v")
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("clone log"))
            .stderr(output)
            .spawn()
            .expect("start opendkim (Debian package opendkim)");
        wait_listening(port, "opendkim", &mut child, &log);
        Self {
            server: Server { child, port, log },
            txt,
        }
    }
}

/// rspamd as a milter (its proxy worker in milter mode, scanning itself)
/// on a loopback port, with a private config: no redis, no other workers.
pub struct Rspamd {
    pub server: Server,
}

impl Rspamd {
    pub fn start(dir: &Path) -> Self {
        let port = free_port();
        let state = dir.join("rspamd");
        let local = state.join("local.d");
        let overrides = state.join("override.d");
        for path in [&local, &overrides] {
            std::fs::create_dir_all(path).expect("rspamd config dirs");
        }
        let write = |name: &Path, text: String| {
            std::fs::write(name, text).expect("write rspamd config");
        };
        // Only the proxy, in milter mode, scanning the messages itself.
        write(
            &overrides.join("worker-proxy.inc"),
            format!(
                "bind_socket = \"127.0.0.1:{port}\";\n\
                 milter = yes;\n\
                 timeout = 120s;\n\
                 upstream \"local\" {{ default = yes; self_scan = yes; }}\n\
                 count = 1;\n"
            ),
        );
        write(
            &overrides.join("worker-normal.inc"),
            "enabled = false;\n".to_owned(),
        );
        write(
            &overrides.join("worker-controller.inc"),
            "enabled = false;\n".to_owned(),
        );
        write(
            &overrides.join("worker-fuzzy.inc"),
            "enabled = false;\n".to_owned(),
        );
        // The headers it adds to a message it lets through.
        write(
            &local.join("milter_headers.conf"),
            "use = [\"x-spamd-result\", \"x-rspamd-server\", \"x-rspamd-queue-id\", \"x-spam-status\"];\n\
             skip_local = false;\n\
             skip_authenticated = false;\n"
                .to_owned(),
        );
        write(
            &local.join("options.inc"),
            "local_addrs = [];\ndns { nameserver = [\"127.0.0.1:1\"]; timeout = 1s; retransmits = 1; }\n".to_owned(),
        );
        let log = dir.join("rspamd.log");
        write(
            &local.join("logging.inc"),
            format!(
                "type = \"file\";\nfilename = \"{}\";\nlevel = \"info\";\n",
                log.display()
            ),
        );
        let output = std::fs::File::create(dir.join("rspamd.out")).expect("rspamd output");
        let mut child = Command::new("rspamd")
            .arg("-f")
            .arg("-u")
            .arg("root")
            .arg("-g")
            .arg("root")
            .arg("-c")
            .arg("/etc/rspamd/rspamd.conf")
            .arg(format!("--var=LOCAL_CONFDIR={}", state.display()))
            .arg(format!("--var=DBDIR={}", state.display()))
            .arg(format!("--var=RUNDIR={}", state.display()))
            .arg(format!("--var=LOGDIR={}", state.display()))
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("clone output"))
            .stderr(output)
            .spawn()
            .expect("start rspamd (Debian package rspamd)");
        wait_listening(port, "rspamd", &mut child, &dir.join("rspamd.out"));
        Self {
            server: Server { child, port, log },
        }
    }
}

/// The replies of one smtplib session (see `smtp_session.py`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Session {
    pub greeting: Option<String>,
    pub ehlo: Option<String>,
    pub mail: Option<String>,
    pub rcpts: Vec<String>,
    pub data: Option<String>,
    pub error: Option<String>,
}

impl Session {
    /// The queue ID of "250 2.0.0 Ok: queued as ID".
    pub fn queue_id(&self) -> Option<&str> {
        self.data
            .as_deref()
            .filter(|reply| reply.starts_with("250 "))?
            .rsplit(' ')
            .next()
    }
}

/// Sends `message` from `from` to `rcpts` with smtplib, greeting as `helo`.
pub fn send(
    server: SocketAddr,
    helo: &str,
    from: &str,
    rcpts: &[&str],
    message: &[u8],
    dir: &Path,
) -> Session {
    let file = tempfile::NamedTempFile::new_in(dir).expect("message file");
    std::fs::write(file.path(), message).expect("write the message");
    let spec = serde_json::json!({
        "host": server.ip().to_string(),
        "port": server.port(),
        "helo": helo,
        "from": from,
        "rcpts": rcpts,
        "message_file": file.path(),
    });
    let output = run_bounded(
        Command::new("python3")
            .arg(client_script("smtp_session.py"))
            .arg(spec.to_string()),
        CLIENT_TIMEOUT,
    );
    let value: serde_json::Value = serde_json::from_str(output.stdout.trim())
        .unwrap_or_else(|e| panic!("the client printed no JSON ({e}):\n{}", output.combined()));
    let field = |name: &str| value[name].as_str().map(str::to_owned);
    Session {
        greeting: field("greeting"),
        ehlo: field("ehlo"),
        mail: field("mail"),
        rcpts: value["rcpts"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|r| r.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        data: field("data"),
        error: field("error"),
    }
}

/// One DKIM signature as dkimpy saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub domain: String,
    pub selector: String,
    pub algorithm: String,
    /// The `h=` tag.
    pub headers: String,
    pub verified: bool,
}

/// Verifies every DKIM signature of `message` with dkimpy, which looks the
/// keys up in `records` (name -> TXT text) instead of DNS.
pub fn dkim_verify(message: &[u8], records: &[(&str, &str)], dir: &Path) -> Vec<Signature> {
    let file = tempfile::NamedTempFile::new_in(dir).expect("message file");
    std::fs::write(file.path(), message).expect("write the message");
    let records: serde_json::Map<String, serde_json::Value> = records
        .iter()
        .map(|(name, text)| ((*name).to_owned(), serde_json::Value::from(*text)))
        .collect();
    let output = run_bounded(
        Command::new("python3")
            .arg(client_script("dkim_check.py"))
            .arg(file.path())
            .arg(serde_json::Value::Object(records).to_string()),
        CLIENT_TIMEOUT,
    );
    let value: serde_json::Value = serde_json::from_str(output.stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "dkim_check.py printed no JSON ({e}):\n{}",
            output.combined()
        )
    });
    value
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {value}"))
        .iter()
        .map(|s| Signature {
            domain: s["domain"].as_str().unwrap_or_default().to_owned(),
            selector: s["selector"].as_str().unwrap_or_default().to_owned(),
            algorithm: s["algorithm"].as_str().unwrap_or_default().to_owned(),
            headers: s["headers"].as_str().unwrap_or_default().to_owned(),
            verified: s["verified"].as_bool().unwrap_or(false),
        })
        .collect()
}

/// `message` signed by dkimpy for `domain` with the PEM key in `key`, as
/// a sending domain's own server would sign it.
pub fn dkim_sign(message: &[u8], domain: &str, selector: &str, key: &Path, dir: &Path) -> Vec<u8> {
    let file = tempfile::NamedTempFile::new_in(dir).expect("message file");
    std::fs::write(file.path(), message).expect("write the message");
    let output = run_bounded(
        Command::new("python3")
            .arg(client_script("dkim_sign.py"))
            .arg(file.path())
            .arg(domain)
            .arg(selector)
            .arg(key),
        CLIENT_TIMEOUT,
    );
    assert!(
        output.status.success(),
        "dkim_sign.py: {}",
        output.combined()
    );
    output.stdout.into_bytes()
}

/// A key made by `empathctl dkim keygen`: the key file and the TXT record.
#[derive(Debug, Clone)]
pub struct GeneratedKey {
    pub private_key: PathBuf,
    pub record_name: String,
    pub txt: String,
}

/// Runs the real `empathctl dkim keygen --json` in `dir`.
pub fn keygen(dir: &Path, domain: &str, selector: &str, algorithm: &str) -> GeneratedKey {
    let output = run_bounded(
        Command::new(crate::binary("empathctl"))
            .args([
                "--json",
                "dkim",
                "keygen",
                domain,
                selector,
                "--algorithm",
                algorithm,
            ])
            .arg("--output-dir")
            .arg(dir),
        CLIENT_TIMEOUT,
    );
    assert!(
        output.status.success(),
        "empathctl dkim keygen: {}",
        output.combined()
    );
    let value: serde_json::Value = serde_json::from_str(&output.stdout)
        .unwrap_or_else(|e| panic!("keygen printed no JSON ({e}): {}", output.combined()));
    let field = |name: &str| value[name].as_str().unwrap_or_default().to_owned();
    GeneratedKey {
        private_key: PathBuf::from(field("private_key")),
        record_name: field("record_name"),
        txt: field("txt"),
    }
}

/// One result of an `Authentication-Results:` field, as authres parsed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthResult {
    pub method: String,
    pub result: String,
    /// `ptype.property` -> value, e.g. `smtp.mailfrom`, `header.from`.
    pub properties: std::collections::BTreeMap<String, String>,
}

/// Parses a whole `Authentication-Results:` field with Python's authres:
/// the authserv-id and the results.
pub fn authres(field: &str) -> (String, Vec<AuthResult>) {
    let output = run_bounded(
        Command::new("python3")
            .arg(client_script("authres_parse.py"))
            .arg(field),
        CLIENT_TIMEOUT,
    );
    let value: serde_json::Value = serde_json::from_str(output.stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "authres could not parse {field:?} ({e}):\n{}",
            output.combined()
        )
    });
    let results = value["results"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|r| AuthResult {
                    method: r["method"].as_str().unwrap_or_default().to_owned(),
                    result: r["result"].as_str().unwrap_or_default().to_owned(),
                    properties: r["properties"]
                        .as_object()
                        .map(|p| {
                            p.iter()
                                .map(|(k, v)| {
                                    (k.clone(), v.as_str().unwrap_or_default().to_owned())
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default();
    (
        value["authserv_id"].as_str().unwrap_or_default().to_owned(),
        results,
    )
}

/// The header fields called `name` in `message` (unfolded, without the
/// name and the colon), top first.
pub fn header_values(message: &[u8], name: &str) -> Vec<String> {
    let text = String::from_utf8_lossy(message);
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    let mut fields: Vec<String> = Vec::new();
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = fields.last_mut() {
                last.push_str("\r\n");
                last.push_str(line);
            }
        } else {
            fields.push(line.to_owned());
        }
    }
    fields
        .iter()
        .filter_map(|field| {
            let (field_name, value) = field.split_once(':')?;
            field_name
                .trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.to_owned())
        })
        .collect()
}

/// The header field names of `message`, top first.
pub fn header_names(message: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(message);
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    head.split("\r\n")
        .filter(|line| !line.starts_with([' ', '\t']))
        .filter_map(|line| line.split_once(':').map(|(name, _)| name.to_owned()))
        .collect()
}

/// The body of `message`: everything after the first empty line.
pub fn body(message: &[u8]) -> &[u8] {
    message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(&message[message.len()..], |at| &message[at + 4..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_helpers_unfold_and_find_fields() {
        let message = b"A: 1\r\nB: two\r\n more\r\na: 3\r\n\r\nbody\r\n";
        assert_eq!(header_values(message, "a"), [" 1", " 3"]);
        assert_eq!(header_values(message, "B"), [" two\r\n more"]);
        assert_eq!(header_names(message), ["A", "B", "a"]);
        assert_eq!(body(message), b"body\r\n");
    }
}
