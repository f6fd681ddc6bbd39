//! The listener: TLS (rustls on ring) or, on loopback only, plain HTTP; HTTP/1.1 with a
//! header read timeout (slow clients cannot hold connections forever), a cap on open
//! connections, and graceful shutdown (in-flight requests finish).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::error::{Result, ServerError};
use crate::fairness::{BusyGuard, ConnState, Connections};
use crate::handshake::{HandshakeCap, MAX_HANDSHAKE_BYTES};
use crate::refusal::JsonRefusals;
pub use crate::tls_reload::TlsFiles;

/// hyper's smallest read buffer; the header cap cannot be lower.
const MIN_HEADER_BYTES: usize = 8192;
/// Header lines per request at most (beyond: 431).
const MAX_HEADERS: usize = 64;
/// File descriptors kept for everything but client connections (the store and its
/// journal and temporary files, certificate reloads, requests to the IdP, the log).
const FD_RESERVE: usize = 64;

/// Connection-level limits.
#[derive(Clone, Debug)]
pub struct ListenLimits {
    /// Time a client has for its TLS handshake and for each request's headers.
    pub header_timeout: Duration,
    /// Open connections at most; at the cap, the connection idle the longest is closed to
    /// make room (further clients wait only while every connection is busy).
    pub max_connections: usize,
    /// Open connections per client address (IPv6: per /64) at most; `None` is a quarter of
    /// `max_connections` (at least 1), `Some(0)` no per-address cap.
    pub max_connections_per_address: Option<usize>,
    /// Bytes of request line and headers at most (at least 8 KiB); beyond, 431.
    pub max_header_bytes: usize,
    /// After shutdown is asked for, how long in-flight requests may take.
    pub drain_timeout: Duration,
}

impl Default for ListenLimits {
    fn default() -> Self {
        ListenLimits {
            header_timeout: Duration::from_secs(10),
            max_connections: 4096,
            max_connections_per_address: None,
            max_header_bytes: 16 * 1024,
            drain_timeout: Duration::from_secs(30),
        }
    }
}

impl ListenLimits {
    /// The per-address cap in force (0: none).
    fn per_address(&self) -> usize {
        self.max_connections_per_address
            .unwrap_or((self.max_connections / 4).max(1))
    }

    /// These limits with `max_connections` lowered to what the `fds` file descriptors still
    /// free under the process's open-file limit allow (less [`FD_RESERVE`]): past that limit
    /// `accept` fails, the connection cap is never reached, and nobody is evicted to make
    /// room, so one client holding that many silent connections would make everyone else
    /// wait. The default per-address share follows the lowered cap.
    fn within_open_files(mut self, fds: Option<usize>) -> Self {
        if let Some(fds) = fds {
            let room = fds.saturating_sub(FD_RESERVE).max(1);
            if room < self.max_connections {
                log(&format!(
                    "max_connections {} does not fit the {fds} file descriptors left under the \
                     open-file limit: serving at most {room} connections (raise LimitNOFILE / \
                     ulimit -n)",
                    self.max_connections
                ));
                self.max_connections = room;
            }
        }
        self
    }
}

/// The file descriptors this process may still open under its open-file (soft) limit, when
/// known and finite (Linux): the store's connections and the like are open already.
fn free_file_descriptors() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let limit: usize = line
        .get("Max open files".len()..)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let open = std::fs::read_dir("/proc/self/fd").ok()?.count();
    Some(limit.saturating_sub(open))
}

/// Whether an `accept` error means the process or system ran out of file descriptors.
fn out_of_files(e: &std::io::Error) -> bool {
    // EMFILE and ENFILE (the same numbers on Linux, the BSDs and macOS).
    cfg!(unix) && matches!(e.raw_os_error(), Some(23 | 24))
}

