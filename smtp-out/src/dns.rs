//! MX resolution (RFC 5321 section 5.1): MX records in preference order,
//! the implicit MX (the domain's own A/AAAA) when there are none, and the
//! null MX of RFC 7505. Answers are cached for their TTL. With `dns.dnssec`
//! the answers are validated, and each host says whether its MX and
//! address records were secure, which DANE (RFC 7672) needs; TLSA and TXT
//! lookups serve DANE, MTA-STS and TLS reporting.
//!
//! `dns.timeout_secs` and `dns.attempts` mean what they say: a query is
//! sent `attempts` times in all, each time waiting up to `timeout_secs`
//! (hickory's own retransmissions within a timeout are turned off, see
//! [`OnePacket`]).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use empath_common::config::Dns;
use empath_common::smtp::Reply;
use hickory_resolver::config::{ConnectionConfig, ProtocolConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::udp::UdpClientStream;
use hickory_resolver::net::xfer::DnsExchange;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::dnssec::TrustAnchors;
use hickory_resolver::proto::rr::rdata::TLSA;
use hickory_resolver::proto::rr::{RData, Record, RecordType};
use hickory_resolver::{ConnectionProvider, PoolContext, Resolver};
use rand::seq::SliceRandom;

use crate::cache::TtlCache;

/// hickory's connections, but a UDP query is sent once per attempt: by
/// default hickory sends it again every few hundred milliseconds within
/// the timeout, so that 1 attempt with a 2 s timeout sent 3 packets (and,
/// with its retry counted on top, 6 in 4 s).
#[derive(Clone, Default)]
pub struct OnePacket(TokioRuntimeProvider);

type Connecting =
    Pin<Box<dyn Future<Output = Result<DnsExchange<TokioRuntimeProvider>, NetError>> + Send>>;

impl ConnectionProvider for OnePacket {
    type Conn = DnsExchange<TokioRuntimeProvider>;
    type FutureConn = Connecting;
    type RuntimeProvider = TokioRuntimeProvider;

    fn new_connection(
        &self,
        ip: IpAddr,
        config: &ConnectionConfig,
        cx: &PoolContext,
    ) -> Result<Self::FutureConn, NetError> {
        match config.protocol {
            ProtocolConfig::Udp => {
                let stream =
                    UdpClientStream::builder(SocketAddr::new(ip, config.port), self.0.clone())
                        .with_timeout(Some(cx.options.timeout))
                        .with_max_retries(1)
                        .with_os_port_selection(cx.options.os_port_selection)
                        .avoid_local_ports(cx.options.avoid_local_udp_ports.clone())
                        .with_bind_addr(config.bind_addr);
                Ok(Box::pin(async move { Ok(stream.exchange()) }))
            }
            _ => self.0.new_connection(ip, config, cx),
        }
    }

    fn runtime_provider(&self) -> &TokioRuntimeProvider {
        &self.0
    }
}

/// One mail server of a domain, with its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxHost {
    /// The MX target, without the final dot: the name its certificate
    /// must carry.
    pub name: String,
    pub preference: u16,
    pub addrs: Vec<IpAddr>,
    /// DNSSEC validated the MX record that names the host and its
    /// address records (RFC 7672 section 2.2): its TLSA records count.
    pub dnssec: bool,
}

/// Where a domain's mail goes, as DNS says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Mail servers, lowest preference first.
    Hosts(Vec<MxHost>),
    /// RFC 7505: the domain accepts no mail.
    NullMx,
}

/// Why there is no answer: the reply every recipient gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupError {
    /// The domain cannot receive mail (5xx).
    Permanent(Reply),
    /// DNS trouble; try again later (4xx).
    Temporary(Reply),
}

/// What the TLSA lookup for one MX host found (RFC 7672 section 2.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsaAnswer {
    /// Validated records: DANE applies.
    Secure(Vec<TLSA>),
    /// No records, or records DNSSEC cannot vouch for: no DANE.
    None,
    /// DNSSEC validation failed: the host must not be used.
    Bogus(String),
    /// The lookup failed (time-out, SERVFAIL): try later.
    Failed(String),
}

/// What a TXT lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxtAnswer {
    /// Each record's strings joined.
    Records(Vec<String>),
    /// No such name or no TXT records.
    None,
    Failed(String),
}

