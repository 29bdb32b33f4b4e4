//! The `smtpd` section: how the SMTP server side runs and what it allows:
//! process count, relay policy, authentication, VRFY/EXPN, and limits.
//!
//! The connection limits and the AUTH failure limit hold for all smtpd
//! processes together: empath-anvil keeps the counts. Should it not
//! answer, each process still holds them on its own.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

use serde::Deserialize;
use serde::de::{self, Deserializer};

use super::{Invalid, check};

/// Postfix's `message_size_limit` default, used when a listener declares
/// no `size` extension.
pub const DEFAULT_MAX_MESSAGE_SIZE: u64 = 10_240_000;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Smtpd {
    /// How many smtpd processes share the listening sockets.
    pub processes: usize,
    /// Domains we accept mail for from anyone (besides our host name).
    pub relay_domains: Vec<String>,
    /// Clients that may relay to any domain without authenticating.
    /// Loopback only by default: no open relay.
    pub mynetworks: Vec<Network>,
    pub auth: Auth,
    /// The reply to VRFY: 252 (cannot verify, but will accept) or 502
    /// (disabled). We never disclose whether a user exists.
    pub vrfy_code: u16,
    /// The reply to EXPN: 252 or 502 (disabled).
    pub expn_code: u16,
    /// Open connections in all; more get `421 4.7.0`.
    pub max_connections: usize,
    /// Open connections from one client IP address, in all.
    pub max_connections_per_ip: usize,
    /// Clients exempt from `max_connections_per_ip` (Postfix's
    /// `smtpd_client_connection_limit_exceptions`). `None`: `mynetworks`.
    /// Use [`Smtpd::connection_limit_exceptions`].
    pub client_connection_limit_exceptions: Option<Vec<Network>>,
    /// Recipients per message; more get `452 4.5.3`.
    pub max_recipients: usize,
    /// Protocol errors after which the session is closed with `421`.
    pub max_errors: u32,
    /// The message size limit of listeners without a `size` extension.
    pub max_message_size: u64,
    /// What a bare CR or LF in a message gets (Postfix's
    /// `smtpd_forbid_bare_newline`): `normalize` (it ends the line and
    /// becomes CRLF) or `reject` (`550 5.6.0`, after the end of data).
    pub bare_line_endings: BareLineEndings,
    /// Accept `user%domain@us`, `"user@domain"@us` and `domain!user@us`
    /// from clients outside `mynetworks` that did not authenticate.
    /// Off, as Postfix's `allow_untrusted_routing`: they get `554 5.7.1`.
    pub allow_untrusted_routing: bool,
}

/// See [`Smtpd::bare_line_endings`]; written as a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(try_from = "String")]
pub enum BareLineEndings {
    #[default]
    Normalize,
    Reject,
}

impl TryFrom<String> for BareLineEndings {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        match value.as_str() {
            "normalize" => Ok(Self::Normalize),
            "reject" => Ok(Self::Reject),
            other => Err(format!(
                "unknown bare_line_endings {other:?}, expected \"normalize\" or \"reject\""
            )),
        }
    }
}

impl Default for Smtpd {
    fn default() -> Self {
        Self {
            processes: 1,
            relay_domains: Vec::new(),
            mynetworks: ["127.0.0.0/8", "::1/128"]
                .iter()
                .filter_map(|n| n.parse().ok())
                .collect(),
            auth: Auth::default(),
            vrfy_code: 252,
            expn_code: 502,
            max_connections: 2048,
            max_connections_per_ip: 50,
            client_connection_limit_exceptions: None,
            max_recipients: 1000,
            max_errors: 20,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            bare_line_endings: BareLineEndings::default(),
            allow_untrusted_routing: false,
        }
    }
}

impl Smtpd {
    /// The networks exempt from the per-client connection limit: as
    /// configured, else `mynetworks` (as Postfix's default
    /// `$mynetworks`). An empty list exempts nobody.
    pub fn connection_limit_exceptions(&self) -> &[Network] {
        self.client_connection_limit_exceptions
            .as_deref()
            .unwrap_or(&self.mynetworks)
    }
}

/// SMTP AUTH (PLAIN and LOGIN) for submission by authenticated clients.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    /// User name -> bcrypt hash (`$2b$...`).
    pub users: BTreeMap<String, String>,
    /// More users, one `name:bcrypt-hash` per line (`#` starts a comment).
    pub users_file: Option<PathBuf>,
    /// Offer AUTH on connections without TLS too. Off: AUTH is offered
    /// only after STARTTLS, so passwords never cross the network in clear.
    pub allow_insecure: bool,
    /// Failed AUTH attempts from one client IP within `failure_window_secs`
    /// after which that IP's AUTH attempts are refused.
    pub max_failures: u32,
    pub failure_window_secs: u64,
}

impl Default for Auth {
    fn default() -> Self {
        Self {
            users: BTreeMap::new(),
            users_file: None,
            allow_insecure: false,
            max_failures: 3,
            failure_window_secs: 300,
        }
    }
}

