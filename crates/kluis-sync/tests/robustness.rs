//! Reviewer B: losing or duplicating versions, and liveness.

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
