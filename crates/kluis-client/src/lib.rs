//! kluis-client: talks to the kluis key server.
//!
//! It fetches label records (the public keys documents are sealed to) and caches them on
//! disk, so that sealing works offline; and it unwraps org stanzas through the key server,
//! so that documents open. [`Client`] implements the core's [`kluis_core::Unwrap`]: a whole
//! folder opens with one request per 1000 documents.
//!
//! ```no_run
//! use kluis_client::{Client, ClientConfig, Token};
//! use kluis_core::{Metadata, open, seal};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut config = ClientConfig::new("https://keys.example.org");
//! config.token = Some(Token::new(std::fs::read_to_string("token")?)?);
//! config.cache_dir = ClientConfig::default_cache_dir();
//! let client = Client::new(config)?.with_reason("case 2025-117")?;
//!
//! // Sealing needs only the label's public record (served from the cache when offline).
//! let hr = client.label_record("hr")?;
//! if let (true, Some(why)) = (hr.stale, &hr.refresh_error) {
//!     eprintln!("warning: using the expired cached record of `hr`: {why}");
//! }
//! let sealed = seal(&hr.slots(None)?, &Metadata::default().name("salary.xlsx"), b"...")?;
//!
//! // Opening asks the key server, which checks the label's policy and audits the opening.
//! let (plaintext, _metadata) = open(&sealed, &[&client])?;
//! # Ok(()) }
//! ```
//!
//! # Blocking only
//!
//! The API is blocking (on [`ureq`]). The core's [`kluis_core::Unwrap`] trait, which opening
//! goes through, is synchronous, and so are the CLI and file crates; an async runtime would
//! add a large dependency tree for one request per folder. An async application calls the
//! client from `tokio::task::spawn_blocking` (a `Client` is `Send + Sync`; share it in an
//! `Arc`).
//!
//! # Transport
//!
//! HTTPS with rustls (on ring). The server's certificate is checked against the Mozilla
//! roots, or, when [`ClientConfig::ca_file`] is set, against the CAs in that PEM bundle only
//! (organisations with their own CA). `http://` is accepted only to a loopback address.
//! Redirects are not followed. Every request has a timeout ([`ClientConfig::timeout`]).
//!
//! # Retries
//!
//! Retrying is bounded by [`ClientConfig::max_attempts`] (3) and a total wait of
//! [`ClientConfig::max_retry_wait`] (10 s), with exponential backoff (250 ms, 500 ms, ... plus
//! jitter) or the server's `Retry-After`.
//!
//! - GET requests (label records, label list, own audit events, status) are idempotent and
//!   leave no trace: they are retried after any transient failure (connection failure, reset,
//!   timeout, 429, 500, 502, 503, 504).
//! - Unwrap requests are audited: the key server records every opening before it answers.
//!   They are retried only when the server cannot have processed them: when connecting
//!   failed (nothing was sent), or on 429 and 503 (refused before processing). After a
//!   timeout or a connection lost once the request was sent, the server may have opened and
//!   recorded the documents; sending again would record every opening twice in the person's
//!   audit trail, so the error is returned and the person decides.
//! - A 413 (batch larger than the server allows) is answered before anything is processed:
//!   the batch is halved and sent again.
//!
//! # Label cache and key pinning
//!
//! With [`ClientConfig::cache_dir`] set, each label record is kept in
//! `<cache_dir>/servers/<hash of the server URL>/labels/<label>.json` (written to a
//! temporary file and renamed, so never half-written), with the time it was fetched and the
//! server's `max_age`. Within `max_age` the cached record is used without a request. After
//! that it is fetched again; if the server cannot be reached, the expired record is still
//! returned, marked [`LabelRecord::stale`], so sealing works offline.
//!
//! Each cache file also keeps the public key of every key version seen for the label. A
//! fetched record that gives a known version a different key, or offers an older current
//! version than seen before, is refused ([`ClientError::KeyChanged`],
//! [`ClientError::KeyRollback`]) and the cache is left as it was: a key changes only with a
//! new key version. The cache is trusted as much as the person's own files; anyone who can
//! write to it can change the keys documents are sealed to. Without a cache directory there
//! is no pinning: the first record fetched is believed (as TLS allows).
//!
//! # Errors
//!
//! [`ClientError`]'s messages are meant for people: what happened and what to do ("your
//! token expired ...: run `kluis login`"). They never contain the token.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod cache;
mod client;
mod config;
mod error;
mod http;
mod record;
mod unwrap;

pub use client::{AuditEvent, AuditPage, CachedLabel, Client, Purpose, ServerHealth, Status};
pub use config::{ClientConfig, Token, server_origin};
pub use error::ClientError;
pub use record::{KeyState, KeyVersion, LabelRecord, LabelSummary, check_label};
