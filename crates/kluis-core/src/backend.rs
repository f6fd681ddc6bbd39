//! Payload AEAD backends: ring (default) and the pure-Rust `aes-gcm` crate (feature `aes-gcm`).

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

use crate::primitives::DerivedKey;
use crate::primitives::{NONCE_LEN, TAG_LEN};

/// Which AES-256-GCM implementation seals and opens payload chunks.
///
/// Both produce identical bytes; the choice only changes speed and portability. Header crypto
/// (stanzas, metadata, MAC) always uses ring.
///
/// Memory hygiene differs: ring offers no way to wipe its expanded AES key schedule, so with
/// [`Backend::Ring`] the payload key's schedule stays in freed memory after use; the
/// `aes-gcm` backend zeroizes its own. (The file key and every derived key kluis holds itself
/// are wiped on drop either way.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// ring's assembly AES-256-GCM: the fastest on x86-64 and aarch64.
    #[default]
    Ring,
    /// RustCrypto's pure-Rust `aes-gcm` crate.
    #[cfg(feature = "aes-gcm")]
    AesGcm,
}

impl Backend {
    /// Every backend compiled into this build.
    pub fn all() -> &'static [Backend] {
        &[
            Backend::Ring,
            #[cfg(feature = "aes-gcm")]
            Backend::AesGcm,
        ]
    }
}

/// A keyed payload cipher.
// One cipher per stream: its size does not matter, and boxing would add an indirection.
#[allow(clippy::large_enum_variant)]
pub(crate) enum ChunkCipher {
    Ring(LessSafeKey),
    #[cfg(feature = "aes-gcm")]
    AesGcm(aes_gcm::Aes256Gcm),
}

impl ChunkCipher {
    pub(crate) fn new(backend: Backend, key: &DerivedKey) -> Self {
        match backend {
            Backend::Ring => ChunkCipher::Ring(LessSafeKey::new(
                UnboundKey::new(&AES_256_GCM, &key.0).expect("32-byte AES-256 key"),
            )),
            #[cfg(feature = "aes-gcm")]
            Backend::AesGcm => {
                use aes_gcm::KeyInit;
                ChunkCipher::AesGcm(aes_gcm::Aes256Gcm::new((&key.0).into()))
            }
        }
    }

    /// Encrypt `buf` in place; return the tag.
    pub(crate) fn seal(&self, nonce: [u8; NONCE_LEN], buf: &mut [u8]) -> [u8; TAG_LEN] {
        let mut out = [0u8; TAG_LEN];
        match self {
            ChunkCipher::Ring(k) => {
                let tag = k
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::empty(),
                        buf,
                    )
                    .expect("chunk within AES-GCM limits");
                out.copy_from_slice(tag.as_ref());
            }
            #[cfg(feature = "aes-gcm")]
            ChunkCipher::AesGcm(k) => {
                use aes_gcm::aead::AeadInPlace;
                let tag = k
                    .encrypt_in_place_detached((&nonce).into(), &[], buf)
                    .expect("chunk within AES-GCM limits");
                out.copy_from_slice(&tag);
            }
        }
        out
    }

    /// Decrypt `buf[src..]` (ciphertext ‖ tag) and write the plaintext to `buf[..]` from 0;
    /// return its length, or `None` when authentication fails (`buf` is then unspecified).
    pub(crate) fn open_within(
        &self,
        nonce: [u8; NONCE_LEN],
        buf: &mut [u8],
        src: usize,
    ) -> Option<usize> {
        if buf.len() < src + TAG_LEN {
            return None;
        }
        match self {
            ChunkCipher::Ring(k) => k
                .open_within(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::empty(),
                    buf,
                    src..,
                )
                .ok()
                .map(|p| p.len()),
            #[cfg(feature = "aes-gcm")]
            ChunkCipher::AesGcm(k) => {
                use aes_gcm::aead::AeadInPlace;
                let n = buf.len() - src - TAG_LEN;
                let (ct, tag) = buf[src..].split_at_mut(n);
                let tag = aes_gcm::Tag::clone_from_slice(tag);
                k.decrypt_in_place_detached((&nonce).into(), &[], ct, &tag)
                    .ok()?;
                buf.copy_within(src..src + n, 0);
                Some(n)
            }
        }
    }
}
