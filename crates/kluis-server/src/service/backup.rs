//! Operations of the SQLite store that need the keyring: opening by path, online backup and
//! restore, each with its audit record.

use std::path::Path;

use super::{KeyService, admin_entry};
use crate::error::Result;
use crate::keyring::KeySource;
use crate::sqlite::{BackupCheck, SqliteStore};

impl KeyService<SqliteStore> {
    /// Create a new SQLite store at `path` (which must not exist) under `key`.
    pub fn init_sqlite(path: &Path, key: KeySource<'_>) -> Result<Self> {
        KeyService::init(SqliteStore::create(path)?, key)
    }

    /// Open the SQLite store at `path`; fails unless `key` gives its master key.
    pub fn open_sqlite(path: &Path, key: KeySource<'_>) -> Result<Self> {
        KeyService::open(SqliteStore::open(path)?, key)
    }

    /// Write a consistent copy of the store to `to`, which must not exist, while other
    /// connections keep reading and writing. The copy is sealed under the same master key.
    /// The backup holds a `store.backup` record naming the file, appended first.
    pub fn backup_to(&mut self, to: &Path, actor: &str) -> Result<()> {
        let keyring = self.keyring.clone();
        self.store.backup_file(to, |store| {
            let mut entry = admin_entry(actor, "store.backup", None, None);
            entry.reason = Some(format!("backup to {}", to.display()));
            crate::store::Store::write(store, |tx| keyring.append_audit(tx, &[entry]))
        })
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
        SqliteStore::restore_file(from, to, force, |copy| {
            let mut svc = KeyService::open(copy, key)?;
            svc.verify_audit()?;
            let mut entry = admin_entry(actor, "store.restore", None, None);
            entry.reason = Some(format!("restored from {}", from.display()));
            svc.append_audit(&[entry])?;
            let (records, head) = svc.verify_audit()?;
            Ok(BackupCheck { records, head })
        })
    }
}
