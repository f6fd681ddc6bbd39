//! Regression tests from walking through docs/OPERATIONS.md and docs/SERVER.md literally, as an
//! administrator would: what each command does when the environment or a path is not what
//! the documents assume, and that every refusal says what to do.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::{admin, admin_fails, bin};
use serde_json::Value;

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// `kluis-server ARGS` under `umask 022` (a root shell's default), in `dir`.
fn with_umask_022(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new("sh")
        .current_dir(dir)
        .arg("-c")
        .arg("umask 022; exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_kluis-server"))
        .args(args)
        .output()
        .unwrap()
}

#[cfg(unix)]
#[test]
fn init_writes_the_store_0600_and_a_refused_init_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = with_umask_022(d, &["--store", "a.db", "--key-file", "k.key", "init"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        mode(&d.join("a.db")),
        0o600,
        "the store must not be world-readable"
    );
    assert_eq!(mode(&d.join("k.key")), 0o600);

    // A second store with the same key file: refused before anything is created, saying what
    // to do, and the key file is untouched.
    let key_before = std::fs::read(d.join("k.key")).unwrap();
    let e = admin_fails(d, &["--store", "b.db", "--key-file", "k.key", "init"]);
    assert!(e.contains("master key file exists already"), "{e}");
    assert!(e.contains("--key-file"), "{e}");
    assert!(
        !d.join("b.db").exists(),
        "a refused init left a store behind, so the next init is refused too"
    );
    assert_eq!(std::fs::read(d.join("k.key")).unwrap(), key_before);
    // The documented way out works at once.
    admin(d, &["--store", "b.db", "--key-file", "k2.key", "init"]);
    admin(
        d,
        &["--store", "b.db", "--key-file", "k2.key", "label", "list"],
    );
}

/// The name of the user the tests run as, from `id -un` (independent of the server's lookup).
fn os_user() -> Option<String> {
    let out = Command::new("id").arg("-un").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .filter(|u| !u.is_empty())
}

#[test]
fn admin_commands_name_the_os_user_when_the_environment_does_not() {
    let Some(user) = os_user() else {
        eprintln!("SKIPPED: `id -un` does not name the current user");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    admin(d, &["init"]);
    // As from a systemd timer: no USER, LOGNAME or USERNAME.
    let out = bin()
        .current_dir(d)
        .env_remove("USER")
        .env_remove("LOGNAME")
        .env_remove("USERNAME")
        .args(["label", "create", "hr", "--user", "alice"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let last: Value = serde_json::from_str(
        admin(d, &["audit", "export"])
            .lines()
            .last()
            .expect("a record"),
    )
    .unwrap();
    assert_eq!(last["action"], "label.create");
    assert_eq!(last["actor"], format!("admin:{user}"), "{last}");
    assert_eq!(last["credential"], format!("admin-cli:{user}"), "{last}");
}

#[test]
fn audit_export_refuses_a_credential_no_record_can_carry_and_says_how_to_write_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    admin(d, &["init"]);
    let token = admin(d, &["token", "create", "--user", "alice"]);
    let token = token.trim();
    let id = &token[..14];
    // The id as `token list` shows it: refused, naming the right spelling.
    let e = admin_fails(d, &["audit", "export", "--credential", id]);
    assert!(e.contains(&format!("token:{id}")), "{e}");
    // The whole secret token: refused, and never echoed.
    let e = admin_fails(
        d,
        &["audit", "export", "--credential", &format!("token:{token}")],
    );
    assert!(e.contains("public id"), "{e}");
    assert!(!e.contains(&token[14..]), "the secret was echoed: {e}");
    // Something of no source at all.
    let e = admin_fails(d, &["audit", "export", "--credential", "alice"]);
    assert!(e.contains("token:") && e.contains("oidc:"), "{e}");
    // The documented forms are accepted (an unused token has no records yet).
    let out = admin(
        d,
        &["audit", "export", "--credential", &format!("token:{id}")],
    );
    assert_eq!(out, "");
    admin(d, &["audit", "export", "--credential", "oidc:entra:SUB"]);
    admin(
        d,
        &["audit", "export", "--credential", "oidc:entra:SUB#JTI"],
    );
    let out = admin(d, &["audit", "export", "--credential", "server:scheduler"]);
    assert_eq!(out, "");
}

#[test]
fn anchor_file_errors_name_the_file_and_a_restore_is_named_as_the_expected_cause() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    admin(d, &["init"]);
    let e = admin_fails(d, &["audit", "verify", "--anchors", "missing.jsonl"]);
    assert!(
        e.contains("missing.jsonl") && e.contains("--anchors"),
        "{e}"
    );
    let e = admin_fails(d, &["audit", "anchor", "--to", "no-such-dir/a.jsonl"]);
    assert!(
        e.contains("no-such-dir/a.jsonl") && e.contains("folder"),
        "{e}"
    );
    // OPERATIONS.md, "Restore": a backup, an anchor after it, a restore: the anchor no longer
    // matches, and the message names the restore as the expected cause.
    admin(d, &["backup", "--to", "old.db"]);
    admin(d, &["label", "create", "hr", "--user", "alice"]);
    admin(d, &["audit", "anchor", "--to", "anchors.jsonl"]);
    admin(d, &["restore", "--from", "old.db", "--force"]);
    admin(d, &["audit", "verify"]);
    let e = admin_fails(d, &["audit", "verify", "--anchors", "anchors.jsonl"]);
    assert!(e.contains("chain verifies"), "{e}");
    assert!(
        e.contains("restore") && e.contains("new anchor file"),
        "{e}"
    );
    assert!(e.contains("security incident"), "{e}");
}

#[test]
fn an_address_in_use_is_named_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    admin(d, &["init"]);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = bin()
        .current_dir(d)
        .args(["serve", "--listen", &addr, "--insecure-http"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains(&addr), "{e}");
    assert!(e.contains("another process") && e.contains("listen"), "{e}");
}

#[test]
fn a_passphrase_prompt_without_a_terminal_names_the_other_sources() {
    // setsid: no controlling terminal, as under cron or systemd.
    let dir = tempfile::tempdir().unwrap();
    let out = match Command::new("setsid")
        .current_dir(dir.path())
        .arg(env!("CARGO_BIN_EXE_kluis-server"))
        .args(["--passphrase-prompt", "init"])
        .stdin(Stdio::null())
        .output()
    {
        Ok(o) => o,
        Err(_) => {
            eprintln!("SKIPPED: no setsid");
            return;
        }
    };
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("--passphrase-file"), "{e}");
}

