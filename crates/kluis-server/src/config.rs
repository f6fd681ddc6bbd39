//! The configuration file (TOML). Every setting can also come from an environment variable or
//! a command-line flag; precedence is flag, then environment, then file, then default.
//!
//! ```toml
//! store = "/var/lib/kluis/store.db"
//! key_file = "/etc/kluis/master.key"        # or one of the passphrase_* settings
//!
//! [serve]
//! listen = "0.0.0.0:8443"
//! tls_cert = "/etc/kluis/cert.pem"
//! tls_key = "/etc/kluis/key.pem"
//! max_batch = 1000
//! rate_limit_per_sec = 500                   # unwrapped items per identity; 0 = off
//! rate_limit_burst = 5000
//!
//! [oidc]
//! issuer = "https://login.microsoftonline.com/TENANT/v2.0"
//! audience = "api://kluis"
//! jwks_url = "https://login.microsoftonline.com/TENANT/discovery/v2.0/keys"
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Result, ServerError};

/// The whole file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The store: a SQLite file, or a PostgreSQL URL `postgres://USER@HOST:PORT/DATABASE`.
    pub store: Option<PathBuf>,
    /// PostgreSQL store (`store = "postgres://…"`): a file whose first line is the
    /// database password.
    pub store_password_file: Option<PathBuf>,
    /// PostgreSQL store: the organisation's CA certificates (PEM) to verify the database
    /// server with; TLS is then required and the host name checked.
    pub store_ca_file: Option<PathBuf>,
    /// PostgreSQL store: the longest one statement may run, in seconds (default 10).
    pub store_statement_timeout_secs: Option<u64>,
    /// The master key file.
    pub key_file: Option<PathBuf>,
    /// Read the passphrase from this environment variable.
    pub passphrase_env: Option<String>,
    /// Read the passphrase from this file (first line).
    pub passphrase_file: Option<PathBuf>,
    /// Read the passphrase from this open file descriptor (first line).
    pub passphrase_fd: Option<u32>,
    /// Ask for the passphrase on the terminal.
    #[serde(default)]
    pub passphrase_prompt: bool,
    /// `serve` settings.
    #[serde(default)]
    pub serve: ServeConfig,
    /// OpenID Connect bearer tokens; absent means only kluis API tokens are accepted.
    pub oidc: Option<crate::oidc::OidcConfig>,
    /// Microsoft Double Key Encryption for Office (docs/DKE.md); absent means no DKE routes.
    pub dke: Option<crate::dke::DkeConfig>,
}

/// The `[serve]` table.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// Address to listen on.
    pub listen: Option<SocketAddr>,
    /// TLS certificate chain (PEM).
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP (loopback only).
    pub insecure_http: Option<bool>,
    /// The most items one batch unwrap may carry.
    pub max_batch: Option<usize>,
    /// How long clients may cache a label record, in seconds.
    pub record_max_age_secs: Option<u32>,
    /// Unwrapped items per identity per second; 0 turns rate limiting off.
    pub rate_limit_per_sec: Option<f64>,
    /// Items an identity may unwrap in a burst.
    pub rate_limit_burst: Option<f64>,
    /// Longest time a request may take, in seconds.
    pub request_timeout_secs: Option<u64>,
    /// Time for a TLS handshake and for each request's headers, in seconds.
    pub header_timeout_secs: Option<u64>,
    /// Open connections at most.
    pub max_connections: Option<usize>,
    /// Open connections per client address (IPv6: per /64) at most; 0 means no cap.
    pub max_connections_per_address: Option<usize>,
    /// Bytes of request line and headers at most.
    pub max_header_bytes: Option<usize>,
    /// Largest request body, in bytes.
    pub max_body_bytes: Option<usize>,
    /// Bytes all request bodies may hold in memory at once.
    pub max_body_bytes_in_flight: Option<usize>,
    /// Bytes the request bodies of one identity may hold in memory at once.
    pub max_body_bytes_in_flight_per_identity: Option<usize>,
    /// How often scheduled rotation and retention run, in seconds.
    pub schedule_interval_secs: Option<u64>,
}

impl Config {
    /// Read a configuration file; unknown settings are errors (typos must not pass silently).
    pub fn load(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path)
            .map_err(|e| ServerError::Config(format!("cannot read {}: {e}", path.display())))?;
        if meta.len() > 1024 * 1024 {
            return Err(ServerError::Config(format!(
                "{} is larger than 1 MiB: not a kluis-server configuration",
                path.display()
            )));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| ServerError::Config(format!("cannot read {}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| ServerError::Config(format!("{}: {e}", path.display())))
    }

    /// Parse configuration text.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses_typos() {
        let c = Config::parse(
            "store = \"s.db\"\n[serve]\nlisten = \"127.0.0.1:9\"\nmax_batch = 7\n\
             [oidc]\nissuer = \"https://idp\"\naudience = \"kluis\"\njwks_file = \"j.json\"\n",
        )
        .unwrap();
        assert_eq!(c.store.as_deref(), Some(Path::new("s.db")));
        assert_eq!(c.serve.max_batch, Some(7));
        assert_eq!(c.serve.listen.unwrap().port(), 9);
        assert_eq!(c.oidc.unwrap().issuer, "https://idp");
        let e = Config::parse("[serve]\nmax_bach = 7\n").unwrap_err();
        assert!(e.contains("max_bach"), "{e}");
        assert!(Config::parse("store = 5").is_err());
    }
}
