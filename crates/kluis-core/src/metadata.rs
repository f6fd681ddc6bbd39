//! Sealed metadata: original name, size, modification time and padding length.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};
use crate::padding::padme_padding;
use crate::primitives::{self, TAG_LEN};
use crate::secret::{DocId, FileKey};
use crate::wire::Cursor;

/// Padding up to this many bytes is allowed whatever the size when sealing.
const MAX_PADDING_FLOOR: u64 = 1 << 20;
/// The longest file name the metadata holds, in bytes.
pub const MAX_NAME_LEN: usize = 4096;
/// Length of the fixed part of the metadata plaintext.
pub(crate) const FIXED_LEN: usize = 1 + 8 + 8 + 4 + 8 + 2;
/// The largest sealed metadata block, in bytes.
pub(crate) const MAX_SEALED_LEN: usize = FIXED_LEN + MAX_NAME_LEN + TAG_LEN;

const HAS_SIZE: u8 = 0x01;
const HAS_MTIME: u8 = 0x02;
/// The name is followed by zero bytes up to its bucket (docs/FORMAT.md §7.1).
const NAME_PADDED: u8 = 0x04;
/// A padded name takes a multiple of this many bytes (at least one bucket), so the sealed
/// metadata's length shows the name's length only in steps of 256 bytes: nothing at all for
/// names up to 256 bytes, which covers every single file name on common file systems.
pub(crate) const NAME_BUCKET: usize = 256;

/// The bytes a padded name of `len` bytes takes: `len` rounded up to a multiple of
/// [`NAME_BUCKET`], at least one bucket.
pub(crate) fn padded_name_len(len: usize) -> usize {
    len.max(1).div_ceil(NAME_BUCKET) * NAME_BUCKET
}

/// What the sealed header says about the original: only someone who can open the document
/// can read it. `Debug` leaves the name out: file names can be personal data.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    /// The original file name (empty when none was given). Not sanitised: a caller that
    /// writes files must check it before use.
    pub name: String,
    /// The plaintext size in bytes, when it was known when sealing began.
    pub size: Option<u64>,
    /// The original modification time.
    pub modified: Option<SystemTime>,
    /// How many zero bytes follow the plaintext in the payload to hide its exact size.
    pub padding: u64,
    /// Whether the sealed name is padded with zero bytes to a multiple of 256 bytes, so the
    /// header's length does not reveal the name's length ([`Metadata::padded`] sets it).
    /// Readers older than this flag refuse such a document (`Metadata`, "unknown flags").
    pub name_padded: bool,
}

impl std::fmt::Debug for Metadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metadata")
            .field("name", &format_args!("[{} bytes]", self.name.len()))
            .field("size", &self.size)
            .field("modified", &self.modified)
            .field("padding", &self.padding)
            .field("name_padded", &self.name_padded)
            .finish()
    }
}

impl Metadata {
    /// Metadata declaring the plaintext size (the writer checks it at `finish`).
    pub fn with_size(size: u64) -> Self {
        Metadata {
            size: Some(size),
            ..Metadata::default()
        }
    }

    /// Set the original file name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Set the original modification time.
    pub fn modified(mut self, t: SystemTime) -> Self {
        self.modified = Some(t);
        self
    }

    /// Pad the payload with Padmé so the ciphertext length reveals only O(log log n) bits of
    /// the size, and pad the sealed name to a multiple of 256 bytes so the header's length
    /// does not reveal the name's length (see [`Metadata::name_padded`]). Needs the size.
    pub fn padded(mut self) -> Result<Self> {
        let size = self.size.ok_or(Error::PaddingNeedsSize)?;
        self.padding = padme_padding(size);
        self.name_padded = true;
        Ok(self)
    }

