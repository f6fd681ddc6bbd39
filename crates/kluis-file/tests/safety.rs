//! Never losing data: no overwrite without force, failures leave nothing behind, originals
//! removed only after verification, tampering detected, symbolic links not followed.

mod common;

use std::fs;

use common::*;
use kluis_core::{Identity, LabelKey, Recipient, Slot};
use kluis_file::{
    Error, OpenOptions, Outcome, SealOptions, open_file, open_paths, seal_file, seal_paths,
};

#[test]
fn seal_does_not_overwrite_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let hr = LabelKey::generate("hr", 1).unwrap();
    let input = dir.path().join("a.txt");
    fs::write(&input, b"one").unwrap();
    let slots = [label_slot(&hr)];
    seal_file(&input, &slots, &SealOptions::default()).unwrap();
    let sealed = dir.path().join("a.txt.kluis");
    let first = fs::read(&sealed).unwrap();

    fs::write(&input, b"two").unwrap();
    let err = seal_file(&input, &slots, &SealOptions::default()).unwrap_err();
    assert!(
        matches!(&err, Error::Exists { path } if *path == sealed),
        "{err}"
    );
    assert!(err.to_string().contains("--force"), "{err}");
    assert_eq!(fs::read(&sealed).unwrap(), first, "left as it was");
    assert_no_temp(dir.path());

    let mut force = SealOptions::default();
    force.force = true;
    seal_file(&input, &slots, &force).unwrap();
    let (plain, _) = kluis_core::open(&fs::read(&sealed).unwrap(), &[&hr]).unwrap();
    assert_eq!(plain, b"two");
    assert_no_temp(dir.path());
}

#[test]
fn open_does_not_overwrite_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let hr = LabelKey::generate("hr", 1).unwrap();
    let input = dir.path().join("a.txt");
    fs::write(&input, b"sealed contents").unwrap();
    seal_file(&input, &[label_slot(&hr)], &SealOptions::default()).unwrap();
    fs::write(&input, b"newer local edits").unwrap();

    let sealed = dir.path().join("a.txt.kluis");
    let err = open_file(&sealed, &[&hr], &OpenOptions::default()).unwrap_err();
    assert!(matches!(err, Error::Exists { .. }), "{err}");
    assert_eq!(fs::read(&input).unwrap(), b"newer local edits");

    // A link planted at the output name is not written through either.
    #[cfg(unix)]
    {
        let victim = dir.path().join("victim");
        fs::write(&victim, b"keep").unwrap();
        fs::remove_file(&input).unwrap();
        std::os::unix::fs::symlink(&victim, &input).unwrap();
        let err = open_file(&sealed, &[&hr], &OpenOptions::default()).unwrap_err();
        assert!(matches!(err, Error::Exists { .. }), "{err}");
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
        // With force the link itself is replaced, never its target.
        let mut force = OpenOptions::default();
        force.force = true;
        open_file(&sealed, &[&hr], &force).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
        assert!(
            !fs::symlink_metadata(&input)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read(&input).unwrap(), b"sealed contents");
    }
    #[cfg(not(unix))]
    {
        let mut force = OpenOptions::default();
        force.force = true;
        open_file(&sealed, &[&hr], &force).unwrap();
        assert_eq!(fs::read(&input).unwrap(), b"sealed contents");
    }
    assert_no_temp(dir.path());
}

