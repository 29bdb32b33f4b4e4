//! TLS client settings for STARTTLS, one per connection: how the server's
//! certificate is authenticated (the web PKI and `delivery.tls_ca_files`
//! with the MX host name, DANE TLSA records, or not at all), and whether a
//! failed check ends the handshake. A check that does not end it is still
//! made, and its verdict kept for the logs and TLS reports (an MTA-STS
//! policy in testing mode reports what enforcing it would have done).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::dane::{DaneVerifier, Tlsa};

/// Why the TLS client cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot read TLS CA file {path}: {detail}")]
    CaFile { path: PathBuf, detail: String },
    #[error("TLS set-up: {0}")]
    Rustls(#[from] rustls::Error),
}

/// How a server's certificate is authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authentication {
    /// The web PKI roots and `tls_ca_files`, for the MX host name.
    WebPki,
    /// DANE: the host's usable TLSA records.
    Dane(Vec<Tlsa>),
}

/// The result of the certificate check of one handshake, when it did not
/// end the handshake: `Some(Err(..))` is a check that failed.
#[derive(Debug, Clone, Default)]
pub struct Verdict(Arc<Mutex<Option<Result<(), rustls::Error>>>>);

impl Verdict {
    fn set(&self, result: Result<(), rustls::Error>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
    }

    pub fn get(&self) -> Option<Result<(), rustls::Error>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Builds the per-connection client configs.
pub struct TlsClients {
    provider: Arc<CryptoProvider>,
    roots: Arc<RootCertStore>,
    webpki: Arc<WebPkiServerVerifier>,
}

impl TlsClients {
    /// The web PKI roots, and the certificates in `ca_files` (PEM).
    pub fn new(ca_files: &[PathBuf]) -> Result<Self, SetupError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        for path in ca_files {
            for cert in read_pem(path)? {
                roots.add(cert).map_err(|e| SetupError::CaFile {
                    path: path.clone(),
                    detail: e.to_string(),
                })?;
            }
        }
        let roots = Arc::new(roots);
        let webpki =
            WebPkiServerVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        Ok(Self {
            provider,
            roots,
            webpki,
        })
    }

    /// The roots, for the HTTPS client (MTA-STS policies, TLS reports).
    pub fn roots(&self) -> Arc<RootCertStore> {
        Arc::clone(&self.roots)
    }

    pub fn provider(&self) -> Arc<CryptoProvider> {
        Arc::clone(&self.provider)
    }

    /// A config that checks the certificate with `authentication`, and
    /// fails the handshake on a bad one when `enforce` is set. Without an
    /// authentication, the certificate is checked against the web PKI
    /// only to report on it.
    pub fn client(
        &self,
        authentication: Option<&Authentication>,
        enforce: bool,
    ) -> Result<(Arc<ClientConfig>, Verdict), rustls::Error> {
        let algorithms = self.provider.signature_verification_algorithms;
        let check: Arc<dyn ServerCertVerifier> = match authentication {
            Some(Authentication::Dane(records)) => {
                Arc::new(DaneVerifier::new(records.clone(), algorithms))
            }
            Some(Authentication::WebPki) | None => Arc::clone(&self.webpki) as _,
        };
        let verdict = Verdict::default();
        let verifier = Checked {
            check,
            enforce: enforce && authentication.is_some(),
            verdict: verdict.clone(),
            algorithms,
        };
        let config = ClientConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        Ok((Arc::new(config), verdict))
    }
}

fn read_pem(path: &Path) -> Result<Vec<CertificateDer<'static>>, SetupError> {
    let fail = |detail: String| SetupError::CaFile {
        path: path.to_owned(),
        detail,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| fail(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(e.to_string()))?;
    if certs.is_empty() {
        return Err(fail("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// Runs a check and keeps its verdict; fails the handshake on a bad
/// certificate only when enforcing. The server's signature over the
/// handshake is verified either way, so the session is encrypted to
/// whoever holds the certificate's key.
#[derive(Debug)]
struct Checked {
    check: Arc<dyn ServerCertVerifier>,
    enforce: bool,
    verdict: Verdict,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Checked {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let result = self.check.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        self.verdict
            .set(result.as_ref().map(|_| ()).map_err(Clone::clone));
        match result {
            Err(error) if self.enforce => Err(error),
            _ => Ok(ServerCertVerified::assertion()),
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
