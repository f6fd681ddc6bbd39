//! Review of the re-check at commit (`service::epoch`): every rise of the store's access epoch
//! has every grant in flight, of any label, decided again, so a burst of withdrawals must not
//! refuse unrelated unwraps (here: the scheduler enforcing retention, on a real server process
//! and a real PostgreSQL).

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{LOOPBACK, label_key};
use kluis_server::{KeyService, KeySource, Policy, ScheduledChange, meta, now_ms};
use kluis_testkit::postgres::{PASSWORD, PgCluster};
use serde_json::Value;

/// An admin command on the PostgreSQL store at `url` (the key file in `dir`).
fn admin(dir: &Path, url: &str, args: &[&str]) -> String {
    common::pg_admin(dir, url, args)
}

/// A server on the PostgreSQL store at `url` (the key file in `dir`), on loopback, with no
/// rate limit and a scheduler tick every second.
fn serve(dir: tempfile::TempDir, url: &str) -> common::Server {
    let args = [
        LOOPBACK[0],
        LOOPBACK[1],
        LOOPBACK[2],
        "--rate-limit",
        "0",
        "--schedule-interval",
        "1",
    ];
    let env = [("KLUIS_STORE", url), ("KLUIS_STORE_PASSWORD", PASSWORD)];
    common::serve_with_env(dir, &args, &env)
}

/// Four threads unwrapping `body` with `token` at `url` until `stop`, counting the answers in
/// `answers` by status and JSON code (`"200"`, `"503 access_changing"`, ...).
fn unwrapping(
    url: &str,
    token: &str,
    body: &str,
    stop: &Arc<AtomicBool>,
    answers: &Arc<Mutex<HashMap<String, usize>>>,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..4)
        .map(|_| {
            let (u, token, body) = (url.to_owned(), token.to_owned(), body.to_owned());
            let (stop, answers) = (stop.clone(), answers.clone());
            std::thread::spawn(move || {
                let agent = common::agent();
                while !stop.load(Ordering::Relaxed) {
                    let mut r = agent
                        .post(&u)
                        .header("Authorization", &format!("Bearer {token}"))
                        .header("Content-Type", "application/json")
                        .send(body.as_str())
                        .unwrap();
                    let status = r.status().as_u16();
                    let text = r.body_mut().read_to_string().unwrap_or_default();
                    let key = if status == 200 {
                        "200".to_owned()
                    } else {
                        let v: Value = serde_json::from_str(&text).unwrap_or_default();
                        format!("{status} {}", v["code"].as_str().unwrap_or("?"))
                    };
                    *answers.lock().unwrap().entry(key).or_default() += 1;
                }
            })
        })
        .collect()
}

/// Alice unwraps from 4 threads while the scheduler destroys 300 versions of a label she has
/// nothing to do with; returns her answers and the number of destroys.
fn burst(url: &str) -> (HashMap<String, usize>, usize) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    admin(d, url, &["init"]);
    admin(d, url, &["label", "create", "hr", "--user", "alice"]);
    admin(d, url, &["label", "create", "old", "--user", "zed"]);
    for _ in 0..300 {
        admin(d, url, &["label", "rotate", "old"]);
    }
    let alice = admin(d, url, &["token", "create", "--user", "alice"])
        .trim()
        .to_owned();
    let server = serve(dir, url);
    let url_unwrap = format!("{}/v1/unwrap", server.base);
    let body = common::unwrap_body(&label_key(&server, "hr")).to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let answers: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let threads = unwrapping(&url_unwrap, &alice, &body, &stop, &answers);
    std::thread::sleep(Duration::from_secs(1));
    let sd = server.dir.path();
    admin(
        sd,
        url,
        &[
            "label",
            "update",
            "old",
            "--retain",
            "1s",
            "--confirm",
            "old",
        ],
    );
    let start = Instant::now();
    let destroys = || {
        admin(sd, url, &["audit", "export"])
            .lines()
            .filter(|l| l.contains("\"label.destroy\""))
            .count()
    };
    while destroys() < 300 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the scheduler is slow"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let metrics = common::get(&format!("{}/metrics", server.base), None).1;
    let stale = metrics
        .lines()
        .find(|l| l.starts_with("kluis_audit_stale_total "))
        .unwrap_or("")
        .to_owned();
    let answers = answers.lock().unwrap().clone();
    println!("answers {answers:?}; {stale}; took {:?}", start.elapsed());
    (answers, destroys())
}

