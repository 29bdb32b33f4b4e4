//! DANE for SMTP (RFC 7672): a server's certificate is authenticated by
//! the DNSSEC-validated TLSA records of its MX host, not by the web PKI.
//!
//! - DANE-EE(3): the server's own certificate (selector 0) or public key
//!   (selector 1) matches; no name or expiry check (RFC 7672 3.1.1).
//! - DANE-TA(2): a certificate of the server's chain matches and is the
//!   trust anchor the chain is verified up to, with the MX host name
//!   checked against the server's certificate (RFC 7672 3.1.2).
//! - Matching 0 (full), 1 (SHA-256) and 2 (SHA-512).
//!
//! PKIX-TA(0) and PKIX-EE(1) records are unusable for SMTP (RFC 7672
//! 3.1.3) and skipped; a TLSA set with no usable record still makes TLS
//! mandatory, unauthenticated (RFC 7672 2.2).

use std::sync::Arc;

use hickory_resolver::proto::rr::rdata::TLSA;
use hickory_resolver::proto::rr::rdata::tlsa::{CertUsage, Matching, Selector};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};
use sha2::{Digest, Sha256, Sha512};

/// One usable TLSA record.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tlsa {
    pub usage: Usage,
    /// The whole certificate, or only its SubjectPublicKeyInfo.
    pub spki: bool,
    pub matching: Match,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Usage {
    /// DANE-TA(2).
    TrustAnchor,
    /// DANE-EE(3).
    EndEntity,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Match {
    Full,
    Sha256,
    Sha512,
}

impl Tlsa {
    /// The record, if SMTP can use it.
    pub fn usable(record: &TLSA) -> Option<Self> {
        let usage = match record.cert_usage {
            CertUsage::DaneTa => Usage::TrustAnchor,
            CertUsage::DaneEe => Usage::EndEntity,
            _ => return None,
        };
        let spki = match record.selector {
            Selector::Full => false,
            Selector::Spki => true,
            _ => return None,
        };
        let matching = match record.matching {
            Matching::Raw => Match::Full,
            Matching::Sha256 => Match::Sha256,
            Matching::Sha512 => Match::Sha512,
            _ => return None,
        };
        Some(Self {
            usage,
            spki,
            matching,
            data: record.cert_data.clone(),
        })
    }

    /// Whether `cert` is what this record names.
    pub fn matches(&self, cert: &CertificateDer<'_>) -> bool {
        let selected = if self.spki {
            match webpki::EndEntityCert::try_from(cert) {
                Ok(parsed) => parsed.subject_public_key_info().as_ref().to_vec(),
                Err(_) => return false,
            }
        } else {
            cert.as_ref().to_vec()
        };
        match self.matching {
            Match::Full => selected == self.data,
            Match::Sha256 => Sha256::digest(&selected).as_slice() == self.data.as_slice(),
            Match::Sha512 => Sha512::digest(&selected).as_slice() == self.data.as_slice(),
        }
    }

    /// Presentation format, e.g. `3 1 1 ab12...`, for logs and TLS reports.
    pub fn presentation(&self) -> String {
        let usage = match self.usage {
            Usage::TrustAnchor => 2,
            Usage::EndEntity => 3,
        };
        let matching = match self.matching {
            Match::Full => 0,
            Match::Sha256 => 1,
            Match::Sha512 => 2,
        };
        let hex: String = self.data.iter().map(|b| format!("{b:02x}")).collect();
        format!("{usage} {} {matching} {hex}", u8::from(self.spki))
    }
}

/// The usable records of a secure TLSA RRset.
pub fn usable(records: &[TLSA]) -> Vec<Tlsa> {
    records.iter().filter_map(Tlsa::usable).collect()
}

/// Verifies a server's certificate chain against its TLSA records.
#[derive(Debug)]
pub struct DaneVerifier {
    records: Vec<Tlsa>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl DaneVerifier {
    pub fn new(records: Vec<Tlsa>, algorithms: WebPkiSupportedAlgorithms) -> Self {
        Self {
            records,
            algorithms,
        }
    }

    fn end_entity_matches(&self, end_entity: &CertificateDer<'_>) -> bool {
        self.records
            .iter()
            .any(|r| r.usage == Usage::EndEntity && r.matches(end_entity))
    }

    /// DANE-TA: a certificate of the chain matches a record, and the
    /// chain verifies up to it as the trust anchor, for `server_name`.
    fn trust_anchor_verifies(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<bool, rustls::Error> {
        let anchors: Vec<&CertificateDer<'_>> = std::iter::once(end_entity)
            .chain(intermediates)
            .filter(|cert| {
                self.records
                    .iter()
                    .any(|r| r.usage == Usage::TrustAnchor && r.matches(cert))
            })
            .collect();
        if anchors.is_empty() {
            return Ok(false);
        }
        let parsed = webpki::EndEntityCert::try_from(end_entity).map_err(pki_error)?;
        parsed
            .verify_is_valid_for_subject_name(server_name)
            .map_err(pki_error)?;
        // A self-issued server certificate named as its own trust anchor:
        // nothing to build, the name was checked.
        if anchors.contains(&end_entity) {
            return Ok(true);
        }
        let trust_anchors: Vec<_> = anchors
            .iter()
            .filter_map(|cert| webpki::anchor_from_trusted_cert(cert).ok())
            .collect();
        parsed
            .verify_for_usage(
                self.algorithms.all,
                &trust_anchors,
                intermediates,
                now,
                webpki::KeyUsage::server_auth(),
                None,
                None,
            )
            .map_err(pki_error)?;
        Ok(true)
    }
}

fn pki_error(error: webpki::Error) -> rustls::Error {
    rustls::Error::InvalidCertificate(match error {
        webpki::Error::CertExpired { .. } => CertificateError::Expired,
        webpki::Error::CertNotValidForName(_) => CertificateError::NotValidForName,
        webpki::Error::UnknownIssuer => CertificateError::UnknownIssuer,
        other => CertificateError::Other(OtherError(Arc::new(DaneError(other.to_string())))),
    })
}

/// Why a chain did not match its TLSA records.
#[derive(Debug)]
pub struct DaneError(pub String);

impl std::fmt::Display for DaneError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DaneError {}

/// The error of a chain that no TLSA record names.
pub fn no_match() -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(DaneError(
        "no TLSA record matches the server's certificate chain".into(),
    )))))
}

