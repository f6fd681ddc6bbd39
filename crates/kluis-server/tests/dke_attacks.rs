//! Attacks on the Microsoft Double Key Encryption service (issue 16, review B), against a real
//! `kluis-server serve` process on loopback with real SQLite files: tokens that must not open
//! anything (`alg` games, scopes, audiences, case-folding tricks in the user claim), Host
//! header games, the decryption-failure oracle, odd and huge bodies, audit exactly once under
//! concurrency, nothing released when the audit trail cannot be written, a destroy while
//! decrypts run, and no token, plaintext or key material in the server's log.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lc_rs::rsa::{OAEP_SHA256_MGF1SHA256, OaepPublicEncryptingKey, PublicEncryptingKey};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE, URL_SAFE_NO_PAD};
use serde_json::{Value, json};

mod common;
use common::dke::{
    AUDIENCE, PARTNER, SERVE, TENANT, dke_claims, dke_records, doc_ref, idp_n, jwks, serve_http,
    sign, signing_input, spki, token, with,
};
use common::{admin, get, raw_body, raw_exchange, raw_status};

const DB: &str = "kluis-server.db";

// ---------------------------------------------------------------------------------------------
// An Entra-like identity provider (`common/dke.rs`) and a token it would never sign

/// HS256 "signed" with `secret`: the classic confusion of a public key used as an HMAC key.
fn sign_hs256(claims: &Value, secret: &[u8]) -> String {
    let input = signing_input(&json!({"alg": "HS256", "typ": "JWT", "kid": "k1"}), claims);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

// ---------------------------------------------------------------------------------------------
// The server

/// A store with label `medical` (DKE; user alice@org.nl, group `doctors`), not served yet.
fn store(dke_extra: &str) -> tempfile::TempDir {
    common::dke::store(
        &common::dke::config(&[TENANT], dke_extra),
        &["--group", "oidc:entra:doctors"],
    )
}

fn setup(dke_extra: &str) -> common::Server {
    serve_http(store(dke_extra))
}

/// `host:port` of a served base URL.
fn addr(server: &common::Server) -> String {
    server.base.strip_prefix("http://").unwrap().to_owned()
}

// ---------------------------------------------------------------------------------------------
// An Office-like client (aws-lc-rs on the client side; the server's RSA is the same library,
// which tests/dke.rs covers with openssl)

/// The published key of `name`: (key JSON, kid).
fn fetch_key(base: &str, name: &str) -> (Value, String) {
    let (key, _) = common::dke::fetch_key(base, name);
    let kid = key["kid"].as_str().unwrap().to_owned();
    (key, kid)
}

fn encrypt(key: &Value, plain: &[u8]) -> Vec<u8> {
    let public = PublicEncryptingKey::from_der(&spki(key)).unwrap();
    let enc = OaepPublicEncryptingKey::new(public).unwrap();
    let mut out = vec![0u8; 256];
    let ct = enc
        .encrypt(&OAEP_SHA256_MGF1SHA256, plain, &mut out, None)
        .unwrap();
    ct.to_vec()
}

fn decrypt(kid: &str, token: Option<&str>, ct: &[u8]) -> (u16, Value) {
    let (s, v, _) = common::dke::decrypt(kid, token, ct);
    (s, v)
}

/// POST `body` to `url` on a raw connection, writing on a thread of its own while the answer
/// is read (the server may answer and close before it has read a huge body). Returns (status,
/// body text).
fn raw_post(url: &str, token: Option<&str>, body: Vec<u8>) -> (Option<u16>, String) {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut s = std::net::TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(head.as_bytes());
        let _ = w.write_all(&body);
    });
    let mut answer = Vec::new();
    let mut chunk = [0u8; 8192];
    while !common::raw_complete(&answer) {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
        }
    }
    let _ = s.shutdown(std::net::Shutdown::Both);
    let _ = writer.join();
    (
        raw_status(&answer),
        String::from_utf8_lossy(raw_body(&answer)).into_owned(),
    )
}

/// A 44-byte secret, different for each `i`.
fn secret(i: u32) -> Vec<u8> {
    let d = ring::digest::digest(&ring::digest::SHA256, &i.to_be_bytes());
    [d.as_ref(), &d.as_ref()[..12]].concat()
}

fn granted(dir: &Path) -> usize {
    dke_records(dir)
        .iter()
        .filter(|r| r["outcome"] == "granted")
        .count()
}

// ---------------------------------------------------------------------------------------------
// Authentication

