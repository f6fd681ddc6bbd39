//! Protocol fidelity of the Microsoft Double Key Encryption service (issue 16, review A): the
//! checks Microsoft's own validator makes, the message shapes of Microsoft's reference service,
//! and the token Office obtains from the challenge, against a real `kluis-server serve` process
//! on loopback with real SQLite files.
//!
//! The reference is Azure-Samples/DoubleKeyEncryptionService: `src/customer-key-store/`
//! `scripts/key_store_tester.ps1` (the validator Microsoft Learn's set-up has you run),
//! `Protocols/*.json` (the message formats), `Models/PublicKey.cs`, `Startup.cs`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

mod common;
use common::dke::{TENANT, office_encrypt, serve_http, sign, store};
use common::{admin, get, post_full, raw_body, raw_exchange, raw_status};

/// `Protocols/PublicKey.Response.json` of the reference service.
const REFERENCE_KEY: &str = r#"{"key":{"kty":"RSA","n":"wP4ir0aynve6Cpv3ZcBo5+HDue7OA6ogQetNkql1ptfKXilQ2N6x+wDTszcrJlb672l+ckUV5Gjn+ohhFUh0hx6B3rTNKVyxJiGq8S+MRXrTl0UGjWjFED7fYZ2nYZPigu1VHdm3HgBVZdeR8TMr1uIjDHxhWgen2utnTvacn5r8X079ImwpbhilrYBUvt9q42r/CxRp+axsMY3ozkGYsSZ/vXsgjSN0Nbn+9cwHi+XeE2PcjAOnaxUTKVcxjcZvRE+y2FcwgT+nVfJub4ZvRjz9lAbhdDNUS2ZrisAtHVRWJx1ArAMHH7OYg41LoA9+wmBoB04cEzi3JkJkqNCwtw==","e":65537,"alg":"RS256","kid":"https://localhost:5001/TestKey1/F2DBF8CB-7B06-4ABA-B93A-CACAD13CD7BB"},"cache":{"exp":"2020-11-21T21:15:55"}}"#;

/// `Protocols/Decrypt.Response.json` of the reference service.
const REFERENCE_DECRYPTED: &str =
    r#"{"value":"LAD//yAAEAACEAAAC7xFqqyoJQGy7DEKv/vTWMrNA8bwZuA4JwXaXfnbF3Y="}"#;

// ---------------------------------------------------------------------------------------------
// The identity provider's token for Office (the provider itself: `common/dke.rs`)

/// A v1 Entra ID access token as Office gets it for `resource`: `aud` is the resource asked
/// for, `scp` a space-separated list.
fn office_token(resource: &str, upn: &str, scp: &str) -> String {
    let now = kluis_server::now_ms() / 1000;
    sign(
        &json!({"iss": TENANT, "aud": resource, "scp": scp, "upn": upn, "ver": "1.0",
                 "appid": "d3590ed6-52b3-4102-aeff-aad2292ab01c",
                 "sub": format!("sub-{upn}"), "iat": now, "nbf": now, "exp": now + 3600}),
    )
}

// ---------------------------------------------------------------------------------------------
// The server

/// A store with label `medical` (DKE; user alice@org.nl), served on loopback HTTP with
/// `[dke]` whose audience is `audience` (key ids from the request's `Host`).
fn setup(audience: &str) -> common::Server {
    serve_http(store(
        &format!(
            "[serve]\nrate_limit_per_sec = 0\n\
             [dke]\naudience = \"{audience}\"\nissuers = [\"{TENANT}\"]\n\
             jwks_file = \"jwks.json\"\n"
        ),
        &[],
    ))
}

/// `host:port` of a base URL.
fn authority(base: &str) -> &str {
    base.split_once("://").unwrap().1
}

/// The host of an absolute URL, without port (as .NET's `Uri.Host`).
fn host(url: &str) -> String {
    let rest = url.split_once("://").unwrap().1;
    let auth = rest.split('/').next().unwrap();
    auth.rsplit_once(':').map_or(auth, |(h, _)| h).to_owned()
}

// ---------------------------------------------------------------------------------------------
// Reading the answers

/// The members of a JSON object with the JSON type of each: `name:type`, sorted.
fn shape(v: &Value) -> Vec<String> {
    let kind = |x: &Value| match x {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    let mut out: Vec<String> = v
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, x)| format!("{k}:{}", kind(x)))
        .collect();
    out.sort();
    out
}

