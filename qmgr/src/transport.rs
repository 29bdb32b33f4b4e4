//! Which delivery agent a job goes to: recipients at this host's own
//! domains (`local_delivery.local_domains`) to empath-local, everything
//! else to smtp-out, which also speaks LMTP for the domains whose
//! `delivery.domains.D.transport` names an LMTP server (those go to
//! smtp-out even when they are local). The one place that decides; the
//! scheduler and dispatch only ask.

use empath_common::config::{Config, LocalDomains};
use empath_common::protocol;

/// A delivery agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Smtp,
    Local,
}

impl Transport {
    /// The agent's socket name in `private/`.
    pub fn service(self) -> &'static str {
        match self {
            Self::Smtp => protocol::SMTP_OUT,
            Self::Local => protocol::LOCAL,
        }
    }
}

/// Routes jobs by their recipient domain (jobs hold one domain each).
#[derive(Debug, Clone)]
pub struct Router {
    local: LocalDomains,
    /// Lower-cased domains with a transport of their own (LMTP).
    own_transport: std::collections::HashSet<String>,
}

impl Router {
    pub fn new(config: &Config) -> Self {
        Self {
            local: config.local_domains(),
            own_transport: config
                .delivery
                .domains
                .iter()
                .filter(|(_, policy)| policy.transport.is_some())
                .map(|(domain, _)| domain.to_ascii_lowercase())
                .collect(),
        }
    }

    /// The agent for recipients at `domain`. An empty domain (an
    /// unqualified address queued before qualification existed) belongs
    /// to the origin, so it is local when the origin is.
    pub fn for_domain(&self, domain: &str) -> Transport {
        if self.own_transport.contains(&domain.to_ascii_lowercase()) {
            return Transport::Smtp;
        }
        let local = if domain.is_empty() {
            self.local.contains(self.local.origin())
        } else {
            self.local.contains(domain)
        };
        if local {
            Transport::Local
        } else {
            Transport::Smtp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_domains_go_to_the_local_agent() {
        let router = Router {
            local: LocalDomains::new(
                ["mx.example".to_owned(), "localhost".to_owned()],
                "mx.example",
            ),
            own_transport: ["lmtp.example".to_owned(), "localhost".to_owned()]
                .into_iter()
                .collect(),
        };
        // An LMTP transport wins, even for a local domain.
        assert_eq!(router.for_domain("localhost"), Transport::Smtp);
        assert_eq!(router.for_domain("LMTP.example"), Transport::Smtp);
        assert_eq!(router.for_domain("MX.example."), Transport::Local);
        assert_eq!(router.for_domain(""), Transport::Local);
        assert_eq!(router.for_domain("example.org"), Transport::Smtp);
        assert_eq!(Transport::Local.service(), "local");
    }
}
