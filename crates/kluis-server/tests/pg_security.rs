//! Review of the PostgreSQL store (issue 15), secrets, TLS and crypto-shredding: attacks on a
//! throwaway cluster of this test binary (`kluis_testkit::postgres`; needs
//! `apt-get install postgresql`).

use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use kluis_server::{PgOptions, PgStore, ServerError, Store, VersionRow, VersionState};
use kluis_testkit::postgres::{PASSWORD, PgCluster};

fn options(url: &str) -> PgOptions {
    let mut o = PgOptions::new(url);
    o.password = Some(PASSWORD.to_owned().into());
    o
}

fn files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect()
}

fn found_in(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    files(dir)
        .into_iter()
        .filter(|f| {
            std::fs::read(f)
                .map(|b| b.windows(needle.len()).any(|w| w == needle))
                .unwrap_or(false)
        })
        .collect()
}

fn version(kid: u32, state: VersionState, sealed: Vec<u8>) -> VersionRow {
    VersionRow {
        kid,
        state,
        public_key: format!("kluis1pub{kid}"),
        sealed_secret: Some(sealed),
        created_ms: 1,
        destroyed_ms: None,
        superseded_ms: None,
        dke_public: None,
        dke_sealed: None,
    }
}

/// Crypto-shredding with a snapshot older than the destroy open elsewhere (another replica's
/// read, a monitoring query, a backup of another table, a standby's feedback): `VACUUM FULL`
/// must keep the old row version for that snapshot ("dead row versions cannot be removed
/// yet"), so it copies the destroyed sealed key into the new table file. The scrub must not
/// report success and clear its mark then; once the snapshot ends, the retried scrub removes
/// the bytes.
#[test]
fn a_scrub_under_an_older_snapshot_stays_pending() {
    let c = PgCluster::shared();
    let db = c.create_database();
    let url = c.url(&db);
    let mut s = PgStore::create(&options(&url)).unwrap();
    let sealed: Vec<u8> = b"destroyed-sealed-key-NEEDLE-5f3a9c".to_vec();
    s.write(|tx| {
        tx.insert_label("hr", "{}", 1)?;
        tx.insert_version("hr", &version(1, VersionState::Active, sealed.clone()))?;
        tx.insert_version("hr", &version(2, VersionState::Current, b"other".to_vec()))
    })
    .unwrap();
    let oid = s
        .query_text("SELECT oid FROM pg_database WHERE datname = current_database()")
        .unwrap()
        .unwrap();
    let base = c.data_dir().join("base").join(oid);

    // Another session of this database holds a snapshot taken before the destroy; it reads
    // another table, so it holds no lock on key_versions and VACUUM FULL does not wait for it.
    let other = PgStore::open(&options(&url)).unwrap();
    other
        .execute_raw("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM audit")
        .unwrap();

    s.write(|tx| tx.destroy_version("hr", 1, 5)).unwrap();
    let scrubbed = s.forget_old_copies();
    s.execute_raw("CHECKPOINT").unwrap();
    let left = found_in(&base, &sealed);
    match &scrubbed {
        Ok(()) => panic!(
            "the scrub reported success, mark cleared: {:?}; the destroyed key is still in {left:?}",
            s.meta("scrub_pending").unwrap()
        ),
        Err(e) => {
            assert!(
                matches!(e, ServerError::ScrubPending { .. }),
                "a pending scrub, not another error: {e}"
            );
            assert!(!e.to_string().contains("NEEDLE"), "{e}");
            assert!(
                e.to_string().contains("pg_stat_activity"),
                "says where to look on PostgreSQL: {e}"
            );
        }
    }
    assert!(
        s.meta("scrub_pending").unwrap().is_some(),
        "the mark stays, so the scheduler retries"
    );
    // The retry while the snapshot is still open: still pending, still marked.
    assert!(matches!(
        s.forget_pending_copies(Duration::from_secs(2)),
        Err(ServerError::ScrubPending { .. })
    ));
    assert!(s.meta("scrub_pending").unwrap().is_some());

    // The snapshot ends: the retry scrubs, the bytes are in no file, the mark is cleared.
    other.execute_raw("COMMIT").unwrap();
    assert!(s.forget_pending_copies(Duration::from_secs(2)).unwrap());
    s.execute_raw("CHECKPOINT").unwrap();
    assert_eq!(found_in(&base, &sealed), Vec::<PathBuf>::new());
    assert_eq!(s.meta("scrub_pending").unwrap(), None);
    assert!(!s.forget_pending_copies(Duration::from_secs(2)).unwrap());
    assert_eq!(s.versions("hr").unwrap().len(), 2);
}