#[test]
fn creating_an_existing_label_or_naming_a_missing_version_says_what_to_do() {
    // OPERATIONS.md, "Retention", run on a label that exists: the way to change its policy.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    admin(d, &["init"]);
    admin(d, &["label", "create", "hr", "--group", "hr-staff"]);
    let e = admin_fails(
        d,
        &[
            "label", "create", "hr", "--group", "hr-staff", "--retain", "3650d",
        ],
    );
    assert!(e.contains("label update hr"), "{e}");
    let e = admin_fails(d, &["label", "destroy", "hr", "3", "--confirm", "hr"]);
    assert!(e.contains("label show hr"), "{e}");
}

#[test]
fn revoke_user_that_revokes_nothing_says_why() {
    // OPERATIONS.md, "The leaver procedure": a typo or an OpenID Connect name revokes nothing;
    // the command still succeeds (it is on record), but must not read as a finished step.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    admin(d, &["init"]);
    admin(d, &["token", "create", "--user", "alice"]);
    let run = |user: &str| {
        let out = bin()
            .current_dir(d)
            .args(["token", "revoke-user", user])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stderr).unwrap()
    };
    let e = run("alicee");
    assert!(
        e.contains("no token was ever issued") && e.contains("token list"),
        "{e}"
    );
    let e = run("oidc:entra:alice@org.nl");
    assert!(e.contains("identity provider"), "{e}");
    // A real user with tokens: no note; revoked again: nothing active, but it had tokens.
    assert_eq!(run("alice"), "");
    assert_eq!(run("alice"), "");
}

#[test]
fn a_retention_that_destroys_versions_at_once_needs_confirmation() {
    // SERVER.md, "Changing a policy": shortening retention can make versions due at once, and
    // the scheduler then destroys them irreversibly. A slip of the unit (`365s` for `365d`)
    // must be refused like `destroy` without `--confirm`.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    admin(d, &["init"]);
    admin(d, &["label", "create", "fin", "--user", "a"]);
    admin(d, &["label", "rotate", "fin"]);
    let e = admin_fails(d, &["label", "update", "fin", "--retain", "365s"]);
    assert!(
        e.contains("--confirm fin") && e.contains("version(s) 1"),
        "{e}"
    );
    // Nothing changed, and the scheduler destroys nothing.
    let show: Value = serde_json::from_str(&admin(d, &["label", "show", "fin"])).unwrap();
    assert_eq!(show["policy"]["retention_secs"], Value::Null);
    assert_eq!(admin(d, &["schedule"]), "");
    // A period that leaves every version more than a day: no confirmation needed.
    admin(d, &["label", "update", "fin", "--retain", "365d"]);
    // Confirmed: applied, and the next run destroys version 1.
    admin(
        d,
        &[
            "label",
            "update",
            "fin",
            "--retain",
            "1s",
            "--confirm",
            "fin",
        ],
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert!(admin(d, &["schedule"]).contains("destroyed"));
}

#[test]
fn init_into_a_missing_folder_names_the_path_and_leaves_nothing() {
    // OPERATIONS.md, "Install" without the package's /var/lib/kluis-server, or a mistyped path.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let e = admin_fails(d, &["--store", "no/such/store.db", "init"]);
    assert!(
        e.contains("no/such/store.db") && e.contains("folder"),
        "{e}"
    );
    let e = admin_fails(
        d,
        &["--store", "s.db", "--key-file", "no/such/k.key", "init"],
    );
    assert!(e.contains("no/such/k.key") && e.contains("folder"), "{e}");
    assert!(
        !d.join("s.db").exists(),
        "a failed init left its store behind"
    );
    admin(d, &["--store", "s.db", "--key-file", "k.key", "init"]);
}

#[test]
fn the_wrong_kind_of_master_key_says_which_to_give() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("pp"), "a long enough passphrase\n").unwrap();
    admin(d, &["--store", "p.db", "--passphrase-file", "pp", "init"]);
    admin(d, &["--store", "k.db", "init"]);
    let e = admin_fails(d, &["--store", "p.db", "label", "list"]);
    assert!(e.contains("--passphrase-file"), "{e}");
    let e = admin_fails(
        d,
        &[
            "--store",
            "k.db",
            "--passphrase-file",
            "pp",
            "label",
            "list",
        ],
    );
    assert!(e.contains("--key-file"), "{e}");
}
