//! Error types.

use std::fmt;
use std::io;
use std::sync::Arc;

/// Everything that can go wrong while sealing, opening, inspecting or re-keying a document.
///
/// Every variant's message says what went wrong and, where a person can act on it, what to do.
/// No message ever contains key material or plaintext.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing the underlying stream failed.
    Io(io::Error),
    /// The input does not start with the kluis magic bytes.
    NotSealed,
    /// The input is a kluis document of a format version this library does not read.
    UnsupportedVersion {
        /// The version found in the file.
        version: u16,
    },
    /// The header declares a length above the limit (or below the smallest possible header).
    HeaderSize {
        /// The declared header length in bytes.
        declared: u64,
        /// The largest header this reader accepts.
        max: usize,
    },
    /// The header has more slots than allowed, or none.
    SlotCount {
        /// The number of slots declared.
        count: usize,
        /// The largest number of slots allowed.
        max: usize,
    },
    /// A known stanza's body does not have its fixed length.
    StanzaBodyLength {
        /// The stanza type byte.
        kind: u8,
        /// The body length the type requires.
        expected: usize,
        /// The body length found.
        found: usize,
    },
    /// The header is not well formed.
    MalformedHeader {
        /// Which rule was broken.
        reason: &'static str,
    },
    /// No slot could be opened with the keys at hand.
    NoMatchingKey,
    /// A key holder (local identity, key server) refused or failed to unwrap a stanza.
    Unwrap(UnwrapError),
    /// The header MAC does not match: the header was changed or the recovered file key is wrong.
    HeaderMac,
    /// The sealed metadata failed to decrypt or is malformed.
    Metadata {
        /// Which rule was broken.
        reason: &'static str,
    },
    /// A payload chunk failed authentication.
    ChunkAuth {
        /// The index of the chunk (0-based).
        chunk: u64,
    },
    /// The payload ends at a chunk boundary before its last chunk.
    Truncated {
        /// The number of complete chunks read.
        chunks: u64,
    },
    /// Bytes follow the last chunk of the payload.
    TrailingData,
    /// The payload length does not match the size recorded in the sealed metadata.
    SizeMismatch {
        /// The size the metadata declares (content plus padding).
        expected: u64,
        /// The size actually seen.
        found: u64,
    },
    /// A recipient public key or a peer's ephemeral key gives an all-zero X25519 shared secret.
    ZeroSharedSecret,
    /// The buffer given to seal into is too small for the document.
    OutputTooSmall {
        /// Bytes the sealed document takes.
        needed: usize,
        /// Bytes the buffer has.
        available: usize,
    },
    /// The slots given to seal are invalid.
    InvalidSlots {
        /// Which rule was broken.
        reason: &'static str,
    },
    /// A label name is empty, too long or uses characters outside `[A-Za-z0-9._-]`.
    InvalidLabel,
    /// A file name in the metadata is longer than the format allows.
    NameTooLong {
        /// Its length in bytes.
        len: usize,
        /// The maximum length in bytes.
        max: usize,
    },
    /// Padding was requested for a document whose size was not declared up front.
    PaddingNeedsSize,
    /// The metadata given to seal cannot be written (time out of range, padding too large).
    InvalidMetadata {
        /// Which rule was broken.
        reason: &'static str,
    },
    /// A public key string is not a valid kluis public key.
    InvalidPublicKey {
        /// Which rule was broken.
        reason: &'static str,
    },
    /// An identity file is malformed.
    InvalidIdentityFile {
        /// Which rule was broken.
        reason: &'static str,
    },
    /// An identity file fails its own check: its `# public key:` comment is not the key
    /// derived from its secret (or is not a key, or there are two). Someone edited the file,
    /// perhaps to redirect what is sealed "to this identity": tampering, not a malformed file.
    IdentityFileEdited {
        /// Which check failed.
        reason: &'static str,
    },
    /// The identity file's Argon2id parameters are outside the accepted range.
    IdentityParams {
        /// Which parameter is out of range.
        reason: &'static str,
    },
    /// The passphrase does not open the identity file.
    WrongPassphrase,
    /// The operating system's random number generator failed.
    Random,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Error::*;
        match self {
            Io(e) => write!(f, "I/O error: {e}"),
            NotSealed => f.write_str(
                "not a kluis document (the magic bytes are missing): check that you picked the sealed file",
            ),
            UnsupportedVersion { version } => write!(
                f,
                "kluis format version {version} is not supported by this version (it reads v1): upgrade kluis"
            ),
            HeaderSize { declared, max } => write!(
                f,
                "header length {declared} is outside the allowed range ({} to {max} bytes): the file is corrupt or not a kluis document",
                crate::format::MIN_HEADER_LEN
            ),
            SlotCount { count, max } => write!(
                f,
                "header has {count} slots; between 1 and {max} are allowed: the file is corrupt or was made by a hostile sender"
            ),
            StanzaBodyLength {
                kind,
                expected,
                found,
            } => write!(
                f,
                "stanza of type {kind} has a {found}-byte body; the format requires {expected}: the file is corrupt"
            ),
            MalformedHeader { reason } => {
                write!(f, "malformed header: {reason}: the file is corrupt")
            }
            NoMatchingKey => f.write_str(
                "no slot of this document can be opened with the keys given: it was sealed to other recipients, or it is double-key and needs your identity file as well as the key server",
            ),
            Unwrap(e) => write!(f, "unwrapping the file key failed: {e}"),
            HeaderMac => f.write_str(
                "header MAC mismatch: the file was modified or the key is wrong",
            ),
            Metadata { reason } => write!(
                f,
                "sealed metadata is invalid ({reason}): the file is corrupt or was modified"
            ),
            ChunkAuth { chunk } => write!(
                f,
                "payload chunk {chunk} failed authentication: the file was modified, truncated or reordered; do not trust any output already written"
            ),
            Truncated { chunks } => write!(
                f,
                "the payload ends after {chunks} chunks without its last chunk: the file is truncated (an incomplete upload or download?)"
            ),
            TrailingData => f.write_str(
                "data follows the end of the sealed payload: the file was modified or two files were joined",
            ),
            SizeMismatch { expected, found } => write!(
                f,
                "payload does not match its declared size ({found} bytes seen, {expected} declared, padding must be zero): when sealing, write exactly the declared size; when opening, the file is corrupt"
            ),
            ZeroSharedSecret => f.write_str(
                "X25519 gave an all-zero shared secret (a low-order public key): the key or file is malicious or corrupt",
            ),
            OutputTooSmall { needed, available } => write!(
                f,
                "the output buffer has {available} bytes but the sealed document needs {needed}: give a buffer of at least max_sealed_len() bytes"
            ),
            InvalidSlots { reason } => write!(f, "invalid recipients: {reason}"),
            InvalidLabel => f.write_str(
                "invalid label name: use 1 to 64 characters from A-Z, a-z, 0-9, '.', '_' and '-'",
            ),
            NameTooLong { len, max } => write!(
                f,
                "file name is {len} bytes; at most {max} can be sealed: shorten it"
            ),
            PaddingNeedsSize => f.write_str(
                "padding needs the plaintext size up front: declare the size in the metadata",
            ),
            InvalidMetadata { reason } => write!(f, "cannot seal this metadata: {reason}"),
            InvalidPublicKey { reason } => write!(
                f,
                "invalid public key ({reason}): copy the whole key, it starts with `kluis1`"
            ),
            InvalidIdentityFile { reason } => write!(
                f,
                "invalid identity file ({reason}): check that you picked a kluis identity file"
            ),
            IdentityFileEdited { reason } => write!(
                f,
                "identity file fails its own check ({reason}): the file was edited; do not seal to that key, and restore the file from a copy you trust (or delete its `# public key:` line)"
            ),
            IdentityParams { reason } => write!(
                f,
                "identity file uses unsupported Argon2id parameters ({reason}): re-create it with `kluis keygen`"
            ),
            WrongPassphrase => f.write_str(
                "wrong passphrase for this identity file (or the file was modified): try again",
            ),
            Random => f.write_str(
                "the operating system's random number generator failed: nothing was sealed",
            ),
        }
    }
}

