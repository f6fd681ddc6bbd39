//! Listing the inputs: folders are walked without following symbolic links.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::name::TEMP_PREFIX;
use crate::report::Skip;

/// A regular file to process.
pub(crate) struct Found {
    pub(crate) path: PathBuf,
    /// The folders between the output root and the file: for sealing they start with the
    /// sealed folder's own name, for opening they are those inside the opened folder. Empty
    /// for a file given directly.
    pub(crate) rel_dir: PathBuf,
    /// Its size on disk.
    pub(crate) len: u64,
    /// Given directly as an input, not found inside a folder.
    pub(crate) direct: bool,
}

/// One listed input.
pub(crate) enum Entry {
    File(Found),
    Skipped(PathBuf, Skip),
    Failed(PathBuf, Error),
    /// An empty folder met inside a walked folder: its path, and its place below the output
    /// root (as `rel_dir` of a file in it would be), so it can be mirrored.
    EmptyDir(PathBuf, PathBuf),
}

/// List `input`: a file as itself, a folder recursively (in name order, each folder's files
/// before its subfolders). Symbolic links and special files are skipped inside; a symbolic
/// link given as `input` itself fails with [`Error::SymlinkArgument`], a special file is
/// skipped. `classify` may skip files met inside a folder by their name; `root_name` starts
/// every `rel_dir` with the folder's own name.
pub(crate) fn walk(
    input: &Path,
    root_name: bool,
    classify: &dyn Fn(&OsStr) -> Option<Skip>,
    out: &mut Vec<Entry>,
) {
    let meta = match fs::symlink_metadata(input) {
        Ok(m) => m,
        Err(e) => return out.push(Entry::Failed(input.into(), Error::io(input, "read", e))),
    };
    let kind = meta.file_type();
    if kind.is_symlink() {
        // Given by name: say so as a failure (a skip would let a run of nothing succeed).
        let path = input.to_path_buf();
        return out.push(Entry::Failed(path.clone(), Error::SymlinkArgument { path }));
    }
    if kind.is_file() {
        return out.push(Entry::File(Found {
            path: input.into(),
            rel_dir: PathBuf::new(),
            len: meta.len(),
            direct: true,
        }));
    }
    if !kind.is_dir() {
        return out.push(Entry::Skipped(input.into(), Skip::Special));
    }
    let mut rel = PathBuf::new();
    if root_name {
        match input.file_name() {
            Some(n) => rel.push(n),
            // `.`, `..` or a path ending in them: use the real folder name.
            None => match fs::canonicalize(input) {
                Ok(real) => rel.extend(real.file_name()),
                Err(e) => {
                    return out.push(Entry::Failed(input.into(), Error::io(input, "read", e)));
                }
            },
        }
    }
    let mut stack = vec![(input.to_path_buf(), rel)];
    while let Some((dir, rel)) = stack.pop() {
        let entries = match fs::read_dir(&dir).and_then(|d| d.collect::<Result<Vec<_>, _>>()) {
            Ok(e) => e,
            Err(e) => {
                out.push(Entry::Failed(
                    dir.clone(),
                    Error::io(&dir, "list the folder", e),
                ));
                continue;
            }
        };
        if entries.is_empty() {
            out.push(Entry::EmptyDir(dir.clone(), rel.clone()));
            continue;
        }
        let mut entries: Vec<_> = entries.into_iter().map(|e| (e.file_name(), e)).collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut subdirs = Vec::new();
        for (name, entry) in entries {
            let path = entry.path();
            // `DirEntry::metadata` does not follow symbolic links.
            let meta = match entry.metadata() {
                Ok(m) => m,
                Err(e) => {
                    let err = Error::io(&path, "read", e);
                    out.push(Entry::Failed(path, err));
                    continue;
                }
            };
            let kind = meta.file_type();
            if kind.is_symlink() {
                out.push(Entry::Skipped(path, Skip::Symlink));
            } else if kind.is_dir() {
                subdirs.push((path, rel.join(&name)));
            } else if !kind.is_file() {
                out.push(Entry::Skipped(path, Skip::Special));
            } else if name.as_encoded_bytes().starts_with(TEMP_PREFIX.as_bytes()) {
                let skip = match crate::stale::remove_if_stale(&path) {
                    true => Skip::StaleTemporaryRemoved,
                    false => Skip::Temporary,
                };
                out.push(Entry::Skipped(path, skip));
            } else if let Some(skip) = classify(&name) {
                out.push(Entry::Skipped(path, skip));
            } else {
                out.push(Entry::File(Found {
                    path,
                    rel_dir: rel.clone(),
                    len: meta.len(),
                    direct: false,
                }));
            }
        }
        stack.extend(subdirs.into_iter().rev());
    }
}

/// Whether a file name ends in `.kluis`, in any case (`F.KLUIS`), with something before it.
pub(crate) fn has_extension(name: &OsStr) -> bool {
    let b = name.as_encoded_bytes();
    let ext = crate::name::EXTENSION.as_bytes();
    b.len() > ext.len() + 1
        && b[b.len() - ext.len()..].eq_ignore_ascii_case(ext)
        && b[b.len() - ext.len() - 1] == b'.'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_extension_in_any_case() {
        for yes in ["a.kluis", "F.KLUIS", "g.Kluis", "x.y.kLuIs"] {
            assert!(has_extension(OsStr::new(yes)), "{yes}");
        }
        for no in [".kluis", "kluis", "a.kluis.txt", "akluis", "a.kluiss"] {
            assert!(!has_extension(OsStr::new(no)), "{no}");
        }
    }
}
