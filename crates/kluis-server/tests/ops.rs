//! Operating the key server, against the real binary: TLS, configuration file and
//! environment, passphrase sources, metrics, rate limits, scheduled rotation and retention,
//! restarts, `kill -9` during a burst, graceful shutdown, slow clients, and `audit verify`
//! against an edit made outside kluis.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::{
    LOOPBACK, Server, admin, admin_fails, get, label_key, post, post_full, serve, serve_with_env,
    store,
};
use kluis_core::reply::ReplyKey;
use kluis_core::{Header, LabelPublicKey, Metadata, Recipient, Slot};
use serde_json::{Value, json};

/// The body of a single unwrap for a fresh document sealed to `label`; returns it and the
/// document id.
fn unwrap_body(label: &LabelPublicKey) -> (Value, String) {
    let sealed = kluis_core::seal(
        &[Slot::single(Recipient::Label(label.clone()))],
        &Metadata::default(),
        b"secret",
    )
    .unwrap();
    let header = Header::parse(&sealed).unwrap();
    let doc = header.doc_id().to_string();
    let stanza = B64.encode(header.slots()[0][0].to_bytes());
    let reply = B64.encode(ReplyKey::generate().unwrap().public_bytes());
    (
        json!({ "reply_key": reply, "doc_id": doc, "stanza": stanza }),
        doc,
    )
}

fn audit(dir: &Path) -> Vec<Value> {
    admin(dir, &["audit", "export"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn tls_with_the_configured_certificate_and_plain_http_only_on_loopback() {
    let (dir, token) = store();
    let d = dir.path();
    // A CA and a certificate for 127.0.0.1 and localhost, made here.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    std::fs::write(d.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(d.join("key.pem"), key.serialize_pem()).unwrap();

    // Plain HTTP is refused off loopback; TLS half-configured is refused.
    let e = admin_fails(d, &["serve", "--listen", "0.0.0.0:0", "--insecure-http"]);
    assert!(e.contains("loopback"), "{e}");
    let e = admin_fails(
        d,
        &["serve", "--listen", "127.0.0.1:0", "--tls-cert", "cert.pem"],
    );
    assert!(e.contains("--tls-key"), "{e}");
    let e = admin_fails(d, &["serve", "--listen", "127.0.0.1:0"]);
    assert!(e.contains("TLS"), "{e}");

    let server = serve(
        dir,
        &[
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            "cert.pem",
            "--tls-key",
            "key.pem",
        ],
    );
    assert!(server.base.starts_with("https://"), "{}", server.base);
    let trusting: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::new_with_certs(&[
                    ureq::tls::Certificate::from_der(ca.der()).to_owned(),
                ]))
                .build(),
        )
        .build()
        .into();
    let url = format!("{}/v1/labels/hr", server.base);
    let mut r = trusting.get(&url).call().unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.body_mut().read_to_string().unwrap().contains("kluis1"));
    // An unwrap over TLS works end to end.
    let record: Value = serde_json::from_str(
        &trusting
            .get(&url)
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap(),
    )
    .unwrap();
    let label = LabelPublicKey::new(
        "hr",
        1,
        record["public_key"].as_str().unwrap().parse().unwrap(),
    )
    .unwrap();
    let (body, _) = unwrap_body(&label);
    let mut r = trusting
        .post(format!("{}/v1/unwrap", server.base))
        .header("Authorization", &format!("Bearer {token}"))
        .send(body.to_string())
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "{}",
        r.body_mut().read_to_string().unwrap()
    );
    // A client that does not trust the CA is refused by its own TLS check.
    assert!(common::agent().get(&url).call().is_err());
    // Plain HTTP to the TLS port gets no answer.
    let plain = url.replace("https://", "http://");
    assert!(ureq::get(&plain).call().is_err());
}

