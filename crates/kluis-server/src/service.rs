//! The service: what the key server does, over any [`Store`], with the [`Keyring`].
//!
//! Administrative changes (labels, versions, policies, tokens, the scheduler's rotations and
//! destructions) are each written with their audit record in one store transaction. An unwrap
//! goes authenticate → rate limit → authorise → audit commit → release (see [`unwrap`] and
//! [`writer`]); the types make the last two steps impossible to swap, and the commit releases
//! nothing authorised before a change that can withdraw access (see [`epoch`]).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use kluis_core::{LabelKey, LabelPublicKey};

use crate::audit::{self, AuditEntry, AuditRecord};
use crate::error::{Result, ServerError};
use crate::keyring::{KeySource, Keyring};
use crate::policy::Policy;
use crate::policy_edit::PolicyEdit;
use crate::store::{
    LabelInfo, Principal, ScheduledChange, Store, StoreTx, TokenInfo, TokenRow, VersionRow,
    VersionState, meta,
};
use crate::time::now_ms;

pub mod auth;
mod backup;
pub mod dke;
#[cfg(test)]
mod dke_cache_tests;
pub mod epoch;
mod lifecycle;
mod rekey_master;
pub mod unwrap;
pub mod writer;

pub use rekey_master::{MasterKeyRotation, pending_key_file};

/// Label keys by (label, kid), with the sealed bytes each was unsealed from.
type KeyCache = HashMap<(String, u32), (Vec<u8>, LabelKey)>;

/// The key server's operations on one store connection, with the keyring.
pub struct KeyService<S> {
    store: S,
    keyring: Arc<Keyring>,
    /// Unsealed label keys, reused only while the row still holds exactly the sealed bytes
    /// they came from.
    keys: RefCell<KeyCache>,
    /// Unsealed DKE keys, on the same terms as `keys`.
    dke_keys: RefCell<dke::DkeKeyCache>,
}

/// Log a scheduled change that failed and add it to `failed`; the run goes on with the rest.
fn schedule_failed(failed: &mut Vec<(String, String)>, what: String, e: ServerError) {
    crate::log!("scheduled work on {what} failed, going on with the rest: {e}");
    failed.push((what, e.to_string()));
}

/// The audit entry of an administrative change made under `actor`.
fn admin_entry(actor: &str, action: &str, label: Option<&str>, kid: Option<u32>) -> AuditEntry {
    AuditEntry {
        time_ms: now_ms(),
        actor: actor.to_owned(),
        action: action.to_owned(),
        label: label.map(str::to_owned),
        kid,
        doc_id: None,
        outcome: "ok".to_owned(),
        reason: None,
        client: None,
        credential: Some(audit::admin_credential(actor)),
    }
}

impl<S: Store> KeyService<S> {
    /// Initialise a new, empty `store` under `key` (a new key file, or a passphrase), with
    /// its `store.init` audit record.
    pub fn init(mut store: S, key: KeySource<'_>) -> Result<Self> {
        if store.meta(meta::KDF)?.is_some() {
            return Err(ServerError::Init(
                "the store exists already: refusing to initialise it again",
            ));
        }
        let (keyring, rows) = Keyring::create(key)?;
        store.write(|tx| {
            // Again under the writers' lock: on a database shared by replicas, another `init`
            // may have written its keys since the check above (it would be overwritten).
            if tx.meta(meta::KDF)?.is_some() {
                return Err(ServerError::Init(
                    "the store exists already (another init wrote it just now): refusing to \
                     initialise it again; the key just made opens nothing, delete it",
                ));
            }
            for (k, v) in &rows {
                tx.put_meta(k, v)?;
            }
            keyring.append_audit(tx, &[admin_entry("admin", "store.init", None, None)])
        })?;
        Ok(KeyService::with(store, Arc::new(keyring)))
    }

    /// Open an initialised `store`; fails unless `key` gives its master key.
    pub fn open(store: S, key: KeySource<'_>) -> Result<Self> {
        let keyring = Keyring::open(&store, key)?;
        Ok(KeyService::with(store, Arc::new(keyring)))
    }

