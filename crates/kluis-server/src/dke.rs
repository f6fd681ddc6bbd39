//! Microsoft Double Key Encryption (DKE): the RSA-2048 key of a label version, the `[dke]`
//! configuration, and the formats Office expects (public key as a JWK, key ids, `cache.exp`).
//!
//! RSA is done by aws-lc-rs only (key generation, PKCS#8, RSA-OAEP with SHA-256 and
//! MGF1-SHA-256, constant-time decryption); ring has no RSA decryption. See docs/DKE.md.

use std::sync::Arc;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{
    KeySize, OAEP_SHA256_MGF1SHA256, OaepPrivateDecryptingKey, PrivateDecryptingKey, PublicKey,
};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::error::{Result, ServerError};
use crate::oidc::{OidcConfig, OidcError, OidcVerifier};

/// The size of an RSA-2048 ciphertext, in bytes.
pub const CIPHERTEXT_LEN: usize = 256;

/// The only wrapping algorithm Office asks for.
pub const ALGORITHM: &str = "RSA-OAEP-256";

/// A new RSA-2048 key pair: (public key, DER `SubjectPublicKeyInfo`; private key, PKCS#8 DER,
/// wiped from memory on drop).
pub fn generate() -> Result<(Vec<u8>, Zeroizing<Vec<u8>>)> {
    let failed = || ServerError::Init("generating a DKE RSA-2048 key failed");
    let key = PrivateDecryptingKey::generate(KeySize::Rsa2048).map_err(|_| failed())?;
    let private: aws_lc_rs::encoding::Pkcs8V1Der<'static> = key.as_der().map_err(|_| failed())?;
    let public: aws_lc_rs::encoding::PublicKeyX509Der<'static> =
        key.public_key().as_der().map_err(|_| failed())?;
    Ok((
        public.as_ref().to_vec(),
        Zeroizing::new(private.as_ref().to_vec()),
    ))
}

/// An unsealed DKE private key, ready to decrypt. Never printed.
pub struct DkeKey(OaepPrivateDecryptingKey);

impl std::fmt::Debug for DkeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DkeKey(..)")
    }
}

impl DkeKey {
    /// The key in `pkcs8` (PKCS#8 DER of an RSA-2048 key).
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self> {
        let damaged = || ServerError::Init("a stored DKE private key does not parse");
        let key = PrivateDecryptingKey::from_pkcs8(pkcs8).map_err(|_| damaged())?;
        if key.key_size_bytes() != CIPHERTEXT_LEN {
            return Err(damaged());
        }
        Ok(DkeKey(
            OaepPrivateDecryptingKey::new(key).map_err(|_| damaged())?,
        ))
    }

    /// RSA-OAEP-256 decryption (SHA-256, MGF1-SHA-256, no label). `None` for every failure
    /// alike: a wrong length, a ciphertext made for another key, bad padding.
    pub fn decrypt(&self, ciphertext: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        if ciphertext.len() != CIPHERTEXT_LEN {
            return None;
        }
        let mut out = Zeroizing::new(vec![0u8; CIPHERTEXT_LEN]);
        let n = self
            .0
            .decrypt(&OAEP_SHA256_MGF1SHA256, ciphertext, &mut out, None)
            .ok()?
            .len();
        out.truncate(n);
        Some(out)
    }
}

/// The key id of version `kid` with public key `public_der`: `<kid>-<8 hex digits of the
/// SHA-256 of the public key>`, so that a key id names exactly one key even if a version
/// number were ever reused (a store restored from an old backup, then rotated).
pub fn key_id(kid: u32, public_der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, public_der);
    format!("{kid}-{}", hex::encode(&digest.as_ref()[..4]))
}

/// The version number in a key id of [`key_id`]'s form, when it has that form.
pub fn parse_key_id(key_id: &str) -> Option<u32> {
    let (kid, fp) = key_id.split_once('-')?;
    let ok = fp.len() == 8
        && fp
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    let digits = !kid.is_empty() && kid.len() <= 10 && kid.bytes().all(|b| b.is_ascii_digit());
    (ok && digits && !kid.starts_with('0')).then(|| kid.parse().ok())?
}

/// A DKE decrypt request body as the server reads it: (`alg`, `value`, why the body is
/// malformed). Member names match as Microsoft's reference service matches them (the exact
/// name, else the one member of that name in another letter case). Public for the fuzz
/// target and property tests; the server reads at most 16 KiB of body before calling it.
pub fn parse_decrypt_body(body: &[u8]) -> (Option<String>, Option<String>, Option<String>) {
    crate::api::dke::parse_body(body)
}

