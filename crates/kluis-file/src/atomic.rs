//! Atomic output: a temporary file in the target folder, fsynced, then linked into place.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io;
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};
use crate::file::parent_of;
use crate::name::{TEMP_PREFIX, random_name};
use crate::report::{Outcome, Report};

/// A temporary file in the folder of its final output. Removed on drop unless committed, so
/// no failure leaves anything under the final name, and no error path leaves the temporary
/// file behind (only a killed process can, and not one without a name: see
/// [`TempFile::for_target`]).
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// # let target = dir.path().join("report.txt");
/// use std::io::Write;
/// let mut tmp = kluis_file::TempFile::beside(&target, false)?;
/// tmp.file_mut().write_all(b"all or nothing")?;
/// tmp.commit_synced(&target, false)?; // fails, leaving it as it is, if `target` exists
/// # assert_eq!(std::fs::read(&target)?, b"all or nothing");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct TempFile {
    /// The temporary name; `None` while the file has none (see [`TempFile::unnamed`]).
    path: Option<PathBuf>,
    file: Option<File>,
    /// The temporary name no longer exists (it was renamed into place).
    gone: bool,
}

impl TempFile {
    /// Create `.kluis-tmp-RANDOM` in `dir` with `create_new`. `private` makes it owner-only
    /// (mode 0600 on unix) from the start; otherwise the process umask applies.
    fn create(dir: &Path, private: bool) -> Result<TempFile> {
        let mut last = None;
        for _ in 0..4 {
            let path = dir.join(format!("{TEMP_PREFIX}{}", random_name()?));
            let mut options = fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(if private { 0o600 } else { 0o666 });
            }
            #[cfg(not(unix))]
            let _ = private;
            match options.open(&path) {
                Ok(file) => {
                    // Locked while open, so a later run can tell a leftover from a file
                    // being written (see `crate::stale`).
                    crate::stale::hold(&file);
                    return Ok(TempFile {
                        path: Some(path),
                        file: Some(file),
                        gone: false,
                    });
                }
                // 128 random bits collide only if someone plants the name: pick another.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(Error::io(dir, "create a temporary file in", e)),
            }
        }
        Err(Error::io(
            dir,
            "create a temporary file in",
            last.unwrap_or_else(|| io::ErrorKind::AlreadyExists.into()),
        ))
    }

    /// An owner-only (0600) file without a name in `dir` (`O_TMPFILE`, Linux): nothing in
    /// the folder shows it (no sync client can see or upload it) and a killed process leaves
    /// nothing (the kernel frees it). It gets a name only when committed, complete and synced.
    /// `None` where the system or file system offers no such files, or `/proc` (through which
    /// it is linked into place) is missing.
    #[cfg(target_os = "linux")]
    fn unnamed(dir: &Path) -> Option<TempFile> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_TMPFILE)
            .mode(0o600)
            .open(dir)
            .ok()?;
        fs::metadata(proc_fd(&file)).ok()?;
        // With `force` it is linked under a temporary name for an instant before the rename,
        // with the opened document's old modification time: locked like a named temporary
        // file, so another run's sweep does not take it for a stale leftover.
        crate::stale::hold(&file);
        Some(TempFile {
            path: None,
            file: Some(file),
            gone: false,
        })
    }

    #[cfg(not(target_os = "linux"))]
    fn unnamed(_: &Path) -> Option<TempFile> {
        None
    }

    /// A temporary file in the folder `target` goes into (`.` for a bare file name), to become
    /// `target` on commit. `private` makes it owner-only from the start (mode 0600 on unix).
    pub fn beside(target: &Path, private: bool) -> Result<TempFile> {
        TempFile::create(&parent_of(target), private)
    }

    /// The temporary file of `target`. With `private` (a plaintext output), never one with a
    /// name inside a cloud sync folder, even one not recognised by its name: on Linux an
    /// unnamed file in `target`'s folder (`O_TMPFILE`: invisible until the finished file is
    /// linked into place, gone with the process if it is killed). Where there are no unnamed
    /// files: when `target` lies inside a sync folder recognised by [`crate::sync_folder`],
    /// a named file in `temp_dir` if it can hold it ([`crate::private_temp_dir`]: the user's
    /// own, owner-only, on the same file system; stale ones there are removed first), else
    /// [`Error::TempInSyncFolder`]; elsewhere, as [`TempFile::beside`]. Without `private`,
    /// as [`TempFile::beside`].
    pub fn for_target(target: &Path, private: bool, temp_dir: Option<&Path>) -> Result<TempFile> {
        TempFile::create_for(&parent_of(target), private, temp_dir)
    }

    /// [`TempFile::for_target`] for an output in `dir`.
    fn create_for(dir: &Path, private: bool, temp_dir: Option<&Path>) -> Result<TempFile> {
        if !private {
            return TempFile::create(dir, false);
        }
        match TempFile::unnamed(dir) {
            Some(t) => Ok(t),
            None => TempFile::named_private(dir, temp_dir),
        }
    }

    /// The temporary file of a plaintext output in `dir` where unnamed files cannot be had
    /// (see [`TempFile::for_target`]).
    fn named_private(dir: &Path, temp_dir: Option<&Path>) -> Result<TempFile> {
        let Some(service) = crate::sync_folder(dir) else {
            return TempFile::create(dir, true);
        };
        match temp_dir.and_then(|t| crate::private_temp_dir(dir, t)) {
            Some(p) => {
                crate::stale::sweep(&p);
                TempFile::create(&p, true)
            }
            None => Err(Error::TempInSyncFolder {
                dir: dir.to_owned(),
                service,
            }),
        }
    }

    /// The open file, for writing.
    pub(crate) fn file(&self) -> &File {
        self.file.as_ref().expect("open until commit")
    }

    /// The open file, for writing.
    pub fn file_mut(&mut self) -> &mut File {
        self.file.as_mut().expect("open until commit")
    }

    /// Make the contents durable (`sync_all`) and move the file to `target`: without `force`,
    /// with a no-clobber link that fails ([`Error::Exists`]) if anything exists there; with
    /// `force`, with a rename that atomically replaces it. Then sync `target`'s folder, so the
    /// new name is durable too.
    pub fn commit_synced(self, target: &Path, force: bool) -> Result<()> {
        self.commit(target, force)?;
        sync_dir(&parent_of(target))
    }

    /// Make the contents durable (`sync_all`) and move the file to `target`: without `force`,
    /// with a no-clobber link that fails if anything exists there; with `force`, with a
    /// rename that atomically replaces it. The caller syncs the folder afterwards.
    pub(crate) fn commit(mut self, target: &Path, force: bool) -> Result<()> {
        let file = self.file.take().expect("open until commit");
        file.sync_all().map_err(|e| Error::io(target, "write", e))?;
        #[cfg(target_os = "linux")]
        if self.path.is_none() {
            // Unnamed: give it a name now that it is complete and synced.
            let result = self.link_unnamed(&file, target, force);
            drop(file);
            return result;
        }
        drop(file); // closed before the rename (Windows refuses to rename an open file)
        let result = if force {
            fs::rename(self.named(), target).map(|()| self.gone = true)
        } else {
            self.link_no_clobber(target)
        };
        match result {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(Error::Exists {
                path: target.to_owned(),
            }),
            Err(e) => Err(Error::io(target, "move the finished file to", e)),
        }
    }

    /// `hard_link` fails atomically when the target exists (no race, unlike check-then-rename);
    /// the temporary name is then removed by `Drop`. File systems without hard links (FAT,
    /// some network shares) fall back to check-then-rename, which has a small race: another
    /// program creating the target in between would be overwritten.
    fn link_no_clobber(&mut self, target: &Path) -> io::Result<()> {
        let path = self.named().to_owned();
        match fs::hard_link(&path, target) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(e),
            Err(_) => {
                if fs::symlink_metadata(target).is_ok() {
                    return Err(io::ErrorKind::AlreadyExists.into());
                }
                fs::rename(&path, target)?;
                self.gone = true;
                Ok(())
            }
        }
    }

    /// The temporary name (of a named file).
    fn named(&self) -> &Path {
        self.path.as_deref().expect("a named temporary file")
    }

    /// Link the unnamed `file` (open, complete, synced) into place: without `force` at
    /// `target`, failing if anything is there; with `force` under a temporary name in its
    /// folder first, then renamed over `target` (atomic), so only the finished file ever has
    /// a name, for that instant.
    #[cfg(target_os = "linux")]
    fn link_unnamed(&mut self, file: &File, target: &Path, force: bool) -> Result<()> {
        use rustix::fs::{AtFlags, CWD, linkat};
        let link = |to: &Path| {
            linkat(CWD, proc_fd(file), CWD, to, AtFlags::SYMLINK_FOLLOW).map_err(io::Error::from)
        };
        let moved = |e: io::Error| match e.kind() {
            io::ErrorKind::AlreadyExists => Error::Exists {
                path: target.to_owned(),
            },
            _ => Error::io(target, "move the finished file to", e),
        };
        if !force {
            self.gone = true; // nothing named to remove, whatever happens
            return link(target).map_err(moved);
        }
        // In the folder it was created in: the target's.
        let dir = parent_of(target);
        let mut last = None;
        for _ in 0..4 {
            let named = dir.join(format!("{TEMP_PREFIX}{}", random_name()?));
            match link(&named) {
                Ok(()) => {
                    self.path = Some(named);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(moved(e)),
            }
        }
        if self.path.is_none() {
            let e = last.unwrap_or_else(|| io::ErrorKind::AlreadyExists.into());
            return Err(Error::io(&dir, "create a temporary file in", e));
        }
        fs::rename(self.named(), target).map_err(moved)?;
        self.gone = true;
        Ok(())
    }
}

