//! A real DNS server for the delivery tests: it speaks the DNS protocol
//! over UDP on `127.0.0.1` with an ephemeral port, and answers MX, A,
//! AAAA and TXT queries from an in-memory zone that the test fills. smtp-out is
//! pointed at it with `dns.nameservers`.
//!
//! Names it has no records for get NXDOMAIN; names marked with
//! [`TestDns::servfail`] get SERVFAIL. It counts the queries it answers,
//! so a test can see what a cache saved.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, MX, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// TTL of the records, unless a test sets another.
pub const DEFAULT_TTL: u32 = 300;

#[derive(Default)]
struct Zone {
    records: HashMap<(String, RecordType), Vec<Record>>,
    /// Names that exist (have some record), lower-case, without final dot.
    names: HashSet<String>,
    servfail: HashSet<String>,
    /// Queries answered, by (name, type).
    queries: HashMap<(String, RecordType), usize>,
}

/// A running DNS server. Dropping it stops it.
pub struct TestDns {
    addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn fqdn(name: &str) -> Name {
    Name::from_ascii(format!("{}.", name.trim_end_matches('.')))
        .unwrap_or_else(|e| panic!("bad DNS name {name:?}: {e}"))
}

impl TestDns {
    pub fn start() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind the test DNS server");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("set a read timeout");
        let addr = socket.local_addr().expect("DNS server address");
        let zone = Arc::new(Mutex::new(Zone::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let zone = Arc::clone(&zone);
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name(format!("test-dns-{}", addr.port()))
                .spawn(move || serve(socket, zone, stop))
                .expect("start the DNS thread")
        };
        Self {
            addr,
            zone,
            stop,
            thread: Some(thread),
        }
    }

    /// `IP:PORT`, for `dns: (nameservers: [...])`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn zone(&self) -> MutexGuard<'_, Zone> {
        self.zone.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add(&self, name: &str, record_type: RecordType, rdata: RData, ttl: u32) -> &Self {
        let mut zone = self.zone();
        zone.names.insert(key(name));
        zone.records
            .entry((key(name), record_type))
            .or_default()
            .push(Record::from_rdata(fqdn(name), ttl, rdata));
        self
    }

    /// An MX record: `domain` has mail server `host` at `preference`.
    /// `host` "." makes the null MX of RFC 7505 (with preference 0).
    pub fn mx(&self, domain: &str, preference: u16, host: &str) -> &Self {
        self.mx_ttl(domain, preference, host, DEFAULT_TTL)
    }

    pub fn mx_ttl(&self, domain: &str, preference: u16, host: &str, ttl: u32) -> &Self {
        let exchange = if host == "." {
            Name::root()
        } else {
            fqdn(host)
        };
        self.add(
            domain,
            RecordType::MX,
            RData::MX(MX::new(preference, exchange)),
            ttl,
        )
    }

    /// An A or AAAA record.
    pub fn address(&self, name: &str, ip: IpAddr) -> &Self {
        self.address_ttl(name, ip, DEFAULT_TTL)
    }

    pub fn address_ttl(&self, name: &str, ip: IpAddr, ttl: u32) -> &Self {
        match ip {
            IpAddr::V4(v4) => self.add(name, RecordType::A, RData::A(A(v4)), ttl),
            IpAddr::V6(v6) => self.add(name, RecordType::AAAA, RData::AAAA(AAAA(v6)), ttl),
        }
    }

    /// A TXT record (SPF, DKIM keys, DMARC policies), split into DNS
    /// strings of at most 255 bytes as a zone file would.
    pub fn txt(&self, name: &str, text: &str) -> &Self {
        let strings: Vec<String> = text
            .as_bytes()
            .chunks(255)
            .map(|chunk| String::from_utf8_lossy(chunk).into_owned())
            .collect();
        self.add(
            name,
            RecordType::TXT,
            RData::TXT(TXT::new(strings)),
            DEFAULT_TTL,
        )
    }

    /// Removes the `record_type` records of `name` (the name still exists
    /// if it has others).
    pub fn remove(&self, name: &str, record_type: RecordType) -> &Self {
        self.zone().records.remove(&(key(name), record_type));
        self
    }

    /// Every query for `name` gets SERVFAIL (a temporary DNS failure).
    pub fn servfail(&self, name: &str) -> &Self {
        self.zone().servfail.insert(key(name));
        self
    }

    /// How many `record_type` queries for `name` were answered.
    pub fn queries(&self, name: &str, record_type: RecordType) -> usize {
        self.zone()
            .queries
            .get(&(key(name), record_type))
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(socket: UdpSocket, zone: Arc<Mutex<Zone>>, stop: Arc<AtomicBool>) {
    let mut buffer = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        let (len, peer) = match socket.recv_from(&mut buffer) {
            Ok(received) => received,
            // Timeouts let the loop notice `stop`.
            Err(_) => continue,
        };
        let Ok(request) = Message::from_vec(&buffer[..len]) else {
            continue;
        };
        let response = {
            let mut zone = zone.lock().unwrap_or_else(|e| e.into_inner());
            answer(&mut zone, &request)
        };
        if let Ok(bytes) = response.to_vec() {
            let _ = socket.send_to(&bytes, peer);
        }
    }
}

fn answer(zone: &mut Zone, request: &Message) -> Message {
    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata.message_type = MessageType::Response;
    response.metadata.authoritative = true;
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.add_queries(request.queries.iter().cloned());
    let Some(query) = request.queries.first() else {
        response.metadata.response_code = ResponseCode::FormErr;
        return response;
    };
    let name = key(&query.name().to_ascii());
    let record_type = query.query_type();
    *zone.queries.entry((name.clone(), record_type)).or_default() += 1;
    if zone.servfail.contains(&name) {
        response.metadata.response_code = ResponseCode::ServFail;
    } else if let Some(records) = zone.records.get(&(name.clone(), record_type)) {
        response.add_answers(records.iter().cloned());
    } else if !zone.names.contains(&name) {
        response.metadata.response_code = ResponseCode::NXDomain;
    }
    response
}
