//! The HTTP API, `/v1`: public label records, unwrap and batch unwrap, the caller's own audit
//! events, health checks and metrics.
//!
//! The handlers only translate: they parse a request, call the [`crate::service`] layer and
//! render its answer. Every unwrap is authenticated, rate limited and authorised before any
//! key operation, and its audit records are committed (group commit, see [`crate::writer`])
//! before the sealed shares leave the server; the service's types enforce that order. A
//! request whose commit finds access withdrawn since it was authorised is decided again
//! (see [`crate::service::epoch`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use kluis_core::reply::ReplySealer;
use kluis_core::{DocId, Stanza};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::body_budget::{BodyBudget, Exhausted, Taken};
use crate::error::ServerError;
use crate::limit::RateLimiter;
use crate::metrics::{Metrics, SchedulerHealth, route_name};
use crate::service::KeyService;
use crate::service::auth::{AuthError, Caller};
use crate::service::unwrap::{Admitted, Pending, Purpose, Refusal, UnwrapRequest as Unwrap};
use crate::service::writer::{AuditWriter, NotCommitted, Observed, STALE_OUTCOME};
use crate::store::Store;

pub use crate::service::auth::{TokenVerifier, VerifyError};

pub(crate) mod dke;

/// Server settings that the API needs.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// The most items one batch unwrap may carry.
    pub max_batch: usize,
    /// How long clients may cache a public label record, in seconds.
    pub record_max_age: u32,
    /// Unwrapped items each identity may have per second (0 turns rate limiting off).
    pub rate_per_sec: f64,
    /// Items an identity may unwrap in a burst.
    pub rate_burst: f64,
    /// Longest time a request may take before it is answered 503.
    pub request_timeout: Duration,
    /// Request bodies larger than this are refused with 413.
    pub max_body: usize,
    /// Bytes all request bodies may hold in memory at once (beyond: 503 `server_busy`).
    pub body_budget: usize,
    /// Bytes the request bodies of one identity may hold at once (beyond: 429
    /// `identity_busy`); at least `max_body`.
    pub body_budget_per_identity: usize,
    /// Read connections to the store (the audit writer has its own).
    pub readers: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            max_batch: 1000,
            record_max_age: 3600,
            rate_per_sec: 500.0,
            rate_burst: 5000.0,
            request_timeout: Duration::from_secs(30),
            max_body: 1024 * 1024,
            body_budget: 16 * 1024 * 1024,
            body_budget_per_identity: 4 * 1024 * 1024,
            readers: std::thread::available_parallelism().map_or(4, |n| 2 * n.get()),
        }
    }
}

/// Read connections, each used by one request at a time.
struct Pool<S> {
    conns: Vec<Mutex<KeyService<S>>>,
    next: AtomicUsize,
}

impl<S: Store> Pool<S> {
    /// A free connection, looking from the next one round; `None` when all are busy.
    fn free(&self, start: usize) -> Option<std::sync::MutexGuard<'_, KeyService<S>>> {
        (0..self.conns.len())
            .find_map(|i| self.conns[(start + i) % self.conns.len()].try_lock().ok())
    }

    /// Run `f` on a free connection; `None` when all are busy.
    fn try_with<T>(&self, f: impl FnOnce(&mut KeyService<S>) -> T) -> Option<T> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        self.free(start).map(|mut s| f(&mut s))
    }

    /// Run `f` on a free connection, or wait for one when all are busy.
    fn with<T>(&self, f: impl FnOnce(&mut KeyService<S>) -> T) -> T {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut s = self.free(start).unwrap_or_else(|| {
            self.conns[start % self.conns.len()]
                .lock()
                .unwrap_or_else(|p| p.into_inner())
        });
        f(&mut s)
    }
}

/// The running API over any [`Store`]: store connections, the audit writer, limits, metrics
/// and the optional OpenID Connect verifier.
pub struct Api<S> {
    readers: Pool<S>,
    writer: AuditWriter,
    config: ApiConfig,
    metrics: Metrics,
    scheduler: Arc<SchedulerHealth>,
    limiter: RateLimiter,
    /// Request-body bytes in memory, in all and per identity.
    bodies: Arc<BodyBudget>,
    oidc: Option<Arc<dyn TokenVerifier>>,
    /// Microsoft Double Key Encryption, when configured (`[dke]`).
    dke: Option<crate::dke::DkeSettings>,
}