impl Auth {
    /// Whether any users can be configured at all, that is, whether AUTH
    /// should be offered.
    pub fn enabled(&self) -> bool {
        !self.users.is_empty() || self.users_file.is_some()
    }
}

/// An IP network such as `"192.0.2.0/24"`, or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    address: IpAddr,
    prefix: u8,
}

impl Network {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match (self.address, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Network {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || {
            format!("invalid network {text:?}: expected ADDRESS/PREFIX such as \"192.0.2.0/24\"")
        };
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = address.parse().map_err(|_| bad())?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(bad)?,
            None => max,
        };
        Ok(Self {
            address: address.to_canonical(),
            prefix,
        })
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

impl<'de> Deserialize<'de> for Network {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(de::Error::custom)
    }
}

/// True for what `bcrypt` produces: `$2a$`, `$2b$` or `$2y$`, a two-digit
/// cost, and 53 characters of salt and hash.
pub fn is_bcrypt_hash(hash: &str) -> bool {
    let bytes = hash.as_bytes();
    hash.len() == 60
        && (hash.starts_with("$2a$") || hash.starts_with("$2b$") || hash.starts_with("$2y$"))
        && bytes[4].is_ascii_digit()
        && bytes[5].is_ascii_digit()
        && bytes[6] == b'$'
        && bytes[7..]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'.' || *b == b'/')
}

pub(super) fn validate(smtpd: &Smtpd) -> Result<(), Invalid> {
    check(smtpd.processes > 0, "smtpd.processes", "must be at least 1")?;
    for domain in &smtpd.relay_domains {
        let valid = !domain.is_empty()
            && domain
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'));
        check(
            valid,
            "smtpd.relay_domains",
            format!("{domain:?} is not a domain name"),
        )?;
    }
    for (key, code) in [
        ("smtpd.vrfy_code", smtpd.vrfy_code),
        ("smtpd.expn_code", smtpd.expn_code),
    ] {
        check(
            code == 252 || code == 502,
            key,
            format!("{code} is not 252 (cannot verify) or 502 (disabled)"),
        )?;
    }
    for (key, value) in [
        ("smtpd.max_connections", smtpd.max_connections),
        ("smtpd.max_connections_per_ip", smtpd.max_connections_per_ip),
        ("smtpd.max_recipients", smtpd.max_recipients),
    ] {
        check(value > 0, key, "must be at least 1")?;
    }
    check(
        smtpd.max_errors > 0,
        "smtpd.max_errors",
        "must be at least 1",
    )?;
    check(
        smtpd.max_message_size > 0,
        "smtpd.max_message_size",
        "must be greater than 0",
    )?;
    for (user, hash) in &smtpd.auth.users {
        check(
            !user.is_empty() && !user.contains(|c: char| c.is_control() || c == ':'),
            "smtpd.auth.users",
            format!("{user:?} is not a valid user name"),
        )?;
        check(
            is_bcrypt_hash(hash),
            "smtpd.auth.users",
            format!("the hash of {user:?} is not a bcrypt hash ($2b$...)"),
        )?;
    }
    check(
        smtpd.auth.max_failures > 0,
        "smtpd.auth.max_failures",
        "must be at least 1",
    )?;
    check(
        smtpd.auth.failure_window_secs > 0,
        "smtpd.auth.failure_window_secs",
        "must be greater than 0",
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> Network {
        text.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn networks_contain_their_addresses() {
        let ip = |t: &str| t.parse::<IpAddr>().unwrap_or_else(|e| panic!("{e}"));
        assert!(net("127.0.0.0/8").contains(ip("127.1.2.3")));
        assert!(net("127.0.0.0/8").contains(ip("::ffff:127.0.0.1")));
        assert!(!net("127.0.0.0/8").contains(ip("10.0.0.1")));
        assert!(net("::1/128").contains(ip("::1")));
        assert!(net("0.0.0.0/0").contains(ip("192.0.2.1")));
        assert!(net("192.0.2.7").contains(ip("192.0.2.7")));
        assert!(!net("192.0.2.7").contains(ip("192.0.2.8")));
        assert!(!net("2001:db8::/32").contains(ip("192.0.2.8")));
        for bad in ["", "10.0.0.0/33", "10/8", "::1/129", "x/1"] {
            assert!(bad.parse::<Network>().is_err(), "{bad}");
        }
    }

    #[test]
    fn bcrypt_hashes_are_recognised() {
        assert!(is_bcrypt_hash(
            "$2b$04$EGdrhbKUv8Oc9vGiXX0HQOxSg445d458Muh7DAHskb6QbtCvdxcie"
        ));
        assert!(!is_bcrypt_hash("secret"));
        assert!(!is_bcrypt_hash(
            "$1$04$EGdrhbKUv8Oc9vGiXX0HQOxSg445d458Muh7DAHskb6QbtCvdxcie"
        ));
    }
}
