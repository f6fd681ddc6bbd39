//! Atomic output files for streaming and re-keying: a temporary file beside the target,
//! synced, then linked (no clobber) or renamed into place.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use ring::rand::SecureRandom;

use crate::error::{Class, CliError};

/// The prefix kluis-file uses for its temporary files; leftovers are safe to delete.
const TEMP_PREFIX: &str = kluis_file::TEMP_PREFIX;

/// 16 random lower-case hex characters, for temporary names.
pub fn random_suffix() -> Result<String, CliError> {
    let mut b = [0u8; 8];
    ring::rand::SystemRandom::new().fill(&mut b).map_err(|_| {
        CliError::new(
            Class::Failed,
            "the operating system's random number generator failed: nothing was written",
        )
    })?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Flush a folder's entries to disk (best effort; not possible on every platform).
pub fn sync_dir(dir: &Path) {
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
    /// otherwise `mode` (or 0666 less the umask) applies.
    pub fn create(target: &Path, private: bool, mode: Option<u32>) -> Result<Output, CliError> {
        let dir = match target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        let tmp = dir.join(format!("{TEMP_PREFIX}{}", random_suffix()?));
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(if private {
                0o600
            } else {
                mode.unwrap_or(0o666)
            });
        }
        #[cfg(not(unix))]
        let _ = (private, mode);
        let file = opts
            .open(&tmp)
            .map_err(|e| CliError::io(&dir, "create a temporary file in", &e))?;
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
        let file = self.file.take().expect("open until commit");
        file.sync_all()
            .map_err(|e| CliError::io(&self.tmp, "write", &e))?;
        drop(file);
        let result = if replace {
            fs::rename(&self.tmp, &self.target)
        } else {
            match fs::hard_link(&self.tmp, &self.target) {
                Ok(()) => fs::remove_file(&self.tmp),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(e),
                // No hard links on this file system: check, then rename (a small race).
                Err(_) if fs::symlink_metadata(&self.target).is_ok() => {
                    Err(io::ErrorKind::AlreadyExists.into())
                }
                Err(_) => fs::rename(&self.tmp, &self.target),
            }
        };
        match result {
            Ok(()) => {
                self.done = true;
                if let Some(dir) = self.target.parent() {
                    sync_dir(if dir.as_os_str().is_empty() {
                        Path::new(".")
                    } else {
                        dir
                    });
                }
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(exists(&self.target)),
            Err(e) => Err(CliError::io(&self.target, "move the finished file to", &e)),
        }
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

/// The error for an existing output.
pub fn exists(path: &Path) -> CliError {
    CliError::new(
        Class::Exists,
        format!("{path:?} already exists and was left as it is: use --force to replace it"),
    )
}