    /// Encode the plaintext metadata block (before sealing; see docs/FORMAT.md): the exact
    /// inverse of [`Metadata::decode`], refusing what a reader would reject.
    pub fn encode(&self) -> Result<Vec<u8>> {
        if self.name.len() > MAX_NAME_LEN {
            return Err(Error::NameTooLong {
                len: self.name.len(),
                max: MAX_NAME_LEN,
            });
        }
        if self.size.is_none() && self.padding != 0 {
            return Err(Error::PaddingNeedsSize);
        }
        if self
            .size
            .is_some_and(|size| size.checked_add(self.padding).is_none())
        {
            return Err(Error::InvalidMetadata {
                reason: "size plus padding overflows",
            });
        }
        let mut flags = 0;
        if self.size.is_some() {
            flags |= HAS_SIZE;
        }
        if self.name_padded {
            flags |= NAME_PADDED;
        }
        let (secs, nanos) = match self.modified {
            Some(t) => {
                flags |= HAS_MTIME;
                let (secs, nanos) = to_unix(t);
                if !(MIN_MTIME_SECS..=MAX_MTIME_SECS).contains(&secs) {
                    return Err(Error::InvalidMetadata {
                        reason: "modification time outside 1601-01-01..9999-12-31",
                    });
                }
                (secs, nanos)
            }
            None => (0, 0),
        };
        let name_field = if self.name_padded {
            padded_name_len(self.name.len())
        } else {
            self.name.len()
        };
        let mut out = Vec::with_capacity(FIXED_LEN + name_field);
        out.push(flags);
        out.extend_from_slice(&self.size.unwrap_or(0).to_be_bytes());
        out.extend_from_slice(&secs.to_be_bytes());
        out.extend_from_slice(&nanos.to_be_bytes());
        out.extend_from_slice(&self.padding.to_be_bytes());
        out.extend_from_slice(&(self.name.len() as u16).to_be_bytes());
        out.extend_from_slice(self.name.as_bytes());
        out.resize(FIXED_LEN + name_field, 0);
        Ok(out)
    }

    /// Decode the plaintext metadata block.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let bad = |reason| Error::Metadata { reason };
        if bytes.len() < FIXED_LEN || bytes.len() > FIXED_LEN + MAX_NAME_LEN {
            return Err(bad("wrong length"));
        }
        let mut c = Cursor::new(bytes);
        let flags = c.u8()?;
        if flags & !(HAS_SIZE | HAS_MTIME | NAME_PADDED) != 0 {
            return Err(bad("unknown flags"));
        }
        let name_padded = flags & NAME_PADDED != 0;
        let size = u64::from_be_bytes(c.array()?);
        let secs = i64::from_be_bytes(c.array()?);
        let nanos = c.u32()?;
        let padding = u64::from_be_bytes(c.array()?);
        let name_len = c.u16()? as usize;
        if name_padded {
            if name_len > MAX_NAME_LEN || c.remaining() != padded_name_len(name_len) {
                return Err(bad("padded name length does not match"));
            }
        } else if c.remaining() != name_len {
            return Err(bad("name length does not match"));
        }
        let name = std::str::from_utf8(c.bytes(name_len)?)
            .map_err(|_| bad("name is not UTF-8"))?
            .to_owned();
        if c.bytes(c.remaining())?.iter().any(|&b| b != 0) {
            return Err(bad("non-zero name padding"));
        }
        if flags & HAS_SIZE == 0 && (size != 0 || padding != 0) {
            return Err(bad("size or padding without the size flag"));
        }
        if flags & HAS_MTIME == 0 && (secs != 0 || nanos != 0) {
            return Err(bad("time without the time flag"));
        }
        if size.checked_add(padding).is_none() {
            return Err(bad("size plus padding overflows"));
        }
        let modified = if flags & HAS_MTIME != 0 {
            Some(from_unix(secs, nanos).ok_or(bad("modification time out of range"))?)
        } else {
            None
        };
        Ok(Metadata {
            name,
            size: (flags & HAS_SIZE != 0).then_some(size),
            modified,
            padding,
            name_padded,
        })
    }

    /// Seal under `HKDF(ikm = K, salt = doc_id, info = "kluis/v1/metadata")`, nonce 0, no AAD.
    pub(crate) fn seal(&self, key: &FileKey, doc_id: &DocId) -> Result<Vec<u8>> {
        // A writer policy, not a format rule (readers accept any padding §7 allows): at most
        // the larger of the size and 1 MiB, so a mistaken padding cannot demand an absurd
        // allocation or write.
        if self.padding > self.size.unwrap_or(0).max(MAX_PADDING_FLOOR) {
            return Err(Error::InvalidMetadata {
                reason: "padding larger than the content (and 1 MiB): use Metadata::padded",
            });
        }
        let plain = zeroize::Zeroizing::new(self.encode()?);
        Ok(primitives::aead_seal(
            &metadata_key(key, doc_id),
            [0; 12],
            &[],
            &plain,
        ))
    }

    /// Open a sealed metadata block.
    pub(crate) fn open(sealed: &[u8], key: &FileKey, doc_id: &DocId) -> Result<Self> {
        let plain = primitives::aead_open(&metadata_key(key, doc_id), [0; 12], &[], sealed).ok_or(
            Error::Metadata {
                reason: "authentication failed",
            },
        )?;
        Metadata::decode(&plain)
    }

    /// Content plus padding: the payload plaintext length, when the size is known.
    pub(crate) fn payload_len(&self) -> Option<u64> {
        self.size.map(|s| s + self.padding)
    }
}

fn metadata_key(key: &FileKey, doc_id: &DocId) -> primitives::DerivedKey {
    primitives::hkdf(key.expose(), &doc_id.0, b"kluis/v1/metadata")
}

