//! The key holders `open` and `rekey` use: the key server, and the holder identity whose
//! passphrase is asked only when a document needs it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use kluis_client::Client;
use kluis_core::{Identity, PublicKey, Share, Stanza, Unwrap, UnwrapError, UnwrapRequest};
use zeroize::Zeroizing;

use crate::cli::PassphraseArgs;
use crate::error::{Class, CliError, Refusal};
use crate::progress::Bars;

/// The key server as a key holder: a [`Client`] (whose refusals carry the typed
/// `ClientError`, so they keep their class), or, with no server configured, a stand-in that
/// says how to configure one.
pub struct KeyServer {
    client: Option<Client>,
}

impl KeyServer {
    /// Unwrap through `client`, or explain that none is configured.
    pub fn new(client: Option<Client>) -> Self {
        KeyServer { client }
    }

    /// The key server client, if one is configured.
    pub fn client(&self) -> Option<&Client> {
        self.client.as_ref()
    }

    /// How many HTTP requests were sent.
    pub fn requests(&self) -> u64 {
        self.client.as_ref().map_or(0, Client::requests_sent)
    }
}

/// The refusal when no key server is configured.
const NO_SERVER: &str = "this document needs the key server, and none is configured: run `kluis login --server https://…` or set KLUIS_SERVER";

impl Unwrap for KeyServer {
    fn accepts(&self, stanza: &Stanza) -> bool {
        matches!(stanza, Stanza::Org(_))
    }

    fn unwrap(&self, requests: &[UnwrapRequest<'_>]) -> Vec<Result<Share, UnwrapError>> {
        let Some(client) = &self.client else {
            let refusal = Refusal::new(NO_SERVER, Class::Usage);
            return requests
                .iter()
                .map(|_| Err(UnwrapError::unavailable(refusal.clone())))
                .collect();
        };
        client.unwrap(requests)
    }
}

/// Where the identity passphrase comes from.
#[derive(Clone, Debug)]
pub enum Passphrase {
    /// The first line of a file.
    File(PathBuf),
    /// An environment variable.
    Env(String),
    /// Asked on the terminal.
    Prompt,
}

impl Passphrase {
    /// From the command-line options.
    pub fn from_args(a: &PassphraseArgs) -> Passphrase {
        match (&a.passphrase_file, &a.passphrase_env) {
            (Some(f), _) => Passphrase::File(f.clone()),
            (None, Some(v)) => Passphrase::Env(v.clone()),
            (None, None) => Passphrase::Prompt,
        }
    }

