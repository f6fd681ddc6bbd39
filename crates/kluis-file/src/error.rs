//! Error type.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::name::NameProblem;

/// Everything that can go wrong while sealing or opening files and folders.
///
/// Every message names the file it is about and says what to do. Paths are shown quoted and
/// escaped (a hostile file name cannot inject terminal control sequences); a name stored
/// inside a sealed document is never shown at all (it may be crafted, and names can be personal
/// data). No message contains plaintext or key material.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The sealed format refused: the document is damaged, no key opens it, a key holder
    /// refused, and so on. `error` says which.
    Format {
        /// The file being sealed or opened.
        path: PathBuf,
        /// What the format layer reported.
        error: kluis_core::Error,
    },
    /// Reading or writing the file system failed.
    Io {
        /// The file or folder concerned.
        path: PathBuf,
        /// What was being done, as a verb phrase ("read", "create a temporary file in").
        action: &'static str,
        /// The operating system's error.
        error: io::Error,
    },
    /// The output already exists and `force` was not given. Nothing was overwritten.
    Exists {
        /// The existing output.
        path: PathBuf,
    },
    /// The name stored in a sealed document is not a safe relative path (it could write
    /// outside the output folder or onto a device). Nothing was written for this document.
    UnsafeName {
        /// The sealed file whose stored name was refused.
        sealed: PathBuf,
        /// Which rule the stored name breaks.
        problem: NameProblem,
    },
    /// An input given by name is a symbolic link, which is never followed (not even at the
    /// top): nothing was done with it.
    SymlinkArgument {
        /// The link.
        path: PathBuf,
    },
    /// A file to seal is a sealed document already (its name ends in `.kluis`, in any case,
    /// or it starts with a kluis header, not merely the `KLUIS\0` magic): it was not sealed a
    /// second time.
    AlreadySealed {
        /// The sealed document.
        path: PathBuf,
    },
    /// A document opened on its own (given by name, not found in a folder) stores a name
    /// that starts with a dot: a hidden file such as `.bashrc` or `.ssh`. Such a name is
    /// written only when [`crate::OpenOptions::allow_dotfiles`] is set. Nothing was written.
    DotFile {
        /// The sealed file.
        sealed: PathBuf,
    },
    /// A file (or folder) name cannot be sealed because opening would refuse it on some
    /// system (for example `CON`, a trailing dot, a colon).
    NameNotPortable {
        /// The file to be sealed.
        path: PathBuf,
        /// Which rule its name (or a folder above it) breaks.
        problem: NameProblem,
    },
    /// A file or folder name is not valid UTF-8, and sealed names are UTF-8.
    NameNotUtf8 {
        /// The file to be sealed.
        path: PathBuf,
    },
    /// A sealed document has no stored name and its file name does not end in `.kluis`, so
    /// there is no name to restore it under.
    NoOutputName {
        /// The sealed file.
        sealed: PathBuf,
    },
    /// The input changed while it was being read (size, time, or identity), or a sealed file
    /// was replaced between reading its header and its payload. Nothing was written.
    Changed {
        /// The file that changed.
        path: PathBuf,
    },
    /// The output folder lies inside a folder being sealed.
    OutputInsideInput {
        /// The output folder.
        output: PathBuf,
        /// The input folder containing it.
        input: PathBuf,
    },
    /// Two inputs would be written to (or restored under) the same output.
    Collision {
        /// The input that was refused.
        path: PathBuf,
        /// The earlier input that claimed the same output.
        other: PathBuf,
    },
    /// The output would replace one of the inputs of the same run.
    OutputIsInput {
        /// The input concerned.
        path: PathBuf,
    },
    /// A folder on the way to the output is a symbolic link; writing through it could leave
    /// the output folder.
    SymlinkInOutput {
        /// The symbolic link.
        path: PathBuf,
    },
    /// A plaintext output inside a cloud sync folder, on a system or file system without
    /// unnamed temporary files, and no private folder on its file system to write its
    /// temporary file in: it would have been written inside the sync folder, where the sync
    /// client may upload it, so nothing was written.
    TempInSyncFolder {
        /// The folder the output goes into.
        dir: PathBuf,
        /// The sync service the folder belongs to (`OneDrive`, `Dropbox`, ...).
        service: &'static str,
    },
    /// The input is not a regular file (a folder, a symbolic link, a device) where a file was
    /// needed.
    NotAFile {
        /// The input.
        path: PathBuf,
    },
    /// Sealing was asked with no recipients.
    NoRecipients,
    /// `remove_original` was set but the sealed copy could not be verified, so the original
    /// was kept.
    NotVerified {
        /// The original, still in place.
        path: PathBuf,
        /// Why verification failed.
        reason: Box<Error>,
    },
    /// `remove_original` was set but no key holder was given to open the sealed copy with,
    /// so the original was kept.
    NoVerifyKeys {
        /// The original, still in place.
        path: PathBuf,
    },
    /// A re-keying in place of this document was interrupted (see [`crate::finish_rekey`]);
    /// its journal is still there.
    RekeyInterrupted {
        /// The sealed document.
        path: PathBuf,
        /// The journal beside it.
        journal: PathBuf,
    },
    /// A re-keying journal does not match its document any more (the document was replaced
    /// or changed since): it was left alone and so was the document.
    StaleJournal {
        /// The sealed document.
        path: PathBuf,
        /// The journal beside it.
        journal: PathBuf,
    },
    /// A document to re-key is sealed under more than one label.
    SeveralLabels {
        /// The sealed document.
        path: PathBuf,
    },
    /// A document to re-key is sealed to holder or recovery keys only: it has no label key
    /// version to move.
    NoLabel {
        /// The sealed document.
        path: PathBuf,
    },
    /// The operating system's random number generator failed.
    Random,
}

