//! Batch unwrap with replies sealed to a per-request ephemeral key; the core's `Unwrap`.

use std::sync::atomic::Ordering;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use kluis_core::reply::{ReplyKey, SealedShare};
use kluis_core::{DocId, OrgStanza, Share, Stanza, Unwrap, UnwrapError, UnwrapRequest};
use serde::{Deserialize, Serialize};

use crate::client::{Client, Purpose};
use crate::error::ClientError;
use crate::http::{ApiError, Retry};

/// Largest batch answer accepted (1000 items are about 150 KiB).
const BATCH_ANSWER: u64 = 16 * 1024 * 1024;

#[derive(Deserialize)]
struct BatchReply {
    server_key: String,
    items: Vec<ItemReply>,
}

#[derive(Deserialize)]
struct ItemReply {
    #[serde(default)]
    nonce: Option<String>,
    #[serde(default)]
    share: Option<String>,
    #[serde(default)]
    error: Option<ApiError>,
}

/// `POST /v1/unwrap/batch`, serialized straight from borrowed data (no JSON value tree).
#[derive(Serialize)]
struct BatchRequest<'a> {
    reply_key: String,
    purpose: &'static str,
    items: Vec<WireItem<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

#[derive(Serialize)]
struct WireItem<'a> {
    doc_id: String,
    stanza: &'a str,
}

/// `s` decoded from base64, if it is exactly `N` bytes.
fn b64_array<const N: usize>(s: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    (B64.decode_slice(s, &mut out).ok()? == N).then_some(out)
}

/// One org stanza to send, with its place in the caller's request list.
struct Item<'a> {
    index: usize,
    doc_id: DocId,
    stanza: &'a OrgStanza,
    bytes: String,
}