/// The `/proc` path of an open file, through which a file without a name can be reopened or
/// linked.
#[cfg(target_os = "linux")]
fn proc_fd(file: &File) -> String {
    use std::os::fd::AsRawFd;
    format!("/proc/self/fd/{}", file.as_raw_fd())
}

impl Drop for TempFile {
    fn drop(&mut self) {
        self.file = None;
        if let (false, Some(path)) = (self.gone, &self.path) {
            let _ = fs::remove_file(path);
        }
    }
}

/// Flush a folder's entries to disk (after files or folders were created in it or removed
/// from it).
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(test)]
    tests::SYNCED.with(|s| s.borrow_mut().push(dir.to_owned()));
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(dir, "sync the folder", e))
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Create the output folder `dir` and any missing folders above it, like
/// [`fs::create_dir_all`] (it may be or go through a symbolic link: it is the caller's choice),
/// but syncing the parent of each folder this call creates.
///
/// A new folder's entry lives in its parent. Without that sync a power loss could lose the
/// folder, and with it every file later written, synced and reported as done inside it
/// ([`sync_dirs`] only syncs the folders files land in). Folders that already existed are
/// not synced.
pub(crate) fn create_output_dir(dir: &Path) -> Result<()> {
    const ACTION: &str = "create the output folder";
    // The missing folders, deepest first.
    let mut missing = Vec::new();
    let mut path = dir;
    loop {
        match fs::metadata(path) {
            Ok(m) if m.is_dir() => break,
            Ok(_) => return Err(Error::io(path, ACTION, io::ErrorKind::NotADirectory.into())),
            // Not a directory: a file above it, which the next round names.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                missing.push(path);
                match path.parent() {
                    Some(p) if !p.as_os_str().is_empty() => path = p,
                    _ => break,
                }
            }
            Err(e) => return Err(Error::io(path, ACTION, e)),
        }
    }
    for path in missing.into_iter().rev() {
        match fs::create_dir(path) {
            Ok(()) => sync_dir(&parent_of(path))?,
            // Created meanwhile by another program (or `..` in the path): use it as it is.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => {}
            Err(e) => return Err(Error::io(path, ACTION, e)),
        }
    }
    Ok(())
}

