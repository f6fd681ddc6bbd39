//! OpenID Connect bearer tokens: JWT signatures against the identity provider's JWKS.
//!
//! [`OidcVerifier::verify`] accepts a compact JWS (as issued by Entra ID, Keycloak or ADFS) when
//! all of this holds, and refuses it otherwise:
//!
//! - the token is at most 8 KiB of three base64url parts (no padding, canonical), each header
//!   and claims set a JSON object without duplicate members;
//! - the header's `alg` is `RS256`, `ES256` or `EdDSA`; `none`, `HS*`, `PS*` and everything else
//!   are refused before any key is looked at. A `crit` or `cty` member is refused; `typ`, if
//!   present, is `JWT` or `at+jwt` (case-insensitive, `application/` prefix allowed). Keys
//!   embedded in or pointed at by the header (`jwk`, `jku`, `x5c`, `x5u`) are ignored: only the
//!   configured JWKS is trusted;
//! - the key is chosen by `kid`. A token without `kid` is accepted only when the JWKS holds
//!   exactly one usable key. The *key* decides the algorithm: an RSA key verifies only RS256, a
//!   P-256 key only ES256, an Ed25519 key only EdDSA, and a JWK's own `alg`, when present, must
//!   name that same algorithm (the key is skipped otherwise);
//! - only after the signature verifies is the claims set parsed: `iss` equals the configured
//!   issuer exactly; `aud` (a string or an array) contains one of the configured audiences;
//!   `exp` is required and the token is refused from `exp + leeway` on; `nbf` and `iat`, when
//!   present, may not lie more than the leeway in the future; the token's lifetime, from `iat`
//!   (or `nbf` when it has no `iat`) to `exp`, is at most `max_token_lifetime_secs` (24 h by
//!   default), and `exp` may lie at most that far ahead (the only bound for a token with
//!   neither `iat` nor `nbf`);
//! - `sub` is a string of 1–256 characters without control characters: with `jti`, it names
//!   the credential in the audit trail;
//! - the user claim (`user_claim`) is a string of 1–256 characters without control characters.
//!   There is **no fallback** to another claim when it is missing: mixing claims would mix name
//!   spaces (one user's `sub` could be another's `preferred_username`), so such a token is
//!   refused and the error names the claim;
//! - the groups claim (`groups_claim`) is absent (no groups), a string (one group, as ADFS
//!   sends a single group) or an array of at most 256 such strings. When it is absent because
//!   Entra ID left it out ("groups overage": `_claim_names` names it, or `hasgroups` is true),
//!   the token is refused rather than read as "no groups".
//!
//! The principal is namespaced by the issuer's configured `name` (default `idp`): user
//! `oidc:<name>:<user claim>`, groups `oidc:<name>:<group>`, credential
//! `oidc:<name>:<sub>[#<jti>]` (`%` and `#` in `sub` and `jti` written as `%25` and `%23`), so
//! that an OpenID Connect identity can never pass for an API-token user or an administrator.
//!
//! The key set (JWKS) comes from a file or an HTTPS URL and is cached. It is loaded once when
//! the verifier is made; after that it is reloaded **in the background, never on a request's
//! path**: one reload at a time, on a thread of its own, started when a token arrives while the
//! keys are older than `jwks_refresh_secs` or names an unknown `kid`, and by a timer when the
//! keys are older than `jwks_refresh_secs` without any token arriving (so that they do not go
//! stale on an idle server), and never more often than
//! once per `jwks_min_refresh_gap_secs` (so that tokens with made-up `kid`s cannot make the
//! server hammer the identity provider). A token with an unknown `kid` is refused at once
//! ([`OidcError::UnknownKey`]); once the reload has brought its key, the next one is accepted.
//! A failed reload keeps the previous keys, until they are older than `jwks_max_stale_secs`:
//! from then on every token is refused. Without keys nothing is accepted: the verifier never
//! fails open. The cache runs on the monotonic clock; the `now_unix_secs` given to `verify` is
//! used for the token's time claims only.

use std::fmt;
use std::io::Read;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::store::Principal;

/// The longest token accepted, in bytes.
const MAX_TOKEN_LEN: usize = 8 * 1024;
/// The largest JWKS document accepted, in bytes.
const MAX_JWKS_LEN: usize = 256 * 1024;
/// The most keys a JWKS document may hold.
const MAX_KEYS: usize = 64;
/// The longest user id, group name, `kid` or `jti`, in characters.
const MAX_NAME_CHARS: usize = 256;
/// The most groups a token may carry.
const MAX_GROUPS: usize = 256;
/// The largest CA bundle read from `ca_file`, in bytes.
const MAX_CA_FILE_LEN: u64 = 1024 * 1024;

/// JWK fields are base64url; be lenient about padding there (the JWKS is trusted input), but
/// never in tokens.
const B64_JWK: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The `[oidc]` table of the server's configuration.
///
/// ```toml
/// [oidc]
/// issuer = "https://login.microsoftonline.com/<tenant-id>/v2.0"
/// audience = "api://kluis"            # or an array: ["api://kluis", "<client-id>"]
/// jwks_url = "https://login.microsoftonline.com/<tenant-id>/discovery/v2.0/keys"
/// user_claim = "oid"                  # default "preferred_username"
/// ```
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The issuer's short name in this server's identities: its users are
    /// `oidc:<name>:<user>` and its groups `oidc:<name>:<group>` in label policies and the
    /// audit trail (default `idp`; 1–32 of `a-z 0-9 . _ -`). Changing it renames every user of
    /// this issuer: their policy entries must change with it.
    #[serde(default = "default_name")]
    pub name: String,
    /// The issuer (`iss`) every token must carry, compared exactly (mind a trailing `/`).
    pub issuer: String,
    /// The accepted audiences: a token is accepted when its `aud` contains one of them. In TOML
    /// a string or an array of strings.
    #[serde(deserialize_with = "one_or_many")]
    pub audience: Vec<String>,
    /// A local JWKS file (a JSON Web Key Set). Exactly one of `jwks_file` and `jwks_url`.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// The identity provider's JWKS URL; `https://` is required, except `http://` to a loopback
    /// address (for tests).
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// A PEM bundle of the CAs to trust for `jwks_url`, *instead of* the built-in Mozilla
    /// roots: for an identity provider behind an internal CA.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The claim that names the user (default `preferred_username`; Keycloak:
    /// `preferred_username`, Entra ID: `oid` (stable) or `preferred_username`/`upn`, ADFS:
    /// `upn`). No fallback to another claim.
    #[serde(default = "default_user_claim")]
    pub user_claim: String,
    /// The claim that lists the user's groups (default `groups`; ADFS: often `group`).
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Clock skew allowed on `exp`, `nbf` and `iat`, in seconds (default 60, at most 300).
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
    /// Tokens whose `exp` lies further ahead are refused, in seconds (default 86400).
    #[serde(default = "default_max_lifetime")]
    pub max_token_lifetime_secs: u64,
    /// Reload the JWKS when it is this old, in seconds (default 3600).
    #[serde(default = "default_refresh")]
    pub jwks_refresh_secs: u64,
    /// Never reload the JWKS more often than this, in seconds (default 30, at least 1).
    #[serde(default = "default_min_gap")]
    pub jwks_min_refresh_gap_secs: u64,
    /// Refuse every token when the last good JWKS is older than this, in seconds (default
    /// 86400).
    #[serde(default = "default_max_stale")]
    pub jwks_max_stale_secs: u64,
    /// Timeout of one JWKS fetch, connection included, in seconds (default 5).
    #[serde(default = "default_fetch_timeout")]
    pub jwks_fetch_timeout_secs: u64,
}

