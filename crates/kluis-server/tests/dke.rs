//! Microsoft Double Key Encryption (issue 16), end to end: a real `kluis-server serve` process,
//! real SQLite, an Entra-like identity provider (RS256, JWKS file), and an Office-like client,
//! both in `common/dke.rs`. The client encrypts with the `openssl` command (another
//! RSA implementation than the server's aws-lc-rs), from the JWK the server publishes.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

mod common;
use common::dke::{
    AUDIENCE, PARTNER, TENANT, config, decrypt, dke_claims, dke_records, doc_ref, fetch_key,
    office_encrypt, serve_http, sign, store, token, with, without,
};
use common::{admin, get, label_key, make_cert, post, post_bytes, post_full, serve, tls_agent};

const AUTHORITY: &str = "https://login.windows.net/common/oauth2/authorize";

/// A kluis-API token of the `[oidc]` issuer for the same person (audience `api://kluis`).
fn kluis_token(upn: &str) -> String {
    let now = kluis_server::now_ms() / 1000;
    sign(
        &json!({"iss": TENANT, "aud": "api://kluis", "upn": upn, "sub": format!("sub-{upn}"),
                 "iat": now, "exp": now + 600}),
    )
}

/// A store with label `medical` (DKE; user alice@org.nl, group `doctors`) and `plain` (no
/// DKE), `[dke]` trusting the tenant and a partner tenant, served on plain loopback HTTP.
fn setup(dke_extra: &str) -> common::Server {
    let dir = store(
        &config(&[TENANT, PARTNER], dke_extra),
        &["--group", "oidc:entra:doctors"],
    );
    admin(
        dir.path(),
        &[
            "label",
            "create",
            "plain",
            "--user",
            "oidc:entra:alice@org.nl",
        ],
    );
    serve_http(dir)
}

/// `POST {kid}/decrypt`: (status, body JSON, headers).
fn decrypt_at(
    url: &str,
    token: Option<&str>,
    body: &Value,
) -> (u16, Value, std::collections::HashMap<String, String>) {
    post_full(url, token, body)
}

