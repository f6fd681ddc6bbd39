//! Configuration: the folder, `config.toml`, the token file, and the settings in effect.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kluis_client::{Client, ClientConfig, ClientError, Purpose, Token, server_origin};
use kluis_core::PublicKey;
use serde::{Deserialize, Serialize};

use crate::error::{Class, CliError};

/// The name of the configuration file in the configuration folder.
pub const CONFIG_FILE: &str = "config.toml";
/// The name of the token file in the configuration folder.
pub const TOKEN_FILE: &str = "token";
/// The file beside the token that names the server origin it was saved for (see
/// [`kluis_client::server_origin`]); the token is sent to that origin only.
pub const TOKEN_SERVER_FILE: &str = "token.server";
/// The identity file `keygen` writes by default, and `open` uses when none is configured.
pub const DEFAULT_IDENTITY: &str = "identity.key";
/// Largest config or token file read.
const MAX_FILE: u64 = 64 * 1024;

/// The keys `kluis config set` accepts.
pub const KEYS: [&str; 6] = [
    "server",
    "ca_file",
    "label",
    "default_to",
    "identity",
    "cache_dir",
];

/// `config.toml`. Relative paths in it are relative to the configuration folder.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The key server's URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// A PEM CA bundle to trust for the key server instead of the public roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// The label `seal` uses when `--label` is not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// The holder public key for double-key labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_to: Option<String>,
    /// The holder identity file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<PathBuf>,
    /// The label cache folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<PathBuf>,
}

/// Where a setting came from, for `kluis config show`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A command-line option or its environment variable.
    Flag,
    /// An environment variable.
    Env,
    /// config.toml or the token file.
    File,
    /// The built-in default.
    Default,
}

impl Source {
    /// For people.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Flag => "option or environment",
            Source::Env => "environment",
            Source::File => "configuration folder",
            Source::Default => "default",
        }
    }
}

/// The settings in effect.
pub struct Settings {
    /// The configuration folder.
    pub dir: PathBuf,
    /// `config.toml` as read.
    pub file: FileConfig,
    /// The key server URL and where it came from.
    pub server: Option<(String, Source)>,
    /// The token and where it came from.
    pub token: Option<(Token, Source)>,
    /// The label cache folder.
    pub cache_dir: Option<(PathBuf, Source)>,
}

/// The configuration folder: `$KLUIS_CONFIG_DIR`, else `$XDG_CONFIG_HOME/kluis`, else
/// `~/.config/kluis` (`%APPDATA%\kluis` on Windows).
pub fn config_dir() -> Result<PathBuf, CliError> {
    if let Some(d) = std::env::var_os("KLUIS_CONFIG_DIR").filter(|d| !d.is_empty()) {
        return Ok(absolute(Path::new(&d)));
    }
    let abs = |v: Option<std::ffi::OsString>| v.map(PathBuf::from).filter(|p| p.is_absolute());
    if let Some(x) = abs(std::env::var_os("XDG_CONFIG_HOME")) {
        return Ok(x.join("kluis"));
    }
    if cfg!(windows) {
        if let Some(a) = abs(std::env::var_os("APPDATA")) {
            return Ok(a.join("kluis"));
        }
    }
    match abs(std::env::var_os("HOME")) {
        Some(h) => Ok(h.join(".config").join("kluis")),
        None => Err(CliError::usage(
            "no configuration folder: set KLUIS_CONFIG_DIR (or HOME)",
        )),
    }
}

/// `p` made absolute against the current folder.
pub fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_owned())
    }
}

/// Read a small text file (config, token, passphrase), refusing large ones.
pub fn read_small(path: &Path) -> std::io::Result<zeroize::Zeroizing<String>> {
    let mut buf = zeroize::Zeroizing::new(Vec::new());
    std::fs::File::open(path)?
        .take(MAX_FILE + 1)
        .read_to_end(&mut buf)?;
    if buf.len() as u64 > MAX_FILE {
        return Err(std::io::Error::other("larger than 64 KiB"));
    }
    let text = std::str::from_utf8(&buf).map_err(|_| std::io::Error::other("not UTF-8 text"))?;
    Ok(zeroize::Zeroizing::new(text.to_owned()))
}

