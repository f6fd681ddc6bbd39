//! The v1 header's byte layout (FORMAT.md §3–§5), read independently of kluis-core, written
//! once for the tamper tests (`tests/tamper.rs`) and the vector generator
//! (`examples/gen_vectors.rs`), which both do byte surgery on well-formed headers.
#![allow(dead_code)]

/// Offset of the 6-byte magic (`KLUIS\0`).
pub const MAGIC_AT: usize = 0;
/// Offset of the BE16 format version.
pub const VERSION_AT: usize = 6;
/// Offset of the BE32 header length.
pub const HEADER_LEN_AT: usize = 8;
/// Offset of the 16-byte doc_id.
pub const DOC_ID_AT: usize = 12;
/// Offset of the 16-byte payload salt.
pub const PAYLOAD_SALT_AT: usize = 28;
/// Offset of the slot-count byte: after magic (6), version (2), header length (4), doc_id (16)
/// and payload salt (16).
pub const SLOT_COUNT_AT: usize = 44;
/// Type byte of an org (label) stanza.
pub const ORG: u8 = 0x01;
/// Type byte of an X25519 stanza.
pub const X25519: u8 = 0x02;

/// Where one stanza sits in the header bytes.
#[derive(Clone, Copy, Debug)]
pub struct StanzaAt {
    /// Offset of the type byte.
    pub start: usize,
    /// The type byte.
    pub kind: u8,
    /// Content length (the BE16 after the type byte).
    pub len: usize,
}

impl StanzaAt {
    /// Offset of the content.
    pub fn content(&self) -> usize {
        self.start + 3
    }

    /// Offset just after the stanza.
    pub fn end(&self) -> usize {
        self.content() + self.len
    }

    /// Offset of the 32-byte ephemeral key `E` (org and X25519 stanzas only).
    pub fn ephemeral(&self, b: &[u8]) -> usize {
        match self.kind {
            ORG => self.content() + 1 + b[self.content()] as usize + 4 + 1,
            X25519 => self.content(),
            k => panic!("no ephemeral key in stanza type {k}"),
        }
    }

    /// Offset of the 48-byte body.
    pub fn body(&self, b: &[u8]) -> usize {
        self.ephemeral(b) + 32
    }

    /// Offset of an org stanza's slot-kind byte.
    pub fn slot_kind(&self, b: &[u8]) -> usize {
        assert_eq!(self.kind, ORG);
        self.content() + 1 + b[self.content()] as usize + 4
    }
}

/// Where one slot sits.
#[derive(Clone, Debug)]
pub struct SlotAt {
    /// Offset of its stanza-count byte.
    pub at: usize,
    /// Offset just after its last stanza.
    pub end: usize,
    /// Its stanzas.
    pub stanzas: Vec<StanzaAt>,
}

/// A well-formed header's layout.
#[derive(Clone, Debug)]
pub struct Layout {
    /// The slots, in order.
    pub slots: Vec<SlotAt>,
    /// Offset of the BE16 sealed-metadata length.
    pub meta_len_at: usize,
    /// Offset of the header MAC.
    pub mac_at: usize,
}

/// The header length a header declares (bytes 8..12).
pub fn header_len(b: &[u8]) -> usize {
    u32::from_be_bytes(b[HEADER_LEN_AT..DOC_ID_AT].try_into().unwrap()) as usize
}

/// Declare `len` as the header length.
pub fn set_header_len(b: &mut [u8], len: usize) {
    b[HEADER_LEN_AT..DOC_ID_AT].copy_from_slice(&(len as u32).to_be_bytes());
}

/// Walk a well-formed header.
pub fn layout(b: &[u8]) -> Layout {
    let mut pos = SLOT_COUNT_AT;
    let count = b[pos] as usize;
    pos += 1;
    let mut slots = Vec::new();
    for _ in 0..count {
        let at = pos;
        let n = b[pos] as usize;
        pos += 1;
        let mut stanzas = Vec::new();
        for _ in 0..n {
            let s = StanzaAt {
                start: pos,
                kind: b[pos],
                len: u16::from_be_bytes([b[pos + 1], b[pos + 2]]) as usize,
            };
            pos = s.end();
            stanzas.push(s);
        }
        slots.push(SlotAt {
            at,
            end: pos,
            stanzas,
        });
    }
    let meta_len = u16::from_be_bytes([b[pos], b[pos + 1]]) as usize;
    let mac_at = pos + 2 + meta_len;
    assert_eq!(
        mac_at + 32,
        header_len(b),
        "layout walk disagrees with header_len"
    );
    Layout {
        slots,
        meta_len_at: pos,
        mac_at,
    }
}
