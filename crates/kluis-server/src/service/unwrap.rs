//! The unwrap decision: rate limit, authorise, unwrap, and hold the shares until their audit
//! records are committed.
//!
//! The steps are types: a [`Principal`] (authenticated) is [`Admitted`] by the rate limiter;
//! only an admitted caller's items are authorised and unwrapped, into a [`Pending`]; only the
//! audit writer turns a `Pending` into a [`Committed`](super::writer::Committed), after its
//! records are durable; only a `Committed` gives out shares, sealed to the caller. The shares
//! of a `Pending` are private to the service layer, so code outside it (the HTTP handlers)
//! cannot release them before the commit:
//!
//! The right order compiles:
//!
//! ```
//! use kluis_core::reply::{ReplySealer, SealedShare};
//! use kluis_server::service::unwrap::{Pending, Refusal};
//! use kluis_server::service::writer::{AuditWriter, NotCommitted};
//!
//! async fn release(
//!     writer: &AuditWriter,
//!     pending: Pending,
//!     sealer: &mut ReplySealer,
//! ) -> Result<Vec<Result<SealedShare, Refusal>>, NotCommitted> {
//!     let committed = writer.commit(pending, writer.arriving()).await?;
//!     Ok(committed.release(sealer))
//! }
//! ```
//!
//! ```compile_fail,E0616
//! // Taking the shares out of a `Pending` does not compile: they are private.
//! fn leak(p: kluis_server::service::unwrap::Pending) -> usize {
//!     p.results.len()
//! }
//! ```
//!
//! ```compile_fail,E0423
//! // Nor can anyone but the audit writer make the receipt that releases them.
//! use kluis_server::service::{unwrap::Pending, writer::Committed};
//! fn forge(p: Pending) -> Committed {
//!     Committed(p)
//! }
//! ```
//!
//! ```compile_fail,E0624
//! // Nor can code outside the service take a label key and unwrap with it unaudited.
//! use kluis_server::{KeyService, SqliteStore};
//! fn bypass(svc: &KeyService<SqliteStore>) {
//!     let _ = svc.label_key("hr", 1);
//! }
//! ```

use std::collections::HashMap;
use std::time::Duration;

use kluis_core::{DocId, LabelKey, OrgStanza, Share, SlotKind};
use serde::Deserialize;

use super::KeyService;
use super::writer::Observed;
use crate::audit::AuditEntry;
use crate::error::ServerError;
use crate::limit::RateLimiter;
use crate::policy::Policy;
use crate::store::{Principal, Store, VersionState};
use crate::time::now_ms;

/// Why the caller unwraps: retired versions open only for re-keying.
#[derive(Deserialize, Default, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Purpose {
    /// To open a document.
    #[default]
    Open,
    /// To re-key a document to the current version.
    Rekey,
}

/// Why one item (or a whole request) was refused: a stable `code` and a message for the
/// caller that never holds a secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// `malformed`, `denied`, `double_key_required`, `retired`, `not_found`, `destroyed` or
    /// `internal`.
    pub code: &'static str,
    /// What went wrong and what to do.
    pub message: String,
    /// For `destroyed`: when the key version was destroyed (ms since the epoch).
    pub destroyed_ms: Option<i64>,
}

impl Refusal {
    /// A refusal with `code` and `message`.
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
            destroyed_ms: None,
        }
    }
}

impl From<ServerError> for Refusal {
    fn from(e: ServerError) -> Self {
        match e {
            ServerError::UnknownLabel(_) | ServerError::UnknownVersion { .. } => {
                Refusal::new("not_found", e.to_string())
            }
            ServerError::Destroyed { destroyed_ms, .. } => Refusal {
                destroyed_ms,
                ..Refusal::new("destroyed", e.to_string())
            },
            // The database cannot be reached or did not answer in time: say so (503), so
            // that clients retry, rather than claim the server failed.
            ServerError::Database(_) => Refusal::new(
                "store_unavailable",
                "the key server cannot reach its database now; try again shortly",
            ),
            // Never leak store internals to callers.
            _ => Refusal::new(
                "internal",
                "the key server failed; its operators can find details in its log",
            ),
        }
    }
}

