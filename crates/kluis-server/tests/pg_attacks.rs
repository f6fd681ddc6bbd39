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
/// own deadline reports the failure. This held in review; the test keeps it so.) The failure
/// says that the change may have been committed all the same.
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
    let Err(e) = r else {
        panic!(
            "a commit no standby confirmed was reported done after {:?}",
            started.elapsed()
        );
    };
    // The COMMIT was sent: the message must not let an operator take the change for not
    // made (a rotation "failed" and run again rotates twice). Before the fix it said only
    // that the database did not answer.
    let m = e.to_string();
    assert!(m.contains("may have been committed"), "{m}");
}

mod common;

/// A served replica (`kluis-server serve` on loopback, on the store `url`).
struct Replica {
    child: std::process::Child,
    base: String,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Replica {
    fn start(dir: &Path, url: &str) -> Replica {
        use std::io::BufRead;
        let mut child = common::bin()
            .current_dir(dir)
            .env("KLUIS_STORE", url)
            .env("KLUIS_STORE_PASSWORD", PASSWORD)
            .arg("serve")
            .args(common::LOOPBACK)
            .args(["--schedule-interval", "1", "--rate-limit", "0"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let base = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("no address: {line}"))
            .to_owned();
        std::thread::spawn(move || for _ in out.lines() {});
        Replica { child, base }
    }

    fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .arg(sig)
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(ok.success(), "kill {sig}");
    }
}

fn cli(dir: &Path, url: &str, args: &[&str]) -> String {
    common::pg_admin(dir, url, args)
}

/// An unwrap of a fresh-reply-key request for `doc` (doc id, stanza); the status, 0 when the
/// replica could not be reached.
fn unwrap(agent: &ureq::Agent, base: &str, token: &str, doc: &(String, String), why: &str) -> u16 {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let body = serde_json::json!({
        "reply_key": b64.encode(kluis_core::reply::ReplyKey::generate().unwrap().public_bytes()),
        "doc_id": doc.0,
        "stanza": doc.1,
        "reason": why,
    });
    match agent
        .post(&format!("{base}/v1/unwrap"))
        .header("Authorization", &format!("Bearer {token}"))
        .header("Content-Type", "application/json")
        .send(body.to_string())
    {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// Three replicas under load while PostgreSQL ends every kluis-server session twice
/// (`pg_terminate_backend`: writers mid-transaction, readers, the scheduler's lease), one
/// replica is frozen (SIGSTOP) for 3 s, perhaps holding the writers' lock, and another is
/// killed (SIGKILL). The scheduler rotates a label every 2 s meanwhile. Afterwards: every grant
/// acknowledged to a client is in the trail exactly once, the chain verifies, the frozen
/// replica serves again, and no two scheduled rotations are closer than the rotation period
/// (two leaders at once would rotate twice).
#[test]
fn three_replicas_keep_one_chain_through_terminated_sessions_a_freeze_and_a_kill() {
    let cluster = PgCluster::shared();
    let db = cluster.create_database();
    let url = cluster.url(&db);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    cli(d, &url, &["init"]);
    cli(
        d,
        &url,
        &[
            "label",
            "create",
            "hr",
            "--group",
            "staff",
            "--rotate-every",
            "2s",
        ],
    );
    const CLIENTS: usize = 6;
    let tokens: Vec<String> = (0..CLIENTS)
        .map(|i| {
            let u = format!("u{i}");
            cli(
                d,
                &url,
                &["token", "create", "--user", &u, "--group", "staff"],
            )
            .trim()
            .to_owned()
        })
        .collect();
    let replicas: Vec<Replica> = (0..3).map(|_| Replica::start(d, &url)).collect();
    let server = common::Server {
        dir: tempfile::tempdir().unwrap(),
        child: std::process::Command::new("true").spawn().unwrap(),
        base: replicas[0].base.clone(),
    };
    let key = common::label_key(&server, "hr");
    let sealed = kluis_core::seal(
        &[kluis_core::Slot::single(kluis_core::Recipient::Label(key))],
        &kluis_core::Metadata::default(),
        b"x",
    )
    .unwrap();
    let h = kluis_core::Header::parse(&sealed).unwrap();
    let doc = {
        use base64::Engine;
        (
            h.doc_id().to_string(),
            base64::engine::general_purpose::STANDARD.encode(h.slots()[0][0].to_bytes()),
        )
    };

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acked: std::sync::Arc<std::sync::Mutex<Vec<(String, usize, Instant)>>> =
        std::sync::Arc::default();
    let bases: Vec<String> = replicas.iter().map(|r| r.base.clone()).collect();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|t| {
            let (stop, acked) = (stop.clone(), acked.clone());
            let (token, doc, bases) = (tokens[t].clone(), doc.clone(), bases.clone());
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(30)))
                    .build()
                    .into();
                let mut i = 0usize;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let which = (t + i) % 3;
                    let why = format!("c{t}-{i}");
                    if unwrap(&agent, &bases[which], &token, &doc, &why) == 200 {
                        acked.lock().unwrap().push((why, which, Instant::now()));
                    } else {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    i += 1;
                }
            })
        })
        .collect();
    let terminate = || {
        cluster.psql(
            "postgres",
            &format!(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE datname = '{db}' AND application_name = 'kluis-server'"
            ),
        )
    };
    std::thread::sleep(Duration::from_millis(1500));
    let ended = terminate();
    std::thread::sleep(Duration::from_millis(1500));
    replicas[2].signal("-STOP");
    std::thread::sleep(Duration::from_secs(3));
    replicas[2].signal("-CONT");
    let resumed = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    let ended_again = terminate();
    std::thread::sleep(Duration::from_millis(1000));
    replicas[0].signal("-KILL");
    std::thread::sleep(Duration::from_secs(4));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();

    let verify = cli(d, &url, &["audit", "verify"]);
    assert!(verify.contains("audit trail verified"), "{verify}");
    let records: Vec<serde_json::Value> = cli(d, &url, &["audit", "export"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut granted = std::collections::HashMap::new();
    for r in &records {
        if r["action"] == "unwrap" && r["outcome"] == "granted" {
            *granted
                .entry(r["reason"].as_str().unwrap().to_owned())
                .or_insert(0usize) += 1;
        }
    }
    let missing: Vec<_> = acked
        .iter()
        .filter(|(r, _, _)| !granted.contains_key(r))
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged, not in the trail: {missing:?}"
    );
    assert_eq!(
        granted.values().filter(|n| **n > 1).count(),
        0,
        "recorded twice"
    );
    let on_frozen = acked
        .iter()
        .filter(|(_, w, t)| *w == 2 && *t > resumed)
        .count();
    assert!(on_frozen > 0, "the frozen replica did not serve again");
    let rotations: Vec<i64> = records
        .iter()
        .filter(|r| r["action"] == "label.rotate" && r["actor"] == "scheduler")
        .map(|r| r["time_ms"].as_i64().unwrap())
        .collect();
    let too_close: Vec<_> = rotations
        .windows(2)
        .filter(|w| w[1] - w[0] < 2000)
        .collect();
    println!(
        "pg_attacks: {} grants acknowledged, {} after the freeze on the frozen replica; \
         sessions ended {} and {}; {} scheduled rotations; {}",
        acked.len(),
        on_frozen,
        ended.trim(),
        ended_again.trim(),
        rotations.len(),
        verify.trim()
    );
    assert!(rotations.len() >= 2, "the scheduler rotated: {rotations:?}");
    assert!(too_close.is_empty(), "rotated twice at once: {too_close:?}");
}

