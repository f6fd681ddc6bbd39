//! Review of issue 17 (defects 4 and 8) at the library level: attacks that the first round
//! of fixes let through.

mod common;

use std::fs;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use kluis_core::{LabelKey, Metadata};
use kluis_file::{OpenOptions, Outcome, SealOptions, journal_path, open_paths, seal_paths};

fn doc(hr: &LabelKey, name: &str, secs: Option<u64>, text: &[u8]) -> Vec<u8> {
    let mut m = Metadata::default().name(name);
    m.modified = secs.map(|s| UNIX_EPOCH + Duration::from_secs(s));
    kluis_core::seal(&[label_slot(hr)], &m, text).unwrap()
}

/// Write `path` and make it look `age_secs` old, as a file left by an earlier run.
fn old_file(path: &std::path::Path, contents: &[u8], age_secs: u64) {
    fs::write(path, contents).unwrap();
    let f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_modified(SystemTime::now() - Duration::from_secs(age_secs))
        .unwrap();
}

/// Defect 8: the stale-temporary cleanup removes only names kluis gives its own temporary
/// files (`.kluis-tmp-` and 26 base32 characters). A re-keying journal (`.kluis-tmp-rekey-…`,
/// the only way to finish an interrupted in-place re-keying) and a person's own file that
/// merely starts with `.kluis-tmp-` are not its temporaries and must survive a run.
#[test]
fn stale_cleanup_spares_rekey_journals_and_files_that_only_look_like_temporaries() {
    let dir = tempfile::tempdir().unwrap();
    let hr = LabelKey::generate("hr", 1).unwrap();
    let src = dir.path().join("src");
    let out = dir.path().join("out");
    fs::create_dir_all(&src).unwrap();
    fs::create_dir_all(&out).unwrap();
    fs::write(src.join("a.txt"), b"a").unwrap();
    let journal = journal_path(&src.join("b.txt.kluis"));
    let spared = [
        journal.clone(),
        src.join(".kluis-tmp-my-notes.txt"),
        src.join(".kluis-tmp-AAAAAAAAAAAAAAAAAAAAAAAAAA"),
        out.join(".kluis-tmp-aaaaaaaaaaaaaaaaaaaaaaaaaa.bak"),
        out.join(".kluis-tmp-rekey-00112233445566778899aabbccddeeff"),
    ];
    for p in &spared {
        old_file(p, b"not a kluis temporary", 3600);
    }
    // A real leftover is still removed.
    let stale = out.join(".kluis-tmp-aaaaaaaaaaaaaaaaaaaaaaaaaa");
    old_file(&stale, b"leftover plaintext", 3600);

    let mut o = SealOptions::default();
    o.output_dir = Some(out.clone());
    let reports = seal_paths(&[&src], &[label_slot(&hr)], &o).unwrap();
    assert!(
        reports.iter().any(|r| matches!(r.outcome, Outcome::Done)),
        "{reports:?}"
    );
    let mut o = OpenOptions::default();
    o.output_dir = Some(dir.path().join("back"));
    open_paths(&[&out], &[&hr], &o).unwrap();
    for p in &spared {
        assert!(p.exists(), "{p:?} was removed as a stale temporary");
    }
    assert!(!stale.exists(), "a real stale temporary is still removed");
}

