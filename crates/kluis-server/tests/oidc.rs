//! OpenID Connect bearer JWTs: signatures, algorithms, claims and the JWKS cache, with keys,
//! tokens and JWKS servers (plain HTTP and HTTPS on loopback) made here.
//!
//! The RS256 key in `fixtures/oidc-rs256.pk8` is a test key (ring cannot generate RSA keys);
//! the ES256 and EdDSA keys are generated per test.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use kluis_server::Principal;
use kluis_server::oidc::{JwksError, OidcConfig, OidcError, OidcVerifier};
use proptest::prelude::*;
use ring::rand::SystemRandom;
use ring::signature::{
    self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair, RsaPublicKeyComponents,
};
use serde_json::{Value, json};

const ISSUER: &str = "https://idp.example/realms/kluis";
const AUDIENCE: &str = "api://kluis";
/// The `now` given to `verify`; token times are relative to it.
const NOW: i64 = 1_700_000_000;
const RSA_PKCS8: &[u8] = include_bytes!("fixtures/oidc-rs256.pk8");

// ---------------------------------------------------------------------------------------------
// Keys and tokens

enum Pair {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

struct TestKey {
    kid: String,
    pair: Pair,
}

impl TestKey {
    fn rsa(kid: &str) -> Self {
        let pair = RsaKeyPair::from_pkcs8(RSA_PKCS8).expect("the RSA test key");
        TestKey {
            kid: kid.into(),
            pair: Pair::Rsa(pair),
        }
    }

    fn ec(kid: &str) -> Self {
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
        TestKey {
            kid: kid.into(),
            pair: Pair::Ec(pair),
        }
    }

    fn ed(kid: &str) -> Self {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        TestKey {
            kid: kid.into(),
            pair: Pair::Ed(pair),
        }
    }

    fn alg(&self) -> &'static str {
        match self.pair {
            Pair::Rsa(_) => "RS256",
            Pair::Ec(_) => "ES256",
            Pair::Ed(_) => "EdDSA",
        }
    }

    /// The public JWK, as an identity provider publishes it.
    fn jwk(&self) -> Value {
        let mut jwk = match &self.pair {
            Pair::Rsa(pair) => {
                let c: RsaPublicKeyComponents<Vec<u8>> = pair.public().into();
                json!({"kty": "RSA", "n": B64.encode(&c.n), "e": B64.encode(&c.e)})
            }
            Pair::Ec(pair) => {
                let point = pair.public_key().as_ref();
                assert_eq!(point.len(), 65);
                json!({"kty": "EC", "crv": "P-256",
                       "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..])})
            }
            Pair::Ed(pair) => {
                json!({"kty": "OKP", "crv": "Ed25519", "x": B64.encode(pair.public_key())})
            }
        };
        jwk["kid"] = json!(self.kid);
        jwk["use"] = json!("sig");
        jwk
    }

    fn sign(&self, message: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match &self.pair {
            Pair::Rsa(pair) => {
                let mut sig = vec![0; pair.public().modulus_len()];
                pair.sign(&signature::RSA_PKCS1_SHA256, &rng, message, &mut sig)
                    .unwrap();
                sig
            }
            Pair::Ec(pair) => pair.sign(&rng, message).unwrap().as_ref().to_vec(),
            Pair::Ed(pair) => pair.sign(message).as_ref().to_vec(),
        }
    }

    fn header(&self) -> Value {
        json!({"alg": self.alg(), "kid": self.kid, "typ": "JWT"})
    }

    /// A token with the standard header and these claims, signed by this key.
    fn token(&self, claims: &Value) -> String {
        self.token_with(&self.header(), claims)
    }

    fn token_with(&self, header: &Value, claims: &Value) -> String {
        compact(&header.to_string(), &claims.to_string(), self)
    }
}

/// `header.claims.signature`, signed by `key` over exactly these JSON texts.
fn compact(header: &str, claims: &str, key: &TestKey) -> String {
    let signed = format!("{}.{}", B64.encode(header), B64.encode(claims));
    let sig = key.sign(signed.as_bytes());
    format!("{signed}.{}", B64.encode(sig))
}

/// Claims that a correctly configured verifier accepts at [`NOW`].
fn claims() -> Value {
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "2f1c0a2e-6a55-4b8a-9c1e-6d7b3a0f9e11",
        "preferred_username": "alice",
        "groups": ["hr", "legal"],
        "iat": NOW - 10,
        "nbf": NOW - 10,
        "exp": NOW + 300,
        "jti": "7d3c2b1a-0001",
    })
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

fn without(mut claims: Value, key: &str) -> Value {
    claims.as_object_mut().unwrap().remove(key);
    claims
}

fn jwks(keys: &[&TestKey]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()}).to_string()
}

/// The `sub` of [`claims`].
const SUB: &str = "2f1c0a2e-6a55-4b8a-9c1e-6d7b3a0f9e11";

// ---------------------------------------------------------------------------------------------
// Verifiers

/// A configuration from TOML (as the server reads it), without a key source.
fn config(extra: &str) -> OidcConfig {
    toml::from_str(&format!(
        "issuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\n{extra}"
    ))
    .unwrap()
}

fn write_jwks(doc: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, doc).unwrap();
    (dir, path)
}

fn file_config(doc: &str, extra: &str) -> (tempfile::TempDir, OidcConfig) {
    let (dir, path) = write_jwks(doc);
    let mut c = config(extra);
    c.jwks_file = Some(path);
    (dir, c)
}

fn file_verifier(keys: &[&TestKey], extra: &str) -> (tempfile::TempDir, OidcVerifier) {
    let (dir, c) = file_config(&jwks(keys), extra);
    (dir, OidcVerifier::new(c).unwrap())
}

fn url_verifier(url: &str, extra: &str) -> OidcVerifier {
    let mut c = config(extra);
    c.jwks_url = Some(url.into());
    OidcVerifier::new(c).unwrap()
}

macro_rules! refused {
    ($result:expr, $pattern:pat) => {{
        let result = $result;
        assert!(
            matches!(result, Err($pattern)),
            "expected {}, got {result:?}",
            stringify!($pattern)
        );
    }};
}

// ---------------------------------------------------------------------------------------------
// A JWKS server on loopback, answering what the test says and counting the requests it read.

#[derive(Clone)]
enum Reply {
    Ok(String),
    Status(u16),
    /// Read the request, then never answer.
    Hang,
}

struct JwksServer {
    url: String,
    hits: Arc<AtomicUsize>,
    reply: Arc<Mutex<Reply>>,
}

impl JwksServer {
    fn http(reply: Reply) -> Self {
        Self::start(TcpListener::bind("127.0.0.1:0").unwrap(), reply, None)
    }

    fn https(reply: Reply, tls: Arc<rustls::ServerConfig>) -> Self {
        Self::start(TcpListener::bind("127.0.0.1:0").unwrap(), reply, Some(tls))
    }

    fn start(listener: TcpListener, reply: Reply, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let addr = listener.local_addr().unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let server = JwksServer {
            url: format!("{scheme}://{addr}/keys"),
            hits: Arc::default(),
            reply: Arc::new(Mutex::new(reply)),
        };
        let (hits, reply) = (server.hits.clone(), server.reply.clone());
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (hits, reply, tls) = (hits.clone(), reply.clone(), tls.clone());
                thread::spawn(move || match tls {
                    None => answer(stream, &hits, &reply),
                    Some(tls) => {
                        let conn = rustls::ServerConnection::new(tls).unwrap();
                        answer(rustls::StreamOwned::new(conn, stream), &hits, &reply);
                    }
                });
            }
        });
        server
    }

    fn set(&self, reply: Reply) {
        *self.reply.lock().unwrap() = reply;
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn answer(mut stream: impl Read + Write, hits: &AtomicUsize, reply: &Mutex<Reply>) {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return, // closed, or the TLS handshake failed
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    assert!(request.starts_with(b"GET /keys "), "unexpected request");
    hits.fetch_add(1, Ordering::SeqCst);
    let reply = reply.lock().unwrap().clone();
    let (status, body) = match reply {
        Reply::Ok(body) => (200, body),
        Reply::Status(status) => (status, "{}".into()),
        Reply::Hang => {
            thread::sleep(Duration::from_secs(30));
            return;
        }
    };
    let response = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes());
    let _ = stream.flush();
}

