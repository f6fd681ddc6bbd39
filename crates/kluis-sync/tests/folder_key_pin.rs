//! The folder key is pinned (trust on first use, issue 18 follow-up): a `.kluis-folder…`
//! document with a smaller document id that someone with write access to SEALED (the cloud
//! provider) plants, sealed to the pair's label with a key they know, is not adopted once the
//! device's own key is past the creation window; a new device that finds two does not pick
//! one by rule; the pin survives a restart.

#[allow(unused_imports)]
mod common;

use std::path::Path;
use std::time::Duration;

use common::{Device, TestKeys, files};
use kluis_core::{Metadata, Recipient, Slot};

/// The attacker's folder key (they know its bytes).
const ATTACKER_KEY: [u8; 32] = [7u8; 32];

fn doc_id(bytes: &[u8]) -> String {
    kluis_core::Header::read(&mut &bytes[..])
        .unwrap()
        .doc_id()
        .to_string()
}

/// The document id of the folder key in SEALED (the only one).
fn key_id(sealed: &Path) -> String {
    doc_id(&std::fs::read(sealed.join(kluis_sync::FOLDER_KEY_FILE)).unwrap())
}

/// Plant a folder-key document sealed to the pair's label (its public key is public) with
/// a key the attacker knows and a document id smaller than `below`; returns its id.
fn plant(keys: &TestKeys, sealed: &Path, below: &str) -> String {
    plant_as(keys, sealed, ".kluis-folder-x", |id| id < below)
}

/// A folder-key document with a key the attacker knows, whose id passes `pick`, as `name`.
fn plant_as(keys: &TestKeys, sealed: &Path, name: &str, pick: impl Fn(&str) -> bool) -> String {
    let mut payload = b"kluis-sync/v1 folder-key\0".to_vec();
    payload.extend_from_slice(&ATTACKER_KEY);
    let slots = vec![Slot::single(Recipient::Label(
        keys.key.public_key().clone(),
    ))];
    let planted = (0..256)
        .map(|_| kluis_core::seal(&slots, &Metadata::default(), &payload).unwrap())
        .find(|d| pick(&doc_id(d)))
        .expect("a fitting document id in 256 tries");
    std::fs::write(sealed.join(name), &planted).unwrap();
    doc_id(&planted)
}

/// The sealed names (the folder-key documents left out).
fn names(sealed: &Path) -> Vec<String> {
    files(sealed)
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| !n.starts_with(".kluis-folder"))
        .collect()
}

/// After the creation window, a planted smaller-id folder key is not adopted: the names stay,
/// new files are named by the pinned key, and the pass says what appeared.
#[test]
fn a_planted_folder_key_after_the_window_is_not_adopted_and_is_reported() {
    let keys = TestKeys::new();
    let cloud = tempfile::tempdir().unwrap();
    let mut a = Device::new(cloud.path(), true);
    // The window closes one second after the key was created.
    a.window = Duration::from_secs(1);
    a.write("payroll/2027.xlsx", b"salaries");
    a.sync(&keys);
    let ours = key_id(cloud.path());
    let before = names(cloud.path());
    assert_eq!(before.len(), 1);
    std::thread::sleep(Duration::from_millis(2100));
    let planted = plant(&keys, cloud.path(), &ours);
    a.write("layoffs.docx", b"names");
    let r = a.sync(&keys);
    assert!(r.sealed.contains(&"layoffs.docx".to_owned()), "{r:?}");
    let after = names(cloud.path());
    assert!(
        before.iter().all(|n| after.contains(n)),
        "the sealed names changed under the planted key: {before:?} -> {after:?}"
    );
    assert_eq!(after.len(), 2, "{after:?}");
    let reported = r.failed.iter().any(|(f, why)| {
        f == ".kluis-folder-x"
            && why.contains("a second folder key appeared in SEALED")
            && why.contains(&planted)
            && why.contains("not adopted")
    });
    assert!(reported, "not reported: {r:?}");
    // Reported again on the next pass (it is still there), still not adopted.
    a.restart();
    let r = a.sync(&keys);
    assert!(
        r.failed.iter().any(|(f, _)| f == ".kluis-folder-x"),
        "{r:?}"
    );
    assert_eq!(names(cloud.path()), after);
    assert_eq!(a.read("layoffs.docx").as_deref(), Some(&b"names"[..]));
}

