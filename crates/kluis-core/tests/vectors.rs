//! The test vectors in `tests/vectors/*.vec` (format: `tests/vectors/README.md`), run through
//! every way of opening a document and every compiled-in payload backend, plus a cross-backend
//! seal/open round trip.
//!
//! Each vector is opened, for each backend in [`Backend::all`], by
//!
//! 1. the one-call [`kluis_core::fast::open`] with `FastOptions::default().backend(b)`;
//! 2. the streaming path: [`Header::read`] → [`Header::unlock`] →
//!    [`kluis_core::fast::stream_reader`] (same options) → `read_to_end`;
//! 3. the streaming path again, with [`unlock_all`] and an input that hands out bytes in small,
//!    uneven pieces.
//!
//! All three must give the vector's expected outcome.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine as _;

mod common;
use common::{Refusing, unix};
use kluis_core::fast::Backend;
use kluis_core::{
    Error, Header, Identity, LabelKey, Metadata, Recipient, Slot, Unwrap, unlock_all,
};

/// How many vectors the directory holds; fewer means files went missing.
const EXPECTED_VECTORS: usize = 104;

/// Every `expect:` value; each must be covered by at least one vector.
const OUTCOMES: &[&str] = &[
    "success",
    "not-sealed",
    "unsupported-version",
    "header-size",
    "slot-count",
    "stanza-body-length",
    "malformed-header",
    "no-matching-key",
    "header-mac",
    "metadata",
    "chunk-auth",
    "truncated",
    "trailing-data",
    "size-mismatch",
    "zero-shared-secret",
    "unwrap",
];

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

/// A key holder a vector lists.
enum KeySpec {
    /// `identity: <64 hex>`
    Identity(Identity),
    /// `label-key: <label> <kid> <64 hex>`
    Label(LabelKey),
    /// `refusing-label: <label> <kid>`
    Refusing(Refusing),
}

impl KeySpec {
    fn as_unwrap(&self) -> &dyn Unwrap {
        match self {
            KeySpec::Identity(i) => i,
            KeySpec::Label(l) => l,
            KeySpec::Refusing(r) => r,
        }
    }
}

/// What a success vector opens to.
struct Expected {
    /// Exact plaintext, when given (`plaintext:` or `plaintext-rule:`).
    plaintext: Option<Vec<u8>>,
    len: u64,
    sha256: Vec<u8>,
    name: String,
    size: Option<u64>,
    padding: u64,
    /// Seconds (floored) and nanoseconds since the epoch.
    modified: Option<(i64, u32)>,
}

struct Vector {
    name: String,
    expect: String,
    keys: Vec<KeySpec>,
    success: Option<Expected>,
    sealed: Vec<u8>,
}

impl Vector {
    fn unwrappers(&self) -> Vec<&dyn Unwrap> {
        self.keys.iter().map(KeySpec::as_unwrap).collect()
    }
}

fn secret(s: &str) -> Result<[u8; 32], String> {
    let mut b = [0u8; 32];
    hex::decode_to_slice(s, &mut b).map_err(|e| format!("bad 64-digit hex secret {s:?}: {e}"))?;
    Ok(b)
}

