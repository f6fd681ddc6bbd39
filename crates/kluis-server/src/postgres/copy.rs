//! `kluis-server store copy --from sqlite:PATH --to postgres://…`: every row of a SQLite
//! store into a new, empty store of another engine, in one transaction of the target: labels,
//! key versions (DKE columns too), tokens, settings (`meta`) and the whole audit trail with
//! its MACs, byte for byte. The chain's MACs cover the records' fields, not the engine, so
//! the copy verifies with the same master key and has the same head.

use std::path::Path;

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::audit::AuditEntry;
use crate::error::{Result, ServerError};
use crate::store::{Store, StoreTx, TokenRow, VersionRow, VersionState, meta};

/// What a copy moved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Copied {
    /// Labels.
    pub labels: usize,
    /// Key versions.
    pub versions: usize,
    /// API tokens.
    pub tokens: usize,
    /// Audit records.
    pub records: usize,
    /// The audit chain's head MAC (hex), the same in both stores.
    pub head: String,
}

/// Audit records read and written per round.
const PAGE: i64 = 5000;

fn state(s: &str) -> rusqlite::Result<VersionState> {
    VersionState::parse(s).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            1,
            rusqlite::types::Type::Text,
            "unknown key state in the store".into(),
        )
    })
}

/// Whether `target` holds nothing yet (no setting, label, token or record).
fn is_empty<T: Store>(target: &mut T) -> Result<bool> {
    target
        .write(|tx| {
            Ok(tx.meta(meta::KDF)?.is_none()
                && tx.meta(meta::CHECK)?.is_none()
                && tx.audit_tail()?.is_none())
        })
        .and_then(|empty| {
            Ok(empty && target.label_names()?.is_empty() && target.tokens()?.is_empty())
        })
}

/// Copy the SQLite store at `from` into `target`, which must be empty. The source is read in
/// one read transaction (a consistent snapshot, even if a server still writes to it; stop it
/// first, or what it writes after the snapshot is not copied).
pub fn copy_from_sqlite<T: Store>(from: &Path, target: &mut T) -> Result<Copied> {
    if !from.exists() {
        return Err(ServerError::Init(
            "no SQLite store at the --from path: give it as sqlite:PATH",
        ));
    }
    if !is_empty(target)? {
        return Err(ServerError::Refused(
            "the target store is not empty: copy only into a new database (create it with \
             createdb, then copy; never over a store in use)"
                .into(),
        ));
    }
    let src = Connection::open_with_flags(
        from,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    src.busy_timeout(std::time::Duration::from_secs(5))?;
    let version: i64 = src.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version < 4 {
        return Err(ServerError::Refused(
            "the SQLite store has an older schema: open it once with this kluis-server (any \
             admin command, e.g. `audit verify`) to migrate it, then copy"
                .into(),
        ));
    }
    src.execute_batch("BEGIN")?;
    let metas: Vec<(String, Vec<u8>)> = src
        .prepare("SELECT key, value FROM meta WHERE key <> 'scrub_pending' ORDER BY key")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let labels: Vec<(String, String, i64)> = src
        .prepare("SELECT name, policy, created_ms FROM labels ORDER BY name")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let versions: Vec<(String, VersionRow)> = src
        .prepare(
            "SELECT label, kid, state, public_key, sealed_secret, created_ms, destroyed_ms,
                    superseded_ms, dke_public, dke_sealed
             FROM key_versions ORDER BY label, kid",
        )?
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                VersionRow {
                    kid: r.get(1)?,
                    state: state(&r.get::<_, String>(2)?)?,
                    public_key: r.get(3)?,
                    sealed_secret: r.get(4)?,
                    created_ms: r.get(5)?,
                    destroyed_ms: r.get(6)?,
                    superseded_ms: r.get(7)?,
                    dke_public: r.get(8)?,
                    dke_sealed: r.get(9)?,
                },
            ))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let tokens: Vec<TokenRow> = src
        .prepare(
            "SELECT id, hash, user, groups, created_ms, expires_ms, revoked_ms FROM tokens
             ORDER BY created_ms, id",
        )?
        .query_map([], |r| {
            let groups: String = r.get(3)?;
            Ok(TokenRow {
                id: r.get(0)?,
                hash: r.get(1)?,
                user: r.get(2)?,
                groups: serde_json::from_str(&groups).unwrap_or_default(),
                created_ms: r.get(4)?,
                expires_ms: r.get(5)?,
                revoked_ms: r.get(6)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let head: Option<Vec<u8>> = src
        .query_row("SELECT mac FROM audit ORDER BY seq DESC LIMIT 1", [], |r| {
            r.get(0)
        })
        .optional()?;
    let mut audit = src.prepare(
        "SELECT seq, time_ms, actor, action, label, kid, doc_id, outcome, reason, client, mac,
                credential
         FROM audit WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )?;
    let copied = target.write(|tx: &mut dyn StoreTx| {
        for (k, v) in &metas {
            tx.put_meta(k, v)?;
        }
        for (name, policy, created) in &labels {
            tx.insert_label(name, policy, *created)?;
        }
        for (label, v) in &versions {
            tx.insert_version(label, v)?;
        }
        for t in &tokens {
            tx.insert_token(t)?;
        }
        let mut after = 0i64;
        let mut records = 0usize;
        loop {
            let page: Vec<(i64, AuditEntry, Vec<u8>)> = audit
                .query_map(rusqlite::params![after, PAGE], |r| {
                    Ok((
                        r.get(0)?,
                        AuditEntry {
                            time_ms: r.get(1)?,
                            actor: r.get(2)?,
                            action: r.get(3)?,
                            label: r.get(4)?,
                            kid: r.get(5)?,
                            doc_id: r.get(6)?,
                            outcome: r.get(7)?,
                            reason: r.get(8)?,
                            client: r.get(9)?,
                            credential: r.get(11)?,
                        },
                        r.get(10)?,
                    ))
                })?
                .collect::<rusqlite::Result<_>>()?;
            let Some(last) = page.last() else { break };
            after = last.0;
            for (seq, entry, mac) in &page {
                tx.insert_audit(*seq, entry, mac)?;
            }
            records += page.len();
        }
        // The copy's own check: its tail is the source's, record for record.
        let tail = tx.audit_tail()?.map(|(_, mac)| mac);
        if tail != head {
            return Err(ServerError::Refused(
                "the copied audit trail ends elsewhere than the source's: nothing was copied"
                    .into(),
            ));
        }
        Ok(Copied {
            labels: labels.len(),
            versions: versions.len(),
            tokens: tokens.len(),
            records,
            head: hex::encode(head.as_deref().unwrap_or_default()),
        })
    })?;
    drop(audit);
    let _ = src.execute_batch("COMMIT");
    Ok(copied)
}