fn default_name() -> String {
    "idp".into()
}
fn default_user_claim() -> String {
    "preferred_username".into()
}
fn default_groups_claim() -> String {
    "groups".into()
}
fn default_leeway() -> u64 {
    60
}
fn default_max_lifetime() -> u64 {
    24 * 3600
}
fn default_refresh() -> u64 {
    3600
}
fn default_min_gap() -> u64 {
    30
}
fn default_max_stale() -> u64 {
    24 * 3600
}
fn default_fetch_timeout() -> u64 {
    5
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// Why a JWKS could not be loaded. The messages are for operators (they name files and URLs).
#[derive(Debug)]
#[non_exhaustive]
pub enum JwksError {
    /// Reading the JWKS file failed.
    Read {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// Fetching the JWKS URL failed (connection, TLS, timeout, redirect).
    Fetch {
        /// The URL.
        url: String,
        /// What failed.
        detail: String,
    },
    /// The JWKS URL answered with a status other than 200.
    Status {
        /// The URL.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// The document is larger than 256 KiB.
    TooLarge,
    /// The document is not a JSON Web Key Set.
    Malformed(String),
    /// The document holds more than 64 keys.
    TooManyKeys,
    /// No key in the document is usable: RS256 (RSA 2048–8192 bits), ES256 (P-256) or EdDSA
    /// (Ed25519) signing keys.
    NoUsableKeys,
}

impl fmt::Display for JwksError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwksError::Read { path, source } => write!(
                f,
                "cannot read the JWKS file {}: {source}: check `jwks_file`",
                path.display()
            ),
            JwksError::Fetch { url, detail } => write!(
                f,
                "cannot fetch the JWKS from {url}: {detail}: check `jwks_url`, the network and `ca_file`"
            ),
            JwksError::Status { url, status } => write!(
                f,
                "the JWKS URL {url} answered HTTP {status}: check `jwks_url` (the identity provider's `jwks_uri`)"
            ),
            JwksError::TooLarge => f.write_str(
                "the JWKS document is larger than 256 KiB: check that `jwks_url`/`jwks_file` names a key set",
            ),
            JwksError::Malformed(m) => write!(
                f,
                "the JWKS document is not a JSON Web Key Set ({m}): check that `jwks_url`/`jwks_file` names the identity provider's `jwks_uri`"
            ),
            JwksError::TooManyKeys => f.write_str("the JWKS document holds more than 64 keys"),
            JwksError::NoUsableKeys => f.write_str(
                "the JWKS holds no usable key: the identity provider must sign with RS256 (RSA), ES256 (P-256) or EdDSA (Ed25519)",
            ),
        }
    }
}

