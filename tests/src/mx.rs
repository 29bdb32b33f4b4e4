//! Helpers for the delivery tests: SMTP sinks that play MX hosts on
//! several loopback addresses with one shared port (MX records carry no
//! port; `delivery.smtp_port` points smtp-out at it), a config that uses
//! the test DNS server, and self-signed certificates.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use crate::TestConfig;
use crate::dns::TestDns;
use crate::sink::{Sink, SinkPolicy};

/// `127.0.0.n`.
pub fn loopback(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

/// A free port on all of `127.0.0.n` for each `n` in `hosts`: binds the
/// first sink on an ephemeral port and the others on the same one,
/// starting over when one of them is taken. Returns the port and nothing
/// bound on `refusing` (addresses that must refuse connections).
pub fn shared_port(hosts: &[u8]) -> u16 {
    for _ in 0..50 {
        let Ok(first) = std::net::TcpListener::bind((loopback(hosts[0]), 0)) else {
            continue;
        };
        let Ok(addr) = first.local_addr() else {
            continue;
        };
        let others: Vec<_> = hosts[1..]
            .iter()
            .map(|&n| std::net::TcpListener::bind((loopback(n), addr.port())))
            .collect();
        if others.iter().all(Result::is_ok) {
            return addr.port();
        }
    }
    panic!("no port free on every one of 127.0.0.{hosts:?}");
}

/// Sinks on `127.0.0.n:port` for each `(n, policy)`, all on one port.
/// The port is also free on `refusing` (nothing listens there, so
/// connections to it are refused).
pub fn sinks_on_one_port(sinks: Vec<(u8, SinkPolicy)>, refusing: &[u8]) -> (u16, Vec<Sink>) {
    let hosts: Vec<u8> = sinks
        .iter()
        .map(|(n, _)| *n)
        .chain(refusing.iter().copied())
        .collect();
    for _ in 0..20 {
        let port = shared_port(&hosts);
        let started: Result<Vec<Sink>, _> = sinks
            .iter()
            .map(|(n, policy)| Sink::bind(SocketAddr::new(loopback(*n), port), policy.clone()))
            .collect();
        if let Ok(started) = started {
            return (port, started);
        }
    }
    panic!("cannot start sinks on one shared port");
}

/// Points smtp-out at `dns` and at MX hosts listening on `port`. Short
/// DNS timeouts keep failures quick.
pub fn with_dns(config: TestConfig, dns: &TestDns, port: u16) -> TestConfig {
    config
        .section(
            "dns",
            &format!(
                "(nameservers: [\"{}\"], timeout_secs: 2, attempts: 1)",
                dns.addr()
            ),
        )
        .delivery("smtp_port", &port.to_string())
}

/// A rustls server config with a fresh self-signed certificate for `names`.
pub fn self_signed_tls(names: &[&str]) -> Arc<rustls::ServerConfig> {
    self_signed_tls_with_spki(names).0
}

/// A self-signed certificate for `names`, and the DER of its public key
/// (SubjectPublicKeyInfo), which a DANE-EE `3 1 x` record names.
pub fn self_signed_tls_with_spki(names: &[&str]) -> (Arc<rustls::ServerConfig>, Vec<u8>) {
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let certified = rcgen::generate_simple_self_signed(names).expect("make a test certificate");
    let spki = rcgen::PublicKeyData::subject_public_key_info(&certified.signing_key);
    let cert = certified.cert.der().clone();
    let config = server_config(vec![cert], &certified.signing_key);
    (config, spki)
}

fn server_config(
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: &rcgen::KeyPair,
) -> Arc<rustls::ServerConfig> {
    let key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("test key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("test certificate and key");
    Arc::new(config)
}

/// A certificate authority of the test's own, which smtp-out trusts
/// through `delivery.tls_ca_files` (its certificate in PEM).
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    cert: rcgen::Certificate,
}

impl TestCa {
    pub fn new() -> Self {
        let key = rcgen::KeyPair::generate().expect("a CA key");
        let mut params =
            rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Empath Test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("the CA certificate");
        Self {
            issuer: rcgen::Issuer::new(params, key),
            cert,
        }
    }

    /// The CA certificate in PEM, for `delivery.tls_ca_files`.
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A server config with a certificate for `names` issued by this CA.
    pub fn server_tls(&self, names: &[&str]) -> Arc<rustls::ServerConfig> {
        let key = rcgen::KeyPair::generate().expect("a server key");
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let cert = rcgen::CertificateParams::new(names)
            .expect("server parameters")
            .signed_by(&key, &self.issuer)
            .expect("a server certificate");
        server_config(vec![cert.der().clone(), self.cert.der().clone()], &key)
    }

    /// A certificate and key for `names` issued by this CA, in PEM, for a
    /// server that is not in Rust (Python's `ssl`).
    pub fn server_pem(&self, names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("a server key");
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let cert = rcgen::CertificateParams::new(names)
            .expect("server parameters")
            .signed_by(&key, &self.issuer)
            .expect("a server certificate");
        (cert.pem() + &self.cert.pem(), key.serialize_pem())
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}
