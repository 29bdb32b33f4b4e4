//! Which TLS policy applies to each MX host of a destination, and why:
//!
//! 1. `TLS-Required: No` (RFC 8689 section 5), unless the message also
//!    asked for REQUIRETLS: DANE and MTA-STS are ignored, the configured
//!    level applies.
//! 2. DANE (RFC 7672): the host's MX and address records are
//!    DNSSEC-secure and it has secure TLSA records: TLS is mandatory and
//!    authenticated by them. Bogus or failed TLSA lookups make the host
//!    unusable (the mail waits). DANE wins over MTA-STS (RFC 8461
//!    section 2).
//! 3. MTA-STS (RFC 8461): `enforce` skips hosts the policy does not list
//!    and requires a WebPKI-valid certificate for the host name;
//!    `testing` delivers as configured and reports what enforcing would
//!    have done; `none` is no policy.
//! 4. The configured level (`delivery.tls_security_level`, per domain).
//!
//! REQUIRETLS (RFC 8689) mail goes only to hosts that DANE or an MTA-STS
//! policy authenticates; elsewhere it fails with 5.7.30. Pure.

use std::sync::Arc;

use empath_common::config::SecurityLevel;
use empath_common::smtp::Reply;

use crate::dane;
use crate::dns::TlsaAnswer;
use crate::sts::{self, Mode, StsPolicy};
use crate::tls::Authentication;

/// What a connection to one host must achieve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// Never STARTTLS.
    Plain,
    /// STARTTLS when offered, any certificate; in the clear otherwise.
    Opportunistic,
    /// STARTTLS, any certificate.
    Encrypted,
    /// STARTTLS, the certificate authenticated.
    Authenticated(Authentication),
}

impl Requirement {
    /// TLS must be negotiated.
    pub fn mandatory(&self) -> bool {
        matches!(self, Self::Encrypted | Self::Authenticated(_))
    }

    /// A short name for logs and keys.
    pub fn describe(&self) -> String {
        match self {
            Self::Plain => "none".into(),
            Self::Opportunistic => "may".into(),
            Self::Encrypted => "encrypt".into(),
            Self::Authenticated(Authentication::WebPki) => "verify".into(),
            Self::Authenticated(Authentication::Dane(records)) => {
                let list: Vec<String> = records.iter().map(dane::Tlsa::presentation).collect();
                format!("dane[{}]", list.join(","))
            }
        }
    }
}

/// Why the requirement is what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `delivery.tls_security_level` (or the domain's).
    Configured(SecurityLevel),
    /// The host's secure TLSA records (presentation format).
    Dane(Vec<String>),
    /// The domain's MTA-STS policy.
    Sts(Arc<StsPolicy>),
    /// The message's `TLS-Required: No`: DANE and MTA-STS are ignored.
    TlsRequiredNo(SecurityLevel),
    /// An `mx_override`: the operator chose the host; no DANE or MTA-STS.
    Override(SecurityLevel),
}

impl Source {
    pub fn describe(&self) -> String {
        match self {
            Self::Configured(level) => format!("configured level {level}"),
            Self::Dane(records) => format!("DANE, TLSA {}", records.join(", ")),
            Self::Sts(policy) => format!(
                "MTA-STS policy {} (mode {}, mx {})",
                policy.id,
                policy.mode.as_str(),
                policy.mx.join(" ")
            ),
            Self::TlsRequiredNo(level) => {
                format!("TLS-Required: No (DANE and MTA-STS ignored), configured level {level}")
            }
            Self::Override(level) => format!("mx_override, configured level {level}"),
        }
    }
}

/// The policy for one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPolicy {
    pub requirement: Requirement,
    pub source: Source,
    /// An MTA-STS policy in testing mode: reported on, not enforced.
    pub sts_testing: Option<Arc<StsPolicy>>,
    /// REQUIRETLS mail: the server must offer REQUIRETLS, and is told.
    pub requiretls: bool,
}

/// Why a host is not tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unusable {
    pub reply: Reply,
    /// The TLS report's result type, when the reason is a policy failure.
    pub report: Option<&'static str>,
}

impl Unusable {
    fn new(code: u16, enhanced: &str, text: String, report: Option<&'static str>) -> Self {
        Self {
            reply: Reply::new(code, enhanced, text),
            report,
        }
    }

    pub fn permanent(&self) -> bool {
        self.reply.code >= 500
    }
}

