#![no_main]
//! kluis-server's OpenID Connect verifier. The first byte picks what the rest is:
//!
//! - 0: a bearer token, verified as is. Nothing made up verifies (the key is Ed25519), so the
//!   verifier must refuse it. Never add a validly signed token as a seed for this mode.
//! - 1: header JSON, 0xFF, claims JSON: signed here with the JWKS's Ed25519 key, so the claims
//!   checks are reached. What is accepted must be EdDSA with the right issuer and a sane user.
//! - 2: a JWKS document: loaded as the key file, then a fixed valid token is verified with it.
use std::path::PathBuf;
use std::sync::LazyLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use libfuzzer_sys::fuzz_target;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{Value, json};

use kluis_server::oidc::{OidcConfig, OidcVerifier};

const NOW: i64 = 1_700_000_000;
const ISSUER: &str = "https://idp.example";

// A fixed key, so that seeds can name it (its JWK is in fuzz/seeds/jwt/jwks_*).
static KEY: LazyLock<Ed25519KeyPair> =
    LazyLock::new(|| Ed25519KeyPair::from_seed_unchecked(&[7; 32]).unwrap());
static DIR: LazyLock<PathBuf> = LazyLock::new(|| {
    let dir = std::env::temp_dir().join(format!("kluis-fuzz-jwt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
});
static VERIFIER: LazyLock<OidcVerifier> = LazyLock::new(|| {
    let jwk = json!({"kty": "OKP", "crv": "Ed25519", "kid": "k",
                     "x": B64.encode(KEY.public_key())});
    OidcVerifier::new(config(
        json!({"keys": [jwk]}).to_string().as_bytes(),
        "jwks.json",
    ))
    .unwrap()
});
static VALID: LazyLock<String> = LazyLock::new(|| {
    let claims = json!({"iss": ISSUER, "aud": "api://kluis", "exp": NOW + 300, "sub": "s1",
                        "preferred_username": "alice", "groups": ["hr"]});
    sign(
        br#"{"alg":"EdDSA","kid":"k"}"#,
        claims.to_string().as_bytes(),
    )
});

fn config(jwks: &[u8], file: &str) -> OidcConfig {
    let path = DIR.join(file);
    std::fs::write(&path, jwks).unwrap();
    serde_json::from_value(json!({"issuer": ISSUER, "audience": "api://kluis", "jwks_file": path}))
        .unwrap()
}

fn sign(header: &[u8], claims: &[u8]) -> String {
    let signed = format!("{}.{}", B64.encode(header), B64.encode(claims));
    let sig = KEY.sign(signed.as_bytes());
    format!("{signed}.{}", B64.encode(sig))
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            if let Ok(token) = std::str::from_utf8(rest) {
                assert!(VERIFIER.verify(token, NOW).is_err());
            }
        }
        1 => {
            let (header, claims) = match rest.iter().position(|&b| b == 0xff) {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &b"{}"[..]),
            };
            let token = sign(header, claims);
            let result = VERIFIER.verify(&token, NOW);
            if let Ok(p) = &result {
                let header: Value = serde_json::from_slice(header).unwrap();
                assert_eq!(header["alg"], "EdDSA");
                let claims: Value = serde_json::from_slice(claims).unwrap();
                assert_eq!(claims["iss"], ISSUER);
                assert!(claims["exp"].is_number());
                // Namespaced: the issuer's prefix, then 1-256 characters.
                let user = p.user.strip_prefix("oidc:idp:").expect("the issuer's prefix");
                assert!(!user.is_empty() && user.chars().count() <= 256);
                assert!(!p.user.chars().any(char::is_control));
                assert!(p.groups.len() <= 256);
                assert!(p.groups.iter().all(|g| g.starts_with("oidc:idp:")));
                assert!(p.credential.starts_with("oidc:idp:"));
                assert!(!p.credential.chars().any(char::is_control));
            }
            // Deterministic: the same token gets the same answer.
            assert_eq!(
                result.map_err(|e| e.to_string()),
                VERIFIER.verify(&token, NOW).map_err(|e| e.to_string())
            );
        }
        _ => {
            if let Ok(verifier) = OidcVerifier::new(config(rest, "fuzzed.json")) {
                if let Ok(p) = verifier.verify(&VALID, NOW) {
                    assert_eq!(p.user, "oidc:idp:alice");
                }
            }
        }
    }
});
