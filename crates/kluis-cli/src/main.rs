//! The `kluis` command: seal files before they go to the cloud, open them after download.
//!
//! A thin layer over [`kluis_file`] (files and folders), [`kluis_client`] (the key server)
//! and [`kluis_core`] (the format): argument parsing, configuration, prompts, progress and
//! messages. Run `kluis --help`, or `kluis man` for the manual page.
//!
//! # Commands
//!
//! - `seal [--label L] [--to KEY] [-o PATH] [--hide-names] [--pad] [--force]
//!   [--remove-original] [FILES…]`: seal under a label. The label record comes from the key
//!   server or, offline, from the label cache (a warning says when an expired record is
//!   used). Every recovery key of the label is added as an extra slot. A label that requires
//!   double key needs a holder public key: `--to`, else `default_to` in config.toml, else the
//!   identity's public key as derived from its secret (recorded at `keygen` and at each
//!   unlock; an identity file whose `# public key:` comment disagrees is refused, and with no
//!   record the passphrase is asked); `--to` on another label makes the document double key
//!   anyway.
//! - `open [-o PATH] [--identity FILE] [--passphrase-file F | --passphrase-env VAR]
//!   [--reason TEXT] [--force] [FILES…]`: open through the key server (one request per 1000
//!   documents) and, where a document needs it, the holder identity.
//! - `inspect [FILES…]`: document id, slots (label and key version, holder keys), payload
//!   chunks and padded size, without any key or server.
//! - `rekey [--to KEY] [--identity FILE] [--force] FILES…`: move documents (and the `.kluis`
//!   files inside folders) to their label's *current* key version, asked from the key server
//!   even when the cache is fresh. The key server is asked with purpose `rekey` (so retired
//!   versions work); the slots are rebuilt as `seal` would build them today, and only the
//!   header is rewritten: a temporary file with the new header and the payload bytes copied
//!   unchanged is synced and renamed over the original. Documents already on the current
//!   version are left alone unless `--force`.
//! - `keygen [-o FILE]`, `keygen --public FILE`: a holder identity (X25519, sealed with an
//!   Argon2id passphrase), written 0600, never over an existing file; prints the public key.
//! - `login [--token-file F] [--no-check]`, `logout`: the token is read from standard input
//!   (a hidden prompt on a terminal) or a file, never from the command line; it is checked
//!   with the key server (`GET /v1/me/audit`) before it is saved.
//! - `config show | set KEY VALUE | unset KEY`, `labels`, `audit` (openings recorded under
//!   your name), `status` (server health, token, label cache; exit code 3 when the server is
//!   unreachable).
//! - `completions SHELL`, `man`: generated from the clap definition.
//!
//! # Configuration
//!
//! The folder is `$KLUIS_CONFIG_DIR`, else `$XDG_CONFIG_HOME/kluis`, else `~/.config/kluis`.
//! It holds `config.toml` (keys `server`, `ca_file`, `label`, `default_to`, `identity`,
//! `cache_dir`; relative paths are relative to the folder; unknown keys are errors), `token`
//! (mode 0600, written by `kluis login`) with `token.server`, the server origin it is sent to
//! and to no other, `names.key` (mode 0600, the key hidden names are derived from) and, by
//! default, `identity.key` (written by `kluis keygen`). Overrides: `--server` / `KLUIS_SERVER`, `KLUIS_TOKEN`, `KLUIS_CACHE_DIR`
//! (default: the client's per-user cache folder), `--label` / `KLUIS_LABEL`, `--identity` /
//! `KLUIS_IDENTITY`, `KLUIS_TIMEOUT` (seconds per key server request).
//!
//! # Streaming
//!
//! Without file arguments (or with `-`), `seal` and `open` stream standard input to standard
//! output, in constant memory. `-o FILE` writes to a file instead (atomically: a temporary
//! file, synced, then linked into place; never over an existing file without `--force`).
//! `seal` refuses to write to a terminal. `open` writes text to a terminal but refuses
//! binary (a NUL or invalid UTF-8 in the first bytes). Opening a stream never emits
//! unauthenticated plaintext: each 64 KiB chunk is authenticated before any of it is written.
//! A truncated or damaged document is detected at the damaged chunk or at the end, after the
//! good chunks before it were written to standard output: the exit code is then non-zero and
//! the caller must discard the output. (With `-o` nothing is left under the final name.)
//!
//! # The identity passphrase
//!
//! The holder identity is opened only when a document has a stanza that a holder or recovery
//! key opens, and before the key server is asked, so a wrong passphrase stops before an
//! opening is recorded. On a terminal the passphrase is asked (three tries); scripts give
//! `--passphrase-file FILE` (first line) or `--passphrase-env VAR`. Without any identity, a
//! double-key document fails with a message saying so, without asking the key server. One
//! known cost: when the key server refuses a single-key document that also has recovery
//! slots and an identity is configured, the passphrase is asked to try those slots.
//!
//! # Output
//!
//! Results for people go to standard error (`seal`, `open`: failures and a summary line) or
//! standard output (`inspect`, `labels`, `audit`, `status`, `rekey`, the public key of
//! `keygen`). `--json` prints one JSON document on standard output instead; for runs over
//! files it has a `files` array with one object per file (`input`, `output`, `bytes`,
//! `outcome`, and `error` and `exit_code` for failures) and an `exit_code`. When many files
//! fail for one reason (the key server is down), the reason is shown for three of them and
//! the rest are counted. Progress bars are drawn on standard error only when it is a terminal
//! (and not with `--quiet`). No message contains a token, a passphrase, key material or
//! plaintext; names stored inside documents are never shown.
//!
//! # Exit codes
//!
//! One per kind of failure, listed once: [`cli::EXIT_CODES`], shown after `kluis --help` and
//! in the man page. The classes behind them are [`error::Class`].

