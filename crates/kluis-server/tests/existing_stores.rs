//! Stores written by kluis-server before it was layered (issue 15) keep opening, verifying and
//! working: the SQLite schema, the sealing of keys at rest, the token hashes and the audit MAC
//! bytes did not change. The fixtures were written by the old binary (see
//! `tests/fixtures/README.md`).

use std::path::{Path, PathBuf};

use kluis_server::{KeyService, KeySource, ServerError, SqliteStore, VersionState, now_ms};

/// A copy of fixture `name` in a temporary directory (the key file made 0600, as `init`
/// writes it: git does not keep the mode).
fn copy(name: &str) -> (tempfile::TempDir, PathBuf) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let dir = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(&from).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), dir.path().join(f.file_name())).unwrap();
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let key = dir.path().join("kluis-master.key");
        if key.exists() {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
    }
    let db = dir.path().join("kluis-server.db");
    (dir, db)
}

/// (records, head) as the old `audit verify` printed them.
fn old_head(dir: &Path) -> (i64, String) {
    let text = std::fs::read_to_string(dir.join("head.txt")).unwrap();
    let rest = text.trim().strip_prefix("audit trail verified: ").unwrap();
    let (n, head) = rest.split_once(" records, head ").unwrap();
    (n.parse().unwrap(), head.to_owned())
}

fn token(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("token.txt"))
        .unwrap()
        .trim()
        .to_owned()
}

fn states(svc: &KeyService<SqliteStore>, label: &str) -> Vec<(u32, VersionState)> {
    svc.label(label)
        .unwrap()
        .versions
        .iter()
        .map(|v| (v.kid, v.state))
        .collect()
}

/// Whatever the store, after reading it back: new changes continue the old chain.
fn keeps_working(mut svc: KeyService<SqliteStore>, records: i64) {
    svc.rotate("hr", "admin:test").unwrap();
    let (t, _) = svc.create_token("carol", &[], None, "admin:test").unwrap();
    assert!(svc.authenticate(&t, now_ms()).unwrap().is_some());
    let (n, _) = svc.verify_audit().unwrap();
    assert_eq!(n, records + 2);
    for v in svc.label("hr").unwrap().versions {
        if v.state != VersionState::Destroyed {
            svc.label_key_for_tests("hr", v.kid).unwrap();
        }
    }
}

#[test]
fn a_key_file_store_written_before_the_layering_opens_verifies_and_works() {
    let (dir, db) = copy("store-0.1-keyfile");
    let key = dir.path().join("kluis-master.key");
    let svc = KeyService::open_sqlite(&db, KeySource::File(&key)).unwrap();
    // The same MACs, recomputed over the old rows, give the same head.
    let (n, head) = old_head(dir.path());
    assert_eq!(svc.verify_audit().unwrap(), (n, head));
    assert_eq!(
        states(&svc, "hr"),
        [
            (1, VersionState::Destroyed),
            (2, VersionState::Active),
            (3, VersionState::Current)
        ]
    );
    assert_eq!(
        states(&svc, "legal"),
        [(1, VersionState::Active), (2, VersionState::Current)]
    );
    // Keys sealed before and after the master-key rotation open.
    for (label, kid) in [("hr", 2), ("hr", 3), ("legal", 1), ("legal", 2)] {
        let (k, _) = svc.label_key_for_tests(label, kid).unwrap();
        assert_eq!(
            k.public_key().key().to_string(),
            svc.label(label).unwrap().versions[kid as usize - 1].public_key
        );
    }
    assert!(matches!(
        svc.label_key_for_tests("hr", 1),
        Err(ServerError::Destroyed { .. })
    ));
    // The token issued before the master-key rotation authenticates; bob's stay revoked.
    let alice = svc
        .authenticate(&token(dir.path()), now_ms())
        .unwrap()
        .unwrap();
    assert_eq!(
        (alice.user.as_str(), alice.groups.as_slice()),
        ("alice", &["hr-staff".to_owned()][..])
    );
    assert!(
        svc.tokens()
            .unwrap()
            .iter()
            .filter(|t| t.user == "bob")
            .all(|t| t.revoked_ms.is_some())
    );
    keeps_working(svc, n);
}

#[test]
fn a_passphrase_store_written_before_the_layering_opens_verifies_and_works() {
    let (dir, db) = copy("store-0.1-passphrase");
    let pw = b"correct horse battery staple";
    assert!(matches!(
        KeyService::open_sqlite(&db, KeySource::Passphrase(b"wrong")),
        Err(ServerError::WrongMasterKey)
    ));
    let svc = KeyService::open_sqlite(&db, KeySource::Passphrase(pw)).unwrap();
    let (n, head) = old_head(dir.path());
    assert_eq!(svc.verify_audit().unwrap(), (n, head));
    assert_eq!(states(&svc, "hr"), [(1, VersionState::Current)]);
    svc.label_key_for_tests("hr", 1).unwrap();
    let alice = svc
        .authenticate(&token(dir.path()), now_ms())
        .unwrap()
        .unwrap();
    assert_eq!(alice.user, "alice");
    keeps_working(svc, n);
}