/// An authenticated caller the rate limiter let through, for a number of items.
pub struct Admitted {
    who: Principal,
}

impl Admitted {
    /// Charge `items` unwraps to `who`; `Err(wait)` when over the limit.
    pub(crate) fn admit(
        limiter: &RateLimiter,
        who: Principal,
        items: usize,
    ) -> Result<Admitted, Duration> {
        limiter.check(&who.user, items as f64)?;
        Ok(Admitted { who })
    }

    /// [`Admitted::admit`], except for a request decided again after
    /// [`NotCommitted::Stale`](super::writer::NotCommitted::Stale): `before`, its earlier
    /// admission, was charged already, so `who` (authenticated anew) is not charged again
    /// when it is the same user.
    pub(crate) fn readmit(
        limiter: &RateLimiter,
        before: Option<Admitted>,
        who: Principal,
        items: usize,
    ) -> Result<Admitted, Duration> {
        match before {
            Some(b) if b.who.user == who.user => Ok(Admitted { who }),
            _ => Admitted::admit(limiter, who, items),
        }
    }

    /// `who` admitted without a rate limiter, for the crate's own tests of the unwrap path
    /// (feature `test-support`, enabled only by this crate's dev-dependency on itself).
    #[cfg(feature = "test-support")]
    #[doc(hidden)]
    pub fn for_tests(who: Principal) -> Admitted {
        Admitted { who }
    }

    /// Who was admitted.
    pub fn principal(&self) -> &Principal {
        &self.who
    }
}

/// A request authorised and unwrapped, waiting for its audit records to be committed. Its
/// shares cannot be reached from outside the service layer; the audit writer's
/// [`commit`](super::writer::AuditWriter::commit) turns it into a
/// [`Committed`](super::writer::Committed), which releases them.
pub struct Pending {
    /// Per item, the share or why not (items that failed to parse have no audit record).
    pub(super) results: Vec<Result<(DocId, Share), Refusal>>,
    /// The audit records, one per parsed item.
    pub(super) entries: Vec<AuditEntry>,
    /// The access epoch it was authorised under.
    pub(super) observed: Observed,
    /// The request's last decision (see [`Pending::last`]).
    pub(super) last: bool,
}

impl Pending {
    /// Mark this the request's last decision: if access may have been withdrawn since it was
    /// authorised ([`NotCommitted::Stale`](super::writer::NotCommitted::Stale)), its records
    /// are committed all the same, each grant as refused
    /// ([`STALE_OUTCOME`](super::writer::STALE_OUTCOME)), and nothing is released; so every
    /// request that was decided leaves its records.
    pub fn last(mut self, last: bool) -> Self {
        self.last = last;
        self
    }

    /// The outcome of each audited item (`granted` or a refusal code), for metrics.
    pub fn outcomes(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.outcome.as_str())
    }
}

/// Label policies and unsealed label keys, looked up once per request rather than once per
/// item (the store connection is held for the whole request). Only the policy: an unwrap
/// needs no list of versions (one database round trip fewer per request on PostgreSQL).
#[derive(Default)]
struct Lookups {
    labels: HashMap<String, Result<Policy, Refusal>>,
    keys: HashMap<(String, u32), Result<(LabelKey, VersionState), Refusal>>,
}

impl Lookups {
    fn policy<S: Store>(&mut self, svc: &KeyService<S>, name: &str) -> Result<&Policy, Refusal> {
        self.labels
            .entry(name.to_owned())
            .or_insert_with(|| svc.policy(name).map_err(Refusal::from))
            .as_ref()
            .map_err(Clone::clone)
    }

