//! Client configuration and the token type.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use zeroize::Zeroizing;

use crate::error::ClientError;

/// The longest token accepted (OpenID Connect access tokens can be a few KiB).
const MAX_TOKEN_LEN: usize = 16 * 1024;

/// A bearer token for the key server (a server-issued API token or an OpenID Connect access
/// token).
///
/// Zeroized on drop; `Debug` is redacted and there is no `Display`, so it cannot end up in
/// a log or an error message by accident.
#[derive(Clone)]
pub struct Token(Zeroizing<String>);

impl Token {
    /// A token from its text. Surrounding whitespace (a newline at the end of a token file)
    /// is removed; the rest must be 1 to 16384 visible ASCII characters.
    pub fn new(token: impl Into<String>) -> Result<Token, ClientError> {
        let raw = Zeroizing::new(token.into());
        let t = raw.trim();
        if t.is_empty() {
            return Err(ClientError::InvalidToken {
                reason: "it is empty",
            });
        }
        if t.len() > MAX_TOKEN_LEN {
            return Err(ClientError::InvalidToken {
                reason: "it is longer than 16384 characters",
            });
        }
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ClientError::InvalidToken {
                reason: "it has spaces, control or non-ASCII characters",
            });
        }
        Ok(Token(Zeroizing::new(t.to_owned())))
    }

    /// The token text, exposed deliberately: only to build the `Authorization` header.
    pub(crate) fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// How to reach the key server and where to keep the label cache.
///
/// Build it with [`ClientConfig::new`], then set the fields you need:
///
/// ```
/// # fn main() -> Result<(), kluis_client::ClientError> {
/// let mut config = kluis_client::ClientConfig::new("https://keys.example.org");
/// config.token = Some(kluis_client::Token::new("kluis_...")?);
/// config.cache_dir = kluis_client::ClientConfig::default_cache_dir();
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ClientConfig {
    /// The key server's base URL: `https://HOST[:PORT][/PATH]`. Plain `http://` is accepted
    /// only to a loopback address (`127.0.0.0/8`, `::1`, `localhost`), for a server on the
    /// same machine; anything else is refused, because the token and the audit trail's
    /// integrity depend on TLS.
    pub server: String,
    /// The bearer token; needed to open (unwrap) and to read one's own audit events, not to
    /// fetch label records.
    pub token: Option<Token>,
    /// A PEM bundle of CA certificates to trust for the key server *instead of* the Mozilla
    /// (webpki) roots: set it when the organisation runs its own certificate authority.
    pub ca_file: Option<PathBuf>,
    /// Where label records are cached for offline sealing and key pinning; `None` disables
    /// the disk cache, and with it offline sealing and pinning (every
    /// [`crate::Client::label_record`] then asks the server). See
    /// [`ClientConfig::default_cache_dir`].
    pub cache_dir: Option<PathBuf>,
    /// The longest one HTTP request may take, from connecting to the end of the answer
    /// (default 30 s).
    pub timeout: Duration,
    /// The longest connecting (DNS, TCP and TLS handshake) may take (default 10 s).
    pub connect_timeout: Duration,
    /// The most items sent in one batch unwrap (default 1000, the server's default limit). A
    /// larger request is split; if the server answers 413, the batch is halved until it fits.
    pub max_batch: usize,
    /// How many times one request is tried when retrying is safe (default 3; 1 disables
    /// retries). See the crate docs for when retrying is safe.
    pub max_attempts: u32,
    /// The most time spent waiting between attempts of one request, in total (default 10 s);
    /// a server asking to wait longer (`Retry-After`) gets an error back instead.
    pub max_retry_wait: Duration,
}

impl ClientConfig {
    /// A configuration for the key server at `server`, with the defaults above, no token and
    /// no disk cache.
    pub fn new(server: impl Into<String>) -> Self {
        ClientConfig {
            server: server.into(),
            token: None,
            ca_file: None,
            cache_dir: None,
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            max_batch: 1000,
            max_attempts: 3,
            max_retry_wait: Duration::from_secs(10),
        }
    }

    /// The platform's per-user cache directory for kluis: `$XDG_CACHE_HOME/kluis`, else
    /// `~/Library/Caches/kluis` on macOS, `%LOCALAPPDATA%\kluis\cache` on Windows, and
    /// `~/.cache/kluis` elsewhere. `None` when no home directory is known.
    pub fn default_cache_dir() -> Option<PathBuf> {
        let abs = |v: Option<std::ffi::OsString>| v.map(PathBuf::from).filter(|p| p.is_absolute());
        if let Some(x) = abs(std::env::var_os("XDG_CACHE_HOME")) {
            return Some(x.join("kluis"));
        }
        if cfg!(windows) {
            return abs(std::env::var_os("LOCALAPPDATA")).map(|p| p.join("kluis").join("cache"));
        }
        let home = abs(std::env::var_os("HOME"))?;
        if cfg!(target_os = "macos") {
            Some(home.join("Library").join("Caches").join("kluis"))
        } else {
            Some(home.join(".cache").join("kluis"))
        }
    }
}