/// `yyyy-MM-ddTHH:mm:ss` (UTC) of `ms` since the epoch, by kluis-core's calendar (its dates
/// are checked against known ones there), to compare with `cache.exp` as text.
fn utc(ms: i64) -> String {
    let t = kluis_core::UtcDateTime::from_unix_ms(ms);
    format!("{}T{}", t.date(), t.time())
}

// ---------------------------------------------------------------------------------------------
// Tests

/// What `key_store_tester.ps1` checks, step by step: the key's members and values; a `POST
/// <kid>/decrypt` with no body, no content type and no token answers 401 (not 400 or 415:
/// authentication comes before the body); a `WWW-Authenticate` that starts with `Bearer` and
/// parses as the script parses it (comma-separated `name="value"`) into `resource`,
/// `authorization` and `realm`; `resource` an https URL on the same host as the decrypt URL.
#[test]
fn microsofts_key_store_tester_accepts_the_service() {
    // The audience is the service's origin: the tester compares hosts only.
    let server = setup("https://127.0.0.1");
    let (status, body) = get(&format!("{}/dke/medical", server.base), None);
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    let key = &answer["key"];
    for member in ["kty", "n", "e", "alg", "kid"] {
        assert!(!key[member].is_null(), "the key has no `{member}`: {body}");
    }
    assert_eq!(key["kty"], "RSA");
    assert_eq!(key["alg"], "RS256");

    let decrypt_url = format!("{}/decrypt", key["kid"].as_str().unwrap());
    let path = decrypt_url.strip_prefix(&server.base).unwrap();
    // Invoke-WebRequest -Method POST without a body: Content-Length 0, no Content-Type.
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: Mozilla/5.0 (Windows NT; Windows NT 10.0) WindowsPowerShell/5.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        authority(&server.base)
    );
    let raw = raw_exchange(
        authority(&server.base),
        request.as_bytes(),
        std::time::Duration::from_secs(10),
    );
    assert_eq!(
        raw_status(&raw),
        Some(401),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    let head = String::from_utf8_lossy(&raw[..raw.len() - raw_body(&raw).len()]).into_owned();
    let challenge = head
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("www-authenticate"))
                .map(|(_, v)| v.trim().to_owned())
        })
        .expect("a WWW-Authenticate header");
    // ParseAuthResponse: `^\s*bearer` (case-insensitive), "bearer" removed, split on ',',
    // each item `\s*name=\s*"value"`.
    assert!(
        challenge.to_ascii_lowercase().starts_with("bearer"),
        "{challenge}"
    );
    let fields: std::collections::HashMap<String, String> = challenge[6..]
        .split(',')
        .map(|item| {
            let (name, value) = item
                .split_once('=')
                .unwrap_or_else(|| panic!("invalid auth value: {item}"));
            let value = value.trim();
            assert!(
                value.len() >= 2 && value.starts_with('"') && value.ends_with('"'),
                "invalid auth value: {item}"
            );
            (
                name.trim().to_owned(),
                value[1..value.len() - 1].trim().to_owned(),
            )
        })
        .collect();
    for f in ["resource", "authorization", "realm"] {
        assert!(
            fields.contains_key(f),
            "{f} auth field not found: {challenge}"
        );
    }
    let resource = &fields["resource"];
    assert!(resource.starts_with("https://"), "{resource}");
    assert_eq!(host(resource), host(&decrypt_url), "hostname mismatch");
}

