//! The HTTP API, `/v1`: public label records, unwrap and batch unwrap, the caller's own audit
//! events, health checks and metrics.
//!
//! Every unwrap is authenticated, rate limited and authorised before any key operation, and
//! its audit records are committed (group commit, see [`crate::writer`]) before the sealed
//! shares leave the server.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use kluis_core::reply::ReplySealer;
use kluis_core::{DocId, LabelKey, Share, SlotKind, Stanza};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::audit::AuditEntry;
use crate::error::ServerError;
use crate::limit::RateLimiter;
use crate::metrics::{Metrics, route_name};
use crate::sqlite::SqliteStore;
use crate::store::{LabelInfo, Principal, Store, VersionState};
use crate::time::now_ms;
use crate::writer::AuditWriter;

/// Verifies bearer tokens that are not kluis API tokens (OpenID Connect JWTs).
pub trait TokenVerifier: Send + Sync {
    /// Who the token authenticates, with names namespaced to the verifier's source (see
    /// [`Principal`]). Must not wait for the network (reload keys in the background); it runs
    /// on a blocking thread, without a store connection.
    fn verify(&self, token: &str, now_secs: i64) -> Result<Principal, VerifyError>;
}

/// Why a bearer token was not accepted.
#[derive(Debug)]
pub enum VerifyError {
    /// The token is not valid: 401, with a message for the caller (never the token itself).
    Invalid(String),
    /// The token cannot be checked now (the identity provider's keys are unavailable): 503.
    Unavailable(String),
}

impl TokenVerifier for crate::oidc::OidcVerifier {
    fn verify(&self, token: &str, now_secs: i64) -> Result<Principal, VerifyError> {
        crate::oidc::OidcVerifier::verify(self, token, now_secs).map_err(|e| {
            if let Some(cause) = e.jwks_cause() {
                crate::log!("OpenID Connect keys unavailable: {cause}");
            }
            match e {
                crate::oidc::OidcError::JwksUnavailable(_) => VerifyError::Unavailable(
                    "the identity provider's signing keys cannot be fetched; try again later"
                        .into(),
                ),
                e => VerifyError::Invalid(e.to_string()),
            }
        })
    }
}

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
            readers: std::thread::available_parallelism().map_or(4, |n| 2 * n.get()),
        }
    }
}

/// Read connections, each used by one request at a time.
struct Pool {
    conns: Vec<Mutex<SqliteStore>>,
    next: AtomicUsize,
}

impl Pool {
    /// A free connection, looking from the next one round; `None` when all are busy.
    fn free(&self, start: usize) -> Option<std::sync::MutexGuard<'_, SqliteStore>> {
        (0..self.conns.len())
            .find_map(|i| self.conns[(start + i) % self.conns.len()].try_lock().ok())
    }

    /// Run `f` on a free connection; `None` when all are busy.
    fn try_with<T>(&self, f: impl FnOnce(&mut SqliteStore) -> T) -> Option<T> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        self.free(start).map(|mut s| f(&mut s))
    }

    /// Run `f` on a free connection, or wait for one when all are busy.
    fn with<T>(&self, f: impl FnOnce(&mut SqliteStore) -> T) -> T {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut s = self.free(start).unwrap_or_else(|| {
            self.conns[start % self.conns.len()]
                .lock()
                .unwrap_or_else(|p| p.into_inner())
        });
        f(&mut s)
    }
}

/// The running API: store connections, the audit writer, limits, metrics and the optional
/// OpenID Connect verifier.
pub struct Api {
    readers: Pool,
    writer: AuditWriter,
    config: ApiConfig,
    metrics: Metrics,
    limiter: RateLimiter,
    oidc: Option<Arc<dyn TokenVerifier>>,
}

