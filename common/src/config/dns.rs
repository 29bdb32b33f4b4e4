//! The `dns` section: how smtp-out resolves MX and address records.

use std::net::{IpAddr, SocketAddr};

use serde::de;
use serde::{Deserialize, Deserializer};

/// Resolver settings. No nameservers means the system's (`/etc/resolv.conf`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Dns {
    /// Nameservers to ask, as `"IP"` (port 53) or `"IP:PORT"`.
    pub nameservers: Vec<Nameserver>,
    /// How long one query may take before it is retried or fails.
    pub timeout_secs: u64,
    /// How many times a query is sent before the lookup fails.
    pub attempts: usize,
    /// How many domains the MX cache holds; the oldest go first.
    pub cache_size: usize,
    /// Cached answers live at least this long, whatever their TTL says.
    pub min_ttl_secs: u64,
    /// ... and at most this long.
    pub max_ttl_secs: u64,
    /// Validate answers with DNSSEC (needed for DANE): the nameservers
    /// must return DNSSEC records (RRSIG, DNSKEY, NSEC).
    pub dnssec: bool,
    /// A file of DNSKEY records to trust instead of the root zone's keys
    /// (for a private or test zone); setting it turns `dnssec` on.
    pub trust_anchor: Option<std::path::PathBuf>,
}

impl Dns {
    /// Answers are validated (DNSSEC), so DANE can be used.
    pub fn validating(&self) -> bool {
        self.dnssec || self.trust_anchor.is_some()
    }
}

impl Default for Dns {
    fn default() -> Self {
        Self {
            nameservers: Vec::new(),
            timeout_secs: 5,
            attempts: 2,
            cache_size: 10_000,
            min_ttl_secs: 0,
            max_ttl_secs: 3600,
            dnssec: false,
            trust_anchor: None,
        }
    }
}

impl Dns {
    /// The configured nameservers as hickory wants them (UDP and TCP each,
    /// on the configured port), for every resolver Empath makes: `None`
    /// when none are configured and the system's are to be used.
    pub fn name_servers(&self) -> Option<Vec<hickory_resolver::config::NameServerConfig>> {
        use hickory_resolver::config::{ConnectionConfig, NameServerConfig};
        if self.nameservers.is_empty() {
            return None;
        }
        let servers = self.nameservers.iter().map(|server| {
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
        });
        Some(servers.collect())
    }
}

/// A nameserver address, `"IP"` or `"IP:PORT"` (`"[v6]:PORT"` for IPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nameserver(pub SocketAddr);

impl<'de> Deserialize<'de> for Nameserver {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(Self(addr));
        }
        text.parse::<IpAddr>()
            .map(|ip| Self(SocketAddr::new(ip, 53)))
            .map_err(|_| {
                de::Error::custom(format!(
                    "invalid nameserver {text:?}: expected IP or IP:PORT such as \"192.0.2.53\" or \"127.0.0.1:5353\""
                ))
            })
    }
}

type Invalid = (String, String);

/// Checks that span keys of the section.
pub fn validate(dns: &Dns) -> Result<(), Invalid> {
    let fail = |key: &str, message: &str| Err((format!("dns.{key}"), message.to_owned()));
    if dns.timeout_secs == 0 {
        return fail("timeout_secs", "must be greater than 0");
    }
    if dns.attempts == 0 {
        return fail("attempts", "must be at least 1");
    }
    if dns.cache_size == 0 {
        return fail("cache_size", "must be at least 1");
    }
    if dns.max_ttl_secs < dns.min_ttl_secs {
        return fail("max_ttl_secs", "must not be less than min_ttl_secs");
    }
    if let Some(anchor) = &dns.trust_anchor
        && !anchor.is_file()
    {
        return Err((
            "dns.trust_anchor".to_owned(),
            format!("{} is not a readable file", anchor.display()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use std::path::Path;

    const BASE: &str = r#"Empath(
    smtp_controller: (listeners: [{ socket: "127.0.0.1:2525" }]),
    spool: (path: "/tmp/empath-spool"),
"#;

    fn parse(rest: &str) -> Result<Config, crate::config::ConfigError> {
        Config::parse(Path::new("t.ron"), &format!("{BASE}{rest}\n)"))
    }

    #[test]
    fn nameservers_take_an_optional_port() {
        let config =
            parse(r#"    dns: (nameservers: ["192.0.2.53", "127.0.0.1:5353", "[::1]:53"]),"#)
                .unwrap();
        let servers: Vec<String> = config
            .dns
            .nameservers
            .iter()
            .map(|s| s.0.to_string())
            .collect();
        assert_eq!(servers, ["192.0.2.53:53", "127.0.0.1:5353", "[::1]:53"]);
        assert!(parse("").unwrap().dns.nameservers.is_empty());
    }

    #[test]
    fn bad_values_name_key_and_line() {
        let error =
            parse("    dns: (\n        nameservers: [\"dns.example\"],\n    ),").unwrap_err();
        assert_eq!(error.line, Some(5), "{error}");
        assert!(error.message.contains("invalid nameserver"), "{error}");
        let error =
            parse("    dns: (\n        min_ttl_secs: 10,\n        max_ttl_secs: 5,\n    ),")
                .unwrap_err();
        assert_eq!(error.line, Some(6), "{error}");
        assert!(error.message.contains("dns.max_ttl_secs"), "{error}");
    }

    #[test]
    fn delivery_policy_keys_load_and_are_checked() {
        let config = parse(
            r#"    delivery: (
        smtp_port: 2525,
        circuit_breaker: (failure_threshold: 3, open_secs: 30),
        domains: {"a.test": (require_tls: true, max_concurrency: 2)},
    ),"#,
        )
        .unwrap();
        assert_eq!(config.delivery.smtp_port, 2525);
        assert_eq!(config.delivery.circuit_breaker.failure_threshold, 3);
        let policy = &config.delivery.domains["a.test"];
        assert!(policy.require_tls);
        assert_eq!(policy.max_concurrency, Some(2));
        let error =
            parse("    delivery: (\n        circuit_breaker: (failure_threshold: 0),\n    ),")
                .unwrap_err();
        assert!(
            error
                .message
                .contains("delivery.circuit_breaker.failure_threshold"),
            "{error}"
        );
    }
}
