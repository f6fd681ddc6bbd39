//! The folder key: shared hidden names for everyone who may open the label.
//!
//! 32 random bytes from the OS generator, sealed to the label as a kluis v1 document in the
//! sealed folder (`.kluis-folder`), opened once through the key server and cached in the
//! pair's state folder (owner-only). A path's sealed name is HMAC-SHA-256 of the path under
//! this key, cut to 128 bits, in base32: the same on every device that can open the label.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use kluis_core::{Header, Metadata};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::error::{SyncError, io};
use crate::journal::{random_suffix, sync_dir, write_atomic};
use crate::scan::FOLDER_KEY_FILE;
use crate::{Keys, Sealing};

/// What the sealed folder-key document holds before the key bytes.
const MAGIC: &[u8] = b"kluis-sync/v1 folder-key\0";
/// The cache file in the pair's state folder.
const CACHE_FILE: &str = "folder.key";
/// The largest folder-key document read (it is a few hundred bytes).
const MAX_DOC: u64 = 64 << 10;

/// The key sealed names are derived from. Wiped on drop, never printed.
pub struct FolderKey {
    key: Zeroizing<[u8; 32]>,
    /// The document id of the `.kluis-folder` document it came from.
    pub doc_id: String,
}

impl fmt::Debug for FolderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FolderKey {{ doc_id: {}, key: [secret] }}", self.doc_id)
    }
}

impl FolderKey {
    /// The sealed file name of the relative path `rel`: 26 base32 characters and `.kluis`.
    pub fn name_for(&self, rel: &str) -> String {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.key[..]);
        let mut ctx = ring::hmac::Context::with_key(&key);
        ctx.update(b"kluis-sync/v1 name\0");
        ctx.update(rel.as_bytes());
        let tag = ctx.sign();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&tag.as_ref()[..16]);
        format!("{}.kluis", base32(bytes))
    }

    fn same_key(&self, other: &FolderKey) -> bool {
        // Every byte is looked at, whatever differs.
        self.key
            .iter()
            .zip(other.key.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

fn base32(bytes: [u8; 16]) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let bits = u128::from_be_bytes(bytes);
    (0..26)
        .map(|i| {
            let shift = 128i32 - 5 * (i + 1);
            let v = if shift >= 0 {
                bits >> shift
            } else {
                bits << -shift
            };
            ALPHABET[(v & 31) as usize] as char
        })
        .collect()
}

/// The folder key now in force, and the one used before when it changed (a lost race).
pub struct Chosen {
    /// The key to name with.
    pub key: FolderKey,
    /// Whether the key differs from the cached one (sealed files must be re-named).
    pub changed: bool,
}

/// The `.kluis-folder*` documents in the sealed folder (the sync client may have kept a
/// second one under a conflict name), by document id. Only documents the pair's `label` alone
/// opens count: one sealed to another label is never adopted (nor unwrapped).
fn candidates(sealed: &Path, label: Option<&str>) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(sealed) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with(FOLDER_KEY_FILE) || name.contains(".kluis-tmp-") {
            continue;
        }
        let path = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if !meta.is_file() || meta.len() > MAX_DOC {
            continue;
        }
        let Ok(mut f) = std::fs::File::open(&path) else {
            continue;
        };
        if let Ok(h) = Header::read(&mut f) {
            if crate::opened_by_label_alone(&h, label) {
                out.push((h.doc_id().to_string(), path));
            }
        }
    }
    out.sort();
    out
}

/// Whether the sealed folder holds a `.kluis-folder*` file (it is synced with hidden names).
pub fn present(sealed: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(sealed) else {
        return false;
    };
    entries.flatten().any(|e| {
        e.file_name().to_str().is_some_and(|n| {
            n.starts_with(FOLDER_KEY_FILE) && !n.contains(".kluis-tmp-") && !n.contains(".tmp-")
        }) && e.file_type().is_ok_and(|t| t.is_file())
    })
}

/// Whether the sealed folder holds a folder (not a dot-folder) or a `.kluis` document whose
/// name does not begin with a hidden name (26 base32 characters, then `.kluis` or the
/// separator of a sync client's conflict copy of it).
fn synced_without_hidden_names(sealed: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(sealed) else {
        return false;
    };
    entries.flatten().any(|e| {
        let Some(name) = e.file_name().to_str().map(str::to_owned) else {
            return false;
        };
        let Ok(t) = e.file_type() else {
            return false;
        };
        if t.is_dir() {
            return !name.starts_with('.');
        }
        let b = name.as_bytes();
        let hidden_stem = b.len() > 26
            && b[..26]
                .iter()
                .all(|c| c.is_ascii_lowercase() || (b'2'..=b'7').contains(c))
            && matches!(b[26], b'.' | b'-' | b' ' | b'(' | b'_');
        t.is_file() && name.ends_with(".kluis") && !hidden_stem
    })
}

fn load_cache(dir: &Path) -> Option<FolderKey> {
    let text = Zeroizing::new(std::fs::read_to_string(dir.join(CACHE_FILE)).ok()?);
    let mut lines = text.lines();
    let doc_id = lines.next()?.trim().to_owned();
    let hex_key = lines.next()?.trim();
    let mut key = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(hex_key, &mut key[..]).ok()?;
    Some(FolderKey { key, doc_id })
}

