//! The Microsoft Double Key Encryption routes (`[dke]`), as Office calls them:
//!
//! - `GET {prefix}/{keyName}`: no authentication; the current public key as a JWK, its `kid`
//!   the service origin, the request's path (no query) and the key id, and `cache.exp`;
//! - `POST {prefix}/{keyName}/{keyId}/decrypt` (`decrypt` in any letter case): an Entra ID
//!   bearer token and `{"alg":"RSA-OAEP-256","value":"<base64>"}`; answers `{"value":...}`.
//!
//! Authentication comes before anything else of a decrypt; a missing or invalid token gets
//! 401 with the challenge Office follows to get a token. Refusals: 403 when the label's policy
//! denies (or the version is retired), 400 for every bad input (unknown key or key id,
//! destroyed key, wrong or missing `alg` or `value`, and, with one message, every ciphertext
//! that does not decrypt). The handlers only translate; the decision and the audit record are
//! the service's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use super::{Api, ApiError, DECISIONS, access_changing, bearer, blocking, json_response};
use crate::dke::{DkeSettings, cache_exp, jwk_parts, key_id};
use crate::service::auth::{TokenVerifier, VerifyError};
use crate::service::dke::DkeRequest;
use crate::service::unwrap::{Admitted, Refusal};
use crate::service::writer::{NotCommitted, STALE_OUTCOME};
use crate::store::{Principal, Store};
use crate::time::now_ms;

/// The largest decrypt body read, in bytes (an RSA-2048 request is about 400).
const MAX_BODY: usize = 16 * 1024;

/// The DKE routes, when configured.
pub(super) fn routes<S: Store>(
    api: &Arc<Api<S>>,
    router: Router<Arc<Api<S>>>,
) -> Router<Arc<Api<S>>> {
    let Some(dke) = &api.dke else {
        return router;
    };
    router
        .route(&format!("{}/{{name}}", dke.prefix), get(public_key::<S>))
        .route(
            &format!("{}/{{name}}/{{key_id}}/{{action}}", dke.prefix),
            post(decrypt::<S>),
        )
}

/// The metrics route of a DKE path, if it is one.
pub(super) fn route_name<S>(api: &Api<S>, path: &str) -> Option<&'static str> {
    let rest = path.strip_prefix(api.dke.as_ref()?.prefix.as_str())?;
    let rest = rest.strip_prefix('/')?;
    match rest.split('/').count() {
        1 => Some("dke_key"),
        3 => Some("dke_decrypt"),
        _ => None,
    }
}

/// The challenge Office follows to get a token: 401 with `WWW-Authenticate` and the plain
/// `resource` and `authorization` headers, as Microsoft's reference service sends them.
fn challenge(dke: &DkeSettings, message: String) -> Response {
    let mut r = ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", message).into_response();
    let value = format!(
        "Bearer resource=\"{a}\", authorization=\"{z}\", realm=\"{a}\"",
        a = dke.audience,
        z = dke.authorization
    );
    // The values were checked to be header-safe when the configuration was read.
    if let (Ok(v), Ok(a), Ok(z)) = (
        HeaderValue::from_str(&value),
        HeaderValue::from_str(&dke.audience),
        HeaderValue::from_str(&dke.authorization),
    ) {
        let h = r.headers_mut();
        h.insert(header::WWW_AUTHENTICATE, v);
        h.insert("resource", a);
        h.insert(header::AUTHORIZATION, z);
    }
    r
}

/// The HTTP status of a refused decrypt.
fn refusal(r: Refusal) -> Response {
    let status = match r.code {
        "denied" | "retired" => StatusCode::FORBIDDEN,
        "internal" => StatusCode::INTERNAL_SERVER_ERROR,
        "store_unavailable" => {
            return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, r.code, r.message)
                .retry_after(Duration::from_secs(5))
                .into_response();
        }
        // Bad input, of whatever kind: unknown or destroyed key, bad body, no decryption.
        _ => StatusCode::BAD_REQUEST,
    };
    ApiError::new(status, r.code, r.message).into_response()
}

/// The origin key ids start with: the configured one, or the listener's scheme and the
/// request's `Host`.
fn origin(dke: &DkeSettings, headers: &HeaderMap) -> Option<String> {
    if let Some(url) = &dke.url {
        return Some(url.clone());
    }
    let host = headers.get(header::HOST)?.to_str().ok()?;
    let ok = !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
    let scheme = if dke.tls { "https" } else { "http" };
    ok.then(|| format!("{scheme}://{host}"))
}