impl std::error::Error for JwksError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            JwksError::Read { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Why a token was refused, or the verifier could not be built.
///
/// The `Display` of every variant that [`OidcVerifier::verify`] returns is safe to send to the
/// caller: it never contains the token or any part of it. [`OidcError::Config`] and
/// [`OidcError::Jwks`] come only from [`OidcVerifier::new`] and are meant for operators.
///
/// Over HTTP: [`OidcError::JwksUnavailable`] is the server's problem, not the caller's, so it
/// is best answered 503 (with `Retry-After`) and logged with [`OidcError::jwks_cause`]; every
/// other variant is 401.
#[derive(Debug)]
#[non_exhaustive]
pub enum OidcError {
    /// The `[oidc]` configuration is invalid.
    Config(String),
    /// The JWKS file could not be loaded at start.
    Jwks(JwksError),
    /// The token is longer than 8 KiB.
    TooLarge,
    /// The token is not a compact JWS of base64url JSON objects.
    Malformed(&'static str),
    /// The header's `alg` is not RS256, ES256 or EdDSA (this includes `none` and HS256).
    UnsupportedAlgorithm,
    /// The header carries a member that is refused (`crit`, `cty`) or a wrong `typ`.
    UnsupportedHeader(&'static str),
    /// The token has no `kid` but the key set holds several keys.
    MissingKeyId,
    /// No key in the key set has the token's `kid`. Refused at once; a background reload is
    /// started (at most once per minimum gap), so a token signed with a key the identity
    /// provider has just published is accepted once the reload is done.
    UnknownKey,
    /// The key named by `kid` is of another type than the token's `alg`.
    AlgorithmMismatch,
    /// The signature does not verify.
    BadSignature,
    /// `iss` is not the configured issuer.
    WrongIssuer,
    /// `aud` does not contain a configured audience.
    WrongAudience,
    /// The token has expired (`exp`).
    Expired,
    /// The token is not valid yet (`nbf`), or was issued in the future (`iat`).
    NotYetValid,
    /// `exp` lies further ahead than the configured maximum lifetime.
    LifetimeTooLong,
    /// A required claim is missing.
    MissingClaim(String),
    /// A claim has the wrong type or form.
    BadClaim {
        /// The claim's name.
        claim: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The identity provider left the groups out (Entra ID "groups overage").
    GroupsOverage,
    /// The token's `scp` does not contain the required scope.
    MissingScope(String),
    /// The identity provider's keys are unavailable (never fetched, or too old and the reload
    /// fails): every token is refused until they are back.
    JwksUnavailable(Option<Arc<JwksError>>),
}

impl OidcError {
    /// For the server log: the cause of [`OidcError::JwksUnavailable`], if known. Not for the
    /// caller (it names internal URLs and files).
    pub fn jwks_cause(&self) -> Option<&JwksError> {
        match self {
            OidcError::JwksUnavailable(Some(e)) => Some(e),
            OidcError::Jwks(e) => Some(e),
            _ => None,
        }
    }
}

impl fmt::Display for OidcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use OidcError::*;
        match self {
            Config(m) => write!(f, "invalid [oidc] configuration: {m}"),
            Jwks(e) => write!(f, "{e}"),
            TooLarge => f.write_str("the bearer token is longer than 8 KiB"),
            Malformed(m) => write!(f, "the bearer token is not a signed JWT: {m}"),
            UnsupportedAlgorithm => f.write_str(
                "the bearer token's algorithm is not accepted: only RS256, ES256 and EdDSA are",
            ),
            UnsupportedHeader(m) => write!(f, "the bearer token's header is not accepted: {m}"),
            MissingKeyId => f.write_str(
                "the bearer token names no key (`kid`) and the identity provider has several",
            ),
            UnknownKey => f.write_str(
                "the bearer token is signed with a key the identity provider does not publish",
            ),
            AlgorithmMismatch => {
                f.write_str("the bearer token's algorithm does not match its key's type")
            }
            BadSignature => f.write_str("the bearer token's signature does not verify"),
            WrongIssuer => f.write_str(
                "the bearer token is from another issuer: get one from this server's identity provider",
            ),
            WrongAudience => f.write_str(
                "the bearer token is not meant for this key server (audience): request a token for the kluis API",
            ),
            Expired => f.write_str("the bearer token has expired: get a new one"),
            NotYetValid => f.write_str(
                "the bearer token is not valid yet: check the clocks of this machine and the identity provider",
            ),
            LifetimeTooLong => f.write_str(
                "the bearer token's expiry lies too far ahead: this server refuses long-lived tokens",
            ),
            MissingClaim(c) => write!(f, "the bearer token has no `{c}` claim"),
            BadClaim { claim, problem } => {
                write!(f, "the bearer token's `{claim}` claim is invalid: {problem}")
            }
            GroupsOverage => f.write_str(
                "the identity provider left the groups out of the token (too many groups): its administrators should emit only the groups assigned to the application",
            ),
            MissingScope(s) => write!(
                f,
                "the bearer token does not grant the `{s}` scope (`scp`): request a token for this service's `{s}` scope"
            ),
            JwksUnavailable(_) => f.write_str(
                "the identity provider's signing keys are unavailable, so no token can be checked: try again later",
            ),
        }
    }
}

impl std::error::Error for OidcError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OidcError::Jwks(e) => Some(e),
            _ => None,
        }
    }
}

/// Checks OpenID Connect bearer tokens; `Send + Sync`, share it in an `Arc`.
pub struct OidcVerifier {
    /// `oidc:<name>:`, the prefix of this issuer's users, groups and credentials.
    prefix: String,
    issuer: String,
    /// Further accepted issuers (Microsoft DKE: partner tenants); empty for `[oidc]`.
    more_issuers: Vec<String>,
    /// A scope `scp` must contain (Microsoft DKE: `user_impersonation`); none for `[oidc]`.
    scope: Option<String>,
    audience: Vec<String>,
    user_claim: String,
    groups_claim: String,
    leeway: i64,
    max_lifetime: i64,
    refresh: Duration,
    max_stale: Duration,
    keys: Arc<Keys>,
}

/// The key set and its background reloading, shared with the reloading thread.
struct Keys {
    source: Source,
    min_gap: Duration,
    cache: RwLock<Cache>,
    /// Whether a reload is running (at most one is).
    reloading: Mutex<bool>,
    /// Signalled when a reload ends.
    reloaded: Condvar,
}

impl fmt::Debug for OidcVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OidcVerifier")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("source", &self.keys.source)
            .finish_non_exhaustive()
    }
}

enum Source {
    File(PathBuf),
    Url { url: String, agent: ureq::Agent },
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(p) => write!(f, "File({})", p.display()),
            Source::Url { url, .. } => write!(f, "Url({url})"),
        }
    }
}

#[derive(Clone, Default)]
struct Cache {
    keys: Option<Arc<Vec<Jwk>>>,
    /// When `keys` were loaded.
    loaded: Option<Instant>,
    /// When a load was last attempted, successful or not.
    attempted: Option<Instant>,
    /// Why the last attempt failed; `None` when it succeeded.
    error: Option<Arc<JwksError>>,
}

