//! Reviewer B: losing or duplicating versions, and liveness.

#[allow(unused_imports)]
mod common;

use common::{Device, TestKeys};

/// A key holder that opens but cannot seal (a label retired on the key server).
struct Refusing<'a>(&'a TestKeys);
impl kluis_sync::Keys for Refusing<'_> {
    fn seal_to(&self) -> Result<kluis_sync::Sealing, String> {
        Err("label `hr` was retired on the key server".into())
    }
    fn unwrappers(&self) -> Vec<&dyn kluis_core::Unwrap> {
        self.0.unwrappers()
    }
    fn label(&self) -> Option<String> {
        Some("hr".into())
    }
}

fn conflict_copies(d: &Device) -> Vec<String> {
    d.files()
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| n.contains("(conflict"))
        .collect()
}

/// A conflict while sealing is stopped writes the other version beside the plain one once;
/// passes after it (a watching process runs one on every event, its own conflict copy
/// included) must not write the same version again and again.
#[test]
fn a_conflict_while_sealing_is_stopped_is_copied_once() {
    let keys = TestKeys::new();
    let cloud = tempfile::tempdir().unwrap();
    let mut a = Device::new(cloud.path(), false);
    let mut b = Device::new(cloud.path(), false);
    a.write("doc.txt", b"v1");
    a.sync(&keys);
    b.sync(&keys);
    assert_eq!(b.read("doc.txt").as_deref(), Some(&b"v1"[..]));
    // Both change it; A's version reaches the cloud first.
    a.write("doc.txt", b"v2 from a");
    a.sync(&keys);
    std::thread::sleep(std::time::Duration::from_millis(20));
    b.write("doc.txt", b"v2 from b");
    // B cannot seal (label retired): passes repeat, as under --watch.
    for _ in 0..4 {
        b.sync(&Refusing(&keys));
    }
    let copies = conflict_copies(&b);
    assert_eq!(
        copies.len(),
        1,
        "one conflict copy, not one per pass: {copies:?}"
    );
    assert_eq!(b.read("doc.txt").as_deref(), Some(&b"v2 from b"[..]));
    // Sealing back: B's version is sealed, the copy too; A gets both.
    b.sync(&keys);
    a.sync(&keys);
    assert_eq!(a.read("doc.txt").as_deref(), Some(&b"v2 from b"[..]));
    assert_eq!(conflict_copies(&a).len(), 1, "{:?}", a.files());
    assert_eq!(conflict_copies(&b).len(), 1, "{:?}", b.files());
}

/// `--watch` with a plain file that cannot be sealed for a reason that does not go away by
/// itself (here a folder in the way of its sealed name; elsewhere an unreadable file or a full
/// disk): the file is listed as failing and retried slowly, not every half second for ever
/// (each pass scans both folders: no busy loop while nothing changes).
#[test]
fn watch_does_not_spin_on_a_file_that_cannot_be_sealed() {
    use std::cell::Cell;
    use std::time::{Duration, Instant};
    let keys = TestKeys::new();
    let cloud = tempfile::tempdir().unwrap();
    let a = Device::new(cloud.path(), false);
    a.write("doc.txt", b"cannot be placed");
    std::fs::create_dir(cloud.path().join("doc.txt.kluis")).unwrap();
    let mut syncer = kluis_sync::Syncer::new(&a.options()).unwrap();
    let passes = Cell::new(0usize);
    let mut last = None;
    let start = Instant::now();
    let stop = || start.elapsed() > Duration::from_secs(4);
    kluis_sync::watch(&mut syncer, &keys, Some(&stop), &mut |r| {
        passes.set(passes.get() + 1);
        last = Some(r.clone());
    })
    .unwrap();
    let last = last.expect("the first pass reports the file");
    assert!(
        passes.get() <= 2,
        "{} passes in 4 s with nothing changing",
        passes.get()
    );
    assert!(
        last.failed.iter().any(|(p, _)| p == "doc.txt"),
        "listed as failing: {last:?}"
    );
}