/// A replica that vanishes from the network (host down, cable cut) holds the scheduler's lease
/// and, mid-transaction, the writers' lock until PostgreSQL notices that its session is gone.
/// The client's own keepalives do not make the *server* notice: an idle session on a dead
/// peer lives until the server's TCP keepalive gives up (the operating system's default: over
/// two hours), and no other replica can lead the scheduler meanwhile. So every session asks
/// the server for keepalives after 30 s of silence, every 10 s, 3 probes (a dead peer noticed
/// in about 60 s). Before the fix the session had the server's defaults (0: the system's).
#[test]
fn the_server_side_of_every_session_notices_a_vanished_replica() {
    let cluster = PgCluster::shared();
    let url = cluster.url(&cluster.create_database());
    let store = PgStore::create(&options(&url)).unwrap();
    let show = |what: &str| store.query_text(&format!("SHOW {what}")).unwrap().unwrap();
    assert_eq!(show("tcp_keepalives_idle"), "30");
    assert_eq!(show("tcp_keepalives_interval"), "10");
    assert_eq!(show("tcp_keepalives_count"), "3");
    // And a reconnected session (another store handle) has them too.
    let other = store.reopen().unwrap();
    assert_eq!(
        other
            .query_text("SHOW tcp_keepalives_idle")
            .unwrap()
            .as_deref(),
        Some("30")
    );
}

