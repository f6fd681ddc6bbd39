//! Attacks on kluis sync from a hostile SEALED folder (the cloud provider, a colleague who can
//! write to the shared folder, a crafted file) and on its confidentiality (review of issue 18).

#[allow(unused_imports)]
mod common;

use std::path::Path;

use common::{Device, TestKeys, files};
use kluis_core::{LabelKey, Metadata, Recipient, Slot, Unwrap};
use kluis_sync::{Keys, Sealing};

/// A person who may open two labels: the pair's label `hr` and a more restricted `board`.
/// Sealing goes to `hr`, the pair's label.
struct TwoLabels {
    hr: TestKeys,
    board: LabelKey,
}

impl Keys for TwoLabels {
    fn seal_to(&self) -> Result<Sealing, String> {
        self.hr.seal_to()
    }
    fn unwrappers(&self) -> Vec<&dyn Unwrap> {
        vec![&self.hr.key, &self.board]
    }
}

fn two_labels() -> TwoLabels {
    TwoLabels {
        hr: TestKeys::new(),
        board: LabelKey::generate("board", 1).unwrap(),
    }
}

/// A document sealed to `board` only (the attacker took it from elsewhere: they cannot open it).
fn board_doc(keys: &TwoLabels, stored_path: &str, content: &[u8]) -> Vec<u8> {
    let slots = vec![Slot::single(Recipient::Label(
        keys.board.public_key().clone(),
    ))];
    kluis_core::seal(&slots, &Metadata::default().name(stored_path), content).unwrap()
}

/// Whether anything in `sealed` that the `hr` key alone opens holds `needle`: what every
/// member of `hr` (the attacker included) could read.
fn hr_can_read(keys: &TwoLabels, sealed: &Path, needle: &[u8]) -> Vec<String> {
    let hr: [&dyn Unwrap; 1] = [&keys.hr.key];
    let mut out = Vec::new();
    for (name, data) in files(sealed) {
        if let Ok((plain, _)) = kluis_core::open(&data, &hr) {
            if plain.windows(needle.len()).any(|w| w == needle) {
                out.push(name);
            }
        }
    }
    out
}

const SECRET: &[u8] = b"BOARD-ONLY: merger with ACME on 1 March";

/// A member of `hr` who is not on `board` drops a `board` document into the shared `hr` SEALED
/// folder under a stray name (as a sync client's conflict copy would be named). A person on
/// both labels syncs: sync must not open it and seal it again to `hr` (the stray rule seals
/// the conflict copy under its own name), which would let every `hr` member read a `board`
/// document.
#[test]
fn a_document_of_another_label_is_not_laundered_into_the_pairs_label_as_a_stray() {
    let keys = two_labels();
    let cloud = tempfile::tempdir().unwrap();
    let mut victim = Device::new(cloud.path(), false);
    victim.write("notes.txt", b"hr notes");
    victim.sync(&keys);
    std::fs::write(
        cloud.path().join("minutes-LAPTOP.txt.kluis"),
        board_doc(&keys, "minutes.txt", SECRET),
    )
    .unwrap();
    for _ in 0..3 {
        victim.sync(&keys);
    }
    let leaked = hr_can_read(&keys, cloud.path(), SECRET);
    assert!(
        leaked.is_empty(),
        "a board document was sealed again to hr: {leaked:?}"
    );
}

/// The same document dropped under the name its stored path gives: opened into PLAIN, the
/// person edits it (not knowing it is a board document), and the edit is sealed to `hr`.
#[test]
fn a_document_of_another_label_is_not_opened_into_the_pair_and_resealed_after_an_edit() {
    let keys = two_labels();
    let cloud = tempfile::tempdir().unwrap();
    let mut victim = Device::new(cloud.path(), false);
    victim.write("notes.txt", b"hr notes");
    victim.sync(&keys);
    std::fs::write(
        cloud.path().join("minutes.txt.kluis"),
        board_doc(&keys, "minutes.txt", SECRET),
    )
    .unwrap();
    let r = victim.sync(&keys);
    if let Some(mut text) = victim.read("minutes.txt") {
        text.extend_from_slice(b"\nedited by the victim\n");
        std::fs::write(victim.plain().join("minutes.txt"), text).unwrap();
        victim.sync(&keys);
    }
    let leaked = hr_can_read(&keys, cloud.path(), SECRET);
    assert!(
        leaked.is_empty(),
        "a board document was sealed again to hr: {leaked:?} (first pass: {r:?})"
    );
    assert!(
        r.failed.iter().any(|(p, _)| p.contains("minutes.txt")),
        "the refusal is listed: {r:?}"
    );
}