/// A snapshot that began after the destroy does not hold the scrub back (the check is not
/// "no other session at all").
#[test]
fn a_snapshot_from_after_the_destroy_does_not_hold_the_scrub() {
    let c = PgCluster::shared();
    let db = c.create_database();
    let url = c.url(&db);
    let mut s = PgStore::create(&options(&url)).unwrap();
    let sealed: Vec<u8> = b"destroyed-sealed-key-NEEDLE-77e1d0".to_vec();
    s.write(|tx| {
        tx.insert_label("hr", "{}", 1)?;
        tx.insert_version("hr", &version(1, VersionState::Active, sealed.clone()))?;
        tx.insert_version("hr", &version(2, VersionState::Current, b"other".to_vec()))
    })
    .unwrap();
    s.write(|tx| tx.destroy_version("hr", 1, 5)).unwrap();
    let other = PgStore::open(&options(&url)).unwrap();
    other
        .execute_raw("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM audit")
        .unwrap();
    s.forget_old_copies().unwrap();
    assert_eq!(s.meta("scrub_pending").unwrap(), None);
    other.execute_raw("COMMIT").unwrap();
    s.execute_raw("CHECKPOINT").unwrap();
    let oid = s
        .query_text("SELECT oid FROM pg_database WHERE datname = current_database()")
        .unwrap()
        .unwrap();
    assert_eq!(
        found_in(&c.data_dir().join("base").join(oid), &sealed),
        Vec::<PathBuf>::new()
    );
}

/// This machine's address on its default route, if it has one that is not loopback.
fn non_loopback_address() -> Option<IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("203.0.113.9:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// `hostaddr=` in the URL is where the connection goes; the host name is then only the name
/// for TLS. `postgres://kluis@localhost/…?hostaddr=<another machine>` without a CA was taken
/// for a local store: no TLS, and the password went in clear text to that machine when it
/// asked for it. It must be refused like any other remote host without the CA.
#[test]
fn hostaddr_to_another_machine_is_not_local() {
    let secret = "hostaddr-secret-password-8c21";
    let listener = non_loopback_address().and_then(|ip| TcpListener::bind((ip, 0)).ok());
    let (addr, port) = match &listener {
        Some(l) => (l.local_addr().unwrap().ip(), l.local_addr().unwrap().port()),
        // No second address here: a documentation address (nothing must be sent anyway).
        None => ("198.51.100.7".parse().unwrap(), 5432),
    };
    // A fake PostgreSQL that asks for the password in clear text and records what it gets.
    let caught = listener.map(|l| {
        l.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(8);
            let mut got = Vec::new();
            while std::time::Instant::now() < deadline {
                match l.accept() {
                    Ok((mut sock, _)) => {
                        sock.set_nonblocking(false).unwrap();
                        sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                        let mut buf = [0u8; 4096];
                        if let Ok(n) = sock.read(&mut buf) {
                            got.extend_from_slice(&buf[..n]);
                        }
                        // AuthenticationCleartextPassword.
                        let _ = sock.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3]);
                        if let Ok(n) = sock.read(&mut buf) {
                            got.extend_from_slice(&buf[..n]);
                        }
                        return got;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            got
        })
    });
    let mut o = PgOptions::new(&format!(
        "postgres://kluis@localhost:{port}/kluis?hostaddr={addr}"
    ));
    o.password = Some(secret.to_owned().into());
    let e = PgStore::open(&o)
        .err()
        .expect("a store on another machine without the CA is refused");
    let msg = e.to_string();
    if let Some(caught) = caught {
        let got = caught.join().unwrap();
        assert!(
            !got.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "the password went in clear text to {addr}: {:?}",
            String::from_utf8_lossy(&got)
        );
        assert!(got.is_empty(), "something was sent to {addr} without TLS");
    }
    assert!(
        matches!(e, ServerError::Config(_)) && msg.contains("--store-ca-file"),
        "{msg}"
    );
    // Loopback addresses stay local.
    let c = PgCluster::shared();
    let db = c.create_database();
    let local = options(&format!(
        "postgres://kluis@localhost:{}/{db}?hostaddr=127.0.0.1",
        c.port()
    ));
    PgStore::create(&local).unwrap();
}

