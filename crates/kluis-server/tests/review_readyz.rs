//! Review of `/readyz` and the audit writer's idle probe (issue 14, "never lies"): what the
//! probe writes, and whether readiness matches what unwraps get.

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::{LOOPBACK, Tmpfs, admin, label_key, post, readiness, serve, store, unwrap_body};
use kluis_core::reply::ReplyKey;
use serde_json::{Value, json};

const DB: &str = "kluis-server.db";

/// The records `export` prints for `dir` (`audit export`: one JSON object a line).
fn exported(dir: &std::path::Path, export: impl Fn(&std::path::Path) -> String) -> Vec<Value> {
    export(dir)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The trail after an outage that ended while the server was idle: what it was before, and
/// exactly one record more, the writer's `audit.resumed`, saying since when the trail could
/// not be written. The probes that failed during the outage left nothing.
fn assert_one_resumed_record(before: &[Value], after: &[Value]) {
    assert_eq!(after.len(), before.len() + 1, "{after:#?}");
    assert_eq!(&after[..before.len()], before);
    let r = &after[before.len()];
    assert_eq!(r["action"], "audit.resumed", "{r}");
    assert_eq!(r["actor"], "scheduler", "{r}");
    assert_eq!(r["credential"], "server:audit-writer", "{r}");
    assert_eq!(r["outcome"], "ok", "{r}");
    assert!(
        r["reason"]
            .as_str()
            .is_some_and(|t| t.contains("could not be written from 20")),
        "{r}"
    );
}

/// An audit trail whose last sequence number is at the end of its range (an edited store)
/// refuses every append, so every unwrap is `503 audit_unavailable`. The writer's idle probe
/// (an empty append) succeeded all the same, so `/readyz` went back to 200 within a second
/// and stayed there: a load balancer kept sending unwraps that were all refused.
#[test]
fn readyz_stays_503_while_every_append_is_refused_even_when_an_empty_one_is_not() {
    let (dir, token) = store();
    {
        let conn = rusqlite::Connection::open(dir.path().join(DB)).unwrap();
        conn.execute(
            "UPDATE audit SET seq = 9223372036854775807 WHERE seq = (SELECT max(seq) FROM audit)",
            [],
        )
        .unwrap();
    }
    let server = serve(dir, &LOOPBACK);
    let v = label_key(&server, "hr");
    let url = format!("{}/v1/unwrap", server.base);
    for round in 0..3 {
        let (status, body, _) = post(&url, Some(&token), &unwrap_body(&v));
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["code"], "audit_unavailable", "{body}");
        // Longer than the probe's period, with no other request.
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            assert_eq!(
                readiness(&server.base),
                (503, "audit_unavailable".to_owned()),
                "round {round}: /readyz while every unwrap is refused"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Across a failed commit (the store locked by another process for longer than the busy
/// timeout) and the probes that follow until readiness is back, the trail gets exactly one
/// record, the writer's `audit.resumed`; the chain verifies. And while all is well and nothing
/// comes, the writer writes nothing (the store's files do not change).
#[test]
fn an_outage_leaves_one_resumed_record_and_a_healthy_idle_writer_writes_nothing() {
    let (dir, token) = store();
    let server = serve(dir, &LOOPBACK);
    let d = server.dir.path().to_owned();
    let v = label_key(&server, "hr");
    let url = format!("{}/v1/unwrap", server.base);
    assert_eq!(post(&url, Some(&token), &unwrap_body(&v)).0, 200);

    // Idle and healthy: nothing is written.
    let files = || {
        ["", "-wal"]
            .iter()
            .map(|s| {
                let m = std::fs::metadata(d.join(format!("{DB}{s}"))).ok();
                m.map(|m| (m.len(), m.modified().unwrap()))
            })
            .collect::<Vec<_>>()
    };
    std::thread::sleep(Duration::from_millis(300));
    let idle = files();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(files(), idle, "the store changed while the server was idle");

    let export = |d: &std::path::Path| admin(d, &["audit", "export"]);
    let before = exported(&d, export);
    let lock = rusqlite::Connection::open(d.join(DB)).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    let (status, body, _) = post(&url, Some(&token), &unwrap_body(&v));
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("audit_unavailable"))
    );
    // Probes fail while the lock is held (each waits the busy timeout).
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(readiness(&server.base).0, 503);
    lock.execute_batch("ROLLBACK").unwrap();
    drop(lock);
    let until = Instant::now() + Duration::from_secs(10);
    while readiness(&server.base).0 != 200 {
        assert!(Instant::now() < until, "not ready 10 s after the lock went");
        std::thread::sleep(Duration::from_millis(100));
    }
    // A few more seconds of an idle, healthy writer.
    std::thread::sleep(Duration::from_secs(2));
    assert_one_resumed_record(&before, &exported(&d, export));
    admin(&d, &["audit", "verify"]);
}

/// On PostgreSQL: while another session holds the writers' advisory lock (a stuck replica or
/// an operator's `psql`) for longer than the statement timeout, an unwrap is refused `503`
/// and `/readyz` says `503 audit_unavailable`; once the lock is let go, `/readyz` is 200 again
/// within seconds without any request, and the trail has one record more, the writer's
/// `audit.resumed`.
#[test]
fn on_postgresql_readyz_follows_the_audit_writer_across_a_held_write_lock() {
    use kluis_testkit::postgres::{PASSWORD, PgCluster};
    use std::io::Write;
    use std::process::{Command, Stdio};
    let cluster = PgCluster::shared();
    let url = cluster.url(&cluster.create_database());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_owned();
    let pg = |args: &[&str]| common::pg_admin(&d, &url, args);
    pg(&["init"]);
    pg(&["label", "create", "hr", "--user", "alice"]);
    let token = pg(&["token", "create", "--user", "alice"])
        .trim()
        .to_owned();
    std::fs::write(
        d.join("kluis.toml"),
        "store_statement_timeout_secs = 2\n[serve]\nrate_limit_per_sec = 0\n",
    )
    .unwrap();
    let server = common::serve_with_env(
        dir,
        &[
            "--config",
            "kluis.toml",
            "--listen",
            "127.0.0.1:0",
            "--insecure-http",
        ],
        &[("KLUIS_STORE", &url), ("KLUIS_STORE_PASSWORD", PASSWORD)],
    );
    let v = label_key(&server, "hr");
    let unwrap_url = format!("{}/v1/unwrap", server.base);
    assert_eq!(post(&unwrap_url, Some(&token), &unwrap_body(&v)).0, 200);
    assert_eq!(readiness(&server.base).0, 200);
    let export = |d: &std::path::Path| common::pg_admin(d, &url, &["audit", "export"]);
    let before = exported(&d, export);

    // Another session takes the writers' lock and keeps it.
    let db = url.rsplit('/').next().unwrap();
    let mut holder = Command::new(kluis_testkit::postgres::bin_dir().join("psql"))
        .args([
            "-X",
            "-q",
            "-h",
            "127.0.0.1",
            "-p",
            &cluster.port().to_string(),
        ])
        .args([
            "-U",
            url.split("//").nth(1).unwrap().split('@').next().unwrap(),
        ])
        .args(["-d", db])
        .env("PGPASSWORD", PASSWORD)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut to_psql = holder.stdin.take().unwrap();
    writeln!(
        to_psql,
        "SELECT pg_advisory_lock({});",
        kluis_server::postgres::WRITE_LOCK
    )
    .unwrap();
    to_psql.flush().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let (status, body, _) = post(&unwrap_url, Some(&token), &unwrap_body(&v));
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "audit_unavailable", "{body}");
    assert_eq!(
        readiness(&server.base),
        (503, "audit_unavailable".to_owned()),
        "/readyz while the writers' lock is held"
    );
    // Still so a few probes later.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(readiness(&server.base).0, 503);

    // Let go: ready again without traffic.
    drop(to_psql); // psql ends, its session and lock with it
    holder.wait().unwrap();
    let released = Instant::now();
    while readiness(&server.base).0 != 200 {
        assert!(
            released.elapsed() < Duration::from_secs(10),
            "/readyz {:?} 10 s after the lock went",
            readiness(&server.base)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("ready again {:?} after the lock went", released.elapsed());
    assert_one_resumed_record(&before, &exported(&d, export));
    pg(&["audit", "verify"]);
    assert_eq!(post(&unwrap_url, Some(&token), &unwrap_body(&v)).0, 200);
}

/// On a full disk (a 2 MiB tmpfs under the store, filled up): once unwraps are refused,
/// `/readyz` says 503 for as long as unwraps are refused, checked every 200 ms for 6 s with an
/// unwrap every 2 s (the idle writer probes in between); it does not flap to 200 because a smaller write (the probe) still fits.
#[test]
fn on_a_full_disk_readyz_matches_what_unwraps_get() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_owned();
    let Ok(tmpfs) = Tmpfs::mount(&d.join("mnt"), "2m") else {
        eprintln!("SKIPPED: mounting a tmpfs is not permitted here (run as root)");
        return;
    };
    let store = |args: &[&str]| {
        let mut a = vec!["--store", "mnt/kluis-server.db"];
        a.extend(args);
        admin(&d, &a)
    };
    store(&["init"]);
    store(&["label", "create", "hr", "--user", "alice"]);
    let token = store(&["token", "create", "--user", "alice"])
        .trim()
        .to_owned();
    let server = serve(
        dir,
        &[
            "--store",
            "mnt/kluis-server.db",
            "--listen",
            "127.0.0.1:0",
            "--insecure-http",
            "--rate-limit",
            "0",
        ],
    );
    let v = label_key(&server, "hr");
    let one = || {
        post(
            &format!("{}/v1/unwrap", server.base),
            Some(&token),
            &unwrap_body(&v),
        )
        .0
    };
    let batch = || {
        let items: Vec<Value> = (0..200)
            .map(|_| {
                let mut b = unwrap_body(&v);
                b.as_object_mut().unwrap().remove("reply_key");
                b
            })
            .collect();
        let body = json!({
            "reply_key": B64.encode(ReplyKey::generate().unwrap().public_bytes()),
            "items": items,
        });
        post(
            &format!("{}/v1/unwrap/batch", server.base),
            Some(&token),
            &body,
        )
        .0
    };
    assert_eq!(one(), 200);
    let mut filler = std::fs::File::create(d.join("mnt/filler")).unwrap();
    for size in [64 * 1024, 4096, 512, 1] {
        let chunk = vec![0x5a_u8; size];
        while filler
            .write_all(&chunk)
            .and_then(|()| filler.sync_all())
            .is_ok()
        {}
    }
    let mut refused = false;
    for _ in 0..200 {
        if batch() == 503 {
            refused = true;
            break;
        }
    }
    assert!(refused, "the disk filled up but no batch was refused");
    let mut seen = Vec::new();
    // Two seconds between unwraps: the idle writer probes in between.
    for _ in 0..3 {
        let unwrap = one();
        for _ in 0..10 {
            seen.push((readiness(&server.base).0, unwrap));
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    eprintln!("(readyz, unwrap) on a full disk: {seen:?}");
    let lies = seen.iter().filter(|(r, u)| *r == 200 && *u != 200).count();
    assert_eq!(
        lies, 0,
        "/readyz said ready while unwraps were refused: {seen:?}"
    );
    // Space again: ready without traffic, and the outage is on record.
    drop(filler);
    std::fs::remove_file(d.join("mnt/filler")).unwrap();
    let t = Instant::now();
    while readiness(&server.base).0 != 200 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "not ready with space again"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(one(), 200);
    let trail = store(&["audit", "export"]);
    assert_eq!(trail.matches("\"audit.resumed\"").count(), 1, "{trail}");
    store(&["audit", "verify"]);
    drop(server);
    drop(tmpfs);
}