/// A `.kluis-folder…` document sealed to another label, with a smaller document id than the
/// folder key in force, planted in SEALED (hidden names): it is neither adopted nor unwrapped;
/// sync goes on with the folder key it has, names unchanged.
#[test]
fn a_folder_key_of_another_label_is_not_adopted() {
    let keys = two_labels();
    let cloud = tempfile::tempdir().unwrap();
    let mut victim = Device::new(cloud.path(), true);
    victim.write("notes.txt", b"hr notes");
    victim.sync(&keys);
    let names_before: Vec<String> = files(cloud.path()).into_iter().map(|(n, _)| n).collect();
    let doc_id = |bytes: &[u8]| {
        kluis_core::Header::read(&mut &bytes[..])
            .unwrap()
            .doc_id()
            .to_string()
    };
    let ours = doc_id(&std::fs::read(cloud.path().join(".kluis-folder")).unwrap());
    // A folder-key document the attacker knows, sealed to `board` (which the victim may open),
    // with a smaller document id than ours.
    let mut payload = b"kluis-sync/v1 folder-key\0".to_vec();
    payload.extend_from_slice(&[7u8; 32]);
    let slots = vec![Slot::single(Recipient::Label(
        keys.board.public_key().clone(),
    ))];
    let planted = (0..256)
        .map(|_| kluis_core::seal(&slots, &Metadata::default(), &payload).unwrap())
        .find(|d| doc_id(d) < ours)
        .expect("a smaller document id in 256 tries");
    std::fs::write(cloud.path().join(".kluis-folder-attacker"), planted).unwrap();
    victim.write("more.txt", b"more hr notes");
    let r = victim.sync(&keys);
    assert!(r.sealed.contains(&"more.txt".to_owned()), "{r:?}");
    let names_after: Vec<String> = files(cloud.path()).into_iter().map(|(n, _)| n).collect();
    for n in &names_before {
        assert!(
            names_after.contains(n),
            "{n} was re-named under a folder key sealed to another label: {names_after:?}"
        );
    }
}

/// With `--hide-names` the provider must not learn names; the sealed metadata stores the
/// relative path, and its length shows in the header without a key
/// (`Header::name_len_bound`) unless the name is padded. Two paths of very different lengths
/// must give the same bound.
#[test]
fn hidden_names_do_not_show_the_length_of_the_path() {
    let keys = TestKeys::new();
    let cloud = tempfile::tempdir().unwrap();
    let mut a = Device::new(cloud.path(), true);
    let short = "a.txt";
    let long = "board/strategy-2027-acquisition-of-acme-and-layoffs-confidential.docx";
    a.write(short, b"same content");
    a.write(long, b"same content");
    let r = a.sync(&keys);
    assert_eq!(r.sealed.len(), 2, "{r:?}");
    let mut bounds = Vec::new();
    for (name, data) in files(cloud.path()) {
        if name.starts_with(".kluis-folder") {
            continue;
        }
        let h = kluis_core::Header::read(&mut &data[..]).unwrap();
        bounds.push(h.name_len_bound());
    }
    assert_eq!(bounds.len(), 2);
    assert_eq!(
        bounds[0],
        bounds[1],
        "the header shows each path's length: {bounds:?} (short {}, long {})",
        short.len(),
        long.len()
    );
    // And both open to their own paths on another device.
    let mut b = Device::new(cloud.path(), true);
    b.sync(&keys);
    assert_eq!(b.read(long).as_deref(), Some(&b"same content"[..]));
}