/// A window of zero: a key this device created is never replaced by another one.
#[test]
fn with_no_window_a_smaller_id_key_is_never_adopted() {
    let keys = TestKeys::new();
    let cloud = tempfile::tempdir().unwrap();
    let mut a = Device::new(cloud.path(), true);
    a.window = Duration::ZERO;
    a.write("a.txt", b"A");
    a.sync(&keys);
    let before = names(cloud.path());
    plant(&keys, cloud.path(), &key_id(cloud.path()));
    a.sync(&keys);
    assert_eq!(names(cloud.path()), before);
}

/// Within the window, a smaller-id key (the other device of a race on a new SEALED) is
/// adopted: this device re-names its files and removes its own document.
#[test]
fn within_the_window_a_smaller_id_key_is_adopted_as_in_a_race() {
    let keys = TestKeys::new();
    let cloud = tempfile::tempdir().unwrap();
    let mut a = Device::new(cloud.path(), true);
    a.write("a.txt", b"A");
    a.sync(&keys);
    let ours = key_id(cloud.path());
    let before = names(cloud.path());
    let theirs = plant(&keys, cloud.path(), &ours);
    let r = a.sync(&keys);
    assert!(r.failed.is_empty(), "{r:?}");
    let after = names(cloud.path());
    assert_ne!(after, before, "not re-named to the winning key");
    assert_eq!(after.len(), 1);
    let keys_left: Vec<String> = files(cloud.path())
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| n.starts_with(".kluis-folder"))
        .collect();
    assert_eq!(keys_left, vec![".kluis-folder-x".to_owned()]);
    assert!(theirs < ours);
}

/// A new device that finds two folder keys stops and lists both; with `--trust-folder-key` it
/// adopts the one named and opens the files.
#[test]
fn a_new_device_with_two_folder_keys_refuses_until_one_is_chosen() {
    let keys = TestKeys::new();
    let cloud = tempfile::tempdir().unwrap();
    let mut a = Device::new(cloud.path(), true);
    a.window = Duration::ZERO;
    a.write("plan.txt", b"the plan");
    a.sync(&keys);
    let ours = key_id(cloud.path());
    let planted = plant(&keys, cloud.path(), &ours);
    let mut b = Device::new(cloud.path(), true);
    let r = b.sync(&keys);
    assert!(b.files().is_empty(), "{:?}", b.files());
    let stop = r.stopped.join(" ");
    assert!(
        stop.contains(&ours) && stop.contains(&planted) && stop.contains("--trust-folder-key"),
        "{r:?}"
    );
    // Nothing was named by either key on the new device's behalf.
    assert_eq!(names(cloud.path()).len(), 1);
    // A choice that is not among them is refused too.
    b.restart();
    b.trust = Some("not-a-document".into());
    let r = b.sync(&keys);
    assert!(!r.stopped.is_empty(), "{r:?}");
    b.restart();
    b.trust = Some(ours.clone());
    let r = b.sync(&keys);
    assert!(r.stopped.is_empty(), "{r:?}");
    assert_eq!(b.read("plan.txt").as_deref(), Some(&b"the plan"[..]));
    // Pinned now: without the flag it keeps the chosen key and reports the other.
    b.restart();
    b.trust = None;
    b.write("reply.txt", b"ok");
    let r = b.sync(&keys);
    assert!(r.stopped.is_empty(), "{r:?}");
    assert!(
        r.failed.iter().any(|(f, _)| f == ".kluis-folder-x"),
        "{r:?}"
    );
    a.sync(&keys);
    assert_eq!(a.read("reply.txt").as_deref(), Some(&b"ok"[..]));
}

