//! A label's policy: who may open, double key, recovery keys, rotation and retention.

use serde::{Deserialize, Serialize};

use crate::error::{Result, ServerError};

/// What a label allows and requires. Stored as JSON with the label.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Users who may open documents under this label.
    #[serde(default)]
    pub users: Vec<String>,
    /// Groups whose members may open documents under this label.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Whether documents must be double-key (the server refuses single-key stanzas).
    #[serde(default)]
    pub double_key: bool,
    /// Recovery public keys (`kluis1…`) that clients must add as an extra slot.
    #[serde(default)]
    pub recovery: Vec<String>,
    /// Rotate to a new key version when the current one is this many seconds old (the
    /// server's scheduler does it).
    #[serde(default)]
    pub rotation_secs: Option<u64>,
    /// Destroy a key version this many seconds after it stopped sealing (was rotated out):
    /// every document sealed under it is then at least this old. This is how retention
    /// periods are enforced.
    #[serde(default)]
    pub retention_secs: Option<u64>,
}

impl Policy {
    /// Check names and recovery keys.
    pub fn validate(&self) -> Result<()> {
        for name in self.users.iter().chain(&self.groups) {
            // An OpenID Connect name is `oidc:<issuer name>:` and the name the identity
            // provider sends, which may itself be 256 characters long (see `oidc`): the
            // limit applies to that part, or such a user could be named in no policy.
            let too_long = match name.strip_prefix("oidc:").and_then(|r| r.split_once(':')) {
                Some((_, own)) => own.chars().count() > 256,
                None => name.len() > 256,
            };
            if name.is_empty() || too_long || name.chars().any(char::is_control) {
                return Err(ServerError::BadPolicy(
                    "user and group names must be 1-256 printable characters".into(),
                ));
            }
        }
        for name in self.users.iter().chain(&self.groups) {
            check_namespace(name)?;
        }
        for key in &self.recovery {
            key.parse::<kluis_core::PublicKey>()
                .map_err(|e| ServerError::BadPolicy(format!("recovery key: {e}")))?;
        }
        if self.retention_secs == Some(0) || self.rotation_secs == Some(0) {
            return Err(ServerError::BadPolicy(
                "rotation and retention periods must be at least one second".into(),
            ));
        }
        Ok(())
    }

    /// Whether a caller with this user id and groups may open documents under the label.
    pub fn allows(&self, user: &str, groups: &[String]) -> bool {
        self.users.iter().any(|u| u == user) || groups.iter().any(|g| self.groups.contains(g))
    }
}

/// User names the server itself writes as plain audit actors; no API token may carry them.
const RESERVED: [&str; 2] = ["admin", "scheduler"];

/// Whether `name` is a valid OpenID Connect issuer name (`[oidc] name`): 1–32 of `a-z 0-9 . _ -`.
pub(crate) fn valid_issuer_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

/// A policy entry with a `:` names another source than API tokens: it must be
/// `oidc:<issuer name>:<name>`. `admin:…` and other prefixes never open documents, so they are
/// refused as the mistakes they are.
fn check_namespace(name: &str) -> Result<()> {
    let Some((source, rest)) = name.split_once(':') else {
        return Ok(()); // an API token's user or group
    };
    let ok = source == "oidc"
        && rest
            .split_once(':')
            .is_some_and(|(issuer, n)| valid_issuer_name(issuer) && !n.is_empty());
    if ok {
        Ok(())
    } else {
        Err(ServerError::BadPolicy(format!(
            "`{name}`: a name with `:` must be `oidc:<issuer name>:<user or group>` (an OpenID \
             Connect identity); API-token users and groups are written without a prefix"
        )))
    }
}

/// The user and group names an API token may carry: plain names (no `:`, which marks the
/// names of other sources), and not the server's own actors (`admin`, `scheduler`).
pub(crate) fn check_token_names(user: &str, groups: &[String]) -> Result<()> {
    if user.contains(':') || groups.iter().any(|g| g.contains(':')) {
        return Err(ServerError::BadPolicy(
            "an API token's user and group names may not contain `:` (it marks OpenID Connect \
             and administrator identities): choose a name without it"
                .into(),
        ));
    }
    if RESERVED.contains(&user) {
        return Err(ServerError::BadPolicy(format!(
            "`{user}` is the name the server records its own actions under: choose another user \
             name"
        )));
    }
    Ok(())
}