/// Tokens that an attacker can make without the identity provider's private key, or that the
/// identity provider issues for something else: every one gets the 401 challenge and opens
/// nothing, and none reaches the audit trail as a decrypt.
#[test]
fn forged_and_misdirected_tokens_open_nothing() {
    let server = setup("");
    let base = &server.base;
    let (key, kid) = fetch_key(base, "medical");
    let ct = encrypt(&key, &secret(1));
    let c = dke_claims("alice@org.nl", &[]);
    let unsigned = |head: Value| format!("{}.", signing_input(&head, &c));
    let good = token("alice@org.nl", &[]);
    let parts: Vec<&str> = good.split('.').collect();
    let jwks_text = jwks();
    let bad = vec![
        ("alg none", unsigned(json!({"alg": "none", "typ": "JWT"}))),
        ("alg None", unsigned(json!({"alg": "None", "kid": "k1"}))),
        (
            "alg none with the real signature",
            format!(
                "{}.{}.{}",
                URL_SAFE_NO_PAD.encode(json!({"alg": "none", "kid": "k1"}).to_string()),
                parts[1],
                parts[2]
            ),
        ),
        ("HS256 keyed with the modulus", sign_hs256(&c, &idp_n())),
        (
            "HS256 keyed with the JWKS text",
            sign_hs256(&c, jwks_text.as_bytes()),
        ),
        (
            "HS256 keyed with the JWK n text",
            sign_hs256(&c, URL_SAFE_NO_PAD.encode(idp_n()).as_bytes()),
        ),
        (
            "a valid signature over other claims",
            format!(
                "{}.{}.{}",
                parts[0],
                URL_SAFE_NO_PAD.encode(with(c.clone(), "upn", json!("bob@org.nl")).to_string()),
                parts[2]
            ),
        ),
        (
            "scp as an array",
            sign(&with(c.clone(), "scp", json!(["user_impersonation"]))),
        ),
        (
            "scp with the scope as a prefix",
            sign(&with(c.clone(), "scp", json!("user_impersonation2"))),
        ),
        (
            "scp comma separated",
            sign(&with(c.clone(), "scp", json!("openid,user_impersonation"))),
        ),
        (
            "the scope in `scope`, not `scp`",
            sign(&with(
                with(c.clone(), "scp", Value::Null),
                "scope",
                json!("user_impersonation"),
            )),
        ),
        (
            "an application token (roles, no scp)",
            sign(&with(
                with(c.clone(), "scp", Value::Null),
                "roles",
                json!(["user_impersonation"]),
            )),
        ),
        (
            "issuer without its trailing slash",
            sign(&with(c.clone(), "iss", json!(TENANT.trim_end_matches('/')))),
        ),
        (
            "issuer in another letter case",
            sign(&with(c.clone(), "iss", json!(TENANT.to_uppercase()))),
        ),
        (
            "the v2.0 issuer of the same tenant (not listed)",
            sign(&with(
                c.clone(),
                "iss",
                json!(
                    "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0"
                ),
            )),
        ),
        (
            "audience with a trailing slash",
            sign(&with(c.clone(), "aud", json!(format!("{AUDIENCE}/")))),
        ),
        (
            "audience of the kluis API",
            sign(&with(c.clone(), "aud", json!("api://kluis"))),
        ),
        (
            "audience naming the key URL",
            sign(&with(c.clone(), "aud", json!(kid.clone()))),
        ),
        (
            "groups overage by _claim_names",
            sign(&with(
                with(c.clone(), "groups", Value::Null),
                "_claim_names",
                json!({"groups": "src1"}),
            )),
        ),
        ("a kluis API token", {
            admin(server.dir.path(), &["token", "create", "--user", "alice"])
                .trim()
                .to_owned()
        }),
        ("garbage", "a.b.c".to_owned()),
        ("empty", String::new()),
    ];
    for (what, t) in &bad {
        let (status, body) = decrypt(&kid, Some(t), &ct);
        assert_eq!(status, 401, "{what}: {body}");
        assert!(
            body.get("value").is_none(),
            "{what}: a value was released: {body}"
        );
    }
    assert_eq!(
        granted(server.dir.path()),
        0,
        "a forged token reached the key"
    );
    // The genuine token works (so the refusals above are about the tokens).
    let (status, body) = decrypt(&kid, Some(&good), &ct);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        B64.decode(body["value"].as_str().unwrap()).unwrap(),
        secret(1)
    );
}