impl OidcVerifier {
    /// Check the configuration and load the keys. A JWKS *file* must load, or this fails; a
    /// JWKS *URL* that cannot be fetched now does not stop the server: every token is refused
    /// ([`OidcError::JwksUnavailable`]) until a later fetch succeeds (at most one per
    /// `jwks_min_refresh_gap_secs`). See [`OidcVerifier::jwks_error`] to log why.
    pub fn new(config: OidcConfig) -> Result<Self, OidcError> {
        let bad = |m: &str| Err(OidcError::Config(m.to_owned()));
        if !crate::policy::valid_issuer_name(&config.name) {
            return bad("`name` must be 1-32 of a-z 0-9 . _ - (it prefixes this issuer's users)");
        }
        if config.issuer.is_empty() {
            return bad("`issuer` is empty: set it to the identity provider's issuer URL");
        }
        if config.audience.is_empty() || config.audience.iter().any(String::is_empty) {
            return bad(
                "`audience` is empty: set it to this API's audience (`aud`) as the identity provider issues it",
            );
        }
        if config.user_claim.is_empty() || config.groups_claim.is_empty() {
            return bad("`user_claim` and `groups_claim` must not be empty");
        }
        if config.leeway_secs > 300 {
            return bad("`leeway_secs` is at most 300: synchronise the clocks (NTP) instead");
        }
        if !(60..=7 * 24 * 3600).contains(&config.max_token_lifetime_secs) {
            return bad("`max_token_lifetime_secs` must lie between 60 and 604800");
        }
        if config.jwks_min_refresh_gap_secs == 0
            || config.jwks_refresh_secs < config.jwks_min_refresh_gap_secs
            || config.jwks_max_stale_secs < config.jwks_refresh_secs
        {
            return bad(
                "need 1 <= `jwks_min_refresh_gap_secs` <= `jwks_refresh_secs` <= `jwks_max_stale_secs`",
            );
        }
        if !(1..=60).contains(&config.jwks_fetch_timeout_secs) {
            return bad("`jwks_fetch_timeout_secs` must lie between 1 and 60");
        }
        let source = match (&config.jwks_file, &config.jwks_url) {
            (Some(path), None) => {
                if config.ca_file.is_some() {
                    return bad("`ca_file` applies to `jwks_url` only");
                }
                Source::File(path.clone())
            }
            (None, Some(url)) => Source::Url {
                agent: agent(
                    url,
                    config.ca_file.as_deref(),
                    Duration::from_secs(config.jwks_fetch_timeout_secs),
                )?,
                url: url.clone(),
            },
            _ => return bad("set exactly one of `jwks_file` and `jwks_url`"),
        };
        let verifier = OidcVerifier {
            prefix: format!("oidc:{}:", config.name),
            issuer: config.issuer,
            more_issuers: Vec::new(),
            scope: None,
            audience: config.audience,
            user_claim: config.user_claim,
            groups_claim: config.groups_claim,
            // The bounds checked above make these casts lossless.
            leeway: config.leeway_secs as i64,
            max_lifetime: config.max_token_lifetime_secs as i64,
            refresh: Duration::from_secs(config.jwks_refresh_secs),
            max_stale: Duration::from_secs(config.jwks_max_stale_secs),
            keys: Arc::new(Keys {
                source,
                min_gap: Duration::from_secs(config.jwks_min_refresh_gap_secs),
                cache: RwLock::new(Cache::default()),
                reloading: Mutex::new(false),
                reloaded: Condvar::new(),
            }),
        };
        // The first load happens here, before any request. A JWKS file is local configuration
        // and must load; a URL may be down for a while.
        match verifier.keys.load() {
            Err(e) if matches!(verifier.keys.source, Source::File(_)) => {
                return Err(OidcError::Jwks(e));
            }
            result => verifier.keys.record(result),
        }
        Keys::keep_fresh(&verifier.keys, verifier.refresh);
        Ok(verifier)
    }

    /// The same verifier, also accepting tokens from `more_issuers` and requiring `scope` in
    /// the `scp` claim (Microsoft Double Key Encryption, see [`crate::dke`]).
    pub fn with_issuers_and_scope(mut self, more_issuers: Vec<String>, scope: String) -> Self {
        self.more_issuers = more_issuers;
        self.scope = Some(scope);
        self
    }

    /// Check a bearer token (without the `Bearer ` prefix) at `now_unix_secs` and return whom it
    /// authenticates: user `oidc:<name>:<user claim>`, groups `oidc:<name>:<group>`, credential
    /// `oidc:<name>:<sub>[#<jti>]`. It never waits for the identity provider: when the keys
    /// need reloading, a background reload is started and the token is checked against the
    /// keys at hand (only signature checks, no I/O).
    pub fn verify(&self, token: &str, now_unix_secs: i64) -> Result<Principal, OidcError> {
        let jws = Jws::parse(token)?;
        let keys = self.keys_for(jws.kid.as_deref())?;
        let candidates: Vec<&Jwk> = match &jws.kid {
            Some(kid) => keys
                .iter()
                .filter(|k| k.kid.as_deref() == Some(kid))
                .collect(),
            None if keys.len() == 1 => keys.iter().collect(),
            None => return Err(OidcError::MissingKeyId),
        };
        if candidates.is_empty() {
            // `keys_for` started a reload (if the gap allows); this token is refused now.
            return Err(OidcError::UnknownKey);
        }
        let mut compatible = candidates
            .into_iter()
            .filter(|k| k.alg == jws.alg)
            .peekable();
        if compatible.peek().is_none() {
            return Err(OidcError::AlgorithmMismatch);
        }
        if !compatible.any(|k| k.verify(jws.signed, &jws.signature)) {
            return Err(OidcError::BadSignature);
        }
        // Only now, with the signature checked, is the claims set parsed.
        let claims = json_object(&jws.payload).map_err(|_| {
            OidcError::Malformed("the claims set is not a JSON object without duplicate members")
        })?;
        self.principal(&claims, now_unix_secs)
    }

    /// Why the last JWKS load failed, if it did (for the server log and readiness checks); `None`
    /// once a load succeeded again.
    pub fn jwks_error(&self) -> Option<Arc<JwksError>> {
        self.keys.snapshot().error
    }

    /// Wait until no background key reload is running, at most `timeout`; `true` when none
    /// is. For tests and diagnostics: requests never wait for a reload.
    pub fn wait_for_reload(&self, timeout: Duration) -> bool {
        let running = self
            .keys
            .reloading
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let (running, _) = self
            .keys
            .reloaded
            .wait_timeout_while(running, timeout, |r| *r)
            .unwrap_or_else(|p| p.into_inner());
        !*running
    }

    /// The current keys, without waiting. When they are old, missing, or lack `kid`, a
    /// background reload is started (at most one at a time, at most once per minimum gap).
    /// Refuses when there are none or they are too old.
    fn keys_for(&self, kid: Option<&str>) -> Result<Arc<Vec<Jwk>>, OidcError> {
        let cache = self.keys.snapshot();
        let wants_reload = match (&cache.keys, cache.loaded) {
            (Some(keys), Some(loaded)) => {
                loaded.elapsed() >= self.refresh
                    || kid.is_some_and(|kid| !keys.iter().any(|k| k.kid.as_deref() == Some(kid)))
            }
            _ => true,
        };
        if wants_reload {
            Keys::reload_in_background(&self.keys);
        }
        match (cache.keys, cache.loaded) {
            (Some(keys), Some(loaded)) if loaded.elapsed() <= self.max_stale => Ok(keys),
            _ => Err(OidcError::JwksUnavailable(cache.error)),
        }
    }
}

