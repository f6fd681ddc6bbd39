//! Identity files: a holder's X25519 secret sealed under an Argon2id-derived key.

use std::fmt::Write as _;

use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::keys::{Identity, PublicKey};
use crate::primitives::{self, DerivedKey};
use crate::wire::Cursor;

/// Argon2id memory cost written by this version, in KiB (64 MiB).
pub const ARGON2_MEMORY_KIB: u32 = 64 * 1024;
/// Argon2id passes written by this version.
pub const ARGON2_PASSES: u32 = 3;
/// The largest memory cost a reader accepts, in KiB (1 GiB), so a file cannot exhaust memory.
const MAX_MEMORY_KIB: u32 = 1024 * 1024;
const MAX_PASSES: u32 = 16;
const MAX_LANES: u32 = 8;
/// The data line's tag.
const TAG: &str = "KLUIS-IDENTITY-1 ";
/// version ‖ m ‖ t ‖ p ‖ salt: authenticated as AAD.
const AAD_LEN: usize = 1 + 4 + 4 + 4 + 16;
const BLOB_LEN: usize = AAD_LEN + 12 + 48;
/// Identity files are small; refuse anything larger before parsing.
pub const MAX_IDENTITY_FILE_LEN: usize = 4096;
/// The comment line that records the public key (for people; see docs/FORMAT.md §14).
const PUBLIC_KEY_COMMENT: &str = "# public key:";

