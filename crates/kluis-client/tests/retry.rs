//! Retries, batch splitting and reply checking, against a canned HTTP server that answers
//! what each test needs (429, 503, 413, silence, forged replies).

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::{Canned, Request, record_json};
use kluis_client::{Client, ClientConfig, ClientError, Token};
use kluis_core::reply::ReplySealer;
use kluis_core::{DocId, Header, LabelKey, Metadata, Recipient, Share, Slot, UnwrapRequest, seal};
use serde_json::{Value, json};

fn client(url: &str, timeout: Duration) -> Client {
    let mut c = ClientConfig::new(url);
    c.token = Some(Token::new("kluis_test_token").unwrap());
    c.timeout = timeout;
    Client::new(c).unwrap()
}

/// `n` headers of documents sealed to a label key of `hr`.
fn headers(n: usize) -> Vec<Header> {
    let key = LabelKey::generate("hr", 1).unwrap();
    (0..n)
        .map(|_| {
            let d = seal(
                &[Slot::single(Recipient::Label(key.public_key().clone()))],
                &Metadata::default(),
                b"x",
            )
            .unwrap();
            Header::parse(&d).unwrap()
        })
        .collect()
}

fn requests(headers: &[Header]) -> Vec<UnwrapRequest<'_>> {
    headers
        .iter()
        .map(|h| UnwrapRequest {
            doc_id: h.doc_id(),
            stanza: &h.slots()[0][0],
        })
        .collect()
}

/// A well-formed batch reply to `req`, each share the item's doc_id twice, sealed to the
/// request's reply key (or to `other_key` to forge one).
fn sealed_reply(req: &Request, other_key: Option<[u8; 32]>) -> String {
    let body: Value = serde_json::from_slice(&req.body).unwrap();
    let r: [u8; 32] = match other_key {
        Some(k) => k,
        None => B64
            .decode(body["reply_key"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap(),
    };
    let mut sealer = ReplySealer::new(&r).unwrap();
    let items: Vec<Value> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let id: [u8; 16] = hex::decode(i["doc_id"].as_str().unwrap())
                .unwrap()
                .try_into()
                .unwrap();
            let mut share = [0u8; 32];
            share[..16].copy_from_slice(&id);
            share[16..].copy_from_slice(&id);
            let s = sealer.seal(&DocId(id), &Share::from_bytes(share));
            json!({"nonce": B64.encode(s.nonce), "share": B64.encode(s.body)})
        })
        .collect();
    json!({"server_key": B64.encode(sealer.server_public()), "items": items}).to_string()
}

#[test]
fn gets_are_retried_after_transient_failures() {
    let key = kluis_core::Identity::generate().unwrap().public_key();
    let server = Canned::start(None, move |n, _| {
        Some(match n {
            1 => (503, vec![("retry-after", "0".into())], String::new()),
            2 => (502, vec![], String::new()),
            _ => (200, vec![], record_json(&key)),
        })
    });
    let c = client(&server.url("http"), Duration::from_secs(5));
    let r = c.label_record("hr").unwrap();
    assert_eq!(r.key.key(), &key);
    assert_eq!(server.count(), 3);
    assert!(
        server
            .requests
            .lock()
            .unwrap()
            .iter()
            .all(|r| r.method == "GET"
                && r.path == "/v1/labels/hr"
                && r.header("authorization").is_none())
    );
}

