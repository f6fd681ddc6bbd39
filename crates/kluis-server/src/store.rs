//! The storage interface, so that a PostgreSQL backend can follow the SQLite default.

use kluis_core::{LabelKey, LabelPublicKey};
use serde::Serialize;

use crate::audit::{AuditEntry, AuditRecord};
use crate::error::Result;
use crate::policy::Policy;
use crate::policy_edit::PolicyEdit;

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
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            VersionState::Current => "current",
            VersionState::Active => "active",
            VersionState::Retired => "retired",
            VersionState::Destroyed => "destroyed",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
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

/// The key server's storage. Every administrative change is written together with its
/// audit record, in one transaction.
pub trait Store {
    /// Create a label with key version 1.
    fn create_label(&mut self, name: &str, policy: &Policy, actor: &str) -> Result<LabelPublicKey>;
    /// All labels.
    fn labels(&self) -> Result<Vec<LabelInfo>>;
    /// One label.
    fn label(&self, name: &str) -> Result<LabelInfo>;
    /// Make a new current version; the old one keeps opening. Returns the new kid.
    fn rotate(&mut self, name: &str, actor: &str) -> Result<u32>;
    /// Mark a non-current version retired (opens only for re-keying).
    fn retire(&mut self, name: &str, kid: u32, actor: &str) -> Result<()>;
    /// Destroy a non-current version's private key, irreversibly.
    fn destroy(&mut self, name: &str, kid: u32, actor: &str) -> Result<()>;
    /// The private key of a version, unsealed; errors when unknown or destroyed.
    fn label_key(&self, name: &str, kid: u32) -> Result<(LabelKey, VersionState)>;
    /// Issue a token; returns the secret token (shown once) and its public id.
    fn create_token(
        &mut self,
        user: &str,
        groups: &[String],
        expires_ms: Option<i64>,
        actor: &str,
    ) -> Result<(String, String)>;
    /// All tokens.
    fn tokens(&self) -> Result<Vec<TokenInfo>>;
    /// Change a label's policy; takes effect on the next request. Audited as `label.update`
    /// with the old and the new policy (JSON) in the reason. Returns (old, new).
    fn update_policy(
        &mut self,
        name: &str,
        edit: &PolicyEdit,
        actor: &str,
    ) -> Result<(Policy, Policy)>;
    /// Revoke every active token of a user (leavers); returns the revoked token ids.
    fn revoke_user_tokens(&mut self, user: &str, actor: &str) -> Result<Vec<String>>;
    /// Revoke a token by id.
    fn revoke_token(&mut self, id: &str, actor: &str) -> Result<()>;
    /// Check a presented token (constant-time); `None` when unknown, revoked or expired.
    fn authenticate(&self, token: &str, now_ms: i64) -> Result<Option<Principal>>;
    /// Rotate labels whose rotation period has passed and destroy versions whose retention
    /// period has ended, as of `now_ms`; each change is audited under `actor`.
    fn run_schedule(&mut self, now_ms: i64, actor: &str) -> Result<Vec<ScheduledChange>>;
    /// Append audit events durably, all in one transaction (group commit).
    fn append_audit(&mut self, entries: &[AuditEntry]) -> Result<()>;
    /// Audit records, oldest first, optionally only those of one actor.
    fn audit_records(&self, actor: Option<&str>) -> Result<Vec<AuditRecord>>;
    /// At most `limit` audit records after sequence number `after`, oldest first,
    /// optionally only those of one actor.
    fn audit_page(&self, actor: Option<&str>, after: i64, limit: usize)
    -> Result<Vec<AuditRecord>>;
    /// Audit records, oldest first, made with one credential: exactly `credential`, or (for an
    /// OpenID Connect subject given without `#<jti>`) any of its tokens `credential#…`.
    fn audit_by_credential(&self, credential: &str) -> Result<Vec<AuditRecord>>;
    /// Verify the whole audit chain; returns the number of records and the head MAC (hex).
    fn verify_audit(&self) -> Result<(i64, String)>;
}
