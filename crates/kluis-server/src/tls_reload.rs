//! The TLS certificate and key, reloaded from their files on `SIGHUP` without a restart; a
//! replacement that does not load leaves the previous one in service.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use crate::error::Result;
use crate::serve::tls_config;

/// The TLS configuration in service, and the files it was loaded from.
#[derive(Debug)]
pub struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<rustls::ServerConfig>>,
}

impl TlsFiles {
    /// Load the certificate chain and key (PEM files); fails if they do not load or fit.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Self>> {
        let config = tls_config(cert, key)?;
        Ok(Arc::new(TlsFiles {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: RwLock::new(config),
        }))
    }

    /// The configuration new connections get.
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Load the files again; on success new connections get the new certificate, on failure
    /// the previous one stays in service and the error says why.
    pub fn reload(&self) -> Result<()> {
        let config = tls_config(&self.cert, &self.key)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = config;
        Ok(())
    }

    /// The certificate file, for messages.
    pub fn cert_path(&self) -> &Path {
        &self.cert
    }
}
