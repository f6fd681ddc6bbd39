//! Issue 17, defects 2 and 4 at the library level: stable hidden names, the newest of two
//! documents for one path, and the names a document given on its own may restore.

mod common;

use std::fs;
use std::time::{Duration, UNIX_EPOCH};

use common::*;
use kluis_core::{LabelKey, Metadata};
use kluis_file::{
    Error, NameKey, NameProblem, OpenOptions, Outcome, SealOptions, open_paths, safe_relative_path,
    seal_paths,
};

fn doc(hr: &LabelKey, name: &str, secs: Option<u64>, text: &[u8]) -> Vec<u8> {
    let mut m = Metadata::default().name(name);
    m.modified = secs.map(|s| UNIX_EPOCH + Duration::from_secs(s));
    kluis_core::seal(&[label_slot(hr)], &m, text).unwrap()
}

#[test]
fn new_name_rules() {
    for (name, problem) in [
        ("invoice\u{202E}fdp.exe", NameProblem::FormatCharacter),
        ("a/\u{2066}b", NameProblem::FormatCharacter),
        ("zero\u{200B}width", NameProblem::FormatCharacter),
        ("d.kluis", NameProblem::KluisName),
        ("sub/D.KLUIS", NameProblem::KluisName),
        (".kluis-tmp-abc", NameProblem::KluisName),
    ] {
        assert_eq!(safe_relative_path(name), Err(problem), "{name:?}");
    }
    assert_eq!(
        safe_relative_path(&"n".repeat(256)),
        Err(NameProblem::ComponentTooLong)
    );
    assert!(safe_relative_path(&"n".repeat(255)).is_ok());
    assert!(safe_relative_path("x.kluis/inside.txt").is_ok());
}

/// The same key and path give the same hidden name; another key or path another name.
#[test]
fn hidden_names_are_stable_per_key_and_path() {
    let dir = tempfile::tempdir().unwrap();
    let hr = LabelKey::generate("hr", 1).unwrap();
    make_tree(
        dir.path(),
        &[("src/a.txt", data(1, 10)), ("src/b.txt", data(2, 10))],
    );
    let key = NameKey::generate().unwrap();
    let other = NameKey::from_bytes(*NameKey::generate().unwrap().to_bytes());
    let seal = |out: &str, k: &NameKey, force: bool| {
        let mut o = SealOptions::default();
        o.output_dir = Some(dir.path().join(out));
        o.hide_names = true;
        o.name_key = Some(k);
        o.force = force;
        let reports = seal_paths(&[dir.path().join("src")], &[label_slot(&hr)], &o).unwrap();
        assert_all_done(&reports);
        list(&dir.path().join(out))
    };
    let first = seal("one", &key, false);
    assert_eq!(first.len(), 2);
    assert_eq!(seal("one", &key, true), first);
    assert_eq!(
        seal("two", &key, false),
        first,
        "same names in another folder"
    );
    let third = seal("three", &other, false);
    assert!(third.iter().all(|n| !first.contains(n)), "{third:?}");
    assert_eq!(format!("{key:?}"), "NameKey([secret])");
}

/// Two documents for one path, in different batches (1000 documents per batch) and in
/// either order: the newest is restored, the other reported superseded by it.
#[test]
fn the_newest_document_for_a_path_wins_across_batches() {
    let hr = LabelKey::generate("hr", 1).unwrap();
    for newer_first in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let inbox = dir.path().join("in");
        fs::create_dir(&inbox).unwrap();
        for i in 0..1000 {
            fs::write(
                inbox.join(format!("m{i:04}.kluis")),
                doc(&hr, &format!("f{i}"), None, b"."),
            )
            .unwrap();
        }
        let (first, last) = match newer_first {
            true => (b"new", b"old"),
            false => (b"old", b"new"),
        };
        let secs = |t: &[u8; 3]| {
            if t == b"new" {
                1_700_000_000
            } else {
                1_600_000_000
            }
        };
        fs::write(
            inbox.join("a.kluis"),
            doc(&hr, "same.txt", Some(secs(first)), first),
        )
        .unwrap();
        fs::write(
            inbox.join("z.kluis"),
            doc(&hr, "same.txt", Some(secs(last)), last),
        )
        .unwrap();
        let mut o = OpenOptions::default();
        o.output_dir = Some(dir.path().join("out"));
        let reports = open_paths(&[&inbox], &[&hr], &o).unwrap();
        assert_eq!(fs::read(dir.path().join("out/same.txt")).unwrap(), b"new");
        let (winner, loser) = match newer_first {
            true => ("a.kluis", "z.kluis"),
            false => ("z.kluis", "a.kluis"),
        };
        let find = |n: &str| reports.iter().find(|r| r.input.ends_with(n)).unwrap();
        assert!(
            matches!(find(winner).outcome, Outcome::Done),
            "{:?}",
            find(winner).outcome
        );
        match &find(loser).outcome {
            Outcome::Superseded(newer) => assert!(newer.ends_with(winner)),
            other => panic!("{other:?}"),
        }
    }
}

