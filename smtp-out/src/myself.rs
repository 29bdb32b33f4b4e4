//! Recognising ourselves as the next hop: mail sent to one of our own
//! listeners would come straight back and go round until its hop count
//! ran out. As Postfix's smtp(8) says, such mail "loops back to myself".

use std::net::{IpAddr, SocketAddr};

use empath_common::queue::Queue;

/// Our names and listening sockets.
#[derive(Debug, Clone, Default)]
pub struct Myself {
    /// Lower-cased host name.
    hostname: String,
    /// The sockets the master bound (the spool's `listeners` file).
    listeners: Vec<SocketAddr>,
    /// This host's interface addresses, for listeners on a wildcard
    /// address.
    local_ips: Vec<IpAddr>,
}

impl Myself {
    /// Reads the master's `listeners` file and the host's interface
    /// addresses. Blocking. Fails while the master has not written the
    /// file yet (it does once it has started the daemons).
    pub fn discover(queue: &Queue, hostname: &str) -> std::io::Result<Self> {
        let listeners = std::fs::read_to_string(queue.root_file("listeners"))?
            .lines()
            .filter_map(|line| line.trim().parse().ok())
            .collect();
        let local_ips = nix::ifaddrs::getifaddrs()
            .map(|addrs| {
                addrs
                    .filter_map(|interface| interface.address)
                    .filter_map(|address| {
                        address
                            .as_sockaddr_in()
                            .map(|v4| IpAddr::V4(v4.ip()))
                            .or_else(|| address.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self::new(hostname, listeners, local_ips))
    }

    pub fn new(hostname: &str, listeners: Vec<SocketAddr>, local_ips: Vec<IpAddr>) -> Self {
        Self {
            hostname: hostname.trim_end_matches('.').to_ascii_lowercase(),
            listeners,
            local_ips,
        }
    }

    /// Whether `name` is our host name.
    pub fn is_my_name(&self, name: &str) -> bool {
        !self.hostname.is_empty()
            && name
                .trim_end_matches('.')
                .eq_ignore_ascii_case(&self.hostname)
    }

    /// Whether a connection to `addr` would reach one of our listeners.
    pub fn is_my_listener(&self, addr: SocketAddr) -> bool {
        let ip = addr.ip().to_canonical();
        self.listeners.iter().any(|listener| {
            if listener.port() != addr.port() {
                return false;
            }
            let bound = listener.ip().to_canonical();
            if bound.is_unspecified() {
                // A wildcard listener answers on every local address.
                ip.is_loopback()
                    || self
                        .local_ips
                        .iter()
                        .any(|local| local.to_canonical() == ip)
            } else {
                bound == ip
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn myself() -> Myself {
        Myself::new(
            "MX.Example.org.",
            vec![
                "127.0.0.1:2525".parse().unwrap(),
                "[::]:25".parse().unwrap(),
            ],
            vec!["192.0.2.7".parse().unwrap()],
        )
    }

    #[test]
    fn our_listeners_are_recognised() {
        let me = myself();
        assert!(me.is_my_listener("127.0.0.1:2525".parse().unwrap()));
        assert!(!me.is_my_listener("127.0.0.1:2526".parse().unwrap()));
        assert!(!me.is_my_listener("127.0.0.2:2525".parse().unwrap()));
        // The wildcard listener on port 25.
        assert!(me.is_my_listener("192.0.2.7:25".parse().unwrap()));
        assert!(me.is_my_listener("127.0.0.9:25".parse().unwrap()));
        assert!(me.is_my_listener("[::ffff:192.0.2.7]:25".parse().unwrap()));
        assert!(!me.is_my_listener("192.0.2.8:25".parse().unwrap()));
    }

    #[test]
    fn our_name_is_recognised() {
        let me = myself();
        assert!(me.is_my_name("mx.example.ORG"));
        assert!(me.is_my_name("mx.example.org."));
        assert!(!me.is_my_name("mx2.example.org"));
    }
}