/// The answers have exactly the members and JSON types of the reference's protocol files
/// (`PublicKey.Response.json`, `Decrypt.Response.json`), the request of `Decrypt.Request.json`
/// is what the service takes, and the values are formatted as the reference formats them.
#[test]
fn messages_have_the_shapes_of_the_reference_protocol_files() {
    let server = setup("https://dke.test");
    let (status, body) = get(&format!("{}/dke/medical", server.base), None);
    assert_eq!(status, 200, "{body}");
    let ours: Value = serde_json::from_str(&body).unwrap();
    let reference: Value = serde_json::from_str(REFERENCE_KEY).unwrap();
    assert_eq!(shape(&ours), shape(&reference));
    assert_eq!(shape(&ours["key"]), shape(&reference["key"]));
    assert_eq!(shape(&ours["cache"]), shape(&reference["cache"]));
    // `n`: padded standard base64 of the 256-byte modulus, as the reference's 2048-bit key.
    let n = ours["key"]["n"].as_str().unwrap();
    assert_eq!(
        n.len(),
        reference["key"]["n"].as_str().unwrap().len(),
        "{n}"
    );
    assert_eq!(B64.decode(n).unwrap().len(), 256);
    assert_eq!(ours["key"]["e"], reference["key"]["e"]);
    // `kid`: {URI}/{KeyName}/{key id}; the key id one URL-safe path segment.
    let kid = ours["key"]["kid"].as_str().unwrap();
    let id = kid
        .strip_prefix(&format!("{}/dke/medical/", server.base))
        .unwrap_or_else(|| panic!("{kid}"));
    assert!(
        !id.is_empty()
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b)),
        "{id}"
    );
    // `cache.exp`: yyyy-MM-ddTHH:mm:ss, UTC without a zone, in the future.
    let exp = ours["cache"]["exp"].as_str().unwrap();
    let pattern_ok = exp.len() == 19
        && exp.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            10 => b == b'T',
            13 | 16 => b == b':',
            _ => b.is_ascii_digit(),
        });
    assert!(pattern_ok, "{exp}");
    let now = kluis_server::now_ms();
    let today = utc(now)[..10].to_owned();
    assert!(exp[..10] > *today, "{exp} is not after {today}");

    // Decrypt.Request.json's shape in, Decrypt.Response.json's shape out.
    let plain: Vec<u8> = (0..44u8).map(|i| i.wrapping_mul(29) ^ 0x5a).collect();
    let ct = office_encrypt(&ours["key"], &plain);
    let request = json!({"alg": "RSA-OAEP-256", "value": B64.encode(&ct)});
    let token = office_token("https://dke.test", "alice@org.nl", "user_impersonation");
    let (status, answer, headers) = post_full(&format!("{kid}/decrypt"), Some(&token), &request);
    assert_eq!(status, 200, "{answer}");
    assert!(
        headers
            .get("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{headers:?}"
    );
    let reference: Value = serde_json::from_str(REFERENCE_DECRYPTED).unwrap();
    assert_eq!(shape(&answer), shape(&reference));
    // Standard padded base64, as the reference's Convert.ToBase64String.
    let value = answer["value"].as_str().unwrap();
    assert_eq!(value, B64.encode(&plain));
    assert_eq!(B64.decode(value).unwrap(), plain);
}

/// Office asks Entra ID for a token for the `resource` the challenge names, and sends it back
/// with the scheme in whatever case its HTTP stack writes; the token's `scp` may list more
/// scopes than `user_impersonation` (space-separated). A token for another resource, or
/// whose `scp` merely contains the scope's name inside another, is answered with the
/// challenge again.
#[test]
fn the_token_office_gets_from_the_challenge_opens() {
    let server = setup("https://dke.test");
    let (_, body) = get(&format!("{}/dke/medical", server.base), None);
    let key: Value = serde_json::from_str::<Value>(&body).unwrap()["key"].clone();
    let url = format!("{}/decrypt", key["kid"].as_str().unwrap());
    let ct = office_encrypt(&key, &[7u8; 44]);
    let request = json!({"alg": "RSA-OAEP-256", "value": B64.encode(&ct)});

    let (status, _, headers) = post_full(&url, None, &request);
    assert_eq!(status, 401);
    let resource = headers["resource"].clone();
    assert_eq!(resource, "https://dke.test");
    let challenge = &headers["www-authenticate"];
    assert!(
        challenge.contains(&format!("resource=\"{resource}\"")),
        "{challenge}"
    );
    assert!(challenge.contains(&format!("realm=\"{resource}\"")));
    assert!(challenge.contains(&format!("authorization=\"{}\"", headers["authorization"])));

    for scp in [
        "user_impersonation",
        "openid profile user_impersonation",
        "user_impersonation email",
    ] {
        let token = office_token(&resource, "alice@org.nl", scp);
        for scheme in ["Bearer", "bearer", "BEARER"] {
            let mut req = common::agent()
                .post(&url)
                .header("Content-Type", "application/json")
                .header("Authorization", &format!("{scheme} {token}"));
            req = req.header("Accept", "application/json");
            let mut r = req.send(request.to_string()).unwrap();
            let text = r.body_mut().read_to_string().unwrap();
            assert_eq!(r.status().as_u16(), 200, "{scp} / {scheme}: {text}");
        }
    }
    for (aud, scp) in [
        ("https://dke.test/", "user_impersonation"),
        ("https://other.test", "user_impersonation"),
        (resource.as_str(), "user_impersonation_all"),
        (resource.as_str(), "xuser_impersonation"),
        (resource.as_str(), "user_impersonation,openid"),
    ] {
        let token = office_token(aud, "alice@org.nl", scp);
        let (status, answer, headers) = post_full(&url, Some(&token), &request);
        assert_eq!(status, 401, "{aud} {scp}: {answer}");
        assert!(headers.contains_key("www-authenticate"));
    }
}

