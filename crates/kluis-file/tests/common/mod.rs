//! Helpers shared by the kluis-file tests: keys, a counting key holder, trees on disk.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use kluis_core::{LabelKey, Recipient, Share, Slot, Stanza, Unwrap, UnwrapError, UnwrapRequest};
use kluis_file::{Outcome, Report};

pub fn label_slot(key: &LabelKey) -> Slot {
    Slot::single(Recipient::Label(key.public_key().clone()))
}

/// Counts `unwrap` calls and stanzas, to prove batching.
pub struct Counting<'a> {
    pub inner: &'a dyn Unwrap,
    pub calls: AtomicUsize,
    pub stanzas: AtomicUsize,
}

impl<'a> Counting<'a> {
    pub fn new(inner: &'a dyn Unwrap) -> Self {
        Counting {
            inner,
            calls: AtomicUsize::new(0),
            stanzas: AtomicUsize::new(0),
        }
    }
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
    pub fn stanzas(&self) -> usize {
        self.stanzas.load(Ordering::SeqCst)
    }
}

impl Unwrap for Counting<'_> {
    fn accepts(&self, s: &Stanza) -> bool {
        self.inner.accepts(s)
    }
    fn unwrap(&self, r: &[UnwrapRequest<'_>]) -> Vec<Result<Share, UnwrapError>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.stanzas.fetch_add(r.len(), Ordering::SeqCst);
        self.inner.unwrap(r)
    }
}

/// A key server that is offline: accepts org stanzas, answers none.
pub struct Offline;

impl Unwrap for Offline {
    fn accepts(&self, s: &Stanza) -> bool {
        matches!(s, Stanza::Org(_))
    }
    fn unwrap(&self, r: &[UnwrapRequest<'_>]) -> Vec<Result<Share, UnwrapError>> {
        r.iter()
            .map(|_| Err(UnwrapError::unavailable("connection refused")))
            .collect()
    }
}

/// Deterministic contents for test files.
pub fn data(seed: usize, n: usize) -> Vec<u8> {
    (0..n).map(|i| ((i * 31 + seed * 7) % 251) as u8).collect()
}

/// Write `files` (relative path, contents) under `root`.
pub fn make_tree(root: &Path, files: &[(&str, Vec<u8>)]) {
    for (rel, contents) in files {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, contents).unwrap();
    }
}

/// Every entry below `root` (files, folders and links), relative, sorted.
pub fn list(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries {
            let e = e.unwrap();
            let p = e.path();
            out.push(p.strip_prefix(root).unwrap().to_path_buf());
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Regular files below `root` with their contents, relative, sorted.
pub fn files(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    list(root)
        .into_iter()
        .filter(|p| fs::symlink_metadata(root.join(p)).unwrap().is_file())
        .map(|p| {
            let c = fs::read(root.join(&p)).unwrap();
            (p, c)
        })
        .collect()
}

pub fn assert_all_done(reports: &[Report]) {
    for r in reports {
        assert!(
            matches!(r.outcome, Outcome::Done),
            "{:?}: {:?}",
            r.input,
            r.outcome
        );
    }
}

/// No temporary file anywhere below `root`.
pub fn assert_no_temp(root: &Path) {
    for p in list(root) {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            !name.starts_with(".kluis-tmp-"),
            "temporary file left: {p:?}"
        );
    }
}

/// Whether this process ignores file permissions (root): permission tests are moot then.
pub fn permissions_ignored(dir: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let probe = dir.join("probe");
        fs::create_dir(&probe).unwrap();
        fs::set_permissions(&probe, fs::Permissions::from_mode(0o500)).unwrap();
        let ignored = fs::write(probe.join("x"), b"x").is_ok();
        let _ = fs::remove_file(probe.join("x"));
        fs::set_permissions(&probe, fs::Permissions::from_mode(0o700)).unwrap();
        fs::remove_dir(&probe).unwrap();
        ignored
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        true
    }
}
