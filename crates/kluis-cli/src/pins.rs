//! Pinned identity public keys (issue 17 defect 7; docs/FORMAT.md §14).
//!
//! An identity file's `# public key:` comment is not authenticated: whoever can edit the file
//! (a synced home folder, a backup) can change it, and sealing "to this identity" would then
//! wrap the holder's half of a double-key document to their key. So the public key `kluis`
//! uses is always one it derived from the unlocked secret: when the file is made (`keygen`)
//! or opened with its passphrase, the derived key is recorded here, in the configuration
//! folder, next to config.toml (trusted as much as config.toml's `default_to` already is).
//! Without the passphrase (`keygen --public`, sealing to a double-key label) the comment is
//! only accepted when it agrees with this record; with no record yet (an identity made before
//! this record existed, or copied from elsewhere), the passphrase is asked once and the key is
//! derived from the secret.

use std::path::{Path, PathBuf};

use kluis_core::{Identity, PublicKey};

use crate::config::{config_dir, read_small, write_private};
use crate::error::{Class, CliError};
use crate::keys::{Passphrase, load_identity};

/// The file in the configuration folder: one `kluis1… /absolute/path` line per identity.
pub const PINS_FILE: &str = "identity-keys";

/// The path an identity file is recorded under: canonical when it exists.
fn key_path(identity: &Path) -> PathBuf {
    std::fs::canonicalize(identity).unwrap_or_else(|_| crate::config::absolute(identity))
}

fn read_pins(dir: &Path) -> Vec<(PublicKey, PathBuf)> {
    let Ok(text) = read_small(&dir.join(PINS_FILE)) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| {
            let (key, path) = l.split_once(' ')?;
            Some((key.parse().ok()?, PathBuf::from(path)))
        })
        .collect()
}

/// The public key recorded for `identity` at keygen or its last unlock, if any.
pub fn pinned(identity: &Path) -> Option<PublicKey> {
    let dir = config_dir().ok()?;
    let path = key_path(identity);
    read_pins(&dir)
        .into_iter()
        .find_map(|(k, p)| (p == path).then_some(k))
}

/// Record `key`, derived from the secret of `identity`, replacing any earlier record for that
/// path. Best effort: a record that cannot be written only means the passphrase is asked
/// again next time.
pub fn record(identity: &Path, key: &PublicKey) {
    let Ok(dir) = config_dir() else { return };
    let path = key_path(identity);
    let Some(path_text) = path.to_str() else {
        return;
    };
    if path_text.contains(['\n', '\r']) {
        return;
    }
    let mut pins = read_pins(&dir);
    if pins.iter().any(|(k, p)| *p == path && k == key) {
        return;
    }
    pins.retain(|(_, p)| *p != path);
    pins.push((*key, path));
    let text: String = pins
        .iter()
        .filter_map(|(k, p)| Some(format!("{k} {}\n", p.to_str()?)))
        .collect();
    let _ = write_private(&dir.join(PINS_FILE), text.as_bytes());
}

/// The holder public key of the identity file at `path`, authenticated: with a passphrase
/// given, the key derived from the secret; else the recorded key (checked against the file's
/// comment, if it has one), else the key derived from the secret after asking for the
/// passphrase. Unlocking also checks the comment and records the key.
pub fn holder_public_key(path: &Path, source: &Passphrase) -> Result<PublicKey, CliError> {
    let text = read_small(path).map_err(|e| {
        CliError::usage(format!(
            "cannot read the identity file {path:?}: {e}: give another with --identity, or make one with `kluis keygen`"
        ))
    })?;
    // An edited comment is tampering (exit 7, as when the unlock finds it); a file too large
    // to be an identity file is a usage error (exit 2), as when the unlock reads it.
    let claimed = Identity::claimed_public_key(&text).map_err(|e| {
        let (message, class) = crate::error::describe_core(&e);
        CliError::new(
            class,
            format!(
                "{path:?}: {message}: do not seal to it; restore the file from a copy you trust"
            ),
        )
    })?;
    // A passphrase given with --passphrase-file/--passphrase-env: the secret decides, not an
    // older record (which follows it). This is how a replaced identity of one's own is
    // recorded, as the refusal below advises.
    let given = !matches!(source, Passphrase::Prompt);
    if let (Some(pinned), false) = (pinned(path), given) {
        // Unlocking warns about an identity file others can read; this path does not unlock.
        crate::keys::warn_if_readable_by_others(path);
        return match claimed {
            Some(c) if c != pinned => Err(CliError::new(
                Class::Corrupt,
                format!(
                    "the `# public key:` line of {path:?} is not the key derived from its secret when it was made or last opened ({pinned}): the file was edited, perhaps to redirect what you seal to someone else's key. Nothing was sealed. Restore the file from a copy you trust; if you replaced it with another identity of yours on purpose, open a document with it once (or run `kluis keygen --public FILE` with --passphrase-file/--passphrase-env) to record its key"
                ),
            )),
            _ => Ok(pinned),
        };
    }
    // No record: derive it from the secret (this also refuses an edited comment).
    let id = load_identity(path, source, None)?;
    Ok(id.public_key())
}