/// What the message asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MessageTls {
    /// MAIL ... REQUIRETLS (RFC 8689).
    pub requiretls: bool,
    /// `TLS-Required: No` in the header (RFC 8689 section 5).
    pub tls_required_no: bool,
}

/// The requirement of a configured level.
pub fn configured(level: SecurityLevel) -> Requirement {
    match level {
        SecurityLevel::None => Requirement::Plain,
        SecurityLevel::May => Requirement::Opportunistic,
        SecurityLevel::Encrypt => Requirement::Encrypted,
        SecurityLevel::Verify => Requirement::Authenticated(Authentication::WebPki),
    }
}

fn requiretls_refused(host: &str) -> Unusable {
    Unusable::new(
        550,
        "5.7.30",
        format!(
            "REQUIRETLS: no DANE or MTA-STS policy authenticates {host}, so the message may not go there"
        ),
        None,
    )
}

/// The policy for `host`, given its TLSA answer (`None` when DANE does
/// not apply: no DNSSEC for its MX or addresses), the domain's MTA-STS
/// lookup and the configured level.
pub fn decide(
    host: &str,
    dane: Option<&TlsaAnswer>,
    sts: &sts::Lookup,
    level: SecurityLevel,
    message: MessageTls,
) -> Result<HostPolicy, Unusable> {
    let plain = |requirement, source| HostPolicy {
        requirement,
        source,
        sts_testing: None,
        requiretls: message.requiretls,
    };
    if message.tls_required_no && !message.requiretls {
        return Ok(plain(configured(level), Source::TlsRequiredNo(level)));
    }
    match dane {
        Some(TlsaAnswer::Secure(records)) => {
            let usable = dane::usable(records);
            let source = Source::Dane(usable.iter().map(dane::Tlsa::presentation).collect());
            // RFC 7672 section 2.2: a TLSA RRset without usable records
            // still makes TLS mandatory, unauthenticated.
            if usable.is_empty() {
                if message.requiretls {
                    return Err(requiretls_refused(host));
                }
                return Ok(plain(Requirement::Encrypted, source));
            }
            return Ok(plain(
                Requirement::Authenticated(Authentication::Dane(usable)),
                source,
            ));
        }
        Some(TlsaAnswer::Bogus(detail)) => {
            return Err(Unusable::new(
                451,
                "4.7.5",
                format!("DNSSEC validation of the TLSA records of {host} failed: {detail}"),
                Some("dnssec-invalid"),
            ));
        }
        Some(TlsaAnswer::Failed(detail)) => {
            return Err(Unusable::new(
                451,
                "4.7.5",
                detail.clone(),
                Some("tlsa-invalid"),
            ));
        }
        Some(TlsaAnswer::None) | None => {}
    }
    if let sts::Lookup::Policy(policy) = sts {
        let listed = policy.allows(host);
        match policy.mode {
            Mode::Enforce if listed => {
                return Ok(plain(
                    Requirement::Authenticated(Authentication::WebPki),
                    Source::Sts(Arc::clone(policy)),
                ));
            }
            // REQUIRETLS: not authenticated by anything, so never.
            Mode::Enforce if message.requiretls => return Err(requiretls_refused(host)),
            Mode::Enforce => {
                return Err(Unusable::new(
                    451,
                    "4.7.5",
                    format!(
                        "{host} is not an MX host of the MTA-STS policy of {} (mx {})",
                        policy.domain,
                        policy.mx.join(" ")
                    ),
                    Some("validation-failure"),
                ));
            }
            // REQUIRETLS asks for what enforcing would give.
            Mode::Testing if message.requiretls && listed => {
                return Ok(plain(
                    Requirement::Authenticated(Authentication::WebPki),
                    Source::Sts(Arc::clone(policy)),
                ));
            }
            Mode::Testing if !message.requiretls => {
                let mut decided = plain(configured(level), Source::Configured(level));
                decided.sts_testing = Some(Arc::clone(policy));
                return Ok(decided);
            }
            Mode::Testing | Mode::None => {}
        }
    }
    if message.requiretls {
        return Err(requiretls_refused(host));
    }
    Ok(plain(configured(level), Source::Configured(level)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::proto::rr::rdata::TLSA;
    use hickory_resolver::proto::rr::rdata::tlsa::{CertUsage, Matching, Selector};

    fn sts(mode: Mode) -> sts::Lookup {
        sts::Lookup::Policy(Arc::new(StsPolicy {
            domain: "d.example".into(),
            id: "1".into(),
            mode,
            mx: vec!["mx.d.example".into()],
            max_age: 86_400,
            fetched: 0,
            text: String::new(),
        }))
    }

    fn tlsa(usage: u8) -> TlsaAnswer {
        TlsaAnswer::Secure(vec![TLSA::new(
            CertUsage::from(usage),
            Selector::Spki,
            Matching::Sha256,
            vec![7; 32],
        )])
    }

    const NORMAL: MessageTls = MessageTls {
        requiretls: false,
        tls_required_no: false,
    };
    const REQUIRETLS: MessageTls = MessageTls {
        requiretls: true,
        tls_required_no: false,
    };
    const RELAXED: MessageTls = MessageTls {
        requiretls: false,
        tls_required_no: true,
    };

    fn requirement(result: &Result<HostPolicy, Unusable>) -> String {
        match result {
            Ok(policy) => policy.requirement.describe(),
            Err(unusable) => format!("unusable {}", unusable.reply),
        }
    }

    #[test]
    fn dane_wins_over_mta_sts_and_the_configured_level() {
        let decided = decide(
            "other.d.example",
            Some(&tlsa(3)),
            &sts(Mode::Enforce),
            SecurityLevel::None,
            NORMAL,
        );
        assert!(
            requirement(&decided).starts_with("dane[3 1 1 "),
            "{decided:?}"
        );
        // Only unusable records (PKIX-EE): TLS, unauthenticated.
        let pkix = decide(
            "mx",
            Some(&tlsa(1)),
            &sts::Lookup::NoPolicy,
            SecurityLevel::May,
            NORMAL,
        );
        assert_eq!(requirement(&pkix), "encrypt");
        let bogus = decide(
            "mx",
            Some(&TlsaAnswer::Bogus("bad signature".into())),
            &sts::Lookup::NoPolicy,
            SecurityLevel::May,
            NORMAL,
        );
        assert!(
            matches!(&bogus, Err(u) if u.reply.code == 451 && u.report == Some("dnssec-invalid"))
        );
    }

    #[test]
    fn mta_sts_enforce_testing_and_none() {
        let level = SecurityLevel::May;
        assert_eq!(
            requirement(&decide(
                "mx.d.example",
                None,
                &sts(Mode::Enforce),
                level,
                NORMAL
            )),
            "verify"
        );
        let unlisted = decide("evil.example", None, &sts(Mode::Enforce), level, NORMAL);
        assert!(
            matches!(&unlisted, Err(u) if u.reply.code == 451),
            "{unlisted:?}"
        );
        let testing = decide("evil.example", None, &sts(Mode::Testing), level, NORMAL).unwrap();
        assert_eq!(testing.requirement, Requirement::Opportunistic);
        assert!(testing.sts_testing.is_some());
        let none = decide("evil.example", None, &sts(Mode::None), level, NORMAL).unwrap();
        assert_eq!(none.source, Source::Configured(level));
    }

    #[test]
    fn requiretls_needs_dane_or_mta_sts_and_tls_required_no_relaxes() {
        let level = SecurityLevel::Verify;
        let refused = decide("mx", None, &sts::Lookup::NoPolicy, level, REQUIRETLS);
        assert!(matches!(&refused, Err(u) if u.reply.enhanced.as_deref() == Some("5.7.30")));
        let testing = decide("mx.d.example", None, &sts(Mode::Testing), level, REQUIRETLS);
        assert_eq!(requirement(&testing), "verify");
        assert!(testing.unwrap().requiretls);
        assert!(
            requirement(&decide(
                "mx",
                Some(&tlsa(3)),
                &sts::Lookup::NoPolicy,
                level,
                REQUIRETLS
            ))
            .starts_with("dane")
        );
        // TLS-Required: No: DANE and MTA-STS are not applied.
        let relaxed = decide(
            "evil.example",
            Some(&tlsa(3)),
            &sts(Mode::Enforce),
            SecurityLevel::May,
            RELAXED,
        );
        assert_eq!(requirement(&relaxed), "may");
        // ... unless the message also asked for REQUIRETLS.
        let both = MessageTls {
            requiretls: true,
            tls_required_no: true,
        };
        assert!(decide("evil.example", None, &sts(Mode::Enforce), level, both).is_err());
    }
}
