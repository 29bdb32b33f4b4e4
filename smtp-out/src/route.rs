//! Where mail for a domain goes.

use empath_common::config::{Config, HostPort};
use empath_common::smtp::Reply;

/// The hosts to try, in order, for `domain`. An `Err` is the reply that
/// every recipient gets when there is nowhere to go.
pub fn destinations(config: &Config, domain: &str) -> Result<Vec<HostPort>, Reply> {
    if let Some(target) = config
        .delivery
        .domains
        .get(domain)
        .and_then(|policy| policy.mx_override.clone())
    {
        return Ok(vec![target]);
    }
    // MX resolution is a later milestone; until then, only routed domains
    // are deliverable, and the rest wait in the queue.
    Err(Reply::new(
        451,
        "4.4.3",
        format!(
            "no route to {domain}: no mx_override is configured and MX lookup is not available"
        ),
    ))
}