fn no_refusals(answers: &HashMap<String, usize>) {
    let refused: usize = answers
        .iter()
        .filter(|(k, _)| k.as_str() != "200")
        .map(|(_, n)| n)
        .sum();
    assert_eq!(refused, 0, "alice's unwraps were refused: {answers:?}");
}

/// Review finding: the scheduler destroyed each due version in its own transaction, each
/// raising the epoch; on PostgreSQL the writers' advisory lock hands turns to the audit writer
/// and the scheduler alternately, so every group commit of the burst found a new epoch and
/// alice's unwraps of another label were answered `503 access_changing` (195 of 2,169 before
/// the fix). Now a run's destroys are one transaction.
#[test]
fn postgres_scheduled_destroys_of_another_label_refuse_no_unwrap() {
    let cluster = PgCluster::shared();
    let db = cluster.create_database();
    let (answers, destroys) = burst(&cluster.url(&db));
    assert_eq!(destroys, 300);
    no_refusals(&answers);
}

/// The access epoch of `svc`'s store (0 before any withdrawal).
fn epoch<S: kluis_server::Store>(svc: &KeyService<S>) -> u64 {
    svc.store()
        .meta(meta::ACCESS_EPOCH)
        .unwrap()
        .map_or(0, |v| u64::from_be_bytes(v.try_into().unwrap()))
}

/// Every rise of the access epoch has every grant in flight, of any label, decided again: a
/// scheduled run that destroys many versions must raise it once, not once per version
/// (which, under load, answered unrelated unwraps `503 access_changing`, see above).
#[test]
fn a_scheduled_run_raises_the_access_epoch_once_for_all_its_destroys() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("master.key");
    let mut svc =
        KeyService::init_sqlite(&dir.path().join("store.db"), KeySource::File(&key)).unwrap();
    for name in ["a", "b"] {
        let policy = Policy {
            users: vec!["alice".into()],
            retention_secs: Some(60),
            ..Policy::default()
        };
        svc.create_label(name, &policy, "admin").unwrap();
        for _ in 0..5 {
            svc.rotate(name, "admin").unwrap();
        }
    }
    let before = epoch(&svc);
    let done = svc
        .run_schedule(now_ms() + 86_400_000, "scheduler")
        .unwrap();
    let destroyed = done
        .iter()
        .filter(|c| matches!(c, ScheduledChange::Destroyed { .. }))
        .count();
    assert_eq!(destroyed, 10, "{done:?}");
    assert_eq!(epoch(&svc) - before, 1, "the epoch rose once per destroy");
    svc.verify_audit().unwrap();
    let records = svc.audit_records(None).unwrap();
    let destroys = records
        .iter()
        .filter(|r| r.entry.action == "label.destroy" && r.entry.actor == "scheduler")
        .count();
    assert_eq!(destroys, 10, "each destroy has its record");
}

