//! Atomic output files for streaming, re-keying and the private files in the configuration
//! folder: a temporary file beside the target, synced, then linked (no clobber) or renamed
//! into place.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use ring::rand::SecureRandom;

use crate::error::{Class, CliError};

/// The prefix kluis-file uses for its temporary files; leftovers are safe to delete.
const TEMP_PREFIX: &str = kluis_file::TEMP_PREFIX;

/// 16 random lower-case hex characters, for temporary names.
fn random_suffix() -> Result<String, CliError> {
    let mut b = [0u8; 8];
    ring::rand::SystemRandom::new().fill(&mut b).map_err(|_| {
        CliError::new(
            Class::Failed,
            "the operating system's random number generator failed: nothing was written",
        )
    })?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// A fresh temporary name in `dir`.
fn temp_path(dir: &Path) -> Result<PathBuf, CliError> {
    Ok(dir.join(format!("{TEMP_PREFIX}{}", random_suffix()?)))
}

/// The folder `target` goes into (`.` for a bare file name).
fn folder_of(target: &Path) -> &Path {
    match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Flush a folder's entries to disk (best effort; not possible on every platform).
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

/// A temporary file that becomes `target` on [`Output::commit`], and is removed if dropped
/// before: nothing ever exists half-written under the final name.
pub struct Output {
    tmp: PathBuf,
    target: PathBuf,
    file: Option<File>,
    done: bool,
}

impl Output {
    /// Create the temporary file in `target`'s folder; `private` makes it 0600 (plaintext),
    /// otherwise 0666 less the umask applies.
    pub fn create(target: &Path, private: bool) -> Result<Output, CliError> {
        let dir = folder_of(target);
        Output::open(temp_path(dir)?, target, private)
            .map_err(|e| CliError::io(dir, "create a temporary file in", &e))
    }

    fn open(tmp: PathBuf, target: &Path, private: bool) -> io::Result<Output> {
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(if private { 0o600 } else { 0o666 });
        }
        #[cfg(not(unix))]
        let _ = private;
        let file = opts.open(&tmp)?;
        Ok(Output {
            tmp,
            target: target.to_owned(),
            file: Some(file),
            done: false,
        })
    }

    /// The file to write to.
    pub fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("open until commit")
    }

    /// Sync and move into place: with `replace`, by rename (atomic replacement); without,
    /// by hard link, which fails if anything exists at the target.
    pub fn commit(mut self, replace: bool) -> Result<(), CliError> {
        self.sync()
            .map_err(|e| CliError::io(&self.tmp, "write", &e))?;
        match self.place(replace) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(exists(&self.target)),
            Err(e) => Err(CliError::io(&self.target, "move the finished file to", &e)),
        }
    }

    /// Make the contents durable and close the file (Windows refuses to rename an open file).
    fn sync(&mut self) -> io::Result<()> {
        self.file.take().expect("open until commit").sync_all()
    }

    /// Move the synced file to the target, then sync the target's folder.
    fn place(&mut self, replace: bool) -> io::Result<()> {
        if replace {
            fs::rename(&self.tmp, &self.target)?;
        } else {
            match fs::hard_link(&self.tmp, &self.target) {
                Ok(()) => fs::remove_file(&self.tmp)?,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(e),
                // No hard links on this file system: check, then rename (a small race).
                Err(_) if fs::symlink_metadata(&self.target).is_ok() => {
                    return Err(io::ErrorKind::AlreadyExists.into());
                }
                Err(_) => fs::rename(&self.tmp, &self.target)?,
            }
        }
        self.done = true;
        sync_dir(folder_of(&self.target));
        Ok(())
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        self.file = None;
        if !self.done {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Write a new file at `path` (never over an existing one unless `force`; `private` makes
/// it 0600) with what `fill` writes: nothing appears under `path` unless `fill` succeeds.
pub fn write_new<T>(
    path: &Path,
    force: bool,
    private: bool,
    fill: impl FnOnce(&mut File) -> Result<T, CliError>,
) -> Result<T, CliError> {
    if !force && fs::symlink_metadata(path).is_ok() {
        return Err(exists(path));
    }
    let mut out = Output::create(path, private)?;
    // On failure `out` is dropped: the temporary file goes, nothing is left.
    let r = fill(out.file())?;
    out.commit(force)?;
    Ok(r)
}

/// Replace `path` with `data`, mode 0600 (temporary file, fsync, rename); any failure is
/// reported as a failure to write `path`.
pub fn replace_private(path: &Path, data: &[u8]) -> Result<(), CliError> {
    let tmp = temp_path(folder_of(path))?;
    let write = || {
        let mut out = Output::open(tmp, path, true)?;
        out.file().write_all(data)?;
        out.sync()?;
        out.place(true)
    };
    write().map_err(|e| CliError::io(path, "write", &e))
}

/// The error for an existing output.
pub fn exists(path: &Path) -> CliError {
    CliError::new(
        Class::Exists,
        format!("{path:?} already exists and was left as it is: use --force to replace it"),
    )
}
