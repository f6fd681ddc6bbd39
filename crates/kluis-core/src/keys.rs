//! Public keys (with their `kluis1…` string form), holder identities and label keys.

use std::fmt;
use std::str::FromStr;

use bech32::{Bech32, Hrp};
use x25519_dalek::StaticSecret;

use crate::error::{Error, Result, UnwrapError};
use crate::primitives;
use crate::secret::{DocId, Share};
use crate::stanza::{OrgStanza, Stanza, X25519Stanza, validate_label};
use crate::unwrap::{Unwrap, UnwrapRequest};
use crate::wrap;

const HRP: &str = "kluis";

/// An X25519 public key: a holder's or recovery key, or a label's.
///
/// Its string form is Bech32 (BIP 173) with the prefix `kluis1`; the checksum means a mistyped
/// key is rejected rather than silently used.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub(crate) [u8; 32]);

impl PublicKey {
    /// Wrap raw key bytes. Rejects non-canonical encodings (bit 255 set, or u ≥ 2^255 − 19:
    /// they would put different bytes in the HKDF salt than the recipient derives) and keys
    /// whose X25519 output is always zero (low-order points).
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self> {
        if !is_canonical(&bytes) {
            return Err(Error::InvalidPublicKey {
                reason: "non-canonical X25519 encoding",
            });
        }
        // A low-order point gives an all-zero shared secret with any scalar; test one.
        let probe = StaticSecret::from([0x42; 32]);
        if !probe
            .diffie_hellman(&x25519_dalek::PublicKey::from(bytes))
            .was_contributory()
        {
            return Err(Error::InvalidPublicKey {
                reason: "low-order point",
            });
        }
        Ok(PublicKey(bytes))
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hrp = Hrp::parse(HRP).expect("valid HRP");
        let s = bech32::encode::<Bech32>(hrp, &self.0).map_err(|_| fmt::Error)?;
        f.write_str(&s)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        if s.len() > 100 {
            return Err(Error::InvalidPublicKey { reason: "too long" });
        }
        let parsed =
            bech32::primitives::decode::CheckedHrpstring::new::<Bech32>(s).map_err(|_| {
                Error::InvalidPublicKey {
                    reason: "bad characters or checksum",
                }
            })?;
        if !parsed.hrp().as_str().eq_ignore_ascii_case(HRP) {
            return Err(Error::InvalidPublicKey {
                reason: "wrong prefix",
            });
        }
        let data: Vec<u8> = parsed.byte_iter().collect();
        let bytes: [u8; 32] = data.try_into().map_err(|_| Error::InvalidPublicKey {
            reason: "wrong length",
        })?;
        // One key, one string: reject non-zero padding bits by re-encoding.
        if !PublicKey(bytes).to_string().eq_ignore_ascii_case(s) {
            return Err(Error::InvalidPublicKey {
                reason: "non-canonical encoding",
            });
        }
        PublicKey::from_bytes(bytes)
    }
}

/// Whether `u` is the canonical little-endian encoding of a field element below 2^255 − 19.
fn is_canonical(u: &[u8; 32]) -> bool {
    if u[31] & 0x80 != 0 {
        return false;
    }
    // u ≥ p exactly when u = p + k for k in 0..19: bytes 1..31 all 0xff, byte 31 0x7f, byte 0
    // at least 0xed.
    !(u[31] == 0x7f && u[1..31].iter().all(|&b| b == 0xff) && u[0] >= 0xed)
}

fn random_secret() -> Result<StaticSecret> {
    let mut b = zeroize::Zeroizing::new([0u8; 32]);
    primitives::fill_random(&mut b[..])?;
    Ok(StaticSecret::from(*b))
}

/// A holder's (or recovery) X25519 secret key. Zeroized on drop; `Debug` shows only the
/// public key.
///
/// As an [`Unwrap`] it opens X25519 stanzas sealed to its public key.
#[derive(Clone)]
pub struct Identity {
    secret: StaticSecret,
    public: PublicKey,
}

impl Identity {
    /// A new random identity from the OS CSPRNG.
    pub fn generate() -> Result<Self> {
        Ok(Self::from_secret(random_secret()?))
    }

