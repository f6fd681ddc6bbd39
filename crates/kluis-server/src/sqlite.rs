//! The SQLite store: WAL, foreign keys, schema migrations, secure delete. Rows only; the
//! cryptography is the keyring's ([`crate::keyring`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use crate::audit::{AuditEntry, AuditRecord};
use crate::error::{Result, ServerError};
use crate::master_key::random;
use crate::store::{SealedRow, SecretKind, Store, StoreTx, TokenRow, VersionRow, VersionState};

mod backup;
#[cfg(test)]
mod scrub_tests;

pub use backup::{BackupCheck, BackupTarget};
pub(crate) use backup::{resolve_link, sync_dir};

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE labels (
    name TEXT PRIMARY KEY,
    policy TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE key_versions (
    label TEXT NOT NULL REFERENCES labels(name),
    kid INTEGER NOT NULL CHECK (kid > 0),
    state TEXT NOT NULL CHECK (state IN ('current', 'active', 'retired', 'destroyed')),
    public_key TEXT NOT NULL,
    sealed_secret BLOB,
    created_ms INTEGER NOT NULL,
    destroyed_ms INTEGER,
    PRIMARY KEY (label, kid),
    CHECK ((state = 'destroyed') = (sealed_secret IS NULL))
);
CREATE UNIQUE INDEX one_current ON key_versions(label) WHERE state = 'current';
CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    hash BLOB NOT NULL,
    user TEXT NOT NULL,
    groups TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER,
    revoked_ms INTEGER
);
CREATE TABLE audit (
    seq INTEGER PRIMARY KEY,
    time_ms INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    label TEXT,
    kid INTEGER,
    doc_id TEXT,
    outcome TEXT NOT NULL,
    reason TEXT,
    client TEXT,
    mac BLOB NOT NULL
);
CREATE INDEX audit_actor ON audit(actor);
"#,
    // 2: when a version stopped sealing (rotated out), for retention.
    r#"
ALTER TABLE key_versions ADD COLUMN superseded_ms INTEGER;
"#,
    // 3: which credential acted (issue 14, defect 3); NULL in records written before.
    r#"
ALTER TABLE audit ADD COLUMN credential TEXT;
CREATE INDEX audit_credential ON audit(credential);
"#,
    // 4: a Microsoft DKE RSA key pair per version (issue 16), for labels that have one.
    r#"
ALTER TABLE key_versions ADD COLUMN dke_public BLOB;
ALTER TABLE key_versions ADD COLUMN dke_sealed BLOB;
"#,
];

/// How long a destroy waits for readers of older snapshots before it reports the scrub of
/// old copies as pending.
const SCRUB_PATIENCE: Duration = Duration::from_secs(2);

/// The SQLite store. One connection; [`Store::reopen`] gives more (WAL lets readers run
/// beside the one writer).
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
}

fn connect(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;
         PRAGMA secure_delete = ON;
         PRAGMA busy_timeout = 5000;",
    )?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let done: usize = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if done > MIGRATIONS.len() {
        return Err(ServerError::Init(
            "the store was written by a newer kluis-server: upgrade kluis-server",
        ));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(done) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
    }
    Ok(())
}

/// One `audit` row, selected as `seq, time_ms, actor, action, label, kid, doc_id, outcome,
/// reason, client, mac, credential`.
fn audit_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditRecord> {
    Ok(AuditRecord {
        seq: r.get(0)?,
        entry: AuditEntry {
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
        mac: r.get(10)?,
    })
}

fn state(s: &str) -> rusqlite::Result<VersionState> {
    VersionState::parse(s).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            1,
            rusqlite::types::Type::Text,
            "unknown key state in the store".into(),
        )
    })
}

/// One `key_versions` row, selected as `kid, state, public_key, sealed_secret, created_ms,
/// destroyed_ms, superseded_ms, dke_public, dke_sealed`.
fn version_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<VersionRow> {
    Ok(VersionRow {
        kid: r.get(0)?,
        state: state(&r.get::<_, String>(1)?)?,
        public_key: r.get(2)?,
        sealed_secret: r.get(3)?,
        created_ms: r.get(4)?,
        destroyed_ms: r.get(5)?,
        superseded_ms: r.get(6)?,
        dke_public: r.get(7)?,
        dke_sealed: r.get(8)?,
    })
}

/// One `tokens` row, selected as `id, hash, user, groups, created_ms, expires_ms, revoked_ms`.
fn token_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRow> {
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
}

