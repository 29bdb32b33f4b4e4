//! Config value types that validate while they are parsed, so that a bad
//! value is reported with the line and column where it appears.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::de::value::MapAccessDeserializer;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::model::ListenerFields;

/// An address to bind, such as `"[::]:25"` or `"127.0.0.1:2525"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenAddr(pub SocketAddr);

impl ListenAddr {
    /// `127.0.0.1:port`: reachable from this host only.
    pub fn loopback(port: u16) -> Self {
        Self(SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), port))
    }
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse::<SocketAddr>().map(Self).map_err(|_| {
            de::Error::custom(format!(
                "invalid listen address {text:?}: expected IP:PORT such as \"[::]:25\" or \"127.0.0.1:2525\""
            ))
        })
    }
}

/// A `host:port` destination, such as `"relay.example.com:25"` or `"[::1]:2525"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl HostPort {
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || {
            format!("invalid host:port {text:?}: expected HOST:PORT such as \"mx.example.com:25\"")
        };
        let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let valid_name = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'));
        if !valid_name || port == 0 {
            return Err(bad());
        }
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl<'de> Deserialize<'de> for HostPort {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(de::Error::custom)
    }
}

/// A listener. The user's documents write it as a map with bare keys
/// (`{ socket: "[::]:25", ... }`); the RON struct form `( ... )` is accepted too.
#[derive(Debug, Clone)]
pub struct Listener(pub ListenerFields);

impl std::ops::Deref for Listener {
    type Target = ListenerFields;
    fn deref(&self) -> &ListenerFields {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Listener {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ListenerVisitor;
        impl<'de> Visitor<'de> for ListenerVisitor {
            type Value = Listener;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a listener: { socket: \"IP:PORT\", ... }")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Listener, A::Error> {
                ListenerFields::deserialize(MapAccessDeserializer::new(map)).map(Listener)
            }
        }
        d.deserialize_any(ListenerVisitor)
    }
}

/// One entry of a listener's `extensions` list: `{ "size": N }` or
/// `{ "starttls": { "key": PATH, "certificate": PATH } }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Extension {
    Size(u64),
    StartTls { key: PathBuf, certificate: PathBuf },
}

impl<'de> Deserialize<'de> for Extension {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ExtensionVisitor;
        impl<'de> Visitor<'de> for ExtensionVisitor {
            type Value = Extension;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an extension: { \"size\": BYTES } or { \"starttls\": { ... } }")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Extension, A::Error> {
                let Some(name) = map.next_key::<String>()? else {
                    return Err(de::Error::custom("empty extension entry"));
                };
                let extension = match name.as_str() {
                    "size" => Extension::Size(map.next_value()?),
                    "starttls" => {
                        let fields: StartTlsMap = map.next_value()?;
                        Extension::StartTls {
                            key: fields.key,
                            certificate: fields.certificate,
                        }
                    }
                    other => {
                        return Err(de::Error::custom(format!(
                            "unknown extension `{other}`, expected `size` or `starttls`"
                        )));
                    }
                };
                if let Some(extra) = map.next_key::<String>()? {
                    return Err(de::Error::custom(format!(
                        "extension entry has a second key `{extra}`: write one extension per {{ }}"
                    )));
                }
                Ok(extension)
            }
        }
        d.deserialize_any(ExtensionVisitor)
    }
}

/// The `starttls` fields: `{ "key": PATH, "certificate": PATH }`.
struct StartTlsMap {
    key: PathBuf,
    certificate: PathBuf,
}

