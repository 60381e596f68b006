//! Throwaway TLS material for tests: a self-signed CA, a server certificate it signed, and
//! rustls configs for both ends.

use std::io;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::crypto::ring::default_provider;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// A CA plus a server certificate signed by it. Clients trust [`ca_pem`](Self::ca_pem);
/// a separate CA (rather than one self-signed leaf) is what webpki expects of a trust anchor.
pub struct SelfSignedCert {
    ca_pem: String,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    key_der: Vec<u8>,
    key_pem: String,
}

impl SelfSignedCert {
    /// A certificate for `localhost` and `127.0.0.1`.
    pub fn localhost() -> io::Result<SelfSignedCert> {
        SelfSignedCert::generate(&["localhost", "127.0.0.1"])
    }

    /// A certificate for the given DNS names and IP addresses.
    pub fn generate(names: &[&str]) -> io::Result<SelfSignedCert> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(other)?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Strait test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().map_err(other)?)
            .map_err(other)?;

        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names.clone()).map_err(other)?;
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().map_or("localhost", String::as_str),
        );
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().map_err(other)?;
        let cert = params.signed_by(&key, &*ca).map_err(other)?;

        Ok(SelfSignedCert {
            ca_pem: ca.pem(),
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_der: key.serialize_der(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The server certificate, PEM (for services that load cert files).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The server's private key, PKCS#8 PEM.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The server certificate chain (leaf only; clients hold the CA).
    pub fn cert_chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.cert_der.clone()]
    }

    /// The server's private key.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }

    /// A rustls server config offering the given ALPN protocols (e.g. `h2`, `http/1.1`).
    pub fn server_config(&self, alpn: &[&[u8]]) -> io::Result<Arc<ServerConfig>> {
        // An explicit provider: the process-wide default is ambiguous when several crates
        // in the build enable different rustls backends.
        let mut config = ServerConfig::builder_with_provider(Arc::new(default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(other)?
            .with_no_client_auth()
            .with_single_cert(self.cert_chain(), self.private_key())
            .map_err(other)?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

/// A rustls client config that trusts only the CA in `ca_pem` and offers `alpn`.
pub fn client_config(ca_pem: &str, alpn: &[&[u8]]) -> io::Result<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.map_err(other)?).map_err(other)?;
    }
    if roots.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no certificate in PEM",
        ));
    }
    let mut config = ClientConfig::builder_with_provider(Arc::new(default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}
