//! kluis-server: the on-premise key server's store, labels, tokens and audit trail.
//!
//! This crate holds the organisation's label private keys, sealed at rest under a master key
//! (a 0600 key file or an Argon2id passphrase), in SQLite. Every administrative change is
//! written together with its record in an HMAC-chained audit trail that `audit verify`
//! checks. [`api`] serves unwrap, batch unwrap and the public label records over HTTP.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod anchor;
pub mod api;
pub mod audit;
pub mod config;
mod error;
mod fairness;
mod handshake;
mod limit;
pub mod log;
mod master_key;
pub mod metrics;
pub mod oidc;
mod policy;
mod policy_edit;
mod refusal;
pub mod serve;
mod sqlite;
mod store;
mod time;
mod tls_reload;
pub mod writer;

pub use error::{Result, ServerError};
pub use master_key::MasterKey;
pub use policy::Policy;
pub use policy_edit::PolicyEdit;
pub use sqlite::{BackupCheck, KeySource, MasterKeyRotation, SqliteStore, pending_key_file};
pub use store::{
    LabelInfo, Principal, ScheduledChange, Store, TokenInfo, VersionInfo, VersionState,
};
pub use time::{now_ms, parse_duration, rfc3339};