/// A DKE token (audience: the DKE service, scope `user_impersonation`) does not work on the
/// kluis API, whose `[oidc]` table has its own audience; nor the other way round.
#[test]
fn dke_and_kluis_api_tokens_do_not_cross() {
    let server = setup("");
    let base = &server.base;
    let dke = token("alice@org.nl", &[]);
    let (status, body) = get(&format!("{base}/v1/me/audit"), Some(&dke));
    assert_eq!(status, 401, "a DKE token on the kluis API: {body}");
    let now = kluis_server::now_ms() / 1000;
    let kluis = sign(
        &json!({"iss": TENANT, "aud": "api://kluis", "upn": "alice@org.nl",
        "sub": "sub-a", "iat": now, "exp": now + 600, "scp": "user_impersonation"}),
    );
    assert_eq!(get(&format!("{base}/v1/me/audit"), Some(&kluis)).0, 200);
    let (key, kid) = fetch_key(base, "medical");
    let ct = encrypt(&key, &secret(2));
    assert_eq!(decrypt(&kid, Some(&kluis), &ct).0, 401);
}

/// Case-folding tricks in the user claim: ASCII case is ignored (Entra ID user principal
/// names are case-insensitive), nothing else is: no Unicode case folding, no trimming, no
/// prefixes; groups are compared exactly.
#[test]
fn only_ascii_case_is_ignored_in_the_user_claim() {
    let server = setup("");
    let (key, kid) = fetch_key(&server.base, "medical");
    let ct = encrypt(&key, &secret(3));
    assert_eq!(decrypt(&kid, Some(&token("ALICE@ORG.NL", &[])), &ct).0, 200);
    assert_eq!(
        decrypt(&kid, Some(&token("alice@org.nl", &["doctors"])), &ct).0,
        200
    );
    for upn in [
        "ALİCE@ORG.NL",            // dotted capital I, folds to "i̇" in Unicode
        "alıce@org.nl",            // dotless i
        "alice@org.nl\u{200b}",    // a zero-width space
        "alice@org.nl ",           // trailing space
        " alice@org.nl",           // leading space
        "alice@org.nl.",           // trailing dot
        "ａlice@org.nl",           // full-width a
        "entra:alice@org.nl",      // a second prefix
        "alice@org.nl:x",          // a colon
        "oidc:entra:alice@org.nl", // the whole principal as the claim
        "alice@org.nl#x",
    ] {
        let (status, body) = decrypt(&kid, Some(&token(upn, &[])), &ct);
        assert!(
            status == 403 || status == 401,
            "{upn:?} opened alice's document: {status} {body}"
        );
    }
    for group in ["Doctors", "DOCTORS", "doctors ", "oidc:entra:doctors"] {
        let (status, _) = decrypt(&kid, Some(&token("mallory@org.nl", &[group])), &ct);
        assert_eq!(status, 403, "group {group:?}");
    }
}

