//! The client: label records (with the disk cache and key pinning), labels, audit, status.

use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::time::SystemTime;

use serde::Deserialize;

use crate::cache::{Cache, Entry, FORMAT, unix_now};
use crate::config::{ClientConfig, parse_server};
use crate::error::ClientError;
use crate::http::{Http, Reply, Retry};
use crate::record::{LabelRecord, LabelSummary, WireRecord, check_label};

/// Largest label record or list accepted.
const SMALL_ANSWER: u64 = 4 * 1024 * 1024;
/// Largest audit listing accepted.
const AUDIT_ANSWER: u64 = 256 * 1024 * 1024;
/// `max_age` when the server gives none.
const DEFAULT_MAX_AGE: u64 = 3600;
/// The longest a label record is used without asking the server again: 30 days.
const MAX_MAX_AGE: u64 = 30 * 86_400;

/// Why the caller unwraps; the key server opens retired key versions only to re-key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Purpose {
    /// To read the document (the default).
    #[default]
    Open,
    /// To re-key the document (move it to the current key version or change recipients).
    Rekey,
}

/// A client of one key server. Blocking; `Send + Sync`, so one client can serve many
/// threads.
///
/// It is also a [`kluis_core::Unwrap`]: pass `&client` to [`kluis_core::open`] or
/// [`kluis_core::unlock_all`] next to holder identities.
#[derive(Debug)]
pub struct Client {
    pub(crate) http: Http,
    cache: Option<Cache>,
    pub(crate) reason: Option<String>,
    pub(crate) purpose: Purpose,
    pub(crate) max_batch: AtomicUsize,
}

/// One audit event recorded under the caller's name, as the key server returns it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct AuditEvent {
    /// Sequence number in the server's audit chain.
    pub seq: i64,
    /// When, in milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// Who (the caller's user id).
    pub actor: String,
    /// What: `unwrap`, ...
    pub action: String,
    /// The label concerned.
    #[serde(default)]
    pub label: Option<String>,
    /// The key version concerned.
    #[serde(default)]
    pub kid: Option<u32>,
    /// The document (hex document id).
    #[serde(default)]
    pub doc_id: Option<String>,
    /// `granted`, `denied`, ...
    pub outcome: String,
    /// The reason the caller stated.
    #[serde(default)]
    pub reason: Option<String>,
    /// The client's address as the server saw it.
    #[serde(default)]
    pub client: Option<String>,
    /// The record's chain MAC (hex).
    #[serde(default)]
    pub mac: String,
}

/// A page of one's own audit events, newest first (see [`Client::my_audit_newest`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuditPage {
    /// The events, newest first.
    pub events: Vec<AuditEvent>,
    /// How many events the server has recorded under the caller's name in all.
    pub total: u64,
    /// How many of them are older than the oldest in `events` (the next page's worth).
    pub older: u64,
}

impl AuditPage {
    /// The most events [`Client::my_audit_newest`] reads before giving up.
    pub const MAX_SCANNED: u64 = 10_000_000;
}

/// Whether the key server answers and is ready.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerHealth {
    /// It answers and its store works.
    Ready,
    /// It answers but is not ready (its store is unavailable).
    NotReady {
        /// The HTTP status of `/readyz`.
        status: u16,
    },
    /// It could not be reached.
    Unreachable(ClientError),
}

/// One label record in the disk cache.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CachedLabel {
    /// The label name.
    pub label: String,
    /// The key version it seals to.
    pub kid: u32,
    /// When it was fetched.
    pub fetched_at: SystemTime,
    /// When it expires.
    pub expires_at: SystemTime,
    /// Whether it is still fresh (used without asking the server).
    pub fresh: bool,
}

/// What `kluis status` shows: the server's health and the label cache.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Status {
    /// The key server's base URL.
    pub server: String,
    /// Whether it answers.
    pub health: ServerHealth,
    /// Whether a token is configured.
    pub has_token: bool,
    /// This server's cache directory, if the disk cache is on.
    pub cache_dir: Option<PathBuf>,
    /// The cached label records.
    pub cached: Vec<CachedLabel>,
}

impl Client {
    /// A client for the configured server. Checks the address (see
    /// [`ClientConfig::server`]) and reads the CA bundle; sends nothing.
    pub fn new(config: ClientConfig) -> Result<Client, ClientError> {
        let server = parse_server(&config.server)?;
        let cache = config
            .cache_dir
            .as_deref()
            .map(|root| Cache::new(root, &server.base));
        let http = Http::new(&config, server)?;
        Ok(Client {
            http,
            cache,
            reason: None,
            purpose: Purpose::Open,
            max_batch: AtomicUsize::new(config.max_batch.max(1)),
        })
    }