impl<S: Store> Api<S> {
    /// Take over `store` (its connection becomes the audit writer's) and open the readers.
    pub fn new(
        store: KeyService<S>,
        config: ApiConfig,
        oidc: Option<Arc<dyn TokenVerifier>>,
    ) -> crate::Result<Arc<Self>> {
        Self::with_dke(store, config, oidc, None)
    }

    /// [`Api::new`], also serving the Microsoft DKE routes when `dke` is given.
    pub fn with_dke(
        store: KeyService<S>,
        config: ApiConfig,
        oidc: Option<Arc<dyn TokenVerifier>>,
        dke: Option<crate::dke::DkeSettings>,
    ) -> crate::Result<Arc<Self>> {
        let conns = (0..config.readers.max(1))
            .map(|_| store.reopen().map(Mutex::new))
            .collect::<crate::Result<Vec<_>>>()?;
        Ok(Arc::new(Api {
            readers: Pool {
                conns,
                next: AtomicUsize::new(0),
            },
            writer: AuditWriter::start(store)?,
            limiter: RateLimiter::new(config.rate_per_sec, config.rate_burst),
            bodies: BodyBudget::new(config.body_budget, config.body_budget_per_identity),
            metrics: Metrics::default(),
            scheduler: Arc::default(),
            config,
            oidc,
            dke,
        }))
    }

    /// The router, ready to serve.
    pub fn router(self: &Arc<Self>) -> Router {
        let router = Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz::<S>))
            .route("/metrics", get(metrics::<S>))
            .route("/v1/labels", get(labels::<S>))
            .route("/v1/labels/{name}", get(label_record::<S>))
            .route("/v1/unwrap", post(unwrap_one::<S>))
            .route("/v1/unwrap/batch", post(unwrap_batch::<S>))
            .route("/v1/me/audit", get(my_audit::<S>));
        dke::routes(self, router)
            .method_not_allowed_fallback(|| async {
                ApiError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    "this endpoint does not take that method: see docs/openapi.yaml",
                )
            })
            .fallback(|| async {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "no such endpoint: see docs/openapi.yaml",
                )
            })
            .layer(DefaultBodyLimit::max(self.config.max_body))
            .layer(middleware::from_fn_with_state(self.clone(), track::<S>))
            .with_state(self.clone())
    }

    /// Where the serving scheduler reports its health, shown in `/metrics`.
    pub fn scheduler_health(&self) -> Arc<SchedulerHealth> {
        self.scheduler.clone()
    }

    /// Whether the audit writer thread is running; the server must not go on without it.
    pub fn writer_running(&self) -> bool {
        self.writer.is_running()
    }

    /// Commit what the audit writer holds and stop it; unwraps are refused afterwards.
    pub fn shutdown(&self) {
        self.writer.shutdown();
    }
}

/// Time every request out, and count it.
async fn track<S: Store>(State(api): State<Arc<Api<S>>>, req: Request, next: Next) -> Response {
    let route =
        dke::route_name(&api, req.uri().path()).unwrap_or_else(|| route_name(req.uri().path()));
    let start = Instant::now();
    let response = match tokio::time::timeout(api.config.request_timeout, next.run(req)).await {
        Ok(r) => r,
        // 504, not 503: the request may have been processed (and audited) already, so a
        // client must not blindly send it again.
        Err(_) => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            "the request took too long; it may or may not have been carried out",
        )
        .into_response(),
    };
    api.metrics
        .observe(route, response.status().as_u16(), start.elapsed());
    response
}

