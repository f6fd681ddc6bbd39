//! Options, progress events and per-file reports.

use std::fmt;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use kluis_core::Unwrap;

use crate::error::{Error, Result};

/// A progress callback: called from worker threads, so it must be `Sync` and cheap.
pub type Progress<'a> = &'a (dyn for<'e> Fn(Event<'e>) + Sync);

/// How to seal. `SealOptions::default()` seals each file beside itself as `NAME.kluis`,
/// keeps the originals and overwrites nothing.
#[derive(Default)]
#[non_exhaustive]
pub struct SealOptions<'a> {
    /// Write sealed files here (created if missing) instead of beside each original. Folders
    /// are mirrored below it, starting with the sealed folder's own name (like `cp -r`).
    pub output_dir: Option<PathBuf>,
    /// Give every output a random name (`<26 random base32 characters>.kluis`) and keep the
    /// real name only in the sealed metadata. With `output_dir`, the outputs of a folder are
    /// written flat into it and each stored name is the file's relative path
    /// (`photos/2024/report.docx`), so no folder name shows either; an empty folder is
    /// sealed as an empty document whose stored name is its path ending in `/`.
    pub hide_names: bool,
    /// With `hide_names`: derive each hidden name from the stored name with this key
    /// instead of at random, so sealing the same path into the same folder again gives the
    /// same file name (and with `force` replaces the earlier sealed copy rather than adding a
    /// second one). Without it, hidden names are random.
    pub name_key: Option<&'a crate::NameKey>,
    /// Pad each payload (Padmé) so the sealed size reveals little about the real size.
    pub pad: bool,
    /// Replace existing outputs.
    pub force: bool,
    /// Remove each original once its sealed copy has been opened back with `verify_with`,
    /// fully authenticated, and found equal to the original byte for byte.
    pub remove_original: bool,
    /// Key holders to open the sealed copies with for `remove_original` (one batch unwrap per
    /// 1000 files). When none can open a copy, its original is kept.
    pub verify_with: &'a [&'a dyn Unwrap],
    /// Worker threads (default: the available cores; at most [`crate::MAX_THREADS`]).
    pub threads: Option<NonZeroUsize>,
    /// Called as work progresses.
    pub progress: Option<Progress<'a>>,
}

impl fmt::Debug for SealOptions<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealOptions")
            .field("output_dir", &self.output_dir)
            .field("hide_names", &self.hide_names)
            .field("name_key", &self.name_key.is_some())
            .field("pad", &self.pad)
            .field("force", &self.force)
            .field("remove_original", &self.remove_original)
            .field(
                "verify_with",
                &format_args!("[{} key holders]", self.verify_with.len()),
            )
            .field("threads", &self.threads)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

/// How to open. `OpenOptions::default()` restores each file beside its sealed copy and
/// overwrites nothing.
#[derive(Default)]
#[non_exhaustive]
pub struct OpenOptions<'a> {
    /// Restore files here (created if missing) instead of beside each sealed file. The folders
    /// inside an opened folder are mirrored below it.
    pub output_dir: Option<PathBuf>,
    /// Replace existing outputs (never a sealed document: a restored name ending in
    /// `.kluis` is refused).
    pub force: bool,
    /// Write a document given on its own (not found in a folder) even when its stored name
    /// starts with a dot. Off by default: such a document is refused with
    /// [`crate::Error::DotFile`], so a crafted `.bashrc` or `.profile` is not planted.
    pub allow_dotfiles: bool,
    /// Worker threads (default: the available cores; at most [`crate::MAX_THREADS`]).
    pub threads: Option<NonZeroUsize>,
    /// Called as work progresses.
    pub progress: Option<Progress<'a>>,
    /// A private folder for the plaintext temporary files of outputs inside a cloud sync
    /// folder (the CLI uses `<cache dir>/tmp`), used only where unnamed temporary files
    /// cannot be had (not Linux, or a file system without them; see
    /// [`crate::TempFile::for_target`]), and only when it is the user's own and on the same
    /// file system as the output ([`crate::private_temp_dir`]). Created on demand (mode
    /// 0700). Without a usable one, such an output fails with
    /// [`crate::Error::TempInSyncFolder`] rather than put a plaintext temporary file in the
    /// sync folder.
    pub temp_dir: Option<PathBuf>,
}

impl fmt::Debug for OpenOptions<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenOptions")
            .field("output_dir", &self.output_dir)
            .field("force", &self.force)
            .field("allow_dotfiles", &self.allow_dotfiles)
            .field("threads", &self.threads)
            .field("progress", &self.progress.is_some())
            .field("temp_dir", &self.temp_dir)
            .finish()
    }
}