/// A loopback address where nothing listens.
fn dead_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A test CA and a server certificate for 127.0.0.1 it issued: the rustls server config and
/// the CA's PEM.
fn tls_server() -> (Arc<rustls::ServerConfig>, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kluis test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        )
        .unwrap();
    (Arc::new(config), ca_cert.pem())
}

// ---------------------------------------------------------------------------------------------
// Accepted tokens

/// Alice of [`claims`], namespaced by the default issuer name `idp`.
fn assert_alice(principal: Principal) {
    assert_eq!(principal.user, "oidc:idp:alice");
    assert_eq!(principal.groups, ["oidc:idp:hr", "oidc:idp:legal"]);
    assert_eq!(
        principal.credential,
        format!("oidc:idp:{SUB}#7d3c2b1a-0001")
    );
}

#[test]
fn verifier_is_send_and_sync() {
    fn shared<T: Send + Sync>() {}
    shared::<OidcVerifier>();
}

#[test]
fn valid_rs256_es256_eddsa_tokens_are_accepted_with_user_and_groups() {
    let keys = [TestKey::rsa("rsa"), TestKey::ec("ec"), TestKey::ed("ed")];
    let (_dir, v) = file_verifier(&keys.iter().collect::<Vec<_>>(), "");
    for key in &keys {
        let principal = v.verify(&key.token(&claims()), NOW).unwrap();
        assert_alice(principal);
    }
}

#[test]
fn the_credential_is_the_subject_and_the_jti() {
    let key = TestKey::ed("ed");
    let (_dir, v) = file_verifier(&[&key], "");
    let token = key.token(&without(claims(), "jti"));
    let principal = v.verify(&token, NOW).unwrap();
    assert_eq!(principal.credential, format!("oidc:idp:{SUB}"));
    // `#` and `%` cannot make one subject's credential look like another's with a `jti`.
    let odd = with(with(claims(), "sub", json!("a#b%")), "jti", json!("c#d"));
    let p = v.verify(&key.token(&odd), NOW).unwrap();
    assert_eq!(p.credential, "oidc:idp:a%23b%25#c%23d");
    // The subject is required (it names the credential), the user claim does not replace it.
    let no_sub = v.verify(&key.token(&without(claims(), "sub")), NOW);
    assert!(
        matches!(&no_sub, Err(OidcError::MissingClaim(c)) if c == "sub"),
        "{no_sub:?}"
    );
    for bad in [json!(""), json!(7), json!("a\nb")] {
        refused!(
            v.verify(&key.token(&with(claims(), "sub", bad.clone())), NOW),
            OidcError::BadClaim { .. }
        );
        refused!(
            v.verify(&key.token(&with(claims(), "jti", bad)), NOW),
            OidcError::BadClaim { .. }
        );
    }
}

#[test]
fn the_issuer_name_prefixes_users_groups_and_credentials() {
    let key = TestKey::ed("ed");
    let (_dir, v) = file_verifier(&[&key], "name = \"entra\"");
    let p = v.verify(&key.token(&claims()), NOW).unwrap();
    assert_eq!(p.user, "oidc:entra:alice");
    assert_eq!(p.groups, ["oidc:entra:hr", "oidc:entra:legal"]);
    assert_eq!(p.credential, format!("oidc:entra:{SUB}#7d3c2b1a-0001"));
    // A user claim that looks like another source's name stays in this issuer's namespace.
    for user in ["admin:unknown", "scheduler", "oidc:other:alice"] {
        let c = with(claims(), "preferred_username", json!(user));
        let p = v.verify(&key.token(&c), NOW).unwrap();
        assert_eq!(p.user, format!("oidc:entra:{user}"));
    }
    for bad in ["", "Entra", "en:tra", "a b", &"x".repeat(33)] {
        let (_dir, mut c) = file_config(&jwks(&[&key]), "");
        c.name = bad.to_owned();
        refused!(OidcVerifier::new(c), OidcError::Config(_));
    }
}

