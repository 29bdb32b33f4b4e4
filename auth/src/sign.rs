//! DKIM signing of outgoing mail (RFC 6376): relaxed/relaxed, the header
//! fields of the configured list that the message has, `From` signed once
//! more than it occurs, one signature per key of the `From:` domain (RSA
//! and Ed25519 side by side, as RFC 8463 advises).

use std::collections::BTreeMap;
use std::time::Duration;

use empath_common::config::Dkim;
use mail_auth::AuthenticatedMessage;
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner};
use thiserror::Error;

use crate::keys::{KeyError, SharedKey};

#[derive(Debug, Error)]
pub enum SignError {
    #[error("signing for {domain} with selector {selector} failed: {reason}")]
    Failed {
        domain: String,
        selector: String,
        reason: String,
    },
}

struct DomainKey {
    /// The configured domain: the `d=` of the signature.
    domain: String,
    selector: String,
    key: SharedKey,
}

/// The signing keys, loaded once, and the signing policy.
pub struct DkimSigning {
    /// By lower-case domain.
    keys: BTreeMap<String, Vec<DomainKey>>,
    headers: Vec<String>,
    expire: Option<Duration>,
}

/// What signing did to a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signed {
    /// `DKIM-Signature:` fields, CRLF-terminated, to put on top.
    Signatures(Vec<u8>),
    /// The message has no `From:` domain with a key.
    NoKey,
}

