//! Regression tests from the adversarial review of the lifecycle commands: backups never
//! replace an existing name, restore and master-key rotation act on what a symbolic link
//! points to, an empty anchor file is no proof, and a recovery key cannot side-step the
//! double-key confirmation.

mod common;

use std::path::Path;

use common::{admin, admin_fails};
use serde_json::Value;

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) {
    std::os::unix::fs::symlink(target, link).unwrap();
}

fn is_symlink(p: &Path) -> bool {
    std::fs::symlink_metadata(p)
        .map(|m| m.file_type().is_symlink())
        .unwrap_or(false)
}

fn labels(dir: &Path, store: &str) -> Vec<String> {
    let out = admin(dir, &["--store", store, "label", "list"]);
    out.lines().map(str::to_owned).collect()
}

#[cfg(unix)]
#[test]
fn backup_never_replaces_an_existing_name_not_even_a_dangling_symbolic_link() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    admin(d, &["init"]);
    // A dangling link: `Path::exists` says no, but the name exists and a rename replaces it.
    symlink(&d.join("elsewhere.db"), &d.join("backup.db"));
    let e = admin_fails(d, &["backup", "--to", "backup.db"]);
    assert!(e.contains("exists"), "{e}");
    assert!(is_symlink(&d.join("backup.db")), "the link was replaced");
    assert!(!d.join("elsewhere.db").exists());
    // No temporary file is left behind.
    let left: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains(".backup-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // A free name still works.
    admin(d, &["backup", "--to", "fresh.db"]);
    admin(d, &["--store", "fresh.db", "audit", "verify"]);
}

#[cfg(unix)]
#[test]
fn restore_through_a_symbolic_link_replaces_the_store_it_points_to() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("data")).unwrap();
    admin(d, &["--store", "data/store.db", "init"]);
    symlink(Path::new("data/store.db"), &d.join("link.db"));
    admin(
        d,
        &["--store", "link.db", "label", "create", "hr", "--user", "a"],
    );
    admin(d, &["--store", "link.db", "backup", "--to", "b.db"]);
    admin(
        d,
        &[
            "--store", "link.db", "label", "create", "later", "--user", "a",
        ],
    );
    admin(
        d,
        &["--store", "link.db", "restore", "--from", "b.db", "--force"],
    );
    // The link still leads to the store, and the store it leads to is the restored one:
    // replacing the link would leave the old store (with `later`) where the link pointed.
    assert!(is_symlink(&d.join("link.db")), "the link was replaced");
    let real = labels(d, "data/store.db");
    assert!(!real.iter().any(|l| l.contains("later")), "{real:?}");
    assert!(real.iter().any(|l| l.contains("hr")), "{real:?}");
    admin(d, &["--store", "link.db", "audit", "verify"]);
    // A link whose store is gone (the disk lost): restored where the link points.
    std::fs::remove_file(d.join("data/store.db")).unwrap();
    admin(d, &["--store", "link.db", "restore", "--from", "b.db"]);
    assert!(is_symlink(&d.join("link.db")), "the link was replaced");
    assert!(d.join("data/store.db").is_file());
    admin(d, &["--store", "link.db", "audit", "verify"]);
}

#[cfg(unix)]
#[test]
fn master_key_rotation_through_a_symbolic_link_replaces_the_key_file_it_points_to() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("secret")).unwrap();
    admin(d, &["--key-file", "secret/master.key", "init"]);
    admin(
        d,
        &[
            "--key-file",
            "secret/master.key",
            "label",
            "create",
            "hr",
            "--user",
            "a",
        ],
    );
    let old = std::fs::read(d.join("secret/master.key")).unwrap();
    symlink(Path::new("secret/master.key"), &d.join("link.key"));
    admin(d, &["--key-file", "link.key", "master-key", "rotate"]);
    // Replacing the link would leave the old key in secret/master.key, where the operator
    // keeps the key, while the message says the key file holds the new key.
    assert!(is_symlink(&d.join("link.key")), "the link was replaced");
    let new = std::fs::read(d.join("secret/master.key")).unwrap();
    assert_ne!(
        old, new,
        "the old key is still in the file the link points to"
    );
    admin(d, &["--key-file", "secret/master.key", "audit", "verify"]);
    admin(d, &["--key-file", "link.key", "label", "show", "hr"]);
    assert!(!d.join("secret/master.key.new").exists());
    assert!(!d.join("link.key.new").exists());
}

#[test]
fn audit_verify_refuses_an_anchor_file_without_any_anchor() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    admin(d, &["init"]);
    std::fs::write(d.join("empty.jsonl"), "").unwrap();
    std::fs::write(d.join("blank.jsonl"), "\n\n  \n").unwrap();
    for f in ["empty.jsonl", "blank.jsonl"] {
        let e = admin_fails(d, &["audit", "verify", "--anchors", f]);
        assert!(e.contains("no anchor"), "{f}: {e}");
    }
    admin(d, &["audit", "anchor", "--to", "a.jsonl"]);
    let out = admin(d, &["audit", "verify", "--anchors", "a.jsonl"]);
    assert!(out.contains("every anchor"), "{out}");
}

