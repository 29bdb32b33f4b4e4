//! A real HTTPS server for the MTA-STS tests (`clients/https_server.py`,
//! Python's http.server and ssl): it serves `mta-sts.DOMAIN`'s policy,
//! chosen by the Host header, with a certificate from the test's CA, and
//! stores what is POSTed (TLS reports). And the check of a mailed TLS
//! report (`clients/tlsrpt_check.py`) against RFC 8460's format.

use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::TestConfig;
use crate::dns::TestDns;
use crate::mx::{TestCa, loopback};
use crate::run::run_bounded;

fn client(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("clients")
        .join(name)
}

/// A running HTTPS server. Dropping it stops it.
pub struct HttpsServer {
    root: PathBuf,
    child: Child,
    port: u16,
}

impl HttpsServer {
    /// Serves `root/HOST/...` on `ip` with a certificate for `names`
    /// issued by `ca`.
    pub fn start(root: &Path, ca: &TestCa, names: &[&str], ip: IpAddr) -> Self {
        std::fs::create_dir_all(root).expect("the web root");
        let (chain, key) = ca.server_pem(names);
        let cert_path = root.join("server.pem");
        let key_path = root.join("server.key");
        std::fs::write(&cert_path, chain).expect("write the certificate");
        std::fs::write(&key_path, key).expect("write the key");
        let mut child = Command::new("python3")
            .arg(client("https_server.py"))
            .arg("--cert")
            .arg(&cert_path)
            .arg("--key")
            .arg(&key_path)
            .arg("--root")
            .arg(root)
            .arg("--bind")
            .arg(ip.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start python3 https_server.py");
        let stdout = child.stdout.take().expect("the server's stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the server's port");
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("https_server.py printed {line:?}, not a port"));
        Self {
            root: root.to_owned(),
            child,
            port,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Publishes `text` as `host`'s `/.well-known/mta-sts.txt`.
    pub fn policy(&self, host: &str, text: &str) {
        let dir = self.root.join(host).join(".well-known");
        std::fs::create_dir_all(&dir).expect("the policy directory");
        std::fs::write(dir.join("mta-sts.txt"), text).expect("write the policy");
    }

    /// The bodies POSTed so far, with their Content-Type, in order.
    pub fn posted(&self) -> Vec<(String, PathBuf)> {
        (1..)
            .map(|n| self.root.join("posted").join(n.to_string()))
            .take_while(|path| path.is_file())
            .map(|path| {
                let kind = std::fs::read_to_string(path.with_extension("type")).unwrap_or_default();
                (kind, path)
            })
            .collect()
    }

    /// The requests served so far, as `METHOD HOST PATH STATUS` lines.
    pub fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(self.root.join("requests.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Checks a mailed TLS report (the message as the sink received it) with
/// Python's email package and jsonschema, against RFC 8460's format in
/// `fixtures/tlsrpt-rfc8460.schema.json`. The result is what
/// `clients/tlsrpt_check.py` prints.
pub fn check_tls_report(message: &[u8], dir: &Path) -> Value {
    let file = dir.join("tls-report.eml");
    std::fs::write(&file, message).expect("write the report");
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tlsrpt-rfc8460.schema.json");
    let output = run_bounded(
        Command::new("python3")
            .arg(client("tlsrpt_check.py"))
            .arg(&file)
            .arg(&schema),
        Duration::from_secs(60),
    );
    assert!(
        output.status.success(),
        "tlsrpt_check.py: {}",
        output.combined()
    );
    serde_json::from_str(&output.stdout)
        .unwrap_or_else(|e| panic!("tlsrpt_check.py printed no JSON ({e}): {}", output.stdout))
}

/// Checks a TLS report as it was POSTed (gzip'd JSON) against RFC 8460's
/// format, as [`check_tls_report`] does.
pub fn check_posted_tls_report(body: &Path) -> Value {
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tlsrpt-rfc8460.schema.json");
    let output = run_bounded(
        Command::new("python3")
            .arg(client("tlsrpt_check.py"))
            .arg("--gzip")
            .arg(body)
            .arg(&schema),
        Duration::from_secs(60),
    );
    assert!(
        output.status.success(),
        "tlsrpt_check.py: {}",
        output.combined()
    );
    serde_json::from_str(&output.stdout)
        .unwrap_or_else(|e| panic!("tlsrpt_check.py printed no JSON ({e}): {}", output.stdout))
}

/// An MTA-STS policy text with one `mx` pattern, cached for a day.
pub fn policy(mode: &str, mx: &str) -> String {
    format!("version: STSv1\r\nmode: {mode}\r\nmx: {mx}\r\nmax_age: 86400\r\n")
}

/// The CA file, the web server for `mta-sts.DOMAIN` of each domain, and
/// their DNS: `_mta-sts` TXT records and addresses.
pub struct StsWorld {
    pub ca: TestCa,
    pub web: HttpsServer,
    pub dns: TestDns,
    pub ca_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl StsWorld {
    pub fn start(policies: &[(&str, String)]) -> Self {
        let dir = crate::test_dir();
        let ca = TestCa::new();
        let ca_file = dir.path().join("test-ca.pem");
        std::fs::write(&ca_file, ca.pem()).expect("write the CA file");
        let names: Vec<String> = policies
            .iter()
            .map(|(domain, _)| format!("mta-sts.{domain}"))
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let web = HttpsServer::start(&dir.path().join("web"), &ca, &names, loopback(1));
        let dns = TestDns::start();
        for (domain, text) in policies {
            web.policy(&format!("mta-sts.{domain}"), text);
            dns.txt(
                &format!("_mta-sts.{domain}"),
                "v=STSv1; id=20260101T000000;",
            )
            .address(&format!("mta-sts.{domain}"), loopback(1));
        }
        Self {
            ca,
            web,
            dns,
            ca_file,
            _dir: dir,
        }
    }

    pub fn config(&self, smtp_port: u16) -> TestConfig {
        TestConfig::new()
            .section(
                "dns",
                &format!(
                    "(nameservers: [\"{}\"], timeout_secs: 2, attempts: 1)",
                    self.dns.addr()
                ),
            )
            .delivery("smtp_port", &smtp_port.to_string())
            .delivery(
                "tls_ca_files",
                &format!("[{:?}]", self.ca_file.display().to_string()),
            )
            .delivery(
                "mta_sts",
                &format!("(https_port: {}, fetch_timeout_secs: 5)", self.web.port()),
            )
    }
}
