//! The v1 header: magic, version, length, ids, slots, sealed metadata and the header MAC.

use std::io::Read;

use crate::error::{Error, Result};
use crate::format::{
    CHUNK_LEN, MAC_LEN, MAGIC, MAX_HEADER_LEN, MAX_SLOTS, MIN_HEADER_LEN, SEALED_CHUNK_LEN,
    TAG_LEN, VERSION,
};
use crate::metadata::{self, Metadata};
use crate::primitives;
use crate::secret::{DocId, FileKey};
use crate::stanza::{SlotKind, Stanza};
use crate::wire::Cursor;

/// Bytes before the first slot: magic, version, length, doc_id, payload salt, slot count.
const PREFIX_LEN: usize = 6 + 2 + 4 + 16 + 16 + 1;
// The smallest possible header: no stanzas can be smaller than 3 bytes; one slot, one stanza.
const _: () =
    assert!(MIN_HEADER_LEN == PREFIX_LEN + 1 + 3 + 2 + metadata::FIXED_LEN + TAG_LEN + MAC_LEN);

/// A parsed header: everything before the payload.
///
/// Read one with [`Header::read`]; it can be inspected without any key. [`Header::unlock`]
/// recovers the file key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    doc_id: DocId,
    payload_salt: [u8; 16],
    slots: Vec<Vec<Stanza>>,
    sealed_metadata: Vec<u8>,
    mac: [u8; MAC_LEN],
    /// The exact bytes read or written, MAC included.
    bytes: Vec<u8>,
}

/// What the ciphertext length says about the payload, without a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PayloadInfo {
    /// Number of STREAM chunks.
    pub chunks: u64,
    /// Payload plaintext length: the content plus any padding (so the true size is at most
    /// this; with Padmé it is within 12% of it).
    pub padded_len: u64,
}

impl Header {
    /// Build and MAC a new header.
    pub(crate) fn build(
        doc_id: DocId,
        payload_salt: [u8; 16],
        slots: Vec<Vec<Stanza>>,
        sealed_metadata: Vec<u8>,
        key: &FileKey,
    ) -> Result<Header> {
        if slots.is_empty() || slots.len() > MAX_SLOTS {
            return Err(Error::InvalidSlots {
                reason: "a document needs 1 to 16 slots",
            });
        }
        let mut h = Header {
            doc_id,
            payload_salt,
            slots,
            sealed_metadata,
            mac: [0; MAC_LEN],
            bytes: Vec::new(),
        };
        let mut bytes = h.encode_without_mac();
        if bytes.len() + MAC_LEN > MAX_HEADER_LEN {
            return Err(Error::HeaderSize {
                declared: (bytes.len() + MAC_LEN) as u64,
                max: MAX_HEADER_LEN,
            });
        }
        h.mac = primitives::hmac_sha256(&mac_key(key, &doc_id), &bytes);
        bytes.extend_from_slice(&h.mac);
        h.bytes = bytes;
        Ok(h)
    }

    /// Everything up to the MAC, from the fields.
    fn encode_without_mac(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_be_bytes());
        out.extend_from_slice(&[0; 4]); // length, filled below
        out.extend_from_slice(&self.doc_id.0);
        out.extend_from_slice(&self.payload_salt);
        out.push(self.slots.len() as u8);
        for slot in &self.slots {
            out.push(slot.len() as u8);
            for s in slot {
                s.write(&mut out);
            }
        }
        out.extend_from_slice(&(self.sealed_metadata.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.sealed_metadata);
        let total = (out.len() + MAC_LEN) as u32;
        out[8..12].copy_from_slice(&total.to_be_bytes());
        out
    }