impl Api {
    /// Take over `store` (its connection becomes the audit writer's) and open the readers.
    pub fn new(
        store: SqliteStore,
        config: ApiConfig,
        oidc: Option<Arc<dyn TokenVerifier>>,
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
            metrics: Metrics::default(),
            config,
            oidc,
        }))
    }

    /// The router, ready to serve.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .route("/v1/labels", get(labels))
            .route("/v1/labels/{name}", get(label_record))
            .route("/v1/unwrap", post(unwrap_one))
            .route("/v1/unwrap/batch", post(unwrap_batch))
            .route("/v1/me/audit", get(my_audit))
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
            .layer(middleware::from_fn_with_state(self.clone(), track))
            .with_state(self.clone())
    }

    /// Whether the audit writer thread is running; the server must not go on without it.
    pub fn writer_running(&self) -> bool {
        self.writer.is_running()
    }

    /// Commit what the audit writer holds and stop it; unwraps are refused afterwards.
    pub fn shutdown(&self) {
        self.writer.shutdown();
    }

    /// Check an API token (`kluis_…`) against the store.
    fn authenticate_token(&self, store: &SqliteStore, bearer: &str) -> Result<Principal, ApiError> {
        store.authenticate(bearer, now_ms())?.ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "the token is unknown, revoked or expired: ask for a new one",
            )
        })
    }

    /// Check a bearer token that is not an API token (an OpenID Connect JWT), without a
    /// store connection: a slow identity provider must never hold one.
    fn authenticate_jwt(&self, bearer: &str) -> Result<Principal, ApiError> {
        let unauth = |m: String| ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", m);
        match &self.oidc {
            Some(oidc) => oidc.verify(bearer, now_ms() / 1000).map_err(|e| match e {
                VerifyError::Invalid(m) => unauth(m),
                VerifyError::Unavailable(m) => {
                    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "idp_unavailable", m)
                        .retry_after(Duration::from_secs(30))
                }
            }),
            None => Err(unauth(
                "not a kluis API token (this server accepts no OpenID Connect tokens)".into(),
            )),
        }
    }
}