/// Authentication before any key lookup: without a valid token, a known key name, an unknown
/// one and a bad key id give byte-identical answers.
#[test]
fn no_key_oracle_before_authentication() {
    let server = setup("");
    let base = &server.base;
    let (key, kid) = fetch_key(base, "medical");
    let ct = encrypt(&key, &secret(4));
    let mut answers = Vec::new();
    for url in [
        kid.clone(),
        format!("{base}/dke/medical/1-00000000"),
        format!("{base}/dke/nothing/1-00000000"),
        format!("{base}/dke/medical/banana"),
    ] {
        let (status, body) = decrypt(&url, None, &ct);
        assert_eq!(status, 401, "{url}");
        answers.push(body);
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");
}

// ---------------------------------------------------------------------------------------------
// Host header and URL games

/// Hosts that are no host name cannot make the published key id point elsewhere or inject
/// into the answer; with `url` configured, the Host header is ignored entirely.
#[test]
fn odd_hosts_do_not_change_the_key_id() {
    let server = setup("");
    let a = addr(&server);
    let get_with_host = |host: &str| {
        let req = format!("GET /dke/medical HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        raw_exchange(&a, req.as_bytes(), Duration::from_secs(10))
    };
    for host in [
        "evil.example/x",
        "evil.example#",
        "user@evil.example",
        "evil.example\"",
        "evil.example?",
        "evil.example\\x",
        "a b",
        "",
    ] {
        let answer = get_with_host(host);
        let status = raw_status(&answer);
        let body = String::from_utf8_lossy(raw_body(&answer)).into_owned();
        assert_ne!(status, Some(200), "Host {host:?} made a key id: {body}");
        assert!(
            !body.contains("evil"),
            "Host {host:?} reflected in the answer: {body}"
        );
    }
    drop(server);

    let server = setup("url = \"https://dke.example.org\"\n");
    let a = addr(&server);
    let req = "GET /dke/medical HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n";
    let answer = raw_exchange(&a, req.as_bytes(), Duration::from_secs(10));
    assert_eq!(raw_status(&answer), Some(200));
    let v: Value = serde_json::from_slice(raw_body(&answer)).unwrap();
    let kid = v["key"]["kid"].as_str().unwrap();
    assert!(
        kid.starts_with("https://dke.example.org/dke/medical/1-"),
        "{kid}"
    );
    // An absolute request target naming another host does not change it either.
    let req = "GET http://evil.example/dke/medical HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n";
    let answer = raw_exchange(&a, req.as_bytes(), Duration::from_secs(10));
    let body = String::from_utf8_lossy(raw_body(&answer)).into_owned();
    assert!(!body.contains("evil"), "{body}");
}

// ---------------------------------------------------------------------------------------------
// The decryption-failure oracle and odd bodies

/// Every value that does not decrypt gets the same status and the same body, whatever is
/// wrong with it (no Bleichenbacher/Manger-style distinction), and never a 5xx.
#[test]
fn decryption_failures_are_indistinguishable() {
    let server = setup("");
    let base = &server.base;
    let (key, kid) = fetch_key(base, "medical");
    let alice = token("alice@org.nl", &[]);
    let good = encrypt(&key, &secret(5));
    let n = B64.decode(key["n"].as_str().unwrap()).unwrap();
    // Made for another RSA key: encrypt under a fresh one.
    let (other_pub, _) = kluis_server::dke::generate().unwrap();
    let other = {
        let enc = OaepPublicEncryptingKey::new(PublicEncryptingKey::from_der(&other_pub).unwrap())
            .unwrap();
        let mut out = vec![0u8; 256];
        enc.encrypt(&OAEP_SHA256_MGF1SHA256, &secret(5), &mut out, None)
            .unwrap()
            .to_vec()
    };
    let mut last_flipped = good.clone();
    last_flipped[255] ^= 1;
    let mut first_flipped = good.clone();
    first_flipped[0] ^= 0x01;
    let mut modulus_plus = n.clone();
    modulus_plus[255] = modulus_plus[255].wrapping_add(1);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("another key's", other),
        ("the modulus itself", n.clone()),
        ("modulus + 1", modulus_plus),
        ("all ones", vec![0xff; 256]),
        ("zero", vec![0; 256]),
        ("one", [vec![0; 255], vec![1]].concat()),
        ("last bit flipped", last_flipped),
        ("first bit flipped", first_flipped),
        ("empty", vec![]),
        ("one byte", vec![7]),
        ("255 bytes", good[1..].to_vec()),
        ("a leading zero byte", [vec![0], good.clone()].concat()),
        ("512 bytes", [good.clone(), good.clone()].concat()),
        ("64 KiB (over the body limit once base64)", vec![1; 12_000]),
    ];
    let mut answers = Vec::new();
    for (what, ct) in &cases {
        let (status, body) = decrypt(&kid, Some(&alice), ct);
        assert!(status < 500, "{what}: {status} {body}");
        assert_eq!(status, 400, "{what}: {body}");
        answers.push((what, body));
    }
    for (what, body) in &answers[..13] {
        assert_eq!(
            *body, answers[0].1,
            "{what} answered otherwise than another key's ciphertext"
        );
    }
    assert_eq!(decrypt(&kid, Some(&alice), &good).0, 200);
}

/// Odd and huge bodies: 400 (or 401 without a token), promptly, never a 5xx, and the server
/// keeps serving.
#[test]
fn odd_and_huge_bodies_are_refused_promptly() {
    let server = setup("");
    let (key, kid) = fetch_key(&server.base, "medical");
    let alice = token("alice@org.nl", &[]);
    let good = encrypt(&key, &secret(6));
    let url = format!("{kid}/decrypt");
    let b64 = B64.encode(&good);
    let with_newlines: String = b64
        .as_bytes()
        .chunks(76)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join("\r\n");
    let big = vec![b'A'; 10 * 1024 * 1024];
    let big_json = {
        let mut v = b"{\"alg\":\"RSA-OAEP-256\",\"value\":\"".to_vec();
        v.extend_from_slice(&big);
        v.extend_from_slice(b"\"}");
        v
    };
    let nested = {
        let mut v = "[".repeat(200_000).into_bytes();
        v.extend("]".repeat(200_000).into_bytes());
        v
    };
    let nested_obj = {
        let mut s = String::new();
        for _ in 0..50_000 {
            s.push_str("{\"a\":");
        }
        s.push('1');
        s.push_str(&"}".repeat(50_000));
        s.into_bytes()
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "base64 with line breaks",
            json!({"alg": "RSA-OAEP-256", "value": with_newlines})
                .to_string()
                .into_bytes(),
        ),
        (
            "URL-safe base64",
            json!({"alg": "RSA-OAEP-256", "value": URL_SAFE.encode(&good)})
                .to_string()
                .into_bytes(),
        ),
        (
            "unpadded base64",
            json!({"alg": "RSA-OAEP-256", "value": b64.trim_end_matches('=')})
                .to_string()
                .into_bytes(),
        ),
        (
            "alg in lower case",
            json!({"alg": "rsa-oaep-256", "value": b64})
                .to_string()
                .into_bytes(),
        ),
        ("10 MB value", big_json),
        ("10 MB of garbage", big.clone()),
        ("deeply nested arrays", nested),
        ("deeply nested objects", nested_obj),
        ("empty", Vec::new()),
        ("NUL bytes", vec![0; 1000]),
        ("invalid UTF-8", vec![0xff, 0xfe, b'{', b'}']),
    ];
    for (what, body) in &cases {
        let start = Instant::now();
        let (status, text) = raw_post(&url, Some(&alice), body.clone());
        assert_eq!(status, Some(400), "{what}: {text}");
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{what}: took {:?}",
            start.elapsed()
        );
        assert!(!text.contains(&b64), "{what}: {text}");
    }
    // Without a token, a 10 MB body is refused without being read into a decrypt.
    let (status, _) = raw_post(&url, None, big);
    assert_eq!(status, Some(401));
    // Still serving.
    assert_eq!(decrypt(&kid, Some(&alice), &good).0, 200);
}

