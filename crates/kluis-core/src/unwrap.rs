//! The unwrapping trait and batch unlocking of many headers in one call per key holder.

use crate::error::{Error, Result, UnwrapError};
use crate::header::Header;
use crate::secret::{DocId, FileKey, Share};
use crate::stanza::Stanza;

/// One stanza to unwrap, with the document it belongs to.
#[derive(Clone, Copy, Debug)]
pub struct UnwrapRequest<'a> {
    /// The document's id (bound into every stanza's AAD, and named in audit logs).
    pub doc_id: DocId,
    /// The stanza.
    pub stanza: &'a Stanza,
}

/// Something that turns stanzas into shares: a holder identity, a label key held in memory,
/// or the key server client.
///
/// The opener calls [`Unwrap::unwrap`] at most once per round with every stanza it wants from
/// this key holder, across all documents being opened, so a remote key holder can serve a
/// whole folder in one round trip.
pub trait Unwrap {
    /// Whether this key holder might open `stanza` (cheap: no I/O, no secret operation).
    fn accepts(&self, stanza: &Stanza) -> bool;

    /// Unwrap a batch. Returns exactly one result per request, in order; a stanza that is not
    /// for this key holder gives [`UnwrapError::NotMine`].
    fn unwrap(&self, requests: &[UnwrapRequest<'_>]) -> Vec<Result<Share, UnwrapError>>;
}

/// Per-document progress through its slots.
struct Progress<'h> {
    header: &'h Header,
    next_slot: usize,
    current: Option<usize>,
    shares: Vec<Option<Share>>,
    failed: bool,
    error: Option<Error>,
    done: Option<FileKey>,
}

impl Progress<'_> {
    /// Keep the most telling error (FORMAT.md §11.1): a MAC failure, then an all-zero shared
    /// secret, then a key holder's refusal, then "no key".
    fn record(&mut self, e: Error) {
        let rank = |e: &Error| match e {
            Error::HeaderMac => 3,
            Error::ZeroSharedSecret => 2,
            Error::Unwrap(_) => 1,
            _ => 0,
        };
        if self.error.as_ref().is_none_or(|old| rank(&e) > rank(old)) {
            self.error = Some(e);
        }
    }
}

// Unlocking lives here rather than in `header`, so that `header` need not depend on the
// unwrapping trait (which depends on the header).
impl Header {
    /// Recover the file key with the given key holders; the header MAC is verified before the
    /// key is returned. For many documents at once use [`unlock_all`].
    pub fn unlock(&self, unwrappers: &[&dyn Unwrap]) -> Result<FileKey> {
        unlock_all(&[self], unwrappers)
            .pop()
            .expect("one result per header")
    }
}

/// Recover the file keys of many documents, calling each key holder once per round.
///
/// For each header the first slot whose stanzas all have an accepting key holder is tried;
/// if it fails (a key holder refuses, or the shares do not pass the header MAC), the next such
/// slot is tried in the next round. Usually one round suffices. Every key is checked against
/// its header MAC before it is returned. Returns one result per header, in order.
pub fn unlock_all(headers: &[&Header], unwrappers: &[&dyn Unwrap]) -> Vec<Result<FileKey>> {
    let mut docs: Vec<Progress<'_>> = headers
        .iter()
        .map(|h| Progress {
            header: h,
            next_slot: 0,
            current: None,
            shares: Vec::new(),
            failed: false,
            error: None,
            done: None,
        })
        .collect();

    // Each round tries one more slot per unfinished document; there are at most MAX_SLOTS.
    loop {
        let mut any = false;
        for d in docs.iter_mut() {
            // Documents opened in an earlier round take no further part.
            d.current = None;
            if d.done.is_some() {
                continue;
            }
            let slots = d.header.slots();
            while d.next_slot < slots.len() {
                let i = d.next_slot;
                d.next_slot += 1;
                if slots[i]
                    .iter()
                    .all(|s| unwrappers.iter().any(|u| u.accepts(s)))
                {
                    d.current = Some(i);
                    d.shares = vec![None; slots[i].len()];
                    d.failed = false;
                    any = true;
                    break;
                }
            }
        }
        if !any {
            break;
        }

        for u in unwrappers {
            let mut wanted = Vec::new();
            let mut requests = Vec::new();
            for (di, d) in docs.iter().enumerate() {
                let (Some(slot), false) = (d.current, d.failed) else {
                    continue;
                };
                for (si, stanza) in d.header.slots()[slot].iter().enumerate() {
                    if d.shares[si].is_none() && u.accepts(stanza) {
                        wanted.push((di, si));
                        requests.push(UnwrapRequest {
                            doc_id: d.header.doc_id(),
                            stanza,
                        });
                    }
                }
            }
            if requests.is_empty() {
                continue;
            }
            let mut results = u.unwrap(&requests);
            if results.len() != requests.len() {
                results = vec![
                    Err(UnwrapError::unavailable(
                        "the key holder returned the wrong number of results"
                    ));
                    requests.len()
                ];
            }
            for ((di, si), r) in wanted.into_iter().zip(results) {
                let d = &mut docs[di];
                match r {
                    Ok(share) => d.shares[si] = Some(share),
                    Err(UnwrapError::NotMine) => {}
                    Err(UnwrapError::ZeroSharedSecret) => {
                        d.failed = true;
                        d.record(Error::ZeroSharedSecret);
                    }
                    Err(e) => {
                        d.failed = true;
                        d.record(Error::Unwrap(e));
                    }
                }
            }
        }

        for d in docs.iter_mut().filter(|d| d.current.is_some()) {
            if d.failed || d.shares.iter().any(Option::is_none) {
                continue;
            }
            let key = match d.shares.as_slice() {
                [Some(k)] => FileKey::from_share(k),
                [Some(a), Some(b)] => FileKey::join(a, b),
                _ => continue,
            };
            if d.header.verify(&key) {
                d.done = Some(key);
            } else {
                d.record(Error::HeaderMac);
            }
            d.shares.clear();
        }
    }

    docs.into_iter()
        .map(|d| match d.done {
            Some(k) => Ok(k),
            None => Err(d.error.unwrap_or(Error::NoMatchingKey)),
        })
        .collect()
}