/// The classic catastrophe on a small folder: SEALED unmounted (an empty folder where the
/// drive was) while PLAIN holds four synced files. Four is below the guard's five, but every
/// file in sync would go to the trash at once: the guard holds, PLAIN stays as it is.
#[test]
fn an_emptied_small_sealed_folder_does_not_trash_every_plain_file() {
    let keys = TestKeys::new();
    let cloud = tempfile::tempdir().unwrap();
    let mut a = Device::new(cloud.path(), true);
    for i in 0..4 {
        a.write(&format!("f{i}.txt"), b"data");
    }
    a.sync(&keys);
    // Unmounted: the mount point is an empty folder (no folder key either).
    for e in std::fs::read_dir(cloud.path()).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    let r = a.sync(&keys);
    assert!(r.trashed.is_empty(), "{r:?}");
    assert!(r.guard.is_some(), "{r:?}");
    assert_eq!(a.files().len(), 4, "PLAIN untouched");
    // A deletion of one of them passes the guard.
    let cloud2 = tempfile::tempdir().unwrap();
    let mut b = Device::new(cloud2.path(), false);
    b.write("x.txt", b"x");
    b.write("y.txt", b"y");
    b.write("z.txt", b"z");
    b.sync(&keys);
    std::fs::remove_file(b.plain().join("x.txt")).unwrap();
    let r = b.sync(&keys);
    assert!(
        r.guard.is_none() && r.removed == vec!["x.txt".to_owned()],
        "{r:?}"
    );
}

/// `kill -9` after a conflict copy was written and before the pass sealed the plain version
/// and saved its journal (simulated by putting back the journal as it was before the pass):
/// the next run finds the same conflict again and must not write a second copy of the same
/// version (which would then be sealed and reach every device twice).
#[test]
fn a_conflict_copy_is_not_written_twice_after_a_kill() {
    let keys = TestKeys::new();
    let cloud = tempfile::tempdir().unwrap();
    let mut a = Device::new(cloud.path(), true);
    let mut b = Device::new(cloud.path(), true);
    a.write("dir/doc.txt", b"v1");
    a.sync(&keys);
    b.sync(&keys);
    a.write("dir/doc.txt", b"v2 from a");
    a.sync(&keys);
    std::thread::sleep(std::time::Duration::from_millis(20));
    b.write("dir/doc.txt", b"v2 from b");
    let journal = b.syncer.as_ref().unwrap().state_dir().join("journal.json");
    let before = std::fs::read(&journal).unwrap();
    // The pass writes the conflict copy, then cannot seal (here: sealing stopped)...
    b.sync(&Refusing(&keys));
    assert_eq!(conflict_copies(&b).len(), 1, "{:?}", b.files());
    // ...and is killed before its journal is saved.
    b.restart();
    std::fs::write(&journal, &before).unwrap();
    b.sync(&keys);
    assert_eq!(
        conflict_copies(&b).len(),
        1,
        "the same version copied twice: {:?}",
        b.files()
    );
    a.sync(&keys);
    assert_eq!(a.read("dir/doc.txt").as_deref(), Some(&b"v2 from b"[..]));
    let copies = conflict_copies(&a);
    assert_eq!(copies.len(), 1, "{:?}", a.files());
    assert_eq!(a.read(&copies[0]).as_deref(), Some(&b"v2 from a"[..]));
}

/// A plain file whose modification time lies in the future (unpacked from an archive, copied
/// from a machine with a fast clock) is not "still being written" for ever: it is sealed, and
/// `--watch` does not run a pass every half second until that time comes.
#[test]
fn a_file_dated_in_the_future_is_sealed_and_does_not_spin() {
    use std::cell::Cell;
    use std::time::{Duration, Instant, SystemTime};
    let keys = TestKeys::new();
    let cloud = tempfile::tempdir().unwrap();
    let a = Device::new(cloud.path(), false);
    a.write("future.txt", b"from tomorrow");
    let f = std::fs::File::options()
        .write(true)
        .open(a.plain().join("future.txt"))
        .unwrap();
    f.set_modified(SystemTime::now() + Duration::from_secs(86_400))
        .unwrap();
    drop(f);
    let mut o = a.options();
    o.settle = Duration::from_millis(250);
    let mut syncer = kluis_sync::Syncer::new(&o).unwrap();
    let passes = Cell::new(0usize);
    let sealed = Cell::new(false);
    let start = Instant::now();
    let stop = || start.elapsed() > Duration::from_secs(4);
    kluis_sync::watch(&mut syncer, &keys, Some(&stop), &mut |r| {
        passes.set(passes.get() + 1);
        if r.sealed.contains(&"future.txt".to_owned()) {
            sealed.set(true);
        }
    })
    .unwrap();
    assert!(sealed.get(), "sealed");
    assert!(
        passes.get() <= 2,
        "{} passes in 4 s with nothing changing",
        passes.get()
    );
}