#[test]
fn failed_open_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let hr = LabelKey::generate("hr", 1).unwrap();
    let other = LabelKey::generate("hr", 2).unwrap();
    let input = dir.path().join("in/a.bin");
    make_tree(dir.path(), &[("in/a.bin", data(1, 300_000))]);
    let mut options = SealOptions::default();
    options.output_dir = Some(dir.path().join("sealed"));
    seal_file(&input, &[label_slot(&hr)], &options).unwrap();
    let sealed = dir.path().join("sealed/a.bin.kluis");
    let mut open = OpenOptions::default();
    open.output_dir = Some(dir.path().join("out"));

    // The wrong key, an offline key server.
    let err = open_file(&sealed, &[&other], &open).unwrap_err();
    assert!(
        matches!(err.format_error(), Some(kluis_core::Error::NoMatchingKey)),
        "{err}"
    );
    let err = open_file(&sealed, &[&Offline], &open).unwrap_err();
    assert!(err.to_string().contains("unavailable"), "{err}");
    assert!(list(&dir.path().join("out")).is_empty());

    // Tampered in the last chunk (index 4): four chunks were decrypted to the temporary file before
    // the failure; none of it may remain.
    let mut bytes = fs::read(&sealed).unwrap();
    let at = bytes.len() - 20_000;
    bytes[at] ^= 1;
    fs::write(&sealed, &bytes).unwrap();
    let err = open_file(&sealed, &[&hr], &open).unwrap_err();
    assert!(
        matches!(
            err.format_error(),
            Some(kluis_core::Error::ChunkAuth { chunk: 4 })
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("a.bin.kluis"),
        "names the file: {err}"
    );
    assert!(
        list(&dir.path().join("out")).is_empty(),
        "no output, no temp file"
    );

    // Truncated.
    fs::write(&sealed, &bytes[..bytes.len() / 2]).unwrap();
    assert!(open_file(&sealed, &[&hr], &open).is_err());
    // Not a kluis file at all.
    fs::write(&sealed, b"plain text").unwrap();
    let err = open_file(&sealed, &[&hr], &open).unwrap_err();
    assert!(
        matches!(err.format_error(), Some(kluis_core::Error::NotSealed)),
        "{err}"
    );
    assert!(list(&dir.path().join("out")).is_empty());
    assert_eq!(fs::read(&input).unwrap(), data(1, 300_000));
}

#[test]
fn failed_seal_leaves_original_and_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let hr = LabelKey::generate("hr", 1).unwrap();
    let input = dir.path().join("a.txt");
    fs::write(&input, data(3, 200_000)).unwrap();
    // A folder stands at the output name: even with force the final rename fails after the
    // whole file was sealed to the temporary file.
    fs::create_dir(dir.path().join("a.txt.kluis")).unwrap();
    fs::write(dir.path().join("a.txt.kluis/keep"), b"x").unwrap();
    let mut force = SealOptions::default();
    force.force = true;
    let err = seal_file(&input, &[label_slot(&hr)], &force).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert_eq!(fs::read(&input).unwrap(), data(3, 200_000));
    assert_eq!(fs::read(dir.path().join("a.txt.kluis/keep")).unwrap(), b"x");
    assert_no_temp(dir.path());

    // No recipients: refused up front.
    assert!(matches!(
        seal_file(&input, &[], &SealOptions::default()),
        Err(Error::NoRecipients)
    ));

    // A read-only output folder (only meaningful when permissions apply to us).
    #[cfg(unix)]
    if !permissions_ignored(dir.path()) {
        use std::os::unix::fs::PermissionsExt;
        let ro = dir.path().join("ro");
        fs::create_dir(&ro).unwrap();
        fs::set_permissions(&ro, fs::Permissions::from_mode(0o500)).unwrap();
        let mut options = SealOptions::default();
        options.output_dir = Some(ro.clone());
        let err = seal_file(&input, &[label_slot(&hr)], &options).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
        fs::set_permissions(&ro, fs::Permissions::from_mode(0o700)).unwrap();
        assert!(list(&ro).is_empty());
    }
}

