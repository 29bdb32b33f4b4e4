//! A real authoritative DNS server with DNSSEC for the DANE tests: the
//! zones are signed with `ldns-signzone` (Debian's ldnsutils) under one
//! key made by `ldns-keygen`, and served by NSD (Debian's `nsd`) on
//! `127.0.0.1` and an ephemeral port. smtp-out asks it directly, with
//! `dns.trust_anchor` set to the key, so the signed zone validates as
//! secure without a chain from the root.
//!
//! A zone may stay unsigned (a delegation from a signed parent, which
//! then proves with NSEC that the child has no DS: an insecure zone), and
//! the signed text may be edited after signing, to make a signature bogus.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};
use tempfile::TempDir;

/// One zone: its origin (`dane.test`), its records in zone-file syntax
/// (owner names relative to the origin), and whether it is signed. The
/// SOA, NS and `ns` address are added.
pub struct ZoneSpec {
    pub origin: String,
    pub records: Vec<String>,
    pub signed: bool,
}

impl ZoneSpec {
    pub fn signed(origin: &str, records: &[String]) -> Self {
        Self {
            origin: origin.to_owned(),
            records: records.to_vec(),
            signed: true,
        }
    }

    pub fn unsigned(origin: &str, records: &[String]) -> Self {
        Self {
            signed: false,
            ..Self::signed(origin, records)
        }
    }
}

/// A running NSD. Dropping it stops it.
pub struct SignedDns {
    dir: TempDir,
    child: Child,
    addr: SocketAddr,
    anchor: PathBuf,
}

const START_TIMEOUT: Duration = Duration::from_secs(20);

fn run(dir: &Path, program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (install ldnsutils and nsd): {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

impl SignedDns {
    /// Signs the signed zones with one new key, lets `tamper` edit the
    /// signed text of each (origin, text), and starts NSD with them all.
    pub fn start(zones: Vec<ZoneSpec>, tamper: impl Fn(&str, String) -> String) -> Self {
        let dir = crate::test_dir();
        let path = dir.path();
        let signed_origin = zones
            .iter()
            .find(|z| z.signed)
            .map(|z| z.origin.clone())
            .expect("at least one signed zone");
        // One key, with the SEP (KSK) flag, signs everything: it is the
        // trust anchor, so no DS is ever needed above it.
        let key = run(
            path,
            "ldns-keygen",
            &["-a", "ECDSAP256SHA256", "-k", &signed_origin],
        )
        .trim()
        .to_owned();
        let anchor = path.join(format!("{key}.key"));
        let mut nsd_zones = String::new();
        for zone in &zones {
            let file = format!("{}.zone", zone.origin);
            let mut text = format!(
                "$ORIGIN {origin}.\n$TTL 300\n\
                 @ IN SOA ns.{origin}. hostmaster.{origin}. 1 3600 600 86400 300\n\
                 @ IN NS ns.{origin}.\nns IN A 127.0.0.1\n",
                origin = zone.origin
            );
            for record in &zone.records {
                text.push_str(record);
                text.push('\n');
            }
            std::fs::write(path.join(&file), text).expect("write a zone file");
            let served = if zone.signed {
                run(path, "ldns-signzone", &[&file, &key]);
                let signed = format!("{file}.signed");
                let text = std::fs::read_to_string(path.join(&signed)).expect("the signed zone");
                std::fs::write(path.join(&signed), tamper(&zone.origin, text))
                    .expect("write the signed zone");
                signed
            } else {
                file
            };
            nsd_zones.push_str(&format!(
                "zone:\n    name: {}\n    zonefile: {served}\n",
                zone.origin
            ));
        }
        for _ in 0..5 {
            let port = free_port();
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let config = format!(
                "server:\n    ip-address: 127.0.0.1@{port}\n    username: \"\"\n    chroot: \"\"\n\
                 \x20   zonesdir: \"{dir}\"\n    zonelistfile: \"{dir}/zone.list\"\n    database: \"\"\n\
                 \x20   pidfile: \"{dir}/nsd.pid\"\n    xfrdfile: \"{dir}/xfrd.state\"\n    xfrdir: \"{dir}\"\n\
                 \x20   logfile: \"{dir}/nsd.log\"\n    server-count: 1\n    verbosity: 1\n\
                 remote-control:\n    control-enable: no\n{nsd_zones}",
                dir = path.display()
            );
            std::fs::write(path.join("nsd.conf"), config).expect("write nsd.conf");
            let log = std::fs::File::create(path.join("nsd.out")).expect("nsd.out");
            let mut child = Command::new("nsd")
                .args(["-d", "-c", "nsd.conf"])
                .current_dir(path)
                .stdout(log.try_clone().expect("nsd.out"))
                .stderr(log)
                .stdin(Stdio::null())
                .spawn()
                .expect("start nsd (install the nsd package)");
            if answers(addr, &signed_origin, &mut child) {
                return Self {
                    dir,
                    child,
                    addr,
                    anchor,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "nsd did not start:\n{}",
            std::fs::read_to_string(path.join("nsd.out")).unwrap_or_default()
        );
    }

    /// `IP:PORT`, for `dns: (nameservers: [...])`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The key's DNSKEY record, for `dns.trust_anchor`.
    pub fn trust_anchor(&self) -> &Path {
        &self.anchor
    }

    /// NSD's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nsd.log")).unwrap_or_default()
    }
}

impl Drop for SignedDns {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free on 127.0.0.1 for UDP and TCP a moment ago.
fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP socket");
        let port = udp.local_addr().expect("address").port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Waits until the server answers a SOA query for `origin`.
fn answers(addr: SocketAddr, origin: &str, child: &mut Child) -> bool {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP socket");
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("set a timeout");
    let name = Name::from_ascii(format!("{origin}.")).expect("a zone name");
    let mut query = Message::query();
    query.add_query(Query::query(name, RecordType::SOA));
    let bytes = query.to_vec().expect("encode a query");
    let deadline = Instant::now() + START_TIMEOUT;
    let mut buffer = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        let _ = socket.send_to(&bytes, addr);
        if let Ok((len, _)) = socket.recv_from(&mut buffer)
            && Message::from_vec(&buffer[..len]).is_ok()
        {
            return true;
        }
    }
    false
}
