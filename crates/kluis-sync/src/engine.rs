//! One reconciliation pass over both folders.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use kluis_core::{FileKey, Header, Metadata, StreamReader, StreamWriter, UnwrapError};
use serde::Serialize;

use crate::error::{SyncError, io};
use crate::folder_key::{self, FolderKey};
use crate::journal::{Entry, Journal, PairLock, pair_dir, random_suffix, sync_dir, write_atomic};
use crate::scan::{
    PLAIN_TEMP_PREFIX, SEALED_TEMP_PREFIX, Scan, Stamp, check_pair, ensure_parent, scan,
};
use crate::{Keys, Sealing};

/// A pass deletes (sealed copies removed plus plain files trashed) at most this share of the
/// files in sync without [`Options::allow_mass_delete`]...
pub const GUARD_SHARE_PERCENT: usize = 50;
/// ...once it would delete at least this many.
pub const GUARD_MIN_FILES: usize = 5;
/// Documents unwrapped per key server request.
const UNWRAP_BATCH: usize = 1000;
/// Save the journal after this many changes within a pass (and at its end).
const SAVE_EVERY: usize = 200;
/// Files sealed between two journal saves.
const SEAL_CHUNK: usize = 500;
/// Threads that seal at once.
const WORKERS: usize = 8;
/// A sealed temporary in SEALED older than this is a leftover of a killed run.
const STALE_TEMP: Duration = Duration::from_secs(3600);
/// A plain file dated more than this far in the future is not taken for one being written.
const FUTURE_SLACK: Duration = Duration::from_secs(2);
/// When a file that could not be sealed for a lasting reason (unreadable, a full disk) is
/// tried again without a change.
const SLOW_RETRY: Duration = Duration::from_secs(60);

/// `f` over `items` on up to [`WORKERS`] threads; the results in order.
fn parallel_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    // A few files: threads would cost more than they save.
    if items.len() < 16 {
        return items.iter().map(f).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let out: std::sync::Mutex<Vec<Option<R>>> =
        std::sync::Mutex::new((0..items.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..WORKERS.min(items.len()) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let r = f(item);
                    if let Ok(mut o) = out.lock() {
                        o[i] = Some(r);
                    }
                }
            });
        }
    });
    out.into_inner()
        .unwrap_or_default()
        .into_iter()
        .flatten()
        .collect()
}

/// How to sync one pair of folders.
#[derive(Clone, Debug)]
pub struct Options {
    /// The plain folder people work in.
    pub plain: PathBuf,
    /// The sealed folder (inside the cloud sync folder).
    pub sealed: PathBuf,
    /// Hidden names: sealed files are named by the folder key, flat in the sealed folder.
    pub hide_names: bool,
    /// Where the state of every pair is kept (a folder outside both folders).
    pub state_root: PathBuf,
    /// Carry out a pass even when it deletes a large share of the files (the guard).
    pub allow_mass_delete: bool,
    /// A plain file modified less than this long ago is left for a later pass.
    pub settle: Duration,
    /// A sealed file named by another folder key (a device that lost the race to create the
    /// folder key) is left this long for that device to re-name it, then opened as a conflict
    /// copy of its path (or dropped when the same version is already there).
    pub stray_grace: Duration,
    /// Hidden names: a device may switch to a folder key with a smaller document id only while
    /// the key it pinned is one it created itself less than this long ago (two devices that
    /// created one at once on a new SEALED converge); after that it never switches silently.
    pub folder_key_window: Duration,
    /// Hidden names: the folder-key document id the person chose (`--trust-folder-key`), for a
    /// device that finds several and has no pin, or whose pinned key is gone.
    pub trust_folder_key: Option<String>,
}

/// What one pass did and left.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PassReport {
    /// Plain paths sealed into the sealed folder.
    pub sealed: Vec<String>,
    /// Plain paths written from sealed files.
    pub opened: Vec<String>,
    /// Plain paths whose sealed copies were removed (the plain file was deleted).
    pub removed: Vec<String>,
    /// Plain paths moved to the local trash (their sealed file was deleted), with where.
    pub trashed: Vec<(String, String)>,
    /// Conflict copies written into the plain folder: (path, conflict copy).
    pub conflicts: Vec<(String, String)>,
    /// Paths left for a later pass, with why.
    pub pending: Vec<(String, String)>,
    /// Paths that failed, with why.
    pub failed: Vec<(String, String)>,
    /// A direction that stopped (access revoked, label retired or destroyed), with why.
    pub stopped: Vec<String>,
    /// The mass-delete guard held back deletions: why, and what to do.
    pub guard: Option<String>,
    /// Things the person should know (sealing from a cached label record offline).
    pub notices: Vec<String>,
    /// When a later pass should run by itself (a file still changing, the key server away).
    #[serde(skip)]
    pub retry_after: Option<Duration>,
}

impl PassReport {
    /// Whether the pass changed anything on either side.
    pub fn changed(&self) -> bool {
        !(self.sealed.is_empty()
            && self.opened.is_empty()
            && self.removed.is_empty()
            && self.trashed.is_empty()
            && self.conflicts.is_empty())
    }

    fn retry(&mut self, after: Duration) {
        self.retry_after = Some(self.retry_after.map_or(after, |d| d.min(after)));
    }
}

/// A synced pair of folders with its journal; holds the pair's lock while it lives.
pub struct Syncer {
    plain: PathBuf,
    sealed: PathBuf,
    hide: bool,
    dir: PathBuf,
    tmp: PathBuf,
    journal_path: PathBuf,
    journal: Journal,
    allow_mass_delete: bool,
    settle: Duration,
    stray_grace: Duration,
    folder_key_window: Duration,
    trust_folder_key: Option<String>,
    folder_key: Option<FolderKey>,
    cleaned: bool,
    /// The digest of the journal as last written.
    saved: Option<Vec<u8>>,
    /// Folders with renames or removals not yet made durable (`fsync`ed before the journal).
    dirty: std::sync::Mutex<std::collections::BTreeSet<PathBuf>>,
    _lock: PairLock,
}

enum Action {
    /// Seal the plain file (expected stamp) over the sealed name (expected stamp or none).
    Seal(String, Stamp, Option<Stamp>),
    /// Open the sealed file into the plain path (expected plain stamp or none).
    Open(String, Stamp, Option<Stamp>),
    /// Both changed: open the sealed version beside the plain one, then seal the plain one.
    Conflict(String, Stamp, Stamp),
    /// Remove the sealed copy (expected stamp).
    RemoveSealed(String, Stamp),
    /// Move the plain file (expected stamp) to the trash.
    Trash(String, Stamp),
    /// Forget the path (gone on both sides).
    Forget(String),
    /// A sealed file under a name no known path maps to.
    Incoming(String, Stamp),
}

/// An opening to do once the keys are there.
struct OpenJob {
    name: String,
    stamp: Stamp,
    kind: OpenKind,
}