#[test]
fn config_file_environment_and_flags_in_that_order() {
    let (dir, token) = store();
    let d = dir.path();
    std::fs::write(
        d.join("kluis.toml"),
        "[serve]\nlisten = \"127.0.0.1:0\"\ninsecure_http = true\nmax_batch = 2\n",
    )
    .unwrap();
    let batch = |server: &Server, n: usize| {
        let label = label_key(server, "hr");
        let items: Vec<Value> = (0..n)
            .map(|_| {
                let (b, _) = unwrap_body(&label);
                json!({ "doc_id": b["doc_id"], "stanza": b["stanza"] })
            })
            .collect();
        let reply = B64.encode(ReplyKey::generate().unwrap().public_bytes());
        post(
            &format!("{}/v1/unwrap/batch", server.base),
            Some(&token),
            &json!({ "reply_key": reply, "items": items }),
        )
        .0
    };
    // From the file: at most 2 items.
    let server = serve(dir, &["--config", "kluis.toml"]);
    assert_eq!(batch(&server, 3), 413);
    assert_eq!(batch(&server, 2), 200);
    // The environment overrides the file...
    let server = serve_with_env(
        server.kill(),
        &["--config", "kluis.toml"],
        &[("KLUIS_MAX_BATCH", "3")],
    );
    assert_eq!(batch(&server, 3), 200);
    assert_eq!(batch(&server, 4), 413);
    // ...and a flag overrides both.
    let server = serve(
        server.kill(),
        &["--config", "kluis.toml", "--max-batch", "5"],
    );
    assert_eq!(batch(&server, 5), 200);
    // A typo in the file is an error that names it.
    std::fs::write(
        server.dir.path().join("bad.toml"),
        "[serve]\nmax_bach = 2\n",
    )
    .unwrap();
    let e = admin_fails(
        server.dir.path(),
        &["--config", "bad.toml", "label", "list"],
    );
    assert!(e.contains("max_bach"), "{e}");
}

#[test]
fn passphrase_from_a_file_descriptor_and_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("pw"), "correct horse battery staple\n").unwrap();
    // Descriptor 3 is opened by the shell; kluis-server reads it by number.
    let run = |args: &str| {
        std::process::Command::new("bash")
            .current_dir(d)
            .arg("-c")
            .arg(format!(
                "exec 3<pw; {} {args}",
                env!("CARGO_BIN_EXE_kluis-server")
            ))
            .output()
            .unwrap()
    };
    let out = run("--passphrase-fd 3 init");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !d.join("kluis-master.key").exists(),
        "no key file in passphrase mode"
    );
    let out = run("--passphrase-fd 3 label create hr --user alice");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    admin(d, &["--passphrase-file", "pw", "label", "show", "hr"]);
    std::fs::write(d.join("wrong"), "wrong horse\n").unwrap();
    let e = admin_fails(d, &["--passphrase-file", "wrong", "label", "list"]);
    assert!(e.contains("does not open this store"), "{e}");
    let e = admin_fails(
        d,
        &[
            "--passphrase-file",
            "pw",
            "--passphrase-env",
            "X",
            "label",
            "list",
        ],
    );
    assert!(e.contains("choose one"), "{e}");
}

#[test]
fn metrics_count_requests_outcomes_and_audit_commits() {
    let (dir, token) = store();
    let server = serve(dir, &LOOPBACK);
    let label = label_key(&server, "hr");
    for _ in 0..3 {
        let (body, _) = unwrap_body(&label);
        assert_eq!(
            post(&format!("{}/v1/unwrap", server.base), Some(&token), &body).0,
            200
        );
    }
    let (body, _) = unwrap_body(&label);
    assert_eq!(
        post(
            &format!("{}/v1/unwrap", server.base),
            Some("kluis_nope"),
            &body
        )
        .0,
        401
    );
    let (status, text) = get(&format!("{}/metrics", server.base), None);
    assert_eq!(status, 200);
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().parse().unwrap()))
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    };
    assert_eq!(
        value("kluis_http_requests_total{route=\"unwrap\",status=\"200\"}"),
        3.0
    );
    assert_eq!(
        value("kluis_http_requests_total{route=\"unwrap\",status=\"401\"}"),
        1.0
    );
    assert_eq!(value("kluis_unwrap_items_total{outcome=\"granted\"}"), 3.0);
    assert_eq!(
        value("kluis_http_request_duration_seconds_count{route=\"unwrap\"}"),
        4.0
    );
    assert_eq!(value("kluis_audit_queue_depth"), 0.0);
    assert_eq!(value("kluis_audit_records_total"), 3.0);
    assert!(value("kluis_audit_commits_total") >= 1.0);
    assert!(text.contains("# TYPE kluis_http_request_duration_seconds histogram"));
}

