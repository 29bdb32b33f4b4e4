//! Where mail for a domain goes: the per-domain `mx_override`, or the MX
//! hosts from DNS, as a list of addresses to try in order.

use std::net::SocketAddr;

use empath_common::config::Config;
use empath_common::smtp::Reply;

use crate::dns::{self, Answer, LookupError, MxHost, MxResolver};
use crate::myself::Myself;

/// One server to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The host name: what its certificate must name, and what logs show.
    pub name: String,
    pub addr: SocketAddr,
    /// Its MX and address records were DNSSEC-secure: DANE may apply.
    pub dnssec: bool,
}

impl Target {
    pub fn describe(&self) -> String {
        if self.name == self.addr.ip().to_string() {
            self.addr.to_string()
        } else {
            format!("{} [{}]", self.name, self.addr)
        }
    }
}

/// Why there is nowhere to deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoRoute {
    /// Every recipient fails for good (null MX, no such domain).
    Permanent(Reply),
    /// Try again later (DNS trouble).
    Temporary(Reply),
}

/// The reply for mail whose next hop is this very server.
fn loops_back(domain: &str) -> NoRoute {
    NoRoute::Permanent(Reply::new(
        554,
        "5.4.6",
        format!("mail for {domain} loops back to myself"),
    ))
}

/// Drops the MX hosts that are us, and every host less preferred than
/// the best of them, as Postfix's smtp(8) does: we are a relay on the way
/// to the better ones. If we were the best, the mail has nowhere to go.
fn without_myself(
    hosts: Vec<MxHost>,
    myself: &Myself,
    port: u16,
    domain: &str,
) -> Result<Vec<MxHost>, NoRoute> {
    let mine = |host: &MxHost| {
        myself.is_my_name(&host.name)
            || host
                .addrs
                .iter()
                .any(|ip| myself.is_my_listener(SocketAddr::new(*ip, port)))
    };
    let Some(own) = hosts.iter().filter(|h| mine(h)).map(|h| h.preference).min() else {
        return Ok(hosts);
    };
    let better: Vec<MxHost> = hosts.into_iter().filter(|h| h.preference < own).collect();
    if better.is_empty() {
        return Err(loops_back(domain));
    }
    Ok(better)
}

/// The servers to try for `domain`, in order.
pub async fn targets(
    config: &Config,
    resolver: &MxResolver,
    myself: &Myself,
    domain: &str,
) -> Result<Vec<Target>, NoRoute> {
    if let Some(target) = config
        .delivery
        .domains
        .get(domain)
        .and_then(|policy| policy.mx_override.clone())
    {
        // An override names a host the operator chose: the system resolver
        // (with /etc/hosts) finds it, as it would for any local service.
        let addrs = tokio::net::lookup_host((target.host.as_str(), target.port))
            .await
            .map_err(|e| {
                NoRoute::Temporary(Reply::new(
                    451,
                    "4.4.3",
                    format!("cannot resolve mx_override {target} for {domain}: {e}"),
                ))
            })?;
        let targets: Vec<Target> = addrs
            .map(|addr| Target {
                name: target.host.clone(),
                addr,
                dnssec: false,
            })
            .collect();
        if targets.iter().any(|t| myself.is_my_listener(t.addr)) {
            return Err(loops_back(domain));
        }
        return Ok(targets);
    }
    match resolver.resolve(domain).await {
        Ok(Answer::NullMx) => Err(NoRoute::Permanent(dns::null_mx_reply(domain))),
        Ok(Answer::Hosts(hosts)) => {
            let port = config.delivery.smtp_port;
            let hosts = without_myself(hosts, myself, port, domain)?;
            Ok(dns::delivery_order(&hosts, &mut rand::rng())
                .into_iter()
                .flat_map(|host| {
                    let (name, dnssec) = (host.name, host.dnssec);
                    host.addrs.into_iter().map(move |ip| Target {
                        name: name.clone(),
                        addr: SocketAddr::new(ip, port),
                        dnssec,
                    })
                })
                .collect())
        }
        Err(LookupError::Permanent(reply)) => Err(NoRoute::Permanent(reply)),
        Err(LookupError::Temporary(reply)) => Err(NoRoute::Temporary(reply)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, preference: u16, ip: &str) -> MxHost {
        MxHost {
            name: name.into(),
            preference,
            addrs: vec![ip.parse().unwrap()],
            dnssec: false,
        }
    }

    #[test]
    fn we_relay_only_to_better_mx_hosts_and_never_to_ourselves() {
        let me = Myself::new(
            "mx.us.example",
            vec!["[::]:25".parse().unwrap()],
            vec!["192.0.2.1".parse().unwrap()],
        );
        let hosts = vec![
            host("primary.example", 10, "198.51.100.1"),
            host("mx.us.example", 20, "192.0.2.1"),
            host("backup.example", 30, "198.51.100.3"),
        ];
        let kept = without_myself(hosts.clone(), &me, 25, "d.example").unwrap();
        assert_eq!(kept, vec![hosts[0].clone()]);
        // We are the best MX (by address, under another name): a loop.
        let only_us = vec![host("other-name.example", 5, "192.0.2.1"), hosts[2].clone()];
        assert_eq!(
            without_myself(only_us, &me, 25, "d.example"),
            Err(loops_back("d.example"))
        );
        // Not us at all: unchanged.
        let theirs = vec![hosts[0].clone(), hosts[2].clone()];
        assert_eq!(
            without_myself(theirs.clone(), &me, 25, "d.example").unwrap(),
            theirs
        );
    }
}