/// An API error: JSON `{code, message}` with its status.
#[derive(Clone)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<Duration>,
    /// For `destroyed`: when the key version was destroyed (ms since the epoch).
    destroyed_ms: Option<i64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
            destroyed_ms: None,
        }
    }

    /// `{code, message}`, plus `destroyed_ms` for a destroyed key version.
    fn to_json(&self) -> serde_json::Value {
        let mut v = json!({ "code": self.code, "message": self.message });
        if let Some(t) = self.destroyed_ms {
            v["destroyed_ms"] = t.into();
        }
        v
    }

    fn retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }

    /// A refusal for want of room in the body budget (429 `identity_busy`, 503 `server_busy`).
    fn is_busy(&self) -> bool {
        matches!(self.code, "identity_busy" | "server_busy")
    }

    fn bad(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "malformed", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.to_json().to_string();
        let mut r = (self.status, body).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(wait) = self.retry_after {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"kluis\""),
            );
        }
        r
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        let status = match r.code {
            "malformed" => StatusCode::BAD_REQUEST,
            "denied" | "double_key_required" | "retired" => StatusCode::FORBIDDEN,
            "not_found" => StatusCode::NOT_FOUND,
            "destroyed" => StatusCode::GONE,
            "store_unavailable" => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let e = ApiError {
            destroyed_ms: r.destroyed_ms,
            ..ApiError::new(status, r.code, r.message)
        };
        match status {
            StatusCode::SERVICE_UNAVAILABLE => e.retry_after(Duration::from_secs(5)),
            _ => e,
        }
    }
}

impl From<ServerError> for ApiError {
    fn from(e: ServerError) -> Self {
        Refusal::from(e).into()
    }
}

fn json_response(v: &impl Serialize) -> Response {
    let mut r = serde_json::to_string(v)
        .expect("serialisable")
        .into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Run blocking store work (SQLite, X25519) off the async threads, on a read connection.
async fn blocking<S: Store, T: Send + 'static>(
    api: &Arc<Api<S>>,
    f: impl FnOnce(&Api<S>, &mut KeyService<S>) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let api = api.clone();
    tokio::task::spawn_blocking(move || api.readers.with(|store| f(&api, store)))
        .await
        .map_err(|_| ServerError::Init("a request task failed"))?
}

/// Tell an API token from a JWT; a JWT is verified here, on a blocking thread that holds no
/// store connection (verification never waits for the identity provider, see
/// [`TokenVerifier::verify`]).
async fn caller<S: Store>(api: &Arc<Api<S>>, token: String) -> Result<Caller, ApiError> {
    if !Caller::needs_verifier(&token) {
        return Ok(Caller::identify(token, None)?);
    }
    let api = api.clone();
    Ok(
        tokio::task::spawn_blocking(move || Caller::identify(token, api.oidc.as_deref()))
            .await
            .map_err(|_| ServerError::Init("a request task failed"))??,
    )
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Unauthenticated(m) => {
                ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", m)
            }
            AuthError::Unavailable(m) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "idp_unavailable", m)
                    .retry_after(Duration::from_secs(30))
            }
            AuthError::Store(e) => e.into(),
        }
    }
}

fn bearer(headers: &HeaderMap) -> Result<String, ApiError> {
    let unauth = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", m);
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| unauth("send `Authorization: Bearer <token>`"))?;
    let value = value
        .to_str()
        .map_err(|_| unauth("the Authorization header is not text"))?;
    // The scheme name is case-insensitive (RFC 9110 §11.1).
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim().to_owned())
        }
        _ => Err(unauth(
            "use the Bearer scheme: `Authorization: Bearer <token>`",
        )),
    }
}

async fn readyz<S: Store>(State(api): State<Arc<Api<S>>>) -> Response {
    // Bounded: when every reader connection is held by a request waiting on a database that
    // stopped answering, the probe must say 503 now, not wait for a reader for as long.
    let probe = blocking(&api, |_, s| Ok(s.is_reachable()));
    let store_ok = matches!(
        tokio::time::timeout(std::time::Duration::from_secs(3), probe).await,
        Ok(Ok(true))
    );
    let unavailable = |code, message: &str| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message).into_response()
    };
    if !store_ok {
        unavailable(
            "store_unavailable",
            "the key server cannot read its store, so it cannot serve unwraps",
        )
    } else if !api.writer.is_running() || api.writer.is_failing() {
        // Readers still work, but every unwrap would be refused: a load balancer must not
        // send traffic here (issue 14: "never lies").
        unavailable(
            "audit_unavailable",
            "the key server cannot write its audit trail, so it releases no keys",
        )
    } else {
        "ready\n".into_response()
    }
}

