//! The command line: the clap definition (also the source of completions and the man page).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// The exit codes, shown once: after `kluis --help` and in the man page.
pub const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  some files failed, or an error not listed below
  2  usage or configuration error (bad option, no key server configured, a document needs
     your identity file and none is given, an identity file that is malformed or unreadable)
  3  the key server cannot be reached (sealing still works offline from the label cache)
  4  authentication needed or failed (no token, token expired or revoked: run `kluis login`;
     wrong identity passphrase)
  5  denied by the label's policy (not allowed, double key required, version retired)
  6  the document's key was destroyed (retention): nobody can open it any more
  7  corrupt, tampered with or not a kluis document (also: a hostile stored file name, an
     identity file that fails its own check: its `# public key:` line was edited, and a
     document in a newer format version than this kluis reads: upgrade kluis)
  8  the output exists (use --force to replace it)
  9  none of your keys opens the document: it is sealed to other keys (someone else's, or
     a label or key version the key server does not have: another organisation's document,
     or one whose label or version bytes were altered)
When files fail for different reasons the exit code is 1; when they all fail for the same
reason it is that reason's code.";

const ABOUT: &str = "Seal files before they go to the cloud; open them after download.";

const LONG_ABOUT: &str = "\
Seal files before they go to the cloud; open them after download.

Sealing needs only a label's public key (fetched from the organisation's key server and cached,
so sealing works offline). Opening asks the key server, which checks the label's policy and
records the opening in its audit trail. Double-key labels also need your own identity file.

Without file arguments (or with `-`), `seal` and `open` stream standard input to standard
output. Progress bars are drawn when standard error is a terminal.

Configuration lives in $KLUIS_CONFIG_DIR, else $XDG_CONFIG_HOME/kluis, else ~/.config/kluis:
config.toml (see `kluis config show`) and token (written by `kluis login`, mode 0600).";

/// The `kluis` command.
#[derive(Parser, Debug)]
#[command(
    name = "kluis",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = EXIT_CODES,
    propagate_version = true
)]
pub struct Cli {
    /// The key server's URL (overrides `server` in config.toml).
    #[arg(long, env = "KLUIS_SERVER", global = true, value_name = "URL")]
    pub server: Option<String>,
    /// Print results as one JSON document on standard output (errors still go to standard
    /// error).
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress bars, summaries or notes; errors and warnings only.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Seal files and folders (or standard input) under a label.
    Seal(SealArgs),
    /// Open sealed files and folders (or standard input).
    Open(OpenArgs),
    /// Show what a sealed document says about itself, without any key.
    Inspect(InspectArgs),
    /// Move sealed documents to their label's current key version (rewrites the header only).
    Rekey(RekeyArgs),
    /// Make a holder identity (your own key for double-key labels), sealed with a passphrase.
    Keygen(KeygenArgs),
    /// Save a token for the key server (read from standard input or a file, never from the
    /// command line).
    Login(LoginArgs),
    /// Remove the saved token.
    Logout,
    /// Show or change the configuration.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// List the labels on the key server.
    Labels,
    /// List the openings the key server recorded under your name.
    Audit(AuditArgs),
    /// Check the key server, the token and the label cache.
    Status,
    /// Keep a plain folder sealed in a cloud sync folder, both ways (`kluis sync status`:
    /// what is pending, in conflict or failing).
    Sync(SyncArgs),
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    Man,
}

/// `kluis sync`.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct SyncArgs {
    /// `status`: what each synced pair of folders has pending, in conflict or failing.
    #[command(subcommand)]
    pub cmd: Option<SyncCmd>,
    /// The plain folder you work in (a folder named `status`: write `./status`).
    #[arg(value_name = "PLAIN", env = "KLUIS_SYNC_PLAIN")]
    pub plain: Option<PathBuf>,
    /// The sealed folder, inside the OneDrive or SharePoint folder: only sealed files go there.
    #[arg(value_name = "SEALED", env = "KLUIS_SYNC_SEALED")]
    pub sealed: Option<PathBuf>,
    /// The label to seal under (default: `label` in config.toml).
    #[arg(short, long, env = "KLUIS_LABEL")]
    pub label: Option<String>,
    /// Sealed files get meaningless names derived from a folder key shared through the label
    /// (every device and colleague gets the same names); without it, PATH.kluis.
    #[arg(long, env = "KLUIS_SYNC_HIDE_NAMES")]
    pub hide_names: bool,
    /// Keep syncing on every change until stopped (event-driven; idle when nothing changes).
    #[arg(long)]
    pub watch: bool,
    /// Carry out deletions even when a large share of the files would go at once.
    #[arg(long)]
    pub allow_mass_delete: bool,
    /// With --hide-names: the folder-key document (its id) to use when SEALED holds several
    /// and this device has not used one before (kluis lists them); ask who set the folder up.
    #[arg(long, value_name = "DOCID")]
    pub trust_folder_key: Option<String>,
    /// A plain file is sealed only once it has not changed for this long (with --watch, the
    /// folders must also have been quiet for 300 ms).
    #[arg(long, value_name = "MS", default_value_t = 250)]
    pub settle_ms: u64,
}

/// `kluis sync` subcommands.
#[derive(Subcommand, Debug)]
pub enum SyncCmd {
    /// Show what each synced pair of folders has pending, in conflict or failing.
    Status,
}

/// Where an identity file's passphrase comes from when it is not asked on the terminal.
#[derive(Args, Debug, Clone, Default)]
pub struct PassphraseArgs {
    /// Read the identity passphrase from the first line of this file (for scripts).
    #[arg(long, value_name = "FILE", conflicts_with = "passphrase_env")]
    pub passphrase_file: Option<PathBuf>,
    /// Read the identity passphrase from this environment variable (for scripts).
    #[arg(long, value_name = "VAR")]
    pub passphrase_env: Option<String>,
}

