//! Loading a server certificate and key (PEM) into a rustls config: TLS
//! 1.2 and 1.3 only, the ring provider. smtpd serves STARTTLS with it, and
//! `empath check-config` loads the same files the same way, so a config
//! that passes the check has certificates smtpd can use.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why a certificate and key did not load. Each names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsLoadError {
    #[error("certificate {path}: {reason}")]
    Certificate { path: String, reason: String },
    #[error("key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("certificate {certificate} with key {key}: {reason}")]
    Pair {
        certificate: String,
        key: String,
        reason: String,
    },
}

/// A rustls server config from the PEM files `key` and `certificate` (the
/// chain, leaf first).
pub fn server_config(key: &Path, certificate: &Path) -> Result<ServerConfig, TlsLoadError> {
    let bad_certificate = |reason: String| TlsLoadError::Certificate {
        path: certificate.display().to_string(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(certificate)
        .map_err(|e| bad_certificate(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad_certificate(e.to_string()))?;
    if chain.is_empty() {
        return Err(bad_certificate("no certificate in the file".to_owned()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsLoadError::Key {
        path: key.display().to_string(),
        reason: e.to_string(),
    })?;
    let pair = |reason: String| TlsLoadError::Pair {
        certificate: certificate.display().to_string(),
        key: key.display().to_string(),
        reason,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| pair(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| pair(e.to_string()))
}
