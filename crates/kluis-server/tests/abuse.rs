//! The key server under attack, against the real binary: malformed, mistyped, deeply nested
//! and oversized bodies; bodies trickled slower than the request timeout; hundreds of
//! connections at once with bounded memory; concurrent callers who must never see each
//! other's keys or records; and a full disk under the audit trail.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::{
    LOOPBACK, Server, Tmpfs, admin, get, label_key, post, post_bytes, proc_status_kib, raw_body,
    raw_exchange, raw_status, serve, store,
};
use kluis_core::reply::{ReplyKey, SealedShare};
use kluis_core::{
    DocId, Header, LabelPublicKey, Metadata, Recipient, Share, Slot, Stanza, Unwrap, UnwrapError,
    UnwrapRequest,
};
use serde_json::{Value, json};

/// `serve` on loopback with rate limiting off and `extra` arguments.
fn serve_unlimited(dir: tempfile::TempDir, extra: &[&str]) -> Server {
    let mut args = LOOPBACK.to_vec();
    args.extend(["--rate-limit", "0"]);
    args.extend(extra);
    serve(dir, &args)
}

/// A document sealed to `label`: its header, and the `{doc_id, stanza}` item that asks the
/// key server for its share.
struct Doc {
    header: Header,
    item: Value,
}

fn doc(label: &LabelPublicKey) -> Doc {
    let sealed = kluis_core::seal(
        &[Slot::single(Recipient::Label(label.clone()))],
        &Metadata::default(),
        b"secret",
    )
    .unwrap();
    let header = Header::parse(&sealed).unwrap();
    let item = json!({
        "doc_id": header.doc_id().to_string(),
        "stanza": B64.encode(header.slots()[0][0].to_bytes()),
    });
    Doc { header, item }
}

fn reply_key_b64(k: &ReplyKey) -> String {
    B64.encode(k.public_bytes())
}

/// A single unwrap body for `d`, sealed to `reply`.
fn single(d: &Doc, reply: &ReplyKey) -> Value {
    let mut body = d.item.clone();
    body["reply_key"] = reply_key_b64(reply).into();
    body
}

/// Hands the opener the share the server released, for any org stanza.
struct Released(Share);

impl Unwrap for Released {
    fn accepts(&self, stanza: &Stanza) -> bool {
        matches!(stanza, Stanza::Org(_))
    }