enum OpenKind {
    Main(String, Option<Stamp>),
    Conflict(String, Stamp),
    Incoming,
}

impl Syncer {
    /// Check the folders and take the pair's lock; reads the journal.
    pub fn new(o: &Options) -> Result<Syncer, SyncError> {
        let (plain, sealed) = check_pair(&o.plain, &o.sealed)?;
        std::fs::create_dir_all(&o.state_root).map_err(io("create", &o.state_root))?;
        let root = std::fs::canonicalize(&o.state_root).map_err(io("find", &o.state_root))?;
        if root.starts_with(&plain) || root.starts_with(&sealed) {
            return Err(SyncError::StateInside(root));
        }
        let dir = pair_dir(&root, &plain, &sealed);
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&tmp).map_err(io("create", &tmp))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700));
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        }
        let lock = PairLock::take(&dir)?;
        // Leftovers of a killed run (we hold the lock: no one else writes them).
        if let Ok(entries) = std::fs::read_dir(&tmp) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        // Sealed temporaries of a killed run in SEALED itself (state folder on another file
        // system): other devices may be writing theirs there now, so only old ones go.
        if let Ok(entries) = std::fs::read_dir(&sealed) {
            for e in entries.flatten() {
                let name = e.file_name();
                let old = e
                    .metadata()
                    .ok()
                    .filter(|m| m.is_file())
                    .and_then(|m| m.modified().ok())
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > STALE_TEMP);
                if old
                    && name
                        .to_str()
                        .is_some_and(|n| n.starts_with(SEALED_TEMP_PREFIX))
                {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let info = format!(
            "{{\"plain\":{},\"sealed\":{}}}\n",
            serde_json::Value::from(plain.to_string_lossy()),
            serde_json::Value::from(sealed.to_string_lossy())
        );
        write_atomic(&dir.join("pair.json"), info.as_bytes(), false)?;
        let journal_path = dir.join("journal.json");
        let journal = Journal::load(&journal_path)?;
        // Sealed temporaries go to the state folder when it is on the sealed folder's file
        // system (nothing partial ever shows in the sync folder), else into the sealed folder
        // under a random name.
        let tmp = if same_device(&tmp, &sealed) {
            tmp
        } else {
            sealed.clone()
        };
        Ok(Syncer {
            plain,
            sealed,
            hide: o.hide_names,
            dir,
            tmp,
            journal_path,
            journal,
            allow_mass_delete: o.allow_mass_delete,
            settle: o.settle,
            stray_grace: o.stray_grace,
            folder_key_window: o.folder_key_window,
            trust_folder_key: o.trust_folder_key.clone(),
            folder_key: None,
            cleaned: false,
            saved: None,
            dirty: std::sync::Mutex::new(std::collections::BTreeSet::new()),
            _lock: lock,
        })
    }

    /// The pair's state folder (journal, status, trash).
    pub fn state_dir(&self) -> &Path {
        &self.dir
    }

    /// The canonical plain folder.
    pub fn plain(&self) -> &Path {
        &self.plain
    }

    /// The canonical sealed folder.
    pub fn sealed(&self) -> &Path {
        &self.sealed
    }

    fn name_for(&self, rel: &str) -> String {
        match &self.folder_key {
            Some(k) => k.name_for(rel),
            None => format!("{rel}.{}", kluis_file::EXTENSION),
        }
    }

    /// Remember that `dir` had a rename or removal to make durable before the journal is saved.
    fn mark(&self, dir: &Path) {
        if let Ok(mut d) = self.dirty.lock() {
            d.insert(dir.to_owned());
        }
    }

    /// Make the marked folders durable (`fsync`), then save the journal: a step is recorded
    /// only once it is on disk.
    fn flush(&mut self) -> Result<(), SyncError> {
        let dirs = match self.dirty.lock() {
            Ok(mut d) => std::mem::take(&mut *d),
            Err(_) => Default::default(),
        };
        for d in dirs {
            sync_dir(&d);
        }
        self.journal.save(&self.journal_path, &mut self.saved)
    }

    /// Run passes until nothing changes any more (at most `max` passes): a pass can write
    /// conflict copies that the next one seals.
    pub fn run(&mut self, keys: &dyn Keys, max: usize) -> Result<PassReport, SyncError> {
        let mut total = self.pass(keys)?;
        for _ in 1..max {
            if !total.changed() && total.conflicts.is_empty() {
                break;
            }
            let r = self.pass(keys)?;
            let more = r.changed();
            merge(&mut total, r);
            if !more {
                break;
            }
        }
        self.write_status(&total);
        Ok(total)
    }

    /// Save `report` as the pair's status (read by `kluis sync status`).
    pub fn write_status(&self, report: &PassReport) {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut v = serde_json::json!({
            "plain": self.plain.to_string_lossy(),
            "sealed": self.sealed.to_string_lossy(),
            "at": now,
            "in_sync": self.journal.entries.len(),
            "report": report,
        });
        // Conflicts of earlier passes stay listed while their copy is in the plain folder.
        let path = self.dir.join("status.json");
        let earlier: Vec<serde_json::Value> = std::fs::File::open(&path)
            .ok()
            .and_then(|f| {
                let mut b = Vec::new();
                f.take(64 << 20).read_to_end(&mut b).ok()?;
                serde_json::from_slice::<serde_json::Value>(&b).ok()
            })
            .and_then(|old| old["report"]["conflicts"].as_array().cloned())
            .unwrap_or_default();
        if let Some(list) = v["report"]["conflicts"].as_array_mut() {
            for c in earlier {
                let kept = c[1].as_str().is_some_and(|copy| {
                    kluis_file::safe_relative_path(copy).is_ok()
                        && Stamp::at(&self.plain.join(copy)).is_some()
                });
                if kept && !list.contains(&c) {
                    list.push(c);
                }
            }
        }
        let _ = write_atomic(
            &self.dir.join("status.json"),
            v.to_string().as_bytes(),
            false,
        );
    }

    /// One pass: scan both folders, compare with the journal, carry out what changed.
    pub fn pass(&mut self, keys: &dyn Keys) -> Result<PassReport, SyncError> {
        let mut r = PassReport::default();
        // The folders are checked again on every pass: a watching process lives for weeks, and
        // a folder replaced meanwhile by a link into the other would take plaintext into SEALED.
        let (plain, sealed) = check_pair(&self.plain, &self.sealed)?;
        if plain != self.plain || sealed != self.sealed {
            return Err(SyncError::Io {
                what: format!("use {} and {}", self.plain.display(), self.sealed.display()),
                source: std::io::Error::other(format!(
                    "they now lead to {} and {} (moved, or replaced by a link, while kluis sync ran); check the folders and start kluis sync again",
                    plain.display(),
                    sealed.display()
                )),
            });
        }
        // An empty SEALED (not even a folder key) or PLAIN is what an unmounted drive looks
        // like.
        let empty = |d: &Path| std::fs::read_dir(d).is_ok_and(|mut d| d.next().is_none());
        let folder_empty = empty(&self.sealed) || empty(&self.plain);
        if folder_empty && !self.journal.entries.is_empty() && !self.allow_mass_delete {
            // Stopped before anything is written, the folder key included (written into the
            // mount point, it would make the next pass take the folder for a mounted one).
            r.guard = Some(format!(
                "one of the folders is entirely empty while {} files are in sync; nothing was done (nothing deleted, sealed or opened). If a drive is unmounted, mount it; if every file is meant to go, run `kluis sync` once with --allow-mass-delete",
                self.journal.entries.len()
            ));
            return Ok(r);
        }
        if self.hide {
            let pin_before = self.journal.folder_key.clone();
            let mut warnings = Vec::new();
            let choice = folder_key::choose(
                &self.sealed,
                &self.dir,
                &self.tmp,
                keys,
                folder_key::Trust {
                    pin: &mut self.journal.folder_key,
                    refused: &mut self.journal.refused_keys,
                    chosen: self.trust_folder_key.as_deref(),
                    window: self.folder_key_window,
                    warnings: &mut warnings,
                },
            )?;
            r.failed.extend(warnings);
            if self.journal.folder_key != pin_before {
                // The pin is on disk before anything is named by it.
                self.journal.save(&self.journal_path, &mut self.saved)?;
            }
            let chosen = match choice {
                folder_key::Choice::Use(c) => c,
                folder_key::Choice::Stop(why) => {
                    r.stopped.push(why);
                    return Ok(r);
                }
            };
            let changed = chosen.changed || self.folder_key.is_none();
            self.folder_key = Some(chosen.key);
            if changed {
                self.rename_to_current_key()?;
            }
        } else if folder_key::present(&self.sealed) {
            // Another device syncs this folder with hidden names: without them this device
            // would open every hidden-named document as a stray and seal it again under its
            // real path, publishing the names (and the hidden-names devices, whose scan is
            // flat, would see their files deleted).
            return Err(SyncError::FolderKey(format!(
                "{} holds a folder key ({}): it is synced with hidden names; run kluis sync with --hide-names on this device too",
                self.sealed.display(),
                crate::scan::FOLDER_KEY_FILE
            )));
        }
        let plain = scan(&self.plain, false)?;
        if !self.cleaned {
            self.cleaned = true;
            remove_plain_temps(&self.plain);
        }
        let sealed = scan(&self.sealed, self.hide)?;
        for (p, why) in &plain.refused {
            r.failed.push((p.clone(), why.clone()));
        }
        let plain_files = self.valid_plain(&plain, &mut r);
        let sealed_files: BTreeMap<String, Stamp> = sealed
            .files
            .iter()
            .filter(|(n, _)| n.ends_with(".kluis"))
            .map(|(n, st)| (n.clone(), *st))
            .collect();

        let unknown = |rel: &str, name: &str| plain.is_unknown(rel) || sealed.is_unknown(name);
        let actions = self.plan(&plain_files, &sealed_files, folder_empty, &unknown, &mut r);
        self.execute(actions, keys, &mut r)?;
        self.flush()?;
        Ok(r)
    }

    /// The plain files whose names can be sealed (and opened again everywhere).
    fn valid_plain(&self, plain: &Scan, r: &mut PassReport) -> BTreeMap<String, Stamp> {
        let mut out = BTreeMap::new();
        for (rel, st) in &plain.files {
            match kluis_file::safe_relative_path(rel) {
                Ok(_) => {
                    out.insert(rel.clone(), *st);
                }
                Err(problem) => r.failed.push((
                    rel.escape_debug().to_string(),
                    format!("not synced: {problem}; rename it"),
                )),
            }
        }
        out
    }

    /// After the folder key changed (this device lost a race), give every sealed file this
    /// device synced the name the winning key gives its path.
    fn rename_to_current_key(&mut self) -> Result<(), SyncError> {
        let mut forget = Vec::new();
        let renames: Vec<(String, String)> = self
            .journal
            .entries
            .iter()
            .filter_map(|(rel, e)| {
                let new = self.name_for(rel);
                (e.name != new).then(|| (rel.clone(), new))
            })
            .collect();
        for (rel, new) in renames {
            let Some(e) = self.journal.entries.get_mut(&rel) else {
                continue;
            };
            let old_path = self.sealed.join(&e.name);
            let new_path = self.sealed.join(&new);
            let ours = e.sealed.is_some() && Stamp::at(&old_path) == e.sealed;
            if ours && std::fs::hard_link(&old_path, &new_path).is_ok() {
                let _ = std::fs::remove_file(&old_path);
                e.sealed = Stamp::at(&new_path);
                e.name = new;
            } else {
                // Something is under the new name already (or ours is gone): our sealed copy
                // under the old name goes (its plain file is still here), and the path is
                // compared afresh, both sides as new: nothing is lost.
                if ours {
                    let _ = std::fs::remove_file(&old_path);
                }
                forget.push(rel);
            }
        }
        for rel in forget {
            self.journal.entries.remove(&rel);
        }
        sync_dir(&self.sealed);
        self.journal.save(&self.journal_path, &mut self.saved)
    }

    fn plan(
        &mut self,
        plain: &BTreeMap<String, Stamp>,
        sealed: &BTreeMap<String, Stamp>,
        folder_empty: bool,
        unknown: &dyn Fn(&str, &str) -> bool,
        r: &mut PassReport,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        let mut claimed: HashMap<String, ()> = HashMap::new();
        let mut rels: Vec<&String> = self.journal.entries.keys().collect();
        rels.extend(
            plain
                .keys()
                .filter(|k| !self.journal.entries.contains_key(*k)),
        );
        let now = SystemTime::now();
        for rel in rels {
            let name = self.name_for(rel);
            claimed.insert(name.clone(), ());
            let j = self.journal.entries.get(rel);
            let (jp, js) = (j.and_then(|e| e.plain), j.and_then(|e| e.sealed));
            let p = plain.get(rel).copied();
            let s = sealed.get(&name).copied();
            // Not seen because it could not be looked at: unknown, not deleted.
            if (p.is_none() || s.is_none()) && unknown(rel, &name) {
                r.pending
                    .push((rel.clone(), "could not be looked at; left as it was".into()));
                continue;
            }
            let fresh = |st: &Stamp| {
                let t = SystemTime::UNIX_EPOCH
                    + Duration::from_nanos(u64::try_from(st.mtime_ns).unwrap_or(0));
                match now.duration_since(t) {
                    Ok(age) => age,
                    // Dated well in the future (an archive, another machine's clock): not
                    // being written now, or it would carry the time of now; else it would
                    // count as "still changing" until that date.
                    Err(e) if e.duration() > FUTURE_SLACK => Duration::MAX,
                    Err(_) => Duration::ZERO,
                }
            };
            // A plain file that changed recently may still be being written.
            if let Some(pp) = p {
                if p != jp && fresh(&pp) < self.settle {
                    r.pending.push((rel.clone(), "still changing".into()));
                    r.retry(self.settle - fresh(&pp) + Duration::from_millis(50));
                    continue;
                }
            }
            let action = match (p != jp, s != js) {
                (false, false) => continue,
                (true, false) => match (p, s) {
                    (Some(p), s) => Action::Seal(rel.clone(), p, s),
                    (None, Some(s)) => Action::RemoveSealed(rel.clone(), s),
                    (None, None) => Action::Forget(rel.clone()),
                },
                (false, true) => match (p, s) {
                    (p, Some(s)) => Action::Open(rel.clone(), s, p),
                    (Some(p), None) => Action::Trash(rel.clone(), p),
                    (None, None) => Action::Forget(rel.clone()),
                },
                (true, true) => match (p, s) {
                    (Some(p), Some(s)) => Action::Conflict(rel.clone(), p, s),
                    // Sealed deleted, plain changed: the change is kept and sealed again.
                    (Some(p), None) => Action::Seal(rel.clone(), p, None),
                    // Plain deleted, sealed changed: the newer version comes back.
                    (None, Some(s)) => Action::Open(rel.clone(), s, None),
                    (None, None) => Action::Forget(rel.clone()),
                },
            };
            actions.push(action);
        }
        for (name, st) in sealed {
            if claimed.contains_key(name) {
                continue;
            }
            if self.journal.misplaced.get(name) == Some(st) {
                r.failed.push((
                    format!("(sealed) {name}"),
                    "not opened: it cannot be opened here, or its stored path does not match its sealed name; looked at again when it changes".into(),
                ));
                continue;
            }
            actions.push(Action::Incoming(name.clone(), *st));
        }
        self.journal
            .misplaced
            .retain(|name, _| sealed.contains_key(name));
        // The mass-delete guard.
        let deletes = actions
            .iter()
            .filter(|a| matches!(a, Action::RemoveSealed(..) | Action::Trash(..)))
            .count();
        let tracked = self.journal.entries.len().max(1);
        // An entirely empty SEALED or PLAIN while files are in sync is what an unmounted drive
        // looks like, whatever the number of files: held too, not only GUARD_MIN_FILES or more.
        let whole = folder_empty && !self.journal.entries.is_empty();
        let is_delete = |a: &Action| match a {
            Action::RemoveSealed(rel, _) | Action::Trash(rel, _) => Some(rel.clone()),
            _ => None,
        };
        let deleting: std::collections::BTreeSet<String> =
            actions.iter().filter_map(is_delete).collect();
        // Deletions held before stay held while they are still to be done.
        self.journal.held.retain(|rel| deleting.contains(rel));
        if self.allow_mass_delete {
            self.journal.held.clear();
        }
        if !self.allow_mass_delete
            && ((deletes >= GUARD_MIN_FILES && deletes * 100 > tracked * GUARD_SHARE_PERCENT)
                || whole)
        {
            self.journal.held.extend(deleting);
            r.guard = Some(format!(
                "{deletes} of {tracked} files would be deleted at once (sealed copies removed or plain files moved to the trash){}; nothing was done (nothing deleted, sealed or opened). If one folder is unmounted or the sync client went wrong, fix that first; if the deletions are meant, run `kluis sync` once with --allow-mass-delete",
                if whole {
                    ", and one of the folders is entirely empty"
                } else {
                    ""
                }
            ));
        } else if !self.journal.held.is_empty() {
            let held = self.journal.held.len();
            r.guard = Some(format!(
                "{held} deletions held back by the mass-delete guard are still to be done; nothing was done (nothing deleted, sealed or opened). If one folder is unmounted or the sync client went wrong, fix that first; if the deletions are meant, run `kluis sync` once with --allow-mass-delete"
            ));
        } else {
            return actions;
        }
        // The guard stops the whole pass: a folder that looks emptied may be an unmounted
        // drive, and what is written into its mount point is hidden once it is mounted again
        // (the journal would then take the drive's older versions for newer ones).
        for a in &actions {
            let shown = match a {
                Action::Seal(rel, ..)
                | Action::Open(rel, ..)
                | Action::Conflict(rel, ..)
                | Action::RemoveSealed(rel, _)
                | Action::Trash(rel, _)
                | Action::Forget(rel) => rel.clone(),
                Action::Incoming(name, _) => format!("(sealed) {name}"),
            };
            r.pending
                .push((shown, "held by the mass-delete guard".into()));
        }
        Vec::new()
    }

    fn execute(
        &mut self,
        actions: Vec<Action>,
        keys: &dyn Keys,
        r: &mut PassReport,
    ) -> Result<(), SyncError> {
        let needs_sealing = actions.iter().any(|a| {
            matches!(
                a,
                Action::Seal(..) | Action::Conflict(..) | Action::RemoveSealed(..)
            )
        });
        let sealing: Option<Sealing> = if needs_sealing {
            match keys.seal_to() {
                Ok(s) => {
                    if let Some(n) = &s.notice {
                        r.notices.push(n.clone());
                    }
                    Some(s)
                }
                Err(why) => {
                    r.stopped.push(format!(
                        "sealing stopped (plain → sealed: nothing sealed or removed): {why}"
                    ));
                    None
                }
            }
        } else {
            None
        };
        let mut opens = Vec::new();
        let mut seals = Vec::new();
        let mut done = 0usize;
        for a in actions {
            match a {
                Action::Forget(rel) => {
                    self.journal.entries.remove(&rel);
                }
                Action::Seal(rel, p, s) => {
                    let Some(sealing) = &sealing else {
                        r.pending.push((rel, "sealing stopped".into()));
                        continue;
                    };
                    let _ = sealing;
                    seals.push((rel, p, s));
                }
                Action::RemoveSealed(rel, s) => {
                    if sealing.is_none() {
                        r.pending.push((rel, "sealing stopped".into()));
                        continue;
                    }
                    let name = self.name_for(&rel);
                    let path = self.sealed.join(&name);
                    if Stamp::at(&path) == Some(s) {
                        if let Err(e) = std::fs::remove_file(&path) {
                            r.failed
                                .push((rel, format!("its sealed copy could not be removed: {e}")));
                            continue;
                        }
                        self.mark(path.parent().unwrap_or(&self.sealed));
                        remove_empty_parents(&self.sealed, &name);
                    }
                    self.journal.entries.remove(&rel);
                    r.removed.push(rel);
                }
                Action::Trash(rel, p) => {
                    if let Err(e) = self.do_trash(&rel, p, r) {
                        r.failed.push((rel, e.to_string()));
                    }
                }
                Action::Open(rel, s, p) => opens.push(OpenJob {
                    name: self.name_for(&rel),
                    stamp: s,
                    kind: OpenKind::Main(rel, p),
                }),
                Action::Conflict(rel, p, s) => opens.push(OpenJob {
                    name: self.name_for(&rel),
                    stamp: s,
                    kind: OpenKind::Conflict(rel, p),
                }),
                Action::Incoming(name, s) => opens.push(OpenJob {
                    name,
                    stamp: s,
                    kind: OpenKind::Incoming,
                }),
            }
            done += 1;
            if done % SAVE_EVERY == 0 {
                self.flush()?;
            }
        }
        if let Some(sealing) = &sealing {
            self.seal_many(&seals, &sealing.slots, r)?;
        }
        self.do_opens(opens, keys, sealing.as_ref(), r)
    }

    /// Seal one plain file over its sealed name; the sealed file's stamp, or why not (left
    /// for a later pass). Takes `&self`: sealing runs on several threads.
    fn seal_work(
        &self,
        rel: &str,
        p: Stamp,
        s: Option<Stamp>,
        slots: &[kluis_core::Slot],
    ) -> Result<Stamp, String> {
        let name = self.name_for(rel);
        let src = self.plain.join(rel);
        let target = self.sealed.join(&name);
        let tmp = self.tmp.join(format!(
            "{SEALED_TEMP_PREFIX}{}",
            random_suffix().map_err(|e| e.to_string())?
        ));
        let result = seal_one(&src, p, rel, &tmp, slots, self.hide).and_then(|()| {
            if Stamp::at(&src) != Some(p) {
                return Err("changed while it was sealed".to_owned());
            }
            if Stamp::at(&target) != s {
                return Err("its sealed copy changed meanwhile; compared again next pass".into());
            }
            if !self.hide {
                ensure_parent(&self.sealed, &name).map_err(|e| e.to_string())?;
            }
            std::fs::rename(&tmp, &target)
                .map_err(|e| format!("the sealed file could not be moved into place: {e}"))?;
            self.mark(target.parent().unwrap_or(&self.sealed));
            Stamp::at(&target).ok_or_else(|| "the sealed file vanished".to_owned())
        });
        let _ = std::fs::remove_file(&tmp);
        result
    }

    /// Record the outcome of `seal_work`.
    fn record_seal(
        &mut self,
        rel: &str,
        p: Stamp,
        outcome: Result<Stamp, String>,
        r: &mut PassReport,
    ) {
        match outcome {
            Ok(stamp) => {
                self.journal.entries.insert(
                    rel.to_owned(),
                    Entry {
                        plain: Some(p),
                        sealed: Some(stamp),
                        name: self.name_for(rel),
                    },
                );
                r.sealed.push(rel.to_owned());
            }
            // The file or its sealed copy changed meanwhile: soon again.
            Err(why) if why.contains("changed") => {
                r.pending.push((rel.to_owned(), why));
                r.retry(self.settle.max(Duration::from_millis(200)));
            }
            // Unreadable, a full disk, something in the way: that does not pass by itself
            // within a second; listed as failing, tried again on the next change or slowly.
            Err(why) => {
                r.failed.push((rel.to_owned(), why));
                r.retry(SLOW_RETRY);
            }
        }
    }

    fn do_seal(
        &mut self,
        rel: &str,
        p: Stamp,
        s: Option<Stamp>,
        slots: &[kluis_core::Slot],
        r: &mut PassReport,
    ) -> Result<(), SyncError> {
        let outcome = self.seal_work(rel, p, s, slots);
        self.record_seal(rel, p, outcome, r);
        Ok(())
    }

    /// Seal many files, `WORKERS` at a time (each waits on its `fsync` most of the time),
    /// recording them in the journal every `SEAL_CHUNK`.
    fn seal_many(
        &mut self,
        items: &[(String, Stamp, Option<Stamp>)],
        slots: &[kluis_core::Slot],
        r: &mut PassReport,
    ) -> Result<(), SyncError> {
        for chunk in items.chunks(SEAL_CHUNK) {
            let this = &*self;
            let outcomes = parallel_map(chunk, |(rel, p, s)| this.seal_work(rel, *p, *s, slots));
            for ((rel, p, _), outcome) in chunk.iter().zip(outcomes) {
                self.record_seal(rel, *p, outcome, r);
            }
            self.flush()?;
        }
        Ok(())
    }

    fn do_trash(&mut self, rel: &str, p: Stamp, r: &mut PassReport) -> Result<(), SyncError> {
        let src = self.plain.join(rel);
        if Stamp::at(&src) != Some(p) {
            r.pending
                .push((rel.to_owned(), "changed; compared again next pass".into()));
            return Ok(());
        }
        let stamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let trash = self.dir.join("trash").join(stamp.to_string());
        std::fs::create_dir_all(&trash).map_err(io("create", &trash))?;
        let dest = ensure_parent(&trash, rel)?;
        if std::fs::rename(&src, &dest).is_err() {
            // Another file system: copy, sync, then remove.
            std::fs::copy(&src, &dest).map_err(io("copy to the trash", &src))?;
            if let Ok(f) = std::fs::File::open(&dest) {
                let _ = f.sync_all();
            }
            std::fs::remove_file(&src).map_err(io("remove", &src))?;
        }
        sync_dir(dest.parent().unwrap_or(&trash));
        self.journal.entries.remove(rel);
        r.trashed
            .push((rel.to_owned(), dest.to_string_lossy().into_owned()));
        Ok(())
    }

    fn do_opens(
        &mut self,
        jobs: Vec<OpenJob>,
        keys: &dyn Keys,
        sealing: Option<&Sealing>,
        r: &mut PassReport,
    ) -> Result<(), SyncError> {
        let unwrappers = keys.unwrappers();
        // Only documents the pair's label alone opens are opened (and never unwrapped
        // otherwise): one of another label would be sealed again to this one.
        let label = if jobs.is_empty() { None } else { keys.label() };
        let mut stopped = false;
        for batch in jobs.chunks(UNWRAP_BATCH) {
            let mut headers = Vec::with_capacity(batch.len());
            let mut foreign = Vec::with_capacity(batch.len());
            for job in batch {
                let path = self.sealed.join(&job.name);
                let h = std::fs::File::open(&path)
                    .and_then(|mut f| Header::read(&mut f).map_err(std::io::Error::other))
                    .ok();
                foreign.push(
                    h.as_ref()
                        .is_some_and(|h| !crate::opened_by_label_alone(h, label.as_deref())),
                );
                headers.push(h);
            }
            let readable: Vec<&Header> = headers
                .iter()
                .zip(&foreign)
                .filter(|(_, f)| !**f)
                .filter_map(|(h, _)| h.as_ref())
                .collect();
            let mut unlocked = if stopped || readable.is_empty() {
                Vec::new()
            } else {
                kluis_core::unlock_all(&readable, &unwrappers)
            }
            .into_iter();
            let mut ready: Vec<(usize, FileKey)> = Vec::new();
            for (i, (job, header)) in batch.iter().zip(&headers).enumerate() {
                let Some(_) = header else {
                    self.misplace(job, r, "not a readable kluis document (partly downloaded?)");
                    continue;
                };
                if foreign[i] {
                    let why = format!(
                        "not opened: it is not sealed to label `{}` alone (opened here, it would be sealed again to that label and readable by everyone it admits); open it with `kluis open` if it is yours, or move it out of the sealed folder",
                        label.as_deref().unwrap_or("?")
                    );
                    self.misplace(job, r, &why);
                    continue;
                }
                if stopped {
                    r.pending.push((shown(job), "opening stopped".into()));
                    continue;
                }
                let key = match unlocked.next() {
                    Some(Ok(k)) => k,
                    Some(Err(kluis_core::Error::Unwrap(
                        e @ (UnwrapError::Denied(_) | UnwrapError::Destroyed(_)),
                    ))) => {
                        r.stopped.push(format!(
                            "opening stopped (sealed → plain: nothing opened): the key server refused: {e}"
                        ));
                        r.pending.push((shown(job), "opening stopped".into()));
                        stopped = true;
                        continue;
                    }
                    Some(Err(kluis_core::Error::Unwrap(e @ UnwrapError::Unavailable(_)))) => {
                        r.pending.push((
                            shown(job),
                            format!("the key server could not be reached; retrying: {e}"),
                        ));
                        r.retry(Duration::from_secs(2));
                        continue;
                    }
                    Some(Err(e)) => {
                        self.misplace(job, r, &format!("cannot be opened: {e}"));
                        continue;
                    }
                    None => continue,
                };
                ready.push((i, key));
            }
            // Decrypt into temporaries on several threads (each mostly waits on its fsync),
            // then place them one by one.
            let this = &*self;
            let pre = parallel_map(&ready, |(i, key)| {
                headers[*i]
                    .as_ref()
                    .and_then(|h| this.prewrite(&batch[*i], h, key))
            });
            for ((i, key), pre) in ready.iter().zip(pre) {
                let (job, Some(header)) = (&batch[*i], &headers[*i]) else {
                    continue;
                };
                let tmp = pre.as_ref().map(|(t, _)| t.clone());
                // A failure of one file (a file in the way of a folder, a full disk) is
                // listed; the others go on.
                if let Err(e) = self.open_one(job, header, key, sealing, r, pre) {
                    r.failed.push((shown(job), e.to_string()));
                }
                if let Some(t) = tmp {
                    let _ = std::fs::remove_file(t);
                }
            }
            self.flush()?;
        }
        Ok(())
    }

    /// The opening of a document to its own path, done ahead into a temporary beside the
    /// target when every check `open_one` makes before writing passes; `None` otherwise.
    fn prewrite(
        &self,
        job: &OpenJob,
        header: &Header,
        key: &FileKey,
    ) -> Option<(PathBuf, Result<(), String>)> {
        let meta = header.metadata(key).ok()?;
        let rel = meta.name.clone();
        if kluis_file::safe_relative_path(&rel).is_err() || self.name_for(&rel) != job.name {
            return None;
        }
        match &job.kind {
            OpenKind::Main(e, _) | OpenKind::Conflict(e, _) if *e != rel => return None,
            OpenKind::Incoming if Stamp::at(&self.plain.join(&rel)).is_some() => return None,
            _ => {}
        }
        let target = ensure_parent(&self.plain, &rel).ok()?;
        let dir = target.parent().unwrap_or(&self.plain);
        let tmp = dir.join(format!("{PLAIN_TEMP_PREFIX}{}", random_suffix().ok()?));
        let written = open_to(&self.sealed.join(&job.name), header, key, &tmp, &meta);
        Some((tmp, written))
    }

    fn open_stray(
        &mut self,
        job: &OpenJob,
        header: &Header,
        key: &FileKey,
        rel: &str,
        meta: &Metadata,
        r: &mut PassReport,
    ) -> Result<(), SyncError> {
        let path = self.sealed.join(&job.name);
        let copy_rel = conflict_name(rel, |c| Stamp::at(&self.plain.join(c)).is_none());
        let target = ensure_parent(&self.plain, &copy_rel)?;
        let dir = target.parent().unwrap_or(&self.plain).to_owned();
        let tmp = dir.join(format!("{PLAIN_TEMP_PREFIX}{}", random_suffix()?));
        if let Err(why) = open_to(&path, header, key, &tmp, meta) {
            let _ = std::fs::remove_file(&tmp);
            self.misplace(job, r, &why);
            return Ok(());
        }
        if Stamp::at(&path) != Some(job.stamp) {
            let _ = std::fs::remove_file(&tmp);
            return Ok(());
        }
        if same_content(&tmp, &self.plain.join(rel))
            || earlier_copy(&self.plain, rel, &tmp).is_some()
        {
            // The same version is already in place (or its copy, written by a run killed
            // before it removed the stray): only the stray sealed copy goes.
            let _ = std::fs::remove_file(&tmp);
            let _ = std::fs::remove_file(&path);
            return Ok(());
        }
        let placed = place(&tmp, &target, None);
        let _ = std::fs::remove_file(&tmp);
        if placed {
            self.mark(&dir);
            let _ = std::fs::remove_file(&path);
            r.conflicts.push((rel.to_owned(), copy_rel));
        }
        Ok(())
    }

    fn misplace(&mut self, job: &OpenJob, r: &mut PassReport, why: &str) {
        r.failed.push((shown(job), why.to_owned()));
        if matches!(job.kind, OpenKind::Incoming) {
            self.journal.misplaced.insert(job.name.clone(), job.stamp);
        }
    }

    fn open_one(
        &mut self,
        job: &OpenJob,
        header: &Header,
        key: &FileKey,
        sealing: Option<&Sealing>,
        r: &mut PassReport,
        pre: Option<(PathBuf, Result<(), String>)>,
    ) -> Result<(), SyncError> {
        let path = self.sealed.join(&job.name);
        let meta = match header.metadata(key) {
            Ok(m) => m,
            Err(e) => {
                self.misplace(job, r, &format!("cannot be opened: {e}"));
                return Ok(());
            }
        };
        // The stored path must be safe and must be the one this sealed name stands for:
        // the sealer does not choose where a file lands.
        let rel = meta.name.clone();
        let valid = kluis_file::safe_relative_path(&rel).is_ok();
        // A sealed file under a name that is not its path's (the sync client's conflict copy,
        // `x-LAPTOP.kluis`, or a crafted one) but not a hidden name of another folder key:
        // opened beside its path as a conflict copy, then its sealed file removed (the copy
        // is sealed under its own name next).
        // A hidden name of another folder key (a device that lost the race for the folder
        // key renames its files itself) is given `stray_grace` to do so first.
        if valid && self.name_for(&rel) != job.name && matches!(job.kind, OpenKind::Incoming) {
            let age = SystemTime::now()
                .duration_since(
                    SystemTime::UNIX_EPOCH
                        + Duration::from_nanos(u64::try_from(job.stamp.mtime_ns).unwrap_or(0)),
                )
                .unwrap_or_default();
            if !(self.hide && is_hidden_name(&job.name)) || age >= self.stray_grace {
                return self.open_stray(job, header, key, &rel, &meta, r);
            }
            r.pending.push((
                format!("(sealed) {}", job.name),
                "named by another device's folder key; waiting for it to re-name it".into(),
            ));
            r.retry(self.stray_grace - age + Duration::from_millis(50));
            return Ok(());
        }
        if !valid || self.name_for(&rel) != job.name {
            self.misplace(
                job,
                r,
                "its stored path does not match its sealed name (sealed by a device with another folder key, or crafted); left alone",
            );
            return Ok(());
        }
        let expected_rel = match &job.kind {
            OpenKind::Main(rel, _) | OpenKind::Conflict(rel, _) => Some(rel.as_str()),
            OpenKind::Incoming => None,
        };
        if expected_rel.is_some_and(|e| e != rel) {
            self.misplace(
                job,
                r,
                "its stored path is not the expected one; left alone",
            );
            return Ok(());
        }
        if matches!(job.kind, OpenKind::Incoming) && Stamp::at(&self.plain.join(&rel)).is_some() {
            // Appeared on both sides at once: the next pass compares them.
            r.pending
                .push((rel, "appeared on both sides; compared next pass".into()));
            return Ok(());
        }
        let target = ensure_parent(&self.plain, &rel)?;
        let dir = target.parent().unwrap_or(&self.plain).to_owned();
        let (tmp, written) = match pre {
            // Written ahead, into this same folder.
            Some((tmp, written)) if tmp.parent() == Some(dir.as_path()) => (tmp, written),
            _ => {
                let tmp = dir.join(format!("{PLAIN_TEMP_PREFIX}{}", random_suffix()?));
                let written = open_to(&path, header, key, &tmp, &meta);
                (tmp, written)
            }
        };
        if let Err(why) = written {
            let _ = std::fs::remove_file(&tmp);
            r.failed.push((rel, why));
            return Ok(());
        }
        if Stamp::at(&path) != Some(job.stamp) {
            let _ = std::fs::remove_file(&tmp);
            r.pending
                .push((rel, "its sealed file changed while it was opened".into()));
            r.retry(Duration::from_millis(500));
            return Ok(());
        }
        match &job.kind {
            OpenKind::Main(..) | OpenKind::Incoming => {
                let (expected, busy) = match &job.kind {
                    OpenKind::Main(_, expected) => {
                        (*expected, "changed meanwhile; compared again next pass")
                    }
                    _ => (None, "appeared on both sides; compared next pass"),
                };
                let placed = place(&tmp, &target, expected);
                let _ = std::fs::remove_file(&tmp);
                if !placed {
                    r.pending.push((rel, busy.into()));
                    return Ok(());
                }
                self.mark(&dir);
                self.journal.entries.insert(
                    rel.clone(),
                    Entry {
                        plain: Stamp::at(&target),
                        sealed: Some(job.stamp),
                        name: job.name.clone(),
                    },
                );
                r.opened.push(rel);
            }
            OpenKind::Conflict(_, p) => {
                let p = *p;
                if same_content(&tmp, &target) {
                    // The same version on both sides (a step a killed run did not record).
                    let _ = std::fs::remove_file(&tmp);
                    if Stamp::at(&target) == Some(p) {
                        self.journal.entries.insert(
                            rel.clone(),
                            Entry {
                                plain: Some(p),
                                sealed: Some(job.stamp),
                                name: job.name.clone(),
                            },
                        );
                    }
                    return Ok(());
                }
                // A copy of this version written by a run killed before it saved its journal
                // is used again, not written a second time.
                let earlier = earlier_copy(&self.plain, &rel, &tmp);
                let copy_rel = earlier.clone().unwrap_or_else(|| {
                    conflict_name(&rel, |c| Stamp::at(&self.plain.join(c)).is_none())
                });
                let copy = self.plain.join(&copy_rel);
                let placed = earlier.is_some() || place(&tmp, &copy, None);
                let _ = std::fs::remove_file(&tmp);
                if !placed {
                    r.pending
                        .push((rel, "conflict copy could not be written; next pass".into()));
                    return Ok(());
                }
                self.mark(&dir);
                r.conflicts.push((rel.clone(), copy_rel));
                // The sealed version is taken care of (its copy is a plain file of its own):
                // record it, the plain side still unsynced, so a pass that cannot seal now
                // (sealing stopped, the plain file changed again) seals later instead of
                // copying the same version again on every pass.
                let unsynced = Stamp {
                    size: u64::MAX,
                    mtime_ns: i64::MIN,
                    ino: 0,
                };
                let jp = self
                    .journal
                    .entries
                    .get(&rel)
                    .and_then(|e| e.plain)
                    .unwrap_or(unsynced);
                self.journal.entries.insert(
                    rel.clone(),
                    Entry {
                        plain: Some(jp),
                        sealed: Some(job.stamp),
                        name: job.name.clone(),
                    },
                );
                // The other version is safe beside it: now the plain one is sealed.
                match sealing {
                    Some(s) => {
                        if let Err(e) = self.do_seal(&rel, p, Some(job.stamp), &s.slots, r) {
                            r.failed.push((rel, e.to_string()));
                        }
                    }
                    None => r.pending.push((rel, "sealing stopped".into())),
                }
            }
        }
        Ok(())
    }
}

