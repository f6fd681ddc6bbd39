//! Withdrawals racing unwraps, against a real `kluis-server` process on loopback and its real
//! SQLite store: while unwraps run from many threads at once, a token is revoked, every token
//! of a user is revoked, a user is removed from a label's policy and a key version is
//! destroyed, each by the admin command (another process). Afterwards, in the verified audit
//! trail, no "granted" record for that credential, user or version follows the record of the
//! change that forbids it, and every share a client received has its "granted" record.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{LOOPBACK, admin, label_key, serve};
use serde_json::Value;

fn token(dir: &Path, user: &str) -> String {
    admin(dir, &["token", "create", "--user", user])
        .trim()
        .to_owned()
}

/// What the clients of one user saw: answers by status (and code, for 503).
#[derive(Default)]
struct Seen {
    granted: AtomicUsize,
    answers: Mutex<HashMap<String, usize>>,
}

/// Unwraps with `token` and `body` from `threads` threads until `stop` (or a bounded count);
/// a thread stops at its first `401` (the token is dead: the server answers it before reading
/// the body and closes the connection, which a client sending at full speed sees as a reset).
fn load(
    url: &str,
    token: &str,
    body: &str,
    threads: usize,
    stop: &Arc<AtomicBool>,
    seen: &Arc<Seen>,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..threads)
        .map(|_| {
            let (url, token, body) = (url.to_owned(), token.to_owned(), body.to_owned());
            let (stop, seen) = (stop.clone(), seen.clone());
            std::thread::spawn(move || {
                let agent = common::agent();
                for _ in 0..20_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let r = agent
                        .post(&url)
                        .header("Authorization", &format!("Bearer {token}"))
                        .header("Content-Type", "application/json")
                        .send(body.as_str());
                    let key = match r {
                        Ok(mut r) => {
                            let status = r.status().as_u16();
                            let text = r.body_mut().read_to_string().unwrap_or_default();
                            if status == 200 {
                                seen.granted.fetch_add(1, Ordering::Relaxed);
                            }
                            match status {
                                503 => {
                                    let v: Value = serde_json::from_str(&text).unwrap_or_default();
                                    format!("503 {}", v["code"].as_str().unwrap_or("?"))
                                }
                                s => s.to_string(),
                            }
                        }
                        Err(e) => format!("error {e}"),
                    };
                    let dead = key == "401";
                    *seen.answers.lock().unwrap().entry(key).or_default() += 1;
                    if dead {
                        break;
                    }
                }
            })
        })
        .collect()
}

