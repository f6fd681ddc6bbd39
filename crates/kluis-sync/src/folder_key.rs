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
/// The most other folder-key documents opened (to compare keys) in one pass.
const MAX_OPENED_PER_PASS: usize = 4;
/// The largest folder-key document read (it is a few hundred bytes).
const MAX_DOC: u64 = 64 << 10;
/// The largest cache file read (it is about 120 bytes: document id, key, creation time).
const MAX_CACHE: u64 = 4 << 10;

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
        format!("{}.kluis", kluis_file::base32_name(bytes))
    }

    fn same_key(&self, other: &FolderKey) -> bool {
        // Compared through ring's constant-time tag check, not by hand: equal tags of one
        // message under the two keys mean equal keys (but for a 2^-256 chance).
        use ring::hmac;
        const MESSAGE: &[u8] = b"kluis-sync/v1 same key";
        let theirs = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &other.key[..]), MESSAGE);
        hmac::verify(
            &hmac::Key::new(hmac::HMAC_SHA256, &self.key[..]),
            MESSAGE,
            theirs.as_ref(),
        )
        .is_ok()
    }
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

/// The cache file's text, if it is at most [`MAX_CACHE`] bytes of UTF-8.
fn read_cache(dir: &Path) -> Option<Zeroizing<String>> {
    let mut bytes = Zeroizing::new(Vec::new());
    std::fs::File::open(dir.join(CACHE_FILE))
        .and_then(|f| f.take(MAX_CACHE + 1).read_to_end(&mut bytes))
        .ok()?;
    if bytes.len() as u64 > MAX_CACHE {
        return None;
    }
    let text = std::str::from_utf8(&bytes).ok()?;
    Some(Zeroizing::new(text.to_owned()))
}

fn load_cache(dir: &Path) -> Option<FolderKey> {
    let text = read_cache(dir)?;
    let mut lines = text.lines();
    let doc_id = lines.next()?.trim().to_owned();
    let hex_key = lines.next()?.trim();
    let mut key = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(hex_key, &mut key[..]).ok()?;
    Some(FolderKey { key, doc_id })
}

/// The creation time of the pin, kept in the cache too (a lost journal keeps the window).
fn load_cache_created(dir: &Path) -> Option<u64> {
    let text = read_cache(dir)?;
    text.lines().nth(2)?.trim().parse().ok()
}

fn save_cache(dir: &Path, k: &FolderKey, created: Option<u64>) -> Result<(), SyncError> {
    let created = created.map(|c| c.to_string()).unwrap_or_default();
    let text = Zeroizing::new(format!(
        "{}\n{}\n{created}\n",
        k.doc_id,
        hex::encode(&k.key[..])
    ));
    write_atomic(&dir.join(CACHE_FILE), text.as_bytes(), true)
}

fn open_doc(path: &Path, keys: &dyn Keys) -> Result<FolderKey, SyncError> {
    open_doc_or_why(path, keys).map_err(|(e, _)| e)
}

/// [`open_doc`], and whether a failure lies in the document itself (it will never open as a
/// folder key: not opened again) rather than in reaching or asking the key server.
fn open_doc_or_why(path: &Path, keys: &dyn Keys) -> Result<FolderKey, (SyncError, bool)> {
    use kluis_core::{Error, UnwrapError};
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_DOC).read_to_end(&mut bytes))
        .map_err(|e| (io("read the folder key", path)(e), false))?;
    let unwrappers = keys.unwrappers();
    let (plain, _) = kluis_core::open(&bytes, &unwrappers).map_err(|e| {
        let in_doc = !matches!(
            e,
            Error::Io(_)
                | Error::NoMatchingKey
                | Error::Unwrap(
                    UnwrapError::Unavailable(_)
                        | UnwrapError::Denied(_)
                        | UnwrapError::Destroyed(_)
                )
        );
        (
            SyncError::FolderKey(format!(
                "{} could not be opened: {e}",
                path.file_name().unwrap_or_default().to_string_lossy()
            )),
            in_doc,
        )
    })?;
    let plain = Zeroizing::new(plain);
    let doc_id = Header::read(&mut &bytes[..])
        .map(|h| h.doc_id().to_string())
        .map_err(|e| (SyncError::FolderKey(e.to_string()), true))?;
    let Some(key) = key_from_content(&plain) else {
        return Err((
            SyncError::FolderKey(format!(
                "{} is not a kluis sync folder key; move it out of the sealed folder",
                path.display()
            )),
            true,
        ));
    };
    Ok(FolderKey { key, doc_id })
}