    fn with(store: S, keyring: Arc<Keyring>) -> Self {
        KeyService {
            store,
            keyring,
            keys: RefCell::default(),
            dke_keys: RefCell::default(),
        }
    }

    /// Another connection to the same store, under the same (already checked) keyring.
    pub fn reopen(&self) -> Result<Self> {
        Ok(KeyService::with(self.store.reopen()?, self.keyring.clone()))
    }

    /// The store underneath.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The store underneath, to change (tests of engine behaviour).
    #[cfg(test)]
    pub(crate) fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// Whether the store answers a query (for readiness probes).
    pub fn is_reachable(&self) -> bool {
        self.store.is_reachable()
    }

    /// Run `f` in one store transaction with the keyring (for changes and their records).
    /// A change in it that can withdraw access increases the access epoch in the same
    /// transaction (see [`epoch`]).
    fn write<T>(&mut self, f: impl FnOnce(&Keyring, &mut dyn StoreTx) -> Result<T>) -> Result<T> {
        let keyring = self.keyring.clone();
        self.store
            .write(|tx| f(&keyring, &mut epoch::Counting::new(tx)))
    }

    /// Inside a write transaction: fail unless this process's master key is still the
    /// store's. A process that opened the store before a master-key rotation (a running
    /// server's scheduler) would otherwise seal new label keys under the old key, which the
    /// store can no longer open once the old key is destroyed.
    fn check_master(keyring: &Keyring, tx: &mut dyn StoreTx) -> Result<()> {
        if keyring.is_current(tx.meta(meta::CHECK)?.as_deref()) {
            Ok(())
        } else {
            Err(ServerError::Refused(
                "the store's master key was rotated since this process opened it: restart it \
                 with the new key file"
                    .into(),
            ))
        }
    }

    /// A new current version `kid` of `label`, sealed at rest.
    fn new_version(
        keyring: &Keyring,
        tx: &mut dyn StoreTx,
        label: &str,
        kid: u32,
    ) -> Result<LabelPublicKey> {
        // Never seal under a master key the store has been rotated away from.
        Self::check_master(keyring, tx)?;
        let key = LabelKey::generate(label, kid)?;
        tx.insert_version(
            label,
            &VersionRow {
                kid,
                state: VersionState::Current,
                public_key: key.public_key().key().to_string(),
                sealed_secret: Some(keyring.seal_label_key(&key, label, kid)?),
                created_ms: now_ms(),
                destroyed_ms: None,
                superseded_ms: None,
                dke_public: None,
                dke_sealed: None,
            },
        )?;
        Ok(key.public_key().clone())
    }

    fn missing(&self, name: &str, kid: u32) -> ServerError {
        match self.label(name) {
            Err(e) => e,
            Ok(_) => ServerError::UnknownVersion {
                label: name.to_owned(),
                kid,
            },
        }
    }

    /// Create a label with key version 1.
    pub fn create_label(
        &mut self,
        name: &str,
        policy: &Policy,
        actor: &str,
    ) -> Result<LabelPublicKey> {
        self.create_label_with(name, policy, false, actor)
    }

    /// Create a label with key version 1, with a Microsoft DKE key when `dke` is set.
    pub fn create_label_with(
        &mut self,
        name: &str,
        policy: &Policy,
        dke: bool,
        actor: &str,
    ) -> Result<LabelPublicKey> {
        policy.validate()?;
        if self.label(name).is_ok() {
            return Err(ServerError::LabelExists(name.to_owned()));
        }
        let json = serde_json::to_string(policy).expect("policy serialises");
        self.write(|keyring, tx| {
            tx.insert_label(name, &json, now_ms())?;
            let public = Self::new_version(keyring, tx, name, 1)?;
            let mut entry = admin_entry(actor, "label.create", Some(name), Some(1));
            if dke {
                Self::add_dke_key(keyring, tx, name, 1)?;
                entry.reason = Some("with a Microsoft DKE key".into());
            }
            keyring.append_audit(tx, &[entry])?;
            Ok(public)
        })
    }