#[test]
fn rate_limits_answer_429_with_retry_after_per_identity() {
    let (dir, alice) = store();
    admin(dir.path(), &["label", "create", "ops", "--user", "bob"]);
    let bob = admin(dir.path(), &["token", "create", "--user", "bob"])
        .trim()
        .to_owned();
    let server = serve(
        dir,
        &[
            LOOPBACK[0],
            LOOPBACK[1],
            LOOPBACK[2],
            "--rate-limit",
            "0.5",
            "--rate-burst",
            "2",
        ],
    );
    let hr = label_key(&server, "hr");
    let url = format!("{}/v1/unwrap", server.base);
    for _ in 0..2 {
        assert_eq!(post(&url, Some(&alice), &unwrap_body(&hr).0).0, 200);
    }
    let (status, v, headers) = post_full(&url, Some(&alice), &unwrap_body(&hr).0);
    assert_eq!(status, 429, "{v}");
    assert_eq!(v["code"], "rate_limited");
    let wait: u64 = headers["retry-after"].parse().unwrap();
    assert!((1..=2).contains(&wait), "{wait}");
    // Another identity is not slowed down by alice.
    let ops = label_key(&server, "ops");
    assert_eq!(post(&url, Some(&bob), &unwrap_body(&ops).0).0, 200);
    // Refused requests released nothing and are not recorded as openings.
    let granted = audit(server.dir.path())
        .iter()
        .filter(|r| r["action"] == "unwrap")
        .count();
    assert_eq!(granted, 3);
}

#[test]
fn scheduled_rotation_and_retention_run_in_the_server() {
    let dir = tempfile::tempdir().unwrap();
    admin(dir.path(), &["init"]);
    admin(
        dir.path(),
        &[
            "label",
            "create",
            "hr",
            "--user",
            "alice",
            "--rotate-every",
            "2s",
            "--retain",
            "2s",
        ],
    );
    let token = admin(dir.path(), &["token", "create", "--user", "alice"])
        .trim()
        .to_owned();
    let server = serve(
        dir,
        &[
            LOOPBACK[0],
            LOOPBACK[1],
            LOOPBACK[2],
            "--schedule-interval",
            "1",
        ],
    );
    let v1 = label_key(&server, "hr");
    assert_eq!(v1.kid(), 1);
    let (old_doc, _) = unwrap_body(&v1);
    assert_eq!(
        post(
            &format!("{}/v1/unwrap", server.base),
            Some(&token),
            &old_doc
        )
        .0,
        200
    );
    // Version 1 is rotated out after 2 s and destroyed 2 s after that.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, v, _) = post(
            &format!("{}/v1/unwrap", server.base),
            Some(&token),
            &old_doc,
        );
        if status == 410 {
            assert_eq!(v["code"], "destroyed");
            assert!(v["message"].as_str().unwrap().contains(" on 20"), "{v}");
            break;
        }
        assert_eq!(status, 200, "{v}");
        assert!(Instant::now() < deadline, "version 1 was never destroyed");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(label_key(&server, "hr").kid() >= 2);
    let records = audit(server.dir.path());
    let by_scheduler = |action: &str, kid: u64| {
        records
            .iter()
            .any(|r| r["actor"] == "scheduler" && r["action"] == action && r["kid"] == kid)
    };
    assert!(by_scheduler("label.rotate", 2), "{records:?}");
    assert!(by_scheduler("label.destroy", 1), "{records:?}");
    admin(server.dir.path(), &["audit", "verify"]);
}

