//! Review of `/readyz` and the audit writer's idle probe (issue 14, "never lies"): what the
//! probe writes, and whether readiness matches what unwraps get.

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::{LOOPBACK, admin, get, label_key, post, serve};
use kluis_core::reply::ReplyKey;
use kluis_core::{Header, LabelPublicKey, Metadata, Recipient, Slot};
use serde_json::{Value, json};

const DB: &str = "kluis-server.db";

fn unwrap_body(label: &LabelPublicKey) -> Value {
    let sealed = kluis_core::seal(
        &[Slot::single(Recipient::Label(label.clone()))],
        &Metadata::default(),
        b"secret",
    )
    .unwrap();
    let header = Header::parse(&sealed).unwrap();
    let reply = ReplyKey::generate().unwrap();
    json!({
        "doc_id": header.doc_id().to_string(),
        "stanza": B64.encode(header.slots()[0][0].to_bytes()),
        "reply_key": B64.encode(reply.public_bytes()),
    })
}

/// A store with label `hr` for alice, and her token.
fn store() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    admin(dir.path(), &["init"]);
    admin(dir.path(), &["label", "create", "hr", "--user", "alice"]);
    let token = admin(dir.path(), &["token", "create", "--user", "alice"]);
    (dir, token.trim().to_owned())
}

/// `/readyz`: status and JSON `code` (or the text).
fn readiness(base: &str) -> (u16, String) {
    let (status, body) = get(&format!("{base}/readyz"), None);
    let code = serde_json::from_str::<Value>(&body)
        .map(|v| v["code"].as_str().unwrap_or_default().to_owned())
        .unwrap_or(body);
    (status, code)
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

/// The probe writes no record and leaves the chain as it was: across a failed commit (the
/// store locked by another process for longer than the busy timeout) and the probes that
/// follow until readiness is back, `audit verify` reports the same records and head as before
/// the lock. And while all is well and nothing comes, the writer writes nothing (the store's
/// files do not change).
#[test]
fn the_idle_probe_adds_no_record_and_changes_no_chain_and_a_healthy_writer_writes_nothing() {
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

    let before = admin(&d, &["audit", "verify"]);
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
    assert_eq!(admin(&d, &["audit", "verify"]), before);
}

/// On PostgreSQL: while another session holds the writers' advisory lock (a stuck replica or
/// an operator's `psql`) for longer than the statement timeout, an unwrap is refused `503`
/// and `/readyz` says `503 audit_unavailable`; once the lock is let go, `/readyz` is 200 again
/// within seconds without any request, and nothing but the refused unwrap's absence shows in
/// the trail.
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
    let before = pg(&["audit", "verify"]);

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
    assert_eq!(pg(&["audit", "verify"]), before);
    assert_eq!(post(&unwrap_url, Some(&token), &unwrap_body(&v)).0, 200);
}
