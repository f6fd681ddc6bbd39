//! kluis-core: the kluis v1 sealed-document format.
//!
//! A document is sealed under a fresh random file key; the key is wrapped into one or more
//! *slots* (a label key on the organisation's key server, a holder's key, a recovery key, or
//! two of them together for double key). The format is specified byte for byte in
//! `docs/FORMAT.md`. This crate does no network I/O; the key server client plugs in through
//! the [`Unwrap`] trait.
//!
//! # One call
//!
//! ```
//! use kluis_core::{Identity, LabelKey, Metadata, Recipient, Slot, open, seal};
//!
//! # fn main() -> Result<(), kluis_core::Error> {
//! // The key server holds label keys; clients only need the public half to seal.
//! let hr = LabelKey::generate("hr", 1)?;
//! let holder = Identity::generate()?;
//!
//! // Double key: both the label key and the holder's key are needed to open.
//! let slot = Slot::double(
//!     Recipient::Label(hr.public_key().clone()),
//!     Recipient::Key(holder.public_key()),
//! )?;
//! let sealed = seal(&[slot], &Metadata::default().name("salary.xlsx"), b"confidential")?;
//!
//! let (plaintext, metadata) = open(&sealed, &[&hr, &holder])?;
//! assert_eq!(plaintext, b"confidential");
//! assert_eq!(metadata.name, "salary.xlsx");
//!
//! // One key alone opens nothing.
//! assert!(open(&sealed, &[&hr]).is_err());
//! # Ok(()) }
//! ```
//!
//! [`seal_into`] and [`open_in_place`] do the same without a fresh buffer per call, over all
//! cores for documents over 1 MiB (their `threads` argument: 0 for that default, 1 for the
//! calling thread only); opening in place decrypts every chunk straight to its final position
//! (the fastest path). [`seal_to_slice`] seals into a buffer the caller already has (at least
//! [`max_sealed_len`] bytes), with nothing allocated or zeroed for the output.
//!
//! # Streaming
//!
//! [`StreamWriter`] seals into any `Write` (call [`StreamWriter::finish`]!);
//! [`Header::read`] + [`Header::unlock`] + [`StreamReader`] open from any `Read`. Memory stays
//! bounded whatever the size: one 64 KiB chunk for small payloads, 4 MiB batches for large.
//! [`BlockWriter`] seals a payload of known size straight into an output's own memory (a
//! [`BlockSink`], such as aligned blocks for direct I/O), and [`StreamReader::read_into`] opens
//! one straight into it, without copying. [`unlock_all`] recovers the keys of many documents
//! with one call per key holder (one key server round trip for a whole folder).
//!
//! # Without a key
//!
//! [`Header::read`] and [`Header::payload_info`] inspect a document; [`rekey`] and
//! [`Header::rekey`] replace slots while copying the payload through untouched.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod backend;
mod blocks;
mod civil;
mod error;
mod header;
mod identity_file;
mod keys;
mod metadata;
mod padding;
mod parallel;
mod primitives;
pub mod reply;
mod secret;
mod simple;
mod slot;
mod stanza;
mod stream;
mod unwrap;
mod wire;
mod wrap;

pub use backend::Backend;
pub use blocks::{BlockSink, BlockWriter};
pub use civil::UtcDateTime;
pub use error::{Error, Result, UnwrapError};
pub use header::{Header, MAC_LEN, MAGIC, MAX_HEADER_LEN, MAX_SLOTS, PayloadInfo, VERSION};
pub use identity_file::{ARGON2_MEMORY_KIB, ARGON2_PASSES, MAX_IDENTITY_FILE_LEN};
pub use keys::{Identity, LabelKey, LabelPublicKey, PublicKey};
pub use metadata::{MAX_NAME_LEN, Metadata};
pub use padding::padme_padding;
pub use secret::{DocId, FileKey, Share};
pub use simple::{
    max_sealed_len, open, open_in_place, open_with_backend, rekey, seal, seal_into, seal_to_slice,
    seal_with_backend,
};
pub use slot::{Recipient, Slot};
pub use stanza::{
    MAX_LABEL_LEN, MAX_STANZA_LEN, ORG_STANZA, OrgStanza, SlotKind, Stanza, X25519_STANZA,
    X25519Stanza,
};
pub use stream::{CHUNK_LEN, StreamReader, StreamWriter};
pub use unwrap::{Unwrap, UnwrapRequest, unlock_all};
