//! The private folder for temporary files of plaintext outputs inside a cloud sync folder,
//! where the system has no unnamed temporary files (see [`crate::TempFile::for_target`]).
//!
//! A plaintext output is written to a temporary file first and linked into place when it is
//! complete. On Linux that file has no name until then. Elsewhere, beside its output inside a
//! OneDrive, SharePoint or Dropbox folder, it would itself be plaintext that the sync client
//! may upload while it is written, and a killed run would leave a partial copy there. So it is
//! written in a private folder (the CLI's `<cache dir>/tmp`) instead, provided that folder is
//! the user's own, owner-only (mode 0700, created on demand) and on the same file system as
//! the output (a link or rename cannot cross file systems); without one such an output is
//! refused. Stale temporary files in it are removed like those beside outputs
//! ([`crate::stale`]).

use std::path::{Path, PathBuf};

/// Whether `private` can hold the temporary files of outputs in `output_dir`: it is created
/// if missing (mode 0700, with any missing parents), it is a folder (not a link) owned by
/// this user and nobody else may enter it (a looser mode is tightened to 0700), and it is on
/// the same file system as `output_dir` (or, when that does not exist yet, its nearest
/// existing parent). Returns `private` when it can; `None` when it cannot (a plaintext
/// output in a sync folder is then refused where unnamed temporary files cannot be had: see
/// [`crate::TempFile::for_target`]). Always `None` on systems other than unix.
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