/// The guard holds back the deletions of a pass; the next pass, in the same run or a later
/// one, must not then carry them out after all. (Found with new files sealed meanwhile growing
/// the number of files in sync below the share; since the guard stops the whole pass nothing
/// is sealed meanwhile, and the held deletions stay held until allowed.)
#[test]
fn deletions_held_by_the_guard_stay_held_while_other_files_are_sealed() {
    let keys = TestKeys::new();
    let cloud = tempfile::tempdir().unwrap();
    let mut a = Device::new(cloud.path(), false);
    for i in 0..5 {
        a.write(&format!("old{i}.txt"), b"old");
    }
    a.sync(&keys);
    // SEALED unmounted: empty. The person keeps working meanwhile.
    for e in std::fs::read_dir(cloud.path()).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    for i in 0..6 {
        a.write(&format!("new{i}.txt"), b"new");
    }
    let r = a.sync(&keys);
    assert!(r.trashed.is_empty(), "{r:?}");
    assert!(r.guard.is_some(), "the run reports the guard: {r:?}");
    // A later run (the next event under --watch): still held.
    a.write("new6.txt", b"new");
    let r = a.sync(&keys);
    assert!(r.trashed.is_empty() && r.guard.is_some(), "{r:?}");
    assert_eq!(a.files().len(), 12, "PLAIN untouched");
    // Asked for: carried out (into the trash).
    a.restart();
    let mut o = a.options();
    o.allow_mass_delete = true;
    let r = kluis_sync::Syncer::new(&o).unwrap().run(&keys, 3).unwrap();
    assert_eq!(r.trashed.len(), 5, "{r:?}");
}