#![forbid(unsafe_code)]
#![deny(missing_docs)]

/// `println!` for this crate, shadowing the standard one: a standard output closed early
/// (`kluis audit | head -1`) ends the program quietly instead of panicking with "failed
/// printing to stdout". See [`output::stdout_line`].
macro_rules! println {
    () => {
        $crate::output::stdout_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::output::stdout_line(format_args!($($arg)*))
    };
}

mod account;
mod atomic;
mod cli;
mod config;
mod error;
mod inspect;
mod keys;
mod open;
mod output;
mod pins;
mod progress;
mod rekey;
mod seal;
mod sync;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use crate::cli::{Cli, Command};
use crate::error::CliError;

/// The options every command shares.
pub struct Global {
    /// `--server` / `KLUIS_SERVER`.
    pub server: Option<String>,
    /// `--json`.
    pub json: bool,
    /// `--quiet`.
    pub quiet: bool,
}

fn run(cli: Cli) -> Result<u8, CliError> {
    let g = Global {
        server: cli.server,
        json: cli.json,
        quiet: cli.quiet,
    };
    match cli.command {
        Command::Seal(a) => seal::run(a, &g),
        Command::Open(a) => open::run(a, &g),
        Command::Inspect(a) => inspect::run(a, &g),
        Command::Rekey(a) => rekey::run(a, &g),
        Command::Keygen(a) => account::keygen(a, &g),
        Command::Login(a) => account::login(a, &g),
        Command::Logout => account::logout(&g),
        Command::Config(c) => account::config(c, &g),
        Command::Labels => account::labels(&g),
        Command::Audit(args) => account::audit(args, &g),
        Command::Status => account::status(&g),
        Command::Sync(a) => sync::run(a, &g),
        Command::Completions { shell } => {
            // Into memory first: the generator panics when its output fails.
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "kluis", &mut out);
            output::stdout_bytes(&out);
            Ok(0)
        }
        Command::Man => {
            let mut out = Vec::new();
            clap_mangen::Man::new(Cli::command())
                .render(&mut out)
                .map_err(|e| CliError::new(error::Class::Failed, e.to_string()))?;
            output::stdout_bytes(&out);
            Ok(0)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("kluis: {e}");
            ExitCode::from(e.class.code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