impl Keys {
    /// Load the key set once; the caller records the outcome.
    fn load(&self) -> Result<Vec<Jwk>, JwksError> {
        match &self.source {
            Source::File(path) => read_capped(path).and_then(|b| parse_jwks(&b)),
            Source::Url { url, agent } => fetch(agent, url).and_then(|b| parse_jwks(&b)),
        }
    }

    /// Record a load's outcome; a failure keeps the previous keys.
    fn record(&self, result: Result<Vec<Jwk>, JwksError>) {
        let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        cache.attempted = Some(now);
        match result {
            Ok(keys) => {
                cache.keys = Some(Arc::new(keys));
                cache.loaded = Some(now);
                cache.error = None;
            }
            Err(e) => cache.error = Some(Arc::new(e)),
        }
    }

    fn snapshot(&self) -> Cache {
        self.cache.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reload the keys when they are older than `refresh` (or missing) also when no token
    /// arrives: otherwise a server without OpenID Connect traffic for longer than
    /// `jwks_max_stale_secs` (a weekend) would refuse the next token as if the identity
    /// provider were down, though it never tried to reload. One timer thread for the whole
    /// process checks every registered key set once a second and starts the usual background
    /// reload (one at a time per key set, at most once per minimum gap). It holds the key sets
    /// only weakly, so a dropped verifier is forgotten. If the thread cannot be started, tokens
    /// still start reloads as before.
    fn keep_fresh(keys: &Arc<Keys>, refresh: Duration) {
        type Registered = Mutex<Vec<(Weak<Keys>, Duration)>>;
        static TIMER: OnceLock<Registered> = OnceLock::new();
        let mut first = false;
        let registered = TIMER.get_or_init(|| {
            first = true;
            Mutex::new(Vec::new())
        });
        registered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((Arc::downgrade(keys), refresh));
        if !first {
            return;
        }
        let _ = std::thread::Builder::new()
            .name("kluis-jwks-timer".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                    let due: Vec<Arc<Keys>> = {
                        let mut list = registered.lock().unwrap_or_else(|p| p.into_inner());
                        list.retain(|(keys, _)| keys.strong_count() > 0);
                        list.iter()
                            .filter_map(|(keys, refresh)| {
                                let keys = keys.upgrade()?;
                                let loaded = keys.snapshot().loaded;
                                loaded
                                    .is_none_or(|t| t.elapsed() >= *refresh)
                                    .then_some(keys)
                            })
                            .collect()
                    };
                    for keys in &due {
                        Keys::reload_in_background(keys);
                    }
                }
            });
    }

    /// Start a reload on a thread of its own, unless one is running or the last attempt ended
    /// less than the minimum gap ago. Never waits for the reload.
    fn reload_in_background(keys: &Arc<Keys>) {
        let mut running = keys.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let recent = keys
            .snapshot()
            .attempted
            .is_some_and(|t| t.elapsed() < keys.min_gap);
        if *running || recent {
            return;
        }
        *running = true;
        drop(running);
        /// Clears the flag and wakes waiters however the reload ends (even by a panic).
        struct Done(Arc<Keys>);
        impl Drop for Done {
            fn drop(&mut self) {
                *self.0.reloading.lock().unwrap_or_else(|p| p.into_inner()) = false;
                self.0.reloaded.notify_all();
            }
        }
        let done = Done(keys.clone());
        let spawned = std::thread::Builder::new()
            .name("kluis-jwks".into())
            .spawn(move || {
                let keys = &done.0;
                keys.record(keys.load());
            });
        if spawned.is_err() {
            // No thread (resources exhausted): the closure and its `Done` were dropped, which
            // cleared the flag. Record the attempt so that the gap applies before the next.
            keys.record(Err(JwksError::Fetch {
                url: "(the JWKS)".into(),
                detail: "cannot start a thread to reload it".into(),
            }));
        }
    }
}

