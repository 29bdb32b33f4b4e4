//! DKIM keys: loading a private key from a PEM file, and making new key
//! pairs with the DNS record that publishes them (`empathctl dkim keygen`).

use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use mail_auth::common::crypto::{DkimKey, Ed25519Key, RsaKey, Sha256, SigningKey};
use mail_auth::common::headers::Writable;
use mail_auth::dkim::generate::DkimKeyPair;
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::pkcs8::EncodePublicKey;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum KeyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{path}: no private key in PEM form (expected \"BEGIN PRIVATE KEY\" or \"BEGIN RSA PRIVATE KEY\")"
    )]
    NotPem { path: String },
    #[error("{path}: not an RSA or Ed25519 private key: {reason}")]
    Unsupported { path: String, reason: String },
    #[error("RSA keys must have 2048 to 4096 bits, not {0}")]
    BadSize(usize),
    #[error("key generation failed: {0}")]
    Generate(String),
}

/// The signature algorithms Empath signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// `rsa-sha256`, understood by every verifier.
    Rsa { bits: usize },
    /// `ed25519-sha256` (RFC 8463); usually sent together with an RSA
    /// signature, since not every verifier knows it yet.
    Ed25519,
}

/// A loaded private key, shared by every message it signs.
#[derive(Clone)]
pub struct SharedKey(Arc<DkimKey>);

impl SharedKey {
    /// Reads a PEM private key: PKCS#1 (`RSA PRIVATE KEY`) or PKCS#8
    /// (`PRIVATE KEY`, RSA or Ed25519), as `openssl genpkey`,
    /// `opendkim-genkey` and `empathctl dkim keygen` write them.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let name = path.display().to_string();
        let pem = std::fs::read(path).map_err(|source| KeyError::Read {
            path: name.clone(),
            source,
        })?;
        Self::from_pem(&pem).map_err(|error| match error {
            KeyError::NotPem { .. } => KeyError::NotPem { path: name },
            KeyError::Unsupported { reason, .. } => KeyError::Unsupported { path: name, reason },
            other => other,
        })
    }

    pub fn from_pem(pem: &[u8]) -> Result<Self, KeyError> {
        let not_pem = || KeyError::NotPem {
            path: String::new(),
        };
        let der = PrivateKeyDer::from_pem_slice(pem).map_err(|_| not_pem())?;
        let key = match der {
            PrivateKeyDer::Pkcs1(_) => RsaKey::<Sha256>::from_key_der(der).map(DkimKey::Rsa),
            PrivateKeyDer::Pkcs8(pkcs8) => {
                let bytes = pkcs8.secret_pkcs8_der().to_vec();
                match RsaKey::<Sha256>::from_key_der(PrivateKeyDer::Pkcs8(pkcs8)) {
                    Ok(rsa) => Ok(DkimKey::Rsa(rsa)),
                    Err(_) => {
                        Ed25519Key::from_pkcs8_maybe_unchecked_der(&bytes).map(DkimKey::Ed25519)
                    }
                }
            }
            _ => return Err(not_pem()),
        }
        .map_err(|e| KeyError::Unsupported {
            path: String::new(),
            reason: e.to_string(),
        })?;
        Ok(Self(Arc::new(key)))
    }

    /// `rsa-sha256` or `ed25519-sha256`.
    pub fn algorithm_name(&self) -> &'static str {
        self.0.algorithm().name()
    }
}

impl std::fmt::Debug for SharedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key itself.
        write!(f, "SharedKey({})", self.algorithm_name())
    }
}

impl SigningKey for SharedKey {
    type Hasher = Sha256;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        self.0.sign(input)
    }

    fn algorithm(&self) -> mail_auth::common::crypto::Algorithm {
        self.0.algorithm()
    }
}

/// A new key pair: the private key as PEM, and the TXT record to publish
/// at `SELECTOR._domainkey.DOMAIN`.
pub struct NewKey {
    pub private_pem: String,
    pub txt_record: String,
}

