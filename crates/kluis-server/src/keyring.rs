//! The keyring: the master key and everything keyed by it, for every store alike.
//!
//! It seals label private keys at rest (bound to their label and version), hashes and checks
//! API tokens, and keeps the audit chain (record MACs, the head MAC, verification). A store
//! only keeps the bytes this module makes; see [`crate::Store`].

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use kluis_core::LabelKey;
use ring::hmac;
use zeroize::Zeroizing;

use crate::audit::{self, AuditEntry, GENESIS};
use crate::error::{Result, ServerError};
use crate::master_key::{MasterKey, random};
use crate::store::{SecretKind, Store, StoreTx, meta};

/// Text every store seals at init, to recognise the right master key.
const CHECK: &[u8] = b"kluis-server master key check";

/// Audit records read at a time while verifying the chain.
const VERIFY_PAGE: usize = 10_000;

/// How the master key is obtained.
pub enum KeySource<'a> {
    /// A key file written by `init` (mode 0600).
    File(&'a Path),
    /// A passphrase; the Argon2id salt is kept in the store.
    Passphrase(&'a [u8]),
}

/// The stored subkeys: (meta key, associated data, HKDF purpose of the derived original).
const SUBKEYS: [(&str, &[u8], &[u8]); 2] = [
    (
        "audit_key",
        b"kluis-server/v1/stored-subkey/audit-chain",
        b"audit-chain",
    ),
    (
        "token_key",
        b"kluis-server/v1/stored-subkey/token-hash",
        b"token-hash",
    ),
];

/// A `meta` row: (key, value).
pub(crate) type MetaRow = (&'static str, Vec<u8>);

/// Associated data binding a sealed label key to its label and version.
fn key_aad(label: &str, kid: u32) -> Vec<u8> {
    secret_aad(SecretKind::Label, label, kid)
}

/// Associated data binding a sealed private key to its kind, label and version: a sealed
/// DKE key cannot pass for a label key or the other way round.
pub(crate) fn secret_aad(kind: SecretKind, label: &str, kid: u32) -> Vec<u8> {
    let mut aad = match kind {
        SecretKind::Label => b"kluis-server/v1/label-key".to_vec(),
        SecretKind::Dke => b"kluis-server/v1/dke-key".to_vec(),
    };
    aad.push(label.len() as u8);
    aad.extend_from_slice(label.as_bytes());
    aad.extend_from_slice(&kid.to_be_bytes());
    aad
}

/// An HMAC key with its raw bytes (needed to re-seal it under a new master key).
struct Subkey {
    raw: Zeroizing<[u8; 32]>,
    key: hmac::Key,
}

impl Subkey {
    fn new(raw: Zeroizing<[u8; 32]>) -> Self {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &raw[..]);
        Subkey { raw, key }
    }
}

/// The master key and the keys derived from or sealed under it. Never printed.
pub struct Keyring {
    master: MasterKey,
    audit: Subkey,
    token: Subkey,
}

/// The raw bytes of subkey `i` of [`SUBKEYS`]: stored sealed (`sealed`), or derived (stores
/// from before the first master-key rotation).
fn subkey_bytes(master: &MasterKey, i: usize, sealed: Option<&[u8]>) -> Result<Subkey> {
    let (_, aad, purpose) = SUBKEYS[i];
    let Some(sealed) = sealed else {
        return Ok(Subkey::new(master.subkey(purpose)));
    };
    let plain = master
        .open(aad, sealed)
        .ok_or(ServerError::WrongMasterKey)?;
    let mut out = Zeroizing::new([0u8; 32]);
    if plain.len() != 32 {
        return Err(ServerError::WrongMasterKey);
    }
    out.copy_from_slice(&plain);
    Ok(Subkey::new(out))
}

impl Keyring {
    /// A keyring for a new store: a new master key (written to the key file) or one derived
    /// from a passphrase with a new salt. Returns it with the `meta` rows the store must
    /// keep (`kdf`, `check`).
    pub(crate) fn create(key: KeySource<'_>) -> Result<(Keyring, Vec<MetaRow>)> {
        let (master, kdf) = match key {
            KeySource::File(p) => {
                let m = MasterKey::generate()?;
                m.write_new_file(p)?;
                (m, "file".to_owned())
            }
            KeySource::Passphrase(pw) => {
                let salt: [u8; 16] = random()?;
                (
                    MasterKey::from_passphrase(pw, &salt)?,
                    format!("argon2id:{}", hex::encode(salt)),
                )
            }
        };
        let check = master.seal(b"check", CHECK)?;
        let ring = Keyring::with_master(master, None, None)?;
        Ok((
            ring,
            vec![(meta::KDF, kdf.into_bytes()), (meta::CHECK, check)],
        ))
    }

    /// The keyring of an existing store; fails unless the master key is the right one.
    pub(crate) fn open(store: &impl Store, key: KeySource<'_>) -> Result<Keyring> {
        let kdf = store
            .meta(meta::KDF)?
            .ok_or(ServerError::Init("the store is not initialised"))?;
        let kdf = String::from_utf8_lossy(&kdf).into_owned();
        let master = match (key, kdf.strip_prefix("argon2id:")) {
            (KeySource::File(p), None) => MasterKey::read_file(p)?,
            (KeySource::Passphrase(pw), Some(salt)) => {
                let mut s = [0u8; 16];
                hex::decode_to_slice(salt, &mut s)
                    .map_err(|_| ServerError::Init("the store's passphrase salt is damaged"))?;
                MasterKey::from_passphrase(pw, &s)?
            }
            (KeySource::File(_), Some(_)) => {
                return Err(ServerError::Init(
                    "this store is protected by a passphrase, not a key file: give it with \
                     --passphrase-file, --passphrase-fd, --passphrase-env or --passphrase-prompt",
                ));
            }
            (KeySource::Passphrase(_), None) => {
                return Err(ServerError::Init(
                    "this store is protected by a key file, not a passphrase: give the key file \
                     with --key-file (or key_file in the configuration) and no --passphrase-…",
                ));
            }
        };
        let check = store
            .meta(meta::CHECK)?
            .ok_or(ServerError::Init("the store is not initialised"))?;
        match master.open(b"check", &check) {
            Some(c) if c.as_slice() == CHECK => {
                // Stored sealed after a master-key rotation, derived from the master key before.
                let audit = store.meta(SUBKEYS[0].0)?;
                let token = store.meta(SUBKEYS[1].0)?;
                Keyring::with_master(master, audit.as_deref(), token.as_deref())
            }
            _ => Err(ServerError::WrongMasterKey),
        }
    }

    fn with_master(
        master: MasterKey,
        audit: Option<&[u8]>,
        token: Option<&[u8]>,
    ) -> Result<Keyring> {
        Ok(Keyring {
            audit: subkey_bytes(&master, 0, audit)?,
            token: subkey_bytes(&master, 1, token)?,
            master,
        })
    }

    /// Whether `check` (the store's `check` row) was sealed under this master key: false
    /// after another process rotated the master key.
    pub(crate) fn is_current(&self, check: Option<&[u8]>) -> bool {
        check
            .and_then(|c| self.master.open(b"check", c))
            .is_some_and(|c| c.as_slice() == CHECK)
    }

    /// Seal a label private key at rest, bound to its label and version.
    pub(crate) fn seal_label_key(&self, key: &LabelKey, label: &str, kid: u32) -> Result<Vec<u8>> {
        self.master
            .seal(&key_aad(label, kid), &key.expose_secret()[..])
    }

    /// Open a sealed label private key. The label and version are bound as associated data:
    /// a row copied to another label or version fails.
    pub(crate) fn open_label_key(&self, label: &str, kid: u32, sealed: &[u8]) -> Result<LabelKey> {
        let secret = self
            .master
            .open(&key_aad(label, kid), sealed)
            .ok_or(ServerError::WrongMasterKey)?;
        let bytes: [u8; 32] = secret
            .as_slice()
            .try_into()
            .map_err(|_| ServerError::WrongMasterKey)?;
        Ok(LabelKey::from_secret_bytes(label, kid, bytes)?)
    }

    /// Seal a DKE private key (PKCS#8 DER) at rest, bound to its kind, label and version
    /// (the associated data that master-key rotation re-seals it under).
    pub(crate) fn seal_dke_key(&self, pkcs8: &[u8], label: &str, kid: u32) -> Result<Vec<u8>> {
        self.master
            .seal(&secret_aad(SecretKind::Dke, label, kid), pkcs8)
    }

    /// Open a sealed DKE private key: its PKCS#8 DER, wiped on drop. A row copied to another
    /// label, version or kind fails.
    pub(crate) fn open_dke_key(
        &self,
        label: &str,
        kid: u32,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>> {
        self.master
            .open(&secret_aad(SecretKind::Dke, label, kid), sealed)
            .ok_or(ServerError::WrongMasterKey)
    }

    /// A new API token: (the secret token, shown once; its public id; its keyed hash, which
    /// is all the store keeps).
    pub(crate) fn new_token(&self) -> Result<(String, String, Vec<u8>)> {
        let raw: Zeroizing<[u8; 32]> = Zeroizing::new(random()?);
        let token = format!("kluis_{}", URL_SAFE_NO_PAD.encode(&raw[..]));
        let id = token[..14].to_owned(); // "kluis_" and 8 characters: public, names the token
        let hash = hmac::sign(&self.token.key, token.as_bytes())
            .as_ref()
            .to_vec();
        Ok((token, id, hash))
    }

    /// The public id of a presented token, when it has the shape of one.
    pub(crate) fn token_id(token: &str) -> Option<&str> {
        (token.len() == 49 && token.starts_with("kluis_")).then(|| &token[..14])
    }

    /// Whether `token` is the one whose keyed hash is `hash` (constant time: ring compares
    /// the tag).
    pub(crate) fn token_matches(&self, token: &str, hash: &[u8]) -> bool {
        hmac::verify(&self.token.key, token.as_bytes(), hash).is_ok()
    }

    /// Append `entries` to the audit chain inside `tx`: each record's MAC covers the one
    /// before; the head MAC is updated in the same transaction.
    pub fn append_audit(&self, tx: &mut dyn StoreTx, entries: &[AuditEntry]) -> Result<()> {
        let (mut seq, mut prev) = tx.audit_tail()?.unwrap_or((0, GENESIS.to_vec()));
        for e in entries {
            // A sequence number at the end of its range comes only from an edited store: a
            // clear refusal (nothing released), not an overflow (a panic that killed the
            // audit writer in a debug build, a wrapped, negative number in a release build).
            seq = seq.checked_add(1).ok_or(ServerError::AuditBroken {
                seq,
                what: "its sequence number is at the end of its range, which only an edit of \
                       the store makes",
            })?;
            let e = audit::storable(e);
            let mac = audit::chain_mac(&self.audit.key, &prev, seq, &e);
            tx.insert_audit(seq, &e, &mac)?;
            prev = mac;
        }
        let head = audit::head_mac(&self.audit.key, seq, &prev);
        tx.put_meta(meta::AUDIT_HEAD, &[&seq.to_be_bytes()[..], &head].concat())
    }

    /// Verify the whole audit chain of `store`; returns the number of records and the head
    /// MAC (hex).
    pub fn verify_audit(&self, store: &impl Store) -> Result<(i64, String)> {
        // One read snapshot: the records and the stored head must be read at the same moment,
        // or a record the server appends in between reads as "cut off".
        store.snapshot(|store| self.verify_in_snapshot(store))
    }

    fn verify_in_snapshot(&self, store: &impl Store) -> Result<(i64, String)> {
        let broken = |seq, what| ServerError::AuditBroken { seq, what };
        let mut prev = GENESIS.to_vec();
        let mut expected = 1;
        loop {
            let page = store.audit_page(None, expected - 1, VERIFY_PAGE)?;
            let last = page.len() < VERIFY_PAGE;
            for rec in page {
                if rec.seq != expected {
                    return Err(broken(expected, "a record is missing"));
                }
                let mac = audit::chain_mac(&self.audit.key, &prev, rec.seq, &rec.entry);
                if mac != rec.mac {
                    return Err(broken(rec.seq, "the record or one before it was changed"));
                }
                prev = rec.mac;
                expected += 1;
            }
            if last {
                break;
            }
        }
        let count = expected - 1;
        let head = store.meta(meta::AUDIT_HEAD)?;
        let want = [
            &count.to_be_bytes()[..],
            &audit::head_mac(&self.audit.key, count, &prev),
        ]
        .concat();
        if head.as_deref() != Some(&want[..]) {
            return Err(broken(count + 1, "records were cut off the end"));
        }
        Ok((count, hex::encode(&prev)))
    }

    /// Inside a write transaction: re-seal every live label key, the token-hash key and the
    /// audit-chain key under `new`, and replace the `check` row (and `kdf`, when given).
    /// Returns how many label keys were re-sealed and the new keyring. The audit and token
    /// keys themselves do not change: the chain continues, tokens keep working.
    pub(crate) fn reseal(
        &self,
        tx: &mut dyn StoreTx,
        new: MasterKey,
        kdf: Option<&str>,
    ) -> Result<(usize, Keyring)> {
        let rows = tx.sealed_secrets()?;
        for row in &rows {
            let aad = secret_aad(row.kind, &row.label, row.kid);
            let secret = self
                .master
                .open(&aad, &row.sealed)
                .ok_or(ServerError::WrongMasterKey)?;
            tx.set_sealed_secret(&row.label, row.kid, row.kind, &new.seal(&aad, &secret)?)?;
        }
        for (i, sub) in [&self.audit, &self.token].into_iter().enumerate() {
            let (name, aad, _) = SUBKEYS[i];
            tx.put_meta(name, &new.seal(aad, &sub.raw[..])?)?;
        }
        if let Some(kdf) = kdf {
            tx.put_meta(meta::KDF, kdf.as_bytes())?;
        }
        tx.put_meta(meta::CHECK, &new.seal(b"check", CHECK)?)?;
        let ring = Keyring {
            audit: Subkey::new(self.audit.raw.clone()),
            token: Subkey::new(self.token.raw.clone()),
            master: new,
        };
        Ok((rows.len(), ring))
    }
}
