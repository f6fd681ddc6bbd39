//! kluis-sync: a plain folder kept sealed in a cloud sync folder, both ways (`kluis sync`).
//!
//! A [`Syncer`] holds one pair of folders, PLAIN (where people work) and SEALED (inside the
//! OneDrive or SharePoint folder, holding only kluis documents), with a state journal kept
//! outside both. Each [`Syncer::pass`] scans both folders, compares every path with the
//! journal (what was last in sync) and then seals what changed in PLAIN, opens what changed
//! in SEALED (one key server request per 1000 documents), keeps both versions of a conflict,
//! and carries deletions over (a sealed file removed, or a plain file moved to a local trash),
//! with a guard against mass deletions. [`watch`] runs passes on file-system events.
//!
//! The keys come in through [`Keys`]: the label's slots to seal to, and the key holders to
//! open with (the key server client). This crate does no network I/O of its own.
//!
//! The design, the decisions and the limits are in `docs/SYNC.md`.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod engine;
mod error;
mod folder_key;
mod journal;
mod scan;
mod watch;

/// The parsers of what kluis sync reads back from disk, for the fuzz targets and property
/// tests: not an interface for other uses.
#[doc(hidden)]
pub mod fuzzing {
    use zeroize::Zeroizing;

    /// A state journal file's bytes as [`Syncer`](crate::Syncer) reads them back: `Ok` with
    /// the bytes it would write for that journal, or why the file is refused.
    pub fn journal(bytes: &[u8]) -> Result<Vec<u8>, String> {
        crate::journal::Journal::from_bytes(bytes)?
            .to_bytes()
            .map_err(|e| e.to_string())
    }

    /// The key in an opened `.kluis-folder` document's content, if it is a folder key.
    pub fn folder_key_content(plain: &[u8]) -> Option<Zeroizing<[u8; 32]>> {
        crate::folder_key::key_from_content(plain)
    }

    /// The content a `.kluis-folder` document seals for `key`.
    pub fn folder_key_content_for(key: &[u8; 32]) -> Zeroizing<Vec<u8>> {
        crate::folder_key::content_for(key)
    }
}

pub use engine::{GUARD_MIN_FILES, GUARD_SHARE_PERCENT, Options, PassReport, Syncer};
pub use error::SyncError;
pub use folder_key::FolderKey;
pub use scan::{FOLDER_KEY_FILE, PLAIN_TEMP_PREFIX, SEALED_TEMP_PREFIX, Stamp, ignored};
pub use watch::{QUIET, Stop, watch};

use kluis_core::{Slot, Unwrap};

/// What sealing needs: the label's slots, and a notice to show (such as sealing from a cached
/// label record because the key server could not be asked).
pub struct Sealing {
    /// The slots every sealed file is sealed to.
    pub slots: Vec<Slot>,
    /// Something to tell the person, if anything.
    pub notice: Option<String>,
}

/// Where the keys come from.
pub trait Keys {
    /// The slots to seal to now; asked at most once per pass, and only when something is to be
    /// sealed or removed. An error (the label retired or destroyed, access revoked) stops the
    /// plain → sealed direction, with the message shown.
    fn seal_to(&self) -> Result<Sealing, String>;
    /// The key holders that open documents (the key server client).
    fn unwrappers(&self) -> Vec<&dyn Unwrap>;
    /// The label the pair is sealed to. Sync opens only documents (the folder key included)
    /// that this label alone opens: a document of another label dropped into SEALED is left
    /// there and listed, since once opened it would be sealed again to this label (as a
    /// conflict copy, or after an edit) and readable by everyone this label admits. The
    /// default takes the label of the first single-label slot of [`Keys::seal_to`]; `None`
    /// opens nothing.
    fn label(&self) -> Option<String> {
        self.seal_to()
            .ok()?
            .slots
            .iter()
            .find_map(|slot| match slot.recipients().as_slice() {
                [kluis_core::Recipient::Label(l)] => Some(l.label().to_owned()),
                _ => None,
            })
    }
}

/// Whether the document with `header` is opened by `label` alone (a one-stanza slot wrapped
/// to that label): sealing it again to `label` then lets no one new read it.
pub(crate) fn opened_by_label_alone(header: &kluis_core::Header, label: Option<&str>) -> bool {
    let Some(label) = label else {
        return false;
    };
    header.slots().iter().any(|slot| match slot.as_slice() {
        [kluis_core::Stanza::Org(o)] => {
            o.label() == label && o.slot_kind() == kluis_core::SlotKind::Whole
        }
        _ => false,
    })
}

/// The state folder of every pair below `state_root`, with each pair's last status (the
/// `status.json` a pass writes), for `kluis sync status`.
pub fn statuses(state_root: &std::path::Path) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(state_root) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path().join("status.json");
        let Ok(m) = std::fs::metadata(&p) else {
            continue;
        };
        if m.len() > 64 << 20 {
            continue;
        }
        if let Some(v) = std::fs::read(&p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
        {
            out.push(v);
        }
    }
    out
}
