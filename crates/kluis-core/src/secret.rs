//! Secret key types: zeroized on drop, redacted in `Debug`, never `Display`ed.

use std::fmt;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::Result;
use crate::format::KEY_LEN;
use crate::primitives;

/// The 32-byte key that seals one document's metadata and payload.
///
/// Recovered by [`crate::Header::unlock`] and only ever handed out after the header MAC has
/// confirmed it. Zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct FileKey([u8; KEY_LEN]);

impl FileKey {
    /// A fresh random file key from the OS CSPRNG.
    pub(crate) fn generate() -> Result<Self> {
        let mut k = [0u8; KEY_LEN];
        primitives::fill_random(&mut k)?;
        Ok(FileKey(k))
    }

    pub(crate) fn from_share(share: &Share) -> Self {
        FileKey(share.0)
    }

    pub(crate) fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Split into two random-looking shares whose XOR is the key (double key).
    pub(crate) fn split(&self) -> Result<(Share, Share)> {
        let s1 = Share::random()?;
        let mut s2 = Share([0u8; KEY_LEN]);
        for (i, b) in s2.0.iter_mut().enumerate() {
            *b = self.0[i] ^ s1.0[i];
        }
        Ok((s1, s2))
    }

    /// Join two shares of a double-key slot.
    pub(crate) fn join(a: &Share, b: &Share) -> Self {
        let mut k = FileKey([0u8; KEY_LEN]);
        for (i, byte) in k.0.iter_mut().enumerate() {
            *byte = a.0[i] ^ b.0[i];
        }
        k
    }
}

impl fmt::Debug for FileKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FileKey([redacted])")
    }
}

/// What one stanza carries: the file key itself, or one half of a double-key slot.
///
/// Key holders ([`crate::Unwrap`]) return shares; the key server seals them to the caller
/// ([`crate::reply`]). Zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Share([u8; KEY_LEN]);

impl Share {
    fn random() -> Result<Self> {
        let mut s = [0u8; KEY_LEN];
        primitives::fill_random(&mut s)?;
        Ok(Share(s))
    }

    /// Wrap raw share bytes (for example ones decrypted from a key server reply).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Share(bytes)
    }

    /// The raw share bytes. Exposed deliberately: a key server must encrypt them to its caller.
    pub fn expose_secret(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Share([redacted])")
    }
}

impl From<&FileKey> for Share {
    fn from(k: &FileKey) -> Self {
        Share(k.0)
    }
}

/// The 16-byte public identifier of a document, named in audit logs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DocId(pub [u8; 16]);

impl DocId {
    pub(crate) fn generate() -> Result<Self> {
        let mut d = [0u8; 16];
        primitives::fill_random(&mut d)?;
        Ok(DocId(d))
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DocId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_then_join_gives_the_key_back() {
        let k = FileKey::generate().unwrap();
        let (a, b) = k.split().unwrap();
        assert_ne!(a.0, k.0);
        assert_eq!(FileKey::join(&a, &b).0, k.0);
    }

    #[test]
    fn debug_never_prints_secrets() {
        let k = FileKey([0xab; 32]);
        let s = Share([0xcd; 32]);
        let out = format!("{k:?} {s:?}");
        assert!(
            !out.contains("ab") && !out.contains("171") && !out.contains("cd"),
            "{out}"
        );
    }
}