    /// All labels.
    pub fn labels(&self) -> Result<Vec<LabelInfo>> {
        self.store
            .label_names()?
            .iter()
            .map(|n| self.label(n))
            .collect()
    }

    /// One label.
    pub fn label(&self, name: &str) -> Result<LabelInfo> {
        let policy = self.policy(name)?;
        let versions = self
            .store
            .versions(name)?
            .iter()
            .map(VersionRow::info)
            .collect();
        Ok(LabelInfo {
            name: name.to_owned(),
            policy,
            versions,
        })
    }

    /// One label's policy (one read: an unwrap needs no version list).
    pub fn policy(&self, name: &str) -> Result<Policy> {
        let policy = self
            .store
            .label_policy(name)?
            .ok_or_else(|| ServerError::UnknownLabel(name.to_owned()))?;
        serde_json::from_str(&policy)
            .map_err(|e| ServerError::BadPolicy(format!("stored policy of `{name}`: {e}")))
    }

    /// Make a new current version; the old one keeps opening. Returns the new kid.
    pub fn rotate(&mut self, name: &str, actor: &str) -> Result<u32> {
        let info = self.label(name)?;
        let last = info.versions.iter().map(|v| v.kid).max().unwrap_or(0);
        let kid = last.checked_add(1).ok_or_else(|| {
            ServerError::Refused(format!(
                "label `{name}` is at the highest key version there can be ({last}), so it \
                 cannot be rotated: versions are never that high unless the store was tampered \
                 with; check it (`kluis-server audit verify`) and restore a backup"
            ))
        })?;
        // A label with a DKE key gets one for every new version (a new key id).
        let dke = self.has_dke(name)?;
        self.write(|keyring, tx| {
            // Again inside the transaction: a `label dke-enable` may have given the current
            // version a key since `has_dke` looked.
            let dke = dke
                || tx
                    .version(name, last)?
                    .is_some_and(|v| v.dke_public.is_some());
            tx.supersede_current(name, now_ms())?;
            Self::new_version(keyring, tx, name, kid)?;
            if dke {
                Self::add_dke_key(keyring, tx, name, kid)?;
            }
            keyring.append_audit(
                tx,
                &[admin_entry(actor, "label.rotate", Some(name), Some(kid))],
            )?;
            Ok(kid)
        })
    }

    /// Mark a non-current version retired (opens only for re-keying).
    pub fn retire(&mut self, name: &str, kid: u32, actor: &str) -> Result<()> {
        self.set_state(name, kid, VersionState::Retired, actor, true)
    }

    /// Destroy a non-current version's private key, irreversibly.
    pub fn destroy(&mut self, name: &str, kid: u32, actor: &str) -> Result<()> {
        self.set_state(name, kid, VersionState::Destroyed, actor, true)
    }

    /// Change a non-current version's state, with its audit record.
    /// `scrub_now`: remove the old copies of a destroyed key now (one destroy), or leave that
    /// to the caller's one scrub after many (a scheduled run; the store marks it pending).
    fn set_state(
        &mut self,
        name: &str,
        kid: u32,
        to: VersionState,
        actor: &str,
        scrub_now: bool,
    ) -> Result<()> {
        let destroy = to == VersionState::Destroyed;
        let changed =
            self.write(|keyring, tx| Self::change_state(keyring, tx, name, kid, to, actor))?;
        if destroy && changed {
            self.forget_keys(name, kid);
            if !scrub_now {
                return Ok(());
            }
            // Any failure now is reported as what it is: the version IS destroyed, the
            // removal of old copies remains to do (and stays marked pending in the store).
            self.store.forget_old_copies().map_err(|e| match e {
                ServerError::ScrubPending { reader, .. } => ServerError::ScrubPending {
                    destroyed: Some((name.to_owned(), kid)),
                    reader,
                },
                e => ServerError::ScrubFailed {
                    label: name.to_owned(),
                    kid,
                    cause: Box::new(e),
                },
            })?;
        }
        Ok(())
    }

