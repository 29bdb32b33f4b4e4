//! Harness additions for the master's tests: the health and metrics
//! listener (`health` file in the spool), plain HTTP GETs, and parsing
//! `/metrics` with the reference parser (Python's prometheus_client).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::run::run_bounded;
use crate::{Empath, TestConfig};

const HTTP_TIMEOUT: Duration = Duration::from_secs(15);

impl TestConfig {
    /// Turns on the health and metrics listener on an ephemeral loopback port.
    pub fn with_health(self) -> Self {
        self.section("health", "(enabled: true, listen_address: \"127.0.0.1:0\")")
    }
}

impl Empath {
    /// Sends `signal` to the master.
    pub fn signal_master(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.master_pid()), signal)
            .unwrap_or_else(|e| panic!("cannot signal the master: {e}"));
    }

    /// Waits up to `timeout` for the master to exit by itself, and reaps
    /// it; `None` if it still runs.
    pub fn wait_master_exited(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        if let Some(status) = self.exit {
            return Some(status);
        }
        let status = crate::poll(timeout, || {
            self.child
                .try_wait()
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "running".to_owned())
        })
        .ok()?;
        self.exit = Some(status);
        Some(status)
    }

    /// `/health/ready`: the status code and the JSON.
    pub fn readiness(&self) -> (u16, serde_json::Value) {
        let (status, body) = http_get(self.health_addr(), "/health/ready");
        let json = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("/health/ready is not JSON ({e}): {body}"));
        (status, json)
    }

    /// The address of `/health` and `/metrics`, once the master has
    /// published it (needs [`TestConfig::with_health`]).
    pub fn health_addr(&self) -> SocketAddr {
        let path = self.spool().join("health");
        self.wait_until("the health listener", Duration::from_secs(30), || {
            std::fs::read_to_string(&path)
                .ok()
                .and_then(|text| text.trim().parse().ok())
                .ok_or_else(|| format!("no address in {}", path.display()))
        })
    }

    /// `/metrics`, parsed.
    pub fn metrics(&self) -> Samples {
        let (status, body) = http_get(self.health_addr(), "/metrics");
        assert_eq!(status, 200, "/metrics answered {status}: {body}");
        parse_metrics(&body, self.dir()).unwrap_or_else(|e| panic!("{e}\n{body}"))
    }
}

/// GETs `path` over HTTP/1.0 and returns the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream
        .set_read_timeout(Some(HTTP_TIMEOUT))
        .expect("read timeout");
    stream
        .set_write_timeout(Some(HTTP_TIMEOUT))
        .expect("write timeout");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("send the request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .unwrap_or_else(|e| panic!("read the answer to GET {path}: {e}"));
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {response:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, body.to_owned())
}

/// Every sample of a scrape, keyed by name and sorted labels.
#[derive(Debug, Default)]
pub struct Samples(BTreeMap<String, f64>);

impl Samples {
    fn key(name: &str, labels: &[(&str, &str)]) -> String {
        let mut labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
        labels.sort();
        format!("{name}{{{}}}", labels.join(","))
    }

    /// One sample's value.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.0.get(&Self::key(name, labels)).copied()
    }

    /// The sum over every sample called `name` whose labels include `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
        self.0
            .iter()
            .filter(|(key, _)| {
                key.split_once('{').is_some_and(|(n, rest)| {
                    n == name
                        && wanted
                            .iter()
                            .all(|w| rest.trim_end_matches('}').split(',').any(|l| l == w))
                })
            })
            .map(|(_, value)| value)
            .sum()
    }

    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .0
            .keys()
            .filter_map(|key| key.split_once('{').map(|(n, _)| n.to_owned()))
            .collect();
        names.dedup();
        names
    }
}

/// Parses an exposition with `tests/clients/parse_metrics.py`. `scratch`
/// is a directory for the text file the parser reads.
pub fn parse_metrics(text: &str, scratch: &Path) -> Result<Samples, String> {
    let file = scratch.join("metrics.txt");
    std::fs::write(&file, text).map_err(|e| format!("write {}: {e}", file.display()))?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/parse_metrics.py");
    let output = run_bounded(
        Command::new("python3").arg(script).arg(&file),
        Duration::from_secs(60),
    );
    if !output.status.success() {
        return Err(format!(
            "the Prometheus parser rejected /metrics:\n{}",
            output.combined()
        ));
    }
    let mut samples = Samples::default();
    for line in output.stdout.lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("bad parser output {line:?}: {e}"))?;
        let name = value["name"].as_str().ok_or("sample without a name")?;
        let labels: Vec<(String, String)> = value["labels"]
            .as_object()
            .map(|labels| {
                labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        let labels: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let number = value["value"].as_f64().ok_or("sample without a value")?;
        samples.0.insert(Samples::key(name, &labels), number);
    }
    Ok(samples)
}