fn ca(name: &str) -> (String, rcgen::Issuer<'static, rcgen::KeyPair>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), rcgen::Issuer::new(params, key))
}

/// Give the cluster `cert` and `key` (or turn TLS off) and wait until new connections see it.
fn server_tls(c: &PgCluster, files: Option<(&str, &str)>) {
    match files {
        Some((cert, key)) => {
            let data = c.data_dir();
            std::fs::write(data.join("sec-test.crt"), cert).unwrap();
            std::fs::write(data.join("sec-test.key"), key).unwrap();
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(
                    data.join("sec-test.key"),
                    std::fs::Permissions::from_mode(0o600),
                )
                .unwrap();
            }
            let _ = std::process::Command::new("chown")
                .arg("postgres")
                .arg(data.join("sec-test.crt"))
                .arg(data.join("sec-test.key"))
                .status();
            for sql in [
                "ALTER SYSTEM SET ssl_cert_file = 'sec-test.crt'",
                "ALTER SYSTEM SET ssl_key_file = 'sec-test.key'",
                "ALTER SYSTEM SET ssl = on",
            ] {
                c.psql("postgres", sql);
            }
        }
        None => {
            c.psql("postgres", "ALTER SYSTEM SET ssl = off");
        }
    }
    c.psql("postgres", "SELECT pg_reload_conf()");
    std::thread::sleep(Duration::from_millis(700));
}

fn connect_err(o: &PgOptions) -> String {
    match PgStore::open(o) {
        Ok(_) => panic!("connected"),
        Err(e) => e.to_string(),
    }
}