    /// Inside a write transaction: change a non-current version's state, with its audit
    /// record; returns whether it changed (retiring twice changes nothing).
    fn change_state(
        keyring: &Keyring,
        tx: &mut dyn StoreTx,
        name: &str,
        kid: u32,
        to: VersionState,
        actor: &str,
    ) -> Result<bool> {
        let destroy = to == VersionState::Destroyed;
        // The state is checked inside the write transaction: a concurrent destroy that
        // committed first is seen here (a refusal below rolls the transaction back).
        let state = match tx.version(name, kid)? {
            Some(v) => v.state,
            None if tx.label_policy(name)?.is_none() => {
                return Err(ServerError::UnknownLabel(name.to_owned()));
            }
            None => {
                return Err(ServerError::UnknownVersion {
                    label: name.to_owned(),
                    kid,
                });
            }
        };
        match state {
            // Retiring twice changes nothing.
            VersionState::Retired if to == VersionState::Retired => return Ok(false),
            VersionState::Current => {
                return Err(ServerError::Refused(format!(
                    "version {kid} is the current version of `{name}`: rotate first"
                )));
            }
            VersionState::Destroyed => {
                return Err(ServerError::Destroyed {
                    label: name.to_owned(),
                    kid,
                    destroyed_ms: None,
                });
            }
            _ => {}
        }
        if destroy {
            tx.destroy_version(name, kid, now_ms())?;
        } else {
            tx.set_state(name, kid, to)?;
        }
        let action = if destroy {
            "label.destroy"
        } else {
            "label.retire"
        };
        keyring.append_audit(tx, &[admin_entry(actor, action, Some(name), Some(kid))])?;
        Ok(true)
    }

    /// Forget this connection's unsealed keys of a destroyed version.
    fn forget_keys(&self, name: &str, kid: u32) {
        self.keys.borrow_mut().remove(&(name.to_owned(), kid));
        self.dke_keys.borrow_mut().remove(&(name.to_owned(), kid));
    }

    /// The private key of a version, unsealed, for the crate's own tests (feature
    /// `test-support`, enabled only by this crate's dev-dependency on itself). It bypasses the
    /// unwrap path's audit commit: never enable the feature in a build that serves.
    #[cfg(feature = "test-support")]
    #[doc(hidden)]
    pub fn label_key_for_tests(&self, name: &str, kid: u32) -> Result<(LabelKey, VersionState)> {
        self.label_key(name, kid)
    }

    /// The private key of a version, unsealed; errors when unknown or destroyed.
    ///
    /// Private to the service module: a key taken here bypasses the unwrap path's audit commit
    /// (see `service::unwrap`), so only the service's own paths (the audited unwrap, the
    /// restore checks) can call it; the HTTP handlers (`api`) cannot.
    pub(in crate::service) fn label_key(
        &self,
        name: &str,
        kid: u32,
    ) -> Result<(LabelKey, VersionState)> {
        let row = self
            .store
            .version(name, kid)?
            .ok_or_else(|| self.missing(name, kid))?;
        let Some(sealed) = row.sealed_secret else {
            self.keys.borrow_mut().remove(&(name.to_owned(), kid));
            return Err(ServerError::Destroyed {
                label: name.to_owned(),
                kid,
                destroyed_ms: row.destroyed_ms,
            });
        };
        if let Some((bytes, key)) = self.keys.borrow().get(&(name.to_owned(), kid)) {
            if *bytes == sealed {
                return Ok((key.clone(), row.state));
            }
        }
        let key = self.keyring.open_label_key(name, kid, &sealed)?;
        self.keys
            .borrow_mut()
            .insert((name.to_owned(), kid), (sealed, key.clone()));
        Ok((key, row.state))
    }

