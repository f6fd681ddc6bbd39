#![no_main]
//! kluis-server's unwrap endpoints as the server parses them: the input is the body of
//! `POST /v1/unwrap` or `POST /v1/unwrap/batch`, sent through the real router in process
//! (authentication, body parsing, limits, policy, unwrap, audit, reply sealing).
//!
//! The first byte picks the request: bit 0 batch, bits 1-2 the caller (alice, who may open
//! `hr` and `dk`; bob, who may open neither; a revoked token; an unknown token). The rest is
//! the body, in which these placeholders are replaced first, so that seeds reach the
//! granted path:
//!
//! - `@R`: the base64 reply key whose secret this target holds;
//! - `@D`, `@S`: a document id (hex) and the base64 org stanza of a document sealed to `hr`;
//! - `@d`, `@s`: the same for a double-key document under `dk` (the org half).
//!
//! Invariants: no panic; never a 5xx; every refusal is JSON `{code, message}`; a 200 has one
//! result per item sent, at most `max_batch`; an item is granted only for a document this
//! target sealed, and the share sealed to our reply key opens that document's header.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use kluis_core::reply::{ReplyKey, SealedShare};
use kluis_core::{DocId, Header, Identity, LabelPublicKey, Metadata, Recipient, Share, Slot, Stanza, Unwrap, UnwrapError, UnwrapRequest};
use kluis_server::api::{Api, ApiConfig};
use kluis_server::{KeyService, KeySource, Policy, SqliteStore};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tower::ServiceExt;

const MAX_BATCH: usize = 16;
/// A fresh store every this many runs, so that the audit trail stays small.
const RUNS_PER_STORE: usize = 20_000;

static RT: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    // Blocking threads are kept, not restarted after 10 s idle: a thread started while an
    // input runs would look like a leak to LeakSanitizer.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_keep_alive(std::time::Duration::from_secs(1 << 30))
        .build()
        .unwrap()
});
static REPLY: LazyLock<ReplyKey> = LazyLock::new(|| ReplyKey::generate().unwrap());
static HOLDER: LazyLock<Identity> = LazyLock::new(|| Identity::from_secret_bytes([0x33; 32]));
static STATE: LazyLock<Mutex<Option<Fixture>>> = LazyLock::new(|| Mutex::new(None));