/// `status` lists a conflict while its copy is there, not only in the pass that wrote it:
/// under `--watch` the pass that wrote it is followed at once by another (its own writes are
/// events), which used to leave `status` without it.
#[test]
fn status_keeps_listing_a_conflict_while_its_copy_is_there() {
    let keys = TestKeys::new();
    let cloud = tempfile::tempdir().unwrap();
    let mut a = Device::new(cloud.path(), false);
    let mut b = Device::new(cloud.path(), false);
    a.write("doc.txt", b"v1");
    a.sync(&keys);
    b.sync(&keys);
    a.write("doc.txt", b"v2 from a");
    a.sync(&keys);
    std::thread::sleep(std::time::Duration::from_millis(20));
    b.write("doc.txt", b"v2 from b");
    let r = b.sync(&keys);
    assert_eq!(r.conflicts.len(), 1, "{r:?}");
    let copy = r.conflicts[0].1.clone();
    let listed = |b: &Device| {
        let all = kluis_sync::statuses(&b.home.path().join("state"));
        assert_eq!(all.len(), 1);
        all[0]["report"]["conflicts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c[1].as_str() == Some(copy.as_str()))
    };
    assert!(listed(&b));
    // The next pass (nothing changed): still listed.
    b.sync(&keys);
    assert!(
        listed(&b),
        "the conflict is gone from status while its copy is there"
    );
    // The person deals with it (removes the copy): no longer listed.
    std::fs::remove_file(b.plain().join(&copy)).unwrap();
    b.sync(&keys);
    assert!(!listed(&b));
}

/// A stray sealed file (the sync client's own conflict copy) is opened as a conflict copy and
/// then removed; `kill -9` between the two (simulated by putting the stray back) must not
/// give a second copy of the same version.
#[test]
fn a_stray_is_not_copied_twice_after_a_kill() {
    let keys = TestKeys::new();
    let cloud = tempfile::tempdir().unwrap();
    let mut a = Device::new(cloud.path(), false);
    a.write("doc.txt", b"v1");
    a.sync(&keys);
    let stray = cloud.path().join("doc.txt-LAPTOP.kluis");
    std::fs::copy(cloud.path().join("doc.txt.kluis"), &stray).unwrap();
    let bytes = std::fs::read(&stray).unwrap();
    // Not picked up yet: the stray arrives with the next version.
    std::fs::remove_file(&stray).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    a.write("doc.txt", b"v2");
    a.sync(&keys);
    std::fs::write(&stray, &bytes).unwrap();
    let r = a.sync(&keys);
    assert_eq!(r.conflicts.len(), 1, "{r:?}");
    assert!(!stray.exists());
    // Killed before the stray was removed: it is still there next time.
    a.restart();
    std::fs::write(&stray, &bytes).unwrap();
    a.sync(&keys);
    let copies = conflict_copies(&a);
    assert_eq!(copies.len(), 1, "the same version copied twice: {copies:?}");
    assert_eq!(a.read(&copies[0]).as_deref(), Some(&b"v1"[..]));
    assert!(!stray.exists(), "the stray is removed");
}

/// A file rewritten in place, piece by piece, while passes seal it: every version that reaches
/// the sealed folder is one whole version (all `A` or all `B`), never a mix of two. Run with
/// the smallest settle time the command line accepts (0), where only the checks around the
/// reading itself stand between a writer and a torn copy.
#[test]
fn a_file_rewritten_while_it_is_sealed_is_never_sealed_torn() {
    use std::io::{Seek, SeekFrom, Write};
    use std::sync::atomic::{AtomicBool, Ordering};
    const SIZE: usize = 1 << 20;
    let keys = TestKeys::new();
    let cloud = tempfile::tempdir().unwrap();
    let mut a = Device::new(cloud.path(), false);
    let mut b = Device::new(cloud.path(), false);
    a.write("big.bin", &vec![b'A'; SIZE]);
    let path = a.plain().join("big.bin");
    let done = AtomicBool::new(false);
    let mut torn = Vec::new();
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut f = std::fs::File::options().write(true).open(&path).unwrap();
            for round in 0..200 {
                let c = if round % 2 == 0 { b'B' } else { b'A' };
                f.seek(SeekFrom::Start(0)).unwrap();
                for _ in 0..16 {
                    f.write_all(&vec![c; SIZE / 16]).unwrap();
                }
                std::thread::sleep(std::time::Duration::from_millis(round % 7));
            }
            done.store(true, Ordering::SeqCst);
        });
        while !done.load(Ordering::SeqCst) {
            a.sync(&keys);
            b.sync(&keys);
            if let Some(data) = b.read("big.bin") {
                if !(data.iter().all(|&c| c == b'A') || data.iter().all(|&c| c == b'B')) {
                    torn.push(data.iter().filter(|&&c| c == b'A').count());
                }
            }
        }
    });
    assert!(
        torn.is_empty(),
        "torn versions sealed (count of A bytes): {torn:?}"
    );
}

/// With the state folder on another file system than SEALED, sealed temporaries are written
/// in SEALED itself; one left by a `kill -9` (ciphertext, but uploaded by the sync client to
/// every device) is removed by a later run once it is old, not kept for ever.
#[test]
fn an_old_sealed_temporary_left_by_a_kill_is_removed() {
    use std::time::{Duration, SystemTime};
    let keys = TestKeys::new();
    let cloud = tempfile::tempdir().unwrap();
    let mut a = Device::new(cloud.path(), true);
    a.write("doc.txt", b"data");
    a.sync(&keys);
    a.restart();
    let left = cloud.path().join(".kluis-tmp-killedrun0001");
    let fresh = cloud.path().join(".kluis-tmp-otherdevice01");
    std::fs::write(&left, b"partial ciphertext").unwrap();
    std::fs::write(&fresh, b"being written by another device").unwrap();
    let f = std::fs::File::options().write(true).open(&left).unwrap();
    f.set_modified(SystemTime::now() - Duration::from_secs(7200))
        .unwrap();
    drop(f);
    a.sync(&keys);
    assert!(!left.exists(), "an old leftover temporary is removed");
    assert!(
        fresh.exists(),
        "a fresh one (another device's) is left alone"
    );
}