/// Symbolic links in PLAIN (to a file such as `~/.ssh/id_ed25519`, or to a folder outside) are
/// not followed: nothing of their targets is sealed into the cloud folder.
#[cfg(unix)]
#[test]
fn symlinks_in_plain_are_not_followed_into_the_cloud() {
    let keys = TestKeys::new();
    let cloud = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("id_ed25519"), b"PRIVATE-KEY-MARKER").unwrap();
    std::fs::create_dir(outside.path().join("dir")).unwrap();
    std::fs::write(outside.path().join("dir/inner.txt"), b"PRIVATE-KEY-MARKER").unwrap();
    for hide in [false, true] {
        let mut a = Device::new(cloud.path(), hide);
        a.write("ok.txt", b"fine");
        std::os::unix::fs::symlink(
            outside.path().join("id_ed25519"),
            a.plain().join("key-link"),
        )
        .unwrap();
        std::os::unix::fs::symlink(outside.path().join("dir"), a.plain().join("dir-link")).unwrap();
        let r = a.sync(&keys);
        assert!(r.sealed.contains(&"ok.txt".to_owned()), "{r:?}");
        assert!(
            r.sealed.iter().all(|p| !p.contains("link")),
            "a symbolic link was sealed: {r:?}"
        );
        // Opened on another device: only ok.txt arrives.
        let mut b = Device::new(cloud.path(), hide);
        b.sync(&keys);
        for (n, data) in b.files() {
            assert!(
                !data.windows(18).any(|w| w == b"PRIVATE-KEY-MARKER"),
                "{n} carries a symbolic link's target"
            );
        }
        // Leave the cloud folder clean for the next mode.
        for e in std::fs::read_dir(cloud.path()).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                std::fs::remove_dir_all(p).unwrap();
            } else {
                std::fs::remove_file(p).unwrap();
            }
        }
    }
}

/// Symbolic links planted in SEALED (by the provider or a colleague) do not make sync write
/// outside SEALED: a folder link in the way of a sealed path is refused, a file link under a
/// sealed name is replaced, not written through.
#[cfg(unix)]
#[test]
fn symlinks_planted_in_sealed_do_not_make_sync_write_outside() {
    let keys = TestKeys::new();
    let cloud = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("bashrc"), b"keep me").unwrap();
    let mut a = Device::new(cloud.path(), false);
    a.write("sub/a.txt", b"v1");
    a.sync(&keys);
    // The `sub` folder of SEALED becomes a link to a folder outside; a new sealed name
    // becomes a link to a file outside.
    std::fs::remove_dir_all(cloud.path().join("sub")).unwrap();
    std::os::unix::fs::symlink(outside.path(), cloud.path().join("sub")).unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("bashrc"),
        cloud.path().join("new.txt.kluis"),
    )
    .unwrap();
    a.write("sub/a.txt", b"v2 longer");
    a.write("sub/b.txt", b"b");
    a.write("new.txt", b"new");
    let mut r = a.sync(&keys);
    for _ in 0..2 {
        r = a.sync(&keys);
    }
    let out: Vec<String> = files(outside.path()).into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        out,
        vec!["bashrc".to_owned()],
        "written outside SEALED: {r:?}"
    );
    assert_eq!(
        std::fs::read(outside.path().join("bashrc")).unwrap(),
        b"keep me"
    );
    assert!(
        std::fs::symlink_metadata(cloud.path().join("new.txt.kluis"))
            .unwrap()
            .is_file(),
        "the link was replaced by the sealed file"
    );
    // PLAIN keeps its files (the sealed copies behind the link are not trusted as deleted
    // into anything but the trash).
    assert_eq!(a.read("new.txt").as_deref(), Some(&b"new"[..]));
}

/// The state folder (journal with real names, trash with plain copies, the cached folder key)
/// is owner-only, and made so again when someone opened it up.
#[cfg(unix)]
#[test]
fn the_state_folder_and_cached_folder_key_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let keys = TestKeys::new();
    let cloud = tempfile::tempdir().unwrap();
    let mut a = Device::new(cloud.path(), true);
    a.write("x.txt", b"x");
    a.sync(&keys);
    let state_root = a.home.path().join("state");
    let pair = std::fs::read_dir(&state_root)
        .unwrap()
        .flatten()
        .find(|e| e.path().is_dir())
        .unwrap()
        .path();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state_root), 0o700);
    assert_eq!(mode(&pair), 0o700);
    assert_eq!(mode(&pair.join("folder.key")), 0o600);
    // Opened up by someone: the next run closes the folders again.
    std::fs::set_permissions(&state_root, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&pair, std::fs::Permissions::from_mode(0o755)).unwrap();
    a.restart();
    a.sync(&keys);
    assert_eq!(mode(&state_root), 0o700);
    assert_eq!(mode(&pair), 0o700);
}

