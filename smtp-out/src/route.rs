//! Where mail for a domain goes: the per-domain `mx_override`, or the MX
//! hosts from DNS, as a list of addresses to try in order.

use std::net::SocketAddr;

use empath_common::config::Config;
use empath_common::smtp::Reply;

use crate::dns::{self, Answer, LookupError, MxResolver};

/// One server to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The host name: what its certificate must name, and what logs show.
    pub name: String,
    pub addr: SocketAddr,
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

/// The servers to try for `domain`, in order.
pub async fn targets(
    config: &Config,
    resolver: &MxResolver,
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
        return Ok(addrs
            .map(|addr| Target {
                name: target.host.clone(),
                addr,
            })
            .collect());
    }
    match resolver.resolve(domain).await {
        Ok(Answer::NullMx) => Err(NoRoute::Permanent(dns::null_mx_reply(domain))),
        Ok(Answer::Hosts(hosts)) => {
            let port = config.delivery.smtp_port;
            Ok(dns::delivery_order(&hosts, &mut rand::rng())
                .into_iter()
                .flat_map(|host| {
                    let name = host.name;
                    host.addrs.into_iter().map(move |ip| Target {
                        name: name.clone(),
                        addr: SocketAddr::new(ip, port),
                    })
                })
                .collect())
        }
        Err(LookupError::Permanent(reply)) => Err(NoRoute::Permanent(reply)),
        Err(LookupError::Temporary(reply)) => Err(NoRoute::Temporary(reply)),
    }
}