/// Whether permissions hold for this process (not for root, which reads everything).
fn permissions_hold(dir: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let probe = dir.join("probe");
    std::fs::create_dir(&probe).unwrap();
    std::fs::write(probe.join("f"), b"").unwrap();
    std::fs::set_permissions(&probe, std::fs::Permissions::from_mode(0o644)).unwrap();
    let holds = std::fs::symlink_metadata(probe.join("f")).is_err();
    std::fs::set_permissions(&probe, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::remove_dir_all(&probe).unwrap();
    holds
}

/// A plain folder whose files cannot be looked at for a while (no search permission, an I/O
/// error, a network share that hiccups) is not taken for files deleted: their sealed copies
/// stay (removing them would make every other device move its copies to the trash).
/// Runs for real as an ordinary user (as root, permissions do not hold: it says so and checks
/// nothing; CI runs it as an ordinary user).
#[test]
fn files_that_cannot_be_looked_at_are_not_taken_for_deleted() {
    use std::os::unix::fs::PermissionsExt;
    let keys = TestKeys::new();
    let cloud = tempfile::tempdir().unwrap();
    let mut a = Device::new(cloud.path(), false);
    if !permissions_hold(&a.plain()) {
        eprintln!("running as root: permissions do not hold, nothing checked");
        return;
    }
    a.write("sub/a.txt", b"a");
    a.write("sub/b.txt", b"b");
    a.write("sub/deeper/c.txt", b"c");
    a.write("top.txt", b"top");
    a.sync(&keys);
    let sub = a.plain().join("sub");
    let sealed_before = common::files(cloud.path()).len();
    // Readable but not searchable: the names are listed, the files cannot be looked at.
    std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o644)).unwrap();
    let r = a.sync(&keys);
    std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(r.removed.is_empty(), "taken for deleted: {r:?}");
    assert_eq!(common::files(cloud.path()).len(), sealed_before);
    // Not readable at all: the rest of the folder still syncs.
    std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o000)).unwrap();
    a.write("new.txt", b"new");
    let r = a.sync(&keys);
    std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(r.removed.is_empty(), "taken for deleted: {r:?}");
    assert!(r.sealed.contains(&"new.txt".to_owned()), "{r:?}");
    assert!(
        r.failed.iter().any(|(p, _)| p.starts_with("sub")),
        "the folder is listed as failing: {r:?}"
    );
    let r = a.sync(&keys);
    assert!(r.removed.is_empty(), "{r:?}");
    assert_eq!(common::files(cloud.path()).len(), sealed_before + 1);
}

/// An unreadable plain file (EACCES) is listed as failing, its earlier sealed version stays,
/// and once it is readable again its new version is sealed. Runs for real as an ordinary user
/// (as root, permissions do not hold: it checks nothing).
#[test]
fn an_unreadable_plain_file_is_listed_and_sealed_once_readable() {
    use std::os::unix::fs::PermissionsExt;
    let keys = TestKeys::new();
    let cloud = tempfile::tempdir().unwrap();
    let mut a = Device::new(cloud.path(), false);
    let mut b = Device::new(cloud.path(), false);
    if !permissions_hold(&a.plain()) {
        eprintln!("running as root: permissions do not hold, nothing checked");
        return;
    }
    a.write("doc.txt", b"v1");
    a.sync(&keys);
    std::thread::sleep(std::time::Duration::from_millis(20));
    a.write("doc.txt", b"v2");
    let doc = a.plain().join("doc.txt");
    std::fs::set_permissions(&doc, std::fs::Permissions::from_mode(0o000)).unwrap();
    let r = a.sync(&keys);
    assert!(
        r.failed
            .iter()
            .any(|(p, why)| p == "doc.txt" && why.contains("read")),
        "{r:?}"
    );
    assert!(r.removed.is_empty() && r.sealed.is_empty(), "{r:?}");
    b.sync(&keys);
    assert_eq!(b.read("doc.txt").as_deref(), Some(&b"v1"[..]));
    std::fs::set_permissions(&doc, std::fs::Permissions::from_mode(0o644)).unwrap();
    let r = a.sync(&keys);
    assert_eq!(r.sealed, vec!["doc.txt".to_owned()], "{r:?}");
    b.sync(&keys);
    assert_eq!(b.read("doc.txt").as_deref(), Some(&b"v2"[..]));
}

