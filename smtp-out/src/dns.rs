//! MX resolution (RFC 5321 section 5.1): MX records in preference order,
//! the implicit MX (the domain's own A/AAAA) when there are none, and the
//! null MX of RFC 7505. Answers are cached for their TTL.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use empath_common::config::Dns;
use empath_common::smtp::Reply;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use rand::seq::SliceRandom;

use crate::cache::TtlCache;

/// One mail server of a domain, with its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxHost {
    /// The MX target, without the final dot: the name its certificate
    /// must carry.
    pub name: String,
    pub preference: u16,
    pub addrs: Vec<IpAddr>,
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

pub struct MxResolver {
    resolver: TokioResolver,
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
        let provider = TokioRuntimeProvider::default();
        let mut builder = if config.nameservers.is_empty() {
            TokioResolver::builder(provider)
                .map_err(|e| format!("cannot read the system resolver configuration: {e}"))?
        } else {
            let servers = config
                .nameservers
                .iter()
                .map(|server| {
                    let connection = |mut c: ConnectionConfig| {
                        c.port = server.0.port();
                        c
                    };
                    NameServerConfig::new(
                        server.0.ip(),
                        true,
                        vec![
                            connection(ConnectionConfig::udp()),
                            connection(ConnectionConfig::tcp()),
                        ],
                    )
                })
                .collect();
            TokioResolver::builder_with_config(ResolverConfig::from_name_servers(servers), provider)
        };
        let options = builder.options_mut();
        options.timeout = Duration::from_secs(config.timeout_secs);
        options.attempts = config.attempts;
        options.cache_size = 0;
        options.use_hosts_file = ResolveHosts::Never;
        let resolver = builder
            .build()
            .map_err(|e| format!("cannot build the DNS resolver: {e}"))?;
        Ok(Self {
            resolver,
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
                        Ok((addrs, until)) => {
                            valid_until = valid_until.min(until);
                            hosts.push(MxHost {
                                name,
                                preference,
                                addrs,
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
            Ok((addrs, valid_until)) => Ok((
                Answer::Hosts(vec![MxHost {
                    name: domain.to_owned(),
                    preference: 0,
                    addrs,
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

    /// A and AAAA records of `name` (IPv4 first), and until when they hold.
    async fn addresses(&self, name: &str) -> Result<(Vec<IpAddr>, Instant), NetError> {
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        let (v4, v6) = tokio::join!(
            self.resolver.lookup(fqdn.as_str(), RecordType::A),
            self.resolver.lookup(fqdn.as_str(), RecordType::AAAA)
        );
        let mut addrs = Vec::new();
        let mut valid_until: Option<Instant> = None;
        let mut first_error = None;
        for result in [v4, v6] {
            match result {
                Ok(lookup) => {
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
            (false, _) => Ok((addrs, valid_until.unwrap_or_else(Instant::now))),
            (true, Some(error)) => Err(error),
            (true, None) => Err(NetError::from("no address records")),
        }
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
