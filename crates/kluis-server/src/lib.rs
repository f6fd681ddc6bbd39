//! kluis-server: the on-premise key server's store, labels, tokens and audit trail.
//!
//! This crate holds the organisation's label private keys, sealed at rest under a master key
//! (a 0600 key file or an Argon2id passphrase), in SQLite or, for several replicas,
//! PostgreSQL. Every administrative change is written together with its record in an
//! HMAC-chained audit trail that `audit verify` checks. [`api`] serves unwrap, batch unwrap and the public label records over HTTP.
//!
//! Layers, each using only the ones below it: [`api`] (HTTP handlers: parse, call the service,
//! render) → [`service`] (the key server's operations and the unwrap decision, with the audit
//! writer) → [`keyring`] (the master key: sealing at rest, token hashes, the audit chain) and
//! [`Store`] (rows, one implementation per engine: [`SqliteStore`], [`PgStore`]).

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod anchor;
pub mod api;
pub mod audit;
mod body_budget;
pub mod config;
pub mod dke;
mod error;
mod fairness;
mod handshake;
pub mod keyring;
mod limit;
pub mod log;
mod master_key;
pub mod metrics;
pub mod oidc;
mod policy;
mod policy_edit;
pub mod postgres;
mod refusal;
pub mod serve;
pub mod service;
mod sqlite;
mod store;
mod time;
mod tls_reload;

pub use error::{Result, ServerError};
pub use keyring::{KeySource, Keyring};
pub use master_key::MasterKey;
pub use policy::Policy;
pub use policy_edit::PolicyEdit;
pub use postgres::{PgOptions, PgStore};
pub use service::writer;
pub use service::{KeyService, MasterKeyRotation, pending_key_file};
pub use sqlite::{BackupCheck, BackupTarget, SqliteStore};
pub use store::{
    LabelInfo, Principal, ScheduledChange, SealedRow, SecretKind, Store, StoreTx, TokenInfo,
    TokenRow, VersionInfo, VersionRow, VersionState, meta,
};
pub use time::{now_ms, parse_duration, rfc3339};