/// The JWK members of a public key: (`n`, padded standard base64 of the big-endian modulus;
/// `e`, the public exponent).
pub fn jwk_parts(public_der: &[u8]) -> Result<(String, u64)> {
    let damaged = || ServerError::Init("a stored DKE public key does not parse");
    let key = PublicKey::from_der(public_der).map_err(|_| damaged())?;
    let n = key.modulus().big_endian_without_leading_zero().to_vec();
    let e_bytes = key.exponent().big_endian_without_leading_zero();
    if e_bytes.len() > 8 {
        return Err(damaged());
    }
    let e = e_bytes
        .iter()
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    Ok((STANDARD.encode(n), e))
}

/// `yyyy-MM-ddTHH:mm:ss` (UTC, no zone), the form of `cache.exp`, for `ms` since the epoch.
pub fn cache_exp(ms: i64) -> String {
    let t = kluis_core::UtcDateTime::from_unix_ms(ms);
    format!("{}T{}", t.date(), t.time())
}

/// The `[dke]` table of the server's configuration: serve the DKE protocol for Office.
///
/// ```toml
/// [dke]
/// url = "https://dke.example.org"        # the origin Office reaches (Application ID URI)
/// prefix = "/dke"                        # label URL: https://dke.example.org/dke/<label>
/// issuers = ["https://sts.windows.net/<tenant-id>/"]
/// jwks_url = "https://login.microsoftonline.com/common/discovery/v2.0/keys"
/// name = "entra"                         # users are oidc:entra:<upn>
/// user_claim = "upn"
/// ```
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkeConfig {
    /// The service's public origin (`https://host[:port]`, no path) as Office reaches it,
    /// behind any TLS terminator: key ids start with it. When absent, key ids are built from
    /// the request's `Host` header and the listener's scheme (then `audience` is required).
    #[serde(default)]
    pub url: Option<String>,
    /// The path prefix of the DKE routes (default `/dke`): the label URL is
    /// `<url><prefix>/<label>`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// The audience (`aud`) tokens must carry, advertised in the 401 challenge (default: `url`).
    #[serde(default)]
    pub audience: Option<String>,
    /// The authority URL advertised in the 401 challenge.
    #[serde(default = "default_authorization")]
    pub authorization: String,
    /// The accepted token issuers (`iss`): the organisation's tenant and partner tenants.
    pub issuers: Vec<String>,
    /// The issuer's short name in identities: DKE users are `oidc:<name>:<user>`, exactly as
    /// users of an `[oidc]` table with the same `name` (default `entra`).
    #[serde(default = "default_name")]
    pub name: String,
    /// A local JWKS file. Exactly one of `jwks_file` and `jwks_url`.
    #[serde(default)]
    pub jwks_file: Option<std::path::PathBuf>,
    /// The identity provider's JWKS URL (`https://`).
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// A PEM bundle of the CAs to trust for `jwks_url` instead of the built-in roots.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// The claim naming the user: `upn` (default), `email` or `preferred_username`.
    #[serde(default = "default_user_claim")]
    pub user_claim: String,
    /// The claim listing the user's groups (default `groups`).
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// The scope tokens must carry in `scp` (default `user_impersonation`).
    #[serde(default = "default_scope")]
    pub scope: String,
    /// How long Office may encrypt with a fetched public key offline (`cache.exp`), in
    /// seconds (default 86400).
    #[serde(default = "default_cache")]
    pub key_cache_secs: u64,
    /// Clock skew allowed on token times, in seconds (default 60, at most 300).
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
    /// Tokens living longer are refused, in seconds (default 86400).
    #[serde(default = "default_lifetime")]
    pub max_token_lifetime_secs: u64,
}

fn default_prefix() -> String {
    "/dke".into()
}
fn default_authorization() -> String {
    "https://login.windows.net/common/oauth2/authorize".into()
}
fn default_name() -> String {
    "entra".into()
}
fn default_user_claim() -> String {
    "upn".into()
}
fn default_groups_claim() -> String {
    "groups".into()
}
fn default_scope() -> String {
    "user_impersonation".into()
}
fn default_cache() -> u64 {
    86_400
}
fn default_leeway() -> u64 {
    60
}
fn default_lifetime() -> u64 {
    86_400
}

/// The checked DKE settings the HTTP layer needs, with the token verifier.
pub struct DkeSettings {
    /// The public origin, if configured (else taken from the request).
    pub url: Option<String>,
    /// The route prefix (`/dke`).
    pub prefix: String,
    /// The audience, also advertised in the challenge.
    pub audience: String,
    /// The authority advertised in the challenge.
    pub authorization: String,
    /// Seconds added to now for `cache.exp`.
    pub key_cache_secs: u64,
    /// Whether the listener is TLS (the scheme of key ids built from `Host`).
    pub tls: bool,
    /// Checks the Entra ID tokens.
    pub verifier: Arc<OidcVerifier>,
}

