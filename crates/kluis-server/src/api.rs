//! The HTTP API, `/v1`: public label records, unwrap and batch unwrap, the caller's own audit
//! events, and health checks.
//!
//! Every unwrap is authenticated and authorised before any key operation, and its audit record
//! is committed before the (sealed) share leaves the server.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use kluis_core::reply::ReplySealer;
use kluis_core::{DocId, LabelKey, SlotKind, Stanza};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::audit::AuditEntry;
use crate::error::ServerError;
use crate::sqlite::{SqliteStore, now_ms};
use crate::store::{LabelInfo, Principal, Store, VersionState};

/// Server settings that the API needs.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// The most items one batch unwrap may carry.
    pub max_batch: usize,
    /// How long clients may cache a public label record, in seconds.
    pub record_max_age: u32,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            max_batch: 1000,
            record_max_age: 3600,
        }
    }
}

struct App {
    store: Mutex<SqliteStore>,
    config: ApiConfig,
}

/// The router, ready to serve.
pub fn router(store: SqliteStore, config: ApiConfig) -> Router {
    let app = Arc::new(App {
        store: Mutex::new(store),
        config,
    });
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/v1/labels", get(labels))
        .route("/v1/labels/{name}", get(label_record))
        .route("/v1/unwrap", post(unwrap_one))
        .route("/v1/unwrap/batch", post(unwrap_batch))
        .route("/v1/me/audit", get(my_audit))
        .layer(DefaultBodyLimit::max(1024 * 1024))
        .with_state(app)
}

/// An API error: JSON `{code, message}` with its status.
#[derive(Clone)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "malformed", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "code": self.code, "message": self.message }).to_string();
        let mut r = (self.status, body).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
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
            ServerError::Destroyed { .. } => {
                ApiError::new(StatusCode::GONE, "destroyed", e.to_string())
            }
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

/// Run blocking store work off the async threads.
async fn blocking<T: Send + 'static>(
    app: &Arc<App>,
    f: impl FnOnce(&mut SqliteStore, &ApiConfig) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let app = app.clone();
    tokio::task::spawn_blocking(move || {
        let mut store = app.store.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut store, &app.config)
    })
    .await
    .map_err(|_| ServerError::Init("a request task failed"))?
}

fn bearer(headers: &HeaderMap) -> Result<String, ApiError> {
    let unauth = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", m);
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| unauth("send `Authorization: Bearer <token>`"))?;
    let value = value
        .to_str()
        .map_err(|_| unauth("the Authorization header is not text"))?;
    value
        .strip_prefix("Bearer ")
        .map(str::to_owned)
        .ok_or_else(|| unauth("use the Bearer scheme"))
}

fn authenticate(store: &SqliteStore, token: &str) -> Result<Principal, ApiError> {
    store.authenticate(token, now_ms())?.ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "the token is unknown, revoked or expired",
        )
    })
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    match blocking(&app, |s, _| Ok(s.labels().is_ok())).await {
        Ok(true) => "ready\n".into_response(),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n").into_response(),
    }
}