#[test]
fn configured_claim_names_pick_user_and_groups() {
    let key = TestKey::ec("ec");
    let (_dir, v) = file_verifier(&[&key], "user_claim = \"oid\"\ngroups_claim = \"roles\"");
    let c = with(
        claims(),
        "oid",
        json!("00000000-0000-0000-0000-00000000000a"),
    );
    let c = with(c, "roles", json!(["admin"]));
    let p = v.verify(&key.token(&c), NOW).unwrap();
    assert_eq!(p.user, "oidc:idp:00000000-0000-0000-0000-00000000000a");
    assert_eq!(p.groups, ["oidc:idp:admin"]);
    // No fallback to another claim: without `oid` the token is refused.
    let result = v.verify(&key.token(&without(c, "oid")), NOW);
    assert!(
        matches!(&result, Err(OidcError::MissingClaim(claim)) if claim == "oid"),
        "{result:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Issuer, audience, times

#[test]
fn issuer_must_match_exactly() {
    let key = TestKey::ed("ed");
    let (_dir, v) = file_verifier(&[&key], "");
    for iss in [
        "https://evil.example/realms/kluis",
        &format!("{ISSUER}/"),
        "",
    ] {
        refused!(
            v.verify(&key.token(&with(claims(), "iss", json!(iss))), NOW),
            OidcError::WrongIssuer
        );
    }
    refused!(
        v.verify(&key.token(&without(claims(), "iss")), NOW),
        OidcError::MissingClaim(_)
    );
    refused!(
        v.verify(&key.token(&with(claims(), "iss", json!([ISSUER]))), NOW),
        OidcError::BadClaim { .. }
    );
}

#[test]
fn audience_string_or_array_must_contain_ours() {
    let key = TestKey::ed("ed");
    let (_dir, v) = file_verifier(&[&key], "");
    let aud = |a: Value| key.token(&with(claims(), "aud", a));
    v.verify(&aud(json!(["other", AUDIENCE])), NOW).unwrap();
    refused!(
        v.verify(&aud(json!("other")), NOW),
        OidcError::WrongAudience
    );
    refused!(
        v.verify(&aud(json!(["other"])), NOW),
        OidcError::WrongAudience
    );
    refused!(v.verify(&aud(json!([])), NOW), OidcError::WrongAudience);
    refused!(
        v.verify(&aud(json!([1, AUDIENCE])), NOW),
        OidcError::BadClaim { .. }
    );
    refused!(
        v.verify(&key.token(&without(claims(), "aud")), NOW),
        OidcError::MissingClaim(_)
    );
}

#[test]
fn several_configured_audiences() {
    let key = TestKey::ed("ed");
    let (dir, mut c) = file_config(&jwks(&[&key]), "");
    c.audience = vec!["api://kluis".into(), "6f1a9c2e-client-id".into()];
    let v = OidcVerifier::new(c).unwrap();
    v.verify(
        &key.token(&with(claims(), "aud", json!("6f1a9c2e-client-id"))),
        NOW,
    )
    .unwrap();
    v.verify(&key.token(&claims()), NOW).unwrap();
    refused!(
        v.verify(
            &key.token(&with(claims(), "aud", json!("api://other"))),
            NOW
        ),
        OidcError::WrongAudience
    );
    drop(dir);
}

#[test]
fn expiry_with_leeway_edges() {
    let key = TestKey::ed("ed");
    let (_dir, v) = file_verifier(&[&key], ""); // leeway 60
    let exp = |t: i64| key.token(&with(claims(), "exp", json!(t)));
    v.verify(&exp(NOW + 1), NOW).unwrap();
    v.verify(&exp(NOW - 59), NOW).unwrap();
    refused!(v.verify(&exp(NOW - 60), NOW), OidcError::Expired);
    refused!(v.verify(&exp(NOW - 3600), NOW), OidcError::Expired);
    // Fractional NumericDates are allowed (and floored).
    let frac = key.token(&with(claims(), "exp", json!(NOW as f64 - 59.5)));
    refused!(v.verify(&frac, NOW), OidcError::Expired);
    refused!(
        v.verify(&key.token(&without(claims(), "exp")), NOW),
        OidcError::MissingClaim(_)
    );
    refused!(
        v.verify(
            &key.token(&with(claims(), "exp", json!((NOW + 300).to_string()))),
            NOW
        ),
        OidcError::BadClaim { .. }
    );

    let (_dir, strict) = file_verifier(&[&key], "leeway_secs = 0");
    strict.verify(&exp(NOW + 1), NOW).unwrap();
    refused!(strict.verify(&exp(NOW), NOW), OidcError::Expired);
}

#[test]
fn not_yet_valid_with_leeway_edges() {
    let key = TestKey::ed("ed");
    let (_dir, v) = file_verifier(&[&key], "");
    for claim in ["nbf", "iat"] {
        let at = |t: i64| key.token(&with(claims(), claim, json!(t)));
        v.verify(&at(NOW + 60), NOW).unwrap();
        refused!(v.verify(&at(NOW + 61), NOW), OidcError::NotYetValid);
        refused!(v.verify(&at(NOW + 3600), NOW), OidcError::NotYetValid);
        v.verify(&key.token(&without(claims(), claim)), NOW)
            .unwrap();
    }
}

#[test]
fn expiry_far_ahead_is_refused() {
    let key = TestKey::ed("ed");
    let (_dir, v) = file_verifier(&[&key], "");
    // Without `iat` and `nbf` (with them, see `lifetime_is_measured_from_iat_or_nbf`).
    let untimed = without(without(claims(), "iat"), "nbf");
    let exp = |t: i64| key.token(&with(untimed.clone(), "exp", json!(t)));
    v.verify(&exp(NOW + 86_400), NOW).unwrap();
    refused!(
        v.verify(&exp(NOW + 86_401), NOW),
        OidcError::LifetimeTooLong
    );
    refused!(v.verify(&exp(i64::MAX), NOW), OidcError::LifetimeTooLong);
    let huge = key.token(&with(claims(), "exp", json!(1e300)));
    refused!(v.verify(&huge, NOW), OidcError::LifetimeTooLong);
    // With `iat`, `exp` far ahead of now is refused as well.
    let issued = |t: i64| key.token(&with(with(claims(), "iat", json!(NOW)), "exp", json!(t)));
    v.verify(&issued(NOW + 86_400), NOW).unwrap();
    refused!(
        v.verify(&issued(NOW + 86_401), NOW),
        OidcError::LifetimeTooLong
    );
}

/// Issue 14, defect 5: a token issued a year ago with `exp` 23 h ahead was accepted.
#[test]
fn lifetime_is_measured_from_iat_or_nbf() {
    let key = TestKey::ed("ed");
    let (_dir, v) = file_verifier(&[&key], ""); // at most 86400 s
    let year = 365 * 86_400;
    let times = |iat: Option<i64>, nbf: Option<i64>, exp: i64| {
        let mut c = with(without(without(claims(), "iat"), "nbf"), "exp", json!(exp));
        if let Some(t) = iat {
            c = with(c, "iat", json!(t));
        }
        if let Some(t) = nbf {
            c = with(c, "nbf", json!(t));
        }
        key.token(&c)
    };
    let exp = NOW + 23 * 3600;
    refused!(
        v.verify(&times(Some(NOW - year), None, exp), NOW),
        OidcError::LifetimeTooLong
    );
    refused!(
        v.verify(&times(None, Some(NOW - year), exp), NOW),
        OidcError::LifetimeTooLong
    );
    // `iat` decides when both are present: a late `nbf` does not shorten a long life.
    refused!(
        v.verify(&times(Some(NOW - year), Some(NOW - 10), exp), NOW),
        OidcError::LifetimeTooLong
    );
    // Edges: exactly 24 h from issue to expiry is accepted, a second more is not.
    v.verify(&times(Some(NOW - 3600), None, NOW - 3600 + 86_400), NOW)
        .unwrap();
    refused!(
        v.verify(&times(Some(NOW - 3600), None, NOW - 3600 + 86_401), NOW),
        OidcError::LifetimeTooLong
    );
    v.verify(&times(None, Some(NOW - 3600), NOW - 3600 + 86_400), NOW)
        .unwrap();
    // Neither claim: only `exp - now` bounds it.
    v.verify(&times(None, None, exp), NOW).unwrap();
    refused!(
        v.verify(&times(None, None, NOW + 86_401), NOW),
        OidcError::LifetimeTooLong
    );
}

// ---------------------------------------------------------------------------------------------
// Signatures and algorithms

#[test]
fn bad_signature_is_refused() {
    let rsa = TestKey::rsa("rsa");
    let ec = TestKey::ec("ec");
    let (_dir, v) = file_verifier(&[&rsa, &ec], "");
    // The same kid, another key.
    let impostor = TestKey::ec("ec");
    refused!(
        v.verify(&impostor.token(&claims()), NOW),
        OidcError::BadSignature
    );
    // A flipped signature byte.
    let token = rsa.token(&claims());
    let (signed, sig) = token.rsplit_once('.').unwrap();
    let mut sig = B64.decode(sig).unwrap();
    sig[10] ^= 1;
    let flipped = format!("{signed}.{}", B64.encode(&sig));
    refused!(v.verify(&flipped, NOW), OidcError::BadSignature);
}

#[test]
fn tampered_payload_is_refused() {
    let key = TestKey::ec("ec");
    let (_dir, v) = file_verifier(&[&key], "");
    let token = key.token(&claims());
    let parts: Vec<&str> = token.split('.').collect();
    let admin = B64.encode(with(claims(), "groups", json!(["hr", "legal", "admin"])).to_string());
    let tampered = format!("{}.{admin}.{}", parts[0], parts[2]);
    refused!(v.verify(&tampered, NOW), OidcError::BadSignature);
    // The same with the header: the signature covers both.
    let header = B64.encode(json!({"alg": "ES256", "kid": "ec"}).to_string());
    let tampered = format!("{header}.{}.{}", parts[1], parts[2]);
    refused!(v.verify(&tampered, NOW), OidcError::BadSignature);
}

#[test]
fn alg_none_is_refused() {
    let key = TestKey::ed("ed");
    let (_dir, v) = file_verifier(&[&key], "");
    let payload = B64.encode(claims().to_string());
    for header in [
        json!({"alg": "none"}),
        json!({"alg": "none", "kid": "ed"}),
        json!({"alg": "None", "kid": "ed"}),
        json!({"alg": null, "kid": "ed"}),
        json!({"kid": "ed"}),
    ] {
        let header = B64.encode(header.to_string());
        refused!(
            v.verify(&format!("{header}.{payload}."), NOW),
            OidcError::Malformed(_)
        );
        // Even with something in the signature part.
        let forged = format!("{header}.{payload}.{}", B64.encode([0u8; 64]));
        refused!(v.verify(&forged, NOW), OidcError::UnsupportedAlgorithm);
    }
}

#[test]
fn hs256_signed_with_the_rsa_public_key_is_refused() {
    let rsa = TestKey::rsa("rsa");
    let (_dir, v) = file_verifier(&[&rsa], "");
    let Pair::Rsa(pair) = &rsa.pair else {
        unreachable!()
    };
    let c: RsaPublicKeyComponents<Vec<u8>> = pair.public().into();
    // The classic confusion: use the public key (as DER, as the JWK text, as n) as the HMAC
    // secret, hoping the verifier feeds "its key" to HMAC.
    let secrets = [
        pair.public().as_ref().to_vec(),
        rsa.jwk().to_string().into_bytes(),
        c.n.clone(),
    ];
    for secret in secrets {
        for alg in ["HS256", "HS384", "HS512"] {
            let header = json!({"alg": alg, "kid": "rsa", "typ": "JWT"}).to_string();
            let signed = format!(
                "{}.{}",
                B64.encode(header),
                B64.encode(claims().to_string())
            );
            let hmac_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
            let tag = ring::hmac::sign(&hmac_key, signed.as_bytes());
            let token = format!("{signed}.{}", B64.encode(tag.as_ref()));
            refused!(v.verify(&token, NOW), OidcError::UnsupportedAlgorithm);
        }
    }
}

#[test]
fn other_algorithms_are_refused() {
    let rsa = TestKey::rsa("rsa");
    let (_dir, v) = file_verifier(&[&rsa], "");
    for alg in [
        "PS256", "RS384", "RS512", "ES384", "ES512", "Ed25519", "rs256", "RSA-OAEP", "",
    ] {
        let header = json!({"alg": alg, "kid": "rsa"});
        refused!(
            v.verify(&rsa.token_with(&header, &claims()), NOW),
            OidcError::UnsupportedAlgorithm
        );
    }
}

#[test]
fn the_key_type_decides_the_algorithm() {
    let rsa = TestKey::rsa("rsa");
    let ec = TestKey::ec("ec");
    let ed = TestKey::ed("ed");
    let (_dir, v) = file_verifier(&[&rsa, &ec, &ed], "");
    // A token whose alg does not fit the key its kid names.
    for (signer, alg, kid) in [
        (&ec, "ES256", "rsa"),
        (&rsa, "RS256", "ec"),
        (&ed, "EdDSA", "ec"),
        (&ec, "ES256", "ed"),
    ] {
        let header = json!({"alg": alg, "kid": kid});
        refused!(
            v.verify(&signer.token_with(&header, &claims()), NOW),
            OidcError::AlgorithmMismatch
        );
    }
}

#[test]
fn a_jwk_whose_alg_disagrees_with_its_type_is_not_used() {
    let ec = TestKey::ec("ec");
    let ed = TestKey::ed("ed");
    let mut ec_jwk = ec.jwk();
    ec_jwk["alg"] = json!("RS256");
    let doc = json!({"keys": [ec_jwk, ed.jwk()]}).to_string();
    let (_dir, c) = file_config(&doc, "");
    let v = OidcVerifier::new(c).unwrap();
    v.verify(&ed.token(&claims()), NOW).unwrap();
    refused!(v.verify(&ec.token(&claims()), NOW), OidcError::UnknownKey);

    // With a matching `alg` the same key is used.
    let mut ec_jwk = ec.jwk();
    ec_jwk["alg"] = json!("ES256");
    let (_dir, c) = file_config(&json!({"keys": [ec_jwk]}).to_string(), "");
    OidcVerifier::new(c)
        .unwrap()
        .verify(&ec.token(&claims()), NOW)
        .unwrap();
}

#[test]
fn keys_in_the_header_are_ignored() {
    let legit = TestKey::ed("ed");
    let (_dir, v) = file_verifier(&[&legit], "");
    let attacker = TestKey::ed("attacker");
    for kid in ["attacker", "ed"] {
        let header = json!({"alg": "EdDSA", "kid": kid, "jwk": attacker.jwk(),
                            "jku": "https://evil.example/keys"});
        let token = attacker.token_with(&header, &claims());
        let result = v.verify(&token, NOW);
        assert!(
            matches!(result, Err(OidcError::UnknownKey | OidcError::BadSignature)),
            "{result:?}"
        );
    }
}

#[test]
fn header_crit_cty_and_typ() {
    let key = TestKey::ed("ed");
    let (_dir, v) = file_verifier(&[&key], "");
    let header = |extra: Value| {
        let mut h = json!({"alg": "EdDSA", "kid": "ed"});
        for (k, val) in extra.as_object().unwrap() {
            h[k] = val.clone();
        }
        key.token_with(&h, &claims())
    };
    for typ in [
        "JWT",
        "jwt",
        "at+jwt",
        "AT+JWT",
        "application/at+jwt",
        "application/jwt",
    ] {
        v.verify(&header(json!({"typ": typ})), NOW).unwrap();
    }
    for typ in [
        json!("JOSE"),
        json!("at+jwt+x"),
        json!(""),
        json!(1),
        json!(null),
    ] {
        refused!(
            v.verify(&header(json!({"typ": typ})), NOW),
            OidcError::UnsupportedHeader(_)
        );
    }
    refused!(
        v.verify(&header(json!({"crit": ["exp"], "exp": 1})), NOW),
        OidcError::UnsupportedHeader(_)
    );
    refused!(
        v.verify(&header(json!({"crit": []})), NOW),
        OidcError::UnsupportedHeader(_)
    );
    refused!(
        v.verify(&header(json!({"cty": "JWT"})), NOW),
        OidcError::UnsupportedHeader(_)
    );
}

#[test]
fn duplicate_members_are_refused() {
    let key = TestKey::ed("ed");
    let (_dir, v) = file_verifier(&[&key], "");
    let good = claims().to_string();
    // A claims set that last-wins and first-wins parsers would read differently.
    let dup = good.replacen('{', "{\"iss\":\"https://evil.example\",", 1);
    let header = key.header().to_string();
    v.verify(&compact(&header, &good, &key), NOW).unwrap();
    refused!(
        v.verify(&compact(&header, &dup, &key), NOW),
        OidcError::Malformed(_)
    );
    let dup_header = r#"{"alg":"EdDSA","kid":"ed","alg":"EdDSA"}"#;
    refused!(
        v.verify(&compact(dup_header, &good, &key), NOW),
        OidcError::Malformed(_)
    );
}

#[test]
fn kid_rule() {
    let ec = TestKey::ec("ec");
    let ed = TestKey::ed("ed");
    let no_kid = |k: &TestKey| k.token_with(&json!({"alg": k.alg()}), &claims());
    // One key: a token without kid is accepted.
    let (_dir, one) = file_verifier(&[&ed], "");
    one.verify(&no_kid(&ed), NOW).unwrap();
    // Several keys: kid is required.
    let (_dir, two) = file_verifier(&[&ec, &ed], "");
    refused!(two.verify(&no_kid(&ed), NOW), OidcError::MissingKeyId);
    two.verify(&ed.token(&claims()), NOW).unwrap();
    // A kid the key set does not have.
    let other = TestKey::ed("other");
    refused!(
        one.verify(&other.token(&claims()), NOW),
        OidcError::UnknownKey
    );
    // kid must be a string.
    let header = json!({"alg": "EdDSA", "kid": 7});
    refused!(
        one.verify(&ed.token_with(&header, &claims()), NOW),
        OidcError::Malformed(_)
    );
}

// ---------------------------------------------------------------------------------------------
// User and groups

#[test]
fn user_claim_rules() {
    let key = TestKey::ed("ed");
    let (_dir, v) = file_verifier(&[&key], "");
    let user = |u: Value| key.token(&with(claims(), "preferred_username", u));
    let long = "u".repeat(256);
    let user_of = |u: Value| v.verify(&user(u), NOW).unwrap().user;
    assert_eq!(user_of(json!(long)), format!("oidc:idp:{long}"));
    assert_eq!(user_of(json!("ß·ü")), "oidc:idp:ß·ü");
    for bad in [
        json!(""),
        json!("u".repeat(257)),
        json!("al\nice"),
        json!(42),
        json!(["alice"]),
    ] {
        refused!(v.verify(&user(bad), NOW), OidcError::BadClaim { .. });
    }
    refused!(
        v.verify(&key.token(&without(claims(), "preferred_username")), NOW),
        OidcError::MissingClaim(_)
    );
}

#[test]
fn groups_claim_rules() {
    let key = TestKey::ed("ed");
    let (_dir, v) = file_verifier(&[&key], "");
    let groups = |g: Value| key.token(&with(claims(), "groups", g));
    assert_eq!(
        v.verify(&groups(json!("hr")), NOW).unwrap().groups,
        ["oidc:idp:hr"]
    );
    assert!(v.verify(&groups(json!([])), NOW).unwrap().groups.is_empty());
    let absent = key.token(&without(claims(), "groups"));
    assert!(v.verify(&absent, NOW).unwrap().groups.is_empty());
    let many: Vec<String> = (0..256).map(|i| format!("g{i}")).collect();
    let prefixed: Vec<String> = many.iter().map(|g| format!("oidc:idp:{g}")).collect();
    assert_eq!(
        v.verify(&groups(json!(many)), NOW).unwrap().groups,
        prefixed
    );
    let too_many: Vec<String> = (0..257).map(|i| format!("g{i}")).collect();
    for bad in [
        json!(too_many),
        json!([1]),
        json!(["hr", null]),
        json!([""]),
        json!({"hr": 1}),
    ] {
        refused!(v.verify(&groups(bad), NOW), OidcError::BadClaim { .. });
    }
}

#[test]
fn entra_groups_overage_is_refused() {
    let key = TestKey::ed("ed");
    let (_dir, v) = file_verifier(&[&key], "");
    let overage = with(
        without(claims(), "groups"),
        "_claim_names",
        json!({"groups": "src1"}),
    );
    let overage = with(
        overage,
        "_claim_sources",
        json!({"src1": {"endpoint": "https://graph.microsoft.com/v1.0/users/x/getMemberObjects"}}),
    );
    refused!(
        v.verify(&key.token(&overage), NOW),
        OidcError::GroupsOverage
    );
    let implicit = with(without(claims(), "groups"), "hasgroups", json!(true));
    refused!(
        v.verify(&key.token(&implicit), NOW),
        OidcError::GroupsOverage
    );
}

// ---------------------------------------------------------------------------------------------
// Sizes and messages

#[test]
fn oversized_token_is_refused() {
    let key = TestKey::ed("ed");
    let (_dir, v) = file_verifier(&[&key], "");
    let padded = |n: usize| key.token(&with(claims(), "pad", json!("x".repeat(n))));
    let small = padded(5000);
    assert!(small.len() < 8192);
    v.verify(&small, NOW).unwrap();
    let big = padded(7000);
    assert!(big.len() > 8192);
    refused!(v.verify(&big, NOW), OidcError::TooLarge);
    refused!(v.verify(&"a".repeat(1 << 20), NOW), OidcError::TooLarge);
}

#[test]
fn messages_never_echo_the_token() {
    const MARK: &str = "SECRETMARK";
    let key = TestKey::ed("ed");
    let (_dir, v) = file_verifier(&[&key], "");
    let tokens = [
        key.token_with(&json!({"alg": MARK, "kid": "ed"}), &claims()),
        key.token_with(&json!({"alg": "EdDSA", "kid": MARK}), &claims()),
        key.token_with(
            &json!({"alg": "EdDSA", "kid": "ed", "typ": MARK}),
            &claims(),
        ),
        key.token(&with(claims(), "iss", json!(MARK))),
        key.token(&with(claims(), "aud", json!(MARK))),
        key.token(&with(
            claims(),
            "preferred_username",
            json!(format!("{MARK}\n")),
        )),
        key.token(&with(claims(), "groups", json!([MARK, 1]))),
        format!("{MARK}.{MARK}.{MARK}"),
        format!("{MARK}{}", key.token(&claims())),
    ];
    for token in tokens {
        let err = v.verify(&token, NOW).unwrap_err();
        let message = err.to_string();
        assert!(!message.contains(MARK), "{message}");
        assert!(!format!("{err:?}").contains(MARK), "{err:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// The JWKS from a file

#[test]
fn a_bad_jwks_file_stops_the_start() {
    let ed = TestKey::ed("ed");
    let (_dir, c) = file_config("{ not json", "");
    refused!(
        OidcVerifier::new(c),
        OidcError::Jwks(JwksError::Malformed(_))
    );
    let mut c = config("");
    c.jwks_file = Some("/nonexistent/kluis/jwks.json".into());
    refused!(
        OidcVerifier::new(c),
        OidcError::Jwks(JwksError::Read { .. })
    );
    // Only an encryption key: nothing to verify with.
    let mut enc = ed.jwk();
    enc["use"] = json!("enc");
    let (_dir, c) = file_config(&json!({"keys": [enc]}).to_string(), "");
    refused!(
        OidcVerifier::new(c),
        OidcError::Jwks(JwksError::NoUsableKeys)
    );
    // Unsupported key types and curves only.
    let doc = json!({"keys": [
        {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
        {"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA", "kid": "p384"},
        {"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "tiny-rsa"},
    ]});
    let (_dir, c) = file_config(&doc.to_string(), "");
    refused!(
        OidcVerifier::new(c),
        OidcError::Jwks(JwksError::NoUsableKeys)
    );
    // Too many keys, too large.
    let many: Vec<Value> = (0..65).map(|_| ed.jwk()).collect();
    let (_dir, c) = file_config(&json!({"keys": many}).to_string(), "");
    refused!(
        OidcVerifier::new(c),
        OidcError::Jwks(JwksError::TooManyKeys)
    );
    let big = json!({"keys": [ed.jwk()], "pad": "x".repeat(300 * 1024)});
    let (_dir, c) = file_config(&big.to_string(), "");
    refused!(OidcVerifier::new(c), OidcError::Jwks(JwksError::TooLarge));
}

#[test]
fn unusable_keys_next_to_usable_ones_are_skipped() {
    let ed = TestKey::ed("ed");
    let doc = json!({"keys": [
        {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
        {"kty": "RSA", "n": "!!", "e": "AQAB", "kid": "broken"},
        ed.jwk(),
    ]});
    let (_dir, c) = file_config(&doc.to_string(), "");
    let v = OidcVerifier::new(c).unwrap();
    v.verify(&ed.token(&claims()), NOW).unwrap();
    // An HS256 token naming the symmetric JWK is still refused.
    let hs = ed.token_with(&json!({"alg": "HS256", "kid": "hmac"}), &claims());
    refused!(v.verify(&hs, NOW), OidcError::UnsupportedAlgorithm);
}

#[test]
fn a_rewritten_jwks_file_is_reread_for_an_unknown_kid() {
    let old = TestKey::ed("old");
    let new = TestKey::ec("new");
    let (dir, v) = file_verifier(&[&old], "jwks_min_refresh_gap_secs = 1");
    std::fs::write(dir.path().join("jwks.json"), jwks(&[&old, &new])).unwrap();
    thread::sleep(Duration::from_millis(1100));
    // Refused at once; the reload it starts brings the new key for the next token.
    refused!(v.verify(&new.token(&claims()), NOW), OidcError::UnknownKey);
    assert!(v.wait_for_reload(Duration::from_secs(10)));
    v.verify(&new.token(&claims()), NOW).unwrap();
    v.verify(&old.token(&claims()), NOW).unwrap();
}

// ---------------------------------------------------------------------------------------------
// The JWKS from a URL

#[test]
fn unknown_kid_refreshes_once_and_then_is_accepted() {
    let k1 = TestKey::ec("k1");
    let k2 = TestKey::ed("k2");
    let server = JwksServer::http(Reply::Ok(jwks(&[&k1])));
    let v = url_verifier(&server.url, "jwks_min_refresh_gap_secs = 1");
    assert_eq!(server.hits(), 1);
    v.verify(&k1.token(&claims()), NOW).unwrap();
    assert_eq!(server.hits(), 1, "known keys are served from the cache");

    // The identity provider rotates in k2.
    server.set(Reply::Ok(jwks(&[&k1, &k2])));
    thread::sleep(Duration::from_millis(1100));
    // The first k2 token is refused at once and starts a reload in the background.
    refused!(v.verify(&k2.token(&claims()), NOW), OidcError::UnknownKey);
    assert!(v.wait_for_reload(Duration::from_secs(10)));
    assert_eq!(server.hits(), 2);
    v.verify(&k2.token(&claims()), NOW).unwrap();
    v.verify(&k1.token(&claims()), NOW).unwrap();
    assert_eq!(server.hits(), 2);
}

#[test]
fn unknown_kid_within_the_gap_is_refused_without_a_fetch() {
    let k1 = TestKey::ec("k1");
    let k2 = TestKey::ed("k2");
    let server = JwksServer::http(Reply::Ok(jwks(&[&k1])));
    let v = url_verifier(&server.url, ""); // gap 30 s
    assert_eq!(server.hits(), 1);
    // k2 is published now, but the last fetch was just now: no new fetch, refused.
    server.set(Reply::Ok(jwks(&[&k1, &k2])));
    for i in 0..50 {
        let made_up = TestKey::ed(&format!("made-up-{i}"));
        refused!(
            v.verify(&made_up.token(&claims()), NOW),
            OidcError::UnknownKey
        );
    }
    refused!(v.verify(&k2.token(&claims()), NOW), OidcError::UnknownKey);
    assert_eq!(server.hits(), 1);
    v.verify(&k1.token(&claims()), NOW).unwrap();
}

#[test]
fn concurrent_unknown_kids_fetch_once() {
    let k1 = TestKey::ec("k1");
    let k2 = Arc::new(TestKey::ed("k2"));
    let server = JwksServer::http(Reply::Ok(jwks(&[&k1])));
    let v = Arc::new(url_verifier(&server.url, "jwks_min_refresh_gap_secs = 1"));
    server.set(Reply::Ok(jwks(&[&k1, &k2])));
    thread::sleep(Duration::from_millis(1100));
    let token = k2.token(&claims());
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (v, token) = (v.clone(), token.clone());
            thread::spawn(move || v.verify(&token, NOW).map(|p| p.user))
        })
        .collect();
    for t in threads {
        // Each is refused at once or, once the reload is done, accepted.
        match t.join().unwrap() {
            Ok(user) => assert_eq!(user, "oidc:idp:alice"),
            Err(e) => assert!(matches!(e, OidcError::UnknownKey), "{e:?}"),
        }
    }
    assert!(v.wait_for_reload(Duration::from_secs(10)));
    assert_eq!(v.verify(&token, NOW).unwrap().user, "oidc:idp:alice");
    assert_eq!(server.hits(), 2);
}

#[test]
fn periodic_refresh_drops_removed_keys() {
    let k1 = TestKey::ec("k1");
    let k2 = TestKey::ed("k2");
    let server = JwksServer::http(Reply::Ok(jwks(&[&k1])));
    let v = url_verifier(
        &server.url,
        "jwks_refresh_secs = 2\njwks_min_refresh_gap_secs = 1",
    );
    v.verify(&k1.token(&claims()), NOW).unwrap();
    server.set(Reply::Ok(jwks(&[&k2])));
    thread::sleep(Duration::from_millis(2100));
    // The keys are two seconds old: a reload is due. This check starts it unless the timer
    // already has (so it may or may not still see k1; it never waits); after it, k1 is gone.
    let _ = v.verify(&k1.token(&claims()), NOW);
    assert!(v.wait_for_reload(Duration::from_secs(10)));
    refused!(v.verify(&k1.token(&claims()), NOW), OidcError::UnknownKey);
    assert_eq!(server.hits(), 2);
    v.verify(&k2.token(&claims()), NOW).unwrap();
    assert_eq!(server.hits(), 2);
}

#[test]
fn jwks_url_down_at_start_refuses_until_it_is_up() {
    let key = TestKey::ed("ed");
    let addr = dead_addr();
    let url = format!("http://{addr}/keys");
    let v = url_verifier(&url, "jwks_min_refresh_gap_secs = 2");
    assert!(matches!(
        v.jwks_error().as_deref(),
        Some(JwksError::Fetch { .. })
    ));
    let token = key.token(&claims());
    for _ in 0..3 {
        refused!(v.verify(&token, NOW), OidcError::JwksUnavailable(Some(_)));
    }
    // The identity provider comes up on that address.
    let Ok(listener) = TcpListener::bind(addr) else {
        return; // the port was taken meanwhile; the refusals above are the point
    };
    let server = JwksServer::start(listener, Reply::Ok(jwks(&[&key])), None);
    refused!(v.verify(&token, NOW), OidcError::JwksUnavailable(_)); // within the gap
    assert!(v.wait_for_reload(Duration::from_secs(10)));
    assert_eq!(server.hits(), 0);
    thread::sleep(Duration::from_millis(2100));
    // After the gap the keys are fetched (by the timer, or by the reload this token starts
    // if the timer has not yet); the token is never made to wait for it.
    let _ = v.verify(&token, NOW);
    assert!(v.wait_for_reload(Duration::from_secs(10)));
    v.verify(&token, NOW).unwrap();
    assert_eq!(server.hits(), 1);
    assert!(v.jwks_error().is_none());
}

#[test]
fn jwks_url_serving_garbage_or_errors_is_refused() {
    let key = TestKey::ed("ed");
    let token = key.token(&claims());
    let cases = [
        (Reply::Ok("<html>sign in</html>".into()), "malformed"),
        (Reply::Ok(json!({"keys": "none"}).to_string()), "malformed"),
        (Reply::Ok(json!({"keys": []}).to_string()), "no keys"),
        (
            Reply::Ok(json!({"keys": [key.jwk()], "pad": "x".repeat(300_000)}).to_string()),
            "large",
        ),
        (Reply::Status(500), "status"),
        (Reply::Status(404), "status"),
    ];
    for (reply, what) in cases {
        let server = JwksServer::http(reply);
        let v = url_verifier(&server.url, "");
        refused!(v.verify(&token, NOW), OidcError::JwksUnavailable(Some(_)));
        let cause = v.jwks_error().expect("a cause");
        let expected = match what {
            "malformed" => matches!(*cause, JwksError::Malformed(_)),
            "no keys" => matches!(*cause, JwksError::NoUsableKeys),
            "large" => matches!(*cause, JwksError::TooLarge),
            _ => matches!(*cause, JwksError::Status { .. }),
        };
        assert!(expected, "{what}: {cause:?}");
        // The error for the caller does not name the URL.
        let err = v.verify(&token, NOW).unwrap_err();
        assert!(!err.to_string().contains("127.0.0.1"), "{err}");
    }
}

#[test]
fn jwks_url_that_hangs_times_out_and_refuses() {
    let key = TestKey::ed("ed");
    let server = JwksServer::http(Reply::Hang);
    let start = Instant::now();
    let v = url_verifier(&server.url, "jwks_fetch_timeout_secs = 1");
    assert!(start.elapsed() < Duration::from_secs(10));
    assert!(matches!(
        v.jwks_error().as_deref(),
        Some(JwksError::Fetch { .. })
    ));
    refused!(
        v.verify(&key.token(&claims()), NOW),
        OidcError::JwksUnavailable(_)
    );
    assert_eq!(server.hits(), 1);
}

/// Issue 14, defect 8: with the JWKS URL hanging, tokens with unknown `kid`s each waited for
/// the fetch. Now they are refused at once, one reload runs in the background, and tokens
/// with known keys are accepted meanwhile.
#[test]
fn unknown_kids_fail_fast_while_the_jwks_url_hangs() {
    let k1 = TestKey::ed("k1");
    let server = JwksServer::http(Reply::Ok(jwks(&[&k1])));
    let v = Arc::new(url_verifier(
        &server.url,
        "jwks_min_refresh_gap_secs = 1\njwks_fetch_timeout_secs = 10",
    ));
    server.set(Reply::Hang);
    thread::sleep(Duration::from_millis(1100));
    let start = Instant::now();
    let threads: Vec<_> = (0..16)
        .map(|i| {
            let v = v.clone();
            let token = TestKey::ed(&format!("made-up-{i}")).token(&claims());
            thread::spawn(move || {
                let t = Instant::now();
                let result = v.verify(&token, NOW).map(|p| p.user);
                (result, t.elapsed())
            })
        })
        .collect();
    for t in threads {
        let (result, took) = t.join().unwrap();
        assert!(matches!(result, Err(OidcError::UnknownKey)), "{result:?}");
        assert!(
            took < Duration::from_secs(2),
            "an unknown kid waited {took:?}"
        );
    }
    // The known key is accepted at once while the one reload hangs.
    v.verify(&k1.token(&claims()), NOW).unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    assert!(!v.wait_for_reload(Duration::ZERO), "the reload is running");
    assert!(v.wait_for_reload(Duration::from_secs(20)));
    assert_eq!(server.hits(), 2, "one reload for sixteen unknown kids");
    // The reload timed out: the old keys stay in use.
    v.verify(&k1.token(&claims()), NOW).unwrap();
}

#[test]
fn stale_keys_are_kept_for_a_while_then_everything_is_refused() {
    let key = TestKey::ed("ed");
    let server = JwksServer::http(Reply::Ok(jwks(&[&key])));
    let v = url_verifier(
        &server.url,
        "jwks_refresh_secs = 1\njwks_min_refresh_gap_secs = 1\njwks_max_stale_secs = 3",
    );
    let start = Instant::now();
    let token = key.token(&claims());
    v.verify(&token, NOW).unwrap();
    server.set(Reply::Status(503));
    thread::sleep(Duration::from_millis(1200));
    // The keys are 1.2 s old, under the 3 s limit: still accepted; the reload this starts
    // fails.
    v.verify(&token, NOW).unwrap();
    assert!(v.wait_for_reload(Duration::from_secs(10)));
    assert_eq!(server.hits(), 2);
    assert!(v.jwks_error().is_some());
    thread::sleep(Duration::from_millis(3300).saturating_sub(start.elapsed()));
    // Now older than 3 s: refused (the timer, or this token, keeps trying to reload; each
    // attempt fails).
    refused!(v.verify(&token, NOW), OidcError::JwksUnavailable(Some(_)));
    assert!(v.wait_for_reload(Duration::from_secs(10)));
    assert!(server.hits() >= 3, "{}", server.hits());
    // The identity provider is back: the keys are reloaded within the gap (by the timer,
    // without any token; or by a token) and tokens are accepted again.
    server.set(Reply::Ok(jwks(&[&key])));
    let back = Instant::now();
    while v.verify(&token, NOW).is_err() {
        assert!(back.elapsed() < Duration::from_secs(10), "never reloaded");
        thread::sleep(Duration::from_millis(50));
    }
}

/// Review of issue 14, defect 8: keys were reloaded only when a token arrived, so after a
/// quiet spell longer than `jwks_max_stale_secs` (a weekend, with the defaults) the first
/// token was refused as if the identity provider were down (`JwksUnavailable`, 503) although
/// it answered all along. Now a timer reloads keys older than `jwks_refresh_secs` also
/// without traffic.
#[test]
fn keys_stay_fresh_on_an_idle_server() {
    let key = TestKey::ed("ed");
    let server = JwksServer::http(Reply::Ok(jwks(&[&key])));
    let v = url_verifier(
        &server.url,
        "jwks_refresh_secs = 1\njwks_min_refresh_gap_secs = 1\njwks_max_stale_secs = 4",
    );
    let token = key.token(&claims());
    v.verify(&token, NOW).unwrap();
    assert_eq!(server.hits(), 1);
    // No token for longer than the keys may be stale; the identity provider is up.
    thread::sleep(Duration::from_secs(6));
    v.verify(&token, NOW).unwrap();
    assert!(server.hits() >= 2, "reloaded without traffic");
}

#[test]
fn https_with_a_ca_file() {
    let key = TestKey::ed("ed");
    let (tls, ca_pem) = tls_server();
    let server = JwksServer::https(Reply::Ok(jwks(&[&key])), tls);
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca_pem).unwrap();

    let mut c = config("");
    c.jwks_url = Some(server.url.clone());
    c.ca_file = Some(ca_file);
    let v = OidcVerifier::new(c).unwrap();
    assert!(v.jwks_error().is_none(), "{:?}", v.jwks_error());
    v.verify(&key.token(&claims()), NOW).unwrap();
    assert_eq!(server.hits(), 1);
}

#[test]
fn https_with_an_untrusted_certificate_is_refused() {
    let key = TestKey::ed("ed");
    let (tls, _ca_pem) = tls_server();
    let server = JwksServer::https(Reply::Ok(jwks(&[&key])), tls);
    // The built-in roots do not know the test CA.
    let v = url_verifier(&server.url, "");
    refused!(
        v.verify(&key.token(&claims()), NOW),
        OidcError::JwksUnavailable(_)
    );
    // Nor does another CA.
    let (_other_tls, other_ca) = tls_server();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("other-ca.pem");
    std::fs::write(&ca_file, other_ca).unwrap();
    let mut c = config("");
    c.jwks_url = Some(server.url.clone());
    c.ca_file = Some(ca_file);
    let v = OidcVerifier::new(c).unwrap();
    refused!(
        v.verify(&key.token(&claims()), NOW),
        OidcError::JwksUnavailable(_)
    );
    assert!(matches!(
        v.jwks_error().as_deref(),
        Some(JwksError::Fetch { .. })
    ));
    assert_eq!(
        server.hits(),
        0,
        "no request went over an unverified connection"
    );
}

// ---------------------------------------------------------------------------------------------
// Configuration

#[test]
fn config_defaults_and_forms() {
    let c = config("jwks_url = \"https://idp.example/keys\"");
    assert_eq!(c.audience, [AUDIENCE]);
    assert_eq!(c.user_claim, "preferred_username");
    assert_eq!(c.groups_claim, "groups");
    assert_eq!(c.leeway_secs, 60);
    assert_eq!(c.max_token_lifetime_secs, 86_400);
    assert_eq!(c.jwks_refresh_secs, 3600);
    assert_eq!(c.jwks_min_refresh_gap_secs, 30);
    assert_eq!(c.jwks_max_stale_secs, 86_400);
    assert_eq!(c.jwks_fetch_timeout_secs, 5);
    let c: OidcConfig = toml::from_str(&format!(
        "issuer = \"{ISSUER}\"\naudience = [\"a\", \"b\"]\njwks_file = \"/x\""
    ))
    .unwrap();
    assert_eq!(c.audience, ["a", "b"]);
    assert!(
        toml::from_str::<OidcConfig>(&format!(
            "issuer = \"{ISSUER}\"\naudience = \"a\"\njwks_file = \"/x\"\nuser_clam = \"oid\""
        ))
        .is_err()
    );
    assert!(toml::from_str::<OidcConfig>("audience = \"a\"\njwks_file = \"/x\"").is_err());
}

#[test]
fn invalid_configs_are_refused() {
    let ed = TestKey::ed("ed");
    let url = |c: &mut OidcConfig, url: &str| {
        c.jwks_file = None;
        c.jwks_url = Some(url.into());
    };
    type Change<'a> = &'a dyn Fn(&mut OidcConfig);
    let cases: [(&str, Change); 16] = [
        ("plain http to a remote host", &|c| {
            url(c, "http://idp.example/keys")
        }),
        ("plain http to a private address", &|c| {
            url(c, "http://10.0.0.1/keys")
        }),
        ("another scheme", &|c| url(c, "ftp://idp.example/keys")),
        ("not a URL", &|c| url(c, "not a url")),
        ("both sources", &|c| {
            c.jwks_url = Some("https://idp.example/keys".into())
        }),
        ("no source", &|c| c.jwks_file = None),
        ("ca_file with a file", &|c| {
            c.ca_file = Some("/etc/ssl/ca.pem".into())
        }),
        ("a missing ca_file", &|c| {
            url(c, "https://127.0.0.1:1/keys");
            c.ca_file = Some("/nonexistent/kluis/ca.pem".into());
        }),
        ("a large leeway", &|c| c.leeway_secs = 301),
        ("no refresh gap", &|c| c.jwks_min_refresh_gap_secs = 0),
        ("refresh before the gap", &|c| c.jwks_refresh_secs = 10),
        ("stale before refresh", &|c| c.jwks_max_stale_secs = 60),
        ("no fetch timeout", &|c| c.jwks_fetch_timeout_secs = 0),
        ("a tiny token lifetime", &|c| c.max_token_lifetime_secs = 10),
        ("an empty user claim", &|c| c.user_claim.clear()),
        ("no audience", &|c| c.audience.clear()),
    ];
    let (_dir, base) = file_config(&jwks(&[&ed]), "");
    OidcVerifier::new(base.clone()).unwrap();
    for (what, change) in cases {
        let mut c = base.clone();
        change(&mut c);
        let result = OidcVerifier::new(c);
        assert!(
            matches!(result, Err(OidcError::Config(_))),
            "{what}: {result:?}"
        );
    }
    // A CA file that is not PEM.
    let (_dir, not_pem) = write_jwks("not a certificate");
    let mut c = config("jwks_url = \"https://127.0.0.1:1/keys\"");
    c.ca_file = Some(not_pem);
    refused!(OidcVerifier::new(c), OidcError::Config(_));
}

#[test]
fn loopback_http_and_unreachable_https_do_not_stop_the_start() {
    for url in [
        "http://127.0.0.1:1/keys",
        "http://localhost:1/keys",
        "http://[::1]:1/keys",
        "https://127.0.0.1:1/keys",
    ] {
        let v = url_verifier(url, "");
        assert!(v.jwks_error().is_some(), "{url}");
        refused!(
            v.verify(&TestKey::ed("ed").token(&claims()), NOW),
            OidcError::JwksUnavailable(_)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Property tests: nothing made up verifies, nothing panics.

fn shared() -> &'static (tempfile::TempDir, OidcVerifier, TestKey) {
    static SHARED: OnceLock<(tempfile::TempDir, OidcVerifier, TestKey)> = OnceLock::new();
    SHARED.get_or_init(|| {
        let key = TestKey::ed("ed");
        let (dir, v) = file_verifier(&[&key], "");
        (dir, v, key)
    })
}

proptest! {
    #[test]
    fn random_bytes_are_refused(bytes in prop::collection::vec(any::<u8>(), 0..10_000)) {
        let (_, v, _) = shared();
        prop_assert!(v.verify(&String::from_utf8_lossy(&bytes), NOW).is_err());
    }

    #[test]
    fn random_base64_parts_are_refused(parts in prop::collection::vec("[A-Za-z0-9_-]{0,300}", 0..6)) {
        let (_, v, _) = shared();
        prop_assert!(v.verify(&parts.join("."), NOW).is_err());
    }

    #[test]
    fn random_signatures_are_refused(
        alg in prop::sample::select(vec!["EdDSA", "ES256", "RS256", "none", "HS256"]),
        kid in prop::option::of(Just("ed")),
        sig in prop::collection::vec(any::<u8>(), 0..600),
    ) {
        let (_, v, _) = shared();
        let mut header = json!({"alg": alg});
        if let Some(kid) = kid {
            header["kid"] = json!(kid);
        }
        let token = format!(
            "{}.{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims().to_string()),
            B64.encode(&sig)
        );
        prop_assert!(v.verify(&token, NOW).is_err());
    }

    #[test]
    fn any_changed_character_is_refused(
        index in any::<prop::sample::Index>(),
        replacement in prop::sample::select(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ ".chars().collect::<Vec<_>>()
        ),
    ) {
        let (_, v, key) = shared();
        let token = key.token(&claims());
        prop_assert!(v.verify(&token, NOW).is_ok());
        let i = index.index(token.len());
        prop_assume!(token.as_bytes()[i] != replacement as u8);
        let mut changed = token.into_bytes();
        changed[i] = replacement as u8;
        let changed = String::from_utf8(changed).unwrap();
        prop_assert!(v.verify(&changed, NOW).is_err());
    }

    #[test]
    fn truncated_or_extended_tokens_are_refused(cut in 1usize..400, extra in "[A-Za-z0-9_.-]{1,8}") {
        let (_, v, key) = shared();
        let token = key.token(&claims());
        let cut = cut.min(token.len());
        prop_assert!(v.verify(&token[..token.len() - cut], NOW).is_err());
        let extended = format!("{token}{extra}");
        prop_assert!(v.verify(&extended, NOW).is_err());
    }
}

/// The fuzz target `jwt` (mode 1) signs each seed's claims with the fixed key
/// `Ed25519KeyPair::from_seed_unchecked(&[7; 32])` (kid `k`) and checks what is accepted; its
/// seeds must reach the checks they are named for. Since `sub` became required, the seeds
/// without it were all refused as `MissingClaim("sub")`, so the fuzzer started with no
/// accepted token and no groups-overage token at all.
#[test]
fn fuzz_seeds_reach_the_checks_they_are_named_for() {
    let key = Ed25519KeyPair::from_seed_unchecked(&[7; 32]).unwrap();
    let jwk = json!({"kty": "OKP", "crv": "Ed25519", "kid": "k",
                     "x": B64.encode(key.public_key().as_ref())});
    let (_dir, path) = write_jwks(&json!({ "keys": [jwk] }).to_string());
    let mut c: OidcConfig =
        toml::from_str("issuer = \"https://idp.example\"\naudience = \"api://kluis\"").unwrap();
    c.jwks_file = Some(path);
    let v = OidcVerifier::new(c).unwrap();
    let seeds = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/seeds/jwt/");
    let verify = |name: &str| {
        let seed = std::fs::read(format!("{seeds}{name}")).unwrap();
        let (&mode, rest) = seed.split_first().unwrap();
        assert_eq!(mode % 3, 1, "{name} is a mode-1 seed");
        let i = rest.iter().position(|&b| b == 0xff).unwrap();
        let signed = format!("{}.{}", B64.encode(&rest[..i]), B64.encode(&rest[i + 1..]));
        let sig = key.sign(signed.as_bytes());
        v.verify(&format!("{signed}.{}", B64.encode(sig.as_ref())), NOW)
    };
    for name in ["signed_valid", "signed_aud_array"] {
        let p = verify(name).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(p.user, "oidc:idp:alice", "{name}");
    }
    refused!(verify("signed_overage"), OidcError::GroupsOverage);
}