impl std::fmt::Debug for DkeSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DkeSettings")
            .field("url", &self.url)
            .field("prefix", &self.prefix)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

/// Whether `s` can go into a quoted header parameter unchanged.
fn header_safe(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 512
        && s.bytes()
            .all(|b| (0x21..0x7f).contains(&b) && b != b'"' && b != b'\\')
}

/// Whether `p` is a usable route prefix: `/` and path segments of unreserved characters, no
/// trailing `/`, not a kluis route.
fn valid_prefix(p: &str) -> bool {
    let Some(rest) = p.strip_prefix('/') else {
        return false;
    };
    let segments_ok = rest.split('/').all(|s| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
    });
    let first = rest.split('/').next().unwrap_or("");
    p.len() <= 64 && segments_ok && !["v1", "healthz", "readyz", "metrics"].contains(&first)
}

/// Whether `u` is an origin: `https://host[:port]` (or `http://` for tests), no path.
fn valid_origin(u: &str) -> bool {
    let Some(host) = u
        .strip_prefix("https://")
        .or_else(|| u.strip_prefix("http://"))
    else {
        return false;
    };
    !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
}

impl DkeConfig {
    /// Check the table and make the verifier. `tls`: whether the listener is TLS.
    pub fn settings(&self, tls: bool) -> Result<DkeSettings> {
        let bad = |m: &str| ServerError::Config(format!("[dke]: {m}"));
        if let Some(url) = &self.url {
            if !valid_origin(url) {
                return Err(bad(
                    "`url` must be the service's origin, `https://host[:port]`, without a path",
                ));
            }
        }
        if !valid_prefix(&self.prefix) {
            return Err(bad(
                "`prefix` must be `/` and path segments of A-Z a-z 0-9 - . _ ~ (like `/dke`), \
                 without a trailing `/`, and not a kluis route (/v1, /healthz, /readyz, /metrics)",
            ));
        }
        let audience = match (&self.audience, &self.url) {
            (Some(a), _) => a.clone(),
            (None, Some(u)) => u.clone(),
            (None, None) => {
                return Err(bad(
                    "set `url` (the service's origin, also the default audience) or `audience`",
                ));
            }
        };
        if !header_safe(&audience) || !header_safe(&self.authorization) {
            return Err(bad(
                "`audience` and `authorization` must be printable ASCII without quotes or spaces",
            ));
        }
        if self.issuers.is_empty() || self.issuers.iter().any(String::is_empty) {
            return Err(bad("`issuers` must list the accepted token issuers, e.g. \
                 \"https://sts.windows.net/<tenant-id>/\""));
        }
        if !["upn", "email", "preferred_username"].contains(&self.user_claim.as_str()) {
            return Err(bad(
                "`user_claim` must be `upn`, `email` or `preferred_username`",
            ));
        }
        if self.issuers.len() > 1 && self.user_claim != "upn" {
            // Users carry no tenant: a partner tenant's administrators can set `email` or
            // `preferred_username` to one of your users' names and open their documents.
            return Err(bad(
                "`user_claim` must be `upn` when `issuers` lists more than one tenant: `email` \
                 and `preferred_username` can be set by a partner tenant to your users' names",
            ));
        }
        if self.scope.is_empty() || self.scope.contains(char::is_whitespace) {
            return Err(bad(
                "`scope` must be one scope name, like `user_impersonation`",
            ));
        }
        if !(60..=365 * 86_400).contains(&self.key_cache_secs) {
            return Err(bad("`key_cache_secs` must lie between 60 and 31536000"));
        }
        let config = OidcConfig {
            name: self.name.clone(),
            issuer: self.issuers[0].clone(),
            audience: vec![audience.clone()],
            jwks_file: self.jwks_file.clone(),
            jwks_url: self.jwks_url.clone(),
            ca_file: self.ca_file.clone(),
            user_claim: self.user_claim.clone(),
            groups_claim: self.groups_claim.clone(),
            leeway_secs: self.leeway_secs,
            max_token_lifetime_secs: self.max_token_lifetime_secs,
            jwks_refresh_secs: 3600,
            jwks_min_refresh_gap_secs: 30,
            jwks_max_stale_secs: 86_400,
            jwks_fetch_timeout_secs: 5,
        };
        let verifier = OidcVerifier::new(config)
            .map_err(|e: OidcError| bad(&e.to_string()))?
            .with_issuers_and_scope(self.issuers[1..].to_vec(), self.scope.clone());
        if let Some(e) = verifier.jwks_error() {
            crate::log!(
                "warning: [dke] token signing keys not loaded yet ({e}); DKE decrypts are refused until they are"
            );
        }
        Ok(DkeSettings {
            url: self.url.clone(),
            prefix: self.prefix.clone(),
            audience,
            authorization: self.authorization.clone(),
            key_cache_secs: self.key_cache_secs,
            tls,
            verifier: Arc::new(verifier),
        })
    }
}

