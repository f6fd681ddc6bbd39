//! Anchors of the audit trail: the head (sequence number and MAC) written somewhere admins
//! cannot edit (`kluis-server audit anchor`), and checked by `audit verify --anchors FILE`.
//!
//! The chain and its stored head MAC detect edits, deletions and cut-off records, but not a
//! rollback of the whole store to an older copy (its chain and head are consistent), nor a
//! rewrite by someone who holds the master key. An anchor does: the trail must still hold
//! the anchored sequence number, with the anchored MAC.

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Result, ServerError};
use crate::service::KeyService;
use crate::store::Store;
use crate::time::{now_ms, rfc3339};

/// The largest anchor file `audit verify --anchors` reads (a line is about 120 bytes).
const MAX_ANCHOR_FILE: u64 = 64 << 20;

/// One anchored head: a JSON line `{"seq":N,"mac":"hex","time":"RFC 3339"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    /// The sequence number of the last record.
    pub seq: i64,
    /// Its chain MAC, hex.
    pub mac: String,
    /// When the anchor was taken (informational; not checked).
    #[serde(default)]
    pub time: String,
}

impl Anchor {
    /// The JSON line for this anchor (no newline).
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("serialisable")
    }
}

/// The current head of a verified trail: verifies the whole chain first, so an anchor is
/// never taken of a broken one.
pub fn take<S: Store>(store: &KeyService<S>) -> Result<Anchor> {
    let (seq, mac) = store.verify_audit()?;
    Ok(Anchor {
        seq,
        mac,
        time: rfc3339(now_ms()),
    })
}

/// Append `anchor` as a line to `path` (created if missing) and fsync it.
pub fn append(path: &Path, anchor: &Anchor) -> Result<()> {
    use std::io::Write;
    let failed = |error| ServerError::AnchorFile {
        path: path.to_owned(),
        append: true,
        error,
    };
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(failed)?;
    f.write_all(format!("{}\n", anchor.to_line()).as_bytes())
        .map_err(failed)?;
    f.sync_all().map_err(failed)?;
    Ok(())
}

/// Parse an anchor file: one JSON anchor per line, blank lines ignored.
pub fn parse(text: &str) -> Result<Vec<Anchor>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let a: Anchor = serde_json::from_str(line)
            .map_err(|e| ServerError::BadAnchor(format!("line {}: {e}", i + 1)))?;
        if a.seq < 1 || a.mac.len() != 64 || hex::decode(&a.mac).is_err() {
            return Err(ServerError::BadAnchor(format!(
                "line {}: seq must be at least 1 and mac 64 hex digits",
                i + 1
            )));
        }
        out.push(a);
    }
    Ok(out)
}

/// Read and parse an anchor file (at most 64 MiB); a file without any anchor is refused.
pub fn read(path: &Path) -> Result<Vec<Anchor>> {
    let mut text = String::new();
    std::fs::File::open(path)
        .map_err(|error| ServerError::AnchorFile {
            path: path.to_owned(),
            append: false,
            error,
        })?
        .take(MAX_ANCHOR_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| ServerError::BadAnchor(format!("{}: {e}", path.display())))?;
    if text.len() as u64 > MAX_ANCHOR_FILE {
        return Err(ServerError::BadAnchor(format!(
            "{} is larger than 64 MiB: keep the newest anchors",
            path.display()
        )));
    }
    let anchors = parse(&text)?;
    if anchors.is_empty() {
        // An empty file (a failed copy, the wrong file) must not read as "every anchor matches".
        return Err(ServerError::BadAnchor(format!(
            "{} holds no anchor",
            path.display()
        )));
    }
    Ok(anchors)
}

/// Verify the chain and check every anchor against it: fails when an anchored record is
/// beyond the head (records cut off, or the store rolled back) or holds another MAC (the
/// trail was rewritten). Returns the number of records and the head MAC, as
/// [`KeyService::verify_audit`] does.
pub fn verify<S: Store>(store: &KeyService<S>, anchors: &[Anchor]) -> Result<(i64, String)> {
    // One read snapshot: the chain and the anchored records are read at the same moment.
    store.store().snapshot(|_| check(store, anchors))
}

fn check<S: Store>(store: &KeyService<S>, anchors: &[Anchor]) -> Result<(i64, String)> {
    let (count, head) = store.verify_audit()?;
    for a in anchors {
        if a.seq > count {
            return Err(ServerError::AnchorMismatch {
                seq: a.seq,
                what: "this anchored record is missing: the trail was cut off or the store rolled back to an older copy",
            });
        }
        let rec = store.audit_page(None, a.seq - 1, 1)?;
        let same = rec
            .first()
            .is_some_and(|r| r.seq == a.seq && hex::encode(&r.mac) == a.mac.to_ascii_lowercase());
        if !same {
            return Err(ServerError::AnchorMismatch {
                seq: a.seq,
                what: "this record differs from the anchored one: the trail was rewritten",
            });
        }
    }
    Ok((count, head))
}
