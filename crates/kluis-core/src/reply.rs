//! Key server replies sealed to the caller's ephemeral key (DESIGN §4, "Server replies").
//!
//! The client sends `R`; the server answers with `S` and, per item,
//! `AEAD(HKDF(ikm = X25519(s, R), salt = S ‖ R, info = "kluis/v1/reply"), nonce, share, aad = doc_id)`
//! with a distinct nonce per item of a batch.

use x25519_dalek::StaticSecret;

use crate::error::{Error, Result, UnwrapError};
use crate::format::{BODY_LEN, KEY_LEN};
use crate::primitives::{self, DerivedKey, NONCE_LEN};
use crate::secret::{DocId, Share};

const REPLY_INFO: &[u8] = b"kluis/v1/reply";

/// One share sealed to the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedShare {
    /// The AEAD nonce (distinct per item of a reply).
    pub nonce: [u8; NONCE_LEN],
    /// The sealed share: 32 bytes and a 16-byte tag.
    pub body: [u8; BODY_LEN],
}

fn reply_key(
    secret: &StaticSecret,
    peer: &[u8; 32],
    s: &[u8; 32],
    r: &[u8; 32],
) -> Result<DerivedKey> {
    let z = secret.diffie_hellman(&x25519_dalek::PublicKey::from(*peer));
    if !z.was_contributory() {
        return Err(Error::ZeroSharedSecret);
    }
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(s);
    salt[32..].copy_from_slice(r);
    Ok(primitives::hkdf(z.as_bytes(), &salt, REPLY_INFO))
}

fn random_secret() -> Result<StaticSecret> {
    let mut b = zeroize::Zeroizing::new([0u8; 32]);
    primitives::fill_random(&mut b[..])?;
    Ok(StaticSecret::from(*b))
}

/// Server side: seals the shares of one reply (single or batch) to the caller's key `R`.
pub struct ReplySealer {
    key: DerivedKey,
    server_public: [u8; 32],
    counter: u64,
}

impl ReplySealer {
    /// A sealer with a fresh server ephemeral `s` for the caller's public key `R`.
    ///
    /// The server makes one per request, so this is on the key server's hot path: it uses
    /// ring's ephemeral X25519 (assembly on x86-64 and AArch64), which costs about two thirds
    /// of x25519-dalek's portable field arithmetic here (see docs/BENCHMARKS.md). The result
    /// is the same function, X25519 (RFC 7748); ring refuses an all-zero shared secret.
    pub fn new(client_public: &[u8; 32]) -> Result<Self> {
        use ring::agreement::{EphemeralPrivateKey, UnparsedPublicKey, X25519, agree_ephemeral};
        let rng = ring::rand::SystemRandom::new();
        let s = EphemeralPrivateKey::generate(&X25519, &rng).map_err(|_| Error::Random)?;
        let mut server_public = [0u8; 32];
        server_public.copy_from_slice(s.compute_public_key().map_err(|_| Error::Random)?.as_ref());
        let mut salt = [0u8; 64];
        salt[..32].copy_from_slice(&server_public);
        salt[32..].copy_from_slice(client_public);
        let key = agree_ephemeral(s, &UnparsedPublicKey::new(&X25519, client_public), |z| {
            primitives::hkdf(z, &salt, REPLY_INFO)
        })
        .map_err(|_| Error::ZeroSharedSecret)?;
        Ok(ReplySealer {
            key,
            server_public,
            counter: 0,
        })
    }

    /// `S`, to send with the reply.
    pub fn server_public(&self) -> [u8; 32] {
        self.server_public
    }

    /// Seal one share; every call uses the next nonce.
    pub fn seal(&mut self, doc_id: &DocId, share: &Share) -> SealedShare {
        let mut nonce = [0u8; NONCE_LEN];
        nonce[4..].copy_from_slice(&self.counter.to_be_bytes());
        self.counter += 1;
        let sealed = primitives::aead_seal(&self.key, nonce, &doc_id.0, share.expose_secret());
        let mut body = [0u8; BODY_LEN];
        body.copy_from_slice(&sealed);
        SealedShare { nonce, body }
    }
}

/// Client side: the ephemeral key `r`/`R` of one request. Zeroized on drop.
pub struct ReplyKey {
    secret: StaticSecret,
    public: [u8; 32],
}

impl ReplyKey {
    /// A fresh ephemeral key.
    pub fn generate() -> Result<Self> {
        let secret = random_secret()?;
        let public = x25519_dalek::PublicKey::from(&secret).to_bytes();
        Ok(ReplyKey { secret, public })
    }

    /// A key from a known secret `r`: for test vectors (docs/FORMAT.md §15) and tests. A real
    /// request uses [`ReplyKey::generate`]: reusing `r` lets anyone who learns it read every
    /// reply sealed to it.
    pub fn from_secret_bytes(secret: [u8; 32]) -> Self {
        let secret = StaticSecret::from(secret);
        let public = x25519_dalek::PublicKey::from(&secret).to_bytes();
        ReplyKey { secret, public }
    }

    /// `R`, to send with the request.
    pub fn public_bytes(&self) -> [u8; 32] {
        self.public
    }

    /// Derive the key for a reply that carries the server's `S`.
    pub fn opener(&self, server_public: &[u8; 32]) -> Result<ReplyOpener> {
        Ok(ReplyOpener {
            key: reply_key(&self.secret, server_public, server_public, &self.public)?,
        })
    }
}

/// Opens the items of one reply.
pub struct ReplyOpener {
    key: DerivedKey,
}

impl ReplyOpener {
    /// Open one sealed share for `doc_id`.
    pub fn open(&self, doc_id: &DocId, sealed: &SealedShare) -> Result<Share, UnwrapError> {
        let plain = primitives::aead_open(&self.key, sealed.nonce, &doc_id.0, &sealed.body)
            .ok_or_else(|| {
                UnwrapError::unavailable("the key server's reply did not authenticate")
            })?;
        let mut s = [0u8; KEY_LEN];
        s.copy_from_slice(&plain);
        let share = Share::from_bytes(s);
        zeroize::Zeroize::zeroize(&mut s);
        Ok(share)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_reply_round_trip_with_distinct_nonces() {
        let client = ReplyKey::generate().unwrap();
        let mut server = ReplySealer::new(&client.public_bytes()).unwrap();
        let d1 = DocId([1; 16]);
        let d2 = DocId([2; 16]);
        let a = server.seal(&d1, &Share::from_bytes([7; 32]));
        let b = server.seal(&d2, &Share::from_bytes([8; 32]));
        assert_ne!(a.nonce, b.nonce);
        let opener = client.opener(&server.server_public()).unwrap();
        assert_eq!(opener.open(&d1, &a).unwrap().expose_secret(), &[7; 32]);
        assert_eq!(opener.open(&d2, &b).unwrap().expose_secret(), &[8; 32]);
        // Bound to the document id.
        assert!(opener.open(&d2, &a).is_err());
        // Another client cannot read it.
        let other = ReplyKey::generate().unwrap();
        let o = other.opener(&server.server_public()).unwrap();
        assert!(o.open(&d1, &a).is_err());
        // Low-order keys are refused.
        assert!(ReplySealer::new(&[0; 32]).is_err());
    }
}