/// The document reference of a wrapped value: the first 16 bytes of its SHA-256, hex.
pub fn document_ref(wrapped: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, wrapped);
    hex::encode(&digest.as_ref()[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_exp_format() {
        assert_eq!(cache_exp(0), "1970-01-01T00:00:00");
        assert_eq!(cache_exp(1_700_000_000_000), "2023-11-14T22:13:20");
        assert_eq!(
            cache_exp(951_782_400_000 + 3_723_000),
            "2000-02-29T01:02:03"
        );
    }

    #[test]
    fn key_ids_round_trip_and_refuse_other_forms() {
        let id = key_id(7, b"public");
        assert_eq!(parse_key_id(&id), Some(7));
        for bad in [
            "7",
            "07-abcdef01",
            "7-ABCDEF01",
            "7-abcdef0",
            "x-abcdef01",
            "",
            "-",
            "99999999999-abcdef01",
        ] {
            assert_eq!(parse_key_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn generated_keys_decrypt_only_their_own_ciphertexts() {
        let (public, private) = generate().unwrap();
        let key = DkeKey::from_pkcs8(&private).unwrap();
        let (n, e) = jwk_parts(&public).unwrap();
        assert_eq!(e, 65537);
        assert_eq!(STANDARD.decode(n).unwrap().len(), 256);
        let enc = aws_lc_rs::rsa::OaepPublicEncryptingKey::new(
            aws_lc_rs::rsa::PublicEncryptingKey::from_der(&public).unwrap(),
        )
        .unwrap();
        let mut ct = vec![0u8; 256];
        enc.encrypt(&OAEP_SHA256_MGF1SHA256, &[7u8; 44], &mut ct, None)
            .unwrap();
        assert_eq!(key.decrypt(&ct).unwrap().as_slice(), &[7u8; 44]);
        assert!(key.decrypt(&ct[..255]).is_none());
        let mut other = ct.clone();
        other[100] ^= 1;
        assert!(key.decrypt(&other).is_none());
    }

    /// A `[dke]` table from TOML.
    fn config(toml_text: &str) -> DkeConfig {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn the_configuration_is_checked() {
        let base = "issuers = [\"https://sts.windows.net/t/\"]\njwks_file = \"/nonexistent\"\n";
        let refused = |extra: &str, what: &str| {
            let e = config(&format!("{base}{extra}"))
                .settings(true)
                .unwrap_err();
            assert!(e.to_string().contains(what), "{extra}: {e}");
        };
        refused("", "`url`");
        refused("url = \"https://dke.example.org/path\"\n", "origin");
        refused("url = \"https://x\"\nprefix = \"/v1\"\n", "prefix");
        refused("url = \"https://x\"\nuser_claim = \"sub\"\n", "user_claim");
        refused("url = \"https://x\"\nscope = \"a b\"\n", "scope");
        refused(
            "url = \"https://x\"\nkey_cache_secs = 1\n",
            "key_cache_secs",
        );
        refused("audience = \"a\\\"b\"\n", "audience");
        let e = config("url = \"https://x\"\nissuers = []\njwks_file = \"j\"\n")
            .settings(true)
            .unwrap_err();
        assert!(e.to_string().contains("issuers"), "{e}");
        assert!(toml::from_str::<DkeConfig>("issuers = []\nurll = \"x\"\n").is_err());
    }

    #[test]
    fn prefixes_and_origins() {
        assert!(valid_prefix("/dke"));
        assert!(valid_prefix("/keys/dke"));
        for p in [
            "", "/", "dke", "/dke/", "/v1", "/v1/x", "/a b", "/metrics", "/a//b",
        ] {
            assert!(!valid_prefix(p), "{p}");
        }
        assert!(valid_origin("https://dke.example.org"));
        assert!(valid_origin("https://dke.example.org:8443"));
        assert!(!valid_origin("https://dke.example.org/path"));
        assert!(!valid_origin("ftp://x"));
    }
}