#[test]
fn remove_original_only_after_verification() {
    let dir = tempfile::tempdir().unwrap();
    let hr = LabelKey::generate("hr", 1).unwrap();
    let holder = Identity::generate().unwrap();
    make_tree(
        dir.path(),
        &[
            ("d/a.txt", data(1, 100_000)),
            ("d/sub/b.txt", data(2, 0)),
            ("e.txt", data(3, 10)),
            ("f.txt", data(4, 10)),
        ],
    );
    let slots = [label_slot(&hr)];

    // Verified with the label key: originals removed, sealed copies open.
    let counting = Counting::new(&hr);
    let keys: [&dyn kluis_core::Unwrap; 1] = [&counting];
    let mut options = SealOptions::default();
    options.output_dir = Some(dir.path().join("sealed"));
    options.remove_original = true;
    options.verify_with = &keys;
    let reports = seal_paths(&[dir.path().join("d")], &slots, &options).unwrap();
    assert_eq!(reports.len(), 2);
    for r in &reports {
        assert!(
            matches!(r.outcome, Outcome::OriginalRemoved),
            "{:?}",
            r.outcome
        );
        assert!(!r.input.exists());
    }
    assert_eq!(counting.calls(), 1, "verification is one batch");
    let mut open = OpenOptions::default();
    open.output_dir = Some(dir.path().join("back"));
    assert_all_done(&open_paths(&[dir.path().join("sealed")], &[&hr], &open).unwrap());
    assert_eq!(
        fs::read(dir.path().join("back/d/a.txt")).unwrap(),
        data(1, 100_000)
    );

    // No key to verify with: kept, and said so.
    let mut options = SealOptions::default();
    options.remove_original = true;
    let r = seal_file(&dir.path().join("e.txt"), &slots, &options).unwrap();
    assert!(matches!(
        r.outcome,
        Outcome::OriginalKept(Error::NoVerifyKeys { .. })
    ));
    assert!(r.outcome.is_failure());
    assert!(dir.path().join("e.txt").exists());
    assert!(dir.path().join("e.txt.kluis").exists());

    // Sealed to a label whose server is offline, or to a key we do not hold: kept.
    let offline: [&dyn kluis_core::Unwrap; 1] = [&Offline];
    options.verify_with = &offline;
    let r = seal_file(&dir.path().join("f.txt"), &slots, &options).unwrap();
    match &r.outcome {
        Outcome::OriginalKept(e @ Error::NotVerified { .. }) => {
            assert!(e.to_string().contains("kept"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert!(dir.path().join("f.txt").exists());
    let wrong: [&dyn kluis_core::Unwrap; 1] = [&holder];
    options.verify_with = &wrong;
    options.force = true;
    let r = seal_file(&dir.path().join("f.txt"), &slots, &options).unwrap();
    assert!(matches!(r.outcome, Outcome::OriginalKept(_)));
    assert_eq!(fs::read(dir.path().join("f.txt")).unwrap(), data(4, 10));

    // Double key verified with both halves.
    let both: [&dyn kluis_core::Unwrap; 2] = [&hr, &holder];
    options.verify_with = &both;
    let double = Slot::double(
        Recipient::Label(hr.public_key().clone()),
        Recipient::Key(holder.public_key()),
    )
    .unwrap();
    let r = seal_file(&dir.path().join("f.txt"), &[double], &options).unwrap();
    assert!(
        matches!(r.outcome, Outcome::OriginalRemoved),
        "{:?}",
        r.outcome
    );
    assert!(!dir.path().join("f.txt").exists());
}

#[test]
fn output_folder_inside_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let hr = LabelKey::generate("hr", 1).unwrap();
    make_tree(dir.path(), &[("d/a.txt", data(1, 3))]);
    let mut options = SealOptions::default();
    options.output_dir = Some(dir.path().join("d/sealed"));
    let err = seal_paths(&[dir.path().join("d")], &[label_slot(&hr)], &options).unwrap_err();
    assert!(matches!(err, Error::OutputInsideInput { .. }), "{err}");
    assert!(list(&dir.path().join("d/sealed")).is_empty());
}

#[test]
fn two_inputs_for_one_output_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let hr = LabelKey::generate("hr", 1).unwrap();
    make_tree(
        dir.path(),
        &[("x/a.txt", data(1, 3)), ("y/a.txt", data(2, 3))],
    );
    for hide in [false, true] {
        let mut options = SealOptions::default();
        options.output_dir = Some(dir.path().join(format!("out{hide}")));
        options.hide_names = hide;
        let reports = seal_paths(
            &[dir.path().join("x/a.txt"), dir.path().join("y/a.txt")],
            &[label_slot(&hr)],
            &options,
        )
        .unwrap();
        assert!(matches!(reports[0].outcome, Outcome::Done));
        assert!(matches!(
            reports[1].outcome,
            Outcome::Failed(Error::Collision { .. })
        ));
    }
}

#[cfg(unix)]
#[test]
fn symlinks_are_not_followed_out_of_the_tree() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let hr = LabelKey::generate("hr", 1).unwrap();
    make_tree(
        dir.path(),
        &[
            ("outside/secret.txt", data(1, 10)),
            ("tree/a.txt", data(2, 10)),
        ],
    );
    symlink(dir.path().join("outside"), dir.path().join("tree/dirlink")).unwrap();
    symlink(
        dir.path().join("outside/secret.txt"),
        dir.path().join("tree/filelink"),
    )
    .unwrap();
    let mut options = SealOptions::default();
    options.output_dir = Some(dir.path().join("sealed"));
    let reports = seal_paths(&[dir.path().join("tree")], &[label_slot(&hr)], &options).unwrap();
    let skipped = reports
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Skipped(kluis_file::Skip::Symlink)))
        .count();
    assert_eq!(skipped, 2);
    assert_eq!(
        list(&dir.path().join("sealed")),
        ["tree", "tree/a.txt.kluis"].map(std::path::PathBuf::from)
    );

    // Opening through a link planted in the output folder is refused.
    let sealed = kluis_core::seal(
        &[label_slot(&hr)],
        &kluis_core::Metadata::default().name("photos/a.jpg"),
        b"x",
    )
    .unwrap();
    fs::create_dir(dir.path().join("in")).unwrap();
    fs::write(dir.path().join("in/p.kluis"), sealed).unwrap();
    fs::create_dir(dir.path().join("out")).unwrap();
    symlink(dir.path().join("outside"), dir.path().join("out/photos")).unwrap();
    let mut open = OpenOptions::default();
    open.output_dir = Some(dir.path().join("out"));
    // (A folder open: a document given on its own restores no folders at all.)
    let reports = open_paths(&[dir.path().join("in")], &[&hr], &open).unwrap();
    assert!(
        matches!(
            reports[0].outcome,
            Outcome::Failed(Error::SymlinkInOutput { .. })
        ),
        "{:?}",
        reports[0].outcome
    );
    assert_eq!(
        list(&dir.path().join("outside")),
        ["secret.txt"].map(std::path::PathBuf::from)
    );

    // A link given directly is not followed either.
    assert!(matches!(
        seal_file(
            &dir.path().join("tree/filelink"),
            &[label_slot(&hr)],
            &SealOptions::default()
        ),
        Err(Error::NotAFile { .. })
    ));
}