async fn metrics<S: Store>(State(api): State<Arc<Api<S>>>) -> Response {
    let mut r = api
        .metrics
        .render(&api.writer, &api.scheduler, api.bodies.held())
        .into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

async fn labels<S: Store>(State(api): State<Arc<Api<S>>>) -> Result<Response, ApiError> {
    let list = blocking(&api, |_, s| {
        Ok(s.labels()?
            .into_iter()
            .map(|l| json!({ "name": l.name, "current_kid": l.current().map(|v| v.kid) }))
            .collect::<Vec<_>>())
    })
    .await?;
    Ok(json_response(&list))
}

/// The public record clients seal with: no authentication, cacheable.
async fn label_record<S: Store>(
    State(api): State<Arc<Api<S>>>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(name) = name.map_err(|_| ApiError::bad("the label name is not valid UTF-8"))?;
    let (record, max_age) = blocking(&api, move |api, s| {
        let l = s.label(&name)?;
        let current = l.current().ok_or_else(|| {
            ApiError::new(
                StatusCode::GONE,
                "destroyed",
                "the label has no current key version",
            )
        })?;
        let versions: Vec<_> = l
            .versions
            .iter()
            .map(|v| {
                let mut j = json!({ "kid": v.kid, "state": v.state, "public_key": v.public_key });
                if let Some(t) = v.destroyed_ms {
                    j["destroyed_ms"] = t.into();
                }
                j
            })
            .collect();
        let max_age = api.config.record_max_age;
        Ok((
            json!({
                "label": l.name,
                "kid": current.kid,
                "public_key": current.public_key,
                "double_key": l.policy.double_key,
                "recovery": l.policy.recovery,
                "versions": versions,
                "max_age": max_age,
            }),
            max_age,
        ))
    })
    .await?;
    let mut r = json_response(&record);
    if let Ok(v) = HeaderValue::from_str(&format!("public, max-age={max_age}")) {
        r.headers_mut().insert(header::CACHE_CONTROL, v);
    }
    Ok(r)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Item {
    doc_id: String,
    stanza: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnwrapRequest {
    reply_key: String,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    purpose: Purpose,
    #[serde(flatten)]
    item: Item,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchRequest {
    reply_key: String,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    purpose: Purpose,
    items: Vec<Item>,
}

fn reply_key(b64: &str) -> Result<[u8; 32], ApiError> {
    B64.decode(b64)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| ApiError::bad("reply_key must be 32 bytes of base64"))
}

fn reason(r: Option<String>) -> Result<Option<String>, ApiError> {
    match r {
        Some(r) if r.chars().count() > 1024 || r.chars().any(char::is_control) => Err(
            ApiError::bad("reason must be at most 1024 printable characters"),
        ),
        r => Ok(r),
    }
}

/// Parse one item: the document id and an org stanza.
fn parse_item(item: &Item) -> Result<(DocId, kluis_core::OrgStanza), Refusal> {
    let bad = |m: &str| Refusal::new("malformed", m);
    let mut id = [0u8; 16];
    hex::decode_to_slice(&item.doc_id, &mut id).map_err(|_| bad("doc_id must be 32 hex digits"))?;
    if item.stanza.len() > 4096 {
        return Err(bad("stanza too long"));
    }
    let bytes = B64
        .decode(&item.stanza)
        .map_err(|_| bad("stanza must be base64"))?;
    match Stanza::from_bytes(&bytes) {
        Ok(Stanza::Org(o)) => Ok((DocId(id), o)),
        Ok(_) => Err(bad("only org (label) stanzas can be unwrapped here")),
        Err(_) => Err(bad("stanza: not a valid kluis stanza")),
    }
}

/// The common body of both unwrap requests.
struct Common {
    reply_key: String,
    reason: Option<String>,
    purpose: Purpose,
    items: Vec<Item>,
}

/// The sealer for the caller's reply key, the unwrapped request waiting for its audit
/// records to be committed, and the caller as admitted by the rate limiter.
type Unwrapped = (ReplySealer, Pending, Admitted);

/// How often a request is decided, at most, when its commit finds that access may have been
/// withdrawn since it was authorised ([`NotCommitted::Stale`]); then it is answered 503.
const DECISIONS: usize = 3;

/// The answer to a request decided [`DECISIONS`] times, each time overtaken by a change that
/// can withdraw access: nothing was released or recorded as granted.
fn access_changing() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "access_changing",
        "access rights changed while your request was being decided, several times in a row; \
         nothing was released: try again shortly",
    )
    .retry_after(Duration::from_secs(1))
}

/// The answer to a request whose audit records could not be committed.
fn audit_unavailable() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "audit_unavailable",
        "the key server cannot write its audit trail, so it releases no keys; try again later",
    )
}

