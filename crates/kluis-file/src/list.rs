//! Listing the sealed documents of a folder (moved here from the `kluis rekey` command).

use std::path::{Path, PathBuf};

use crate::name::TEMP_PREFIX;

/// Append the sealed documents below `path` to `out` (for re-keying a folder): `path` itself
/// when it is not a folder, else every `*.kluis` regular file below it in name order, without
/// following symbolic links and without kluis's own temporaries. A path that cannot be read
/// is appended as it is, so that reading it reports the error for that path.
pub fn list_sealed(path: &Path, out: &mut Vec<PathBuf>) {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        out.push(path.to_owned()); // reading it reports the error
        return;
    };
    if !meta.is_dir() {
        out.push(path.to_owned());
        return;
    }
    let Ok(entries) = std::fs::read_dir(path) else {
        out.push(path.to_owned());
        return;
    };
    let mut entries: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    entries.sort();
    for e in entries {
        let name = e.file_name().map(|n| n.to_string_lossy().into_owned());
        let Some(name) = name else { continue };
        match std::fs::symlink_metadata(&e) {
            Ok(m) if m.is_dir() => list_sealed(&e, out),
            Ok(m) if m.is_file() && name.ends_with(".kluis") && !name.starts_with(TEMP_PREFIX) => {
                out.push(e)
            }
            _ => {}
        }
    }
}
