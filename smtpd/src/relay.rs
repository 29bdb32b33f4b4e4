//! The relay policy: which recipients a client may send to. Mail for our
//! own domains (`relay_domains`, the host name and the local domains) is
//! accepted from anyone;
//! mail for any other domain only from `mynetworks` or an authenticated
//! client. Anything else would make us an open relay.

use std::net::IpAddr;

use empath_common::config::{LocalDomains, Network, Smtpd};

#[derive(Debug, Clone, Default)]
pub struct RelayPolicy {
    /// Lower-cased; an entry `.example.com` matches its subdomains.
    local_domains: Vec<String>,
    mynetworks: Vec<Network>,
    /// Whether untrusted clients may use sender-specified routing.
    allow_untrusted_routing: bool,
}

impl RelayPolicy {
    pub fn new(hostname: &str, config: &Smtpd, local: &LocalDomains) -> Self {
        let mut local_domains: Vec<String> = config
            .relay_domains
            .iter()
            .map(|d| d.to_ascii_lowercase())
            .collect();
        local_domains.push(hostname.to_ascii_lowercase());
        local_domains.extend(local.domains().iter().cloned());
        Self {
            local_domains,
            mynetworks: config.mynetworks.clone(),
            allow_untrusted_routing: config.allow_untrusted_routing,
        }
    }

    /// A policy that trusts these networks and accepts these domains.
    pub fn with(domains: &[&str], mynetworks: &[Network]) -> Self {
        Self {
            local_domains: domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
            mynetworks: mynetworks.to_vec(),
            allow_untrusted_routing: false,
        }
    }

    /// Whether the client's address is in `mynetworks`.
    pub fn trusts(&self, client: Option<IpAddr>) -> bool {
        client.is_some_and(|ip| self.mynetworks.iter().any(|n| n.contains(ip)))
    }

    /// Whether `address` (local@domain) is in one of our domains.
    pub fn is_local(&self, address: &str) -> bool {
        let Some((_, domain)) = address.rsplit_once('@') else {
            return false;
        };
        let domain = domain.trim_end_matches('.').to_lowercase();
        self.local_domains
            .iter()
            .any(|local| match local.strip_prefix('.') {
                Some(parent) => domain
                    .strip_suffix(parent)
                    .is_some_and(|head| head.ends_with('.')),
                None => *local == domain,
            })
    }

    /// Whether a client may send to `address`. A client outside
    /// `mynetworks` that did not authenticate may send to our domains
    /// only, and without sender-specified routing in the local part
    /// (Postfix's `allow_untrusted_routing = no`): the next hop might
    /// honour `user%elsewhere@us` and relay for it.
    pub fn allows(&self, address: &str, client: Option<IpAddr>, authenticated: bool) -> bool {
        if authenticated || self.trusts(client) {
            return true;
        }
        self.is_local(address) && (self.allow_untrusted_routing || !has_routing(address))
    }
}

/// Whether the local part of `address` routes elsewhere: `user%domain`,
/// `domain!user`, or a quoted `"user@domain"`.
fn has_routing(address: &str) -> bool {
    let local = address.rsplit_once('@').map_or(address, |(local, _)| local);
    local.contains(['%', '!', '@'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strangers_may_not_route_through_our_domains() {
        let policy = policy();
        let stranger = Some("192.0.2.1".parse().unwrap());
        for routed in [
            "user%evil.com@mx.example",
            "\"user@evil.com\"@mx.example",
            "evil.com!user@mx.example",
        ] {
            assert!(!policy.allows(routed, stranger, false), "{routed}");
            assert!(policy.allows(routed, stranger, true), "{routed}");
        }
        assert!(policy.allows("user@mx.example", stranger, false));
    }

    fn policy() -> RelayPolicy {
        let nets: Vec<Network> = ["10.0.0.0/8"]
            .iter()
            .filter_map(|n| n.parse().ok())
            .collect();
        RelayPolicy::with(&["mx.example", "Ours.example", ".sub.example"], &nets)
    }

    fn ip(text: &str) -> Option<IpAddr> {
        text.parse().ok()
    }

    #[test]
    fn local_domains_are_open_to_anyone() {
        let policy = policy();
        let stranger = ip("192.0.2.1");
        assert!(policy.allows("bob@ours.EXAMPLE", stranger, false));
        assert!(policy.allows("bob@mx.example.", stranger, false));
        assert!(policy.allows("bob@a.sub.example", stranger, false));
        assert!(!policy.allows("bob@sub.example", stranger, false));
        assert!(!policy.allows("bob@notours.example", stranger, false));
        assert!(!policy.allows("bob@xours.example", stranger, false));
    }

    #[test]
    fn foreign_domains_need_mynetworks_or_auth() {
        let policy = policy();
        assert!(!policy.allows("bob@foreign.example", ip("192.0.2.1"), false));
        assert!(!policy.allows("bob@foreign.example", None, false));
        assert!(policy.allows("bob@foreign.example", ip("10.1.2.3"), false));
        assert!(policy.allows("bob@foreign.example", ip("192.0.2.1"), true));
    }
}