/// Makes a new key pair. RSA keys are PKCS#1 PEM (as `opendkim-genkey`
/// writes them) and published as SubjectPublicKeyInfo, which every
/// verifier reads; Ed25519 keys are PKCS#8 PEM and published raw (RFC
/// 8463 section 4).
pub fn generate(algorithm: Algorithm) -> Result<NewKey, KeyError> {
    let generate_error = |e: &dyn std::fmt::Display| KeyError::Generate(e.to_string());
    match algorithm {
        Algorithm::Rsa { bits } => {
            if !(2048..=4096).contains(&bits) {
                return Err(KeyError::BadSize(bits));
            }
            let pair = DkimKeyPair::generate_rsa(bits).map_err(|e| generate_error(&e))?;
            let private_pem = pem("RSA PRIVATE KEY", pair.private_key());
            let public = rsa::RsaPublicKey::from_pkcs1_der(pair.public_key())
                .map_err(|e| generate_error(&e))?;
            let spki = public.to_public_key_der().map_err(|e| generate_error(&e))?;
            let encoded = base64::engine::general_purpose::STANDARD.encode(spki.as_bytes());
            Ok(NewKey {
                private_pem,
                txt_record: format!("v=DKIM1; k=rsa; p={encoded}"),
            })
        }
        Algorithm::Ed25519 => {
            let pair = DkimKeyPair::generate_ed25519().map_err(|e| generate_error(&e))?;
            let private_pem = pem("PRIVATE KEY", pair.private_key());
            Ok(NewKey {
                private_pem,
                txt_record: format!("v=DKIM1; k=ed25519; p={}", pair.encoded_public_key()),
            })
        }
    }
}

/// A PEM block: base64 in lines of 64 characters between the markers.
fn pem(label: &str, der: &[u8]) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in encoded.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The TXT record split into strings of at most 255 characters (a DNS
/// character-string), quoted, as a zone file wants it.
pub fn zone_file_strings(record: &str) -> String {
    record
        .as_bytes()
        .chunks(255)
        .map(|chunk| format!("\"{}\"", String::from_utf8_lossy(chunk)))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_load_back_with_their_algorithm() {
        let rsa = generate(Algorithm::Rsa { bits: 2048 }).unwrap();
        assert!(
            rsa.private_pem
                .starts_with("-----BEGIN RSA PRIVATE KEY-----\n")
        );
        assert!(
            rsa.txt_record.starts_with("v=DKIM1; k=rsa; p=MIIBIjANBg"),
            "{}",
            rsa.txt_record
        );
        let key = SharedKey::from_pem(rsa.private_pem.as_bytes()).unwrap();
        assert_eq!(key.algorithm_name(), "rsa-sha256");

        let ed = generate(Algorithm::Ed25519).unwrap();
        assert!(ed.private_pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let public = ed
            .txt_record
            .strip_prefix("v=DKIM1; k=ed25519; p=")
            .unwrap();
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(public)
                .unwrap()
                .len(),
            32
        );
        let key = SharedKey::from_pem(ed.private_pem.as_bytes()).unwrap();
        assert_eq!(key.algorithm_name(), "ed25519-sha256");
    }

    #[test]
    fn bad_keys_are_named() {
        assert!(matches!(
            SharedKey::from_pem(b"not a key"),
            Err(KeyError::NotPem { .. })
        ));
        assert!(matches!(
            generate(Algorithm::Rsa { bits: 1024 }),
            Err(KeyError::BadSize(1024))
        ));
        let dir = tempfile::tempdir().unwrap();
        let error = SharedKey::load(&dir.path().join("missing.pem")).unwrap_err();
        assert!(error.to_string().contains("missing.pem"), "{error}");
    }

    #[test]
    fn long_records_are_split_for_zone_files() {
        let record = "x".repeat(300);
        let split = zone_file_strings(&record);
        assert_eq!(
            split,
            format!("\"{}\" \"{}\"", "x".repeat(255), "x".repeat(45))
        );
    }
}