impl OidcVerifier {
    fn principal(&self, claims: &Map<String, Value>, now: i64) -> Result<Principal, OidcError> {
        let bad = |claim: &str, problem| OidcError::BadClaim {
            claim: claim.to_owned(),
            problem,
        };
        match claims.get("iss") {
            None => return Err(OidcError::MissingClaim("iss".into())),
            Some(Value::String(iss)) if *iss == self.issuer || self.more_issuers.contains(iss) => {}
            Some(Value::String(_)) => return Err(OidcError::WrongIssuer),
            Some(_) => return Err(bad("iss", "not a string")),
        }
        let accepted = |v: &Value| {
            v.as_str()
                .is_some_and(|a| self.audience.iter().any(|x| x == a))
        };
        let auds: &[Value] = match claims.get("aud") {
            None => return Err(OidcError::MissingClaim("aud".into())),
            Some(aud @ Value::String(_)) => std::slice::from_ref(aud),
            Some(Value::Array(auds)) if auds.iter().all(Value::is_string) => auds,
            Some(_) => return Err(bad("aud", "not a string or an array of strings")),
        };
        if !auds.iter().any(accepted) {
            return Err(OidcError::WrongAudience);
        }
        if let Some(scope) = &self.scope {
            // `scp` is a space-separated list of the delegated scopes granted.
            let granted = match claims.get("scp") {
                Some(Value::String(scp)) => scp.split(' ').any(|s| s == scope),
                _ => false,
            };
            if !granted {
                return Err(OidcError::MissingScope(scope.clone()));
            }
        }

        let exp =
            numeric_date(claims, "exp")?.ok_or_else(|| OidcError::MissingClaim("exp".into()))?;
        if now >= exp.saturating_add(self.leeway) {
            return Err(OidcError::Expired);
        }
        if exp.saturating_sub(now) > self.max_lifetime {
            return Err(OidcError::LifetimeTooLong);
        }
        let (nbf, iat) = (numeric_date(claims, "nbf")?, numeric_date(claims, "iat")?);
        for t in [nbf, iat].into_iter().flatten() {
            if t > now.saturating_add(self.leeway) {
                return Err(OidcError::NotYetValid);
            }
        }
        // The lifetime runs from issue (`iat`, else `nbf`) to `exp`: a token issued long ago
        // with an `exp` just within reach is still a long-lived token. Without either claim,
        // the check of `exp` against now above is the only bound.
        if let Some(start) = iat.or(nbf) {
            if exp.saturating_sub(start) > self.max_lifetime {
                return Err(OidcError::LifetimeTooLong);
            }
        }
        let sub = match claims.get("sub") {
            None => return Err(OidcError::MissingClaim("sub".into())),
            Some(Value::String(s)) => name(s).map_err(|p| bad("sub", p))?,
            Some(_) => return Err(bad("sub", "not a string")),
        };

        let user = match claims.get(&self.user_claim) {
            None => return Err(OidcError::MissingClaim(self.user_claim.clone())),
            Some(Value::String(s)) => name(s).map_err(|p| bad(&self.user_claim, p))?,
            Some(_) => return Err(bad(&self.user_claim, "not a string")),
        };
        let groups = match claims.get(&self.groups_claim) {
            None if self.groups_overage(claims) => return Err(OidcError::GroupsOverage),
            None => Vec::new(),
            Some(Value::String(s)) => vec![name(s).map_err(|p| bad(&self.groups_claim, p))?],
            Some(Value::Array(items)) => {
                if items.len() > MAX_GROUPS {
                    return Err(bad(&self.groups_claim, "more than 256 groups"));
                }
                items
                    .iter()
                    .map(|v| match v {
                        Value::String(s) => name(s),
                        _ => Err("not an array of strings"),
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|p| bad(&self.groups_claim, p))?
            }
            Some(_) => {
                return Err(bad(
                    &self.groups_claim,
                    "not a string or an array of strings",
                ));
            }
        };

        // The credential: the subject, and the token's own id when it has one (so that the
        // records of one stolen token can be told apart, and matched against the identity
        // provider's logs). `%` and `#` are escaped so that the `#` separator is unambiguous.
        let mut credential = format!("{}{}", self.prefix, escape(&sub));
        match claims.get("jti") {
            None => {}
            Some(Value::String(jti)) => {
                let jti = name(jti).map_err(|p| bad("jti", p))?;
                credential.push('#');
                credential.push_str(&escape(&jti));
            }
            Some(_) => return Err(bad("jti", "not a string")),
        }
        Ok(Principal {
            user: format!("{}{user}", self.prefix),
            groups: groups
                .into_iter()
                .map(|g| format!("{}{g}", self.prefix))
                .collect(),
            credential,
        })
    }

    /// Entra ID replaces the groups by a pointer when a user is in too many of them.
    fn groups_overage(&self, claims: &Map<String, Value>) -> bool {
        let named = claims
            .get("_claim_names")
            .and_then(Value::as_object)
            .is_some_and(|names| names.contains_key(&self.groups_claim));
        named || claims.get("hasgroups") == Some(&Value::Bool(true))
    }
}

/// A user or group name: 1–256 characters, none of them control characters (they end up in
/// the audit trail).
fn name(s: &str) -> Result<String, &'static str> {
    if s.is_empty() {
        return Err("empty");
    }
    if s.chars().count() > MAX_NAME_CHARS {
        return Err("longer than 256 characters");
    }
    if s.chars().any(char::is_control) {
        return Err("contains control characters");
    }
    Ok(s.to_owned())
}

/// `%` and `#` written as `%25` and `%23`, for a part of a credential.
fn escape(s: &str) -> String {
    s.replace('%', "%25").replace('#', "%23")
}

/// A NumericDate claim (seconds since the epoch, possibly fractional), if present.
fn numeric_date(claims: &Map<String, Value>, claim: &str) -> Result<Option<i64>, OidcError> {
    match claims.get(claim) {
        None => Ok(None),
        Some(Value::Number(n)) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Ok(Some(i)),
            // `as` saturates: a huge `exp` becomes i64::MAX and is refused as too far ahead.
            (None, Some(f)) if f.is_finite() => Ok(Some(f.floor() as i64)),
            _ => Err(OidcError::BadClaim {
                claim: claim.into(),
                problem: "not a number of seconds",
            }),
        },
        Some(_) => Err(OidcError::BadClaim {
            claim: claim.into(),
            problem: "not a number of seconds",
        }),
    }
}

/// The accepted signature algorithms. The key's type decides which one applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Alg {
    Rs256,
    Es256,
    EdDsa,
}

impl Alg {
    fn from_name(name: &str) -> Option<Alg> {
        match name {
            "RS256" => Some(Alg::Rs256),
            "ES256" => Some(Alg::Es256),
            "EdDSA" => Some(Alg::EdDsa),
            _ => None,
        }
    }
}

/// A parsed compact JWS whose claims set is not parsed yet.
struct Jws<'a> {
    alg: Alg,
    kid: Option<String>,
    /// `header.payload`, the signed bytes.
    signed: &'a [u8],
    payload: Vec<u8>,
    signature: Vec<u8>,
}