    /// Issue a token; returns the secret token (shown once) and its public id.
    pub fn create_token(
        &mut self,
        user: &str,
        groups: &[String],
        expires_ms: Option<i64>,
        actor: &str,
    ) -> Result<(String, String)> {
        crate::policy::check_token_names(user, groups)?;
        Policy {
            users: vec![user.to_owned()],
            groups: groups.to_vec(),
            ..Policy::default()
        }
        .validate()?;
        let (token, id, hash) = self.keyring.new_token()?;
        self.write(|keyring, tx| {
            tx.insert_token(&TokenRow {
                id: id.clone(),
                hash,
                user: user.to_owned(),
                groups: groups.to_vec(),
                created_ms: now_ms(),
                expires_ms,
                revoked_ms: None,
            })?;
            let mut entry = admin_entry(actor, "token.create", None, None);
            entry.reason = Some(format!("token {id} for user {user}"));
            keyring.append_audit(tx, &[entry])
        })?;
        Ok((token, id))
    }

    /// All tokens.
    pub fn tokens(&self) -> Result<Vec<TokenInfo>> {
        Ok(self
            .store
            .tokens()?
            .into_iter()
            .map(|t| TokenInfo {
                id: t.id,
                user: t.user,
                groups: t.groups,
                expires_ms: t.expires_ms,
                revoked_ms: t.revoked_ms,
            })
            .collect())
    }

    /// Change a label's policy; takes effect on the next request. Audited as `label.update`
    /// with the old and the new policy (JSON) in the reason. Returns (old, new).
    pub fn update_policy(
        &mut self,
        name: &str,
        edit: &PolicyEdit,
        actor: &str,
    ) -> Result<(Policy, Policy)> {
        self.update_policy_in(name, edit, actor)
    }

    /// Revoke every active token of a user (leavers); returns the revoked token ids.
    pub fn revoke_user_tokens(&mut self, user: &str, actor: &str) -> Result<Vec<String>> {
        self.revoke_user_in(user, actor)
    }

    /// Revoke a token by id.
    pub fn revoke_token(&mut self, id: &str, actor: &str) -> Result<()> {
        self.write(|keyring, tx| {
            if !tx.revoke_token(id, now_ms())? {
                return Err(ServerError::Refused(format!(
                    "no active token `{id}`: see `kluis-server token list`"
                )));
            }
            let mut entry = admin_entry(actor, "token.revoke", None, None);
            entry.reason = Some(format!("token {id}"));
            keyring.append_audit(tx, &[entry])
        })
    }

    /// Check a presented token (constant-time); `None` when unknown, revoked or expired.
    pub fn authenticate(&self, token: &str, now_ms: i64) -> Result<Option<Principal>> {
        let Some(id) = Keyring::token_id(token) else {
            return Ok(None);
        };
        let Some(row) = self.store.token(id)? else {
            return Ok(None);
        };
        if !self.keyring.token_matches(token, &row.hash)
            || row.revoked_ms.is_some()
            || row.expires_ms.is_some_and(|e| e <= now_ms)
        {
            return Ok(None);
        }
        // A token issued before names were namespaced may carry a name of another source
        // (`oidc:…`, `admin:…`) or of the server itself: it authenticates no one.
        if crate::policy::check_token_names(&row.user, &row.groups).is_err() {
            return Ok(None);
        }
        Ok(Some(Principal {
            user: row.user,
            groups: row.groups,
            credential: format!("token:{id}"),
        }))
    }