fn parse(name: &str, text: &str) -> Result<Vector, String> {
    let (head, body) = text
        .split_once("\n\n")
        .ok_or("no blank line between the header and the sealed bytes")?;
    let mut expect = None;
    let mut keys = Vec::new();
    let mut fields: Vec<(&str, &str)> = Vec::new();
    for line in head.lines() {
        let (key, value) = line
            .split_once(':')
            .ok_or_else(|| format!("header line without a colon: {line:?}"))?;
        let value = value.strip_prefix(' ').unwrap_or(value);
        match key {
            "expect" => {
                if expect.replace(value.to_owned()).is_some() {
                    return Err("two expect: lines".into());
                }
            }
            "comment" => {}
            "identity" => keys.push(KeySpec::Identity(Identity::from_secret_bytes(secret(
                value,
            )?))),
            "label-key" => {
                let parts: Vec<&str> = value.split(' ').collect();
                let [label, kid, hex_secret] = parts[..] else {
                    return Err(format!("label-key needs <label> <kid> <hex>: {value:?}"));
                };
                let kid = kid.parse().map_err(|e| format!("bad kid {kid:?}: {e}"))?;
                let key = LabelKey::from_secret_bytes(label, kid, secret(hex_secret)?)
                    .map_err(|e| format!("bad label key: {e}"))?;
                keys.push(KeySpec::Label(key));
            }
            "refusing-label" => {
                let (label, kid) = value
                    .split_once(' ')
                    .ok_or_else(|| format!("refusing-label needs <label> <kid>: {value:?}"))?;
                let kid = kid.parse().map_err(|e| format!("bad kid {kid:?}: {e}"))?;
                keys.push(KeySpec::Refusing(Refusing {
                    label: label.to_owned(),
                    kid,
                }));
            }
            "plaintext" | "plaintext-rule" | "plaintext-len" | "plaintext-sha256" | "name"
            | "size" | "padding" | "modified" => {
                if fields.iter().any(|(k, _)| *k == key) {
                    return Err(format!("two {key}: lines"));
                }
                fields.push((key, value));
            }
            _ => return Err(format!("unknown header key {key:?}")),
        }
    }
    let expect = expect.ok_or("no expect: line")?;
    if !OUTCOMES.contains(&expect.as_str()) {
        return Err(format!("unknown expect value {expect:?}"));
    }
    let field = |k: &str| fields.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);

    let success = if expect == "success" {
        let need = |k: &str| field(k).ok_or(format!("success vector without {k}:"));
        let len: u64 = need("plaintext-len")?
            .parse()
            .map_err(|e| format!("bad plaintext-len: {e}"))?;
        let plaintext = match (field("plaintext"), field("plaintext-rule")) {
            (Some(h), None) => Some(hex::decode(h).map_err(|e| format!("bad plaintext: {e}"))?),
            (None, Some("i mod 251")) => Some((0..len).map(|i| (i % 251) as u8).collect()),
            (None, Some(r)) => return Err(format!("unknown plaintext-rule {r:?}")),
            (None, None) => None,
            (Some(_), Some(_)) => return Err("both plaintext: and plaintext-rule:".into()),
        };
        let sha256 = hex::decode(need("plaintext-sha256")?)
            .map_err(|e| format!("bad plaintext-sha256: {e}"))?;
        let size = match need("size")? {
            "none" => None,
            n => Some(n.parse().map_err(|e| format!("bad size: {e}"))?),
        };
        let padding = need("padding")?
            .parse()
            .map_err(|e| format!("bad padding: {e}"))?;
        let modified = match need("modified")? {
            "none" => None,
            t => {
                let (s, n) = t.split_once(' ').ok_or("modified needs <secs> <nanos>")?;
                let s = s.parse().map_err(|e| format!("bad modified secs: {e}"))?;
                let n = n.parse().map_err(|e| format!("bad modified nanos: {e}"))?;
                Some((s, n))
            }
        };
        Some(Expected {
            plaintext,
            len,
            sha256,
            name: field("name").unwrap_or("").to_owned(),
            size,
            padding,
            modified,
        })
    } else {
        if let Some((k, _)) = fields.first() {
            return Err(format!("{k}: on a failure vector"));
        }
        None
    };

    let b64: String = body.split_whitespace().collect();
    let sealed = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("bad base64: {e}"))?;
    Ok(Vector {
        name: name.to_owned(),
        expect,
        keys,
        success,
        sealed,
    })
}

fn load_vectors() -> Vec<Vector> {
    let dir = vectors_dir();
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read the vector directory {}: {e}", dir.display()));
    let mut paths: Vec<PathBuf> = entries
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "vec"))
        .collect();
    paths.sort();
    let vectors: Vec<Vector> = paths
        .iter()
        .map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(p)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()));
            parse(&name, &text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        })
        .collect();
    assert!(
        vectors.len() >= EXPECTED_VECTORS,
        "found {} vectors in {}, expected at least {EXPECTED_VECTORS}",
        vectors.len(),
        dir.display()
    );
    vectors
}

