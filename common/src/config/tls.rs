//! Outbound transport security: the TLS level for destinations that
//! publish no policy (`delivery.tls_security_level`, per domain too), the
//! extra roots smtp-out trusts, MTA-STS (RFC 8461) and TLS reporting (RFC
//! 8460). DNSSEC and DANE are in the `dns` section.

use std::path::PathBuf;

use serde::Deserialize;

/// What smtp-out insists on for a destination that publishes no DANE or
/// MTA-STS policy, as Postfix's `smtp_tls_security_level`; written as a
/// string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Deserialize)]
#[serde(try_from = "String")]
pub enum SecurityLevel {
    /// Never STARTTLS.
    None,
    /// STARTTLS when offered, any certificate; in the clear when it is not
    /// offered or the handshake fails.
    #[default]
    May,
    /// STARTTLS required, any certificate.
    Encrypt,
    /// STARTTLS required, the certificate valid (WebPKI and
    /// `delivery.tls_ca_files`) for the MX host name.
    Verify,
}

impl SecurityLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::May => "may",
            Self::Encrypt => "encrypt",
            Self::Verify => "verify",
        }
    }
}

impl std::fmt::Display for SecurityLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<String> for SecurityLevel {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        match value.as_str() {
            "none" => Ok(Self::None),
            "may" => Ok(Self::May),
            "encrypt" => Ok(Self::Encrypt),
            "verify" => Ok(Self::Verify),
            other => Err(format!(
                "unknown TLS security level {other:?}, expected \"none\", \"may\", \"encrypt\" or \"verify\""
            )),
        }
    }
}

/// The configured level for a domain, with the older keys mapped onto it:
/// `require_tls: true` raises it to `verify` (STARTTLS required and the
/// certificate checked, which is what it meant), and
/// `accept_invalid_certs: true` lowers `verify` to `encrypt`.
pub fn effective_level(
    default: SecurityLevel,
    domain_level: Option<SecurityLevel>,
    require_tls: bool,
    accept_invalid_certs: bool,
) -> SecurityLevel {
    let mut level = domain_level.unwrap_or(default);
    if domain_level.is_none() && require_tls {
        level = level.max(SecurityLevel::Verify);
    }
    if accept_invalid_certs && level == SecurityLevel::Verify {
        level = SecurityLevel::Encrypt;
    }
    level
}

/// MTA-STS (RFC 8461).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct MtaSts {
    /// Look up and apply the policies that domains publish.
    pub enabled: bool,
    /// How long fetching a policy over HTTPS may take.
    pub fetch_timeout_secs: u64,
    /// Policies larger than this are invalid (RFC 8461 suggests 64 KiB).
    pub max_policy_size: usize,
    /// The port of the `mta-sts.DOMAIN` web servers (443; tests point it
    /// elsewhere).
    pub https_port: u16,
}

impl Default for MtaSts {
    fn default() -> Self {
        Self {
            enabled: true,
            fetch_timeout_secs: 30,
            max_policy_size: 64 * 1024,
            https_port: 443,
        }
    }
}

/// SMTP TLS reporting (RFC 8460).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsReports {
    /// Record each session's TLS policy result, and send the domains that
    /// publish `_smtp._tls` an aggregate report every `interval_secs`.
    pub enabled: bool,
    /// How often reports are sent: RFC 8460 asks for one a day.
    pub interval_secs: u64,
    /// `organization-name` in the report (default: the host name).
    pub organization_name: Option<String>,
    /// `contact-info` in the report (default: `postmaster@HOSTNAME`).
    pub contact_info: Option<String>,
    /// The report's sender, `From:` and envelope (default:
    /// `noreply-smtp-tls-reporting@HOSTNAME`).
    pub from: Option<String>,
    /// How long an HTTPS `rua` may take to accept a report.
    pub post_timeout_secs: u64,
}

impl Default for TlsReports {
    fn default() -> Self {
        Self {
            enabled: false,
            interval_secs: 86_400,
            organization_name: None,
            contact_info: None,
            from: None,
            post_timeout_secs: 30,
        }
    }
}

/// Extra files of PEM certificates trusted besides the web PKI roots.
pub type CaFiles = Vec<PathBuf>;

type Invalid = (String, String);

pub fn validate(mta_sts: &MtaSts, reports: &TlsReports, ca_files: &CaFiles) -> Result<(), Invalid> {
    let fail = |key: &str, message: &str| Err((key.to_owned(), message.to_owned()));
    if mta_sts.fetch_timeout_secs == 0 {
        return fail(
            "delivery.mta_sts.fetch_timeout_secs",
            "must be greater than 0",
        );
    }
    if mta_sts.max_policy_size == 0 {
        return fail("delivery.mta_sts.max_policy_size", "must be greater than 0");
    }
    if reports.interval_secs == 0 {
        return fail(
            "delivery.tls_reports.interval_secs",
            "must be greater than 0",
        );
    }
    if reports.post_timeout_secs == 0 {
        return fail(
            "delivery.tls_reports.post_timeout_secs",
            "must be greater than 0",
        );
    }
    for file in ca_files {
        if !file.is_file() {
            return Err((
                "delivery.tls_ca_files".to_owned(),
                format!("{} is not a readable file", file.display()),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use SecurityLevel::{Encrypt, May, Verify};

    #[test]
    fn older_keys_map_onto_the_level() {
        assert_eq!(effective_level(May, None, false, false), May);
        // require_tls meant: STARTTLS and a valid certificate.
        assert_eq!(effective_level(May, None, true, false), Verify);
        assert_eq!(effective_level(May, None, true, true), Encrypt);
        assert_eq!(effective_level(Verify, None, false, true), Encrypt);
        // An explicit level for the domain wins over require_tls.
        assert_eq!(effective_level(Verify, Some(May), true, false), May);
        assert_eq!(
            effective_level(May, Some(SecurityLevel::None), false, false),
            SecurityLevel::None
        );
    }
}
