//! Review of the issue-17 gap fixes (branch gaps17): what the CLI does with a plain file that
//! merely starts like a sealed document.

mod common;
use common::*;

/// `seal` refuses a sealed document under any name, recognised by its content. A plain file
/// whose first six bytes happen to be `KLUIS\0` (a notes file, a binary format, a fragment)
/// is not one: no kluis reads it (`open` says "format version … not supported: upgrade
/// kluis"), so refusing it with "is sealed already … to open it, use `kluis open`" leaves the
/// user with a file that can be neither sealed nor opened and advice that goes in a circle.
/// It must be sealed, and open back to the same bytes. (That a real sealed document under
/// another name is still refused is defects.rs::symlinked_folder_and_sealed_file_arguments_fail_clearly.)
#[test]
fn a_plain_file_that_only_starts_with_the_magic_is_sealed() {
    let server = Server::start();
    let alice = User::logged_in(&server, &server.alice);
    let plain: &[u8] = b"KLUIS\0 are my notes, not a sealed document";
    write(&alice.path("notes.bin"), plain);
    // The same six bytes and the version of v1, then nothing a header can be read from.
    let mut fragment = b"KLUIS\0\0\x01".to_vec();
    fragment.extend_from_slice(&[0xff; 4]);
    fragment.extend_from_slice(b"and then some text");
    write(&alice.path("dir/fragment.dat"), &fragment);

    alice.run(&["seal", "--label", "hr", "notes.bin"]).ok();
    alice
        .run(&["seal", "--label", "hr", "-o", "out", "dir"])
        .ok();
    assert_eq!(tree(&alice.path("out")), ["dir/fragment.dat.kluis"]);

    std::fs::remove_file(alice.path("notes.bin")).unwrap();
    alice.run(&["open", "notes.bin.kluis"]).ok();
    assert_eq!(std::fs::read(alice.path("notes.bin")).unwrap(), plain);
    alice.run(&["open", "-o", "back", "out"]).ok();
    assert_eq!(
        std::fs::read(alice.path("back/dir/fragment.dat")).unwrap(),
        fragment
    );
}

/// Exit code 7 is "corrupt, tampered with or not a kluis document" in the one exit-code
/// table; a script may take it for an alarm. A document written in a newer format version is
/// none of these, yet exits 7 ("upgrade kluis"): the table must say so, or a script that
/// acts on 7 acts on documents that are fine.
#[test]
fn the_exit_code_table_names_a_newer_format_version() {
    let server = Server::start();
    let alice = User::logged_in(&server, &server.alice);
    write(&alice.path("a.txt"), b"a");
    alice.run(&["seal", "--label", "hr", "a.txt"]).ok();
    let mut newer = std::fs::read(alice.path("a.txt.kluis")).unwrap();
    newer[7] = 2; // the version, after the six magic bytes (docs/FORMAT.md §3)
    write(&alice.path("newer.kluis"), &newer);
    alice
        .run(&["open", "-o", "out", "newer.kluis"])
        .fails(7, "upgrade kluis");
    let help = alice.run(&["--help"]).ok().stdout_text();
    let row7 = &help[help.find("\n  7  ").unwrap()..help.find("\n  8  ").unwrap()];
    let row7 = row7.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(row7.contains("newer format version"), "{row7}");
}