/// `GET {prefix}/{keyName}`: the current public key, no authentication.
async fn public_key<S: Store>(
    State(api): State<Arc<Api<S>>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    name: Result<Path<String>, PathRejection>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Some(dke) = api.dke.as_ref() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no DKE service here",
        ));
    };
    // Unauthenticated: limited per client address.
    api.limiter
        .check(&format!("dke-key:{}", client.ip()), 1.0)
        .map_err(|wait| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many key requests from this address; slow down",
            )
            .retry_after(wait)
        })?;
    let Path(name) = name.map_err(|_| ApiError::bad("the key name is not valid UTF-8"))?;
    let origin = origin(dke, &headers)
        .ok_or_else(|| ApiError::bad("the request has no usable Host header"))?;
    let unknown = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "not_found",
            "no DKE key of that name (names are case-sensitive)",
        )
    };
    let (kid, public, rotation_ms) = blocking(&api, move |_, s| {
        let Some((kid, public)) = s.dke_public_key(&name)? else {
            return Ok(None);
        };
        // When the label rotates on a schedule: when this version is due to stop sealing.
        let label = s.label(&name)?;
        let due = match (label.policy.rotation_secs, label.current()) {
            (Some(every), Some(v)) if v.kid == kid => v
                .created_ms
                .saturating_add(i64::try_from(every.saturating_mul(1000)).unwrap_or(i64::MAX)),
            (Some(_), _) => 0, // rotated meanwhile: not to be cached
            (None, _) => i64::MAX,
        };
        Ok(Some((kid, public, due)))
    })
    .await?
    .ok_or_else(unknown)?;
    let (n, e) = jwk_parts(&public)?;
    let cache_ms = i64::try_from(dke.key_cache_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    // Office seals new documents under this key, offline, until `cache.exp`: never past the
    // version's scheduled rotation, so that no document is sealed under a version after it
    // was rotated out (retention counts from then).
    let now = now_ms();
    let exp = now.saturating_add(cache_ms).min(rotation_ms.max(now));
    let body = json!({
        "key": {
            "kty": "RSA",
            "n": n,
            "e": e,
            "alg": "RS256",
            // The request's own path (the query left off), as the reference service does.
            "kid": format!("{origin}{}/{}", uri.path(), key_id(kid, &public)),
        },
        "cache": { "exp": cache_exp(exp) },
    });
    Ok(json_response(&body))
}

/// Who the bearer token names: an Entra ID token checked by the DKE verifier. Anything else
/// is answered with the challenge.
async fn principal<S: Store>(
    api: &Arc<Api<S>>,
    headers: &HeaderMap,
) -> Result<Principal, Response> {
    let dke = api
        .dke
        .as_ref()
        .ok_or_else(|| StatusCode::NOT_FOUND.into_response())?;
    let token = bearer(headers).map_err(|e| challenge(dke, e.message))?;
    if !crate::service::auth::Caller::needs_verifier(&token) {
        return Err(challenge(
            dke,
            "the DKE service takes Entra ID tokens only, not kluis API tokens".into(),
        ));
    }
    // Verified here, on the request's own thread: a signature check (tens of µs) and no I/O
    // (the verifier reloads keys in the background); a hand-over to a blocking thread and
    // back costs more than that under load.
    match TokenVerifier::verify(&*dke.verifier, &token, now_ms() / 1000) {
        Ok(p) => Ok(p),
        Err(VerifyError::Invalid(m)) => Err(challenge(dke, m)),
        Err(VerifyError::Unavailable(m)) => {
            Err(
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "idp_unavailable", m)
                    .retry_after(Duration::from_secs(30))
                    .into_response(),
            )
        }
    }
}

/// The body's `alg` and `value`, or why the body is not a JSON object of strings there.
pub(crate) fn parse_body(body: &[u8]) -> (Option<String>, Option<String>, Option<String>) {
    let Ok(Value::Object(o)) = serde_json::from_slice::<Value>(body) else {
        return (None, None, Some("the body must be a JSON object".into()));
    };
    // Member names as Microsoft's reference service (Newtonsoft.Json) matches them: the exact
    // name, else the one member of that name in another letter case (two are ambiguous).
    let get = |k: &str| -> Result<Option<&Value>, String> {
        if let Some(v) = o.get(k) {
            return Ok(Some(v));
        }
        let mut others = o.iter().filter(|(name, _)| name.eq_ignore_ascii_case(k));
        match (others.next(), others.next()) {
            (Some((_, v)), None) => Ok(Some(v)),
            (None, _) => Ok(None),
            (Some(_), Some(_)) => Err(format!("`{k}` is given twice, in different letter cases")),
        }
    };
    let field = |k: &str| match get(k)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("`{k}` must be a string")),
    };
    match (field("alg"), field("value")) {
        (Ok(alg), Ok(value)) => (alg, value, None),
        (Err(m), _) | (_, Err(m)) => (None, None, Some(m)),
    }
}

