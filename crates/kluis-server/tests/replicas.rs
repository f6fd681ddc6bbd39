//! Several replicas on one PostgreSQL (issue 15, section 4): two real `kluis-server serve`
//! processes on loopback against one real PostgreSQL (a cluster of this test binary alone,
//! since it is stopped mid-test), under concurrent load through both. One replica is killed
//! with SIGKILL mid-load, then PostgreSQL is stopped at once (`pg_ctl stop -m immediate`) and
//! started again mid-load. Every grant acknowledged to a client must be in the audit trail,
//! the chain must verify, and the survivor must serve again once the database is back.
//! Then: a revocation and a policy change hold on the other replica within 1 s, and the
//! scheduler's leadership moves when its leader dies.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use kluis_core::reply::ReplyKey;
use kluis_core::{Metadata, Recipient, Slot, seal};
use kluis_testkit::postgres::{PASSWORD, PgCluster};
use serde_json::{Value, json};

mod common;
use common::{LOOPBACK, bin, label_key};

/// A served replica; its standard error collected line by line.
struct Replica {
    child: Child,
    base: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Replica {
    fn start(dir: &Path, url: &str) -> Replica {
        let mut child = bin()
            .current_dir(dir)
            .env("KLUIS_STORE", url)
            .env("KLUIS_STORE_PASSWORD", PASSWORD)
            .arg("serve")
            .args(LOOPBACK)
            .args(["--schedule-interval", "1", "--rate-limit", "0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let base = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("no address: {line}"))
            .to_owned();
        std::thread::spawn(move || for _ in out.lines() {});
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = log.clone();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(l);
            }
        });
        Replica { child, base, log }
    }