impl Error {
    /// Recover the typed error from an [`io::Error`] returned by a [`crate::StreamReader`] or
    /// [`crate::StreamWriter`]; other I/O errors become [`Error::Io`].
    pub fn from_io(e: io::Error) -> Error {
        if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
            if let Some(inner) = e.into_inner() {
                if let Ok(typed) = inner.downcast::<Error>() {
                    return *typed;
                }
            }
            return Error::Io(io::Error::other("unrecoverable error"));
        }
        Error::Io(e)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
            Error::Unwrap(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Io(e) => e,
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }
}

/// Why a key holder could not turn a stanza into a share.
///
/// Implementations of [`crate::Unwrap`] return these. A refusal carries the key holder's own
/// error as its typed source ([`UnwrapError::reason`], also [`std::error::Error::source`]),
/// shared so that the error stays cheap to clone: a caller that knows the key holder downcasts
/// it to the key holder's error type (`reason.downcast_ref::<ClientError>()`) rather than
/// reading its message;
/// build one with [`UnwrapError::denied`], [`UnwrapError::destroyed`] or
/// [`UnwrapError::unavailable`] from an error value or a message. The messages are shown to
/// people, so they must never contain key material or tokens.
///
/// Two errors are equal when they are the same kind with the same message.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum UnwrapError {
    /// This key is not the stanza's recipient (its AEAD did not open). The opener tries others.
    NotMine,
    /// The stanza's ephemeral key gives an all-zero shared secret.
    ZeroSharedSecret,
    /// The key holder refuses to unwrap (for example a policy denies the caller).
    Denied(Arc<dyn std::error::Error + Send + Sync>),
    /// The key version the stanza names was destroyed; no one can open it.
    Destroyed(Arc<dyn std::error::Error + Send + Sync>),
    /// The key holder could not be reached or failed; trying again later may work.
    Unavailable(Arc<dyn std::error::Error + Send + Sync>),
}

