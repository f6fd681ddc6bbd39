//! The SQLite store: WAL, foreign keys, schema migrations, secure delete.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use kluis_core::{LabelKey, LabelPublicKey};
use ring::hmac;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use crate::audit::{self, AuditEntry, AuditRecord, GENESIS};
use crate::error::{Result, ServerError};
use crate::master_key::{MasterKey, random};
use crate::policy::Policy;
use crate::policy_edit::PolicyEdit;
use crate::store::{
    LabelInfo, Principal, ScheduledChange, Store, TokenInfo, VersionInfo, VersionState,
};
use crate::time::now_ms;

mod backup;
mod lifecycle;
mod rekey_master;
#[cfg(test)]
mod scrub_tests;

pub use backup::BackupCheck;
pub use rekey_master::{MasterKeyRotation, pending_key_file};

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
];

/// How long a destroy waits for readers of older snapshots before it reports the scrub of
/// old copies as pending.
const SCRUB_PATIENCE: Duration = Duration::from_secs(2);

/// Text every store seals at init, to recognise the right master key.
const CHECK: &[u8] = b"kluis-server master key check";

/// How the master key is obtained.
pub enum KeySource<'a> {
    /// A key file written by `init` (mode 0600).
    File(&'a Path),
    /// A passphrase; the Argon2id salt is kept in the store.
    Passphrase(&'a [u8]),
}

/// The SQLite store. One connection; [`SqliteStore::reopen`] gives more (WAL lets readers
/// run beside the one writer).
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
    master: MasterKey,
    audit_key: hmac::Key,
    token_key: hmac::Key,
    /// Unsealed label keys, keyed by label and version, with the sealed bytes they came
    /// from: reused only while the row still holds exactly those bytes.
    keys: RefCell<KeyCache>,
}

/// Label keys by (label, kid), with the sealed bytes each was unsealed from.
type KeyCache = HashMap<(String, u32), (Vec<u8>, LabelKey)>;

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