pub struct MxResolver {
    resolver: Resolver<OnePacket>,
    /// Answers are DNSSEC-validated.
    validating: bool,
    cache: Mutex<TtlCache<Answer>>,
    min_ttl: Duration,
    max_ttl: Duration,
    observer: Option<Box<Observer>>,
}

/// Told about every lookup.
type Observer = dyn Fn(&Lookup<'_>) + Send + Sync;

/// What one [`MxResolver::resolve`] did, for its observer (the plugin
/// modules' DnsLookup event).
#[derive(Debug)]
pub struct Lookup<'a> {
    /// Lower-cased.
    pub domain: &'a str,
    /// Answered from the cache.
    pub cache_hit: bool,
    /// How long the lookup took (a cache miss).
    pub duration: Option<Duration>,
    /// Why there is no answer (a cache miss that failed).
    pub error: Option<&'a LookupError>,
    /// Answers in the cache afterwards.
    pub cache_size: usize,
}

impl MxResolver {
    /// A resolver asking `config.nameservers`, or the system's when none
    /// are configured. hickory's own cache is off: ours honours TTLs and
    /// can be listed and cleared.
    pub fn new(config: &Dns) -> Result<Self, String> {
        let provider = OnePacket::default();
        let mut builder = match config.name_servers() {
            None => Resolver::builder(provider)
                .map_err(|e| format!("cannot read the system resolver configuration: {e}"))?,
            Some(servers) => {
                Resolver::builder_with_config(ResolverConfig::from_name_servers(servers), provider)
            }
        };
        if let Some(path) = &config.trust_anchor {
            let anchors = TrustAnchors::from_file(path).map_err(|e| {
                format!(
                    "cannot read the DNSSEC trust anchor {}: {e}",
                    path.display()
                )
            })?;
            builder = builder.with_trust_anchor(Arc::new(anchors));
        }
        let options = builder.options_mut();
        options.timeout = Duration::from_secs(config.timeout_secs);
        // hickory's `attempts` are retries after the first query.
        options.attempts = config.attempts.saturating_sub(1);
        // One nameserver at a time, so that an attempt is one query.
        options.num_concurrent_reqs = 1;
        options.cache_size = 0;
        options.use_hosts_file = ResolveHosts::Never;
        options.validate = config.validating();
        if config.validating() {
            options.edns0 = true;
        }
        let resolver = builder
            .build()
            .map_err(|e| format!("cannot build the DNS resolver: {e}"))?;
        Ok(Self {
            resolver,
            validating: config.validating(),
            cache: Mutex::new(TtlCache::new(config.cache_size)),
            min_ttl: Duration::from_secs(config.min_ttl_secs),
            max_ttl: Duration::from_secs(config.max_ttl_secs),
            observer: None,
        })
    }