/// Authenticate, then read the request, rate limit (unless `charged`, the admission of an
/// earlier decision of the same request), and have the service authorise and unwrap every
/// item under `observed`. The shares stay inside [`Pending`] until the audit writer has
/// committed its records.
#[allow(clippy::too_many_arguments)]
fn authorise_and_unwrap<S: Store>(
    api: &Api<S>,
    store: &mut KeyService<S>,
    caller: &Caller,
    client: SocketAddr,
    body: &Result<Bytes, ApiError>,
    batch: bool,
    observed: Observed,
    charged: Option<Admitted>,
) -> Result<Unwrapped, ApiError> {
    // Authentication comes before even looking at the request body.
    let who = caller.principal(store)?;
    let body = body.as_ref().map_err(Clone::clone)?;
    let bad_body = |e: serde_json::Error| ApiError::bad(format!("request body: {e}"));
    let req = if batch {
        let r: BatchRequest = serde_json::from_slice(body).map_err(bad_body)?;
        if r.items.is_empty() || r.items.len() > api.config.max_batch {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "batch_size",
                format!("a batch holds 1 to {} items", api.config.max_batch),
            ));
        }
        Common {
            reply_key: r.reply_key,
            reason: r.reason,
            purpose: r.purpose,
            items: r.items,
        }
    } else {
        let r: UnwrapRequest = serde_json::from_slice(body).map_err(bad_body)?;
        Common {
            reply_key: r.reply_key,
            reason: r.reason,
            purpose: r.purpose,
            items: vec![r.item],
        }
    };
    let admitted =
        Admitted::readmit(&api.limiter, charged, who, req.items.len()).map_err(|wait| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many unwraps for this identity; slow down",
            )
            .retry_after(wait)
        })?;
    let r = reply_key(&req.reply_key)?;
    let sealer =
        ReplySealer::new(&r).map_err(|_| ApiError::bad("reply_key is a low-order point"))?;
    let pending = store.unwrap(
        &admitted,
        Unwrap {
            purpose: req.purpose,
            reason: reason(req.reason)?,
            client: client.ip().to_string(),
            items: req.items.iter().map(parse_item).collect(),
        },
        observed,
    );
    Ok((sealer, pending, admitted))
}

/// Unwrap, commit the audit records, then seal the shares to the caller.
/// Returns `S` and, per item, a sealed share or why not.
async fn unwrap_common<S: Store>(
    api: Arc<Api<S>>,
    client: SocketAddr,
    headers: HeaderMap,
    req: Request,
    batch: bool,
) -> Result<
    (
        [u8; 32],
        Vec<Result<kluis_core::reply::SealedShare, ApiError>>,
    ),
    ApiError,
