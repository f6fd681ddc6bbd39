//! Master-key rotation: re-seal every live label key, the token-hash key and the audit-chain
//! key under a new master key in one transaction, so that destroying the old master key makes
//! every older backup of the store unreadable (crypto-shredding against backups).
//!
//! Stores created before rotation existed derive the token-hash and audit-chain keys from the
//! master key. The first rotation derives them once more from the old master key and stores
//! those same 32-byte keys sealed under the new one: the audit chain continues unbroken and
//! tokens issued before keep working. From then on they are read from the store.

use std::path::{Path, PathBuf};

use super::KeyService;
use super::admin_entry;
use crate::error::{Result, ServerError};
use crate::master_key::{MasterKey, random};
use crate::sqlite::{resolve_link, sync_dir};
use crate::store::{Store, meta};

/// What a master-key rotation did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MasterKeyRotation {
    /// Live label key versions re-sealed (destroyed ones have nothing to re-seal).
    pub label_keys: usize,
    /// The key file that now holds the new master key.
    pub key_file: PathBuf,
}

/// `<key_file>.new`: where the new key is written before the store switches to it.
pub fn pending_key_file(key_file: &Path) -> PathBuf {
    let mut p = key_file.as_os_str().to_owned();
    p.push(".new");
    PathBuf::from(p)
}

impl<S: Store> KeyService<S> {
    /// Re-seal everything under `new` in one transaction with its `master-key.rotate` audit
    /// record; a failure or crash before the commit leaves the store under the old key.
    /// Returns how many label keys were re-sealed.
    /// `kdf`, when given, replaces the stored key derivation (a new passphrase salt).
    pub(super) fn reseal_under(
        &mut self,
        new: MasterKey,
        kdf: Option<&str>,
        actor: &str,
    ) -> Result<usize> {
        let (count, keyring) = self.write(|keyring, tx| {
            let (count, new) = keyring.reseal(tx, new, kdf)?;
        let mut entry = admin_entry(actor, "master-key.rotate", None, None);
            entry.reason = Some(format!(
                "{count} label key(s), the token-hash key and the audit-chain key re-sealed under a new master key"
            ));
            // The audit key itself does not change: the chain continues.
            keyring.append_audit(tx, &[entry])?;
            Ok((count, new))
        })?;
        self.keyring = std::sync::Arc::new(keyring);
        self.keys.borrow_mut().clear();
        self.dke_keys.borrow_mut().clear();
        // Push the rows sealed under the old key out of the engine's old copies now.
        // Committed already: a failure here must not look like a failed rotation (the next
        // scrub does it).
        let _ = self.store.forget_old_copies();
        Ok(count)
    }

    /// Rotate the master key of a store protected by `key_file` (the file it was opened
    /// with). The new key is written to `<key_file>.new` (mode 0600, fsynced), the store is
    /// re-sealed in one transaction, then the new file is renamed over `key_file`.
    ///
    /// A passphrase-protected store is refused: see [`KeyService::rotate_master_passphrase`].
    pub fn rotate_master_key(&mut self, key_file: &Path, actor: &str) -> Result<MasterKeyRotation> {
        if self.kdf()? != b"file" {
            return Err(ServerError::Refused(
                "this store is protected by a passphrase: give the new one with \
                 --new-passphrase-env, --new-passphrase-file or --new-passphrase-prompt"
                    .into(),
            ));
        }
        // Through a symbolic link, the key file it points to is replaced (not the link).
        let key_file = &resolve_link(key_file)?;
        let pending = pending_key_file(key_file);
        if pending.exists() {
            return Err(ServerError::Refused(format!(
                "{} exists: an earlier rotation was interrupted. If the store opens with the \
                 current key file, delete it; otherwise the store is under that new key: rename \
                 it to {} (see docs/SERVER.md, Master-key rotation)",
                pending.display(),
                key_file.display()
            )));
        }
        let new = MasterKey::generate()?;
        new.write_new_file(&pending)?;
        sync_dir(&pending)?;
        let label_keys = match self.reseal_under(new, None, actor) {
            Ok(n) => n,
            Err(e) => {
                // The transaction rolled back: the store is still under the old key.
                let _ = std::fs::remove_file(&pending);
                return Err(e);
            }
        };
        // Committed: from here on only the new key opens the store. A failure must say so,
        // or the operator takes the rotation for failed and deletes the only key that works.
        let committed = |step: &str, e: std::io::Error| {
            ServerError::Io(std::io::Error::new(
                e.kind(),
                format!(
                    "the master key WAS rotated: the store opens only with the new key in {}, \
                     but {step} failed ({e}). Do not delete {}: move it over {} yourself \
                     (the old key no longer opens the store)",
                    pending.display(),
                    pending.display(),
                    key_file.display()
                ),
            ))
        };
        std::fs::rename(&pending, key_file)
            .map_err(|e| committed("renaming it over the key file", e))?;
        sync_dir(key_file).map_err(|e| {
            ServerError::Io(std::io::Error::other(format!(
                "the master key was rotated and the new key is in {}, but syncing its \
                     directory failed ({e}): run `sync` before relying on it",
                key_file.display()
            )))
        })?;
        Ok(MasterKeyRotation {
            label_keys,
            key_file: key_file.to_owned(),
        })
    }

    /// Rotate the master key of a passphrase-protected store: a new Argon2id salt and the
    /// new passphrase give the new master key; the salt is stored in the same transaction.
    /// Returns how many label keys were re-sealed. The caller makes sure the new passphrase
    /// differs from the old one (the same passphrase would still open older backups).
    pub fn rotate_master_passphrase(
        &mut self,
        new_passphrase: &[u8],
        actor: &str,
    ) -> Result<usize> {
        if !self.kdf()?.starts_with(b"argon2id:") {
            return Err(ServerError::Refused(
                "this store is protected by a key file: rotate without --new-passphrase-*".into(),
            ));
        }
        let salt: [u8; 16] = random()?;
        let new = MasterKey::from_passphrase(new_passphrase, &salt)?;
        let kdf = format!("argon2id:{}", hex::encode(salt));
        self.reseal_under(new, Some(&kdf), actor)
    }

    fn kdf(&self) -> Result<Vec<u8>> {
        self.store
            .meta(meta::KDF)?
            .ok_or(ServerError::Init("the store is not initialised"))
    }
}
