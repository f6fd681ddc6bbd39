//! Online backup and restore of the SQLite store.
//!
//! A backup is SQLite's `VACUUM INTO`: one read transaction, so it is consistent while the
//! server keeps writing, and a compact copy without free pages (no leftovers of deleted
//! rows). The copy is written to a temporary name (mode 0600), fsynced, then renamed.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use rusqlite::Connection;

use super::SqliteStore;
use crate::error::{Result, ServerError};
use crate::master_key::random;

/// `path`, or where it points when it is a symbolic link: a rename then replaces the file
/// itself, not the link (which would leave the old file in place behind the operator's back).
pub(crate) fn resolve_link(path: &Path) -> Result<PathBuf> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => path.canonicalize().or_else(|e| {
            // A link to a file not there yet (a store to restore after losing the disk):
            // the target it names, when that is a free name and not another link.
            let bad = || {
                ServerError::Config(format!(
                    "{} is a symbolic link whose target cannot be resolved: {e}",
                    path.display()
                ))
            };
            let target = std::fs::read_link(path).map_err(|_| bad())?;
            let target = match path.parent() {
                Some(dir) if target.is_relative() => dir.join(target),
                _ => target,
            };
            match std::fs::symlink_metadata(&target) {
                Err(n) if n.kind() == std::io::ErrorKind::NotFound => Ok(target),
                _ => Err(bad()),
            }
        }),
        _ => Ok(path.to_owned()),
    }
}

/// Make a rename or a new file in `dir` durable.
pub(crate) fn sync_dir(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// A new empty file beside `target` (mode 0600), named after it with a random suffix.
fn temp_beside(target: &Path, what: &str) -> Result<(PathBuf, std::fs::File)> {
    let name = target
        .file_name()
        .ok_or_else(|| ServerError::Config(format!("{} is not a file name", target.display())))?;
    let mut tmp = name.to_owned();
    tmp.push(format!(".{what}-{}", hex::encode(random::<8>()?)));
    let path = target.with_file_name(tmp);
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let file = opts.open(&path).map_err(|e| {
        ServerError::Config(format!(
            "cannot create a file beside {}: {e}",
            target.display()
        ))
    })?;
    Ok((path, file))
}

/// Removes a temporary file (and SQLite's companions of it) unless disarmed.
struct TempGuard(Option<PathBuf>);

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            for suffix in ["", "-journal", "-wal", "-shm"] {
                let mut s = p.as_os_str().to_owned();
                s.push(suffix);
                let _ = std::fs::remove_file(PathBuf::from(s));
            }
        }
    }
}

/// Whether another connection has the store open: it holds the WAL's shared lock, so an
/// exclusive lock cannot be had at once.
pub(super) fn in_use(path: &Path) -> Result<bool> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::ZERO)?;
    let locked = conn
        .pragma_update(None, "locking_mode", "EXCLUSIVE")
        .and_then(|()| conn.execute_batch("BEGIN EXCLUSIVE; COMMIT;"));
    match locked {
        Ok(()) => Ok(false),
        Err(rusqlite::Error::SqliteFailure(e, _))
            if matches!(
                e.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ) =>
        {
            Ok(true)
        }
        Err(e) => Err(e.into()),
    }
}

fn integrity_ok(path: &Path) -> Result<()> {
    let conn = Connection::open(path)?;
    let result: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    if result != "ok" {
        return Err(ServerError::Refused(format!(
            "{} fails SQLite's integrity check ({result}): use another backup",
            path.display()
        )));
    }
    Ok(())
}

/// A backup file reserved by [`SqliteStore::reserve_backup`].
pub struct BackupTarget {
    to: PathBuf,
    tmp: PathBuf,
    guard: TempGuard,
}

/// What a verified backup holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupCheck {
    /// Audit records, all verified (with the `store.restore` record).
    pub records: i64,
    /// The head MAC (hex) of the audit chain.
    pub head: String,
}