    /// Rotate labels whose rotation period has passed and destroy versions whose retention
    /// period has ended, as of `now_ms`; each change is audited under `actor`. Each label,
    /// and each change, on its own: one that fails (a policy that no longer reads, a damaged
    /// row) is logged and reported at the end ([`ServerError::ScheduleIncomplete`]), and does
    /// not keep the labels after it from being rotated or their retention from being enforced.
    pub fn run_schedule(&mut self, now_ms: i64, actor: &str) -> Result<Vec<ScheduledChange>> {
        let names = self.store.label_names()?;
        let mut done = Vec::new();
        let mut failed = Vec::new();
        let mut due = Vec::new();
        for name in names {
            self.schedule_label(&name, now_ms, actor, &mut done, &mut failed, &mut due);
        }
        self.destroy_due(due, actor, &mut done, &mut failed);
        // One scrub for every destroy of the run (on PostgreSQL each is a rewrite of the
        // whole table that unwraps wait for); if it cannot finish now, the store's pending
        // mark has the scheduler retry it.
        if done
            .iter()
            .any(|c| matches!(c, ScheduledChange::Destroyed { .. }))
        {
            if let Err(e) = self.store.forget_old_copies() {
                crate::log!("scheduled destroys: removing old copies of the keys is pending: {e}");
            }
        }
        if failed.is_empty() {
            Ok(done)
        } else {
            Err(ServerError::ScheduleIncomplete { done, failed })
        }
    }

    /// The scheduled changes of one label due at `now_ms`: the rotation is made (to `done`,
    /// or logged to `failed`); the versions whose retention ended go to `due`.
    fn schedule_label(
        &mut self,
        name: &str,
        now_ms: i64,
        actor: &str,
        done: &mut Vec<ScheduledChange>,
        failed: &mut Vec<(String, String)>,
        due: &mut Vec<(String, u32)>,
    ) {
        // Test support only (never in a build that serves): the scheduled work panics at this
        // label, so that a test can see the scheduler survive a panic.
        #[cfg(feature = "test-support")]
        if std::env::var("KLUIS_TEST_SCHEDULE_PANICS_ON").is_ok_and(|l| l == name) {
            panic!("KLUIS_TEST_SCHEDULE_PANICS_ON is `{name}` (test support)");
        }
        let mut fail = |what: String, e: ServerError| schedule_failed(failed, what, e);
        let label = match self.label(name) {
            Ok(label) => label,
            Err(e) => return fail(format!("label `{name}`"), e),
        };
        let ms = |secs: u64| i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        if let (Some(every), Some(current)) = (label.policy.rotation_secs, label.current()) {
            if current.created_ms.saturating_add(ms(every)) <= now_ms {
                match self.rotate(name, actor) {
                    Ok(kid) => done.push(ScheduledChange::Rotated {
                        label: name.to_owned(),
                        kid,
                    }),
                    Err(e) => fail(format!("label `{name}` (rotation)"), e),
                }
            }
        }
        let Some(keep) = label.policy.retention_secs else {
            return;
        };
        for v in &label.versions {
            let expired = v
                .superseded_ms
                .is_some_and(|t| t.saturating_add(ms(keep)) <= now_ms);
            if expired && matches!(v.state, VersionState::Active | VersionState::Retired) {
                due.push((name.to_owned(), v.kid));
            }
        }
    }

    /// Destroy the versions of a scheduled run whose retention ended, all in one transaction:
    /// the access epoch then rises once for the run, not once per version. Each rise has every
    /// grant in flight, of any label, decided again, so a run of many destroys, each in its own
    /// transaction, kept unrelated unwraps from being granted (`503 access_changing`) while it
    /// lasted. If that transaction fails, one by one, so that a version that cannot be
    /// destroyed does not keep the others from it.
    fn destroy_due(
        &mut self,
        due: Vec<(String, u32)>,
        actor: &str,
        done: &mut Vec<ScheduledChange>,
        failed: &mut Vec<(String, String)>,
    ) {
        if due.is_empty() {
            return;
        }
        let together = self.write(|keyring, tx| {
            for (name, kid) in &due {
                Self::change_state(keyring, tx, name, *kid, VersionState::Destroyed, actor)?;
            }
            Ok(())
        });
        if let Err(e) = &together {
            crate::log!("scheduled destroys failed together ({e}), trying them one by one");
        }
        for (name, kid) in due {
            let result = match together {
                Ok(()) => {
                    self.forget_keys(&name, kid);
                    Ok(())
                }
                Err(_) => self.set_state(&name, kid, VersionState::Destroyed, actor, false),
            };
            match result {
                // Destroyed; the scrub of old copies is retried by the scheduler.
                Ok(())
                | Err(ServerError::ScrubPending { .. } | ServerError::ScrubFailed { .. }) => {
                    done.push(ScheduledChange::Destroyed { label: name, kid })
                }
                Err(e) => schedule_failed(
                    failed,
                    format!("label `{name}` version {kid} (retention)"),
                    e,
                ),
            }
        }
    }