/// Time every request out, and count it.
async fn track(State(api): State<Arc<Api>>, req: Request, next: Next) -> Response {
    let route = route_name(req.uri().path());
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

impl From<ServerError> for ApiError {
    fn from(e: ServerError) -> Self {
        match e {
            ServerError::UnknownLabel(_) | ServerError::UnknownVersion { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            ServerError::Destroyed { destroyed_ms, .. } => ApiError {
                destroyed_ms,
                ..ApiError::new(StatusCode::GONE, "destroyed", e.to_string())
            },
            // Never leak store internals to callers.
            _ => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the key server failed; its operators can find details in its log",
            ),
        }
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
async fn blocking<T: Send + 'static>(
    api: &Arc<Api>,
    f: impl FnOnce(&Api, &mut SqliteStore) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let api = api.clone();
    tokio::task::spawn_blocking(move || api.readers.with(|store| f(&api, store)))
        .await
        .map_err(|_| ServerError::Init("a request task failed"))?
}

/// Who is calling: an API token still to be checked against the store, or the principal of a
/// JWT already verified (without a store connection).
enum Caller {
    ApiToken(String),
    Verified(Principal),
}

impl Caller {
    /// Tell an API token from a JWT; a JWT is verified here, on a blocking thread that holds no store
    /// connection (verification never waits for the identity provider, see
    /// [`TokenVerifier::verify`]).
    async fn of(api: &Arc<Api>, token: String) -> Result<Caller, ApiError> {
        if token.starts_with("kluis_") {
            return Ok(Caller::ApiToken(token));
        }
        let api = api.clone();
        tokio::task::spawn_blocking(move || api.authenticate_jwt(&token))
            .await
            .map_err(|_| ServerError::Init("a request task failed"))?
            .map(Caller::Verified)
    }

    /// The principal: an API token is looked up on `store`.
    fn principal(&self, api: &Api, store: &SqliteStore) -> Result<Principal, ApiError> {
        match self {
            Caller::ApiToken(token) => api.authenticate_token(store, token),
            Caller::Verified(p) => Ok(p.clone()),
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

async fn readyz(State(api): State<Arc<Api>>) -> Response {
    let store_ok = matches!(blocking(&api, |_, s| Ok(s.is_reachable())).await, Ok(true));
    if store_ok && api.writer.is_running() {
        "ready\n".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n").into_response()
    }
}

async fn metrics(State(api): State<Arc<Api>>) -> Response {
    let mut r = api.metrics.render(&api.writer).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

async fn labels(State(api): State<Arc<Api>>) -> Result<Response, ApiError> {
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
async fn label_record(
    State(api): State<Arc<Api>>,
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

/// Why the caller unwraps: retired versions open only for re-keying.
#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Purpose {
    #[default]
    Open,
    Rekey,
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
fn parse_item(item: &Item) -> Result<(DocId, kluis_core::OrgStanza), ApiError> {
    let mut id = [0u8; 16];
    hex::decode_to_slice(&item.doc_id, &mut id)
        .map_err(|_| ApiError::bad("doc_id must be 32 hex digits"))?;
    if item.stanza.len() > 4096 {
        return Err(ApiError::bad("stanza too long"));
    }
    let bytes = B64
        .decode(&item.stanza)
        .map_err(|_| ApiError::bad("stanza must be base64"))?;
    match Stanza::from_bytes(&bytes) {
        Ok(Stanza::Org(o)) => Ok((DocId(id), o)),
        Ok(_) => Err(ApiError::bad(
            "only org (label) stanzas can be unwrapped here",
        )),
        Err(_) => Err(ApiError::bad("stanza: not a valid kluis stanza")),
    }
}

/// Authorise, unwrap and record one item. The audit entry is returned for the caller to
/// commit (in one transaction with the rest of the batch) before any share is released.
/// Label records and unsealed label keys, looked up once per request rather than once per
/// item (the store lock is held for the whole request, so they cannot change meanwhile).
#[derive(Default)]
struct Lookups {
    labels: HashMap<String, Result<LabelInfo, ApiError>>,
    keys: HashMap<(String, u32), Result<(LabelKey, VersionState), ApiError>>,
}

impl Lookups {
    fn label(&mut self, store: &SqliteStore, name: &str) -> Result<&LabelInfo, ApiError> {
        self.labels
            .entry(name.to_owned())
            .or_insert_with(|| store.label(name).map_err(ApiError::from))
            .as_ref()
            .map_err(Clone::clone)
    }

    fn key(
        &mut self,
        store: &SqliteStore,
        name: &str,
        kid: u32,
    ) -> Result<&(LabelKey, VersionState), ApiError> {
        self.keys
            .entry((name.to_owned(), kid))
            .or_insert_with(|| store.label_key(name, kid).map_err(ApiError::from))
            .as_ref()
            .map_err(Clone::clone)
    }
}

fn unwrap_item(
    store: &SqliteStore,
    lookups: &mut Lookups,
    who: &Principal,
    purpose: Purpose,
    doc_id: &DocId,
    stanza: &kluis_core::OrgStanza,
    base: &AuditEntry,
) -> (Result<kluis_core::Share, ApiError>, AuditEntry) {
    let mut entry = base.clone();
    entry.label = Some(stanza.label().to_owned());
    entry.kid = Some(stanza.kid());
    entry.doc_id = Some(doc_id.to_string());
    let result = (|| {
        let label = lookups.label(store, stanza.label())?;
        if !label.policy.allows(&who.user, &who.groups) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "denied",
                format!(
                    "you may not open documents labelled `{}`; ask the label's owner",
                    stanza.label()
                ),
            ));
        }
        if label.policy.double_key && stanza.slot_kind() != SlotKind::Half {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "double_key_required",
                format!(
                    "label `{}` requires double key; this document was sealed with one key",
                    stanza.label()
                ),
            ));
        }
        // Only now, authorised, the key operation.
        let (key, state) = lookups.key(store, stanza.label(), stanza.kid())?;
        if *state == VersionState::Retired && purpose != Purpose::Rekey {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "retired",
                "this key version is retired: it opens only to re-key (purpose \"rekey\")",
            ));
        }
        key.unwrap_stanza(doc_id, stanza).map_err(|_| {
            ApiError::bad("the stanza does not authenticate for this document and key version")
        })
    })();
    entry.outcome = match &result {
        Ok(_) => "granted".to_owned(),
        Err(e) => e.code.to_owned(),
    };
    (result, entry)
}

fn base_entry(who: &Principal, client: SocketAddr, reason: Option<String>) -> AuditEntry {
    AuditEntry {
        time_ms: now_ms(),
        actor: who.user.clone(),
        action: "unwrap".to_owned(),
        label: None,
        kid: None,
        doc_id: None,
        outcome: String::new(),
        reason,
        client: Some(client.ip().to_string()),
        credential: Some(who.credential.clone()),
    }
}

/// A request authorised and unwrapped, waiting for its audit records to be committed.
struct Unwrapped {
    sealer: ReplySealer,
    results: Vec<Result<(DocId, Share), ApiError>>,
    entries: Vec<AuditEntry>,
}

/// The common body of both unwrap requests.
struct Common {
    reply_key: String,
    reason: Option<String>,
    purpose: Purpose,
    items: Vec<Item>,
}

/// Authenticate, then read the request, rate limit, authorise and unwrap every item. No
/// share leaves this function except inside [`Unwrapped`], which is released only after its
/// audit records are committed.
fn authorise_and_unwrap(
    api: &Api,
    store: &mut SqliteStore,
    caller: &Caller,
    client: SocketAddr,
    body: &Result<Bytes, ApiError>,
    batch: bool,
) -> Result<Unwrapped, ApiError> {
    // Authentication comes before even looking at the request body.
    let who = caller.principal(api, store)?;
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
    api.limiter
        .check(&who.user, req.items.len() as f64)
        .map_err(|wait| {
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
    let mut base = base_entry(&who, client, reason(req.reason)?);
    if req.purpose == Purpose::Rekey {
        base.action = "unwrap.rekey".to_owned();
    }
    let mut lookups = Lookups::default();
    let mut results = Vec::with_capacity(req.items.len());
    let mut entries = Vec::with_capacity(req.items.len());
    for item in &req.items {
        match parse_item(item) {
            Ok((doc_id, stanza)) => {
                let (res, entry) = unwrap_item(
                    store,
                    &mut lookups,
                    &who,
                    req.purpose,
                    &doc_id,
                    &stanza,
                    &base,
                );
                entries.push(entry);
                results.push(res.map(|share| (doc_id, share)));
            }
            Err(e) => results.push(Err(e)),
        }
    }
    api.metrics
        .items(entries.iter().map(|e| e.outcome.as_str()));
    Ok(Unwrapped {
        sealer,
        results,
        entries,
    })
}

/// Unwrap, commit the audit records, then seal the shares to the caller.
/// Returns `S` and, per item, a sealed share or why not.
async fn unwrap_common(
    api: Arc<Api>,
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
    // A JWT is verified before a store connection is taken; an API token is then checked.
    let caller = Caller::of(&api, token).await?;
    authenticate_first(&api, &caller).await?;
    let body = Bytes::from_request(req, &()).await.map_err(body_error);
    let arriving = api.writer.arriving();
    // One item is two X25519 operations and a few indexed reads (about 0.1 ms): cheaper
    // done here than handed to a blocking thread and back. Batches and a busy pool go to a
    // blocking thread.
    let inline = (!batch)
        .then(|| {
            api.readers
                .try_with(|store| authorise_and_unwrap(&api, store, &caller, client, &body, batch))
        })
        .flatten();
    let Unwrapped {
        mut sealer,
        results,
        entries,
    } = match inline {
        Some(done) => done?,
        None => {
            blocking(&api, move |api, store| {
                authorise_and_unwrap(api, store, &caller, client, &body, batch)
            })
            .await?
        }
    };
    // Durable before anything leaves: if the audit cannot be written, nothing is released.
    if !entries.is_empty() {
        api.writer.append(entries, arriving).await.map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "audit_unavailable",
                "the key server cannot write its audit trail, so it releases no keys; try again later",
            )
        })?;
    }
    let sealed = results
        .into_iter()
        .map(|r| r.map(|(doc_id, share)| sealer.seal(&doc_id, &share)))
        .collect();
    Ok((sealer.server_public(), sealed))
}

