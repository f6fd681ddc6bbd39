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

/// The cloud provider plants a folder key it knows (sealed to `hr`, whose public key is public)
/// with a smaller document id, as `.kluis-folder-x`. A device that already uses the real one
/// (pinned) does not adopt it and says so, in the run and in `kluis sync status`, the sealed
/// names unchanged; a new device refuses to pick one until `--trust-folder-key` names it.
/// Before the pin, both adopted the planted key and re-named everything under it.
#[test]
fn a_planted_folder_key_is_not_adopted_and_a_new_device_asks() {
    let server = Server::start();
    let laptop = User::logged_in(&server, &server.alice);
    let desk = User::logged_in(&server, &server.alice);
    let phone = User::logged_in(&server, &server.alice);
    let cloud = tempfile::tempdir().unwrap();
    let c = cloud.path().to_str().unwrap().to_owned();
    let args = |extra: &[&str]| {
        let mut v: Vec<String> = [
            "sync",
            "plain",
            &c,
            "--label",
            "hr",
            "--hide-names",
            "--settle-ms",
            "0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let run = |u: &User, extra: &[&str]| {
        let a = args(extra);
        u.run(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    write(&plain(&laptop).join("notes.txt"), b"hr notes");
    run(&laptop, &[]).ok();
    plain(&desk);
    run(&desk, &[]).ok();
    assert_eq!(
        std::fs::read(plain(&desk).join("notes.txt")).unwrap(),
        b"hr notes"
    );
    let doc_id = |bytes: &[u8]| {
        kluis_core::Header::read(&mut &bytes[..])
            .unwrap()
            .doc_id()
            .to_string()
    };
    let ours = doc_id(&std::fs::read(cloud.path().join(".kluis-folder")).unwrap());
    let names = || {
        tree(cloud.path())
            .into_iter()
            .filter(|n| !n.starts_with(".kluis-folder"))
            .collect::<Vec<_>>()
    };
    let before = names();

    let mut payload = b"kluis-sync/v1 folder-key\0".to_vec();
    payload.extend_from_slice(&[7u8; 32]);
    let hr = vec![kluis_core::Slot::single(kluis_core::Recipient::Label(
        server.label_key("hr"),
    ))];
    let planted = (0..256)
        .map(|_| kluis_core::seal(&hr, &kluis_core::Metadata::default(), &payload).unwrap())
        .find(|d| doc_id(d) < ours)
        .expect("a smaller document id in 256 tries");
    let planted_id = doc_id(&planted);
    std::fs::write(cloud.path().join(".kluis-folder-x"), &planted).unwrap();

    // The desk adopted the laptop's key (pinned): the planted one is reported, not adopted.
    write(&plain(&desk).join("reply.txt"), b"reply");
    let r = run(&desk, &[]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("a second folder key appeared in SEALED")
            && r.stderr.contains(&planted_id),
        "{}",
        r.stderr
    );
    let after = names();
    assert!(
        before.iter().all(|n| after.contains(n)),
        "re-named under the planted key: {before:?} -> {after:?}"
    );
    let status = desk.run(&["sync", "status"]).ok().stdout_text();
    assert!(
        status.contains("a second folder key appeared in SEALED"),
        "{status}"
    );

    // A new device: two folder keys, no pin; it stops and lists both.
    plain(&phone);
    let r = run(&phone, &[]);
    assert_eq!(r.code, 5, "{r:?}");
    assert!(
        r.stderr.contains("--trust-folder-key")
            && r.stderr.contains(&ours)
            && r.stderr.contains(&planted_id),
        "{}",
        r.stderr
    );
    assert!(tree(&plain(&phone)).is_empty());
    // The person chooses the laptop's key.
    let r = run(&phone, &["--trust-folder-key", &ours]);
    assert!(
        r.stderr.contains("a second folder key appeared in SEALED"),
        "{}",
        r.stderr
    );
    assert_eq!(
        std::fs::read(plain(&phone).join("notes.txt")).unwrap(),
        b"hr notes"
    );
    assert_eq!(
        std::fs::read(plain(&phone).join("reply.txt")).unwrap(),
        b"reply"
    );
}
