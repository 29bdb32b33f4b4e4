//! Helpers for the smtpd system tests: a test certificate made by rcgen,
//! bcrypt hashes for AUTH users, raw SMTP lines over a plain socket, and
//! Python smtplib scripts.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::run::{RunOutput, run_bounded};

/// A self-signed certificate and its key, as PEM files.
pub struct TestCert {
    pub key: PathBuf,
    pub certificate: PathBuf,
    /// The certificate's PEM text, to compare with what a client saw.
    pub pem: String,
}

impl TestCert {
    /// Writes `<name>.key.pem` and `<name>.cert.pem` into `dir`, for
    /// `hostname` (and `localhost`).
    pub fn write(dir: &Path, name: &str, hostname: &str) -> Self {
        let names = vec![hostname.to_owned(), "localhost".to_owned()];
        let certified = rcgen::generate_simple_self_signed(names).expect("make a test certificate");
        let key = dir.join(format!("{name}.key.pem"));
        let certificate = dir.join(format!("{name}.cert.pem"));
        let pem = certified.cert.pem();
        std::fs::write(&key, certified.signing_key.serialize_pem()).expect("write the key");
        std::fs::write(&certificate, &pem).expect("write the certificate");
        Self {
            key,
            certificate,
            pem,
        }
    }

    /// The listener `extensions` entry that offers STARTTLS with it.
    pub fn extension(&self) -> String {
        format!(
            "{{ \"starttls\": {{ \"key\": {:?}, \"certificate\": {:?} }} }}",
            self.key.display().to_string(),
            self.certificate.display().to_string()
        )
    }

    /// The base64 body of the certificate, without PEM armour or breaks.
    pub fn base64(&self) -> String {
        pem_base64(&self.pem)
    }
}

/// The base64 of the first PEM certificate in `text`, joined into one line.
pub fn pem_base64(text: &str) -> String {
    let Some(start) = text.find("-----BEGIN CERTIFICATE-----") else {
        return String::new();
    };
    let body = &text[start + "-----BEGIN CERTIFICATE-----".len()..];
    let end = body.find("-----END CERTIFICATE-----").unwrap_or(body.len());
    body[..end].split_whitespace().collect()
}

/// A bcrypt hash of `password` at the lowest cost, so tests stay fast.
pub fn bcrypt_hash(password: &str) -> String {
    bcrypt::hash(password, 4).expect("bcrypt hash")
}

/// A raw SMTP connection: write lines, read replies.
pub struct RawSmtp {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl RawSmtp {
    /// Connects with reads bounded by `timeout`.
    pub fn connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(Self {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes)
    }

    /// One reply, its lines joined by `\n`; `Err` on timeout or EOF.
    pub fn reply(&mut self) -> std::io::Result<String> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let line = line.trim_end().to_owned();
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                return Ok(lines.join("\n"));
            }
        }
    }

    /// A second handle on the socket for writing, e.g. from a thread.
    pub fn clone_writer(&self) -> TcpStream {
        self.writer.try_clone().expect("clone the socket")
    }

    /// True once the server has closed the connection (EOF), within the
    /// read timeout.
    pub fn closed(&mut self) -> bool {
        let mut rest = String::new();
        matches!(self.reader.read_line(&mut rest), Ok(0))
    }
}

/// Runs a Python script (with `sys.argv[1:]` = `args`), bounded.
pub fn python(script: &str, args: &[String], timeout: Duration) -> RunOutput {
    run_bounded(
        Command::new("python3").arg("-c").arg(script).args(args),
        timeout,
    )
}
