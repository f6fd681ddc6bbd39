//! The stanza crypto of DESIGN §4: X25519 + HKDF-SHA-256 + AES-256-GCM key wrapping.

use x25519_dalek::StaticSecret;
use zeroize::Zeroizing;

use crate::error::{Error, Result, UnwrapError};
use crate::format::KEY_LEN;
use crate::primitives::{self, DerivedKey};
use crate::secret::{DocId, Share};
use crate::stanza::SlotKind;

/// HKDF info for org (label) stanzas.
pub(crate) const ORG_INFO: &[u8] = b"kluis/v1/org-x25519";
/// HKDF info and AAD prefix for holder/recovery stanzas.
pub(crate) const X25519_INFO: &[u8] = b"kluis/v1/x25519";
pub(crate) use crate::format::BODY_LEN;

/// `"kluis/v1/org" ‖ doc_id ‖ len(L) ‖ L ‖ kid ‖ slot_kind`
pub(crate) fn org_aad(doc_id: &DocId, label: &str, kid: u32, kind: SlotKind) -> Vec<u8> {
    let mut aad = Vec::with_capacity(12 + 16 + 1 + label.len() + 5);
    aad.extend_from_slice(b"kluis/v1/org");
    aad.extend_from_slice(&doc_id.0);
    aad.push(label.len() as u8);
    aad.extend_from_slice(label.as_bytes());
    aad.extend_from_slice(&kid.to_be_bytes());
    aad.push(kind as u8);
    aad
}

/// `"kluis/v1/x25519" ‖ doc_id`
pub(crate) fn x25519_aad(doc_id: &DocId) -> Vec<u8> {
    let mut aad = Vec::with_capacity(15 + 16);
    aad.extend_from_slice(X25519_INFO);
    aad.extend_from_slice(&doc_id.0);
    aad
}

/// `W = HKDF(ikm = Z, salt = E ‖ P, info)`, rejecting an all-zero `Z`.
fn wrap_key(
    secret: &StaticSecret,
    peer: &[u8; 32],
    e: &[u8; 32],
    p: &[u8; 32],
    info: &[u8],
) -> Option<DerivedKey> {
    let z = secret.diffie_hellman(&x25519_dalek::PublicKey::from(*peer));
    if !z.was_contributory() {
        return None;
    }
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(e);
    salt[32..].copy_from_slice(p);
    Some(primitives::hkdf(z.as_bytes(), &salt, info))
}

/// Wrap `share` to `recipient`: returns `(E, body)`.
pub(crate) fn wrap(
    info: &[u8],
    aad: &[u8],
    recipient: &[u8; 32],
    share: &Share,
) -> Result<([u8; 32], [u8; BODY_LEN])> {
    let mut e_bytes = Zeroizing::new([0u8; 32]);
    primitives::fill_random(&mut e_bytes[..])?;
    let e = StaticSecret::from(*e_bytes);
    let e_pub = x25519_dalek::PublicKey::from(&e).to_bytes();
    let w = wrap_key(&e, recipient, &e_pub, recipient, info).ok_or(Error::ZeroSharedSecret)?;
    let sealed = primitives::aead_seal(&w, [0; 12], aad, share.expose_secret());
    let mut body = [0u8; BODY_LEN];
    body.copy_from_slice(&sealed);
    Ok((e_pub, body))
}

/// Unwrap a stanza body with the recipient's secret key.
pub(crate) fn unwrap(
    info: &[u8],
    aad: &[u8],
    secret: &StaticSecret,
    own_public: &[u8; 32],
    e: &[u8; 32],
    body: &[u8; BODY_LEN],
) -> Result<Share, UnwrapError> {
    let w = wrap_key(secret, e, e, own_public, info).ok_or(UnwrapError::ZeroSharedSecret)?;
    let plain = primitives::aead_open(&w, [0; 12], aad, body).ok_or(UnwrapError::NotMine)?;
    let mut s = [0u8; KEY_LEN];
    s.copy_from_slice(&plain);
    let share = Share::from_bytes(s);
    zeroize::Zeroize::zeroize(&mut s);
    Ok(share)
}
