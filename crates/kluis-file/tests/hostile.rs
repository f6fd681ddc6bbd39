//! Hostile stored names: crafted documents cannot write outside the output folder, clobber
//! anything, or get their name echoed; the validator never accepts an escaping path.

mod common;

use std::fs;
use std::path::{Component, Path, PathBuf};

use common::*;
use kluis_core::{LabelKey, Metadata};
use kluis_file::{
    Error, NameProblem, OpenOptions, Outcome, SealOptions, open_paths, safe_relative_path,
    seal_file,
};
use proptest::prelude::*;

const HOSTILE: &[(&str, NameProblem)] = &[
    ("../evil", NameProblem::DotComponent),
    ("/etc/passwd", NameProblem::Absolute),
    ("a/../../b", NameProblem::DotComponent),
    ("CON", NameProblem::Reserved),
    ("nul.txt", NameProblem::Reserved),
    ("sub/Com1.log", NameProblem::Reserved),
    ("LPT9", NameProblem::Reserved),
    ("a\\b", NameProblem::Backslash),
    ("..\\..\\windows\\system32", NameProblem::Backslash),
    ("x\u{0}y", NameProblem::ControlCharacter),
    ("line\nbreak", NameProblem::ControlCharacter),
    ("\u{1b}[2Jclear", NameProblem::ControlCharacter),
    ("..", NameProblem::DotComponent),
    (".", NameProblem::DotComponent),
    ("trailing.", NameProblem::TrailingDotOrSpace),
    ("trailing ", NameProblem::TrailingDotOrSpace),
    ("a//b", NameProblem::EmptyComponent),
    ("dir/", NameProblem::EmptyComponent),
    ("C:evil", NameProblem::Colon),
    ("file.txt:stream", NameProblem::Colon),
];

#[test]
fn validator_refuses_each_hostile_name_for_the_right_reason() {
    for (name, problem) in HOSTILE {
        assert_eq!(safe_relative_path(name), Err(*problem), "{name:?}");
    }
    assert_eq!(safe_relative_path(""), Err(NameProblem::Empty));
    assert_eq!(
        safe_relative_path(&"a".repeat(4097)),
        Err(NameProblem::TooLong)
    );
    for ok in [
        "report.docx",
        "a/b/c.txt",
        ".hidden",
        "..dots",
        "Ünïcødé ✓.pdf",
        "CONSOLE.txt",
        "x..y",
    ] {
        assert!(safe_relative_path(ok).is_ok(), "{ok}");
    }
}

/// Crafted documents: each fails alone, with a message naming the sealed file but not the
/// stored name, and nothing is written anywhere.
#[test]
fn crafted_documents_are_refused_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let hr = LabelKey::generate("hr", 1).unwrap();
    let inbox = dir.path().join("inbox/deep/er");
    fs::create_dir_all(&inbox).unwrap();
    for (i, (name, _)) in HOSTILE.iter().enumerate() {
        let doc = kluis_core::seal(
            &[label_slot(&hr)],
            &Metadata::default().name(*name),
            b"pwned",
        )
        .unwrap();
        fs::write(inbox.join(format!("doc{i:02}.kluis")), doc).unwrap();
    }
    // One good document among them still opens.
    let good = kluis_core::seal(
        &[label_slot(&hr)],
        &Metadata::default().name("ok.txt"),
        b"ok",
    )
    .unwrap();
    fs::write(inbox.join("good.kluis"), good).unwrap();
    let mut before = list(dir.path());

    for output_dir in [Some(dir.path().join("out")), None] {
        let mut options = OpenOptions::default();
        options.output_dir = output_dir.clone();
        options.force = true; // even with force
        let reports = open_paths(&[dir.path().join("inbox")], &[&hr], &options).unwrap();
        assert_eq!(reports.len(), HOSTILE.len() + 1);
        for r in &reports {
            let file = r.input.file_name().unwrap().to_str().unwrap();
            if file == "good.kluis" {
                assert!(matches!(r.outcome, Outcome::Done), "{:?}", r.outcome);
                continue;
            }
            let i: usize = file[3..5].parse().unwrap();
            let (name, problem) = HOSTILE[i];
            match &r.outcome {
                Outcome::Failed(e @ Error::UnsafeName { sealed, problem: p }) => {
                    assert_eq!(sealed, &r.input);
                    assert_eq!(*p, problem, "{name:?}");
                    let msg = e.to_string();
                    assert!(msg.contains(file), "{msg}");
                    // (Short names like `CON` or `.` occur in the message's own words.)
                    if name.len() >= 6 {
                        assert!(!msg.contains(name), "{msg} echoes {name:?}");
                    }
                    assert!(!msg.chars().any(|c| c.is_control()), "{msg:?}");
                }
                other => panic!("{name:?}: {other:?}"),
            }
        }
        // Only the good document's output appeared.
        let mut expected = before.clone();
        match &output_dir {
            Some(_) => expected.extend(
                ["out", "out/deep", "out/deep/er", "out/deep/er/ok.txt"].map(PathBuf::from),
            ),
            None => expected.push(PathBuf::from("inbox/deep/er/ok.txt")),
        }
        expected.sort();
        assert_eq!(list(dir.path()), expected);
        before = expected;
    }
    assert!(!Path::new("/evil").exists());
}