async fn labels(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    let list = blocking(&app, |s, _| {
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
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let (record, max_age) = blocking(&app, move |s, c| {
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
            .map(|v| json!({ "kid": v.kid, "state": v.state, "public_key": v.public_key }))
            .collect();
        Ok((
            json!({
                "label": l.name,
                "kid": current.kid,
                "public_key": current.public_key,
                "double_key": l.policy.double_key,
                "recovery": l.policy.recovery,
                "versions": versions,
                "max_age": c.record_max_age,
            }),
            c.record_max_age,
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
        Some(r) if r.len() > 1024 || r.chars().any(char::is_control) => Err(ApiError::bad(
            "reason must be at most 1024 printable characters",
        )),
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
        Err(e) => Err(ApiError::bad(format!("stanza: {e}"))),
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
    }
}

/// The server's reply key `S` and, per item, a sealed share or why not.
type Sealed = (
    [u8; 32],
    Vec<Result<kluis_core::reply::SealedShare, ApiError>>,
);

/// For an authenticated caller: authorise, unwrap and audit every item; the audit records of the whole
/// request are committed in one transaction before any share is sealed to the caller.
/// Returns `S` and one sealed share or error per item.
fn unwrap_many(
    store: &mut SqliteStore,
    who: &Principal,
    client: SocketAddr,
    reply_key_b64: &str,
    reason_text: Option<String>,
    purpose: Purpose,
    items: &[Item],
) -> Result<Sealed, ApiError> {
    let r = reply_key(reply_key_b64)?;
    let mut sealer =
        ReplySealer::new(&r).map_err(|_| ApiError::bad("reply_key is a low-order point"))?;
    let base = base_entry(who, client, reason(reason_text)?);
    let mut lookups = Lookups::default();
    let mut results = Vec::with_capacity(items.len());
    let mut entries = Vec::with_capacity(items.len());
    for item in items {
        match parse_item(item) {
            Ok((doc_id, stanza)) => {
                let (res, entry) =
                    unwrap_item(store, &mut lookups, who, purpose, &doc_id, &stanza, &base);
                entries.push(entry);
                results.push(res.map(|share| (doc_id, share)));
            }
            Err(e) => results.push(Err(e)),
        }
    }
    // Durable before anything leaves: if the audit cannot be written, nothing is released.
    store.append_audit(&entries)?;
    let sealed = results
        .into_iter()
        .map(|r| r.map(|(doc_id, share)| sealer.seal(&doc_id, &share)))
        .collect();
    Ok((sealer.server_public(), sealed))
}

async fn unwrap_one(
    State(app): State<Arc<App>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let token = bearer(&headers)?;
    blocking(&app, move |store, _| {
        // Authentication comes before even reading the request.
        let who = authenticate(store, &token)?;
        let req: UnwrapRequest = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad(format!("request body: {e}")))?;
        let items = [req.item];
        let (server_key, mut sealed) = unwrap_many(
            store,
            &who,
            client,
            &req.reply_key,
            req.reason,
            req.purpose,
            &items,
        )?;
        let s = sealed.pop().expect("one result per item")?;
        Ok(json_response(&json!({
            "server_key": B64.encode(server_key),
            "nonce": B64.encode(s.nonce),
            "share": B64.encode(s.body),
        })))
    })
    .await
}

async fn unwrap_batch(
    State(app): State<Arc<App>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let token = bearer(&headers)?;
    blocking(&app, move |store, config| {
        // Authentication comes before even reading the request.
        let who = authenticate(store, &token)?;
        let req: BatchRequest = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad(format!("request body: {e}")))?;
        if req.items.is_empty() || req.items.len() > config.max_batch {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "batch_size",
                format!("a batch holds 1 to {} items", config.max_batch),
            ));
        }
        let (server_key, sealed) = unwrap_many(
            store,
            &who,
            client,
            &req.reply_key,
            req.reason,
            req.purpose,
            &req.items,
        )?;
        let items: Vec<_> = sealed
            .into_iter()
            .map(|r| match r {
                Ok(s) => json!({ "nonce": B64.encode(s.nonce), "share": B64.encode(s.body) }),
                Err(e) => json!({ "error": { "code": e.code, "message": e.message } }),
            })
            .collect();
        Ok(json_response(&json!({
            "server_key": B64.encode(server_key),
            "items": items,
        })))
    })
    .await
}

/// The caller's own recorded openings (employees may see what is recorded under their name).
async fn my_audit(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Response, ApiError> {
    let token = bearer(&headers)?;
    let records = blocking(&app, move |store, _| {
        let who = authenticate(store, &token)?;
        Ok(store.audit_records(Some(&who.user))?)
    })
    .await?;
    Ok(json_response(&records))
}
