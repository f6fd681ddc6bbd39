//! The store: rows of labels, key versions, tokens and audit records, one implementation per
//! database engine. A store does no cryptography: sealed label keys, token hashes and audit
//! MACs are opaque bytes to it; [`crate::keyring`] makes and checks them, and
//! [`crate::service`] combines the two.

use serde::Serialize;

use crate::audit::{AuditEntry, AuditRecord};
use crate::error::Result;
use crate::policy::Policy;

/// The life of a key version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VersionState {
    /// Seals new documents (exactly one per label) and opens.
    Current,
    /// Opens only.
    Active,
    /// Opens only for re-keying.
    Retired,
    /// Gone: its documents cannot be opened by anyone.
    Destroyed,
}

impl VersionState {
    /// The state's name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            VersionState::Current => "current",
            VersionState::Active => "active",
            VersionState::Retired => "retired",
            VersionState::Destroyed => "destroyed",
        }
    }

    /// The state named `s`, if it is one.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "current" => VersionState::Current,
            "active" => VersionState::Active,
            "retired" => VersionState::Retired,
            "destroyed" => VersionState::Destroyed,
            _ => return None,
        })
    }
}

/// One key version of a label, public parts only.
#[derive(Clone, Debug, Serialize)]
pub struct VersionInfo {
    /// The key version id.
    pub kid: u32,
    /// Its state.
    pub state: VersionState,
    /// The public key (`kluis1…`), kept after destruction for the record.
    pub public_key: String,
    /// When it was created (ms since the epoch).
    pub created_ms: i64,
    /// When it was destroyed, if it was.
    pub destroyed_ms: Option<i64>,
    /// When it stopped sealing (a rotation made another version current), if it did.
    pub superseded_ms: Option<i64>,
    /// The key id of its Microsoft DKE key, if it has one (see [`crate::dke::key_id`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dke_key_id: Option<String>,
}

/// A change the scheduler made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "change", rename_all = "lowercase")]
pub enum ScheduledChange {
    /// The label was rotated to a new current version `kid`.
    Rotated {
        /// The label.
        label: String,
        /// The new current version.
        kid: u32,
    },
    /// Version `kid` was destroyed because its retention period ended.
    Destroyed {
        /// The label.
        label: String,
        /// The destroyed version.
        kid: u32,
    },
}

/// A label with its policy and versions.
#[derive(Clone, Debug, Serialize)]
pub struct LabelInfo {
    /// The label name.
    pub name: String,
    /// Its policy.
    pub policy: Policy,
    /// Its key versions, oldest first.
    pub versions: Vec<VersionInfo>,
}

impl LabelInfo {
    /// The version that seals new documents.
    pub fn current(&self) -> Option<&VersionInfo> {
        self.versions
            .iter()
            .find(|v| v.state == VersionState::Current)
    }
}

/// An API token, without its secret.
#[derive(Clone, Debug, Serialize)]
pub struct TokenInfo {
    /// The public token id (the token's first characters).
    pub id: String,
    /// The user it authenticates.
    pub user: String,
    /// The groups it carries.
    pub groups: Vec<String>,
    /// When it expires (ms since the epoch), if ever.
    pub expires_ms: Option<i64>,
    /// When it was revoked, if it was.
    pub revoked_ms: Option<i64>,
}

/// Who a valid token authenticates.
///
/// Names are namespaced by where the identity comes from, so that one source can never
/// produce another's name: an API token's user and groups are plain (`alice`, `hr`; they may
/// not contain `:`), an OpenID Connect token's are `oidc:<issuer name>:<user>` and
/// `oidc:<issuer name>:<group>`, the admin CLI acts as `admin:<os user>`. Label policies and
/// the audit trail use these same strings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The namespaced user id (the audit trail's actor).
    pub user: String,
    /// The namespaced groups.
    pub groups: Vec<String>,
    /// The credential that authenticated, for the audit trail: `token:<public token id>` or
    /// `oidc:<issuer name>:<sub>[#<jti>]`.
    pub credential: String,
}

/// One key version row. `sealed_secret` is the label private key sealed at rest by the
/// keyring (opaque here); `None` once the version is destroyed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionRow {
    /// The key version id.
    pub kid: u32,
    /// Its state.
    pub state: VersionState,
    /// The public key (`kluis1…`).
    pub public_key: String,
    /// The sealed private key; `None` exactly when destroyed.
    pub sealed_secret: Option<Vec<u8>>,
    /// When it was created (ms since the epoch).
    pub created_ms: i64,
    /// When it was destroyed, if it was.
    pub destroyed_ms: Option<i64>,
    /// When it stopped sealing, if it did.
    pub superseded_ms: Option<i64>,
    /// The version's Microsoft DKE RSA public key (DER, opaque here), if it has one. It stays
    /// after a destroy, so the key id is still recognised (and refused).
    pub dke_public: Option<Vec<u8>>,
    /// The version's sealed DKE RSA private key; `None` when it has none or is destroyed.
    pub dke_sealed: Option<Vec<u8>>,
}

