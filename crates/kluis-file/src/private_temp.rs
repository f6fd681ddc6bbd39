//! Temporary files of outputs inside a cloud sync folder.
//!
//! A plaintext output is written to a temporary file first and linked into place when it is
//! complete. Beside its output, inside a OneDrive, SharePoint or Dropbox folder, that
//! temporary file is itself plaintext that the sync client may upload while it is written,
//! and a killed run leaves a partial copy there until the next run removes it. So when the
//! output folder is inside a sync folder ([`crate::sync_folder`]) and the caller named a
//! private folder (the CLI's `<cache dir>/tmp`), the temporary file is written there instead,
//! provided that folder is the user's own, owner-only (mode 0700, created on demand) and on
//! the same file system as the output (a link or rename cannot cross file systems). Stale
//! temporary files in it are removed like those beside outputs ([`crate::stale`]).

use std::path::{Path, PathBuf};

/// The private folder to write the temporary file of an output in `output_dir` in: `private`
/// when `output_dir` is inside a cloud sync folder and `private` can be used for it (see
/// [`private_temp_dir`]); `None` to write it beside the output, as elsewhere.
pub(crate) fn for_output(output_dir: &Path, private: Option<&Path>) -> Option<PathBuf> {
    crate::sync_folder(output_dir)?;
    private_temp_dir(output_dir, private?)
}

/// Whether `private` can hold the temporary files of outputs in `output_dir`: it is created
/// if missing (mode 0700, with any missing parents), it is a folder (not a link) owned by
/// this user and nobody else may enter it (a looser mode is tightened to 0700), and it is on
/// the same file system as `output_dir` (or, when that does not exist yet, its nearest
/// existing parent). Returns `private` when it can; `None` when it cannot (the caller then
/// writes the temporary file beside the output, and should say so). Always `None` on systems
/// other than unix.
///
/// ```
/// # #[cfg(unix)] {
/// let home = tempfile::tempdir()?;
/// let out = home.path().join("OneDrive - Org/reports");
/// let private = home.path().join(".cache/kluis/tmp");
/// assert_eq!(kluis_file::private_temp_dir(&out, &private), Some(private.clone()));
/// assert!(private.is_dir());
/// # }
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn private_temp_dir(output_dir: &Path, private: &Path) -> Option<PathBuf> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
        let _ = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(private);
        let meta = std::fs::symlink_metadata(private).ok()?;
        if !meta.is_dir() || meta.uid() != rustix::process::geteuid().as_raw() {
            return None;
        }
        if meta.mode() & 0o077 != 0 {
            std::fs::set_permissions(private, std::fs::Permissions::from_mode(0o700)).ok()?;
        }
        let mut existing = crate::file::absolute(output_dir);
        let out_meta = loop {
            match std::fs::metadata(&existing) {
                Ok(m) => break m,
                Err(_) => existing = existing.parent()?.to_path_buf(),
            }
        };
        (out_meta.dev() == meta.dev()).then(|| private.to_path_buf())
    }
    #[cfg(not(unix))]
    {
        let _ = (output_dir, private);
        None
    }
}
