//! Folder checks, the names sync ignores, and scanning both folders.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::error::{SyncError, io};

/// Prefix of the temporaries kluis sync writes in the plain folder (plaintext, never in the
/// sealed folder).
pub const PLAIN_TEMP_PREFIX: &str = ".kluis-sync-tmp-";
/// Prefix of the temporaries kluis writes in the sealed folder (ciphertext only, random names).
pub const SEALED_TEMP_PREFIX: &str = ".kluis-tmp-";
/// The file in the sealed folder that holds the folder key, sealed to the label.
pub const FOLDER_KEY_FILE: &str = ".kluis-folder";

/// What identifies one version of a file: size, modification time and file identity. A change
/// of any of them is a change of the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// The inode number on unix (0 elsewhere).
    pub ino: u64,
}

impl Stamp {
    /// The stamp of `meta`.
    pub fn of(meta: &std::fs::Metadata) -> Stamp {
        #[cfg(unix)]
        let ino = std::os::unix::fs::MetadataExt::ino(meta);
        #[cfg(not(unix))]
        let ino = 0;
        Stamp {
            size: meta.len(),
            mtime_ns: mtime_ns(meta.modified().ok()),
            ino,
        }
    }

    /// The stamp of the file at `path` (not following a final symbolic link); `None` when
    /// there is none or it is not a regular file.
    pub fn at(path: &Path) -> Option<Stamp> {
        let m = std::fs::symlink_metadata(path).ok()?;
        m.is_file().then(|| Stamp::of(&m))
    }
}

fn mtime_ns(t: Option<SystemTime>) -> i64 {
    match t {
        Some(t) => match t.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
        },
        None => 0,
    }
}

/// Whether sync leaves the file named `name` alone on either side: its own and kluis's
/// temporaries, Office's owner files (`~$report.docx`), LibreOffice's lock files
/// (`.~lock.report.odt#`), and sync clients' partial downloads and temporaries (`*.tmp`,
/// `~*.tmp`, `*.partial`, `.~*`).
pub fn ignored(name: &str) -> bool {
    let lower = name.to_lowercase();
    name.starts_with("~$")
        || name.starts_with(".~")
        || lower.ends_with(".tmp")
        || lower.ends_with(".partial")
        || lower.ends_with(".crdownload")
        || name.starts_with(PLAIN_TEMP_PREFIX)
        || name.starts_with(SEALED_TEMP_PREFIX)
        || name.starts_with(FOLDER_KEY_FILE)
}

/// Canonicalise both folders and refuse a pair where one lies inside the other.
pub fn check_pair(plain: &Path, sealed: &Path) -> Result<(PathBuf, PathBuf), SyncError> {
    let canon = |p: &Path| -> Result<PathBuf, SyncError> {
        let c = std::fs::canonicalize(p).map_err(|_| SyncError::NotAFolder(p.to_owned()))?;
        if !c.is_dir() {
            return Err(SyncError::NotAFolder(p.to_owned()));
        }
        Ok(c)
    };
    let (p, s) = (canon(plain)?, canon(sealed)?);
    if p.starts_with(&s) {
        return Err(SyncError::Nested {
            inner: plain.to_owned(),
            outer: sealed.to_owned(),
        });
    }
    if s.starts_with(&p) {
        return Err(SyncError::Nested {
            inner: sealed.to_owned(),
            outer: plain.to_owned(),
        });
    }
    Ok((p, s))
}

/// What a scan of one folder found.
#[derive(Default, Debug)]
pub struct Scan {
    /// Files by relative path (`/`-separated).
    pub files: BTreeMap<String, Stamp>,
    /// Files that cannot be synced, with the reason (names shown escaped).
    pub refused: Vec<(String, String)>,
    /// Paths that could not be looked at (a file, or a folder as `dir/`, `""` for all):
    /// what is under them is unknown, not gone.
    pub unknown: Vec<String>,
}

impl Scan {
    /// Whether the state of `rel` is unknown (it or a folder above it could not be read).
    pub fn is_unknown(&self, rel: &str) -> bool {
        self.unknown
            .iter()
            .any(|u| u == rel || ((u.is_empty() || u.ends_with('/')) && rel.starts_with(u)))
    }
}

/// Walk `root` for regular files (no symbolic links followed, ignored names skipped). With
/// `flat`, only the top level is read.
pub fn scan(root: &Path, flat: bool) -> Result<Scan, SyncError> {
    let mut out = Scan::default();
    let mut stack: Vec<(PathBuf, String)> = vec![(root.to_owned(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            // A folder removed while walking: its files are simply not there.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && dir != root => continue,
            Err(e) if dir == root => return Err(io("read the folder", &dir)(e)),
            // Unreadable (permissions, an I/O error): its files are unknown, not deleted.
            Err(e) => {
                out.refused
                    .push((prefix.clone(), format!("the folder cannot be read: {e}")));
                out.unknown.push(prefix);
                continue;
            }
        };
        for entry in entries {
            let Ok(entry) = entry else {
                // A listing cut short: whatever it did not list is unknown.
                out.refused.push((
                    prefix.clone(),
                    "the folder could not be listed whole".into(),
                ));
                out.unknown.push(prefix.clone());
                continue;
            };
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                out.refused.push((
                    format!("{prefix}{}", name.to_string_lossy().escape_debug()),
                    "the name is not valid Unicode".into(),
                ));
                continue;
            };
            if ignored(name) {
                continue;
            }
            let rel = format!("{prefix}{name}");
            let meta = match std::fs::symlink_metadata(entry.path()) {
                Ok(m) => m,
                // Removed while walking.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                // Cannot be looked at: unknown (a file, or a folder and all below it).
                Err(e) => {
                    out.refused
                        .push((rel.clone(), format!("cannot be looked at: {e}")));
                    out.unknown.push(format!("{rel}/"));
                    out.unknown.push(rel);
                    continue;
                }
            };
            if meta.is_dir() {
                if !flat {
                    stack.push((entry.path(), format!("{rel}/")));
                }
            } else if meta.is_file() {
                out.files.insert(rel, Stamp::of(&meta));
            }
            // Symbolic links and special files are not synced.
        }
    }
    Ok(out)
}

/// Create the folders of `rel`'s parent below `root`, refusing to go through a symbolic link.
pub fn ensure_parent(root: &Path, rel: &str) -> Result<PathBuf, SyncError> {
    let mut dir = root.to_owned();
    let parts: Vec<&str> = rel.split('/').collect();
    for part in &parts[..parts.len().saturating_sub(1)] {
        dir.push(part);
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(SyncError::Io {
                    what: format!("create the folder {}", dir.display()),
                    source: std::io::Error::other("a file or symbolic link is in the way; move it"),
                });
            }
            Err(_) => match std::fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io("create the folder", &dir)(e)),
            },
        }
    }
    Ok(root.join(rel))
}
