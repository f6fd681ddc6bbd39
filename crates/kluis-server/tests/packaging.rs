//! What the packaged systemd unit relies on, run against the real binary.
//!
//! The unit hands the master key to the service with `LoadCredential=`. systemd 256 and later put
//! credentials on a tmpfs (`noswap`) and grant the service user read access with a POSIX ACL:
//! the file is root's, mode 0400 plus `user:kluis-server:r--`, so stat() reports 0440 (the group
//! bits show the ACL mask). The server must accept that file, and only that one.
#![cfg(unix)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn run(dir: &Path, creds: Option<&Path>, key: &Path, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kluis-server"));
    c.current_dir(dir)
        .env_remove("KLUIS_STORE")
        .env_remove("KLUIS_KEY_FILE")
        .env_remove("CREDENTIALS_DIRECTORY")
        .arg("--key-file")
        .arg(key)
        .args(args);
    if let Some(d) = creds {
        c.env("CREDENTIALS_DIRECTORY", d);
    }
    c.output().unwrap()
}

/// A store with one label, and a copy of its master key in `creds/master.key` with `mode`.
fn setup(mode: u32) -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("kluis-master.key");
    let out = run(dir.path(), None, &key, &["init"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(
        dir.path(),
        None,
        &key,
        &["label", "create", "hr", "--user", "alice"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let creds = dir.path().join("creds");
    std::fs::create_dir(&creds).unwrap();
    let cred = creds.join("master.key");
    std::fs::copy(&key, &cred).unwrap();
    std::fs::set_permissions(&cred, std::fs::Permissions::from_mode(mode)).unwrap();
    (dir, creds, cred)
}

#[test]
fn accepts_a_systemd_credential_whose_group_bits_are_the_acl_mask() {
    let (dir, creds, cred) = setup(0o440);
    let out = run(dir.path(), Some(&creds), &cred, &["label", "list"]);
    assert!(
        out.status.success(),
        "the key as LoadCredential= hands it over (systemd >= 256) was refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("hr\t"));
}

#[test]
fn group_readable_key_outside_the_credentials_directory_is_still_refused() {
    let (dir, creds, cred) = setup(0o440);
    // No $CREDENTIALS_DIRECTORY at all.
    let out = run(dir.path(), None, &cred, &["label", "list"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("mode 440"));
    // $CREDENTIALS_DIRECTORY names another directory.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let out = run(dir.path(), Some(&other), &cred, &["label", "list"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("mode 440"));
    // A file in a subdirectory of it is not a credential systemd wrote.
    let sub = creds.join("sub");
    std::fs::create_dir(&sub).unwrap();
    let nested = sub.join("master.key");
    std::fs::copy(&cred, &nested).unwrap();
    std::fs::set_permissions(&nested, std::fs::Permissions::from_mode(0o440)).unwrap();
    let out = run(dir.path(), Some(&creds), &nested, &["label", "list"]);
    assert!(!out.status.success());
}

#[test]
fn credential_readable_by_others_or_writable_by_the_group_is_refused() {
    for mode in [0o444, 0o460, 0o404, 0o450] {
        let (dir, creds, cred) = setup(mode);
        let out = run(dir.path(), Some(&creds), &cred, &["label", "list"]);
        assert!(!out.status.success(), "mode {mode:o} accepted");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(&format!("mode {mode:o}")),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
