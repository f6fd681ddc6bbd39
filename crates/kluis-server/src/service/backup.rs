//! Operations of the SQLite store that need the keyring: opening by path, online backup and
//! restore, each with its audit record.

use std::path::Path;

use super::{KeyService, admin_entry};
use crate::error::{Result, ServerError};
use crate::keyring::KeySource;
use crate::sqlite::{BackupCheck, SqliteStore};
use crate::store::Store;

impl KeyService<SqliteStore> {
    /// Create a new SQLite store at `path` (which must not exist) under `key`.
    /// All or nothing: a refused or failed init leaves neither a store nor a key file.
    pub fn init_sqlite(path: &Path, key: KeySource<'_>) -> Result<Self> {
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
        let made = KeyService::init(SqliteStore::create(path)?, key);
        if made.is_err() {
            // Nothing but this call has used the new files: remove them (the key file did not
            // exist before, so one there now is this call's).
            SqliteStore::remove_files(path);
            if let Some(p) = key_file {
                let _ = std::fs::remove_file(p);
            }
        }
        made
    }

    /// Open the SQLite store at `path`; fails unless `key` gives its master key.
    pub fn open_sqlite(path: &Path, key: KeySource<'_>) -> Result<Self> {
        KeyService::open(SqliteStore::open(path)?, key)
    }

    /// Write a consistent copy of the store to `to`, which must not exist, while other
    /// connections keep reading and writing. The copy is sealed under the same master key.
    /// The backup holds a `store.backup` record naming the file, appended first (outcome
    /// `started`); the store then gets a second one, `ok` or `failed` with the error.
    pub fn backup_to(&mut self, to: &Path, actor: &str) -> Result<()> {
        let target = self.store.reserve_backup(to)?;
        // Recorded first, so the backup holds the record of its own making; as "started",
        // because it may still fail. A second record says how it ended.
        let mut entry = admin_entry(actor, "store.backup", None, None);
        entry.outcome = "started".into();
        entry.reason = Some(format!("backup to {}", to.display()));
        self.append_audit(&[entry])?;
        let result = self.store.write_backup(target);
        let mut end = admin_entry(actor, "store.backup", None, None);
        end.reason = Some(match &result {
            Ok(()) => format!("backup to {} written", to.display()),
            Err(e) => {
                end.outcome = "failed".into();
                format!("backup to {} failed: {e}", to.display())
            }
        });
        let recorded = self.append_audit(&[end]);
        result.and(recorded)
    }

    /// Every live label key opens under the master key and matches its stored public key:
    /// the chain and `integrity_check` do not look inside the sealed keys, and a backup with
    /// a damaged one must not replace a working store.
    fn keys_open(&self) -> Result<()> {
        for label in self.labels()? {
            for v in &label.versions {
                if v.state == crate::store::VersionState::Destroyed {
                    continue;
                }
                let damaged = |what: &str| {
                    ServerError::Refused(format!(
                        "the backup's key version {} of label `{}` {what}: use another backup",
                        v.kid, label.name
                    ))
                };
                let (key, _) = self
                    .label_key(&label.name, v.kid)
                    .map_err(|_| damaged("does not open with this master key"))?;
                if key.public_key().key().to_string() != v.public_key {
                    return Err(damaged("does not match its public key"));
                }
                // The Microsoft DKE key too: a damaged one fails every Office decrypt, and a
                // published public key that is not the private key's makes Office encrypt
                // documents that nothing opens.
                let row = self
                    .store
                    .version(&label.name, v.kid)?
                    .ok_or_else(|| damaged("is missing"))?;
                match (row.dke_public, row.dke_sealed) {
                    (None, None) => {}
                    (Some(public), Some(sealed)) => {
                        use aws_lc_rs::encoding::AsDer;
                        let pkcs8 = self
                            .keyring
                            .open_dke_key(&label.name, v.kid, &sealed)
                            .map_err(|_| damaged("has a DKE key that does not open"))?;
                        let matches = aws_lc_rs::rsa::PrivateDecryptingKey::from_pkcs8(&pkcs8)
                            .ok()
                            .and_then(|k| k.public_key().as_der().ok())
                            .is_some_and(|der| der.as_ref() == public.as_slice());
                        if !matches {
                            return Err(damaged(
                                "has a DKE key that does not match its public key",
                            ));
                        }
                    }
                    _ => return Err(damaged("has half a DKE key")),
                }
            }
        }
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
        SqliteStore::restore_file(from, to, force, |copy| {
            let mut svc = KeyService::open(copy, key)?;
            svc.verify_audit()?;
            svc.keys_open()?;
            let mut entry = admin_entry(actor, "store.restore", None, None);
            entry.reason = Some(format!("restored from {}", from.display()));
            svc.append_audit(&[entry])?;
            let (records, head) = svc.verify_audit()?;
            Ok(BackupCheck { records, head })
        })
    }
}