/// A file appended to without pause (a log) under `--watch`: no pass per write and no busy
/// loop (the burst of events is waited out), and its final content sealed once it stops.
/// Holds.
#[test]
fn a_file_appended_without_pause_does_not_drive_a_pass_per_write() {
    use std::cell::Cell;
    use std::io::Write;
    use std::time::{Duration, Instant};
    let keys = TestKeys::new();
    let cloud = tempfile::tempdir().unwrap();
    let a = Device::new(cloud.path(), false);
    a.write("log.txt", b"");
    let path = a.plain().join("log.txt");
    let mut o = a.options();
    o.settle = Duration::from_millis(250);
    let mut syncer = kluis_sync::Syncer::new(&o).unwrap();
    let passes = Cell::new(0usize);
    let sealed = Cell::new(0usize);
    let start = Instant::now();
    let stop = || start.elapsed() > Duration::from_secs(7);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut f = std::fs::File::options().append(true).open(&path).unwrap();
            // 4 s of appends, 40 ms apart (about 100 writes).
            while start.elapsed() < Duration::from_secs(4) {
                f.write_all(b"line\n").unwrap();
                std::thread::sleep(Duration::from_millis(40));
            }
        });
        kluis_sync::watch(&mut syncer, &keys, Some(&stop), &mut |r| {
            passes.set(passes.get() + 1);
            sealed.set(sealed.get() + r.sealed.len());
        })
        .unwrap();
    });
    assert!(passes.get() <= 4, "{} reported passes in 7 s", passes.get());
    // The final version is what SEALED holds: open it on a second device.
    let mut b = Device::new(cloud.path(), false);
    b.sync(&keys);
    assert_eq!(b.read("log.txt"), std::fs::read(&path).ok());
    assert!(sealed.get() >= 1);
}

