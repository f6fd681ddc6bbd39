//! Identity files on disk. kluis-core turns an identity into the identity file's text and back
//! (bytes in, bytes out: it does no file-system I/O); these read and write the file itself.

use std::io::{Read, Write};
use std::path::Path;

use kluis_core::{Error, Identity};
use zeroize::Zeroizing;

/// Write a new identity file for `identity`, sealed under `passphrase`, at `path` with mode
/// 0600 (on Unix). Never replaces an existing file (an [`Error::Io`] of kind `AlreadyExists`),
/// and leaves nothing half-written under `path` on failure.
pub fn write_identity_file(
    identity: &Identity,
    path: &Path,
    passphrase: &[u8],
) -> Result<(), Error> {
    let text = identity.to_file_string(passphrase)?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    let written = f.write_all(text.as_bytes()).and_then(|()| f.sync_all());
    if let Err(e) = written {
        // Leave nothing half-written under the final name.
        drop(f);
        let _ = std::fs::remove_file(path);
        return Err(e.into());
    }
    Ok(())
}

/// Read the identity file at `path` (at most [`Identity::MAX_FILE_LEN`] bytes) and open it
/// with `passphrase`.
pub fn read_identity_file(path: &Path, passphrase: &[u8]) -> Result<Identity, Error> {
    let f = std::fs::File::open(path)?;
    let mut bytes = Zeroizing::new(Vec::new());
    f.take(Identity::MAX_FILE_LEN as u64 + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() > Identity::MAX_FILE_LEN {
        return Err(Error::InvalidIdentityFile {
            reason: "larger than 4096 bytes",
        });
    }
    let text = std::str::from_utf8(&bytes).map_err(|_| Error::InvalidIdentityFile {
        reason: "not UTF-8 text",
    })?;
    Identity::from_file_string(text, passphrase)
}
