//! Attacks on the PostgreSQL store's audit chain and scheduler lease (review of issue 15), on
//! a throwaway cluster of this test binary (`kluis_testkit::postgres`; needs
//! `apt-get install postgresql`).

use std::path::Path;
use std::time::{Duration, Instant};

use kluis_server::audit::AuditEntry;
use kluis_server::{KeyService, KeySource, PgOptions, PgStore, Policy, Store, now_ms};
use kluis_testkit::postgres::{PASSWORD, PgCluster};

fn options(url: &str) -> PgOptions {
    let mut o = PgOptions::new(url);
    o.password = Some(PASSWORD.to_owned().into());
    o
}

/// A new store in a new database of this binary's cluster: its service, URL and database name.
fn service(dir: &Path) -> (KeyService<PgStore>, String, String) {
    let cluster = PgCluster::shared();
    let db = cluster.create_database();
    let url = cluster.url(&db);
    let store = PgStore::create(&options(&url)).unwrap();
    let svc = KeyService::init(store, KeySource::File(&dir.join("master.key"))).unwrap();
    (svc, url, db)
}

fn open(dir: &Path, url: &str) -> KeyService<PgStore> {
    let store = PgStore::open(&options(url)).unwrap();
    KeyService::open(store, KeySource::File(&dir.join("master.key"))).unwrap()
}

fn entry(actor: &str, reason: &str) -> AuditEntry {
    AuditEntry {
        time_ms: now_ms(),
        actor: actor.to_owned(),
        action: "unwrap".to_owned(),
        label: Some("hr".to_owned()),
        kid: Some(1),
        doc_id: Some("00".repeat(16)),
        outcome: "granted".to_owned(),
        reason: Some(reason.to_owned()),
        client: Some("127.0.0.1".to_owned()),
        credential: Some(format!("token:{actor}")),
    }
}

/// One request's record with a NUL in its text (PostgreSQL's `text` cannot hold one) in a
/// group commit with other requests' records: the group commits, every record is in the
/// trail, and the chain verifies. Before the fix the whole group failed, so one odd name
/// refused every other request committed with it.
#[test]
fn a_nul_in_one_record_does_not_fail_the_others_in_its_group_commit() {
    let dir = tempfile::tempdir().unwrap();
    let (mut svc, _, _) = service(dir.path());
    let group = [
        entry("alice", "first"),
        entry("mallory\0", "odd\0reason"),
        entry("bob", "third"),
    ];
    svc.append_audit(&group)
        .expect("the group commit of three requests, one with a NUL in its text");
    let records = svc.audit_records(None).unwrap();
    let actors: Vec<&str> = records.iter().map(|r| r.entry.actor.as_str()).collect();
    assert_eq!(actors, ["admin", "alice", "mallory\u{FFFD}", "bob"]);
    assert_eq!(
        records[1].entry, group[0],
        "other records are kept as they were"
    );
    assert_eq!(
        records[3].entry, group[2],
        "other records are kept as they were"
    );
    assert_eq!(
        records[2].entry.reason.as_deref(),
        Some("odd\u{FFFD}reason")
    );
    let (n, _) = svc.verify_audit().unwrap();
    assert_eq!(n, 4);
    // And the next group still commits after it.
    svc.append_audit(&[entry("carol", "after")]).unwrap();
    assert_eq!(svc.verify_audit().unwrap().0, 5);
}

/// The backends of `db` that are kluis-server's (not psql's).
fn kluis_backends(cluster: &PgCluster, db: &str) -> String {
    cluster.psql(
        "postgres",
        &format!(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}' \
             AND application_name = 'kluis-server'"
        ),
    )
}

/// Split brain after the leader's connection breaks: replica A leads the scheduler; its
/// session is terminated (a DBA, a failover of the connection, a network stall that ends
/// it), which frees the lease; replica B takes it and runs the schedule. A, in the middle of
/// its own scheduled run (it checked the lease at the start of it), must not go on on a new
/// connection that holds no lease: before the fix it reconnected silently and rotated the
/// label a second time.
#[test]
fn a_replica_that_lost_the_scheduler_lease_does_no_scheduled_work() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, url, db) = service(dir.path());
    let policy = Policy {
        users: vec!["alice".into()],
        rotation_secs: Some(3600),
        ..Policy::default()
    };
    a.create_label("hr", &policy, "admin:test").unwrap();
    assert!(a.store().scheduler_lease().unwrap(), "A leads");
    let cluster = PgCluster::shared();
    assert_eq!(
        kluis_backends(cluster, &db).trim(),
        "1",
        "A's one connection"
    );
    cluster.psql(
        "postgres",
        &format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}' \
             AND application_name = 'kluis-server'"
        ),
    );
    let mut b = open(dir.path(), &url);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !b.store().scheduler_lease().unwrap() {
        assert!(Instant::now() < deadline, "B never got the lease A lost");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Both runs at the same moment, two hours on: the label is due for rotation.
    let later = now_ms() + 2 * 3600 * 1000;
    let by_b = b.run_schedule(later, "scheduler").unwrap();
    assert_eq!(by_b.len(), 1, "B rotated: {by_b:?}");
    let by_a = a.run_schedule(later, "scheduler");
    assert!(
        by_a.is_err(),
        "A ran the schedule without the lease: {by_a:?}"
    );
    let versions = b.label("hr").unwrap().versions.len();
    assert_eq!(versions, 2, "rotated once, not once per replica");
    let rotations = b
        .audit_records(None)
        .unwrap()
        .iter()
        .filter(|r| r.entry.action == "label.rotate")
        .count();
    assert_eq!(rotations, 1);
    // At its next run A asks again, on a new connection, and learns that B leads.
    assert!(!a.store().scheduler_lease().unwrap(), "B leads, not A");
    // When B's connection ends, A takes over.
    drop(b);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !a.store().scheduler_lease().unwrap() {
        assert!(Instant::now() < deadline, "A never took over from B");
        std::thread::sleep(Duration::from_millis(50));
    }
    a.verify_audit().unwrap();
}

