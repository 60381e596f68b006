//! TLS for the public listener: certificates from PEM files, TLS 1.2+1.3 or 1.3 only,
//! ALPN h2 and http/1.1, optional client certificates from the cluster's CA (peers
//! relaying: mTLS), and reload (on SIGHUP) without touching open connections.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsConfig;
use crate::error::{Error, Result};

/// The current server TLS config; new handshakes use whatever is loaded, open
/// connections keep the config they started with.
pub struct TlsState {
    config: TlsConfig,
    current: ArcSwap<ServerConfig>,
}

impl TlsState {
    pub fn load(config: &TlsConfig) -> Result<Self> {
        let server = build(config)?;
        Ok(TlsState {
            config: config.clone(),
            current: ArcSwap::from_pointee(server),
        })
    }

    /// Re-reads the certificate and key. On error the old ones stay in use.
    pub fn reload(&self) -> Result<()> {
        let server = build(&self.config)?;
        self.current.store(Arc::new(server));
        Ok(())
    }

    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.load_full())
    }
}

/// The node's certificate chain and key from `tls.cert` and `tls.key`: what the
/// listener serves, and what the relay presents to peers as its client certificate.
pub fn load_identity(
    config: &TlsConfig,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let certs = CertificateDer::pem_file_iter(&config.cert)
        .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| Error::config(format!("tls.cert {}: {e}", config.cert.display())))?;
    if certs.is_empty() {
        return Err(Error::config(format!(
            "tls.cert {}: no certificate found",
            config.cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&config.key)
        .map_err(|e| Error::config(format!("tls.key {}: {e}", config.key.display())))?;
    Ok((certs, key))
}

fn build(config: &TlsConfig) -> Result<ServerConfig> {
    let (certs, key) = load_identity(config)?;
    let versions: &[&rustls::SupportedProtocolVersion] = if config.tls13_only {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| Error::config(format!("TLS setup: {e}")))?;
    let builder = match &config.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            // Optional: clients of the API present none; relayed requests without one
            // are refused by the proxy, which sees whether this handshake verified one.
            let roots = Arc::new(load_roots(path, "cluster.peer_ca_file")?);
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider)
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| Error::config(format!("cluster.peer_ca_file: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut server = builder.with_single_cert(certs, key).map_err(|e| {
        Error::config(format!(
            "tls: certificate and key do not form a usable pair: {e}"
        ))
    })?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(server)
}

/// The CA certificates in a PEM file, as trust anchors; `field` names the setting in
/// errors.
pub fn load_roots(path: &std::path::Path, field: &str) -> Result<rustls::RootCertStore> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| Error::config(format!("{field} {}: {e}", path.display())))?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(Error::config(format!(
            "{field} {}: no usable CA certificate found",
            path.display()
        )));
    }
    Ok(roots)
}