fn save_cache(dir: &Path, k: &FolderKey) -> Result<(), SyncError> {
    let text = Zeroizing::new(format!("{}\n{}\n", k.doc_id, hex::encode(&k.key[..])));
    write_atomic(&dir.join(CACHE_FILE), text.as_bytes(), true)
}

fn open_doc(path: &Path, keys: &dyn Keys) -> Result<FolderKey, SyncError> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_DOC).read_to_end(&mut bytes))
        .map_err(io("read the folder key", path))?;
    let unwrappers = keys.unwrappers();
    let (plain, _) = kluis_core::open(&bytes, &unwrappers).map_err(|e| {
        SyncError::FolderKey(format!(
            "{} could not be opened: {e}",
            path.file_name().unwrap_or_default().to_string_lossy()
        ))
    })?;
    let plain = Zeroizing::new(plain);
    let doc_id = Header::read(&mut &bytes[..])
        .map(|h| h.doc_id().to_string())
        .map_err(|e| SyncError::FolderKey(e.to_string()))?;
    if plain.len() != MAGIC.len() + 32 || !plain.starts_with(MAGIC) {
        return Err(SyncError::FolderKey(format!(
            "{} is not a kluis sync folder key; move it out of the sealed folder",
            path.display()
        )));
    }
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&plain[MAGIC.len()..]);
    Ok(FolderKey { key, doc_id })
}

fn create(
    sealed: &Path,
    tmp_dir: &Path,
    keys: &dyn Keys,
    reuse: Option<&FolderKey>,
) -> Result<Option<FolderKey>, SyncError> {
    let Sealing { slots, .. } = keys
        .seal_to()
        .map_err(|why| SyncError::FolderKey(format!("cannot create one: {why}")))?;
    let mut key = Zeroizing::new([0u8; 32]);
    match reuse {
        Some(k) => key.copy_from_slice(&k.key[..]),
        None => SystemRandom::new()
            .fill(&mut key[..])
            .map_err(|_| SyncError::Random)?,
    }
    let mut plain = Zeroizing::new(MAGIC.to_vec());
    plain.extend_from_slice(&key[..]);
    let doc = kluis_core::seal(&slots, &Metadata::default(), &plain)
        .map_err(|e| SyncError::FolderKey(format!("sealing it failed: {e}")))?;
    let doc_id = Header::read(&mut &doc[..])
        .map(|h| h.doc_id().to_string())
        .map_err(|e| SyncError::FolderKey(e.to_string()))?;
    let tmp = tmp_dir.join(format!(".kluis-tmp-{}", random_suffix()?));
    write_atomic(&tmp, &doc, false)?;
    let target = sealed.join(FOLDER_KEY_FILE);
    // No-clobber: a folder key that arrived meanwhile is never replaced.
    let linked = match std::fs::hard_link(&tmp, &target) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            // No hard links (FAT, exFAT): check, then rename (a small race).
            if std::fs::symlink_metadata(&target).is_ok() {
                Err(std::io::Error::from(std::io::ErrorKind::AlreadyExists))
            } else {
                std::fs::rename(&tmp, &target)
            }
        }
        other => other,
    };
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            sync_dir(sealed);
            Ok(Some(FolderKey { key, doc_id }))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(None),
        Err(e) => Err(io("write the folder key", &target)(e)),
    }
}

/// Find the folder key in force: of the `.kluis-folder*` documents present, the one with the
/// smallest document id wins (every device decides the same way). Creates one when there is
/// none. A device whose own key lost removes its own document.
pub fn choose(
    sealed: &Path,
    state: &Path,
    tmp_dir: &Path,
    keys: &dyn Keys,
) -> Result<Chosen, SyncError> {
    let cached = load_cache(state);
    let label = keys.label();
    for _ in 0..3 {
        let found = candidates(sealed, label.as_deref());
        let Some((winner_id, winner_path)) = found.first().cloned() else {
            // A device new to a folder that other devices sync without hidden names: a
            // folder key would turn their documents into strays (opened as conflict copies
            // and removed from SEALED, their plain files trashed on those devices).
            if cached.is_none() && synced_without_hidden_names(sealed) {
                return Err(SyncError::FolderKey(format!(
                    "{} is synced without hidden names (it holds folders or documents under their real names); run kluis sync without --hide-names, or start hidden names in a new, empty sealed folder",
                    sealed.display()
                )));
            }
            // None there (a new folder, or its document was deleted): seal one, with the
            // cached key when there is one, so the names stay as they are.
            if let Some(c) = create(sealed, tmp_dir, keys, cached.as_ref())? {
                let changed = false;
                save_cache(state, &c)?;
                return Ok(Chosen { key: c, changed });
            }
            continue;
        };
        if let Some(c) = &cached {
            if c.doc_id == winner_id {
                return Ok(Chosen {
                    key: load_cache(state).ok_or_else(|| {
                        SyncError::FolderKey("the cached folder key vanished".into())
                    })?,
                    changed: false,
                });
            }
        }
        let k = open_doc(&winner_path, keys)?;
        let changed = cached.as_ref().is_some_and(|old| !old.same_key(&k));
        // Our own losing document goes; others remove theirs.
        if let Some(old) = &cached {
            for (id, path) in &found {
                if *id == old.doc_id && *id != k.doc_id {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        save_cache(state, &k)?;
        return Ok(Chosen { key: k, changed });
    }
    Err(SyncError::FolderKey(
        "the folder key changed three times while it was being read; try again".into(),
    ))
}
