//! Mail filters and authentication: `smtpd_milters` and `non_smtpd_milters`
//! (Sendmail milters, as in Postfix), `dkim` (signing outgoing mail) and
//! `auth` (SPF, DKIM, DMARC and ARC checks of incoming mail).

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::value::MapAccessDeserializer;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::{Invalid, check};

/// Where a milter listens: `inet:HOST:PORT` or `unix:/PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MilterAddress {
    Inet { host: String, port: u16 },
    Unix(PathBuf),
}

impl MilterAddress {
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "invalid milter address {text:?}: expected \"inet:HOST:PORT\" or \"unix:/PATH\""
            )
        };
        let (transport, endpoint) = text.split_once(':').ok_or_else(bad)?;
        match transport {
            "inet" => {
                let (host, port) = endpoint.rsplit_once(':').ok_or_else(bad)?;
                let host = host
                    .strip_prefix('[')
                    .and_then(|h| h.strip_suffix(']'))
                    .unwrap_or(host);
                let port: u16 = port.parse().map_err(|_| bad())?;
                let valid_host = !host.is_empty()
                    && host
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_'));
                if !valid_host || port == 0 {
                    return Err(bad());
                }
                Ok(Self::Inet {
                    host: host.to_owned(),
                    port,
                })
            }
            "unix" | "local" if !endpoint.is_empty() => Ok(Self::Unix(PathBuf::from(endpoint))),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for MilterAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Inet { host, port } if host.contains(':') => write!(f, "inet:[{host}]:{port}"),
            Self::Inet { host, port } => write!(f, "inet:{host}:{port}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl<'de> Deserialize<'de> for MilterAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(de::Error::custom)
    }
}

/// What happens to mail while a milter cannot be reached or breaks the
/// protocol (Postfix's `milter_default_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultAction {
    /// Go on as if the milter were not configured.
    Accept,
    /// `451 4.7.1`: the client tries again later.
    Tempfail,
    /// `550 5.5.0`: the client gives up.
    Reject,
}

impl<'de> Deserialize<'de> for DefaultAction {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        match text.as_str() {
            "accept" => Ok(Self::Accept),
            "tempfail" => Ok(Self::Tempfail),
            "reject" => Ok(Self::Reject),
            other => Err(de::Error::custom(format!(
                "unknown default_action {other:?}: expected \"accept\", \"tempfail\" or \"reject\""
            ))),
        }
    }
}

/// One milter: its address and how long to wait for it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MilterFields {
    pub address: MilterAddress,
    /// Connecting and the option negotiation.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    /// Each SMTP-stage event (connect, HELO, MAIL, RCPT, DATA).
    #[serde(default = "default_command_timeout")]
    pub command_timeout_secs: u64,
    /// Each read or write while the message content is inspected.
    #[serde(default = "default_content_timeout")]
    pub content_timeout_secs: u64,
    #[serde(default = "default_action")]
    pub default_action: DefaultAction,
}

fn default_connect_timeout() -> u64 {
    30
}
fn default_command_timeout() -> u64 {
    30
}
fn default_content_timeout() -> u64 {
    300
}
fn default_action() -> DefaultAction {
    DefaultAction::Tempfail
}

/// A list entry: the address alone (`"inet:127.0.0.1:8891"`) or the
/// fields (`(address: "unix:/run/milter.sock", default_action: "accept")`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Milter(pub MilterFields);