/// The TLS adapter against a real PostgreSQL: a server without TLS is not used in plain text
/// when a CA is given (whatever `sslmode` the URL says); an expired certificate, a wrong host
/// name, another CA are refused; an IP-address certificate works for an IP-address URL (no SNI
/// needed); `sslmode=disable`/`prefer` in the URL do not turn TLS off; the password is in no
/// message; `options=-c synchronous_commit=off` in the URL is overridden.
#[test]
fn tls_adapter_and_url_options_hold() {
    let c = PgCluster::shared();
    let db = c.create_database();
    let dir = tempfile::tempdir().unwrap();
    let (org_pem, org) = ca("organisation CA");
    let ca_file = dir.path().join("org.pem");
    std::fs::write(&ca_file, &org_pem).unwrap();
    let with_ca = |host: &str, query: &str| {
        let mut o = options(&format!("postgres://kluis@{host}:{}/{db}{query}", c.port()));
        o.ca_file = Some(ca_file.clone());
        o
    };

    // The server has no TLS: refused, not downgraded, for every sslmode in the URL.
    server_tls(c, None);
    for q in [
        "",
        "?sslmode=disable",
        "?sslmode=prefer",
        "?sslmode=require",
    ] {
        let e = connect_err(&with_ca("localhost", q));
        assert!(e.contains("cannot connect"), "{q}: {e}");
        assert!(!e.contains(PASSWORD), "{e}");
    }

    // An expired certificate from the right CA, naming the host.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let expired = params.signed_by(&key, &org).unwrap();
    server_tls(c, Some((&expired.pem(), &key.serialize_pem())));
    let e = connect_err(&with_ca("localhost", ""));
    assert!(e.contains("cannot connect"), "{e}");
    assert!(e.to_lowercase().contains("expired"), "says why: {e}");

    // A valid certificate for localhost and the IP address 127.0.0.1.
    let key = rcgen::KeyPair::generate().unwrap();
    let good = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .unwrap()
        .signed_by(&key, &org)
        .unwrap();
    server_tls(c, Some((&good.pem(), &key.serialize_pem())));
    PgStore::create(&with_ca("localhost", "")).unwrap();
    for (host, q) in [
        ("127.0.0.1", ""),
        ("localhost", "?sslmode=disable"),
        ("localhost", "?sslmode=prefer"),
        (
            "localhost",
            "?options=-c%20synchronous_commit%3Doff%20-c%20statement_timeout%3D0",
        ),
    ] {
        let s = PgStore::open(&with_ca(host, q)).unwrap();
        assert_eq!(
            s.query_text("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                .unwrap()
                .as_deref(),
            Some("t"),
            "{host}{q}: TLS"
        );
        assert_eq!(
            s.query_text("SHOW synchronous_commit").unwrap().as_deref(),
            Some("on"),
            "{q}"
        );
        assert_ne!(
            s.query_text("SHOW statement_timeout").unwrap().as_deref(),
            Some("0"),
            "{q}"
        );
    }
    // Channel binding is not offered (the certificate authenticates the server): a URL that
    // requires it fails closed rather than going on without it.
    let e = connect_err(&with_ca("localhost", "?channel_binding=require"));
    assert!(e.contains("cannot connect"), "{e}");
    // Another CA.
    let (other_pem, _) = ca("another CA");
    std::fs::write(dir.path().join("other.pem"), other_pem).unwrap();
    let mut o = with_ca("localhost", "");
    o.ca_file = Some(dir.path().join("other.pem"));
    let e = connect_err(&o);
    assert!(e.contains("cannot connect"), "{e}");
    // A password in a `password=` query parameter or percent-encoded in the URL: refused,
    // and not echoed.
    for url in [
        format!(
            "postgres://kluis@localhost:{}/{db}?password=pw-in-query-1234",
            c.port()
        ),
        format!(
            "postgresql://kluis:pw%2Din%2Durl%2D1234@localhost:{}/{db}",
            c.port()
        ),
    ] {
        let e = connect_err(&PgOptions::new(&url));
        assert!(e.contains("carries a password"), "{e}");
        assert!(!e.contains("1234"), "{e}");
    }
    server_tls(c, None);
}

/// The store password file is held to the master key file's rule: one that other users can
/// read is refused (the password opens the whole store: policies, tokens, the trail), and the
/// message says what to do without quoting the password.
#[test]
fn a_password_file_readable_by_others_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "password-file-secret-9d1e\n").unwrap();
    for mode in [0o644, 0o640, 0o604, 0o660] {
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(mode)).unwrap();
        let e = kluis_server::postgres::password_from_file(&pw)
            .err()
            .unwrap_or_else(|| panic!("mode {mode:o} accepted"))
            .to_string();
        assert!(e.contains("chmod 600"), "{e}");
        assert!(!e.contains("9d1e"), "{e}");
    }
    for mode in [0o600, 0o400] {
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(mode)).unwrap();
        assert_eq!(
            kluis_server::postgres::password_from_file(&pw)
                .unwrap()
                .as_str(),
            "password-file-secret-9d1e"
        );
    }
}