const VERSION_COLUMNS: &str = "kid, state, public_key, sealed_secret, created_ms, destroyed_ms, \
     superseded_ms, dke_public, dke_sealed";
const TOKEN_COLUMNS: &str = "id, hash, user, groups, created_ms, expires_ms, revoked_ms";

impl SqliteStore {
    /// Create a new, empty store file at `path`, which must not exist. The keyring fills
    /// it (see [`crate::service::KeyService::init`]).
    pub fn create(path: &Path) -> Result<Self> {
        if path.exists() {
            return Err(ServerError::Init(
                "the store exists already: refusing to initialise it again (give another \
                 --store, or remove that file if it is an unused leftover)",
            ));
        }
        // The store holds the audit trail and sealed keys: 0600 from its creation, whatever
        // the umask (SQLite gives its -wal and -shm files the same mode).
        {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| {
                    ServerError::Config(format!(
                        "cannot create the store {}: {e}: its folder must exist and be writable \
                         (the Debian package creates /var/lib/kluis-server)",
                        path.display()
                    ))
                })?;
        }
        let made = connect(path).and_then(|mut conn| {
            migrate(&mut conn)?;
            Ok(conn)
        });
        match made {
            Ok(conn) => Ok(SqliteStore {
                conn,
                path: path.to_owned(),
            }),
            Err(e) => {
                SqliteStore::remove_files(path);
                Err(e)
            }
        }
    }

    /// Remove a store file just made and SQLite's companions of it (an `init` that failed),
    /// so that the next `init` is not refused by a leftover.
    pub(crate) fn remove_files(path: &Path) {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }

    /// Open the store file at `path`, applying schema migrations.
    pub fn open(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(ServerError::Init(
                "no store at this path: create one with `kluis-server init`",
            ));
        }
        let mut conn = connect(path)?;
        migrate(&mut conn)?;
        Ok(SqliteStore {
            conn,
            path: path.to_owned(),
        })
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether some process (a running server) has the store at `path` open. Checked
    /// before a master-key rotation, which must not run under a server, and before a restore.
    pub fn in_use(path: &Path) -> Result<bool> {
        backup::in_use(path)
    }

    /// Remove every old copy of destroyed sealed keys from the store's files: checkpoint the
    /// write-ahead log into the database file and truncate the log to zero bytes, then clear
    /// the pending mark that a destroy leaves.
    ///
    /// The checkpoint runs on its own connection that never waits for a lock: a reader that
    /// holds an older snapshot (which may still see the key) makes it fail at once, and it is
    /// retried with backoff for up to `patience`. So it never holds the write lock while
    /// waiting, and the audit writer is never stalled by it. Fails with
    /// [`ServerError::ScrubPending`] when the readers did not finish in time.
    pub fn scrub(path: &Path, patience: Duration) -> Result<()> {
        if !path.exists() {
            return Err(ServerError::Init(
                "no store at this path: create one with `kluis-server init`",
            ));
        }
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::ZERO)?;
        let mark: Option<Vec<u8>> = conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'scrub_pending'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        let deadline = Instant::now() + patience;
        let mut pause = Duration::from_millis(5);
        loop {
            let result = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            });
            // Whether a reader of an older snapshot is known to be what holds it up: some
            // frames of the log could not be copied into the database file. Otherwise it
            // is another connection in the store at all (a reader or the write lock's holder).
            let reader = match result {
                // Not busy, and the log is empty: every change is in the database file.
                Ok((0, 0, _)) => break,
                Ok((_, log, copied)) => copied < log,
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if matches!(
                        e.code,
                        rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                    ) =>
                {
                    false
                }
                Err(e) => return Err(e.into()),
            };
            if Instant::now() + pause > deadline {
                return Err(ServerError::ScrubPending {
                    destroyed: None,
                    reader,
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(200));
        }
        if let Some(mark) = mark {
            // Cleared only if no destroy set a new mark meanwhile; if this fails the scrub
            // is simply done again later.
            conn.busy_timeout(Duration::from_secs(1))?;
            let _ = conn.execute(
                "DELETE FROM meta WHERE key = 'scrub_pending' AND value = ?1",
                params![mark],
            );
        }
        Ok(())
    }

    /// Run [`SqliteStore::scrub`] if a destroy left one pending (the scheduler does this).
    /// Returns whether one was pending.
    pub fn scrub_if_pending(&self, patience: Duration) -> Result<bool> {
        let pending = self
            .conn
            .prepare_cached("SELECT 1 FROM meta WHERE key = 'scrub_pending'")?
            .exists([])?;
        if pending {
            SqliteStore::scrub(&self.path, patience)?;
        }
        Ok(pending)
    }

    /// Check the structure of the store file at `path` with SQLite's `PRAGMA quick_check`
    /// (`thorough`: `PRAGMA integrity_check`, which also compares every index with its
    /// table). Needs no master key. Fails with [`ServerError::Damaged`] when problems are
    /// found, or when the file cannot be read as a database at all.
    pub fn check_integrity(path: &Path, thorough: bool) -> Result<()> {
        if !path.exists() {
            return Err(ServerError::Init(
                "no store at this path: create one with `kluis-server init`",
            ));
        }
        let damaged = |problems| ServerError::Damaged {
            path: path.to_owned(),
            problems,
        };
        let sql = if thorough {
            "PRAGMA integrity_check(100)"
        } else {
            "PRAGMA quick_check(100)"
        };
        let run = || -> rusqlite::Result<Vec<String>> {
            let conn = Connection::open(path)?;
            conn.busy_timeout(Duration::from_secs(5))?;
            let mut stmt = conn.prepare(sql)?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            rows.collect()
        };
        match run() {
            Ok(rows) if rows.len() == 1 && rows[0] == "ok" => Ok(()),
            // A row may hold many problems, one a line, under a `*** in database … ***`
            // heading: one problem an item, so that a message can name a few of them.
            Ok(rows) => Err(damaged(
                rows.iter()
                    .flat_map(|row| row.lines())
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with("*** in database"))
                    .map(str::to_owned)
                    .collect(),
            )),
            Err(rusqlite::Error::SqliteFailure(e, m))
                if matches!(
                    e.code,
                    rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase
                ) =>
            {
                Err(damaged(vec![m.unwrap_or_else(|| e.to_string())]))
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// A write transaction of [`SqliteStore`].
struct SqliteTx<'a>(&'a Transaction<'a>);

impl Store for SqliteStore {
    const LOCAL_READS: bool = true;

    fn reopen(&self) -> Result<Self> {
        Ok(SqliteStore {
            conn: connect(&self.path)?,
            path: self.path.clone(),
        })
    }

    /// One indexed read.
    fn is_reachable(&self) -> bool {
        self.conn
            .prepare_cached("SELECT 1 FROM meta WHERE key = 'check'")
            .and_then(|mut s| s.exists([]))
            .unwrap_or(false)
    }

    /// `BEGIN IMMEDIATE`: the write lock is taken at once, so a concurrent writer (the
    /// server and an admin command) waits (busy timeout) instead of failing.
    fn write<T>(&mut self, f: impl FnOnce(&mut dyn StoreTx) -> Result<T>) -> Result<T> {
        let tx = Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        let out = f(&mut SqliteTx(&tx))?;
        tx.commit()?;
        Ok(out)
    }

    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn
            .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
            .query_row([key], |r| r.get(0))
            .optional()?)
    }

    fn label_names(&self) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare("SELECT name FROM labels ORDER BY name")?;
        let names = stmt
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(names)
    }

    fn label_policy(&self, name: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .prepare_cached("SELECT policy FROM labels WHERE name = ?1")?
            .query_row([name], |r| r.get(0))
            .optional()?)
    }

    fn versions(&self, label: &str) -> Result<Vec<VersionRow>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {VERSION_COLUMNS} FROM key_versions WHERE label = ?1 ORDER BY kid"
        ))?;
        let rows = stmt.query_map([label], version_row)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn version(&self, label: &str, kid: u32) -> Result<Option<VersionRow>> {
        Ok(self
            .conn
            .prepare_cached(&format!(
                "SELECT {VERSION_COLUMNS} FROM key_versions WHERE label = ?1 AND kid = ?2"
            ))?
            .query_row(params![label, kid], version_row)
            .optional()?)
    }

    fn token(&self, id: &str) -> Result<Option<TokenRow>> {
        Ok(self
            .conn
            .prepare_cached(&format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = ?1"))?
            .query_row([id], token_row)
            .optional()?)
    }

    fn tokens(&self) -> Result<Vec<TokenRow>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY created_ms"
        ))?;
        let rows = stmt.query_map([], token_row)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn audit_page(
        &self,
        actor: Option<&str>,
        after: i64,
        limit: usize,
    ) -> Result<Vec<AuditRecord>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, time_ms, actor, action, label, kid, doc_id, outcome, reason, client, mac, credential
             FROM audit WHERE (?1 IS NULL OR actor = ?1) AND seq > ?2 ORDER BY seq LIMIT ?3",
        )?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![actor, after, limit], audit_row)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn audit_by_credential(&self, credential: &str) -> Result<Vec<AuditRecord>> {
        // Exactly this credential, or one of its JWTs (`…#<jti>`) when no `#` was given.
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, time_ms, actor, action, label, kid, doc_id, outcome, reason, client, mac, credential
             FROM audit WHERE credential = ?1
                OR (instr(?1, '#') = 0 AND substr(credential, 1, length(?1) + 1) = ?1 || '#')
             ORDER BY seq",
        )?;
        let rows = stmt.query_map(params![credential], audit_row)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// Secure delete zeroed the freed space in the new page; the checkpoint puts that page
    /// into the database file and empties the log, which held the old copies.
    fn forget_old_copies(&mut self) -> Result<()> {
        SqliteStore::scrub(&self.path, SCRUB_PATIENCE)
    }

    fn forget_pending_copies(&self, patience: Duration) -> Result<bool> {
        self.scrub_if_pending(patience)
    }

    /// A deferred read transaction (its snapshot starts at the first read), rolled back at
    /// the end; inside a transaction already, that one's snapshot.
    fn snapshot<T>(&self, f: impl FnOnce(&Self) -> Result<T>) -> Result<T> {
        let _snapshot = if self.conn.is_autocommit() {
            Some(self.conn.unchecked_transaction()?)
        } else {
            None
        };
        f(self)
    }
}