/// Whether `name` has the form of a hidden name (26 base32 characters and `.kluis`).
fn is_hidden_name(name: &str) -> bool {
    name.strip_suffix(".kluis").is_some_and(|stem| {
        stem.len() == 26
            && stem
                .bytes()
                .all(|c| c.is_ascii_lowercase() || (b'2'..=b'7').contains(&c))
    })
}

/// The path a job is about, as shown to people (the sealed name for unknown ones).
fn shown(job: &OpenJob) -> String {
    match &job.kind {
        OpenKind::Main(rel, _) | OpenKind::Conflict(rel, _) => rel.clone(),
        OpenKind::Incoming => format!("(sealed) {}", job.name),
    }
}

fn merge(total: &mut PassReport, r: PassReport) {
    total.sealed.extend(r.sealed);
    total.opened.extend(r.opened);
    total.removed.extend(r.removed);
    total.trashed.extend(r.trashed);
    total.conflicts.extend(r.conflicts);
    total.pending = r.pending;
    total.failed = r.failed;
    total.stopped = r.stopped;
    total.guard = r.guard;
    for n in r.notices {
        if !total.notices.contains(&n) {
            total.notices.push(n);
        }
    }
    total.retry_after = r.retry_after;
}

/// Put `tmp` at `target`: with `expected` none only if nothing is there (a hard link fails
/// atomically otherwise), else only if `target` is still the expected version. The caller
/// removes `tmp` afterwards (a no-op when it was renamed).
fn place(tmp: &Path, target: &Path, expected: Option<Stamp>) -> bool {
    match expected {
        None => match std::fs::hard_link(tmp, target) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
            // A file system without hard links (FAT, exFAT): check, then rename (a small race).
            Err(_) => {
                std::fs::symlink_metadata(target).is_err() && std::fs::rename(tmp, target).is_ok()
            }
        },
        Some(e) => Stamp::at(target) == Some(e) && std::fs::rename(tmp, target).is_ok(),
    }
}