/// A destroy must not stall unwraps for long: while a reader holds `key_versions` for a long
/// time (a backup, a slow report), the scrub's `VACUUM FULL` used to wait its whole patience
/// for the table lock, and every new read of the table (every unwrap, on every replica)
/// queued behind it, again at every scheduler tick. Now the scrub sees the long reader and
/// stays pending at once; reads go on; the retry after the reader ends scrubs.
#[test]
fn a_long_reader_does_not_make_the_scrub_stall_other_reads() {
    let c = PgCluster::shared();
    let db = c.create_database();
    let url = c.url(&db);
    let mut s = PgStore::create(&options(&url)).unwrap();
    let sealed: Vec<u8> = b"destroyed-sealed-key-NEEDLE-0b44e2".to_vec();
    s.write(|tx| {
        tx.insert_label("hr", "{}", 1)?;
        tx.insert_version("hr", &version(1, VersionState::Active, sealed.clone()))?;
        tx.insert_version("hr", &version(2, VersionState::Current, b"other".to_vec()))
    })
    .unwrap();
    s.write(|tx| tx.destroy_version("hr", 1, 5)).unwrap();
    // The long reader: read committed, so it holds the table's lock but no old snapshot.
    let long = PgStore::open(&options(&url)).unwrap();
    long.execute_raw("BEGIN; SELECT count(*) FROM key_versions")
        .unwrap();
    std::thread::sleep(Duration::from_millis(600));
    let reader = PgStore::open(&options(&url)).unwrap();
    let scrub = std::thread::spawn(move || {
        let r = s.forget_pending_copies(Duration::from_secs(6));
        (r, s)
    });
    std::thread::sleep(Duration::from_millis(500));
    let start = std::time::Instant::now();
    assert_eq!(reader.versions("hr").unwrap().len(), 2);
    let waited = start.elapsed();
    let (r, s) = scrub.join().unwrap();
    assert!(
        waited < Duration::from_secs(3),
        "a read waited {waited:?} behind the scrub's lock request"
    );
    assert!(matches!(r, Err(ServerError::ScrubPending { .. })), "{r:?}");
    assert!(s.meta("scrub_pending").unwrap().is_some());
    long.execute_raw("COMMIT").unwrap();
    assert!(s.forget_pending_copies(Duration::from_secs(2)).unwrap());
    assert_eq!(s.meta("scrub_pending").unwrap(), None);
}

/// Retention destroys many versions in one scheduled run (every label rotated daily with a
/// retention period loses one version a day). Each destroy ran its own `VACUUM FULL`, so a run
/// that destroyed N versions rewrote the whole table N times, each time holding the lock that
/// every unwrap on every replica waits for (with 10,000 versions that carry DKE keys one
/// rewrite holds it some 0.3 to 0.5 s here). One scrub at the end of the run does the same
/// for all of them.
#[test]
fn a_scheduled_run_scrubs_once_for_all_its_destroys() {
    use kluis_server::{KeyService, KeySource, Policy};
    let c = PgCluster::shared();
    let db = c.create_database();
    // Only this database's sessions log their statements.
    c.psql(
        "postgres",
        &format!("ALTER DATABASE {db} SET log_statement = 'all'"),
    );
    let dir = tempfile::tempdir().unwrap();
    let mut svc = KeyService::init(
        PgStore::create(&options(&c.url(&db))).unwrap(),
        KeySource::File(&dir.path().join("k")),
    )
    .unwrap();
    let policy = Policy {
        groups: vec!["staff".into()],
        retention_secs: Some(60),
        ..Policy::default()
    };
    svc.create_label("hr", &policy, "admin").unwrap();
    for _ in 0..12 {
        svc.rotate("hr", "admin").unwrap();
    }
    let vacuums = || {
        c.log()
            .lines()
            .filter(|l| l.contains("statement: VACUUM (FULL) key_versions"))
            .count()
    };
    let before = vacuums();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let done = svc.run_schedule(now + 86_400_000, "scheduler").unwrap();
    assert_eq!(done.len(), 12, "{done:?}");
    let versions = svc.store().versions("hr").unwrap();
    assert_eq!(
        versions
            .iter()
            .filter(|v| v.state == VersionState::Destroyed && v.sealed_secret.is_none())
            .count(),
        12
    );
    std::thread::sleep(Duration::from_millis(300));
    let ran = vacuums() - before;
    assert_eq!(ran, 1, "VACUUM FULL ran {ran} times for one scheduled run");
    assert_eq!(
        svc.store().meta("scrub_pending").unwrap(),
        None,
        "the run's scrub is done"
    );
}

