//! Microsoft Double Key Encryption: DKE keys of label versions, and the decrypt decision.
//!
//! A decrypt goes the way of an unwrap: authenticate (an Entra ID token, in the HTTP layer) →
//! rate limit ([`Admitted`]) → authorise by the label's policy → decrypt, into a
//! [`DkePending`] whose plaintext is private to the service layer → the audit writer's
//! [`commit_dke`](super::writer::AuditWriter::commit_dke) → a
//! [`DkeCommitted`](super::writer::DkeCommitted), the only way to the plaintext.
//!
//! ```compile_fail,E0616
//! // Taking the plaintext out of a `DkePending` does not compile: it is private.
//! fn leak(p: kluis_server::service::dke::DkePending) -> bool {
//!     p.result.is_ok()
//! }
//! ```
//!
//! ```compile_fail,E0423
//! // Nor can anyone but the audit writer make the receipt that releases it.
//! use kluis_server::service::{dke::DkePending, writer::DkeCommitted};
//! fn forge(p: DkePending) -> DkeCommitted {
//!     DkeCommitted(p)
//! }
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

use super::KeyService;
use super::admin_entry;
use super::unwrap::{Admitted, Refusal};
use super::writer::Observed;
use crate::audit::AuditEntry;
use crate::dke::{ALGORITHM, DkeKey, document_ref, key_id, parse_key_id};
use crate::error::{Result, ServerError};
use crate::keyring::Keyring;
use crate::policy::Policy;
use crate::store::{Principal, Store, StoreTx, VersionState};
use crate::time::now_ms;

/// Unsealed DKE keys by (label, kid), with the sealed bytes each was unsealed from.
pub(super) type DkeKeyCache = HashMap<(String, u32), (Vec<u8>, Arc<DkeKey>)>;

/// A DKE decrypt request, parsed by the HTTP layer.
#[derive(Debug, Clone)]
pub struct DkeRequest {
    /// The key name from the URL (the label).
    pub label: String,
    /// The key id from the URL.
    pub key_id: String,
    /// The body's `alg`, if it has one.
    pub alg: Option<String>,
    /// The body's `value` (base64), if it has one.
    pub value: Option<String>,
    /// Why the body could not be read as a JSON object, if it could not.
    pub malformed: Option<String>,
    /// The client's address, for the audit trail.
    pub client: String,
}

/// A decrypt authorised and done, waiting for its audit record to be committed. Its
/// plaintext cannot be reached from outside the service layer.
pub struct DkePending {
    /// The plaintext, or why not.
    pub(super) result: std::result::Result<Zeroizing<Vec<u8>>, Refusal>,
    /// The audit record.
    pub(super) entry: AuditEntry,
    /// The access epoch it was authorised under.
    pub(super) observed: Observed,
    /// The request's last decision (see [`DkePending::last`]).
    pub(super) last: bool,
}

impl DkePending {
    /// Mark this the request's last decision, as [`Pending::last`](super::unwrap::Pending::last).
    pub fn last(mut self, last: bool) -> Self {
        self.last = last;
        self
    }

    /// The outcome (`granted` or a refusal code), for metrics.
    pub fn outcome(&self) -> &str {
        &self.entry.outcome
    }
}