impl<'de> Deserialize<'de> for StartTlsMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;
        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = StartTlsMap;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("{ \"key\": PATH, \"certificate\": PATH }")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StartTlsMap, A::Error> {
                let (mut key, mut certificate) = (None, None);
                while let Some(name) = map.next_key::<String>()? {
                    match name.as_str() {
                        "key" => key = Some(map.next_value()?),
                        "certificate" => certificate = Some(map.next_value()?),
                        other => {
                            return Err(de::Error::custom(format!(
                                "unknown starttls key `{other}`, expected `key` or `certificate`"
                            )));
                        }
                    }
                }
                Ok(StartTlsMap {
                    key: key.ok_or_else(|| de::Error::missing_field("key"))?,
                    certificate: certificate
                        .ok_or_else(|| de::Error::missing_field("certificate"))?,
                })
            }
        }
        d.deserialize_any(FieldsVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_accepts_names_and_bracketed_ipv6() {
        assert_eq!(
            HostPort::parse("mx.example.com:25").unwrap().to_string(),
            "mx.example.com:25"
        );
        let v6 = HostPort::parse("[::1]:2525").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 2525));
        assert_eq!(v6.to_string(), "[::1]:2525");
    }

    #[test]
    fn host_port_rejects_missing_or_bad_port() {
        for bad in ["mx.example.com", "mx:0", "mx:99999", ":25", "mx example:25"] {
            assert!(HostPort::parse(bad).is_err(), "{bad} should be rejected");
        }
    }
}

/// A domain's transport instead of SMTP to its MX hosts, written as
/// Postfix writes one: `"lmtp:unix:/run/dovecot/lmtp"` or
/// `"lmtp:inet:127.0.0.1:24"` (`"lmtp:/path"` is a Unix socket too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainTransport {
    Lmtp(LmtpEndpoint),
}

/// Where an LMTP server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LmtpEndpoint {
    Unix(std::path::PathBuf),
    Inet(HostPort),
}

impl DomainTransport {
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "invalid transport {text:?}: expected \"lmtp:unix:/path\" or \"lmtp:inet:host:port\""
            )
        };
        let rest = text.strip_prefix("lmtp:").ok_or_else(bad)?;
        let endpoint = if let Some(path) = rest.strip_prefix("unix:") {
            LmtpEndpoint::Unix(path.into())
        } else if let Some(target) = rest.strip_prefix("inet:") {
            LmtpEndpoint::Inet(HostPort::parse(target).map_err(|_| bad())?)
        } else if rest.starts_with('/') {
            LmtpEndpoint::Unix(rest.into())
        } else {
            return Err(bad());
        };
        if matches!(&endpoint, LmtpEndpoint::Unix(path) if path.as_os_str().is_empty()) {
            return Err(bad());
        }
        Ok(Self::Lmtp(endpoint))
    }
}

impl fmt::Display for DomainTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Lmtp(LmtpEndpoint::Unix(path)) => write!(f, "lmtp:unix:{}", path.display()),
            Self::Lmtp(LmtpEndpoint::Inet(target)) => write!(f, "lmtp:inet:{target}"),
        }
    }
}

impl<'de> Deserialize<'de> for DomainTransport {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod transport_tests {
    use super::*;

    #[test]
    fn transports_parse_as_postfix_writes_them() {
        assert_eq!(
            DomainTransport::parse("lmtp:unix:/run/dovecot/lmtp"),
            Ok(DomainTransport::Lmtp(LmtpEndpoint::Unix(
                "/run/dovecot/lmtp".into()
            )))
        );
        assert_eq!(
            DomainTransport::parse("lmtp:/run/lmtp"),
            Ok(DomainTransport::Lmtp(LmtpEndpoint::Unix(
                "/run/lmtp".into()
            )))
        );
        assert_eq!(
            DomainTransport::parse("lmtp:inet:127.0.0.1:24").map(|t| t.to_string()),
            Ok("lmtp:inet:127.0.0.1:24".to_owned())
        );
        for bad in [
            "smtp:x",
            "lmtp:",
            "lmtp:unix:",
            "lmtp:inet:host",
            "lmtp:tcp:h:1",
        ] {
            assert!(DomainTransport::parse(bad).is_err(), "{bad}");
        }
    }
}
