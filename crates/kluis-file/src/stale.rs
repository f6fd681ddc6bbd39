//! Temporary files left by an interrupted run (`kill -9`, a power cut): recognised as stale
//! and removed, safely, on a later run.
//!
//! Every temporary file is locked (an advisory `flock`, on unix) by the process writing it
//! for as long as its handle is open. A `.kluis-tmp-*` file is stale when nobody holds that
//! lock and it has not been modified for [`GRACE`] (which covers the instant between
//! creating a temporary file and locking it). Only then is it removed, while this process
//! holds the lock itself.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use crate::name::TEMP_PREFIX;

/// How long an unlocked temporary file must have been left alone to be taken for stale.
#[cfg(unix)]
const GRACE: Duration = Duration::from_secs(120);
/// Without locks (not unix), only a temporary file untouched for a day is taken for stale.
#[cfg(not(unix))]
const GRACE: Duration = Duration::from_secs(86_400);

/// Folders swept by this process (each once); forgotten when it grows past this many.
const MAX_SWEPT: usize = 10_000;

/// Lock a freshly created temporary file for as long as it is open (see the module
/// documentation). On a file system without locks it stays unlocked: a later run then
/// takes it for stale once it has not been modified for [`GRACE`].
pub(crate) fn hold(file: &fs::File) {
    #[cfg(unix)]
    let _ = try_lock(file);
    #[cfg(not(unix))]
    let _ = file;
}

/// Take an exclusive advisory lock on `file` without waiting (`flock`), held until every
/// handle on this open file is closed.
#[cfg(unix)]
fn try_lock(file: &fs::File) -> std::io::Result<()> {
    rustix::fs::flock(file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
        .map_err(std::io::Error::from)
}

/// Whether `name` is one [`crate::TempFile`] gives: [`TEMP_PREFIX`] and 26 lowercase base32
/// characters, nothing more. Other `.kluis-tmp-` names are not this module's to remove: a
/// re-keying journal (`.kluis-tmp-rekey-…`, needed to finish an interrupted re-keying) or
/// a person's own file.
pub(crate) fn is_temp_name(name: &[u8]) -> bool {
    name.strip_prefix(TEMP_PREFIX.as_bytes())
        .is_some_and(|rest| {
            rest.len() == 26
                && rest
                    .iter()
                    .all(|c| c.is_ascii_lowercase() || (b'2'..=b'7').contains(c))
        })
}

/// Remove `path`, a temporary file, if it is stale; returns whether it was removed. Only a
/// name that [`is_temp_name`] is ever removed.
pub(crate) fn remove_if_stale(path: &Path) -> bool {
    if !path
        .file_name()
        .is_some_and(|n| is_temp_name(n.as_encoded_bytes()))
    {
        return false;
    }
    let Ok(meta) = fs::symlink_metadata(path) else {
        return false;
    };
    let idle = meta
        .modified()
        .ok()
        .and_then(|m| m.elapsed().ok())
        .is_some_and(|age| age >= GRACE);
    if !meta.is_file() || !idle {
        return false;
    }
    #[cfg(unix)]
    {
        let Ok(file) = fs::File::open(path) else {
            return false;
        };
        if try_lock(&file).is_err() {
            return false; // a running kluis is writing it
        }
        fs::remove_file(path).is_ok()
    }
    #[cfg(not(unix))]
    {
        fs::remove_file(path).is_ok()
    }
}

/// Remove the stale temporary files directly inside `dir`, once per folder per process.
pub(crate) fn sweep(dir: &Path) {
    static SWEPT: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);
    {
        let Ok(mut swept) = SWEPT.lock() else { return };
        let set = swept.get_or_insert_with(HashSet::new);
        if set.len() >= MAX_SWEPT {
            set.clear();
        }
        if !set.insert(dir.to_path_buf()) {
            return;
        }
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .as_encoded_bytes()
            .starts_with(TEMP_PREFIX.as_bytes())
        {
            remove_if_stale(&entry.path());
        }
    }
}
