//! Who receives mail at a local domain: an alias, a system user
//! (getpwnam), or `postmaster`/`mailer-daemon` (which every host must
//! accept; without an alias they reach root). smtpd asks at RCPT time
//! (unknown recipients get 550 and nothing is queued); empath-local asks
//! again when it delivers.

use crate::aliases::{AliasMaps, LookupError};
use crate::config::{Config, LocalDomains};

/// Local parts delivered to root when no alias names them.
pub const ROOT_FALLBACKS: [&str; 2] = ["postmaster", "mailer-daemon"];

/// How a local recipient is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    Alias,
    User,
    /// `postmaster` or `mailer-daemon` with no alias: root.
    Postmaster,
}

pub struct LocalRecipients {
    domains: LocalDomains,
    aliases: AliasMaps,
}

impl LocalRecipients {
    pub fn new(config: &Config) -> Self {
        Self::with(
            config.local_domains(),
            AliasMaps::new(&config.local_delivery.alias_maps),
        )
    }

    pub fn with(domains: LocalDomains, aliases: AliasMaps) -> Self {
        Self { domains, aliases }
    }

    pub fn domains(&self) -> &LocalDomains {
        &self.domains
    }

    pub fn aliases(&self) -> &AliasMaps {
        &self.aliases
    }

    /// How `address` is known here; `Ok(None)` for an unknown local
    /// recipient, and for addresses that are not local at all (those are
    /// not ours to judge). Blocking: reads the alias index and the user
    /// database.
    pub fn check(&self, address: &str) -> Result<Option<Known>, LookupError> {
        if !self.domains.is_local_address(address) {
            return Ok(None);
        }
        let local = local_part(address);
        if self.aliases.lookup(&local)?.is_some() {
            return Ok(Some(Known::Alias));
        }
        if system_user(&local).is_some() {
            return Ok(Some(Known::User));
        }
        if ROOT_FALLBACKS.contains(&local.as_str()) {
            return Ok(Some(Known::Postmaster));
        }
        Ok(None)
    }
}

/// The local part of `address`, lower-cased, as aliases and user names
/// are looked up.
pub fn local_part(address: &str) -> String {
    address
        .rsplit_once('@')
        .map_or(address, |(local, _)| local)
        .to_lowercase()
}

/// The system user `name`, if there is one. User names with characters
/// that no user name has (`/`, NUL, spaces) are never looked up.
pub fn system_user(name: &str) -> Option<nix::unistd::User> {
    let plausible = !name.is_empty()
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-$".contains(c));
    if !plausible {
        return None;
    }
    nix::unistd::User::from_name(name).ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_parts_and_users() {
        assert_eq!(local_part("Root@LocalHost"), "root");
        assert_eq!(local_part("root"), "root");
        assert!(system_user("root").is_some());
        assert!(system_user("../etc").is_none());
        assert!(system_user("no-such-user-empath-test").is_none());
    }
}
