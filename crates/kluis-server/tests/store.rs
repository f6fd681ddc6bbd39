//! The SQLite store on real files: label lifecycle, sealing at rest, tokens, audit chain.

use kluis_core::{Metadata, Recipient, Slot, open, seal};
use kluis_server::{KeyService, KeySource, Policy, ServerError, SqliteStore, VersionState, now_ms};
use rusqlite::Connection;

struct Fixture {
    _dir: tempfile::TempDir,
    db: std::path::PathBuf,
    key: std::path::PathBuf,
}

fn fixture() -> (Fixture, KeyService<SqliteStore>) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    let key = dir.path().join("master.key");
    let store = KeyService::init_sqlite(&db, KeySource::File(&key)).unwrap();
    (Fixture { _dir: dir, db, key }, store)
}

fn reopen(f: &Fixture) -> KeyService<SqliteStore> {
    KeyService::open_sqlite(&f.db, KeySource::File(&f.key)).unwrap()
}

fn hr_policy() -> Policy {
    Policy {
        groups: vec!["hr-staff".into()],
        ..Policy::default()
    }
}

#[test]
fn lifecycle_rotate_retire_destroy_and_restart() {
    let (f, mut s) = fixture();
    let v1 = s.create_label("hr", &hr_policy(), "admin:test").unwrap();
    let doc = seal(
        &[Slot::single(Recipient::Label(v1.clone()))],
        &Metadata::default(),
        b"salary",
    )
    .unwrap();
    assert!(matches!(
        s.create_label("hr", &hr_policy(), "a"),
        Err(ServerError::LabelExists(_))
    ));

    assert_eq!(s.rotate("hr", "admin:test").unwrap(), 2);
    let info = s.label("hr").unwrap();
    assert_eq!(info.current().unwrap().kid, 2);
    assert_eq!(info.versions[0].state, VersionState::Active);
    // The old version still opens.
    let (k1, state) = s.label_key_for_tests("hr", 1).unwrap();
    assert_eq!(state, VersionState::Active);
    assert_eq!(open(&doc, &[&k1]).unwrap().0, b"salary");

    // The current version cannot be retired or destroyed.
    assert!(matches!(
        s.destroy("hr", 2, "a"),
        Err(ServerError::Refused(_))
    ));
    s.retire("hr", 1, "admin:test").unwrap();
    assert_eq!(
        s.label_key_for_tests("hr", 1).unwrap().1,
        VersionState::Retired
    );

    // A restart keeps everything.
    drop(s);
    let mut s = reopen(&f);
    assert_eq!(s.label("hr").unwrap().versions.len(), 2);
    s.destroy("hr", 1, "admin:test").unwrap();
    assert!(matches!(
        s.label_key_for_tests("hr", 1),
        Err(ServerError::Destroyed { kid: 1, .. })
    ));
    assert!(matches!(
        s.destroy("hr", 1, "a"),
        Err(ServerError::Destroyed { .. })
    ));
    assert!(matches!(
        s.label_key_for_tests("hr", 9),
        Err(ServerError::UnknownVersion { .. })
    ));
    assert!(matches!(
        s.label_key_for_tests("nope", 1),
        Err(ServerError::UnknownLabel(_))
    ));
    let (n, _) = s.verify_audit().unwrap();
    assert_eq!(n, 5, "init, create, rotate, retire, destroy");
}

