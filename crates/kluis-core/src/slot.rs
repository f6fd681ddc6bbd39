//! Recipients and slots: who a document is sealed to.

use crate::error::{Error, Result};
use crate::header::Header;
use crate::keys::{LabelPublicKey, PublicKey};
use crate::secret::{DocId, FileKey, Share};
use crate::stanza::{OrgStanza, SlotKind, Stanza, X25519Stanza};
use crate::wrap;

/// One party a share can be wrapped to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recipient {
    /// A label key version on the key server (opening needs the server).
    Label(LabelPublicKey),
    /// A holder's or recovery X25519 key (opening needs its identity).
    Key(PublicKey),
}

impl Recipient {
    fn wrap(&self, doc_id: &DocId, share: &Share, kind: SlotKind) -> Result<Stanza> {
        Ok(match self {
            Recipient::Label(l) => {
                let aad = wrap::org_aad(doc_id, l.label(), l.kid(), kind);
                let (ephemeral, body) = wrap::wrap(wrap::ORG_INFO, &aad, &l.key().0, share)?;
                Stanza::Org(OrgStanza {
                    label: l.label().to_owned(),
                    kid: l.kid(),
                    slot_kind: kind,
                    ephemeral,
                    body,
                })
            }
            Recipient::Key(k) => {
                let aad = wrap::x25519_aad(doc_id);
                let (ephemeral, body) = wrap::wrap(wrap::X25519_INFO, &aad, &k.0, share)?;
                Stanza::X25519(X25519Stanza { ephemeral, body })
            }
        })
    }
}

/// A way to open a document: one recipient, or two that are both needed (double key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot(SlotInner);

#[derive(Clone, Debug, PartialEq, Eq)]
enum SlotInner {
    Single(Recipient),
    Double(Recipient, Recipient),
}

impl Slot {
    /// A slot that one recipient opens alone.
    pub fn single(r: Recipient) -> Self {
        Slot(SlotInner::Single(r))
    }

    /// A double-key slot: the file key is split in two shares, one per recipient; both are
    /// needed to open.
    pub fn double(a: Recipient, b: Recipient) -> Result<Self> {
        if a == b {
            return Err(Error::InvalidSlots {
                reason: "the two keys of a double-key slot must differ",
            });
        }
        Ok(Slot(SlotInner::Double(a, b)))
    }

    /// The recipients of this slot.
    pub fn recipients(&self) -> Vec<&Recipient> {
        match &self.0 {
            SlotInner::Single(r) => vec![r],
            SlotInner::Double(a, b) => vec![a, b],
        }
    }

    /// Wrap `key` into this slot's stanzas.
    pub(crate) fn seal(&self, doc_id: &DocId, key: &FileKey) -> Result<Vec<Stanza>> {
        match &self.0 {
            SlotInner::Single(r) => Ok(vec![r.wrap(doc_id, &Share::from(key), SlotKind::Whole)?]),
            SlotInner::Double(a, b) => {
                let (s1, s2) = key.split()?;
                Ok(vec![
                    a.wrap(doc_id, &s1, SlotKind::Half)?,
                    b.wrap(doc_id, &s2, SlotKind::Half)?,
                ])
            }
        }
    }
}

// Re-keying lives here, above both the header and the slots, so that `header` need not
// depend on `slot` (which depends on the keys and the unwrapping trait, which depend on the
// header).
impl Header {
    /// A new header for the same document (same file key, doc_id, metadata and payload) with
    /// the slots at indices `keep` kept as they are and `add` sealed afresh.
    ///
    /// This is re-keying: move to a new label key version (keep nothing, add the new slot),
    /// add a recipient, or remove one. The payload is untouched.
    pub fn rekey(&self, key: &FileKey, keep: &[usize], add: &[Slot]) -> Result<Header> {
        if !self.verify(key) {
            return Err(Error::HeaderMac);
        }
        let doc_id = self.doc_id();
        let add = add
            .iter()
            .map(|slot| slot.seal(&doc_id, key))
            .collect::<Result<Vec<_>>>()?;
        self.with_slots(key, keep, add)
    }
}