    /// State why documents are opened; the key server records it with every opening. At
    /// most 1024 characters, one line.
    pub fn with_reason(mut self, reason: impl Into<String>) -> Result<Client, ClientError> {
        let reason = reason.into();
        if reason.len() > 1024 || reason.chars().any(char::is_control) {
            return Err(ClientError::InvalidReason);
        }
        self.reason = Some(reason);
        Ok(self)
    }

    /// Set why stanzas are unwrapped: [`Purpose::Rekey`] is needed to re-key documents
    /// under a retired key version.
    pub fn with_purpose(mut self, purpose: Purpose) -> Client {
        self.purpose = purpose;
        self
    }

    /// The key server's base URL, as used in requests and messages.
    pub fn server(&self) -> &str {
        &self.http.base
    }

    /// How many HTTP requests this client has sent, retries included.
    pub fn requests_sent(&self) -> u64 {
        self.http.requests_sent()
    }

    /// The public record of label `name`, to seal with.
    ///
    /// A fresh cached record is returned without asking the server. Otherwise the record is
    /// fetched, checked against the keys seen before (a key version whose public key changed,
    /// or an older current version than seen before, is refused as a possible attack and the
    /// cache is left alone) and cached. If the server cannot be reached and an expired record
    /// is cached, that record is returned with [`LabelRecord::stale`] set.
    pub fn label_record(&self, name: &str) -> Result<LabelRecord, ClientError> {
        check_label(name)?;
        let cached = self.cached_record(name);
        let cached = match cached {
            Some((r, e)) if e.is_fresh(unix_now()) => return Ok(r),
            other => other,
        };
        match self.fetch_record(name, cached.as_ref().map(|(_, e)| e)) {
            Ok(r) => Ok(r),
            Err(err) if err.is_offline() => match cached {
                Some((mut r, _)) => {
                    r.stale = true;
                    r.refresh_error = Some(err);
                    Ok(r)
                }
                None => Err(err),
            },
            Err(err) => Err(err),
        }
    }

    /// The record of label `name` to seal new documents with. Unlike
    /// [`Client::label_record`], the key server is asked every time (one small request,
    /// checked against the pinned keys and cached), so a document is never sealed to a key
    /// version that was rotated away, retired or destroyed since the record was cached, while
    /// the server can be reached.
    ///
    /// When the server cannot be reached, the cached record is returned, fresh or expired,
    /// with [`LabelRecord::refresh_error`] set (and [`LabelRecord::stale`] when it is past
    /// its `max_age`): tell the person the document was sealed from the cache. Without a
    /// cached record the error is returned.
    pub fn label_record_to_seal(&self, name: &str) -> Result<LabelRecord, ClientError> {
        check_label(name)?;
        let cached = self.cached_record(name);
        match self.fetch_record(name, cached.as_ref().map(|(_, e)| e)) {
            Ok(r) => Ok(r),
            Err(err) if err.is_offline() => match cached {
                Some((mut r, e)) => {
                    r.stale = !e.is_fresh(unix_now());
                    r.refresh_error = Some(err);
                    Ok(r)
                }
                None => Err(err),
            },
            Err(err) => Err(err),
        }
    }

    /// The cached record of label `name` with its cache entry. A cached record that does not
    /// parse any more counts as none. Parsed once here, whether it is then returned fresh,
    /// kept for pinning, or returned stale.
    fn cached_record(&self, name: &str) -> Option<(LabelRecord, Entry)> {
        self.cache
            .as_ref()
            .and_then(|c| c.load(name))
            .and_then(|e| Some((self.entry_record(&e, name).ok()?, e)))
    }

    /// The record of label `name` in `e`; a record for another label is refused.
    fn entry_record(&self, e: &Entry, name: &str) -> Result<LabelRecord, ClientError> {
        LabelRecord::from_wire(
            &e.record,
            name,
            self.server(),
            e.fetched(),
            e.expires(),
            false,
        )
    }

