//! `list_sealed`: the documents `kluis rekey` re-keys in a folder.

use std::fs;

#[test]
fn lists_sealed_documents_in_name_order_without_links_or_temporaries() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("docs");
    fs::create_dir_all(root.join("sub")).unwrap();
    fs::write(root.join("b.kluis"), b"x").unwrap();
    fs::write(root.join("a.kluis"), b"x").unwrap();
    fs::write(root.join("notes.txt"), b"x").unwrap();
    fs::write(root.join(".kluis-tmp-123.kluis"), b"x").unwrap();
    fs::write(root.join("sub").join("c.kluis"), b"x").unwrap();
    let outside = dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("d.kluis"), b"x").unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();

    let mut found = Vec::new();
    kluis_file::list_sealed(&root, &mut found);
    assert_eq!(
        found,
        [
            root.join("a.kluis"),
            root.join("b.kluis"),
            root.join("sub").join("c.kluis")
        ]
    );

    // A file is taken as it is, whatever its name; a missing path too (reading it reports).
    let mut found = Vec::new();
    kluis_file::list_sealed(&root.join("notes.txt"), &mut found);
    kluis_file::list_sealed(&dir.path().join("missing"), &mut found);
    assert_eq!(found, [root.join("notes.txt"), dir.path().join("missing")]);
}
