#![no_main]
//! kluis-server's configuration file, `Config::parse`. Whatever it accepts must not make the
//! next step panic: an `[oidc]` table that parses either builds a verifier (pointed at a fixed
//! local JWKS file here; no network) that then checks a token without panicking, or is
//! refused with an error.
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use kluis_server::config::Config;
use kluis_server::oidc::OidcVerifier;
use libfuzzer_sys::fuzz_target;
use ring::signature::{Ed25519KeyPair, KeyPair};

static JWKS: LazyLock<PathBuf> = LazyLock::new(|| {
    remove_stale(&std::env::temp_dir(), "kluis-fuzz-config-");
    let dir = std::env::temp_dir().join(format!("kluis-fuzz-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("jwks.json");
    // An Ed25519 key (the all-sevens seed, as in the jwt target).
    let key = Ed25519KeyPair::from_seed_unchecked(&[7; 32]).unwrap();
    let x = URL_SAFE_NO_PAD.encode(key.public_key().as_ref());
    let jwks = format!(r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","kid":"k","x":"{x}"}}]}}"#);
    std::fs::write(&path, jwks).unwrap();
    path
});

/// Remove what earlier runs of this target left in `base` (statics are not dropped at exit)
/// when their process is gone.
fn remove_stale(base: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(prefix) else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = Config::parse(text) else {
        return;
    };
    // Parsing is deterministic (the file is read once, but `Debug` shows everything).
    let again = Config::parse(text).expect("accepted twice");
    assert_eq!(format!("{config:?}"), format!("{again:?}"));
    if let Some(mut oidc) = config.oidc {
        oidc.jwks_file = Some(JWKS.clone());
        oidc.jwks_url = None;
        oidc.ca_file = None;
        if let Ok(v) = OidcVerifier::new(oidc) {
            for now in [0, 1_700_000_000, i64::MAX] {
                let _ = v.verify("eyJhbGciOiJFZERTQSIsImtpZCI6ImsifQ.e30.AAAA", now);
            }
        }
    }
});