/// Which of a version's private keys a sealed secret is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretKind {
    /// The X25519 label private key (`sealed_secret`).
    Label,
    /// The Microsoft DKE RSA private key (`dke_sealed`).
    Dke,
}

/// One sealed private key of a version, for re-sealing under a new master key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedRow {
    /// The label.
    pub label: String,
    /// The version.
    pub kid: u32,
    /// Which private key.
    pub kind: SecretKind,
    /// The sealed bytes (opaque here).
    pub sealed: Vec<u8>,
}

impl VersionRow {
    /// The public parts.
    pub fn info(&self) -> VersionInfo {
        VersionInfo {
            kid: self.kid,
            state: self.state,
            public_key: self.public_key.clone(),
            created_ms: self.created_ms,
            destroyed_ms: self.destroyed_ms,
            superseded_ms: self.superseded_ms,
            dke_key_id: self
                .dke_public
                .as_deref()
                .map(|p| crate::dke::key_id(self.kid, p)),
        }
    }
}

/// One API token row. `hash` is the keyring's keyed hash of the token (opaque here).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRow {
    /// The public token id.
    pub id: String,
    /// The keyed hash of the whole token.
    pub hash: Vec<u8>,
    /// The user it authenticates.
    pub user: String,
    /// The groups it carries.
    pub groups: Vec<String>,
    /// When it was issued (ms since the epoch).
    pub created_ms: i64,
    /// When it expires, if ever.
    pub expires_ms: Option<i64>,
    /// When it was revoked, if it was.
    pub revoked_ms: Option<i64>,
}

/// Settings rows kept beside the data (`meta`), by name. Opaque bytes to the store.
pub mod meta {
    /// How the master key is obtained: `file` or `argon2id:<salt hex>`.
    pub const KDF: &str = "kdf";
    /// A known text sealed under the master key, to recognise the right one.
    pub const CHECK: &str = "check";
    /// `BE64(count) ‖ head MAC` of the audit chain.
    pub const AUDIT_HEAD: &str = "audit_head";
    /// `BE64` counter of the changes that can withdraw access (revocations, policy updates,
    /// retired and destroyed versions); absent = 0. See `service::epoch`.
    pub const ACCESS_EPOCH: &str = "access_epoch";
}

/// The key server's storage, one implementation per database engine: rows in, rows out.
///
/// Reads see committed data. Every change goes through [`Store::write`], one transaction:
/// all of it is committed, or (on an error or a crash) none of it. A transaction excludes
/// every other writer of the same store, in this process and in others, for its whole
/// length, so that the audit chain (read its tail, append after it) stays one chain.
pub trait Store: Send + Sized + 'static {
    /// Whether a read is a local call that never waits on a network (SQLite), so that the
    /// API may run a small request's reads on the async runtime's own threads. A store over
    /// the network (PostgreSQL) leaves it `false`: a read may wait for its deadline, and
    /// blocking the runtime's threads would stall every request, `/healthz` included.
    const LOCAL_READS: bool = false;
    /// Another connection to the same store (for a reader pool, the writer, the scheduler).
    fn reopen(&self) -> Result<Self>;
    /// Whether the store answers a query (cheap, for readiness probes).
    fn is_reachable(&self) -> bool;
    /// Run `f`'s reads in one consistent snapshot of the store (nothing committed meanwhile
    /// shows), e.g. the audit records and the stored head together.
    fn snapshot<T>(&self, f: impl FnOnce(&Self) -> Result<T>) -> Result<T>;
    /// Run `f` in one write transaction and commit it if `f` returns `Ok`.
    fn write<T>(&mut self, f: impl FnOnce(&mut dyn StoreTx) -> Result<T>) -> Result<T>;

    /// A `meta` value.
    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// All label names, sorted.
    fn label_names(&self) -> Result<Vec<String>>;
    /// A label's policy (JSON), `None` when there is no such label.
    fn label_policy(&self, name: &str) -> Result<Option<String>>;
    /// A label's versions, oldest first.
    fn versions(&self, label: &str) -> Result<Vec<VersionRow>>;
    /// One version of a label.
    fn version(&self, label: &str, kid: u32) -> Result<Option<VersionRow>>;
    /// One token, by id.
    fn token(&self, id: &str) -> Result<Option<TokenRow>>;
    /// All tokens, oldest first.
    fn tokens(&self) -> Result<Vec<TokenRow>>;
    /// At most `limit` audit records after sequence number `after`, oldest first,
    /// optionally only those of one actor.
    fn audit_page(&self, actor: Option<&str>, after: i64, limit: usize)
    -> Result<Vec<AuditRecord>>;
    /// Audit records, oldest first, with credential exactly `credential`, or (when it holds
    /// no `#`) starting with `credential#`.
    fn audit_by_credential(&self, credential: &str) -> Result<Vec<AuditRecord>>;

    /// After a version was destroyed (committed): remove the engine's old copies of the
    /// row (SQLite: checkpoint and empty the write-ahead log). Fails with
    /// [`crate::ServerError::ScrubPending`] when that must be retried later.
    fn forget_old_copies(&mut self) -> Result<()> {
        Ok(())
    }
    /// Finish a removal of old copies that [`Store::forget_old_copies`] left pending,
    /// waiting up to `patience` for readers; returns whether one was pending. The scheduler
    /// calls it.
    fn forget_pending_copies(&self, patience: std::time::Duration) -> Result<bool> {
        let _ = patience;
        Ok(false)
    }
    /// Whether this connection leads the scheduler (taking the lead if no other process holds
    /// it). Several replicas share one store, and scheduled rotation and retention must run on
    /// exactly one of them: an engine with several writers holds a lease that ends with the
    /// connection (PostgreSQL: a session advisory lock). One process on SQLite always leads.
    fn scheduler_lease(&self) -> Result<bool> {
        Ok(true)
    }
}

