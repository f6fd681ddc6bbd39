//! The reconciler on real folders, with an in-process label key (the key server's part is
//! tested end to end in kluis-cli's tests/sync.rs).

mod common;

use common::{Device, TestKeys, assert_no_leak, files};
use kluis_sync::{Options, SyncError, Syncer};

#[test]
fn both_ways_with_shared_hidden_names() {
    let keys = TestKeys::new();
    let cloud = tempfile::tempdir().unwrap();
    let mut a = Device::new(cloud.path(), true);
    let mut b = Device::new(cloud.path(), true);
    a.write("salaries/2026 SECRETNAME.xlsx", b"SECRET salaries");
    a.write("notes.txt", b"SECRET notes");
    let r = a.sync(&keys);
    assert_eq!(r.sealed.len(), 2, "{r:?}");
    // Flat hidden names plus the folder key.
    let sealed = files(cloud.path());
    assert_eq!(
        sealed.len(),
        3,
        "{:?}",
        sealed.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    assert!(sealed.iter().any(|(n, _)| n == ".kluis-folder"));
    assert_no_leak(cloud.path(), b"SECRET");
    assert_no_leak(cloud.path(), b"salaries");

    let r = b.sync(&keys);
    assert_eq!(r.opened.len(), 2, "{r:?}");
    assert_eq!(b.files(), a.files());

    // b edits, a receives; the hidden name stays the same (replaced, not added).
    b.write("notes.txt", b"SECRET notes v2");
    b.sync(&keys);
    assert_eq!(files(cloud.path()).len(), 3);
    let r = a.sync(&keys);
    assert_eq!(r.opened, vec!["notes.txt".to_owned()]);
    assert_eq!(a.read("notes.txt").unwrap(), b"SECRET notes v2");
    // Nothing more to do on either side.
    assert!(!a.sync(&keys).changed());
    assert!(!b.sync(&keys).changed());
}

#[test]
fn plain_names_mirror_the_tree() {
    let keys = TestKeys::new();
    let cloud = tempfile::tempdir().unwrap();
    let mut a = Device::new(cloud.path(), false);
    a.write("dir/a.txt", b"SECRET a");
    a.sync(&keys);
    assert!(cloud.path().join("dir/a.txt.kluis").is_file());
    assert_no_leak(cloud.path(), b"SECRET");
    let mut b = Device::new(cloud.path(), false);
    b.sync(&keys);
    assert_eq!(b.read("dir/a.txt").unwrap(), b"SECRET a");
}

#[test]
fn conflict_keeps_both_versions() {
    let keys = TestKeys::new();
    let cloud = tempfile::tempdir().unwrap();
    let mut a = Device::new(cloud.path(), true);
    let mut b = Device::new(cloud.path(), true);
    a.write("doc.txt", b"v1");
    a.sync(&keys);
    b.sync(&keys);
    a.write("doc.txt", b"from a");
    a.sync(&keys);
    b.write("doc.txt", b"from b!");
    let r = b.sync(&keys);
    assert_eq!(r.conflicts.len(), 1, "{r:?}");
    let copy = &r.conflicts[0].1;
    assert!(
        copy.starts_with("doc (conflict ") && copy.ends_with(").txt"),
        "{copy}"
    );
    assert_eq!(b.read("doc.txt").unwrap(), b"from b!");
    assert_eq!(b.read(copy).unwrap(), b"from a");
    a.sync(&keys);
    assert_eq!(a.files(), b.files());
}

#[test]
fn deletes_both_ways_and_trash() {
    let keys = TestKeys::new();
    let cloud = tempfile::tempdir().unwrap();
    let mut a = Device::new(cloud.path(), true);
    let mut b = Device::new(cloud.path(), true);
    a.write("x.txt", b"x");
    a.write("y.txt", b"y");
    a.sync(&keys);
    b.sync(&keys);
    std::fs::remove_file(a.plain().join("x.txt")).unwrap();
    let r = a.sync(&keys);
    assert_eq!(r.removed, vec!["x.txt".to_owned()]);
    assert_eq!(files(cloud.path()).len(), 2, "y and the folder key");
    let r = b.sync(&keys);
    assert_eq!(r.trashed.len(), 1, "{r:?}");
    assert!(b.read("x.txt").is_none());
    // Moved, not deleted: the trash (outside both folders) holds it.
    let trash = std::path::Path::new(&r.trashed[0].1);
    assert_eq!(std::fs::read(trash).unwrap(), b"x");
    assert!(!trash.starts_with(cloud.path()) && !trash.starts_with(b.plain()));
}

#[test]
fn mass_delete_guard_holds_back_deletions() {
    let keys = TestKeys::new();
    let cloud = tempfile::tempdir().unwrap();
    let mut a = Device::new(cloud.path(), false);
    for i in 0..10 {
        a.write(&format!("f{i}.txt"), b"data");
    }
    a.sync(&keys);
    // The sealed folder is emptied (an unmounted drive, a sync client gone wrong).
    for i in 0..10 {
        std::fs::remove_file(cloud.path().join(format!("f{i}.txt.kluis"))).unwrap();
    }
    let r = a.sync(&keys);
    assert!(
        r.guard.as_deref().unwrap().contains("--allow-mass-delete"),
        "{r:?}"
    );
    assert!(r.trashed.is_empty());
    assert_eq!(a.files().len(), 10, "nothing moved to the trash");
    // Asked for: carried out (into the trash).
    let mut o = a.options();
    o.allow_mass_delete = true;
    a.restart();
    let r = Syncer::new(&o).unwrap().run(&keys, 3).unwrap();
    assert_eq!(r.trashed.len(), 10);
    // A few deletions pass the guard.
    let mut b = Device::new(cloud.path(), false);
    for i in 0..10 {
        b.write(&format!("g{i}.txt"), b"data");
    }
    b.sync(&keys);
    for i in 0..3 {
        std::fs::remove_file(b.plain().join(format!("g{i}.txt"))).unwrap();
    }
    let r = b.sync(&keys);
    assert!(r.guard.is_none());
    assert_eq!(r.removed.len(), 3);
}

#[test]
fn nesting_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let outer = d.path().join("outer");
    let inner = outer.join("inner");
    std::fs::create_dir_all(&inner).unwrap();
    let state = d.path().join("state");
    let try_pair = |plain: &std::path::Path, sealed: &std::path::Path| {
        Syncer::new(&Options {
            plain: plain.to_owned(),
            sealed: sealed.to_owned(),
            hide_names: true,
            state_root: state.clone(),
            allow_mass_delete: false,
            settle: std::time::Duration::ZERO,
            stray_grace: std::time::Duration::ZERO,
            folder_key_window: std::time::Duration::from_secs(600),
            trust_folder_key: None,
        })
        .err()
    };
    assert!(matches!(
        try_pair(&inner, &outer),
        Some(SyncError::Nested { .. })
    ));
    assert!(matches!(
        try_pair(&outer, &inner),
        Some(SyncError::Nested { .. })
    ));
    assert!(matches!(
        try_pair(&outer, &outer),
        Some(SyncError::Nested { .. })
    ));
    // Through a symbolic link too.
    #[cfg(unix)]
    {
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&outer, &link).unwrap();
        assert!(matches!(
            try_pair(&link.join("inner"), &outer),
            Some(SyncError::Nested { .. })
        ));
    }
    // The state folder inside the plain folder.
    let err = Syncer::new(&Options {
        plain: outer.clone(),
        sealed: d.path().to_owned().join("sealed"),
        hide_names: false,
        state_root: inner.join("state"),
        allow_mass_delete: false,
        settle: std::time::Duration::ZERO,
        stray_grace: std::time::Duration::ZERO,
        folder_key_window: std::time::Duration::from_secs(600),
        trust_folder_key: None,
    });
    assert!(err.is_err());
}