/// A file written to while it is sealed is refused; an original changed after sealing is not
/// removed (its sealed copy no longer matches).
#[test]
fn changes_during_a_run_are_detected() {
    use kluis_file::Event;
    use std::io::Write;

    let dir = tempfile::tempdir().unwrap();
    let hr = LabelKey::generate("hr", 1).unwrap();
    let input = dir.path().join("busy.log");
    fs::write(&input, data(1, 3 * 1024 * 1024)).unwrap();

    // Appended to after the first block was read.
    let append = |e: Event<'_>| {
        if let Event::Read { input, .. } = e {
            let mut f = fs::OpenOptions::new().append(true).open(input).unwrap();
            f.write_all(b"more").unwrap();
        }
    };
    let mut options = SealOptions::default();
    options.progress = Some(&append);
    let err = seal_file(&input, &[label_slot(&hr)], &options).unwrap_err();
    assert!(matches!(err, Error::Changed { .. }), "{err}");
    assert!(!dir.path().join("busy.log.kluis").exists());
    assert_no_temp(dir.path());

    // Rewritten in place, same size, between sealing and verification.
    let len = fs::metadata(&input).unwrap().len() as usize;
    let rewrite = |e: Event<'_>| {
        if let Event::Unlocking { .. } = e {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .open(dir.path().join("busy.log"))
                .unwrap();
            f.write_all(&data(2, len)).unwrap();
        }
    };
    let keys: [&dyn kluis_core::Unwrap; 1] = [&hr];
    let mut options = SealOptions::default();
    options.progress = Some(&rewrite);
    options.remove_original = true;
    options.verify_with = &keys;
    let r = seal_file(&input, &[label_slot(&hr)], &options).unwrap();
    match &r.outcome {
        Outcome::OriginalKept(Error::NotVerified { reason, .. }) => {
            assert!(matches!(**reason, Error::Changed { .. }), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(fs::read(&input).unwrap(), data(2, len));
}
