//! Atomic output files for streaming and the private files in the configuration folder:
//! kluis-file's [`TempFile`] beside the target, synced, then linked (no clobber) or renamed
//! into place.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use kluis_file::TempFile;

use crate::error::{Class, CliError};

/// Write a new file at `path` (never over an existing one unless `force`; `private` makes
/// it 0600) with what `fill` writes: nothing appears under `path` unless `fill` succeeds.
/// `temp_dir`: where a private (plaintext) output's temporary file may go when `path` is
/// inside a cloud sync folder and the system has no unnamed temporary files (see
/// [`TempFile::for_target`]).
pub fn write_new<T>(
    path: &Path,
    force: bool,
    private: bool,
    temp_dir: Option<&Path>,
    fill: impl FnOnce(&mut File) -> Result<T, CliError>,
) -> Result<T, CliError> {
    if !force && fs::symlink_metadata(path).is_ok() {
        return Err(exists(path));
    }
    let mut out = TempFile::for_target(path, private, temp_dir)?;
    // On failure `out` is dropped: the temporary file goes, nothing is left.
    let r = fill(out.file_mut())?;
    out.commit_synced(path, force)?;
    Ok(r)
}

/// Replace `path` with `data`, mode 0600 (temporary file, fsync, rename).
pub fn replace_private(path: &Path, data: &[u8]) -> Result<(), CliError> {
    let mut out = TempFile::beside(path, true)?;
    out.file_mut()
        .write_all(data)
        .map_err(|e| CliError::io(path, "write", &e))?;
    Ok(out.commit_synced(path, true)?)
}

/// The error for an existing output.
pub fn exists(path: &Path) -> CliError {
    CliError::new(
        Class::Exists,
        format!("{path:?} already exists and was left as it is: use --force to replace it"),
    )
}