/// The pin is in the journal: after a restart, with the cached key gone (a new state folder
/// copy, or a wiped cache), the device opens the pinned document again, not the smaller one.
#[test]
fn the_pin_survives_a_restart_without_the_cached_key() {
    let keys = TestKeys::new();
    let cloud = tempfile::tempdir().unwrap();
    let mut a = Device::new(cloud.path(), true);
    a.write("a.txt", b"A");
    a.sync(&keys);
    // b joins (adopts the only key: no creation window of its own).
    let mut b = Device::new(cloud.path(), true);
    b.sync(&keys);
    assert_eq!(b.read("a.txt").as_deref(), Some(&b"A"[..]));
    let before = names(cloud.path());
    plant(&keys, cloud.path(), &key_id(cloud.path()));
    b.restart();
    for e in std::fs::read_dir(b.home.path().join("state")).unwrap() {
        let p = e.unwrap().path().join("folder.key");
        if p.exists() {
            std::fs::remove_file(p).unwrap();
        }
    }
    b.write("b.txt", b"B");
    let r = b.sync(&keys);
    assert!(r.stopped.is_empty(), "{r:?}");
    assert!(r.sealed.contains(&"b.txt".to_owned()), "{r:?}");
    let after = names(cloud.path());
    assert!(
        before.iter().all(|n| after.contains(n)),
        "re-named under the planted key after a restart: {before:?} -> {after:?}"
    );
    // The creator (its window closed) opens b's file: both still name by the pinned key.
    a.window = Duration::ZERO;
    a.restart();
    a.sync(&keys);
    assert_eq!(a.read("b.txt").as_deref(), Some(&b"B"[..]));
}

/// The folder-key document is deleted and two devices (both past their window) each seal
/// their cached key again at once: the two documents hold the same key, so the smaller id is
/// taken silently (names unchanged) and one document is left; nothing is reported.
#[test]
fn two_re_sealed_copies_of_the_same_key_converge_silently() {
    let keys = TestKeys::new();
    let cloud_a = tempfile::tempdir().unwrap();
    let cloud_b = tempfile::tempdir().unwrap();
    let mut a = Device::new(cloud_a.path(), true);
    let mut b = Device::new(cloud_b.path(), true);
    a.window = Duration::ZERO;
    b.window = Duration::ZERO;
    let mut client = common::SyncClient::default();
    a.write("a.txt", b"A");
    a.sync(&keys);
    client.sync(cloud_a.path(), cloud_b.path());
    b.sync(&keys);
    assert_eq!(b.read("a.txt").as_deref(), Some(&b"A"[..]));
    let before = names(cloud_a.path());
    // Deleted everywhere; each device seals the key again in its own copy of the folder.
    std::fs::remove_file(cloud_a.path().join(".kluis-folder")).unwrap();
    std::fs::remove_file(cloud_b.path().join(".kluis-folder")).unwrap();
    a.sync(&keys);
    b.sync(&keys);
    let mut last = (Vec::new(), Vec::new());
    for _ in 0..3 {
        client.sync(cloud_a.path(), cloud_b.path());
        last = (a.sync(&keys).failed, b.sync(&keys).failed);
    }
    client.sync(cloud_a.path(), cloud_b.path());
    assert!(last.0.is_empty() && last.1.is_empty(), "{last:?}");
    assert_eq!(names(cloud_a.path()), before);
    let folder_keys = files(cloud_a.path())
        .into_iter()
        .filter(|(n, _)| n.starts_with(".kluis-folder"))
        .count();
    assert_eq!(folder_keys, 1);
    assert_eq!(a.files(), b.files());
}

