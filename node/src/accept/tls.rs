//! TLS for the public listener: certificates from PEM files, TLS 1.2+1.3 or 1.3 only,
//! ALPN h2 and http/1.1, and reload (on SIGHUP) without touching open connections.

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

fn build(config: &TlsConfig) -> Result<ServerConfig> {
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
    let versions: &[&rustls::SupportedProtocolVersion] = if config.tls13_only {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| Error::config(format!("TLS setup: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            Error::config(format!(
                "tls: certificate and key do not form a usable pair: {e}"
            ))
        })?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(server)
}