#[test]
fn temporaries_and_lock_files_are_ignored() {
    let keys = TestKeys::new();
    let cloud = tempfile::tempdir().unwrap();
    let mut a = Device::new(cloud.path(), false);
    for name in [
        "~$report.docx",
        ".~lock.report.odt#",
        "~WRL0001.tmp",
        "upload.tmp",
        "big.iso.partial",
        ".~tmp123",
        "real.txt",
    ] {
        a.write(name, b"x");
    }
    let r = a.sync(&keys);
    assert_eq!(r.sealed, vec!["real.txt".to_owned()]);
    // The sync client's own temporaries in the sealed folder are not opened.
    std::fs::write(cloud.path().join("x.kluis.partial"), b"junk").unwrap();
    std::fs::write(cloud.path().join("~x.tmp"), b"junk").unwrap();
    let r = a.sync(&keys);
    assert!(!r.changed() && r.failed.is_empty(), "{r:?}");
}

#[test]
fn a_file_still_changing_is_not_sealed() {
    let keys = TestKeys::new();
    let cloud = tempfile::tempdir().unwrap();
    let a = Device::new(cloud.path(), false);
    a.write("busy.txt", b"half");
    let mut o = a.options();
    o.settle = std::time::Duration::from_secs(30);
    let r = Syncer::new(&o).unwrap().run(&keys, 3).unwrap();
    assert!(r.sealed.is_empty());
    assert_eq!(r.pending[0].1, "still changing");
    assert!(r.retry_after.is_some());
    assert!(files(cloud.path()).is_empty());
}