impl<'a> Jws<'a> {
    fn parse(token: &'a str) -> Result<Self, OidcError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(OidcError::TooLarge);
        }
        let mut parts = token.splitn(4, '.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(OidcError::Malformed(
                "a JWT has three dot-separated parts (encrypted tokens are not supported)",
            ));
        };
        if h.is_empty() || p.is_empty() || s.is_empty() {
            return Err(OidcError::Malformed(
                "a part is empty (unsigned tokens are refused)",
            ));
        }
        let b64 = |part: &str| {
            URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|_| OidcError::Malformed("a part is not base64url without padding"))
        };
        let header = json_object(&b64(h)?).map_err(|_| {
            OidcError::Malformed("the header is not a JSON object without duplicate members")
        })?;
        let alg = match header.get("alg") {
            Some(Value::String(alg)) => {
                Alg::from_name(alg).ok_or(OidcError::UnsupportedAlgorithm)?
            }
            _ => return Err(OidcError::UnsupportedAlgorithm),
        };
        if header.contains_key("crit") {
            return Err(OidcError::UnsupportedHeader(
                "critical extensions (`crit`) are not supported",
            ));
        }
        if header.contains_key("cty") {
            return Err(OidcError::UnsupportedHeader(
                "nested tokens (`cty`) are not supported",
            ));
        }
        if let Some(typ) = header.get("typ") {
            let typ = typ.as_str().unwrap_or_default().to_ascii_lowercase();
            let typ = typ.strip_prefix("application/").unwrap_or(&typ);
            if typ != "jwt" && typ != "at+jwt" {
                return Err(OidcError::UnsupportedHeader(
                    "`typ` must be `JWT` or `at+jwt`",
                ));
            }
        }
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(kid))
                if !kid.is_empty() && kid.chars().count() <= MAX_NAME_CHARS =>
            {
                Some(kid.clone())
            }
            Some(_) => return Err(OidcError::Malformed("`kid` is not a short string")),
        };
        Ok(Jws {
            alg,
            kid,
            signed: &token.as_bytes()[..h.len() + 1 + p.len()],
            payload: b64(p)?,
            signature: b64(s)?,
        })
    }
}

/// A JSON object whose members are unique: parsers that keep the first and parsers that keep
/// the last of a duplicate must not read different tokens.
fn json_object(bytes: &[u8]) -> serde_json::Result<Map<String, Value>> {
    struct Unique(Map<String, Value>);
    impl<'de> Deserialize<'de> for Unique {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Unique;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Unique, A::Error> {
                    let mut map = Map::new();
                    while let Some(key) = a.next_key::<String>()? {
                        if map.contains_key(&key) {
                            return Err(de::Error::custom("duplicate member"));
                        }
                        let value = a.next_value()?;
                        map.insert(key, value);
                    }
                    Ok(Unique(map))
                }
            }
            d.deserialize_map(V)
        }
    }
    serde_json::from_slice::<Unique>(bytes).map(|u| u.0)
}

/// A verification key from the JWKS.
struct Jwk {
    kid: Option<String>,
    alg: Alg,
    key: KeyMaterial,
}

enum KeyMaterial {
    /// Modulus and exponent, big-endian without leading zeros.
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// The uncompressed point `04 ‖ x ‖ y`.
    P256(Vec<u8>),
    Ed25519(Vec<u8>),
}

impl Jwk {
    fn verify(&self, message: &[u8], sig: &[u8]) -> bool {
        match &self.key {
            KeyMaterial::Rsa { n, e } => RsaPublicKeyComponents { n, e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, message, sig)
                .is_ok(),
            KeyMaterial::P256(point) => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(message, sig)
                    .is_ok()
            }
            KeyMaterial::Ed25519(key) => UnparsedPublicKey::new(&signature::ED25519, key)
                .verify(message, sig)
                .is_ok(),
        }
    }

    /// The usable key a JWK describes, or `None` for keys that are not for RS256, ES256 or
    /// EdDSA signatures (encryption keys, other curves, other algorithms, malformed ones).
    fn from_value(v: &Value) -> Option<Jwk> {
        let field = |name: &str| v.get(name).and_then(Value::as_str);
        let bytes = |name: &str| field(name).and_then(|s| B64_JWK.decode(s).ok());
        if field("use").is_some_and(|u| u != "sig") {
            return None;
        }
        if let Some(ops) = v.get("key_ops") {
            let ops = ops.as_array()?;
            if !ops.iter().any(|o| o.as_str() == Some("verify")) {
                return None;
            }
        }
        let (alg, key) = match (field("kty")?, field("crv")) {
            ("RSA", _) => {
                let n = strip_zeros(bytes("n")?);
                let e = strip_zeros(bytes("e")?);
                let bits = (n.len() * 8).saturating_sub(n.first()?.leading_zeros() as usize);
                if !(2048..=8192).contains(&bits) || e.is_empty() || e.len() > 4 {
                    return None;
                }
                (Alg::Rs256, KeyMaterial::Rsa { n, e })
            }
            ("EC", Some("P-256")) => {
                let (x, y) = (bytes("x")?, bytes("y")?);
                if x.len() != 32 || y.len() != 32 {
                    return None;
                }
                let point = [&[4u8][..], &x, &y].concat();
                (Alg::Es256, KeyMaterial::P256(point))
            }
            ("OKP", Some("Ed25519")) => {
                let x = bytes("x")?;
                if x.len() != 32 {
                    return None;
                }
                (Alg::EdDsa, KeyMaterial::Ed25519(x))
            }
            _ => return None,
        };
        if let Some(jwk_alg) = v.get("alg") {
            if jwk_alg.as_str().and_then(Alg::from_name) != Some(alg) {
                return None;
            }
        }
        let kid = match v.get("kid") {
            None => None,
            Some(Value::String(kid)) if kid.chars().count() <= MAX_NAME_CHARS => Some(kid.clone()),
            Some(_) => return None,
        };
        Some(Jwk { kid, alg, key })
    }
}

fn strip_zeros(mut v: Vec<u8>) -> Vec<u8> {
    let zeros = v.iter().take_while(|&&b| b == 0).count();
    v.drain(..zeros);
    v
}

/// Parse a JWK Set: at most 64 keys, of which at least one usable.
fn parse_jwks(bytes: &[u8]) -> Result<Vec<Jwk>, JwksError> {
    if bytes.len() > MAX_JWKS_LEN {
        return Err(JwksError::TooLarge);
    }
    #[derive(Deserialize)]
    struct Doc {
        #[serde(deserialize_with = "at_most_max_keys")]
        keys: Vec<Value>,
    }
    let doc: Doc = serde_json::from_slice(bytes).map_err(|e| {
        if e.to_string().contains(TOO_MANY_KEYS) {
            JwksError::TooManyKeys
        } else {
            JwksError::Malformed(e.to_string())
        }
    })?;
    let keys: Vec<Jwk> = doc.keys.iter().filter_map(Jwk::from_value).collect();
    if keys.is_empty() {
        return Err(JwksError::NoUsableKeys);
    }
    Ok(keys)
}

const TOO_MANY_KEYS: &str = "kluis: more than 64 keys";