impl UnwrapError {
    /// A refusal ([`UnwrapError::Denied`]) for `reason`: an error value or a message.
    pub fn denied(reason: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        UnwrapError::Denied(Arc::from(reason.into()))
    }

    /// A destroyed key ([`UnwrapError::Destroyed`]) for `reason`: an error value or a message.
    pub fn destroyed(reason: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        UnwrapError::Destroyed(Arc::from(reason.into()))
    }

    /// An unreachable or failed key holder ([`UnwrapError::Unavailable`]) for `reason`: an
    /// error value or a message.
    pub fn unavailable(reason: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        UnwrapError::Unavailable(Arc::from(reason.into()))
    }

    /// The key holder's own error behind a refusal (`None` for [`UnwrapError::NotMine`] and
    /// [`UnwrapError::ZeroSharedSecret`]): downcast it to the key holder's error type.
    pub fn reason(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        match self {
            UnwrapError::Denied(r) | UnwrapError::Destroyed(r) | UnwrapError::Unavailable(r) => {
                Some(&**r)
            }
            UnwrapError::NotMine | UnwrapError::ZeroSharedSecret => None,
        }
    }
}

impl PartialEq for UnwrapError {
    fn eq(&self, other: &Self) -> bool {
        use UnwrapError::*;
        match (self, other) {
            (NotMine, NotMine) | (ZeroSharedSecret, ZeroSharedSecret) => true,
            (Denied(a), Denied(b))
            | (Destroyed(a), Destroyed(b))
            | (Unavailable(a), Unavailable(b)) => a.to_string() == b.to_string(),
            _ => false,
        }
    }
}

impl Eq for UnwrapError {}

impl fmt::Display for UnwrapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnwrapError::NotMine => f.write_str("the key is not a recipient of this stanza"),
            UnwrapError::ZeroSharedSecret => f.write_str(
                "the stanza's ephemeral key gives an all-zero shared secret: the file is malicious or corrupt",
            ),
            UnwrapError::Denied(m) => write!(f, "denied: {m}"),
            UnwrapError::Destroyed(m) => write!(f, "key destroyed: {m}"),
            UnwrapError::Unavailable(m) => write!(f, "key holder unavailable: {m}"),
        }
    }
}

impl std::error::Error for UnwrapError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.reason()
            .map(|r| r as &(dyn std::error::Error + 'static))
    }
}

/// Short alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