fn derive(passphrase: &[u8], salt: &[u8; 16], m: u32, t: u32, p: u32) -> Result<DerivedKey> {
    let params = Params::new(m, t, p, Some(32)).map_err(|_| Error::IdentityParams {
        reason: "rejected by Argon2",
    })?;
    let mut out = DerivedKey([0u8; 32]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(passphrase, salt, &mut out.0)
        .map_err(|_| Error::IdentityParams {
            reason: "Argon2 failed",
        })?;
    Ok(out)
}

impl Identity {
    /// Seal this identity under `passphrase` (Argon2id, 64 MiB, 3 passes) as the text of an
    /// identity file. The text holds the secret: write it with mode 0600
    /// (`kluis_file::write_identity_file` does; kluis-core does no file-system I/O).
    pub fn to_file_string(&self, passphrase: &[u8]) -> Result<Zeroizing<String>> {
        let (m, t, p) = (ARGON2_MEMORY_KIB, ARGON2_PASSES, 1);
        let mut salt = [0u8; 16];
        primitives::fill_random(&mut salt)?;
        let mut nonce = [0u8; 12];
        primitives::fill_random(&mut nonce)?;
        let key = derive(passphrase, &salt, m, t, p)?;
        let mut blob = Vec::with_capacity(BLOB_LEN);
        blob.push(1);
        blob.extend_from_slice(&m.to_be_bytes());
        blob.extend_from_slice(&t.to_be_bytes());
        blob.extend_from_slice(&p.to_be_bytes());
        blob.extend_from_slice(&salt);
        blob.extend_from_slice(&nonce);
        let sealed = primitives::aead_seal(&key, nonce, &blob[..AAD_LEN], &self.secret_bytes()[..]);
        blob.extend_from_slice(&sealed);
        let mut s = Zeroizing::new(String::new());
        let _ = writeln!(
            s,
            "# kluis identity file (a holder key). Keep it secret; it is sealed with a passphrase."
        );
        let _ = writeln!(s, "# public key: {}", self.public_key());
        let _ = writeln!(s, "{TAG}{}", STANDARD_NO_PAD.encode(&blob));
        Ok(s)
    }

    /// The public key an identity file's `# public key:` comment *claims*, without the
    /// passphrase (`None` when there is no such line). Nothing authenticates it: whoever can
    /// edit the file can change it. Compare it with a copy pinned elsewhere before trusting
    /// it, or open the file ([`Identity::from_file_string`] checks the comment against the
    /// key derived from the secret). See docs/FORMAT.md §14.
    pub fn claimed_public_key(text: &str) -> Result<Option<PublicKey>> {
        let bad = |reason| Error::InvalidIdentityFile { reason };
        let edited = |reason| Error::IdentityFileEdited { reason };
        if text.len() > MAX_IDENTITY_FILE_LEN {
            return Err(bad("larger than 4096 bytes"));
        }
        let mut found: Option<PublicKey> = None;
        for line in text.lines().map(str::trim) {
            let Some(rest) = line.strip_prefix(PUBLIC_KEY_COMMENT) else {
                continue;
            };
            let key: PublicKey = rest
                .trim()
                .parse()
                .map_err(|_| edited("its `# public key:` line is not a valid kluis1… key"))?;
            if found.is_some_and(|f| f != key) {
                return Err(edited("it has two different `# public key:` lines"));
            }
            found = Some(key);
        }
        Ok(found)
    }

    /// Open the text of an identity file with `passphrase`.
    ///
    /// The public key is always derived from the unlocked secret. A `# public key:` comment
    /// that names another key (or is not a key) is refused: someone edited the file, perhaps
    /// to redirect documents sealed "to this identity" to a key of their own.
    pub fn from_file_string(text: &str, passphrase: &[u8]) -> Result<Identity> {
        let bad = |reason| Error::InvalidIdentityFile { reason };
        if text.len() > MAX_IDENTITY_FILE_LEN {
            return Err(bad("larger than 4096 bytes"));
        }
        let mut data = None;
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let b64 = line.strip_prefix(TAG).ok_or(bad("unexpected line"))?;
            if data.replace(b64).is_some() {
                return Err(bad("more than one key line"));
            }
        }
        let b64 = data.ok_or(bad("no `KLUIS-IDENTITY-1` line"))?;
        if b64.len() > 200 {
            return Err(bad("key line too long"));
        }
        let blob = STANDARD_NO_PAD
            .decode(b64)
            .map_err(|_| bad("key line is not base64"))?;
        if blob.len() != BLOB_LEN {
            return Err(bad("key line has the wrong length"));
        }
        let mut c = Cursor::new(&blob);
        if c.u8()? != 1 {
            return Err(bad("unknown identity file version"));
        }
        let (m, t, p) = (c.u32()?, c.u32()?, c.u32()?);
        if !(ARGON2_MEMORY_KIB..=MAX_MEMORY_KIB).contains(&m) {
            return Err(Error::IdentityParams {
                reason: "memory cost must be 64 MiB to 1 GiB",
            });
        }
        if !(ARGON2_PASSES..=MAX_PASSES).contains(&t) {
            return Err(Error::IdentityParams {
                reason: "passes must be 3 to 16",
            });
        }
        if !(1..=MAX_LANES).contains(&p) {
            return Err(Error::IdentityParams {
                reason: "lanes must be 1 to 8",
            });
        }
        let salt: [u8; 16] = c.array()?;
        let nonce: [u8; 12] = c.array()?;
        let key = derive(passphrase, &salt, m, t, p)?;
        let plain = primitives::aead_open(&key, nonce, &blob[..AAD_LEN], &blob[AAD_LEN + 12..])
            .ok_or(Error::WrongPassphrase)?;
        let mut secret = [0u8; 32];
        secret.copy_from_slice(&plain);
        let id = Identity::from_secret_bytes(secret);
        zeroize::Zeroize::zeroize(&mut secret);
        // The size was checked above, so the only errors left are those of an edited comment.
        match Identity::claimed_public_key(text)? {
            None => {}
            Some(claimed) if claimed == id.public_key() => {}
            Some(_) => {
                return Err(Error::IdentityFileEdited {
                    reason: "its `# public key:` line does not match its secret key",
                });
            }
        }
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap_file(id: &Identity, pass: &[u8]) -> String {
        // The real writer (64 MiB Argon2id) is what a user gets; tests use the same code.
        id.to_file_string(pass).unwrap().to_string()
    }

    /// Issue 17 defect 7: the comment was never checked, so an edited `# public key:` line
    /// redirected the holder's share. Opening now refuses a file whose comment names another
    /// key, and a file without the comment still opens.
    #[test]
    fn an_edited_public_key_comment_is_detected_on_open() {
        let id = Identity::generate().unwrap();
        let other = Identity::generate().unwrap();
        let text = cheap_file(&id, b"pw");
        assert_eq!(
            Identity::claimed_public_key(&text).unwrap(),
            Some(id.public_key())
        );
        assert_eq!(
            Identity::from_file_string(&text, b"pw")
                .unwrap()
                .public_key(),
            id.public_key()
        );
        let edited = text.replace(
            &id.public_key().to_string(),
            &other.public_key().to_string(),
        );
        assert_ne!(edited, text);
        assert!(matches!(
            Identity::from_file_string(&edited, b"pw"),
            Err(e @ Error::IdentityFileEdited { .. }) if e.to_string().contains("was edited")
        ));
        let garbled = text.replace("# public key: kluis1", "# public key: kluis1x");
        assert!(matches!(
            Identity::from_file_string(&garbled, b"pw"),
            Err(Error::IdentityFileEdited { .. })
        ));
        let second = format!("{text}# public key: {}\n", other.public_key());
        assert!(matches!(
            Identity::claimed_public_key(&second),
            Err(Error::IdentityFileEdited { .. })
        ));
        assert!(matches!(
            Identity::from_file_string(&second, b"pw"),
            Err(Error::IdentityFileEdited { .. })
        ));
        // §14 allows a file without the comment: it opens, and claims nothing.
        let bare: String = text
            .lines()
            .filter(|l| !l.starts_with(PUBLIC_KEY_COMMENT))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(Identity::claimed_public_key(&bare).unwrap(), None);
        assert_eq!(
            Identity::from_file_string(&bare, b"pw")
                .unwrap()
                .public_key(),
            id.public_key()
        );
    }
}