/// `report.docx` → `report (conflict 2026-12-07 10.04.05).docx`, the first name `free` allows.
fn conflict_name(rel: &str, free: impl Fn(&str) -> bool) -> String {
    let ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let t = kluis_core::UtcDateTime::from_unix_ms(ms);
    let when = format!("{} {}", t.date(), t.time().replace(':', "."));
    let (dir, file) = match rel.rsplit_once('/') {
        Some((d, f)) => (format!("{d}/"), f),
        None => (String::new(), rel),
    };
    let (stem, ext) = match file.rfind('.') {
        Some(i) if i > 0 => (&file[..i], &file[i..]),
        _ => (file, ""),
    };
    for n in 1..1000 {
        let extra = if n == 1 {
            String::new()
        } else {
            format!(" {n}")
        };
        let cand = format!("{dir}{stem} (conflict {when}{extra}){ext}");
        if free(&cand) {
            return cand;
        }
    }
    format!("{dir}{stem} (conflict {when} {}){ext}", ms)
}

/// A conflict copy of `rel` (as [`conflict_name`] names them) in the plain folder `root` that
/// holds the same bytes as `tmp`.
fn earlier_copy(root: &Path, rel: &str, tmp: &Path) -> Option<String> {
    let (dir, file) = match rel.rsplit_once('/') {
        Some((d, f)) => (format!("{d}/"), f),
        None => (String::new(), rel),
    };
    let (stem, ext) = match file.rfind('.') {
        Some(i) if i > 0 => (&file[..i], &file[i..]),
        _ => (file, ""),
    };
    let prefix = format!("{stem} (conflict ");
    let suffix = format!("){ext}");
    let entries = std::fs::read_dir(root.join(&dir)).ok()?;
    entries.flatten().find_map(|e| {
        let name = e.file_name().into_string().ok()?;
        let candidate = name.starts_with(&prefix)
            && name.ends_with(&suffix)
            && e.file_type().is_ok_and(|t| t.is_file())
            && same_content(tmp, &e.path());
        candidate.then(|| format!("{dir}{name}"))
    })
}