#[test]
fn destroying_a_version_leaves_no_trace_of_its_secret_in_the_file() {
    let (f, mut s) = fixture();
    s.create_label("hr", &hr_policy(), "a").unwrap();
    s.rotate("hr", "a").unwrap();
    let sealed: Vec<u8> = Connection::open(&f.db)
        .unwrap()
        .query_row(
            "SELECT sealed_secret FROM key_versions WHERE kid = 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let contains = |hay: &[u8]| hay.windows(sealed.len()).any(|w| w == sealed.as_slice());
    let files = |f: &Fixture| {
        let mut all = std::fs::read(&f.db).unwrap();
        for ext in ["db-wal", "db-shm"] {
            if let Ok(b) = std::fs::read(f.db.with_extension(ext)) {
                all.extend(b);
            }
        }
        all
    };
    // Push the WAL into the main file first, so that the check below is meaningful.
    Connection::open(&f.db)
        .unwrap()
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    assert!(
        contains(&files(&f)),
        "the sealed secret is in the file before destruction"
    );
    s.destroy("hr", 1, "a").unwrap();
    assert!(
        !contains(&files(&f)),
        "secure delete and the checkpoint wiped it"
    );
}

#[test]
fn a_sealed_key_copied_to_another_label_does_not_open() {
    let (f, mut s) = fixture();
    s.create_label("hr", &hr_policy(), "a").unwrap();
    s.create_label("legal", &Policy::default(), "a").unwrap();
    let conn = Connection::open(&f.db).unwrap();
    conn.execute(
        "UPDATE key_versions SET sealed_secret = (SELECT sealed_secret FROM key_versions WHERE label = 'hr')
         WHERE label = 'legal'",
        [],
    )
    .unwrap();
    assert!(matches!(
        s.label_key_for_tests("legal", 1),
        Err(ServerError::WrongMasterKey)
    ));
    assert!(s.label_key_for_tests("hr", 1).is_ok());
}

#[test]
fn wrong_master_key_and_passphrase_mode() {
    let (f, _s) = fixture();
    let other = f.db.with_file_name("other.key");
    kluis_server::MasterKey::generate()
        .unwrap()
        .write_new_file(&other)
        .unwrap();
    assert!(matches!(
        KeyService::open_sqlite(&f.db, KeySource::File(&other)),
        Err(ServerError::WrongMasterKey)
    ));
    assert!(matches!(
        KeyService::init_sqlite(&f.db, KeySource::File(&other)),
        Err(ServerError::Init(_))
    ));

    let db = f.db.with_file_name("pw.db");
    KeyService::init_sqlite(&db, KeySource::Passphrase(b"correct horse")).unwrap();
    assert!(KeyService::open_sqlite(&db, KeySource::Passphrase(b"correct horse")).is_ok());
    assert!(matches!(
        KeyService::open_sqlite(&db, KeySource::Passphrase(b"wrong")),
        Err(ServerError::WrongMasterKey)
    ));
    assert!(matches!(
        KeyService::open_sqlite(&db, KeySource::File(&f.key)),
        Err(ServerError::Init(_))
    ));
}

#[cfg(unix)]
#[test]
fn a_key_file_readable_by_others_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let (f, _s) = fixture();
    assert_eq!(
        std::fs::metadata(&f.key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    std::fs::set_permissions(&f.key, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(matches!(
        KeyService::open_sqlite(&f.db, KeySource::File(&f.key)),
        Err(ServerError::KeyFilePermissions { mode: 0o644 })
    ));
}

#[test]
fn tokens_authenticate_until_revoked_or_expired() {
    let (f, mut s) = fixture();
    let groups = vec!["hr-staff".to_string()];
    let (token, id) = s.create_token("alice", &groups, None, "a").unwrap();
    let p = s.authenticate(&token, now_ms()).unwrap().unwrap();
    assert_eq!(
        (p.user.as_str(), p.groups.clone(), p.credential.as_str()),
        ("alice", groups.clone(), format!("token:{id}").as_str())
    );
    // Any change to the token fails.
    let mut bad = token.clone().into_bytes();
    let last = bad.len() - 1;
    bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
    assert!(
        s.authenticate(std::str::from_utf8(&bad).unwrap(), now_ms())
            .unwrap()
            .is_none()
    );
    assert!(s.authenticate("kluis_short", now_ms()).unwrap().is_none());
    // Only a keyed hash is stored: the token's secret part is nowhere in the store's files.
    Connection::open(&f.db)
        .unwrap()
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    let file = std::fs::read(&f.db).unwrap();
    let secret = &token.as_bytes()[14..];
    assert!(!file.windows(secret.len()).any(|w| w == secret));
    assert!(
        file.windows(id.len()).any(|w| w == id.as_bytes()),
        "the public id is stored"
    );

    s.revoke_token(&id, "a").unwrap();
    assert!(s.authenticate(&token, now_ms()).unwrap().is_none());
    assert!(s.revoke_token(&id, "a").is_err());

    let (short, _) = s
        .create_token("bob", &[], Some(now_ms() + 1000), "a")
        .unwrap();
    assert!(s.authenticate(&short, now_ms()).unwrap().is_some());
    assert!(s.authenticate(&short, now_ms() + 2000).unwrap().is_none());
}

/// Tampering with the audit table directly in SQLite is detected, whatever the edit.
#[test]
fn audit_verify_detects_edits_deletions_insertions_reordering_and_truncation() {
    let edits: &[(&str, &str)] = &[
        ("edit", "UPDATE audit SET outcome = 'denied' WHERE seq = 3"),
        ("delete middle", "DELETE FROM audit WHERE seq = 3"),
        (
            "delete tail",
            "DELETE FROM audit WHERE seq = (SELECT MAX(seq) FROM audit)",
        ),
        (
            "insert",
            "INSERT INTO audit SELECT seq + 100, time_ms, actor, action, label, kid, doc_id, outcome, reason, client, mac, credential FROM audit WHERE seq = 2",
        ),
        (
            "reorder",
            "UPDATE audit SET seq = CASE seq WHEN 2 THEN 3 WHEN 3 THEN 2 END WHERE seq IN (2, 3)",
        ),
        (
            "credential changed",
            "UPDATE audit SET credential = 'token:kluis_AAAAAAAA' WHERE seq = 3",
        ),
        (
            "credential removed",
            "UPDATE audit SET credential = NULL WHERE seq = 3",
        ),
        (
            "recompute-free forgery",
            "UPDATE audit SET actor = 'someone-else', mac = (SELECT mac FROM audit WHERE seq = 2) WHERE seq = 4",
        ),
    ];
    for (what, sql) in edits {
        let (f, mut s) = fixture();
        s.create_label("hr", &hr_policy(), "a").unwrap();
        s.rotate("hr", "a").unwrap();
        s.create_token("alice", &[], None, "a").unwrap();
        s.verify_audit().unwrap();
        let conn = Connection::open(&f.db).unwrap();
        // Reordering needs the primary key out of the way for a moment.
        if *what == "reorder" {
            conn.execute_batch(
                "UPDATE audit SET seq = -2 WHERE seq = 2; UPDATE audit SET seq = 2 WHERE seq = 3; UPDATE audit SET seq = 3 WHERE seq = -2;",
            )
            .unwrap();
        } else {
            conn.execute(sql, []).unwrap();
        }
        assert!(
            matches!(s.verify_audit(), Err(ServerError::AuditBroken { .. })),
            "{what} went unnoticed"
        );
    }
}

/// Records written before credentials were recorded (no `credential`) keep verifying beside
/// new ones; giving such a record a credential afterwards is detected.
#[test]
fn records_without_a_credential_keep_verifying() {
    let (f, mut s) = fixture();
    let entry = |credential: Option<&str>| kluis_server::audit::AuditEntry {
        time_ms: now_ms(),
        actor: "alice".into(),
        action: "unwrap".into(),
        label: Some("hr".into()),
        kid: Some(1),
        doc_id: None,
        outcome: "granted".into(),
        reason: None,
        client: None,
        credential: credential.map(str::to_owned),
    };
    s.append_audit(&[
        entry(None),
        entry(Some("token:kluis_abcdefgh")),
        entry(None),
    ])
    .unwrap();
    let (n, _) = s.verify_audit().unwrap();
    let records = s.audit_records(None).unwrap();
    assert_eq!(records.len() as i64, n);
    let old = records
        .iter()
        .find(|r| r.entry.credential.is_none())
        .expect("a record without a credential");
    let by_token = s.audit_by_credential("token:kluis_abcdefgh").unwrap();
    assert_eq!(by_token.len(), 1);
    Connection::open(&f.db)
        .unwrap()
        .execute(
            "UPDATE audit SET credential = 'token:kluis_abcdefgh' WHERE seq = ?1",
            [old.seq],
        )
        .unwrap();
    assert!(matches!(
        s.verify_audit(),
        Err(ServerError::AuditBroken { seq, .. }) if seq == old.seq
    ));
}

/// A store from before the credential column (schema version 2, records without
/// credentials) is upgraded on open: its records keep verifying and new ones carry their
/// credential.
#[test]
fn a_store_from_before_credentials_is_upgraded_and_keeps_verifying() {
    let (f, mut s) = fixture();
    let old = kluis_server::audit::AuditEntry {
        time_ms: now_ms(),
        actor: "admin".into(),
        action: "store.init".into(),
        label: None,
        kid: None,
        doc_id: None,
        outcome: "ok".into(),
        reason: None,
        client: None,
        credential: None,
    };
    // Rewrite the trail as an older kluis-server wrote it (no credential is MACed then),
    // and take the schema back to version 2.
    let conn = Connection::open(&f.db).unwrap();
    conn.execute_batch("DELETE FROM audit; DELETE FROM meta WHERE key = 'audit_head';")
        .unwrap();
    s.append_audit(&[old.clone(), old]).unwrap();
    drop(s);
    conn.execute_batch(
        "DROP INDEX audit_credential; ALTER TABLE audit DROP COLUMN credential;
         ALTER TABLE key_versions DROP COLUMN dke_public;
         ALTER TABLE key_versions DROP COLUMN dke_sealed;
         PRAGMA user_version = 2;",
    )
    .unwrap();
    drop(conn);

    let mut s = reopen(&f);
    assert_eq!(s.verify_audit().unwrap().0, 2);
    s.create_label("hr", &hr_policy(), "admin:test").unwrap();
    let (n, _) = s.verify_audit().unwrap();
    assert_eq!(n, 3);
    let records = s.audit_records(None).unwrap();
    assert!(records[..2].iter().all(|r| r.entry.credential.is_none()));
    assert_eq!(
        records[2].entry.credential.as_deref(),
        Some("admin-cli:test")
    );
}