/// The key in an opened folder-key document's content: the magic, then exactly 32 bytes.
pub(crate) fn key_from_content(plain: &[u8]) -> Option<Zeroizing<[u8; 32]>> {
    let rest = plain.strip_prefix(MAGIC)?;
    let mut key = Zeroizing::new([0u8; 32]);
    if rest.len() != key.len() {
        return None;
    }
    key.copy_from_slice(rest);
    Some(key)
}

/// The content a folder-key document seals for `key`.
pub(crate) fn content_for(key: &[u8; 32]) -> Zeroizing<Vec<u8>> {
    let mut plain = Zeroizing::new(MAGIC.to_vec());
    plain.extend_from_slice(key);
    plain
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
    let plain = content_for(&key);
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

/// The folder key a device uses, recorded in its journal (trust on first use): the document
/// id of its `.kluis-folder*` document, and when this device created that key itself (Unix
/// seconds; `None` for a key it adopted or re-sealed). Only while a key it created itself is
/// younger than the creation window may a smaller-id folder key replace it (two devices that
/// created a folder key at once on a new SEALED converge); after that, never silently.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pin {
    /// The document id of the folder-key document in use.
    pub doc_id: String,
    /// When this device created the key it first pinned (a fresh random key), in Unix seconds.
    #[serde(default)]
    pub created: Option<u64>,
}

/// What [`choose`] decided.
pub enum Choice {
    /// Name with this key.
    Use(Chosen),
    /// No key can be chosen by rule (a device without a pin finds several): hidden names
    /// stop, with the message (the candidates and the flag to choose with).
    Stop(String),
}

/// The inputs and the state of [`choose`] that live in the journal and the options.
pub struct Trust<'a> {
    /// The pin (updated when a key is adopted, created or switched to).
    pub pin: &'a mut Option<Pin>,
    /// Folder-key documents already opened and refused (not opened again).
    pub refused: &'a mut std::collections::BTreeSet<String>,
    /// The document id the person chose with `--trust-folder-key`.
    pub chosen: Option<&'a str>,
    /// The creation window (see [`Pin`]).
    pub window: std::time::Duration,
    /// Warnings for the pass: (file name, what happened and what to do).
    pub warnings: &'a mut Vec<(String, String)>,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

fn not_adopted(path: &Path, id: &str) -> (String, String) {
    (
        file_name(path),
        format!(
            "a second folder key appeared in SEALED (document {id}); it was not adopted and the sealed names stay as they are. If you did not create it, someone with write access to the folder did (it could be used to test guesses of your file names): remove it, and check who can write to the folder"
        ),
    )
}