/// `kluis seal`.
#[derive(Args, Debug)]
pub struct SealArgs {
    /// The label to seal under (default: `label` in config.toml).
    #[arg(short, long, env = "KLUIS_LABEL")]
    pub label: Option<String>,
    /// Your holder public key (kluis1…), the second key of a double-key label (default:
    /// `default_to` in config.toml, else the public key of your identity file). Given for a
    /// label that does not require double key, it makes the document double key anyway.
    #[arg(long, value_name = "PUBLIC_KEY")]
    pub to: Option<String>,
    /// Write sealed files into this folder (folders are mirrored below it); when streaming,
    /// write the sealed document to this file instead of standard output.
    #[arg(short, long, value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// Give every sealed file a meaningless name; the real name (with -o: the relative
    /// path) is kept only inside the sealed document. The name is derived from the real one
    /// with a secret key kept in the configuration folder (names.key), so sealing the same
    /// path again (with --force) replaces its sealed copy instead of adding a second one.
    #[arg(long)]
    pub hide_names: bool,
    /// Pad each document (Padmé) so its size reveals little about the real size.
    #[arg(long)]
    pub pad: bool,
    /// Replace existing outputs.
    #[arg(short, long)]
    pub force: bool,
    /// Remove each original after its sealed copy was opened back (through the key server,
    /// which records it) and compared byte for byte.
    #[arg(long)]
    pub remove_original: bool,
    /// Identity file to verify double-key copies with (for --remove-original).
    #[arg(long, env = "KLUIS_IDENTITY", value_name = "FILE")]
    pub identity: Option<PathBuf>,
    #[command(flatten)]
    pub passphrase: PassphraseArgs,
    /// Files and folders to seal; none or `-` streams standard input to standard output.
    pub files: Vec<PathBuf>,
}

/// `kluis open`.
#[derive(Args, Debug)]
pub struct OpenArgs {
    /// Restore files into this folder (created if missing); when streaming, write the
    /// plaintext to this file instead of standard output.
    #[arg(short, long, value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// Your identity file, for double-key documents and holder or recovery keys (default:
    /// `identity` in config.toml, else identity.key in the configuration folder). Its
    /// passphrase is asked only when a document needs it.
    #[arg(long, env = "KLUIS_IDENTITY", value_name = "FILE")]
    pub identity: Option<PathBuf>,
    #[command(flatten)]
    pub passphrase: PassphraseArgs,
    /// Why you open these documents; the key server records it with each opening.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Replace existing outputs (never a sealed `.kluis` document).
    #[arg(short, long)]
    pub force: bool,
    /// Restore a document given by name even when its stored name starts with a dot (a
    /// hidden file such as `.bashrc`); without it such a document is refused. A document
    /// given by name is always restored under its plain file name, without folders.
    #[arg(long)]
    pub allow_dotfiles: bool,
    /// Sealed files and folders to open; none or `-` streams standard input to standard
    /// output.
    pub files: Vec<PathBuf>,
}

/// `kluis audit`.
#[derive(Args, Debug)]
pub struct AuditArgs {
    /// Show at most this many events (the newest first).
    #[arg(short = 'n', long, default_value_t = 100, value_name = "N")]
    pub limit: usize,
    /// Show the events older than this sequence number (the SEQ column): the next page.
    #[arg(long, value_name = "SEQ")]
    pub before: Option<i64>,
}

/// `kluis inspect`.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Sealed files; none or `-` reads standard input.
    pub files: Vec<PathBuf>,
}

/// `kluis rekey`.
#[derive(Args, Debug)]
pub struct RekeyArgs {
    /// Your holder public key for the new double-key slot (default: the key of the identity
    /// that opened the document, else `default_to`, else your identity file's public key).
    #[arg(long, value_name = "PUBLIC_KEY")]
    pub to: Option<String>,
    /// Your identity file, for double-key documents.
    #[arg(long, env = "KLUIS_IDENTITY", value_name = "FILE")]
    pub identity: Option<PathBuf>,
    #[command(flatten)]
    pub passphrase: PassphraseArgs,
    /// Why; the key server records it with each unwrap.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Rewrite the slots even of documents already on the current key version (for example
    /// after the label's recovery keys changed).
    #[arg(short, long)]
    pub force: bool,
    /// Sealed files, and folders to search for `.kluis` files.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// `kluis keygen`.
#[derive(Args, Debug)]
pub struct KeygenArgs {
    /// Where to write the identity file (mode 0600; never overwritten) [default:
    /// identity.key in the configuration folder].
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Print the public key of an existing identity file instead: derived from its secret
    /// with --passphrase-file/--passphrase-env, else the key recorded when it was made or
    /// last opened here, else the passphrase is asked (its `# public key:` comment alone is
    /// never trusted).
    #[arg(long, value_name = "FILE", conflicts_with = "output")]
    pub public: Option<PathBuf>,
    #[command(flatten)]
    pub passphrase: PassphraseArgs,
}

/// `kluis login`.
#[derive(Args, Debug)]
pub struct LoginArgs {
    /// Read the token from this file instead of standard input.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Save the token without checking it with the key server.
    #[arg(long)]
    pub no_check: bool,
}

/// `kluis config`.
#[derive(Subcommand, Debug)]
pub enum ConfigCmd {
    /// Show the configuration in effect and where each value comes from.
    Show,
    /// Set a value in config.toml: server, ca_file, label, default_to, identity, cache_dir.
    Set {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// Remove a value from config.toml.
    Unset {
        /// The key.
        key: String,
    },
}