impl StoreTx for SqliteTx<'_> {
    fn meta(&mut self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .0
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    fn put_meta(&mut self, key: &str, value: &[u8]) -> Result<()> {
        self.0
            .prepare_cached(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![key, value])?;
        Ok(())
    }

    fn label_policy(&mut self, name: &str) -> Result<Option<String>> {
        Ok(self
            .0
            .query_row("SELECT policy FROM labels WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?)
    }

    fn insert_label(&mut self, name: &str, policy: &str, created_ms: i64) -> Result<()> {
        self.0.execute(
            "INSERT INTO labels (name, policy, created_ms) VALUES (?1, ?2, ?3)",
            params![name, policy, created_ms],
        )?;
        Ok(())
    }

    fn set_policy(&mut self, name: &str, policy: &str) -> Result<()> {
        self.0.execute(
            "UPDATE labels SET policy = ?2 WHERE name = ?1",
            params![name, policy],
        )?;
        Ok(())
    }

    fn version(&mut self, label: &str, kid: u32) -> Result<Option<VersionRow>> {
        Ok(self
            .0
            .prepare_cached(&format!(
                "SELECT {VERSION_COLUMNS} FROM key_versions WHERE label = ?1 AND kid = ?2"
            ))?
            .query_row(params![label, kid], version_row)
            .optional()?)
    }

    fn insert_version(&mut self, label: &str, v: &VersionRow) -> Result<()> {
        self.0.execute(
            "INSERT INTO key_versions (label, kid, state, public_key, sealed_secret, created_ms,
                 destroyed_ms, superseded_ms, dke_public, dke_sealed)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                label,
                v.kid,
                v.state.as_str(),
                v.public_key,
                v.sealed_secret,
                v.created_ms,
                v.destroyed_ms,
                v.superseded_ms,
                v.dke_public,
                v.dke_sealed
            ],
        )?;
        Ok(())
    }

    fn supersede_current(&mut self, label: &str, at_ms: i64) -> Result<()> {
        self.0.execute(
            "UPDATE key_versions SET state = 'active', superseded_ms = ?2
             WHERE label = ?1 AND state = 'current'",
            params![label, at_ms],
        )?;
        Ok(())
    }

    fn set_state(&mut self, label: &str, kid: u32, state: VersionState) -> Result<()> {
        self.0.execute(
            "UPDATE key_versions SET state = ?3 WHERE label = ?1 AND kid = ?2",
            params![label, kid, state.as_str()],
        )?;
        Ok(())
    }

    fn destroy_version(&mut self, label: &str, kid: u32, at_ms: i64) -> Result<()> {
        self.0.execute(
            "UPDATE key_versions
             SET state = 'destroyed', sealed_secret = NULL, dke_sealed = NULL, destroyed_ms = ?3
             WHERE label = ?1 AND kid = ?2",
            params![label, kid, at_ms],
        )?;
        // Until a checkpoint has pushed this change into the database file and emptied
        // the log, old copies of the sealed key remain there: mark the scrub as pending,
        // in the same transaction, so that it is retried if it cannot finish now.
        let mark: [u8; 16] = random()?;
        self.put_meta("scrub_pending", &mark)
    }

    fn sealed_secrets(&mut self) -> Result<Vec<SealedRow>> {
        let mut out = Vec::new();
        for (kind, column) in [
            (SecretKind::Label, "sealed_secret"),
            (SecretKind::Dke, "dke_sealed"),
        ] {
            let mut stmt = self.0.prepare(&format!(
                "SELECT label, kid, {column} FROM key_versions WHERE {column} IS NOT NULL"
            ))?;
            let rows = stmt.query_map([], |r| {
                Ok(SealedRow {
                    label: r.get(0)?,
                    kid: r.get(1)?,
                    kind,
                    sealed: r.get(2)?,
                })
            })?;
            out.extend(rows.collect::<rusqlite::Result<Vec<_>>>()?);
        }
        Ok(out)
    }

    fn set_sealed_secret(
        &mut self,
        label: &str,
        kid: u32,
        kind: SecretKind,
        sealed: &[u8],
    ) -> Result<()> {
        let column = match kind {
            SecretKind::Label => "sealed_secret",
            SecretKind::Dke => "dke_sealed",
        };
        self.0.execute(
            &format!("UPDATE key_versions SET {column} = ?3 WHERE label = ?1 AND kid = ?2"),
            params![label, kid, sealed],
        )?;
        Ok(())
    }

    fn set_dke_key(&mut self, label: &str, kid: u32, public: &[u8], sealed: &[u8]) -> Result<()> {
        self.0.execute(
            "UPDATE key_versions SET dke_public = ?3, dke_sealed = ?4
             WHERE label = ?1 AND kid = ?2 AND state != 'destroyed'",
            params![label, kid, public, sealed],
        )?;
        Ok(())
    }

    fn insert_token(&mut self, t: &TokenRow) -> Result<()> {
        let groups = serde_json::to_string(&t.groups).expect("strings");
        self.0.execute(
            "INSERT INTO tokens (id, hash, user, groups, created_ms, expires_ms, revoked_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                t.id,
                t.hash,
                t.user,
                groups,
                t.created_ms,
                t.expires_ms,
                t.revoked_ms
            ],
        )?;
        Ok(())
    }

    fn revoke_token(&mut self, id: &str, at_ms: i64) -> Result<bool> {
        let n = self.0.execute(
            "UPDATE tokens SET revoked_ms = ?2 WHERE id = ?1 AND revoked_ms IS NULL",
            params![id, at_ms],
        )?;
        Ok(n > 0)
    }

    fn revoke_user(&mut self, user: &str, at_ms: i64) -> Result<Vec<String>> {
        let ids = {
            let mut stmt = self.0.prepare(
                "SELECT id FROM tokens WHERE user = ?1 AND revoked_ms IS NULL ORDER BY created_ms",
            )?;
            stmt.query_map([user], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?
        };
        self.0.execute(
            "UPDATE tokens SET revoked_ms = ?2 WHERE user = ?1 AND revoked_ms IS NULL",
            params![user, at_ms],
        )?;
        Ok(ids)
    }

    fn audit_tail(&mut self) -> Result<Option<(i64, Vec<u8>)>> {
        Ok(self
            .0
            .prepare_cached("SELECT seq, mac FROM audit ORDER BY seq DESC LIMIT 1")?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    }

    fn insert_audit(&mut self, seq: i64, e: &AuditEntry, mac: &[u8]) -> Result<()> {
        // Prepared once per connection, not once per record: this is the audit writer's loop.
        self.0
            .prepare_cached(
                "INSERT INTO audit (seq, time_ms, actor, action, label, kid, doc_id, outcome, reason, client, mac, credential)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?
            .execute(params![
                seq,
                e.time_ms,
                e.actor,
                e.action,
                e.label,
                e.kid,
                e.doc_id,
                e.outcome,
                e.reason,
                e.client,
                mac,
                e.credential
            ])?;
        Ok(())
    }
}
