//! Secrets never leak from the key server: API tokens, store passphrases, label private keys
//! and the file keys it releases appear in none of its output (standard output and error of
//! `serve` and of the admin commands), in none of its answers except the sealed replies, and
//! the label private keys are never in the store file in the clear, in hex or in base64. A
//! destroyed version's sealed key is gone from the file and its write-ahead log.

mod common;

use std::path::Path;
use std::process::Command;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use common::{
    LOOPBACK, admin, admin_fails, bin, drain_stderr, get, label_key, post, post_bytes, serve,
};
use kluis_core::reply::{ReplyKey, SealedShare};
use kluis_core::{Header, LabelKey, LabelPublicKey, Metadata, Recipient, Slot};
use kluis_server::MasterKey;
use serde_json::{Value, json};

/// Every way a secret may be written down: raw, hex (both cases), base64 (all four
/// alphabets and paddings).
fn encodings(secret: &[u8]) -> Vec<Vec<u8>> {
    vec![
        secret.to_vec(),
        hex::encode(secret).into_bytes(),
        hex::encode_upper(secret).into_bytes(),
        STANDARD.encode(secret).into_bytes(),
        STANDARD_NO_PAD.encode(secret).into_bytes(),
        URL_SAFE.encode(secret).into_bytes(),
        URL_SAFE_NO_PAD.encode(secret).into_bytes(),
    ]
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// The named secrets, each in every encoding; fails naming the secret and where it was.
struct Secrets(Vec<(String, Vec<Vec<u8>>)>);

impl Secrets {
    fn new() -> Self {
        Secrets(Vec::new())
    }

    /// A text secret (token, passphrase): as written, and in the encodings of its bytes.
    fn text(&mut self, name: &str, s: &str) {
        self.0.push((name.to_owned(), encodings(s.as_bytes())));
    }

    /// A binary secret (key, share).
    fn bytes(&mut self, name: &str, b: &[u8]) {
        self.0.push((name.to_owned(), encodings(b)));
    }

    fn assert_absent(&self, place: &str, data: &[u8]) {
        for (name, forms) in &self.0 {
            for f in forms {
                assert!(
                    !contains(data, f),
                    "{name} leaked into {place}: {:?}",
                    String::from_utf8_lossy(f)
                );
            }
        }
    }
}

/// Run an admin command in `dir`; returns standard output and error together.
fn admin_output(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (bool, Vec<u8>) {
    let out = bin()
        .current_dir(dir)
        .envs(env.iter().copied())
        .args(args)
        .output()
        .unwrap();
    (out.status.success(), [out.stdout, out.stderr].concat())
}

/// The label's private key, unsealed with the store's master key file the way the store
/// seals it (associated data: the label and the version). There is no export command, so
/// the test reads the sealed bytes itself; it checks the result against the published key.
fn label_secret(dir: &Path, label: &LabelPublicKey) -> [u8; 32] {
    let conn = rusqlite::Connection::open(dir.join("kluis-server.db")).unwrap();
    let sealed: Vec<u8> = conn
        .query_row(
            "SELECT sealed_secret FROM key_versions WHERE label = ?1 AND kid = ?2",
            rusqlite::params![label.label(), label.kid()],
            |r| r.get(0),
        )
        .unwrap();
    let master = MasterKey::read_file(&dir.join("kluis-master.key")).unwrap();
    let mut aad = b"kluis-server/v1/label-key".to_vec();
    aad.push(label.label().len() as u8);
    aad.extend_from_slice(label.label().as_bytes());
    aad.extend_from_slice(&label.kid().to_be_bytes());
    let secret: [u8; 32] = master
        .open(&aad, &sealed)
        .expect("the label key unseals with the master key")
        .as_slice()
        .try_into()
        .unwrap();
    let key = LabelKey::from_secret_bytes(label.label(), label.kid(), secret).unwrap();
    assert_eq!(key.public_key(), label, "unsealed the right key");
    secret
}

/// The store file, its write-ahead log and shared-memory index, concatenated.
fn store_bytes(dir: &Path) -> Vec<u8> {
    [
        "kluis-server.db",
        "kluis-server.db-wal",
        "kluis-server.db-shm",
    ]
    .iter()
    .filter_map(|f| std::fs::read(dir.join(f)).ok())
    .collect::<Vec<_>>()
    .concat()
}

/// A document sealed to `label`; returns the single unwrap body, its header and the reply
/// key.
fn unwrap_body(label: &LabelPublicKey, plaintext: &[u8]) -> (Value, Header, ReplyKey) {
    let sealed = kluis_core::seal(
        &[Slot::single(Recipient::Label(label.clone()))],
        &Metadata::default().name("salaries-2025.xlsx"),
        plaintext,
    )
    .unwrap();
    let header = Header::parse(&sealed).unwrap();
    let reply = ReplyKey::generate().unwrap();
    let body = json!({
        "reply_key": STANDARD.encode(reply.public_bytes()),
        "doc_id": header.doc_id().to_string(),
        "stanza": STANDARD.encode(header.slots()[0][0].to_bytes()),
        "reason": "case 2025-117",
    });
    (body, header, reply)
}

fn b64_array<const N: usize>(v: &Value) -> [u8; N] {
    STANDARD
        .decode(v.as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap()
}

#[test]
fn tokens_keys_and_shares_appear_in_no_output_answer_or_store_file() {
    const MARKER: &[u8] = b"PLAINTEXT-MARKER-7f3a9c";
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut secrets = Secrets::new();
    let mut outputs: Vec<(String, Vec<u8>)> = Vec::new();
    let run = |outputs: &mut Vec<(String, Vec<u8>)>, args: &[&str]| {
        let (ok, out) = admin_output(d, args, &[]);
        assert!(ok, "{args:?}: {}", String::from_utf8_lossy(&out));
        outputs.push((format!("{args:?}"), out));
    };
    run(&mut outputs, &["init"]);
    run(&mut outputs, &["label", "create", "hr", "--user", "alice"]);
    run(
        &mut outputs,
        &["label", "create", "legal", "--user", "carol"],
    );
    // `token create` prints the token, once, on standard output: that is its purpose. Its
    // standard error (the token id) is checked like everything else.
    let create = |user: &str| {
        let out = bin()
            .current_dir(d)
            .args(["token", "create", "--user", user])
            .output()
            .unwrap();
        assert!(out.status.success());
        (
            String::from_utf8(out.stdout).unwrap().trim().to_owned(),
            out.stderr,
        )
    };
    let (alice, alice_err) = create("alice");
    let (revoked, revoked_err) = create("alice");
    secrets.text("alice's token", &alice);
    secrets.text("a revoked token", &revoked);
    outputs.push(("token create (stderr)".into(), alice_err));
    outputs.push(("token create (stderr)".into(), revoked_err.clone()));
    let revoked_id = String::from_utf8(revoked_err)
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned();
    run(&mut outputs, &["token", "revoke", &revoked_id]);
    run(&mut outputs, &["token", "list"]);
    run(&mut outputs, &["label", "list"]);
    run(&mut outputs, &["label", "show", "hr"]);

    let mut server = serve(dir, &LOOPBACK);
    let stderr = drain_stderr(&mut server.child);
    let d = server.dir.path().to_owned();
    let hr = label_key(&server, "hr");
    let legal = label_key(&server, "legal");
    let hr_secret = label_secret(&d, &hr);
    let legal_secret = label_secret(&d, &legal);
    secrets.bytes("the private key of hr", &hr_secret);
    secrets.bytes("the private key of legal", &legal_secret);
    secrets.bytes("the plaintext", MARKER);

    let url = format!("{}/v1/unwrap", server.base);
    let mut answers: Vec<(String, Vec<u8>)> = Vec::new();
    // Granted unwraps: the released file keys are secrets from now on.
    for _ in 0..5 {
        let (body, header, reply) = unwrap_body(&hr, MARKER);
        let (status, v, _) = post(&url, Some(&alice), &body);
        assert_eq!(status, 200, "{v}");
        let share = reply
            .opener(&b64_array(&v["server_key"]))
            .unwrap()
            .open(
                &header.doc_id(),
                &SealedShare {
                    nonce: b64_array(&v["nonce"]),
                    body: b64_array(&v["share"]),
                },
            )
            .unwrap();
        secrets.bytes("a released file key", share.expose_secret());
        // The sealed reply is the only form in which it leaves.
        answers.push(("a granted unwrap".into(), v.to_string().into_bytes()));
    }
    // Refusals of every kind, each answer kept.
    let (body, _, _) = unwrap_body(&legal, MARKER);
    let bad_token = format!("{alice}x");
    secrets.text("a mistyped token", &bad_token);
    let cases: Vec<(&str, Option<&str>, Vec<u8>)> = vec![
        (
            "denied by policy",
            Some(&alice),
            body.to_string().into_bytes(),
        ),
        (
            "a revoked token",
            Some(&revoked),
            body.to_string().into_bytes(),
        ),
        (
            "a mistyped token",
            Some(&bad_token),
            body.to_string().into_bytes(),
        ),
        ("malformed", Some(&alice), b"{\"reply_key\": 1}".to_vec()),
        ("not JSON", Some(&alice), b"\x00\x01".to_vec()),
    ];
    for (what, token, body) in cases {
        let (status, text, _) = post_bytes(&url, token, "application/json", &body);
        assert!((400..500).contains(&status), "{what}: {status} {text}");
        answers.push((what.to_owned(), text.into_bytes()));
    }
    let (status, text) = get(&format!("{}/v1/me/audit", server.base), Some(&alice));
    assert_eq!(status, 200);
    answers.push(("/v1/me/audit".into(), text.into_bytes()));
    let (status, text) = get(&format!("{}/v1/me/audit", server.base), Some(&revoked));
    assert_eq!(status, 401);
    answers.push(("/v1/me/audit, revoked".into(), text.into_bytes()));
    for path in ["/v1/labels", "/v1/labels/hr", "/metrics", "/readyz"] {
        let (_, text) = get(&format!("{}{path}", server.base), None);
        answers.push((path.into(), text.into_bytes()));
    }

    // Admin commands while serving.
    for args in [
        &["audit", "export"][..],
        &["audit", "verify"],
        &["token", "list"],
        &["label", "show", "hr"],
    ] {
        let (ok, out) = admin_output(&d, args, &[]);
        assert!(ok);
        outputs.push((format!("{args:?}"), out));
    }
    // Graceful stop, so that everything the server had to say is said.
    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(server.child.wait().unwrap().success());
    outputs.push(("serve (stderr)".into(), stderr.join().unwrap().into_bytes()));

    for (place, data) in outputs.iter().chain(&answers) {
        secrets.assert_absent(place, data);
    }
    // The store holds the label keys only sealed, the tokens only as keyed hashes, and no
    // file key at all. (What is scanned is the real file: the sealed key is in it.)
    let store = store_bytes(&d);
    let conn = rusqlite::Connection::open(d.join("kluis-server.db")).unwrap();
    let sealed: Vec<u8> = conn
        .query_row(
            "SELECT sealed_secret FROM key_versions WHERE label = 'hr'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(contains(&store, &sealed));
    secrets.assert_absent("the store file", &store);
}

#[test]
fn a_destroyed_version_leaves_no_sealed_key_in_the_store_file_or_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    admin(d, &["init"]);
    admin(d, &["label", "create", "hr", "--user", "alice"]);
    let server = serve(dir, &LOOPBACK);
    let v1 = label_key(&server, "hr");
    let d = server.dir.path().to_owned();
    let secret = label_secret(&d, &v1);
    let conn = rusqlite::Connection::open(d.join("kluis-server.db")).unwrap();
    let sealed: Vec<u8> = conn
        .query_row(
            "SELECT sealed_secret FROM key_versions WHERE label = 'hr' AND kid = 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    drop(conn);
    assert!(contains(&store_bytes(&d), &sealed));
    admin(&d, &["label", "rotate", "hr"]);
    admin(&d, &["label", "destroy", "hr", "1", "--confirm", "hr"]);
    // While the server is still running (its connections open).
    let bytes = store_bytes(&d);
    assert!(
        !contains(&bytes, &sealed),
        "the destroyed version's sealed key is still in the store files"
    );
    let mut s = Secrets::new();
    s.bytes("the destroyed private key", &secret);
    s.assert_absent("the store files", &bytes);
}

#[test]
fn store_passphrases_appear_in_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let right = "correct horse battery staple 8c1e";
    let wrong = "incorrect mule 44d0";
    let mut secrets = Secrets::new();
    secrets.text("the store passphrase", right);
    secrets.text("a wrong passphrase", wrong);
    std::fs::write(d.join("pw"), format!("{right}\n")).unwrap();
    std::fs::write(d.join("wrong"), format!("{wrong}\n")).unwrap();
    let mut outputs = Vec::new();
    let mut run = |args: &[&str], env: &[(&str, &str)], ok: bool| {
        let (success, out) = admin_output(d, args, env);
        assert_eq!(success, ok, "{args:?}: {}", String::from_utf8_lossy(&out));
        outputs.push((format!("{args:?}"), out));
    };
    run(&["--passphrase-file", "pw", "init"], &[], true);
    run(
        &[
            "--passphrase-file",
            "pw",
            "label",
            "create",
            "hr",
            "--user",
            "a",
        ],
        &[],
        true,
    );
    run(&["--passphrase-file", "wrong", "label", "list"], &[], false);
    run(
        &["--passphrase-env", "PW", "label", "list"],
        &[("PW", wrong)],
        false,
    );
    run(
        &["--passphrase-env", "PW", "label", "list"],
        &[("PW", right)],
        true,
    );
    run(
        &["--passphrase-env", "UNSET_VAR_1f2e", "label", "list"],
        &[],
        false,
    );
    run(&["label", "list"], &[], false);
    for (place, data) in &outputs {
        secrets.assert_absent(place, data);
    }
    let e = admin_fails(d, &["--passphrase-file", "wrong", "audit", "verify"]);
    secrets.assert_absent("audit verify with a wrong passphrase", e.as_bytes());
    let mut store = Vec::new();
    for f in ["kluis-server.db", "kluis-server.db-wal"] {
        if let Ok(b) = std::fs::read(d.join(f)) {
            store.extend(b);
        }
    }
    secrets.assert_absent("the store file", &store);
}
