//! Shared by the Microsoft Double Key Encryption tests (`dke.rs`, `dke_protocol.rs`,
//! `dke_attacks.rs`): an Entra-like identity provider (RS256, a JWKS file), a store with a DKE
//! label served with a `[dke]` table, and an Office-like client that reads the published JWK
//! and encrypts with the `openssl` command (another RSA implementation than the server's
//! aws-lc-rs).

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD};
use ring::signature::{self, RsaKeyPair, RsaPublicKeyComponents};
use serde_json::{Value, json};

use super::{Server, admin, get, post_full};

/// The organisation's Entra ID tenant (a v1 issuer).
pub const TENANT: &str = "https://sts.windows.net/11111111-2222-3333-4444-555555555555/";
/// A partner organisation's tenant.
pub const PARTNER: &str = "https://sts.windows.net/99999999-8888-7777-6666-555555555555/";
/// The DKE service's audience (its Application ID URI).
pub const AUDIENCE: &str = "https://dke.test";
const RSA_PKCS8: &[u8] = include_bytes!("../fixtures/oidc-rs256.pk8");

// ---------------------------------------------------------------------------------------------
// The identity provider

/// The identity provider's signing key (`kid` `k1`).
pub fn idp_key() -> RsaKeyPair {
    RsaKeyPair::from_pkcs8(RSA_PKCS8).unwrap()
}

/// The modulus of the identity provider's public key, big-endian.
pub fn idp_n() -> Vec<u8> {
    let c: RsaPublicKeyComponents<Vec<u8>> = idp_key().public().into();
    c.n
}

/// The identity provider's JWKS (the text of the server's `jwks_file`).
pub fn jwks() -> String {
    let c: RsaPublicKeyComponents<Vec<u8>> = idp_key().public().into();
    json!({"keys": [{"kty": "RSA", "kid": "k1", "use": "sig",
        "n": URL_SAFE_NO_PAD.encode(&c.n), "e": URL_SAFE_NO_PAD.encode(&c.e)}]})
    .to_string()
}