    /// Calls `observer` after every [`resolve`](Self::resolve).
    pub fn observed_by(mut self, observer: impl Fn(&Lookup<'_>) + Send + Sync + 'static) -> Self {
        self.observer = Some(Box::new(observer));
        self
    }

    fn notify(&self, domain: &str, duration: Option<Duration>, error: Option<&LookupError>) {
        if let Some(observer) = &self.observer {
            let cache_size = self.cache().len();
            observer(&Lookup {
                domain,
                cache_hit: duration.is_none(),
                duration,
                error,
                cache_size,
            });
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, TtlCache<Answer>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The mail servers of `domain`, from the cache when it is fresh.
    pub async fn resolve(&self, domain: &str) -> Result<Answer, LookupError> {
        let key = domain.to_ascii_lowercase();
        let metrics = empath_common::metrics::get();
        // Not `if let Some(..) = self.cache().get(..)`: the guard would live
        // through the block, and `notify` locks the cache again.
        let cached = self.cache().get(&key, Instant::now());
        if let Some(answer) = cached {
            tracing::debug!(domain = %key, "MX answer from cache");
            metrics.dns_cache_hits_total.inc();
            self.notify(&key, None, None);
            return Ok(answer);
        }
        metrics.dns_cache_misses_total.inc();
        let started = Instant::now();
        let looked_up = self.lookup(&key).await;
        metrics
            .dns_lookup_duration_seconds
            .observe(started.elapsed().as_secs_f64());
        let (answer, valid_until) = match looked_up {
            Ok(found) => found,
            Err(error) => {
                self.notify(&key, Some(started.elapsed()), Some(&error));
                return Err(error);
            }
        };
        let now = Instant::now();
        let ttl = valid_until
            .saturating_duration_since(now)
            .clamp(self.min_ttl, self.max_ttl);
        tracing::debug!(domain = %key, ?answer, ttl_secs = ttl.as_secs(), lookup_ms = started.elapsed().as_millis() as u64, "MX lookup");
        if !ttl.is_zero() {
            self.cache().insert(&key, answer.clone(), now + ttl, now);
        }
        self.notify(&key, Some(started.elapsed()), None);
        Ok(answer)
    }

    /// Cached domains with their hosts and remaining TTL.
    pub fn cached(&self) -> Vec<(String, Answer, Duration)> {
        self.cache().list(Instant::now())
    }

    /// Empties the cache; returns how many entries it held.
    pub fn clear_cache(&self) -> usize {
        self.cache().clear()
    }

    /// Forgets `domain` and looks it up again.
    pub async fn refresh(&self, domain: &str) -> Result<Answer, LookupError> {
        self.cache().remove(&domain.to_ascii_lowercase());
        self.resolve(domain).await
    }

    async fn lookup(&self, domain: &str) -> Result<(Answer, Instant), LookupError> {
        let fqdn = format!("{}.", domain.trim_end_matches('.'));
        match self.resolver.mx_lookup(fqdn.as_str()).await {
            Ok(lookup) => {
                let mut valid_until = lookup.valid_until();
                let mx_secure = self.all_secure(lookup.answers());
                let mut records: Vec<(u16, String)> = lookup
                    .answers()
                    .iter()
                    .filter_map(|record| match &record.data {
                        RData::MX(mx) => Some((
                            mx.preference,
                            mx.exchange.to_ascii().trim_end_matches('.').to_owned(),
                        )),
                        _ => None,
                    })
                    .collect();
                if is_null_mx(&records) {
                    return Ok((Answer::NullMx, valid_until));
                }
                // A "." among real hosts is meaningless (RFC 7505 section 3).
                records.retain(|(_, name)| !name.is_empty());
                records.sort();
                let mut hosts = Vec::with_capacity(records.len());
                let mut last_error = None;
                for (preference, name) in records {
                    match self.addresses(&name).await {
                        Ok((addrs, until, secure)) => {
                            valid_until = valid_until.min(until);
                            hosts.push(MxHost {
                                name,
                                preference,
                                addrs,
                                dnssec: mx_secure && secure,
                            });
                        }
                        Err(error) => {
                            tracing::warn!(domain, mx = %name, %error, "MX host has no usable address");
                            last_error = Some(error);
                        }
                    }
                }
                if hosts.is_empty() {
                    let detail = last_error.map(|e| e.to_string()).unwrap_or_default();
                    return Err(LookupError::Temporary(Reply::new(
                        451,
                        "4.4.3",
                        format!("no address for any MX host of {domain}: {detail}"),
                    )));
                }
                Ok((Answer::Hosts(hosts), valid_until))
            }
            Err(error) if error.is_nx_domain() => Err(no_such_domain(domain)),
            Err(error) if error.is_no_records_found() => self.implicit_mx(domain).await,
            Err(error) => Err(temporary(domain, "MX", &error)),
        }
    }

    /// RFC 5321 section 5.1: without MX records the domain itself is the
    /// mail server.
    async fn implicit_mx(&self, domain: &str) -> Result<(Answer, Instant), LookupError> {
        match self.addresses(domain).await {
            Ok((addrs, valid_until, secure)) => Ok((
                Answer::Hosts(vec![MxHost {
                    name: domain.to_owned(),
                    preference: 0,
                    addrs,
                    dnssec: secure,
                }]),
                valid_until,
            )),
            Err(error) if error.is_no_records_found() => Err(LookupError::Permanent(Reply::new(
                550,
                "5.1.2",
                format!("{domain} has no MX and no address records: it cannot receive mail"),
            ))),
            Err(error) => Err(temporary(domain, "A/AAAA", &error)),
        }
    }

    /// A and AAAA records of `name` (IPv4 first), until when they hold,
    /// and whether DNSSEC validated them.
    async fn addresses(&self, name: &str) -> Result<(Vec<IpAddr>, Instant, bool), NetError> {
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        let (v4, v6) = tokio::join!(
            self.resolver.lookup(fqdn.as_str(), RecordType::A),
            self.resolver.lookup(fqdn.as_str(), RecordType::AAAA)
        );
        let mut addrs = Vec::new();
        let mut valid_until: Option<Instant> = None;
        let mut first_error = None;
        let mut secure = true;
        for result in [v4, v6] {
            match result {
                Ok(lookup) => {
                    secure &= self.all_secure(lookup.answers());
                    addrs.extend(lookup.answers().iter().filter_map(|r| match &r.data {
                        RData::A(a) => Some(IpAddr::V4(a.0)),
                        RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                        _ => None,
                    }));
                    let until = lookup.valid_until();
                    valid_until = Some(valid_until.map_or(until, |v| v.min(until)));
                }
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        match (addrs.is_empty(), first_error) {
            (false, _) => Ok((addrs, valid_until.unwrap_or_else(Instant::now), secure)),
            (true, Some(error)) => Err(error),
            (true, None) => Err(NetError::from("no address records")),
        }
    }
}

impl MxResolver {
    /// Whether answers are validated (`dns.dnssec`): DANE needs it.
    pub fn validating(&self) -> bool {
        self.validating
    }

    /// Every record of the answer was validated as secure.
    fn all_secure(&self, records: &[Record]) -> bool {
        self.validating && !records.is_empty() && records.iter().all(|r| r.proof.is_secure())
    }

    /// The TLSA records of `_PORT._tcp.HOST` (RFC 7672 section 2.2).
    pub async fn tlsa(&self, host: &str, port: u16) -> TlsaAnswer {
        let name = format!("_{port}._tcp.{}.", host.trim_end_matches('.'));
        match self.resolver.tlsa_lookup(name.as_str()).await {
            Ok(lookup) => {
                if !self.all_secure(lookup.answers()) {
                    return TlsaAnswer::None;
                }
                let records: Vec<TLSA> = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::TLSA(tlsa) => Some(tlsa.clone()),
                        _ => None,
                    })
                    .collect();
                if records.is_empty() {
                    TlsaAnswer::None
                } else {
                    TlsaAnswer::Secure(records)
                }
            }
            Err(error) if error.is_nx_domain() || error.is_no_records_found() => TlsaAnswer::None,
            Err(error) if is_bogus(&error) => TlsaAnswer::Bogus(format!("{name}: {error}")),
            Err(error) => TlsaAnswer::Failed(format!("TLSA lookup for {name} failed: {error}")),
        }
    }

    /// The TXT records of `name` (e.g. `_mta-sts.DOMAIN`).
    pub async fn txt(&self, name: &str) -> TxtAnswer {
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        match self.resolver.txt_lookup(fqdn.as_str()).await {
            Ok(lookup) => TxtAnswer::Records(
                lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::TXT(txt) => Some(
                            txt.txt_data
                                .iter()
                                .map(|part| String::from_utf8_lossy(part))
                                .collect::<String>(),
                        ),
                        _ => None,
                    })
                    .collect(),
            ),
            Err(error) if error.is_nx_domain() || error.is_no_records_found() => TxtAnswer::None,
            Err(error) => TxtAnswer::Failed(format!("TXT lookup for {name} failed: {error}")),
        }
    }

    /// The first address of `name`, for the HTTPS clients (MTA-STS,
    /// TLS-RPT), through the same nameservers.
    pub async fn address(&self, name: &str) -> Result<IpAddr, String> {
        self.addresses(name)
            .await
            .map_err(|e| format!("cannot resolve {name}: {e}"))
            .and_then(|(addrs, _, _)| {
                addrs
                    .first()
                    .copied()
                    .ok_or_else(|| format!("{name} has no address"))
            })
    }
}

/// DNSSEC validation failed, as opposed to a missing or slow answer.
fn is_bogus(error: &NetError) -> bool {
    match error {
        NetError::Dns(DnsError::DnssecBogus) => true,
        NetError::Dns(DnsError::Nsec { proof, .. }) => proof.is_bogus(),
        _ => false,
    }
}

/// RFC 7505: a single MX with preference 0 and the root as target.
fn is_null_mx(records: &[(u16, String)]) -> bool {
    matches!(records, [(0, name)] if name.is_empty())
}

fn no_such_domain(domain: &str) -> LookupError {
    LookupError::Permanent(Reply::new(
        550,
        "5.1.2",
        format!("domain {domain} does not exist (NXDOMAIN)"),
    ))
}

fn temporary(domain: &str, kind: &str, error: &NetError) -> LookupError {
    LookupError::Temporary(Reply::new(
        451,
        "4.4.3",
        format!("{kind} lookup for {domain} failed: {error}"),
    ))
}

/// The reply for every recipient of a null-MX domain (RFC 7505 section 4.2).
pub fn null_mx_reply(domain: &str) -> Reply {
    Reply::new(
        556,
        "5.1.10",
        format!("{domain} does not accept mail (null MX, RFC 7505)"),
    )
}

/// Hosts in the order to try them: by preference, and randomly among
/// equal preferences (RFC 5321 section 5.1) to spread the load.
pub fn delivery_order(hosts: &[MxHost], rng: &mut impl rand::Rng) -> Vec<MxHost> {
    let mut ordered = hosts.to_vec();
    ordered.sort_by_key(|host| host.preference);
    for group in ordered.chunk_by_mut(|a, b| a.preference == b.preference) {
        group.shuffle(rng);
    }
    ordered
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn host(name: &str, preference: u16) -> MxHost {
        MxHost {
            name: name.to_owned(),
            preference,
            addrs: vec![],
            dnssec: false,
        }
    }

    /// A nameserver that never answers: `attempts` queries are sent, each
    /// given `timeout_secs`, and nothing more (dns(5): "how many times a
    /// query is sent before the lookup fails").
    #[tokio::test]
    async fn timeout_and_attempts_mean_what_they_say() {
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = silent.local_addr().unwrap();
        silent
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        for (timeout_secs, attempts) in [(1, 1), (1, 2)] {
            let config = Dns {
                nameservers: vec![empath_common::config::Nameserver(addr)],
                timeout_secs,
                attempts,
                ..Dns::default()
            };
            let resolver = MxResolver::new(&config).unwrap();
            let started = Instant::now();
            let answer = resolver.txt("silent.test").await;
            let took = started.elapsed();
            assert!(matches!(answer, TxtAnswer::Failed(_)), "{answer:?}");
            let mut queries = 0;
            let mut buffer = [0u8; 512];
            while silent.recv_from(&mut buffer).is_ok() {
                queries += 1;
            }
            let expected = Duration::from_secs(timeout_secs * attempts as u64);
            assert_eq!(queries, attempts, "queries sent for {attempts} attempts");
            assert!(
                took >= expected && took < expected + Duration::from_millis(900),
                "{attempts} attempts of {timeout_secs}s took {took:?}"
            );
        }
    }

    #[test]
    fn null_mx_is_only_a_lone_root_at_preference_zero() {
        assert!(is_null_mx(&[(0, String::new())]));
        assert!(!is_null_mx(&[(10, String::new())]));
        assert!(!is_null_mx(&[(0, String::new()), (10, "mx.test".into())]));
        assert!(!is_null_mx(&[(0, "mx.test".into())]));
    }

    #[test]
    fn preference_order_holds_and_equal_ones_are_shuffled() {
        let hosts = [
            host("c", 20),
            host("a1", 10),
            host("a2", 10),
            host("a3", 10),
        ];
        let mut rng = StdRng::seed_from_u64(3);
        let mut firsts = std::collections::BTreeSet::new();
        for _ in 0..50 {
            let order = delivery_order(&hosts, &mut rng);
            assert_eq!(order.last().map(|h| h.name.as_str()), Some("c"));
            assert!(order[..3].iter().all(|h| h.preference == 10));
            firsts.insert(order[0].name.clone());
        }
        assert_eq!(firsts.len(), 3, "each equal host comes first sometimes");
    }
}