/// The sync client may resolve the race by keeping the other device's `.kluis-folder` in
/// place of ours. Within the window the device adopts it whatever the ids (its own is gone,
/// so no other device can adopt it); after the window it keeps its pin and reports it.
#[test]
fn our_folder_key_replaced_by_the_other_device_s_within_and_after_the_window() {
    for (window, adopted) in [(Duration::from_secs(600), true), (Duration::ZERO, false)] {
        let keys = TestKeys::new();
        let cloud = tempfile::tempdir().unwrap();
        let mut a = Device::new(cloud.path(), true);
        a.window = window;
        a.write("a.txt", b"A");
        a.sync(&keys);
        let ours = key_id(cloud.path());
        let before = names(cloud.path());
        // Replaced by one with a larger id (the smaller-id case is the plain race).
        plant_as(&keys, cloud.path(), ".kluis-folder", |id| {
            id > ours.as_str()
        });
        let r = a.sync(&keys);
        let after = names(cloud.path());
        assert_eq!(after.len(), 1, "{after:?}");
        if adopted {
            assert!(r.failed.is_empty(), "{r:?}");
            assert_ne!(after, before, "not re-named to the key in place");
        } else {
            assert_eq!(after, before);
            assert!(
                r.failed.iter().any(|(f, why)| f == ".kluis-folder"
                    && why.contains("a second folder key appeared in SEALED")),
                "{r:?}"
            );
        }
    }
}

/// The test keys, counting every unwrap.
struct Counting<'a> {
    keys: &'a TestKeys,
    opened: std::cell::Cell<usize>,
}

impl kluis_core::Unwrap for Counting<'_> {
    fn accepts(&self, stanza: &kluis_core::Stanza) -> bool {
        self.keys.key.accepts(stanza)
    }
    fn unwrap(
        &self,
        requests: &[kluis_core::UnwrapRequest<'_>],
    ) -> Vec<Result<kluis_core::Share, kluis_core::UnwrapError>> {
        self.opened.set(self.opened.get() + requests.len());
        self.keys.key.unwrap(requests)
    }
}

impl kluis_sync::Keys for Counting<'_> {
    fn seal_to(&self) -> Result<kluis_sync::Sealing, String> {
        kluis_sync::Keys::seal_to(self.keys)
    }
    fn unwrappers(&self) -> Vec<&dyn kluis_core::Unwrap> {
        vec![self]
    }
}

/// Documents sealed to the label that are no folder key (any payload) are opened once, as a
/// planted folder key is, not on every pass: each opening is an audited unwrap that counts
/// against the person's rate limit, and the provider can start passes at will (any upload).
#[test]
fn planted_documents_that_are_no_folder_key_are_not_opened_on_every_pass() {
    let keys = TestKeys::new();
    let cloud = tempfile::tempdir().unwrap();
    let mut a = Device::new(cloud.path(), true);
    a.window = Duration::ZERO;
    a.write("a.txt", b"A");
    a.sync(&keys);
    let slots = vec![Slot::single(Recipient::Label(
        keys.key.public_key().clone(),
    ))];
    for i in 0..4 {
        let doc = kluis_core::seal(&slots, &Metadata::default(), b"not a folder key").unwrap();
        std::fs::write(cloud.path().join(format!(".kluis-folder-{i}")), doc).unwrap();
    }
    let counting = Counting {
        keys: &keys,
        opened: std::cell::Cell::new(0),
    };
    let r = a.sync(&counting);
    assert!(
        r.failed
            .iter()
            .filter(|(f, _)| f.starts_with(".kluis-folder-"))
            .count()
            >= 4,
        "{r:?}"
    );
    let first = counting.opened.get();
    assert!(first <= 4, "{first} unwraps in the first run");
    for _ in 0..3 {
        a.restart();
        let r = a.sync(&counting);
        assert!(
            r.failed
                .iter()
                .filter(|(f, _)| f.starts_with(".kluis-folder-"))
                .count()
                >= 4,
            "still reported: {r:?}"
        );
    }
    assert_eq!(
        counting.opened.get(),
        first,
        "the planted documents were unwrapped again on later passes"
    );
}