/// Two `kluis-server init` on one new database at once (two replicas' operators, a deploy
/// script run twice): one store results, under one master key, with one `store.init` record.
/// Before the fix both saw the database empty and both wrote: the second overwrote the
/// first's keys and appended its `store.init` to the first's chain under another key, so the
/// trail no longer verified and the first operator's key file opened nothing.
#[test]
fn two_inits_at_once_on_one_database_make_one_store() {
    let cluster = PgCluster::shared();
    let url = cluster.url(&cluster.create_database());
    let dir = tempfile::tempdir().unwrap();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
    let inits: Vec<_> = (0..2)
        .map(|i| {
            let (url, barrier) = (url.clone(), barrier.clone());
            let key = dir.path().join(format!("master{i}.key"));
            std::thread::spawn(move || {
                let store = PgStore::create(&options(&url)).unwrap();
                barrier.wait();
                KeyService::init(store, KeySource::File(&key)).map(|_| ())
            })
        })
        .collect();
    let results: Vec<_> = inits.into_iter().map(|t| t.join().unwrap()).collect();
    let won: Vec<usize> = (0..2).filter(|&i| results[i].is_ok()).collect();
    assert_eq!(won.len(), 1, "exactly one init succeeds: {results:?}");
    let key = dir.path().join(format!("master{}.key", won[0]));
    let store = PgStore::open(&options(&url)).unwrap();
    let svc = KeyService::open(store, KeySource::File(&key)).unwrap();
    assert_eq!(svc.verify_audit().unwrap().0, 1, "one store.init record");
}

/// `store copy` sends a long audit trail in bounded batches: before the fix the PostgreSQL
/// transaction buffered every record of the trail and sent them all in one statement, so
/// memory grew with the trail and a trail past PostgreSQL's 1 GiB message limit could not be
/// copied at all. The statements are counted in the server's log (`log_statement = all` for
/// this database only).
#[test]
fn store_copy_sends_a_long_trail_in_bounded_batches() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("source.db");
    let mut src =
        KeyService::init_sqlite(&path, KeySource::File(&dir.path().join("master.key"))).unwrap();
    let records = 20_000;
    for g in 0..records / 1000 {
        let group: Vec<_> = (0..1000)
            .map(|i| entry(&format!("user{g}-{i}"), "copy me"))
            .collect();
        src.append_audit(&group).unwrap();
    }
    let (n, head) = src.verify_audit().unwrap();
    drop(src);

    let cluster = PgCluster::shared();
    let db = cluster.create_database();
    let url = cluster.url(&db);
    cluster.psql(
        "postgres",
        &format!(
            "ALTER DATABASE {db} SET log_statement = 'all'; \
             ALTER DATABASE {db} SET log_parameter_max_length = 0"
        ),
    );
    let mut target = PgStore::create(&options(&url)).unwrap();
    let copied = kluis_server::postgres::copy::copy_from_sqlite(&path, &mut target).unwrap();
    assert_eq!(copied.records as i64, n);
    assert_eq!(copied.head, head);
    let svc = KeyService::open(target, KeySource::File(&dir.path().join("master.key"))).unwrap();
    assert_eq!(svc.verify_audit().unwrap(), (n, head));
    let inserts = cluster
        .log()
        .lines()
        .filter(|l| l.contains("INSERT INTO audit"))
        .count();
    assert!(
        inserts >= records / 5000,
        "{inserts} statements for {records} records"
    );
}

/// With a synchronous standby configured (`synchronous_standby_names`) and not answering, a
/// commit must not be reported done: its audit record exists only on the primary, so a
/// failover to the standby would lose the record of a share already released. (A cancelled
/// wait for the standby ends with a mere WARNING, "committed locally, but might not have been
/// replicated"; PostgreSQL does not apply `statement_timeout` to COMMIT's wait, so the store's
/// own deadline reports the failure. This held in review; the test keeps it so.)
#[test]
fn a_commit_the_synchronous_standby_did_not_confirm_is_not_reported_done() {
    let cluster = PgCluster::start();
    let url = cluster.url(&cluster.create_database());
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(&url);
    o.statement_timeout = Duration::from_secs(1);
    let store = PgStore::create(&o).unwrap();
    let mut svc = KeyService::init(store, KeySource::File(&dir.path().join("master.key"))).unwrap();
    svc.append_audit(&[entry("alice", "replicated: no standby configured yet")])
        .unwrap();
    cluster.psql(
        "postgres",
        "ALTER SYSTEM SET synchronous_standby_names = 'standby'",
    );
    cluster.psql("postgres", "SELECT pg_reload_conf()");
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster
        .psql("postgres", "SHOW synchronous_standby_names")
        .trim()
        != "standby"
    {
        assert!(Instant::now() < deadline, "the setting was not reloaded");
        std::thread::sleep(Duration::from_millis(50));
    }
    let started = Instant::now();
    let r = svc.append_audit(&[entry("alice", "not replicated")]);
    assert!(
        r.is_err(),
        "a commit no standby confirmed was reported done after {:?}",
        started.elapsed()
    );
}