/// Whether two files hold the same bytes.
fn same_content(a: &Path, b: &Path) -> bool {
    let (Ok(fa), Ok(fb)) = (std::fs::File::open(a), std::fs::File::open(b)) else {
        return false;
    };
    match (fa.metadata(), fb.metadata()) {
        (Ok(ma), Ok(mb)) if ma.len() == mb.len() => {}
        _ => return false,
    }
    let (mut ra, mut rb) = (std::io::BufReader::new(fa), std::io::BufReader::new(fb));
    let (mut ba, mut bb) = (vec![0u8; 64 << 10], vec![0u8; 64 << 10]);
    loop {
        let Ok(n) = ra.read(&mut ba) else {
            return false;
        };
        if n == 0 {
            return rb.read(&mut bb[..1]).map(|m| m == 0).unwrap_or(false);
        }
        if rb.read_exact(&mut bb[..n]).is_err() || ba[..n] != bb[..n] {
            return false;
        }
    }
}

/// Seal `src` (expected at stamp `p`) into a new file at `tmp`, storing `rel` as its name
/// (padded to a multiple of 256 bytes with `hide`: the header's length would show the
/// path's length otherwise).
fn seal_one(
    src: &Path,
    p: Stamp,
    rel: &str,
    tmp: &Path,
    slots: &[kluis_core::Slot],
    hide: bool,
) -> Result<(), String> {
    let mut input = std::fs::File::open(src).map_err(|e| format!("cannot be read: {e}"))?;
    let meta = input
        .metadata()
        .map_err(|e| format!("cannot be read: {e}"))?;
    if Stamp::of(&meta) != p {
        return Err("changed since it was looked at".into());
    }
    let mut md = Metadata::with_size(meta.len()).name(rel);
    md.name_padded = hide;
    if let Ok(t) = meta.modified() {
        md = md.modified(t);
    }
    let out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp)
        .map_err(|e| format!("cannot write a temporary file: {e}"))?;
    let mut w = StreamWriter::new(out, slots, &md).map_err(|e| format!("sealing failed: {e}"))?;
    loop {
        let space = w.spare().map_err(|e| format!("sealing failed: {e}"))?;
        let n = match input.read(space) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("cannot be read: {e}")),
        };
        w.advance(n).map_err(|e| format!("sealing failed: {e}"))?;
    }
    let out = w.finish().map_err(|e| match e {
        kluis_core::Error::SizeMismatch { .. } => "changed while it was sealed".to_owned(),
        e => format!("sealing failed: {e}"),
    })?;
    out.sync_all()
        .map_err(|e| format!("cannot write a temporary file: {e}"))?;
    Ok(())
}