/// The cluster's postmaster and its children (to freeze the whole database).
fn postgres_processes(cluster: &PgCluster) -> Vec<String> {
    let pidfile = std::fs::read_to_string(cluster.data_dir().join("postmaster.pid")).unwrap();
    let main = pidfile.lines().next().unwrap().trim().to_owned();
    let mut pids: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let ppid = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .to_owned();
            (ppid == main).then(|| e.file_name().to_string_lossy().into_owned())
        })
        .collect();
    pids.push(main);
    pids
}

/// Thaws the database however the test ends.
struct Frozen(Vec<String>);

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .arg("-CONT")
            .args(&self.0)
            .status();
    }
}

/// While the database does not answer, requests in flight must not stall the HTTP server: a
/// single-item unwrap (and a token check) ran its store reads on the async runtime's own
/// threads when a reader connection was free, cheap on SQLite, but on PostgreSQL each read can
/// wait for the statement deadline (15 s), so a handful of requests in flight froze every
/// runtime thread and `/healthz` and `/readyz` went unanswered for the whole deadline (a
/// load balancer probing them saw a dead server, not a 503). Now the probes answer at once.
#[test]
fn a_frozen_database_does_not_stall_the_http_server() {
    let cluster = PgCluster::start();
    let (dir, url, token, replica, doc) = one_replica(&cluster);
    let d = dir.path();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    assert_eq!(unwrap(&agent, &replica.base, &token, &doc, "warm"), 200);

    let pids = postgres_processes(&cluster);
    let ok = std::process::Command::new("kill")
        .arg("-STOP")
        .args(&pids)
        .status()
        .unwrap();
    assert!(ok.success());
    let frozen = Frozen(pids);
    // Requests in flight against the frozen database, a few per runtime thread.
    let inflight: Vec<_> = (0..8)
        .map(|i| {
            let (agent, base, token, doc) = (
                agent.clone(),
                replica.base.clone(),
                token.clone(),
                doc.clone(),
            );
            std::thread::spawn(move || unwrap(&agent, &base, &token, &doc, &format!("f{i}")))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let probe: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let started = Instant::now();
    let health = probe
        .get(&format!("{}/healthz", replica.base))
        .call()
        .map(|r| r.status().as_u16());
    let health_took = started.elapsed();
    let started = Instant::now();
    let ready = probe
        .get(&format!("{}/readyz", replica.base))
        .call()
        .map(|r| r.status().as_u16());
    let ready_took = started.elapsed();
    drop(frozen);
    let statuses: Vec<u16> = inflight.into_iter().map(|t| t.join().unwrap()).collect();
    println!(
        "pg_attacks: frozen database: /healthz {health:?} after {health_took:?}, /readyz \
         {ready:?} after {ready_took:?}; in-flight unwraps answered {statuses:?}"
    );
    assert_eq!(health.ok(), Some(200), "/healthz unanswered within 5 s");
    assert_eq!(ready.ok(), Some(503), "/readyz unanswered within 5 s");
    // Whatever they answered, nothing was granted without its record: the chain verifies
    // and holds every grant acknowledged.
    let verify = cli(d, &url, &["audit", "verify"]);
    assert!(verify.contains("audit trail verified"), "{verify}");
    let export = cli(d, &url, &["audit", "export"]);
    for (i, s) in statuses.iter().enumerate() {
        if *s == 200 {
            assert!(
                export.contains(&format!("\"reason\":\"f{i}\"")),
                "f{i} granted unrecorded"
            );
        }
    }
}

/// A store on `cluster` with label `hr` and a token of a `staff` member, one replica serving
/// it, and a document sealed to `hr`: (the admin's folder, the store URL, the token, the
/// replica, (doc id, base64 stanza)).
fn one_replica(
    cluster: &PgCluster,
) -> (tempfile::TempDir, String, String, Replica, (String, String)) {
    let url = cluster.url(&cluster.create_database());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    cli(d, &url, &["init"]);
    cli(d, &url, &["label", "create", "hr", "--group", "staff"]);
    let token = cli(
        d,
        &url,
        &["token", "create", "--user", "u", "--group", "staff"],
    )
    .trim()
    .to_owned();
    let replica = Replica::start(d, &url);
    let server = common::Server {
        dir: tempfile::tempdir().unwrap(),
        child: std::process::Command::new("true").spawn().unwrap(),
        base: replica.base.clone(),
    };
    let key = common::label_key(&server, "hr");
    let sealed = kluis_core::seal(
        &[kluis_core::Slot::single(kluis_core::Recipient::Label(key))],
        &kluis_core::Metadata::default(),
        b"x",
    )
    .unwrap();
    let h = kluis_core::Header::parse(&sealed).unwrap();
    let doc = {
        use base64::Engine;
        (
            h.doc_id().to_string(),
            base64::engine::general_purpose::STANDARD.encode(h.slots()[0][0].to_bytes()),
        )
    };
    (dir, url, token, replica, doc)
}

/// With the database down, an unwrap is answered `503 store_unavailable` with `Retry-After`
/// (the kluis client retries a 503), not `500 internal` (which says the server failed and is
/// not retried); once the database is back, the same request is granted. Found by the
/// reference-deployment work: a replica answered 500 while PostgreSQL was stopped.
#[test]
fn an_unwrap_while_the_database_is_down_is_503_to_retry() {
    let cluster = PgCluster::start();
    let (_dir, url, token, replica, doc) = one_replica(&cluster);
    let body = {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        serde_json::json!({
            "reply_key": b64.encode(kluis_core::reply::ReplyKey::generate().unwrap().public_bytes()),
            "doc_id": doc.0,
            "stanza": doc.1,
        })
        .to_string()
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let post = || {
        let mut r = agent
            .post(&format!("{}/v1/unwrap", replica.base))
            .header("Authorization", &format!("Bearer {token}"))
            .header("Content-Type", "application/json")
            .send(body.as_str())
            .unwrap();
        let retry = r
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        let text = r.body_mut().read_to_string().unwrap();
        (r.status().as_u16(), retry, text)
    };
    assert_eq!(post().0, 200, "granted while the database is up");

    cluster.stop_immediate();
    let (status, retry, text) = post();
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("\"store_unavailable\""), "{text}");
    assert!(retry.is_some(), "no Retry-After: {text}");
    assert!(!text.contains(&url), "the store URL is not shown: {text}");

    cluster.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = post();
    while last.0 != 200 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        last = post();
    }
    assert_eq!(
        last.0, 200,
        "granted again once the database is back: {}",
        last.2
    );
}