/// The origin of a key server address: `scheme://host:port`, in lower case and with the
/// port always written (443 for https, 80 for http). Two addresses with the same origin reach
/// the same server, so a credential saved for one may be sent to the other and to no other.
///
/// ```
/// use kluis_client::server_origin;
/// assert_eq!(server_origin("https://Keys.Example.org/kluis/").unwrap(), "https://keys.example.org:443");
/// assert_ne!(server_origin("https://keys.example.org").unwrap(), server_origin("https://keys.example.org.evil").unwrap());
/// ```
pub fn server_origin(url: &str) -> Result<String, ClientError> {
    let server = parse_server(url)?;
    let uri: ureq::http::Uri = server
        .base
        .parse()
        .map_err(|_| ClientError::InvalidServerUrl {
            url: url.to_owned(),
            reason: "not a URL",
        })?;
    let (scheme, default_port) = if server.https {
        ("https", 443)
    } else {
        ("http", 80)
    };
    let host = uri.host().unwrap_or_default().to_ascii_lowercase();
    let port = uri.port_u16().unwrap_or(default_port);
    Ok(format!("{scheme}://{host}:{port}"))
}

/// A checked server base URL: scheme, authority and path prefix, without a trailing `/`.
pub(crate) struct ServerUrl {
    pub(crate) base: String,
    pub(crate) https: bool,
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<Ipv4Addr>().is_ok_and(|a| a.is_loopback())
        || host.parse::<Ipv6Addr>().is_ok_and(|a| a.is_loopback())
}

/// Check the configured server address (see [`ClientConfig::server`]).
pub(crate) fn parse_server(url: &str) -> Result<ServerUrl, ClientError> {
    let bad = |reason| ClientError::InvalidServerUrl {
        url: url.to_owned(),
        reason,
    };
    let trimmed = url.trim();
    if trimmed.contains('#') {
        return Err(bad("it has a #fragment"));
    }
    let uri: ureq::http::Uri = trimmed.parse().map_err(|_| bad("not a URL"))?;
    let scheme = uri
        .scheme_str()
        .ok_or_else(|| bad("no https:// in front"))?;
    let authority = uri.authority().ok_or_else(|| bad("no host"))?;
    if authority.as_str().contains('@') {
        return Err(bad(
            "a user name or password does not belong in the address",
        ));
    }
    if authority.host().is_empty() {
        return Err(bad("no host"));
    }
    if uri.query().is_some() {
        return Err(bad("it has a ?query"));
    }
    let https = match scheme.to_ascii_lowercase().as_str() {
        "https" => true,
        "http" if is_loopback(authority.host()) => false,
        "http" => {
            return Err(ClientError::InsecureServerUrl {
                url: url.to_owned(),
            });
        }
        _ => return Err(bad("only https:// is supported")),
    };
    let path = uri.path().trim_end_matches('/');
    let base = format!(
        "{}://{}{path}",
        if https { "https" } else { "http" },
        authority.as_str().to_ascii_lowercase()
    );
    Ok(ServerUrl { base, https })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls() {
        let ok = |u: &str| parse_server(u).map(|s| s.base);
        assert_eq!(
            ok("https://Keys.Example.org/").unwrap(),
            "https://keys.example.org"
        );
        assert_eq!(
            ok("https://keys.example.org:8443/kluis/").unwrap(),
            "https://keys.example.org:8443/kluis"
        );
        assert_eq!(
            ok("http://127.0.0.1:8080").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(ok("http://[::1]:80").unwrap(), "http://[::1]:80");
        assert_eq!(ok("http://localhost").unwrap(), "http://localhost");
        assert!(matches!(
            parse_server("http://keys.example.org"),
            Err(ClientError::InsecureServerUrl { .. })
        ));
        assert!(matches!(
            parse_server("http://127.0.0.1.example.org"),
            Err(ClientError::InsecureServerUrl { .. })
        ));
        for bad in [
            "keys.example.org",
            "ftp://keys.example.org",
            "https://user:pw@keys.example.org",
            "https://keys.example.org/?a=b",
            "https://keys.example.org/#x",
            "",
        ] {
            assert!(
                matches!(parse_server(bad), Err(ClientError::InvalidServerUrl { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn tokens_are_checked_and_never_shown() {
        let t = Token::new("kluis_secret123\n").unwrap();
        assert_eq!(t.expose_secret(), "kluis_secret123");
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");
        assert!(Token::new("  ").is_err());
        assert!(Token::new("a b").is_err());
        assert!(Token::new("x".repeat(20_000)).is_err());
        let mut c = ClientConfig::new("https://k");
        c.token = Some(t);
        assert!(!format!("{c:?}").contains("secret123"));
    }
}