/// Whether `name` could be a label name (1-64 of `A-Z a-z 0-9 . _ -`); anything else from a
/// URL is not written into the audit trail.
fn plausible_label(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Whether the label's policy lets `who` decrypt. The same policy as for kluis unwraps; the
/// user is compared ignoring ASCII case (Entra ID user principal names are case-insensitive),
/// groups exactly.
fn dke_allows(policy: &Policy, who: &Principal) -> bool {
    policy
        .users
        .iter()
        .any(|u| u.eq_ignore_ascii_case(&who.user))
        || who.groups.iter().any(|g| policy.groups.contains(g))
}

impl<S: Store> KeyService<S> {
    /// Inside a write transaction: give version `kid` of `label` a new DKE key pair, the
    /// private key sealed at rest. Returns its key id.
    pub(super) fn add_dke_key(
        keyring: &Keyring,
        tx: &mut dyn StoreTx,
        label: &str,
        kid: u32,
    ) -> Result<String> {
        Self::check_master(keyring, tx)?;
        let (public, private) = crate::dke::generate()?;
        let sealed = keyring.seal_dke_key(&private, label, kid)?;
        tx.set_dke_key(label, kid, &public, &sealed)?;
        Ok(key_id(kid, &public))
    }

    /// Whether any version of `label` has a DKE key (then rotation gives the new one one).
    pub(super) fn has_dke(&self, label: &str) -> Result<bool> {
        Ok(self
            .store
            .versions(label)?
            .iter()
            .any(|v| v.dke_public.is_some()))
    }

    /// Give the current version of an existing label a DKE key (`label dke-enable`); later
    /// rotations give every new version one. Returns the key id.
    pub fn enable_dke(&mut self, name: &str, actor: &str) -> Result<String> {
        let info = self.label(name)?;
        let kid = info.current().map(|v| v.kid).ok_or_else(|| {
            ServerError::Refused(format!("label `{name}` has no current key version"))
        })?;
        self.write(|keyring, tx| {
            let row = tx
                .version(name, kid)?
                .ok_or_else(|| ServerError::UnknownVersion {
                    label: name.to_owned(),
                    kid,
                })?;
            if row.state != VersionState::Current {
                return Err(ServerError::Refused(format!(
                    "version {kid} of `{name}` stopped being current meanwhile: try again"
                )));
            }
            if row.dke_public.is_some() {
                return Err(ServerError::Refused(format!(
                    "label `{name}` has a DKE key already (version {kid})"
                )));
            }
            let id = Self::add_dke_key(keyring, tx, name, kid)?;
            let mut entry = admin_entry(actor, "label.dke_enable", Some(name), Some(kid));
            entry.reason = Some(format!("DKE key id {id}"));
            keyring.append_audit(tx, &[entry])?;
            Ok(id)
        })
    }

    /// The current DKE public key of `label`: (version, DER public key); `None` when there is
    /// no such label or its current version has no DKE key.
    pub fn dke_public_key(&self, label: &str) -> Result<Option<(u32, Vec<u8>)>> {
        if !plausible_label(label) || self.store.label_policy(label)?.is_none() {
            return Ok(None);
        }
        Ok(self
            .store
            .versions(label)?
            .into_iter()
            .find(|v| v.state == VersionState::Current)
            .and_then(|v| v.dke_public.map(|p| (v.kid, p))))
    }

    /// The unsealed DKE key of a version, reused while the row holds the same sealed bytes.
    fn dke_key(&self, label: &str, kid: u32, sealed: Vec<u8>) -> Result<Arc<DkeKey>> {
        let k = (label.to_owned(), kid);
        if let Some((bytes, key)) = self.dke_keys.borrow().get(&k) {
            if *bytes == sealed {
                return Ok(key.clone());
            }
        }
        let pkcs8 = self.keyring.open_dke_key(label, kid, &sealed)?;
        let key = Arc::new(DkeKey::from_pkcs8(&pkcs8)?);
        self.dke_keys.borrow_mut().insert(k, (sealed, key.clone()));
        Ok(key)
    }

    /// Authorise and do one DKE decrypt for an admitted caller. Every request gets an audit
    /// record (granted or refused, with the document reference when the value is base64);
    /// nothing leaves before it is committed. `observed` is the access epoch taken before the
    /// caller's first store read ([`AuditWriter::observe`](super::writer::AuditWriter::observe)).
    pub fn dke_decrypt(
        &self,
        admitted: &Admitted,
        req: DkeRequest,
        observed: Observed,
    ) -> DkePending {
        let who = admitted.principal();
        let wrapped = req.value.as_deref().and_then(|v| STANDARD.decode(v).ok());
        let mut entry = AuditEntry {
            time_ms: now_ms(),
            actor: who.user.clone(),
            action: "dke.decrypt".to_owned(),
            label: plausible_label(&req.label).then(|| req.label.clone()),
            kid: None,
            doc_id: wrapped.as_deref().map(document_ref),
            outcome: String::new(),
            reason: None,
            client: Some(req.client.clone()),
            credential: Some(who.credential.clone()),
        };
        let result = self.dke_decide(who, &req, wrapped.as_deref(), &mut entry.kid);
        entry.outcome = match &result {
            Ok(_) => "granted".to_owned(),
            Err(r) => r.code.to_owned(),
        };
        DkePending {
            result,
            entry,
            observed,
            last: false,
        }
    }

    fn dke_decide(
        &self,
        who: &Principal,
        req: &DkeRequest,
        wrapped: Option<&[u8]>,
        kid_seen: &mut Option<u32>,
    ) -> std::result::Result<Zeroizing<Vec<u8>>, Refusal> {
        let not_found = || {
            Refusal::new(
                "not_found",
                "no such DKE key or key id: fetch the label's public key again",
            )
        };
        let malformed = |m: &str| Refusal::new("malformed", m);
        if !plausible_label(&req.label) {
            return Err(not_found());
        }
        let label = self.label(&req.label).map_err(|e| match e {
            ServerError::UnknownLabel(_) => not_found(),
            e => Refusal::from(e),
        })?;
        if !dke_allows(&label.policy, who) {
            return Err(Refusal::new(
                "denied",
                "you may not open documents protected with this label; ask the label's owner",
            ));
        }
        // Only now, authorised, the key lookup.
        let kid = parse_key_id(&req.key_id).ok_or_else(not_found)?;
        let row = self
            .store
            .version(&req.label, kid)
            .map_err(Refusal::from)?
            .ok_or_else(not_found)?;
        let public = row.dke_public.as_deref().ok_or_else(not_found)?;
        if key_id(kid, public) != req.key_id {
            return Err(not_found());
        }
        *kid_seen = Some(kid);
        let sealed = match (row.state, row.dke_sealed) {
            (VersionState::Destroyed, _) | (_, None) => {
                // Destroyed by another connection: forget the key unsealed here, as
                // `label_key` does, so it does not outlive the destroy in memory.
                self.dke_keys.borrow_mut().remove(&(req.label.clone(), kid));
                return Err(Refusal {
                    destroyed_ms: row.destroyed_ms,
                    ..Refusal::new(
                        "destroyed",
                        "this key version is destroyed: documents protected with it cannot be \
                         opened by anyone",
                    )
                });
            }
            (VersionState::Retired, _) => {
                return Err(Refusal::new(
                    "retired",
                    "this key version is retired: it no longer opens documents",
                ));
            }
            (_, Some(sealed)) => sealed,
        };
        if let Some(m) = &req.malformed {
            return Err(malformed(m));
        }
        match req.alg.as_deref() {
            Some(ALGORITHM) => {}
            Some(_) => return Err(malformed("`alg` must be \"RSA-OAEP-256\"")),
            None => return Err(malformed("`alg` is missing: send \"RSA-OAEP-256\"")),
        }
        let ciphertext = match (&req.value, wrapped) {
            (None, _) => return Err(malformed("`value` is missing")),
            (Some(_), None) => return Err(malformed("`value` must be standard base64")),
            (Some(_), Some(c)) => c,
        };
        let key = self
            .dke_key(&req.label, kid, sealed)
            .map_err(Refusal::from)?;
        key.decrypt(ciphertext).ok_or_else(|| {
            Refusal::new(
                "decrypt_failed",
                "the value does not decrypt with this key: it was made for another key, or is \
                 damaged",
            )
        })
    }
}
