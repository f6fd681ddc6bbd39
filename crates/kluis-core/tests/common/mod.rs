//! What the vector generator (`examples/gen_vectors.rs`) and the vector runner
//! (`tests/vectors.rs`) must agree on, written once.

use std::time::{SystemTime, UNIX_EPOCH};

use kluis_core::{Error, Share, Stanza, Unwrap, UnwrapError, UnwrapRequest};

/// A key server stand-in that accepts org stanzas for one label version and refuses them.
pub struct Refusing {
    /// The label it accepts.
    pub label: String,
    /// The key version it accepts.
    pub kid: u32,
}

impl Unwrap for Refusing {
    fn accepts(&self, stanza: &Stanza) -> bool {
        matches!(stanza, Stanza::Org(o) if o.label() == self.label && o.kid() == self.kid)
    }

    fn unwrap(&self, requests: &[UnwrapRequest<'_>]) -> Vec<Result<Share, UnwrapError>> {
        requests
            .iter()
            .map(|_| Err(UnwrapError::denied("refused by the test vector")))
            .collect()
    }
}

/// The `expect:` name of an error, or `None` for errors no vector expects.
pub fn outcome(e: &Error) -> Option<&'static str> {
    Some(match e {
        Error::NotSealed => "not-sealed",
        Error::UnsupportedVersion { .. } => "unsupported-version",
        Error::HeaderSize { .. } => "header-size",
        Error::SlotCount { .. } => "slot-count",
        Error::StanzaBodyLength { .. } => "stanza-body-length",
        Error::MalformedHeader { .. } => "malformed-header",
        Error::NoMatchingKey => "no-matching-key",
        Error::HeaderMac => "header-mac",
        Error::Metadata { .. } => "metadata",
        Error::ChunkAuth { .. } => "chunk-auth",
        Error::Truncated { .. } => "truncated",
        Error::TrailingData => "trailing-data",
        Error::SizeMismatch { .. } => "size-mismatch",
        Error::ZeroSharedSecret => "zero-shared-secret",
        Error::Unwrap(_) => "unwrap",
        _ => return None,
    })
}

/// Seconds (floored) and nanoseconds since the epoch, as the metadata encodes them.
pub fn unix(t: SystemTime) -> (i64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            if d.subsec_nanos() == 0 {
                (-(d.as_secs() as i64), 0)
            } else {
                (-(d.as_secs() as i64) - 1, 1_000_000_000 - d.subsec_nanos())
            }
        }
    }
}
