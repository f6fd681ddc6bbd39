//! Stanzas (one wrapped share each) and their wire encoding.

use crate::error::{Error, Result};
use crate::format::{BODY_LEN, MAX_LABEL_LEN, MAX_STANZA_LEN, ORG_STANZA, X25519_STANZA};
use crate::wire::Cursor;

/// What an org stanza's share is, authenticated so the key server can enforce "double key
/// required" for a label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SlotKind {
    /// The share is the file key itself (a one-stanza slot).
    Whole = 1,
    /// The share is half of a double-key slot.
    Half = 2,
}

/// A stanza sealed to a label key version on the key server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrgStanza {
    pub(crate) label: String,
    pub(crate) kid: u32,
    pub(crate) slot_kind: SlotKind,
    pub(crate) ephemeral: [u8; 32],
    pub(crate) body: [u8; BODY_LEN],
}

impl OrgStanza {
    /// The label the share is wrapped to.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The label key version.
    pub fn kid(&self) -> u32 {
        self.kid
    }

    /// Whether the share is the whole file key or half of a double-key slot.
    pub fn slot_kind(&self) -> SlotKind {
        self.slot_kind
    }
}

/// A stanza sealed to an X25519 holder or recovery key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct X25519Stanza {
    pub(crate) ephemeral: [u8; 32],
    pub(crate) body: [u8; BODY_LEN],
}

/// One wrapped share in a header slot.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stanza {
    /// Wrapped to a label key on the key server.
    Org(OrgStanza),
    /// Wrapped to a holder's or recovery X25519 key.
    X25519(X25519Stanza),
    /// A stanza type this version does not know; kept verbatim, never used to open.
    #[non_exhaustive]
    Unknown {
        /// The type byte.
        kind: u8,
        /// The raw content.
        content: Vec<u8>,
    },
}

/// Check a label name: 1–64 bytes of `[A-Za-z0-9._-]`.
pub(crate) fn validate_label(label: &str) -> Result<()> {
    let ok = !label.is_empty()
        && label.len() <= MAX_LABEL_LEN
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok { Ok(()) } else { Err(Error::InvalidLabel) }
}

fn body_error(kind: u8, found: usize) -> Error {
    Error::StanzaBodyLength {
        kind,
        expected: BODY_LEN,
        found,
    }
}

impl Stanza {
    /// Parse one stanza (`type ‖ u16 length ‖ content`) from the cursor.
    pub(crate) fn read(c: &mut Cursor<'_>) -> Result<Stanza> {
        let kind = c.u8()?;
        let len = c.u16()? as usize;
        if len > MAX_STANZA_LEN {
            return Err(Error::MalformedHeader {
                reason: "stanza longer than 1024 bytes",
            });
        }
        let content = c.bytes(len)?;
        let mut s = Cursor::new(content);
        match kind {
            ORG_STANZA => {
                let label_len = s.u8()? as usize;
                let label = std::str::from_utf8(s.bytes(label_len)?)
                    .ok()
                    .filter(|l| validate_label(l).is_ok())
                    .ok_or(Error::MalformedHeader {
                        reason: "org stanza label is not 1-64 characters of [A-Za-z0-9._-]",
                    })?
                    .to_owned();
                let kid = s.u32()?;
                let slot_kind = match s.u8()? {
                    1 => SlotKind::Whole,
                    2 => SlotKind::Half,
                    _ => {
                        return Err(Error::MalformedHeader {
                            reason: "org stanza has an unknown slot kind",
                        });
                    }
                };
                let ephemeral = s.array()?;
                let body = s
                    .bytes(s.remaining())?
                    .try_into()
                    .map_err(|_| body_error(kind, len - (1 + label_len + 4 + 1 + 32)))?;
                Ok(Stanza::Org(OrgStanza {
                    label,
                    kid,
                    slot_kind,
                    ephemeral,
                    body,
                }))
            }
            X25519_STANZA => {
                let ephemeral = s.array()?;
                let body = s
                    .bytes(s.remaining())?
                    .try_into()
                    .map_err(|_| body_error(kind, len - 32))?;
                Ok(Stanza::X25519(X25519Stanza { ephemeral, body }))
            }
            _ => Ok(Stanza::Unknown {
                kind,
                content: content.to_vec(),
            }),
        }
    }

    /// Append the wire encoding to `out`.
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0, 0, 0]);
        let kind = match self {
            Stanza::Org(s) => {
                out.push(s.label.len() as u8);
                out.extend_from_slice(s.label.as_bytes());
                out.extend_from_slice(&s.kid.to_be_bytes());
                out.push(s.slot_kind as u8);
                out.extend_from_slice(&s.ephemeral);
                out.extend_from_slice(&s.body);
                ORG_STANZA
            }
            Stanza::X25519(s) => {
                out.extend_from_slice(&s.ephemeral);
                out.extend_from_slice(&s.body);
                X25519_STANZA
            }
            Stanza::Unknown { kind, content } => {
                out.extend_from_slice(content);
                *kind
            }
        };
        let len = (out.len() - start - 3) as u16;
        out[start] = kind;
        out[start + 1..start + 3].copy_from_slice(&len.to_be_bytes());
    }

    /// The wire encoding of this stanza alone (as sent to a key server).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write(&mut out);
        out
    }

    /// Parse exactly one stanza from `bytes` (as received by a key server).
    pub fn from_bytes(bytes: &[u8]) -> Result<Stanza> {
        if bytes.len() > MAX_STANZA_LEN + 3 {
            return Err(Error::MalformedHeader {
                reason: "stanza longer than 1024 bytes",
            });
        }
        let mut c = Cursor::new(bytes);
        let s = Stanza::read(&mut c)?;
        if c.remaining() != 0 {
            return Err(Error::MalformedHeader {
                reason: "bytes after the stanza",
            });
        }
        Ok(s)
    }
}
