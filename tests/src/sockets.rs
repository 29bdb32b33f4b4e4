//! Which sockets a process holds, from `/proc/<pid>/fd`, `/proc/net/tcp`,
//! `/proc/net/tcp6`, `/proc/net/udp*`, `/proc/net/unix`, and `ss -xa` for
//! the peers of Unix sockets (the kernel lists them nowhere in /proc).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use crate::run::run_bounded;

/// `/proc/net/tcp` state of a listening socket.
pub const TCP_LISTEN: u8 = 0x0A;

/// An inet socket as `/proc/net/{tcp,tcp6,udp,udp6}` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InetSocket {
    /// `tcp`, `tcp6`, `udp` or `udp6`.
    pub table: &'static str,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: u8,
    pub inode: u64,
}

/// A Unix socket as `/proc/net/unix` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixSocket {
    pub inode: u64,
    /// The bound path, if any.
    pub path: Option<String>,
    /// `__SO_ACCEPTCON`: a listening socket.
    pub listening: bool,
}

/// The inodes of every socket `pid` holds open.
pub fn socket_inodes(pid: i32) -> Vec<u64> {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let mut inodes: Vec<u64> = entries
        .flatten()
        .filter_map(|entry| std::fs::read_link(entry.path()).ok())
        .filter_map(|target| {
            target
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect();
    inodes.sort_unstable();
    inodes
}

/// Every TCP and UDP socket of this network namespace.
pub fn inet_sockets() -> Vec<InetSocket> {
    ["tcp", "tcp6", "udp", "udp6"]
        .into_iter()
        .flat_map(|table| {
            let text = std::fs::read_to_string(format!("/proc/net/{table}")).unwrap_or_default();
            text.lines()
                .skip(1)
                .filter_map(|line| parse_inet_line(table, line))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn parse_inet_line(table: &'static str, line: &str) -> Option<InetSocket> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    Some(InetSocket {
        table,
        local: parse_hex_addr(fields.get(1)?)?,
        remote: parse_hex_addr(fields.get(2)?)?,
        state: u8::from_str_radix(fields.get(3)?, 16).ok()?,
        inode: fields.get(9)?.parse().ok()?,
    })
}

/// `0100007F:0019` (IPv4) or 32 hex digits (IPv6): each 32-bit word as
/// the kernel holds it in memory (network byte order read as a
/// little-endian number), then the port in hex.
fn parse_hex_addr(text: &str) -> Option<SocketAddr> {
    let (address, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let bytes: Vec<u8> = (0..address.len() / 8)
        .map(|i| {
            address
                .get(i * 8..i * 8 + 8)
                .and_then(|word| u32::from_str_radix(word, 16).ok())
                .map(u32::to_le_bytes)
        })
        .collect::<Option<Vec<[u8; 4]>>>()?
        .concat();
    let ip = match bytes.len() {
        4 => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
        16 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Every Unix socket of this network namespace.
pub fn unix_sockets() -> Vec<UnixSocket> {
    let text = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = u32::from_str_radix(fields.get(3)?, 16).ok()?;
            Some(UnixSocket {
                inode: fields.get(6)?.parse().ok()?,
                path: fields.get(7).map(|p| (*p).to_owned()),
                listening: flags & 0x0001_0000 != 0,
            })
        })
        .collect()
}

/// The peer of each connected Unix socket, by inode (from `ss -xa`).
pub fn unix_peers() -> HashMap<u64, u64> {
    let output = run_bounded(Command::new("ss").arg("-xa"), Duration::from_secs(30));
    assert!(
        output.status.success(),
        "ss -xa (iproute2) failed:\n{}",
        output.combined()
    );
    output
        .stdout
        .lines()
        .skip(1)
        .filter_map(|line| {
            // Netid State Recv-Q Send-Q LocalPath LocalInode PeerPath PeerInode
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = fields.get(5)?.parse().ok()?;
            let peer: u64 = fields.get(7)?.parse().ok()?;
            (peer != 0).then_some((local, peer))
        })
        .collect()
}

/// The process among `pids` that holds the socket with `inode`.
pub fn holder(inode: u64, pids: &[i32]) -> Option<i32> {
    pids.iter()
        .copied()
        .find(|pid| socket_inodes(*pid).contains(&inode))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_addresses_are_decoded() {
        assert_eq!(
            parse_hex_addr("0100007F:0019"),
            Some("127.0.0.1:25".parse().unwrap())
        );
        assert_eq!(
            parse_hex_addr("00000000000000000000000001000000:1F90"),
            Some("[::1]:8080".parse().unwrap())
        );
        assert_eq!(
            parse_hex_addr("0000000000000000FFFF00000100007F:01BB"),
            Some("[::ffff:127.0.0.1]:443".parse().unwrap())
        );
    }

    #[test]
    fn a_listener_of_this_process_is_found() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let me = std::process::id() as i32;
        let found = inet_sockets()
            .into_iter()
            .find(|s| s.local == addr && s.state == TCP_LISTEN)
            .expect("listed in /proc/net/tcp");
        assert_eq!(holder(found.inode, &[me]), Some(me));
    }
}
