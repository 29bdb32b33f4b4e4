//! The `local_delivery` section: which domains are this host's own
//! (Postfix's `mydestination`), how unqualified addresses are completed
//! (`myorigin`), and how `empath-local` delivers: aliases, `.forward`,
//! mbox or Maildir, commands and files.

use std::path::PathBuf;

use serde::Deserialize;

use super::{Invalid, check};

/// Where an alias target came from: commands and files are allowed or
/// refused per source (Postfix's `allow_mail_to_commands`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub enum TargetSource {
    /// An entry of an alias map.
    Alias,
    /// A user's `~/.forward`.
    Forward,
    /// A `:include:` file.
    Include,
}

impl TryFrom<String> for TargetSource {
    type Error = String;
    fn try_from(source: String) -> Result<Self, String> {
        match source.as_str() {
            "alias" => Ok(Self::Alias),
            "forward" => Ok(Self::Forward),
            "include" => Ok(Self::Include),
            other => Err(format!(
                "unknown source {other:?}, expected \"alias\", \"forward\" or \"include\""
            )),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalDelivery {
    /// The domains delivered on this host. `None`: the host name,
    /// `localhost` and `localhost.localdomain`. An empty list turns local
    /// delivery off (a pure relay).
    pub local_domains: Option<Vec<String>>,
    /// The domain given to unqualified addresses (`root`). `None`: the
    /// host name.
    pub origin: Option<String>,
    /// Alias files in aliases(5) format; `newaliases` compiles each into
    /// `FILE.cdb`, which is what lookups read.
    pub alias_maps: Vec<PathBuf>,
    /// Empty: mbox in `mail_spool_directory`. Else a path under the home
    /// directory; one ending in `/` is a Maildir (`"Maildir/"`).
    pub home_mailbox: String,
    /// Where mbox files named after the users live.
    pub mail_spool_directory: PathBuf,
    /// Every user's mailbox is `DIR/USER` (a Maildir `DIR/USER/` when
    /// `home_mailbox` ends in `/`) instead of the spool or the home
    /// directory. With an unprivileged empath-local (development), this is
    /// the only way it can deliver to users other than itself.
    pub mailbox_directory: Option<PathBuf>,
    /// Honour `~/.forward`.
    pub forward: bool,
    /// Honour root's `~/.forward` too.
    pub allow_root_forward: bool,
    /// The user that commands and files from a root-owned alias map run
    /// as. Never root.
    pub default_privs: String,
    /// Sources whose `|command` targets are delivered.
    pub allow_mail_to_commands: Vec<TargetSource>,
    /// Sources whose `/file` targets are delivered.
    pub allow_mail_to_files: Vec<TargetSource>,
    /// A command still running after this long is killed and the
    /// recipient bounced (5.3.0), as Postfix does.
    pub command_time_limit_secs: u64,
    /// The largest an mbox file may grow to (5.2.2 beyond); 0: no limit.
    pub mailbox_size_limit: u64,
    /// How long to wait for a mailbox lock before deferring (4.2.0).
    pub lock_timeout_secs: u64,
}

impl Default for LocalDelivery {
    fn default() -> Self {
        Self {
            local_domains: None,
            origin: None,
            alias_maps: vec![PathBuf::from("/etc/aliases")],
            home_mailbox: String::new(),
            mail_spool_directory: PathBuf::from("/var/mail"),
            mailbox_directory: None,
            forward: true,
            allow_root_forward: false,
            default_privs: "nobody".to_owned(),
            allow_mail_to_commands: vec![TargetSource::Alias, TargetSource::Forward],
            allow_mail_to_files: vec![TargetSource::Alias, TargetSource::Forward],
            command_time_limit_secs: 1000,
            mailbox_size_limit: 51_200_000,
            lock_timeout_secs: 60,
        }
    }
}

impl LocalDelivery {
    /// Whether `home_mailbox` names a Maildir.
    pub fn maildir(&self) -> bool {
        self.home_mailbox.ends_with('/')
    }
}

/// This host's domains and origin, resolved from the config: the one
/// answer to "is this address ours?" for smtpd, cleanup, qmgr and
/// empath-local.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalDomains {
    /// Lower-cased, without a trailing dot.
    domains: Vec<String>,
    origin: String,
}

impl LocalDomains {
    pub fn new(domains: impl IntoIterator<Item = String>, origin: &str) -> Self {
        let mut list: Vec<String> = Vec::new();
        for domain in domains {
            let domain = normalize_domain(&domain);
            if !domain.is_empty() && !list.contains(&domain) {
                list.push(domain);
            }
        }
        Self {
            domains: list,
            origin: normalize_domain(origin),
        }
    }

    /// The domain unqualified addresses get.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn domains(&self) -> &[String] {
        &self.domains
    }

    /// Whether mail for `domain` is delivered here.
    pub fn contains(&self, domain: &str) -> bool {
        let domain = normalize_domain(domain);
        self.domains.contains(&domain)
    }

    /// Whether `address` is delivered here: its domain is local, or it has
    /// none (an unqualified address is completed with the origin, which
    /// is normally local too).
    pub fn is_local_address(&self, address: &str) -> bool {
        match address.rsplit_once('@') {
            Some((_, domain)) => self.contains(domain),
            None => self.contains(&self.origin),
        }
    }

    /// `root` becomes `root@ORIGIN`; a qualified address and the null
    /// sender stay as they are.
    pub fn qualify(&self, address: &str) -> String {
        if address.is_empty() || address.contains('@') {
            address.to_owned()
        } else {
            format!("{address}@{}", self.origin)
        }
    }
}

fn normalize_domain(domain: &str) -> String {
    domain.trim().trim_end_matches('.').to_ascii_lowercase()
}

fn is_domain_name(domain: &str) -> bool {
    !domain.is_empty()
        && domain
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
}

fn is_user_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

pub(super) fn validate(local: &LocalDelivery) -> Result<(), Invalid> {
    for domain in local.local_domains.iter().flatten() {
        check(
            is_domain_name(domain.trim_end_matches('.')),
            "local_delivery.local_domains",
            format!("{domain:?} is not a domain name"),
        )?;
    }
    if let Some(origin) = &local.origin {
        check(
            is_domain_name(origin),
            "local_delivery.origin",
            format!("{origin:?} is not a domain name"),
        )?;
    }
    check(
        !local.home_mailbox.starts_with('/') && !local.home_mailbox.contains(".."),
        "local_delivery.home_mailbox",
        "must be a path relative to the home directory, such as \"Maildir/\" or \"Mailbox\"",
    )?;
    check(
        is_user_name(&local.default_privs) && local.default_privs != "root",
        "local_delivery.default_privs",
        format!(
            "{:?} must be an unprivileged user name (never root)",
            local.default_privs
        ),
    )?;
    for (key, value) in [
        (
            "local_delivery.command_time_limit_secs",
            local.command_time_limit_secs,
        ),
        ("local_delivery.lock_timeout_secs", local.lock_timeout_secs),
    ] {
        check(value > 0, key, "must be greater than 0")?;
    }
    for map in &local.alias_maps {
        check(
            !map.as_os_str().is_empty(),
            "local_delivery.alias_maps",
            "a path must not be empty",
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::{Config, ConfigError};
    use super::*;

    fn parse(section: &str) -> Result<Config, ConfigError> {
        let text = format!(
            "Empath(\n    hostname: \"mx.example.org\",\n    smtp_controller: (listeners: [{{ socket: \"127.0.0.1:2525\" }}]),\n    spool: (path: \"/tmp/empath-spool\"),\n    local_delivery: (\n{section}\n    ),\n)"
        );
        Config::parse(Path::new("test.ron"), &text)
    }

    #[test]
    fn defaults_are_postfix_like() {
        let config = parse("").unwrap();
        let local = &config.local_delivery;
        assert_eq!(local.alias_maps, [PathBuf::from("/etc/aliases")]);
        assert_eq!(local.mail_spool_directory, PathBuf::from("/var/mail"));
        assert!(local.forward && !local.allow_root_forward && !local.maildir());
        assert_eq!(local.default_privs, "nobody");
        let domains = config.local_domains();
        assert_eq!(
            domains.domains(),
            ["mx.example.org", "localhost", "localhost.localdomain"]
        );
        assert_eq!(domains.origin(), "mx.example.org");
        assert!(domains.contains("LOCALHOST."));
        assert!(!domains.contains("example.org"));
        assert_eq!(domains.qualify("root"), "root@mx.example.org");
        assert_eq!(domains.qualify("a@b.example"), "a@b.example");
        assert_eq!(domains.qualify(""), "");
        assert!(domains.is_local_address("root"));
        assert!(domains.is_local_address("root@localhost"));
        assert!(!domains.is_local_address("root@example.org"));
    }

    #[test]
    fn keys_parse() {
        let config = parse(
            "        local_domains: [\"example.org\"],\n        origin: \"example.org\",\n        alias_maps: [\"/etc/mail/aliases\"],\n        home_mailbox: \"Maildir/\",\n        mailbox_directory: \"/srv/mail\",\n        default_privs: \"mailnull\",\n        allow_mail_to_commands: [\"alias\", \"forward\", \"include\"],\n        allow_mail_to_files: [],\n        command_time_limit_secs: 5,",
        )
        .unwrap();
        let local = &config.local_delivery;
        assert!(local.maildir());
        assert_eq!(local.mailbox_directory, Some(PathBuf::from("/srv/mail")));
        assert_eq!(local.allow_mail_to_commands.len(), 3);
        assert!(local.allow_mail_to_files.is_empty());
        assert_eq!(config.local_domains().domains(), ["example.org"]);
        assert!(
            parse("        local_domains: [],")
                .unwrap()
                .local_domains()
                .domains()
                .is_empty()
        );
    }

    #[test]
    fn bad_values_name_the_key_and_line() {
        for (line, key) in [
            (
                "        default_privs: \"root\",",
                "local_delivery.default_privs",
            ),
            (
                "        home_mailbox: \"/var/mail/x\",",
                "local_delivery.home_mailbox",
            ),
            (
                "        local_domains: [\"a b\"],",
                "local_delivery.local_domains",
            ),
            ("        origin: \"\",", "local_delivery.origin"),
            (
                "        lock_timeout_secs: 0,",
                "local_delivery.lock_timeout_secs",
            ),
        ] {
            let error = parse(line).unwrap_err();
            assert_eq!(error.line, Some(6), "{error}");
            assert!(error.message.starts_with(key), "{error}");
        }
        let error = parse("        allow_mail_to_commands: [\"everyone\"],").unwrap_err();
        assert!(error.message.contains("everyone"), "{error}");
    }
}