/// A second device that forgets `--hide-names` on a SEALED folder synced with hidden names
/// (an easy mistake: the flag is per device) must not publish the real names: before, it
/// opened every hidden-named document as a stray, removed it, and sealed its conflict copy
/// under its real path (`secret/plan (conflict …).txt.kluis`), which the hidden-names devices
/// never see (their scan is flat) while their own copy went to the trash.
#[test]
fn a_device_without_hide_names_does_not_publish_the_names_of_a_hidden_folder() {
    let keys = TestKeys::new();
    let cloud = tempfile::tempdir().unwrap();
    let mut a = Device::new(cloud.path(), true);
    a.write("secret/acquisition-plan.txt", b"plan");
    a.sync(&keys);
    let mut b = Device::new(cloud.path(), false);
    b.syncer = None;
    let refused = kluis_sync::Syncer::new(&b.options())
        .and_then(|mut s| s.run(&keys, 3).map(|_| ()))
        .err();
    for (name, _) in files(cloud.path()) {
        assert!(
            !name.contains("acquisition"),
            "a real name reached SEALED: {name}"
        );
    }
    let why = refused.expect("the run is refused").to_string();
    assert!(why.contains("--hide-names"), "{why}");
    // The hidden-names device still has its file.
    a.sync(&keys);
    assert_eq!(
        a.read("secret/acquisition-plan.txt").as_deref(),
        Some(&b"plan"[..])
    );
}

/// The other way round: a device with `--hide-names` joining a SEALED folder synced without
/// them must not create a folder key and turn the others' documents into strays (opened as
/// conflict copies and removed from SEALED, so the other devices' files went to their trash).
#[test]
fn a_device_with_hide_names_does_not_take_over_a_folder_synced_without() {
    let keys = TestKeys::new();
    let cloud = tempfile::tempdir().unwrap();
    let mut a = Device::new(cloud.path(), false);
    a.write("x.txt", b"x");
    a.write("sub/y.txt", b"y");
    a.sync(&keys);
    let before = files(cloud.path());
    let b = Device::new(cloud.path(), true);
    let refused = kluis_sync::Syncer::new(&b.options())
        .and_then(|mut s| s.run(&keys, 3).map(|_| ()))
        .err();
    assert_eq!(files(cloud.path()), before, "SEALED was changed");
    let why = refused.expect("the run is refused").to_string();
    assert!(why.contains("without hidden names"), "{why}");
    let r = a.sync(&keys);
    assert!(r.trashed.is_empty(), "{r:?}");
    assert_eq!(a.read("x.txt").as_deref(), Some(&b"x"[..]));
}

/// The nesting check is made when a run starts; a watching process lives for weeks. If PLAIN
/// is replaced meanwhile by a symbolic link into SEALED (a folder moved into the cloud folder
/// and a link left behind), the next pass must not write plaintext into SEALED.
#[cfg(unix)]
#[test]
fn plain_replaced_by_a_link_into_sealed_while_running_writes_no_plaintext_there() {
    let keys = TestKeys::new();
    let cloud = tempfile::tempdir().unwrap();
    let mut a = Device::new(cloud.path(), true);
    a.write("x.txt", b"PLAINTEXT-MARKER from a");
    a.sync(&keys);
    let mut b = Device::new(cloud.path(), true);
    b.sync(&keys);
    assert!(b.read("x.txt").is_some());
    a.write("y.txt", b"PLAINTEXT-MARKER new");
    a.sync(&keys);
    // B's PLAIN goes away and a link to SEALED takes its place, while B's syncer runs.
    std::fs::rename(b.plain(), b.home.path().join("moved")).unwrap();
    std::os::unix::fs::symlink(cloud.path(), b.plain()).unwrap();
    let result = b.syncer.as_mut().unwrap().pass(&keys);
    common::assert_no_leak(cloud.path(), b"PLAINTEXT-MARKER");
    let why = result.expect_err("the pass is refused").to_string();
    assert!(why.contains("inside"), "{why}");
}

/// The same with only a top-level document whose real name begins with 26 lowercase letters
/// (it looks like a hidden name at first sight).
#[test]
fn a_device_with_hide_names_tells_a_long_lowercase_real_name_from_a_hidden_one() {
    let keys = TestKeys::new();
    let cloud = tempfile::tempdir().unwrap();
    let mut a = Device::new(cloud.path(), false);
    a.write("annualreportforshareholders.txt", b"x");
    a.sync(&keys);
    let before = files(cloud.path());
    let b = Device::new(cloud.path(), true);
    let refused = kluis_sync::Syncer::new(&b.options())
        .and_then(|mut s| s.run(&keys, 3).map(|_| ()))
        .err();
    assert_eq!(files(cloud.path()), before, "SEALED was changed");
    assert!(refused.is_some());
}