/// Associated data binding a sealed label key to its label and version.
fn key_aad(label: &str, kid: u32) -> Vec<u8> {
    let mut aad = b"kluis-server/v1/label-key".to_vec();
    aad.push(label.len() as u8);
    aad.extend_from_slice(label.as_bytes());
    aad.extend_from_slice(&kid.to_be_bytes());
    aad
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

impl SqliteStore {
    /// Create a new store at `path` (which must not exist) under `key`.
    pub fn init(path: &Path, key: KeySource<'_>) -> Result<Self> {
        if path.exists() {
            return Err(ServerError::Init(
                "the store exists already: refusing to initialise it again (give another \
                 --store, or remove that file if it is an unused leftover)",
            ));
        }
        let key_file = match key {
            KeySource::File(p) => Some(p),
            KeySource::Passphrase(_) => None,
        };
        if key_file.is_some_and(|p| p.symlink_metadata().is_ok()) {
            // Checked before anything is created, so a refused init leaves no half-made store.
            return Err(ServerError::Init(
                "the master key file exists already: refusing to overwrite a key that may open \
                 another store (give another --key-file, or move that file away if it is an \
                 unused leftover)",
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
        let mut wrote_key = false;
        let made = Self::init_created(path, key, &mut wrote_key);
        if made.is_err() {
            // Nothing but this call has used the new files: remove them, so that the next
            // `init` is not refused by a leftover.
            for suffix in ["", "-wal", "-shm", "-journal"] {
                let mut p = path.as_os_str().to_owned();
                p.push(suffix);
                let _ = std::fs::remove_file(p);
            }
            if let (true, Some(p)) = (wrote_key, key_file) {
                let _ = std::fs::remove_file(p);
            }
        }
        made
    }

    /// [`SqliteStore::init`] after the empty store file was created.
    fn init_created(path: &Path, key: KeySource<'_>, wrote_key: &mut bool) -> Result<Self> {
        let mut conn = connect(path)?;
        migrate(&mut conn)?;
        let (master, kdf) = match key {
            KeySource::File(p) => {
                let m = MasterKey::generate()?;
                m.write_new_file(p)?;
                *wrote_key = true;
                (m, "file".to_owned())
            }
            KeySource::Passphrase(pw) => {
                let salt: [u8; 16] = random()?;
                (
                    MasterKey::from_passphrase(pw, &salt)?,
                    format!("argon2id:{}", hex::encode(salt)),
                )
            }
        };
        let check = master.seal(b"check", CHECK)?;
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('kdf', ?1), ('check', ?2)",
            params![kdf.as_bytes(), check],
        )?;
        let mut store = SqliteStore::with_key(conn, path, master)?;
        store.append_audit(&[admin_entry("admin", "store.init", None, None)])?;
        Ok(store)
    }

    /// Open an existing store; fails unless the master key is the right one.
    pub fn open(path: &Path, key: KeySource<'_>) -> Result<Self> {
        if !path.exists() {
            return Err(ServerError::Init(
                "no store at this path: create one with `kluis-server init`",
            ));
        }
        let mut conn = connect(path)?;
        migrate(&mut conn)?;
        let kdf: Vec<u8> = conn
            .query_row("SELECT value FROM meta WHERE key = 'kdf'", [], |r| r.get(0))
            .optional()?
            .ok_or(ServerError::Init("the store is not initialised"))?;
        let kdf = String::from_utf8_lossy(&kdf).into_owned();
        let master = match (key, kdf.strip_prefix("argon2id:")) {
            (KeySource::File(p), None) => MasterKey::read_file(p)?,
            (KeySource::Passphrase(pw), Some(salt)) => {
                let mut s = [0u8; 16];
                hex::decode_to_slice(salt, &mut s)
                    .map_err(|_| ServerError::Init("the store's passphrase salt is damaged"))?;
                MasterKey::from_passphrase(pw, &s)?
            }
            (KeySource::File(_), Some(_)) => {
                return Err(ServerError::Init(
                    "this store is protected by a passphrase, not a key file: give it with \
                     --passphrase-file, --passphrase-fd, --passphrase-env or --passphrase-prompt",
                ));
            }
            (KeySource::Passphrase(_), None) => {
                return Err(ServerError::Init(
                    "this store is protected by a key file, not a passphrase: give the key file \
                     with --key-file (or key_file in the configuration) and no --passphrase-…",
                ));
            }
        };
        let check: Vec<u8> =
            conn.query_row("SELECT value FROM meta WHERE key = 'check'", [], |r| {
                r.get(0)
            })?;
        match master.open(b"check", &check) {
            Some(c) if c.as_slice() == CHECK => SqliteStore::with_key(conn, path, master),
            _ => Err(ServerError::WrongMasterKey),
        }
    }

    fn with_key(conn: Connection, path: &Path, master: MasterKey) -> Result<Self> {
        // Stored sealed after a master-key rotation, derived from the master key before.
        let (audit_key, token_key) = rekey_master::hmac_keys(&conn, &master)?;
        Ok(SqliteStore {
            audit_key,
            token_key,
            conn,
            path: path.to_owned(),
            master,
            keys: RefCell::default(),
        })
    }

    /// Whether the store answers a query (one indexed read, for readiness probes).
    pub fn is_reachable(&self) -> bool {
        self.conn
            .prepare_cached("SELECT 1 FROM meta WHERE key = 'check'")
            .and_then(|mut s| s.exists([]))
            .unwrap_or(false)
    }

    /// Another connection to the same store, under the same (already checked) master key.
    pub fn reopen(&self) -> Result<Self> {
        SqliteStore::with_key(connect(&self.path)?, &self.path, self.master.duplicate())
    }

    /// A write transaction that takes the write lock at once (`BEGIN IMMEDIATE`), so a
    /// concurrent writer (the server and an admin command) waits instead of failing.
    fn write_tx(&self) -> Result<Transaction<'_>> {
        Ok(Transaction::new_unchecked(
            &self.conn,
            TransactionBehavior::Immediate,
        )?)
    }

    /// Append entries inside an open transaction.
    fn append_in(&self, tx: &Transaction<'_>, entries: &[AuditEntry]) -> Result<()> {
        let (mut seq, mut prev): (i64, Vec<u8>) = tx
            .query_row(
                "SELECT seq, mac FROM audit ORDER BY seq DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?
            .unwrap_or((0, GENESIS.to_vec()));
        // Prepared once per connection, not once per record: this is the audit writer's loop.
        let mut insert = tx.prepare_cached(
            "INSERT INTO audit (seq, time_ms, actor, action, label, kid, doc_id, outcome, reason, client, mac, credential)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        )?;
        for e in entries {
            seq += 1;
            let mac = audit::chain_mac(&self.audit_key, &prev, seq, e);
            insert.execute(params![
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
            prev = mac;
        }
        drop(insert);
        let head = audit::head_mac(&self.audit_key, seq, &prev);
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('audit_head', ?1)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![[&seq.to_be_bytes()[..], &head].concat()],
        )?;
        Ok(())
    }

    fn new_version(&self, tx: &Transaction<'_>, label: &str, kid: u32) -> Result<LabelPublicKey> {
        // Never seal under a master key the store has been rotated away from.
        self.check_master_in(tx)?;
        let key = LabelKey::generate(label, kid)?;
        let sealed = self
            .master
            .seal(&key_aad(label, kid), &key.expose_secret()[..])?;
        tx.execute(
            "INSERT INTO key_versions (label, kid, state, public_key, sealed_secret, created_ms)
             VALUES (?1, ?2, 'current', ?3, ?4, ?5)",
            params![
                label,
                kid,
                key.public_key().key().to_string(),
                sealed,
                now_ms()
            ],
        )?;
        Ok(key.public_key().clone())
    }

    fn version_state(&self, name: &str, kid: u32) -> Result<VersionState> {
        let state: Option<String> = self
            .conn
            .query_row(
                "SELECT state FROM key_versions WHERE label = ?1 AND kid = ?2",
                params![name, kid],
                |r| r.get(0),
            )
            .optional()?;
        let state = state.ok_or_else(|| self.missing(name, kid))?;
        VersionState::parse(&state).ok_or(ServerError::Init("unknown key state in the store"))
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

    /// Change a non-current version's state, with its audit record.
    fn set_state(&mut self, name: &str, kid: u32, to: VersionState, actor: &str) -> Result<()> {
        // The state is checked inside the write transaction: a concurrent destroy that
        // committed first is seen here (a refusal below rolls the transaction back).
        let tx = self.write_tx()?;
        match self.version_state(name, kid)? {
            // Retiring twice changes nothing.
            VersionState::Retired if to == VersionState::Retired => return Ok(()),
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
        if to == VersionState::Destroyed {
            tx.execute(
                "UPDATE key_versions SET state = 'destroyed', sealed_secret = NULL, destroyed_ms = ?3
                 WHERE label = ?1 AND kid = ?2",
                params![name, kid, now_ms()],
            )?;
            // Until a checkpoint has pushed this change into the database file and emptied
            // the log, old copies of the sealed key remain there: mark the scrub as pending,
            // in the same transaction, so that it is retried if it cannot finish now.
            let mark: [u8; 16] = random()?;
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('scrub_pending', ?1)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![&mark[..]],
            )?;
        } else {
            tx.execute(
                "UPDATE key_versions SET state = ?3 WHERE label = ?1 AND kid = ?2",
                params![name, kid, to.as_str()],
            )?;
        }
        let action = format!(
            "label.{}",
            if to == VersionState::Destroyed {
                "destroy"
            } else {
                "retire"
            }
        );
        self.append_in(&tx, &[admin_entry(actor, &action, Some(name), Some(kid))])?;
        tx.commit()?;
        if to == VersionState::Destroyed {
            // Secure delete zeroed the freed space in the new page; the checkpoint puts that
            // page into the database file and empties the log, which held the old copies.
            // Any failure now is reported as what it is: the version IS destroyed, the
            // scrub of old copies remains to do (and stays marked pending in the store).
            SqliteStore::scrub(&self.path, SCRUB_PATIENCE).map_err(|e| match e {
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

    /// The scheduled changes of one label due at `now_ms`: those made go to `done`, those
    /// that failed (logged) to `failed`.
    fn schedule_label(
        &mut self,
        name: &str,
        now_ms: i64,
        actor: &str,
        done: &mut Vec<ScheduledChange>,
        failed: &mut Vec<(String, String)>,
    ) {
        let mut fail = |what: String, e: ServerError| {
            crate::log!("scheduled work on {what} failed, going on with the rest: {e}");
            failed.push((what, e.to_string()));
        };
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
                match self.destroy(name, v.kid, actor) {
                    // Destroyed; the scrub of old copies is retried by the scheduler.
                    Ok(())
                    | Err(ServerError::ScrubPending { .. } | ServerError::ScrubFailed { .. }) => {
                        done.push(ScheduledChange::Destroyed {
                            label: name.to_owned(),
                            kid: v.kid,
                        })
                    }
                    Err(e) => fail(format!("label `{name}` version {} (retention)", v.kid), e),
                }
            }
        }
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

impl Store for SqliteStore {
    fn create_label(&mut self, name: &str, policy: &Policy, actor: &str) -> Result<LabelPublicKey> {
        policy.validate()?;
        if self.label(name).is_ok() {
            return Err(ServerError::LabelExists(name.to_owned()));
        }
        let json = serde_json::to_string(policy).expect("policy serialises");
        let tx = self.write_tx()?;
        tx.execute(
            "INSERT INTO labels (name, policy, created_ms) VALUES (?1, ?2, ?3)",
            params![name, json, now_ms()],
        )?;
        let public = self.new_version(&tx, name, 1)?;
        self.append_in(
            &tx,
            &[admin_entry(actor, "label.create", Some(name), Some(1))],
        )?;
        tx.commit()?;
        Ok(public)
    }

    fn labels(&self) -> Result<Vec<LabelInfo>> {
        let mut stmt = self.conn.prepare("SELECT name FROM labels ORDER BY name")?;
        let names = stmt
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        names.iter().map(|n| self.label(n)).collect()
    }

    fn label(&self, name: &str) -> Result<LabelInfo> {
        let policy: Option<String> = self
            .conn
            .prepare_cached("SELECT policy FROM labels WHERE name = ?1")?
            .query_row([name], |r| r.get(0))
            .optional()?;
        let policy = policy.ok_or_else(|| ServerError::UnknownLabel(name.to_owned()))?;
        let policy: Policy = serde_json::from_str(&policy)
            .map_err(|e| ServerError::BadPolicy(format!("stored policy of `{name}`: {e}")))?;
        let mut stmt = self.conn.prepare_cached(
            "SELECT kid, state, public_key, created_ms, destroyed_ms, superseded_ms
             FROM key_versions WHERE label = ?1 ORDER BY kid",
        )?;
        let versions = stmt
            .query_map([name], |r| {
                Ok((
                    r.get::<_, u32>(0)?,
                    r.get::<_, String>(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })?
            .map(|row| {
                let (kid, state, public_key, created_ms, destroyed_ms, superseded_ms) = row?;
                Ok(VersionInfo {
                    kid,
                    state: VersionState::parse(&state)
                        .ok_or(ServerError::Init("unknown key state in the store"))?,
                    public_key,
                    created_ms,
                    destroyed_ms,
                    superseded_ms,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(LabelInfo {
            name: name.to_owned(),
            policy,
            versions,
        })
    }

    fn rotate(&mut self, name: &str, actor: &str) -> Result<u32> {
        let info = self.label(name)?;
        let last = info.versions.iter().map(|v| v.kid).max().unwrap_or(0);
        let kid = last.checked_add(1).ok_or_else(|| {
            ServerError::Refused(format!(
                "label `{name}` is at the highest key version there can be ({last}), so it \
                 cannot be rotated: versions are never that high unless the store was tampered \
                 with; check it (`kluis-server audit verify`) and restore a backup"
            ))
        })?;
        let tx = self.write_tx()?;
        tx.execute(
            "UPDATE key_versions SET state = 'active', superseded_ms = ?2
             WHERE label = ?1 AND state = 'current'",
            params![name, now_ms()],
        )?;
        self.new_version(&tx, name, kid)?;
        self.append_in(
            &tx,
            &[admin_entry(actor, "label.rotate", Some(name), Some(kid))],
        )?;
        tx.commit()?;
        Ok(kid)
    }

    fn retire(&mut self, name: &str, kid: u32, actor: &str) -> Result<()> {
        self.set_state(name, kid, VersionState::Retired, actor)
    }

    fn destroy(&mut self, name: &str, kid: u32, actor: &str) -> Result<()> {
        self.set_state(name, kid, VersionState::Destroyed, actor)
    }

    fn label_key(&self, name: &str, kid: u32) -> Result<(LabelKey, VersionState)> {
        let row: Option<(String, Option<Vec<u8>>, Option<i64>)> = self
            .conn
            .prepare_cached(
                "SELECT state, sealed_secret, destroyed_ms FROM key_versions
                 WHERE label = ?1 AND kid = ?2",
            )?
            .query_row(params![name, kid], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?;
        let (state, sealed, destroyed_ms) = row.ok_or_else(|| self.missing(name, kid))?;
        let state = VersionState::parse(&state)
            .ok_or(ServerError::Init("unknown key state in the store"))?;
        let Some(sealed) = sealed else {
            self.keys.borrow_mut().remove(&(name.to_owned(), kid));
            return Err(ServerError::Destroyed {
                label: name.to_owned(),
                kid,
                destroyed_ms,
            });
        };
        if let Some((bytes, key)) = self.keys.borrow().get(&(name.to_owned(), kid)) {
            if *bytes == sealed {
                return Ok((key.clone(), state));
            }
        }
        // The label and version are bound as associated data: a row copied elsewhere fails.
        let secret = self
            .master
            .open(&key_aad(name, kid), &sealed)
            .ok_or(ServerError::WrongMasterKey)?;
        let bytes: [u8; 32] = secret
            .as_slice()
            .try_into()
            .map_err(|_| ServerError::WrongMasterKey)?;
        let key = LabelKey::from_secret_bytes(name, kid, bytes)?;
        self.keys
            .borrow_mut()
            .insert((name.to_owned(), kid), (sealed, key.clone()));
        Ok((key, state))
    }

    fn create_token(
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
        let raw: [u8; 32] = random()?;
        let token = format!("kluis_{}", URL_SAFE_NO_PAD.encode(raw));
        let id = token[..14].to_owned(); // "kluis_" and 8 characters: public, names the token
        let hash = hmac::sign(&self.token_key, token.as_bytes());
        let tx = self.write_tx()?;
        tx.execute(
            "INSERT INTO tokens (id, hash, user, groups, created_ms, expires_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![id, hash.as_ref(), user, serde_json::to_string(groups).expect("strings"), now_ms(), expires_ms],
        )?;
        let mut entry = admin_entry(actor, "token.create", None, None);
        entry.reason = Some(format!("token {id} for user {user}"));
        self.append_in(&tx, &[entry])?;
        tx.commit()?;
        Ok((token, id))
    }

    fn tokens(&self) -> Result<Vec<TokenInfo>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, user, groups, expires_ms, revoked_ms FROM tokens ORDER BY created_ms",
        )?;
        let rows = stmt.query_map([], |r| {
            let groups: String = r.get(2)?;
            Ok(TokenInfo {
                id: r.get(0)?,
                user: r.get(1)?,
                groups: serde_json::from_str(&groups).unwrap_or_default(),
                expires_ms: r.get(3)?,
                revoked_ms: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn update_policy(
        &mut self,
        name: &str,
        edit: &PolicyEdit,
        actor: &str,
    ) -> Result<(Policy, Policy)> {
        self.update_policy_in(name, edit, actor)
    }

    fn revoke_user_tokens(&mut self, user: &str, actor: &str) -> Result<Vec<String>> {
        self.revoke_user_in(user, actor)
    }

    fn revoke_token(&mut self, id: &str, actor: &str) -> Result<()> {
        let tx = self.write_tx()?;
        let n = tx.execute(
            "UPDATE tokens SET revoked_ms = ?2 WHERE id = ?1 AND revoked_ms IS NULL",
            params![id, now_ms()],
        )?;
        if n == 0 {
            return Err(ServerError::Refused(format!(
                "no active token `{id}`: see `kluis-server token list`"
            )));
        }
        let mut entry = admin_entry(actor, "token.revoke", None, None);
        entry.reason = Some(format!("token {id}"));
        self.append_in(&tx, &[entry])?;
        tx.commit()?;
        Ok(())
    }

    fn authenticate(&self, token: &str, now_ms: i64) -> Result<Option<Principal>> {
        if token.len() != 49 || !token.starts_with("kluis_") {
            return Ok(None);
        }
        let id = &token[..14];
        /// hash, user, groups, expires, revoked
        type TokenRow = (Vec<u8>, String, String, Option<i64>, Option<i64>);
        let row: Option<TokenRow> = self
            .conn
            .prepare_cached(
                "SELECT hash, user, groups, expires_ms, revoked_ms FROM tokens WHERE id = ?1",
            )?
            .query_row([id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .optional()?;
        let Some((hash, user, groups, expires, revoked)) = row else {
            return Ok(None);
        };
        // ring compares the tag in constant time.
        if hmac::verify(&self.token_key, token.as_bytes(), &hash).is_err()
            || revoked.is_some()
            || expires.is_some_and(|e| e <= now_ms)
        {
            return Ok(None);
        }
        let groups: Vec<String> = serde_json::from_str(&groups).unwrap_or_default();
        // A token issued before names were namespaced may carry a name of another source
        // (`oidc:…`, `admin:…`) or of the server itself: it authenticates no one.
        if crate::policy::check_token_names(&user, &groups).is_err() {
            return Ok(None);
        }
        Ok(Some(Principal {
            user,
            groups,
            credential: format!("token:{id}"),
        }))
    }

    fn run_schedule(&mut self, now_ms: i64, actor: &str) -> Result<Vec<ScheduledChange>> {
        let names = self
            .conn
            .prepare("SELECT name FROM labels ORDER BY name")?
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        // Each label, and each change, on its own: one that fails (a policy that no longer
        // reads, a damaged row) is logged and reported at the end, and does not keep the
        // labels after it from being rotated or their retention from being enforced.
        let mut done = Vec::new();
        let mut failed = Vec::new();
        for name in names {
            self.schedule_label(&name, now_ms, actor, &mut done, &mut failed);
        }
        if failed.is_empty() {
            Ok(done)
        } else {
            Err(ServerError::ScheduleIncomplete { done, failed })
        }
    }

    fn append_audit(&mut self, entries: &[AuditEntry]) -> Result<()> {
        let tx = self.write_tx()?;
        self.append_in(&tx, entries)?;
        tx.commit()?;
        Ok(())
    }

    fn audit_records(&self, actor: Option<&str>) -> Result<Vec<AuditRecord>> {
        self.audit_page(actor, 0, usize::MAX)
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

    fn verify_audit(&self) -> Result<(i64, String)> {
        // One read snapshot: the records and the stored head must be read at the same moment,
        // or a record the server appends in between reads as "cut off" (rolled back on drop).
        let _snapshot = if self.conn.is_autocommit() {
            Some(self.conn.unchecked_transaction()?)
        } else {
            None
        };
        let broken = |seq, what| ServerError::AuditBroken { seq, what };
        let mut prev = GENESIS.to_vec();
        let mut expected = 1;
        for rec in self.audit_records(None)? {
            if rec.seq != expected {
                return Err(broken(expected, "a record is missing"));
            }
            let mac = audit::chain_mac(&self.audit_key, &prev, rec.seq, &rec.entry);
            if mac != rec.mac {
                return Err(broken(rec.seq, "the record or one before it was changed"));
            }
            prev = rec.mac;
            expected += 1;
        }
        let count = expected - 1;
        let head: Option<Vec<u8>> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'audit_head'", [], |r| {
                r.get(0)
            })
            .optional()?;
        let want = [
            &count.to_be_bytes()[..],
            &audit::head_mac(&self.audit_key, count, &prev),
        ]
        .concat();
        if head.as_deref() != Some(&want[..]) {
            return Err(broken(count + 1, "records were cut off the end"));
        }
        Ok((count, hex::encode(&prev)))
    }
}