async fn unwrap_one(
    State(api): State<Arc<Api>>,
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

async fn unwrap_batch(
    State(api): State<Arc<Api>>,
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
/// not read yet); an API token is checked on this thread when a store connection is free.
async fn authenticate_first(api: &Arc<Api>, caller: &Caller) -> Result<(), ApiError> {
    let Caller::ApiToken(token) = caller else {
        // A JWT was verified when the caller was identified.
        return Ok(());
    };
    if let Some(done) = api
        .readers
        .try_with(|store| api.authenticate_token(store, token).map(|_| ()))
    {
        return done;
    }
    let token = token.clone();
    blocking(api, move |api, store| {
        api.authenticate_token(store, &token).map(|_| ())
    })
    .await
}

/// A body the server could not read: too large (413) or cut off (400).
fn body_error(e: BytesRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "the request body is too large; send fewer items per batch",
        )
    } else {
        ApiError::bad("the request body could not be read")
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
async fn my_audit(
    State(api): State<Arc<Api>>,
    page: Result<Query<Page>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let token = bearer(&headers)?;
    let caller = Caller::of(&api, token).await?;
    let records = blocking(&api, move |api, store| {
        let who = caller.principal(api, store)?;
        let Query(page) = page.map_err(|_| {
            ApiError::bad("query: only `after` (a sequence number) and `limit` (1-1000)")
        })?;
        let limit = page.limit.unwrap_or(1000).clamp(1, 1000);
        Ok(store.audit_page(Some(&who.user), page.after, limit)?)
    })
    .await?;
    Ok(json_response(&records))
}
