//! The operator's lifecycle commands, against the real binary and real SQLite files:
//! `label update`, `token revoke-user`, `backup`/`restore`, `master-key rotate`, and
//! `audit anchor` / `audit verify --anchors`.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{LOOPBACK, admin, admin_fails, label_key, post, serve};
use kluis_core::{LabelPublicKey, Metadata, Recipient, Slot};
use serde_json::{Value, json};

/// A store with label `hr` (users alice and bob) and a token for each.
fn store() -> (tempfile::TempDir, String, String) {
    let dir = tempfile::tempdir().unwrap();
    admin(dir.path(), &["init"]);
    admin(
        dir.path(),
        &["label", "create", "hr", "--user", "alice", "--user", "bob"],
    );
    let alice = admin(dir.path(), &["token", "create", "--user", "alice"]);
    let bob = admin(dir.path(), &["token", "create", "--user", "bob"]);
    (dir, alice.trim().to_owned(), bob.trim().to_owned())
}

fn audit(dir: &Path) -> Vec<Value> {
    admin(dir, &["audit", "export"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn serve_loopback(dir: tempfile::TempDir) -> common::Server {
    serve(
        dir,
        &[LOOPBACK[0], LOOPBACK[1], LOOPBACK[2], "--rate-limit", "0"],
    )
}

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn a_user_removed_from_a_label_is_refused_on_the_very_next_unwrap() {
    let (dir, alice, bob) = store();
    let server = serve_loopback(dir);
    let url = format!("{}/v1/unwrap", server.base);
    let body = common::unwrap_body(&label_key(&server, "hr"));
    assert_eq!(post(&url, Some(&bob), &body).0, 200);
    let out = admin(
        server.dir.path(),
        &["label", "update", "hr", "--remove-user", "bob"],
    );
    assert!(out.contains("policy updated"), "{out}");
    // No restart, no cache to expire: the very next request is refused.
    let (status, v, _) = post(&url, Some(&bob), &body);
    assert_eq!(status, 403, "{v}");
    assert_eq!(v["code"], "denied");
    assert_eq!(post(&url, Some(&alice), &body).0, 200);
    // Adding bob back lets him in again, just as promptly.
    admin(
        server.dir.path(),
        &["label", "update", "hr", "--add-user", "bob"],
    );
    assert_eq!(post(&url, Some(&bob), &body).0, 200);
    // Each change is audited with the old and the new policy, and the chain verifies.
    let updates: Vec<Value> = audit(server.dir.path())
        .into_iter()
        .filter(|r| r["action"] == "label.update")
        .collect();
    assert_eq!(updates.len(), 2);
    let first: Value = serde_json::from_str(updates[0]["reason"].as_str().unwrap()).unwrap();
    assert_eq!(first["old"]["users"], json!(["alice", "bob"]));
    assert_eq!(first["new"]["users"], json!(["alice"]));
    assert_eq!(updates[0]["label"], "hr");
    assert!(updates[0]["actor"].as_str().unwrap().starts_with("admin:"));
    admin(server.dir.path(), &["audit", "verify"]);
}

#[test]
fn label_update_changes_every_policy_field_and_double_key_off_needs_confirmation() {
    let (dir, _, _) = store();
    let d = dir.path();
    let recovery_key = {
        // A recovery key: any valid kluis1 public key, here another label's.
        admin(d, &["label", "create", "other", "--user", "x"]);
        let shown: Value = serde_json::from_str(&admin(d, &["label", "show", "other"])).unwrap();
        shown["versions"][0]["public_key"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    admin(
        d,
        &[
            "label",
            "update",
            "hr",
            "--add-group",
            "finance",
            "--add-recovery",
            &recovery_key,
            "--rotate-every",
            "90d",
            "--retain",
            "365d",
            "--double-key",
            "on",
        ],
    );
    let policy = |d: &Path| -> Value {
        serde_json::from_str::<Value>(&admin(d, &["label", "show", "hr"])).unwrap()["policy"]
            .clone()
    };
    let p = policy(d);
    assert_eq!(p["groups"], json!(["finance"]));
    assert_eq!(p["recovery"], json!([recovery_key]));
    assert_eq!(p["rotation_secs"], 90 * 86_400);
    assert_eq!(p["retention_secs"], 365 * 86_400);
    assert_eq!(p["double_key"], true);

    // Turning double key off lets the server alone open new documents: confirmation needed.
    let e = admin_fails(d, &["label", "update", "hr", "--double-key", "off"]);
    assert!(e.contains("--confirm hr"), "{e}");
    let e = admin_fails(
        d,
        &[
            "label",
            "update",
            "hr",
            "--double-key",
            "off",
            "--confirm",
            "other",
        ],
    );
    assert!(e.contains("repeat the label name"), "{e}");
    assert_eq!(policy(d)["double_key"], true);
    admin(
        d,
        &[
            "label",
            "update",
            "hr",
            "--double-key",
            "off",
            "--confirm",
            "hr",
        ],
    );
    assert_eq!(policy(d)["double_key"], false);

    // Removing what is not there, nothing to change, and an invalid result are refused,
    // and change nothing.
    let e = admin_fails(d, &["label", "update", "hr", "--remove-user", "mallory"]);
    assert!(
        e.contains("mallory") && e.contains("not in the policy"),
        "{e}"
    );
    let e = admin_fails(d, &["label", "update", "hr"]);
    assert!(e.contains("nothing to change"), "{e}");
    let e = admin_fails(d, &["label", "update", "hr", "--add-recovery", "kluis1bad"]);
    assert!(e.contains("invalid policy"), "{e}");
    let e = admin_fails(d, &["label", "update", "nosuch", "--add-user", "x"]);
    assert!(e.contains("no label"), "{e}");
    admin(
        d,
        &[
            "label",
            "update",
            "hr",
            "--remove-group",
            "finance",
            "--remove-recovery",
            &recovery_key,
            "--no-rotation",
            "--no-retention",
        ],
    );
    let p = policy(d);
    assert_eq!(p["groups"], json!([]));
    assert_eq!(p["recovery"], json!([]));
    assert_eq!(p["rotation_secs"], Value::Null);
    assert_eq!(p["retention_secs"], Value::Null);
    assert_eq!(p["users"], json!(["alice", "bob"]));
    // Three successful updates, three records; the refused ones left none.
    let n = audit(d)
        .iter()
        .filter(|r| r["action"] == "label.update")
        .count();
    assert_eq!(n, 3);
    admin(d, &["audit", "verify"]);
}

#[test]
fn revoke_user_revokes_every_token_of_that_user_and_no_other() {
    let (dir, alice, bob) = store();
    let bob2 = admin(dir.path(), &["token", "create", "--user", "bob"])
        .trim()
        .to_owned();
    let server = serve_loopback(dir);
    let d = server.dir.path();
    let url = format!("{}/v1/unwrap", server.base);
    let body = common::unwrap_body(&label_key(&server, "hr"));
    for t in [&alice, &bob, &bob2] {
        assert_eq!(post(&url, Some(t), &body).0, 200);
    }
    let out = admin(d, &["token", "revoke-user", "bob"]);
    let revoked: Vec<&str> = out.lines().collect();
    assert_eq!(revoked.len(), 2, "{out}");
    assert!(
        out.contains(&bob[..14]) && out.contains(&bob2[..14]),
        "{out}"
    );
    assert!(!out.contains(&alice[..14]), "{out}");
    // The next request with either of bob's tokens is refused; alice's still works.
    assert_eq!(post(&url, Some(&bob), &body).0, 401);
    assert_eq!(post(&url, Some(&bob2), &body).0, 401);
    assert_eq!(post(&url, Some(&alice), &body).0, 200);
    // Running it again revokes nothing, says so, and is still audited.
    let out = admin(d, &["token", "revoke-user", "bob"]);
    assert!(out.contains("no active token"), "{out}");
    let records = audit(d);
    let per_token = records
        .iter()
        .filter(|r| r["action"] == "token.revoke")
        .count();
    assert_eq!(per_token, 2);
    let summaries: Vec<&Value> = records
        .iter()
        .filter(|r| r["action"] == "token.revoke-user")
        .collect();
    assert_eq!(summaries.len(), 2);
    assert!(
        summaries[0]["reason"]
            .as_str()
            .unwrap()
            .contains("user bob: 2 token(s) revoked"),
        "{:?}",
        summaries[0]
    );
    let tokens: Value = serde_json::from_str(&admin(d, &["token", "list"])).unwrap();
    for t in tokens.as_array().unwrap() {
        assert_eq!(t["revoked_ms"].is_null(), t["user"] == "alice", "{t}");
    }
    admin(d, &["audit", "verify"]);
}

#[test]
fn a_backup_taken_under_load_restores_verifies_and_opens_documents() {
    let (dir, alice, _) = store();
    let server = serve_loopback(dir);
    let d = server.dir.path().to_owned();
    let url = format!("{}/v1/unwrap", server.base);
    let before = common::unwrap_body(&label_key(&server, "hr"));
    assert_eq!(post(&url, Some(&alice), &before).0, 200);
    // A document sealed before the backup, to be opened through the restored server.
    let document = kluis_core::seal(
        &[Slot::single(Recipient::Label(label_key(&server, "hr")))],
        &Metadata::default(),
        b"salary review 2025",
    )
    .unwrap();
    // Load: a thread unwrapping (each one an audit write) while the backup runs.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let load = {
        let (stop, done, url, alice, body) = (
            stop.clone(),
            done.clone(),
            url.clone(),
            alice.clone(),
            before.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let (status, v, _) = post(&url, Some(&alice), &body);
                assert_eq!(status, 200, "{v}");
                done.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    while done.load(Ordering::Relaxed) < 20 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let backups = tempfile::tempdir().unwrap();
    let file = backups.path().join("kluis.backup");
    let at_start = done.load(Ordering::Relaxed);
    admin(&d, &["backup", "--to", file.to_str().unwrap()]);
    let at_end = done.load(Ordering::Relaxed);
    while done.load(Ordering::Relaxed) < at_end + 20 {
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    eprintln!("{} unwraps during the backup", at_end - at_start);
    #[cfg(unix)]
    assert_eq!(mode(&file), 0o600);
    // Only the finished backup is left: no temporary files beside it.
    assert_eq!(std::fs::read_dir(backups.path()).unwrap().count(), 1);
    // A backup never overwrites.
    let e = admin_fails(&d, &["backup", "--to", file.to_str().unwrap()]);
    assert!(e.contains("exists"), "{e}");

    // Restore into a fresh directory with the master key file.
    let fresh = tempfile::tempdir().unwrap();
    std::fs::copy(
        d.join("kluis-master.key"),
        fresh.path().join("kluis-master.key"),
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            fresh.path().join("kluis-master.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
    }
    let out = admin(fresh.path(), &["restore", "--from", file.to_str().unwrap()]);
    assert!(out.contains("audit trail verified"), "{out}");
    let out = admin(fresh.path(), &["audit", "verify"]);
    assert!(out.contains("audit trail verified"), "{out}");
    // The restored trail holds at least the unwraps answered before the backup started.
    let unwraps = audit(fresh.path())
        .iter()
        .filter(|r| r["action"] == "unwrap")
        .count();
    assert!(unwraps > at_start, "{unwraps} <= {at_start}");
    #[cfg(unix)]
    assert_eq!(mode(&fresh.path().join("kluis-server.db")), 0o600);
    drop(server);
    // A server on the restored store opens the document sealed before the backup: the real
    // client unwraps through it and the plaintext comes back.
    let restored = serve_loopback(fresh);
    let mut config = kluis_client::ClientConfig::new(&restored.base);
    config.token = Some(kluis_client::Token::new(&alice).unwrap());
    config.cache_dir = None;
    let client = kluis_client::Client::new(config).unwrap();
    let (plain, _) = kluis_core::open(&document, &[&client])
        .unwrap_or_else(|e| panic!("the restored server does not open the document: {e}"));
    assert_eq!(&plain[..], b"salary review 2025");
}

#[test]
fn restore_checks_the_backup_and_overwrites_a_store_only_with_force() {
    let (dir, _, _) = store();
    let d = dir.path();
    let file = d.join("b.db");
    admin(d, &["backup", "--to", "b.db"]);
    // A store exists here: refused without --force.
    let e = admin_fails(d, &["restore", "--from", "b.db"]);
    assert!(e.contains("--force"), "{e}");
    // The store itself is no backup.
    let e = admin_fails(d, &["restore", "--from", "kluis-server.db", "--force"]);
    assert!(e.contains("the store itself"), "{e}");
    // A backup into a directory that does not exist says where.
    let e = admin_fails(d, &["backup", "--to", "no/such/dir/b.db"]);
    assert!(e.contains("no/such/dir/b.db"), "{e}");
    // Another store's key does not open the backup; the target is left alone.
    let other = tempfile::tempdir().unwrap();
    admin(other.path(), &["init"]);
    let e = admin_fails(
        other.path(),
        &["restore", "--from", file.to_str().unwrap(), "--force"],
    );
    assert!(e.contains("master key does not open"), "{e}");
    admin(other.path(), &["audit", "verify"]);
    assert!(!admin(other.path(), &["label", "list"]).contains("hr"));
    // A backup whose audit trail was edited is refused.
    let edited = d.join("edited.db");
    std::fs::copy(&file, &edited).unwrap();
    rusqlite::Connection::open(&edited)
        .unwrap()
        .execute("UPDATE audit SET actor = 'someone-else' WHERE seq = 2", [])
        .unwrap();
    let fresh = tempfile::tempdir().unwrap();
    let key = fresh.path().join("k");
    std::fs::copy(d.join("kluis-master.key"), &key).unwrap();
    let e = admin_fails(
        fresh.path(),
        &[
            "--key-file",
            key.to_str().unwrap(),
            "restore",
            "--from",
            edited.to_str().unwrap(),
        ],
    );
    assert!(e.contains("audit trail does not verify"), "{e}");
    // A file that is not a database is refused too.
    std::fs::write(d.join("junk.db"), vec![0x5a; 8192]).unwrap();
    let e = admin_fails(
        fresh.path(),
        &[
            "--key-file",
            key.to_str().unwrap(),
            "restore",
            "--from",
            d.join("junk.db").to_str().unwrap(),
        ],
    );
    assert!(e.contains("store error") || e.contains("integrity"), "{e}");
    // Nothing was left behind in the target directory by the refused restores.
    let left: Vec<_> = std::fs::read_dir(fresh.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, [std::ffi::OsString::from("k")]);
    // Not under a running server.
    let server = serve_loopback(dir);
    let e = admin_fails(server.dir.path(), &["restore", "--from", "b.db", "--force"]);
    assert!(e.contains("in use"), "{e}");
    let dir = server.kill();
    let d = dir.path();
    // With --force, a newer store is replaced by the backup: the label made since is gone.
    admin(d, &["label", "create", "later", "--user", "x"]);
    admin(d, &["restore", "--from", "b.db", "--force"]);
    let labels = admin(d, &["label", "list"]);
    assert!(
        labels.contains("hr") && !labels.contains("later"),
        "{labels}"
    );
    admin(d, &["audit", "verify"]);
}

/// Copy a key file and make the copy 0600, as `kluis-server` demands.
fn copy_key(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

/// Unwrap each body through a server on `dir` with `token`; returns the statuses and `dir`.
fn statuses(
    dir: tempfile::TempDir,
    token: &str,
    bodies: &[&Value],
) -> (Vec<u16>, tempfile::TempDir) {
    let server = serve_loopback(dir);
    let url = format!("{}/v1/unwrap", server.base);
    let s = bodies
        .iter()
        .map(|b| post(&url, Some(token), b).0)
        .collect();
    (s, server.kill())
}

#[test]
fn master_key_rotation_keeps_chain_tokens_and_keys_and_makes_older_backups_useless() {
    let (dir, alice, _) = store();
    let d = dir.path().to_owned();
    admin(&d, &["label", "rotate", "hr"]);
    admin(&d, &["label", "create", "gone", "--user", "alice"]);
    admin(&d, &["label", "rotate", "gone"]);
    // Documents sealed to both live versions of hr and to a version destroyed later.
    let shown: Value = serde_json::from_str(&admin(&d, &["label", "show", "hr"])).unwrap();
    let key = |shown: &Value, name: &str, kid: u32| {
        let pk = shown["versions"][kid as usize - 1]["public_key"]
            .as_str()
            .unwrap();
        common::unwrap_body(&LabelPublicKey::new(name, kid, pk.parse().unwrap()).unwrap())
    };
    let (hr1, hr2) = (key(&shown, "hr", 1), key(&shown, "hr", 2));
    let gone: Value = serde_json::from_str(&admin(&d, &["label", "show", "gone"])).unwrap();
    let gone1 = key(&gone, "gone", 1);
    admin(&d, &["label", "destroy", "gone", "1", "--confirm", "gone"]);
    admin(&d, &["backup", "--to", "before.db"]);
    let records_before = audit(&d);
    assert_eq!(records_before.last().unwrap()["action"], "store.backup");
    copy_key(&d.join("kluis-master.key"), &d.join("old.key"));
    let old_key = std::fs::read(d.join("old.key")).unwrap();

    let out = admin(&d, &["master-key", "rotate"]);
    // Three live keys: hr 1 and 2, gone 2 (gone 1 is destroyed).
    assert!(out.contains("3 label key(s) re-sealed"), "{out}");
    let new_key = std::fs::read(d.join("kluis-master.key")).unwrap();
    assert_ne!(new_key, old_key);
    assert_eq!(new_key.len(), 65);
    #[cfg(unix)]
    assert_eq!(mode(&d.join("kluis-master.key")), 0o600);
    assert!(!d.join("kluis-master.key.new").exists());

    // The chain continues: every earlier record is unchanged, one record more, verifies.
    admin(&d, &["audit", "verify"]);
    let records_after = audit(&d);
    assert_eq!(records_after[..records_before.len()], records_before[..]);
    assert_eq!(records_after.len(), records_before.len() + 1);
    assert_eq!(records_after.last().unwrap()["action"], "master-key.rotate");

    // The token issued before works, the label keys open, the destroyed one stays gone.
    let (s, dir) = statuses(dir, &alice, &[&hr1, &hr2, &gone1]);
    assert_eq!(s, [200, 200, 410]);
    let d = dir.path().to_owned();

    // The old key no longer opens the store.
    let e = admin_fails(&d, &["--key-file", "old.key", "audit", "verify"]);
    assert!(e.contains("master key does not open"), "{e}");
    // A backup taken before the rotation does not open with the new key...
    let fresh = tempfile::tempdir().unwrap();
    copy_key(
        &d.join("kluis-master.key"),
        &fresh.path().join("kluis-master.key"),
    );
    let before = d.join("before.db");
    let e = admin_fails(
        fresh.path(),
        &["restore", "--from", before.to_str().unwrap()],
    );
    assert!(e.contains("master key does not open"), "{e}");
    // ...only with the old one: destroying every copy of it makes that backup useless.
    copy_key(&d.join("old.key"), &fresh.path().join("old.key"));
    admin(
        fresh.path(),
        &[
            "--key-file",
            "old.key",
            "restore",
            "--from",
            before.to_str().unwrap(),
        ],
    );

    // A second rotation reads the stored token and audit keys; still all unbroken.
    let out = admin(&d, &["master-key", "rotate"]);
    assert!(out.contains("3 label key(s) re-sealed"), "{out}");
    assert_ne!(std::fs::read(d.join("kluis-master.key")).unwrap(), new_key);
    admin(&d, &["audit", "verify"]);
    let (s, _dir) = statuses(dir, &alice, &[&hr1, &hr2, &gone1]);
    assert_eq!(s, [200, 200, 410]);
}

#[test]
fn a_master_key_rotation_that_fails_midway_leaves_the_store_under_the_old_key() {
    let (dir, alice, _) = store();
    let d = dir.path().to_owned();
    admin(&d, &["label", "rotate", "hr"]);
    let old_key = std::fs::read(d.join("kluis-master.key")).unwrap();
    let records = audit(&d).len();
    // Make the last step of the transaction (the new check value) fail, after every label
    // key and the subkeys were already re-sealed inside it.
    rusqlite::Connection::open(d.join("kluis-server.db"))
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER fail_rotation BEFORE UPDATE ON meta WHEN NEW.key = 'check'
             BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
        )
        .unwrap();
    let e = admin_fails(&d, &["master-key", "rotate"]);
    assert!(e.contains("injected failure"), "{e}");
    // Rolled back: same key file, no pending file, no audit record, keys still open.
    assert_eq!(std::fs::read(d.join("kluis-master.key")).unwrap(), old_key);
    assert!(!d.join("kluis-master.key.new").exists());
    admin(&d, &["audit", "verify"]);
    assert_eq!(audit(&d).len(), records);
    let meta: i64 = rusqlite::Connection::open(d.join("kluis-server.db"))
        .unwrap()
        .query_row(
            "SELECT count(*) FROM meta WHERE key IN ('audit_key', 'token_key')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(meta, 0);
    let server = serve_loopback(dir);
    let url = format!("{}/v1/unwrap", server.base);
    let shown: Value =
        serde_json::from_str(&admin(server.dir.path(), &["label", "show", "hr"])).unwrap();
    let pk = shown["versions"][0]["public_key"].as_str().unwrap();
    let v1 = common::unwrap_body(&LabelPublicKey::new("hr", 1, pk.parse().unwrap()).unwrap());
    assert_eq!(post(&url, Some(&alice), &v1).0, 200);
    // Not under a running server (it would keep the old key in memory).
    let e = admin_fails(server.dir.path(), &["master-key", "rotate"]);
    assert!(e.contains("in use"), "{e}");
    let dir = server.kill();
    let d = dir.path();
    // A pending key file from an interrupted rotation is not overwritten.
    rusqlite::Connection::open(d.join("kluis-server.db"))
        .unwrap()
        .execute_batch("DROP TRIGGER fail_rotation")
        .unwrap();
    std::fs::write(d.join("kluis-master.key.new"), b"left over\n").unwrap();
    let e = admin_fails(d, &["master-key", "rotate"]);
    assert!(e.contains("interrupted"), "{e}");
    assert_eq!(
        std::fs::read(d.join("kluis-master.key.new")).unwrap(),
        b"left over\n"
    );
    std::fs::remove_file(d.join("kluis-master.key.new")).unwrap();
    admin(d, &["master-key", "rotate"]);
    admin(d, &["audit", "verify"]);
}

#[test]
fn a_passphrase_store_rotates_to_a_new_passphrase_and_older_backups_need_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_owned();
    let env = [
        ("OLD_PASS", "correct horse battery staple"),
        ("NEW_PASS", "tr0ub4dor&3 but longer"),
    ];
    let run = |pass_var: &str, args: &[&str]| {
        let mut all = vec!["--passphrase-env", pass_var];
        all.extend_from_slice(args);
        common::bin()
            .current_dir(&d)
            .envs(env)
            .args(all)
            .output()
            .unwrap()
    };
    let ok = |pass_var: &str, args: &[&str]| {
        let out = run(pass_var, args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let fails = |pass_var: &str, args: &[&str]| {
        let out = run(pass_var, args);
        assert!(!out.status.success(), "{args:?} succeeded");
        String::from_utf8(out.stderr).unwrap()
    };
    ok("OLD_PASS", &["init"]);
    ok("OLD_PASS", &["label", "create", "hr", "--user", "alice"]);
    let token = ok("OLD_PASS", &["token", "create", "--user", "alice"])
        .trim()
        .to_owned();
    ok("OLD_PASS", &["backup", "--to", "before.db"]);
    // Without a new passphrase, or with the old one again, nothing happens.
    let e = fails("OLD_PASS", &["master-key", "rotate"]);
    assert!(e.contains("--new-passphrase-env"), "{e}");
    let e = fails(
        "OLD_PASS",
        &["master-key", "rotate", "--new-passphrase-env", "OLD_PASS"],
    );
    assert!(e.contains("the old one"), "{e}");
    let out = ok(
        "OLD_PASS",
        &["master-key", "rotate", "--new-passphrase-env", "NEW_PASS"],
    );
    assert!(out.contains("1 label key(s) re-sealed"), "{out}");
    // The old passphrase no longer opens the store; the new one does, the chain verifies.
    let e = fails("OLD_PASS", &["audit", "verify"]);
    assert!(e.contains("master key does not open"), "{e}");
    ok("NEW_PASS", &["audit", "verify"]);
    // The backup from before opens only with the old passphrase.
    let fresh = tempfile::tempdir().unwrap();
    let before = d.join("before.db");
    let restore = |pass_var: &str| {
        common::bin()
            .current_dir(fresh.path())
            .envs(env)
            .args([
                "--passphrase-env",
                pass_var,
                "restore",
                "--from",
                before.to_str().unwrap(),
                "--force",
            ])
            .output()
            .unwrap()
    };
    let out = restore("NEW_PASS");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("master key does not open"));
    assert!(restore("OLD_PASS").status.success());
    // The token issued before works and the label key opens, served under the new passphrase.
    let server = common::serve_with_env(
        dir,
        &[
            LOOPBACK[0],
            LOOPBACK[1],
            LOOPBACK[2],
            "--passphrase-env",
            "NEW_PASS",
        ],
        &env,
    );
    let body = common::unwrap_body(&label_key(&server, "hr"));
    let (status, v, _) = post(&format!("{}/v1/unwrap", server.base), Some(&token), &body);
    assert_eq!(status, 200, "{v}");
}

#[test]
fn a_key_file_store_does_not_take_a_new_passphrase() {
    let (dir, _, _) = store();
    let d = dir.path();
    let out = common::bin()
        .current_dir(d)
        .env("NEW_PASS", "something")
        .args(["master-key", "rotate", "--new-passphrase-env", "NEW_PASS"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("key file"), "{e}");
    admin(d, &["audit", "verify"]);
}

#[test]
fn anchors_detect_a_rollback_past_them_and_a_rewritten_trail() {
    let (dir, _, _) = store();
    let d = dir.path();
    admin(d, &["backup", "--to", "old.db"]);
    admin(d, &["label", "rotate", "hr"]);
    admin(d, &["label", "rotate", "hr"]);
    // An anchor on standard output is one JSON line with the verified head.
    let line = admin(d, &["audit", "anchor"]);
    let a: Value = serde_json::from_str(line.trim()).unwrap();
    let n = audit(d).len() as u64;
    assert_eq!(a["seq"], n);
    assert_eq!(a["mac"].as_str().unwrap().len(), 64);
    assert!(a["time"].as_str().unwrap().starts_with("20"), "{a}");
    let out = admin(d, &["audit", "verify"]);
    assert!(out.contains(a["mac"].as_str().unwrap()), "{out}");
    // Anchors appended to a file; the trail verifies against them.
    admin(d, &["audit", "anchor", "--to", "anchors.jsonl"]);
    admin(d, &["label", "create", "more", "--user", "x"]);
    admin(d, &["audit", "anchor", "--to", "anchors.jsonl"]);
    let anchors = std::fs::read_to_string(d.join("anchors.jsonl")).unwrap();
    assert_eq!(anchors.lines().count(), 2);
    let out = admin(d, &["audit", "verify", "--anchors", "anchors.jsonl"]);
    assert!(out.contains("every anchor"), "{out}");

    // Roll the store back to the older copy: its own chain verifies...
    admin(d, &["restore", "--from", "old.db", "--force"]);
    admin(d, &["audit", "verify"]);
    // ...but the anchors show the records that went missing.
    let e = admin_fails(d, &["audit", "verify", "--anchors", "anchors.jsonl"]);
    assert!(e.contains("missing") && e.contains("rolled back"), "{e}");

    // Extend the rolled-back trail past the anchored heads with other events: the chain
    // verifies, the anchored records now hold other MACs.
    while audit(d).len() as u64 <= n + 1 {
        admin(d, &["label", "rotate", "hr"]);
    }
    admin(d, &["audit", "verify"]);
    let e = admin_fails(d, &["audit", "verify", "--anchors", "anchors.jsonl"]);
    assert!(e.contains("rewritten"), "{e}");

    // A malformed anchor file is refused with its line number.
    std::fs::write(d.join("bad.jsonl"), format!("{}\nnot json\n", line.trim())).unwrap();
    let e = admin_fails(d, &["audit", "verify", "--anchors", "bad.jsonl"]);
    assert!(e.contains("malformed") && e.contains("line 2"), "{e}");
}

#[test]
fn a_process_that_opened_the_store_before_a_master_key_rotation_seals_nothing_under_the_old_key() {
    use kluis_server::{KeyService, KeySource};
    let (dir, _, _) = store();
    let d = dir.path();
    let db = d.join("kluis-server.db");
    let key = d.join("kluis-master.key");
    // Like a running server's scheduler: opened under the key of the time.
    let mut stale = KeyService::open_sqlite(&db, KeySource::File(&key)).unwrap();
    let mut admin_side = KeyService::open_sqlite(&db, KeySource::File(&key)).unwrap();
    admin_side.rotate_master_key(&key, "admin:test").unwrap();
    drop(admin_side);
    let e = stale.rotate("hr", "scheduler").unwrap_err().to_string();
    assert!(e.contains("restart"), "{e}");
    let e = stale
        .create_label("new", &kluis_server::Policy::default(), "admin:test")
        .unwrap_err()
        .to_string();
    assert!(e.contains("restart"), "{e}");
    drop(stale);
    // Under the new key every version opens, and the chain verifies.
    let fresh = KeyService::open_sqlite(&db, KeySource::File(&key)).unwrap();
    let hr = fresh.label("hr").unwrap();
    assert_eq!(hr.versions.len(), 1);
    for v in &hr.versions {
        fresh.label_key_for_tests("hr", v.kid).unwrap();
    }
    assert!(fresh.label("new").is_err());
    fresh.verify_audit().unwrap();
}

#[test]
fn kill_9_during_master_key_rotations_loses_no_key_and_the_documented_recovery_works() {
    use kluis_server::{KeyService, KeySource};
    let (dir, _, _) = store();
    let d = dir.path();
    for _ in 0..3 {
        admin(d, &["label", "rotate", "hr"]);
    }
    let db = d.join("kluis-server.db");
    let key = d.join("kluis-master.key");
    let pending = d.join("kluis-master.key.new");
    let (mut killed, mut finished, mut recovered_new) = (0, 0, 0);
    for round in 0..30u64 {
        // Killed from at once to after 170 ms: before, during and after the transaction.
        let mut child = common::bin()
            .current_dir(d)
            .args(["master-key", "rotate"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(200 * round * round));
        if child.try_wait().unwrap().is_none() {
            killed += 1;
        }
        let _ = child.kill();
        if child.wait().unwrap().success() {
            finished += 1;
        }
        // The recovery docs/SERVER.md describes: a leftover `.new` is either stale (the store
        // still opens with the key file: delete it) or the new key (rename it over).
        if pending.exists() {
            if KeyService::open_sqlite(&db, KeySource::File(&key)).is_ok() {
                std::fs::remove_file(&pending).unwrap();
            } else {
                std::fs::rename(&pending, &key).unwrap();
                recovered_new += 1;
            }
        }
        // Whatever the moment of the kill: the store opens, every key opens, the chain holds.
        let s = KeyService::open_sqlite(&db, KeySource::File(&key)).unwrap();
        for v in s.label("hr").unwrap().versions {
            s.label_key_for_tests("hr", v.kid).unwrap();
        }
        s.verify_audit().unwrap();
    }
    eprintln!(
        "{killed} of 30 rotations killed before they finished, {finished} finished, \
         {recovered_new} recovered by renaming the new key"
    );
    assert!(
        killed > 0,
        "no rotation was interrupted: the test proved nothing"
    );
    assert!(
        finished > 0,
        "no rotation finished: the test proved nothing"
    );
    admin(d, &["audit", "verify"]);
}
