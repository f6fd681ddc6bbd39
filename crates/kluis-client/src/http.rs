//! HTTPS transport: the ureq agent, the CA bundle, retries with backoff, error mapping.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ureq::http::HeaderValue;
use ureq::tls::{Certificate, RootCerts, TlsConfig};
use zeroize::Zeroizing;

use crate::config::{ClientConfig, ServerUrl, Token};
use crate::error::{ClientError, clean};

/// When a request may be sent again after a failure.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Idempotent and unaudited (GET): retry on any transient failure.
    Idempotent,
    /// Audited (unwrap): retry only when the server cannot have processed the request:
    /// connecting failed, or it answered 429 or 503.
    NotProcessed,
}

/// An HTTP answer: status, `Retry-After` (seconds) and body.
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) retry_after: Option<u64>,
    pub(crate) body: Vec<u8>,
}

/// The JSON error body every key server error carries.
#[derive(serde::Deserialize, Default)]
pub(crate) struct ApiError {
    #[serde(default)]
    pub(crate) code: String,
    #[serde(default)]
    pub(crate) message: String,
    /// When a destroyed key version was destroyed (ms since the epoch), if the server says.
    #[serde(default)]
    pub(crate) destroyed_ms: Option<i64>,
}

impl Reply {
    /// The error body, or an empty one when the answer is not JSON.
    pub(crate) fn api_error(&self) -> ApiError {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }
}

/// How a failed exchange may be retried.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Failure {
    /// Nothing reached the server (connection refused, DNS, connect timeout).
    BeforeSending,
    /// The request may have reached the server (reset, read timeout, garbled answer).
    MaybeSent,
    /// Trying again will not help (certificate refused, bad configuration).
    Permanent,
}

pub(crate) struct Http {
    agent: ureq::Agent,
    pub(crate) base: String,
    token: Option<Token>,
    timeout: Duration,
    connect_timeout: Duration,
    max_attempts: u32,
    max_retry_wait: Duration,
    sent: AtomicU64,
}

/// Read a PEM CA bundle; every certificate in it must be usable as a trust anchor.
fn ca_roots(path: &Path) -> Result<RootCerts, ClientError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let err = |detail: String| ClientError::CaFile {
        path: path.to_owned(),
        detail,
    };
    let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let mut certs = Vec::new();
    let mut store = rustls::RootCertStore::empty();
    for (i, cert) in CertificateDer::pem_slice_iter(&pem).enumerate() {
        let cert = cert.map_err(|e| err(format!("certificate {} is not valid PEM: {e}", i + 1)))?;
        store.add(cert.clone()).map_err(|e| {
            err(format!(
                "certificate {} cannot be a trust anchor: {e}",
                i + 1
            ))
        })?;
        certs.push(Certificate::from_der(cert.as_ref()).to_owned());
    }
    if certs.is_empty() {
        return Err(err("no `BEGIN CERTIFICATE` block in it".into()));
    }
    Ok(RootCerts::new_with_certs(&certs))
}