    fn logged(&self, what: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(what))
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// An unwrap of `doc` (doc id, stanza) with a fresh reply key; the status, or 0 when the
/// replica could not be reached.
fn unwrap(
    agent: &ureq::Agent,
    base: &str,
    token: &str,
    doc: &(String, String),
    reason: &str,
) -> u16 {
    let body = json!({
        "reply_key": B64.encode(ReplyKey::generate().unwrap().public_bytes()),
        "doc_id": doc.0,
        "stanza": doc.1,
        "reason": reason,
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

fn ready(base: &str) -> u16 {
    agent()
        .get(&format!("{base}/readyz"))
        .call()
        .map_or(0, |r| r.status().as_u16())
}

/// A document sealed to `label`'s current key, as (doc id, stanza).
fn document(r: &Replica, label: &str) -> (String, String) {
    let server = common::Server {
        dir: tempfile::tempdir().unwrap(),
        child: Command::new("true").spawn().unwrap(),
        base: r.base.clone(),
    };
    let key = label_key(&server, label);
    let doc = seal(
        &[Slot::single(Recipient::Label(key))],
        &Metadata::default(),
        b"x",
    )
    .unwrap();
    let h = kluis_core::Header::parse(&doc).unwrap();
    (
        h.doc_id().to_string(),
        B64.encode(h.slots()[0][0].to_bytes()),
    )
}

fn admin(dir: &Path, url: &str, args: &[&str]) -> String {
    common::pg_admin(dir, url, args)
}

/// Wait up to `limit` for `f`; how long it took.
fn within(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// The cluster's postmaster and its children.
fn postgres_processes(cluster: &PgCluster) -> Vec<String> {
    let pidfile = std::fs::read_to_string(cluster.data_dir().join("postmaster.pid")).unwrap();
    let main = pidfile.lines().next().unwrap().trim().to_owned();
    // Its children, from /proc (field 4 of /proc/PID/stat is the parent's id).
    let mut pids: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let after = stat.rsplit_once(')')?.1;
            let ppid = after.split_whitespace().nth(1)?;
            (ppid == main).then(|| e.file_name().to_string_lossy().into_owned())
        })
        .collect();
    pids.push(main);
    pids
}

fn signal(pids: &[String], sig: &str) {
    let ok = Command::new("kill").arg(sig).args(pids).status().unwrap();
    assert!(ok.success(), "kill {sig} {pids:?}");
}

const LEADS: &str = "this replica leads scheduled rotation and retention";

#[test]
fn two_replicas_survive_a_replica_kill_and_a_database_restart() {
    let cluster = PgCluster::start();
    let db = cluster.create_database();
    let url = cluster.url(&db);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    admin(d, &url, &["init"]);
    admin(d, &url, &["label", "create", "hr", "--group", "staff"]);
    const CLIENTS: usize = 8;
    let tokens: Vec<String> = (0..CLIENTS)
        .map(|i| {
            admin(
                d,
                &url,
                &[
                    "token",
                    "create",
                    "--user",
                    &format!("u{i}"),
                    "--group",
                    "staff",
                ],
            )
            .trim()
            .to_owned()
        })
        .collect();

    let mut a = Replica::start(d, &url);
    assert!(
        within(Duration::from_secs(10), || a.logged(LEADS)).is_some(),
        "the first replica takes the scheduler's lead"
    );
    let b = Replica::start(d, &url);
    let doc = document(&b, "hr");

    // Load through both replicas.
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<(String, usize, Instant)>>> = Arc::default();
    let failed = Arc::new(Mutex::new(0usize));
    let bases = [a.base.clone(), b.base.clone()];
    let clients: Vec<_> = (0..CLIENTS)
        .map(|t| {
            let (stop, acked, failed) = (stop.clone(), acked.clone(), failed.clone());
            let (token, doc, bases) = (tokens[t].clone(), doc.clone(), bases.clone());
            std::thread::spawn(move || {
                let agent = agent();
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) && i < 100_000 {
                    let which = (t + i) % 2;
                    let reason = format!("c{t}-{i}");
                    match unwrap(&agent, &bases[which], &token, &doc, &reason) {
                        200 => acked.lock().unwrap().push((reason, which, Instant::now())),
                        _ => {
                            *failed.lock().unwrap() += 1;
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                    i += 1;
                }
            })
        })
        .collect();

    std::thread::sleep(Duration::from_millis(1500));
    a.kill();
    let killed_at = Instant::now();
    let b_leads = within(Duration::from_secs(15), || b.logged(LEADS));
    std::thread::sleep(Duration::from_millis(500));
    cluster.stop_immediate();
    let down_at = Instant::now();
    let not_ready = within(Duration::from_secs(10), || ready(&b.base) == 503);
    std::thread::sleep(Duration::from_millis(500));
    cluster.restart();
    let up_at = Instant::now();
    let ready_again = within(Duration::from_secs(30), || ready(&b.base) == 200);
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let failed = *failed.lock().unwrap();
    let after_restart = acked
        .iter()
        .filter(|(_, w, t)| *w == 1 && *t > up_at)
        .count();
    let on_a = acked.iter().filter(|(_, w, _)| *w == 0).count();
    let before_kill = acked.iter().filter(|(_, _, t)| *t < killed_at).count();
    let during_down = acked
        .iter()
        .filter(|(_, _, t)| *t > down_at && *t < up_at)
        .count();

    assert!(
        not_ready.is_some(),
        "/readyz stayed ready with the database down"
    );
    assert!(
        ready_again.is_some(),
        "the survivor did not reconnect by itself"
    );
    assert!(
        b_leads.is_some(),
        "the scheduler's lead did not move to the survivor"
    );

    // Every acknowledged grant is in the trail, once; the chain verifies.
    let verify = admin(d, &url, &["audit", "verify"]);
    let export = admin(d, &url, &["audit", "export"]);
    let records: Vec<Value> = export
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
    let twice = granted.values().filter(|n| **n > 1).count();
    println!(
        "replicas: {} grants acknowledged ({} before A was killed, {} through A in all, {} by B \
         after the database restart, {} while it was down), {} requests failed or refused \
         during the faults, {} audit records ({} granted unwraps), {}",
        acked.len(),
        before_kill,
        on_a,
        after_restart,
        during_down,
        failed,
        records.len(),
        granted.len(),
        verify.trim()
    );
    assert!(
        missing.is_empty(),
        "acknowledged but not in the trail: {missing:?}"
    );
    assert_eq!(twice, 0, "a request recorded twice");
    assert!(
        on_a > 0 && before_kill > 0,
        "load went through A before its kill"
    );
    assert!(
        after_restart > 0,
        "the survivor served after the database came back"
    );
    assert!(verify.contains("audit trail verified"), "{verify}");

    // A replica again; changes made anywhere hold on every replica within 1 s.
    let a2 = Replica::start(d, &url);
    let victim = admin(
        d,
        &url,
        &["token", "create", "--user", "victim", "--group", "staff"],
    );
    let victim = victim.trim().to_owned();
    let agent = agent();
    assert_eq!(unwrap(&agent, &b.base, &victim, &doc, "before"), 200);
    assert_eq!(unwrap(&agent, &a2.base, &victim, &doc, "before"), 200);
    admin(d, &url, &["token", "revoke", &victim[..14]]);
    let revoked = within(Duration::from_secs(1), || {
        unwrap(&agent, &b.base, &victim, &doc, "after") == 401
            && unwrap(&agent, &a2.base, &victim, &doc, "after") == 401
    });
    admin(
        d,
        &url,
        &[
            "label",
            "update",
            "hr",
            "--remove-group",
            "staff",
            "--add-user",
            "u0",
        ],
    );
    let denied = within(Duration::from_secs(1), || {
        unwrap(&agent, &b.base, &tokens[1], &doc, "policy") == 403
            && unwrap(&agent, &a2.base, &tokens[1], &doc, "policy") == 403
    });
    assert_eq!(unwrap(&agent, &b.base, &tokens[0], &doc, "policy"), 200);
    println!(
        "replicas: /readyz 503 after {not_ready:?} with the database down, 200 again after \
         {ready_again:?} once it was back"
    );
    println!(
        "replicas: revocation refused on both replicas after {revoked:?}, policy change after {denied:?}"
    );
    assert!(revoked.is_some(), "a revocation did not hold within 1 s");
    assert!(denied.is_some(), "a policy change did not hold within 1 s");

    // The scheduler's lead: B holds it; a2 takes it when B dies, and never had it before.
    assert!(!a2.logged(LEADS), "two replicas led at once");
    let out = bin()
        .current_dir(d)
        .env("KLUIS_STORE", &url)
        .env("KLUIS_STORE_PASSWORD", PASSWORD)
        .arg("schedule")
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a manual schedule ran beside the leader"
    );
    assert!(e.contains("leads the scheduler"), "{e}");
    let mut b = b;
    b.kill();
    let moved = within(Duration::from_secs(15), || a2.logged(LEADS));
    println!("replicas: scheduler lead moved to the new replica after {moved:?}");
    assert!(moved.is_some(), "the scheduler's lead did not move");

    // A database that stops answering (every PostgreSQL process frozen with SIGSTOP) does
    // not hang the replica: /readyz and an unwrap are answered, not 200, within the
    // statement deadline; once it answers again the replica serves by itself.
    let frozen = postgres_processes(&cluster);
    signal(&frozen, "-STOP");
    let t = Instant::now();
    let status = ready(&a2.base);
    let readyz_took = t.elapsed();
    let t = Instant::now();
    let unwrapped = unwrap(&agent, &a2.base, &tokens[0], &doc, "frozen");
    let unwrap_took = t.elapsed();
    signal(&frozen, "-CONT");
    println!(
        "replicas: database frozen: /readyz {status} after {readyz_took:?}, unwrap {unwrapped} \
         after {unwrap_took:?}"
    );
    assert_ne!(status, 200, "/readyz said ready with the database frozen");
    assert!(readyz_took < Duration::from_secs(25), "{readyz_took:?}");
    assert_ne!(unwrapped, 200, "a grant without a durable audit record");
    assert!(unwrap_took < Duration::from_secs(35), "{unwrap_took:?}");
    let back = within(Duration::from_secs(40), || {
        unwrap(&agent, &a2.base, &tokens[0], &doc, "thawed") == 200
    });
    assert!(
        back.is_some(),
        "the replica did not serve again after the database thawed"
    );
    let verify = admin(d, &url, &["audit", "verify"]);
    assert!(verify.contains("audit trail verified"), "{verify}");
    drop(a2);
    drop(cluster);
}
