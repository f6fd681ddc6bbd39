//! Authentication: who is calling, from a kluis API token (checked against the store) or an
//! OpenID Connect JWT (checked by a [`TokenVerifier`], without a store connection).

use crate::error::ServerError;
use crate::store::{Principal, Store};
use crate::time::now_ms;

use super::KeyService;

/// Verifies bearer tokens that are not kluis API tokens (OpenID Connect JWTs).
pub trait TokenVerifier: Send + Sync {
    /// Who the token authenticates, with names namespaced to the verifier's source (see
    /// [`Principal`]). Must not wait for the network (reload keys in the background); it runs
    /// on a blocking thread, without a store connection.
    fn verify(&self, token: &str, now_secs: i64) -> Result<Principal, VerifyError>;
}

/// Why a bearer token was not accepted.
#[derive(Debug)]
pub enum VerifyError {
    /// The token is not valid: 401, with a message for the caller (never the token itself).
    Invalid(String),
    /// The token cannot be checked now (the identity provider's keys are unavailable): 503.
    Unavailable(String),
}

impl TokenVerifier for crate::oidc::OidcVerifier {
    fn verify(&self, token: &str, now_secs: i64) -> Result<Principal, VerifyError> {
        crate::oidc::OidcVerifier::verify(self, token, now_secs).map_err(|e| {
            if let Some(cause) = e.jwks_cause() {
                crate::log!("OpenID Connect keys unavailable: {cause}");
            }
            match e {
                crate::oidc::OidcError::JwksUnavailable(_) => VerifyError::Unavailable(
                    "the identity provider's signing keys cannot be fetched; try again later"
                        .into(),
                ),
                e => VerifyError::Invalid(e.to_string()),
            }
        })
    }
}

/// Why a caller is not authenticated.
#[derive(Debug)]
pub enum AuthError {
    /// The token is unknown, revoked, expired or invalid: the message says which (never the
    /// token itself).
    Unauthenticated(String),
    /// The token cannot be checked now (the identity provider's keys are unavailable).
    Unavailable(String),
    /// The store failed.
    Store(ServerError),
}

impl From<ServerError> for AuthError {
    fn from(e: ServerError) -> Self {
        AuthError::Store(e)
    }
}

/// Who is calling: an API token still to be checked against the store, or the principal of a
/// JWT already verified (without a store connection).
#[derive(Clone)]
pub struct Caller(Inner);

#[derive(Clone)]
enum Inner {
    ApiToken(String),
    Verified(Principal),
}

impl Caller {
    /// Whether identifying `token` takes a [`TokenVerifier`] (it is not a kluis API token).
    /// Such a verification may take CPU time: run it on a blocking thread.
    pub fn needs_verifier(token: &str) -> bool {
        !token.starts_with("kluis_")
    }

    /// Tell an API token from a JWT and verify a JWT with `verifier` (none configured: every
    /// JWT is refused). Holds no store connection.
    pub fn identify(
        token: String,
        verifier: Option<&dyn TokenVerifier>,
    ) -> Result<Caller, AuthError> {
        if !Caller::needs_verifier(&token) {
            return Ok(Caller(Inner::ApiToken(token)));
        }
        match verifier {
            Some(v) => v
                .verify(&token, now_ms() / 1000)
                .map(|p| Caller(Inner::Verified(p)))
                .map_err(|e| match e {
                    VerifyError::Invalid(m) => AuthError::Unauthenticated(m),
                    VerifyError::Unavailable(m) => AuthError::Unavailable(m),
                }),
            None => Err(AuthError::Unauthenticated(
                "not a kluis API token (this server accepts no OpenID Connect tokens)".into(),
            )),
        }
    }

    /// Whether [`Caller::principal`] looks the caller up in the store (an API token); a JWT
    /// was verified already.
    pub fn needs_store(&self) -> bool {
        matches!(self.0, Inner::ApiToken(_))
    }

    /// The same caller with its API token checked on `svc`'s store once (a JWT was verified
    /// already), so that later [`Caller::principal`] calls need no store lookup.
    pub fn authenticated<S: Store>(self, svc: &KeyService<S>) -> Result<Caller, AuthError> {
        match self.0 {
            Inner::ApiToken(_) => self.principal(svc).map(|p| Caller(Inner::Verified(p))),
            Inner::Verified(_) => Ok(self),
        }
    }

    /// The namespaced user of an authenticated caller (a verified JWT, or an API token after
    /// [`Caller::authenticated`]); empty before.
    pub fn user(&self) -> &str {
        match &self.0 {
            Inner::Verified(p) => &p.user,
            Inner::ApiToken(_) => "",
        }
    }

    /// The principal: an API token is looked up on `svc`'s store.
    pub fn principal<S: Store>(&self, svc: &KeyService<S>) -> Result<Principal, AuthError> {
        match &self.0 {
            Inner::ApiToken(token) => svc.authenticate(token, now_ms())?.ok_or_else(|| {
                AuthError::Unauthenticated(
                    "the token is unknown, revoked or expired: ask for a new one".into(),
                )
            }),
            Inner::Verified(p) => Ok(p.clone()),
        }
    }
}