#[test]
fn restart_after_unrecorded_steps_duplicates_nothing() {
    // A run that sealed and opened but was killed before its journal was written: the next
    // run finds both sides changed, compares, and records them as in sync.
    let keys = TestKeys::new();
    let cloud = tempfile::tempdir().unwrap();
    let mut a = Device::new(cloud.path(), true);
    let mut b = Device::new(cloud.path(), true);
    a.write("a.txt", b"one");
    a.sync(&keys);
    b.sync(&keys);
    a.write("a.txt", b"two");
    a.sync(&keys);
    b.sync(&keys);
    // Lose b's journal (as if every step since the start was not recorded).
    b.restart();
    for e in std::fs::read_dir(b.home.path().join("state")).unwrap() {
        let _ = std::fs::remove_file(e.unwrap().path().join("journal.json"));
    }
    let r = b.sync(&keys);
    assert!(r.conflicts.is_empty() && !r.changed(), "{r:?}");
    assert_eq!(b.files(), vec![("a.txt".to_owned(), b"two".to_vec())]);
}

#[test]
fn a_second_run_on_the_same_pair_is_refused() {
    let cloud = tempfile::tempdir().unwrap();
    let a = Device::new(cloud.path(), false);
    let _first = Syncer::new(&a.options()).unwrap();
    assert!(matches!(Syncer::new(&a.options()), Err(SyncError::Busy(_))));
}

#[test]
fn a_crafted_or_stray_document_does_not_choose_its_path() {
    // A sealed file whose stored path does not match its sealed name (a sync client's
    // conflict copy, or crafted) opens only as a conflict copy beside its stored path; one
    // whose stored path is unsafe is not opened at all.
    let keys = TestKeys::new();
    let cloud = tempfile::tempdir().unwrap();
    let mut a = Device::new(cloud.path(), false);
    a.write("sub/a.txt", b"x");
    a.sync(&keys);
    std::fs::copy(
        cloud.path().join("sub/a.txt.kluis"),
        cloud.path().join("evil.txt.kluis"),
    )
    .unwrap();
    let slots = keys.seal_to_slots();
    let crafted = kluis_core::seal(
        &slots,
        &kluis_core::Metadata::default().name("../outside.txt"),
        b"pwned",
    )
    .unwrap();
    std::fs::write(cloud.path().join("outside.txt.kluis"), crafted).unwrap();
    let mut b = Device::new(cloud.path(), false);
    let r = b.sync(&keys);
    assert!(r.opened.contains(&"sub/a.txt".to_owned()), "{r:?}");
    assert!(b.read("evil.txt").is_none());
    assert_eq!(r.conflicts.len(), 1, "{r:?}");
    assert!(r.conflicts[0].1.starts_with("sub/a (conflict "), "{r:?}");
    assert!(r.failed.iter().any(|(p, _)| p.contains("outside")), "{r:?}");
    assert!(!b.home.path().join("outside.txt").exists());
    assert!(
        b.files().iter().all(|(n, _)| n.starts_with("sub/")),
        "{:?}",
        b.files()
    );
}

