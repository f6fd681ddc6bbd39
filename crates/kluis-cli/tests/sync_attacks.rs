//! `kluis sync` attacked from the sealed folder, end to end: the real `kluis` binary against a
//! real `kluis-server` process (review of issue 18; the in-process attacks are in
//! `kluis-sync/tests/attacks.rs`).

mod common;

use std::path::PathBuf;

use common::{Server, ServerExt, User, tree, write};

const SECRET: &str = "BOARD-ONLY merger with ACME";

fn plain(u: &User) -> PathBuf {
    let p = u.path("plain");
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// Mallory (in `hr-staff`, not on `board`) drops a `board` document she cannot open into the
/// shared `hr` sealed folder, under a sync client's conflict-copy name. Alice (on both labels)
/// runs `kluis sync`. Before the fix, Alice's sync opened it as a stray, wrote it as a conflict
/// copy and sealed that to `hr`, and Mallory's own `kluis sync` then opened the board secret.
#[test]
fn a_board_document_dropped_into_an_hr_folder_does_not_reach_hr_members() {
    let server = Server::start_with(&[&["label", "create", "board", "--user", "alice"]]);
    let mallory_token = server
        .admin(&[
            "token", "create", "--user", "mallory", "--group", "hr-staff",
        ])
        .trim()
        .to_owned();
    let alice = User::logged_in(&server, &server.alice);
    let mallory = User::logged_in(&server, &mallory_token);
    let cloud = tempfile::tempdir().unwrap();
    let c = cloud.path().to_str().unwrap();
    let args = |extra: &[&'static str]| {
        let mut v = vec!["sync", "plain", c, "--label", "hr", "--settle-ms", "0"];
        v.extend_from_slice(extra);
        v
    };
    write(&plain(&alice).join("notes.txt"), b"hr notes");
    alice.run(&args(&[])).ok();

    // Mallory cannot open board documents.
    let board = vec![kluis_core::Slot::single(kluis_core::Recipient::Label(
        server.label_key("board"),
    ))];
    let doc = kluis_core::seal(
        &board,
        &kluis_core::Metadata::default().name("minutes.txt"),
        SECRET.as_bytes(),
    )
    .unwrap();
    std::fs::write(cloud.path().join("minutes-LAPTOP.txt.kluis"), &doc).unwrap();
    write(&plain(&mallory).join("mine.txt"), b"mallory's");
    mallory.run(&args(&[]));

    // Alice syncs (twice: a conflict copy is sealed in the pass after it is written).
    let first = alice.run(&[&["--json"][..], &args(&[])].concat());
    let first = first.json();
    alice.run(&args(&[]));
    for f in tree(&plain(&alice)) {
        let data = std::fs::read(plain(&alice).join(&f)).unwrap();
        assert!(
            !String::from_utf8_lossy(&data).contains(SECRET),
            "{f}: a board document was opened into the hr pair"
        );
    }

    // Mallory syncs again: nothing of the board document reaches her.
    mallory.run(&args(&[]));
    for f in tree(&plain(&mallory)) {
        let data = std::fs::read(plain(&mallory).join(&f)).unwrap();
        assert!(
            !String::from_utf8_lossy(&data).contains(SECRET),
            "{f}: an hr member read a board document through kluis sync"
        );
    }
    assert!(
        cloud.path().join("minutes-LAPTOP.txt.kluis").exists(),
        "the board document is left where it was"
    );
    let listed = first["report"]["failed"].to_string();
    assert!(
        listed.contains("minutes-LAPTOP"),
        "the board document is listed as not opened: {first}"
    );
}
