//! The payload's per-chunk nonce and key (FORMAT.md §8), shared by the writers, the readers and
//! the parallel sealing and opening.

use crate::backend::{Backend, ChunkCipher};
use crate::format::NONCE_LEN;
use crate::primitives;
use crate::secret::FileKey;

/// `BE88(i) ‖ flag`: an 11-byte big-endian counter and the last-chunk flag.
pub(crate) fn chunk_nonce(counter: u64, last: bool) -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    n[3..11].copy_from_slice(&counter.to_be_bytes());
    n[11] = u8::from(last);
    n
}

/// `PK = HKDF(ikm = K, salt = payload_salt, info = "kluis/v1/payload")`
pub(crate) fn payload_cipher(backend: Backend, key: &FileKey, salt: &[u8; 16]) -> ChunkCipher {
    ChunkCipher::new(
        backend,
        &primitives::hkdf(key.expose(), salt, b"kluis/v1/payload"),
    )
}