/// The `keys` array, refused as soon as it grows past [`MAX_KEYS`].
fn at_most_max_keys<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Value>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<Value>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an array of JWKs")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Vec<Value>, A::Error> {
            let mut keys = Vec::new();
            while let Some(key) = a.next_element()? {
                if keys.len() == MAX_KEYS {
                    return Err(de::Error::custom(TOO_MANY_KEYS));
                }
                keys.push(key);
            }
            Ok(keys)
        }
    }
    d.deserialize_seq(V)
}

/// Read a file of at most [`MAX_JWKS_LEN`] bytes.
fn read_capped(path: &Path) -> Result<Vec<u8>, JwksError> {
    let read = |source| JwksError::Read {
        path: path.to_owned(),
        source,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(read)?
        .take(MAX_JWKS_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(read)?;
    if bytes.len() > MAX_JWKS_LEN {
        return Err(JwksError::TooLarge);
    }
    Ok(bytes)
}

/// GET the JWKS URL; at most [`MAX_JWKS_LEN`] bytes of body.
fn fetch(agent: &ureq::Agent, url: &str) -> Result<Vec<u8>, JwksError> {
    let failed = |e: ureq::Error| JwksError::Fetch {
        url: url.to_owned(),
        detail: e.to_string(),
    };
    let mut response = agent
        .get(url)
        .header("accept", "application/jwk-set+json, application/json")
        .call()
        .map_err(failed)?;
    let status = response.status().as_u16();
    if status != 200 {
        return Err(JwksError::Status {
            url: url.to_owned(),
            status,
        });
    }
    response
        .body_mut()
        .with_config()
        .limit(MAX_JWKS_LEN as u64)
        .read_to_vec()
        .map_err(|e| match e {
            ureq::Error::BodyExceedsLimit(_) => JwksError::TooLarge,
            e => failed(e),
        })
}

/// The HTTP agent for `jwks_url`: HTTPS only (plain HTTP to loopback for tests), with a timeout,
/// no redirect to plain HTTP, and the `ca_file` roots if given.
fn agent(url: &str, ca_file: Option<&Path>, timeout: Duration) -> Result<ureq::Agent, OidcError> {
    let config_err = OidcError::Config;
    let uri: ureq::http::Uri = url
        .parse()
        .map_err(|_| config_err("`jwks_url` is not a URL".into()))?;
    let host = uri.host().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") if loopback => false,
        _ => {
            return Err(config_err(
                "`jwks_url` must start with https:// (http:// only to a loopback address, for tests)"
                    .into(),
            ));
        }
    };
    let mut tls = ureq::tls::TlsConfig::builder();
    if let Some(path) = ca_file {
        tls = tls.root_certs(ureq::tls::RootCerts::Specific(Arc::new(ca_bundle(path)?)));
    }
    let mut config = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .https_only(https)
        .max_redirects(if https { 3 } else { 0 })
        .user_agent(concat!("kluis-server/", env!("CARGO_PKG_VERSION")))
        .tls_config(tls.build());
    if loopback {
        // A loopback address is never reached through a proxy.
        config = config.proxy(None);
    }
    Ok(ureq::Agent::new_with_config(config.build()))
}

/// The certificates of a PEM bundle; at least one.
fn ca_bundle(path: &Path) -> Result<Vec<ureq::tls::Certificate<'static>>, OidcError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let problem = |m: &str| OidcError::Config(format!("`ca_file` {}: {m}", path.display()));
    let mut pem = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_CA_FILE_LEN).read_to_end(&mut pem))
        .map_err(|e| problem(&e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .map(|c| c.map(|c| ureq::tls::Certificate::from_der(&c).to_owned()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| problem(&format!("not a PEM certificate bundle ({e})")))?;
    if certs.is_empty() {
        return Err(problem("holds no PEM certificate"));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_members_are_refused() {
        assert!(json_object(br#"{"a":1,"b":2}"#).is_ok());
        assert!(json_object(br#"{"a":1,"a":1}"#).is_err());
        assert!(json_object(br#"[1]"#).is_err());
        assert!(json_object(br#"{"a":1} x"#).is_err());
    }

    #[test]
    fn numeric_dates() {
        let claims = json_object(br#"{"a":10,"b":10.9,"c":"10","d":1e300,"e":-3}"#).unwrap();
        assert_eq!(numeric_date(&claims, "a").unwrap(), Some(10));
        assert_eq!(numeric_date(&claims, "b").unwrap(), Some(10));
        assert!(numeric_date(&claims, "c").is_err());
        assert_eq!(numeric_date(&claims, "d").unwrap(), Some(i64::MAX));
        assert_eq!(numeric_date(&claims, "e").unwrap(), Some(-3));
        assert_eq!(numeric_date(&claims, "x").unwrap(), None);
    }

    #[test]
    fn jwks_key_count_is_capped_while_parsing() {
        let key =
            r#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#;
        let doc = |n: usize| format!(r#"{{"keys":[{}]}}"#, vec![key; n].join(","));
        assert_eq!(
            parse_jwks(doc(MAX_KEYS).as_bytes()).unwrap().len(),
            MAX_KEYS
        );
        assert!(matches!(
            parse_jwks(doc(MAX_KEYS + 1).as_bytes()),
            Err(JwksError::TooManyKeys)
        ));
    }

    #[test]
    fn jwk_alg_must_match_the_key_type() {
        let ed = |alg: &str| {
            serde_json::from_str::<Value>(&format!(
                r#"{{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"{alg}}}"#
            ))
            .unwrap()
        };
        assert!(Jwk::from_value(&ed("")).is_some());
        assert!(Jwk::from_value(&ed(r#","alg":"EdDSA""#)).is_some());
        assert!(Jwk::from_value(&ed(r#","alg":"RS256""#)).is_none());
        assert!(Jwk::from_value(&ed(r#","alg":"HS256""#)).is_none());
        assert!(Jwk::from_value(&ed(r#","use":"enc""#)).is_none());
        assert!(Jwk::from_value(&ed(r#","key_ops":["encrypt"]"#)).is_none());
        assert!(Jwk::from_value(&ed(r#","key_ops":["verify"]"#)).is_some());
    }
}