#[test]
fn kill_9_during_a_burst_loses_no_record_of_any_reply_sent_and_a_restart_keeps_everything() {
    let (dir, token) = store();
    let server = serve(
        dir,
        &[LOOPBACK[0], LOOPBACK[1], LOOPBACK[2], "--rate-limit", "0"],
    );
    let label = label_key(&server, "hr");
    let bodies: Vec<(Value, String)> = (0..64).map(|_| unwrap_body(&label)).collect();
    let bodies = Arc::new(bodies);
    let replies: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let (bodies, replies, stop) = (bodies.clone(), replies.clone(), stop.clone());
            let (url, token) = (format!("{}/v1/unwrap", server.base), token.clone());
            std::thread::spawn(move || {
                let agent = common::agent();
                let mut i = w;
                while !stop.load(Ordering::Relaxed) {
                    let (body, doc) = &bodies[i % bodies.len()];
                    i += 8;
                    let r = agent
                        .post(&url)
                        .header("Authorization", &format!("Bearer {token}"))
                        .send(body.to_string());
                    match r {
                        Ok(mut r) if r.status() == 200 => {
                            // A complete reply with a share: it was released.
                            let v: Value =
                                serde_json::from_str(&r.body_mut().read_to_string().unwrap())
                                    .unwrap();
                            assert!(v["share"].is_string());
                            *replies.lock().unwrap().entry(doc.clone()).or_default() += 1;
                        }
                        Ok(r) => panic!("unexpected status {}", r.status()),
                        Err(_) => break, // the server is gone
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let dir = server.kill(); // SIGKILL, mid-burst
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let replies = replies.lock().unwrap().clone();
    let sent: usize = replies.values().sum();
    assert!(
        sent > 50,
        "the burst was too small to mean anything: {sent}"
    );
    // Every reply that left has its record; the chain verifies.
    let out = admin(dir.path(), &["audit", "verify"]);
    assert!(out.contains("verified"), "{out}");
    let mut recorded: HashMap<String, usize> = HashMap::new();
    for r in audit(dir.path()) {
        if r["action"] == "unwrap" && r["outcome"] == "granted" {
            *recorded
                .entry(r["doc_id"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
    }
    for (doc, n) in &replies {
        let have = recorded.get(doc).copied().unwrap_or(0);
        assert!(have >= *n, "{doc}: {n} replies sent but {have} records");
    }
    // A restart keeps labels, tokens and the trail; unwraps go on.
    let server = serve(dir, &LOOPBACK);
    let (body, _) = unwrap_body(&label_key(&server, "hr"));
    assert_eq!(
        post(&format!("{}/v1/unwrap", server.base), Some(&token), &body).0,
        200
    );
    let (body, _) = unwrap_body(&label);
    assert_eq!(
        post(&format!("{}/v1/unwrap", server.base), Some(&token), &body).0,
        200
    );
    admin(server.dir.path(), &["audit", "verify"]);
}

#[test]
fn sigterm_lets_in_flight_requests_finish_and_flushes_the_audit_trail() {
    let (dir, token) = store();
    let mut server = serve(dir, &LOOPBACK);
    let label = label_key(&server, "hr");
    let (body, doc) = unwrap_body(&label);
    assert_eq!(
        post(&format!("{}/v1/unwrap", server.base), Some(&token), &body).0,
        200
    );
    let status = std::process::Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = server.child.wait().unwrap();
    assert!(out.success(), "exit status {out}");
    let mut stderr = String::new();
    server
        .child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(stderr.contains("audit trail is flushed"), "{stderr}");
    let records = audit(server.dir.path());
    assert!(records.iter().any(|r| r["doc_id"] == doc.as_str()));
}

#[test]
fn a_slow_client_is_cut_off_after_the_header_timeout() {
    let (dir, _) = store();
    std::fs::write(
        dir.path().join("k.toml"),
        "[serve]\nheader_timeout_secs = 1\n",
    )
    .unwrap();
    let server = serve(
        dir,
        &[LOOPBACK[0], LOOPBACK[1], LOOPBACK[2], "--config", "k.toml"],
    );
    let addr = server.base.strip_prefix("http://").unwrap();
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let start = Instant::now();
    let mut buf = Vec::new();
    // The server answers 408 or just closes; either way the connection ends, well before
    // our own 10 s read timeout.
    let _ = s.read_to_end(&mut buf);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    // The server is still fine.
    assert_eq!(get(&format!("{}/healthz", server.base), None).0, 200);
}

#[test]
fn audit_verify_catches_a_record_edited_with_the_sqlite3_tool() {
    let (dir, token) = store();
    let server = serve(dir, &LOOPBACK);
    let (body, _) = unwrap_body(&label_key(&server, "hr"));
    assert_eq!(
        post(&format!("{}/v1/unwrap", server.base), Some(&token), &body).0,
        200
    );
    let dir = server.kill();
    let d = dir.path();
    admin(d, &["audit", "verify"]);
    let sql = "UPDATE audit SET actor = 'mallory' WHERE action = 'unwrap';";
    match std::process::Command::new("sqlite3")
        .current_dir(d)
        .args(["kluis-server.db", sql])
        .status()
    {
        Ok(s) => assert!(s.success(), "sqlite3 failed"),
        Err(_) => {
            // No sqlite3 tool on this machine (CI installs it): make the same edit through
            // the same SQLite library from this process.
            eprintln!("sqlite3 tool not found: editing with rusqlite instead");
            rusqlite::Connection::open(d.join("kluis-server.db"))
                .unwrap()
                .execute_batch(sql)
                .unwrap();
        }
    }
    let e = admin_fails(d, &["audit", "verify"]);
    assert!(e.contains("does not verify"), "{e}");
}

/// An Ed25519 signing key and its JWKS document.
fn idp() -> (ring::signature::Ed25519KeyPair, String) {
    use ring::signature::KeyPair;
    let pkcs8 =
        ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    let key = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.public_key().as_ref());
    let jwks = json!({ "keys": [{ "kty": "OKP", "crv": "Ed25519", "x": x, "kid": "k1" }] });
    (key, jwks.to_string())
}

fn jwt(key: &ring::signature::Ed25519KeyPair, alg: &str, claims: &Value) -> String {
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let signing_input = format!(
        "{}.{}",
        b64(&json!({ "alg": alg, "typ": "JWT", "kid": "k1" })),
        b64(claims)
    );
    let sig = key.sign(signing_input.as_bytes());
    format!(
        "{signing_input}.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig.as_ref())
    )
}

#[test]
fn openid_connect_tokens_are_checked_against_the_jwks_and_refused_when_it_is_unavailable() {
    let (dir, _) = store();
    let d = dir.path();
    // OpenID Connect groups are named with the issuer's prefix (`idp` by default).
    admin(
        d,
        &["label", "create", "legal", "--group", "oidc:idp:lawyers"],
    );
    let (key, jwks) = idp();
    std::fs::write(d.join("jwks.json"), jwks).unwrap();
    std::fs::write(
        d.join("oidc.toml"),
        "[oidc]\nissuer = \"https://idp.example\"\naudience = \"api://kluis\"\n\
         jwks_file = \"jwks.json\"\n",
    )
    .unwrap();
    let server = serve(
        dir,
        &[
            LOOPBACK[0],
            LOOPBACK[1],
            LOOPBACK[2],
            "--config",
            "oidc.toml",
        ],
    );
    let now = kluis_server::now_ms() / 1000;
    let claims = |aud: &str, exp: i64| {
        json!({ "iss": "https://idp.example", "aud": aud, "exp": exp, "iat": now,
                "sub": "carol-1", "preferred_username": "carol", "groups": ["lawyers"] })
    };
    let url = format!("{}/v1/unwrap", server.base);
    let legal = label_key(&server, "legal");
    // A valid token: carol, by group, may open `legal` but not `hr`.
    let good = jwt(&key, "EdDSA", &claims("api://kluis", now + 300));
    let (status, v, _) = post(&url, Some(&good), &unwrap_body(&legal).0);
    assert_eq!(status, 200, "{v}");
    let (status, v, _) = post(&url, Some(&good), &unwrap_body(&label_key(&server, "hr")).0);
    assert_eq!(status, 403, "{v}");
    let (status, mine) = get(&format!("{}/v1/me/audit", server.base), Some(&good));
    assert_eq!(status, 200);
    let mine: Vec<Value> = serde_json::from_str(&mine).unwrap();
    assert_eq!(mine.len(), 2, "{mine:?}");
    assert!(mine.iter().all(|r| r["actor"] == "oidc:idp:carol"));
    // Refused: wrong audience, expired, `alg: none`, a bad signature.
    let bad = [
        jwt(&key, "EdDSA", &claims("api://other", now + 300)),
        jwt(&key, "EdDSA", &claims("api://kluis", now - 3600)),
        {
            let t = jwt(&key, "EdDSA", &claims("api://kluis", now + 300));
            let (head, _) = t.rsplit_once('.').unwrap();
            let none = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(json!({ "alg": "none", "typ": "JWT" }).to_string());
            format!("{none}.{}.", head.split_once('.').unwrap().1)
        },
        {
            let mut t = jwt(&key, "EdDSA", &claims("api://kluis", now + 300));
            let last = t.pop().unwrap();
            t.push(if last == 'A' { 'B' } else { 'A' });
            t
        },
    ];
    for token in &bad {
        let (status, v, www) = post(&url, Some(token), &unwrap_body(&legal).0);
        assert_eq!(status, 401, "{v}");
        assert!(www.is_some());
        assert!(!v["message"].as_str().unwrap().contains(token.as_str()));
    }
    // Nothing refused was recorded as an opening by anyone but carol.
    let records = audit(server.dir.path());
    assert_eq!(
        records.iter().filter(|r| r["action"] == "unwrap").count(),
        2
    );

    // A JWKS URL that cannot be reached: the server starts, and refuses such tokens (503),
    // never accepting them.
    let dir = server.kill();
    std::fs::write(
        dir.path().join("down.toml"),
        "[oidc]\nissuer = \"https://idp.example\"\naudience = \"api://kluis\"\n\
         jwks_url = \"http://127.0.0.1:9/keys\"\njwks_fetch_timeout_secs = 1\n",
    )
    .unwrap();
    let server = serve(
        dir,
        &[
            LOOPBACK[0],
            LOOPBACK[1],
            LOOPBACK[2],
            "--config",
            "down.toml",
        ],
    );
    let (status, v, headers) = post_full(&url_of(&server), Some(&good), &unwrap_body(&legal).0);
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["code"], "idp_unavailable");
    assert!(headers.contains_key("retry-after"));
}

fn url_of(server: &Server) -> String {
    format!("{}/v1/unwrap", server.base)
}

#[test]
fn settings_that_would_break_the_server_are_refused_at_start() {
    let (dir, _) = store();
    let d = dir.path();
    for (setting, name) in [
        ("max_connections = 0", "max_connections"),
        ("max_connections = 18446744073709551615", "max_connections"),
        (
            "header_timeout_secs = 18446744073709551615",
            "header_timeout_secs",
        ),
        ("request_timeout_secs = 0", "request_timeout_secs"),
        ("rate_limit_per_sec = 1e-300", "rate_limit_per_sec"),
        ("rate_limit_per_sec = nan", "rate_limit_per_sec"),
        ("max_body_bytes = 0", "max_body_bytes"),
        ("max_body_bytes_in_flight = 0", "max_body_bytes_in_flight"),
        (
            "max_body_bytes = 8388608\nmax_body_bytes_in_flight_per_identity = 4194304",
            "max_body_bytes_in_flight_per_identity",
        ),
        (
            "max_body_bytes_in_flight = 1048576\nmax_body_bytes_in_flight_per_identity = 2097152",
            "max_body_bytes_in_flight_per_identity",
        ),
        ("max_batch = 0", "max_batch"),
        ("schedule_interval_secs = 0", "schedule_interval_secs"),
    ] {
        std::fs::write(d.join("bad.toml"), format!("[serve]\n{setting}\n")).unwrap();
        let e = admin_fails(
            d,
            &[
                "--config",
                "bad.toml",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--insecure-http",
            ],
        );
        assert!(e.contains(name), "{setting}: {e}");
    }
}

#[test]
fn kill_9_during_rotations_loses_no_key_and_the_chain_still_verifies() {
    let (dir, token) = store();
    let server = serve(
        dir,
        &[LOOPBACK[0], LOOPBACK[1], LOOPBACK[2], "--rate-limit", "0"],
    );
    let d = server.dir.path().to_owned();
    let url = format!("{}/v1/unwrap", server.base);
    let mut docs = Vec::new();
    let mut killed = 0;
    for round in 0..40u64 {
        // A document sealed to whatever version is current now...
        let (body, _) = unwrap_body(&label_key(&server, "hr"));
        let (status, v, _) = post(&url, Some(&token), &body);
        assert_eq!(status, 200, "{v}");
        docs.push(body);
        // ...then a rotation, killed (SIGKILL) at a moment that varies from round to round
        // (from before it opened the store to after it committed), between unwraps.
        let mut child = common::bin()
            .current_dir(&d)
            .args(["label", "rotate", "hr"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(150 * round));
        if child.try_wait().unwrap().is_none() {
            killed += 1;
        }
        let _ = child.kill();
        child.wait().unwrap();
    }
    eprintln!("{killed} of 40 rotations were killed before they finished");
    assert!(
        killed > 0,
        "no rotation was interrupted: the test proved nothing"
    );
    // Every document sealed to any version that was ever current still opens: no key lost.
    for body in &docs {
        let (status, v, _) = post(&url, Some(&token), body);
        assert_eq!(status, 200, "{v}");
    }
    // The versions are 1..=n without gaps, exactly one current; the chain verifies and holds
    // one rotation record per version after the first.
    let shown: Value = serde_json::from_str(&admin(&d, &["label", "show", "hr"])).unwrap();
    let versions = shown["versions"].as_array().unwrap();
    for (i, v) in versions.iter().enumerate() {
        assert_eq!(v["kid"], i as u64 + 1);
    }
    assert_eq!(
        versions.iter().filter(|v| v["state"] == "current").count(),
        1
    );
    admin(&d, &["audit", "verify"]);
    let rotations = audit(&d)
        .iter()
        .filter(|r| r["action"] == "label.rotate")
        .count();
    assert_eq!(rotations, versions.len() - 1);
}
