//! Re-keying documents and folders (moved here from the `kluis rekey` command): read each
//! sealed document's header, finish an interrupted re-keying first, skip documents already
//! on their label's current key version, unlock the rest in batches (one key server request
//! per holder per batch), and write each new header with [`crate::replace_header`].
//!
//! What the documents move *to* (the labels' current key versions and slots, which need the
//! key server and the caller's pinned keys) comes from the caller, through [`RekeyTarget`].

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use kluis_core::{Header, Slot, Stanza, Unwrap, unlock_all};

use crate::error::Error;
use crate::open::BATCH;
use crate::rekey::{Recovery, Rewrite, finish_rekey, replace_header};
use crate::walk::{Entry, has_extension, walk};

/// A sealed document read for re-keying: what [`RekeyTarget::slots`] needs to know of it.
#[derive(Debug)]
pub struct RekeyDoc {
    /// The document.
    pub path: PathBuf,
    /// The label it is sealed under.
    pub label: String,
    /// The label's key versions its slots use (usually one).
    pub kids: Vec<u32>,
    /// One of its slots needs the label and a holder key (double key).
    pub double: bool,
    header: Header,
}

/// Where re-keyed documents go: each label's current key version and the slots of a new
/// header. The `kluis` command implements it with the key server client (which checks what
/// the server says against the keys it pinned) and the holder key of the user's identity.
pub trait RekeyTarget {
    /// The error of a label that cannot be looked up, or slots that cannot be made. This
    /// crate's own failures (a document that cannot be read or written, a key that cannot
    /// be recovered) convert into it; it is cloned for every document under a label whose
    /// lookup failed.
    type Error: From<Error> + Clone;
    /// The current key version of `label`. Asked once per label per run, before anything
    /// is unlocked.
    fn current_kid(&mut self, label: &str) -> Result<u32, Self::Error>;
    /// The slots of `doc`'s new header (its label at the current key version, with a holder
    /// key where needed). Asked only for documents whose key was recovered.
    fn slots(&mut self, doc: &RekeyDoc) -> Result<Vec<Slot>, Self::Error>;
}

/// How to re-key. `RekeyOptions::default()` moves only documents not on the current key
/// version.
#[derive(Clone, Copy, Debug, Default)]
#[non_exhaustive]
pub struct RekeyOptions {
    /// Rewrite the slots of documents already on the current key version too.
    pub force: bool,
}

/// What happened to one document.
#[derive(Debug)]
pub enum RekeyOutcome<E> {
    /// A new header was written.
    Moved {
        /// The label.
        label: String,
        /// The key versions its slots used before.
        from: Vec<u32>,
        /// The key version they use now.
        to: u32,
        /// How the header was written (in place, or in a copy of the document).
        rewrite: Rewrite,
    },
    /// Already on the current key version: left as it is.
    Current {
        /// The label.
        label: String,
        /// Its current key version.
        kid: u32,
    },
    /// It could not be re-keyed; it was left as it was (or as [`RekeyReport::recovery`] left
    /// it).
    Failed(E),
}

/// The result of re-keying one document.
#[derive(Debug)]
pub struct RekeyReport<E> {
    /// The document.
    pub path: PathBuf,
    /// What an interrupted earlier re-keying of it needed ([`finish_rekey`]), done first.
    pub recovery: Recovery,
    /// What happened to it.
    pub outcome: RekeyOutcome<E>,
}

/// The sealed documents below `paths`: each path itself when it is not a folder, else every
/// `*.kluis` regular file below it (folders walked as for opening: no symbolic links, stale
/// temporary files removed, kluis's own temporaries skipped). A path that cannot be listed
/// comes with its error.
fn list(paths: &[impl AsRef<Path>]) -> Vec<(PathBuf, Option<Error>)> {
    let classify =
        |name: &std::ffi::OsStr| (!has_extension(name)).then_some(crate::Skip::NotSealed);
    let mut out = Vec::new();
    for p in paths {
        let p = p.as_ref();
        let mut entries = Vec::new();
        walk(p, false, &classify, &mut entries);
        for e in entries {
            match e {
                Entry::File(f) => out.push((f.path, None)),
                // Given by name: reading it says what it is.
                Entry::Skipped(path, _) | Entry::Failed(path, Error::SymlinkArgument { .. })
                    if path == p =>
                {
                    out.push((path, None))
                }
                Entry::Failed(path, e) => out.push((path, Some(e))),
                Entry::Skipped(..) | Entry::EmptyDir(..) => {}
            }
        }
    }
    out
}

/// Append the sealed documents below `path` to `out` (for re-keying a folder): `path` itself
/// when it is not a folder, else every `*.kluis` regular file below it (each folder's files
/// in name order, then its subfolders), without following symbolic links and without
/// kluis's own temporaries. A path that cannot be read is appended as it is, so that reading
/// it reports the error for that path. The listing [`rekey_paths`] uses.
pub fn list_sealed(path: &Path, out: &mut Vec<PathBuf>) {
    out.extend(list(&[path]).into_iter().map(|(p, _)| p));
}