fn blob() -> Vec<u8> {
    (0..44u8)
        .map(|i| i.wrapping_mul(37).wrapping_add(5))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Tests

/// The key as Office reads it, an Office-like client's round trip, every letter case of
/// `decrypt`, and the audit record of each decrypt (in the export and in `/v1/me/audit` of the
/// same person's kluis token).
#[test]
fn an_office_like_client_encrypts_offline_and_decrypts_through_the_server() {
    let server = setup("");
    let base = &server.base;
    let (key, whole) = fetch_key(base, "medical");
    assert_eq!(key["kty"], "RSA");
    assert_eq!(key["alg"], "RS256");
    assert_eq!(key["e"], json!(65537), "e is a JSON number");
    let n = key["n"].as_str().unwrap();
    assert_eq!(n.len(), 344, "padded standard base64 of 256 bytes");
    assert_eq!(B64.decode(n).unwrap().len(), 256);
    let kid = key["kid"].as_str().unwrap().to_owned();
    let id = kid
        .strip_prefix(&format!("{base}/dke/medical/"))
        .unwrap_or_else(|| panic!("kid {kid} keeps the request's URL"));
    assert!(id.starts_with("1-") && id.len() == 10, "{id}");
    let exp = whole["cache"]["exp"].as_str().unwrap();
    assert_eq!(exp.len(), 19, "{exp}");
    assert_eq!(&exp[10..11], "T");
    assert!(!exp.ends_with('Z'));
    assert!(exp.as_bytes()[..4].iter().all(u8::is_ascii_digit));
    // The query is not part of the kid; names are case-sensitive; no DKE key, no answer.
    let (q, _) = {
        let (s, b) = get(&format!("{base}/dke/medical?x=1"), None);
        assert_eq!(s, 200);
        let v: Value = serde_json::from_str(&b).unwrap();
        (v["key"]["kid"].as_str().unwrap().to_owned(), ())
    };
    assert_eq!(q, kid);
    for name in ["Medical", "plain", "nothing"] {
        assert_eq!(get(&format!("{base}/dke/{name}"), None).0, 400, "{name}");
    }

    let alice = token("Alice@Org.NL", &[]);
    let mut cts = Vec::new();
    for action in ["decrypt", "Decrypt", "DECRYPT"] {
        let ct = office_encrypt(&key, &blob());
        let (status, body, _) = decrypt_at(
            &format!("{kid}/{action}"),
            Some(&alice),
            &json!({"alg": "RSA-OAEP-256", "value": B64.encode(&ct)}),
        );
        assert_eq!(status, 200, "{action}: {body}");
        assert_eq!(B64.decode(body["value"].as_str().unwrap()).unwrap(), blob());
        cts.push(ct);
    }
    // A member of the label's group, by a partner tenant's token.
    let partner = sign(&with(
        dke_claims("dora@partner.example", &["doctors"]),
        "iss",
        json!(PARTNER),
    ));
    assert_eq!(decrypt(&kid, Some(&partner), &cts[0]).0, 200);
    // Another action is no route.
    assert_eq!(
        decrypt_at(&format!("{kid}/encrypt"), Some(&alice), &json!({})).0,
        404
    );

    let records = dke_records(server.dir.path());
    assert_eq!(records.len(), 4, "{records:?}");
    for (r, ct) in records.iter().zip(&cts) {
        assert_eq!(r["actor"], "oidc:entra:Alice@Org.NL");
        assert_eq!(r["label"], "medical");
        assert_eq!(r["kid"], 1);
        assert_eq!(r["outcome"], "granted");
        assert_eq!(r["doc_id"], doc_ref(ct));
        assert_eq!(r["credential"], "oidc:entra:sub-Alice@Org.NL");
    }
    assert_eq!(records[3]["actor"], "oidc:entra:dora@partner.example");
    // The same person sees them with a kluis token of the same issuer.
    let (status, body) = get(
        &format!("{base}/v1/me/audit"),
        Some(&kluis_token("Alice@Org.NL")),
    );
    assert_eq!(status, 200, "{body}");
    let mine: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(
        mine.iter().filter(|r| r["action"] == "dke.decrypt").count(),
        3
    );
    // Metrics count the DKE routes and outcomes.
    let (_, metrics) = get(&format!("{base}/metrics"), None);
    assert!(
        metrics.contains("kluis_dke_decrypts_total{outcome=\"granted\"} 4"),
        "{metrics}"
    );
    assert!(metrics.contains("route=\"dke_decrypt\",status=\"200\""));
    assert!(metrics.contains("route=\"dke_key\",status=\"200\""));
}

/// Every refusal: 401 with the challenge for every missing or invalid token (before any key
/// lookup), 403 for policy, 400 for every bad input and one answer for every ciphertext that
/// does not decrypt; never a 5xx. Each authenticated attempt is audited.
#[test]
fn every_refusal_has_its_status_and_is_audited() {
    let server = setup("");
    let base = &server.base;
    let (key, _) = fetch_key(base, "medical");
    let kid = key["kid"].as_str().unwrap().to_owned();
    let ct = office_encrypt(&key, &blob());

    // 401: no token, a bad one, a kluis API token, wrong audience / scope / issuer, groups
    // overage; also for an unknown key (authentication comes first).
    let api_token = admin(server.dir.path(), &["token", "create", "--user", "alice"]);
    let mut forged = token("alice@org.nl", &[]);
    forged.replace_range(forged.len() - 4.., "AAAA");
    let claims = dke_claims("alice@org.nl", &[]);
    let unauthenticated = [
        None,
        Some(forged),
        Some(api_token.trim().to_owned()),
        Some(sign(&with(claims.clone(), "aud", json!("api://kluis")))),
        Some(sign(&without(claims.clone(), "scp"))),
        Some(sign(&with(claims.clone(), "scp", json!("Files.Read")))),
        Some(sign(&with(
            claims.clone(),
            "iss",
            json!("https://sts.windows.net/other/"),
        ))),
        Some(sign(&with(claims.clone(), "exp", json!(1_000)))),
        Some(sign(&without(claims.clone(), "upn"))),
        Some(sign(&with(
            without(claims.clone(), "groups"),
            "hasgroups",
            json!(true),
        ))),
    ];
    for (i, t) in unauthenticated.iter().enumerate() {
        for url in [kid.clone(), format!("{base}/dke/nothing/1-00000000")] {
            let (status, body, h) = decrypt(&url, t.as_deref(), &ct);
            assert_eq!(status, 401, "case {i}: {body}");
            assert_eq!(
                h.get("www-authenticate").map(String::as_str),
                Some(
                    format!(
                        "Bearer resource=\"{AUDIENCE}\", authorization=\"{AUTHORITY}\", realm=\"{AUDIENCE}\""
                    )
                    .as_str()
                ),
                "case {i}"
            );
            assert_eq!(h.get("resource").map(String::as_str), Some(AUDIENCE));
            assert_eq!(h.get("authorization").map(String::as_str), Some(AUTHORITY));
        }
    }
    assert!(
        dke_records(server.dir.path()).is_empty(),
        "unauthenticated requests reach no key"
    );

    let alice = token("alice@org.nl", &[]);
    let bob = token("bob@org.nl", &["nurses"]);
    // 403: the policy.
    assert_eq!(decrypt(&kid, Some(&bob), &ct).0, 403);

    // 400: unknown key or key id, bad bodies, ciphertexts that do not decrypt.
    let (status, _, _) = decrypt(&format!("{base}/dke/nothing/1-00000000"), Some(&alice), &ct);
    assert_eq!(status, 400);
    let other_kid = format!("{}-00000000", &kid[..kid.len() - 9]);
    for url in [
        other_kid,
        format!("{base}/dke/medical/2-00000000"),
        format!("{base}/dke/medical/banana"),
        format!("{base}/dke/plain/1-00000000"),
    ] {
        let (status, body, _) = decrypt(&url, Some(&alice), &ct);
        assert_eq!(status, 400, "{url}: {body}");
        assert_eq!(body["code"], "not_found");
    }
    let value = B64.encode(&ct);
    for body in [
        json!({"value": value}),
        json!({"alg": "RSA-OAEP", "value": value}),
        json!({"alg": "RSA1_5", "value": value}),
        json!({"alg": "RSA-OAEP-256"}),
        json!({"alg": "RSA-OAEP-256", "value": "not base64!"}),
        json!({"alg": "RSA-OAEP-256", "value": 5}),
        json!([1, 2]),
    ] {
        let (status, answer, _) = decrypt_at(&format!("{kid}/decrypt"), Some(&alice), &body);
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["code"], "malformed", "{body}");
    }
    let (status, text, _) = post_bytes(
        &format!("{kid}/decrypt"),
        Some(&alice),
        "application/json",
        b"{not json",
    );
    assert_eq!(status, 400, "{text}");
    // Wrong lengths, a flipped bit, random bytes: one status, one code, one message.
    let mut flipped = ct.clone();
    flipped[7] ^= 1;
    let mut answers = Vec::new();
    for bad in [
        ct[..255].to_vec(),
        [ct.clone(), vec![0]].concat(),
        vec![],
        flipped,
        vec![0xff; 256],
        vec![0x00; 256],
    ] {
        let (status, body, _) = decrypt(&kid, Some(&alice), &bad);
        assert_eq!(status, 400, "{body}");
        answers.push(body);
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");
    assert_eq!(answers[0]["code"], "decrypt_failed");

    // Each authenticated attempt has its record, with its outcome.
    let outcomes: Vec<String> = dke_records(server.dir.path())
        .iter()
        .map(|r| r["outcome"].as_str().unwrap().to_owned())
        .collect();
    let count = |o: &str| outcomes.iter().filter(|x| *x == o).count();
    assert_eq!(count("denied"), 1);
    assert_eq!(count("not_found"), 5);
    assert_eq!(count("malformed"), 8);
    assert_eq!(count("decrypt_failed"), 6);
    assert_eq!(outcomes.len(), 20);
    let (_, metrics) = get(&format!("{base}/metrics"), None);
    assert!(
        !metrics.contains("route=\"dke_decrypt\",status=\"5"),
        "{metrics}"
    );
}

/// One label policy governs kluis unwraps and DKE decrypts of the same person: removing the
/// user revokes both, on the next request.
#[test]
fn revoking_someone_in_the_label_policy_revokes_both() {
    let server = setup("");
    let base = &server.base;
    let (key, _) = fetch_key(base, "medical");
    let kid = key["kid"].as_str().unwrap().to_owned();
    let ct = office_encrypt(&key, &blob());
    let medical = label_key(&server, "medical");
    let dke = token("alice@org.nl", &[]);
    let kluis = kluis_token("alice@org.nl");
    let unwrap = || {
        post(
            &format!("{base}/v1/unwrap"),
            Some(&kluis),
            &common::unwrap_body(&medical),
        )
        .0
    };
    assert_eq!(decrypt(&kid, Some(&dke), &ct).0, 200);
    assert_eq!(unwrap(), 200);
    admin(
        server.dir.path(),
        &[
            "label",
            "update",
            "medical",
            "--remove-user",
            "oidc:entra:alice@org.nl",
        ],
    );
    assert_eq!(decrypt(&kid, Some(&dke), &ct).0, 403);
    assert_eq!(unwrap(), 403);
}

/// The sealed DKE private key of a version, as the store file holds it.
fn sealed_dke(dir: &Path, kid: u32) -> Option<Vec<u8>> {
    let db = rusqlite::Connection::open(dir.join("kluis-server.db")).unwrap();
    db.query_row(
        "SELECT dke_sealed FROM key_versions WHERE label = 'medical' AND kid = ?1",
        [kid],
        |r| r.get(0),
    )
    .unwrap()
}

/// The store's files (database and write-ahead log), concatenated.
fn store_bytes(dir: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for f in ["kluis-server.db", "kluis-server.db-wal"] {
        if let Ok(b) = std::fs::read(dir.join(f)) {
            all.extend(b);
        }
    }
    all
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Rotation gives a new key id; the old one keeps opening what was made for it and refuses
/// what was made for the new one; retire refuses; destroy refuses and removes the private
/// key's bytes from the store files. `label dke-enable` gives an existing label a key.
#[test]
fn rotation_retire_destroy_and_dke_enable() {
    let server = setup("");
    let (base, d) = (server.base.clone(), server.dir.path().to_owned());
    let alice = token("alice@org.nl", &[]);
    let (k1, _) = fetch_key(&base, "medical");
    let kid1 = k1["kid"].as_str().unwrap().to_owned();
    let ct1 = office_encrypt(&k1, &blob());

    admin(&d, &["label", "rotate", "medical"]);
    let (k2, _) = fetch_key(&base, "medical");
    let kid2 = k2["kid"].as_str().unwrap().to_owned();
    assert_ne!(kid1, kid2);
    assert!(
        kid2.starts_with(&format!("{base}/dke/medical/2-")),
        "{kid2}"
    );
    assert_ne!(k1["n"], k2["n"]);
    let ct2 = office_encrypt(&k2, &blob());
    assert_eq!(
        decrypt(&kid1, Some(&alice), &ct1).0,
        200,
        "old kid still opens"
    );
    assert_eq!(decrypt(&kid2, Some(&alice), &ct2).0, 200);
    let (status, body, _) = decrypt(&kid1, Some(&alice), &ct2);
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("decrypt_failed"))
    );
    assert_eq!(decrypt(&kid2, Some(&alice), &ct1).0, 400);

    admin(&d, &["label", "retire", "medical", "1"]);
    let (status, body, _) = decrypt(&kid1, Some(&alice), &ct1);
    assert_eq!((status, body["code"].as_str()), (403, Some("retired")));

    let sealed = sealed_dke(&d, 1).expect("version 1 has a sealed DKE key");
    assert!(contains(&store_bytes(&d), &sealed));
    admin(
        &d,
        &["label", "destroy", "medical", "1", "--confirm", "medical"],
    );
    let (status, body, _) = decrypt(&kid1, Some(&alice), &ct1);
    assert_eq!((status, body["code"].as_str()), (400, Some("destroyed")));
    assert_eq!(sealed_dke(&d, 1), None);
    assert!(
        !contains(&store_bytes(&d), &sealed),
        "the destroyed private key's bytes are still in the store files"
    );
    assert_eq!(
        decrypt(&kid2, Some(&alice), &ct2).0,
        200,
        "version 2 unharmed"
    );

    // An existing label gets a key, once.
    assert_eq!(get(&format!("{base}/dke/plain"), None).0, 400);
    let out = admin(&d, &["label", "dke-enable", "plain"]);
    assert!(out.contains("DKE key id 1-"), "{out}");
    let (kp, _) = fetch_key(&base, "plain");
    let ct = office_encrypt(&kp, &blob());
    assert_eq!(
        decrypt(kp["kid"].as_str().unwrap(), Some(&alice), &ct).0,
        200
    );
    common::admin_fails(&d, &["label", "dke-enable", "plain"]);
    admin(&d, &["label", "rotate", "plain"]);
    let (kp2, _) = fetch_key(&base, "plain");
    assert!(kp2["kid"].as_str().unwrap().contains("/dke/plain/2-"));
}