impl SqliteStore {
    /// Reserve the backup file `to`, which must not exist: a temporary file beside it
    /// (mode 0600) that [`SqliteStore::write_backup`] fills. Dropped unused, it is removed.
    pub fn reserve_backup(&self, to: &Path) -> Result<BackupTarget> {
        // `symlink_metadata`, not `exists`: a dangling symbolic link is an existing name too.
        if std::fs::symlink_metadata(to).is_ok() {
            return Err(ServerError::Refused(format!(
                "{} exists: choose a new backup file name",
                to.display()
            )));
        }
        let (tmp, file) = temp_beside(to, "backup")?;
        drop(file);
        let guard = TempGuard(Some(tmp.clone()));
        tmp.to_str()
            .ok_or_else(|| ServerError::Config(format!("{} is not a UTF-8 path", to.display())))?;
        Ok(BackupTarget {
            to: to.to_owned(),
            tmp,
            guard,
        })
    }

    /// Write a consistent copy of the store into `target` while other connections keep
    /// reading and writing: `VACUUM INTO` the temporary file, check, fsync, link into place.
    pub fn write_backup(&self, target: BackupTarget) -> Result<()> {
        let BackupTarget { to, tmp, mut guard } = target;
        let (to, tmp) = (to.as_path(), tmp.as_path());
        let name = tmp
            .to_str()
            .ok_or_else(|| ServerError::Config(format!("{} is not a UTF-8 path", to.display())))?;
        // VACUUM INTO writes into an existing empty file, keeping its 0600 mode.
        self.conn.execute("VACUUM INTO ?1", [name])?;
        integrity_ok(tmp)?;
        OpenOptions::new().write(true).open(tmp)?.sync_all()?;
        let appeared = || {
            ServerError::Refused(format!(
                "{} appeared meanwhile: choose a new backup file name",
                to.display()
            ))
        };
        // A hard link never replaces an existing name (a rename would, silently): the check
        // above and the link cannot race. File systems without hard links fall back to a
        // checked rename.
        match std::fs::hard_link(tmp, to) {
            Ok(()) => drop(guard),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(appeared()),
            Err(_) => {
                if std::fs::symlink_metadata(to).is_ok() {
                    return Err(appeared());
                }
                std::fs::rename(tmp, to)?;
                guard.0 = None;
            }
        }
        sync_dir(to)?;
        Ok(())
    }

    /// Put the backup `from` in place as the store `to`, after checking that it passes
    /// SQLite's integrity check and that `check` accepts a copy of it (the service opens it
    /// with the master key, verifies its audit chain and appends a `store.restore` record).
    /// Refuses to replace an existing store unless `force`; the server must be stopped. The
    /// backup file itself is not changed.
    pub fn restore_file(
        from: &Path,
        to: &Path,
        force: bool,
        check: impl FnOnce(SqliteStore) -> Result<BackupCheck>,
    ) -> Result<BackupCheck> {
        // A store reached through a symbolic link is restored where the link points (as
        // SQLite opens it), not by replacing the link and leaving the old store in place.
        let to = &resolve_link(to)?;
        if !from.is_file() {
            return Err(ServerError::Config(format!(
                "no backup file at {}",
                from.display()
            )));
        }
        let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        if same(from, to) {
            return Err(ServerError::Refused(
                "the backup file is the store itself: restore from a file `backup` wrote".into(),
            ));
        }
        if to.exists() && !force {
            return Err(ServerError::Refused(format!(
                "a store exists at {}: stop the server and pass --force to replace it",
                to.display()
            )));
        }
        if to.exists() && in_use(to)? {
            return Err(ServerError::Refused(format!(
                "the store {} is in use (a running server?): stop it first",
                to.display()
            )));
        }
        let (tmp, mut file) = temp_beside(to, "restore")?;
        let mut guard = TempGuard(Some(tmp.clone()));
        std::io::copy(&mut std::fs::File::open(from)?, &mut file)?;
        file.sync_all()?;
        drop(file);
        integrity_ok(&tmp)?;
        let check = check(SqliteStore::open(&tmp)?)?;
        // A single file, no WAL beside it, for the rename.
        Connection::open(&tmp)?.query_row("PRAGMA journal_mode = DELETE", [], |_| Ok(()))?;
        // The old store's WAL must not be replayed into the restored file.
        for suffix in ["-wal", "-shm"] {
            let mut s = to.as_os_str().to_owned();
            s.push(suffix);
            match std::fs::remove_file(PathBuf::from(s)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
        std::fs::rename(&tmp, to)?;
        guard.0 = None;
        sync_dir(to)?;
        Ok(check)
    }
}