/// `base64url(head).base64url(claims)`: what a JWT's signature covers.
pub fn signing_input(head: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(head.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

/// A JWT with `claims`, signed RS256 by the identity provider.
pub fn sign(claims: &Value) -> String {
    let key = idp_key();
    let input = signing_input(&json!({"alg": "RS256", "typ": "JWT", "kid": "k1"}), claims);
    let mut sig = vec![0; key.public().modulus_len()];
    key.sign(
        &signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        input.as_bytes(),
        &mut sig,
    )
    .unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

/// The claims of a token Office gets from Entra ID for the DKE service.
pub fn dke_claims(upn: &str, groups: &[&str]) -> Value {
    let now = kluis_server::now_ms() / 1000;
    json!({"iss": TENANT, "aud": AUDIENCE, "scp": "user_impersonation", "upn": upn,
           "sub": format!("sub-{upn}"), "iat": now, "exp": now + 600, "groups": groups})
}

/// A DKE token of the organisation's tenant for `upn`, member of `groups`.
pub fn token(upn: &str, groups: &[&str]) -> String {
    sign(&dke_claims(upn, groups))
}

/// `v` with member `k` set to `x`.
pub fn with(mut v: Value, k: &str, x: Value) -> Value {
    v[k] = x;
    v
}

/// `v` without member `k`.
pub fn without(mut v: Value, k: &str) -> Value {
    v.as_object_mut().unwrap().remove(k);
    v
}

// ---------------------------------------------------------------------------------------------
// The server

/// The arguments of `serve`: `kluis.toml`, any loopback port, plain HTTP.
pub const SERVE: [&str; 5] = [
    "--config",
    "kluis.toml",
    "--listen",
    "127.0.0.1:0",
    "--insecure-http",
];

/// `[dke]` (audience [`AUDIENCE`], trusting `issuers`) and `[oidc]` (the [`TENANT`], name
/// `entra`, so one policy for both), then `dke_extra`.
pub fn config(issuers: &[&str], dke_extra: &str) -> String {
    let issuers = issuers
        .iter()
        .map(|i| format!("\"{i}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "[serve]\nrate_limit_per_sec = 0\n\
         [oidc]\nname = \"entra\"\nissuer = \"{TENANT}\"\naudience = \"api://kluis\"\n\
         jwks_file = \"jwks.json\"\nuser_claim = \"upn\"\n\
         [dke]\naudience = \"{AUDIENCE}\"\nissuers = [{issuers}]\n\
         jwks_file = \"jwks.json\"\n{dke_extra}"
    )
}

/// A store with label `medical` (DKE; user alice@org.nl, and `label_extra`, more arguments of
/// `label create`), the identity provider's `jwks.json` and `config` as `kluis.toml`; not
/// served yet.
pub fn store(config: &str, label_extra: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    admin(d, &["init"]);
    let mut create = vec![
        "label",
        "create",
        "medical",
        "--dke",
        "--user",
        "oidc:entra:alice@org.nl",
    ];
    create.extend_from_slice(label_extra);
    admin(d, &create);
    std::fs::write(d.join("jwks.json"), jwks()).unwrap();
    std::fs::write(d.join("kluis.toml"), config).unwrap();
    dir
}

/// `dir` served with [`SERVE`].
pub fn serve_http(dir: tempfile::TempDir) -> Server {
    super::serve(dir, &SERVE)
}

// ---------------------------------------------------------------------------------------------
// The Office-like client

/// DER: tag, length, content.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 128 {
        out.push(n as u8);
    } else {
        let bytes: Vec<u8> = n
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

fn der_uint(be: &[u8]) -> Vec<u8> {
    let mut v = be.to_vec();
    if v[0] & 0x80 != 0 {
        v.insert(0, 0);
    }
    der(0x02, &v)
}

/// The SubjectPublicKeyInfo of the RSA key of a JWK as the server publishes it (`n` padded
/// standard base64, `e` a JSON number), as the client builds it.
pub fn spki(key: &Value) -> Vec<u8> {
    let n = B64.decode(key["n"].as_str().unwrap()).unwrap();
    let e: Vec<u8> = key["e"]
        .as_u64()
        .unwrap()
        .to_be_bytes()
        .into_iter()
        .skip_while(|b| *b == 0)
        .collect();
    let rsa = der(0x30, &[der_uint(&n), der_uint(&e)].concat());
    let alg = der(
        0x30,
        &[
            &[
                0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
            ][..],
            &[0x05, 0x00],
        ]
        .concat(),
    );
    let bits = der(0x03, &[&[0u8][..], &rsa].concat());
    der(0x30, &[alg, bits].concat())
}

/// What `GET {base}/dke/{name}` publishes: (the key JSON, the whole answer).
pub fn fetch_key(base: &str, name: &str) -> (Value, Value) {
    let (status, body) = get(&format!("{base}/dke/{name}"), None);
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    (v["key"].clone(), v)
}

/// RSA-OAEP-256 (SHA-256, MGF1-SHA-256) with the `openssl` command, under the public key in
/// `key` (a JWK).
pub fn office_encrypt(key: &Value, plain: &[u8]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let (pub_der, input, output) = (
        dir.path().join("pub.der"),
        dir.path().join("in"),
        dir.path().join("out"),
    );
    std::fs::write(&pub_der, spki(key)).unwrap();
    std::fs::write(&input, plain).unwrap();
    let status = Command::new("openssl")
        .args(["pkeyutl", "-encrypt", "-pubin", "-keyform", "DER", "-inkey"])
        .arg(&pub_der)
        .args([
            "-pkeyopt",
            "rsa_padding_mode:oaep",
            "-pkeyopt",
            "rsa_oaep_md:sha256",
            "-pkeyopt",
            "rsa_mgf1_md:sha256",
            "-in",
        ])
        .arg(&input)
        .arg("-out")
        .arg(&output)
        .status()
        .expect("the openssl command");
    assert!(status.success(), "openssl pkeyutl failed");
    std::fs::read(output).unwrap()
}

/// `POST {kid}/decrypt` of `ct` as Office sends it: (status, body JSON, headers).
pub fn decrypt(kid: &str, token: Option<&str>, ct: &[u8]) -> (u16, Value, HashMap<String, String>) {
    post_full(
        &format!("{kid}/decrypt"),
        token,
        &json!({"alg": "RSA-OAEP-256", "value": B64.encode(ct)}),
    )
}

// ---------------------------------------------------------------------------------------------
// The audit trail

/// The first 16 bytes of SHA-256, hex: the document reference of a wrapped value.
pub fn doc_ref(ct: &[u8]) -> String {
    hex::encode(&ring::digest::digest(&ring::digest::SHA256, ct).as_ref()[..16])
}

/// The `dke.decrypt` records of the audit trail, oldest first.
pub fn dke_records(dir: &Path) -> Vec<Value> {
    admin(dir, &["audit", "export"])
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["action"] == "dke.decrypt")
        .collect()
}