    fn fetch_record(&self, name: &str, cached: Option<&Entry>) -> Result<LabelRecord, ClientError> {
        let reply = self.http.request(
            &format!("/v1/labels/{name}"),
            false,
            None,
            Retry::Idempotent,
            SMALL_ANSWER,
        )?;
        match reply.status {
            200 => {}
            404 => {
                return Err(ClientError::UnknownLabel {
                    server: self.server().to_owned(),
                    label: name.to_owned(),
                    kid: None,
                });
            }
            410 => {
                return Err(ClientError::LabelGone {
                    server: self.server().to_owned(),
                    label: name.to_owned(),
                });
            }
            _ => return Err(self.status_error(&reply)),
        }
        let wire: WireRecord = self.json(&reply)?;
        let now = unix_now();
        // A server cannot make a record live forever (nor overflow the clock arithmetic).
        let max_age = wire.max_age.unwrap_or(DEFAULT_MAX_AGE).min(MAX_MAX_AGE);
        let entry = Entry {
            format: FORMAT,
            server: self.server().to_owned(),
            fetched_at: now,
            max_age,
            known_keys: Default::default(),
            record: wire,
        };
        // Parse and check before comparing or storing anything.
        let record = self.entry_record(&entry, name)?;
        let known_keys = self.pin(name, &record, cached)?;
        if let Some(c) = &self.cache {
            c.store(&Entry {
                known_keys,
                ..entry
            })?;
        }
        Ok(record)
    }

    /// Key pinning: every key version keeps the public key first seen for it, and the
    /// current version never goes back. Returns the keys to remember.
    fn pin(
        &self,
        name: &str,
        record: &LabelRecord,
        cached: Option<&Entry>,
    ) -> Result<std::collections::BTreeMap<u32, String>, ClientError> {
        let mut known = cached.map(|e| e.known_keys.clone()).unwrap_or_default();
        let cache_file = || self.cache.as_ref().map(|c| c.path(name));
        let offered = std::iter::once((record.kid(), *record.key.key()))
            .chain(record.versions.iter().map(|v| (v.kid, v.public_key)));
        for (kid, key) in offered {
            match known.get(&kid) {
                Some(seen) if seen.parse::<kluis_core::PublicKey>().ok() != Some(key) => {
                    return Err(ClientError::KeyChanged {
                        server: self.server().to_owned(),
                        label: name.to_owned(),
                        kid,
                        cache_file: cache_file(),
                    });
                }
                Some(_) => {}
                None => {
                    known.insert(kid, key.to_string());
                }
            }
        }
        if let Some(e) = cached {
            if record.kid() < e.record.kid {
                return Err(ClientError::KeyRollback {
                    server: self.server().to_owned(),
                    label: name.to_owned(),
                    offered: record.kid(),
                    seen: e.record.kid,
                    cache_file: cache_file(),
                });
            }
        }
        Ok(known)
    }

    /// Every label on the server with its current key version (no token needed).
    ///
    /// A cached label record whose key version is older than the one listed is fetched
    /// again (and checked against the pinned keys), so the cache never keeps a version the
    /// server has moved away from for offline sealing. A record that cannot be fetched again
    /// is left as it was.
    pub fn labels(&self) -> Result<Vec<LabelSummary>, ClientError> {
        let reply =
            self.http
                .request("/v1/labels", false, None, Retry::Idempotent, SMALL_ANSWER)?;
        if reply.status != 200 {
            return Err(self.status_error(&reply));
        }
        let labels: Vec<LabelSummary> = self.json(&reply)?;
        if let Some(cache) = &self.cache {
            for l in &labels {
                let Some(kid) = l.current_kid else { continue };
                if let Some(entry) = cache.load(&l.name) {
                    if entry.record.kid < kid {
                        let _ = self.fetch_record(&l.name, Some(&entry));
                    }
                }
            }
        }
        Ok(labels)
    }

    /// One page of the audit events recorded under the caller's name, oldest first: those
    /// with a sequence number above `after`, at most `limit` (1 to 1000; the server may send
    /// fewer). Needs the token.
    pub fn my_audit_page(&self, after: i64, limit: usize) -> Result<Vec<AuditEvent>, ClientError> {
        let limit = limit.clamp(1, 1000);
        let reply = self.http.request(
            &format!("/v1/me/audit?after={after}&limit={limit}"),
            true,
            None,
            Retry::Idempotent,
            AUDIT_ANSWER,
        )?;
        if reply.status != 200 {
            return Err(self.status_error(&reply));
        }
        let events: Vec<AuditEvent> = self.json(&reply)?;
        // Sequence numbers must rise, or paging could go round in circles.
        let mut last = after;
        for e in &events {
            if e.seq <= last {
                return Err(ClientError::Protocol {
                    server: self.server().to_owned(),
                    detail: "the audit events are not in rising sequence order".to_owned(),
                });
            }
            last = e.seq;
        }
        Ok(events)
    }