    fn key<S: Store>(
        &mut self,
        svc: &KeyService<S>,
        name: &str,
        kid: u32,
    ) -> Result<&(LabelKey, VersionState), Refusal> {
        self.keys
            .entry((name.to_owned(), kid))
            .or_insert_with(|| svc.label_key(name, kid).map_err(Refusal::from))
            .as_ref()
            .map_err(Clone::clone)
    }
}

/// What an unwrap request asks, parsed.
pub struct UnwrapRequest {
    /// Why the caller unwraps.
    pub purpose: Purpose,
    /// The reason the caller stated (validated by the caller of [`KeyService::unwrap`]).
    pub reason: Option<String>,
    /// The client's address, for the audit trail.
    pub client: String,
    /// Per item: the document and its org stanza, or why it could not be parsed.
    pub items: Vec<Result<(DocId, OrgStanza), Refusal>>,
}

impl<S: Store> KeyService<S> {
    /// Authorise and unwrap every item of an admitted caller's request. Each parsed item gets
    /// an audit record (granted or refused); nothing leaves before they are committed.
    /// `observed` is the access epoch taken before the caller was authenticated
    /// ([`AuditWriter::observe`](super::writer::AuditWriter::observe)).
    pub fn unwrap(&self, admitted: &Admitted, req: UnwrapRequest, observed: Observed) -> Pending {
        let who = &admitted.who;
        let base = AuditEntry {
            time_ms: now_ms(),
            actor: who.user.clone(),
            action: match req.purpose {
                Purpose::Open => "unwrap",
                Purpose::Rekey => "unwrap.rekey",
            }
            .to_owned(),
            label: None,
            kid: None,
            doc_id: None,
            outcome: String::new(),
            reason: req.reason,
            client: Some(req.client),
            credential: Some(who.credential.clone()),
        };
        let mut lookups = Lookups::default();
        let mut results = Vec::with_capacity(req.items.len());
        let mut entries = Vec::with_capacity(req.items.len());
        for item in req.items {
            match item {
                Ok((doc_id, stanza)) => {
                    let mut entry = base.clone();
                    entry.label = Some(stanza.label().to_owned());
                    entry.kid = Some(stanza.kid());
                    entry.doc_id = Some(doc_id.to_string());
                    let res = self.unwrap_item(&mut lookups, who, req.purpose, &doc_id, &stanza);
                    entry.outcome = match &res {
                        Ok(_) => "granted".to_owned(),
                        Err(e) => e.code.to_owned(),
                    };
                    entries.push(entry);
                    results.push(res.map(|share| (doc_id, share)));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        Pending {
            results,
            entries,
            observed,
            last: false,
        }
    }

    /// Authorise, then unwrap one item.
    fn unwrap_item(
        &self,
        lookups: &mut Lookups,
        who: &Principal,
        purpose: Purpose,
        doc_id: &DocId,
        stanza: &OrgStanza,
    ) -> Result<Share, Refusal> {
        let policy = lookups.policy(self, stanza.label())?;
        if !policy.allows(&who.user, &who.groups) {
            return Err(Refusal::new(
                "denied",
                format!(
                    "you may not open documents labelled `{}`; ask the label's owner",
                    stanza.label()
                ),
            ));
        }
        if policy.double_key && stanza.slot_kind() != SlotKind::Half {
            return Err(Refusal::new(
                "double_key_required",
                format!(
                    "label `{}` requires double key; this document was sealed with one key",
                    stanza.label()
                ),
            ));
        }
        // Only now, authorised, the key operation.
        let (key, state) = lookups.key(self, stanza.label(), stanza.kid())?;
        if *state == VersionState::Retired && purpose != Purpose::Rekey {
            return Err(Refusal::new(
                "retired",
                "this key version is retired: it opens only to re-key (purpose \"rekey\")",
            ));
        }
        key.unwrap_stanza(doc_id, stanza).map_err(|_| {
            Refusal::new(
                "malformed",
                "the stanza does not authenticate for this document and key version",
            )
        })
    }
}