/// A document given on its own: the last component only, no dot-file unless allowed.
#[test]
fn a_document_given_alone_restores_a_plain_name() {
    let dir = tempfile::tempdir().unwrap();
    let hr = LabelKey::generate("hr", 1).unwrap();
    fs::write(
        dir.path().join("a.kluis"),
        doc(&hr, "x/y/.profile", None, b"p"),
    )
    .unwrap();
    let mut o = OpenOptions::default();
    o.output_dir = Some(dir.path().join("out"));
    let r = open_paths(&[dir.path().join("a.kluis")], &[&hr], &o).unwrap();
    assert!(
        matches!(r[0].outcome, Outcome::Failed(Error::DotFile { .. })),
        "{:?}",
        r[0].outcome
    );
    assert!(list(&dir.path().join("out")).is_empty());
    o.allow_dotfiles = true;
    let r = open_paths(&[dir.path().join("a.kluis")], &[&hr], &o).unwrap();
    assert!(matches!(r[0].outcome, Outcome::Done), "{:?}", r[0].outcome);
    assert_eq!(
        list(&dir.path().join("out")),
        [std::path::PathBuf::from(".profile")]
    );
}

/// A document whose stored name ends in `/` stands for an empty folder (what `hide_names`
/// seals an empty folder as): an empty one creates the folder, below the output folder only;
/// one with content, or whose folder name breaks a rule, is refused and writes nothing.
#[test]
fn folder_documents_create_only_empty_folders_inside_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let hr = LabelKey::generate("hr", 1).unwrap();
    let sealed = dir.path().join("sealed");
    fs::create_dir(&sealed).unwrap();
    let put = |file: &str, name: &str, text: &[u8]| {
        let d = kluis_core::seal(
            &[label_slot(&hr)],
            &Metadata::with_size(text.len() as u64).name(name),
            text,
        )
        .unwrap();
        fs::write(sealed.join(file), d).unwrap();
    };
    put("a.kluis", "x/empty/", b"");
    put("b.kluis", "y/not-empty/", b"content");
    put("c.kluis", "../escape/", b"");
    put("d.kluis", "/", b"");
    let mut options = OpenOptions::default();
    options.output_dir = Some(dir.path().join("out"));
    let reports = open_paths(&[&sealed], &[&hr], &options).unwrap();
    let outcome = |file: &str| {
        &reports
            .iter()
            .find(|r| r.input.ends_with(file))
            .unwrap()
            .outcome
    };
    assert!(matches!(outcome("a.kluis"), Outcome::Done));
    assert!(dir.path().join("out/x/empty").is_dir());
    for (file, problem) in [
        ("b.kluis", NameProblem::EmptyComponent),
        ("c.kluis", NameProblem::DotComponent),
        ("d.kluis", NameProblem::Empty),
    ] {
        assert!(
            matches!(outcome(file), Outcome::Failed(Error::UnsafeName { problem: p, .. }) if *p == problem),
            "{file}: {:?}",
            outcome(file)
        );
    }
    assert!(!dir.path().join("out/y").exists());
    assert!(!dir.path().join("escape").exists());
    let mut listed: Vec<_> = walkdir(&dir.path().join("out"));
    listed.sort();
    assert_eq!(listed, ["x", "x/empty"]);
}

/// Every path below `root`, relative, folders included.
fn walkdir(root: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    out
}