#[test]
fn unwraps_are_retried_on_429_within_limits_and_never_after_a_timeout() {
    let hs = headers(1);
    let reqs = requests(&hs);

    // 429 with a short Retry-After: retried up to max_attempts, then an error naming it.
    let busy = Canned::start(None, |_, _| {
        Some((
            429,
            vec![("retry-after", "0".into())],
            r#"{"code":"rate_limited","message":"slow down"}"#.into(),
        ))
    });
    let c = client(&busy.url("http"), Duration::from_secs(5));
    let e = c.unwrap_batch(&reqs).pop().unwrap().unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::RateLimited {
                retry_after: Some(0),
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(busy.count(), 3);
    let sent = busy.requests.lock().unwrap()[0].clone();
    assert_eq!(
        sent.header("authorization"),
        Some("Bearer kluis_test_token")
    );

    // A Retry-After beyond the wait budget: no waiting, the person is told when to retry.
    let later = Canned::start(None, |_, _| {
        Some((429, vec![("retry-after", "3600".into())], String::new()))
    });
    let c = client(&later.url("http"), Duration::from_secs(5));
    let start = Instant::now();
    let e = c.unwrap_batch(&reqs).pop().unwrap().unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(3));
    assert_eq!(later.count(), 1);
    assert!(e.to_string().contains("try again in 3600 s"), "{e}");

    // 503 then success: retried, and the shares open.
    let flaky = Canned::start(None, |n, req| {
        Some(match n {
            1 => (503, vec![("retry-after", "0".into())], String::new()),
            _ => (200, vec![], sealed_reply(req, None)),
        })
    });
    let c = client(&flaky.url("http"), Duration::from_secs(5));
    assert!(c.unwrap_batch(&reqs)[0].is_ok());
    assert_eq!(flaky.count(), 2);

    // A server that takes the request and never answers: the unwrap may have been audited,
    // so it is not sent again; a GET is.
    let silent = Canned::start(None, |_, _| None);
    let c = client(&silent.url("http"), Duration::from_secs(1));
    let e = c.unwrap_batch(&reqs).pop().unwrap().unwrap_err();
    assert!(matches!(e, ClientError::Timeout { .. }), "{e:?}");
    assert!(e.to_string().contains("sealing still works offline"), "{e}");
    assert_eq!(silent.count(), 1);
    assert!(matches!(c.labels(), Err(ClientError::Timeout { .. })));
    assert_eq!(silent.count(), 4, "the GET was tried three times");
}

#[test]
fn batches_are_split_to_what_the_server_takes() {
    let hs = headers(20);
    let reqs = requests(&hs);
    let server = Canned::start(None, |_, req| {
        let body: Value = serde_json::from_slice(&req.body).unwrap();
        Some(if body["items"].as_array().unwrap().len() > 8 {
            (
                413,
                vec![],
                r#"{"code":"batch_size","message":"a batch holds 1 to 8 items"}"#.into(),
            )
        } else {
            (200, vec![], sealed_reply(req, None))
        })
    });
    let c = client(&server.url("http"), Duration::from_secs(5));
    let shares = c.unwrap_batch(&reqs);
    for (h, s) in hs.iter().zip(&shares) {
        let s = s.as_ref().unwrap();
        assert_eq!(&s.expose_secret()[..16], h.doc_id().as_bytes());
    }
    // 20 → 413, 10 → 413, then 5 + 5 + 5 + 5; the smaller size is kept for next time.
    let sizes: Vec<usize> = server
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|r| {
            let v: Value = serde_json::from_slice(&r.body).unwrap();
            v["items"].as_array().unwrap().len()
        })
        .collect();
    assert_eq!(sizes, [20, 10, 5, 5, 5, 5]);
    c.unwrap_batch(&reqs[..7]);
    assert_eq!(server.count(), 8, "5 + 2 without another 413");

    // Each request carries its own reply key.
    let keys: std::collections::HashSet<String> = server
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|r| serde_json::from_slice::<Value>(&r.body).unwrap()["reply_key"].to_string())
        .collect();
    assert_eq!(keys.len(), 8);
}

#[test]
fn shares_that_do_not_authenticate_are_never_used() {
    let hs = headers(3);
    let reqs = requests(&hs);
    // Sealed to another reply key than the one sent.
    let forged = Canned::start(None, |_, req| {
        let other = kluis_core::Identity::generate().unwrap().public_key();
        Some((200, vec![], sealed_reply(req, Some(*other.as_bytes()))))
    });
    let c = client(&forged.url("http"), Duration::from_secs(5));
    for r in c.unwrap_batch(&reqs) {
        assert!(matches!(r, Err(ClientError::BadReply { .. })), "{r:?}");
    }
    // A flipped bit in one share: that item fails, the others open.
    let flipped = Canned::start(None, |_, req| {
        let mut v: Value = serde_json::from_str(&sealed_reply(req, None)).unwrap();
        let mut s = B64
            .decode(v["items"][1]["share"].as_str().unwrap())
            .unwrap();
        s[0] ^= 1;
        v["items"][1]["share"] = B64.encode(s).into();
        Some((200, vec![], v.to_string()))
    });
    let c = client(&flipped.url("http"), Duration::from_secs(5));
    let r = c.unwrap_batch(&reqs);
    assert!(r[0].is_ok() && r[2].is_ok());
    assert!(matches!(r[1], Err(ClientError::BadReply { .. })));
    // One result too few: nothing from that reply is used.
    let short = Canned::start(None, |_, req| {
        let mut v: Value = serde_json::from_str(&sealed_reply(req, None)).unwrap();
        v["items"].as_array_mut().unwrap().pop();
        Some((200, vec![], v.to_string()))
    });
    let c = client(&short.url("http"), Duration::from_secs(5));
    assert!(
        c.unwrap_batch(&reqs)
            .iter()
            .all(|r| matches!(r, Err(ClientError::Protocol { .. })))
    );
}