impl std::fmt::Debug for Http {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the token.
        f.debug_struct("Http")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl Http {
    pub(crate) fn new(config: &ClientConfig, server: ServerUrl) -> Result<Http, ClientError> {
        let roots = match &config.ca_file {
            Some(p) => ca_roots(p)?,
            None => RootCerts::WebPki,
        };
        let connect_timeout = config.connect_timeout.min(config.timeout);
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .https_only(server.https)
            // The key server never redirects; following one could send the token elsewhere.
            .max_redirects(0)
            .max_redirects_will_error(false)
            .timeout_global(Some(config.timeout))
            .timeout_connect(Some(connect_timeout))
            .user_agent(concat!("kluis-client/", env!("CARGO_PKG_VERSION")))
            // An https proxy from the environment tunnels TLS end to end; plain http goes only
            // to loopback, never through a proxy.
            .proxy(if server.https {
                ureq::Proxy::try_from_env()
            } else {
                None
            })
            .tls_config(TlsConfig::builder().root_certs(roots).build())
            .build()
            .new_agent();
        Ok(Http {
            agent,
            base: server.base,
            token: config.token.clone(),
            timeout: config.timeout,
            connect_timeout,
            max_attempts: config.max_attempts.max(1),
            max_retry_wait: config.max_retry_wait,
            sent: AtomicU64::new(0),
        })
    }

    pub(crate) fn has_token(&self) -> bool {
        self.token.is_some()
    }

    pub(crate) fn requests_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    fn bearer(&self) -> Result<HeaderValue, ClientError> {
        let token = self.token.as_ref().ok_or_else(|| ClientError::NoToken {
            server: self.base.clone(),
        })?;
        let text = Zeroizing::new(format!("Bearer {}", token.expose_secret()));
        let mut v = HeaderValue::from_str(&text).map_err(|_| ClientError::InvalidToken {
            reason: "it is not a valid HTTP header value",
        })?;
        v.set_sensitive(true);
        Ok(v)
    }

    /// One exchange; `Err` only when no HTTP answer came.
    fn once(
        &self,
        path: &str,
        auth: Option<&HeaderValue>,
        body: Option<&[u8]>,
        limit: u64,
    ) -> Result<Reply, (ClientError, Failure)> {
        let url = format!("{}{path}", self.base);
        self.sent.fetch_add(1, Ordering::Relaxed);
        let result = match body {
            None => {
                let mut r = self.agent.get(&url).header("accept", "application/json");
                if let Some(a) = auth {
                    r = r.header("authorization", a.clone());
                }
                r.call()
            }
            Some(b) => {
                let mut r = self
                    .agent
                    .post(&url)
                    .header("accept", "application/json")
                    .header("content-type", "application/json");
                if let Some(a) = auth {
                    r = r.header("authorization", a.clone());
                }
                r.send(b)
            }
        };
        let mut resp = result.map_err(|e| self.map_error(e))?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let body = resp
            .body_mut()
            .with_config()
            .limit(limit)
            .read_to_vec()
            .map_err(|e| self.map_error(e))?;
        Ok(Reply {
            status,
            retry_after,
            body,
        })
    }

    /// Send a GET (`body` `None`) or a JSON POST to `path` (below the base URL), retrying
    /// as `retry` allows. Any HTTP answer is returned, error statuses included; `Err` means
    /// no answer came. `limit` bounds the answer's size.
    pub(crate) fn request(
        &self,
        path: &str,
        authenticated: bool,
        body: Option<&[u8]>,
        retry: Retry,
        limit: u64,
    ) -> Result<Reply, ClientError> {
        let auth = if authenticated {
            Some(self.bearer()?)
        } else {
            None
        };
        let start = Instant::now();
        let mut attempt = 1;
        loop {
            let outcome = self.once(path, auth.as_ref(), body, limit);
            let (again, hint) = match &outcome {
                Ok(r) => {
                    let busy = matches!(r.status, 429 | 503);
                    let failed = matches!(r.status, 500 | 502 | 504);
                    (
                        busy || (failed && retry == Retry::Idempotent),
                        r.retry_after,
                    )
                }
                Err((_, f)) => (
                    *f == Failure::BeforeSending
                        || (*f == Failure::MaybeSent && retry == Retry::Idempotent),
                    None,
                ),
            };
            if !again || attempt >= self.max_attempts {
                return outcome.map_err(|(e, _)| e);
            }
            let wait = match hint {
                Some(s) => Duration::from_secs(s),
                None => backoff(attempt),
            };
            let spent = start.elapsed();
            if spent.saturating_add(wait) > self.max_retry_wait {
                return outcome.map_err(|(e, _)| e);
            }
            std::thread::sleep(wait);
            attempt += 1;
        }
    }

    fn map_error(&self, e: ureq::Error) -> (ClientError, Failure) {
        let server = self.base.clone();
        let unreachable = |detail: String| ClientError::Unreachable {
            server: server.clone(),
            detail,
        };
        match e {
            ureq::Error::Timeout(t) => {
                let (failure, limit) = match t {
                    ureq::Timeout::Resolve | ureq::Timeout::Connect => {
                        (Failure::BeforeSending, self.connect_timeout)
                    }
                    _ => (Failure::MaybeSent, self.timeout),
                };
                (
                    ClientError::Timeout {
                        server,
                        seconds: limit.as_secs().max(1),
                    },
                    failure,
                )
            }
            ureq::Error::HostNotFound => (
                unreachable("the host name was not found".into()),
                Failure::BeforeSending,
            ),
            ureq::Error::ConnectionFailed => (
                unreachable("the connection failed".into()),
                Failure::BeforeSending,
            ),
            ureq::Error::Io(io) => match tls_error(&io) {
                Some(t) => (tls_client_error(server, t), Failure::Permanent),
                None => io_error(server, &io, self.timeout.as_secs().max(1)),
            },
            ureq::Error::Rustls(t) => (tls_client_error(server, &t), Failure::Permanent),
            ureq::Error::Tls(m) => (
                ClientError::Tls {
                    server,
                    detail: m.to_owned(),
                },
                Failure::Permanent,
            ),
            ureq::Error::BodyExceedsLimit(n) => (
                ClientError::Protocol {
                    server,
                    detail: format!("the answer is larger than {n} bytes"),
                },
                Failure::Permanent,
            ),
            ureq::Error::Protocol(p) => (
                ClientError::Protocol {
                    server,
                    detail: format!("not valid HTTP: {p}"),
                },
                Failure::MaybeSent,
            ),
            other => (
                ClientError::Protocol {
                    server,
                    detail: clean(&other.to_string()),
                },
                Failure::Permanent,
            ),
        }
    }
}

fn io_error(server: String, io: &io::Error, seconds: u64) -> (ClientError, Failure) {
    use io::ErrorKind::*;
    let (detail, failure) = match io.kind() {
        ConnectionRefused => ("connection refused", Failure::BeforeSending),
        AddrNotAvailable | NetworkUnreachable | HostUnreachable | NetworkDown => {
            ("no route to the host", Failure::BeforeSending)
        }
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => {
            ("the connection was closed", Failure::MaybeSent)
        }
        TimedOut => {
            return (ClientError::Timeout { server, seconds }, Failure::MaybeSent);
        }
        _ => ("network error", Failure::MaybeSent),
    };
    (
        ClientError::Unreachable {
            server,
            detail: format!("{detail}: {}", clean(&io.to_string())),
        },
        failure,
    )
}

/// The rustls error inside an I/O error (ureq reports handshake failures this way).
fn tls_error(io: &io::Error) -> Option<&rustls::Error> {
    io.get_ref()?.downcast_ref::<rustls::Error>()
}

fn tls_client_error(server: String, e: &rustls::Error) -> ClientError {
    use rustls::CertificateError as C;
    let detail = match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::UnknownIssuer => "it is not issued by a certificate authority this client trusts",
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                "it is not valid for this host name"
            }
            C::Expired | C::ExpiredContext { .. } => "it has expired",
            C::NotValidYet | C::NotValidYetContext { .. } => "it is not valid yet",
            C::Revoked => "it was revoked",
            C::BadSignature => "its signature is invalid",
            _ => "",
        },
        _ => {
            return ClientError::Tls {
                server,
                detail: clean(&e.to_string()),
            };
        }
    };
    let detail = if detail.is_empty() {
        clean(&e.to_string())
    } else {
        detail.to_owned()
    };
    ClientError::UntrustedCertificate { server, detail }
}

/// 250 ms, 500 ms, 1 s, ... plus up to 25% jitter, so that many clients do not retry in step.
fn backoff(attempt: u32) -> Duration {
    use ring::rand::SecureRandom;
    let base = 250u64.saturating_mul(1 << attempt.saturating_sub(1).min(10));
    let mut b = [0u8; 2];
    let jitter = match ring::rand::SystemRandom::new().fill(&mut b) {
        Ok(()) => u64::from(u16::from_le_bytes(b)) * base / 4 / 65_536,
        Err(_) => 0,
    };
    Duration::from_millis(base + jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_bounded_jitter() {
        for a in 1..5u32 {
            let d = backoff(a).as_millis() as u64;
            let base = 250 << (a - 1);
            assert!(d >= base && d <= base + base / 4, "{a}: {d}");
        }
    }
}