fn read_doc(path: &Path) -> Result<RekeyDoc, Error> {
    let f = File::open(path).map_err(|e| Error::io(path, "read", e))?;
    let meta = f.metadata().map_err(|e| Error::io(path, "read", e))?;
    if !meta.is_file() {
        return Err(Error::NotAFile {
            path: path.to_owned(),
        });
    }
    let header = Header::read(&mut BufReader::new(f)).map_err(|e| Error::format(path, e))?;
    let mut label = None;
    let mut kids = Vec::new();
    let mut double = false;
    for slot in header.slots() {
        for s in slot {
            if let Stanza::Org(o) = s {
                double |= slot.len() == 2;
                if label.as_deref().is_some_and(|l| l != o.label()) {
                    return Err(Error::SeveralLabels {
                        path: path.to_owned(),
                    });
                }
                label = Some(o.label().to_owned());
                if !kids.contains(&o.kid()) {
                    kids.push(o.kid());
                }
            }
        }
    }
    let label = label.ok_or_else(|| Error::NoLabel {
        path: path.to_owned(),
    })?;
    Ok(RekeyDoc {
        path: path.to_owned(),
        header,
        label,
        kids,
        double,
    })
}

/// Re-key the sealed documents given in `paths` (files, or folders: every `*.kluis` below)
/// to their labels' current key versions from `target`, recovering their keys from
/// `holders`. Documents already on the current version are left alone unless
/// [`RekeyOptions::force`]. An interrupted earlier re-keying of a document is finished first
/// ([`finish_rekey`]). One report per document, in path order; nothing is printed.
pub fn rekey_paths<P: AsRef<Path>, T: RekeyTarget>(
    paths: &[P],
    holders: &[&dyn Unwrap],
    target: &mut T,
    options: &RekeyOptions,
) -> Vec<RekeyReport<T::Error>> {
    let mut results: Vec<RekeyReport<T::Error>> = Vec::new();
    let mut records: HashMap<String, Result<u32, T::Error>> = HashMap::new();
    let mut to_move: Vec<(RekeyDoc, Recovery)> = Vec::new();
    let failed = |path: PathBuf, recovery, e: T::Error| RekeyReport {
        path,
        recovery,
        outcome: RekeyOutcome::Failed(e),
    };
    for (p, listed) in list(paths) {
        if let Some(e) = listed {
            results.push(failed(p, Recovery::Clean, e.into()));
            continue;
        }
        let recovery = match finish_rekey(&p) {
            Ok(r) => r,
            Err(e) => {
                results.push(failed(p, Recovery::Clean, e.into()));
                continue;
            }
        };
        let doc = match read_doc(&p) {
            Ok(d) => d,
            Err(e) => {
                results.push(failed(p, recovery, e.into()));
                continue;
            }
        };
        let record = records
            .entry(doc.label.clone())
            .or_insert_with(|| target.current_kid(&doc.label));
        match record {
            Err(e) => {
                let e = e.clone();
                results.push(failed(p, recovery, e));
            }
            Ok(kid) if !options.force && doc.kids == [*kid] => {
                let (label, kid) = (doc.label.clone(), *kid);
                results.push(RekeyReport {
                    path: p,
                    recovery,
                    outcome: RekeyOutcome::Current { label, kid },
                });
            }
            Ok(_) => to_move.push((doc, recovery)),
        }
    }

    for batch in to_move.chunks(BATCH) {
        let headers: Vec<&Header> = batch.iter().map(|(d, _)| &d.header).collect();
        let keys = unlock_all(&headers, holders);
        for ((doc, recovery), key) in batch.iter().zip(keys) {
            // Only documents whose label record was found are in `to_move`.
            let Some(Ok(kid)) = records.get(&doc.label) else {
                continue;
            };
            let result = key
                .map_err(|e| T::Error::from(Error::format(&doc.path, e)))
                .and_then(|key| {
                    let slots = target.slots(doc)?;
                    let new = doc
                        .header
                        .rekey(&key, &[], &slots)
                        .map_err(|e| Error::format(&doc.path, e))?;
                    Ok(replace_header(&doc.path, &doc.header, &new)?)
                });
            results.push(RekeyReport {
                path: doc.path.clone(),
                recovery: *recovery,
                outcome: match result {
                    Ok(rewrite) => RekeyOutcome::Moved {
                        label: doc.label.clone(),
                        from: doc.kids.clone(),
                        to: *kid,
                        rewrite,
                    },
                    Err(e) => RekeyOutcome::Failed(e),
                },
            });
        }
    }
    results.sort_by(|a, b| a.path.cmp(&b.path));
    results
}
