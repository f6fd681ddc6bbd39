//! Generates the kluis v1 test vectors (`*.vec`) read by `tests/vectors.rs`.
//!
//! ```text
//! cargo run -p kluis-core --example gen_vectors -- crates/kluis-core/tests/vectors --missing
//! cargo run -p kluis-core --example gen_vectors -- crates/kluis-core/tests/vectors --only NAME...
//! cargo run -p kluis-core --example gen_vectors -- crates/kluis-core/tests/vectors
//! ```
//!
//! `--missing` writes only the vectors whose file does not exist yet (use it after adding a
//! vector here); `--only` rewrites just the named vectors; with neither, every file is
//! rewritten, which changes all the random bytes in them.
//!
//! The file format is described in `crates/kluis-core/tests/vectors/README.md`.
//!
//! The secret keys are the fixed hex constants below, so the keys in every file are
//! reproducible; the sealed bytes themselves are random on every run (fresh file keys,
//! doc_ids, salts and ephemeral keys), which is fine: the files are checked in once and the
//! test only needs each one to be a valid instance of its case.
//!
//! Three kinds of vectors are made:
//!
//! - real output of `kluis_core::seal` / `StreamWriter`;
//! - byte surgery on real output (flipped bits, cut or appended bytes, changed length fields);
//! - documents built by [`raw`], an independent re-implementation of the v1 construction
//!   (DESIGN §4) on `ring` and `x25519-dalek` alone, for cases that need the file key: a
//!   wrong double-key share, malformed sealed metadata, a payload that disagrees with the
//!   declared size, bad STREAM flags, unknown stanza types.
//!
//! Before writing, every vector is opened once with `kluis_core::open`; a result that differs
//! from the expectation is reported on stderr (the expectation is still written: it states
//! what the format requires, and the test reports the disagreement).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine as _;

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/layout/mod.rs"]
mod layout;

use kluis_core::{Identity, LabelKey, Metadata, Recipient, Slot, StreamWriter, Unwrap};
use layout::{header_len, layout, set_header_len};

/// Holder identity "alice" (X25519 secret).
const ALICE: &str = "522e4ae59946835cd88ddebfa54e58d0234b962d83e9f4ea017f07b72603ef33";
/// Holder identity "bob": never a recipient; used for the wrong-key cases.
const BOB: &str = "8626b50e76d72f8e93f7c7c702b2a7b797cfb90fbfa6c908647df7e54a91f380";
/// The recovery identity.
const RECOVERY: &str = "a59906af21af0a7efb730ecf71ddcda1c2e0c307b01bd1fd427df2eecf0b1c40";
/// Label key `hr`, version (kid) 1.
const HR: &str = "fd9f128e586ff83c26de937ad0ef87d69fe7c3185e5e6d79f78971d6e4935775";
const HR_LABEL: &str = "hr";
const HR_KID: u32 = 1;

/// Plaintext bytes per STREAM chunk (the crate's `CHUNK_LEN`).
const CHUNK: usize = kluis_core::fast::CHUNK_LEN;
/// Sealed bytes per full chunk.
const SEALED_CHUNK: usize = CHUNK + 16;

fn secret(hex_str: &str) -> [u8; 32] {
    let mut b = [0u8; 32];
    hex::decode_to_slice(hex_str, &mut b).expect("64 hex digits");
    b
}

fn alice() -> Identity {
    Identity::from_secret_bytes(secret(ALICE))
}

fn recovery() -> Identity {
    Identity::from_secret_bytes(secret(RECOVERY))
}

fn hr() -> LabelKey {
    LabelKey::from_secret_bytes(HR_LABEL, HR_KID, secret(HR)).expect("valid label")
}

fn to_alice() -> Slot {
    Slot::single(Recipient::Key(alice().public_key()))
}

fn to_hr() -> Recipient {
    Recipient::Label(hr().public_key().clone())
}