impl DkimSigning {
    /// Loads every key of the `dkim` section.
    pub fn load(config: &Dkim) -> Result<Self, KeyError> {
        let mut keys: BTreeMap<String, Vec<DomainKey>> = BTreeMap::new();
        for entry in &config.keys {
            let key = SharedKey::load(&entry.private_key)?;
            keys.entry(entry.domain.to_ascii_lowercase())
                .or_default()
                .push(DomainKey {
                    domain: entry.domain.to_ascii_lowercase(),
                    selector: entry.selector.clone(),
                    key,
                });
        }
        Ok(Self {
            keys,
            headers: config.headers.clone(),
            expire: config.expire_secs.map(Duration::from_secs),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The keys for `domain`: its own, else its closest parent's (mail from
    /// `news.example.org` signed as `example.org` still aligns for DMARC).
    fn keys_for(&self, domain: &str) -> Option<&[DomainKey]> {
        let mut candidate = domain.trim_end_matches('.').to_ascii_lowercase();
        loop {
            if let Some(keys) = self.keys.get(&candidate) {
                return Some(keys);
            }
            let (_, parent) = candidate.split_once('.')?;
            if !parent.contains('.') {
                return None;
            }
            candidate = parent.to_owned();
        }
    }

    /// Signs `message` (the whole message as it will be queued) for its
    /// `From:` domain.
    pub fn sign(&self, message: &[u8]) -> Result<Signed, SignError> {
        // Only the header section is parsed here (the From: domain, the
        // fields present); the signer reads the body itself.
        let Some(parsed) = AuthenticatedMessage::parse(header_section(message)) else {
            return Ok(Signed::NoKey);
        };
        let Some((_, domain)) = parsed.from.first().and_then(|from| from.rsplit_once('@')) else {
            return Ok(Signed::NoKey);
        };
        let Some(keys) = self.keys_for(domain) else {
            return Ok(Signed::NoKey);
        };
        let headers = self.headers_to_sign(parsed.raw_parsed_headers());
        let mut out = Vec::new();
        for entry in keys {
            let signer = DkimSigner::from_key(entry.key.clone())
                .domain(entry.domain.clone())
                .selector(entry.selector.clone())
                .headers(headers.iter().cloned())
                .header_canonicalization(Canonicalization::Relaxed)
                .body_canonicalization(Canonicalization::Relaxed);
            let signer = match self.expire {
                Some(expire) => signer.expiration(expire.as_secs()),
                None => signer,
            };
            let signature = signer.sign(message).map_err(|e| SignError::Failed {
                domain: entry.domain.clone(),
                selector: entry.selector.clone(),
                reason: e.to_string(),
            })?;
            out.extend_from_slice(signature.to_header().as_bytes());
        }
        Ok(Signed::Signatures(out))
    }

    /// The configured fields the message has, in the configured order,
    /// and `From` once more: a `From` added later would not be signed, and
    /// verifiers would see the signature fail.
    fn headers_to_sign(&self, present: &[(&[u8], &[u8])]) -> Vec<String> {
        let mut names: Vec<String> = self
            .headers
            .iter()
            .filter(|name| {
                present
                    .iter()
                    .any(|(field, _)| field.eq_ignore_ascii_case(name.as_bytes()))
            })
            .cloned()
            .collect();
        names.push("From".to_owned());
        names
    }
}

/// The header fields with the empty line after them, or the whole
/// message if it has no body.
fn header_section(message: &[u8]) -> &[u8] {
    if message.starts_with(b"\r\n") {
        return &message[..2];
    }
    message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(message, |at| &message[..at + 4])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{Algorithm, generate};
    use empath_common::config::{DEFAULT_SIGNED_HEADERS, DkimKey};

    fn signing(dir: &std::path::Path, keys: &[(&str, &str, Algorithm)]) -> DkimSigning {
        let mut config = Dkim {
            headers: DEFAULT_SIGNED_HEADERS
                .iter()
                .map(|h| (*h).to_owned())
                .collect(),
            ..Dkim::default()
        };
        for (domain, selector, algorithm) in keys {
            let path = dir.join(format!("{domain}.{selector}.pem"));
            std::fs::write(&path, generate(*algorithm).unwrap().private_pem).unwrap();
            config.keys.push(DkimKey {
                domain: (*domain).to_owned(),
                selector: (*selector).to_owned(),
                private_key: path,
            });
        }
        DkimSigning::load(&config).unwrap()
    }

    const MESSAGE: &[u8] = b"From: Alice <alice@news.example.org>\r\nTo: bob@example.com\r\nSubject: hello\r\nX-Other: not signed\r\n\r\nHi.\r\n";

    #[test]
    fn signs_with_every_key_of_the_from_domain_and_oversigns_from() {
        let dir = tempfile::tempdir().unwrap();
        let signing = signing(
            dir.path(),
            &[
                ("example.org", "rsa", Algorithm::Rsa { bits: 2048 }),
                ("example.org", "ed", Algorithm::Ed25519),
                ("other.example", "s", Algorithm::Ed25519),
            ],
        );
        let Signed::Signatures(fields) = signing.sign(MESSAGE).unwrap() else {
            panic!("not signed");
        };
        let text = String::from_utf8(fields).unwrap();
        assert_eq!(text.matches("DKIM-Signature:").count(), 2, "{text}");
        assert!(text.contains("a=rsa-sha256"), "{text}");
        assert!(text.contains("a=ed25519-sha256"), "{text}");
        assert!(text.contains("d=example.org"), "{text}");
        assert!(text.contains("c=relaxed/relaxed"), "{text}");
        let unfolded = text.replace("\r\n", "").replace([' ', '\t'], "");
        let h = unfolded
            .split(';')
            .find_map(|tag| tag.strip_prefix("h="))
            .unwrap()
            .to_ascii_lowercase();
        let signed: Vec<&str> = h.split(':').collect();
        assert_eq!(signed.iter().filter(|n| **n == "from").count(), 2, "{h}");
        assert!(signed.contains(&"subject") && signed.contains(&"to"), "{h}");
        assert!(
            !signed.contains(&"x-other") && !signed.contains(&"cc"),
            "{h}"
        );
    }

    #[test]
    fn mail_from_a_domain_without_a_key_is_not_signed() {
        let dir = tempfile::tempdir().unwrap();
        let signing = signing(dir.path(), &[("example.net", "s", Algorithm::Ed25519)]);
        assert_eq!(signing.sign(MESSAGE).unwrap(), Signed::NoKey);
        assert_eq!(signing.sign(b"no headers at all").unwrap(), Signed::NoKey);
        // "org" alone is never a signing domain.
        let signing = self::signing(dir.path(), &[("org", "s", Algorithm::Ed25519)]);
        assert_eq!(signing.sign(MESSAGE).unwrap(), Signed::NoKey);
    }
}

/// How long one signature takes, for bench/README.md:
/// `cargo test --release -p empath-auth -- --ignored --nocapture`.
#[cfg(test)]
mod timing {
    use super::*;
    use crate::keys::{Algorithm, generate};
    use empath_common::config::DkimKey;

    #[test]
    #[ignore = "a measurement, not a check"]
    fn signing_time() {
        let dir = tempfile::tempdir().unwrap();
        let mut message = b"From: a@example.org\r\nTo: b@example.com\r\nSubject: timing\r\nDate: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: <t@example.org>\r\n\r\n".to_vec();
        message.extend(std::iter::repeat_n(b'x', 5120));
        for (name, algorithm) in [
            ("rsa-2048", Algorithm::Rsa { bits: 2048 }),
            ("ed25519", Algorithm::Ed25519),
        ] {
            let path = dir.path().join(format!("{name}.pem"));
            std::fs::write(&path, generate(algorithm).unwrap().private_pem).unwrap();
            let signing = DkimSigning::load(&Dkim {
                keys: vec![DkimKey {
                    domain: "example.org".into(),
                    selector: "s".into(),
                    private_key: path,
                }],
                ..Dkim::default()
            })
            .unwrap();
            let rounds = 500;
            let started = std::time::Instant::now();
            for _ in 0..rounds {
                assert!(matches!(
                    signing.sign(&message).unwrap(),
                    Signed::Signatures(_)
                ));
            }
            let each = started.elapsed() / rounds;
            println!("{name}: {each:?} per 5 KiB message");
        }
    }
}