/// A saved token file that holds no usable token: it cannot be read, or its text is not a
/// token. Names the file and what is wrong, never the contents (they may be a secret).
#[derive(Debug)]
pub struct BadTokenFile {
    /// The token file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub reason: String,
    /// [`Class::Auth`] for text that is not a token, [`Class::Failed`] for a file that cannot
    /// be read.
    pub class: Class,
}

impl fmt::Display for BadTokenFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} holds no usable token ({})", self.path, self.reason)
    }
}

impl From<BadTokenFile> for CliError {
    fn from(e: BadTokenFile) -> Self {
        CliError::new(e.class, format!("{e}: run `kluis login` to replace it"))
    }
}

/// The token saved in the configuration folder `dir`, or `None` when there is none.
pub fn saved_token(dir: &Path) -> Result<Option<Token>, BadTokenFile> {
    let path = dir.join(TOKEN_FILE);
    let (class, reason) = match read_small(&path) {
        Ok(text) => match Token::new(text.as_str()) {
            Ok(token) => return Ok(Some(token)),
            Err(ClientError::InvalidToken { reason }) => (Class::Auth, reason.to_owned()),
            Err(e) => (Class::Auth, e.to_string()),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => (Class::Failed, format!("it cannot be read: {e}")),
    };
    Err(BadTokenFile {
        path,
        reason,
        class,
    })
}

impl Settings {
    /// Read the configuration. `server_flag` is `--server` / `KLUIS_SERVER`.
    pub fn load(server_flag: Option<String>) -> Result<Settings, CliError> {
        let mut settings = Settings::load_without_token(server_flag)?;
        settings.token = match std::env::var("KLUIS_TOKEN").ok().filter(|t| !t.is_empty()) {
            Some(t) => Some((Token::new(t)?, Source::Env)),
            None => match saved_token(&settings.dir)? {
                Some(t) => settings.bound_token(t),
                None => None,
            },
        };
        Ok(settings)
    }

    /// The saved token `token`, if it was saved for the server in effect; otherwise `None`,
    /// with a warning that says which server it belongs to. A token saved before the server
    /// was recorded beside it belongs to the server in config.toml.
    ///
    /// That legacy binding is written to `token.server` the first time it is used, so a later
    /// `config set server` (or an edit of config.toml) does not carry the token along to
    /// another server. A `token.server` that exists but cannot be read binds it to none.
    fn bound_token(&self, token: Token) -> Option<(Token, Source)> {
        let binding = self.dir.join(TOKEN_SERVER_FILE);
        let bound = match read_small(&binding) {
            Ok(text) => Some(text.trim().to_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let legacy = self
                    .file
                    .server
                    .as_deref()
                    .and_then(|s| server_origin(s).ok());
                if let Some(origin) = &legacy {
                    // Best effort: if it cannot be written, it still binds this run.
                    let _ = write_private(&binding, format!("{origin}\n").as_bytes());
                }
                legacy
            }
            Err(_) => None,
        };
        let (server, _) = self.server.as_ref()?;
        let current = server_origin(server).ok()?;
        match bound {
            Some(b) if b == current => Some((token, Source::File)),
            Some(b) => {
                crate::output::warn(&format!(
                    "the saved token belongs to {b}, not {current}: it is not sent there. To use {current}, run `kluis --server {server} login`"
                ));
                None
            }
            None => {
                crate::output::warn(&format!(
                    "the saved token does not say which key server it is for, so it is not sent to {current}: run `kluis --server {server} login` again"
                ));
                None
            }
        }
    }

    /// Read the configuration but no token (`token` is `None`): for `kluis login`, which
    /// replaces the saved token, including one that cannot be read.
    pub fn load_without_token(server_flag: Option<String>) -> Result<Settings, CliError> {
        let dir = config_dir()?;
        let path = dir.join(CONFIG_FILE);
        let file = match read_small(&path) {
            Ok(text) => toml::from_str::<FileConfig>(&text).map_err(|e| {
                CliError::usage(format!(
                    "{path:?} is not a valid kluis configuration: {}; fix it or run `kluis config set`",
                    e.message()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => FileConfig::default(),
            Err(e) => return Err(CliError::io(&path, "read", &e)),
        };
        let server = match server_flag.filter(|s| !s.is_empty()) {
            Some(s) => Some((s, Source::Flag)),
            None => file.server.clone().map(|s| (s, Source::File)),
        };
        let cache_dir = match std::env::var_os("KLUIS_CACHE_DIR").filter(|d| !d.is_empty()) {
            Some(d) => Some((absolute(Path::new(&d)), Source::Env)),
            None => match &file.cache_dir {
                Some(d) => Some((dir.join(d), Source::File)),
                None => ClientConfig::default_cache_dir().map(|d| (d, Source::Default)),
            },
        };
        Ok(Settings {
            dir,
            file,
            server,
            token: None,
            cache_dir,
        })
    }

    /// The private folder for plaintext temporary files of outputs inside a cloud sync
    /// folder where the system has no unnamed ones: `tmp` in the label cache folder (see
    /// `kluis_file::OpenOptions::temp_dir`).
    pub fn temp_dir(&self) -> Option<PathBuf> {
        self.cache_dir.as_ref().map(|(d, _)| d.join("tmp"))
    }

    /// The key server URL, or an error saying how to configure one.
    pub fn server(&self) -> Result<&str, CliError> {
        self.server.as_ref().map(|(s, _)| s.as_str()).ok_or_else(|| {
            CliError::usage(
                "no key server configured: run `kluis login --server https://…`, `kluis config set server https://…`, or set KLUIS_SERVER",
            )
        })
    }

    /// The client configuration for the configured server (with the label cache).
    pub fn client_config(&self) -> Result<ClientConfig, CliError> {
        let mut c = ClientConfig::new(self.server()?);
        c.token = self.token.as_ref().map(|(t, _)| t.clone());
        c.ca_file = self.file.ca_file.as_ref().map(|p| self.dir.join(p));
        c.cache_dir = self.cache_dir.as_ref().map(|(d, _)| d.clone());
        if let Some(secs) = std::env::var("KLUIS_TIMEOUT")
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
        {
            c.timeout = Duration::from_secs(secs.max(1));
        }
        Ok(c)
    }

    /// A client for the configured server.
    pub fn client(&self, purpose: Purpose, reason: Option<&str>) -> Result<Client, CliError> {
        let client = Client::new(self.client_config()?)?.with_purpose(purpose);
        Ok(match reason {
            Some(r) => client.with_reason(r)?,
            None => client,
        })
    }

    /// The identity file to use: `flag`, else `identity` in config.toml, else the default
    /// file in the configuration folder when it exists. `(path, explicit)`.
    pub fn identity_path(&self, flag: Option<&Path>) -> Option<PathBuf> {
        if let Some(p) = flag {
            return Some(p.to_owned());
        }
        if let Some(p) = &self.file.identity {
            return Some(self.dir.join(p));
        }
        let default = self.dir.join(DEFAULT_IDENTITY);
        default.exists().then_some(default)
    }

    /// The holder public key for a double-key slot when `--to` is not given: `default_to`,
    /// else the identity's public key, authenticated (never just its comment line, which
    /// anyone who can edit the file can change; see crate::pins).
    pub fn default_holder(
        &self,
        identity: Option<&Path>,
        passphrase: &crate::keys::Passphrase,
    ) -> Result<Option<PublicKey>, CliError> {
        if let Some(k) = &self.file.default_to {
            return parse_public_key(k, "default_to in config.toml").map(Some);
        }
        match self.identity_path(identity) {
            Some(p) => crate::pins::holder_public_key(&p, passphrase).map(Some),
            None => Ok(None),
        }
    }
}

/// Parse a `kluis1…` public key, naming where it came from in the error.
pub fn parse_public_key(s: &str, what: &str) -> Result<PublicKey, CliError> {
    s.parse::<PublicKey>()
        .map_err(|e| CliError::usage(format!("{what}: {e}")))
}

/// Write `data` to `path` atomically with mode 0600 (temporary file, fsync, rename), making
/// its folder (0700) if needed.
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), CliError> {
    create_private_dir(path.parent().unwrap_or(Path::new(".")))?;
    crate::atomic::replace_private(path, data)
}

/// Create a folder (and its parents) for private files: mode 0700 for the ones created.
pub fn create_private_dir(dir: &Path) -> Result<(), CliError> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)
        .map_err(|e| CliError::io(dir, "create the folder", &e))
}

impl FileConfig {
    /// Set `key` to `value`, checking it. Paths are stored absolute.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), CliError> {
        let path = || Some(absolute(Path::new(value)));
        match key {
            "server" => {
                // Client::new checks the address and sends nothing.
                Client::new(ClientConfig::new(value))?;
                self.server = Some(value.trim().to_owned());
            }
            "ca_file" => self.ca_file = path(),
            "label" => {
                // The client's own rule, so that a saved label is one `seal` will use.
                kluis_client::check_label(value).map_err(|e| {
                    CliError::usage(format!(
                        "{e}; nothing was saved (`kluis labels` lists the key server's labels)"
                    ))
                })?;
                self.label = Some(value.to_owned());
            }
            "default_to" => {
                parse_public_key(value, "default_to")?;
                self.default_to = Some(value.trim().to_owned());
            }
            "identity" => self.identity = path(),
            "cache_dir" => self.cache_dir = path(),
            _ => return Err(unknown_key(key)),
        }
        Ok(())
    }

    /// Remove `key`.
    pub fn unset(&mut self, key: &str) -> Result<(), CliError> {
        match key {
            "server" => self.server = None,
            "ca_file" => self.ca_file = None,
            "label" => self.label = None,
            "default_to" => self.default_to = None,
            "identity" => self.identity = None,
            "cache_dir" => self.cache_dir = None,
            _ => return Err(unknown_key(key)),
        }
        Ok(())
    }

    /// Save to `<dir>/config.toml`.
    pub fn save(&self, dir: &Path) -> Result<(), CliError> {
        let text = toml::to_string(self).map_err(|e| {
            CliError::new(
                Class::Failed,
                format!("cannot write the configuration: {e}"),
            )
        })?;
        let header = "# kluis configuration (`kluis config set KEY VALUE` edits it)\n";
        write_private(&dir.join(CONFIG_FILE), format!("{header}{text}").as_bytes())
    }
}

fn unknown_key(key: &str) -> CliError {
    CliError::usage(format!(
        "unknown configuration key {key:?}: use one of {}",
        KEYS.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_checks_values_and_round_trips() {
        let mut c = FileConfig::default();
        c.set("server", "https://keys.example.org").unwrap();
        assert!(c.set("server", "http://keys.example.org").is_err());
        for bad in ["a/b", ".", "..", ""] {
            assert!(c.set("label", bad).is_err(), "{bad}");
        }
        c.set("label", "hr").unwrap();
        assert!(c.set("default_to", "kluis1nope").is_err());
        let k = kluis_core::Identity::generate().unwrap().public_key();
        c.set("default_to", &k.to_string()).unwrap();
        assert!(c.set("colour", "blue").is_err());
        let text = toml::to_string(&c).unwrap();
        assert_eq!(toml::from_str::<FileConfig>(&text).unwrap(), c);
        c.unset("label").unwrap();
        assert_eq!(c.label, None);
        assert!(toml::from_str::<FileConfig>("nonsense = 1").is_err());
    }
}