/// A reader that hands out at most 1, 7, 100, 4096, 65553, 3, ... bytes per call.
struct Trickle<'a> {
    data: &'a [u8],
    call: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        const STEPS: [usize; 6] = [1, 7, 100, 4096, 65_553, 3];
        let n = STEPS[self.call % STEPS.len()]
            .min(out.len())
            .min(self.data.len());
        self.call += 1;
        out[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

type Opened = Result<(Vec<u8>, Metadata), Error>;

/// Header::read → Header::unlock → fast::stream_reader (with the backend) → read_to_end.
fn open_streaming(sealed: &[u8], keys: &[&dyn Unwrap], backend: Backend) -> Opened {
    let mut input = sealed;
    let header = Header::read(&mut input)?;
    let key = header.unlock(keys)?;
    let mut reader = kluis_core::fast::stream_reader(
        &header,
        &key,
        input,
        &kluis_core::fast::FastOptions::default().backend(backend),
    )?;
    let mut out = Vec::new();
    reader.read_to_end(&mut out).map_err(Error::from_io)?;
    Ok((out, reader.metadata().clone()))
}

/// Header::read → unlock_all → fast::stream_reader (with the backend) → read_to_end, reading
/// in pieces.
fn open_trickle(sealed: &[u8], keys: &[&dyn Unwrap], backend: Backend) -> Opened {
    let mut input = Trickle {
        data: sealed,
        call: 0,
    };
    let header = Header::read(&mut input)?;
    let key = unlock_all(&[&header], keys)
        .pop()
        .expect("one result per header")?;
    let mut reader = kluis_core::fast::stream_reader(
        &header,
        &key,
        input,
        &kluis_core::fast::FastOptions::default().backend(backend),
    )?;
    let mut out = Vec::new();
    reader.read_to_end(&mut out).map_err(Error::from_io)?;
    Ok((out, reader.metadata().clone()))
}

fn sha256(data: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

/// The `expect:` name of an error.
fn outcome(e: &Error) -> String {
    common::outcome(e).map_or_else(|| format!("unexpected error {e:?}"), str::to_owned)
}

/// Compare one outcome with the vector's expectation; `None` when it matches.
fn check(v: &Vector, got: Opened) -> Option<String> {
    match (got, &v.success) {
        (Err(e), None) => {
            let o = outcome(&e);
            (o != v.expect).then(|| format!("expected {}, got {o} ({e})", v.expect))
        }
        (Err(e), Some(_)) => Some(format!("expected success, got {} ({e})", outcome(&e))),
        (Ok(_), None) => Some(format!("expected {}, but it opened", v.expect)),
        (Ok((plain, meta)), Some(x)) => {
            if plain.len() as u64 != x.len {
                return Some(format!(
                    "plaintext is {} bytes, expected {}",
                    plain.len(),
                    x.len
                ));
            }
            if sha256(&plain) != x.sha256 {
                return Some("plaintext SHA-256 differs".into());
            }
            if x.plaintext.as_ref().is_some_and(|p| *p != plain) {
                return Some("plaintext differs".into());
            }
            if meta.name != x.name {
                return Some(format!("name {:?}, expected {:?}", meta.name, x.name));
            }
            if meta.size != x.size {
                return Some(format!("size {:?}, expected {:?}", meta.size, x.size));
            }
            if meta.padding != x.padding {
                return Some(format!("padding {}, expected {}", meta.padding, x.padding));
            }
            let modified = meta.modified.map(unix);
            if modified != x.modified {
                return Some(format!("modified {modified:?}, expected {:?}", x.modified));
            }
            None
        }
    }
}

#[test]
fn vectors_cover_every_outcome() {
    let vectors = load_vectors();
    for o in OUTCOMES {
        assert!(
            vectors.iter().any(|v| v.expect == *o),
            "no vector expects {o}"
        );
    }
    // The expected plaintext of a success vector must agree with its length and hash.
    for v in &vectors {
        if let Some(x) = &v.success {
            if let Some(p) = &x.plaintext {
                assert_eq!(p.len() as u64, x.len, "{}: plaintext-len", v.name);
                assert_eq!(sha256(p), x.sha256, "{}: plaintext-sha256", v.name);
            }
        }
    }
}

#[test]
fn vectors_open_as_expected_with_every_api_and_backend() {
    let vectors = load_vectors();
    let mut failures = Vec::new();
    for v in &vectors {
        let keys = v.unwrappers();
        for &backend in Backend::all() {
            let paths: [(&str, Opened); 3] = [
                (
                    "fast::open",
                    kluis_core::fast::open(
                        &v.sealed,
                        &keys,
                        &kluis_core::fast::FastOptions::default().backend(backend),
                    ),
                ),
                ("streaming", open_streaming(&v.sealed, &keys, backend)),
                (
                    "streaming+unlock_all+trickle",
                    open_trickle(&v.sealed, &keys, backend),
                ),
            ];
            for (path, got) in paths {
                if let Some(problem) = check(v, got) {
                    failures.push(format!("{} [{path}, {backend:?}]: {problem}", v.name));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} vectors x paths x backends failed:\n{}",
        failures.len(),
        vectors.len(),
        failures.join("\n")
    );
}

/// Unlock `vectors` with one `unlock_all` call (the union of their keys), then read each.
fn open_batch(vectors: &[&Vector]) {
    let headers: Vec<Header> = vectors
        .iter()
        .map(|v| Header::parse(&v.sealed).unwrap_or_else(|e| panic!("{}: {e}", v.name)))
        .collect();
    let keys: Vec<&dyn Unwrap> = vectors.iter().flat_map(|v| v.unwrappers()).collect();
    let header_refs: Vec<&Header> = headers.iter().collect();
    let results = unlock_all(&header_refs, &keys);
    assert_eq!(results.len(), vectors.len());
    for ((v, header), key) in vectors.iter().zip(&headers).zip(results) {
        let key = key.unwrap_or_else(|e| panic!("{}: {e}", v.name));
        for &backend in Backend::all() {
            let mut r = kluis_core::fast::stream_reader(
                header,
                &key,
                &v.sealed[header.len()..],
                &kluis_core::fast::FastOptions::default().backend(backend),
            )
            .unwrap_or_else(|e| panic!("{}: {e}", v.name));
            let mut out = Vec::new();
            r.read_to_end(&mut out)
                .unwrap_or_else(|e| panic!("{}: {}", v.name, Error::from_io(e)));
            if let Some(problem) = check(v, Ok((out, r.metadata().clone()))) {
                panic!("{} [batch, {backend:?}]: {problem}", v.name);
            }
        }
    }
}

/// A success vector that needs a second `unlock_all` round (its first slot fails the MAC;
/// `success_after_low_order_slot` is another, whose first slot fails to unwrap).
const SECOND_ROUND: &str = "success_fallback_after_bad_slot";

/// All success vectors at once with one `unlock_all` call (one needs a second round).
#[test]
fn unlock_all_opens_the_success_vectors_in_one_batch() {
    let vectors = load_vectors();
    let batch: Vec<&Vector> = vectors.iter().filter(|v| v.success.is_some()).collect();
    assert!(batch.len() > 10);
    open_batch(&batch);
}

/// A batch where one document opens in round 1 and another only in round 2 (a regression
/// test: `unlock_all` once kept a finished document's slot and indexed its cleared shares).
#[test]
fn unlock_all_batch_with_a_second_round_document() {
    let vectors = load_vectors();
    let find = |name: &str| {
        vectors
            .iter()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("vector {name} missing"))
    };
    open_batch(&[find("success_one_byte"), find(SECOND_ROUND)]);
}

/// Seal with each backend, open with every backend.
#[test]
fn every_backend_opens_what_every_backend_sealed() {
    let holder = Identity::from_secret_bytes([0x5a; 32]);
    let slot = Slot::single(Recipient::Key(holder.public_key()));
    let t = UNIX_EPOCH + Duration::new(1_600_000_000, 7);
    for n in [0usize, 1, 65_535, 65_536, 65_537, 200_000] {
        let plain: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
        let meta = Metadata::default().name(format!("{n}.bin")).modified(t);
        for &sealer in Backend::all() {
            let sealed = kluis_core::fast::seal(
                std::slice::from_ref(&slot),
                &meta,
                &plain,
                &kluis_core::fast::FastOptions::default().backend(sealer),
            )
            .unwrap_or_else(|e| panic!("seal {n} bytes with {sealer:?}: {e}"));
            for &opener in Backend::all() {
                let (out, m) = kluis_core::fast::open(
                    &sealed,
                    &[&holder],
                    &kluis_core::fast::FastOptions::default().backend(opener),
                )
                .unwrap_or_else(|e| panic!("{n} bytes, {sealer:?} -> {opener:?}: {e}"));
                assert!(
                    out == plain,
                    "{n} bytes, {sealer:?} -> {opener:?}: plaintext"
                );
                assert_eq!(m.size, Some(n as u64));
                assert_eq!(m.name, format!("{n}.bin"));
                assert_eq!(m.modified, Some(t));
            }
        }
    }
    #[cfg(feature = "aes-gcm")]
    assert_eq!(
        Backend::all().len(),
        2,
        "--all-features must compile both backends"
    );
}