/// Progress of a run, for progress bars and logs.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event<'a> {
    /// The inputs were listed: `files` to process, `bytes` to read in total.
    Planned {
        /// Files to seal or open.
        files: usize,
        /// Their total size on disk.
        bytes: u64,
    },
    /// Keys are being recovered for a batch of documents (one request per key holder: this
    /// is when the key server is asked).
    Unlocking {
        /// Documents in the batch.
        documents: usize,
    },
    /// A file is being processed.
    Started {
        /// The input file.
        input: &'a Path,
    },
    /// More of an input was read (counts add up to the file's size on disk).
    Read {
        /// The input file.
        input: &'a Path,
        /// Bytes read since the last event for this file.
        bytes: u64,
    },
    /// A file is done (written, skipped or failed).
    Finished(&'a Report),
}

/// What happened to one input.
#[derive(Debug)]
pub struct Report {
    /// The input file.
    pub input: PathBuf,
    /// Where its output was written (or would have been, when it failed and that was known).
    pub output: Option<PathBuf>,
    /// Plaintext bytes sealed or restored.
    pub bytes: u64,
    /// The result.
    pub outcome: Outcome,
}

/// The result for one input.
#[derive(Debug)]
#[non_exhaustive]
pub enum Outcome {
    /// Sealed or opened; the output is complete and synced.
    Done,
    /// Sealed, verified, and the original removed.
    OriginalRemoved,
    /// Sealed, but `remove_original` was not carried out: the error says why.
    OriginalKept(Error),
    /// Left alone on purpose.
    Skipped(Skip),
    /// Not opened: another document of the same run restores to the same path and is newer
    /// (by the modification time sealed in it, then the sealed file's, then its path). The
    /// path is that newer sealed document, which was opened instead.
    Superseded(PathBuf),
    /// Failed: the input is untouched and nothing was written under the output name. (One
    /// exception: when only the final sync of the output's folder failed, an [`Error::Io`]
    /// says so, and the complete output is there but may not survive a crash.)
    Failed(Error),
}

impl Outcome {
    /// Whether this counts as a failure (a failed file, or an original that was meant to be
    /// removed but was kept).
    pub fn is_failure(&self) -> bool {
        matches!(self, Outcome::Failed(_) | Outcome::OriginalKept(_))
    }
}

/// Why an input was left alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Skip {
    /// A symbolic link: never followed.
    Symlink,
    /// Not a regular file or folder (a device, socket or pipe).
    Special,
    /// A `.kluis` file met while sealing a folder: it is sealed already.
    AlreadySealed,
    /// A file without the `.kluis` extension met while opening a folder.
    NotSealed,
    /// A temporary file (`.kluis-tmp-…`) of a run still going on, or one left by an
    /// interrupted run that is not yet stale (see [`Skip::StaleTemporaryRemoved`]).
    Temporary,
    /// A temporary file left by an interrupted run, which was removed: nobody held it and it
    /// had not been modified for minutes.
    StaleTemporaryRemoved,
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Skip::Symlink => "a symbolic link (not followed)",
            Skip::Special => "not a regular file",
            Skip::AlreadySealed => "already sealed",
            Skip::NotSealed => "not a .kluis file",
            Skip::Temporary => {
                "a temporary file of a running kluis, or left by an interrupted run (removed once stale)"
            }
            Skip::StaleTemporaryRemoved => {
                "a temporary file left by an interrupted run; it was removed"
            }
        })
    }
}

/// The one report of a one-file run, with a failure as `Err`.
pub(crate) fn single(reports: Vec<Report>, input: &Path) -> Result<Report> {
    let mut report = reports
        .into_iter()
        .next()
        .ok_or_else(|| Error::NotAFile { path: input.into() })?;
    match std::mem::replace(&mut report.outcome, Outcome::Done) {
        Outcome::Failed(e) => Err(e),
        Outcome::Skipped(_) => Err(Error::NotAFile { path: input.into() }),
        other => {
            report.outcome = other;
            Ok(report)
        }
    }
}

/// The `Sync` part of the options that worker threads need.
#[derive(Clone, Copy)]
pub(crate) struct Shared<'a> {
    pub(crate) force: bool,
    pub(crate) progress: Option<Progress<'a>>,
    /// [`OpenOptions::temp_dir`] (`None` when sealing: ciphertext needs no hiding).
    pub(crate) temp_dir: Option<&'a Path>,
}

impl Shared<'_> {
    pub(crate) fn emit(&self, event: Event<'_>) {
        if let Some(p) = self.progress {
            p(event);
        }
    }
}