/// The rows of one write transaction (see [`Store::write`]).
pub trait StoreTx {
    /// A `meta` value, as of this transaction.
    fn meta(&mut self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Set a `meta` value.
    fn put_meta(&mut self, key: &str, value: &[u8]) -> Result<()>;
    /// A label's policy (JSON), as of this transaction.
    fn label_policy(&mut self, name: &str) -> Result<Option<String>>;
    /// Add a label.
    fn insert_label(&mut self, name: &str, policy: &str, created_ms: i64) -> Result<()>;
    /// Replace a label's policy.
    fn set_policy(&mut self, name: &str, policy: &str) -> Result<()>;
    /// One version of a label, as of this transaction.
    fn version(&mut self, label: &str, kid: u32) -> Result<Option<VersionRow>>;
    /// Add a version of an existing label.
    fn insert_version(&mut self, label: &str, row: &VersionRow) -> Result<()>;
    /// Make the current version of `label` active, superseded at `at_ms`.
    fn supersede_current(&mut self, label: &str, at_ms: i64) -> Result<()>;
    /// Set a version's state (not to destroyed: see [`StoreTx::destroy_version`]).
    fn set_state(&mut self, label: &str, kid: u32, state: VersionState) -> Result<()>;
    /// Destroy a version: state destroyed, every sealed secret of it (the label key's and
    /// the DKE key's) gone, at `at_ms`.
    fn destroy_version(&mut self, label: &str, kid: u32, at_ms: i64) -> Result<()>;
    /// Every sealed secret still held, of every kind.
    fn sealed_secrets(&mut self) -> Result<Vec<SealedRow>>;
    /// Replace one sealed secret of a version (master-key rotation).
    fn set_sealed_secret(
        &mut self,
        label: &str,
        kid: u32,
        kind: SecretKind,
        sealed: &[u8],
    ) -> Result<()>;
    /// Give a version a DKE key pair: its public key and sealed private key.
    fn set_dke_key(&mut self, label: &str, kid: u32, public: &[u8], sealed: &[u8]) -> Result<()>;
    /// Add a token.
    fn insert_token(&mut self, row: &TokenRow) -> Result<()>;
    /// Revoke a token at `at_ms` unless it is revoked already; returns whether it was active.
    fn revoke_token(&mut self, id: &str, at_ms: i64) -> Result<bool>;
    /// Revoke every active token of `user` at `at_ms`; returns their ids, oldest first.
    fn revoke_user(&mut self, user: &str, at_ms: i64) -> Result<Vec<String>>;
    /// The last audit record's sequence number and MAC, if there is one.
    fn audit_tail(&mut self) -> Result<Option<(i64, Vec<u8>)>>;
    /// Add audit record `seq` (the tail's number plus one) with its chain MAC.
    fn insert_audit(&mut self, seq: i64, entry: &AuditEntry, mac: &[u8]) -> Result<()>;
}