/// Sealing refuses names that opening would refuse, rather than making an unopenable file.
#[cfg(unix)]
#[test]
fn seal_refuses_names_open_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let hr = LabelKey::generate("hr", 1).unwrap();
    for name in ["CON", "a:b", "trail.", "bad\u{7}bell"] {
        let p = dir.path().join(name);
        fs::write(&p, b"x").unwrap();
        let err = seal_file(&p, &[label_slot(&hr)], &SealOptions::default()).unwrap_err();
        assert!(
            matches!(err, Error::NameNotPortable { .. }),
            "{name:?}: {err}"
        );
    }
    use std::os::unix::ffi::OsStrExt;
    let p = dir
        .path()
        .join(std::ffi::OsStr::from_bytes(b"not-utf8-\xff"));
    fs::write(&p, b"x").unwrap();
    let err = seal_file(&p, &[label_slot(&hr)], &SealOptions::default()).unwrap_err();
    assert!(matches!(err, Error::NameNotUtf8 { .. }), "{err}");
    assert_eq!(list(dir.path()).len(), 5, "no output written");
}

/// Lexically resolve `..` and `.`: where the path would really lead.
fn normalize(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    Some(out)
}

fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("..".to_string()),
        Just(".".to_string()),
        Just("/".to_string()),
        Just("\\".to_string()),
        Just(":".to_string()),
        Just("C:".to_string()),
        Just("\0".to_string()),
        Just(" ".to_string()),
        Just("con".to_string()),
        Just("NUL".to_string()),
        Just("~".to_string()),
        "[a-z]{1,4}",
        any::<char>().prop_map(String::from),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    /// Whatever is accepted has only normal components and, joined to a base folder, stays
    /// strictly inside it, even after resolving `..`.
    #[test]
    fn accepted_names_never_escape(pieces in prop::collection::vec(piece(), 0..10)) {
        let name: String = pieces.concat();
        if let Ok(rel) = safe_relative_path(&name) {
            prop_assert!(rel.is_relative());
            prop_assert!(rel.components().all(|c| matches!(c, Component::Normal(_))));
            prop_assert_eq!(rel.components().count(), name.split('/').count());
            let base = Path::new("/srv/restore/base");
            let joined = base.join(&rel);
            let real = normalize(&joined).unwrap();
            prop_assert!(real.starts_with(base) && real != base, "{:?}", real);
            prop_assert!(!name.contains('\0') && !name.contains('\\') && !name.contains(':'));
        }
    }

    /// Plain names of ordinary characters are accepted unchanged.
    #[test]
    fn ordinary_names_are_accepted(parts in prop::collection::vec("[a-zA-Z0-9_-][a-zA-Z0-9 _.-]{0,10}[a-zA-Z0-9_-]", 1..5)) {
        let name = parts.join("/");
        let reserved = parts.iter().any(|p| {
            let stem = p.split('.').next().unwrap().trim().to_ascii_uppercase();
            matches!(stem.as_str(), "CON" | "PRN" | "AUX" | "NUL")
                || ((stem.starts_with("COM") || stem.starts_with("LPT"))
                    && stem.len() == 4
                    && stem.as_bytes()[3].is_ascii_digit())
        });
        let rel = safe_relative_path(&name);
        if reserved {
            prop_assert_eq!(rel, Err(NameProblem::Reserved));
        } else {
            prop_assert_eq!(rel.unwrap(), PathBuf::from(&name));
        }
    }
}