/// `--trust-folder-key` left in a device's command line (a service set up as the new-device
/// message says) must not stop the device once the chosen document is legitimately replaced by
/// a re-sealed copy of the same key (anyone who can delete `.kluis-folder` causes that).
#[test]
fn a_trust_flag_left_in_place_does_not_stop_the_device_after_a_re_seal() {
    let keys = TestKeys::new();
    let cloud = tempfile::tempdir().unwrap();
    let mut a = Device::new(cloud.path(), true);
    a.window = Duration::ZERO;
    a.write("plan.txt", b"the plan");
    a.sync(&keys);
    let ours = key_id(cloud.path());
    plant(&keys, cloud.path(), &ours);
    let mut b = Device::new(cloud.path(), true);
    b.trust = Some(ours.clone());
    let r = b.sync(&keys);
    assert!(r.stopped.is_empty(), "{r:?}");
    assert_eq!(b.read("plan.txt").as_deref(), Some(&b"the plan"[..]));
    let before = names(cloud.path());
    // The provider deletes both folder keys; b seals its cached key again (a new document id).
    for e in std::fs::read_dir(cloud.path()).unwrap() {
        let p = e.unwrap().path();
        if file_name_of(&p).starts_with(".kluis-folder") {
            std::fs::remove_file(p).unwrap();
        }
    }
    b.write("reply.txt", b"ok");
    let r = b.sync(&keys);
    assert!(r.stopped.is_empty(), "{r:?}");
    b.restart();
    b.write("later.txt", b"later");
    let r = b.sync(&keys);
    assert!(r.stopped.is_empty(), "stopped after the re-seal: {r:?}");
    assert!(r.sealed.contains(&"later.txt".to_owned()), "{r:?}");
    let after = names(cloud.path());
    assert!(
        before.iter().all(|n| after.contains(n)),
        "{before:?} -> {after:?}"
    );
}

fn file_name_of(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

/// A device whose cached key is lost (a wiped or copied state folder) and whose pinned
/// document the provider deleted must not seal a fresh random key: that would re-open the
/// creation window (and re-name its files under a key the others refuse), so the key the
/// provider plants next is adopted.
#[test]
fn a_lost_cache_and_a_deleted_folder_key_open_no_new_window() {
    let keys = TestKeys::new();
    let cloud = tempfile::tempdir().unwrap();
    let mut a = Device::new(cloud.path(), true);
    a.window = Duration::ZERO;
    a.write("a.txt", b"A");
    a.sync(&keys);
    let mut b = Device::new(cloud.path(), true);
    b.sync(&keys);
    assert_eq!(b.read("a.txt").as_deref(), Some(&b"A"[..]));
    let before = names(cloud.path());
    b.restart();
    for e in std::fs::read_dir(b.home.path().join("state")).unwrap() {
        let p = e.unwrap().path().join("folder.key");
        if p.exists() {
            std::fs::remove_file(p).unwrap();
        }
    }
    std::fs::remove_file(cloud.path().join(kluis_sync::FOLDER_KEY_FILE)).unwrap();
    b.sync(&keys);
    // The provider plants a key of its own with a smaller id than whatever is there.
    let smallest = files(cloud.path())
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| n.starts_with(".kluis-folder"))
        .map(|n| key_id_of(&cloud.path().join(n)))
        .min()
        .unwrap_or_else(|| "g".into());
    plant(&keys, cloud.path(), &smallest);
    b.restart();
    b.write("b.txt", b"B");
    b.sync(&keys);
    // a.txt's sealed file is still named by the folder's real key (not re-named under a
    // fresh key of b's, nor under the planted one).
    let after = names(cloud.path());
    assert!(
        before.iter().all(|n| after.contains(n)),
        "re-named: {before:?} -> {after:?}"
    );
}

fn key_id_of(p: &Path) -> String {
    doc_id(&std::fs::read(p).unwrap())
}
