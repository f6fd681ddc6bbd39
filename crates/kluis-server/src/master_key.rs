//! The master key: seals label private keys at rest and keys the audit chain and token hashes.

use std::path::Path;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::error::{Result, ServerError};

/// The store's master key: 32 bytes from a key file or derived from a passphrase with
/// Argon2id. Zeroized on drop; never printed.
pub struct MasterKey(Zeroizing<[u8; 32]>);

struct Len32;
impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

pub(crate) fn random<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| ServerError::Core(kluis_core::Error::Random))?;
    Ok(b)
}

/// Whether `path` is a file directly in the credentials directory systemd made for this
/// service (`$CREDENTIALS_DIRECTORY`: private to the service, on a read-only file system).
#[cfg(unix)]
pub(crate) fn is_systemd_credential(path: &Path) -> bool {
    let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") else {
        return false;
    };
    match (std::fs::canonicalize(dir), std::fs::canonicalize(path)) {
        (Ok(dir), Ok(file)) => file.parent() == Some(dir.as_path()),
        _ => false,
    }
}

impl MasterKey {
    /// A new random master key.
    pub fn generate() -> Result<Self> {
        Ok(MasterKey(Zeroizing::new(random()?)))
    }

    /// Derive the master key from a passphrase (Argon2id, 64 MiB, 3 passes).
    pub fn from_passphrase(passphrase: &[u8], salt: &[u8; 16]) -> Result<Self> {
        let params = argon2::Params::new(64 * 1024, 3, 1, Some(32))
            .map_err(|_| ServerError::Init("Argon2 parameters rejected"))?;
        let mut out = Zeroizing::new([0u8; 32]);
        argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
            .hash_password_into(passphrase, salt, &mut out[..])
            .map_err(|_| ServerError::Init("Argon2 failed"))?;
        Ok(MasterKey(out))
    }

    /// Write the key to a new file (mode 0600; refuses to overwrite).
    pub fn write_new_file(&self, path: &Path) -> Result<()> {
        use std::io::Write;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(path).map_err(|e| {
            ServerError::Config(format!(
                "cannot create the master key file {}: {e}: its folder must exist and be \
                 writable, and the file must not exist yet",
                path.display()
            ))
        })?;
        let text = Zeroizing::new(format!("{}\n", hex::encode(&self.0[..])));
        if let Err(e) = f.write_all(text.as_bytes()).and_then(|()| f.sync_all()) {
            drop(f);
            let _ = std::fs::remove_file(path);
            return Err(e.into());
        }
        Ok(())
    }

    /// Read a key file; refuses one that group or others can read. One exception: a credential
    /// systemd handed to this service (`LoadCredential=`, a file directly in
    /// `$CREDENTIALS_DIRECTORY`) may show group read. systemd 256 and later write credentials
    /// on a tmpfs, mode 0400 plus an ACL entry for the service's user, and stat() reports the
    /// ACL mask in the group bits (0440) although the owning group has no access.
    pub fn read_file(path: &Path) -> Result<Self> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)?.permissions().mode();
            let tolerated = if is_systemd_credential(path) {
                0o040
            } else {
                0
            };
            if mode & 0o077 & !tolerated != 0 {
                return Err(ServerError::KeyFilePermissions { mode: mode & 0o777 });
            }
        }
        let text = Zeroizing::new(std::fs::read_to_string(path)?);
        let mut key = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text.trim(), &mut key[..]).map_err(|_| ServerError::BadKeyFile)?;
        Ok(MasterKey(key))
    }

    /// A 32-byte subkey for one purpose.
    pub(crate) fn subkey(&self, purpose: &[u8]) -> Zeroizing<[u8; 32]> {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"kluis-server/v1").extract(&self.0[..]);
        let mut out = Zeroizing::new([0u8; 32]);
        prk.expand(&[purpose], Len32)
            .and_then(|okm| okm.fill(&mut out[..]))
            .expect("HKDF of 32 bytes");
        out
    }

    fn aead(&self) -> LessSafeKey {
        let k = self.subkey(b"seal-at-rest");
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &k[..]).expect("32-byte key"))
    }

    /// Seal `plaintext` at rest: `nonce ‖ ciphertext ‖ tag`, bound to `aad`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
        let nonce: [u8; 12] = random()?;
        let mut out = nonce.to_vec();
        let mut body = plaintext.to_vec();
        self.aead()
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut body,
            )
            .expect("short message");
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Open what [`MasterKey::seal`] sealed with the same `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        let (nonce, body) = sealed.split_at_checked(12)?;
        let mut buf = Zeroizing::new(body.to_vec());
        let n = self
            .aead()
            .open_in_place(
                Nonce::assume_unique_for_key(nonce.try_into().ok()?),
                Aad::from(aad),
                &mut buf,
            )
            .ok()?
            .len();
        buf.truncate(n);
        Some(buf)
    }
}