/// A store with labels and tokens, the API on it, and documents sealed to its labels.
struct Fixture {
    dir: PathBuf,
    api: Arc<Api<SqliteStore>>,
    router: Router,
    tokens: [String; 4],
    /// (doc id, header) of the documents sealed here.
    docs: Vec<(DocId, Header)>,
    placeholders: Vec<(&'static [u8], Vec<u8>)>,
    runs: usize,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.api.shutdown();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn scratch() -> PathBuf {
    // tmpfs where there is one: the audit writer fsyncs every commit.
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() {
        shm
    } else {
        std::env::temp_dir()
    }
}

/// Remove what earlier runs of this target left in `base` (statics are not dropped at exit)
/// when their process is gone.
fn remove_stale(base: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(prefix).and_then(|r| r.split('-').next()) else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn fixture(generation: u64) -> Fixture {
    if generation == 0 {
        remove_stale(&scratch(), "kluis-fuzz-unwrap-");
    }
    let dir = scratch().join(format!(
        "kluis-fuzz-unwrap-{}-{generation}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut store = KeyService::init_sqlite(
        &dir.join("store.db"),
        KeySource::File(&dir.join("master.key")),
    )
    .unwrap();
    let policy = |double_key| Policy {
        users: vec!["alice".into()],
        double_key,
        ..Policy::default()
    };
    let hr = store.create_label("hr", &policy(false), "fuzz").unwrap();
    let dk = store.create_label("dk", &policy(true), "fuzz").unwrap();
    let (alice, _) = store.create_token("alice", &[], None, "fuzz").unwrap();
    let (bob, _) = store.create_token("bob", &[], None, "fuzz").unwrap();
    let (revoked, id) = store.create_token("alice", &[], None, "fuzz").unwrap();
    store.revoke_token(&id, "fuzz").unwrap();
    let config = ApiConfig {
        max_batch: MAX_BATCH,
        rate_per_sec: 0.0,
        readers: 1,
        ..ApiConfig::default()
    };
    let api = Api::new(store, config, None).unwrap();
    let router = api.router();

    let seal = |label: &LabelPublicKey, double: bool| {
        let label = Recipient::Label(label.clone());
        let slot = if double {
            Slot::double(label, Recipient::Key(HOLDER.public_key())).unwrap()
        } else {
            Slot::single(label)
        };
        let sealed = kluis_core::seal(&[slot], &Metadata::default(), b"fuzz").unwrap();
        let header = Header::parse(&sealed).unwrap();
        let stanza = B64.encode(header.slots()[0][0].to_bytes()).into_bytes();
        (header, stanza)
    };
    let (h1, s1) = seal(&hr, false);
    let (h2, s2) = seal(&dk, true);
    let placeholders = vec![
        (&b"@R"[..], B64.encode(REPLY.public_bytes()).into_bytes()),
        (b"@D", h1.doc_id().to_string().into_bytes()),
        (b"@S", s1),
        (b"@d", h2.doc_id().to_string().into_bytes()),
        (b"@s", s2),
    ];
    Fixture {
        dir,
        api,
        router,
        tokens: [alice, bob, revoked, "kluis_not_a_token".into()],
        docs: vec![(h1.doc_id(), h1), (h2.doc_id(), h2)],
        placeholders,
        runs: 0,
    }
}

fn substitute(mut body: Vec<u8>, placeholders: &[(&[u8], Vec<u8>)]) -> Vec<u8> {
    for (from, to) in placeholders {
        let mut out = Vec::with_capacity(body.len());
        let mut i = 0;
        while i < body.len() {
            if body[i..].starts_with(from) {
                out.extend_from_slice(to);
                i += from.len();
            } else {
                out.push(body[i]);
                i += 1;
            }
        }
        body = out;
    }
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
    let bytes = B64.decode(v.as_str().expect("base64 string")).unwrap();
    bytes.try_into().expect("length")
}

/// A granted item: it must be one of our documents, and, when sealed to our reply key, its
/// share must open the document.
fn check_granted(
    fx: &Fixture,
    request_item: Option<&Value>,
    reply_key: Option<&str>,
    server_key: &[u8; 32],
    nonce: &Value,
    share: &Value,
) {
    let item = request_item.expect("a granted item was sent");
    let doc_hex = item["doc_id"].as_str().expect("doc_id is a string");
    let mut id = [0u8; 16];
    hex::decode_to_slice(doc_hex, &mut id).expect("granted doc_id is hex");
    let (doc_id, header) = fx
        .docs
        .iter()
        .find(|(d, _)| d.0 == id)
        .unwrap_or_else(|| panic!("granted a document this target never sealed: {doc_hex}"));
    let sealed = SealedShare {
        nonce: b64_array(nonce),
        body: b64_array(share),
    };
    if reply_key != Some(B64.encode(REPLY.public_bytes()).as_str()) {
        return;
    }
    let share = REPLY
        .opener(server_key)
        .unwrap()
        .open(doc_id, &sealed)
        .expect("the reply opens with our reply key");
    let released = Released(share);
    let keys: [&dyn Unwrap; 2] = [&released, &*HOLDER];
    header
        .unlock(&keys)
        .expect("a released share opens its document");
}

fn run(data: &[u8]) {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let mut state = STATE.lock().unwrap();
    if state.as_ref().is_none_or(|f| f.runs >= RUNS_PER_STORE) {
        static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        // Drop the old one first: it removes its directory.
        *state = None;
        *state = Some(fixture(
            GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        ));
    }
    let fx = state.as_mut().unwrap();
    fx.runs += 1;
    let fx = &*fx;

    let batch = mode & 1 == 1;
    let caller = usize::from((mode >> 1) & 3);
    let body = substitute(body.to_vec(), &fx.placeholders);
    let path = if batch {
        "/v1/unwrap/batch"
    } else {
        "/v1/unwrap"
    };
    let request = Request::post(path)
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {}", fx.tokens[caller]))
        .extension(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 4242))))
        .body(Body::from(body.clone()))
        .unwrap();
    let (status, reply) = RT.block_on(async {
        let response = fx.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 16 << 20)
            .await
            .unwrap();
        (status, bytes)
    });
    assert!(
        !status.is_server_error(),
        "{status}: {}",
        String::from_utf8_lossy(&reply)
    );
    let reply: Value = serde_json::from_slice(&reply).expect("every answer is JSON");
    if status != StatusCode::OK {
        assert!(reply["code"].is_string(), "{reply}");
        assert!(reply["message"].is_string(), "{reply}");
        return;
    }
    assert!(caller < 2, "a refused token was served: {reply}");
    // Accepted: the body was a JSON object the server understood.
    let request: Value = serde_json::from_slice(&body).expect("accepted body is JSON");
    let reply_key = request["reply_key"].as_str();
    assert_eq!(
        reply_key.map(|k| B64.decode(k).map(|b| b.len())),
        Some(Ok(32)),
        "accepted without a 32-byte reply key"
    );
    let server_key: [u8; 32] = b64_array(&reply["server_key"]);
    if batch {
        let sent = request["items"]
            .as_array()
            .expect("accepted batch has items");
        let got = reply["items"].as_array().expect("batch reply has items");
        assert!((1..=MAX_BATCH).contains(&sent.len()), "{}", sent.len());
        assert_eq!(sent.len(), got.len(), "one result per item");
        for (i, item) in got.iter().enumerate() {
            if item.get("error").is_some() {
                assert!(item["error"]["code"].is_string(), "{item}");
                assert!(item["error"]["message"].is_string(), "{item}");
            } else {
                check_granted(
                    fx,
                    sent.get(i),
                    reply_key,
                    &server_key,
                    &item["nonce"],
                    &item["share"],
                );
            }
        }
    } else {
        check_granted(
            fx,
            Some(&request),
            reply_key,
            &server_key,
            &reply["nonce"],
            &reply["share"],
        );
    }
}

fuzz_target!(|data: &[u8]| run(data));
