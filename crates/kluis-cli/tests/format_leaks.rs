//! What the sealed files give away about their names (issue 17 defect 6) and what leaves
//! the machine, against a real `kluis-server` on loopback.

mod common;
use common::*;

/// `--hide-names --pad` used to give the name's length away in the header (229 vs 279 bytes
/// for names of 1 and 50 characters). Now every name up to 256 bytes gives the same header,
/// `inspect` says precisely what shows, and the names come back on open.
#[test]
fn hide_names_with_pad_gives_one_header_length_for_any_short_name() {
    let server = Server::start();
    let alice = User::logged_in(&server, &server.alice);
    let long = format!("{}.txt", "n".repeat(46));
    write(&alice.path("src/a"), b"same content");
    write(&alice.path(&format!("src/{long}")), b"same content");
    alice
        .run(&[
            "seal",
            "--label",
            "hr",
            "--hide-names",
            "--pad",
            "-o",
            "cloud",
            "src",
        ])
        .ok();
    let sealed = tree(&alice.path("cloud"));
    assert_eq!(sealed.len(), 2, "{sealed:?}");
    let mut headers = Vec::new();
    for name in &sealed {
        let v = alice
            .run(&["--json", "inspect", &format!("cloud/{name}")])
            .ok()
            .json();
        let f = &v["files"][0];
        assert_eq!(f["name_bytes_at_most"], 256, "{v}");
        headers.push((
            f["header_bytes"].as_u64().unwrap(),
            f["total_bytes"].clone(),
        ));
        let human = alice
            .run(&["inspect", &format!("cloud/{name}")])
            .ok()
            .stdout_text();
        assert!(
            human.contains("else only that it is at most 256 bytes"),
            "{human}"
        );
        assert!(
            !human.contains("the exact size and the name are sealed"),
            "{human}"
        );
    }
    assert_eq!(headers[0], headers[1], "header and file sizes differ");
    // Re-keying writes new headers and keeps the sealed metadata as it was: still padded.
    server.admin(&["label", "rotate", "hr"]);
    alice.run(&["rekey", "cloud"]).ok();
    let mut rekeyed = Vec::new();
    for name in &sealed {
        let v = alice
            .run(&["--json", "inspect", &format!("cloud/{name}")])
            .ok()
            .json();
        let f = &v["files"][0];
        assert_eq!(f["name_bytes_at_most"], 256, "{v}");
        assert_eq!(f["slots"][0]["stanzas"][0]["kid"], 2, "not re-keyed: {v}");
        rekeyed.push(f["header_bytes"].as_u64().unwrap());
    }
    assert_eq!(rekeyed[0], rekeyed[1], "header sizes differ after rekey");
    alice.run(&["open", "-o", "back", "cloud"]).ok();
    assert_eq!(tree(&alice.path("back/src")), tree(&alice.path("src")));
}