/// A rustls server configuration from a certificate chain and a private key (PEM files).
pub fn tls_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>> {
    let bad = |what: &str, p: &Path, e: &dyn std::fmt::Display| {
        ServerError::Config(format!("{what} {}: {e}", p.display()))
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad("cannot read the TLS certificate", cert, &pem_error(&e)))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad("cannot parse the TLS certificate", cert, &pem_error(&e)))?;
    if certs.is_empty() {
        return Err(ServerError::Config(format!(
            "{} holds no PEM certificate",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| bad("cannot read the TLS key", key, &pem_error(&e)))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ServerError::Config(format!("TLS: {e}")))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| ServerError::Config(format!("TLS certificate and key do not fit: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What went wrong reading a PEM file, without any of its contents: the PEM parser's own
/// messages quote the line or section it stumbled on, which in a key file is the key
/// (review: a key file on one line was printed whole, at start and on every `SIGHUP`).
fn pem_error(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error as Pem;
    match e {
        Pem::Io(io) => format!("I/O error: {io}"),
        Pem::NoItemsFound => "nothing of the expected kind in it".to_owned(),
        _ => "not valid PEM (each -----BEGIN …----- and -----END …----- marker and each base64 \
              line must be on a line of its own); its contents are not shown"
            .to_owned(),
    }
}

/// Serve `app` on `listener` until `shutdown` resolves, then let in-flight requests finish
/// (up to the drain timeout). With TLS, each `SIGHUP` that `hangups` caught (from
/// [`catch_hangups`], taken before the server said it was listening) reloads the certificate
/// and key.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<TlsFiles>>,
    limits: ListenLimits,
    hangups: HangupWatch,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let limits = limits.within_open_files(free_file_descriptors());
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let conns = Connections::new(limits.per_address());
    let reloader = tokio::spawn(reload_on_hangup(hangups.0, tls.clone()));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                // Out of file descriptors (despite the cap: other users of them) and the
                // like: make room as at the cap, or back off briefly; keep serving.
                Err(e) => {
                    let wait = if out_of_files(&e) && conns.evict_oldest_idle(None) { 5 } else { 50 };
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                    continue;
                }
            },
        };
        // One address may hold only its share of the connections: beyond it, close at once.
        let Some(ticket) = conns.admit(peer.ip()) else {
            drop(stream);
            continue;
        };
        // At the cap, close the connection idle the longest (a silent or slow client, or a
        // kept-alive one) rather than make this one wait; wait only if all are busy.
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let mut got = None;
                loop {
                    conns.evict_oldest_idle(Some(&ticket));
                    tokio::select! {
                        _ = &mut shutdown => break,
                        p = slots.clone().acquire_owned() => {
                            got = Some(p.map_err(|_| ServerError::Init("connection limiter closed"))?);
                            break;
                        }
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
                match got {
                    Some(p) => p,
                    None => break,
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_buf_size(limits.max_header_bytes.max(MIN_HEADER_BYTES))
            .max_headers(MAX_HEADERS);
        let watcher = graceful.watcher();
        let acceptor = tls.as_ref().map(|t| TlsAcceptor::from(t.current()));
        let timeout = limits.header_timeout;
        let app = app.clone();
        let max_header_bytes = limits.max_header_bytes;
        tokio::spawn(async move {
            let _permit = permit;
            let state = ticket.state.clone();
            state.starting();
            let run = async move {
                match acceptor {
                    Some(acceptor) => {
                        let capped = HandshakeCap::new(stream, MAX_HANDSHAKE_BYTES);
                        let Ok(Ok(mut stream)) =
                            tokio::time::timeout(timeout, acceptor.accept(capped)).await
                        else {
                            return;
                        };
                        stream.get_mut().0.lift();
                        let io = JsonRefusals::new(stream, max_header_bytes);
                        let service =
                            connection_service(app, peer, ticket.state.clone(), io.framing_flag());
                        let conn = http.serve_connection(TokioIo::new(io), service);
                        let _ = watcher.watch(conn).await;
                    }
                    None => {
                        let io = JsonRefusals::new(stream, max_header_bytes);
                        let service =
                            connection_service(app, peer, ticket.state.clone(), io.framing_flag());
                        let conn = http.serve_connection(TokioIo::new(io), service);
                        let _ = watcher.watch(conn).await;
                    }
                }
            };
            tokio::select! {
                _ = run => {}
                _ = state.evicted() => {}
            }
        });
    }
    drop(listener);
    reloader.abort();
    let _ = tokio::time::timeout(limits.drain_timeout, graceful.shutdown()).await;
    Ok(())
}

/// The hyper service for one connection: the app, told the peer's address; each request
/// marks the connection busy until its answer's body is written, so that it is not evicted.
fn connection_service(
    app: Router,
    peer: SocketAddr,
    state: Arc<ConnState>,
    framing: Arc<AtomicBool>,
) -> impl hyper::service::Service<
    hyper::Request<Incoming>,
    Response = hyper::Response<Guarded>,
    Error = Infallible,
    Future = impl Future<Output = std::result::Result<hyper::Response<Guarded>, Infallible>> + Send,
> + Send
+ 'static {
    let svc = TowerToHyperService::new(app);
    hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
        if req.method() == hyper::Method::HEAD {
            // Its answer has a content-length but no body: stop following the framing.
            framing.store(true, Ordering::Relaxed);
        }
        let guard = state.busy();
        let answer = hyper::service::Service::call(&svc, req);
        async move {
            let response = answer.await?;
            Ok(response.map(|body| Guarded { body, _busy: guard }))
        }
    })
}

