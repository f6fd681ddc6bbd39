//! The access epoch: a counter in the store (`meta`, [`meta::ACCESS_EPOCH`]) that every
//! change able to withdraw access increases, in the change's own transaction.
//!
//! It closes the race between a request's authorisation and its audit commit. A request reads
//! the token, the label policy and the key version, then waits for the audit writer; a token
//! revoked, a policy narrowed, or a version retired or destroyed in between must not release a
//! share with a "granted" record after the record of the change.
//!
//! The protocol:
//! - every write transaction of the service goes through `KeyService::write` (only `init` and
//!   `store copy` write otherwise, into a new store no server uses yet), which hands its
//!   closure a `Counting` transaction: the first call of a method that can withdraw access
//!   ([`StoreTx::revoke_token`], [`StoreTx::revoke_user`], [`StoreTx::set_policy`],
//!   [`StoreTx::set_state`], [`StoreTx::destroy_version`]) increases the epoch in the same
//!   transaction (so a new write path cannot forget it);
//! - the audit writer publishes the epoch it read in its last committed transaction (and at
//!   start-up); a request takes that value ([`super::writer::AuditWriter::observe`]) **before**
//!   any store read it makes to authenticate or authorise;
//! - in its transaction, under the writers' lock, the writer reads the epoch once per group;
//!   a request that releases something (a granted share, a DKE plaintext) and observed another
//!   value is not appended: it is answered "stale" and decided again from the start (its
//!   third decision is appended with each grant recorded as refused, and releases nothing);
//! - changes made in a burst share one transaction where they can (a scheduled run's
//!   destroys), since every rise has every grant in flight, of any label, decided again.
//!
//! Why that is enough. The epoch only grows: only `Counting` writes it, one write transaction
//! at a time, each adding one (a restore replaces the store of a stopped server only; `store
//! copy` writes the source's value into a new, empty store). Say a request observed `e`, and
//! the writer's transaction `W` reads `e` again. The value `e` was read by an earlier writer
//! transaction `W0` (or at start-up, before any request) that committed before it was
//! published, hence before the request's reads began. Every change
//! that raised the epoch to `e` or below committed before `W0` read it (writers take turns, in
//! this process and in every other, under the store's writers' lock), so the request's reads,
//! which see everything committed before they start, saw each of them. A change committed
//! after `W0` and before `W` would have raised the epoch above `e`, and `W` would not read
//! `e`. So every change the request did not see commits after `W`, under the same writers'
//! lock: its record follows the request's records in the chain, and the shares, released once
//! `W` is committed, went out under authority that still held when they were recorded.

use crate::error::{Result, ServerError};
use crate::store::{SealedRow, SecretKind, StoreTx, TokenRow, VersionRow, VersionState, meta};

use crate::audit::AuditEntry;

/// The store's access epoch, as of the transaction `tx` (0 before any withdrawal).
pub(crate) fn read(tx: &mut dyn StoreTx) -> Result<u64> {
    decode(tx.meta(meta::ACCESS_EPOCH)?)
}

/// The epoch in a `meta` value: eight bytes big-endian, absent = 0.
pub(crate) fn decode(value: Option<Vec<u8>>) -> Result<u64> {
    match value {
        None => Ok(0),
        Some(v) => <[u8; 8]>::try_from(v.as_slice())
            .map(u64::from_be_bytes)
            .map_err(|_| {
                ServerError::Refused(
                    "the store's access epoch (meta `access_epoch`) is not 8 bytes: the store \
                     was altered; check it (`kluis-server store check`, `audit verify`) and \
                     restore a backup"
                        .into(),
                )
            }),
    }
}

/// A write transaction that increases the access epoch, once, as soon as one of its changes
/// can withdraw access.
pub(crate) struct Counting<'a> {
    tx: &'a mut dyn StoreTx,
    bumped: bool,
}

impl<'a> Counting<'a> {
    /// Wrap `tx`.
    pub(crate) fn new(tx: &'a mut dyn StoreTx) -> Self {
        Counting { tx, bumped: false }
    }

    /// Increase the epoch unless this transaction did already.
    fn withdraws(&mut self) -> Result<()> {
        if !self.bumped {
            let next = read(self.tx)?.wrapping_add(1);
            self.tx.put_meta(meta::ACCESS_EPOCH, &next.to_be_bytes())?;
            self.bumped = true;
        }
        Ok(())
    }
}

impl StoreTx for Counting<'_> {
    fn meta(&mut self, key: &str) -> Result<Option<Vec<u8>>> {
        self.tx.meta(key)
    }
    fn put_meta(&mut self, key: &str, value: &[u8]) -> Result<()> {
        self.tx.put_meta(key, value)
    }
    fn label_policy(&mut self, name: &str) -> Result<Option<String>> {
        self.tx.label_policy(name)
    }
    fn insert_label(&mut self, name: &str, policy: &str, created_ms: i64) -> Result<()> {
        self.tx.insert_label(name, policy, created_ms)
    }
    fn set_policy(&mut self, name: &str, policy: &str) -> Result<()> {
        self.withdraws()?;
        self.tx.set_policy(name, policy)
    }
    fn version(&mut self, label: &str, kid: u32) -> Result<Option<VersionRow>> {
        self.tx.version(label, kid)
    }
    fn insert_version(&mut self, label: &str, row: &VersionRow) -> Result<()> {
        self.tx.insert_version(label, row)
    }
    fn supersede_current(&mut self, label: &str, at_ms: i64) -> Result<()> {
        // Current → active: the version keeps opening for everyone it opened for.
        self.tx.supersede_current(label, at_ms)
    }
    fn set_state(&mut self, label: &str, kid: u32, state: VersionState) -> Result<()> {
        self.withdraws()?;
        self.tx.set_state(label, kid, state)
    }
    fn destroy_version(&mut self, label: &str, kid: u32, at_ms: i64) -> Result<()> {
        self.withdraws()?;
        self.tx.destroy_version(label, kid, at_ms)
    }
    fn sealed_secrets(&mut self) -> Result<Vec<SealedRow>> {
        self.tx.sealed_secrets()
    }
    fn set_sealed_secret(
        &mut self,
        label: &str,
        kid: u32,
        kind: SecretKind,
        sealed: &[u8],
    ) -> Result<()> {
        self.tx.set_sealed_secret(label, kid, kind, sealed)
    }
    fn set_dke_key(&mut self, label: &str, kid: u32, public: &[u8], sealed: &[u8]) -> Result<()> {
        self.tx.set_dke_key(label, kid, public, sealed)
    }
    fn insert_token(&mut self, row: &TokenRow) -> Result<()> {
        self.tx.insert_token(row)
    }
    fn revoke_token(&mut self, id: &str, at_ms: i64) -> Result<bool> {
        self.withdraws()?;
        self.tx.revoke_token(id, at_ms)
    }
    fn revoke_user(&mut self, user: &str, at_ms: i64) -> Result<Vec<String>> {
        self.withdraws()?;
        self.tx.revoke_user(user, at_ms)
    }
    fn audit_tail(&mut self) -> Result<Option<(i64, Vec<u8>)>> {
        self.tx.audit_tail()
    }
    fn insert_audit(&mut self, seq: i64, entry: &AuditEntry, mac: &[u8]) -> Result<()> {
        self.tx.insert_audit(seq, entry, mac)
    }
}