    /// An identity from its 32 secret bytes (test vectors, identity files).
    pub fn from_secret_bytes(bytes: [u8; 32]) -> Self {
        Self::from_secret(StaticSecret::from(bytes))
    }

    fn from_secret(secret: StaticSecret) -> Self {
        let public = PublicKey(x25519_dalek::PublicKey::from(&secret).to_bytes());
        Identity { secret, public }
    }

    /// The public key to seal to.
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// The secret bytes, exposed deliberately so the identity file can seal them.
    pub(crate) fn secret_bytes(&self) -> zeroize::Zeroizing<[u8; 32]> {
        zeroize::Zeroizing::new(self.secret.to_bytes())
    }

    /// Open one X25519 stanza.
    pub fn unwrap_stanza(
        &self,
        doc_id: &DocId,
        stanza: &X25519Stanza,
    ) -> Result<Share, UnwrapError> {
        wrap::unwrap(
            wrap::X25519_INFO,
            &wrap::x25519_aad(doc_id),
            &self.secret,
            &self.public.0,
            &stanza.ephemeral,
            &stanza.body,
        )
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.public)
    }
}

impl Unwrap for Identity {
    fn accepts(&self, stanza: &Stanza) -> bool {
        matches!(stanza, Stanza::X25519(_))
    }

    fn unwrap(&self, requests: &[UnwrapRequest<'_>]) -> Vec<Result<Share, UnwrapError>> {
        requests
            .iter()
            .map(|r| match r.stanza {
                Stanza::X25519(s) => self.unwrap_stanza(&r.doc_id, s),
                _ => Err(UnwrapError::NotMine),
            })
            .collect()
    }
}

/// The public half of one version of a label key: what clients seal to.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct LabelPublicKey {
    label: String,
    kid: u32,
    key: PublicKey,
}

impl LabelPublicKey {
    /// A label public key; the label must be 1–64 characters of `[A-Za-z0-9._-]`.
    pub fn new(label: &str, kid: u32, key: PublicKey) -> Result<Self> {
        validate_label(label)?;
        Ok(LabelPublicKey {
            label: label.to_owned(),
            kid,
            key,
        })
    }

    /// The label name.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The key version id.
    pub fn kid(&self) -> u32 {
        self.kid
    }

    /// The X25519 public key.
    pub fn key(&self) -> &PublicKey {
        &self.key
    }
}

/// The private key of one version of a label, as the key server holds it. Zeroized on drop.
///
/// As an [`Unwrap`] it opens org stanzas that name its label and version: the key server uses
/// it, and tests use it as an in-memory key server.
#[derive(Clone)]
pub struct LabelKey {
    secret: StaticSecret,
    public: LabelPublicKey,
}

impl LabelKey {
    /// A new random label key.
    pub fn generate(label: &str, kid: u32) -> Result<Self> {
        Self::from_secret(label, kid, random_secret()?)
    }

    /// A label key from its 32 secret bytes (as stored by the key server, or test vectors).
    pub fn from_secret_bytes(label: &str, kid: u32, bytes: [u8; 32]) -> Result<Self> {
        Self::from_secret(label, kid, StaticSecret::from(bytes))
    }

    fn from_secret(label: &str, kid: u32, secret: StaticSecret) -> Result<Self> {
        let key = PublicKey(x25519_dalek::PublicKey::from(&secret).to_bytes());
        Ok(LabelKey {
            public: LabelPublicKey::new(label, kid, key)?,
            secret,
        })
    }

    /// The public half, to publish.
    pub fn public_key(&self) -> &LabelPublicKey {
        &self.public
    }

    /// The secret bytes, exposed deliberately: the key server seals them at rest.
    pub fn expose_secret(&self) -> zeroize::Zeroizing<[u8; 32]> {
        zeroize::Zeroizing::new(self.secret.to_bytes())
    }

