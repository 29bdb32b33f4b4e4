//! The server side of STARTTLS (RFC 3207): a listener's certificate and
//! key, loaded into a rustls config (TLS 1.2 and 1.3 only, ring provider),
//! and loaded again on SIGHUP. A reload that fails keeps the old config.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// One listener's TLS config, replaced whole on reload.
#[derive(Debug)]
pub struct TlsSlot {
    key: PathBuf,
    certificate: PathBuf,
    /// `None` until a certificate loads: STARTTLS is offered only then.
    current: RwLock<Option<Arc<ServerConfig>>>,
}

impl TlsSlot {
    /// Loads the certificate and key; when they cannot be loaded, the
    /// error is logged and STARTTLS is not offered until a reload works.
    pub fn new(key: &Path, certificate: &Path) -> Arc<Self> {
        let slot = Arc::new(Self {
            key: key.to_owned(),
            certificate: certificate.to_owned(),
            current: RwLock::new(None),
        });
        slot.reload();
        slot
    }

    pub fn reload(&self) {
        match load(&self.key, &self.certificate) {
            Ok(config) => {
                tracing::info!(certificate = %self.certificate.display(), "TLS certificate loaded");
                *self.current.write().unwrap_or_else(PoisonError::into_inner) =
                    Some(Arc::new(config));
            }
            Err(error) => {
                let kept = self
                    .current
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .is_some();
                tracing::error!(
                    certificate = %self.certificate.display(),
                    %error,
                    kept_old_certificate = kept,
                    "cannot load the TLS certificate"
                );
            }
        }
    }

    /// The acceptor for a new handshake, if a certificate is loaded.
    pub fn acceptor(&self) -> Option<TlsAcceptor> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .map(TlsAcceptor::from)
    }

    pub fn available(&self) -> bool {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }
}

/// A rustls server config from PEM files (loaded as `empath
/// check-config` loads them).
pub fn load(key: &Path, certificate: &Path) -> Result<ServerConfig, String> {
    empath_common::tls::server_config(key, certificate).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_reload_keeps_the_old_certificate() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (key, cert) = (dir.path().join("key.pem"), dir.path().join("cert.pem"));
        let missing = TlsSlot::new(&key, &cert);
        assert!(!missing.available());
        let certified = rcgen::generate_simple_self_signed(vec!["mx.example".to_owned()])
            .unwrap_or_else(|e| panic!("{e}"));
        let write = |path: &Path, text: String| {
            std::fs::write(path, text).unwrap_or_else(|e| panic!("{e}"))
        };
        write(&key, certified.signing_key.serialize_pem());
        write(&cert, certified.cert.pem());
        missing.reload();
        assert!(missing.available(), "a reload picks up a fixed certificate");
        let slot = TlsSlot::new(&key, &cert);
        assert!(slot.available());
        write(&cert, "garbage".to_owned());
        slot.reload();
        assert!(slot.acceptor().is_some());
    }
}