/// `POST {prefix}/{keyName}/{keyId}/decrypt`.
async fn decrypt<S: Store>(
    State(api): State<Arc<Api<S>>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    headers: HeaderMap,
    req: Request,
) -> Response {
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such endpoint: see docs/DKE.md",
        )
        .into_response()
    };
    let Ok(Path((name, key_id, action))) = path else {
        return not_found();
    };
    if !action.eq_ignore_ascii_case("decrypt") {
        return not_found();
    }
    // The access epoch the decrypt is decided under, taken before its first store read.
    let mut observed = api.writer.observe();
    // Authentication before anything else: the body is not read, no key is looked up.
    let who = match principal(&api, &headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let identity = who.user.clone();
    let admitted = match Admitted::admit(&api.limiter, who, 1) {
        Ok(a) => a,
        Err(wait) => {
            return ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many decrypts for this identity; slow down",
            )
            .retry_after(wait)
            .into_response();
        }
    };
    // Held, within the server's body budget, until the answer is made.
    let (alg, value, malformed, _held) =
        match super::read_body(&api, &identity, req, MAX_BODY).await {
            Ok((body, held)) => {
                let (alg, value, malformed) = parse_body(&body);
                (alg, value, malformed, Some(held))
            }
            Err(e) if e.is_busy() => return e.into_response(),
            Err(_) => (
                None,
                None,
                Some("the body could not be read or is larger than 16 KiB".into()),
                None,
            ),
        };
    let request = DkeRequest {
        label: name,
        key_id,
        alg,
        value,
        malformed,
        client: client.ip().to_string(),
    };
    let mut admitted = Some(admitted);
    for decision in 1..=DECISIONS {
        let arriving = api.writer.arriving();
        // One RSA-2048 decryption (a few hundred µs of CPU) and a few indexed reads: done here
        // when a store connection is free and the store reads locally (SQLite), as a single
        // unwrap is, which on a busy server saves two thread hand-overs per request; otherwise
        // (a network store such as PostgreSQL, whose reads may wait for the database) on a
        // blocking thread.
        let inline = S::LOCAL_READS
            .then(|| {
                api.readers.try_with(|store| {
                    let a = admitted.as_ref()?;
                    Some(store.dke_decrypt(a, request.clone(), observed))
                })
            })
            .flatten()
            .flatten();
        let pending = match (inline, admitted.take()) {
            (Some(p), a) => {
                admitted = a;
                p
            }
            (None, Some(a)) => {
                let request = request.clone();
                match blocking(&api, move |_, store| {
                    let p = store.dke_decrypt(&a, request, observed);
                    Ok((p, a))
                })
                .await
                {
                    Ok((p, a)) => {
                        admitted = Some(a);
                        p
                    }
                    Err(e) => return e.into_response(),
                }
            }
            (None, None) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        };
        let outcome = pending.outcome().to_owned();
        // Durable before anything leaves: if the audit cannot be written, nothing is released.
        let last = decision == DECISIONS;
        let committed = match api.writer.commit_dke(pending.last(last), arriving).await {
            Ok(c) => c,
            Err(NotCommitted::Unavailable) => {
                api.metrics.dke(&outcome);
                return ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "audit_unavailable",
                    "the key server cannot write its audit trail, so it decrypts nothing; try again later",
                )
                .into_response();
            }
            // Access may have been withdrawn since this decision (the caller's JWT stands):
            // decide again, without charging the rate limiter again.
            Err(NotCommitted::Stale) if decision < DECISIONS => {
                observed = api.writer.observe();
                continue;
            }
            // The last decision: recorded, a grant as refused; nothing released.
            Err(NotCommitted::Stale) => {
                api.metrics.dke(match outcome.as_str() {
                    "granted" => STALE_OUTCOME,
                    o => o,
                });
                break;
            }
        };
        api.metrics.dke(&outcome);
        return match committed.release() {
            Ok(plain) => json_response(&json!({ "value": B64.encode(plain.as_slice()) })),
            Err(r) => refusal(r),
        };
    }
    access_changing().into_response()
}
