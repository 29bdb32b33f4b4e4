//! Plugin modules in smtp-out: the DnsLookup event, after every MX lookup,
//! with the original Empath's metadata keys (`dns_cache_status` "hit" or
//! "miss", `dns_domain`, `dns_cache_size`, and for a miss
//! `dns_lookup_duration_ms`, plus `dns_error` when it failed).

use std::sync::Arc;

use empath_modules::{Event, ModuleContext, Modules};

use crate::dns::{Lookup, LookupError};

/// The resolver's observer that tells the modules about each lookup.
pub fn dns_lookups(modules: Arc<Modules>) -> impl Fn(&Lookup<'_>) + Send + Sync + 'static {
    move |lookup| {
        if !modules.wants_events() {
            return;
        }
        let status = if lookup.cache_hit { "hit" } else { "miss" };
        let mut details = vec![
            ("dns_cache_status", status.to_owned()),
            ("dns_domain", lookup.domain.to_owned()),
            ("dns_cache_size", lookup.cache_size.to_string()),
        ];
        if let Some(duration) = lookup.duration {
            details.push(("dns_lookup_duration_ms", duration.as_millis().to_string()));
        }
        if let Some(LookupError::Permanent(reply) | LookupError::Temporary(reply)) = lookup.error {
            details.push(("dns_error", reply.to_string()));
        }
        let mut context = ModuleContext::default();
        empath_modules::blocking(|| modules.emit(Event::DnsLookup, &mut context, &details));
    }
}