    /// Serialise the header again from its parsed fields (equal to the bytes it was read from).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.encode_without_mac();
        out.extend_from_slice(&self.mac);
        out
    }

    /// The exact header bytes as read or written.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Read exactly one header from `input`, leaving it positioned at the payload.
    ///
    /// Reads the 12-byte prefix, checks magic, version and declared length against
    /// [`Header::MAX_LEN`], and only then allocates for the rest.
    pub fn read<R: Read>(input: &mut R) -> Result<Header> {
        let mut prefix = [0u8; 12];
        let got = read_full(input, &mut prefix)?;
        if got < prefix.len() {
            return Err(short_prefix(&prefix[..got]));
        }
        let len = check_prefix(&prefix)?;
        let mut bytes = vec![0u8; len];
        bytes[..12].copy_from_slice(&prefix);
        read_exact_or(
            input,
            &mut bytes[12..],
            Error::MalformedHeader {
                reason: "the input ends inside the header",
            },
        )?;
        Header::parse_exact(bytes)
    }

    /// Parse a header from the start of `bytes` (which may continue with the payload).
    pub fn parse(bytes: &[u8]) -> Result<Header> {
        let prefix: [u8; 12] = match bytes.get(..12) {
            Some(p) => p.try_into().expect("12 bytes"),
            None => return Err(short_prefix(bytes)),
        };
        let len = check_prefix(&prefix)?;
        let exact = bytes.get(..len).ok_or(Error::MalformedHeader {
            reason: "the input ends inside the header",
        })?;
        Header::parse_exact(exact.to_vec())
    }

    fn parse_exact(bytes: Vec<u8>) -> Result<Header> {
        let mut c = Cursor::new(&bytes[..bytes.len() - MAC_LEN]);
        c.bytes(12)?;
        let doc_id = DocId(c.array()?);
        let payload_salt = c.array()?;
        let count = c.u8()? as usize;
        if count == 0 || count > MAX_SLOTS {
            return Err(Error::SlotCount {
                count,
                max: MAX_SLOTS,
            });
        }
        let mut slots = Vec::with_capacity(count);
        for _ in 0..count {
            let n = c.u8()?;
            let kind = match n {
                1 => SlotKind::Whole,
                2 => SlotKind::Half,
                _ => {
                    return Err(Error::MalformedHeader {
                        reason: "a slot must hold one or two stanzas",
                    });
                }
            };
            let mut stanzas = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let s = Stanza::read(&mut c)?;
                if let Stanza::Org(o) = &s {
                    if o.slot_kind != kind {
                        return Err(Error::MalformedHeader {
                            reason: "an org stanza's slot kind does not match its slot",
                        });
                    }
                }
                stanzas.push(s);
            }
            slots.push(stanzas);
        }
        let meta_len = c.u16()? as usize;
        if !(metadata::FIXED_LEN + TAG_LEN..=metadata::MAX_SEALED_LEN).contains(&meta_len) {
            return Err(Error::MalformedHeader {
                reason: "sealed metadata length out of range",
            });
        }
        let sealed_metadata = c.bytes(meta_len)?.to_vec();
        if c.remaining() != 0 {
            return Err(Error::MalformedHeader {
                reason: "bytes between the metadata and the MAC",
            });
        }
        let mut mac = [0u8; MAC_LEN];
        mac.copy_from_slice(&bytes[bytes.len() - MAC_LEN..]);
        Ok(Header {
            doc_id,
            payload_salt,
            slots,
            sealed_metadata,
            mac,
            bytes,
        })
    }

    /// The document id (public; names the document in audit logs).
    pub fn doc_id(&self) -> DocId {
        self.doc_id
    }

    /// The slots, each a list of one stanza (or two for double key).
    pub fn slots(&self) -> &[Vec<Stanza>] {
        &self.slots
    }

    /// The header length in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// The longest original name the sealed metadata can hold, in bytes, read from its
    /// length without a key: the metadata's length shows the name's length exactly unless
    /// the document was sealed with padding ([`Metadata::padded`]), which pads the name to a
    /// multiple of 256 bytes. Only someone who can open the document learns which.
    pub fn name_len_bound(&self) -> usize {
        self.sealed_metadata
            .len()
            .saturating_sub(metadata::FIXED_LEN + TAG_LEN)
    }

    /// Always false: a header is never empty. Present because `len` is.
    pub fn is_empty(&self) -> bool {
        false
    }

    pub(crate) fn payload_salt(&self) -> &[u8; 16] {
        &self.payload_salt
    }

    /// Chunk count and padded payload length for a sealed file of `total_len` bytes (header
    /// included), without any key.
    ///
    /// This checks the length only. A length no payload can have is an error (`Truncated`
    /// when there is no payload, `ChunkAuth` when it is shorter than a tag, `TrailingData`
    /// when 1 to 16 bytes follow the full chunks), but a plausible length proves nothing:
    /// only opening authenticates, and its verdict on a damaged file may differ.
    pub fn payload_info(&self, total_len: u64) -> Result<PayloadInfo> {
        let ct = total_len
            .checked_sub(self.len() as u64)
            .filter(|&ct| ct > 0)
            .ok_or(Error::Truncated { chunks: 0 })?;
        if ct < TAG_LEN as u64 {
            return Err(Error::ChunkAuth { chunk: 0 });
        }
        let full = ct / SEALED_CHUNK_LEN as u64;
        let rest = ct % SEALED_CHUNK_LEN as u64;
        let chunks = match rest {
            0 => full,
            r if r > TAG_LEN as u64 || full == 0 => full + 1,
            // 1 to 16 bytes after full chunks cannot be a final chunk.
            _ => return Err(Error::TrailingData),
        };
        Ok(PayloadInfo {
            chunks,
            padded_len: full * CHUNK_LEN as u64 + rest.saturating_sub(TAG_LEN as u64),
        })
    }

    /// Whether `key` is this header's file key (constant-time MAC check).
    pub(crate) fn verify(&self, key: &FileKey) -> bool {
        let body = &self.bytes[..self.bytes.len() - MAC_LEN];
        primitives::hmac_sha256_verify(&mac_key(key, &self.doc_id), body, &self.mac)
    }

    /// Decrypt the sealed metadata. `key` must come from [`Header::unlock`].
    pub fn metadata(&self, key: &FileKey) -> Result<Metadata> {
        if !self.verify(key) {
            return Err(Error::HeaderMac);
        }
        Metadata::open(&self.sealed_metadata, key, &self.doc_id)
    }

    /// A new header for the same document (same file key, doc_id, metadata and payload) with
    /// the slots at indices `keep` kept as they are and the already sealed slots `add` added.
    /// `Header::rekey` (in `slot.rs`, which seals the slots) is the public entry point.
    pub(crate) fn with_slots(
        &self,
        key: &FileKey,
        keep: &[usize],
        add: Vec<Vec<Stanza>>,
    ) -> Result<Header> {
        if !self.verify(key) {
            return Err(Error::HeaderMac);
        }
        let mut slots = Vec::with_capacity(keep.len() + add.len());
        for (n, &i) in keep.iter().enumerate() {
            if keep[..n].contains(&i) {
                return Err(Error::InvalidSlots {
                    reason: "a slot to keep is listed twice",
                });
            }
            slots.push(
                self.slots
                    .get(i)
                    .ok_or(Error::InvalidSlots {
                        reason: "a slot to keep does not exist",
                    })?
                    .clone(),
            );
        }
        slots.extend(add);
        Header::build(
            self.doc_id,
            self.payload_salt,
            slots,
            self.sealed_metadata.clone(),
            key,
        )
    }
}