impl Client {
    /// Unwrap org (label) stanzas through the key server: one `POST /v1/unwrap/batch` per
    /// [`max_batch`](crate::ClientConfig::max_batch) items, each with a fresh reply key, so
    /// every share travels sealed to this request alone. Returns one result per request, in
    /// order. A failure of a whole request (no token, unreachable, 401, ...) is the result of
    /// each of its items and of every later one (they are not sent).
    pub fn unwrap_batch(&self, requests: &[UnwrapRequest<'_>]) -> Vec<Result<Share, ClientError>> {
        let mut out: Vec<Option<Result<Share, ClientError>>> =
            (0..requests.len()).map(|_| None).collect();
        let mut items = Vec::new();
        for (index, r) in requests.iter().enumerate() {
            match r.stanza {
                Stanza::Org(o) => items.push(Item {
                    index,
                    doc_id: r.doc_id,
                    stanza: o,
                    bytes: B64.encode(r.stanza.to_bytes()),
                }),
                _ => out[index] = Some(Err(ClientError::NotForKeyServer)),
            }
        }
        let mut pos = 0;
        while pos < items.len() {
            let size = self.max_batch.load(Ordering::Relaxed).max(1);
            let chunk = &items[pos..items.len().min(pos + size)];
            match self.unwrap_chunk(chunk) {
                Ok(results) => {
                    for (item, r) in chunk.iter().zip(results) {
                        out[item.index] = Some(r);
                    }
                    pos += chunk.len();
                }
                // The server takes fewer items than configured: halve and go on (a 413 is
                // answered before anything is unwrapped or audited, so resending is safe).
                Err(ClientError::BatchTooLarge { .. }) if chunk.len() > 1 => {
                    self.max_batch.store(chunk.len() / 2, Ordering::Relaxed);
                }
                Err(e) => {
                    for item in &items[pos..] {
                        out[item.index] = Some(Err(e.clone()));
                    }
                    break;
                }
            }
        }
        out.into_iter()
            .map(|r| r.unwrap_or(Err(ClientError::Random)))
            .collect()
    }

    /// One batch request. `Err` when the whole request failed.
    fn unwrap_chunk(
        &self,
        items: &[Item<'_>],
    ) -> Result<Vec<Result<Share, ClientError>>, ClientError> {
        let server = || self.server().to_owned();
        let reply_key = ReplyKey::generate().map_err(|_| ClientError::Random)?;
        let body = serde_json::to_vec(&BatchRequest {
            reply_key: B64.encode(reply_key.public_bytes()),
            purpose: match self.purpose {
                Purpose::Open => "open",
                Purpose::Rekey => "rekey",
            },
            items: items
                .iter()
                .map(|i| WireItem {
                    doc_id: i.doc_id.to_string(),
                    stanza: &i.bytes,
                })
                .collect(),
            reason: self.reason.as_deref(),
        })
        .expect("serializing strings to JSON cannot fail");
        let reply = self.http.request(
            "/v1/unwrap/batch",
            true,
            Some(&body),
            Retry::NotProcessed,
            BATCH_ANSWER,
        )?;
        if reply.status != 200 {
            return Err(self.status_error(&reply));
        }
        let parsed: BatchReply = self.json(&reply)?;
        if parsed.items.len() != items.len() {
            return Err(ClientError::Protocol {
                server: server(),
                detail: format!("{} results for {} items", parsed.items.len(), items.len()),
            });
        }
        let server_key: [u8; 32] =
            b64_array(&parsed.server_key).ok_or_else(|| ClientError::Protocol {
                server: server(),
                detail: "server_key is not 32 bytes of base64".into(),
            })?;
        let opener = reply_key
            .opener(&server_key)
            .map_err(|_| ClientError::BadReply { server: server() })?;
        Ok(items
            .iter()
            .zip(parsed.items)
            .map(|(item, r)| {
                if let Some(e) = r.error {
                    return Err(self.item_error(item.stanza, e));
                }
                let sealed = r
                    .nonce
                    .as_deref()
                    .and_then(b64_array)
                    .zip(r.share.as_deref().and_then(b64_array))
                    .map(|(nonce, body)| SealedShare { nonce, body })
                    .ok_or_else(|| ClientError::Protocol {
                        server: server(),
                        detail: "an item has neither a well-formed share nor an error".into(),
                    })?;
                // A share that does not authenticate is never used.
                opener
                    .open(&item.doc_id, &sealed)
                    .map_err(|_| ClientError::BadReply { server: server() })
            })
            .collect())
    }

    /// The error for one refused item, named after the stanza's label and version.
    fn item_error(&self, stanza: &OrgStanza, e: ApiError) -> ClientError {
        let server = self.server().to_owned();
        let label = stanza.label().to_owned();
        let kid = stanza.kid();
        match e.code.as_str() {
            "denied" => ClientError::Denied { label },
            "double_key_required" => ClientError::DoubleKeyRequired { label },
            "retired" => ClientError::Retired { label, kid },
            "destroyed" => ClientError::Destroyed {
                label,
                kid,
                destroyed_ms: e.destroyed_ms,
            },
            "not_found" => ClientError::UnknownLabel {
                server,
                label,
                kid: Some(kid),
            },
            // One item refused as malformed: the request as a whole was fine, so it is this
            // document's stanza (a flipped document id or stanza byte).
            "malformed" => ClientError::CorruptStanza {
                server,
                label,
                kid,
                message: e.message,
            },
            "internal" => ClientError::Server {
                server,
                status: 500,
                message: e.message,
            },
            _ => ClientError::Refused {
                server,
                code: e.code,
                message: e.message,
            },
        }
    }
}

impl Unwrap for Client {
    /// Every org (label) stanza: the key server decides.
    fn accepts(&self, stanza: &Stanza) -> bool {
        matches!(stanza, Stanza::Org(_))
    }

    /// [`Client::unwrap_batch`], with each error as its [`ClientError::to_unwrap_error`].
    fn unwrap(&self, requests: &[UnwrapRequest<'_>]) -> Vec<Result<Share, UnwrapError>> {
        self.unwrap_batch(requests)
            .into_iter()
            .map(|r| r.map_err(|e| e.to_unwrap_error()))
            .collect()
    }
}