/// Move every entry of `from` into `to` (what a mount or an unmount does to what is seen).
fn move_all(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::rename(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// SEALED unmounted (its mount point an empty folder), the person edits a file meanwhile, the
/// drive comes back. While the guard holds, nothing may be written into the empty mount point:
/// what is sealed there is hidden once the drive is mounted again, the journal then takes the
/// drive's older sealed version for a change from the cloud, and opens it over the edit.
#[test]
fn an_edit_made_while_sealed_is_unmounted_survives_the_remount() {
    let keys = TestKeys::new();
    let cloud = tempfile::tempdir().unwrap();
    let drive = tempfile::tempdir().unwrap();
    let shadow = tempfile::tempdir().unwrap();
    let mut a = Device::new(cloud.path(), false);
    for i in 0..6 {
        a.write(&format!("doc{i}.txt"), b"old");
    }
    a.sync(&keys);
    // Unmounted: the drive's files are out of sight.
    move_all(cloud.path(), drive.path());
    std::thread::sleep(std::time::Duration::from_millis(20));
    a.write("doc0.txt", b"the edit");
    let r = a.sync(&keys);
    assert!(r.guard.is_some() && r.trashed.is_empty(), "{r:?}");
    // Mounted again: whatever was written into the mount point is hidden by the drive.
    move_all(cloud.path(), shadow.path());
    move_all(drive.path(), cloud.path());
    let r = a.sync(&keys);
    assert_eq!(
        a.read("doc0.txt").as_deref(),
        Some(&b"the edit"[..]),
        "the edit was overwritten by the drive's older version: {r:?}"
    );
    let mut b = Device::new(cloud.path(), false);
    b.sync(&keys);
    assert_eq!(b.read("doc0.txt").as_deref(), Some(&b"the edit"[..]));
}

/// The same with a folder of a single file: too small for any share rule, but an entirely
/// empty SEALED while files are in sync is what an unmounted drive looks like.
/// Both modes; with hidden names, a second pass while unmounted must not find the folder key
/// the first one wrote into the mount point and go ahead.
#[test]
fn an_edit_of_a_single_file_made_while_sealed_is_unmounted_survives_the_remount() {
    for hide in [false, true] {
        let keys = TestKeys::new();
        let cloud = tempfile::tempdir().unwrap();
        let drive = tempfile::tempdir().unwrap();
        let shadow = tempfile::tempdir().unwrap();
        let mut a = Device::new(cloud.path(), hide);
        a.write("only.txt", b"old");
        a.sync(&keys);
        move_all(cloud.path(), drive.path());
        std::thread::sleep(std::time::Duration::from_millis(20));
        a.write("only.txt", b"the edit");
        for _ in 0..2 {
            let r = a.sync(&keys);
            assert!(
                r.guard.is_some() && r.sealed.is_empty(),
                "hide {hide}: {r:?}"
            );
        }
        move_all(cloud.path(), shadow.path());
        move_all(drive.path(), cloud.path());
        a.sync(&keys);
        assert_eq!(
            a.read("only.txt").as_deref(),
            Some(&b"the edit"[..]),
            "hide {hide}"
        );
    }
}

/// PLAIN unmounted (an empty mount point) over a folder of three files, below the guard's five:
/// their sealed copies must not be removed (every other device would then move its copies to
/// the trash), and a colleague's edit arriving meanwhile must not be opened into the mount
/// point (hidden once the drive is back, the drive's older file would then be sealed over it).
#[test]
fn an_unmounted_plain_folder_removes_nothing_and_loses_no_edit() {
    let keys = TestKeys::new();
    let cloud = tempfile::tempdir().unwrap();
    let drive = tempfile::tempdir().unwrap();
    let shadow = tempfile::tempdir().unwrap();
    let mut a = Device::new(cloud.path(), false);
    let mut b = Device::new(cloud.path(), false);
    for i in 0..3 {
        a.write(&format!("doc{i}.txt"), b"old");
    }
    a.sync(&keys);
    b.sync(&keys);
    // A's PLAIN is unmounted; B edits doc0 meanwhile.
    move_all(&a.plain(), drive.path());
    std::thread::sleep(std::time::Duration::from_millis(20));
    b.write("doc0.txt", b"the edit from b");
    b.sync(&keys);
    let r = a.sync(&keys);
    assert!(r.removed.is_empty() && r.guard.is_some(), "{r:?}");
    assert_eq!(common::files(cloud.path()).len(), 3, "sealed copies stay");
    // Mounted again.
    move_all(&a.plain(), shadow.path());
    move_all(drive.path(), &a.plain());
    a.sync(&keys);
    b.sync(&keys);
    assert_eq!(a.read("doc0.txt").as_deref(), Some(&b"the edit from b"[..]));
    assert_eq!(b.read("doc0.txt").as_deref(), Some(&b"the edit from b"[..]));
    assert_eq!(b.files().len(), 3, "{:?}", b.files());
}

/// A delete on one device and an edit on the other between two passes, in both orders, and a
/// delete followed by a new file under the same name: the edit or the new file wins, nothing
/// is lost, nothing duplicated. Holds.
#[test]
fn delete_against_edit_and_delete_then_recreate_lose_nothing() {
    let keys = TestKeys::new();
    let cloud = tempfile::tempdir().unwrap();
    let mut a = Device::new(cloud.path(), true);
    let mut b = Device::new(cloud.path(), true);
    a.write("x.txt", b"x1");
    a.write("y.txt", b"y1");
    a.write("z.txt", b"z1");
    a.sync(&keys);
    b.sync(&keys);
    std::thread::sleep(std::time::Duration::from_millis(20));
    // x: A deletes, B edits; A syncs first.
    std::fs::remove_file(a.plain().join("x.txt")).unwrap();
    b.write("x.txt", b"x2 from b");
    // y: A edits, B deletes; B syncs first.
    a.write("y.txt", b"y2 from a");
    std::fs::remove_file(b.plain().join("y.txt")).unwrap();
    // z: A deletes and writes a new file under the same name before any pass.
    std::fs::remove_file(a.plain().join("z.txt")).unwrap();
    a.write("z.txt", b"z new");
    a.sync(&keys);
    b.sync(&keys);
    a.sync(&keys);
    b.sync(&keys);
    for d in [&a, &b] {
        assert_eq!(
            d.read("x.txt").as_deref(),
            Some(&b"x2 from b"[..]),
            "{:?}",
            d.files()
        );
        assert_eq!(
            d.read("y.txt").as_deref(),
            Some(&b"y2 from a"[..]),
            "{:?}",
            d.files()
        );
        assert_eq!(
            d.read("z.txt").as_deref(),
            Some(&b"z new"[..]),
            "{:?}",
            d.files()
        );
        assert_eq!(d.files().len(), 3, "no copies: {:?}", d.files());
    }
}