impl std::ops::Deref for Milter {
    type Target = MilterFields;
    fn deref(&self) -> &MilterFields {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Milter {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct MilterVisitor;
        impl<'de> Visitor<'de> for MilterVisitor {
            type Value = Milter;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a milter: \"inet:HOST:PORT\", \"unix:/PATH\" or (address: ..., ...)")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Milter, E> {
                let address = MilterAddress::parse(text).map_err(E::custom)?;
                Ok(Milter(MilterFields {
                    address,
                    connect_timeout_secs: default_connect_timeout(),
                    command_timeout_secs: default_command_timeout(),
                    content_timeout_secs: default_content_timeout(),
                    default_action: default_action(),
                }))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Milter, A::Error> {
                MilterFields::deserialize(MapAccessDeserializer::new(map)).map(Milter)
            }
        }
        d.deserialize_any(MilterVisitor)
    }
}

/// The header fields signed by default, in this order, when the message
/// has them; `From` is always signed once more than it occurs
/// ("oversigned"), so that no second From can be added unnoticed.
pub const DEFAULT_SIGNED_HEADERS: &[&str] = &[
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "To",
    "Cc",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Content-Disposition",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "Sender",
];

/// DKIM signing of outgoing mail (RFC 6376): mail from `mynetworks`, from
/// authenticated clients and from local submission whose `From:` domain
/// has a key here is signed by cleanup, after the milters and before it
/// is queued.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Dkim {
    pub keys: Vec<DkimKey>,
    /// The header fields to sign (those the message has, plus one more
    /// `From`).
    pub headers: Vec<String>,
    /// Signatures expire after this long (the `x=` tag); none by default.
    pub expire_secs: Option<u64>,
}

impl Default for Dkim {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            headers: DEFAULT_SIGNED_HEADERS
                .iter()
                .map(|h| (*h).to_owned())
                .collect(),
            expire_secs: None,
        }
    }
}

/// One signing key: mail whose `From:` domain is `domain` is signed with
/// it under `selector`. The algorithm (RSA-SHA256 or Ed25519-SHA256)
/// follows from the PEM key file (`empathctl dkim keygen` writes one).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DkimKey {
    pub domain: String,
    pub selector: String,
    pub private_key: PathBuf,
}

/// Checks of incoming mail (mail from outside `mynetworks` that did not
/// authenticate): SPF for the HELO name and the MAIL FROM domain, DKIM,
/// DMARC and optionally ARC, recorded in one `Authentication-Results:`
/// field (RFC 8601).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    pub enabled: bool,
    /// Our name in `Authentication-Results:` (default: the host name).
    /// Fields with this name that arrive with a message are removed.
    pub authserv_id: Option<String>,
    /// Also check ARC chains (RFC 8617).
    pub arc: bool,
    /// Refuse mail that fails DMARC when its domain publishes
    /// `p=reject`, with `550 5.7.1`.
    pub reject_dmarc_failures: bool,
    /// How long the checks of one message may take in all.
    pub timeout_secs: u64,
}

impl Default for Auth {
    fn default() -> Self {
        Self {
            enabled: false,
            authserv_id: None,
            arc: false,
            reject_dmarc_failures: false,
            timeout_secs: 30,
        }
    }
}