/// Seconds (floored) and nanoseconds since the Unix epoch.
fn to_unix(t: SystemTime) -> (i64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (
            i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            d.subsec_nanos(),
        ),
        Err(e) => {
            let d = e.duration();
            let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            if d.subsec_nanos() == 0 {
                (-secs, 0)
            } else {
                (-secs - 1, 1_000_000_000 - d.subsec_nanos())
            }
        }
    }
}

/// The modification times the format holds: 1601-01-01 to 9999-12-31 (UTC), a range every
/// platform's clock type can represent, so a document opens the same everywhere.
pub(crate) const MIN_MTIME_SECS: i64 = -11_644_473_600;
/// See [`MIN_MTIME_SECS`].
pub(crate) const MAX_MTIME_SECS: i64 = 253_402_300_799;

fn from_unix(secs: i64, nanos: u32) -> Option<SystemTime> {
    if nanos >= 1_000_000_000 || !(MIN_MTIME_SECS..=MAX_MTIME_SECS).contains(&secs) {
        return None;
    }
    if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::new(secs as u64, nanos))
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(secs.unsigned_abs()))?
            .checked_add(Duration::from_nanos(u64::from(nanos)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_times_before_and_after_the_epoch() {
        for t in [
            UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789),
            UNIX_EPOCH - Duration::new(86_400, 5),
            UNIX_EPOCH,
        ] {
            let m = Metadata::with_size(10).name("brief.docx").modified(t);
            assert_eq!(Metadata::decode(&m.encode().unwrap()).unwrap(), m);
        }
        let m = Metadata::default();
        assert_eq!(Metadata::decode(&m.encode().unwrap()).unwrap(), m);
    }

    #[test]
    fn modification_time_range_is_the_same_on_every_platform() {
        let edge = |secs: i64| {
            let mut m = Metadata::default().modified(UNIX_EPOCH).encode().unwrap();
            m[9..17].copy_from_slice(&secs.to_be_bytes());
            Metadata::decode(&m)
        };
        assert!(edge(MIN_MTIME_SECS).is_ok());
        assert!(edge(MAX_MTIME_SECS).is_ok());
        assert!(edge(MIN_MTIME_SECS - 1).is_err());
        assert!(edge(MAX_MTIME_SECS + 1).is_err());
        assert!(edge(i64::MIN).is_err());
        let far = UNIX_EPOCH + Duration::from_secs(MAX_MTIME_SECS as u64 + 1);
        assert!(Metadata::default().modified(far).encode().is_err());
    }

    #[test]
    fn padded_names_fill_a_256_byte_bucket_and_decode_strictly() {
        for (name, field) in [
            ("", 256),
            ("a", 256),
            (&*"b".repeat(256), 256),
            (&*"c".repeat(257), 512),
        ] {
            let m = Metadata::with_size(5).name(name).padded().unwrap();
            let bytes = m.encode().unwrap();
            assert_eq!(bytes.len(), FIXED_LEN + field);
            assert_eq!(bytes[0], HAS_SIZE | NAME_PADDED);
            assert_eq!(Metadata::decode(&bytes).unwrap(), m);
        }
        let good = Metadata::with_size(5)
            .name("a")
            .padded()
            .unwrap()
            .encode()
            .unwrap();
        let mut nonzero = good.clone();
        nonzero[FIXED_LEN + 1] = 1;
        assert!(Metadata::decode(&nonzero).is_err());
        let mut short = good.clone();
        short.pop();
        assert!(Metadata::decode(&short).is_err());
        let mut long = good.clone();
        long.push(0);
        assert!(Metadata::decode(&long).is_err());
        // A name_len that does not fit in the padded field.
        let mut over = good;
        over[FIXED_LEN - 2..FIXED_LEN].copy_from_slice(&257u16.to_be_bytes());
        assert!(Metadata::decode(&over).is_err());
    }

    #[test]
    fn rejects_bad_blocks() {
        let good = Metadata::with_size(3).name("a").encode().unwrap();
        let mut bad = good.clone();
        bad[0] = 0x80;
        assert!(Metadata::decode(&bad).is_err());
        assert!(Metadata::decode(&good[..good.len() - 1]).is_err());
        let mut no_size = Metadata::default().encode().unwrap();
        no_size[FIXED_LEN - 3] = 1; // padding without a size
        assert!(Metadata::decode(&no_size).is_err());
        let too_long = Metadata::default().name("x".repeat(MAX_NAME_LEN + 1));
        assert!(matches!(too_long.encode(), Err(Error::NameTooLong { .. })));
        assert!(matches!(
            Metadata::default().padded(),
            Err(Error::PaddingNeedsSize)
        ));
    }
}
