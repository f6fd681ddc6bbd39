//! Master-key rotation: re-seal every live label key, the token-hash key and the audit-chain
//! key under a new master key in one transaction, so that destroying the old master key makes
//! every older backup of the store unreadable (crypto-shredding against backups).
//!
//! Stores created before rotation existed derive the token-hash and audit-chain keys from the
//! master key. The first rotation derives them once more from the old master key and stores
//! those same 32-byte keys sealed under the new one: the audit chain continues unbroken and
//! tokens issued before keep working. From then on they are read from the store.

use std::path::{Path, PathBuf};

use ring::hmac;
use rusqlite::{Connection, OptionalExtension, params};
use zeroize::Zeroizing;

use super::{CHECK, SqliteStore, admin_entry, key_aad};
use crate::error::{Result, ServerError};
use crate::master_key::{MasterKey, random};

/// The stored subkeys: (meta key, associated data, HKDF purpose of the derived original).
const SUBKEYS: [(&str, &[u8], &[u8]); 2] = [
    (
        "audit_key",
        b"kluis-server/v1/stored-subkey/audit-chain",
        b"audit-chain",
    ),
    (
        "token_key",
        b"kluis-server/v1/stored-subkey/token-hash",
        b"token-hash",
    ),
];

/// The raw 32 bytes of subkey `i` of [`SUBKEYS`]: stored sealed, or derived (older stores).
fn subkey_bytes(conn: &Connection, master: &MasterKey, i: usize) -> Result<Zeroizing<[u8; 32]>> {
    let (meta, aad, purpose) = SUBKEYS[i];
    let sealed: Option<Vec<u8>> = conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [meta], |r| {
            r.get(0)
        })
        .optional()?;
    let Some(sealed) = sealed else {
        return Ok(master.subkey(purpose));
    };
    let plain = master
        .open(aad, &sealed)
        .ok_or(ServerError::WrongMasterKey)?;
    let mut out = Zeroizing::new([0u8; 32]);
    if plain.len() != 32 {
        return Err(ServerError::WrongMasterKey);
    }
    out.copy_from_slice(&plain);
    Ok(out)
}

/// The audit-chain and token-hash keys of the store behind `conn`.
pub(super) fn hmac_keys(conn: &Connection, master: &MasterKey) -> Result<(hmac::Key, hmac::Key)> {
    let key = |i| -> Result<hmac::Key> {
        Ok(hmac::Key::new(
            hmac::HMAC_SHA256,
            &subkey_bytes(conn, master, i)?[..],
        ))
    };
    Ok((key(0)?, key(1)?))
}

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

/// Make a rename or a new file in `dir` durable.
pub(crate) fn sync_dir(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

impl SqliteStore {
    /// Whether some process (a running server) has the store at `path` open. Checked
    /// before a master-key rotation, which must not run under a server, and before a restore.
    pub fn in_use(path: &Path) -> Result<bool> {
        super::backup::in_use(path)
    }

    /// Inside a write transaction: fail unless this connection's master key is still the
    /// store's. A process that opened the store before a master-key rotation (a running
    /// server's scheduler) would otherwise seal new label keys under the old key, which the
    /// store can no longer open once the old key is destroyed.
    pub(super) fn check_master_in(&self, tx: &Connection) -> Result<()> {
        let check: Vec<u8> =
            tx.query_row("SELECT value FROM meta WHERE key = 'check'", [], |r| {
                r.get(0)
            })?;
        match self.master.open(b"check", &check) {
            Some(c) if c.as_slice() == CHECK => Ok(()),
            _ => Err(ServerError::Refused(
                "the store's master key was rotated since this process opened it: restart it \
                 with the new key file"
                    .into(),
            )),
        }
    }

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
        let tx = self.write_tx()?;
        let rows = {
            let mut stmt = tx.prepare(
                "SELECT label, kid, sealed_secret FROM key_versions WHERE sealed_secret IS NOT NULL",
            )?;
            stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, u32>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?
        };
        for (label, kid, sealed) in &rows {
            let aad = key_aad(label, *kid);
            let secret = self
                .master
                .open(&aad, sealed)
                .ok_or(ServerError::WrongMasterKey)?;
            tx.execute(
                "UPDATE key_versions SET sealed_secret = ?3 WHERE label = ?1 AND kid = ?2",
                params![label, kid, new.seal(&aad, &secret)?],
            )?;
        }
        for (i, (meta, aad, _)) in SUBKEYS.iter().enumerate() {
            let bytes = subkey_bytes(&tx, &self.master, i)?;
            tx.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![meta, new.seal(aad, &bytes[..])?],
            )?;
        }
        if let Some(kdf) = kdf {
            tx.execute(
                "UPDATE meta SET value = ?1 WHERE key = 'kdf'",
                params![kdf.as_bytes()],
            )?;
        }
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'check'",
            params![new.seal(b"check", CHECK)?],
        )?;
        let mut entry = admin_entry(actor, "master-key.rotate", None, None);
        entry.reason = Some(format!(
            "{} label key(s), the token-hash key and the audit-chain key re-sealed under a new master key",
            rows.len()
        ));
        // The audit key itself does not change: the chain continues.
        self.append_in(&tx, &[entry])?;
        tx.commit()?;
        self.master = new;
        self.keys.borrow_mut().clear();
        // Push the rows sealed under the old key out of the WAL now. Committed already: a
        // failure here must not look like a failed rotation (the next checkpoint does it).
        let _ = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        Ok(rows.len())
    }

    /// Rotate the master key of a store protected by `key_file` (the file it was opened
    /// with). The new key is written to `<key_file>.new` (mode 0600, fsynced), the store is
    /// re-sealed in one transaction, then the new file is renamed over `key_file`.
    ///
    /// A passphrase-protected store is refused: see [`SqliteStore::rotate_master_passphrase`].
    pub fn rotate_master_key(&mut self, key_file: &Path, actor: &str) -> Result<MasterKeyRotation> {
        if self.kdf()? != b"file" {
            return Err(ServerError::Refused(
                "this store is protected by a passphrase: give the new one with \
                 --new-passphrase-env, --new-passphrase-file or --new-passphrase-prompt"
                    .into(),
            ));
        }
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
        std::fs::rename(&pending, key_file)?;
        sync_dir(key_file)?;
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
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'kdf'", [], |r| r.get(0))?)
    }
}