> {
    let token = bearer(&headers)?;
    // Who calls is checked before the body is read: otherwise anyone could make the server
    // hold a body of up to `max_body_bytes` per connection (review: 400 unauthenticated
    // connections trickling 1 MiB bodies held 420 MiB).
    // A JWT is verified before a store connection is taken; an API token is then checked,
    // under the access epoch observed before that first store read.
    let identified = caller(&api, token).await?;
    let mut observed = api.writer.observe();
    let mut caller = authenticate_first(&api, identified.clone()).await?;
    // Held until the answer is made: the parsed request and the answer take about as much
    // memory again as the body.
    let (body, _held) = read_body(&api, caller.user(), req, api.config.max_body).await?;
    let body = Ok(Bytes::from(body));
    let mut charged = None;
    for decision in 1..=DECISIONS {
        let arriving = api.writer.arriving();
        // One item is two X25519 operations and a few indexed reads (about 0.1 ms): cheaper
        // done here than handed to a blocking thread and back. Batches and a busy pool go to a
        // blocking thread.
        let mut charged_now = charged.take();
        let inline = (!batch && S::LOCAL_READS)
            .then(|| {
                api.readers.try_with(|store| {
                    let c = charged_now.take();
                    authorise_and_unwrap(&api, store, &caller, client, &body, batch, observed, c)
                })
            })
            .flatten();
        let (mut sealer, pending, admitted) = match inline {
            Some(done) => done?,
            None => {
                let (caller, body) = (caller.clone(), body.clone());
                blocking(&api, move |api, store| {
                    let c = charged_now;
                    authorise_and_unwrap(api, store, &caller, client, &body, batch, observed, c)
                })
                .await?
            }
        };
        let outcomes: Vec<String> = pending.outcomes().map(str::to_owned).collect();
        // Durable before anything leaves: if the audit cannot be written, nothing is released.
        let last = decision == DECISIONS;
        match api.writer.commit(pending.last(last), arriving).await {
            Ok(committed) => {
                api.metrics.items(outcomes.iter().map(String::as_str));
                let sealed = committed
                    .release(&mut sealer)
                    .into_iter()
                    .map(|r| r.map_err(ApiError::from))
                    .collect();
                return Ok((sealer.server_public(), sealed));
            }
            Err(NotCommitted::Unavailable) => {
                api.metrics.items(outcomes.iter().map(String::as_str));
                return Err(audit_unavailable());
            }
            // Access may have been withdrawn since this decision: decide again, from
            // authentication on (the token may be revoked now), without charging the rate
            // limiter again.
            Err(NotCommitted::Stale) if decision < DECISIONS => {
                charged = Some(admitted);
                observed = api.writer.observe();
                caller = authenticate_first(&api, identified.clone()).await?;
            }
            // The last decision: recorded, its grants as refused; nothing released.
            Err(NotCommitted::Stale) => {
                let recorded = outcomes.iter().map(|o| match o.as_str() {
                    "granted" => STALE_OUTCOME,
                    o => o,
                });
                api.metrics.items(recorded);
                break;
            }
        }
    }
    Err(access_changing())
}

async fn unwrap_one<S: Store>(
    State(api): State<Arc<Api<S>>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    req: Request,
) -> Result<Response, ApiError> {
    let (server_key, mut sealed) = unwrap_common(api, client, headers, req, false).await?;
    let s = sealed.pop().expect("one result per item")?;
    Ok(json_response(&json!({
        "server_key": B64.encode(server_key),
        "nonce": B64.encode(s.nonce),
        "share": B64.encode(s.body),
    })))
}

async fn unwrap_batch<S: Store>(
    State(api): State<Arc<Api<S>>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    req: Request,
) -> Result<Response, ApiError> {
    let (server_key, sealed) = unwrap_common(api, client, headers, req, true).await?;
    let items: Vec<_> = sealed
        .into_iter()
        .map(|r| match r {
            Ok(s) => json!({ "nonce": B64.encode(s.nonce), "share": B64.encode(s.body) }),
            Err(e) => json!({ "error": e.to_json() }),
        })
        .collect();
    Ok(json_response(&json!({
        "server_key": B64.encode(server_key),
        "items": items,
    })))
}

/// Refuse an unknown credential before anything else is done for the request (its body is
/// not read yet); an API token is checked on this thread when a store connection is free. The
/// caller comes back authenticated: the rest of the request does not look the token up again.
async fn authenticate_first<S: Store>(
    api: &Arc<Api<S>>,
    caller: Caller,
) -> Result<Caller, ApiError> {
    if !caller.needs_store() {
        // A JWT was verified when the caller was identified.
        return Ok(caller);
    }
    if let Some(done) = S::LOCAL_READS
        .then(|| {
            api.readers
                .try_with(|store| caller.clone().authenticated(store))
        })
        .flatten()
    {
        return Ok(done?);
    }
    blocking(api, move |_, store| Ok(caller.authenticated(store)?)).await
}

