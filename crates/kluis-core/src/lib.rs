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
//! [`fast`] seals and opens the same documents with control over threads, the AEAD backend
//! and where the output goes in memory ([`fast::FastOptions`]).
//!
//! # Streaming
//!
//! [`StreamWriter`] seals into any `Write` (call [`StreamWriter::finish`]!);
//! [`Header::read`] + [`Header::unlock`] + [`StreamReader`] open from any `Read`. Memory stays
//! bounded whatever the size: one 64 KiB chunk for small payloads, 4 MiB batches for large.
//! [`unlock_all`] recovers the keys of many documents with one call per key holder (one key
//! server round trip for a whole folder).
//!
//! # Without a key
//!
//! [`Header::read`] and [`Header::payload_info`] inspect a document; [`rekey`] and
//! [`Header::rekey`] replace slots while copying the payload through untouched.

//! # What is at the root, and why
//!
//! The root holds what a user of the format needs, 27 names and two modules (at most 30, so
//! that the API stays small enough to learn, with room for one more; `.ci/api_names.sh` counts
//! them from the docs):
//!
//! - one call: [`seal`], [`open`], [`rekey`];
//! - streaming: [`StreamWriter`], [`StreamReader`];
//! - header and unlocking: [`Header`] (read, inspect, unlock, re-key), [`PayloadInfo`] (what
//!   the length says without a key), [`unlock_all`] (a folder in one round trip);
//! - keys: [`Identity`], [`PublicKey`], [`LabelKey`], [`LabelPublicKey`], and the secrets
//!   they produce, [`FileKey`] and [`Share`];
//! - slots: [`Slot`], [`Recipient`];
//! - key holders: [`Unwrap`] and [`UnwrapRequest`], with the stanzas they are handed
//!   ([`Stanza`], [`OrgStanza`], [`X25519Stanza`], [`SlotKind`]) and the document they belong
//!   to ([`DocId`]);
//! - metadata: [`Metadata`] and its time type [`UtcDateTime`];
//! - errors: [`Error`], [`UnwrapError`] (fallible calls return `Result<T, Error>`);
//! - modules: [`fast`] (the performance entry points and their options) and [`reply`] (the
//!   key server's sealed replies, for the server and its client).
//!
//! The format's constants are private; the limits a user may need are associated constants
//! ([`Header::MAX_LEN`], [`Header::MAX_SLOTS`], [`Metadata::MAX_NAME_LEN`],
//! [`Stanza::MAX_LEN`], [`Stanza::MAX_LABEL_LEN`], [`fast::CHUNK_LEN`]).
//!
//! # Layers
//!
//! The modules form a directed acyclic graph (checked by `tests/module_graph.rs`): the format
//! constants (`format`), errors, the wire cursor and the primitives at the bottom; then the
//! secrets, stanzas and stanza crypto, metadata and the header; then unwrapping, keys and
//! slots; then the payload (chunks, parallel sealing, streams, blocks); the one-call API and
//! [`fast`] on top. This crate does no file-system or network I/O.
//!
//! # API changes (0.1, issue 17)
//!
//! - `seal_into`, `seal_to_slice`, `max_sealed_len`, `open_in_place`, `BlockWriter`,
//!   `BlockSink`, `Backend` and `CHUNK_LEN` moved to [`fast`]; `seal_with_backend` and
//!   `open_with_backend` are [`fast::seal`] and [`fast::open`]; the `threads` and `backend`
//!   arguments and the `with_backend`/`threads` builder methods are [`fast::FastOptions`]
//!   ([`fast::stream_writer`], [`fast::stream_reader`], [`fast::block_writer`]);
//!   `StreamReader::read_into` is [`fast::read_into`].
//! - The `Result<T>` alias is gone from the root: write `Result<T, kluis_core::Error>`.
//! - `MAGIC`, `VERSION`, `MAC_LEN`, `ORG_STANZA`, `X25519_STANZA`, `ARGON2_*`,
//!   `MAX_IDENTITY_FILE_LEN` and `padme_padding` are private; `MAX_HEADER_LEN`, `MAX_SLOTS`,
//!   `MAX_NAME_LEN`, `MAX_STANZA_LEN` and `MAX_LABEL_LEN` are associated constants (above).
//! - `Identity::write_file` and `Identity::read_file` moved out of this crate (it does no
//!   file-system I/O): `kluis_file::write_identity_file` and `kluis_file::read_identity_file`;
//!   [`Identity::to_file_string`] and [`Identity::from_file_string`] stay (bytes in and out).
//! - [`UnwrapError::Denied`], [`UnwrapError::Destroyed`] and [`UnwrapError::Unavailable`]
//!   carry the key holder's own error (an `Arc<dyn Error + Send + Sync>`) instead of a
//!   `String`: build them with [`UnwrapError::denied`] and friends (from an error or a
//!   message), and get the typed error back with [`UnwrapError::reason`] and `downcast_ref`.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod backend;
mod blocks;
mod chunk;
mod civil;
mod error;
pub mod fast;
mod format;
mod header;
mod identity_file;
mod keys;
mod limits;
mod metadata;
mod padding;
mod parallel;
mod primitives;
pub mod reply;
mod secret;
mod simple;
mod sink;
mod slot;
mod stanza;
mod stream;
mod unwrap;
mod wire;
mod wrap;

pub use civil::UtcDateTime;
pub use error::{Error, UnwrapError};
pub use header::{Header, PayloadInfo};
pub use keys::{Identity, LabelKey, LabelPublicKey, PublicKey};
pub use metadata::Metadata;
pub use secret::{DocId, FileKey, Share};
pub use simple::{open, rekey, seal};
pub use slot::{Recipient, Slot};
pub use stanza::{OrgStanza, SlotKind, Stanza, X25519Stanza};
pub use stream::{StreamReader, StreamWriter};
pub use unwrap::{Unwrap, UnwrapRequest, unlock_all};
