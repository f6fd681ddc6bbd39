//! Thin wrappers over ring: randomness, HKDF-SHA-256, HMAC-SHA-256 and the small AEADs.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::{hkdf, hmac, rand::SecureRandom, rand::SystemRandom};

use crate::error::{Error, Result};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::format::KEY_LEN;
pub(crate) use crate::format::{NONCE_LEN, TAG_LEN};

/// A 32-byte symmetric key derived with HKDF. Zeroized on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub(crate) struct DerivedKey(pub(crate) [u8; KEY_LEN]);

/// Fill `buf` from the OS CSPRNG.
pub(crate) fn fill_random(buf: &mut [u8]) -> Result<()> {
    SystemRandom::new().fill(buf).map_err(|_| Error::Random)
}

struct Len32;
impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        KEY_LEN
    }
}

/// HKDF-SHA-256 (RFC 5869) with a 32-byte output.
pub(crate) fn hkdf(ikm: &[u8], salt: &[u8], info: &[u8]) -> DerivedKey {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(ikm);
    let mut out = DerivedKey([0u8; KEY_LEN]);
    let info = [info];
    // Expanding 32 bytes from SHA-256 can only fail for lengths over 255*32.
    prk.expand(&info, Len32)
        .and_then(|okm| okm.fill(&mut out.0))
        .expect("HKDF-SHA-256 expand of 32 bytes");
    out
}

/// HMAC-SHA-256 (RFC 2104).
pub(crate) fn hmac_sha256(key: &DerivedKey, data: &[u8]) -> [u8; 32] {
    let k = hmac::Key::new(hmac::HMAC_SHA256, &key.0);
    let tag = hmac::sign(&k, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

/// Verify an HMAC-SHA-256 tag; ring compares in constant time.
pub(crate) fn hmac_sha256_verify(key: &DerivedKey, data: &[u8], tag: &[u8]) -> bool {
    hmac::verify(&hmac::Key::new(hmac::HMAC_SHA256, &key.0), data, tag).is_ok()
}

fn aead_key(key: &DerivedKey) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key.0).expect("32-byte AES-256 key"))
}

/// AES-256-GCM seal of a short message; returns ciphertext ‖ tag.
pub(crate) fn aead_seal(
    key: &DerivedKey,
    nonce: [u8; NONCE_LEN],
    aad: &[u8],
    plaintext: &[u8],
) -> Vec<u8> {
    let mut buf = Vec::with_capacity(plaintext.len() + TAG_LEN);
    buf.extend_from_slice(plaintext);
    aead_key(key)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut buf,
        )
        .expect("AES-GCM seal of a short message");
    buf
}

/// AES-256-GCM open of ciphertext ‖ tag; `None` when authentication fails.
pub(crate) fn aead_open(
    key: &DerivedKey,
    nonce: [u8; NONCE_LEN],
    aad: &[u8],
    sealed: &[u8],
) -> Option<zeroize::Zeroizing<Vec<u8>>> {
    let mut buf = zeroize::Zeroizing::new(sealed.to_vec());
    let len = aead_key(key)
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut buf,
        )
        .ok()?
        .len();
    buf.truncate(len);
    Some(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hkdf_matches_rfc5869_shape() {
        // RFC 5869 test case 1, first 32 bytes of OKM.
        let ikm = [0x0b; 22];
        let salt: Vec<u8> = (0x00..=0x0c).collect();
        let info: Vec<u8> = (0xf0..=0xf9).collect();
        let okm = hkdf(&ikm, &salt, &info);
        assert_eq!(
            hex::encode(okm.0),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
        );
    }

    #[test]
    fn aead_round_trip_and_tamper() {
        let k = DerivedKey([7; 32]);
        let ct = aead_seal(&k, [0; 12], b"aad", b"hello");
        assert_eq!(&aead_open(&k, [0; 12], b"aad", &ct).unwrap()[..], b"hello");
        assert!(aead_open(&k, [0; 12], b"aaD", &ct).is_none());
        let mut bad = ct.clone();
        bad[0] ^= 1;
        assert!(aead_open(&k, [0; 12], b"aad", &bad).is_none());
    }
}