    /// Read it (not for `Prompt`).
    pub fn read_given(&self) -> Result<Zeroizing<String>, CliError> {
        match self {
            Passphrase::File(path) => {
                let text = crate::config::read_small(path).map_err(|e| {
                    CliError::usage(format!("cannot read the passphrase file {path:?}: {e}"))
                })?;
                let line = text.lines().next().unwrap_or("");
                Ok(Zeroizing::new(line.trim_end_matches('\r').to_owned()))
            }
            Passphrase::Env(var) => std::env::var(var).map(Zeroizing::new).map_err(|_| {
                CliError::usage(format!(
                    "the environment variable {var} (--passphrase-env) is not set or not UTF-8"
                ))
            }),
            Passphrase::Prompt => Err(CliError::usage("no passphrase given")),
        }
    }
}

/// Ask for a passphrase on the terminal (without echo).
pub fn prompt(text: &str) -> Result<Zeroizing<String>, CliError> {
    rpassword::prompt_password(text).map(Zeroizing::new).map_err(|_| {
        CliError::new(
            Class::Auth,
            "a passphrase is needed and there is no terminal to ask it on: use --passphrase-file FILE or --passphrase-env VAR",
        )
    })
}

/// Warn when an identity file can be read by other users of the machine (a 0644 file): they
/// could copy it and guess at its passphrase offline. Whether its secret or only its public
/// key is used: the file is exposed either way.
pub fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::metadata(path) {
            let mode = m.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                crate::output::warn(&format!(
                    "the identity file {path:?} can be read by other users (mode {mode:04o}): run `chmod 600 {}`",
                    shell_quoted(path)
                ));
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// `path` as one POSIX shell word: in single quotes, each `'` written `'\''`, so advice such
/// as `chmod 600 PATH` can be pasted as it is whatever the path holds.
#[cfg(unix)]
fn shell_quoted(path: &Path) -> String {
    format!("'{}'", path.to_string_lossy().replace('\'', r"'\''"))
}

/// Open an identity file, asking for its passphrase (up to three times on a terminal).
pub fn load_identity(
    path: &Path,
    source: &Passphrase,
    bars: Option<&Bars>,
) -> Result<Identity, CliError> {
    let open = |pass: &str| {
        kluis_file::read_identity_file(path, pass.as_bytes())
            // The key derived from the secret, for use without the passphrase (crate::pins).
            .inspect(|id| crate::pins::record(path, &id.public_key()))
            .map_err(|e| match e {
            kluis_core::Error::Io(io) if io.kind() == std::io::ErrorKind::NotFound => {
                CliError::usage(format!(
                    "the identity file {path:?} does not exist: give yours with --identity FILE, or make one with `kluis keygen`"
                ))
            }
            kluis_core::Error::Io(io) => CliError::io(path, "read the identity file", &io),
            kluis_core::Error::WrongPassphrase => CliError::new(
                Class::Auth,
                format!(
                    "wrong passphrase for the identity file {path:?} (or the file was modified): try again"
                ),
            ),
            other => {
                let (m, class) = crate::error::describe_core(&other);
                CliError::new(class, format!("{path:?}: {m}"))
            }
        })
    };
    warn_if_readable_by_others(path);
    if !matches!(source, Passphrase::Prompt) {
        return open(&source.read_given()?);
    }
    if !path.exists() {
        return open(""); // the "does not exist" message, without asking first
    }
    let mut last = None;
    for _ in 0..3 {
        let ask = || prompt(&format!("Passphrase for {}: ", path.display()));
        let pass = match bars {
            Some(b) => b.suspend(ask)?,
            None => ask()?,
        };
        match open(&pass) {
            Err(e) if e.class == Class::Auth => {
                eprintln!("kluis: {e}");
                last = Some(e);
            }
            other => return other,
        }
    }
    Err(last.expect("three failed attempts"))
}

/// The holder identity as a key holder, opened on first use: the passphrase is asked only
/// when a document has a stanza that a holder or recovery key opens.
///
/// It accepts every X25519 stanza even when no identity is configured, so that a document
/// that needs one fails with a message saying so, before the key server is asked (and
/// before it records an opening that could not complete).
pub struct LazyIdentity<'b> {
    path: Option<PathBuf>,
    source: Passphrase,
    bars: Option<&'b Bars>,
    loaded: OnceLock<Result<Identity, Refusal>>,
}

/// The refusal when a document needs an identity and none is configured.
const NO_IDENTITY: &str = "this document needs your identity file (it is double key, or sealed to a holder or recovery key): give it with --identity FILE or `kluis config set identity FILE`";

impl<'b> LazyIdentity<'b> {
    /// An identity read from `path` when first needed.
    pub fn new(path: Option<PathBuf>, source: Passphrase, bars: Option<&'b Bars>) -> Self {
        LazyIdentity {
            path,
            source,
            bars,
            loaded: OnceLock::new(),
        }
    }

    /// The identity's public key, if it was opened.
    pub fn public_key(&self) -> Option<PublicKey> {
        match self.loaded.get() {
            Some(Ok(id)) => Some(id.public_key()),
            _ => None,
        }
    }

    fn get(&self) -> &Result<Identity, Refusal> {
        self.loaded.get_or_init(|| {
            let Some(path) = &self.path else {
                return Err(Refusal::new(NO_IDENTITY, Class::Usage));
            };
            load_identity(path, &self.source, self.bars)
                .map_err(|e| Refusal::new(e.message, e.class))
        })
    }
}

impl Unwrap for LazyIdentity<'_> {
    fn accepts(&self, stanza: &Stanza) -> bool {
        matches!(stanza, Stanza::X25519(_))
    }

    fn unwrap(&self, requests: &[UnwrapRequest<'_>]) -> Vec<Result<Share, UnwrapError>> {
        match self.get() {
            Ok(id) => id.unwrap(requests),
            Err(m) => requests
                .iter()
                .map(|_| Err(UnwrapError::denied(m.clone())))
                .collect(),
        }
    }
}