/// How long a request waits for body bytes that other requests hold before it is refused.
const BODY_PATIENCE: Duration = Duration::from_secs(1);

/// Read the body of an authenticated request of `who` into memory, at most `max` bytes, each
/// allocation taken from the server's body budget first: bodies in memory stay within the
/// budget whatever clients do, and one identity holds at most its share. A body is charged
/// for what it has sent (its buffer grows by doubling, up to its declared length), not for
/// the length it announces. When the bytes are not free within [`BODY_PATIENCE`], the
/// request is refused (429 `identity_busy` when its own identity holds its share, 503
/// `server_busy` otherwise), with `Retry-After`; a body still arriving after
/// [`CUT_AFTER`](crate::body_budget::CUT_AFTER) while others wait for room is cut off (503
/// `server_busy`). A body over `max` is 413 (at once when its `Content-Length` says so), one
/// cut off by the client 400.
async fn read_body<S>(
    api: &Api<S>,
    who: &str,
    req: Request,
    max: usize,
) -> Result<(Vec<u8>, Taken), ApiError> {
    use hyper::body::Body as _;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "the request body is too large; send fewer items per batch",
        )
    };
    let mut body = req.into_body();
    let declared = body.size_hint().exact();
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let limit = declared.map_or(max, |n| usize::try_from(n).unwrap_or(max).min(max));
    let mut taken = api.bodies.start(who);
    let mut out = Vec::new();
    loop {
        let frame = tokio::select! {
            frame = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)) => frame,
            () = taken.cut_off() => return Err(body_cut_off()),
        };
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|_| ApiError::bad("the request body could not be read"))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        let need = out.len() + data.len();
        if need > max {
            return Err(too_large());
        }
        if need > out.capacity() {
            // Doubling, from 8 KiB, up to the declared length (or `max`): what the body has
            // sent, never what it announces.
            let want = need
                .max(out.capacity() * 2)
                .max(8 * 1024)
                .min(limit)
                .max(need);
            let more = want - out.capacity();
            // (Cut off meanwhile, it stops at the next frame.)
            taken
                .grow(more, BODY_PATIENCE)
                .await
                .map_err(budget_refusal)?;
            out.reserve_exact(want - out.len());
        }
        out.extend_from_slice(&data);
    }
    taken.arrived();
    Ok((out, taken))
}

/// The refusal of a request whose body was cut off, still arriving, to make room for others.
fn body_cut_off() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "server_busy",
        "your request body was still arriving while other requests waited for room in the \
         key server's memory, so it was cut off; nothing was evaluated: try again shortly",
    )
    .retry_after(Duration::from_secs(1))
}

/// The refusal of a request whose body finds no room in the body budget.
fn budget_refusal(e: Exhausted) -> ApiError {
    let wait = Duration::from_secs(1);
    match e {
        Exhausted::Identity => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "identity_busy",
            "this identity has too many request bodies in flight; let its other requests \
             finish first",
        )
        .retry_after(wait),
        Exhausted::Server => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_busy",
            "the key server is reading too many request bodies at once; try again shortly",
        )
        .retry_after(wait),
    }
}

/// Paging of `/v1/me/audit`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Page {
    /// Records after this sequence number.
    #[serde(default)]
    after: i64,
    /// At most this many (default and maximum 1000).
    limit: Option<usize>,
}

/// The caller's own recorded openings (employees may see what is recorded under their name):
/// the records of the caller's namespaced actor only, so an OpenID Connect `alice`
/// (`oidc:<issuer>:alice`) never sees the API-token `alice`'s records, nor anyone the admin's.
async fn my_audit<S: Store>(
    State(api): State<Arc<Api<S>>>,
    page: Result<Query<Page>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let token = bearer(&headers)?;
    let caller = caller(&api, token).await?;
    let records = blocking(&api, move |_, store| {
        let who = caller.principal(store)?;
        let Query(page) = page.map_err(|_| {
            ApiError::bad("query: only `after` (a sequence number) and `limit` (1-1000)")
        })?;
        let limit = page.limit.unwrap_or(1000).clamp(1, 1000);
        Ok(store.audit_page(Some(&who.user), page.after, limit)?)
    })
    .await?;
    Ok(json_response(&records))
}