    /// Open one org stanza. Returns [`UnwrapError::NotMine`] when it names another label or
    /// version, or does not authenticate.
    pub fn unwrap_stanza(&self, doc_id: &DocId, stanza: &OrgStanza) -> Result<Share, UnwrapError> {
        if stanza.label != self.public.label || stanza.kid != self.public.kid {
            return Err(UnwrapError::NotMine);
        }
        wrap::unwrap(
            wrap::ORG_INFO,
            &wrap::org_aad(doc_id, &stanza.label, stanza.kid, stanza.slot_kind),
            &self.secret,
            &self.public.key.0,
            &stanza.ephemeral,
            &stanza.body,
        )
    }
}

impl fmt::Debug for LabelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LabelKey({:?})", self.public)
    }
}

impl Unwrap for LabelKey {
    fn accepts(&self, stanza: &Stanza) -> bool {
        matches!(stanza, Stanza::Org(s) if s.label == self.public.label && s.kid == self.public.kid)
    }

    fn unwrap(&self, requests: &[UnwrapRequest<'_>]) -> Vec<Result<Share, UnwrapError>> {
        requests
            .iter()
            .map(|r| match r.stanza {
                Stanza::Org(s) => self.unwrap_stanza(&r.doc_id, s),
                _ => Err(UnwrapError::NotMine),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_key_string_round_trips_and_rejects_typos() {
        let id = Identity::generate().unwrap();
        let s = id.public_key().to_string();
        assert!(s.starts_with("kluis1"), "{s}");
        assert_eq!(s.parse::<PublicKey>().unwrap(), id.public_key());
        assert_eq!(
            s.to_uppercase().parse::<PublicKey>().unwrap(),
            id.public_key()
        );
        // Change one character: the checksum must catch it.
        let mut chars: Vec<char> = s.chars().collect();
        let i = chars.len() / 2;
        chars[i] = if chars[i] == 'q' { 'p' } else { 'q' };
        let typo: String = chars.into_iter().collect();
        assert!(matches!(
            typo.parse::<PublicKey>(),
            Err(Error::InvalidPublicKey { .. })
        ));
        // Dropping a character too.
        assert!(s[..s.len() - 1].parse::<PublicKey>().is_err());
        assert!("age1qqqq".parse::<PublicKey>().is_err());
    }

    #[test]
    fn non_zero_padding_bits_are_rejected() {
        use bech32::primitives::iter::{ByteIterExt, Fe32IterExt};
        let id = Identity::generate().unwrap();
        let hrp = Hrp::parse(HRP).unwrap();
        let mut fes: Vec<bech32::Fe32> = id.public_key().0.iter().copied().bytes_to_fes().collect();
        let last = fes.len() - 1;
        fes[last] = bech32::Fe32::try_from(fes[last].to_u8() | 1).unwrap();
        let s: String = fes
            .into_iter()
            .with_checksum::<Bech32>(&hrp)
            .chars()
            .collect();
        assert_ne!(s, id.public_key().to_string());
        assert!(matches!(
            s.parse::<PublicKey>(),
            Err(Error::InvalidPublicKey {
                reason: "non-canonical encoding"
            })
        ));
    }

    #[test]
    fn non_canonical_public_keys_are_rejected() {
        let id = Identity::generate().unwrap();
        let mut high = id.public_key().0;
        high[31] |= 0x80; // same point for X25519, different bytes in the salt
        assert!(PublicKey::from_bytes(high).is_err());
        let mut p = [0xff; 32];
        p[0] = 0xed;
        p[31] = 0x7f; // 2^255 - 19 itself
        assert!(PublicKey::from_bytes(p).is_err());
        p[0] = 0xeb; // p - 2 is canonical (p - 1 is a low-order point)
        assert!(PublicKey::from_bytes(p).is_ok());
    }

    #[test]
    fn low_order_public_keys_are_rejected() {
        assert!(PublicKey::from_bytes([0; 32]).is_err());
        let mut one = [0u8; 32];
        one[0] = 1;
        assert!(PublicKey::from_bytes(one).is_err());
    }

    #[test]
    fn debug_of_keys_shows_no_secret() {
        let id = Identity::from_secret_bytes([0x11; 32]);
        let lk = LabelKey::from_secret_bytes("hr", 1, [0x11; 32]).unwrap();
        let out = format!("{id:?} {lk:?}");
        assert!(!out.contains("1111"), "{out}");
        assert!(!out.contains("17, 17"), "{out}");
    }
}
