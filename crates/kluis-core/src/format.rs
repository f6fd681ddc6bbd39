//! The format's fixed sizes and type bytes (docs/FORMAT.md), at the bottom of the module graph:
//! every other module may use these, and this module uses none of them.
//!
//! They are private to the crate. What a user needs is public as an associated constant
//! (`Header::MAX_LEN`, `Metadata::MAX_NAME_LEN`, `Stanza::MAX_LABEL_LEN`, …) or in
//! [`crate::fast`] (`CHUNK_LEN`).

/// The six magic bytes every sealed document starts with: `KLUIS` and a NUL.
pub(crate) const MAGIC: &[u8; 6] = b"KLUIS\0";
/// The format version this crate writes and reads.
pub(crate) const VERSION: u16 = 1;
/// The largest header a reader accepts, in bytes.
pub(crate) const MAX_HEADER_LEN: usize = 65_536;
/// The most slots a header may carry.
pub(crate) const MAX_SLOTS: usize = 16;
/// Length of the header MAC.
pub(crate) const MAC_LEN: usize = 32;
/// The smallest possible header (FORMAT.md §4): prefix, one slot of one 3-byte stanza, the
/// smallest sealed metadata and the MAC. `header.rs` checks this sum at compile time.
pub(crate) const MIN_HEADER_LEN: usize = 130;

/// AES-256-GCM tag length.
pub(crate) const TAG_LEN: usize = 16;
/// AES-256-GCM nonce length.
pub(crate) const NONCE_LEN: usize = 12;
/// Length in bytes of a file key and of a share.
pub(crate) const KEY_LEN: usize = 32;
/// Length of a wrapped share: 32 bytes + a 16-byte tag.
pub(crate) const BODY_LEN: usize = KEY_LEN + TAG_LEN;

/// Plaintext bytes per chunk.
pub(crate) const CHUNK_LEN: usize = 64 * 1024;
/// Ciphertext bytes per full chunk.
pub(crate) const SEALED_CHUNK_LEN: usize = CHUNK_LEN + TAG_LEN;

/// Type byte of an org (label) stanza.
pub(crate) const ORG_STANZA: u8 = 0x01;
/// Type byte of an X25519 holder/recovery stanza.
pub(crate) const X25519_STANZA: u8 = 0x02;
/// The largest stanza content a reader accepts, in bytes.
pub(crate) const MAX_STANZA_LEN: usize = 1024;
/// The longest label name, in bytes.
pub(crate) const MAX_LABEL_LEN: usize = 64;