    fn unwrap(&self, requests: &[UnwrapRequest<'_>]) -> Vec<Result<Share, UnwrapError>> {
        requests.iter().map(|_| Ok(self.0.clone())).collect()
    }
}

fn b64_array<const N: usize>(v: &Value) -> [u8; N] {
    B64.decode(v.as_str().unwrap()).unwrap().try_into().unwrap()
}

/// The share in `item` (`{nonce, share}`), sealed to `reply` under the reply's server key,
/// must open `d`: the reply was made for this request and this document.
fn assert_opens(d: &Doc, reply: &ReplyKey, server_key: &Value, item: &Value) {
    let sealed = SealedShare {
        nonce: b64_array(&item["nonce"]),
        body: b64_array(&item["share"]),
    };
    let doc_id: DocId = d.header.doc_id();
    let share = reply
        .opener(&b64_array(server_key))
        .unwrap()
        .open(&doc_id, &sealed)
        .expect("the reply is sealed to this request's reply key and document");
    d.header
        .unlock(&[&Released(share)])
        .expect("the released share opens the document");
}

fn audit(dir: &Path) -> Vec<Value> {
    admin(dir, &["audit", "export"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn addr(server: &Server) -> String {
    server.base.strip_prefix("http://").unwrap().to_owned()
}

fn assert_healthy(server: &Server) {
    assert_eq!(get(&format!("{}/healthz", server.base), None).0, 200);
    assert_eq!(get(&format!("{}/readyz", server.base), None).0, 200);
}

/// A JSON `{code, message}` refusal with `status` and `code`.
fn assert_refusal(status: u16, text: &str, want_status: u16, want_code: &str, what: &str) {
    assert_eq!(status, want_status, "{what}: {text}");
    let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{what}: {e}: {text}"));
    assert_eq!(v["code"], want_code, "{what}: {v}");
    assert!(v["message"].is_string(), "{what}: {v}");
}

#[test]
fn malformed_and_mistyped_bodies_are_400_with_a_code_and_release_nothing() {
    let (dir, token) = store();
    let server = serve_unlimited(dir, &[]);
    let hr = label_key(&server, "hr");
    let d = doc(&hr);
    let reply = ReplyKey::generate().unwrap();
    let good = single(&d, &reply);
    let with = |k: &str, v: Value| {
        let mut b = good.clone();
        b[k] = v;
        b.to_string().into_bytes()
    };
    let text = good.to_string();
    let (rk, id, st) = (
        reply_key_b64(&reply),
        d.item["doc_id"].as_str().unwrap().to_owned(),
        d.item["stanza"].as_str().unwrap().to_owned(),
    );
    let x25519_stanza = {
        // A holder stanza is a valid stanza, but not one the key server unwraps.
        let holder = kluis_core::Identity::generate().unwrap();
        let sealed = kluis_core::seal(
            &[Slot::single(Recipient::Key(holder.public_key()))],
            &Metadata::default(),
            b"x",
        )
        .unwrap();
        B64.encode(Header::parse(&sealed).unwrap().slots()[0][0].to_bytes())
    };
    let single_cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty body", vec![]),
        ("not JSON", b"reply_key=1".to_vec()),
        ("truncated", text.as_bytes()[..text.len() / 2].to_vec()),
        ("an array", b"[]".to_vec()),
        ("null", b"null".to_vec()),
        ("a string", b"\"{}\"".to_vec()),
        ("a huge number", b"1e999999999".to_vec()),
        ("an empty object", b"{}".to_vec()),
        ("invalid UTF-8", b"{\"reply_key\":\"\xff\xfe\"}".to_vec()),
        (
            "a byte order mark",
            [b"\xef\xbb\xbf", text.as_bytes()].concat(),
        ),
        ("trailing garbage", format!("{text}x").into_bytes()),
        ("two objects", format!("{text}{text}").into_bytes()),
        (
            "a duplicated field",
            format!(r#"{{"reply_key":"{rk}","reply_key":"{rk}","doc_id":"{id}","stanza":"{st}"}}"#)
                .into_bytes(),
        ),
        ("an unknown field", with("admin", true.into())),
        ("reply_key a number", with("reply_key", 5.into())),
        ("reply_key null", with("reply_key", Value::Null)),
        ("reply_key short", with("reply_key", "AAAA".into())),
        (
            "reply_key a low-order point",
            with("reply_key", B64.encode([0u8; 32]).into()),
        ),
        ("doc_id an array", with("doc_id", json!([1, 2]))),
        ("doc_id not hex", with("doc_id", "zz".repeat(16).into())),
        ("doc_id too short", with("doc_id", "00".into())),
        (
            "doc_id of another document",
            with("doc_id", "00".repeat(16).into()),
        ),
        ("stanza an object", with("stanza", json!({"a": 1}))),
        ("stanza not base64", with("stanza", "!!!!".into())),
        ("stanza too long", with("stanza", "A".repeat(8192).into())),
        (
            "stanza garbage",
            with("stanza", B64.encode([7u8; 90]).into()),
        ),
        (
            "stanza for a holder key",
            with("stanza", x25519_stanza.into()),
        ),
        ("purpose unknown", with("purpose", "exfiltrate".into())),
        ("purpose a number", with("purpose", 1.into())),
        ("reason with a newline", with("reason", "a\nb".into())),
        ("reason too long", with("reason", "x".repeat(1025).into())),
        ("reason an object", with("reason", json!({}))),
        ("a NUL in doc_id", with("doc_id", "\0".repeat(32).into())),
    ];
    let url = format!("{}/v1/unwrap", server.base);
    for (what, body) in &single_cases {
        let (status, text, _) = post_bytes(&url, Some(&token), "application/json", body);
        assert_refusal(status, &text, 400, "malformed", what);
    }
    // The content type is not what decides: a good body with another one is served.
    let (status, text, _) = post_bytes(
        &url,
        Some(&token),
        "text/plain",
        good.to_string().as_bytes(),
    );
    assert_eq!(status, 200, "{text}");

    let batch_url = format!("{}/v1/unwrap/batch", server.base);
    let batch = json!({ "reply_key": rk, "items": [d.item] });
    let bwith = |k: &str, v: Value| {
        let mut b = batch.clone();
        b[k] = v;
        b.to_string().into_bytes()
    };
    let batch_cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "items missing",
            json!({ "reply_key": rk }).to_string().into_bytes(),
        ),
        ("items an object", bwith("items", json!({"0": d.item}))),
        ("items null", bwith("items", Value::Null)),
        ("items of strings", bwith("items", json!(["a", "b"]))),
        (
            "an item with an unknown field",
            bwith(
                "items",
                json!([{ "doc_id": id, "stanza": st, "label": "x" }]),
            ),
        ),
        (
            "an item without its stanza",
            bwith("items", json!([{ "doc_id": id }])),
        ),
        ("a single body sent as a batch", text.clone().into_bytes()),
        ("reply_key a list", bwith("reply_key", json!([rk]))),
    ];
    for (what, body) in &batch_cases {
        let (status, text, _) = post_bytes(&batch_url, Some(&token), "application/json", body);
        assert_refusal(status, &text, 400, "malformed", what);
    }
    // An empty batch is outside 1..=max_batch.
    let (status, text, _) = post_bytes(
        &batch_url,
        Some(&token),
        "application/json",
        bwith("items", json!([])).as_slice(),
    );
    assert_refusal(status, &text, 413, "batch_size", "an empty batch");
    // Items that are well-formed JSON but bad values fail one by one; the good one is served.
    let mixed = json!({ "reply_key": rk, "items": [
        { "doc_id": "nope", "stanza": st },
        { "doc_id": id, "stanza": "!!" },
        d.item,
        { "doc_id": "00".repeat(16), "stanza": st },
    ]});
    let (status, v, _) = post(&batch_url, Some(&token), &mixed);
    assert_eq!(status, 200, "{v}");
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 4);
    for i in [0, 1, 3] {
        assert_eq!(items[i]["error"]["code"], "malformed", "{v}");
        assert!(items[i].get("share").is_none());
    }
    assert_opens(&d, &reply, &v["server_key"], &items[2]);

    // Unauthenticated garbage is 401 before the body is looked at.
    let (status, text, headers) = post_bytes(&url, None, "application/json", b"\x00\x01 not json");
    assert_refusal(status, &text, 401, "unauthenticated", "no token");
    assert!(headers.contains_key("www-authenticate"));

    // Only the two good requests opened anything; the one whose stanza does not
    // authenticate for the document is recorded as refused.
    assert_healthy(&server);
    let records = audit(server.dir.path());
    let unwraps: Vec<_> = records.iter().filter(|r| r["action"] == "unwrap").collect();
    assert_eq!(
        unwraps.iter().filter(|r| r["outcome"] == "granted").count(),
        2,
        "{unwraps:?}"
    );
    assert!(
        unwraps
            .iter()
            .all(|r| r["outcome"] != "granted" || r["doc_id"] == id.as_str())
    );
    admin(server.dir.path(), &["audit", "verify"]);
}

#[test]
fn deeply_nested_and_long_json_is_refused_without_harm() {
    let (dir, token) = store();
    let server = serve_unlimited(dir, &[]);
    let pid = server.child.id();
    let url = format!("{}/v1/unwrap", server.base);
    let batch_url = format!("{}/v1/unwrap/batch", server.base);
    let rk = reply_key_b64(&ReplyKey::generate().unwrap());
    let deep = |open: &str, close: &str, n: usize| format!("{}{}", open.repeat(n), close.repeat(n));
    let cases: Vec<(&str, &str, String)> = vec![
        (
            "arrays 200k deep as reply_key",
            &url,
            format!(r#"{{"reply_key":{}}}"#, deep("[", "]", 200_000)),
        ),
        (
            "objects 50k deep as doc_id",
            &url,
            format!(
                r#"{{"reply_key":"{rk}","doc_id":{}1{}}}"#,
                r#"{"a":"#.repeat(50_000),
                "}".repeat(50_000)
            ),
        ),
        (
            "arrays 200k deep as an item",
            &batch_url,
            format!(
                r#"{{"reply_key":"{rk}","items":[{}]}}"#,
                deep("[", "]", 200_000)
            ),
        ),
        (
            "unclosed arrays",
            &batch_url,
            format!(r#"{{"reply_key":"{rk}","items":{}"#, "[".repeat(500_000)),
        ),
        (
            "a 900 KB string of escapes",
            &url,
            format!(r#"{{"reply_key":"{}"}}"#, r"\u0041".repeat(150_000)),
        ),
        (
            "80k unknown fields",
            &url,
            format!(
                "{{{}\"reply_key\":\"{rk}\"}}",
                (0..80_000)
                    .map(|i| format!("\"f{i}\":0,"))
                    .collect::<String>()
            ),
        ),
    ];
    for (what, url, body) in &cases {
        assert!(body.len() <= 1024 * 1024, "{what}: {} bytes", body.len());
        let start = Instant::now();
        let (status, text, _) = post_bytes(url, Some(&token), "application/json", body.as_bytes());
        assert_refusal(status, &text, 400, "malformed", what);
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{what}: {:?}",
            start.elapsed()
        );
    }
    assert_healthy(&server);
    if let Some(hwm) = proc_status_kib(pid, "VmHWM") {
        assert!(hwm < 512 * 1024, "peak memory {hwm} KiB");
    }
}

#[test]
fn too_many_items_and_a_body_just_over_the_limit_are_413_with_a_code() {
    let (dir, token) = store();
    let server = serve_unlimited(dir, &[]);
    let hr = label_key(&server, "hr");
    let d = doc(&hr);
    let rk = reply_key_b64(&ReplyKey::generate().unwrap());
    let batch_url = format!("{}/v1/unwrap/batch", server.base);

    // 1001 items (the default maximum is 1000), well under the body limit.
    let items: Vec<Value> = (0..1001).map(|_| d.item.clone()).collect();
    let body = json!({ "reply_key": rk, "items": items });
    let (status, v, _) = post(&batch_url, Some(&token), &body);
    assert_eq!(status, 413, "{v}");
    assert_eq!(v["code"], "batch_size");
    // 38 000 tiny items: still one refusal, not 38 000 audit records.
    let tiny = format!(
        r#"{{"reply_key":"{rk}","items":[{}]}}"#,
        vec![r#"{"doc_id":"","stanza":""}"#; 38_000].join(",")
    );
    assert!(tiny.len() < 1024 * 1024 - 4096);
    let (status, text, _) = post_bytes(
        &batch_url,
        Some(&token),
        "application/json",
        tiny.as_bytes(),
    );
    assert_refusal(status, &text, 413, "batch_size", "38k items");

    // A body of exactly the limit is read (and refused for what it says); one byte more is
    // 413 before it is parsed.
    let sized = |n: usize| {
        let head = format!(r#"{{"reply_key":"{rk}","items":[],"reason":""#);
        let tail = r#""}"#;
        format!("{head}{}{tail}", "x".repeat(n - head.len() - tail.len()))
    };
    let limit = 1024 * 1024;
    let (status, text, _) = post_bytes(
        &batch_url,
        Some(&token),
        "application/json",
        sized(limit).as_bytes(),
    );
    assert!(status == 400 || status == 413, "{status} {text}");
    assert_ne!(
        serde_json::from_str::<Value>(&text).unwrap()["code"],
        "body_too_large",
        "exactly the limit is allowed"
    );
    let over = sized(limit + 1);
    let request = |token: Option<&str>, chunked: bool| {
        let mut head =
            "POST /v1/unwrap/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                .to_owned();
        if let Some(t) = token {
            head.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        let mut req = if chunked {
            head.push_str("Transfer-Encoding: chunked\r\n\r\n");
            let mut r = head.into_bytes();
            for chunk in over.as_bytes().chunks(64 * 1024) {
                r.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                r.extend_from_slice(chunk);
                r.extend_from_slice(b"\r\n");
            }
            r.extend_from_slice(b"0\r\n\r\n");
            r
        } else {
            head.push_str(&format!("Content-Length: {}\r\n\r\n", over.len()));
            head.into_bytes()
        };
        if !chunked {
            req.extend_from_slice(over.as_bytes());
        }
        raw_exchange(&addr(&server), &req, Duration::from_secs(20))
    };
    for chunked in [false, true] {
        let answer = request(Some(&token), chunked);
        assert_eq!(
            raw_status(&answer),
            Some(413),
            "chunked {chunked}: {}",
            String::from_utf8_lossy(&answer[..answer.len().min(300)])
        );
        let v: Value = serde_json::from_slice(raw_body(&answer)).unwrap();
        assert_eq!(v["code"], "body_too_large", "{v}");
        assert!(v["message"].is_string());
    }
    // Without a token the answer is 401, whatever the size.
    let answer = request(None, false);
    assert_eq!(raw_status(&answer), Some(401));
    assert_healthy(&server);
    let records = audit(server.dir.path());
    assert!(
        records.iter().all(|r| r["action"] != "unwrap"),
        "nothing refused as a whole was recorded as an opening: {records:?}"
    );
}

/// Send headers for a body of `len` bytes, then trickle it one byte every `gap`.
/// Returns the answer, how long it took and how many body bytes went out.
fn trickle(
    addr: &str,
    token: &str,
    path: &str,
    len: usize,
    gap: Duration,
) -> (Vec<u8>, Duration, usize) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
    )
    .unwrap();
    let start = Instant::now();
    let mut writer = s.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let mut sent = 0;
        while sent < len {
            if writer.write_all(b" ").is_err() {
                break;
            }
            sent += 1;
            std::thread::sleep(gap);
            if start.elapsed() > Duration::from_secs(30) {
                break;
            }
        }
        sent
    });
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let took = start.elapsed();
    // The server has closed: stop trickling.
    let _ = s.shutdown(std::net::Shutdown::Both);
    let sent = sender.join().unwrap();
    (answer, took, sent)
}

#[test]
fn a_body_trickled_slower_than_the_request_timeout_is_cut_off_and_others_are_served() {
    let (dir, token) = store();
    std::fs::write(
        dir.path().join("slow.toml"),
        "[serve]\nrequest_timeout_secs = 2\n",
    )
    .unwrap();
    let server = serve_unlimited(dir, &["--config", "slow.toml"]);
    let hr = label_key(&server, "hr");
    let a = addr(&server);

    // Fifty slow clients at once, on both endpoints.
    let slow: Vec<_> = (0..50)
        .map(|i| {
            let (a, token) = (a.clone(), token.clone());
            let path = if i % 2 == 0 {
                "/v1/unwrap"
            } else {
                "/v1/unwrap/batch"
            };
            std::thread::spawn(move || {
                trickle(&a, &token, path, 10_000, Duration::from_millis(200))
            })
        })
        .collect();
    // Meanwhile everyone else is served promptly.
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..10 {
        let reply = ReplyKey::generate().unwrap();
        let d = doc(&hr);
        let start = Instant::now();
        let (status, v, _) = post(
            &format!("{}/v1/unwrap", server.base),
            Some(&token),
            &single(&d, &reply),
        );
        assert_eq!(status, 200, "{v}");
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
        assert_opens(&d, &reply, &v["server_key"], &v);
    }
    for t in slow {
        let (answer, took, sent) = t.join().unwrap();
        // Answered 504 and closed once the request timeout passed, long before the body
        // could have been complete (10 000 bytes at 5 per second).
        assert!(
            took < Duration::from_secs(8),
            "the connection stayed open {took:?} ({sent} bytes sent)"
        );
        assert!(sent < 10_000);
        assert_eq!(
            raw_status(&answer),
            Some(504),
            "{}",
            String::from_utf8_lossy(&answer)
        );
        let v: Value = serde_json::from_slice(raw_body(&answer)).unwrap();
        assert_eq!(v["code"], "timeout", "{v}");
    }
    assert_healthy(&server);
    let records = audit(server.dir.path());
    assert_eq!(
        records.iter().filter(|r| r["action"] == "unwrap").count(),
        10,
        "only the prompt requests were recorded"
    );
}

#[test]
fn hundreds_of_connections_at_once_in_bounded_memory() {
    let (dir, token) = store();
    let server = serve_unlimited(dir, &[]);
    let pid = server.child.id();
    let hr = label_key(&server, "hr");
    let docs: Arc<Vec<Doc>> = Arc::new((0..1000).map(|_| doc(&hr)).collect());
    let url = format!("{}/v1/unwrap", server.base);
    let batch_url = format!("{}/v1/unwrap/batch", server.base);
    // Warm up: every path once.
    let reply = ReplyKey::generate().unwrap();
    assert_eq!(post(&url, Some(&token), &single(&docs[0], &reply)).0, 200);
    let before = proc_status_kib(pid, "VmHWM");

    // 300 idle connections and 200 that sent half a request, held open throughout.
    let a = addr(&server);
    let mut held: Vec<TcpStream> = (0..300).map(|_| TcpStream::connect(&a).unwrap()).collect();
    for _ in 0..200 {
        let mut s = TcpStream::connect(&a).unwrap();
        write!(s, "POST /v1/unwrap HTTP/1.1\r\nHost: x\r\nContent-Le").unwrap();
        held.push(s);
    }

    // 200 clients at once, each with its own connection: single unwraps and full batches.
    let threads = 200;
    let barrier = Arc::new(Barrier::new(threads));
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (docs, barrier, token) = (docs.clone(), barrier.clone(), token.clone());
            let (url, batch_url) = (url.clone(), batch_url.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let reply = ReplyKey::generate().unwrap();
                if t % 25 == 0 {
                    // A full batch of 1000 items.
                    let items: Vec<Value> = docs.iter().map(|d| d.item.clone()).collect();
                    let body = json!({ "reply_key": reply_key_b64(&reply), "items": items });
                    let (status, v, _) = post(&batch_url, Some(&token), &body);
                    assert_eq!(status, 200, "{v}");
                    let items = v["items"].as_array().unwrap();
                    assert_eq!(items.len(), docs.len());
                    for i in [0, 499, 999] {
                        assert_opens(&docs[i], &reply, &v["server_key"], &items[i]);
                    }
                } else {
                    for i in 0..5 {
                        let d = &docs[(t * 5 + i) % docs.len()];
                        let (status, v, _) = post(&url, Some(&token), &single(d, &reply));
                        assert_eq!(status, 200, "{v}");
                        assert_opens(d, &reply, &v["server_key"], &v);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    assert_healthy(&server);
    drop(held);
    assert_healthy(&server);
    if let (Some(before), Some(after)) = (before, proc_status_kib(pid, "VmHWM")) {
        eprintln!("server peak memory: {before} KiB before, {after} KiB after");
        assert!(
            after < before + 256 * 1024,
            "peak memory grew from {before} KiB to {after} KiB"
        );
    }
    // Every opening was recorded: 8 batches of 1000 and 192 x 5 singles, plus the warm-up.
    let granted = audit(server.dir.path())
        .iter()
        .filter(|r| r["action"] == "unwrap" && r["outcome"] == "granted")
        .count();
    assert_eq!(granted, 8 * 1000 + 192 * 5 + 1);
}

#[test]
fn concurrent_callers_never_see_each_others_identity_keys_or_records() {
    const USERS: usize = 6;
    const ROUNDS: usize = 25;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    admin(d, &["init"]);
    let mut tokens = Vec::new();
    for u in 0..USERS {
        admin(
            d,
            &[
                "label",
                "create",
                &format!("l{u}"),
                "--user",
                &format!("u{u}"),
            ],
        );
        let t = admin(d, &["token", "create", "--user", &format!("u{u}")]);
        tokens.push(t.trim().to_owned());
    }
    let server = serve_unlimited(dir, &[]);
    let labels: Vec<LabelPublicKey> = (0..USERS)
        .map(|u| label_key(&server, &format!("l{u}")))
        .collect();
    let base = server.base.clone();
    let barrier = Arc::new(Barrier::new(USERS));
    // Per user: (granted items received, denied items received).
    let workers: Vec<_> = (0..USERS)
        .map(|u| {
            let (labels, token, base, barrier) = (
                labels.clone(),
                tokens[u].clone(),
                base.clone(),
                barrier.clone(),
            );
            std::thread::spawn(move || {
                let me = format!("u{u}");
                let mine = format!("l{u}");
                let other = (u + 1) % USERS;
                let (mut granted, mut denied) = (0usize, 0usize);
                barrier.wait();
                for round in 0..ROUNDS {
                    // My own document, alone: served, sealed to my reply key.
                    let own = doc(&labels[u]);
                    let reply = ReplyKey::generate().unwrap();
                    let (status, v, _) = post(
                        &format!("{base}/v1/unwrap"),
                        Some(&token),
                        &single(&own, &reply),
                    );
                    assert_eq!(status, 200, "{me}: {v}");
                    assert_opens(&own, &reply, &v["server_key"], &v);
                    granted += 1;
                    // Someone else's document: refused, naming their label, never mine.
                    let theirs = doc(&labels[other]);
                    let (status, v, _) = post(
                        &format!("{base}/v1/unwrap"),
                        Some(&token),
                        &single(&theirs, &reply),
                    );
                    assert_eq!(status, 403, "{me}: {v}");
                    assert_eq!(v["code"], "denied");
                    assert!(v.get("share").is_none());
                    denied += 1;
                    // A batch: mine, theirs, mine.
                    let own2 = doc(&labels[u]);
                    let reply = ReplyKey::generate().unwrap();
                    let body = json!({
                        "reply_key": reply_key_b64(&reply),
                        "reason": format!("{me} round {round}"),
                        "items": [own.item, theirs.item, own2.item],
                    });
                    let (status, v, _) =
                        post(&format!("{base}/v1/unwrap/batch"), Some(&token), &body);
                    assert_eq!(status, 200, "{me}: {v}");
                    let items = v["items"].as_array().unwrap();
                    assert_eq!(items.len(), 3);
                    assert_opens(&own, &reply, &v["server_key"], &items[0]);
                    assert_eq!(items[1]["error"]["code"], "denied", "{me}: {v}");
                    assert!(items[1].get("share").is_none());
                    assert_opens(&own2, &reply, &v["server_key"], &items[2]);
                    granted += 2;
                    denied += 1;
                    // My audit events: mine only, and my grants only for my label.
                    let (status, text) = get(&format!("{base}/v1/me/audit"), Some(&token));
                    assert_eq!(status, 200, "{me}: {text}");
                    let events: Vec<Value> = serde_json::from_str(&text).unwrap();
                    assert!(!events.is_empty());
                    for e in &events {
                        assert_eq!(e["actor"], me.as_str(), "{me} saw {e}");
                        if e["outcome"] == "granted" {
                            assert_eq!(e["label"], mine.as_str(), "{me} saw {e}");
                        } else {
                            assert_eq!(e["outcome"], "denied", "{me} saw {e}");
                            assert_ne!(e["label"], mine.as_str(), "{me} saw {e}");
                        }
                        if let Some(r) = e["reason"].as_str() {
                            assert!(r.starts_with(&format!("{me} ")), "{me} saw {e}");
                        }
                    }
                }
                (me, granted, denied)
            })
        })
        .collect();
    let mut expected = HashMap::new();
    for w in workers {
        let (me, granted, denied) = w.join().unwrap();
        expected.insert(me, (granted, denied));
    }
    // The trail attributes every record to the caller who made it.
    let mut seen: HashMap<String, (usize, usize)> = HashMap::new();
    for r in audit(server.dir.path()) {
        if r["action"] != "unwrap" {
            continue;
        }
        let actor = r["actor"].as_str().unwrap().to_owned();
        let mine = format!("l{}", actor.strip_prefix('u').unwrap());
        let e = seen.entry(actor.clone()).or_default();
        match r["outcome"].as_str().unwrap() {
            "granted" => {
                assert_eq!(r["label"], mine.as_str(), "{r}");
                e.0 += 1;
            }
            "denied" => {
                assert_ne!(r["label"], mine.as_str(), "{r}");
                e.1 += 1;
            }
            other => panic!("unexpected outcome {other}: {r}"),
        }
    }
    assert_eq!(seen, expected);
    admin(server.dir.path(), &["audit", "verify"]);
}

/// Fill the file system holding `path` until writing fails for lack of space.
fn fill(path: &Path) -> std::fs::File {
    let mut f = std::fs::File::create(path).unwrap();
    for size in [64 * 1024, 4096, 512, 1] {
        let chunk = vec![0x5a_u8; size];
        loop {
            match f.write_all(&chunk).and_then(|()| f.sync_all()) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
    }
    f
}

#[test]
fn a_full_disk_refuses_unwraps_with_503_releases_nothing_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mnt = d.join("mnt");
    let tmpfs = match Tmpfs::mount(&mnt, "2m") {
        Ok(t) => t,
        Err(why) => {
            eprintln!(
                "SKIPPED a_full_disk_refuses_unwraps_with_503_releases_nothing_and_recovers: \
                 mounting a 2 MiB tmpfs is not permitted here ({why}); run the tests as root \
                 (or with CAP_SYS_ADMIN) to cover a full disk under the audit trail"
            );
            return;
        }
    };
    let store = ["--store", "mnt/kluis-server.db"];
    let with_store = |args: &[&'static str]| -> Vec<&'static str> { [&store[..], args].concat() };
    admin(d, &with_store(&["init"]));
    admin(
        d,
        &with_store(&["label", "create", "hr", "--user", "alice"]),
    );
    let token = admin(d, &with_store(&["token", "create", "--user", "alice"]))
        .trim()
        .to_owned();
    let mut server = serve_unlimited(dir, &store);
    let stderr = common::drain_stderr(&mut server.child);
    let d = server.dir.path().to_owned();
    let hr = label_key(&server, "hr");
    let batch_url = format!("{}/v1/unwrap/batch", server.base);
    let batch = |n: usize| {
        let docs: Vec<Doc> = (0..n).map(|_| doc(&hr)).collect();
        let reply = ReplyKey::generate().unwrap();
        let body = json!({
            "reply_key": reply_key_b64(&reply),
            "items": docs.iter().map(|d| d.item.clone()).collect::<Vec<_>>(),
        });
        let (status, v, _) = post(&batch_url, Some(&token), &body);
        (status, v, docs, reply)
    };
    let doc_ids = |docs: &[Doc]| -> Vec<String> {
        docs.iter().map(|d| d.header.doc_id().to_string()).collect()
    };
    let (status, v, docs, reply) = batch(10);
    assert_eq!(status, 200, "{v}");
    assert_opens(&docs[0], &reply, &v["server_key"], &v["items"][0]);
    let mut released: Vec<String> = doc_ids(&docs);

    let filler_path = mnt.join("filler");
    let filler = fill(&filler_path);
    // Pages SQLite already has may take a few more records; then commits must fail.
    let mut refused: Vec<String> = Vec::new();
    for _ in 0..200 {
        let (status, v, docs, _) = batch(200);
        match status {
            200 => {
                assert!(
                    v["items"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .all(|i| i["share"].is_string())
                );
                released.extend(doc_ids(&docs));
            }
            503 => {
                assert_eq!(v["code"], "audit_unavailable", "{v}");
                assert!(v.get("items").is_none() && v.get("share").is_none(), "{v}");
                refused.extend(doc_ids(&docs));
                if refused.len() >= 600 {
                    break;
                }
            }
            other => panic!("unexpected {other} while the disk is full: {v}"),
        }
    }
    assert!(
        !refused.is_empty(),
        "the disk filled up but no unwrap was refused"
    );
    // A single unwrap is refused the same way; the server itself stays up.
    let d1 = doc(&hr);
    let (status, v, _) = post(
        &format!("{}/v1/unwrap", server.base),
        Some(&token),
        &single(&d1, &ReplyKey::generate().unwrap()),
    );
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["code"], "audit_unavailable");
    refused.push(d1.header.doc_id().to_string());
    assert_eq!(get(&format!("{}/healthz", server.base), None).0, 200);
    assert_eq!(get(&format!("{}/v1/labels/hr", server.base), None).0, 200);
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the server died"
    );

    // Space again: unwraps work without a restart.
    drop(filler);
    std::fs::remove_file(&filler_path).unwrap();
    let (status, v, docs, reply) = batch(10);
    assert_eq!(status, 200, "after freeing space: {v}");
    assert_opens(&docs[9], &reply, &v["server_key"], &v["items"][9]);
    released.extend(doc_ids(&docs));

    eprintln!(
        "full disk: {} shares released, {} refused with 503",
        released.len(),
        refused.len()
    );
    // The chain verifies; every released share has its record, no refused one has any.
    let out = admin(&d, &with_store(&["audit", "verify"]));
    assert!(out.contains("verified"), "{out}");
    let recorded: std::collections::HashSet<String> = admin(&d, &with_store(&["audit", "export"]))
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["action"] == "unwrap")
        .map(|r| r["doc_id"].as_str().unwrap().to_owned())
        .collect();
    for id in &released {
        assert!(recorded.contains(id), "released without a record: {id}");
    }
    for id in &refused {
        assert!(!recorded.contains(id), "refused but recorded: {id}");
    }
    let dir = server.kill();
    drop(tmpfs);
    drop(dir);
    let log = stderr.join().unwrap();
    assert!(
        log.contains("writing the audit trail failed"),
        "the operator is told: {log}"
    );
}