/// Defect 4: without `-f`, opening never replaces a file that was there before the run. Two
/// documents restoring to one path in different batches (1000 documents per batch): the
/// older fails because the file exists, and the newer must fail too, not replace it.
#[test]
fn a_newer_document_in_a_later_batch_does_not_replace_an_existing_file_without_force() {
    let hr = LabelKey::generate("hr", 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let inbox = dir.path().join("in");
    let out = dir.path().join("out");
    fs::create_dir_all(&inbox).unwrap();
    fs::create_dir_all(&out).unwrap();
    fs::write(out.join("important.txt"), b"the user's own file").unwrap();
    fs::write(
        inbox.join("a.kluis"),
        doc(&hr, "important.txt", Some(1_600_000_000), b"old"),
    )
    .unwrap();
    for i in 0..1000 {
        fs::write(
            inbox.join(format!("m{i:04}.kluis")),
            doc(&hr, &format!("f{i}"), None, b"."),
        )
        .unwrap();
    }
    fs::write(
        inbox.join("z.kluis"),
        doc(&hr, "important.txt", Some(1_700_000_000), b"attacker's"),
    )
    .unwrap();
    let mut o = OpenOptions::default();
    o.output_dir = Some(out.clone());
    let reports = open_paths(&[&inbox], &[&hr], &o).unwrap();
    assert_eq!(
        fs::read(out.join("important.txt")).unwrap(),
        b"the user's own file",
        "replaced without -f"
    );
    let z = reports
        .iter()
        .find(|r| r.input.ends_with("z.kluis"))
        .unwrap();
    assert!(
        matches!(z.outcome, Outcome::Failed(kluis_file::Error::Exists { .. })),
        "{:?}",
        z.outcome
    );
}

/// Defect 4: `-f` never replaces a sealed document, on case-insensitive file systems too.
/// APFS and NTFS compare names by Unicode case folding, under which U+212A KELVIN SIGN is
/// `k` and U+017F LONG S is `s`: `d.\u{212A}luis` is the file `d.kluis` there.
#[test]
fn names_that_fold_to_a_sealed_documents_name_are_refused() {
    for name in [
        "d.\u{212A}luis",
        "d.kluiſ",
        "sub/D.\u{212A}LUIS",
        ".KLUIS-TMP-aaaaaaaaaaaaaaaaaaaaaaaaaa",
    ] {
        assert_eq!(
            kluis_file::safe_relative_path(name),
            Err(kluis_file::NameProblem::KluisName),
            "{name:?}"
        );
    }
    assert!(kluis_file::safe_relative_path("d.kluis.txt").is_ok());
}

/// Defect 4: a stored name within the format's limits (every part under 255 bytes, 4096
/// in all) can still make a path longer than the file system allows once joined to the
/// output folder. It fails on its own, with a message that says so, not "try again".
#[cfg(unix)]
#[test]
fn a_path_too_long_for_the_file_system_says_so() {
    let hr = LabelKey::generate("hr", 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let inbox = dir.path().join("in");
    fs::create_dir_all(&inbox).unwrap();
    let part = "p".repeat(254);
    let name = vec![part.as_str(); 16].join("/");
    assert!(name.len() <= 4096);
    fs::write(inbox.join("long.kluis"), doc(&hr, &name, None, b"x")).unwrap();
    fs::write(inbox.join("ok.kluis"), doc(&hr, "ok.txt", None, b"ok")).unwrap();
    let mut o = OpenOptions::default();
    o.output_dir = Some(dir.path().join("out"));
    let reports = open_paths(&[&inbox], &[&hr], &o).unwrap();
    let long = reports
        .iter()
        .find(|r| r.input.ends_with("long.kluis"))
        .unwrap();
    let Outcome::Failed(e) = &long.outcome else {
        panic!("{:?}", long.outcome)
    };
    let text = e.to_string();
    assert!(!text.contains("try again"), "{text}");
    assert!(text.contains("shorter path"), "{text}");
    assert_eq!(fs::read(dir.path().join("out/ok.txt")).unwrap(), b"ok");
}

/// Defect 4 (folder opens list what they wrote): when a newer document in a later batch
/// fails (a damaged payload), the older one's file is what stays on disk, so its report
/// must stay done (and listed), not "superseded" by a document that wrote nothing.
#[test]
fn an_older_document_stays_reported_when_the_newer_fails_in_a_later_batch() {
    let hr = LabelKey::generate("hr", 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let inbox = dir.path().join("in");
    fs::create_dir_all(&inbox).unwrap();
    fs::write(
        inbox.join("a.kluis"),
        doc(&hr, "same.txt", Some(1_600_000_000), b"older"),
    )
    .unwrap();
    for i in 0..1000 {
        fs::write(
            inbox.join(format!("m{i:04}.kluis")),
            doc(&hr, &format!("f{i}"), None, b"."),
        )
        .unwrap();
    }
    let mut damaged = doc(&hr, "same.txt", Some(1_700_000_000), b"newer");
    *damaged.last_mut().unwrap() ^= 1;
    fs::write(inbox.join("z.kluis"), damaged).unwrap();
    let mut o = OpenOptions::default();
    o.output_dir = Some(dir.path().join("out"));
    let reports = open_paths(&[&inbox], &[&hr], &o).unwrap();
    assert_eq!(fs::read(dir.path().join("out/same.txt")).unwrap(), b"older");
    let find = |n: &str| reports.iter().find(|r| r.input.ends_with(n)).unwrap();
    assert!(
        matches!(find("z.kluis").outcome, Outcome::Failed(_)),
        "{:?}",
        find("z.kluis").outcome
    );
    assert!(
        matches!(find("a.kluis").outcome, Outcome::Done),
        "{:?}",
        find("a.kluis").outcome
    );
}