/// Issue 17 defect 7: `kluis seal` to a double-key label wrapped the holder's half to whatever
/// key the identity file's `# public key:` comment named, and `keygen --public` printed it, so
/// whoever could edit the file redirected the holder's share. A file without the comment was
/// refused by `--public`. Now the key used is the one derived from the secret (recorded at
/// keygen and at each unlock), an edited comment is refused, and a file without the comment
/// works.
#[test]
fn an_edited_identity_comment_does_not_redirect_the_holder_share() {
    let server = Server::start();
    let mut alice = User::logged_in(&server, &server.alice);
    alice.env.push(("PASS".into(), "correct horse".into()));
    let key = alice
        .run(&["keygen", "--passphrase-env", "PASS"])
        .ok()
        .stdout_text()
        .trim()
        .to_owned();
    let identity = alice.config_dir().join("identity.key");
    let id_arg = identity.to_str().unwrap();
    let original = std::fs::read_to_string(&identity).unwrap();
    assert!(original.contains(&key));

    // Someone who can write the file puts their own key in the comment.
    let mallory = kluis_core::Identity::generate()
        .unwrap()
        .public_key()
        .to_string();
    std::fs::write(&identity, original.replace(&key, &mallory)).unwrap();
    write(&alice.path("dossier.txt"), b"diagnosis");
    let run = alice
        .run(&["seal", "--label", "medical", "dossier.txt"])
        .fails(7, "was edited");
    assert!(
        !run.stderr.contains(&mallory) || run.stderr.contains(&key),
        "{}",
        run.stderr
    );
    assert!(!alice.path("dossier.txt.kluis").exists(), "sealed anyway");
    alice
        .run(&["keygen", "--public", id_arg])
        .fails(7, "was edited");
    // With the passphrase the secret decides, and the edit is refused as well (by the
    // unlock): the same failure, so the same exit code, tampering (7).
    alice
        .run(&["keygen", "--public", id_arg, "--passphrase-env", "PASS"])
        .fails(7, "was edited");
    // Opening with the edited file is refused too (the derived key disagrees).
    let other = User::logged_in(&server, &server.alice);
    let mut other = other;
    other.env.push(("PASS".into(), "correct horse".into()));
    std::fs::write(other.path("id.key"), original.replace(&key, &mallory)).unwrap();
    other
        .run(&["keygen", "--public", "id.key", "--passphrase-env", "PASS"])
        .fails(7, "was edited");
    // Its comment garbled (not a key any more) is an edit too, on both paths.
    let garbled = original.replace(&key, "kluis1notakey");
    std::fs::write(other.path("id.key"), &garbled).unwrap();
    other
        .run(&["keygen", "--public", "id.key"])
        .fails(7, "was edited");
    other
        .run(&["keygen", "--public", "id.key", "--passphrase-env", "PASS"])
        .fails(7, "was edited");
    // A malformed identity file (not one at all) stays a usage error (2), on both paths.
    std::fs::write(other.path("id.key"), "just some notes\n").unwrap();
    other
        .run(&["keygen", "--public", "id.key", "--passphrase-env", "PASS"])
        .fails(2, "invalid identity file");
    std::fs::write(other.path("id.key"), "x".repeat(5000)).unwrap();
    other
        .run(&["keygen", "--public", "id.key"])
        .fails(2, "larger than 4096");
    other
        .run(&["keygen", "--public", "id.key", "--passphrase-env", "PASS"])
        .fails(2, "larger than 4096");
    // The exit-code table (shown once, after `kluis --help`) says so.
    let help = other.run(&["--help"]).ok().stdout_text();
    let seven = help.find("\n  7  ").expect("code 7 in the table");
    let eight = help.find("\n  8  ").expect("code 8 in the table");
    assert!(
        help[seven..eight].contains("identity file that fails its own check"),
        "{help}"
    );

    // Without the comment line (FORMAT.md §14 allows it) the recorded key is used.
    let bare: String = original
        .lines()
        .filter(|l| !l.starts_with("# public key:"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&identity, &bare).unwrap();
    assert_eq!(
        alice
            .run(&["keygen", "--public", id_arg])
            .ok()
            .stdout_text()
            .trim(),
        key
    );
    alice
        .run(&["seal", "--label", "medical", "dossier.txt"])
        .ok();
    let v = alice
        .run(&["--json", "inspect", "dossier.txt.kluis"])
        .ok()
        .json();
    assert_eq!(v["files"][0]["slots"][0]["stanzas"][1]["type"], "x25519");
    alice
        .run(&[
            "open",
            "-o",
            "back",
            "--passphrase-env",
            "PASS",
            "dossier.txt.kluis",
        ])
        .ok();
    assert_eq!(
        std::fs::read(alice.path("back/dossier.txt")).unwrap(),
        b"diagnosis"
    );

    // Someone else's copy, never unlocked there: the passphrase is needed once, then the
    // key derived from the secret is recorded.
    std::fs::write(other.path("bare.key"), &bare).unwrap();
    other
        .run(&["keygen", "--public", "bare.key"])
        .fails(4, "passphrase");
    let derived = other
        .run(&["keygen", "--public", "bare.key", "--passphrase-env", "PASS"])
        .ok()
        .stdout_text();
    assert_eq!(derived.trim(), key);
    assert_eq!(
        other
            .run(&["keygen", "--public", "bare.key"])
            .ok()
            .stdout_text()
            .trim(),
        key
    );
}

/// The refusal of an identity whose comment disagrees with the recorded key advises, for an
/// identity of one's own put there on purpose, `kluis keygen --public FILE` with a passphrase
/// option to record its key. That used to fail the same way (the record was consulted before
/// the passphrase), so the advice could not be followed; with a passphrase given, the
/// secret decides and the record follows it.
#[test]
fn a_replaced_identity_of_ones_own_is_recorded_when_its_passphrase_is_given() {
    let server = Server::start();
    let mut alice = User::logged_in(&server, &server.alice);
    alice.env.push(("PASS".into(), "correct horse".into()));
    alice.env.push(("PASS2".into(), "battery staple".into()));
    let old = alice
        .run(&["keygen", "--passphrase-env", "PASS"])
        .ok()
        .stdout_text()
        .trim()
        .to_owned();
    let identity = alice.config_dir().join("identity.key");
    let id_arg = identity.to_str().unwrap().to_owned();
    // Another identity of hers, made elsewhere, copied over the first.
    let new = alice
        .run(&["keygen", "-o", "elsewhere.key", "--passphrase-env", "PASS2"])
        .ok()
        .stdout_text()
        .trim()
        .to_owned();
    assert_ne!(old, new);
    std::fs::copy(alice.path("elsewhere.key"), &identity).unwrap();
    alice
        .run(&["keygen", "--public", &id_arg])
        .fails(7, "was edited");
    let printed = alice
        .run(&["keygen", "--public", &id_arg, "--passphrase-env", "PASS2"])
        .ok()
        .stdout_text();
    assert_eq!(printed.trim(), new);
    // Recorded: without the passphrase now, and sealing uses it.
    assert_eq!(
        alice
            .run(&["keygen", "--public", &id_arg])
            .ok()
            .stdout_text()
            .trim(),
        new
    );
    write(&alice.path("dossier.txt"), b"diagnosis");
    alice
        .run(&["seal", "--label", "medical", "dossier.txt"])
        .ok();
    alice
        .run(&[
            "open",
            "-o",
            "back",
            "--passphrase-env",
            "PASS2",
            "dossier.txt.kluis",
        ])
        .ok();
    assert_eq!(
        std::fs::read(alice.path("back/dossier.txt")).unwrap(),
        b"diagnosis"
    );
    // The wrong passphrase for the replacement changes nothing.
    alice
        .run(&["keygen", "--public", &id_arg, "--passphrase-env", "PASS"])
        .fails(4, "wrong passphrase");
}
