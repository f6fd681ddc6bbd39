//! End to end: the real `kluis` binary against a real `kluis-server` process.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Run, Server, ServerExt, User, digest, tree, write};
use kluis_core::{Metadata, Recipient, Slot};

#[test]
fn seal_and_open_one_file() {
    let server = Server::start();
    let alice = User::logged_in(&server, &server.alice);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(alice.config_dir().join("token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "token file mode");
    }
    let report = alice.path("report.docx");
    write(&report, b"salaries 2025");
    let sealed = alice
        .run(&["--json", "seal", "--label", "hr", "report.docx"])
        .ok()
        .json();
    assert_eq!(sealed["sealed"], 1);
    assert_eq!(sealed["label"], "hr");
    assert_eq!(sealed["kid"], 1);
    assert_eq!(sealed["files"][0]["outcome"], "done");
    assert!(report.exists(), "the original is kept");
    let doc = alice.path("report.docx.kluis");
    assert!(doc.exists());
    assert!(
        !std::fs::read(&doc)
            .unwrap()
            .windows(8)
            .any(|w| w == b"salaries")
    );

    let opened = alice
        .run(&["--json", "open", "-o", "restored", "report.docx.kluis"])
        .ok()
        .json();
    assert_eq!(opened["opened"], 1);
    assert_eq!(opened["key_server_requests"], 1);
    assert_eq!(
        std::fs::read(alice.path("restored/report.docx")).unwrap(),
        b"salaries 2025"
    );
    // Opening again does not overwrite without --force.
    alice
        .run(&["open", "-o", "restored", "report.docx.kluis"])
        .fails(8, "--force");
    alice
        .run(&["open", "-o", "restored", "--force", "report.docx.kluis"])
        .ok();

    // Bob is not in hr-staff: denied by policy, and the message names the label.
    let bob = User::logged_in(&server, &server.bob);
    std::fs::copy(&doc, bob.path("report.docx.kluis")).unwrap();
    bob.run(&["open", "report.docx.kluis"]).fails(5, "`hr`");
    assert!(!bob.path("report.docx").exists());

    // The openings are in alice's audit trail: the output name is sealed, so the refused
    // second opening was unwrapped (and recorded) before the existing output was found.
    let audit = alice.run(&["--json", "audit"]).ok().json();
    let events = audit["events"].as_array().unwrap();
    assert_eq!(
        events
            .iter()
            .filter(|e| e["action"] == "unwrap" && e["outcome"] == "granted")
            .count(),
        3
    );
    let human = alice.run(&["audit"]).ok().stdout_text();
    assert!(human.contains("granted"), "{human}");
}

#[test]
fn a_folder_of_1000_files_opens_with_one_batch_request() {
    let server = Server::start();
    let alice = User::logged_in(&server, &server.alice);
    for i in 0..1000 {
        write(
            &alice.path(&format!("src/d{}/file{i}.txt", i % 10)),
            format!("document {i}").as_bytes(),
        );
    }
    let start = Instant::now();
    let sealed = alice
        .run(&["--json", "seal", "--label", "hr", "-o", "sealed", "src"])
        .ok()
        .json();
    assert_eq!(sealed["sealed"], 1000);
    let seal_time = start.elapsed();
    let start = Instant::now();
    let opened = alice
        .run(&["--json", "open", "-o", "restored", "sealed"])
        .ok()
        .json();
    let open_time = start.elapsed();
    assert_eq!(opened["opened"], 1000);
    assert_eq!(opened["failed"], 0);
    assert_eq!(opened["key_server_requests"], 1, "one batch request");
    assert_eq!(
        server.counter("kluis_http_requests_total", &["unwrap_batch"]),
        1,
        "the server saw one batch request"
    );
    let audit = alice.run(&["--json", "audit", "-n", "2000"]).ok().json();
    let unwraps = audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "unwrap" && e["outcome"] == "granted")
        .count();
    assert_eq!(unwraps, 1000, "one audit record per document");
    let src = tree(&alice.path("src"));
    assert_eq!(src.len(), 1000);
    assert_eq!(tree(&alice.path("restored/src")), src);
    for rel in &src {
        assert_eq!(
            std::fs::read(alice.path("restored/src").join(rel)).unwrap(),
            std::fs::read(alice.path("src").join(rel)).unwrap()
        );
    }
    eprintln!("1000 files: seal {seal_time:?}, open {open_time:?}");
}