impl ServerCertVerifier for DaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.end_entity_matches(end_entity)
            || self.trust_anchor_verifies(end_entity, intermediates, server_name, now)?
        {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(no_match())
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn algorithms() -> WebPkiSupportedAlgorithms {
        rustls::crypto::ring::default_provider().signature_verification_algorithms
    }

    fn record(usage: u8, selector: u8, matching: u8, data: Vec<u8>) -> TLSA {
        TLSA::new(
            CertUsage::from(usage),
            Selector::from(selector),
            Matching::from(matching),
            data,
        )
    }

    fn verify(records: &[TLSA], chain: &[CertificateDer<'static>], name: &str) -> bool {
        let verifier = DaneVerifier::new(usable(records), algorithms());
        let name = ServerName::try_from(name.to_owned()).unwrap();
        verifier
            .verify_server_cert(&chain[0], &chain[1..], &name, &[], UnixTime::now())
            .is_ok()
    }

    fn self_signed(name: &str) -> (CertificateDer<'static>, Vec<u8>) {
        let certified = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        let spki = rcgen::PublicKeyData::subject_public_key_info(&certified.signing_key);
        (certified.cert.der().clone(), spki)
    }

    #[test]
    fn dane_ee_matches_the_key_or_the_certificate_whatever_the_name() {
        let (cert, spki) = self_signed("mx.example");
        let chain = [cert.clone()];
        for (selector, selected) in [(0, cert.to_vec()), (1, spki.clone())] {
            let records = [
                record(3, selector, 0, selected.clone()),
                record(3, selector, 1, Sha256::digest(&selected).to_vec()),
                record(3, selector, 2, Sha512::digest(&selected).to_vec()),
            ];
            for one in &records {
                // No name check for DANE-EE: any name will do.
                assert!(verify(std::slice::from_ref(one), &chain, "other.example"));
            }
        }
        let wrong = record(3, 1, 1, Sha256::digest(b"another key").to_vec());
        assert!(!verify(&[wrong], &chain, "mx.example"));
        // PKIX-EE(1) is not used for SMTP, even when it matches.
        let pkix = record(1, 1, 1, Sha256::digest(&spki).to_vec());
        assert!(!verify(&[pkix], &chain, "mx.example"));
        assert!(usable(&[record(1, 1, 1, vec![1])]).is_empty());
    }

    #[test]
    fn dane_ta_verifies_the_chain_up_to_the_named_ca_and_checks_the_name() {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Test TA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["mx.example".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        let chain = [leaf.der().clone(), ca.der().clone()];
        let ta = record(2, 0, 1, Sha256::digest(ca.der()).to_vec());
        assert!(verify(std::slice::from_ref(&ta), &chain, "mx.example"));
        assert!(
            !verify(std::slice::from_ref(&ta), &chain, "other.example"),
            "DANE-TA checks the name"
        );
        // The CA is not in the chain the server sent: nothing to anchor.
        assert!(!verify(&[ta], &chain[..1], "mx.example"));
    }

    #[test]
    fn presentation_format() {
        let tlsa = Tlsa::usable(&record(3, 1, 1, vec![0xab, 0x01])).unwrap();
        assert_eq!(tlsa.presentation(), "3 1 1 ab01");
    }
}