    /// Finish a removal of old copies of destroyed keys that a destroy left pending (the
    /// scheduler calls it); returns whether one was pending.
    /// Waits up to `patience` for readers of old snapshots.
    pub fn forget_pending_copies(&self, patience: std::time::Duration) -> Result<bool> {
        self.store.forget_pending_copies(patience)
    }

    /// Append audit events durably, all in one transaction (group commit).
    pub fn append_audit(&mut self, entries: &[AuditEntry]) -> Result<()> {
        self.write(|keyring, tx| keyring.append_audit(tx, entries))
    }

    /// Audit records, oldest first, optionally only those of one actor.
    pub fn audit_records(&self, actor: Option<&str>) -> Result<Vec<AuditRecord>> {
        self.store.audit_page(actor, 0, usize::MAX)
    }

    /// At most `limit` audit records after sequence number `after`, oldest first,
    /// optionally only those of one actor.
    pub fn audit_page(
        &self,
        actor: Option<&str>,
        after: i64,
        limit: usize,
    ) -> Result<Vec<AuditRecord>> {
        self.store.audit_page(actor, after, limit)
    }

    /// Audit records, oldest first, made with one credential: exactly `credential`, or (for an
    /// OpenID Connect subject given without `#<jti>`) any of its tokens `credential#…`.
    pub fn audit_by_credential(&self, credential: &str) -> Result<Vec<AuditRecord>> {
        self.store.audit_by_credential(credential)
    }

    /// Verify the whole audit chain; returns the number of records and the head MAC (hex).
    pub fn verify_audit(&self) -> Result<(i64, String)> {
        self.keyring.verify_audit(&self.store)
    }
}

#[cfg(test)]
mod schedule_tests {
    use super::*;
    use crate::keyring::KeySource;

    /// The scheduled destroys of a run go in one transaction; when that fails (here a version
    /// destroyed meanwhile by hand), they are made one by one: the others are destroyed and
    /// recorded, the one that failed is reported.
    #[test]
    fn scheduled_destroys_that_fail_together_are_made_one_by_one() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("master.key");
        let mut svc =
            KeyService::init_sqlite(&dir.path().join("store.db"), KeySource::File(&key)).unwrap();
        svc.create_label("hr", &Policy::default(), "admin").unwrap();
        for _ in 0..3 {
            svc.rotate("hr", "admin").unwrap();
        }
        svc.destroy("hr", 2, "admin").unwrap();
        let (mut done, mut failed) = (Vec::new(), Vec::new());
        let due = vec![("hr".into(), 1), ("hr".into(), 2), ("hr".into(), 3)];
        svc.destroy_due(due, "scheduler", &mut done, &mut failed);
        let destroyed = |kid| ScheduledChange::Destroyed {
            label: "hr".into(),
            kid,
        };
        assert_eq!(done, [destroyed(1), destroyed(3)]);
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert!(failed[0].0.contains("version 2"), "{failed:?}");
        let states: Vec<_> = svc
            .label("hr")
            .unwrap()
            .versions
            .iter()
            .map(|v| v.state)
            .collect();
        use VersionState::{Current, Destroyed};
        assert_eq!(states, [Destroyed, Destroyed, Destroyed, Current]);
        let by_scheduler = svc
            .audit_records(None)
            .unwrap()
            .iter()
            .filter(|r| r.entry.actor == "scheduler" && r.entry.action == "label.destroy")
            .map(|r| r.entry.kid)
            .collect::<Vec<_>>();
        assert_eq!(by_scheduler, [Some(1), Some(3)]);
        svc.verify_audit().unwrap();
    }
}