/// Review finding: a request decided three times, each time overtaken by a withdrawal, was
/// answered `503 access_changing` and left nothing in the audit trail, although every unwrap
/// that passed authentication is to be recorded, granted or refused (SERVER.md, DKE.md §7).
/// Now its last decision is recorded, its grants as refused `access_changing`.
///
/// A real server on PostgreSQL; another process (this one) withdraws access, of nobody, as
/// fast as it can, so that alice's unwraps are overtaken again and again.
#[test]
fn postgres_every_unwrap_answered_access_changing_is_recorded() {
    let cluster = PgCluster::shared();
    let url = cluster.url(&cluster.create_database());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    admin(d, &url, &["init"]);
    admin(d, &url, &["label", "create", "hr", "--user", "alice"]);
    let alice = admin(d, &url, &["token", "create", "--user", "alice"])
        .trim()
        .to_owned();
    let key = d.join("kluis-master.key");
    let server = serve(dir, &url);
    let body = common::unwrap_body(&label_key(&server, "hr")).to_string();
    let unwrap_url = format!("{}/v1/unwrap", server.base);

    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let (stop, url) = (stop.clone(), url.clone());
        std::thread::spawn(move || {
            let mut options = kluis_server::PgOptions::new(&url);
            options.password = Some(PASSWORD.to_owned().into());
            let store = kluis_server::PgStore::open(&options).unwrap();
            let mut svc = KeyService::open(store, KeySource::File(&key)).unwrap();
            while !stop.load(Ordering::Relaxed) {
                svc.revoke_user_tokens("nobody", "admin:churn").unwrap();
            }
        })
    };
    let answers: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let changing = || {
        answers
            .lock()
            .unwrap()
            .get("503 access_changing")
            .copied()
            .unwrap_or(0)
    };
    let threads = unwrapping(&unwrap_url, &alice, &body, &stop, &answers);
    let start = Instant::now();
    while changing() < 20 && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    churn.join().unwrap();
    let answers = answers.lock().unwrap().clone();
    assert!(
        changing() >= 20,
        "too few overtaken requests to tell: {answers:?}"
    );

    let sd = server.dir.path();
    admin(sd, &url, &["audit", "verify"]);
    let trail: Vec<Value> = admin(sd, &url, &["audit", "export"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let recorded = |outcome: &str| {
        trail
            .iter()
            .filter(|r| r["actor"] == "alice" && r["outcome"] == outcome)
            .count()
    };
    let answered = |k: &str| answers.get(k).copied().unwrap_or(0);
    assert_eq!(
        (recorded("granted"), recorded("access_changing")),
        (answered("200"), answered("503 access_changing")),
        "records (granted, access_changing) vs answers {answers:?}"
    );
}

/// Two replicas on one PostgreSQL, both serving alice's and bob's unwraps from several
/// threads, while an admin command revokes alice's token and then removes bob from the label:
/// in the verified trail no grant of either follows the record of the change that forbids it,
/// and every share a client received, through either replica, has its grant record. (The
/// writers of both replicas read the one `access_epoch` under the one advisory lock.)
#[test]
fn postgres_two_replicas_grant_nothing_after_a_revocation_or_a_policy_change() {
    let cluster = PgCluster::shared();
    let url = cluster.url(&cluster.create_database());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    admin(d, &url, &["init"]);
    admin(
        d,
        &url,
        &["label", "create", "hr", "--user", "alice", "--user", "bob"],
    );
    let token = |user: &str| {
        admin(d, &url, &["token", "create", "--user", user])
            .trim()
            .to_owned()
    };
    let (alice, bob) = (token("alice"), token("bob"));
    let other = tempfile::tempdir().unwrap();
    let key = "kluis-master.key";
    std::fs::copy(d.join(key), other.path().join(key)).unwrap();
    let a = serve(dir, &url);
    let b = serve(other, &url);
    let body = common::unwrap_body(&label_key(&a, "hr")).to_string();

    let stop = Arc::new(AtomicBool::new(false));
    // Per user: shares received, and answers other than 200 and the refusals the changes
    // explain.
    let granted: HashMap<&str, Arc<Mutex<usize>>> =
        [("alice", Arc::default()), ("bob", Arc::default())]
            .into_iter()
            .collect();
    let odd: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut threads = Vec::new();
    for (user, token) in [("alice", &alice), ("bob", &bob)] {
        for t in 0..4 {
            let base = if t % 2 == 0 { &a.base } else { &b.base };
            let u = format!("{base}/v1/unwrap");
            let (token, body) = (token.clone(), body.clone());
            let (stop, granted, odd) = (stop.clone(), granted[user].clone(), odd.clone());
            threads.push(std::thread::spawn(move || {
                let agent = common::agent();
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut r) = agent
                        .post(&u)
                        .header("Authorization", &format!("Bearer {token}"))
                        .header("Content-Type", "application/json")
                        .send(body.as_str())
                    else {
                        // A revoked token's connection is closed before its body is read.
                        continue;
                    };
                    let status = r.status().as_u16();
                    let text = r.body_mut().read_to_string().unwrap_or_default();
                    let v: Value = serde_json::from_str(&text).unwrap_or_default();
                    match (status, v["code"].as_str()) {
                        (200, _) => *granted.lock().unwrap() += 1,
                        (401, _) | (403, Some("denied")) | (503, Some("access_changing")) => {}
                        (s, c) => odd.lock().unwrap().push(format!("{s} {c:?}")),
                    }
                }
            }));
        }
    }
    let until = |user: &str, n: usize| {
        let start = Instant::now();
        while *granted[user].lock().unwrap() < n {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no grants for {user}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    until("alice", 30);
    until("bob", 30);
    let sd = a.dir.path();
    admin(sd, &url, &["token", "revoke", &alice[..14]]);
    let bob_then = *granted["bob"].lock().unwrap();
    until("bob", bob_then + 30);
    admin(sd, &url, &["label", "update", "hr", "--remove-user", "bob"]);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    assert!(odd.lock().unwrap().is_empty(), "{:?}", odd.lock().unwrap());

    admin(sd, &url, &["audit", "verify"]);
    let trail: Vec<Value> = admin(sd, &url, &["audit", "export"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let at = |action: &str| {
        trail
            .iter()
            .position(|r| r["action"] == action)
            .unwrap_or_else(|| panic!("no {action} record"))
    };
    let grants = |user: &str, from: usize| {
        trail[from..]
            .iter()
            .filter(|r| r["actor"] == user && r["outcome"] == "granted")
            .count()
    };
    assert_eq!(
        grants("alice", at("token.revoke")),
        0,
        "alice after her revocation"
    );
    assert_eq!(
        grants("bob", at("label.update")),
        0,
        "bob after his removal"
    );
    for user in ["alice", "bob"] {
        assert_eq!(
            grants(user, 0),
            *granted[user].lock().unwrap(),
            "{user}: records vs shares"
        );
    }
}

/// The epoch's argument needs each writer to read the epoch, and the audit tail, after the
/// writers' lock is taken, seeing every change committed before (PostgreSQL's `READ
/// COMMITTED`). A database whose default isolation is `repeatable read` (an organisation's
/// setting) took the snapshot at the lock statement, before the lock was granted: contending
/// writers then read an old tail and epoch and failed (`audit_pkey`, serialization failures),
/// refusing unwraps and admin changes alike. Now write transactions ask for `READ COMMITTED`.
#[test]
fn postgres_writers_take_turns_whatever_the_default_isolation() {
    let cluster = PgCluster::shared();
    let db = cluster.create_database();
    cluster.psql(
        "postgres",
        &format!("ALTER DATABASE {db} SET default_transaction_isolation = 'repeatable read'"),
    );
    let url = cluster.url(&db);
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("master.key");
    let open = || {
        let mut options = kluis_server::PgOptions::new(&url);
        options.password = Some(PASSWORD.to_owned().into());
        kluis_server::PgStore::open(&options).unwrap()
    };
    let mut options = kluis_server::PgOptions::new(&url);
    options.password = Some(PASSWORD.to_owned().into());
    let created = kluis_server::PgStore::create(&options).unwrap();
    drop(KeyService::init(created, KeySource::File(&key)).unwrap());
    const EACH: usize = 100;
    let failures: Vec<String> = std::thread::scope(|s| {
        let writers: Vec<_> = (0..3)
            .map(|_| {
                let mut svc = KeyService::open(open(), KeySource::File(&key)).unwrap();
                s.spawn(move || {
                    (0..EACH)
                        .filter_map(|_| {
                            svc.revoke_user_tokens("nobody", "admin")
                                .err()
                                .map(|e| e.to_string())
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        writers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    assert!(
        failures.is_empty(),
        "{} of {} changes failed, e.g. {:?}",
        failures.len(),
        3 * EACH,
        failures.first()
    );
    let svc = KeyService::open(open(), KeySource::File(&key)).unwrap();
    assert_eq!(epoch(&svc), 3 * EACH as u64);
    svc.verify_audit().unwrap();
}
