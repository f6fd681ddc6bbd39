//! The PostgreSQL store through the real `kluis-server` binary and at the row level, on a
//! throwaway cluster of this test binary (`kluis_testkit::postgres`; needs
//! `apt-get install postgresql`): init, admin, serve and unwrap; the password and TLS rules;
//! `store copy` from SQLite; and crypto-shredding in the table's files.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use kluis_core::reply::ReplyKey;
use kluis_core::{Metadata, Recipient, Slot, seal};
use kluis_server::{PgOptions, PgStore, Store, VersionRow, VersionState};
use kluis_testkit::postgres::{PASSWORD, PgCluster};
use serde_json::{Value, json};

mod common;
use common::{LOOPBACK, bin, get, label_key, post, serve_with_env};

/// A new database in this binary's cluster; its URL.
fn database() -> String {
    let c = PgCluster::shared();
    c.url(&c.create_database())
}

/// Run the binary in `dir` on the store `url` (password from the environment).
fn run(dir: &Path, url: &str, args: &[&str]) -> std::process::Output {
    bin()
        .current_dir(dir)
        .env("KLUIS_STORE", url)
        .env("KLUIS_STORE_PASSWORD", PASSWORD)
        .args(args)
        .output()
        .unwrap()
}

fn ok(dir: &Path, url: &str, args: &[&str]) -> String {
    let out = run(dir, url, args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fails(dir: &Path, url: &str, args: &[&str]) -> String {
    let out = run(dir, url, args);
    assert!(!out.status.success(), "{args:?} succeeded");
    String::from_utf8(out.stderr).unwrap()
}

/// One unwrap request for a fresh document sealed to `label`'s current key.
pub fn unwrap_body(server: &common::Server, label: &str, reason: &str) -> Value {
    let key = label_key(server, label);
    let doc = seal(
        &[Slot::single(Recipient::Label(key))],
        &Metadata::default(),
        b"x",
    )
    .unwrap();
    let header = kluis_core::Header::parse(&doc).unwrap();
    json!({
        "reply_key": B64.encode(ReplyKey::generate().unwrap().public_bytes()),
        "doc_id": header.doc_id().to_string(),
        "stanza": B64.encode(header.slots()[0][0].to_bytes()),
        "reason": reason,
    })
}

/// The whole life on PostgreSQL through the command line and the served API: init, labels,
/// tokens, unwrap, revocation taking effect at once, the audit trail verifying.
#[test]
fn init_admin_serve_and_unwrap_on_postgres() {
    let url = database();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let init = ok(d, &url, &["init"]);
    assert!(
        init.contains("initialised store in the PostgreSQL database"),
        "{init}"
    );
    assert!(!init.contains(PASSWORD));
    let again = fails(d, &url, &["init"]);
    assert!(again.contains("exists already"), "{again}");
    ok(d, &url, &["label", "create", "hr", "--group", "hr-staff"]);
    let alice = ok(
        d,
        &url,
        &["token", "create", "--user", "alice", "--group", "hr-staff"],
    );
    let alice = alice.trim().to_owned();
    let env = [
        ("KLUIS_STORE", url.as_str()),
        ("KLUIS_STORE_PASSWORD", PASSWORD),
    ];
    let server = serve_with_env(dir, &LOOPBACK, &env);
    let (status, _) = get(&format!("{}/readyz", server.base), None);
    assert_eq!(status, 200);
    let body = unwrap_body(&server, "hr", "first");
    let (status, v, _) = post(&format!("{}/v1/unwrap", server.base), Some(&alice), &body);
    assert_eq!(status, 200, "{v}");
    // A revocation by the admin command (another process) holds for the next request.
    let id = &alice[..14];
    ok(server.dir.path(), &url, &["token", "revoke", id]);
    let (status, v, _) = post(&format!("{}/v1/unwrap", server.base), Some(&alice), &body);
    assert_eq!(status, 401, "{v}");
    let verified = ok(server.dir.path(), &url, &["audit", "verify"]);
    // store.init, label.create, token.create, the unwrap, token.revoke.
    assert!(verified.contains("verified: 5 records"), "{verified}");
    let export = ok(server.dir.path(), &url, &["audit", "export"]);
    assert!(export.contains("\"reason\":\"first\""), "{export}");
    // SQLite-only commands say what to use instead.
    let e = fails(server.dir.path(), &url, &["backup", "--to", "x.db"]);
    assert!(e.contains("pg_dump"), "{e}");
}

/// The database password never goes in the URL (refused, and not echoed); it comes from a
/// file or the environment; a wrong one is refused without being printed; a database on
/// another host needs the CA file (refused before any connection is tried).
#[test]
fn the_password_and_tls_rules() {
    let c = PgCluster::shared();
    let db = c.create_database();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let with_pw = format!("postgres://kluis:{PASSWORD}@127.0.0.1:{}/{db}", c.port());
    let out = bin()
        .current_dir(d)
        .args(["--store", &with_pw, "init"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("carries a password"), "{err}");
    assert!(!err.contains(PASSWORD), "the password was printed: {err}");

    // From a file.
    let url = c.url(&db);
    let pw = d.join("pw");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let out = bin()
        .current_dir(d)
        .args(["--store", &url, "--store-password-file"])
        .arg(&pw)
        .arg("init")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The configuration file's `store` and `store_password_file`.
    std::fs::write(
        d.join("config.toml"),
        format!(
            "store = \"{url}\"\nstore_password_file = \"{}\"\n",
            pw.display()
        ),
    )
    .unwrap();
    let out = bin()
        .current_dir(d)
        .args(["--config", "config.toml", "audit", "verify"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("verified: 1 records"));

    // A wrong one.
    let out = bin()
        .current_dir(d)
        .env("PGPASSWORD", "not-the-password-4711")
        .args(["--store", &url, "audit", "verify"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("cannot connect"), "{err}");
    assert!(!err.contains("4711"), "{err}");

    // A Unix socket is local: no CA needed (local connections are `trust` in this cluster).
    let socket = format!(
        "postgres://kluis@/{db}?host={}&port={}",
        c.socket_dir().display(),
        c.port()
    );
    let out = ok(d, &socket, &["audit", "verify"]);
    assert!(out.contains("verified: 1 records"), "{out}");

    // Another host without the organisation's CA: refused, nothing is sent.
    let remote = "postgres://kluis@db.example.invalid:5432/kluis";
    let err = fails(d, remote, &["audit", "verify"]);
    assert!(err.contains("--store-ca-file"), "{err}");
    // TLS asked for in the URL, but no CA to verify with: refused, not quietly downgraded.
    let err = fails(d, &format!("{url}?sslmode=require"), &["audit", "verify"]);
    assert!(err.contains("asks for TLS"), "{err}");
    // A copy from a SQLite store that is not there: refused, and no empty file is left.
    let err = fails(
        d,
        &url,
        &["store", "copy", "--from", "sqlite:missing.db", "--to", &url],
    );
    assert!(err.contains("no SQLite store at"), "{err}");
    assert!(
        !d.join("missing.db").exists(),
        "the copy created its source"
    );
    // A CA file that is no certificate.
    std::fs::write(d.join("ca.pem"), "nonsense").unwrap();
    let out = bin()
        .current_dir(d)
        .env("KLUIS_STORE_PASSWORD", PASSWORD)
        .args([
            "--store",
            &url,
            "--store-ca-file",
            "ca.pem",
            "audit",
            "verify",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("holds no PEM certificate"), "{err}");
}

/// The audit head and record count `audit verify` prints.
fn verified(out: &str) -> (String, String) {
    let line = out.lines().next().unwrap();
    let n = line
        .split("verified: ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    let head = line.rsplit("head ").next().unwrap();
    (n.to_owned(), head.to_owned())
}

/// `store copy` moves a SQLite store with history (rotations, a destroyed version, revoked
/// tokens, unwraps) into PostgreSQL: the same head, `audit verify` passes there, labels and
/// tokens read the same, the copy serves; a second copy into it is refused.
#[test]
fn store_copy_from_sqlite_keeps_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sqlite = |args: &[&str]| common::admin(d, args);
    sqlite(&["init"]);
    sqlite(&[
        "label", "create", "hr", "--group", "hr-staff", "--retain", "30d",
    ]);
    sqlite(&["label", "create", "legal", "--user", "bob"]);
    sqlite(&["label", "rotate", "hr"]);
    sqlite(&["label", "rotate", "hr"]);
    sqlite(&["label", "destroy", "hr", "1", "--confirm", "hr"]);
    let alice = sqlite(&["token", "create", "--user", "alice", "--group", "hr-staff"]);
    let bob = sqlite(&["token", "create", "--user", "bob"]);
    sqlite(&["token", "revoke", &bob.trim()[..14]]);
    // Unwrap records too (doc ids, client addresses, credentials).
    let server = common::serve(dir, &LOOPBACK);
    for i in 0..3 {
        let body = unwrap_body(&server, "hr", &format!("before copy {i}"));
        let (status, v, _) = post(
            &format!("{}/v1/unwrap", server.base),
            Some(alice.trim()),
            &body,
        );
        assert_eq!(status, 200, "{v}");
    }
    let dir = server.kill();
    let d = dir.path();
    let before = verified(&common::admin(d, &["audit", "verify"]));
    let labels_before = common::admin(d, &["label", "show", "hr"]);
    let tokens_before = common::admin(d, &["token", "list"]);

    let url = database();
    let out = ok(
        d,
        &url,
        &[
            "store",
            "copy",
            "--from",
            "sqlite:kluis-server.db",
            "--to",
            &url,
        ],
    );
    assert!(out.contains(&format!("audit head {}", before.1)), "{out}");
    let after = verified(&ok(d, &url, &["audit", "verify"]));
    assert_eq!(after, before, "the same records and head on PostgreSQL");
    assert_eq!(ok(d, &url, &["label", "show", "hr"]), labels_before);
    assert_eq!(ok(d, &url, &["token", "list"]), tokens_before);
    assert_eq!(
        ok(d, &url, &["audit", "export"]),
        common::admin(d, &["audit", "export"]),
        "every record, field for field"
    );
    let e = fails(
        d,
        &url,
        &[
            "store",
            "copy",
            "--from",
            "sqlite:kluis-server.db",
            "--to",
            &url,
        ],
    );
    assert!(e.contains("not empty"), "{e}");
    // The copy serves: the old token opens, the destroyed version stays destroyed.
    let env = [
        ("KLUIS_STORE", url.as_str()),
        ("KLUIS_STORE_PASSWORD", PASSWORD),
    ];
    let server = serve_with_env(dir, &LOOPBACK, &env);
    let body = unwrap_body(&server, "hr", "after copy");
    let (status, v, _) = post(
        &format!("{}/v1/unwrap", server.base),
        Some(alice.trim()),
        &body,
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(label_key(&server, "hr").kid(), 3);
}

/// The copy at the row level: DKE columns and every version field arrive byte for byte.
#[test]
fn store_copy_moves_dke_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let mut src = kluis_server::SqliteStore::create(&path).unwrap();
    let v = |kid, state, sealed: Option<Vec<u8>>| VersionRow {
        kid,
        state,
        public_key: format!("kluis1pub{kid}"),
        sealed_secret: sealed,
        created_ms: 10 + i64::from(kid),
        destroyed_ms: (state == VersionState::Destroyed).then_some(99),
        superseded_ms: Some(50),
        dke_public: Some(vec![kid as u8; 300]),
        dke_sealed: None,
    };
    src.write(|tx| {
        tx.insert_label("hr", "{}", 1)?;
        tx.insert_version("hr", &v(1, VersionState::Destroyed, None))?;
        tx.insert_version("hr", &v(2, VersionState::Current, Some(vec![2; 80])))?;
        tx.set_dke_key("hr", 2, &[5; 270], &[6; 1300])
    })
    .unwrap();
    drop(src);
    let mut o = PgOptions::new(&database());
    o.password = Some(PASSWORD.to_owned().into());
    let mut pg = PgStore::create(&o).unwrap();
    let done = kluis_server::postgres::copy::copy_from_sqlite(&path, &mut pg).unwrap();
    assert_eq!((done.labels, done.versions), (1, 2));
    let src = kluis_server::SqliteStore::open(&path).unwrap();
    assert_eq!(pg.versions("hr").unwrap(), src.versions("hr").unwrap());
    assert_eq!(
        pg.version("hr", 2).unwrap().unwrap().dke_sealed,
        Some(vec![6; 1300])
    );
}

/// Every file of the database's folder in the data directory (tables, indexes, TOAST,
/// `pg_statistic`, the files of rewritten tables).
fn files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect()
}

fn found_in(files: &[PathBuf], needle: &[u8]) -> Vec<PathBuf> {
    files
        .iter()
        .filter(|f| {
            std::fs::read(f)
                .map(|b| b.windows(needle.len()).any(|w| w == needle))
                .unwrap_or(false)
        })
        .cloned()
        .collect()
}

/// Crypto-shredding on PostgreSQL: after a destroy the sealed keys' bytes are still in the
/// table's files (MVCC keeps the old row version); after the destroy's scrub they are in no
/// file of the database's folder: not the table, not a TOAST table, not the statistics.
#[test]
fn destroyed_keys_are_gone_from_the_database_files() {
    let c = PgCluster::shared();
    let db = c.create_database();
    let mut o = PgOptions::new(&c.url(&db));
    o.password = Some(PASSWORD.to_owned().into());
    let mut s = PgStore::create(&o).unwrap();
    let sealed: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(37) ^ 0xa5).collect();
    let dke: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 251) as u8 ^ 0x5a).collect();
    s.write(|tx| {
        tx.insert_label("hr", "{}", 1)?;
        for kid in 1..=60u32 {
            let mut mine = sealed.clone();
            if kid > 1 {
                mine[0] = kid as u8; // only version 1 carries the needle
            }
            tx.insert_version(
                "hr",
                &VersionRow {
                    kid,
                    state: if kid == 60 {
                        VersionState::Current
                    } else {
                        VersionState::Active
                    },
                    public_key: format!("kluis1pub{kid}"),
                    sealed_secret: Some(mine),
                    created_ms: 1,
                    destroyed_ms: None,
                    superseded_ms: None,
                    dke_public: None,
                    dke_sealed: None,
                },
            )?;
        }
        tx.set_dke_key("hr", 1, b"public", &dke)
    })
    .unwrap();
    // Statistics would copy values into pg_statistic: the sealed columns have none.
    s.execute_raw("ANALYZE key_versions").unwrap();
    assert_eq!(
        s.query_text(
            "SELECT count(*) FROM pg_stats WHERE tablename = 'key_versions' \
             AND attname IN ('sealed_secret', 'dke_sealed')"
        )
        .unwrap()
        .as_deref(),
        Some("0"),
        "no statistics (which may hold values) of the sealed columns"
    );
    assert_ne!(
        s.query_text("SELECT count(*) FROM pg_stats WHERE tablename = 'key_versions'")
            .unwrap()
            .as_deref(),
        Some("0"),
        "ANALYZE ran"
    );
    s.execute_raw("CHECKPOINT").unwrap();
    let oid = s
        .query_text("SELECT oid FROM pg_database WHERE datname = current_database()")
        .unwrap()
        .unwrap();
    let base = c.data_dir().join("base").join(oid);
    let table = c.data_dir().join(
        s.query_text("SELECT pg_relation_filepath('key_versions')")
            .unwrap()
            .unwrap(),
    );
    let all = files(&base);
    assert_eq!(
        found_in(&all, &sealed),
        std::slice::from_ref(&table),
        "stored, inline"
    );
    assert_eq!(
        found_in(&all, &dke[..200]),
        std::slice::from_ref(&table),
        "not TOASTed"
    );

    s.write(|tx| tx.destroy_version("hr", 1, 5)).unwrap();
    s.execute_raw("CHECKPOINT").unwrap();
    assert!(
        !found_in(&files(&base), &sealed).is_empty(),
        "the old row version is still in the table's file after the UPDATE (MVCC)"
    );
    s.forget_old_copies().unwrap();
    s.execute_raw("CHECKPOINT").unwrap();
    let all = files(&base);
    assert!(
        found_in(&all, &sealed).is_empty(),
        "{:?}",
        found_in(&all, &sealed)
    );
    assert!(found_in(&all, &dke[..200]).is_empty());
    assert!(!table.exists() || std::fs::metadata(&table).unwrap().len() == 0);
    assert_eq!(
        s.meta("scrub_pending").unwrap(),
        None,
        "the mark is cleared"
    );
    // The other versions are untouched.
    assert_eq!(s.versions("hr").unwrap().len(), 60);
    assert!(s.version("hr", 2).unwrap().unwrap().sealed_secret.is_some());
}

/// Figures for docs/SERVER.md, not a timed assertion: audit records committed per second by
/// one writer (one replica's group commit) and by two writers on two connections (two
/// replicas contending for the writers' advisory lock), for group sizes 1, 16 and 64; SQLite
/// beside it. Run: `cargo test -p kluis-server --test postgres -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, run by hand"]
fn audit_append_figures() {
    use kluis_server::audit::AuditEntry;
    use kluis_server::{KeyService, KeySource};
    fn measure<S: Store>(svc: &KeyService<S>, writers: usize, group: usize) -> f64 {
        let stop = Instant::now() + Duration::from_secs(3);
        let total: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..writers)
                .map(|w| {
                    let mut mine = svc.reopen().unwrap();
                    scope.spawn(move || {
                        let mut n = 0;
                        while Instant::now() < stop {
                            let batch: Vec<AuditEntry> = (0..group)
                                .map(|i| AuditEntry {
                                    time_ms: 1,
                                    actor: format!("w{w}"),
                                    action: "unwrap".into(),
                                    label: Some("hr".into()),
                                    kid: Some(1),
                                    doc_id: Some(format!("{i:064x}")),
                                    outcome: "granted".into(),
                                    reason: None,
                                    client: Some("127.0.0.1".into()),
                                    credential: Some("token:kluis_abcdefgh".into()),
                                })
                                .collect();
                            mine.append_audit(&batch).unwrap();
                            n += group;
                        }
                        n
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        svc.verify_audit().unwrap();
        total as f64 / 3.0
    }
    use std::time::{Duration, Instant};
    for (writers, group) in [(1, 1), (2, 1), (1, 16), (2, 16), (1, 64), (2, 64)] {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k");
        let mut o = PgOptions::new(&database());
        o.password = Some(PASSWORD.to_owned().into());
        let pg = KeyService::init(PgStore::create(&o).unwrap(), KeySource::File(&key)).unwrap();
        let sq = KeyService::init(
            kluis_server::SqliteStore::create(&dir.path().join("s.db")).unwrap(),
            KeySource::File(&dir.path().join("k2")),
        )
        .unwrap();
        println!(
            "audit appends: {writers} writer(s), {group} records a transaction: PostgreSQL \
             {:.0} records/s, SQLite {:.0} records/s",
            measure(&pg, writers, group),
            measure(&sq, writers, group)
        );
    }
}

/// TLS to a real PostgreSQL with `ssl = on`: with the organisation's CA the connection is TLS
/// and verified; a certificate from another CA, or one that does not name the host in the URL,
/// is refused (`sslmode=verify-full` semantics).
#[test]
fn tls_with_the_organisations_ca_is_verified() {
    let c = PgCluster::shared();
    let ca = |name: &str| {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), rcgen::Issuer::new(params, key))
    };
    let (org_pem, org) = ca("organisation CA");
    let (other_pem, _) = ca("another CA");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .signed_by(&key, &org)
        .unwrap();
    let data = c.data_dir();
    std::fs::write(data.join("kluis-test.crt"), cert.pem()).unwrap();
    std::fs::write(data.join("kluis-test.key"), key.serialize_pem()).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            data.join("kluis-test.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
    }
    let _ = std::process::Command::new("chown")
        .arg("postgres")
        .arg(data.join("kluis-test.crt"))
        .arg(data.join("kluis-test.key"))
        .status();
    for sql in [
        "ALTER SYSTEM SET ssl_cert_file = 'kluis-test.crt'",
        "ALTER SYSTEM SET ssl_key_file = 'kluis-test.key'",
        "ALTER SYSTEM SET ssl = on",
    ] {
        c.psql("postgres", sql);
    }
    c.psql("postgres", "SELECT pg_reload_conf()");
    let db = c.create_database();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("org.pem"), &org_pem).unwrap();
    std::fs::write(dir.path().join("other.pem"), &other_pem).unwrap();
    let opts = |host: &str, ca: &str| {
        let mut o = PgOptions::new(&format!("postgres://kluis@{host}:{}/{db}", c.port()));
        o.password = Some(PASSWORD.to_owned().into());
        o.ca_file = Some(dir.path().join(ca));
        o
    };
    // The reload takes effect for new connections shortly after.
    let mut store = None;
    for _ in 0..50 {
        match PgStore::create(&opts("localhost", "org.pem")) {
            Ok(s) => {
                store = Some(s);
                break;
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
    }
    let store = store.expect("a verified TLS connection with the organisation's CA");
    assert_eq!(
        store
            .query_text("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .unwrap()
            .as_deref(),
        Some("t"),
        "the connection is TLS"
    );
    let e = PgStore::open(&opts("localhost", "other.pem"))
        .err()
        .expect("another CA's trust is refused")
        .to_string();
    assert!(e.contains("cannot connect"), "{e}");
    let e = PgStore::open(&opts("127.0.0.1", "org.pem"))
        .err()
        .expect("a certificate that does not name the host is refused")
        .to_string();
    assert!(e.contains("cannot connect"), "{e}");
}

/// `master-key rotate` on PostgreSQL: refused while a server is connected to the database;
/// with every server stopped it re-seals, the store opens only with the new key, the chain
/// verifies and the label still opens documents.
#[test]
fn master_key_rotation_on_postgres() {
    let url = database();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &url, &["init"]);
    ok(d, &url, &["label", "create", "hr", "--group", "staff"]);
    let token = ok(
        d,
        &url,
        &["token", "create", "--user", "a", "--group", "staff"],
    );
    let old_key = std::fs::read(d.join("kluis-master.key")).unwrap();
    let env = [
        ("KLUIS_STORE", url.as_str()),
        ("KLUIS_STORE_PASSWORD", PASSWORD),
    ];
    let server = serve_with_env(dir, &LOOPBACK, &env);
    let body = unwrap_body(&server, "hr", "before rotation");
    let e = fails(server.dir.path(), &url, &["master-key", "rotate"]);
    assert!(e.contains("in use by another kluis-server"), "{e}");
    let dir = server.kill();
    let d = dir.path();
    // The killed server's sessions end with its process, once PostgreSQL has noticed.
    let start = std::time::Instant::now();
    let out = loop {
        let out = run(d, &url, &["master-key", "rotate"]);
        if out.status.success() {
            break String::from_utf8(out.stdout).unwrap();
        }
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(e.contains("in use"), "{e}");
        assert!(start.elapsed().as_secs() < 20, "still in use: {e}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(out.contains("1 label key(s) re-sealed"), "{out}");
    assert_ne!(std::fs::read(d.join("kluis-master.key")).unwrap(), old_key);
    std::fs::write(d.join("old.key"), &old_key).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d.join("old.key"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
    }
    let e = fails(d, &url, &["--key-file", "old.key", "audit", "verify"]);
    assert!(e.to_lowercase().contains("master key"), "{e}");
    assert!(ok(d, &url, &["audit", "verify"]).contains("audit trail verified"));
    let server = serve_with_env(dir, &LOOPBACK, &env);
    let (status, v, _) = post(
        &format!("{}/v1/unwrap", server.base),
        Some(token.trim()),
        &body,
    );
    assert_eq!(status, 200, "{v}");
}