#[test]
fn two_devices_creating_the_folder_key_at_once_converge() {
    let keys = TestKeys::new();
    let cloud_a = tempfile::tempdir().unwrap();
    let cloud_b = tempfile::tempdir().unwrap();
    let mut a = Device::new(cloud_a.path(), true);
    let mut b = Device::new(cloud_b.path(), true);
    // As in real use: the loser re-names its own files, the winner waits for it.
    a.grace = std::time::Duration::from_secs(600);
    b.grace = std::time::Duration::from_secs(600);
    a.write("from-a.txt", b"A");
    b.write("from-b.txt", b"B");
    b.write("both.txt", b"same");
    a.write("both.txt", b"same");
    a.sync(&keys);
    b.sync(&keys);
    // The sync client brings both copies together: the two folder keys clash.
    let mut client = common::SyncClient::default();
    for _ in 0..4 {
        client.sync(cloud_a.path(), cloud_b.path());
        a.sync(&keys);
        b.sync(&keys);
    }
    client.sync(cloud_a.path(), cloud_b.path());
    assert_eq!(a.files(), b.files());
    assert_eq!(a.files().len(), 3, "{:?}", a.files());
    // One folder key left, and one sealed file per path.
    let sealed = files(cloud_a.path());
    assert_eq!(
        sealed
            .iter()
            .filter(|(n, _)| n.starts_with(".kluis-folder"))
            .count(),
        1,
        "{:?}",
        sealed.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    assert_eq!(
        sealed.len(),
        4,
        "{:?}",
        sealed.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
}

#[test]
fn watch_seals_a_saved_file_once_it_stopped_changing() {
    let keys = TestKeys::new();
    let cloud = tempfile::tempdir().unwrap();
    let a = Device::new(cloud.path(), true);
    let mut o = a.options();
    // Far above the 100 ms between writes, so a loaded machine does not make a pause look
    // like the end of the file.
    o.settle = std::time::Duration::from_millis(1000);
    let plain = a.plain();
    let cloud_path = cloud.path().to_owned();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let h = s.spawn(|| {
            let mut syncer = Syncer::new(&o).unwrap();
            let mut passes = Vec::new();
            let stop_fn = || stop.load(std::sync::atomic::Ordering::SeqCst);
            kluis_sync::watch(&mut syncer, &keys, Some(&stop_fn), &mut |r| {
                passes.push(r.clone())
            })
            .unwrap();
            passes
        });
        let sealed_count = || files(&cloud_path).len();
        let t0 = std::time::Instant::now();
        while sealed_count() < 1 && t0.elapsed() < std::time::Duration::from_secs(20) {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // Written in pieces over 600 ms: not sealed half-way.
        let path = plain.join("doc.txt");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&path).unwrap();
            for i in 0..6 {
                f.write_all(format!("SECRET part {i}\n").as_bytes())
                    .unwrap();
                f.flush().unwrap();
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
        let t0 = std::time::Instant::now();
        while sealed_count() < 2 && t0.elapsed() < std::time::Duration::from_secs(20) {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let passes = h.join().unwrap();
        let sealed: Vec<_> = passes.iter().flat_map(|p| p.sealed.clone()).collect();
        assert_eq!(sealed, vec!["doc.txt".to_owned()], "{passes:?}");
    });
    // What was sealed is the whole file.
    let mut b = Device::new(cloud.path(), true);
    b.sync(&keys);
    assert_eq!(
        b.read("doc.txt").unwrap(),
        std::fs::read(a.plain().join("doc.txt")).unwrap()
    );
}

#[test]
fn one_file_that_cannot_be_placed_does_not_stop_the_others() {
    // b has a plain file where a's folder is: that path fails, listed; the rest is synced.
    let keys = TestKeys::new();
    let cloud = tempfile::tempdir().unwrap();
    let mut a = Device::new(cloud.path(), true);
    a.write("x/inner.txt", b"inner");
    a.write("y.txt", b"y");
    a.sync(&keys);
    let mut b = Device::new(cloud.path(), true);
    let mut o = b.options();
    o.settle = std::time::Duration::from_secs(3600);
    b.write("x", b"a file in the way");
    let r = Syncer::new(&o).unwrap().run(&keys, 1).unwrap();
    assert!(
        r.failed.iter().any(|(_, why)| why.contains("in the way")),
        "{r:?}"
    );
    assert!(r.opened.contains(&"y.txt".to_owned()), "{r:?}");
    let _ = &mut b;
}

#[test]
fn a_label_that_cannot_be_sealed_to_stops_sealing_and_removals() {
    struct Refusing(TestKeys);
    impl kluis_sync::Keys for Refusing {
        fn seal_to(&self) -> Result<kluis_sync::Sealing, String> {
            Err("label `hr` was retired on the key server".into())
        }
        fn unwrappers(&self) -> Vec<&dyn kluis_core::Unwrap> {
            self.0.unwrappers()
        }
    }
    let keys = TestKeys::new();
    let cloud = tempfile::tempdir().unwrap();
    let mut a = Device::new(cloud.path(), false);
    a.write("old.txt", b"old");
    a.sync(&keys);
    let refusing = Refusing(TestKeys { key: keys.key });
    a.write("new.txt", b"new");
    std::fs::remove_file(a.plain().join("old.txt")).unwrap();
    let r = a.sync(&refusing);
    assert!(
        r.stopped[0].contains("sealing stopped") && r.stopped[0].contains("retired"),
        "{r:?}"
    );
    assert!(r.sealed.is_empty() && r.removed.is_empty(), "{r:?}");
    assert!(
        cloud.path().join("old.txt.kluis").exists(),
        "nothing removed"
    );
    assert!(!cloud.path().join("new.txt.kluis").exists());
}

#[test]
fn openings_wait_while_the_key_server_is_away_and_nothing_is_dropped() {
    /// A key holder that cannot be reached.
    struct Away(kluis_core::LabelKey);
    impl kluis_core::Unwrap for Away {
        fn accepts(&self, stanza: &kluis_core::Stanza) -> bool {
            self.0.accepts(stanza)
        }
        fn unwrap(
            &self,
            requests: &[kluis_core::UnwrapRequest<'_>],
        ) -> Vec<Result<kluis_core::Share, kluis_core::UnwrapError>> {
            requests
                .iter()
                .map(|_| Err(kluis_core::UnwrapError::unavailable("connection refused")))
                .collect()
        }
    }
    struct Offline(Away, TestKeys);
    impl kluis_sync::Keys for Offline {
        fn seal_to(&self) -> Result<kluis_sync::Sealing, String> {
            self.1.seal_to()
        }
        fn unwrappers(&self) -> Vec<&dyn kluis_core::Unwrap> {
            vec![&self.0]
        }
    }
    use kluis_sync::Keys;
    let keys = TestKeys::new();
    let cloud = tempfile::tempdir().unwrap();
    let mut a = Device::new(cloud.path(), false);
    a.write("a.txt", b"from a");
    a.sync(&keys);
    let mut b = Device::new(cloud.path(), false);
    // The same label key, but its holder unreachable.
    let offline = Offline(Away(keys.key.clone()), TestKeys::new());
    let r = b.sync(&offline);
    assert!(r.opened.is_empty());
    assert!(
        r.pending
            .iter()
            .any(|(p, why)| p.contains("a.txt") && why.contains("could not be reached")),
        "{r:?}"
    );
    assert!(r.retry_after.is_some(), "a retry is asked for");
    assert!(r.stopped.is_empty(), "unreachable is not a refusal: {r:?}");
    // Back online: opened, nothing was dropped.
    let r = b.sync(&keys);
    assert_eq!(r.opened, vec!["a.txt".to_owned()]);
    let _ = offline.seal_to();
}