/// Run `kluis args` and measure its peak memory (max RSS, KiB) and time.
fn measured(user: &User, args: &[&str]) -> (Run, u64, Duration) {
    let base = user.command();
    let time = Path::new("/usr/bin/time");
    let start = Instant::now();
    if time.exists() {
        let mut c = Command::new(time);
        c.current_dir(user.work());
        for (k, v) in base.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        let out = c
            .args(["-f", "maxrss_kib=%M"])
            .arg(env!("CARGO_BIN_EXE_kluis"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let took = start.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let rss = stderr
            .lines()
            .filter_map(|l| l.strip_prefix("maxrss_kib="))
            .next_back()
            .and_then(|v| v.trim().parse().ok())
            .expect("max RSS from /usr/bin/time");
        let run = Run {
            code: out.status.code().unwrap_or(-1),
            stdout: out.stdout,
            stderr,
        };
        return (run, rss, took);
    }
    // No /usr/bin/time: poll the child's VmHWM (peak RSS) until it exits.
    let mut child = user
        .command()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    let out = loop {
        if let Ok(s) = std::fs::read_to_string(&status) {
            if let Some(kb) = s
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            {
                peak = peak.max(kb);
            }
        }
        if child.try_wait().unwrap().is_some() {
            break child.wait_with_output().unwrap();
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    (run, peak, start.elapsed())
}

/// Peak memory allowed for sealing or opening a file of any size.
const MAX_RSS_KIB: u64 = 64 * 1024;

#[test]
fn a_1_gib_file_seals_and_opens_in_bounded_memory() {
    let server = Server::start();
    let alice = User::logged_in(&server, &server.alice);
    let big = alice.path("big.bin");
    // Sparse: fast to make, and read back as 1 GiB of zeros.
    std::fs::File::create(&big)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let (run, seal_rss, seal_time) = measured(&alice, &["seal", "--label", "hr", "big.bin"]);
    run.ok();
    let (run, open_rss, open_time) = measured(&alice, &["open", "-o", "out", "big.bin.kluis"]);
    run.ok();
    eprintln!(
        "1 GiB: seal {seal_time:?}, max RSS {seal_rss} KiB; open {open_time:?}, max RSS {open_rss} KiB"
    );
    assert!(seal_rss < MAX_RSS_KIB, "seal peak RSS {seal_rss} KiB");
    assert!(open_rss < MAX_RSS_KIB, "open peak RSS {open_rss} KiB");
    let out = alice.path("out/big.bin");
    assert_eq!(std::fs::metadata(&out).unwrap().len(), 1 << 30);
    assert_eq!(digest(&out), digest(&big));
}

#[test]
fn hidden_names_round_trip() {
    let server = Server::start();
    let alice = User::logged_in(&server, &server.alice);
    write(&alice.path("src/Jansen BSN/ziekmelding.pdf"), b"sick note");
    write(
        &alice.path("src/Jansen BSN/2024/loonstrook.pdf"),
        b"pay slip",
    );
    write(&alice.path("src/overzicht.xlsx"), b"overview");
    alice
        .run(&[
            "seal",
            "--label",
            "hr",
            "--hide-names",
            "-o",
            "cloud",
            "src",
        ])
        .ok();
    let sealed = tree(&alice.path("cloud"));
    assert_eq!(sealed.len(), 3, "flat: {sealed:?}");
    for name in &sealed {
        let stem = name.strip_suffix(".kluis").expect(".kluis");
        assert_eq!(stem.len(), 26, "{name}");
        assert!(
            stem.bytes()
                .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b)),
            "{name}"
        );
    }
    alice.run(&["open", "-o", "back", "cloud"]).ok();
    assert_eq!(tree(&alice.path("back/src")), tree(&alice.path("src")));
    assert_eq!(
        std::fs::read(alice.path("back/src/Jansen BSN/2024/loonstrook.pdf")).unwrap(),
        b"pay slip"
    );
}

#[test]
fn double_key_end_to_end() {
    let mut server = Server::start();
    let alice = User::logged_in(&server, &server.alice);
    write(&alice.path("dossier.txt"), b"diagnosis");

    // No holder key anywhere: sealing says how to give one.
    alice
        .run(&["seal", "--label", "medical", "dossier.txt"])
        .fails(2, "--to");

    // keygen writes the identity (0600) and prints its public key.
    let mut alice = alice;
    alice.env.push(("PASS".into(), "correct horse".into()));
    let key = alice
        .run(&["keygen", "--passphrase-env", "PASS"])
        .ok()
        .stdout_text()
        .trim()
        .to_owned();
    assert!(key.starts_with("kluis1"), "{key}");
    let identity = alice.config_dir().join("identity.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&identity).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    alice
        .run(&["keygen", "--passphrase-env", "PASS"])
        .fails(8, "refusing to overwrite");
    assert_eq!(
        alice
            .run(&["keygen", "--public", identity.to_str().unwrap()])
            .ok()
            .stdout_text()
            .trim(),
        key
    );

    // The identity's public key is the default holder; --to works as well.
    alice
        .run(&["seal", "--label", "medical", "dossier.txt"])
        .ok();
    write(&alice.path("second.txt"), b"second opinion");
    alice
        .run(&["seal", "--label", "medical", "--to", &key, "second.txt"])
        .ok();
    let inspected = alice
        .run(&["--json", "inspect", "dossier.txt.kluis"])
        .ok()
        .json();
    let slot = &inspected["files"][0]["slots"][0];
    assert_eq!(slot["double_key"], true);
    assert_eq!(slot["stanzas"][0]["label"], "medical");
    assert_eq!(slot["stanzas"][1]["type"], "x25519");
    std::fs::remove_file(alice.path("dossier.txt")).unwrap();

    let unwraps = |s: &Server| s.counter("kluis_unwrap_items_total", &[]);
    let before = unwraps(&server);

    // Same token, no identity: a clear error, and the key server is not asked.
    let laptop = User::logged_in(&server, &server.alice);
    std::fs::copy(
        alice.path("dossier.txt.kluis"),
        laptop.path("dossier.txt.kluis"),
    )
    .unwrap();
    laptop
        .run(&["open", "dossier.txt.kluis"])
        .fails(2, "needs your identity file");

    // Wrong passphrase: exit 4, and still nothing asked of the key server.
    let mut wrong = User::logged_in(&server, &server.alice);
    std::fs::copy(&identity, wrong.config_dir().join("identity.key")).unwrap();
    std::fs::copy(
        alice.path("dossier.txt.kluis"),
        wrong.path("dossier.txt.kluis"),
    )
    .unwrap();
    wrong.env.push(("PASS".into(), "battery staple".into()));
    wrong
        .run(&["open", "--passphrase-env", "PASS", "dossier.txt.kluis"])
        .fails(4, "wrong passphrase");
    assert_eq!(
        unwraps(&server),
        before,
        "no unwrap before the identity opened"
    );
    assert!(!wrong.path("dossier.txt").exists());

    // The right passphrase, from the environment and from a file.
    alice
        .run(&["open", "--passphrase-env", "PASS", "dossier.txt.kluis"])
        .ok();
    assert_eq!(
        std::fs::read(alice.path("dossier.txt")).unwrap(),
        b"diagnosis"
    );
    write(&alice.path("pass.txt"), b"correct horse\n");
    alice
        .run(&[
            "open",
            "--passphrase-file",
            "pass.txt",
            "-o",
            "again",
            "second.txt.kluis",
        ])
        .ok();
    assert_eq!(
        std::fs::read(alice.path("again/second.txt")).unwrap(),
        b"second opinion"
    );

    // Re-keying a double-key document keeps it double key, to the same holder.
    server.admin(&["label", "rotate", "medical"]);
    let moved = alice
        .run(&[
            "--json",
            "rekey",
            "--passphrase-env",
            "PASS",
            "dossier.txt.kluis",
        ])
        .ok()
        .json();
    assert_eq!(moved["moved"], 1, "{moved}");
    let inspected = alice
        .run(&["--json", "inspect", "dossier.txt.kluis"])
        .ok()
        .json();
    let slot = &inspected["files"][0]["slots"][0];
    assert_eq!(slot["double_key"], true);
    assert_eq!(slot["stanzas"][0]["kid"], 2);
    alice
        .run(&[
            "open",
            "--passphrase-env",
            "PASS",
            "-o",
            "rekeyed",
            "dossier.txt.kluis",
        ])
        .ok();
    assert_eq!(
        std::fs::read(alice.path("rekeyed/dossier.txt")).unwrap(),
        b"diagnosis"
    );

    // No key server configured at all (identity present): configuration error.
    let offline = User::new();
    std::fs::copy(&identity, offline.config_dir().join("identity.key")).unwrap();
    std::fs::copy(
        alice.path("dossier.txt.kluis"),
        offline.path("dossier.txt.kluis"),
    )
    .unwrap();
    let mut offline = offline;
    offline.env.push(("PASS".into(), "correct horse".into()));
    offline
        .run(&["open", "--passphrase-env", "PASS", "dossier.txt.kluis"])
        .fails(2, "none is configured");

    // The key server is down: the identity alone opens nothing.
    server.stop();
    alice
        .run(&[
            "open",
            "--passphrase-env",
            "PASS",
            "-o",
            "down",
            "dossier.txt.kluis",
        ])
        .fails(3, "opening needs the key server at");
}

#[test]
fn remove_original_only_after_verification() {
    let mut server = Server::start();
    let mut alice = User::logged_in(&server, &server.alice);
    write(&alice.path("a.txt"), b"remove me");
    let v = alice
        .run(&[
            "--json",
            "seal",
            "--label",
            "hr",
            "--remove-original",
            "a.txt",
        ])
        .ok()
        .json();
    assert_eq!(v["originals_removed"], 1);
    assert_eq!(v["files"][0]["outcome"], "original_removed");
    assert!(!alice.path("a.txt").exists());
    alice.run(&["open", "a.txt.kluis"]).ok();
    assert_eq!(std::fs::read(alice.path("a.txt")).unwrap(), b"remove me");

    // Double key: verified with the identity too.
    alice.env.push(("PASS".into(), "pw of 12+ chars".into()));
    alice.run(&["keygen", "--passphrase-env", "PASS"]).ok();
    write(&alice.path("d.txt"), b"double");
    alice
        .run(&[
            "seal",
            "--label",
            "medical",
            "--remove-original",
            "--passphrase-env",
            "PASS",
            "d.txt",
        ])
        .ok();
    assert!(!alice.path("d.txt").exists());
    assert!(alice.path("d.txt.kluis").exists());

    // The key server is down: sealed from the cache, but the original is kept.
    server.stop();
    write(&alice.path("b.txt"), b"keep me");
    alice
        .run(&["seal", "--label", "hr", "--remove-original", "b.txt"])
        .fails(3, "was sealed but kept");
    assert_eq!(std::fs::read(alice.path("b.txt")).unwrap(), b"keep me");
    assert!(alice.path("b.txt.kluis").exists());
}

#[test]
fn recovery_keys_are_always_added_and_open_without_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let recovery = kluis_core::Identity::generate().unwrap();
    let rec_file = dir.path().join("recovery.key");
    kluis_file::write_identity_file(&recovery, &rec_file, b"kept in the safe").unwrap();
    let rec_pub = recovery.public_key().to_string();
    let server = Server::start_with(&[&[
        "label",
        "create",
        "legal",
        "--group",
        "hr-staff",
        "--recovery",
        &rec_pub,
    ]]);
    let alice = User::logged_in(&server, &server.alice);
    write(&alice.path("contract.txt"), b"terms");
    let sealed = alice
        .run(&["--json", "seal", "--label", "legal", "contract.txt"])
        .ok()
        .json();
    assert_eq!(sealed["recovery_keys"], 1);
    let inspected = alice
        .run(&["--json", "inspect", "contract.txt.kluis"])
        .ok()
        .json();
    let slots = inspected["files"][0]["slots"].as_array().unwrap();
    assert_eq!(slots.len(), 2, "label slot and recovery slot: {slots:?}");
    assert_eq!(slots[1]["stanzas"][0]["type"], "x25519");

    // The records officer: no server, no token, only the recovery identity.
    let mut officer = User::new();
    officer
        .env
        .push(("RECOVERY_PASS".into(), "kept in the safe".into()));
    std::fs::copy(
        alice.path("contract.txt.kluis"),
        officer.path("contract.txt.kluis"),
    )
    .unwrap();
    officer
        .run(&[
            "open",
            "--identity",
            rec_file.to_str().unwrap(),
            "--passphrase-env",
            "RECOVERY_PASS",
            "contract.txt.kluis",
        ])
        .ok();
    assert_eq!(
        std::fs::read(officer.path("contract.txt")).unwrap(),
        b"terms"
    );
}

/// The bytes after the header.
fn payload(path: &Path, user: &User) -> Vec<u8> {
    let v = user
        .run(&["--json", "inspect", path.to_str().unwrap()])
        .ok()
        .json();
    let header = v["files"][0]["header_bytes"].as_u64().unwrap() as usize;
    std::fs::read(path).unwrap()[header..].to_vec()
}

fn kids(path: &Path, user: &User) -> Vec<u64> {
    let v = user
        .run(&["--json", "inspect", path.to_str().unwrap()])
        .ok()
        .json();
    v["files"][0]["slots"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["stanzas"].as_array().unwrap().clone())
        .filter_map(|s| s["kid"].as_u64())
        .collect()
}

#[test]
fn rotated_label_old_documents_open_and_rekey_moves_them() {
    let server = Server::start();
    let alice = User::logged_in(&server, &server.alice);
    for name in ["a", "b", "c"] {
        write(
            &alice.path(&format!("docs/{name}.txt")),
            name.repeat(100_000).as_bytes(),
        );
    }
    alice.run(&["seal", "--label", "hr", "docs"]).ok();
    let a = alice.path("docs/a.txt.kluis");
    let before = payload(&a, &alice);
    assert_eq!(kids(&a, &alice), [1]);

    server.admin(&["label", "rotate", "hr"]);
    // Old documents still open.
    alice.run(&["open", "-o", "v1", "docs"]).ok();
    assert_eq!(
        std::fs::read(alice.path("v1/a.txt")).unwrap(),
        "a".repeat(100_000).as_bytes()
    );

    // Once retired, version 1 opens only to re-key.
    server.admin(&["label", "retire", "hr", "1"]);
    alice
        .run(&["open", "-o", "retired", "docs/a.txt.kluis"])
        .fails(5, "kluis rekey");

    let moved = alice
        .run(&["--json", "rekey", "--reason", "rotation 2025", "docs"])
        .ok()
        .json();
    assert_eq!(moved["moved"], 3, "{moved}");
    assert_eq!(moved["files"][0]["to"], 2);
    assert_eq!(moved["files"][0]["header"], "in place", "{moved}");
    assert_eq!(kids(&a, &alice), [2]);
    assert_eq!(payload(&a, &alice), before, "payload bytes unchanged");
    assert!(
        tree(&alice.path("docs"))
            .iter()
            .all(|n| !n.contains(".kluis-tmp-")),
        "no temporary files left"
    );

    alice.run(&["open", "-o", "v2", "docs"]).ok();
    assert_eq!(tree(&alice.path("v2")).len(), 3);
    assert_eq!(
        std::fs::read(alice.path("v2/c.txt")).unwrap(),
        "c".repeat(100_000).as_bytes()
    );

    // Again: nothing to do.
    let again = alice.run(&["--json", "rekey", "docs"]).ok().json();
    assert_eq!(again["moved"], 0);
    assert_eq!(again["current"], 3);
    let human = alice.run(&["rekey", "docs/a.txt.kluis"]).ok();
    assert!(
        human.stdout_text().contains("current"),
        "{}",
        human.stdout_text()
    );
}

#[test]
fn revoked_token_says_run_kluis_login() {
    let server = Server::start();
    let alice = User::logged_in(&server, &server.alice);
    write(&alice.path("note.txt"), b"memo");
    alice.run(&["seal", "--label", "hr", "note.txt"]).ok();
    server.admin(&["token", "revoke", &server.alice_id]);
    let run = alice
        .run(&["open", "-o", "out", "note.txt.kluis"])
        .fails(4, "kluis login");
    assert!(!run.stderr.contains(&server.alice), "no token in messages");
    alice.run(&["audit"]).fails(4, "kluis login");

    // A token the server does not accept is not saved.
    let carol = User::new();
    carol
        .run_in(
            &["--server", &server.url, "login"],
            Some(b"kluis_bogus_token"),
        )
        .fails(4, "does not accept this token");
    assert!(!carol.config_dir().join("token").exists());
}

#[test]
fn server_down_sealing_works_from_the_cache_and_opening_says_so() {
    let mut server = Server::start();
    let alice = User::logged_in(&server, &server.alice);
    write(&alice.path("first.txt"), b"one");
    alice.run(&["seal", "--label", "hr", "first.txt"]).ok();
    for i in 0..5 {
        write(&alice.path(&format!("many/{i}.txt")), b"x");
    }
    alice.run(&["seal", "--label", "hr", "many"]).ok();
    let url = server.url.clone();
    server.stop();

    write(&alice.path("offline.txt"), b"written on the train");
    alice.run(&["seal", "--label", "hr", "offline.txt"]).ok();
    assert!(alice.path("offline.txt.kluis").exists());

    let run = alice
        .run(&["open", "-o", "out", "offline.txt.kluis"])
        .fails(
            3,
            "sealing still works offline; opening needs the key server at",
        );
    assert!(run.stderr.contains(&url), "{}", run.stderr);
    assert!(!alice.path("out/offline.txt").exists());

    // Five files, one cause: shown three times, then counted.
    let run = alice
        .run(&["open", "-o", "out", "many"])
        .fails(3, "2 more files");
    assert_eq!(run.stderr.matches("cannot reach the key server").count(), 4);

    let status = alice.run(&["--json", "status"]);
    assert_eq!(status.code, 3);
    let v = status.json();
    assert_eq!(v["reachable"], false);
    assert_eq!(v["cached_labels"][0]["label"], "hr");
    // A label that was never cached cannot be sealed offline.
    alice
        .run(&["seal", "--label", "medical", "offline.txt", "--force"])
        .fails(3, "cannot reach the key server");
}

#[test]
fn an_expired_cached_record_is_used_offline_with_a_warning() {
    let mut server = Server::start_with_record_max_age(1);
    let alice = User::logged_in(&server, &server.alice);
    write(&alice.path("a.txt"), b"a");
    alice.run(&["seal", "--label", "hr", "a.txt"]).ok();
    server.stop();
    std::thread::sleep(Duration::from_millis(2100));
    write(&alice.path("b.txt"), b"b");
    let run = alice
        .run(&["--json", "seal", "--label", "hr", "b.txt"])
        .ok();
    assert!(
        run.stderr
            .contains("warning: using the cached record of label `hr` (key version 1, expired"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("cannot reach the key server"),
        "{}",
        run.stderr
    );
    assert_eq!(run.json()["stale_record"], true);
    assert!(alice.path("b.txt.kluis").exists());
}

#[test]
fn destroyed_version_names_the_date() {
    let server = Server::start();
    let alice = User::logged_in(&server, &server.alice);
    write(&alice.path("old.txt"), b"expired record");
    alice.run(&["seal", "--label", "hr", "old.txt"]).ok();
    server.admin(&["label", "rotate", "hr"]);
    server.admin(&["label", "destroy", "hr", "1", "--confirm", "hr"]);
    let run = alice
        .run(&["open", "-o", "out", "old.txt.kluis"])
        .fails(6, "was destroyed on 20");
    assert!(
        run.stderr.contains("cannot be opened by anyone"),
        "{}",
        run.stderr
    );
}

#[test]
fn hostile_stored_names_are_refused_and_nothing_escapes() {
    let server = Server::start();
    let alice = User::logged_in(&server, &server.alice);
    let hr = server.label_key("hr");
    let slots = [Slot::single(Recipient::Label(hr))];
    let hostile = [
        "../evil",
        "a/../../evil",
        "/tmp/evil",
        "nested/../../../evil",
        "CON",
        "x\u{1b}[31mred",
    ];
    for (i, name) in hostile.iter().enumerate() {
        let doc = kluis_core::seal(&slots, &Metadata::default().name(*name), b"payload").unwrap();
        write(&alice.path(&format!("in/doc{i}.kluis")), &doc);
    }
    let run = alice.run(&["--json", "open", "-o", "out/inner", "in"]);
    assert_eq!(run.code, 7, "{}", run.stderr);
    let v = run.json();
    assert_eq!(v["failed"], hostile.len());
    assert!(run.stderr.contains("refused"), "{}", run.stderr);
    assert!(!run.stderr.contains("evil"), "stored names are never shown");
    assert!(tree(&alice.path("out")).is_empty(), "nothing written");
    let everything = tree(&alice.work());
    assert!(
        everything.iter().all(|p| p.starts_with("in/")),
        "{everything:?}"
    );
    assert!(!Path::new("/tmp/evil").exists());
}

#[test]
fn interrupted_seal_leaves_the_original_and_no_output() {
    let server = Server::start();
    let alice = User::logged_in(&server, &server.alice);
    let big = alice.path("big.bin");
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&big).unwrap());
        let mut block = vec![0u8; 1 << 20];
        for i in 0..512u32 {
            for (j, b) in block.iter_mut().enumerate() {
                *b = (i as usize * 31 + j * 7) as u8;
            }
            f.write_all(&block).unwrap();
        }
    }
    let before = (
        std::fs::metadata(&big).unwrap().modified().unwrap(),
        digest(&big),
    );
    let mut child = alice
        .command()
        .args(["seal", "--label", "hr", "big.bin"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once the temporary output has grown.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut killed_at = None;
    while Instant::now() < deadline {
        let grown = std::fs::read_dir(alice.work()).unwrap().any(|e| {
            let e = e.unwrap();
            e.file_name().to_string_lossy().starts_with(".kluis-tmp-")
                && e.metadata().is_ok_and(|m| m.len() > 8 << 20)
        });
        if grown {
            child.kill().unwrap(); // SIGKILL
            killed_at = Some(Instant::now());
            break;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let status = child.wait().unwrap();
    assert!(
        killed_at.is_some(),
        "sealing finished before it could be killed"
    );
    assert!(!status.success());
    assert!(
        !alice.path("big.bin.kluis").exists(),
        "no output under the final name"
    );
    let after = (
        std::fs::metadata(&big).unwrap().modified().unwrap(),
        digest(&big),
    );
    assert_eq!(before, after, "the original is intact and unchanged");
    // A second run succeeds; the leftover temporary file does not get in the way.
    alice.run(&["seal", "--label", "hr", "big.bin"]).ok();
    alice.run(&["open", "-o", "out", "big.bin.kluis"]).ok();
    assert_eq!(digest(&alice.path("out/big.bin")), before.1);
}

#[test]
fn stdin_to_stdout_round_trip() {
    let server = Server::start();
    let alice = User::logged_in(&server, &server.alice);
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    // From a pipe.
    let sealed = alice
        .run_in(&["seal", "--label", "hr"], Some(&data))
        .ok()
        .stdout;
    assert!(sealed.starts_with(b"KLUIS\0"));
    let opened = alice.run_in(&["open"], Some(&sealed)).ok().stdout;
    assert_eq!(opened, data);
    // A payload that ends exactly on a chunk boundary (64 KiB chunks) and on the writer's
    // first batch boundary (1 + 4 chunks).
    for len in [65_536, 5 * 65_536] {
        let exact: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
        let sealed = alice
            .run_in(&["seal", "--label", "hr"], Some(&exact))
            .ok()
            .stdout;
        let opened = alice.run_in(&["open"], Some(&sealed)).ok().stdout;
        assert!(opened == exact, "{len} bytes");
    }
    // `-` is standard input too; a redirected file has a size, so --pad works.
    write(&alice.path("in.bin"), &data);
    let padded = alice
        .run_file_stdin(
            &["seal", "--label", "hr", "--pad", "-"],
            &alice.path("in.bin"),
        )
        .ok()
        .stdout;
    assert!(padded.len() > sealed.len(), "padded");
    write(&alice.path("padded.kluis"), &padded);
    let opened = alice
        .run_file_stdin(&["open", "-"], &alice.path("padded.kluis"))
        .ok()
        .stdout;
    assert_eq!(opened, data);
    alice
        .run_in(&["seal", "--label", "hr", "--pad"], Some(&data))
        .fails(2, "--pad needs the size");

    // -o writes a file, atomically, never over an existing one.
    alice
        .run_in(&["seal", "--label", "hr", "-o", "s.kluis"], Some(&data))
        .ok();
    alice
        .run_in(&["seal", "--label", "hr", "-o", "s.kluis"], Some(&data))
        .fails(8, "--force");
    let v = alice
        .run_file_stdin(
            &["--json", "open", "-o", "plain.bin"],
            &alice.path("s.kluis"),
        )
        .ok()
        .json();
    assert_eq!(v["bytes"], data.len());
    assert_eq!(std::fs::read(alice.path("plain.bin")).unwrap(), data);

    // Truncated: only authenticated chunks come out, and the exit code says to discard them.
    let cut = &sealed[..sealed.len() - 100];
    let run = alice.run_in(&["open"], Some(cut)).fails(7, "discard");
    assert!(run.stdout.len() < data.len());
    assert_eq!(run.stdout[..], data[..run.stdout.len()]);
    alice
        .run_in(&["open", "-o", "cut.bin"], Some(cut))
        .fails(7, "failed authentication");
    assert!(!alice.path("cut.bin").exists());
    alice
        .run_in(&["open"], Some(b"not a kluis document at all"))
        .fails(7, "not a kluis document");
}

/// Run `kluis args` with standard input and output on a pseudo-terminal (via `script`).
fn on_terminal(user: &User, args: &str) -> Option<(i32, String)> {
    let script = ["/usr/bin/script", "/bin/script"]
        .into_iter()
        .find(|p| Path::new(p).exists())?;
    let base = user.command();
    let mut c = Command::new(script);
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
        .stdin(Stdio::null())
        .output()
        .ok()?;
    Some((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

#[test]
fn refuses_to_write_binary_to_a_terminal() {
    let server = Server::start();
    let alice = User::logged_in(&server, &server.alice);
    let Some((code, text)) = on_terminal(&alice, "seal --label hr") else {
        eprintln!("skipped: `script` (util-linux) is not installed, so there is no pty");
        return;
    };
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("refusing to write binary to a terminal; redirect or use -o"),
        "{text}"
    );
    // Opening text to a terminal is allowed; binary is refused.
    let text_doc = alice
        .run_in(&["seal", "--label", "hr"], Some(b"plain words\n"))
        .ok()
        .stdout;
    write(&alice.path("text.kluis"), &text_doc);
    let (code, out) = on_terminal(&alice, "open - < text.kluis").unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("plain words"), "{out}");
    let bin_doc = alice
        .run_in(&["seal", "--label", "hr"], Some(&[0u8, 1, 2, 255]))
        .ok()
        .stdout;
    write(&alice.path("bin.kluis"), &bin_doc);
    let (code, out) = on_terminal(&alice, "open - < bin.kluis").unwrap();
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("refusing to write binary to a terminal"),
        "{out}"
    );
}

#[test]
fn inspect_needs_no_server_and_json_parses() {
    let server = Server::start();
    let alice = User::logged_in(&server, &server.alice);
    write(&alice.path("x.txt"), &vec![7u8; 200_000]);
    alice.run(&["seal", "--label", "hr", "--pad", "x.txt"]).ok();
    let stranger = User::new();
    std::fs::copy(alice.path("x.txt.kluis"), stranger.path("x.txt.kluis")).unwrap();
    write(&stranger.path("junk.bin"), b"hello");
    let v = stranger
        .run(&["--json", "inspect", "x.txt.kluis"])
        .ok()
        .json();
    let f = &v["files"][0];
    assert_eq!(f["doc_id"].as_str().unwrap().len(), 32);
    assert_eq!(f["slots"][0]["stanzas"][0]["label"], "hr");
    assert_eq!(f["slots"][0]["stanzas"][0]["kid"], 1);
    assert_eq!(f["payload"]["chunks"], 4);
    assert!(f["payload"]["padded_len"].as_u64().unwrap() >= 200_000);
    let human = stranger.run(&["inspect", "x.txt.kluis"]).ok().stdout_text();
    assert!(human.contains("label hr, key version 1"), "{human}");
    stranger
        .run(&["inspect", "junk.bin"])
        .fails(7, "not a kluis document");
    // From standard input as well.
    let data = std::fs::read(stranger.path("x.txt.kluis")).unwrap();
    let v = stranger
        .run_in(&["--json", "inspect"], Some(&data))
        .ok()
        .json();
    assert_eq!(v["files"][0]["payload"]["chunks"], 4);

    // Other commands' --json parses too.
    let v = alice.run(&["--json", "labels"]).ok().json();
    let names: Vec<_> = v["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["hr", "medical"]);
    let v = alice.run(&["--json", "status"]).ok().json();
    assert_eq!(v["ready"], true);
    assert_eq!(v["token"], true);
    let v = alice.run(&["--json", "config", "show"]).ok().json();
    assert_eq!(v["server"], server.url.as_str());
    assert_eq!(v["token"], "configuration folder");
}

#[test]
fn configuration_commands() {
    let u = User::new();
    u.run(&["config", "set", "label", "hr"]).ok();
    u.run(&["config", "set", "server", "https://keys.example.org"])
        .ok();
    u.run(&["config", "set", "server", "http://keys.example.org"])
        .fails(2, "refusing plain http://");
    u.run(&["config", "set", "default_to", "kluis1xyz"])
        .fails(2, "invalid public key");
    u.run(&["config", "set", "colour", "blue"])
        .fails(2, "unknown configuration key");
    let text = std::fs::read_to_string(u.config_dir().join("config.toml")).unwrap();
    assert!(text.contains("label = \"hr\""), "{text}");
    let v = u.run(&["--json", "config", "show"]).ok().json();
    assert_eq!(v["label"], "hr");
    u.run(&["config", "unset", "label"]).ok();
    let v = u.run(&["--json", "config", "show"]).ok().json();
    assert_eq!(v["label"], serde_json::Value::Null);
    // No label, no server: usage errors that say what to do.
    let fresh = User::new();
    write(&fresh.path("a.txt"), b"a");
    fresh.run(&["seal", "a.txt"]).fails(2, "--label");
    fresh
        .run(&["seal", "--label", "hr", "a.txt"])
        .fails(2, "no key server configured");
    fresh.run(&["status"]).fails(2, "kluis login");
    // A broken config file is reported, not ignored.
    write(&fresh.config_dir().join("config.toml"), b"nonsense = [");
    fresh.run(&["config", "show"]).fails(2, "config.toml");
}

#[test]
fn completions_and_man_page() {
    let u = User::new();
    let bash = u.run(&["completions", "bash"]).ok().stdout_text();
    assert!(bash.contains("_kluis") && bash.contains("rekey"), "{bash}");
    let zsh = u.run(&["completions", "zsh"]).ok().stdout_text();
    assert!(zsh.contains("#compdef kluis"));
    let man = u.run(&["man"]).ok().stdout_text();
    assert!(man.contains(".TH kluis"), "{man}");
    assert!(man.contains("Exit codes"), "exit codes in the man page");
    let help = u.run(&["--help"]).ok().stdout_text();
    assert!(help.contains("8  the output exists"), "{help}");
    u.run(&["seal", "--bogus"]).fails(2, "--bogus");
}

#[test]
fn login_replaces_a_corrupt_token_file_without_showing_it() {
    let server = Server::start();
    let alice = User::new();
    let token_file = alice.config_dir().join("token");
    // Text that is not a token (it might still be someone's secret: it must not be shown).
    write(&token_file, b"old secret with spaces\n");
    alice.run(&["audit"]).fails(4, "kluis login");

    let run = alice
        .run_in(
            &["--server", &server.url, "login"],
            Some(server.alice.as_bytes()),
        )
        .ok();
    assert!(
        run.stderr.contains("warning") && run.stderr.contains(&format!("{token_file:?}")),
        "a warning naming the file: {}",
        run.stderr
    );
    assert!(!run.stderr.contains("old secret"), "{}", run.stderr);
    assert!(!run.stderr.contains(&server.alice), "{}", run.stderr);
    assert_eq!(
        std::fs::read_to_string(&token_file).unwrap().trim(),
        server.alice
    );
    alice.run(&["audit"]).ok();

    // A file that is not even text is replaced too; no server is needed for that.
    write(&token_file, b"\xff\xfeold\x00secret");
    let fresh = "kluis_fresh_token";
    let run = alice
        .run_in(&["login", "--no-check"], Some(fresh.as_bytes()))
        .ok();
    assert!(
        run.stderr.contains(&format!("{token_file:?}")),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("secret"), "{}", run.stderr);
    assert_eq!(std::fs::read_to_string(&token_file).unwrap().trim(), fresh);

    // A rejected token still saves nothing: the corrupt file is left as it was.
    write(&token_file, b"old secret with spaces\n");
    alice
        .run_in(&["login"], Some(b"kluis_bogus_token"))
        .fails(4, "does not accept this token");
    assert_eq!(
        std::fs::read(&token_file).unwrap(),
        b"old secret with spaces\n"
    );
}

#[test]
fn config_set_label_refuses_what_the_client_would_refuse() {
    let u = User::new();
    for bad in [".", "..", "a/b", "", &"x".repeat(65)] {
        u.run(&["config", "set", "label", bad])
            .fails(2, "invalid label name");
    }
    assert!(
        !u.config_dir().join("config.toml").exists(),
        "nothing saved"
    );
    u.run(&["config", "set", "label", "hr-2025_x.y"]).ok();
    let v = u.run(&["--json", "config", "show"]).ok().json();
    assert_eq!(v["label"], "hr-2025_x.y");
}