/// Under load (other replicas' short read snapshots, some of them begun before the destroy
/// committed) a destroy's scrub waits the few milliseconds until those end, and completes: the
/// check for older snapshots does not make every destroy under load report a pending scrub.
#[test]
fn short_snapshots_under_load_do_not_leave_the_scrub_pending() {
    let c = PgCluster::shared();
    let db = c.create_database();
    let url = c.url(&db);
    let mut s = PgStore::create(&options(&url)).unwrap();
    s.write(|tx| {
        tx.insert_label("hr", "{}", 1)?;
        for kid in 1..=20 {
            tx.insert_version(
                "hr",
                &version(kid, VersionState::Active, vec![kid as u8; 40]),
            )?;
        }
        tx.insert_version("hr", &version(21, VersionState::Current, vec![21; 40]))
    })
    .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            let url = url.clone();
            std::thread::spawn(move || {
                let r = PgStore::open(&options(&url)).unwrap();
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    r.snapshot(|r| {
                        r.token("kluis_nobody")?;
                        r.versions("hr")
                    })
                    .unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut pending = Vec::new();
    for kid in 1..=10u32 {
        s.write(|tx| tx.destroy_version("hr", kid, 5)).unwrap();
        match s.forget_old_copies() {
            Ok(()) => {}
            Err(ServerError::ScrubPending { .. }) => pending.push(kid),
            Err(e) => panic!("{e}"),
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
    assert!(reads > 10, "the readers ran ({reads} snapshots)");
    assert_eq!(pending, Vec::<u32>::new(), "scrubs left pending under load");
}

/// Every replica writes (the audit trail before any key share leaves), so a connection must go
/// to a server that accepts writes, whatever `target_session_attrs` the URL says: a read-only
/// server (a hot standby; here a database whose sessions are read-only) is refused when
/// connecting, not taken and then failing every request while `/readyz` says ready; and
/// `target_session_attrs=read-only` in the URL does not send a replica to a standby.
#[test]
fn connections_go_to_a_writable_server_only() {
    let c = PgCluster::shared();
    let db = c.create_database();
    PgStore::create(&options(&c.url(&db))).unwrap();
    // `read-only` in the URL: still the (writable) primary.
    let url = format!("{}?target_session_attrs=read-only", c.url(&db));
    let mut s = PgStore::open(&options(&url)).unwrap();
    s.write(|tx| tx.put_meta("probe", b"1")).unwrap();
    drop(s);
    // A read-only server.
    c.psql(
        "postgres",
        &format!("ALTER DATABASE {db} SET default_transaction_read_only = on"),
    );
    for url in [
        c.url(&db),
        format!("{}?target_session_attrs=any", c.url(&db)),
    ] {
        let e = connect_err(&options(&url));
        assert!(e.contains("cannot connect"), "{url}: {e}");
    }
}

/// A reader that holds the table a little longer than a request (here 0.8 s) delays the scrub,
/// within its patience, without leaving it pending and without the VACUUM queueing other reads
/// behind it meanwhile.
#[test]
fn a_reader_that_ends_within_the_patience_delays_the_scrub_only() {
    let c = PgCluster::shared();
    let db = c.create_database();
    let url = c.url(&db);
    let mut s = PgStore::create(&options(&url)).unwrap();
    s.write(|tx| {
        tx.insert_label("hr", "{}", 1)?;
        tx.insert_version("hr", &version(1, VersionState::Active, vec![1; 40]))?;
        tx.insert_version("hr", &version(2, VersionState::Current, vec![2; 40]))
    })
    .unwrap();
    s.write(|tx| tx.destroy_version("hr", 1, 5)).unwrap();
    let slow = PgStore::open(&options(&url)).unwrap();
    slow.execute_raw("BEGIN; SELECT count(*) FROM key_versions")
        .unwrap();
    let ends = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(800));
        slow.execute_raw("COMMIT").unwrap();
    });
    std::thread::sleep(Duration::from_millis(300));
    s.forget_pending_copies(Duration::from_secs(5)).unwrap();
    ends.join().unwrap();
    assert_eq!(s.meta("scrub_pending").unwrap(), None);
}

/// A store URL with a mistyped scheme (`pgsql://`, `postgresq://`, `POSTGRES://`,
/// `postgres:/`) was taken for a SQLite file path: `init` then printed it, password and all, in
/// its error ("cannot create the store pgsql://kluis:…@db/kluis"), into the terminal and the
/// journal. Such a store is refused as a URL that is not PostgreSQL's, without echoing it.
#[test]
fn a_mistyped_store_url_is_not_a_file_path_and_is_not_echoed() {
    let bin = std::path::PathBuf::from(env!("CARGO_BIN_EXE_kluis-server"));
    for spec in [
        "pgsql://kluis:mistyped-secret-31@db.example/kluis",
        "postgresq://kluis:mistyped-secret-31@db.example/kluis",
        "POSTGRES://kluis:mistyped-secret-31@db.example/kluis",
        "postgres:/kluis:mistyped-secret-31@db.example/kluis",
    ] {
        for cmd in [&["init"][..], &["audit", "verify"]] {
            let dir = tempfile::tempdir().unwrap();
            let out = std::process::Command::new(&bin)
                .current_dir(dir.path())
                .args(["--store", spec])
                .args(cmd)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{spec} {cmd:?}");
            assert!(!err.contains("mistyped-secret-31"), "{spec} {cmd:?}: {err}");
            assert!(err.contains("postgres://"), "says what to write: {err}");
            assert_eq!(
                std::fs::read_dir(dir.path()).unwrap().count(),
                0,
                "{spec} {cmd:?}: nothing created"
            );
        }
    }
}

/// The servers may run as a role that does not own the tables (least privilege: the tables
/// made by the database's owner, the replicas' role given rights on them). `VACUUM FULL` on a
/// table the role does not own only warns ("skipping … only table or database owner can vacuum
/// it") and succeeds, so the scrub reported the destroyed key gone, and cleared its mark,
/// while the table was never rewritten. The scrub must see that nothing was rewritten.
#[test]
fn a_scrub_by_a_role_that_cannot_rewrite_the_table_is_not_reported_done() {
    let c = PgCluster::shared();
    let db = c.create_database();
    let mut owner = PgStore::create(&options(&c.url(&db))).unwrap();
    let sealed: Vec<u8> = b"destroyed-sealed-key-NEEDLE-a11c07".to_vec();
    owner
        .write(|tx| {
            tx.insert_label("hr", "{}", 1)?;
            tx.insert_version("hr", &version(1, VersionState::Active, sealed.clone()))?;
            tx.insert_version("hr", &version(2, VersionState::Current, b"other".to_vec()))
        })
        .unwrap();
    let role = format!("app_{db}");
    c.psql(
        "postgres",
        &format!("CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'"),
    );
    c.psql(
        &db,
        &format!(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}; \
             GRANT USAGE, CREATE ON SCHEMA public TO {role}"
        ),
    );
    let url = format!("postgres://{role}@127.0.0.1:{}/{db}", c.port());
    let mut app = PgStore::open(&options(&url)).unwrap();
    app.write(|tx| tx.destroy_version("hr", 1, 5)).unwrap();
    let r = app.forget_old_copies();
    owner.execute_raw("CHECKPOINT").unwrap();
    let oid = owner
        .query_text("SELECT oid FROM pg_database WHERE datname = current_database()")
        .unwrap()
        .unwrap();
    let left = found_in(&c.data_dir().join("base").join(oid), &sealed);
    match r {
        Ok(()) => panic!("scrub reported done; the destroyed key is still in {left:?}"),
        Err(e) => {
            let m = e.to_string();
            assert!(m.contains("own"), "says the role must own the tables: {m}");
        }
    }
    assert!(
        app.meta("scrub_pending").unwrap().is_some(),
        "still pending"
    );
    // The owner's scrub (`kluis-server store scrub` as the owner) does it.
    assert!(owner.forget_pending_copies(Duration::from_secs(2)).unwrap());
    owner.execute_raw("CHECKPOINT").unwrap();
    assert_eq!(owner.meta("scrub_pending").unwrap(), None);
}