/// Get ready to write `output`, which lies in `root/rel_dir`: refuse early if it exists and
/// `force` is not set (the commit checks again, atomically), create the folders of `rel_dir`,
/// and create the temporary file there (see [`TempFile::create`] for `private`), or in
/// `temp_dir` when the folder is inside a sync folder (see [`TempFile::for_target`]).
pub(crate) fn start_output(
    root: &Path,
    rel_dir: &Path,
    output: &Path,
    force: bool,
    private: bool,
    temp_dir: Option<&Path>,
) -> Result<TempFile> {
    if !force && fs::symlink_metadata(output).is_ok() {
        return Err(Error::Exists {
            path: output.to_owned(),
        });
    }
    let dir = create_dirs(root, rel_dir)?;
    // A run killed earlier may have left temporary files here (up to a whole plaintext).
    crate::stale::sweep(&dir);
    TempFile::create_for(&dir, private, temp_dir)
}

/// Create the folders of `rel` (normal components only) under `base`, refusing to go
/// through a symbolic link or a non-folder. `base` itself must exist; it is the caller's
/// choice and may be a link. Returns `base` joined with `rel`. The parent of each folder
/// created is synced, for the reason given at [`create_output_dir`].
///
/// A link planted between this check and the write can still redirect the write (there is no
/// portable `openat` in std); the check stops links that are already there, including any a
/// hostile document set could otherwise exploit (those only ever create folders and files).
pub(crate) fn create_dirs(base: &Path, rel: &Path) -> Result<PathBuf> {
    let mut path = base.to_path_buf();
    for c in rel.components() {
        let Component::Normal(c) = c else {
            // Callers build `rel` from checked names and real folder entries only.
            return Err(Error::io(
                &path,
                "create a folder in",
                io::Error::other("not a plain relative path"),
            ));
        };
        let parent = path.clone();
        path.push(c);
        // Absent when looked at: created now, by this call or by another worker of this run.
        let mut created = false;
        loop {
            match fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => break,
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(Error::SymlinkInOutput { path });
                }
                Ok(_) => {
                    return Err(Error::io(
                        &path,
                        "create the folder",
                        io::ErrorKind::NotADirectory.into(),
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound && !created => {
                    created = true;
                    match fs::create_dir(&path) {
                        // Another worker may have created it meanwhile: check it again.
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                        Err(e) => return Err(Error::io(&path, "create the folder", e)),
                    }
                }
                Err(e) => return Err(Error::io(&path, "create the folder", e)),
            }
        }
        // Also when another worker won the race to create it: that worker may not have
        // synced the parent yet, and this file's report must not say done before it is.
        if created {
            sync_dir(&parent)?;
        }
    }
    Ok(path)
}

/// Sync each folder once; a failure turns the reports of the files written into it into
/// failures.
pub(crate) fn sync_dirs(dirs: impl Iterator<Item = PathBuf>, reports: &mut [Report]) {
    let dirs: BTreeSet<PathBuf> = dirs.collect();
    for dir in dirs {
        if let Err(e) = sync_dir(&dir) {
            let mut e = Some(e);
            for r in reports.iter_mut() {
                if matches!(r.outcome, Outcome::Done)
                    && r.output.as_deref().map(parent_of).as_deref() == Some(&*dir)
                {
                    let err = e.take().unwrap_or_else(|| {
                        Error::io(&dir, "sync the folder", io::ErrorKind::Other.into())
                    });
                    r.outcome = Outcome::Failed(err);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    thread_local! {
        /// The folders [`sync_dir`] was asked to sync on this thread, in order. A missing
        /// fsync cannot be seen on a running system (only after a power loss), so the tests
        /// check that the right folders are asked for.
        pub(super) static SYNCED: RefCell<Vec<PathBuf>> = const { RefCell::new(Vec::new()) };
    }

    fn take_synced() -> Vec<PathBuf> {
        SYNCED.with(|s| s.take())
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// On Linux a plaintext output's temporary file has no name until it is committed, with
    /// or without `force`, and an existing output is not replaced without it.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_private_temporary_file_has_no_name_until_it_is_committed() {
        use std::io::Write;
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let target = t.path().join("plain.txt");
        let mut tmp = TempFile::for_target(&target, true, None).unwrap();
        tmp.file_mut().write_all(b"secret").unwrap();
        assert!(names_in(t.path()).is_empty(), "{:?}", names_in(t.path()));
        tmp.commit_synced(&target, false).unwrap();
        assert_eq!(names_in(t.path()), ["plain.txt"]);
        assert_eq!(fs::read(&target).unwrap(), b"secret");
        let mode = fs::metadata(&target).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        // Without force an existing output stays; with it, it is replaced.
        let mut tmp = TempFile::for_target(&target, true, None).unwrap();
        tmp.file_mut().write_all(b"newer").unwrap();
        let e = tmp.commit_synced(&target, false).unwrap_err();
        assert!(matches!(e, Error::Exists { .. }), "{e:?}");
        assert_eq!(fs::read(&target).unwrap(), b"secret");
        let mut tmp = TempFile::for_target(&target, true, None).unwrap();
        tmp.file_mut().write_all(b"newer").unwrap();
        tmp.commit_synced(&target, true).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"newer");
        assert_eq!(names_in(t.path()), ["plain.txt"]);

        // Dropped without a commit: nothing at all.
        let mut tmp = TempFile::for_target(&t.path().join("x"), true, None).unwrap();
        tmp.file_mut().write_all(b"partial").unwrap();
        drop(tmp);
        assert_eq!(names_in(t.path()), ["plain.txt"]);
    }

    /// With `force` an unnamed file is linked under a `.kluis-tmp-` name for the instant
    /// before the rename over the old output, with the opened document's (old) modification
    /// time already set. Another run sweeping that folder in that instant must not take it
    /// for a stale leftover and remove it (the rename would then fail): like every named
    /// temporary file, it is locked while this process holds it.
    #[cfg(target_os = "linux")]
    #[test]
    fn an_unnamed_file_linked_under_a_temporary_name_is_not_taken_for_stale() {
        use std::io::Write;
        use std::time::{Duration, SystemTime};
        let t = tempfile::tempdir().unwrap();
        let target = t.path().join("plain.txt");
        let mut tmp = TempFile::for_target(&target, true, None).unwrap();
        assert!(tmp.path.is_none(), "an unnamed file on this file system");
        tmp.file_mut().write_all(b"secret").unwrap();
        let old = SystemTime::now() - Duration::from_secs(3600);
        tmp.file().set_modified(old).unwrap();
        // What `link_unnamed` does with `force`, up to the rename.
        let named = t
            .path()
            .join(format!("{TEMP_PREFIX}{}", random_name().unwrap()));
        rustix::fs::linkat(
            rustix::fs::CWD,
            proc_fd(tmp.file()),
            rustix::fs::CWD,
            &named,
            rustix::fs::AtFlags::SYMLINK_FOLLOW,
        )
        .unwrap();
        assert!(
            !crate::stale::remove_if_stale(&named),
            "a temporary file still held by its writer was removed as stale"
        );
        assert!(named.exists());
        fs::remove_file(&named).unwrap();
        drop(tmp);
    }

    /// Where unnamed files cannot be had, a plaintext output in a recognised sync folder gets
    /// its temporary file in the private folder when that can hold it, and is refused when
    /// not; elsewhere it is written beside the output.
    #[cfg(unix)]
    #[test]
    fn without_unnamed_files_a_sync_folder_output_uses_the_private_folder_or_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let sync = t.path().join("OneDrive - Org");
        let plain = t.path().join("plain");
        fs::create_dir_all(&sync).unwrap();
        fs::create_dir_all(&plain).unwrap();
        let private = t.path().join("cache/tmp");

        let tmp = TempFile::named_private(&sync, Some(&private)).unwrap();
        assert_eq!(tmp.named().parent(), Some(private.as_path()));
        assert!(names_in(&sync).is_empty());
        drop(tmp);

        // The private folder cannot be made (a file is in the way): refused.
        let blocked = t.path().join("blocked");
        fs::write(&blocked, b"").unwrap();
        for temp_dir in [None, Some(blocked.join("tmp"))] {
            let e = TempFile::named_private(&sync, temp_dir.as_deref())
                .err()
                .unwrap();
            assert!(
                matches!(
                    e,
                    Error::TempInSyncFolder {
                        service: "OneDrive",
                        ..
                    }
                ),
                "{e:?}"
            );
            assert!(e.to_string().contains("nothing was written"), "{e}");
        }
        assert!(names_in(&sync).is_empty());

        // Not a sync folder: beside the output.
        let tmp = TempFile::named_private(&plain, None).unwrap();
        assert_eq!(tmp.named().parent(), Some(plain.as_path()));
        assert_eq!(names_in(&plain).len(), 1);
    }

    #[test]
    fn create_output_dir_creates_missing_folders_and_syncs_only_their_parents() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("a");
        fs::create_dir(&a).unwrap();
        let out = a.join("b").join("c");
        take_synced();

        create_output_dir(&out).unwrap();
        assert!(out.is_dir());
        // `a` existed: its parent is not synced; `a` and `a/b` got new entries.
        assert_eq!(take_synced(), [a.clone(), a.join("b")]);

        // Nothing created, nothing synced.
        create_output_dir(&out).unwrap();
        assert_eq!(take_synced(), Vec::<PathBuf>::new());
    }

    #[test]
    fn create_output_dir_names_a_file_in_the_way_and_says_what_to_do() {
        let t = tempfile::tempdir().unwrap();
        let file = t.path().join("f");
        fs::write(&file, b"x").unwrap();
        take_synced();

        let e = create_output_dir(&file.join("out")).unwrap_err();
        let Error::Io {
            path,
            action,
            error,
        } = &e
        else {
            panic!("{e:?}");
        };
        assert_eq!(path, &file);
        assert_eq!(*action, "create the output folder");
        assert_eq!(error.kind(), io::ErrorKind::NotADirectory);
        assert_eq!(
            e.to_string(),
            format!(
                "{file:?}: could not create the output folder: {error}: a file stands where a folder is needed: move it away"
            )
        );
        assert_eq!(take_synced(), Vec::<PathBuf>::new());
    }

    #[test]
    fn create_dirs_creates_nested_folders_and_syncs_only_the_parents_of_new_ones() {
        let t = tempfile::tempdir().unwrap();
        let x = t.path().join("x");
        fs::create_dir(&x).unwrap();
        take_synced();

        let made = create_dirs(t.path(), Path::new("x/y/z")).unwrap();
        assert_eq!(made, x.join("y").join("z"));
        assert!(made.is_dir());
        assert_eq!(take_synced(), [x.clone(), x.join("y")]);

        assert_eq!(create_dirs(t.path(), Path::new("x/y/z")).unwrap(), made);
        assert_eq!(take_synced(), Vec::<PathBuf>::new());
    }

    #[cfg(unix)]
    #[test]
    fn create_dirs_refuses_a_symbolic_link_on_the_way_and_creates_nothing_through_it() {
        let t = tempfile::tempdir().unwrap();
        let elsewhere = t.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
        take_synced();

        let e = create_dirs(t.path(), Path::new("link/y")).unwrap_err();
        assert!(
            matches!(&e, Error::SymlinkInOutput { path } if *path == link),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .contains("remove it or choose another output folder")
        );
        assert!(!elsewhere.join("y").exists());
        assert_eq!(take_synced(), Vec::<PathBuf>::new());
    }
}