    /// The newest `limit` audit events recorded under the caller's name with a sequence
    /// number below `before` (all when `None`), newest first, with how many are recorded in
    /// all. Needs the token.
    ///
    /// The server lists events oldest first, 1000 per request, so this reads them all (one
    /// request per 1000 events) and keeps only the `limit` it returns: memory stays bounded
    /// whatever the count. At most [`AuditPage::MAX_SCANNED`] events are read.
    pub fn my_audit_newest(
        &self,
        before: Option<i64>,
        limit: usize,
    ) -> Result<AuditPage, ClientError> {
        let mut window = std::collections::VecDeque::with_capacity(limit.min(10_000));
        let mut total = 0u64;
        let mut older = 0u64;
        let mut after = 0i64;
        loop {
            let page = self.my_audit_page(after, 1000)?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for e in page {
                total += 1;
                if before.is_some_and(|b| e.seq >= b) {
                    continue;
                }
                if limit == 0 {
                    older += 1;
                    continue;
                }
                if window.len() == limit {
                    window.pop_front();
                    older += 1;
                }
                window.push_back(e);
            }
            if total >= AuditPage::MAX_SCANNED {
                return Err(ClientError::Protocol {
                    server: self.server().to_owned(),
                    detail: format!(
                        "more than {} audit events under one name",
                        AuditPage::MAX_SCANNED
                    ),
                });
            }
        }
        Ok(AuditPage {
            events: window.into_iter().rev().collect(),
            total,
            older,
        })
    }

    /// The audit events recorded under the caller's name (needs the token): the oldest
    /// 1000 only. See [`Client::my_audit_newest`] for the newest, with a count.
    pub fn my_audit(&self) -> Result<Vec<AuditEvent>, ClientError> {
        let reply =
            self.http
                .request("/v1/me/audit", true, None, Retry::Idempotent, AUDIT_ANSWER)?;
        if reply.status != 200 {
            return Err(self.status_error(&reply));
        }
        self.json(&reply)
    }

    /// Whether the server is reachable and ready, and what the label cache holds. Never
    /// fails: an unreachable server is part of the answer.
    pub fn status(&self) -> Status {
        let health =
            match self
                .http
                .request("/readyz", false, None, Retry::Idempotent, SMALL_ANSWER)
            {
                Ok(r) if r.status == 200 => ServerHealth::Ready,
                Ok(r) => ServerHealth::NotReady { status: r.status },
                Err(e) => ServerHealth::Unreachable(e),
            };
        let now = unix_now();
        let cached = self
            .cache
            .as_ref()
            .map(|c| {
                c.list()
                    .into_iter()
                    .map(|e| CachedLabel {
                        fresh: e.is_fresh(now),
                        label: e.record.label.clone(),
                        kid: e.record.kid,
                        fetched_at: e.fetched(),
                        expires_at: e.expires(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Status {
            server: self.server().to_owned(),
            health,
            has_token: self.http.has_token(),
            cache_dir: self.cache.as_ref().map(|c| c.dir().to_owned()),
            cached,
        }
    }

    pub(crate) fn json<T: serde::de::DeserializeOwned>(
        &self,
        reply: &Reply,
    ) -> Result<T, ClientError> {
        serde_json::from_slice(&reply.body).map_err(|e| ClientError::Protocol {
            server: self.server().to_owned(),
            detail: format!("the answer is not the JSON expected: {e}"),
        })
    }

    /// The error for a non-200 answer that is not specific to one request kind.
    pub(crate) fn status_error(&self, reply: &Reply) -> ClientError {
        let server = self.server().to_owned();
        let body = reply.api_error();
        match reply.status {
            401 => ClientError::Unauthenticated { server },
            400 => ClientError::Malformed {
                server,
                message: body.message,
            },
            413 => ClientError::BatchTooLarge { server },
            429 => ClientError::RateLimited {
                server,
                retry_after: reply.retry_after,
            },
            500..=599 => ClientError::Server {
                server,
                status: reply.status,
                message: body.message,
            },
            403 | 404 | 410 if !body.code.is_empty() => ClientError::Refused {
                server,
                code: body.code,
                message: body.message,
            },
            s => ClientError::Protocol {
                server,
                detail: format!("unexpected HTTP status {s}"),
            },
        }
    }
}