fn is_domain(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 253
        && text.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

/// Relative key paths are relative to the directory of the config file.
pub(super) fn resolve_paths(dkim: &mut Dkim, base: &Path) {
    for key in &mut dkim.keys {
        if key.private_key.is_relative() && !key.private_key.as_os_str().is_empty() {
            key.private_key = base.join(&key.private_key);
        }
    }
}

pub(super) fn validate(
    smtpd_milters: &[Milter],
    non_smtpd_milters: &[Milter],
    dkim: &Dkim,
    auth: &Auth,
) -> Result<(), Invalid> {
    for (list, milters) in [
        ("smtpd_milters", smtpd_milters),
        ("non_smtpd_milters", non_smtpd_milters),
    ] {
        for milter in milters {
            for (key, value) in [
                ("connect_timeout_secs", milter.connect_timeout_secs),
                ("command_timeout_secs", milter.command_timeout_secs),
                ("content_timeout_secs", milter.content_timeout_secs),
            ] {
                check(
                    value > 0,
                    &format!("{list}.{key}"),
                    format!("must be greater than 0 ({})", milter.address),
                )?;
            }
        }
    }
    for key in &dkim.keys {
        check(
            is_domain(&key.domain),
            "dkim.keys.domain",
            format!("{:?} is not a domain name", key.domain),
        )?;
        check(
            is_domain(&key.selector),
            "dkim.keys.selector",
            format!("{:?} is not a selector (a domain label)", key.selector),
        )?;
        check(
            !key.private_key.as_os_str().is_empty(),
            "dkim.keys.private_key",
            "must name the key file",
        )?;
    }
    for header in &dkim.headers {
        check(
            crate::edits::is_field_name(header),
            "dkim.headers",
            format!("{header:?} is not a header field name"),
        )?;
    }
    check(
        dkim.expire_secs != Some(0),
        "dkim.expire_secs",
        "must be greater than 0",
    )?;
    if let Some(id) = &auth.authserv_id {
        check(
            is_domain(id),
            "auth.authserv_id",
            format!("{id:?} is not a host name"),
        )?;
    }
    check(
        auth.timeout_secs > 0,
        "auth.timeout_secs",
        "must be greater than 0",
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use std::path::Path;

    const BASE: &str = r#"Empath(
    smtp_controller: (listeners: [{ socket: "127.0.0.1:2525" }]),
    spool: (path: "/tmp/empath-spool"),
"#;

    fn parse(rest: &str) -> Result<Config, crate::config::ConfigError> {
        Config::parse(Path::new("/etc/empath/t.ron"), &format!("{BASE}{rest}\n)"))
    }

    #[test]
    fn milters_are_written_as_addresses_or_with_settings() {
        let config = parse(
            r#"    smtpd_milters: ["inet:127.0.0.1:8891", (address: "unix:/run/rspamd.sock", content_timeout_secs: 10, default_action: "accept")],
    non_smtpd_milters: ["inet:[::1]:11332"],"#,
        )
        .unwrap();
        let first = &config.smtpd_milters[0];
        assert_eq!(first.address.to_string(), "inet:127.0.0.1:8891");
        assert_eq!(first.command_timeout_secs, 30);
        assert_eq!(first.default_action, super::DefaultAction::Tempfail);
        let second = &config.smtpd_milters[1];
        assert_eq!(second.address.to_string(), "unix:/run/rspamd.sock");
        assert_eq!(second.content_timeout_secs, 10);
        assert_eq!(second.default_action, super::DefaultAction::Accept);
        assert_eq!(
            config.non_smtpd_milters[0].address.to_string(),
            "inet:[::1]:11332"
        );
        assert!(parse("").unwrap().smtpd_milters.is_empty());
    }

    #[test]
    fn bad_milters_name_the_line() {
        let error = parse("    smtpd_milters: [\n        \"tcp:1.2.3.4:5\",\n    ],").unwrap_err();
        assert_eq!(error.line, Some(5), "{error}");
        assert!(error.message.contains("invalid milter address"), "{error}");
        let error =
            parse("    smtpd_milters: [(address: \"inet:h:1\", default_action: \"drop\")],")
                .unwrap_err();
        assert!(error.message.contains("unknown default_action"), "{error}");
        let error =
            parse("    smtpd_milters: [(address: \"inet:h:1\",\n command_timeout_secs: 0)],")
                .unwrap_err();
        assert!(
            error.message.contains("smtpd_milters.command_timeout_secs"),
            "{error}"
        );
    }

    #[test]
    fn dkim_keys_resolve_against_the_config_directory() {
        let config = parse(
            r#"    dkim: (keys: [(domain: "example.org", selector: "s1", private_key: "dkim/s1.pem"), (domain: "example.org", selector: "ed", private_key: "/keys/ed.pem")]),"#,
        )
        .unwrap();
        assert_eq!(
            config.dkim.keys[0].private_key,
            Path::new("/etc/empath/dkim/s1.pem")
        );
        assert_eq!(config.dkim.keys[1].private_key, Path::new("/keys/ed.pem"));
        assert!(config.dkim.headers.iter().any(|h| h == "From"));
        let error = parse(
            "    dkim: (keys: [(domain: \"example.org\",\n selector: \"bad selector\", private_key: \"k\")]),",
        )
        .unwrap_err();
        assert!(error.message.contains("dkim.keys.selector"), "{error}");
    }

    #[test]
    fn auth_checks_are_off_by_default_and_keep_their_keys() {
        let config = parse("").unwrap();
        assert!(!config.auth.enabled);
        assert!(!config.auth.reject_dmarc_failures);
        let config = parse(
            r#"    auth: (enabled: true, authserv_id: "mx.example.org", arc: true, reject_dmarc_failures: true),"#,
        )
        .unwrap();
        assert!(config.auth.enabled && config.auth.arc && config.auth.reject_dmarc_failures);
        assert_eq!(config.auth.authserv_id.as_deref(), Some("mx.example.org"));
    }
}