#[test]
fn item_errors_are_mapped_per_document() {
    let hs = headers(3);
    let reqs = requests(&hs);
    let server = Canned::start(None, |_, req| {
        let mut v: Value = serde_json::from_str(&sealed_reply(req, None)).unwrap();
        v["items"][0] = json!({"error": {"code": "denied", "message": "no"}});
        v["items"][2] = json!({"error": {"code": "destroyed", "message": "gone",
            "destroyed_ms": 1_735_689_599_999i64}});
        Some((200, vec![], v.to_string()))
    });
    let c = client(&server.url("http"), Duration::from_secs(5));
    let r = c.unwrap_batch(&reqs);
    assert!(matches!(&r[0], Err(ClientError::Denied { label }) if label == "hr"));
    assert!(r[1].is_ok());
    assert_eq!(
        r[2].as_ref().unwrap_err().to_string(),
        "this document's key (label `hr`, version 1) was destroyed on 2024-12-31; it cannot be opened by anyone"
    );
}

#[test]
fn redirects_are_not_followed() {
    let server = Canned::start(None, |_, _| {
        Some((
            302,
            vec![("location", "http://127.0.0.1:9/v1/labels/hr".into())],
            String::new(),
        ))
    });
    let c = client(&server.url("http"), Duration::from_secs(5));
    let e = c.label_record("hr").unwrap_err();
    assert!(matches!(e, ClientError::Protocol { .. }), "{e:?}");
    assert_eq!(server.count(), 1);
}

/// Found by the `label_record` fuzz target: a server answering with another label's record,
/// or with a `max_age` that overflows the clock, must not be believed (nor crash the client).
#[test]
fn a_record_for_another_label_or_with_an_absurd_max_age_is_handled() {
    let key = kluis_core::Identity::generate().unwrap().public_key();
    let other = record_json(&key).replace("\"label\":\"hr\"", "\"label\":\"legal\"");
    assert!(other.contains("legal"));
    let server = Canned::start(None, move |_, _| Some((200, vec![], other.clone())));
    let cache = tempfile::tempdir().unwrap();
    let mut config = ClientConfig::new(server.url("http"));
    config.cache_dir = Some(cache.path().to_owned());
    let c = Client::new(config).unwrap();
    let e = c.label_record("hr").unwrap_err();
    assert!(e.to_string().contains("hr"), "{e}");
    // Nothing about `hr` (or `legal`) was cached from that answer.
    let files: Vec<_> = walk(cache.path());
    assert!(files.is_empty(), "{files:?}");

    let huge = record_json(&key).replace("\"max_age\":3600", "\"max_age\":18446744073709551615");
    assert!(huge.contains("18446744073709551615"));
    let server = Canned::start(None, move |_, _| Some((200, vec![], huge.clone())));
    let mut config = ClientConfig::new(server.url("http"));
    config.cache_dir = Some(cache.path().to_owned());
    let c = Client::new(config).unwrap();
    let r = c.label_record("hr").unwrap();
    // Capped at 30 days: served from the cache now, but not forever.
    let lives = r.expires_at.duration_since(r.fetched_at).unwrap();
    assert_eq!(lives, Duration::from_secs(30 * 86_400));
    let again = c.label_record("hr").unwrap();
    assert_eq!(again.key.key(), &key);
    assert_eq!(server.count(), 1);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}