/// Open the document at `path` (its header already read) into a new owner-only file `tmp`.
fn open_to(
    path: &Path,
    header: &Header,
    key: &FileKey,
    tmp: &Path,
    meta: &Metadata,
) -> Result<(), String> {
    let mut f = std::fs::File::open(path).map_err(|e| format!("cannot be read: {e}"))?;
    // Skip the header: the payload follows it.
    Header::read(&mut f).map_err(|e| format!("cannot be opened: {e}"))?;
    let mut reader =
        StreamReader::new(header, key, f).map_err(|e| format!("cannot be opened: {e}"))?;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let mut out = o
        .open(tmp)
        .map_err(|e| format!("cannot write a temporary file: {e}"))?;
    std::io::copy(&mut reader, &mut out)
        .map_err(|e| format!("cannot be opened (damaged or incomplete): {e}"))?;
    out.flush().map_err(|e| format!("cannot write: {e}"))?;
    if let Some(t) = meta.modified {
        let _ = out.set_modified(t);
    }
    out.sync_all().map_err(|e| format!("cannot write: {e}"))?;
    Ok(())
}

fn remove_plain_temps(root: &Path) {
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file()
                && e.file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with(PLAIN_TEMP_PREFIX))
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

fn remove_empty_parents(root: &Path, rel: &str) {
    let mut p = root.join(rel);
    while p.pop() && p != root && p.starts_with(root) {
        if std::fs::remove_dir(&p).is_err() {
            break;
        }
    }
}

fn same_device(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (std::fs::metadata(a), std::fs::metadata(b)) {
            (Ok(x), Ok(y)) => x.dev() == y.dev(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (a, b);
        false
    }
}
