//! The audit trail: records chained with HMAC-SHA-256 under a key derived from the master key.
//!
//! Each record's MAC covers the previous record's MAC and every field, so an edited, deleted,
//! inserted or reordered record breaks the chain. The store also keeps a MAC over the head
//! (last sequence number and MAC), so cutting records off the end is detected too; only a
//! rollback to a head someone saved earlier needs an external anchor (publish the head that
//! `audit verify` prints).

use ring::hmac;
use serde::Serialize;

/// One audit event, as the server records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    /// Milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// Who, namespaced by where the identity comes from (see [`crate::store::Principal`]): an
    /// API-token user `alice`, an OpenID Connect user `oidc:<issuer name>:<user>`, an
    /// administrator `admin:<os user>`, or the server itself (`scheduler`).
    pub actor: String,
    /// What: `unwrap`, `label.create`, `label.rotate`, `token.revoke`, ...
    pub action: String,
    /// The label concerned, if any.
    pub label: Option<String>,
    /// The key version concerned, if any.
    pub kid: Option<u32>,
    /// The document, for unwraps (hex doc_id).
    pub doc_id: Option<String>,
    /// `granted`, `denied`, `ok`, ...
    pub outcome: String,
    /// The reason the caller stated.
    pub reason: Option<String>,
    /// The client's address.
    pub client: Option<String>,
    /// Which credential acted: `token:<public token id>`, `oidc:<issuer name>:<sub>[#<jti>]`,
    /// `admin-cli:<os user>` or `server:<task>`. `None` only in records written before
    /// kluis-server recorded credentials.
    pub credential: Option<String>,
}

/// A stored audit record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    /// Sequence number, from 1, without gaps.
    pub seq: i64,
    /// The event.
    #[serde(flatten)]
    pub entry: AuditEntry,
    /// The chain MAC (hex in exports).
    #[serde(serialize_with = "as_hex")]
    pub mac: Vec<u8>,
}

fn as_hex<S: serde::Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(b))
}

fn field(out: &mut Vec<u8>, v: &[u8]) {
    out.extend_from_slice(&(v.len() as u32).to_be_bytes());
    out.extend_from_slice(v);
}

fn opt(out: &mut Vec<u8>, v: Option<&[u8]>) {
    match v {
        None => out.push(0),
        Some(v) => {
            out.push(1);
            field(out, v);
        }
    }
}

/// `HMAC(K_audit, prev_mac ‖ BE64(seq) ‖ BE64(time) ‖ fields…)`, each variable field
/// length-prefixed and each optional one tagged.
pub(crate) fn chain_mac(key: &hmac::Key, prev: &[u8], seq: i64, e: &AuditEntry) -> Vec<u8> {
    let mut m = Vec::with_capacity(256);
    field(&mut m, prev);
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(&e.time_ms.to_be_bytes());
    field(&mut m, e.actor.as_bytes());
    field(&mut m, e.action.as_bytes());
    opt(&mut m, e.label.as_deref().map(str::as_bytes));
    opt(&mut m, e.kid.map(u32::to_be_bytes).as_ref().map(|k| &k[..]));
    opt(&mut m, e.doc_id.as_deref().map(str::as_bytes));
    field(&mut m, e.outcome.as_bytes());
    opt(&mut m, e.reason.as_deref().map(str::as_bytes));
    opt(&mut m, e.client.as_deref().map(str::as_bytes));
    // The credential was added later. Records written before it (credential `None`) keep
    // their original MAC input, so they still verify; a record with a credential appends it as
    // one more length-prefixed field. This stays unambiguous: the encoding above is
    // self-delimiting (fixed-size integers, length-prefixed fields, tagged options), so the
    // old input is parsed to its exact end and cannot equal a new input, which has bytes
    // after that point. Clearing or adding a credential in the database therefore breaks the
    // chain like any other edit.
    if let Some(c) = &e.credential {
        field(&mut m, c.as_bytes());
    }
    hmac::sign(key, &m).as_ref().to_vec()
}

/// The credential recorded for an administrative change made under `actor`: the admin CLI
/// (`admin:<os user>` → `admin-cli:<os user>`, the bare `admin` of `init` → `admin-cli`) or the
/// server itself (`scheduler` → `server:scheduler`).
pub(crate) fn admin_credential(actor: &str) -> String {
    match actor.strip_prefix("admin:") {
        Some(user) => format!("admin-cli:{user}"),
        None if actor == "admin" => "admin-cli".to_owned(),
        None => format!("server:{actor}"),
    }
}

/// The MAC over the chain head, stored beside the records.
pub(crate) fn head_mac(key: &hmac::Key, seq: i64, mac: &[u8]) -> Vec<u8> {
    let mut m = b"head".to_vec();
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(mac);
    hmac::sign(key, &m).as_ref().to_vec()
}

/// `e` as every store can keep it: each NUL character (U+0000) replaced with U+FFFD.
/// PostgreSQL's `text` cannot hold a NUL, and one record that a store refuses would fail the
/// whole group commit, so every other request in the group too; the chain's MAC covers the
/// text as stored, so it verifies on every engine (and after `store copy`).
pub(crate) fn storable(e: &AuditEntry) -> std::borrow::Cow<'_, AuditEntry> {
    fn has(s: &str) -> bool {
        s.contains('\0')
    }
    fn clean(s: &mut String) {
        if has(s) {
            *s = s.replace('\0', "\u{FFFD}");
        }
    }
    let texts = [&e.label, &e.doc_id, &e.reason, &e.client, &e.credential];
    if !has(&e.actor)
        && !has(&e.action)
        && !has(&e.outcome)
        && !texts.iter().any(|t| t.as_deref().is_some_and(has))
    {
        return std::borrow::Cow::Borrowed(e);
    }
    let mut e = e.clone();
    for s in [&mut e.actor, &mut e.action, &mut e.outcome] {
        clean(s);
    }
    for s in [
        &mut e.label,
        &mut e.doc_id,
        &mut e.reason,
        &mut e.client,
        &mut e.credential,
    ]
    .into_iter()
    .flatten()
    {
        clean(s);
    }
    std::borrow::Cow::Owned(e)
}

/// The MAC "before" record 1.
pub(crate) const GENESIS: [u8; 32] = [0; 32];
