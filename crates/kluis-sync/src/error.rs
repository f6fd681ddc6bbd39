//! The errors of a sync run.

use std::fmt;
use std::path::PathBuf;

/// Why a sync run could not start or had to stop. Failures of single files do not stop a run;
/// they are listed in its [`crate::PassReport`] and in `kluis sync status`.
#[derive(Debug)]
#[non_exhaustive]
pub enum SyncError {
    /// A folder does not exist or is not a folder.
    NotAFolder(PathBuf),
    /// The plain folder lies inside the sealed folder, or the other way round (after following
    /// symbolic links), or they are the same folder.
    Nested {
        /// The folder inside.
        inner: PathBuf,
        /// The folder around it.
        outer: PathBuf,
    },
    /// The state folder (journal, trash, cached folder key) lies inside one of the two folders.
    StateInside(PathBuf),
    /// Another `kluis sync` is already working on this pair of folders.
    Busy(PathBuf),
    /// Reading or writing a file failed.
    Io {
        /// What was being done, with the path.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The journal exists but cannot be read.
    Journal(PathBuf, String),
    /// The folder key (hidden names) is missing and cannot be created or opened.
    FolderKey(String),
    /// The operating system's random generator failed.
    Random,
    /// The file-system watcher could not be started.
    Watch(String),
}

impl fmt::Display for SyncError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SyncError::NotAFolder(p) => write!(
                f,
                "{} is not a folder: create it first, or check the path",
                p.display()
            ),
            SyncError::Nested { inner, outer } => write!(
                f,
                "{} lies inside {} (or is the same folder): the plain and the sealed folder must be separate, or plaintext would end up in the cloud; choose two folders side by side",
                inner.display(),
                outer.display()
            ),
            SyncError::StateInside(p) => write!(
                f,
                "the sync state folder {} lies inside the plain or the sealed folder; set KLUIS_CONFIG_DIR to a folder outside both",
                p.display()
            ),
            SyncError::Busy(p) => write!(
                f,
                "another `kluis sync` is already working on these folders (lock {}); stop it first",
                p.display()
            ),
            SyncError::Io { what, source } => write!(f, "could not {what}: {source}"),
            SyncError::Journal(p, why) => write!(
                f,
                "the sync journal {} cannot be read ({why}); move it away to start afresh (files present on both sides are then compared, nothing is lost)",
                p.display()
            ),
            SyncError::FolderKey(why) => write!(f, "the folder key for hidden names: {why}"),
            SyncError::Random => {
                f.write_str("the operating system's random generator failed; nothing was written")
            }
            SyncError::Watch(why) => write!(
                f,
                "could not watch the folders for changes: {why} (on Linux, raise fs.inotify.max_user_watches)"
            ),
        }
    }
}

impl std::error::Error for SyncError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SyncError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Build an [`SyncError::Io`] for `what` at `path`.
pub(crate) fn io(what: &str, path: &std::path::Path) -> impl FnOnce(std::io::Error) -> SyncError {
    let what = format!("{what} {}", path.display());
    move |source| SyncError::Io { what, source }
}
