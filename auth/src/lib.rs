//! Mail authentication for Empath, on Stalwart's `mail-auth` (no crypto
//! or record parsing of our own):
//!
//! - [`sign`]: DKIM signing of outgoing mail, in cleanup, after the
//!   milters and before the queue file is sealed;
//! - [`verify`]: SPF, DKIM, DMARC and ARC checks of incoming mail, in
//!   smtpd, recorded in one `Authentication-Results:` field;
//! - [`keys`]: loading signing keys, and making new ones with their DNS
//!   record (`empathctl dkim keygen`).

pub mod keys;
pub mod sign;
pub mod verify;

use std::net::IpAddr;

use empath_common::config::Network;
use empath_common::queue::ClientInfo;

/// Whether mail came from our side: a local submission (or a daemon's own
/// notice), an authenticated client, or a client in `mynetworks`. Such
/// mail is signed, and not checked.
pub fn is_internal(client: &ClientInfo, mynetworks: &[Network]) -> bool {
    if client.authenticated_as.is_some() {
        return true;
    }
    match client.addr.parse::<std::net::SocketAddr>() {
        Ok(addr) => in_networks(addr.ip(), mynetworks),
        // "local": sendmail, or a notice from the bounce daemon.
        Err(_) => true,
    }
}

/// Whether `ip` is in one of `networks`.
pub fn in_networks(ip: IpAddr, networks: &[Network]) -> bool {
    networks.iter().any(|network| network.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_means_local_authenticated_or_in_mynetworks() {
        let nets: Vec<Network> = vec!["10.0.0.0/8".parse().unwrap()];
        let client = |addr: &str, user: Option<&str>| ClientInfo {
            addr: addr.to_owned(),
            authenticated_as: user.map(str::to_owned),
            ..ClientInfo::default()
        };
        assert!(is_internal(&client("local", None), &nets));
        assert!(is_internal(&client("10.1.2.3:25", None), &nets));
        assert!(is_internal(&client("192.0.2.1:25", Some("alice")), &nets));
        assert!(!is_internal(&client("192.0.2.1:25", None), &nets));
    }
}