/// Short alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, action: &'static str, error: io::Error) -> Self {
        Error::Io {
            path: path.into(),
            action,
            error,
        }
    }

    pub(crate) fn format(path: impl Into<PathBuf>, error: kluis_core::Error) -> Self {
        Error::Format {
            path: path.into(),
            error,
        }
    }

    /// The format layer's error, if this is one (for mapping to exit codes).
    pub fn format_error(&self) -> Option<&kluis_core::Error> {
        match self {
            Error::Format { error, .. } => Some(error),
            Error::NotVerified { reason, .. } => reason.format_error(),
            _ => None,
        }
    }
}

/// What to do about this I/O error.
fn io_hint(error: &io::Error) -> &'static str {
    // A path longer than the file system allows (ENAMETOOLONG): trying again cannot help.
    #[cfg(unix)]
    if error.raw_os_error() == Some(rustix::io::Errno::NAMETOOLONG.raw_os_error()) {
        return "the path is too long for the file system: choose an output folder with a shorter path, or ask the sender for shorter names";
    }
    match error.kind() {
        io::ErrorKind::NotFound => "check the path",
        io::ErrorKind::PermissionDenied => "check the permissions of the file and its folder",
        io::ErrorKind::StorageFull => "free some space and try again",
        io::ErrorKind::ReadOnlyFilesystem => "choose a writable output folder",
        io::ErrorKind::NotADirectory => "a file stands where a folder is needed: move it away",
        io::ErrorKind::IsADirectory => "a folder stands where a file is needed: move it away",
        _ => "nothing was changed under the final name; try again",
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Format { path, error } => write!(f, "{path:?}: {error}"),
            Error::Io {
                path,
                action,
                error,
            } => write!(
                f,
                "{path:?}: could not {action}: {error}: {}",
                io_hint(error)
            ),
            Error::Exists { path } => write!(
                f,
                "{path:?} already exists and was left as it is: use --force to replace it, or choose another output folder"
            ),
            Error::UnsafeName { sealed, problem } => write!(
                f,
                "{sealed:?}: the name stored in this document was refused ({problem}); nothing was written. The file may have been crafted to write outside the output folder: do not trust its sender"
            ),
            Error::SymlinkArgument { path } => write!(
                f,
                "{path:?} is a symbolic link, which kluis does not follow; nothing was done with it: give the file or folder it points to instead"
            ),
            Error::AlreadySealed { path } => write!(
                f,
                "{path:?} is sealed already (a .kluis document) and was not sealed again: to open it, use `kluis open`"
            ),
            Error::DotFile { sealed } => write!(
                f,
                "{sealed:?}: the name stored in this document starts with a dot (a hidden file, such as .bashrc); nothing was written. If you expect a hidden file, open it again with --allow-dotfiles"
            ),
            Error::NameNotPortable { path, problem } => write!(
                f,
                "{path:?}: this name could not be restored safely on every system ({problem}): rename it and seal again"
            ),
            Error::NameNotUtf8 { path } => write!(
                f,
                "{path:?}: the name is not valid UTF-8 and cannot be sealed: rename it and seal again"
            ),
            Error::NoOutputName { sealed } => write!(
                f,
                "{sealed:?}: the document stores no name and the file name does not end in `.kluis`: rename it to NAME.kluis and open it again"
            ),
            Error::Changed { path } => write!(
                f,
                "{path:?} changed while it was being read; nothing was written: try again when no other program is using it"
            ),
            Error::OutputInsideInput { output, input } => write!(
                f,
                "the output folder {output:?} is inside the folder being sealed {input:?}: choose an output folder outside it"
            ),
            Error::Collision { path, other } => write!(
                f,
                "{path:?} would be written to the same output as {other:?}; it was skipped: seal or open them into separate folders"
            ),
            Error::OutputIsInput { path } => write!(
                f,
                "{path:?}: the output would replace an input of the same run; it was skipped: use a separate output folder"
            ),
            Error::SymlinkInOutput { path } => write!(
                f,
                "{path:?} is a symbolic link on the way to the output; refusing to write through it: remove it or choose another output folder"
            ),
            Error::TempInSyncFolder { dir, service } => write!(
                f,
                "{dir:?} is inside a {service} sync folder, and its plaintext temporary file could only be written there (this file system has no unnamed temporary files, and the private folder for them is unusable or on another disk), where the sync client may upload it: nothing was written. Set KLUIS_CACHE_DIR (or cache_dir in config.toml) to a folder on the same disk outside the sync folder, or open elsewhere with -o"
            ),
            Error::NotAFile { path } => write!(
                f,
                "{path:?} is not a regular file (a folder, a symbolic link or a device): pass a file, or a folder to seal or open all of it"
            ),
            Error::NoRecipients => {
                f.write_str("no recipients to seal to: give at least one label or public key")
            }
            Error::NotVerified { path, reason } => write!(
                f,
                "{path:?} was sealed but kept: the sealed copy could not be verified: {reason}"
            ),
            Error::NoVerifyKeys { path } => write!(
                f,
                "{path:?} was sealed but kept: removing the original needs a key that opens the sealed copy, to verify it first"
            ),
            Error::SeveralLabels { path } => write!(
                f,
                "{path:?} is sealed under several labels; `kluis rekey` handles documents under one label"
            ),
            Error::NoLabel { path } => write!(
                f,
                "{path:?} is sealed to holder or recovery keys only, not under a label: there is no key version to move"
            ),
            Error::RekeyInterrupted { path, journal } => write!(
                f,
                "{path:?}: an earlier re-keying of this document was interrupted (its journal {journal:?} is still there): run `kluis rekey` on it again to finish, then retry"
            ),
            Error::StaleJournal { path, journal } => write!(
                f,
                "{path:?} no longer matches the re-keying journal {journal:?} left beside it, so the journal was not applied and nothing was changed: if the document was replaced on purpose, delete the journal"
            ),
            Error::Random => f.write_str(
                "the operating system's random number generator failed: nothing was written",
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Format { error, .. } => Some(error),
            Error::Io { error, .. } => Some(error),
            Error::NotVerified { reason, .. } => Some(reason.as_ref()),
            _ => None,
        }
    }
}
