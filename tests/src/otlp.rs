//! An OpenTelemetry collector for the tests: tests/clients/otlp_receiver.py,
//! which decodes every OTLP/HTTP request (metrics and traces) with the
//! OpenTelemetry project's own protobuf definitions and writes each as a
//! JSON line.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::{poll, test_dir};

const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The receiver process; killed when dropped.
pub struct Receiver {
    child: Child,
    output: PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Receiver {
    pub fn start() -> Self {
        let dir = test_dir();
        let (port_file, output) = (dir.path().join("port"), dir.path().join("received.jsonl"));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/otlp_receiver.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(&port_file)
            .arg(&output)
            .stdin(Stdio::null())
            .spawn()
            .expect("start the OTLP receiver");
        let port = poll(START_TIMEOUT, || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the OTLP receiver exited ({status}); is opentelemetry-proto installed?");
            }
            std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|text| text.trim().parse().ok())
                .ok_or_else(|| "no port yet".to_owned())
        })
        .expect("the OTLP receiver listens");
        Self {
            child,
            output,
            port,
            _dir: dir,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every request received so far, decoded.
    pub fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.output)
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect()
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Value> {
        self.requests()
            .iter()
            .filter(|r| r["path"] == "/v1/traces")
            .flat_map(|r| r["spans"].as_array().cloned().unwrap_or_default())
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