/// The candidates with their document ids and creation times, for a message.
fn list(found: &[(String, PathBuf)]) -> String {
    found
        .iter()
        .map(|(id, path)| {
            let when = std::fs::metadata(path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| format!("file written at Unix time {}", d.as_secs()))
                .unwrap_or_else(|| "time unknown".into());
            format!("{id} ({}, {when})", file_name(path))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Find the folder key in force (trust on first use). A device with a pin keeps the pinned
/// key: another folder-key document is adopted only when it holds the same key (a re-sealed
/// copy), or, while this device's own key is younger than the creation window, when its
/// document id is smaller (two devices that created one at once converge on the smallest id;
/// the loser removes its own document). Any other is reported and ignored. A device without a
/// pin adopts the only candidate, or the one named by `--trust-folder-key`; with several and
/// no choice it stops. Creates one when there is none.
pub fn choose(
    sealed: &Path,
    state: &Path,
    tmp_dir: &Path,
    keys: &dyn Keys,
    t: Trust<'_>,
) -> Result<Choice, SyncError> {
    let cached = load_cache(state);
    // The cache (owner-only state, written at the same decision, just before the journal)
    // holds the pinned key: a journal from before pins, or one not saved after a switch (a
    // killed run), takes its document id.
    if let Some(c) = &cached {
        match t.pin.as_mut() {
            Some(p) => {
                if p.doc_id != c.doc_id {
                    p.doc_id = c.doc_id.clone();
                }
            }
            None => {
                *t.pin = Some(Pin {
                    doc_id: c.doc_id.clone(),
                    created: load_cache_created(state),
                })
            }
        }
    }
    let label = keys.label();
    for _ in 0..3 {
        let found = candidates(sealed, label.as_deref());
        if found.is_empty() {
            // A device new to a folder that other devices sync without hidden names: a
            // folder key would turn their documents into strays (opened as conflict copies
            // and removed from SEALED, their plain files trashed on those devices).
            if cached.is_none() && synced_without_hidden_names(sealed) {
                return Err(SyncError::FolderKey(format!(
                    "{} is synced without hidden names (it holds folders or documents under their real names); run kluis sync without --hide-names, or start hidden names in a new, empty sealed folder",
                    sealed.display()
                )));
            }
            // A pinned key that is neither there nor cached here (the cache lost): a fresh
            // key would re-name everything under a key no other device has and open a new
            // creation window, in which a planted key would be adopted.
            if let (None, Some(pin)) = (&cached, t.pin.as_ref()) {
                return Ok(Choice::Stop(format!(
                    "the folder key this device used (document {}) is gone from SEALED and not cached here; nothing was synced. Run kluis sync on a device that still has it (it seals it again), then here with --trust-folder-key DOCID",
                    pin.doc_id
                )));
            }
            // None there (a new folder, or its document was deleted): seal one, with the
            // cached key when there is one, so the names stay as they are.
            if let Some(c) = create(sealed, tmp_dir, keys, cached.as_ref())? {
                let created = match &cached {
                    // Re-sealed: no new creation window.
                    Some(_) => None,
                    None => Some(now_secs()),
                };
                *t.pin = Some(Pin {
                    doc_id: c.doc_id.clone(),
                    created,
                });
                save_cache(state, &c, created)?;
                return Ok(Choice::Use(Chosen {
                    key: c,
                    changed: false,
                }));
            }
            continue;
        }
        // The person's explicit choice (a new device, or one whose pinned key is gone).
        // A device with a pin ignores a choice whose document is gone (the flag left in its
        // command line after its key was sealed again under another id keeps the pin).
        if let Some(want) = t.chosen {
            let target = found.iter().find(|(id, _)| id == want);
            if t.pin.is_none() && target.is_none() {
                return Ok(Choice::Stop(format!(
                    "--trust-folder-key {want}: no folder-key document with that id in SEALED; the candidates are: {}",
                    list(&found)
                )));
            }
            if let (Some((_, path)), true) =
                (target, t.pin.as_ref().is_none_or(|p| p.doc_id != want))
            {
                let k = open_doc(path, keys)?;
                let changed = cached.as_ref().is_some_and(|old| !old.same_key(&k));
                *t.pin = Some(Pin {
                    doc_id: k.doc_id.clone(),
                    created: None,
                });
                save_cache(state, &k, None)?;
                return Ok(Choice::Use(Chosen { key: k, changed }));
            }
        }
        let Some(pin) = t.pin.clone() else {
            // No pin: adopt only what needs no choice.
            if let [(_, path)] = found.as_slice() {
                let k = open_doc(path, keys)?;
                *t.pin = Some(Pin {
                    doc_id: k.doc_id.clone(),
                    created: None,
                });
                save_cache(state, &k, None)?;
                return Ok(Choice::Use(Chosen {
                    key: k,
                    changed: false,
                }));
            }
            return Ok(Choice::Stop(format!(
                "SEALED holds {} folder keys for hidden names and this device has not used either before, so it cannot tell which one your colleagues use (someone with write access to the folder may have planted one); nothing was synced. Ask who set the folder up which one is theirs, then run kluis sync with --trust-folder-key DOCID. The candidates: {}",
                found.len(),
                list(&found)
            )));
        };
        // The pinned key: from the cache, or opened from its document.
        let mine = found.iter().find(|(id, _)| *id == pin.doc_id);
        let current = match (&cached, mine) {
            (Some(_), _) => match load_cache(state) {
                Some(k) if k.doc_id == pin.doc_id => k,
                _ => {
                    return Err(SyncError::FolderKey(
                        "the cached folder key vanished; run kluis sync again".into(),
                    ));
                }
            },
            (None, Some((_, path))) => {
                let k = open_doc(path, keys)?;
                save_cache(state, &k, pin.created)?;
                k
            }
            (None, None) => {
                return Ok(Choice::Stop(format!(
                    "the folder key this device used (document {}) is gone from SEALED and not cached here, and another one is there; it was not adopted. If you trust it, run kluis sync with --trust-folder-key DOCID. The candidates: {}",
                    pin.doc_id,
                    list(&found)
                )));
            }
        };
        let now = now_secs();
        let in_window = pin
            .created
            .is_some_and(|c| now >= c && u128::from(now - c) < t.window.as_millis().div_ceil(1000));
        // Refusals of documents no longer there are forgotten (the set stays small).
        t.refused.retain(|r| found.iter().any(|(id, _)| id == r));
        // Each other document is opened (one audited unwrap) to compare its key, a few per
        // pass at most: a folder flooded with planted keys costs no flood of unwraps.
        let mut opened = 0usize;
        for (id, path) in &found {
            if *id == pin.doc_id {
                continue;
            }
            if t.refused.contains(id) || opened >= MAX_OPENED_PER_PASS {
                t.warnings.push(not_adopted(path, id));
                continue;
            }
            // Our own document gone (the sync client kept the other device's in its place):
            // within the window the race is lost whatever the ids; the smallest other wins.
            let smaller = *id < pin.doc_id || mine.is_none();
            if in_window && !smaller {
                // The other side of a race: that device switches to ours and removes it.
                continue;
            }
            opened += 1;
            let other = match open_doc_or_why(path, keys) {
                Ok(k) => k,
                Err((e, in_doc)) => {
                    // One that can never open as a folder key is not opened (unwrapped,
                    // audited) again on every pass; one the key server could not answer is.
                    if in_doc {
                        t.refused.insert(id.clone());
                    }
                    t.warnings.push((file_name(path), e.to_string()));
                    continue;
                }
            };
            let same = other.same_key(&current);
            if smaller && (same || in_window) {
                // The race on a new SEALED (or a re-sealed copy of the same key): switch,
                // and remove our own document. The window stays the one of our creation.
                if let Some((_, p)) = mine {
                    let _ = std::fs::remove_file(p);
                }
                *t.pin = Some(Pin {
                    doc_id: other.doc_id.clone(),
                    created: pin.created,
                });
                save_cache(state, &other, pin.created)?;
                return Ok(Choice::Use(Chosen {
                    key: other,
                    changed: !same,
                }));
            }
            if !same {
                t.refused.insert(id.clone());
                t.warnings.push(not_adopted(path, id));
            }
        }
        return Ok(Choice::Use(Chosen {
            key: current,
            changed: false,
        }));
    }
    Err(SyncError::FolderKey(
        "the folder key changed three times while it was being read; try again".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_oversized_cache_file_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let k = FolderKey {
            key: Zeroizing::new([9; 32]),
            doc_id: "00112233445566778899aabbccddeeff".into(),
        };
        save_cache(dir.path(), &k, Some(5)).unwrap();
        let read = load_cache(dir.path()).expect("the cache is read");
        assert!(read.same_key(&k) && read.doc_id == k.doc_id);
        assert_eq!(load_cache_created(dir.path()), Some(5));
        // The same lines, then more than the limit: not read (nor held whole in memory).
        let mut text = std::fs::read(dir.path().join(CACHE_FILE)).unwrap();
        text.resize(MAX_CACHE as usize + 1, b'\n');
        std::fs::write(dir.path().join(CACHE_FILE), &text).unwrap();
        assert!(load_cache(dir.path()).is_none());
        assert_eq!(load_cache_created(dir.path()), None);
    }
}