/// Wait until every one of `seen` has had `n` grants (at most 60 s).
fn until_granted(seen: &[&Arc<Seen>], n: usize) {
    let start = Instant::now();
    while seen.iter().any(|s| s.granted.load(Ordering::Relaxed) < n) {
        assert!(start.elapsed() < Duration::from_secs(60), "no grants");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn no_grant_is_recorded_after_a_revocation_policy_change_or_destroy_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    admin(d, &["init"]);
    admin(
        d,
        &[
            "label", "create", "hr", "--user", "alice", "--user", "bob", "--user", "carol",
            "--user", "erin",
        ],
    );
    admin(d, &["label", "create", "old", "--user", "dave"]);
    let alice = token(d, "alice");
    let bob = token(d, "bob");
    let carol = token(d, "carol");
    let dave = token(d, "dave");
    let erin = token(d, "erin");
    let server = serve(
        dir,
        &[LOOPBACK[0], LOOPBACK[1], LOOPBACK[2], "--rate-limit", "0"],
    );
    let d = server.dir.path();
    let url = format!("{}/v1/unwrap", server.base);
    let hr = common::unwrap_body(&label_key(&server, "hr")).to_string();
    // Dave opens documents under version 1 of `old`, which is then rotated out: it keeps
    // opening until it is destroyed.
    let old_v1 = common::unwrap_body(&label_key(&server, "old")).to_string();
    admin(d, &["label", "rotate", "old"]);

    let stop = Arc::new(AtomicBool::new(false));
    let users = ["alice", "bob", "carol", "dave", "erin"];
    let seen: HashMap<&str, Arc<Seen>> = users.iter().map(|u| (*u, Arc::default())).collect();
    let mut threads = Vec::new();
    for (user, token, body) in [
        ("alice", &alice, &hr),
        ("bob", &bob, &hr),
        ("carol", &carol, &hr),
        ("dave", &dave, &old_v1),
        ("erin", &erin, &hr),
    ] {
        threads.extend(load(&url, token, body, 3, &stop, &seen[user]));
    }
    // Each change while every user's unwraps are flowing.
    let all: Vec<&Arc<Seen>> = seen.values().collect();
    until_granted(&all, 20);
    admin(d, &["token", "revoke", &alice[..14]]);
    until_granted(&[&seen["erin"]], 40);
    admin(d, &["token", "revoke-user", "bob"]);
    until_granted(&[&seen["erin"]], 60);
    admin(d, &["label", "update", "hr", "--remove-user", "carol"]);
    until_granted(&[&seen["erin"]], 80);
    admin(d, &["label", "destroy", "old", "1", "--confirm", "old"]);
    until_granted(&[&seen["erin"]], 100);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }

    admin(d, &["audit", "verify"]);
    let trail: Vec<Value> = admin(d, &["audit", "export"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let position = |action: &str, reason: &str| {
        trail
            .iter()
            .position(|r| {
                r["action"] == action && r["reason"].as_str().unwrap_or("").contains(reason)
            })
            .unwrap_or_else(|| panic!("no {action} record"))
    };
    let granted_after = |from: usize, hit: &dyn Fn(&Value) -> bool| {
        trail[from..]
            .iter()
            .filter(|r| r["outcome"] == "granted" && hit(r))
            .count()
    };
    let alice_credential = format!("token:{}", &alice[..14]);
    let revoked = position("token.revoke", &alice[..14]);
    let left = position("token.revoke-user", "user bob");
    let removed = position("label.update", "carol");
    let destroyed = trail
        .iter()
        .position(|r| r["action"] == "label.destroy" && r["label"] == "old")
        .expect("no destroy record");
    let late = [
        (
            "alice's token revoked",
            granted_after(revoked, &|r| r["credential"] == alice_credential.as_str()),
        ),
        (
            "bob's tokens revoked",
            granted_after(left, &|r| r["actor"] == "bob"),
        ),
        (
            "carol removed from hr",
            granted_after(removed, &|r| r["actor"] == "carol" && r["label"] == "hr"),
        ),
        (
            "version 1 of old destroyed",
            granted_after(destroyed, &|r| r["label"] == "old" && r["kid"] == 1),
        ),
    ];
    let report: Vec<String> = users
        .iter()
        .map(|u| format!("{u}: {:?}", seen[u].answers.lock().unwrap()))
        .collect();
    assert!(
        late.iter().all(|(_, n)| *n == 0),
        "grants recorded after the change that forbids them: {late:?}; answers {report:?}"
    );
    // Every share a client received has its record, and nothing else was answered than a
    // share or the refusal each change explains.
    for user in users {
        let records = trail
            .iter()
            .filter(|r| r["actor"] == user && r["outcome"] == "granted")
            .count();
        let received = seen[user].granted.load(Ordering::Relaxed);
        assert_eq!(records, received, "{user}: records vs shares; {report:?}");
        for answer in seen[user].answers.lock().unwrap().keys() {
            assert!(
                ["200", "401", "403", "410", "503 access_changing"].contains(&answer.as_str()),
                "{user}: unexpected answer {answer}; {report:?}"
            );
        }
    }
    let metrics = common::get(&format!("{}/metrics", server.base), None).1;
    let stale = metrics
        .lines()
        .find(|l| l.starts_with("kluis_audit_stale_total "))
        .unwrap_or("kluis_audit_stale_total missing");
    println!("answers: {report:?}; {stale}");
}