/// `HKDF(ikm = K, salt = doc_id, info = "kluis/v1/header")`
fn mac_key(key: &FileKey, doc_id: &DocId) -> primitives::DerivedKey {
    primitives::hkdf(key.expose(), &doc_id.0, b"kluis/v1/header")
}

/// Check magic, version and declared length; return the length.
fn check_prefix(prefix: &[u8; 12]) -> Result<usize> {
    if &prefix[..6] != MAGIC {
        return Err(Error::NotSealed);
    }
    let version = u16::from_be_bytes([prefix[6], prefix[7]]);
    if version != VERSION {
        return Err(Error::UnsupportedVersion { version });
    }
    let len = u32::from_be_bytes([prefix[8], prefix[9], prefix[10], prefix[11]]) as usize;
    if !(MIN_HEADER_LEN..=MAX_HEADER_LEN).contains(&len) {
        return Err(Error::HeaderSize {
            declared: len as u64,
            max: MAX_HEADER_LEN,
        });
    }
    Ok(len)
}

/// The error for input shorter than the 12-byte prefix.
fn short_prefix(got: &[u8]) -> Error {
    if got.len() >= MAGIC.len() && got.starts_with(MAGIC) {
        Error::MalformedHeader {
            reason: "the input ends inside the header",
        }
    } else {
        Error::NotSealed
    }
}

/// Read until `buf` is full or the input ends; return how many bytes were read.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::Io(e)),
        }
    }
    Ok(n)
}

/// `read_exact`, mapping a short read to `short`.
pub(crate) fn read_exact_or<R: Read>(r: &mut R, buf: &mut [u8], short: Error) -> Result<()> {
    match r.read_exact(buf) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(short),
        Err(e) => Err(Error::Io(e)),
    }
}
