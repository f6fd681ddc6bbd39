//! Online backup and restore of the SQLite store.
//!
//! A backup is SQLite's `VACUUM INTO`: one read transaction, so it is consistent while the
//! server keeps writing, and a compact copy without free pages (no leftovers of deleted
//! rows). The copy is written to a temporary name (mode 0600), fsynced, then renamed.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use rusqlite::Connection;

use super::rekey_master::sync_dir;
use super::{KeySource, SqliteStore, admin_entry};
use crate::error::{Result, ServerError};
use crate::master_key::random;
use crate::store::Store;

/// A new empty file beside `target` (mode 0600), named after it with a random suffix.
fn temp_beside(target: &Path, what: &str) -> Result<(PathBuf, std::fs::File)> {
    let name = target
        .file_name()
        .ok_or_else(|| ServerError::Config(format!("{} is not a file name", target.display())))?;
    let mut tmp = name.to_owned();
    tmp.push(format!(".{what}-{}", hex::encode(random::<8>()?)));
    let path = target.with_file_name(tmp);
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let file = opts.open(&path).map_err(|e| {
        ServerError::Config(format!(
            "cannot create a file beside {}: {e}",
            target.display()
        ))
    })?;
    Ok((path, file))
}

/// Removes a temporary file (and SQLite's companions of it) unless disarmed.
struct TempGuard(Option<PathBuf>);

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            for suffix in ["", "-journal", "-wal", "-shm"] {
                let mut s = p.as_os_str().to_owned();
                s.push(suffix);
                let _ = std::fs::remove_file(PathBuf::from(s));
            }
        }
    }
}

/// Whether another connection has the store open: it holds the WAL's shared lock, so an
/// exclusive lock cannot be had at once.
pub(super) fn in_use(path: &Path) -> Result<bool> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::ZERO)?;
    let locked = conn
        .pragma_update(None, "locking_mode", "EXCLUSIVE")
        .and_then(|()| conn.execute_batch("BEGIN EXCLUSIVE; COMMIT;"));
    match locked {
        Ok(()) => Ok(false),
        Err(rusqlite::Error::SqliteFailure(e, _))
            if matches!(
                e.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ) =>
        {
            Ok(true)
        }
        Err(e) => Err(e.into()),
    }
}

fn integrity_ok(path: &Path) -> Result<()> {
    let conn = Connection::open(path)?;
    let result: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    if result != "ok" {
        return Err(ServerError::Refused(format!(
            "{} fails SQLite's integrity check ({result}): use another backup",
            path.display()
        )));
    }
    Ok(())
}

/// What a verified backup holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupCheck {
    /// Audit records, all verified (with the `store.restore` record).
    pub records: i64,
    /// The head MAC (hex) of the audit chain.
    pub head: String,
}

impl SqliteStore {
    /// Write a consistent copy of the store to `to`, which must not exist, while other
    /// connections keep reading and writing. The copy is sealed under the same master key.
    /// The backup holds a `store.backup` record naming the file, appended first.
    pub fn backup_to(&mut self, to: &Path, actor: &str) -> Result<()> {
        if to.exists() {
            return Err(ServerError::Refused(format!(
                "{} exists: choose a new backup file name",
                to.display()
            )));
        }
        let (tmp, file) = temp_beside(to, "backup")?;
        drop(file);
        let mut guard = TempGuard(Some(tmp.clone()));
        let name = tmp
            .to_str()
            .ok_or_else(|| ServerError::Config(format!("{} is not a UTF-8 path", to.display())))?;
        let mut entry = admin_entry(actor, "store.backup", None, None);
        entry.reason = Some(format!("backup to {}", to.display()));
        self.append_audit(&[entry])?;
        // VACUUM INTO writes into an existing empty file, keeping its 0600 mode.
        self.conn.execute("VACUUM INTO ?1", [name])?;
        integrity_ok(&tmp)?;
        OpenOptions::new().write(true).open(&tmp)?.sync_all()?;
        if to.exists() {
            return Err(ServerError::Refused(format!(
                "{} appeared meanwhile: choose a new backup file name",
                to.display()
            )));
        }
        std::fs::rename(&tmp, to)?;
        guard.0 = None;
        sync_dir(to)?;
        Ok(())
    }

    /// Put the backup `from` in place as the store `to`, after checking that it passes
    /// SQLite's integrity check, that `key` opens it and that its audit chain verifies. Refuses
    /// to replace an existing store unless `force`; the server must be stopped. The backup
    /// file itself is not changed; the restored store gets a `store.restore` record.
    pub fn restore(
        from: &Path,
        to: &Path,
        key: KeySource<'_>,
        force: bool,
        actor: &str,
    ) -> Result<BackupCheck> {
        if !from.is_file() {
            return Err(ServerError::Config(format!(
                "no backup file at {}",
                from.display()
            )));
        }
        let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        if same(from, to) {
            return Err(ServerError::Refused(
                "the backup file is the store itself: restore from a file `backup` wrote".into(),
            ));
        }
        if to.exists() && !force {
            return Err(ServerError::Refused(format!(
                "a store exists at {}: stop the server and pass --force to replace it",
                to.display()
            )));
        }
        if to.exists() && in_use(to)? {
            return Err(ServerError::Refused(format!(
                "the store {} is in use (a running server?): stop it first",
                to.display()
            )));
        }
        let (tmp, mut file) = temp_beside(to, "restore")?;
        let mut guard = TempGuard(Some(tmp.clone()));
        std::io::copy(&mut std::fs::File::open(from)?, &mut file)?;
        file.sync_all()?;
        drop(file);
        integrity_ok(&tmp)?;
        let check = {
            let mut store = SqliteStore::open(&tmp, key)?;
            store.verify_audit()?;
            let mut entry = admin_entry(actor, "store.restore", None, None);
            entry.reason = Some(format!("restored from {}", from.display()));
            store.append_audit(&[entry])?;
            let (records, head) = store.verify_audit()?;
            // A single file, no WAL beside it, for the rename.
            store
                .conn
                .query_row("PRAGMA journal_mode = DELETE", [], |_| Ok(()))?;
            BackupCheck { records, head }
        };
        // The old store's WAL must not be replayed into the restored file.
        for suffix in ["-wal", "-shm"] {
            let mut s = to.as_os_str().to_owned();
            s.push(suffix);
            match std::fs::remove_file(PathBuf::from(s)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
        std::fs::rename(&tmp, to)?;
        guard.0 = None;
        sync_dir(to)?;
        Ok(check)
    }
}