#[test]
fn adding_a_recovery_key_to_a_double_key_label_needs_the_same_confirmation_as_double_key_off() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    admin(d, &["init"]);
    admin(d, &["label", "create", "hr", "--user", "a", "--double-key"]);
    admin(d, &["label", "create", "other", "--user", "x"]);
    let shown: Value = serde_json::from_str(&admin(d, &["label", "show", "other"])).unwrap();
    let key = shown["versions"][0]["public_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let recovery = |d: &Path| -> Value {
        serde_json::from_str::<Value>(&admin(d, &["label", "show", "hr"])).unwrap()["policy"]
            ["recovery"]
            .clone()
    };
    // A recovery slot opens new documents alone: on a double-key label that is what
    // `--double-key off` allows, which needs --confirm.
    let e = admin_fails(d, &["label", "update", "hr", "--add-recovery", &key]);
    assert!(e.contains("--confirm hr"), "{e}");
    assert_eq!(recovery(d), serde_json::json!([]));
    let e = admin_fails(
        d,
        &[
            "label",
            "update",
            "hr",
            "--add-recovery",
            &key,
            "--confirm",
            "other",
        ],
    );
    assert!(e.contains("repeat the label name"), "{e}");
    assert_eq!(recovery(d), serde_json::json!([]));
    admin(
        d,
        &[
            "label",
            "update",
            "hr",
            "--add-recovery",
            &key,
            "--confirm",
            "hr",
        ],
    );
    assert_eq!(recovery(d), serde_json::json!([key]));
    // Removing it, or adding one already there, widens nothing: no confirmation.
    admin(d, &["label", "update", "hr", "--remove-recovery", &key]);
    assert_eq!(recovery(d), serde_json::json!([]));
}

#[test]
fn audit_anchor_and_verify_succeed_while_the_server_appends_records() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let dir = tempfile::tempdir().unwrap();
    admin(dir.path(), &["init"]);
    admin(dir.path(), &["label", "create", "hr", "--user", "alice"]);
    let alice = admin(dir.path(), &["token", "create", "--user", "alice"])
        .trim()
        .to_owned();
    let server = common::serve(
        dir,
        &[
            common::LOOPBACK[0],
            common::LOOPBACK[1],
            common::LOOPBACK[2],
            "--rate-limit",
            "0",
        ],
    );
    let d = server.dir.path().to_owned();
    let url = format!("{}/v1/unwrap", server.base);
    let body = common::unwrap_body(&common::label_key(&server, "hr"));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let load = {
        let (stop, done) = (stop.clone(), done.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let (status, v, _) = common::post(&url, Some(&alice), &body);
                assert_eq!(status, 200, "{v}");
                done.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    while done.load(Ordering::Relaxed) < 10 {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // Run from cron while the server serves: a record appended between reading the records
    // and reading the stored head must not read as "records were cut off".
    let mut failures = Vec::new();
    for _ in 0..30 {
        for args in [
            &["audit", "anchor", "--to", "a.jsonl"][..],
            &["audit", "verify", "--anchors", "a.jsonl"][..],
        ] {
            let out = common::bin().current_dir(&d).args(args).output().unwrap();
            if !out.status.success() {
                failures.push(String::from_utf8_lossy(&out.stderr).into_owned());
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    assert!(
        done.load(Ordering::Relaxed) > 20,
        "too little load to mean anything"
    );
    assert!(
        failures.is_empty(),
        "{} failures: {:?}",
        failures.len(),
        failures.first()
    );
}

/// Clears the immutable attribute it set, so the temporary directory can be removed.
#[cfg(target_os = "linux")]
struct Immutable(std::path::PathBuf);

#[cfg(target_os = "linux")]
impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&self.0)
            .status();
    }
}

#[cfg(target_os = "linux")]
#[test]
fn a_rotation_that_commits_but_cannot_replace_the_key_file_says_the_new_key_is_the_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    admin(d, &["init"]);
    admin(d, &["label", "create", "hr", "--user", "a"]);
    let key = d.join("kluis-master.key");
    // An immutable key file: the new key can be written beside it and the store re-sealed,
    // but the rename over it fails (the same as a key file bind-mounted or owned by another
    // user in a sticky directory). Needs CAP_LINUX_IMMUTABLE.
    let set = std::process::Command::new("chattr")
        .arg("+i")
        .arg(&key)
        .status();
    if !set.is_ok_and(|s| s.success()) {
        eprintln!("SKIPPED: chattr +i is not available or not permitted here");
        return;
    }
    let guard = Immutable(key.clone());
    let e = admin_fails(d, &["master-key", "rotate"]);
    drop(guard);
    // The store now opens only with the new key: the message must say so, not just
    // "Operation not permitted" (after which deleting the `.new` file loses every key).
    assert!(e.contains("WAS rotated"), "{e}");
    assert!(e.contains("Do not delete"), "{e}");
    admin_fails(d, &["label", "show", "hr"]);
    admin(
        d,
        &["--key-file", "kluis-master.key.new", "label", "show", "hr"],
    );
}

#[test]
fn a_store_left_under_the_pending_key_by_a_cut_off_rotation_says_where_its_key_is() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    admin(d, &["init"]);
    admin(d, &["label", "create", "hr", "--user", "a"]);
    let key = d.join("kluis-master.key");
    let pending = d.join("kluis-master.key.new");
    let old = std::fs::read(&key).unwrap();
    admin(d, &["master-key", "rotate"]);
    // The state a kill between the commit and the rename leaves: the old key in the key
    // file, the new (only working) key in KEYFILE.new.
    std::fs::rename(&key, &pending).unwrap();
    std::fs::write(&key, &old).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    for args in [&["label", "show", "hr"][..], &["audit", "verify"][..]] {
        let e = admin_fails(d, args);
        assert!(
            e.contains("kluis-master.key.new") && e.contains("interrupted"),
            "{args:?}: {e}"
        );
    }
    // The advice works.
    std::fs::rename(&pending, &key).unwrap();
    admin(d, &["label", "show", "hr"]);
    // And a plainly wrong key, with no pending file, is still reported as a wrong key.
    std::fs::write(&key, &old).unwrap();
    let e = admin_fails(d, &["label", "show", "hr"]);
    assert!(
        e.contains("does not open this store") && !e.contains("interrupted"),
        "{e}"
    );
}

