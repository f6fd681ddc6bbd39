//! The HTTP API against the real `kluis-server serve` process on loopback: documents sealed
//! with kluis-core to the served label records, opened through batch unwrap.

use std::cell::Cell;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use kluis_core::reply::{ReplyKey, SealedShare};
use kluis_core::{
    Error, Identity, Metadata, Recipient, Share, Slot, Stanza, Unwrap, UnwrapError, UnwrapRequest,
    open, seal,
};
use serde_json::{Value, json};

mod common;
use common::{LOOPBACK, Server, admin, get, label_key, post, serve};

fn start() -> (Server, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    admin(d, &["init"]);
    admin(d, &["label", "create", "hr", "--group", "hr-staff"]);
    admin(
        d,
        &[
            "label",
            "create",
            "medical",
            "--user",
            "alice",
            "--double-key",
        ],
    );
    let alice = admin(
        d,
        &["token", "create", "--user", "alice", "--group", "hr-staff"],
    );
    let bob = admin(d, &["token", "create", "--user", "bob"]);
    let server = serve(
        dir,
        &[LOOPBACK[0], LOOPBACK[1], LOOPBACK[2], "--max-batch", "100"],
    );
    (server, alice.trim().to_owned(), bob.trim().to_owned())
}

/// A key-server client as kluis-client will be: one batch request per `unwrap` call.
struct Remote<'a> {
    base: &'a str,
    token: &'a str,
    calls: Cell<usize>,
}