/// A response body that keeps its connection marked busy until it is dropped.
struct Guarded {
    body: axum::body::Body,
    _busy: BusyGuard,
}

impl hyper::body::Body for Guarded {
    type Data = hyper::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<std::result::Result<hyper::body::Frame<Self::Data>, Self::Error>>>
    {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// On `SIGHUP`, reload the TLS certificate and key (and say so on standard error); with plain
/// HTTP there is nothing to reload, but the signal must not stop the server either.
async fn reload_on_hangup(hup: Option<Hangups>, tls: Option<Arc<TlsFiles>>) {
    #[cfg(unix)]
    {
        let Some(mut hup) = hup else {
            log("cannot watch for SIGHUP: the TLS certificate reloads only on restart");
            return;
        };
        while hup.recv().await.is_some() {
            match &tls {
                None => log("SIGHUP: plain HTTP, no TLS certificate to reload"),
                Some(t) => match t.reload() {
                    Ok(()) => log(&format!(
                        "SIGHUP: TLS certificate reloaded from {}; new connections use it",
                        t.cert_path().display()
                    )),
                    Err(e) => log(&format!(
                        "SIGHUP: TLS certificate not reloaded, still serving the previous one: {e}"
                    )),
                },
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (hup, tls);
}

#[cfg(unix)]
type Hangups = tokio::signal::unix::Signal;
#[cfg(not(unix))]
type Hangups = ();

/// The `SIGHUP` stream, registered at once (from then on the signal no longer stops the
/// process).
fn hangups() -> Option<Hangups> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        signal(SignalKind::hangup()).ok()
    }
    #[cfg(not(unix))]
    None
}

/// One line on standard error, through the server's log: never panicking on a closed or
/// full stream, never blocking on one that takes nothing.
fn log(line: &str) {
    crate::log!("{line}");
}

/// The `SIGHUP`s caught since [`catch_hangups`], handed to [`serve`].
pub struct HangupWatch(Option<Hangups>);

/// Take `SIGHUP` over from its default (ending the process) now, before the server says it
/// is listening, and keep every one from then on for [`serve`]: a reload asked for as soon as
/// the server is ready must neither stop the server nor be lost (a fresh-clone CI run lost one
/// sent between the "listening" line and `serve` registering its own watch).
pub fn catch_hangups() -> HangupWatch {
    HangupWatch(hangups())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn signals() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
