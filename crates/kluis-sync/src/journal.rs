//! The state journal: what was last in sync, per path. Kept outside both folders, written
//! atomically (temporary file, `fsync`, rename, `fsync` of the folder).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::error::{SyncError, io};
use crate::scan::Stamp;

/// The journal's format version.
const VERSION: u32 = 1;
/// The most bytes a journal file may have (about 300,000 paths).
const MAX_LEN: u64 = 256 << 20;

/// One path's last synced state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The plain file as last synced.
    pub plain: Option<Stamp>,
    /// The sealed file as last synced.
    pub sealed: Option<Stamp>,
    /// The sealed file's name (relative to the sealed folder) it was synced under.
    pub name: String,
}

/// The journal of one folder pair.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Journal {
    version: u32,
    /// Entries by relative plain path.
    pub entries: BTreeMap<String, Entry>,
    /// Sealed files that are not named for the path they store (or cannot be opened), by
    /// name, with the version that was looked at: not unwrapped again until they change.
    pub misplaced: BTreeMap<String, Stamp>,
    /// Paths whose deletion the mass-delete guard held back: held in later passes too (the
    /// share of files deleted falls as other files are synced meanwhile) until deletions are
    /// allowed or the path is no longer to be deleted.
    #[serde(default)]
    pub held: std::collections::BTreeSet<String>,
    /// The folder key this device uses (hidden names): trust on first use.
    #[serde(default)]
    pub folder_key: Option<crate::folder_key::Pin>,
    /// Folder-key documents opened and refused (not the pinned key): reported, not opened
    /// again.
    #[serde(default)]
    pub refused_keys: std::collections::BTreeSet<String>,
}

impl Journal {
    /// Read the journal at `path`; an empty one when there is none.
    pub fn load(path: &Path) -> Result<Journal, SyncError> {
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Journal {
                    version: VERSION,
                    ..Journal::default()
                });
            }
            Err(e) => return Err(io("read the journal", path)(e)),
            Ok(m) if m.len() > MAX_LEN => {
                return Err(SyncError::Journal(
                    path.to_owned(),
                    "it is too large".into(),
                ));
            }
            Ok(_) => {}
        }
        // Read through the limit too: the file may have grown since it was measured.
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_LEN + 1).read_to_end(&mut bytes))
            .map_err(io("read the journal", path))?;
        Journal::from_bytes(&bytes).map_err(|m| SyncError::Journal(path.to_owned(), m))
    }

    /// Parse a journal file's bytes (more than [`MAX_LEN`] are refused; [`Journal::load`]
    /// reads no more than one byte beyond it): the format version must be this one.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Result<Journal, String> {
        if bytes.len() as u64 > MAX_LEN {
            return Err("it is too large".into());
        }
        let j: Journal = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if j.version != VERSION {
            return Err(format!("format version {} is not {VERSION}", j.version));
        }
        Ok(j)
    }

    /// The bytes [`Journal::save`] writes.
    pub(crate) fn to_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut j = self.clone();
        j.version = VERSION;
        serde_json::to_vec(&j)
    }

    /// Write the journal to `path` atomically and durably, unless it is what was last written
    /// (`last` holds the SHA-256 of that; an idle pass then writes nothing).
    pub fn save(&self, path: &Path, last: &mut Option<Vec<u8>>) -> Result<(), SyncError> {
        let bytes = self.to_bytes().map_err(|e| SyncError::Io {
            what: "encode the journal".into(),
            source: std::io::Error::other(e),
        })?;
        let digest = ring::digest::digest(&ring::digest::SHA256, &bytes)
            .as_ref()
            .to_vec();
        if last.as_ref() == Some(&digest) {
            return Ok(());
        }
        write_atomic(path, &bytes, false)?;
        *last = Some(digest);
        Ok(())
    }
}

/// A random hex suffix for temporary names.
pub fn random_suffix() -> Result<String, SyncError> {
    let mut b = [0u8; 16];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| SyncError::Random)?;
    Ok(hex::encode(b))
}

/// Write `bytes` to `path` through a temporary file beside it: `fsync`, rename, `fsync` of the
/// folder. With `private`, the file is owner-only (0600) from its creation.
pub fn write_atomic(path: &Path, bytes: &[u8], private: bool) -> Result<(), SyncError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".tmp-{}", random_suffix()?));
    let result = (|| {
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create_new(true);
        #[cfg(unix)]
        if private {
            std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
        }
        #[cfg(not(unix))]
        let _ = private;
        let mut f = o.open(&tmp).map_err(io("create", &tmp))?;
        f.write_all(bytes).map_err(io("write", &tmp))?;
        f.sync_all().map_err(io("sync", &tmp))?;
        std::fs::rename(&tmp, path).map_err(io("replace", path))?;
        sync_dir(dir);
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// `fsync` a folder so a rename or removal in it is durable (best effort; not on Windows).
pub fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

/// The state folder of one folder pair below `state_root`: named by a hash of the two
/// canonical paths, so each pair has its own journal.
pub fn pair_dir(state_root: &Path, plain: &Path, sealed: &Path) -> PathBuf {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(plain.as_os_str().as_encoded_bytes());
    ctx.update(b"\0");
    ctx.update(sealed.as_os_str().as_encoded_bytes());
    let d = ctx.finish();
    state_root.join(hex::encode(&d.as_ref()[..12]))
}

/// An exclusive lock on a pair's state folder, held while a run works on it.
pub struct PairLock {
    #[allow(dead_code)]
    file: std::fs::File,
}

impl PairLock {
    /// Take the lock, or fail at once with [`SyncError::Busy`].
    pub fn take(dir: &Path) -> Result<PairLock, SyncError> {
        let path = dir.join("lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io("open the lock file", &path))?;
        #[cfg(unix)]
        {
            use rustix::fs::{FlockOperation, flock};
            if flock(&file, FlockOperation::NonBlockingLockExclusive).is_err() {
                return Err(SyncError::Busy(path));
            }
        }
        Ok(PairLock { file })
    }
}
