//! A small HTTPS client (hyper over tokio-rustls) for MTA-STS policies and
//! TLS reports: the host is resolved through smtp-out's own resolver, the
//! server's certificate checked against the web PKI and
//! `delivery.tls_ca_files`, redirects are not followed, the body is
//! bounded, and the whole exchange has a deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::dns::MxResolver;

/// Why a request failed, worded for logs and TLS reports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpsError {
    #[error("{0}")]
    Resolve(String),
    #[error("connect to {addr}: {detail}")]
    Connect { addr: SocketAddr, detail: String },
    /// The server's certificate is not valid for the host (RFC 8461
    /// reports this as `sts-webpki-invalid`).
    #[error("TLS with {host}: {detail}")]
    Tls { host: String, detail: String },
    #[error("HTTP: {0}")]
    Http(String),
    #[error("timed out after {0}s")]
    Timeout(u64),
    #[error("body larger than {0} bytes")]
    TooLarge(usize),
}

/// A response: status, `Content-Type`, body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: String,
    pub body: Bytes,
}

/// One request to `https://host:port/path`.
pub struct Https<'a> {
    pub resolver: &'a MxResolver,
    pub tls: Arc<rustls::ClientConfig>,
    pub timeout: Duration,
    pub max_body: usize,
}

impl Https<'_> {
    pub async fn get(&self, host: &str, port: u16, path: &str) -> Result<Response, HttpsError> {
        let request = Request::get(path)
            .header(hyper::header::HOST, host)
            .header(hyper::header::USER_AGENT, "Empath")
            .body(Full::new(Bytes::new()))
            .map_err(|e| HttpsError::Http(e.to_string()))?;
        self.send(host, port, request).await
    }

    pub async fn post(
        &self,
        host: &str,
        port: u16,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<Response, HttpsError> {
        let request = Request::post(path)
            .header(hyper::header::HOST, host)
            .header(hyper::header::USER_AGENT, "Empath")
            .header(hyper::header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| HttpsError::Http(e.to_string()))?;
        self.send(host, port, request).await
    }

    async fn send(
        &self,
        host: &str,
        port: u16,
        request: Request<Full<Bytes>>,
    ) -> Result<Response, HttpsError> {
        let secs = self.timeout.as_secs().max(1);
        tokio::time::timeout(self.timeout, self.exchange(host, port, request))
            .await
            .map_err(|_| HttpsError::Timeout(secs))?
    }

    async fn exchange(
        &self,
        host: &str,
        port: u16,
        request: Request<Full<Bytes>>,
    ) -> Result<Response, HttpsError> {
        let ip = self
            .resolver
            .address(host)
            .await
            .map_err(HttpsError::Resolve)?;
        let addr = SocketAddr::new(ip, port);
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| HttpsError::Connect {
                addr,
                detail: e.to_string(),
            })?;
        let name = ServerName::try_from(host.to_owned()).map_err(|e| HttpsError::Tls {
            host: host.to_owned(),
            detail: e.to_string(),
        })?;
        let tls = TlsConnector::from(Arc::clone(&self.tls))
            .connect(name, tcp)
            .await
            .map_err(|e| HttpsError::Tls {
                host: host.to_owned(),
                detail: e.to_string(),
            })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| HttpsError::Http(e.to_string()))?;
        let driver = tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "HTTPS connection ended");
            }
        });
        let result = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| HttpsError::Http(e.to_string()))?;
            let status = response.status().as_u16();
            let content_type = response
                .headers()
                .get(hyper::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let body = Limited::new(response.into_body(), self.max_body)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        HttpsError::TooLarge(self.max_body)
                    } else {
                        HttpsError::Http(e.to_string())
                    }
                })?
                .to_bytes();
            Ok(Response {
                status,
                content_type,
                body,
            })
        }
        .await;
        driver.abort();
        result
    }
}