fn audit_records(dir: &Path) -> Vec<Value> {
    admin(dir, &["audit", "export"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Unmounts the small file system it mounted.
#[cfg(target_os = "linux")]
struct Mounted(std::path::PathBuf);

#[cfg(target_os = "linux")]
impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[cfg(target_os = "linux")]
#[test]
fn a_backup_that_fails_is_on_record_as_failed_not_as_made() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    admin(d, &["init"]);
    admin(d, &["label", "create", "hr", "--user", "a"]);
    // A successful backup: "started" (which the backup holds), then "ok".
    admin(d, &["backup", "--to", "good.db"]);
    let records = audit_records(d);
    let backups: Vec<&Value> = records
        .iter()
        .filter(|r| r["action"] == "store.backup")
        .collect();
    assert_eq!(backups.len(), 2, "{backups:?}");
    assert_eq!(backups[0]["outcome"], "started");
    assert_eq!(backups[1]["outcome"], "ok");
    let held = admin(d, &["--store", "good.db", "audit", "export"]);
    assert!(
        held.lines().last().unwrap().contains("\"started\""),
        "{held}"
    );

    // A backup onto a full disk (a 16 KiB tmpfs; needs CAP_SYS_ADMIN).
    let small = d.join("small");
    std::fs::create_dir(&small).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16k", "tmpfs"])
        .arg(&small)
        .status();
    if !mounted.is_ok_and(|s| s.success()) {
        eprintln!("SKIPPED (full disk part): cannot mount a tmpfs here");
        return;
    }
    let _guard = Mounted(small.clone());
    let e = admin_fails(d, &["backup", "--to", "small/b.db"]);
    assert!(e.contains("full"), "{e}");
    assert_eq!(std::fs::read_dir(&small).unwrap().count(), 0);
    // The trail must not say a backup to small/b.db was made: its last word is "failed".
    let records = audit_records(d);
    let last = records.last().unwrap();
    assert_eq!(last["action"], "store.backup", "{last}");
    assert_eq!(last["outcome"], "failed", "{last}");
    assert!(
        last["reason"].as_str().unwrap().contains("small/b.db"),
        "{last}"
    );
    admin(d, &["audit", "verify"]);
}

#[test]
fn restore_refuses_a_backup_whose_sealed_label_key_is_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    admin(d, &["init"]);
    admin(d, &["label", "create", "hr", "--user", "a"]);
    admin(d, &["label", "rotate", "hr"]);
    admin(d, &["backup", "--to", "b.db"]);
    // Bit rot inside a sealed key: SQLite's integrity check and the audit chain do not look
    // inside it, so the backup passed and replaced the working store, whose label then
    // could not open any document.
    let conn = rusqlite::Connection::open(d.join("b.db")).unwrap();
    let mut sealed: Vec<u8> = conn
        .query_row(
            "SELECT sealed_secret FROM key_versions WHERE label = 'hr' AND kid = 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    sealed[20] ^= 1;
    conn.execute(
        "UPDATE key_versions SET sealed_secret = ?1 WHERE label = 'hr' AND kid = 1",
        [&sealed],
    )
    .unwrap();
    drop(conn);
    let e = admin_fails(d, &["restore", "--from", "b.db", "--force"]);
    assert!(e.contains("version 1 of label `hr`"), "{e}");
    // The working store is untouched and no temporary file is left.
    admin(d, &["audit", "verify"]);
    let v: Value = serde_json::from_str(&admin(d, &["label", "show", "hr"])).unwrap();
    assert_eq!(v["versions"].as_array().unwrap().len(), 2);
    let left: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains(".restore-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // A sound backup restores (the public keys match).
    admin(d, &["backup", "--to", "good.db"]);
    admin(d, &["restore", "--from", "good.db", "--force"]);
}