/// The deterministic plaintext of the vectors: byte `i` is `i mod 251`.
fn rule(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// A key the vector lists (one `identity:`, `label-key:` or `refusing-label:` line).
#[derive(Clone)]
enum Key {
    Identity(&'static str),
    Label(&'static str, u32, &'static str),
    Refusing(&'static str, u32),
}

impl Key {
    fn line(&self) -> String {
        match self {
            Key::Identity(h) => format!("identity: {h}"),
            Key::Label(l, kid, h) => format!("label-key: {l} {kid} {h}"),
            Key::Refusing(l, kid) => format!("refusing-label: {l} {kid}"),
        }
    }
}

const K_ALICE: Key = Key::Identity(ALICE);
const K_BOB: Key = Key::Identity(BOB);
const K_RECOVERY: Key = Key::Identity(RECOVERY);
const K_HR: Key = Key::Label(HR_LABEL, HR_KID, HR);

/// What a success vector must open to.
struct Expected {
    plaintext: Vec<u8>,
    /// The plaintext follows [`rule`] (written as `plaintext-rule:`).
    by_rule: bool,
    metadata: Metadata,
}

struct Vector {
    name: &'static str,
    comment: String,
    expect: &'static str,
    keys: Vec<Key>,
    success: Option<Expected>,
    sealed: Vec<u8>,
}

fn fail(
    name: &'static str,
    expect: &'static str,
    keys: &[Key],
    comment: &str,
    sealed: Vec<u8>,
) -> Vector {
    Vector {
        name,
        comment: comment.to_owned(),
        expect,
        keys: keys.to_vec(),
        success: None,
        sealed,
    }
}

fn ok(
    name: &'static str,
    keys: &[Key],
    comment: &str,
    plaintext: Vec<u8>,
    by_rule: bool,
    metadata: Metadata,
    sealed: Vec<u8>,
) -> Vector {
    Vector {
        name,
        comment: comment.to_owned(),
        expect: "success",
        keys: keys.to_vec(),
        success: Some(Expected {
            plaintext,
            by_rule,
            metadata,
        }),
        sealed,
    }
}

impl Vector {
    fn render(&self) -> String {
        let mut s = String::new();
        writeln!(s, "expect: {}", self.expect).unwrap();
        for line in self.comment.lines() {
            writeln!(s, "comment: {line}").unwrap();
        }
        for k in &self.keys {
            writeln!(s, "{}", k.line()).unwrap();
        }
        if let Some(e) = &self.success {
            if e.by_rule {
                writeln!(s, "plaintext-rule: i mod 251").unwrap();
            } else {
                writeln!(s, "plaintext: {}", hex::encode(&e.plaintext)).unwrap();
            }
            writeln!(s, "plaintext-len: {}", e.plaintext.len()).unwrap();
            let digest = ring::digest::digest(&ring::digest::SHA256, &e.plaintext);
            writeln!(s, "plaintext-sha256: {}", hex::encode(digest.as_ref())).unwrap();
            if !e.metadata.name.is_empty() {
                writeln!(s, "name: {}", e.metadata.name).unwrap();
            }
            match e.metadata.size {
                Some(n) => writeln!(s, "size: {n}").unwrap(),
                None => writeln!(s, "size: none").unwrap(),
            }
            writeln!(s, "padding: {}", e.metadata.padding).unwrap();
            match e.metadata.modified {
                Some(t) => {
                    let (secs, nanos) = common::unix(t);
                    writeln!(s, "modified: {secs} {nanos}").unwrap();
                }
                None => writeln!(s, "modified: none").unwrap(),
            }
        }
        s.push('\n');
        let b64 = base64::engine::general_purpose::STANDARD.encode(&self.sealed);
        for line in b64.as_bytes().chunks(76) {
            s.push_str(std::str::from_utf8(line).unwrap());
            s.push('\n');
        }
        s
    }

    /// Open the vector once with the crate, with its key holders in file order (as the
    /// runner does); return a description of any disagreement.
    fn check(&self) -> Option<String> {
        let holders: Vec<Box<dyn Unwrap>> = self
            .keys
            .iter()
            .map(|k| -> Box<dyn Unwrap> {
                match k {
                    Key::Identity(h) => Box::new(Identity::from_secret_bytes(secret(h))),
                    Key::Label(l, kid, h) => {
                        Box::new(LabelKey::from_secret_bytes(l, *kid, secret(h)).unwrap())
                    }
                    Key::Refusing(label, kid) => Box::new(common::Refusing {
                        label: label.to_string(),
                        kid: *kid,
                    }),
                }
            })
            .collect();
        let u: Vec<&dyn Unwrap> = holders.iter().map(|b| b.as_ref()).collect();
        match (kluis_core::open(&self.sealed, &u), &self.success) {
            (Ok((p, m)), Some(e)) => {
                if p != e.plaintext {
                    Some("plaintext differs".into())
                } else if m != e.metadata {
                    Some(format!("metadata differs: {m:?}"))
                } else {
                    None
                }
            }
            (Ok(_), None) => Some("opened, but should fail".into()),
            (Err(err), _) => {
                let got = common::outcome(&err).unwrap_or("other");
                (got != self.expect).then(|| format!("got {got} ({err})"))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Header layout, for byte surgery.

// `StanzaAt`, `Layout`, `layout`, `header_len` and `set_header_len`: tests/layout/mod.rs.

fn set_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// Remove `n` bytes at `at` inside the header, keeping header_len consistent.
fn remove_in_header(b: &mut Vec<u8>, at: usize, n: usize) {
    let len = header_len(b);
    b.drain(at..at + n);
    set_header_len(b, len - n);
}

/// Insert bytes at `at` inside the header, keeping header_len consistent.
fn insert_in_header(b: &mut Vec<u8>, at: usize, bytes: &[u8]) {
    let len = header_len(b);
    b.splice(at..at, bytes.iter().copied());
    set_header_len(b, len + bytes.len());
}

// ---------------------------------------------------------------------------------------------
// An independent implementation of the v1 construction, for crafted documents.

mod raw {
    use ring::rand::SecureRandom;
    use ring::{aead, hkdf, hmac};
    use x25519_dalek::{PublicKey, StaticSecret};

    pub const ORG_INFO: &[u8] = b"kluis/v1/org-x25519";
    pub const X25519_INFO: &[u8] = b"kluis/v1/x25519";

    pub fn random<const N: usize>() -> [u8; N] {
        let mut b = [0u8; N];
        ring::rand::SystemRandom::new()
            .fill(&mut b)
            .expect("OS random");
        b
    }

    /// HKDF-SHA-256 with a 32-byte output.
    pub fn hkdf(ikm: &[u8], salt: &[u8], info: &[u8]) -> [u8; 32] {
        let mut out = [0u8; 32];
        hkdf::Salt::new(hkdf::HKDF_SHA256, salt)
            .extract(ikm)
            .expand(&[info], hkdf::HKDF_SHA256)
            .expect("32-byte expand")
            .fill(&mut out)
            .expect("32-byte fill");
        out
    }

    /// AES-256-GCM: ciphertext ‖ tag.
    pub fn seal(key: &[u8; 32], nonce: [u8; 12], aad: &[u8], plain: &[u8]) -> Vec<u8> {
        let k = aead::LessSafeKey::new(aead::UnboundKey::new(&aead::AES_256_GCM, key).unwrap());
        let mut buf = plain.to_vec();
        k.seal_in_place_append_tag(
            aead::Nonce::assume_unique_for_key(nonce),
            aead::Aad::from(aad),
            &mut buf,
        )
        .unwrap();
        buf
    }

    /// Wrap `share` to the X25519 key `p`: fresh `e`, `E = X25519(e, 9)`, `Z = X25519(e, P)`,
    /// `W = HKDF(Z, E ‖ P, info)`, `body = AEAD(W, 0, share, aad)`.
    pub fn wrap(info: &[u8], aad: &[u8], p: &[u8; 32], share: &[u8; 32]) -> ([u8; 32], Vec<u8>) {
        let e = StaticSecret::from(random::<32>());
        let e_pub = PublicKey::from(&e).to_bytes();
        let z = e.diffie_hellman(&PublicKey::from(*p));
        assert!(z.was_contributory());
        let mut salt = Vec::with_capacity(64);
        salt.extend_from_slice(&e_pub);
        salt.extend_from_slice(p);
        let w = hkdf(z.as_bytes(), &salt, info);
        (e_pub, seal(&w, [0; 12], aad, share))
    }

    pub fn x25519_aad(doc_id: &[u8; 16]) -> Vec<u8> {
        [X25519_INFO, doc_id].concat()
    }

    pub fn org_aad(doc_id: &[u8; 16], label: &str, kid: u32, slot_kind: u8) -> Vec<u8> {
        let mut a = b"kluis/v1/org".to_vec();
        a.extend_from_slice(doc_id);
        a.push(label.len() as u8);
        a.extend_from_slice(label.as_bytes());
        a.extend_from_slice(&kid.to_be_bytes());
        a.push(slot_kind);
        a
    }

    /// `type ‖ u16 length ‖ content`
    pub fn stanza(kind: u8, content: &[u8]) -> Vec<u8> {
        let mut s = vec![kind];
        s.extend_from_slice(&(content.len() as u16).to_be_bytes());
        s.extend_from_slice(content);
        s
    }

    /// An X25519 stanza wrapping `share` to `p`.
    pub fn x25519_stanza(doc_id: &[u8; 16], p: &[u8; 32], share: &[u8; 32]) -> Vec<u8> {
        let (e, body) = wrap(X25519_INFO, &x25519_aad(doc_id), p, share);
        stanza(0x02, &[&e[..], &body].concat())
    }

    /// An org stanza wrapping `share` to label `label`/`kid` with public key `p`.
    pub fn org_stanza(
        doc_id: &[u8; 16],
        label: &str,
        kid: u32,
        slot_kind: u8,
        p: &[u8; 32],
        share: &[u8; 32],
    ) -> Vec<u8> {
        let (e, body) = wrap(ORG_INFO, &org_aad(doc_id, label, kid, slot_kind), p, share);
        let mut c = vec![label.len() as u8];
        c.extend_from_slice(label.as_bytes());
        c.extend_from_slice(&kid.to_be_bytes());
        c.push(slot_kind);
        c.extend_from_slice(&e);
        c.extend_from_slice(&body);
        stanza(0x01, &c)
    }

    /// The metadata plaintext: `flags ‖ u64 size ‖ i64 secs ‖ u32 nanos ‖ u64 padding ‖
    /// u16 name_len ‖ name`.
    pub fn metadata(
        flags: u8,
        size: u64,
        secs: i64,
        nanos: u32,
        padding: u64,
        name: &[u8],
    ) -> Vec<u8> {
        let mut m = vec![flags];
        m.extend_from_slice(&size.to_be_bytes());
        m.extend_from_slice(&secs.to_be_bytes());
        m.extend_from_slice(&nanos.to_be_bytes());
        m.extend_from_slice(&padding.to_be_bytes());
        m.extend_from_slice(&(name.len() as u16).to_be_bytes());
        m.extend_from_slice(name);
        m
    }

    /// A document under construction: file key, ids, slots (raw stanza bytes) and metadata.
    pub struct Doc {
        pub key: [u8; 32],
        pub doc_id: [u8; 16],
        pub salt: [u8; 16],
        pub slots: Vec<Vec<Vec<u8>>>,
        pub metadata_plain: Vec<u8>,
        /// Seal the metadata under this key instead of the right one.
        pub metadata_key: Option<[u8; 32]>,
    }

    impl Doc {
        /// Fresh key and ids, no slots, metadata declaring `size`.
        pub fn new(size: u64) -> Doc {
            Doc {
                key: random(),
                doc_id: random(),
                salt: random(),
                slots: Vec::new(),
                metadata_plain: metadata(0x01, size, 0, 0, 0, b""),
                metadata_key: None,
            }
        }

        /// Add a one-stanza slot wrapping the file key to X25519 key `p`.
        pub fn add_key_slot(mut self, p: &[u8; 32]) -> Doc {
            let s = x25519_stanza(&self.doc_id, p, &self.key);
            self.slots.push(vec![s]);
            self
        }

        /// Header bytes, MAC included.
        pub fn header(&self) -> Vec<u8> {
            let mut h = b"KLUIS\0".to_vec();
            h.extend_from_slice(&1u16.to_be_bytes());
            h.extend_from_slice(&[0; 4]);
            h.extend_from_slice(&self.doc_id);
            h.extend_from_slice(&self.salt);
            h.push(self.slots.len() as u8);
            for slot in &self.slots {
                h.push(slot.len() as u8);
                for s in slot {
                    h.extend_from_slice(s);
                }
            }
            let mkey = self
                .metadata_key
                .unwrap_or_else(|| hkdf(&self.key, &self.doc_id, b"kluis/v1/metadata"));
            let sealed = seal(&mkey, [0; 12], &[], &self.metadata_plain);
            h.extend_from_slice(&(sealed.len() as u16).to_be_bytes());
            h.extend_from_slice(&sealed);
            let total = h.len() + 32;
            crate::set_header_len(&mut h, total);
            let mac_key = hkdf(&self.key, &self.doc_id, b"kluis/v1/header");
            let k = hmac::Key::new(hmac::HMAC_SHA256, &mac_key);
            h.extend_from_slice(hmac::sign(&k, &h).as_ref());
            h
        }

        /// STREAM chunks given explicitly as (plaintext, last-chunk flag).
        pub fn chunks(&self, chunks: &[(&[u8], bool)]) -> Vec<u8> {
            let pk = hkdf(&self.key, &self.salt, b"kluis/v1/payload");
            let mut out = Vec::new();
            for (i, (plain, last)) in chunks.iter().enumerate() {
                let mut nonce = [0u8; 12];
                nonce[3..11].copy_from_slice(&(i as u64).to_be_bytes());
                nonce[11] = u8::from(*last);
                out.extend_from_slice(&seal(&pk, nonce, &[], plain));
            }
            out
        }

        /// The correct STREAM encoding of `plain` in 64 KiB chunks.
        pub fn payload(&self, plain: &[u8]) -> Vec<u8> {
            let pieces: Vec<&[u8]> = if plain.is_empty() {
                vec![&plain[..0]]
            } else {
                plain.chunks(super::CHUNK).collect()
            };
            let n = pieces.len();
            let chunks: Vec<(&[u8], bool)> = pieces
                .into_iter()
                .enumerate()
                .map(|(i, p)| (p, i + 1 == n))
                .collect();
            self.chunks(&chunks)
        }
    }
}

// ---------------------------------------------------------------------------------------------

fn seal(slots: &[Slot], metadata: &Metadata, plain: &[u8]) -> Vec<u8> {
    kluis_core::seal(slots, metadata, plain).expect("seal")
}

/// A small document sealed to alice, for header surgery.
fn small_to_alice() -> Vec<u8> {
    seal(&[to_alice()], &Metadata::default(), &rule(100))
}

/// A small document sealed to the hr label alone.
fn small_to_hr() -> Vec<u8> {
    seal(&[Slot::single(to_hr())], &Metadata::default(), &rule(100))
}

fn flip(mut b: Vec<u8>, at: usize) -> Vec<u8> {
    b[at] ^= 0x01;
    b
}

fn with_size(n: usize) -> Metadata {
    Metadata::with_size(n as u64)
}

fn success_vectors(v: &mut Vec<Vector>) {
    for (name, n, comment) in [
        (
            "success_empty",
            0,
            "An empty plaintext: one empty final chunk.",
        ),
        ("success_one_byte", 1, "A 1-byte plaintext."),
        (
            "success_chunk_minus_one",
            CHUNK - 1,
            "64 KiB - 1 bytes: one short final chunk.",
        ),
        (
            "success_chunk_exact",
            CHUNK,
            "Exactly 64 KiB: one full final chunk.",
        ),
        (
            "success_chunk_plus_one",
            CHUNK + 1,
            "64 KiB + 1 bytes: a full chunk, then a 1-byte final chunk.",
        ),
        (
            "success_three_and_a_half_chunks",
            CHUNK * 7 / 2,
            "3.5 chunks (229376 bytes): three full chunks and a half chunk.",
        ),
    ] {
        let p = rule(n);
        let sealed = seal(&[to_alice()], &Metadata::default(), &p);
        v.push(ok(
            name,
            &[K_ALICE],
            &format!("{comment}\nSealed by kluis_core::seal to the alice identity."),
            p,
            true,
            with_size(n),
            sealed,
        ));
    }

    let p = rule(1000);
    let mut m = with_size(1000).padded().unwrap();
    // As sealed before the name-padding flag (FORMAT.md 7.1): such files stay readable.
    m.name_padded = false;
    v.push(ok(
        "success_padded",
        &[K_ALICE],
        "1000 bytes with Padmé padding (24 zero bytes): Metadata::with_size(1000).padded().",
        p.clone(),
        true,
        m.clone(),
        seal(&[to_alice()], &m, &p),
    ));

    let p = rule(65_500);
    let mut m = with_size(65_500).padded().unwrap();
    m.name_padded = false;
    v.push(ok(
        "success_padded_across_chunks",
        &[K_ALICE],
        "65500 bytes with Padmé padding (2084 zero bytes): the padding fills the rest of\n\
         chunk 0 and all of chunk 1, so content ends inside a chunk followed by padding.",
        p.clone(),
        true,
        m.clone(),
        seal(&[to_alice()], &m, &p),
    ));

    for (name, file_name, comment) in [
        (
            "success_padded_name",
            "brief.docx".to_owned(),
            "1000 bytes with Padmé padding and a padded name (FORMAT.md 7.1): metadata flags\n\
             0x05, the 10-byte name \"brief.docx\" followed by 246 zero bytes, so the sealed\n\
             metadata is 31 + 256 + 16 bytes whatever the name's length up to 256 bytes.\n\
             Metadata::with_size(1000).name(\"brief.docx\").padded().",
        ),
        (
            "success_padded_name_two_buckets",
            "n".repeat(300),
            "1000 bytes with Padmé padding and a 300-byte name padded to two buckets\n\
             (512 bytes, FORMAT.md 7.1).",
        ),
        (
            "success_padded_empty_name",
            String::new(),
            "1000 bytes with Padmé padding and an empty name, padded to one bucket\n\
             (256 zero bytes, FORMAT.md 7.1).",
        ),
    ] {
        let p = rule(1000);
        let m = with_size(1000).name(file_name).padded().unwrap();
        assert!(m.name_padded);
        v.push(ok(
            name,
            &[K_ALICE],
            comment,
            p.clone(),
            true,
            m.clone(),
            seal(&[to_alice()], &m, &p),
        ));
    }

    let p = b"double key: both the label key and the holder's key are needed\n".to_vec();
    let slot = Slot::double(to_hr(), Recipient::Key(alice().public_key())).unwrap();
    v.push(ok(
        "success_double_key",
        &[K_HR, K_ALICE],
        "One double-key slot: an org stanza to label hr/1 and an X25519 stanza to alice,\n\
         each with half of the file key; both keys are given.",
        p.clone(),
        false,
        with_size(p.len()),
        seal(&[slot], &Metadata::default(), &p),
    ));

    let p = rule(5000);
    let slots = [
        Slot::single(to_hr()),
        Slot::single(Recipient::Key(recovery().public_key())),
    ];
    let sealed = seal(&slots, &Metadata::default(), &p);
    v.push(ok(
        "success_two_slots_recovery",
        &[K_RECOVERY],
        "Two slots: label hr/1, then the recovery X25519 key. Only the recovery identity is\n\
         given, so the first slot is skipped and the second must be used.",
        p.clone(),
        true,
        with_size(5000),
        sealed.clone(),
    ));
    v.push(ok(
        "success_two_slots_label",
        &[K_HR],
        "The same document as success_two_slots_recovery, opened with the hr/1 label key\n\
         (first slot).",
        p,
        true,
        with_size(5000),
        sealed,
    ));

    let p = b"org stanza, whole key\n".to_vec();
    v.push(ok(
        "success_label_only",
        &[K_HR],
        "One slot with one org stanza to label hr/1 (slot kind 1, the whole file key).",
        p.clone(),
        false,
        with_size(p.len()),
        seal(&[Slot::single(to_hr())], &Metadata::default(), &p),
    ));

    let p = b"Quarterly numbers: confidential.\n".to_vec();
    let m = with_size(p.len())
        .name("Rapport Q3 – vertrouwelijk.docx")
        .modified(UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789));
    v.push(ok(
        "success_metadata",
        &[K_ALICE],
        "Sealed metadata with a (UTF-8) file name and a modification time.",
        p.clone(),
        false,
        m.clone(),
        seal(&[to_alice()], &m, &p),
    ));

    let p = b"before 1970\n".to_vec();
    let m = with_size(p.len())
        .name("old.txt")
        .modified(UNIX_EPOCH - Duration::new(86_400, 5));
    v.push(ok(
        "success_metadata_pre_epoch",
        &[K_ALICE],
        "A modification time before the epoch: 1969-12-31T00:00:00 minus 5 ns, encoded as\n\
         seconds -86401 (floored) and nanoseconds 999999995.",
        p.clone(),
        false,
        m.clone(),
        seal(&[to_alice()], &m, &p),
    ));

    let p = b"long name\n".to_vec();
    let m = with_size(p.len()).name(format!(
        "{}.txt",
        "n".repeat(kluis_core::Metadata::MAX_NAME_LEN - 4)
    ));
    v.push(ok(
        "success_long_name",
        &[K_ALICE],
        "A file name of exactly MAX_NAME_LEN (4096) bytes: the largest sealed metadata block.",
        p.clone(),
        false,
        m.clone(),
        seal(&[to_alice()], &m, &p),
    ));

    let p = rule(100);
    let m = Metadata::default().name("stream.log");
    let mut w = StreamWriter::new(Vec::new(), &[to_alice()], &m).unwrap();
    w.write_all(&p).unwrap();
    v.push(ok(
        "success_unknown_size",
        &[K_ALICE],
        "Sealed with StreamWriter without a declared size: the metadata has no size.",
        p,
        true,
        m,
        w.finish().unwrap(),
    ));

    // Slot 0: double key with a wrong share; slot 1: recovery. Opening falls back to slot 1.
    // Any change to a stanza changes the MACed header bytes, so this one is built by the
    // independent implementation, with a correct MAC for the real file key.
    let p = rule(300);
    let mut d = raw::Doc::new(300);
    d.slots.push(inconsistent_double_slot(&d.doc_id));
    let d = d.add_key_slot(recovery().public_key().as_bytes());
    let sealed = [d.header(), d.payload(&p)].concat();
    v.push(ok(
        "success_fallback_after_bad_slot",
        &[K_HR, K_ALICE, K_RECOVERY],
        "Independent implementation, correct header MAC. Slot 0: a double key (org stanza to\n\
         hr/1, X25519 stanza to alice) whose two shares are authentic wraps but do not XOR\n\
         to the file key; slot 1: the file key to the recovery key. All keys are given:\n\
         slot 0 fails the header MAC, opening falls back to slot 1.",
        p,
        true,
        with_size(300),
        sealed,
    ));

    // Independent implementation: unknown stanza type in slot 0, alice in slot 1.
    let p = rule(700);
    let mut d = raw::Doc::new(700);
    d.slots
        .push(vec![raw::stanza(0x7f, b"a stanza type from the future")]);
    let d = d.add_key_slot(alice().public_key().as_bytes());
    let sealed = [d.header(), d.payload(&p)].concat();
    v.push(ok(
        "success_unknown_stanza_skipped",
        &[K_ALICE],
        "Built by the independent implementation: slot 0 holds one stanza of unknown type\n\
         0x7f (kept, never used), slot 1 an X25519 stanza to alice.",
        p,
        true,
        with_size(700),
        sealed,
    ));

    let n = CHUNK + 100;
    let p = rule(n);
    let mut d = raw::Doc::new(n as u64);
    d.metadata_plain = raw::metadata(0x03, n as u64, 1_234_567_890, 0, 0, b"independent.bin");
    let s1: [u8; 32] = raw::random();
    let mut s2 = d.key;
    s2.iter_mut().zip(s1).for_each(|(b, s)| *b ^= s);
    let hr_pub = *hr().public_key().key().as_bytes();
    d.slots.push(vec![
        raw::org_stanza(&d.doc_id, HR_LABEL, HR_KID, 2, &hr_pub, &s1),
        raw::x25519_stanza(&d.doc_id, alice().public_key().as_bytes(), &s2),
    ]);
    let sealed = [d.header(), d.payload(&p)].concat();
    v.push(ok(
        "success_independent_seal",
        &[K_HR, K_ALICE],
        "Built entirely by the independent implementation of DESIGN section 4 (ring and\n\
         x25519-dalek only): one double-key slot (org stanza to hr/1 with share s1, X25519\n\
         stanza to alice with s2 = K xor s1), 64 KiB + 100 bytes in two chunks, name and\n\
         time in the metadata.",
        p,
        true,
        with_size(n)
            .name("independent.bin")
            .modified(UNIX_EPOCH + Duration::from_secs(1_234_567_890)),
        sealed,
    ));

    // Independent implementation: slot 0 is a double key whose second stanza has an unknown
    // type, so no key holder accepts the whole slot and it is never tried; slot 1 opens.
    let p = rule(400);
    let mut d = raw::Doc::new(400);
    let hr_pub = *hr().public_key().key().as_bytes();
    d.slots.push(vec![
        raw::org_stanza(&d.doc_id, HR_LABEL, HR_KID, 2, &hr_pub, &raw::random()),
        raw::stanza(0x7f, b"the other half, for a key type from the future"),
    ]);
    let d = d.add_key_slot(alice().public_key().as_bytes());
    let sealed = [d.header(), d.payload(&p)].concat();
    v.push(ok(
        "success_unknown_stanza_in_double_slot",
        &[K_HR, K_ALICE],
        "Independent implementation: slot 0 is a double-key slot of an org stanza to hr/1\n\
         (slot kind 2) and a stanza of unknown type 0x7f; slot 1 is an X25519 stanza to\n\
         alice. No key holder accepts the unknown stanza, so slot 0 is never tried (and\n\
         the hr/1 key is never asked); slot 1 opens.",
        p,
        true,
        with_size(400),
        sealed,
    ));

    let p = b"two holders, both needed\n".to_vec();
    let slot = Slot::double(
        Recipient::Key(recovery().public_key()),
        Recipient::Key(alice().public_key()),
    )
    .unwrap();
    v.push(ok(
        "success_double_key_two_identities",
        &[K_ALICE, K_RECOVERY],
        "One double-key slot of two X25519 stanzas: the first to the recovery key, the\n\
         second to alice. Both identities are given, alice first: alice is asked for both\n\
         stanzas, opens the second and answers \"not mine\" for the first, which is then\n\
         asked of the recovery identity in the same round (FORMAT.md 11.2).",
        p.clone(),
        false,
        with_size(p.len()),
        seal(&[slot], &Metadata::default(), &p),
    ));

    // Independent implementation: slot 0 has a low-order E; slot 1 opens. The error met in
    // slot 0 must not be reported, because a later slot opens.
    let p = rule(200);
    let mut d = raw::Doc::new(200);
    let mut content = vec![0u8; 32];
    content.extend_from_slice(&raw::random::<48>());
    d.slots.push(vec![raw::stanza(0x02, &content)]);
    let d = d.add_key_slot(alice().public_key().as_bytes());
    let sealed = [d.header(), d.payload(&p)].concat();
    v.push(ok(
        "success_after_low_order_slot",
        &[K_ALICE],
        "Independent implementation, correct header MAC. Slot 0: an X25519 stanza whose E is\n\
         32 zero bytes (a low-order point: ZeroSharedSecret for any identity); slot 1: the\n\
         file key to alice. Slot 0 fails in round 1, slot 1 opens in round 2: the\n\
         ZeroSharedSecret met in slot 0 is not reported.",
        p,
        true,
        with_size(200),
        sealed,
    ));

    // The two ends of the modification-time range of FORMAT.md section 7.
    for (name, t, comment) in [
        (
            "success_metadata_mtime_first",
            UNIX_EPOCH - Duration::from_secs(11_644_473_600),
            "The earliest modification time the format holds: 1601-01-01T00:00:00Z, seconds\n\
             -11644473600 and nanoseconds 0.",
        ),
        (
            "success_metadata_mtime_last",
            UNIX_EPOCH + Duration::new(253_402_300_799, 999_999_999),
            "The latest modification time the format holds: 9999-12-31T23:59:59.999999999Z,\n\
             seconds 253402300799 and nanoseconds 999999999.",
        ),
    ] {
        let p = b"time range\n".to_vec();
        let m = with_size(p.len()).modified(t);
        v.push(ok(
            name,
            &[K_ALICE],
            comment,
            p.clone(),
            false,
            m.clone(),
            seal(&[to_alice()], &m, &p),
        ));
    }
}

/// A double-key slot (org stanza to hr/1, X25519 stanza to alice) of two random shares that
/// do not XOR to any document's file key.
fn inconsistent_double_slot(doc_id: &[u8; 16]) -> Vec<Vec<u8>> {
    let hr_pub = *hr().public_key().key().as_bytes();
    vec![
        raw::org_stanza(doc_id, HR_LABEL, HR_KID, 2, &hr_pub, &raw::random()),
        raw::x25519_stanza(doc_id, alice().public_key().as_bytes(), &raw::random()),
    ]
}

/// Replace stanza `stanza` of slot `slot` (an X25519 stanza to `to`) with an authentic wrap of
/// a fresh random share. The header MAC is kept, so the joined key no longer matches it.
fn replace_share(mut sealed: Vec<u8>, slot: usize, stanza: usize, to: &Identity) -> Vec<u8> {
    let header = kluis_core::Header::parse(&sealed).unwrap();
    let doc_id = header.doc_id().0;
    let l = layout(&sealed);
    let s = l.slots[slot].stanzas[stanza];
    assert_eq!(s.kind, 0x02);
    let (e, body) = raw::wrap(
        raw::X25519_INFO,
        &raw::x25519_aad(&doc_id),
        to.public_key().as_bytes(),
        &raw::random::<32>(),
    );
    let at = s.ephemeral(&sealed);
    sealed[at..at + 32].copy_from_slice(&e);
    sealed[at + 32..at + 80].copy_from_slice(&body);
    sealed
}

fn prefix_vectors(v: &mut Vec<Vector>) {
    v.push(fail(
        "not_sealed_text",
        "not-sealed",
        &[K_ALICE],
        "Plain text: no magic bytes.",
        b"This is not a kluis document.\n".to_vec(),
    ));
    v.push(fail(
        "not_sealed_empty",
        "not-sealed",
        &[K_ALICE],
        "An empty input.",
        Vec::new(),
    ));
    v.push(fail(
        "not_sealed_age",
        "not-sealed",
        &[K_ALICE],
        "The start of an age file.",
        b"age-encryption.org/v1\n-> X25519 SVrzdFfkPxf0LPHOUGB1gNb9E5Vr8EUDa9kxk04iQ0o\n".to_vec(),
    ));
    v.push(fail(
        "not_sealed_short",
        "not-sealed",
        &[K_ALICE],
        "Three bytes, \"KLU\": shorter than the magic.",
        b"KLU".to_vec(),
    ));
    let b = small_to_alice();
    v.push(fail(
        "malformed_prefix_cut",
        "malformed-header",
        &[K_ALICE],
        "The first 8 bytes of a valid document (magic and version): the input ends inside\n\
         the 12-byte prefix, after a complete magic.",
        b[..8].to_vec(),
    ));
    let mut b = small_to_alice();
    set_u16(&mut b, 6, 2);
    v.push(fail(
        "malformed_prefix_cut_version_2",
        "malformed-header",
        &[K_ALICE],
        "The first 11 bytes of a valid document with its version field set to 2: input\n\
         shorter than 12 bytes that starts with the magic is a cut header whatever its\n\
         version bytes say; the version is only checked once 12 bytes are there.",
        b[..11].to_vec(),
    ));
    let mut b = small_to_alice();
    b[layout::MAGIC_AT] = b'k';
    v.push(fail(
        "not_sealed_magic_case",
        "not-sealed",
        &[K_ALICE],
        "A valid document whose first magic byte was changed from 'K' to 'k'.",
        b,
    ));

    for (name, version) in [
        ("unsupported_version_2", 2u16),
        ("unsupported_version_0", 0),
    ] {
        let mut b = small_to_alice();
        set_u16(&mut b, 6, version);
        v.push(fail(
            name,
            "unsupported-version",
            &[K_ALICE],
            &format!("A valid document with its version field (bytes 6..8) set to {version}."),
            b,
        ));
    }

    let mut b = small_to_alice();
    set_header_len(&mut b, kluis_core::Header::MAX_LEN + 1);
    v.push(fail(
        "header_size_too_large",
        "header-size",
        &[K_ALICE],
        "A valid document whose header_len field (bytes 8..12) declares 65537 bytes, one more\n\
         than MAX_HEADER_LEN. Rejected before anything is allocated or read.",
        b,
    ));
    let mut b = small_to_alice();
    set_header_len(&mut b, 129);
    v.push(fail(
        "header_size_too_small",
        "header-size",
        &[K_ALICE],
        "header_len declares 129 bytes, one less than the smallest possible header (130).",
        b,
    ));
    let mut b = small_to_alice();
    set_header_len(&mut b, u32::MAX as usize);
    v.push(fail(
        "header_size_u32_max",
        "header-size",
        &[K_ALICE],
        "header_len declares 0xFFFFFFFF bytes.",
        b,
    ));
}

fn header_vectors(v: &mut Vec<Vector>) {
    // Slot count (byte 44).
    for (name, count) in [("slot_count_17", 17u8), ("slot_count_0", 0)] {
        let mut b = small_to_alice();
        b[layout::SLOT_COUNT_AT] = count;
        v.push(fail(
            name,
            "slot-count",
            &[K_ALICE],
            &format!("A valid one-slot document with its slot count (byte 44) set to {count}."),
            b,
        ));
    }

    // Stanza body length.
    let mut b = small_to_alice();
    let s = layout(&b).slots[0].stanzas[0];
    set_u16(&mut b, s.start + 1, 79);
    let at = s.body(&b) + 47;
    remove_in_header(&mut b, at, 1);
    v.push(fail(
        "stanza_body_length_79",
        "stanza-body-length",
        &[K_ALICE],
        "An X25519 stanza whose content is 79 bytes (E and a 47-byte body): the last body\n\
         byte was removed, the stanza length and header_len were lowered to match.",
        b,
    ));
    let mut b = small_to_alice();
    let s = layout(&b).slots[0].stanzas[0];
    set_u16(&mut b, s.start + 1, 81);
    let at = s.body(&b) + 48;
    insert_in_header(&mut b, at, &[0]);
    v.push(fail(
        "stanza_body_length_81",
        "stanza-body-length",
        &[K_ALICE],
        "An X25519 stanza whose content is 81 bytes (E and a 49-byte body): a zero byte was\n\
         appended to the body, the stanza length and header_len were raised to match.",
        b,
    ));
    let mut b = small_to_hr();
    let s = layout(&b).slots[0].stanzas[0];
    set_u16(&mut b, s.start + 1, (s.len - 1) as u16);
    let at = s.body(&b) + 47;
    remove_in_header(&mut b, at, 1);
    v.push(fail(
        "stanza_body_length_org_47",
        "stanza-body-length",
        &[K_HR],
        "An org stanza (label hr, kid 1) with a 47-byte body; lengths kept consistent.",
        b,
    ));

    // Malformed headers.
    let mut b = small_to_alice();
    let at = layout(&b).slots[0].at;
    b[at] = 3;
    v.push(fail(
        "malformed_three_stanzas",
        "malformed-header",
        &[K_ALICE],
        "The slot's stanza count was set to 3 (a slot holds one or two stanzas).",
        b,
    ));
    let mut b = small_to_alice();
    let at = layout(&b).slots[0].at;
    b[at] = 0;
    v.push(fail(
        "malformed_zero_stanzas",
        "malformed-header",
        &[K_ALICE],
        "The slot's stanza count was set to 0.",
        b,
    ));
    let mut b = small_to_hr();
    let s = layout(&b).slots[0].stanzas[0];
    let at = s.slot_kind(&b);
    b[at] = 2;
    v.push(fail(
        "malformed_slot_kind_mismatch",
        "malformed-header",
        &[K_HR],
        "A one-stanza slot whose org stanza says slot kind 2 (half of a double key).",
        b,
    ));
    let mut b = small_to_hr();
    let s = layout(&b).slots[0].stanzas[0];
    let at = s.slot_kind(&b);
    b[at] = 3;
    v.push(fail(
        "malformed_unknown_slot_kind",
        "malformed-header",
        &[K_HR],
        "An org stanza with slot kind 3 (only 1 and 2 exist).",
        b,
    ));
    let mut b = small_to_hr();
    let s = layout(&b).slots[0].stanzas[0];
    let at = s.slot_kind(&b);
    b[at] = 3;
    set_u16(&mut b, s.start + 1, (s.len - 1) as u16);
    let at = s.body(&b) + 47;
    remove_in_header(&mut b, at, 1);
    v.push(fail(
        "malformed_unknown_slot_kind_short_body",
        "malformed-header",
        &[K_HR],
        "An org stanza with slot kind 3 and a 47-byte body: an unknown slot kind is checked in\n\
         byte order, before the body length (FORMAT.md 4 rule 4, 5.2), so this is\n\
         malformed-header, not stanza-body-length.",
        b,
    ));
    let mut b = small_to_hr();
    let s = layout(&b).slots[0].stanzas[0];
    b[s.content() + 1] = b'/';
    v.push(fail(
        "malformed_bad_label",
        "malformed-header",
        &[K_HR],
        "An org stanza whose label \"hr\" became \"/r\" (outside [A-Za-z0-9._-]).",
        b,
    ));
    let mut b = small_to_hr();
    let s = layout(&b).slots[0].stanzas[0];
    b[s.content()] = 0;
    set_u16(&mut b, s.start + 1, (s.len - 2) as u16);
    remove_in_header(&mut b, s.content() + 1, 2);
    v.push(fail(
        "malformed_empty_label",
        "malformed-header",
        &[K_HR],
        "An org stanza with an empty label: label_len 0 and the two label bytes removed; the\n\
         stanza length and header_len were lowered to match.",
        b,
    ));
    let mut b = small_to_hr();
    let s = layout(&b).slots[0].stanzas[0];
    b[s.content()] = 65;
    set_u16(&mut b, s.start + 1, (s.len + 63) as u16);
    insert_in_header(&mut b, s.content() + 3, &[b'a'; 63]);
    v.push(fail(
        "malformed_label_65",
        "malformed-header",
        &[K_HR],
        "An org stanza with a 65-byte label (\"hr\" followed by 63 'a'), one more than\n\
         MAX_LABEL_LEN; label_len, the stanza length and header_len were raised to match.",
        b,
    ));
    let mut b = small_to_alice();
    let s = layout(&b).slots[0].stanzas[0];
    set_u16(&mut b, s.start + 1, 31);
    remove_in_header(&mut b, s.content() + 31, s.len - 31);
    v.push(fail(
        "malformed_x25519_content_31",
        "malformed-header",
        &[K_ALICE],
        "An X25519 stanza whose content is 31 bytes, too short for its 32-byte E: a field\n\
         runs past the end of the content (not a body-length error). The stanza length and\n\
         header_len were lowered to match.",
        b,
    ));
    let mut b = small_to_hr();
    let s = layout(&b).slots[0].stanzas[0];
    let keep = s.ephemeral(&b) + 31 - s.content();
    set_u16(&mut b, s.start + 1, keep as u16);
    remove_in_header(&mut b, s.content() + keep, s.len - keep);
    v.push(fail(
        "malformed_org_content_short",
        "malformed-header",
        &[K_HR],
        "An org stanza (label hr) cut before its body: its content is 39 bytes and ends one\n\
         byte into E, so a fixed field runs past the end of the content. The stanza length\n\
         and header_len were lowered to match.",
        b,
    ));
    let mut b = small_to_hr();
    let s = layout(&b).slots[0].stanzas[0];
    let keep = s.body(&b) - s.content();
    set_u16(&mut b, s.start + 1, keep as u16);
    remove_in_header(&mut b, s.content() + keep, s.len - keep);
    v.push(fail(
        "stanza_body_length_org_empty_body",
        "stanza-body-length",
        &[K_HR],
        "An org stanza (label hr) whose content is 40 bytes and ends exactly after E: the\n\
         fixed fields are complete and the body is empty (0 bytes, not 48). The stanza\n\
         length and header_len were lowered to match.",
        b,
    ));
    let mut b = small_to_hr();
    let s = layout(&b).slots[0].stanzas[0];
    let at = s.slot_kind(&b);
    b[at] = 2;
    set_u16(&mut b, s.start + 1, (s.len - 1) as u16);
    let at = s.body(&b) + 47;
    remove_in_header(&mut b, at, 1);
    v.push(fail(
        "stanza_body_length_slot_kind_mismatch",
        "stanza-body-length",
        &[K_HR],
        "A one-stanza slot whose org stanza says slot kind 2 and has a 47-byte body. The\n\
         slot-kind check runs after the whole stanza is parsed, so the body length is\n\
         reported first (FORMAT.md 4, rule 4).",
        b,
    ));
    let mut b = small_to_alice();
    let s = layout(&b).slots[0].stanzas[0];
    set_u16(&mut b, s.start + 1, 1025);
    v.push(fail(
        "malformed_stanza_too_long",
        "malformed-header",
        &[K_ALICE],
        "An X25519 stanza declaring 1025 content bytes, above MAX_STANZA_LEN (1024).",
        b,
    ));
    let mut b = small_to_alice();
    let s = layout(&b).slots[0].stanzas[0];
    set_u16(&mut b, s.start + 1, 1000);
    v.push(fail(
        "malformed_stanza_past_end",
        "malformed-header",
        &[K_ALICE],
        "An X25519 stanza declaring 1000 content bytes, more than the header holds.",
        b,
    ));
    let mut b = small_to_alice();
    let at = layout(&b).meta_len_at;
    set_u16(&mut b, at, 46);
    v.push(fail(
        "malformed_metadata_len",
        "malformed-header",
        &[K_ALICE],
        "The sealed-metadata length set to 46, below the smallest sealed block (31 + 16).",
        b,
    ));
    let mut b = small_to_alice();
    let at = layout(&b).mac_at;
    insert_in_header(&mut b, at, &[0]);
    v.push(fail(
        "malformed_bytes_before_mac",
        "malformed-header",
        &[K_ALICE],
        "One extra byte between the sealed metadata and the MAC; header_len raised to match.",
        b,
    ));
    let b = small_to_alice();
    let len = header_len(&b);
    v.push(fail(
        "malformed_header_cut",
        "malformed-header",
        &[K_ALICE],
        "A valid document cut 10 bytes before the end of its header.",
        b[..len - 10].to_vec(),
    ));

    // Keys.
    v.push(fail(
        "no_matching_key_wrong_identity",
        "no-matching-key",
        &[K_BOB],
        "Sealed to alice, opened with bob's identity.",
        small_to_alice(),
    ));
    v.push(fail(
        "no_matching_key_wrong_kid",
        "no-matching-key",
        &[Key::Label(HR_LABEL, 2, HR)],
        "Sealed to label hr kid 1, opened with a label key for hr kid 2 (same secret).",
        small_to_hr(),
    ));
    let slot = Slot::double(to_hr(), Recipient::Key(alice().public_key())).unwrap();
    v.push(fail(
        "no_matching_key_double_key_one_key",
        "no-matching-key",
        &[K_ALICE],
        "A double-key slot (hr/1 + alice) opened with alice's identity alone.",
        seal(&[slot], &Metadata::default(), &rule(100)),
    ));
    v.push(fail(
        "no_matching_key_doc_id_flipped",
        "no-matching-key",
        &[K_ALICE],
        "One bit of doc_id (byte 12) flipped. The doc_id is in every stanza's AAD, so the\n\
         stanza no longer unwraps: no key, before the MAC is ever checked.",
        flip(small_to_alice(), 12),
    ));
    let mut d = raw::Doc::new(10);
    d.slots.push(vec![raw::stanza(0x7f, b"unknown")]);
    let sealed = [d.header(), d.payload(&rule(10))].concat();
    v.push(fail(
        "no_matching_key_unknown_stanza_only",
        "no-matching-key",
        &[K_ALICE, K_HR],
        "Independent implementation: the only slot holds a stanza of unknown type 0x7f.",
        sealed,
    ));

    // Header MAC.
    v.push(fail(
        "header_mac_payload_salt",
        "header-mac",
        &[K_ALICE],
        "One bit of the payload salt (byte 28) flipped: only the header MAC covers it, so the\n\
         stanza unwraps and the recovered key fails the MAC.",
        flip(small_to_alice(), 28),
    ));
    let b = small_to_alice();
    let at = layout(&b).mac_at + 31;
    v.push(fail(
        "header_mac_tag",
        "header-mac",
        &[K_ALICE],
        "One bit of the header MAC itself flipped.",
        flip(b, at),
    ));
    let b = small_to_alice();
    let at = layout(&b).meta_len_at + 2;
    v.push(fail(
        "header_mac_metadata_bit",
        "header-mac",
        &[K_ALICE],
        "One bit of the sealed metadata flipped: the MAC is checked before the metadata is\n\
         decrypted.",
        flip(b, at),
    ));
    let slot = Slot::double(to_hr(), Recipient::Key(alice().public_key())).unwrap();
    let sealed = replace_share(
        seal(&[slot], &Metadata::default(), &rule(100)),
        0,
        1,
        &alice(),
    );
    v.push(fail(
        "header_mac_double_key_wrong_share",
        "header-mac",
        &[K_HR, K_ALICE],
        "A double-key slot (hr/1 + alice) whose alice stanza's E and body were replaced by an\n\
         authentic wrap of a different random share for the same doc_id and recipient, the\n\
         original header MAC kept: both stanzas unwrap, the joined key fails the MAC. (The\n\
         changed stanza bytes alone would also break the MAC; see\n\
         header_mac_double_key_inconsistent_shares for the pure joined-key case.)",
        sealed,
    ));

    let mut d = raw::Doc::new(100);
    d.slots.push(inconsistent_double_slot(&d.doc_id));
    let sealed = [d.header(), d.payload(&rule(100))].concat();
    v.push(fail(
        "header_mac_double_key_inconsistent_shares",
        "header-mac",
        &[K_HR, K_ALICE],
        "Independent implementation: one double-key slot (hr/1 + alice) whose shares are\n\
         authentic wraps of two random values that do not XOR to the file key; the header\n\
         MAC is correct for the real file key over these exact header bytes, so the only\n\
         fault is the joined key.",
        sealed,
    ));

    // Zero shared secret.
    let mut b = small_to_alice();
    let at = layout(&b).slots[0].stanzas[0].ephemeral(&b);
    b[at..at + 32].fill(0);
    v.push(fail(
        "zero_shared_secret_x25519",
        "zero-shared-secret",
        &[K_ALICE],
        "An X25519 stanza whose E is 32 zero bytes (a low-order point).",
        b,
    ));
    let mut b = small_to_hr();
    let at = layout(&b).slots[0].stanzas[0].ephemeral(&b);
    b[at..at + 32].fill(0);
    b[at] = 1;
    v.push(fail(
        "zero_shared_secret_org",
        "zero-shared-secret",
        &[K_HR],
        "An org stanza whose E is the low-order point 1 (01 00 .. 00).",
        b,
    ));

    v.push(fail(
        "unwrap_refused",
        "unwrap",
        &[Key::Refusing(HR_LABEL, HR_KID)],
        "Sealed to label hr/1; the only key holder is a key server stand-in that accepts the\n\
         stanza and refuses it (UnwrapError::Denied).",
        small_to_hr(),
    ));
}

/// Metadata plaintext (flags 0x05: size 10, padded name) with `name` in a field of `field`
/// bytes, and optionally one non-zero padding byte at `bad` (an offset in the field).
fn padded_name(name: &[u8], field: usize, bad: Option<usize>) -> Vec<u8> {
    let mut m = raw::metadata(0x05, 10, 0, 0, 0, name);
    m.resize(31 + field, 0);
    if let Some(at) = bad {
        m[31 + at] = 1;
    }
    m
}

fn metadata_vectors(v: &mut Vec<Vector>) {
    let mut d = raw::Doc::new(10);
    d.metadata_plain = padded_name(b"report.pdf", 256, None);
    let d = d.add_key_slot(alice().public_key().as_bytes());
    v.push(ok(
        "success_padded_name_independent",
        &[K_ALICE],
        "Independent implementation: metadata flags 0x05, the name \"report.pdf\" followed by\n\
         246 zero bytes (one 256-byte bucket, FORMAT.md 7.1); size 10, no payload padding.",
        rule(10),
        true,
        Metadata {
            name_padded: true,
            ..with_size(10).name("report.pdf")
        },
        [d.header(), d.payload(&rule(10))].concat(),
    ));

    let a = *alice().public_key().as_bytes();
    let p = rule(10);

    let mut d = raw::Doc::new(10);
    d.metadata_plain = raw::metadata(0x81, 10, 0, 0, 0, b"");
    let d = d.add_key_slot(&a);
    v.push(fail(
        "metadata_unknown_flag",
        "metadata",
        &[K_ALICE],
        "Independent implementation: valid MAC, metadata flags 0x81 (0x80 is unknown).",
        [d.header(), d.payload(&p)].concat(),
    ));

    let mut d = raw::Doc::new(10);
    d.metadata_key = Some(raw::random());
    let d = d.add_key_slot(&a);
    v.push(fail(
        "metadata_wrong_key",
        "metadata",
        &[K_ALICE],
        "Independent implementation: valid MAC, metadata sealed under a random key.",
        [d.header(), d.payload(&p)].concat(),
    ));

    let mut d = raw::Doc::new(10);
    d.metadata_plain = raw::metadata(0x01, 10, 0, 0, 0, &[0xff, 0xfe]);
    let d = d.add_key_slot(&a);
    v.push(fail(
        "metadata_name_not_utf8",
        "metadata",
        &[K_ALICE],
        "Independent implementation: valid MAC, file name bytes ff fe (not UTF-8).",
        [d.header(), d.payload(&p)].concat(),
    ));

    let mut d = raw::Doc::new(10);
    d.metadata_plain = raw::metadata(0x00, 0, 0, 0, 5, b"");
    let d = d.add_key_slot(&a);
    v.push(fail(
        "metadata_padding_without_size",
        "metadata",
        &[K_ALICE],
        "Independent implementation: valid MAC, padding 5 without the size flag.",
        [d.header(), d.payload(&p)].concat(),
    ));

    let mut name_len = raw::metadata(0x01, 10, 0, 0, 0, b"abc");
    name_len[29..31].copy_from_slice(&4u16.to_be_bytes());
    for (name, plain, comment) in [
        (
            "metadata_time_without_flag",
            raw::metadata(0x01, 10, 1_700_000_000, 0, 0, b""),
            "Independent implementation: valid MAC, mtime_secs 1700000000 while the time\n\
             flag (0x02) is clear.",
        ),
        (
            "metadata_nanos_one_second",
            raw::metadata(0x03, 10, 1_700_000_000, 1_000_000_000, 0, b""),
            "Independent implementation: valid MAC, time flag set and mtime_nanos\n\
             1000000000 (must be below 10^9).",
        ),
        (
            "metadata_mtime_before_1601",
            raw::metadata(0x03, 10, -11_644_473_601, 0, 0, b""),
            "Independent implementation: valid MAC, mtime_secs -11644473601: one second\n\
             before 1601-01-01T00:00:00Z, the start of the range of FORMAT.md 7.",
        ),
        (
            "metadata_mtime_after_9999",
            raw::metadata(0x03, 10, 253_402_300_800, 0, 0, b""),
            "Independent implementation: valid MAC, mtime_secs 253402300800:\n\
             10000-01-01T00:00:00Z, one second after the end of the range of FORMAT.md 7.",
        ),
        (
            "metadata_name_len_mismatch",
            name_len,
            "Independent implementation: valid MAC, name_len 4 but 3 name bytes (\"abc\")\n\
             follow.",
        ),
        (
            "metadata_name_padding_nonzero",
            padded_name(b"a", 256, Some(200)),
            "Independent implementation: valid MAC, flags 0x05 (size, padded name), name \"a\"\n\
             in a 256-byte field whose byte 200 is 01: name padding must be zero (FORMAT.md 7.1).",
        ),
        (
            "metadata_name_padding_short",
            padded_name(b"a", 255, None),
            "Independent implementation: valid MAC, flags 0x05, name \"a\" in a 255-byte field:\n\
             a padded name takes a multiple of 256 bytes (FORMAT.md 7.1).",
        ),
        (
            "metadata_name_padding_extra_bucket",
            padded_name(b"a", 512, None),
            "Independent implementation: valid MAC, flags 0x05, name \"a\" in a 512-byte field:\n\
             a padded name takes the smallest bucket that holds it (FORMAT.md 7.1).",
        ),
        (
            "metadata_size_padding_overflow",
            raw::metadata(0x01, 10, 0, 0, u64::MAX - 9, b""),
            "Independent implementation: valid MAC, size 10 and padding 2^64 - 10: size +\n\
             padding is 2^64, one more than a u64 holds.",
        ),
    ] {
        let mut d = raw::Doc::new(10);
        d.metadata_plain = plain;
        let d = d.add_key_slot(&a);
        v.push(fail(
            name,
            "metadata",
            &[K_ALICE],
            comment,
            [d.header(), d.payload(&p)].concat(),
        ));
    }

    // Size mismatch.
    let d = raw::Doc::new(10).add_key_slot(&a);
    v.push(fail(
        "size_mismatch_short",
        "size-mismatch",
        &[K_ALICE],
        "Independent implementation: metadata declares 10 bytes, the payload holds 5.",
        [d.header(), d.payload(&rule(5))].concat(),
    ));
    let d = raw::Doc::new(10).add_key_slot(&a);
    v.push(fail(
        "size_mismatch_long",
        "size-mismatch",
        &[K_ALICE],
        "Independent implementation: metadata declares 10 bytes, the payload holds 20.",
        [d.header(), d.payload(&rule(20))].concat(),
    ));
    let mut d = raw::Doc::new(10);
    d.metadata_plain = raw::metadata(0x01, 10, 0, 0, 6, b"");
    let d = d.add_key_slot(&a);
    let mut body = rule(16);
    body[12] = 1;
    v.push(fail(
        "size_mismatch_nonzero_padding",
        "size-mismatch",
        &[K_ALICE],
        "Independent implementation: 10 bytes plus 6 bytes of padding, one padding byte\n\
         non-zero.",
        [d.header(), d.payload(&body)].concat(),
    ));
    let d = raw::Doc::new(CHUNK as u64 + 10).add_key_slot(&a);
    v.push(fail(
        "size_mismatch_across_chunks",
        "size-mismatch",
        &[K_ALICE],
        "Independent implementation: metadata declares 64 KiB + 10 bytes, the payload is\n\
         one full final chunk (64 KiB).",
        [d.header(), d.payload(&rule(CHUNK))].concat(),
    ));
}

fn payload_vectors(v: &mut Vec<Vector>) {
    let b = small_to_alice();
    let at = header_len(&b) + 40;
    v.push(fail(
        "chunk_auth_flipped_payload_bit",
        "chunk-auth",
        &[K_ALICE],
        "One bit of the payload ciphertext (chunk 0) flipped.",
        flip(b, at),
    ));

    let b = seal(&[to_alice()], &Metadata::default(), &rule(2 * CHUNK + 1));
    let h = header_len(&b);
    let mut r = b[..h].to_vec();
    r.extend_from_slice(&b[h + SEALED_CHUNK..h + 2 * SEALED_CHUNK]);
    r.extend_from_slice(&b[h..h + SEALED_CHUNK]);
    r.extend_from_slice(&b[h + 2 * SEALED_CHUNK..]);
    v.push(fail(
        "chunk_auth_reordered_chunks",
        "chunk-auth",
        &[K_ALICE],
        "128 KiB + 1 bytes (two full chunks and a 1-byte final chunk) with chunks 0 and 1\n\
         swapped.",
        r,
    ));

    let b = seal(&[to_alice()], &Metadata::default(), &rule(CHUNK + 1));
    let h = header_len(&b);
    v.push(fail(
        "chunk_auth_truncated_mid_chunk",
        "chunk-auth",
        &[K_ALICE],
        "64 KiB + 1 bytes cut in the middle of chunk 0 (40000 sealed payload bytes kept):\n\
         a cut inside a chunk cannot be told from a damaged final chunk.",
        b[..h + 40_000].to_vec(),
    ));

    let b = seal(&[to_alice()], &Metadata::default(), &rule(1000));
    let mut t = b.clone();
    t.push(0);
    v.push(fail(
        "chunk_auth_trailing_after_short_chunk",
        "chunk-auth",
        &[K_ALICE],
        "1000 bytes (one short final chunk) with one zero byte appended: the extra byte\n\
         becomes part of the final chunk, which then fails authentication.",
        t,
    ));

    let a = *alice().public_key().as_bytes();
    let p = rule(CHUNK);
    let d = raw::Doc::new(CHUNK as u64).add_key_slot(&a);
    v.push(fail(
        "chunk_auth_empty_final_chunk",
        "chunk-auth",
        &[K_ALICE],
        "Independent implementation: 64 KiB as a full non-final chunk followed by an empty\n\
         final chunk (only an empty payload may have an empty final chunk).",
        [d.header(), d.chunks(&[(&p[..], false), (&[][..], true)])].concat(),
    ));
    let d = raw::Doc::new(10).add_key_slot(&a);
    v.push(fail(
        "chunk_auth_no_last_flag",
        "chunk-auth",
        &[K_ALICE],
        "Independent implementation: a single 10-byte chunk sealed with the last-chunk flag\n\
         0x00.",
        [d.header(), d.chunks(&[(&rule(10)[..], false)])].concat(),
    ));
    let p = rule(CHUNK + 10);
    let d = raw::Doc::new(p.len() as u64).add_key_slot(&a);
    v.push(fail(
        "chunk_auth_last_flag_too_early",
        "chunk-auth",
        &[K_ALICE],
        "Independent implementation: a full chunk 0 sealed with the last-chunk flag 0x01,\n\
         followed by a 10-byte chunk 1 also flagged last.",
        [
            d.header(),
            d.chunks(&[(&p[..CHUNK], true), (&p[CHUNK..], true)]),
        ]
        .concat(),
    ));

    let b = seal(&[to_alice()], &Metadata::default(), &rule(CHUNK + 1));
    let h = header_len(&b);
    v.push(fail(
        "truncated_at_chunk_boundary",
        "truncated",
        &[K_ALICE],
        "64 KiB + 1 bytes with its final 1-byte chunk removed: the input ends at a chunk\n\
         boundary after a non-final chunk.",
        b[..h + SEALED_CHUNK].to_vec(),
    ));
    let b = small_to_alice();
    let h = header_len(&b);
    v.push(fail(
        "truncated_no_payload",
        "truncated",
        &[K_ALICE],
        "A valid header and no payload at all.",
        b[..h].to_vec(),
    ));

    let b = seal(&[to_alice()], &Metadata::default(), &rule(CHUNK));
    let mut t = b.clone();
    t.push(0);
    v.push(fail(
        "trailing_data_one_byte",
        "trailing-data",
        &[K_ALICE],
        "Exactly 64 KiB (one full final chunk) with one zero byte appended.",
        t,
    ));
    let mut t = b.clone();
    t.extend_from_slice(&[0xaa; 16]);
    v.push(fail(
        "trailing_data_sixteen_bytes",
        "trailing-data",
        &[K_ALICE],
        "Exactly 64 KiB (one full final chunk) with 16 bytes appended (too few to be a chunk).",
        t,
    ));
    let mut t = b;
    t.extend_from_slice(&[0xaa; 17]);
    v.push(fail(
        "chunk_auth_trailing_17_after_full_chunk",
        "chunk-auth",
        &[K_ALICE],
        "Exactly 64 KiB (one full final chunk) with 17 bytes appended: enough to be a final\n\
         chunk, so the reader opens chunk 0 as a non-last chunk, which fails (FORMAT.md 8.4).",
        t,
    ));
}

/// Which vectors to write.
enum Select {
    /// Every vector (overwrites the existing files).
    All,
    /// Only vectors whose file does not exist yet.
    Missing,
    /// Only the named vectors (overwriting them).
    Only(Vec<String>),
}

// Reply vectors (FORMAT.md §15): `reply_*.rvec`, fully deterministic (fixed secrets, no
// randomness), so they are rewritten on every run with the same bytes.

/// The client's reply key secret `r`.
const REPLY_CLIENT: &str = "3f1c2b8e9a0d4c6b7e5f1a2d3c4b5a69788796a5b4c3d2e1f001122334455667";
/// The server's reply secret `s` (fresh per reply in real use; fixed here).
const REPLY_SERVER: &str = "c0ffee00112233445566778899aabbccddeeff00112233445566778899aabb0c";

/// One item of a reply vector.
enum ReplyItem {
    /// A released share: (doc_id the request item names, nonce, body, expected share or
    /// `None` when the client must fail to open it).
    Sealed([u8; 16], [u8; 12], Vec<u8>, Option<[u8; 32]>),
    /// An item the server refused: no nonce, no body.
    Refused([u8; 16]),
}

struct ReplyVector {
    name: &'static str,
    comment: &'static str,
    expect: &'static str,
    server_public: [u8; 32],
    items: Vec<ReplyItem>,
}

impl ReplyVector {
    fn render(&self) -> String {
        let mut s = String::new();
        for line in self.comment.lines() {
            writeln!(s, "comment: {line}").unwrap();
        }
        writeln!(s, "expect: {}", self.expect).unwrap();
        writeln!(s, "client-secret: {REPLY_CLIENT}").unwrap();
        writeln!(s, "server-secret: {REPLY_SERVER}").unwrap();
        writeln!(s, "server-public: {}", hex::encode(self.server_public)).unwrap();
        for item in &self.items {
            match item {
                ReplyItem::Sealed(doc, nonce, body, share) => writeln!(
                    s,
                    "item: {} sealed {} {} {}",
                    hex::encode(doc),
                    hex::encode(nonce),
                    hex::encode(body),
                    share.map_or("fails".to_owned(), hex::encode)
                )
                .unwrap(),
                ReplyItem::Refused(doc) => {
                    writeln!(s, "item: {} refused", hex::encode(doc)).unwrap()
                }
            }
        }
        s
    }
}

/// `RK = HKDF(X25519(s, R), S ‖ R, "kluis/v1/reply")`.
fn reply_key() -> [u8; 32] {
    let s = x25519_dalek::StaticSecret::from(secret(REPLY_SERVER));
    let r = x25519_dalek::StaticSecret::from(secret(REPLY_CLIENT));
    let r_pub = x25519_dalek::PublicKey::from(&r).to_bytes();
    let s_pub = x25519_dalek::PublicKey::from(&s).to_bytes();
    let z = s.diffie_hellman(&x25519_dalek::PublicKey::from(r_pub));
    raw::hkdf(z.as_bytes(), &[s_pub, r_pub].concat(), b"kluis/v1/reply")
}

fn reply_nonce(j: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&j.to_be_bytes());
    n
}

fn reply_vectors() -> Vec<ReplyVector> {
    let rk = reply_key();
    let s_pub =
        x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(secret(REPLY_SERVER)))
            .to_bytes();
    let doc = |b: u8| [b; 16];
    let share = |b: u8| [b; 32];
    let seal = |j: u64, d: [u8; 16], sh: [u8; 32]| raw::seal(&rk, reply_nonce(j), &d, &sh);
    let ok = |j: u64, d: u8, sh: u8| {
        ReplyItem::Sealed(
            doc(d),
            reply_nonce(j),
            seal(j, doc(d), share(sh)),
            Some(share(sh)),
        )
    };
    let mut flipped = seal(0, doc(1), share(0xa1));
    flipped[40] ^= 0x01;
    vec![
        ReplyVector {
            name: "reply_single",
            comment: "One released share: j = 0, nonce 0^4 || BE64(0), AAD = the item's doc_id.",
            expect: "ok",
            server_public: s_pub,
            items: vec![ok(0, 1, 0xa1)],
        },
        ReplyVector {
            name: "reply_batch_with_refused_item",
            comment: "A batch of four request items: the second was refused (an error item, no\n\
                      nonce, no body). j counts released shares, not item positions: the\n\
                      items after the refusal use j = 1 and j = 2. The client reports the\n\
                      refused item as Unwrap and opens the others.",
            expect: "ok",
            server_public: s_pub,
            items: vec![
                ok(0, 1, 0xa1),
                ReplyItem::Refused(doc(2)),
                ok(1, 3, 0xa3),
                ok(2, 4, 0xa4),
            ],
        },
        ReplyVector {
            name: "reply_wrong_doc_id",
            comment: "The body was sealed for doc_id 01.. but answers a request item for doc_id\n\
                      02..: the AAD differs, the body does not open (Unwrap), and no share\n\
                      reaches the header MAC.",
            expect: "ok",
            server_public: s_pub,
            items: vec![ReplyItem::Sealed(
                doc(2),
                reply_nonce(0),
                seal(0, doc(1), share(0xa1)),
                None,
            )],
        },
        ReplyVector {
            name: "reply_flipped_body",
            comment: "One bit of the tag flipped: the body does not open (Unwrap).",
            expect: "ok",
            server_public: s_pub,
            items: vec![ReplyItem::Sealed(doc(1), reply_nonce(0), flipped, None)],
        },
        ReplyVector {
            name: "reply_changed_nonce",
            comment: "Sealed with j = 0, sent with the nonce of j = 5: the client opens with the\n\
                      nonce sent, so the body does not open (Unwrap).",
            expect: "ok",
            server_public: s_pub,
            items: vec![ReplyItem::Sealed(
                doc(1),
                reply_nonce(5),
                seal(0, doc(1), share(0xa1)),
                None,
            )],
        },
        ReplyVector {
            name: "reply_nonce_not_a_counter",
            comment: "A nonce that is not of the form 0^4 || BE64(j) (all bytes 0x77) that the\n\
                      body was sealed with: a client need not check the form, and opens it.",
            expect: "ok",
            server_public: s_pub,
            items: vec![ReplyItem::Sealed(
                doc(1),
                [0x77; 12],
                raw::seal(&rk, [0x77; 12], &doc(1), &share(0xa1)),
                Some(share(0xa1)),
            )],
        },
        ReplyVector {
            name: "reply_low_order_server_key",
            comment: "S is the all-zero point (low order): X25519(r, S) is all zero, and the\n\
                      client rejects the whole reply (ZeroSharedSecret) before opening any item.",
            expect: "zero-shared-secret",
            server_public: [0; 32],
            items: vec![ReplyItem::Sealed(
                doc(1),
                reply_nonce(0),
                seal(0, doc(1), share(0xa1)),
                None,
            )],
        },
    ]
}

const USAGE: &str = "usage: gen_vectors <output directory> [--missing | --only NAME...]";

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().expect(USAGE);
    let select = match args.next().as_deref() {
        None => Select::All,
        Some("--missing") => Select::Missing,
        Some("--only") => Select::Only(args.by_ref().collect()),
        Some(other) => panic!("unknown argument {other:?}\n{USAGE}"),
    };
    if let Some(extra) = args.next() {
        panic!("unexpected argument {extra:?}\n{USAGE}");
    }
    let dir = Path::new(&dir);
    std::fs::create_dir_all(dir).expect("create the output directory");

    let mut v = Vec::new();
    success_vectors(&mut v);
    prefix_vectors(&mut v);
    header_vectors(&mut v);
    metadata_vectors(&mut v);
    payload_vectors(&mut v);

    for (i, a) in v.iter().enumerate() {
        assert!(
            v[..i].iter().all(|b| b.name != a.name),
            "two vectors named {}",
            a.name
        );
    }
    if let Select::Only(names) = &select {
        assert!(!names.is_empty(), "--only needs at least one name\n{USAGE}");
        for n in names {
            assert!(
                v.iter().any(|x| x.name == n.as_str()),
                "no vector named {n:?}"
            );
        }
    }

    for r in reply_vectors() {
        let path = dir.join(format!("{}.rvec", r.name));
        std::fs::write(&path, r.render()).expect("write reply vector");
        println!("{:<44} {}", r.name, r.expect);
    }

    let (mut written, mut skipped, mut total, mut mismatches) = (0, 0, 0, 0);
    for vec in &v {
        let path = dir.join(format!("{}.vec", vec.name));
        let wanted = match &select {
            Select::All => true,
            Select::Missing => !path.exists(),
            Select::Only(names) => names.iter().any(|n| n == vec.name),
        };
        if !wanted {
            skipped += 1;
            continue;
        }
        if let Some(problem) = vec.check() {
            mismatches += 1;
            eprintln!("MISMATCH {}: expected {}, {problem}", vec.name, vec.expect);
        }
        let text = vec.render();
        total += text.len();
        let mut f = std::fs::File::create(&path).expect("create vector file");
        f.write_all(text.as_bytes()).expect("write vector file");
        written += 1;
        println!("{:<44} {}", vec.name, vec.expect);
    }
    println!(
        "{written} vectors written ({total} bytes), {skipped} left as they were, \
         {mismatches} mismatches"
    );
}