// ---------------------------------------------------------------------------------------------
// The audit trail

/// Concurrent decrypts by several people: every answer with a value has exactly one `granted`
/// record with its document reference, and no record is duplicated.
#[test]
fn concurrent_decrypts_are_audited_exactly_once() {
    let server = setup("");
    let (key, kid) = fetch_key(&server.base, "medical");
    let threads = 8;
    let per = 6;
    let cts: Vec<Vec<Vec<u8>>> = (0..threads)
        .map(|t| {
            (0..per)
                .map(|i| encrypt(&key, &secret(1000 + t * 100 + i)))
                .collect()
        })
        .collect();
    let ok = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = cts
        .iter()
        .cloned()
        .enumerate()
        .map(|(t, cts)| {
            let (kid, ok) = (kid.clone(), ok.clone());
            std::thread::spawn(move || {
                let upn = if t % 2 == 0 {
                    "alice@org.nl".to_owned()
                } else {
                    format!("doc{t}@org.nl")
                };
                let tok = token(&upn, &["doctors"]);
                for (i, ct) in cts.iter().enumerate() {
                    let (status, body) = decrypt(&kid, Some(&tok), ct);
                    assert_eq!(status, 200, "{body}");
                    assert_eq!(
                        B64.decode(body["value"].as_str().unwrap()).unwrap(),
                        secret(1000 + t as u32 * 100 + i as u32)
                    );
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(ok.load(Ordering::Relaxed), (threads * per) as usize);
    let records = dke_records(server.dir.path());
    assert_eq!(records.len(), (threads * per) as usize);
    for ct in cts.iter().flatten() {
        let r = doc_ref(ct);
        assert_eq!(
            records
                .iter()
                .filter(|x| x["doc_id"] == r && x["outcome"] == "granted")
                .count(),
            1,
            "document {r}"
        );
    }
    admin(server.dir.path(), &["audit", "verify"]);
}

/// While another process holds the store's write lock longer than the server's busy timeout,
/// the audit record of a decrypt cannot be written: the answer is not 200 and carries no
/// plaintext; once the lock is gone, decrypts work again and every 200 has its record.
#[test]
fn nothing_is_released_while_the_audit_trail_cannot_be_written() {
    let server = setup("");
    let (key, kid) = fetch_key(&server.base, "medical");
    let alice = token("alice@org.nl", &[]);
    assert_eq!(
        decrypt(&kid, Some(&alice), &encrypt(&key, &secret(7))).0,
        200
    );

    let db = server.dir.path().join(DB);
    let lock = rusqlite::Connection::open(&db).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    let during: Vec<_> = (0..3)
        .map(|i| {
            let (kid, alice) = (kid.clone(), alice.clone());
            let plain = secret(70 + i);
            let ct = encrypt(&key, &plain);
            std::thread::spawn(move || {
                let (status, body) = decrypt(&kid, Some(&alice), &ct);
                (status, body, plain)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(8));
    lock.execute_batch("ROLLBACK").unwrap();
    drop(lock);
    // A request whose record waited past the busy timeout is refused; requests queued behind
    // it may be committed once the lock is gone, and only then answered.
    let mut released = 0;
    let mut refused = 0;
    for h in during {
        let (status, body, plain) = h.join().unwrap();
        if status == 200 {
            released += 1;
            continue;
        }
        refused += 1;
        assert!(status < 600, "{status}");
        assert!(
            !body.to_string().contains(&B64.encode(&plain)),
            "plaintext in a refusal: {body}"
        );
    }
    assert!(
        refused >= 1,
        "nothing was refused while the audit was locked"
    );
    assert_eq!(
        granted(server.dir.path()),
        1 + released,
        "a value was released without its committed record"
    );
    let ct = encrypt(&key, &secret(79));
    let mut ok = false;
    for _ in 0..30 {
        if decrypt(&kid, Some(&alice), &ct).0 == 200 {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(ok, "decrypts are still refused after the lock was released");
    assert_eq!(granted(server.dir.path()), 2 + released);
    admin(server.dir.path(), &["audit", "verify"]);
}

/// A destroy while decrypts under the version run: once `label destroy` has returned, no
/// decrypt that starts afterwards opens anything, the private key's sealed bytes are gone from
/// the database and its log, and every 200 has its `granted` record.
#[test]
fn a_destroy_while_decrypts_run_shreds_the_key() {
    let server = setup("");
    let d = server.dir.path().to_owned();
    let (key, kid) = fetch_key(&server.base, "medical");
    admin(&d, &["label", "rotate", "medical"]);
    let cts: Arc<Vec<Vec<u8>>> = Arc::new((0..40).map(|i| encrypt(&key, &secret(i))).collect());
    let db = rusqlite::Connection::open(d.join(DB)).unwrap();
    let sealed: Vec<u8> = db
        .query_row(
            "SELECT dke_sealed FROM key_versions WHERE label = 'medical' AND kid = 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    drop(db);
    let stop = Arc::new(AtomicBool::new(false));
    // When the destroy returned; requests starting later must be refused.
    let destroyed_at: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let oks = Arc::new(AtomicUsize::new(0));
    let load: Vec<_> = (0..4)
        .map(|t| {
            let (stop, destroyed_at, oks, cts, kid) = (
                stop.clone(),
                destroyed_at.clone(),
                oks.clone(),
                cts.clone(),
                kid.clone(),
            );
            let alice = token("alice@org.nl", &[]);
            std::thread::spawn(move || {
                let mut i = t;
                let mut late = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let after = destroyed_at.lock().unwrap().is_some_and(|at| started > at);
                    let (status, body) = decrypt(&kid, Some(&alice), &cts[i % cts.len()]);
                    if status == 200 {
                        oks.fetch_add(1, Ordering::Relaxed);
                        if after {
                            late.push(body);
                        }
                    } else {
                        assert!(status < 500, "{status} {body}");
                    }
                    i += 4;
                }
                late
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(800));
    admin(
        &d,
        &["label", "destroy", "medical", "1", "--confirm", "medical"],
    );
    *destroyed_at.lock().unwrap() = Some(Instant::now());
    std::thread::sleep(Duration::from_millis(800));
    stop.store(true, Ordering::Relaxed);
    let mut late = Vec::new();
    for h in load {
        late.extend(h.join().unwrap());
    }
    assert!(
        late.is_empty(),
        "decrypts started after the destroy returned were answered: {late:?}"
    );
    assert!(oks.load(Ordering::Relaxed) > 0, "no decrypt ran before");
    let (status, body) = decrypt(&kid, Some(&token("alice@org.nl", &[])), &cts[0]);
    assert_eq!((status, body["code"].as_str()), (400, Some("destroyed")));
    let mut files = Vec::new();
    for f in [DB, "kluis-server.db-wal", "kluis-server.db-shm"] {
        if let Ok(b) = std::fs::read(d.join(f)) {
            files.extend(b);
        }
    }
    assert!(
        !files.windows(sealed.len()).any(|w| w == sealed.as_slice()),
        "the sealed private key is still in the store files"
    );
    assert_eq!(granted(&d), oks.load(Ordering::Relaxed));
    admin(&d, &["audit", "verify"]);
}

// ---------------------------------------------------------------------------------------------
// The log

/// After granted, denied, failed and unauthenticated decrypts, the server's log holds no
/// token, no wrapped value and no plaintext.
#[test]
fn no_token_value_or_plaintext_in_the_log() {
    let mut server = setup("");
    let base = server.base.clone();
    let log = common::drain_stderr(&mut server.child);
    let (key, kid) = fetch_key(&base, "medical");
    let alice = token("alice@org.nl", &[]);
    let bob = token("bob@org.nl", &[]);
    let ct = encrypt(&key, &secret(9));
    assert_eq!(decrypt(&kid, Some(&alice), &ct).0, 200);
    assert_eq!(decrypt(&kid, Some(&bob), &ct).0, 403);
    assert_eq!(decrypt(&kid, Some(&alice), &ct[1..]).0, 400);
    let mut forged = alice.clone();
    forged.replace_range(forged.len() - 4.., "AAAA");
    assert_eq!(decrypt(&kid, Some(&forged), &ct).0, 401);
    // The audit writer fails once (a held write lock), which the server logs.
    let lock = rusqlite::Connection::open(server.dir.path().join(DB)).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    let during = decrypt(&kid, Some(&alice), &ct).0;
    lock.execute_batch("ROLLBACK").unwrap();
    assert_ne!(during, 200);
    let _ = server.child.kill();
    let _ = server.child.wait();
    let text = log.join().unwrap();
    let sig = |t: &str| t.rsplit('.').next().unwrap().to_owned();
    for (what, needle) in [
        ("alice's token", sig(&alice)),
        ("bob's token", sig(&bob)),
        ("the forged token", sig(&forged)),
        ("the wrapped value", B64.encode(&ct)[..40].to_owned()),
        ("the plaintext", B64.encode(secret(9))[..40].to_owned()),
        ("the plaintext (hex)", hex::encode(secret(9))),
    ] {
        assert!(!text.contains(&needle), "{what} in the log:\n{text}");
    }
    drop(server);
}

// ---------------------------------------------------------------------------------------------
// Backups

/// Change one DKE column of `medical` version 1 in the store file `db`.
fn tamper_dke(db: &Path, column: &str, change: impl FnOnce(&mut Vec<u8>)) {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut v: Vec<u8> = conn
        .query_row(
            &format!("SELECT {column} FROM key_versions WHERE label = 'medical' AND kid = 1"),
            [],
            |r| r.get(0),
        )
        .unwrap();
    change(&mut v);
    conn.execute(
        &format!("UPDATE key_versions SET {column} = ?1 WHERE label = 'medical' AND kid = 1"),
        [&v],
    )
    .unwrap();
}

/// Review finding: `restore` checks that every live label key opens and matches its public
/// key (a damaged backup must not replace a working store), but not the DKE keys. A backup
/// whose sealed DKE key is damaged, or whose published DKE public key is not the private
/// key's (Office would encrypt documents that nothing can open), replaced the store.
#[test]
fn restore_refuses_a_backup_whose_dke_key_is_damaged_or_mismatched() {
    let dir = store("");
    let d = dir.path();
    admin(d, &["label", "rotate", "medical"]);
    admin(d, &["backup", "--to", "good.db"]);
    std::fs::copy(d.join("good.db"), d.join("rot.db")).unwrap();
    tamper_dke(&d.join("rot.db"), "dke_sealed", |v| v[40] ^= 1);
    let e = common::admin_fails(d, &["restore", "--from", "rot.db", "--force"]);
    assert!(e.contains("version 1 of label `medical`"), "{e}");

    // The public key of another DKE key, with this version's private key.
    std::fs::copy(d.join("good.db"), d.join("swap.db")).unwrap();
    let (other, _) = kluis_server::dke::generate().unwrap();
    tamper_dke(&d.join("swap.db"), "dke_public", |v| *v = other.clone());
    let e = common::admin_fails(d, &["restore", "--from", "swap.db", "--force"]);
    assert!(e.contains("version 1 of label `medical`"), "{e}");

    // The working store is untouched; a sound backup restores and its keys decrypt.
    admin(d, &["audit", "verify"]);
    admin(d, &["restore", "--from", "good.db", "--force"]);
    let server = serve_http(dir);
    admin(server.dir.path(), &["label", "retire", "medical", "1"]);
    let (key, kid) = fetch_key(&server.base, "medical");
    let ct = encrypt(&key, &secret(11));
    let (status, body) = decrypt(&kid, Some(&token("alice@org.nl", &[])), &ct);
    assert_eq!(status, 200, "{body}");
}

// ---------------------------------------------------------------------------------------------
// Partner tenants and mutable claims

/// Review finding: with a partner tenant among `issuers`, `user_claim = "email"` (or
/// `preferred_username`) let the partner's administrators name their own user
/// `alice@org.nl` and open alice's documents (principals carry no tenant; Entra ID does not
/// tie these claims to a verified domain: the "nOAuth" attack). docs/DKE.md warned; the
/// server now refuses to start with that combination.
#[test]
fn a_mutable_user_claim_with_partner_tenants_is_refused() {
    for claim in ["email", "preferred_username"] {
        let dir = store("");
        let d = dir.path();
        std::fs::write(
            d.join("kluis.toml"),
            format!(
                "[serve]\nrate_limit_per_sec = 0\n\
                 [dke]\naudience = \"{AUDIENCE}\"\nissuers = [\"{TENANT}\", \"{PARTNER}\"]\n\
                 jwks_file = \"jwks.json\"\nuser_claim = \"{claim}\"\n"
            ),
        )
        .unwrap();
        let mut child = common::bin()
            .current_dir(d)
            .arg("serve")
            .args(SERVE)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        if let Some(base) = line.trim().strip_prefix("listening on ") {
            // It started: show what a partner tenant can do with it, then fail.
            let (key, kid) = fetch_key(base, "medical");
            let ct = encrypt(&key, &secret(12));
            let forged = sign(&with(
                with(
                    dke_claims("mallory@partner.example", &[]),
                    "iss",
                    json!(PARTNER),
                ),
                claim,
                json!("alice@org.nl"),
            ));
            let (status, _) = decrypt(&kid, Some(&forged), &ct);
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "served with user_claim = {claim} and a partner tenant; a partner's user named \
                 alice@org.nl got {status}"
            );
        }
        let out = child.wait_with_output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("user_claim"), "{err}");
    }
    // With the organisation's tenant alone, `email` is allowed.
    let server = setup("user_claim = \"email\"\n");
    let (key, kid) = fetch_key(&server.base, "medical");
    let ct = encrypt(&key, &secret(13));
    let t = sign(&with(
        dke_claims("x@org.nl", &[]),
        "email",
        json!("alice@org.nl"),
    ));
    assert_eq!(decrypt(&kid, Some(&t), &ct).0, 200);
}

// ---------------------------------------------------------------------------------------------
// A rotation racing `label dke-enable`

/// Review finding: `label rotate` decided whether the new version gets a DKE key before its
/// write transaction. A `label dke-enable` committed in between gave the old version a key and
/// the new (current) one none: the label's DKE URL then answered 400 and Office could protect
/// nothing, though dke-enable had reported success. Here the rotation waits on a write lock
/// the test holds (it has made its reads by then); while holding it, the test gives version 1
/// a DKE key as `label dke-enable` would, commits, and the rotation goes on.
#[test]
fn a_rotation_racing_dke_enable_keeps_the_current_version_keyed() {
    let dir = store("");
    let d = dir.path();
    admin(d, &["label", "create", "plain", "--user", "alice"]);
    let lock = rusqlite::Connection::open(d.join(DB)).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    let rotate = {
        let d = d.to_owned();
        std::thread::spawn(move || {
            common::bin()
                .current_dir(d)
                .args(["label", "rotate", "plain"])
                .output()
                .unwrap()
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    // What dke-enable writes (a key pair; the rotation looks only at whether there is one).
    let (public, _) = kluis_server::dke::generate().unwrap();
    lock.execute(
        "UPDATE key_versions SET dke_public = ?1, dke_sealed = ?2 WHERE label = 'plain' AND kid = 1",
        rusqlite::params![public, vec![0u8; 64]],
    )
    .unwrap();
    lock.execute_batch("COMMIT").unwrap();
    drop(lock);
    let rotated = rotate.join().unwrap();
    assert!(
        rotated.status.success(),
        "{}",
        String::from_utf8_lossy(&rotated.stderr)
    );
    let v: Value = serde_json::from_str(&admin(d, &["label", "show", "plain"])).unwrap();
    let current = v["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["state"] == "current")
        .unwrap()
        .clone();
    assert_eq!(current["kid"], 2, "{v}");
    assert!(
        current.get("dke_key_id").is_some(),
        "version 1 got a DKE key before the rotation committed, yet version 2 has none: {v}"
    );
}