impl Unwrap for Remote<'_> {
    fn accepts(&self, s: &Stanza) -> bool {
        matches!(s, Stanza::Org(_))
    }

    fn unwrap(&self, reqs: &[UnwrapRequest<'_>]) -> Vec<Result<Share, UnwrapError>> {
        self.calls.set(self.calls.get() + 1);
        let r = ReplyKey::generate().unwrap();
        let items: Vec<Value> = reqs
            .iter()
            .map(|q| json!({"doc_id": q.doc_id.to_string(), "stanza": B64.encode(q.stanza.to_bytes())}))
            .collect();
        let body =
            json!({"reply_key": B64.encode(r.public_bytes()), "reason": "test", "items": items});
        let (status, v, _) = post(
            &format!("{}/v1/unwrap/batch", self.base),
            Some(self.token),
            &body,
        );
        if status != 200 {
            let msg = v["message"].as_str().unwrap_or("").to_owned();
            return reqs
                .iter()
                .map(|_| Err(UnwrapError::unavailable(msg.clone())))
                .collect();
        }
        let s: [u8; 32] = B64
            .decode(v["server_key"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        let opener = r.opener(&s).unwrap();
        reqs.iter()
            .zip(v["items"].as_array().unwrap())
            .map(|(q, item)| {
                if let Some(e) = item.get("error") {
                    let msg = e["message"].as_str().unwrap().to_owned();
                    return Err(match e["code"].as_str().unwrap() {
                        "destroyed" => UnwrapError::destroyed(msg),
                        "denied" | "double_key_required" | "retired" => UnwrapError::denied(msg),
                        _ => UnwrapError::unavailable(msg),
                    });
                }
                let sealed = SealedShare {
                    nonce: B64
                        .decode(item["nonce"].as_str().unwrap())
                        .unwrap()
                        .try_into()
                        .unwrap(),
                    body: B64
                        .decode(item["share"].as_str().unwrap())
                        .unwrap()
                        .try_into()
                        .unwrap(),
                };
                opener.open(&q.doc_id, &sealed)
            })
            .collect()
    }
}

#[test]
fn documents_open_through_the_key_server_and_every_opening_is_audited() {
    let (server, alice, bob) = start();
    let hr = label_key(&server, "hr");
    let docs: Vec<Vec<u8>> = (0..30)
        .map(|i| {
            seal(
                &[Slot::single(Recipient::Label(hr.clone()))],
                &Metadata::default(),
                format!("doc {i}").as_bytes(),
            )
            .unwrap()
        })
        .collect();

    // A whole folder in one round trip.
    let remote = Remote {
        base: &server.base,
        token: &alice,
        calls: Cell::new(0),
    };
    let headers: Vec<kluis_core::Header> = docs
        .iter()
        .map(|d| kluis_core::Header::parse(d).unwrap())
        .collect();
    let refs: Vec<&kluis_core::Header> = headers.iter().collect();
    let keys = kluis_core::unlock_all(&refs, &[&remote]);
    assert_eq!(remote.calls.get(), 1);
    assert!(keys.iter().all(Result::is_ok));
    assert_eq!(open(&docs[7], &[&remote]).unwrap().0, b"doc 7");

    // Bob is not in hr-staff: denied, and the denial is recorded too.
    let as_bob = Remote {
        base: &server.base,
        token: &bob,
        calls: Cell::new(0),
    };
    match open(&docs[0], &[&as_bob]) {
        Err(Error::Unwrap(UnwrapError::Denied(m))) => {
            assert!(m.to_string().contains("`hr`"), "{m}")
        }
        other => panic!("expected a denial, got {other:?}"),
    }

    // Employees see what is recorded under their name, and nobody else's.
    let (status, body) = get(&format!("{}/v1/me/audit", server.base), Some(&alice));
    assert_eq!(status, 200);
    let mine: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(mine.len(), 31, "30 in the batch and one single open");
    assert!(
        mine.iter()
            .all(|r| r["actor"] == "alice" && r["outcome"] == "granted" && r["reason"] == "test")
    );
    let (_, body) = get(&format!("{}/v1/me/audit", server.base), Some(&bob));
    let bobs: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(bobs.len(), 1);
    assert_eq!(bobs[0]["outcome"], "denied");

    // The chain verifies with the server still running: 5 admin records, 31 + 1 unwraps.
    let verified = admin(server.dir.path(), &["audit", "verify"]);
    assert!(verified.contains("verified: 37 records"), "{verified}");
}

#[test]
fn unauthenticated_malformed_and_oversized_requests_get_the_right_status() {
    let (server, alice, _) = start();
    let url = format!("{}/v1/unwrap", server.base);
    let (status, v, www) = post(&url, None, &json!({}));
    assert_eq!((status, v["code"].as_str()), (401, Some("unauthenticated")));
    assert_eq!(www.as_deref(), Some("Bearer realm=\"kluis\""));
    let (status, _, _) = post(
        &url,
        Some("kluis_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
        &json!({}),
    );
    assert_eq!(status, 401);
    let (status, v, _) = post(
        &url,
        Some(&alice),
        &json!({"reply_key": "x", "doc_id": "00", "stanza": ""}),
    );
    assert_eq!((status, v["code"].as_str()), (400, Some("malformed")));
    let items: Vec<Value> = (0..101)
        .map(|_| json!({"doc_id": "00", "stanza": ""}))
        .collect();
    let (status, _, _) = post(
        &format!("{url}/batch"),
        Some(&alice),
        &json!({"reply_key": B64.encode([9u8; 32]), "items": items}),
    );
    assert_eq!(status, 413);
    let (status, _) = get(&format!("{}/v1/labels/nope", server.base), None);
    assert_eq!(status, 404);
    let (status, body) = get(&format!("{}/healthz", server.base), None);
    assert_eq!((status, body.as_str()), (200, "ok\n"));
}

#[test]
fn double_key_is_enforced_and_destroyed_versions_answer_410() {
    let (server, alice, _) = start();
    let remote = Remote {
        base: &server.base,
        token: &alice,
        calls: Cell::new(0),
    };
    let medical = label_key(&server, "medical");
    let single = seal(
        &[Slot::single(Recipient::Label(medical.clone()))],
        &Metadata::default(),
        b"x",
    )
    .unwrap();
    match open(&single, &[&remote]) {
        Err(Error::Unwrap(UnwrapError::Denied(m))) => {
            assert!(m.to_string().contains("requires double key"), "{m}")
        }
        other => panic!("expected double key refusal, got {other:?}"),
    }
    let holder = Identity::generate().unwrap();
    let slot = Slot::double(
        Recipient::Label(medical),
        Recipient::Key(holder.public_key()),
    )
    .unwrap();
    let double = seal(&[slot], &Metadata::default(), b"diagnosis").unwrap();
    assert_eq!(open(&double, &[&remote, &holder]).unwrap().0, b"diagnosis");
    assert!(
        open(&double, &[&remote]).is_err(),
        "the server alone cannot open it"
    );

    // Rotate, then destroy version 1: its documents are gone for everyone.
    let hr = label_key(&server, "hr");
    let old = seal(
        &[Slot::single(Recipient::Label(hr))],
        &Metadata::default(),
        b"old",
    )
    .unwrap();
    admin(server.dir.path(), &["label", "rotate", "hr"]);
    assert_eq!(
        label_key(&server, "hr").kid(),
        2,
        "new documents seal to version 2"
    );
    assert_eq!(
        open(&old, &[&remote]).unwrap().0,
        b"old",
        "version 1 still opens"
    );
    admin(
        server.dir.path(),
        &["label", "destroy", "hr", "1", "--confirm", "hr"],
    );
    match open(&old, &[&remote]) {
        Err(Error::Unwrap(UnwrapError::Destroyed(m))) => {
            assert!(m.to_string().contains("destroyed"), "{m}")
        }
        other => panic!("expected destroyed, got {other:?}"),
    }
    // The single endpoint answers 410 with the date, as text and as a number.
    let header = kluis_core::Header::parse(&old).unwrap();
    let body = json!({
        "reply_key": B64.encode(ReplyKey::generate().unwrap().public_bytes()),
        "doc_id": header.doc_id().to_string(),
        "stanza": B64.encode(header.slots()[0][0].to_bytes()),
    });
    let (status, v, _) = post(&format!("{}/v1/unwrap", server.base), Some(&alice), &body);
    assert_eq!(status, 410, "{v}");
    assert_eq!(v["code"], "destroyed");
    let when = v["destroyed_ms"].as_i64().expect("destroyed_ms");
    assert!((kluis_server::now_ms() - when).abs() < 60_000, "{v}");
    assert!(v["message"].as_str().unwrap().contains(" on 20"), "{v}");
    let (_, record) = get(&format!("{}/v1/labels/hr", server.base), None);
    let record: Value = serde_json::from_str(&record).unwrap();
    assert_eq!(record["versions"][0]["state"], "destroyed");
    assert_eq!(record["versions"][0]["destroyed_ms"], when);
}