/// Office stores the `kid` in every document and posts to it for the document's lifetime: it
/// must be the same on every fetch and after a restart, and keep the request's path (the
/// query left off) exactly as the reference's `GetLeftPart(UriPartial.Path)`.
#[test]
fn the_key_id_is_stable_across_fetches_and_restarts() {
    let server = setup("https://dke.test");
    let kid = |base: &str, suffix: &str| -> String {
        let (status, body) = get(&format!("{base}/dke/medical{suffix}"), None);
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<Value>(&body).unwrap()["key"]["kid"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let first = kid(&server.base, "");
    assert_eq!(kid(&server.base, ""), first);
    assert_eq!(kid(&server.base, "?api-version=1&x=%2F"), first);
    let id = first.rsplit('/').next().unwrap().to_owned();

    let dir = server.kill();
    let again = serve_http(dir);
    let second = kid(&again.base, "");
    assert_eq!(second, format!("{}/dke/medical/{id}", again.base));
}

/// The reference reads the body with Newtonsoft.Json, which matches member names ignoring
/// case (`GetClosestMatchProperty`: the exact name first, then any letter case), so `Alg` and
/// `VALUE` are the members `alg` and `value` there; so they are here. Two spellings of one
/// member without the exact one are ambiguous and refused as malformed.
#[test]
fn member_names_are_matched_as_the_reference_matches_them() {
    let server = setup("https://dke.test");
    let (_, body) = get(&format!("{}/dke/medical", server.base), None);
    let key: Value = serde_json::from_str::<Value>(&body).unwrap()["key"].clone();
    let url = format!("{}/decrypt", key["kid"].as_str().unwrap());
    let plain = [9u8; 44];
    let value = B64.encode(office_encrypt(&key, &plain));
    let token = office_token("https://dke.test", "alice@org.nl", "user_impersonation");
    for body in [
        json!({"Alg": "RSA-OAEP-256", "Value": value}),
        json!({"ALG": "RSA-OAEP-256", "VALUE": value}),
        json!({"alg": "RSA-OAEP-256", "Value": value}),
        // The exact name wins over another spelling.
        json!({"alg": "RSA-OAEP-256", "ALG": "RSA1_5", "value": value}),
    ] {
        let (status, answer, _) = post_full(&url, Some(&token), &body);
        assert_eq!(status, 200, "{body}: {answer}");
        assert_eq!(answer["value"], B64.encode(plain));
    }
    let (status, answer, _) = post_full(
        &url,
        Some(&token),
        &json!({"Alg": "RSA-OAEP-256", "ALG": "RSA-OAEP-256", "value": value}),
    );
    assert_eq!(
        (status, answer["code"].as_str()),
        (400, Some("malformed")),
        "{answer}"
    );
}

/// Office protects new documents with the key it fetched until `cache.exp`, offline. A label
/// that rotates on a schedule must not be handed a `cache.exp` past its current version's
/// scheduled rotation: else Office keeps sealing under that version for up to a day after it
/// was rotated out, and retention (counted from the rotation) destroys those documents before
/// they are as old as the retention period says (docs/SERVER.md, "Retention"). Without a
/// schedule, `cache.exp` is now + `key_cache_secs`.
#[test]
fn the_key_is_not_cached_past_its_scheduled_rotation() {
    let server = setup("https://dke.test");
    let d = server.dir.path();
    let before = kluis_server::now_ms();
    admin(
        d,
        &[
            "label",
            "create",
            "hourly",
            "--dke",
            "--rotate-every",
            "1h",
            "--user",
            "oidc:entra:alice@org.nl",
        ],
    );
    let exp = |name: &str| -> String {
        let (status, body) = get(&format!("{}/dke/{name}", server.base), None);
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<Value>(&body).unwrap()["cache"]["exp"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (hourly, daily) = (exp("hourly"), exp("medical"));
    let after = kluis_server::now_ms();
    // The version was made between `before` and `after`, so it rotates an hour later.
    assert!(
        hourly >= utc(before + 3_600_000 - 1_000) && hourly <= utc(after + 3_600_000),
        "cache.exp {hourly} is not the scheduled rotation (between {} and {})",
        utc(before + 3_600_000),
        utc(after + 3_600_000)
    );
    assert!(
        daily >= utc(before + 86_400_000 - 1_000) && daily <= utc(after + 86_400_000 + 1_000),
        "{daily}"
    );
}