/// A configured public origin and prefix make the key ids, whatever the Host header says.
#[test]
fn the_configured_url_and_prefix_make_the_key_id() {
    let server = setup("url = \"https://dke.example.org\"\nprefix = \"/keys/dke\"\n");
    let (status, body) = get(&format!("{}/keys/dke/medical", server.base), None);
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let kid = v["key"]["kid"].as_str().unwrap();
    assert!(
        kid.starts_with("https://dke.example.org/keys/dke/medical/1-"),
        "{kid}"
    );
    assert_eq!(get(&format!("{}/dke/medical", server.base), None).0, 404);
    // Decrypt at the same path on this server.
    let path = kid.strip_prefix("https://dke.example.org").unwrap();
    let ct = office_encrypt(&v["key"], &blob());
    let url = format!("{}{path}", server.base);
    assert_eq!(decrypt(&url, Some(&token("alice@org.nl", &[])), &ct).0, 200);
}

/// The same round trip through a TLS listener with a certificate from a test CA.
#[test]
fn the_round_trip_works_over_tls() {
    let dir = store(&config(&[TENANT, PARTNER], ""), &[]);
    let d = dir.path();
    let (ca, cert, key) = make_cert();
    std::fs::write(d.join("cert.pem"), cert).unwrap();
    std::fs::write(d.join("key.pem"), key).unwrap();
    let server = serve(
        dir,
        &[
            "--config",
            "kluis.toml",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            "cert.pem",
            "--tls-key",
            "key.pem",
        ],
    );
    assert!(server.base.starts_with("https://"), "{}", server.base);
    let tls = tls_agent(&ca);
    let mut r = tls
        .get(&format!("{}/dke/medical", server.base))
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    let kid = v["key"]["kid"].as_str().unwrap();
    assert!(
        kid.starts_with(&format!("{}/dke/medical/1-", server.base)),
        "{kid}: https from the TLS listener"
    );
    let ct = office_encrypt(&v["key"], &blob());
    let mut r = tls
        .post(&format!("{kid}/decrypt"))
        .header(
            "Authorization",
            &format!("Bearer {}", token("alice@org.nl", &[])),
        )
        .header("Content-Type", "application/json")
        .send(json!({"alg": "RSA-OAEP-256", "value": B64.encode(&ct)}).to_string())
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(B64.decode(v["value"].as_str().unwrap()).unwrap(), blob());
    assert_eq!(dke_records(server.dir.path()).len(), 1);
}

/// Master-key rotation re-seals the DKE private keys: after it, with the new key file, what
/// was encrypted before still decrypts.
#[test]
fn dke_keys_survive_a_master_key_rotation() {
    let server = setup("");
    let (key, _) = fetch_key(&server.base, "medical");
    let ct = office_encrypt(&key, &blob());
    let path = key["kid"]
        .as_str()
        .unwrap()
        .strip_prefix(&server.base)
        .unwrap()
        .to_owned();
    let dir = server.kill();
    let out = admin(dir.path(), &["master-key", "rotate"]);
    assert!(!out.is_empty());
    let server = serve_http(dir);
    let (status, body, _) = decrypt(
        &format!("{}{path}", server.base),
        Some(&token("alice@org.nl", &[])),
        &ct,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(B64.decode(body["value"].as_str().unwrap()).unwrap(), blob());
}

/// A decrypt decided just before a policy change commits is not granted after it: DKE
/// decrypts from several threads while the label's policy loses alice (the admin command,
/// another process). In the verified trail no granted `dke.decrypt` of alice follows the
/// `label.update` record, and every plaintext a client received has its granted record.
#[test]
fn no_decrypt_is_granted_after_the_policy_change_that_forbids_it() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    let server = setup("");
    let (key, _) = fetch_key(&server.base, "medical");
    let kid = key["kid"].as_str().unwrap().to_owned();
    let ct = Arc::new(office_encrypt(&key, &blob()));
    let stop = Arc::new(AtomicBool::new(false));
    // Per user: plaintexts received, and answers other than 200 and 403.
    let granted = [Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0))];
    let other = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut threads = Vec::new();
    for (i, (upn, groups)) in [("alice@org.nl", &[][..]), ("bob@org.nl", &["doctors"][..])]
        .into_iter()
        .enumerate()
    {
        for _ in 0..3 {
            let (kid, ct, stop) = (kid.clone(), ct.clone(), stop.clone());
            let (granted, other) = (granted[i].clone(), other.clone());
            let token = token(upn, groups);
            threads.push(std::thread::spawn(move || {
                for _ in 0..5000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let (status, v, _) = decrypt(&kid, Some(&token), &ct);
                    match status {
                        200 => {
                            granted.fetch_add(1, Ordering::Relaxed);
                        }
                        403 => {}
                        s => other.lock().unwrap().push(format!("{upn}: {s} {v}")),
                    }
                }
            }));
        }
    }
    let until = |who: usize, n: usize| {
        let start = Instant::now();
        while granted[who].load(Ordering::Relaxed) < n {
            assert!(start.elapsed() < Duration::from_secs(60), "no grants");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    until(0, 20);
    until(1, 20);
    admin(
        server.dir.path(),
        &[
            "label",
            "update",
            "medical",
            "--remove-user",
            "oidc:entra:alice@org.nl",
        ],
    );
    let bob_then = granted[1].load(Ordering::Relaxed);
    until(1, bob_then + 30);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let other = other.lock().unwrap();
    assert!(other.is_empty(), "unexpected answers: {other:?}");
    admin(server.dir.path(), &["audit", "verify"]);
    let trail: Vec<Value> = admin(server.dir.path(), &["audit", "export"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let update = trail
        .iter()
        .position(|r| r["action"] == "label.update")
        .unwrap();
    let granted_to = |actor: &str, from: usize| {
        trail[from..]
            .iter()
            .filter(|r| {
                r["action"] == "dke.decrypt" && r["outcome"] == "granted" && r["actor"] == actor
            })
            .count()
    };
    let alice = "oidc:entra:alice@org.nl";
    assert_eq!(
        granted_to(alice, update),
        0,
        "alice granted after the update"
    );
    assert_eq!(granted_to(alice, 0), granted[0].load(Ordering::Relaxed));
    assert_eq!(
        granted_to("oidc:entra:bob@org.nl", 0),
        granted[1].load(Ordering::Relaxed)
    );
}
