//! The `kluis-server` command: initialise the store, administer labels, tokens and the audit
//! trail, and `serve` the HTTP API over TLS (or plain HTTP on loopback, for tests and the
//! quickstart).

#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use kluis_server::api::{Api, ApiConfig};
use kluis_server::config::Config;
use kluis_server::serve::{ListenLimits, TlsFiles, serve, signals};
use kluis_server::{
    KeyService, KeySource, Policy, PolicyEdit, Result, ServerError, SqliteStore, Store, anchor,
    now_ms, parse_duration,
};
use zeroize::Zeroizing;

/// The kluis on-premise key server.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// A TOML configuration file (see docs/SERVER.md); flags and environment override it.
    #[arg(long, env = "KLUIS_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// The store: a SQLite file, or a PostgreSQL database as
    /// `postgres://USER@HOST:PORT/DATABASE` (no password in it) [default: kluis-server.db].
    #[arg(long, env = "KLUIS_STORE", global = true)]
    store: Option<PathBuf>,
    /// PostgreSQL store: read the database password from this file (first line). Or set
    /// KLUIS_STORE_PASSWORD or PGPASSWORD; never on the command line.
    #[arg(long, env = "KLUIS_STORE_PASSWORD_FILE", global = true)]
    store_password_file: Option<PathBuf>,
    /// PostgreSQL store: the organisation's CA certificates (PEM); TLS is then required and
    /// the server's certificate and host name are checked (needed for a non-loopback host).
    #[arg(long, env = "KLUIS_STORE_CA_FILE", global = true)]
    store_ca_file: Option<PathBuf>,
    /// The master key file, written 0600 by `init` [default: kluis-master.key].
    #[arg(long, env = "KLUIS_KEY_FILE", global = true)]
    key_file: Option<PathBuf>,
    /// Use a passphrase from this environment variable instead of a key file.
    #[arg(long, global = true)]
    passphrase_env: Option<String>,
    /// Use a passphrase read from this file (first line) instead of a key file.
    #[arg(long, global = true)]
    passphrase_file: Option<PathBuf>,
    /// Use a passphrase read from this open file descriptor (first line).
    #[arg(long, global = true)]
    passphrase_fd: Option<u32>,
    /// Ask for the passphrase on the terminal instead of using a key file.
    #[arg(long, global = true)]
    passphrase_prompt: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the store and its master key.
    Init,
    /// Manage labels and their key versions.
    #[command(subcommand)]
    Label(LabelCmd),
    /// Manage API tokens.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Inspect the audit trail.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Run due scheduled rotations and retention destructions now (`serve` also runs them),
    /// and finish a pending scrub of destroyed keys; exits non-zero while one cannot finish.
    Schedule,
    /// Write a consistent copy of the store to a new file, also while the server runs.
    Backup {
        /// The backup file to create (mode 0600); it must not exist.
        #[arg(long)]
        to: PathBuf,
    },
    /// Put a backup in place as the store, after checking it (stop the server first).
    Restore {
        /// The backup file, as `backup --to` wrote it.
        #[arg(long)]
        from: PathBuf,
        /// Replace an existing store.
        #[arg(long)]
        force: bool,
    },
    /// Manage the master key.
    #[command(subcommand)]
    MasterKey(MasterKeyCmd),
    /// Serve the HTTP API until SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// Check the store file's integrity, and scrub old copies of destroyed keys from it (no master key needed).
    #[command(subcommand)]
    Store(StoreCmd),
}

#[derive(Subcommand)]
enum StoreCmd {
    /// Check the store file's integrity (SQLite `integrity_check`); exits non-zero and says
    /// what is wrong if it is damaged. `serve` runs the quicker `quick_check` at start.
    Check {
        /// Run only `quick_check` (what `serve` runs at start), not the full check.
        #[arg(long)]
        quick: bool,
    },
    /// Remove old copies of destroyed keys from the store files (checkpoint and empty the
    /// write-ahead log); needed when a destroy reported that a reader held them.
    Scrub,
    /// Copy a SQLite store into a new, empty PostgreSQL database: labels, key versions,
    /// tokens and the whole audit trail (same master key, same audit head). Stop the server
    /// first.
    Copy {
        /// The SQLite store, as `sqlite:PATH`.
        #[arg(long)]
        from: String,
        /// The PostgreSQL database, as `postgres://USER@HOST:PORT/DATABASE` (empty).
        #[arg(long)]
        to: String,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on; port 0 picks a free port (the address is printed) [default: 127.0.0.1:8443].
    #[arg(long, env = "KLUIS_LISTEN")]
    listen: Option<SocketAddr>,
    /// TLS certificate chain (PEM).
    #[arg(long, env = "KLUIS_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "KLUIS_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Serve plain HTTP. Allowed only on a loopback address (tests, the quickstart).
    #[arg(long)]
    insecure_http: bool,
    /// The most items one batch unwrap may carry [default: 1000].
    #[arg(long, env = "KLUIS_MAX_BATCH")]
    max_batch: Option<usize>,
    /// Unwrapped items per identity per second; 0 turns rate limiting off [default: 500].
    #[arg(long, env = "KLUIS_RATE_LIMIT")]
    rate_limit: Option<f64>,
    /// Items an identity may unwrap in a burst [default: 5000].
    #[arg(long, env = "KLUIS_RATE_BURST")]
    rate_burst: Option<f64>,
    /// How often scheduled rotation and retention run, in seconds [default: 60].
    #[arg(long, env = "KLUIS_SCHEDULE_INTERVAL")]
    schedule_interval: Option<u64>,
}

#[derive(Subcommand)]
enum LabelCmd {
    /// Create a label with key version 1.
    Create {
        /// The label name (1-64 of A-Z a-z 0-9 . _ -).
        name: String,
        /// A user who may open (repeatable).
        #[arg(long = "user")]
        users: Vec<String>,
        /// A group whose members may open (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Require double key for this label.
        #[arg(long)]
        double_key: bool,
        /// A recovery public key (kluis1…) added to every document (repeatable).
        #[arg(long = "recovery")]
        recovery: Vec<String>,
        /// Rotate to a new key version this often (`90d`, `12h`, `30m`, `45s`); the server's
        /// scheduler does it.
        #[arg(long, value_parser = parse_duration)]
        rotate_every: Option<u64>,
        /// Destroy a key version this long after it stopped sealing new documents, which is
        /// how retention periods are enforced (`365d`, ...).
        #[arg(long, value_parser = parse_duration)]
        retain: Option<u64>,
        /// Also give the label a Microsoft Double Key Encryption key (RSA-2048) for Office,
        /// served under `[dke]` (docs/DKE.md); every rotation gives the new version one.
        #[arg(long)]
        dke: bool,
    },
    /// Give an existing label's current version a Microsoft DKE key (docs/DKE.md); every
    /// later rotation gives the new version one.
    DkeEnable {
        /// The label.
        name: String,
    },
    /// List labels.
    List,
    /// Show one label as JSON.
    Show {
        /// The label.
        name: String,
    },
    /// Make a new current key version; older versions keep opening.
    Rotate {
        /// The label.
        name: String,
    },
    /// Retire a key version: it opens only for re-keying.
    Retire {
        /// The label.
        name: String,
        /// The key version.
        kid: u32,
    },
    /// Change a label's policy; takes effect on the next request, and is audited.
    Update {
        /// The label.
        name: String,
        /// Allow a user (repeatable).
        #[arg(long)]
        add_user: Vec<String>,
        /// Stop allowing a user (repeatable).
        #[arg(long)]
        remove_user: Vec<String>,
        /// Allow a group (repeatable).
        #[arg(long)]
        add_group: Vec<String>,
        /// Stop allowing a group (repeatable).
        #[arg(long)]
        remove_group: Vec<String>,
        /// Add a recovery public key (kluis1…) (repeatable).
        #[arg(long)]
        add_recovery: Vec<String>,
        /// Remove a recovery public key (repeatable).
        #[arg(long)]
        remove_recovery: Vec<String>,
        /// Rotate this often (`90d`, `12h`, ...).
        #[arg(long, value_parser = parse_duration, conflicts_with = "no_rotation")]
        rotate_every: Option<u64>,
        /// Stop scheduled rotation.
        #[arg(long)]
        no_rotation: bool,
        /// Destroy versions this long after they stopped sealing.
        #[arg(long, value_parser = parse_duration, conflicts_with = "no_retention")]
        retain: Option<u64>,
        /// Stop destroying versions for retention.
        #[arg(long)]
        no_retention: bool,
        /// Require double key (`on`) or not (`off`, which needs --confirm NAME).
        #[arg(long, value_enum)]
        double_key: Option<OnOff>,
        /// Repeat the label name to confirm turning double key off, adding a recovery key to
        /// a double-key label, or a retention that destroys key versions within a day.
        #[arg(long)]
        confirm: Option<String>,
    },
    /// Destroy a key version: irreversible, its documents become unopenable everywhere.
    Destroy {
        /// The label.
        name: String,
        /// The key version.
        kid: u32,
        /// Repeat the label name to confirm.
        #[arg(long)]
        confirm: String,
    },
}

#[derive(Subcommand)]
enum MasterKeyCmd {
    /// Re-seal the store under a new master key, written over the key file, or derived from
    /// a new passphrase (stop the server first). Older backups then need the old key, which
    /// you destroy.
    Rotate {
        /// Passphrase stores: the new passphrase, from this environment variable.
        #[arg(long)]
        new_passphrase_env: Option<String>,
        /// Passphrase stores: the new passphrase, from this file (first line).
        #[arg(long)]
        new_passphrase_file: Option<PathBuf>,
        /// Passphrase stores: ask for the new passphrase on the terminal.
        #[arg(long)]
        new_passphrase_prompt: bool,
    },
}

/// `on` or `off`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum OnOff {
    On,
    Off,
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Issue a token; it is printed once and only its keyed hash is stored.
    Create {
        /// The user the token authenticates.
        #[arg(long)]
        user: String,
        /// A group the token carries (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Expire after this many days.
        #[arg(long)]
        expires_days: Option<u32>,
    },
    /// List tokens (without secrets).
    List,
    /// Revoke a token by id.
    Revoke {
        /// The token id, as `token list` shows it.
        id: String,
    },
    /// Revoke every active token of a user (leavers); prints the revoked ids.
    RevokeUser {
        /// The user.
        user: String,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Verify the whole hash chain.
    Verify {
        /// Also check the anchors in this file (`audit anchor` lines): fails on a rollback,
        /// a truncation past an anchor, or a rewritten record.
        #[arg(long)]
        anchors: Option<PathBuf>,
    },
    /// Append the verified head (sequence, MAC, time) as a JSON line to a file or standard
    /// output, to ship to a place admins cannot edit.
    Anchor {
        /// Append to this file instead of writing to standard output.
        #[arg(long)]
        to: Option<PathBuf>,
    },
    /// Write every record as JSON lines to standard output.
    Export {
        /// Only the records made with this credential, as the records' `credential` names it:
        /// `token:<token id>`, `oidc:<issuer name>:<sub>` (all of that subject's JWTs) or
        /// `oidc:<issuer name>:<sub>#<jti>` (one JWT), `admin-cli:<os user>`.
        #[arg(long)]
        credential: Option<String>,
    },
}

fn actor() -> String {
    let user = ["USER", "LOGNAME", "USERNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
        .or_else(os_user)
        .unwrap_or_else(|| "unknown".into());
    format!("admin:{user}")
}

/// The name of the user this process runs as, for when the environment does not say (a
/// systemd timer or service sets no `USER`): the owner of `/proc/self` looked up in
/// `/etc/passwd`, else `uid<N>`. No unsafe `getuid` call needed.
fn os_user() -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self").ok()?.uid();
    let named = std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| {
            passwd.lines().find_map(|line| {
                let mut f = line.split(':');
                let name = f.next()?;
                let id = f.nth(1)?;
                (id.parse() == Ok(uid) && !name.is_empty()).then(|| name.to_owned())
            })
        });
    Some(named.unwrap_or_else(|| format!("uid{uid}")))
}

/// Refuses, without `--confirm NAME`, a retention period that makes key versions due for
/// destruction at once (or within a day): the scheduler would crypto-shred them at its next
/// run, irreversibly, so a typo (`365s` for `365d`) must not be enough, as for `destroy`.
fn check_retention_confirmed(label: &kluis_server::LabelInfo, keep_secs: u64) -> Result<()> {
    const DAY_MS: i64 = 86_400_000;
    let keep_ms = i64::try_from(keep_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    let soon = now_ms().saturating_add(DAY_MS);
    let due: Vec<String> = label
        .versions
        .iter()
        .filter(|v| {
            matches!(
                v.state,
                kluis_server::VersionState::Active | kluis_server::VersionState::Retired
            ) && v
                .superseded_ms
                .is_some_and(|t| t.saturating_add(keep_ms) <= soon)
        })
        .map(|v| v.kid.to_string())
        .collect();
    if due.is_empty() {
        return Ok(());
    }
    let name = &label.name;
    Err(ServerError::Refused(format!(
        "with this retention, key version(s) {} of `{name}` are due for destruction now or \
         within a day: the scheduler destroys them at its next run, irreversibly (their \
         documents can no longer be opened by anyone); check the period and its unit \
         (d, h, m, s), then pass --confirm {name} to confirm",
        due.join(", ")
    )))
}

/// Refuses a `--credential` value that no record can carry, so that a mistyped one (the bare
/// token id `token list` shows, or a whole secret token) is not answered with an empty,
/// reassuring list.
fn check_credential(c: &str) -> Result<()> {
    if let Some(id) = c.strip_prefix("token:") {
        if id.len() == 14 && id.starts_with("kluis_") {
            return Ok(());
        }
        // Never echo it: it may be a whole secret token.
        return Err(ServerError::Refused(
            "an API token's credential is `token:` and its public id, `kluis_` and 8 characters \
             as `kluis-server token list` shows it (never the whole token)"
                .into(),
        ));
    }
    if c.starts_with("oidc:")
        || c == "admin-cli"
        || c.starts_with("admin-cli:")
        || c.starts_with("server:")
    {
        return Ok(());
    }
    if c.starts_with("kluis_") && c.len() == 14 {
        return Err(ServerError::Refused(format!(
            "no record names a credential `{c}`: an API token's credential is written `token:{c}`"
        )));
    }
    Err(ServerError::Refused(
        "a credential starts with `token:`, `oidc:`, `admin-cli:` or `server:`, as the records' \
         `credential` field shows it (docs/SERVER.md, \"Identities\")"
            .into(),
    ))
}

fn json(v: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(v).expect("serialisable")
}

/// Read a passphrase's first line from a reader, at most 4 KiB.
fn first_line(r: impl Read, what: &str) -> Result<Zeroizing<String>> {
    let mut buf = Zeroizing::new(Vec::new());
    r.take(4097).read_to_end(&mut buf)?;
    if buf.len() > 4096 {
        return Err(ServerError::Config(format!(
            "the passphrase from {what} is longer than 4 KiB"
        )));
    }
    let text = std::str::from_utf8(&buf)
        .map_err(|_| ServerError::Config(format!("the passphrase from {what} is not UTF-8")))?;
    let line = text.lines().next().unwrap_or("");
    if line.is_empty() {
        return Err(ServerError::Config(format!(
            "the passphrase from {what} is empty"
        )));
    }
    Ok(Zeroizing::new(line.to_owned()))
}

/// The first line of the passphrase in environment variable `var` (`what` names it in errors).
fn passphrase_from_env(var: &str, what: &str) -> Result<Zeroizing<String>> {
    let v = std::env::var(var).map_err(|_| {
        ServerError::Config(format!("the {what} environment variable {var} is not set"))
    })?;
    first_line(v.as_bytes(), "the environment")
}

/// The first line of the passphrase file `p` (`what` names it in errors).
fn passphrase_from_file(p: &std::path::Path, what: &str) -> Result<Zeroizing<String>> {
    let f = std::fs::File::open(p)
        .map_err(|e| ServerError::Config(format!("cannot read {}: {e}", p.display())))?;
    first_line(f, what)
}

/// Ask on the terminal with `question`, a second time when `confirm`; `hint` says what to use
/// without a terminal.
fn passphrase_from_prompt(question: &str, confirm: bool, hint: &str) -> Result<Zeroizing<String>> {
    let ask = |q: &str| {
        rpassword::prompt_password(q)
            .map(Zeroizing::new)
            .map_err(|e| ServerError::Config(format!("cannot ask for the passphrase: {e}: {hint}")))
    };
    let pw = ask(question)?;
    if pw.is_empty() {
        return Err(ServerError::Config("the passphrase is empty".into()));
    }
    if confirm && *ask("again, to confirm: ")? != *pw {
        return Err(ServerError::Config("the two passphrases differ".into()));
    }
    Ok(pw)
}

/// The passphrase, if one of the passphrase sources is chosen (flags, then the file).
fn passphrase(cli: &Cli, file: &Config, confirm: bool) -> Result<Option<Zeroizing<String>>> {
    let env = cli.passphrase_env.as_ref().or(file.passphrase_env.as_ref());
    let path = cli
        .passphrase_file
        .as_ref()
        .or(file.passphrase_file.as_ref());
    let fd = cli.passphrase_fd.or(file.passphrase_fd);
    let prompt = cli.passphrase_prompt || file.passphrase_prompt;
    let chosen = usize::from(env.is_some())
        + usize::from(path.is_some())
        + usize::from(fd.is_some())
        + usize::from(prompt);
    if chosen > 1 {
        return Err(ServerError::Config(
            "choose one passphrase source: --passphrase-env, --passphrase-file, --passphrase-fd or --passphrase-prompt".into(),
        ));
    }
    if let Some(var) = env {
        return passphrase_from_env(var, "passphrase").map(Some);
    }
    if let Some(p) = path {
        return passphrase_from_file(p, "the passphrase file").map(Some);
    }
    if let Some(fd) = fd {
        // The descriptor is opened by name; no unsafe descriptor juggling.
        let f = std::fs::File::open(format!("/dev/fd/{fd}")).map_err(|e| {
            ServerError::Config(format!("cannot read passphrase file descriptor {fd}: {e}"))
        })?;
        return first_line(f, "the file descriptor").map(Some);
    }
    if prompt {
        return passphrase_from_prompt(
            "kluis-server passphrase: ",
            confirm,
            "--passphrase-prompt needs a terminal; without one use --passphrase-file, \
             --passphrase-fd or --passphrase-env",
        )
        .map(Some);
    }
    Ok(None)
}

/// The new passphrase for `master-key rotate`, if one of its sources is given.
fn new_passphrase(
    env: Option<&str>,
    file: Option<&std::path::Path>,
    prompt: bool,
) -> Result<Option<Zeroizing<String>>> {
    let chosen = usize::from(env.is_some()) + usize::from(file.is_some()) + usize::from(prompt);
    if chosen > 1 {
        return Err(ServerError::Config(
            "choose one of --new-passphrase-env, --new-passphrase-file, --new-passphrase-prompt"
                .into(),
        ));
    }
    if let Some(var) = env {
        return passphrase_from_env(var, "new passphrase").map(Some);
    }
    if let Some(p) = file {
        return passphrase_from_file(p, "the new passphrase file").map(Some);
    }
    if prompt {
        return passphrase_from_prompt(
            "new kluis-server passphrase: ",
            true,
            "--new-passphrase-prompt needs a terminal; without one use --new-passphrase-file \
             or --new-passphrase-env",
        )
        .map(Some);
    }
    Ok(None)
}

/// A key file that does not open the store while `KEYFILE.new` exists: a master-key
/// rotation committed and was cut off before renaming the new key into place. Say so, or
/// the operator sees only "wrong key" and may delete the one key that opens the store.
fn interrupted_rotation(
    e: ServerError,
    key_file: &std::path::Path,
    uses_file: bool,
) -> ServerError {
    let pending = kluis_server::pending_key_file(key_file);
    if uses_file && matches!(e, ServerError::WrongMasterKey) && pending.exists() {
        return ServerError::Refused(format!(
            "the key in {} does not open this store, and {} exists: a master-key rotation was \
             interrupted after it re-sealed the store. Check that the store opens with \
             --key-file {}, then rename that file over {} (see docs/SERVER.md, Master-key \
             rotation); do not delete it",
            key_file.display(),
            pending.display(),
            pending.display(),
            key_file.display()
        ));
    }
    e
}

/// `master-key rotate`: a new key file, or a new passphrase (from the source `cmd` names) that
/// differs from the old one.
fn rotate_master<S: Store>(
    store: &mut KeyService<S>,
    cmd: &MasterKeyCmd,
    key_file: &std::path::Path,
    old: Option<&str>,
) -> Result<()> {
    let MasterKeyCmd::Rotate {
        new_passphrase_env,
        new_passphrase_file,
        new_passphrase_prompt,
    } = cmd;
    let new = new_passphrase(
        new_passphrase_env.as_deref(),
        new_passphrase_file.as_deref(),
        *new_passphrase_prompt,
    )?;
    let new = new.as_ref().map(|p| p.as_str());
    let out = &mut std::io::stdout().lock();
    let advice = "Restart the server, and destroy every copy of the old key once no backup you \
                  must keep needs it";
    match (old, new) {
        (Some(_), None) | (None, None) => {
            let done = store.rotate_master_key(key_file, &actor())?;
            writeln!(
                out,
                "master key rotated: {} label key(s) re-sealed; the new key is in {}: back it \
                 up offline. {advice}",
                done.label_keys,
                done.key_file.display()
            )?;
        }
        (Some(old), Some(new)) if old == new => {
            return Err(ServerError::Refused(
                "the new passphrase is the old one: older backups would still open with it".into(),
            ));
        }
        (_, Some(new)) => {
            let n = store.rotate_master_passphrase(new.as_bytes(), &actor())?;
            writeln!(
                out,
                "master key rotated: {n} label key(s) re-sealed under the new passphrase. \
                 {advice} (forget the old passphrase)"
            )?;
        }
    }
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    let file = match &cli.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    let store_path = cli
        .store
        .clone()
        .or(file.store.clone())
        .unwrap_or_else(|| "kluis-server.db".into());
    let key_file = cli
        .key_file
        .clone()
        .or(file.key_file.clone())
        .unwrap_or_else(|| "kluis-master.key".into());
    if let Command::Store(StoreCmd::Copy { from, to }) = &cli.command {
        return store_copy(&cli, &file, from, to);
    }
    if let Some(url) = store_path
        .to_str()
        .filter(|s| kluis_server::postgres::is_postgres_url(s))
    {
        let opts = pg_options(&cli, &file, url)?;
        return run_postgres(cli, &file, &opts, &key_file);
    }
    // A mistyped PostgreSQL URL is no file path: taken for one, it was echoed (password and
    // all) in the error, and `init` would try to create it.
    if let Some(spec) = store_path.to_str() {
        let lower = spec.to_ascii_lowercase();
        if spec.contains("://")
            || lower.starts_with("postgres:")
            || lower.starts_with("postgresql:")
        {
            return Err(ServerError::Config(
                "the store looks like a URL, but not a PostgreSQL one: write it as \
                 postgres://USER@HOST:PORT/DATABASE (or postgresql://, in lower case); a SQLite \
                 store is a file path"
                    .into(),
            ));
        }
    }
    if let Command::Store(cmd) = &cli.command {
        return store_command(cmd, &store_path);
    }
    if let Command::Serve(_) = &cli.command {
        // A damaged page must stop the server here, not surface later as 500s (issue 14).
        SqliteStore::check_integrity(&store_path, false)?;
    }
    let pass = passphrase(&cli, &file, matches!(cli.command, Command::Init))?;
    let key = match &pass {
        Some(p) => KeySource::Passphrase(p.as_bytes()),
        None => KeySource::File(&key_file),
    };
    if let Command::Init = cli.command {
        KeyService::init_sqlite(&store_path, key)?;
        println!("initialised store {}", store_path.display());
        if pass.is_none() {
            println!(
                "master key written to {} (mode 0600): back it up offline",
                key_file.display()
            );
        }
        return Ok(());
    }
    if let Command::Restore { from, force } = &cli.command {
        let check = KeyService::restore(from, &store_path, key, *force, &actor())?;
        println!(
            "restored {} from {}: audit trail verified, {} records, head {}",
            store_path.display(),
            from.display(),
            check.records,
            check.head
        );
        return Ok(());
    }
    if matches!(cli.command, Command::MasterKey(_))
        && store_path.exists()
        && SqliteStore::in_use(&store_path)?
    {
        return Err(ServerError::Refused(format!(
            "the store {} is in use (a running server?): stop it, rotate, then start it again",
            store_path.display()
        )));
    }
    let mut store = KeyService::open_sqlite(&store_path, key)
        .map_err(|e| interrupted_rotation(e, &key_file, pass.is_none()))?;
    if let Command::MasterKey(cmd) = &cli.command {
        return rotate_master(
            &mut store,
            cmd,
            &key_file,
            pass.as_ref().map(|p| p.as_str()),
        );
    }
    drop(pass);
    if let Command::Serve(args) = cli.command {
        return run_server(store, args, &file);
    }
    // Engine-specific (SQLite's `VACUUM INTO`).
    if let Command::Backup { to } = &cli.command {
        store.backup_to(to, &actor())?;
        writeln!(
            std::io::stdout().lock(),
            "backup written to {} (mode 0600); it opens only with this master key",
            to.display()
        )?;
        return Ok(());
    }
    administer(&mut store, cli.command, &|e| {
        name_store_holders(e, &store_path)
    })
}

/// The administrative commands, on any store. `diagnose` adds what the engine knows about a
/// failure to the log (SQLite: which processes hold the store open when a scrub is pending).
fn administer<S: Store>(
    store: &mut KeyService<S>,
    command: Command,
    diagnose: &dyn Fn(&ServerError),
) -> Result<()> {
    let out = &mut std::io::stdout().lock();
    match command {
        Command::Init
        | Command::Serve(_)
        | Command::Store(_)
        | Command::Restore { .. }
        | Command::Backup { .. }
        | Command::MasterKey(_) => unreachable!("handled above"),
        Command::Schedule => {
            // On a store shared by replicas, only the scheduler's lease holder runs it.
            if !store.store().scheduler_lease()? {
                return Err(ServerError::Refused(
                    "a running replica leads the scheduler on this store and runs the schedule \
                     itself; nothing done"
                        .into(),
                ));
            }
            let (changes, failure) = schedule_outcome(store.run_schedule(now_ms(), "scheduler"))?;
            for change in changes {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string(&change).expect("serialisable")
                )?;
            }
            // A scheduled destroy counts even when the scrub of its old copies could not
            // finish (a reader held them). Run from cron, nothing else retries that scrub:
            // finish it now (also one a previous run left), or fail saying why.
            let scrubbed = store
                .forget_pending_copies(Duration::from_secs(2))
                .inspect_err(diagnose);
            if let Some(failure) = failure {
                if let Err(e) = scrubbed {
                    kluis_server::log!("{e}");
                }
                return Err(failure);
            }
            scrubbed?;
        }
        Command::Label(cmd) => match cmd {
            LabelCmd::Create {
                name,
                users,
                groups,
                double_key,
                recovery,
                rotate_every,
                retain,
                dke,
            } => {
                let policy = Policy {
                    users,
                    groups,
                    double_key,
                    recovery,
                    rotation_secs: rotate_every,
                    retention_secs: retain,
                };
                let public = store.create_label_with(&name, &policy, dke, &actor())?;
                writeln!(out, "label {name} version 1: {}", public.key())?;
                if dke {
                    let id = store
                        .label(&name)?
                        .current()
                        .and_then(|v| v.dke_key_id.clone());
                    writeln!(out, "label {name}: DKE key id {}", id.unwrap_or_default())?;
                }
            }
            LabelCmd::DkeEnable { name } => {
                let id = store.enable_dke(&name, &actor())?;
                writeln!(out, "label {name}: DKE key id {id}")?;
            }
            LabelCmd::List => {
                for l in store.labels()? {
                    let current = l.current().map_or(0, |v| v.kid);
                    writeln!(
                        out,
                        "{}\tcurrent version {current}\t{} versions",
                        l.name,
                        l.versions.len()
                    )?;
                }
            }
            LabelCmd::Show { name } => writeln!(out, "{}", json(&store.label(&name)?))?,
            LabelCmd::Rotate { name } => {
                let kid = store.rotate(&name, &actor())?;
                writeln!(out, "label {name}: version {kid} is now current")?;
            }
            LabelCmd::Retire { name, kid } => {
                store.retire(&name, kid, &actor())?;
                writeln!(
                    out,
                    "label {name}: version {kid} retired (opens only for re-keying)"
                )?;
            }
            LabelCmd::Update {
                name,
                add_user,
                remove_user,
                add_group,
                remove_group,
                add_recovery,
                remove_recovery,
                rotate_every,
                no_rotation,
                retain,
                no_retention,
                double_key,
                confirm,
            } => {
                let confirmed = confirm.as_deref() == Some(name.as_str());
                if confirm.is_some() && !confirmed {
                    return Err(ServerError::Refused(format!(
                        "--confirm must repeat the label name `{name}`"
                    )));
                }
                if let (Some(keep), false) = (retain, confirmed) {
                    check_retention_confirmed(&store.label(&name)?, keep)?;
                }
                let edit = PolicyEdit {
                    add_users: add_user,
                    remove_users: remove_user,
                    add_groups: add_group,
                    remove_groups: remove_group,
                    add_recovery,
                    remove_recovery,
                    rotation_secs: if no_rotation {
                        Some(None)
                    } else {
                        rotate_every.map(Some)
                    },
                    retention_secs: if no_retention {
                        Some(None)
                    } else {
                        retain.map(Some)
                    },
                    double_key: double_key.map(|d| matches!(d, OnOff::On)),
                    confirm_double_key_off: confirmed,
                };
                let (_, new) = store.update_policy(&name, &edit, &actor())?;
                writeln!(out, "label {name}: policy updated\n{}", json(&new))?;
            }
            LabelCmd::Destroy { name, kid, confirm } => {
                if confirm != name {
                    return Err(ServerError::Refused(format!(
                        "destroying is irreversible: pass --confirm {name} to confirm"
                    )));
                }
                store.destroy(&name, kid, &actor()).inspect_err(diagnose)?;
                writeln!(
                    out,
                    "label {name}: version {kid} destroyed; its documents can no longer be opened"
                )?;
            }
        },
        Command::Token(cmd) => match cmd {
            TokenCmd::Create {
                user,
                groups,
                expires_days,
            } => {
                let expires = expires_days.map(|d| now_ms() + i64::from(d) * 86_400_000);
                let (token, id) = store.create_token(&user, &groups, expires, &actor())?;
                eprintln!("token {id} for {user} (shown once; only its keyed hash is stored):");
                writeln!(out, "{token}")?;
            }
            TokenCmd::List => writeln!(out, "{}", json(&store.tokens()?))?,
            TokenCmd::Revoke { id } => {
                store.revoke_token(&id, &actor())?;
                writeln!(out, "token {id} revoked")?;
            }
            TokenCmd::RevokeUser { user } => {
                let ids = store.revoke_user_tokens(&user, &actor())?;
                if ids.is_empty() {
                    writeln!(out, "user {user} had no active token")?;
                    // Nothing revoked can mean the procedure did nothing: say why, so that a
                    // leaver is not taken for done.
                    if user.contains(':') {
                        let _ = writeln!(
                            std::io::stderr(),
                            "kluis-server: note: `{user}` is not an API-token user; OpenID Connect \
                             users have no tokens in the store: disable the account at the \
                             identity provider (docs/OPERATIONS.md, \"The leaver procedure\")"
                        );
                    } else if !store.tokens()?.iter().any(|t| t.user == user) {
                        let _ = writeln!(
                            std::io::stderr(),
                            "kluis-server: note: no token was ever issued to `{user}`: check the \
                             spelling with `kluis-server token list`"
                        );
                    }
                }
                for id in ids {
                    writeln!(out, "token {id} revoked")?;
                }
            }
        },
        Command::Audit(cmd) => match cmd {
            AuditCmd::Verify { anchors } => {
                let (n, head) = match &anchors {
                    Some(path) => anchor::verify(store, &anchor::read(path)?)?,
                    None => store.verify_audit()?,
                };
                writeln!(out, "audit trail verified: {n} records, head {head}")?;
                if let Some(path) = anchors {
                    writeln!(out, "every anchor in {} matches", path.display())?;
                }
            }
            AuditCmd::Anchor { to } => {
                let a = anchor::take(store)?;
                match to {
                    Some(path) => {
                        anchor::append(&path, &a)?;
                        writeln!(out, "anchored record {} in {}", a.seq, path.display())?;
                    }
                    None => writeln!(out, "{}", a.to_line())?,
                }
            }
            AuditCmd::Export { credential } => {
                let records = match credential {
                    Some(c) => {
                        check_credential(&c)?;
                        store.audit_by_credential(&c)?
                    }
                    None => store.audit_records(None)?,
                };
                for r in records {
                    writeln!(out, "{}", serde_json::to_string(&r).expect("serialisable"))?;
                }
            }
        },
    }
    Ok(())
}

/// Serve the API over `store`, whatever its engine.
fn run_server<S: Store>(store: KeyService<S>, args: ServeArgs, file: &Config) -> Result<()> {
    let f = &file.serve;
    let listen = args
        .listen
        .or(f.listen)
        .unwrap_or_else(|| "127.0.0.1:8443".parse().expect("address"));
    let insecure = args.insecure_http || f.insecure_http.unwrap_or(false);
    let tls = match (
        args.tls_cert.as_ref().or(f.tls_cert.as_ref()),
        args.tls_key.as_ref().or(f.tls_key.as_ref()),
    ) {
        (Some(cert), Some(key)) if !insecure => Some(TlsFiles::load(cert, key)?),
        (Some(_), Some(_)) => {
            return Err(ServerError::Config(
                "both TLS files and --insecure-http are given: choose one".into(),
            ));
        }
        (None, None) if insecure && listen.ip().is_loopback() => None,
        (None, None) if insecure => {
            return Err(ServerError::Config(
                "plain HTTP is allowed only on a loopback address: configure --tls-cert and --tls-key".into(),
            ));
        }
        (None, None) => {
            return Err(ServerError::Config(
                "no TLS certificate: give --tls-cert and --tls-key (or, on loopback only, --insecure-http)".into(),
            ));
        }
        _ => {
            return Err(ServerError::Config(
                "give both --tls-cert and --tls-key".into(),
            ));
        }
    };
    let defaults = ApiConfig::default();
    let config = ApiConfig {
        max_batch: args.max_batch.or(f.max_batch).unwrap_or(defaults.max_batch),
        record_max_age: f.record_max_age_secs.unwrap_or(defaults.record_max_age),
        rate_per_sec: args
            .rate_limit
            .or(f.rate_limit_per_sec)
            .unwrap_or(defaults.rate_per_sec),
        rate_burst: args
            .rate_burst
            .or(f.rate_limit_burst)
            .unwrap_or(defaults.rate_burst),
        request_timeout: f
            .request_timeout_secs
            .map_or(defaults.request_timeout, Duration::from_secs),
        max_body: f.max_body_bytes.unwrap_or(defaults.max_body),
        readers: defaults.readers,
        ..defaults
    };
    // Unless set, the share fits in the budget set, and both grow with a larger body cap:
    // one body must always fit.
    let per_identity = f.max_body_bytes_in_flight_per_identity.unwrap_or_else(|| {
        let share = config.body_budget_per_identity;
        f.max_body_bytes_in_flight
            .map_or(share, |all| all.min(share))
            .max(config.max_body)
    });
    let config = ApiConfig {
        body_budget: f
            .max_body_bytes_in_flight
            .unwrap_or(config.body_budget.max(per_identity)),
        body_budget_per_identity: per_identity,
        ..config
    };
    let limits = ListenLimits {
        header_timeout: f
            .header_timeout_secs
            .map_or(ListenLimits::default().header_timeout, Duration::from_secs),
        max_connections: f
            .max_connections
            .unwrap_or(ListenLimits::default().max_connections),
        max_connections_per_address: f.max_connections_per_address,
        max_header_bytes: f
            .max_header_bytes
            .unwrap_or(ListenLimits::default().max_header_bytes),
        ..ListenLimits::default()
    };
    let interval = Duration::from_secs(
        args.schedule_interval
            .or(f.schedule_interval_secs)
            .unwrap_or(60),
    );
    check_limits(&config, &limits, interval)?;
    let oidc = oidc_verifier(file)?;
    let dke = match &file.dke {
        Some(c) => Some(c.settings(tls.is_some())?),
        None => None,
    };
    let scheduler = store.reopen()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let outcome = rt.block_on(async move {
        let hangups = kluis_server::serve::catch_hangups();
        let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
            ServerError::Config(format!(
                "cannot listen on {listen}: {e}: {}",
                match e.kind() {
                    std::io::ErrorKind::AddrInUse => {
                        "another process (a second kluis-server?) holds that address: stop it, \
                         or set another `listen` (--listen, KLUIS_LISTEN)"
                    }
                    std::io::ErrorKind::PermissionDenied => {
                        "a port below 1024 needs CAP_NET_BIND_SERVICE (docs/OPERATIONS.md, \
                         \"Configure\"): or listen on 8443"
                    }
                    _ => "check the `listen` address (--listen, KLUIS_LISTEN): it must be one of this machine's",
                }
            ))
        })?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let addr = listener.local_addr()?;
        // A standard output that cannot be written (a log on a full disk) must not keep the
        // server from serving: the line is lost, nothing else.
        let mut stdout = std::io::stdout();
        let _ = writeln!(stdout, "listening on {scheme}://{addr}");
        let _ = stdout.flush();
        let api = Api::with_dke(store, config, oidc, dke)?;
        let mut schedule = tokio::spawn(run_schedule(scheduler, interval, api.scheduler_health()));
        let outcome = supervise(
            serve(listener, api.router(), tls, limits, hangups, signals()),
            &mut schedule,
            stopped(&api),
        )
        .await;
        schedule.abort();
        api.shutdown();
        if outcome.is_ok() {
            kluis_server::log!("stopped; the audit trail is flushed");
        }
        outcome
    });
    // Requests still blocked in the store must not keep a failing process alive.
    rt.shutdown_timeout(Duration::from_secs(10));
    outcome
}

/// Serve until `served` ends, unless a part the server depends on stops first: the
/// `scheduler` task (which never ends by itself) or the audit writer (`writer_stopped`
/// resolves). Then the server does not limp on without it; it fails, so that the process
/// exits non-zero and the service manager restarts it.
async fn supervise(
    served: impl std::future::Future<Output = Result<()>>,
    scheduler: &mut tokio::task::JoinHandle<()>,
    writer_stopped: impl std::future::Future<Output = ()>,
) -> Result<()> {
    tokio::select! {
        served = served => served,
        _ = scheduler => Err(ServerError::ThreadDied("scheduler")),
        () = writer_stopped => Err(ServerError::ThreadDied("audit writer thread")),
    }
}

/// Resolves when the audit writer thread has stopped.
async fn stopped<S: Store>(api: &Api<S>) {
    let mut every = tokio::time::interval(Duration::from_millis(250));
    while api.writer_running() {
        every.tick().await;
    }
}

/// When a scrub is pending because of a reader, log which other processes have the store
/// open (one of them holds the reader), as far as `/proc` lets us see them.
fn name_store_holders(e: &ServerError, path: &std::path::Path) {
    if !matches!(e, ServerError::ScrubPending { .. }) {
        return;
    }
    let holders = store_holders(path);
    if !holders.is_empty() {
        kluis_server::log!(
            "other processes with the store open: {}",
            holders.join(", ")
        );
    }
}

/// Other processes that have the store file (or its log) open: `PID (command)`. Linux only;
/// processes of other users are not visible without privileges.
fn store_holders(path: &std::path::Path) -> Vec<String> {
    let Ok(db) = std::fs::canonicalize(path) else {
        return Vec::new();
    };
    let mut wal = db.clone().into_os_string();
    wal.push("-wal");
    let me = std::process::id().to_string();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for p in procs.flatten().take(100_000) {
        let pid = p.file_name().to_string_lossy().into_owned();
        if pid == me || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        let open = fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t == db || t.as_os_str() == wal));
        if open {
            let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
            found.push(format!("{pid} ({})", comm.trim()));
        }
    }
    found
}

/// `kluis-server store …`: integrity check and scrub, on the file alone.
fn store_command(cmd: &StoreCmd, path: &std::path::Path) -> Result<()> {
    let out = &mut std::io::stdout().lock();
    match cmd {
        StoreCmd::Check { quick } => {
            if let Err(e) = SqliteStore::check_integrity(path, !quick) {
                // The full report, one problem a line (the message names only a few).
                if let ServerError::Damaged { problems, .. } = &e {
                    for p in problems {
                        writeln!(out, "{p}")?;
                    }
                }
                return Err(e);
            }
            let what = if *quick {
                "quick_check"
            } else {
                "integrity_check"
            };
            writeln!(out, "store {}: {what} ok", path.display())?;
        }
        StoreCmd::Copy { .. } => unreachable!("handled in run"),
        StoreCmd::Scrub => {
            SqliteStore::scrub(path, Duration::from_secs(10))
                .inspect_err(|e| name_store_holders(e, path))?;
            writeln!(
                out,
                "store {}: no old copy of a destroyed key remains in its files",
                path.display()
            )?;
        }
    }
    Ok(())
}

/// Refuse settings that would break the server rather than limit it (found by fuzzing the
/// configuration: a zero connection cap never accepts, a huge timeout overflows the clock).
fn check_limits(api: &ApiConfig, listen: &ListenLimits, interval: Duration) -> Result<()> {
    let bad = |what: &str, range: &str| Err(ServerError::Config(format!("{what} must be {range}")));
    if !(1..=100_000).contains(&api.max_batch) {
        return bad("max_batch", "1 to 100000");
    }
    if !(1024..=64 * 1024 * 1024).contains(&api.max_body) {
        return bad("max_body_bytes", "1 KiB to 64 MiB");
    }
    if !(64 << 10..=64 << 30).contains(&(api.body_budget as u64)) {
        return bad("max_body_bytes_in_flight", "64 KiB to 64 GiB");
    }
    if !(api.max_body.max(64 * 1024)..=api.body_budget).contains(&api.body_budget_per_identity) {
        return bad(
            "max_body_bytes_in_flight_per_identity",
            "at least max_body_bytes (and 64 KiB) and at most max_body_bytes_in_flight",
        );
    }
    if !(1..=86_400 * 30).contains(&api.record_max_age) {
        return bad("record_max_age_secs", "1 s to 30 days");
    }
    let secs = |d: Duration| d.as_secs_f64();
    if !(1.0..=3600.0).contains(&secs(api.request_timeout)) {
        return bad("request_timeout_secs", "1 to 3600");
    }
    if !(1.0..=3600.0).contains(&secs(listen.header_timeout)) {
        return bad("header_timeout_secs", "1 to 3600");
    }
    if !(1..=1_000_000).contains(&listen.max_connections) {
        return bad("max_connections", "1 to 1000000");
    }
    if listen
        .max_connections_per_address
        .is_some_and(|n| n > 1_000_000)
    {
        return bad("max_connections_per_address", "0 (no cap) to 1000000");
    }
    if !(8 * 1024..=1024 * 1024).contains(&listen.max_header_bytes) {
        return bad("max_header_bytes", "8 KiB to 1 MiB");
    }
    if !(1.0..=7.0 * 86_400.0).contains(&secs(interval)) {
        return bad("schedule_interval_secs", "1 s to 7 days");
    }
    let rate = api.rate_per_sec;
    if !(rate == 0.0 || (0.001..=1e9).contains(&rate)) {
        return bad("rate_limit_per_sec", "0 (off) or 0.001 to 1e9");
    }
    if !(1.0..=1e9).contains(&api.rate_burst) {
        return bad("rate_limit_burst", "1 to 1e9");
    }
    Ok(())
}

/// The OpenID Connect verifier, when the configuration has an `[oidc]` table.
fn oidc_verifier(file: &Config) -> Result<Option<Arc<dyn kluis_server::api::TokenVerifier>>> {
    match &file.oidc {
        None => Ok(None),
        Some(c) => {
            let v = kluis_server::oidc::OidcVerifier::new(c.clone())
                .map_err(|e| ServerError::Config(format!("[oidc]: {e}")))?;
            if let Some(e) = v.jwks_error() {
                kluis_server::log!(
                    "warning: OpenID Connect keys not loaded yet ({e}); such tokens are refused until they are"
                );
            }
            Ok(Some(Arc::new(v)))
        }
    }
}

/// Scheduled rotation and retention, every `interval`, on its own connection. It also
/// finishes scrubs that a destroy left pending. It never stops: a failure (the store busy or
/// full, even a panic) is logged, counted in `health`, and the next tick tries again.
async fn run_schedule<S: Store>(
    store: KeyService<S>,
    interval: Duration,
    health: Arc<kluis_server::metrics::SchedulerHealth>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let store = std::sync::Mutex::new(store);
    let leading = std::sync::atomic::AtomicBool::new(false);
    let panicked = health.clone();
    let on_panic = move || {
        panicked.failed.fetch_add(1, Relaxed);
    };
    repeat(interval, on_panic, move || {
        let mut s = store.lock().unwrap_or_else(|p| p.into_inner());
        // Several replicas on one store: only the lease holder runs the schedule.
        let lead = match s.store().scheduler_lease() {
            Ok(lead) => lead,
            Err(e) => {
                kluis_server::log!("scheduler: the store is unreachable, retrying: {e}");
                health.failed.fetch_add(1, Relaxed);
                return;
            }
        };
        if lead != leading.swap(lead, std::sync::atomic::Ordering::Relaxed) {
            kluis_server::log!(
                "scheduler: {}",
                if lead {
                    "this replica leads scheduled rotation and retention"
                } else {
                    "this replica no longer leads the scheduler"
                }
            );
        }
        if !lead {
            health.standby.fetch_add(1, Relaxed);
            return;
        }
        let scrubbed = s.forget_pending_copies(Duration::from_secs(1));
        health.scrub_pending.store(scrubbed.is_err(), Relaxed);
        match scrubbed {
            Ok(true) => kluis_server::log!(
                "scheduled scrub: no old copy of a destroyed key remains in the store files"
            ),
            Ok(false) => {}
            Err(e) => kluis_server::log!("scheduled scrub not done yet, retrying: {e}"),
        }
        let ok = match schedule_outcome(s.run_schedule(now_ms(), "scheduler")) {
            Ok((changes, failure)) => {
                for c in changes {
                    match serde_json::to_string(&c) {
                        Ok(c) => kluis_server::log!("scheduled {c}"),
                        Err(_) => kluis_server::log!("scheduled a change"),
                    }
                }
                if let Some(e) = &failure {
                    kluis_server::log!("{e}");
                }
                failure.is_none()
            }
            Err(e) => {
                kluis_server::log!(
                    "scheduled rotation/retention failed, retrying at the next tick: {e}"
                );
                false
            }
        };
        if ok {
            health.ok.fetch_add(1, Relaxed);
            health.last_success_ms.store(now_ms(), Relaxed);
        } else {
            health.failed.fetch_add(1, Relaxed);
        }
    })
    .await
}

/// The changes a scheduled run made, and its failure if some labels failed while others
/// were done (`ScheduleIncomplete`, with the changes taken out of it).
fn schedule_outcome(
    run: Result<Vec<kluis_server::ScheduledChange>>,
) -> Result<(Vec<kluis_server::ScheduledChange>, Option<ServerError>)> {
    match run {
        Ok(done) => Ok((done, None)),
        Err(ServerError::ScheduleIncomplete { done, failed }) => Ok((
            done,
            Some(ServerError::ScheduleIncomplete {
                done: Vec::new(),
                failed,
            }),
        )),
        Err(e) => Err(e),
    }
}

/// Run `work` on a blocking thread every `interval`, forever. If it panics, that is logged,
/// `on_panic` is called, and the next tick runs it again.
async fn repeat(
    interval: Duration,
    on_panic: impl Fn() + Send + 'static,
    work: impl Fn() + Send + Sync + 'static,
) {
    let work = Arc::new(work);
    let mut tick = tokio::time::interval(interval);
    loop {
        tick.tick().await;
        let work = work.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || work()).await {
            on_panic();
            kluis_server::log!(
                "the scheduler's work failed ({}), retrying at the next tick",
                if e.is_panic() {
                    "panicked"
                } else {
                    "cancelled"
                }
            );
        }
    }
}

fn main() -> ExitCode {
    // A panic's message goes through the log as well: the default hook writes to standard
    // error directly, and on a standard error that takes nothing it blocked the panicking
    // thread for ever (the scheduler then never ran again, unnoticed). The short flush gives
    // the message its chance before a panicking main thread ends the process.
    std::panic::set_hook(Box::new(|info| {
        kluis_server::log!("{info}");
        kluis_server::log::flush(Duration::from_millis(500));
    }));
    let code = match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            kluis_server::log!("{e}");
            exit_code(&e)
        }
    };
    // Log lines are written by a logging thread: let it finish, but never wait for ever on
    // a standard error that takes nothing (the process must still exit, so that the service
    // manager restarts it).
    kluis_server::log::flush(Duration::from_secs(2));
    code
}

/// Exit status for errors that restarting cannot cure (a damaged store, a wrong or exposed
/// master key, a bad configuration): the packaged unit's `RestartPreventExitStatus=78`
/// (`EX_CONFIG`) keeps systemd from restarting into the same failure every few seconds.
/// Everything else exits 1, which the unit restarts.
const EXIT_NEEDS_OPERATOR: u8 = 78;

fn exit_code(e: &ServerError) -> ExitCode {
    match e {
        ServerError::Config(_)
        | ServerError::KeyFilePermissions { .. }
        | ServerError::WrongMasterKey
        | ServerError::BadKeyFile
        | ServerError::Damaged { .. } => ExitCode::from(EXIT_NEEDS_OPERATOR),
        _ => ExitCode::FAILURE,
    }
}

// --- The PostgreSQL store (issue 15) -------------------------------------------------------

/// The PostgreSQL options: the URL, the password (a file, else `KLUIS_STORE_PASSWORD`, else
/// `PGPASSWORD`; never a flag), the CA file and the statement timeout.
fn pg_options(cli: &Cli, file: &Config, url: &str) -> Result<kluis_server::PgOptions> {
    let mut opts = kluis_server::PgOptions::new(url);
    let password_file = cli
        .store_password_file
        .as_ref()
        .or(file.store_password_file.as_ref());
    opts.password = match password_file {
        Some(p) => Some(kluis_server::postgres::password_from_file(p)?),
        None => ["KLUIS_STORE_PASSWORD", "PGPASSWORD"]
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|p| !p.is_empty()))
            .map(Zeroizing::new),
    };
    opts.ca_file = cli.store_ca_file.clone().or(file.store_ca_file.clone());
    if let Some(secs) = file.store_statement_timeout_secs {
        if !(1..=3600).contains(&secs) {
            return Err(ServerError::Config(
                "store_statement_timeout_secs must be 1 to 3600".into(),
            ));
        }
        opts.statement_timeout = Duration::from_secs(secs);
    }
    Ok(opts)
}

/// `store copy --from sqlite:PATH --to postgres://…`.
fn store_copy(cli: &Cli, file: &Config, from: &str, to: &str) -> Result<()> {
    let Some(path) = from.strip_prefix("sqlite:") else {
        return Err(ServerError::Config(
            "--from must name a SQLite store as sqlite:PATH".into(),
        ));
    };
    if !kluis_server::postgres::is_postgres_url(to) {
        return Err(ServerError::Config(
            "--to must name a PostgreSQL database as postgres://USER@HOST:PORT/DATABASE".into(),
        ));
    }
    let path = std::path::Path::new(path);
    if !path.exists() {
        return Err(ServerError::Config(format!(
            "no SQLite store at {}: give --from sqlite:PATH",
            path.display()
        )));
    }
    if SqliteStore::in_use(path)? {
        return Err(ServerError::Refused(format!(
            "the store {} is in use (a running server?): stop it, then copy",
            path.display()
        )));
    }
    let opts = pg_options(cli, file, to)?;
    let mut target = kluis_server::PgStore::create(&opts)?;
    let done = kluis_server::postgres::copy::copy_from_sqlite(path, &mut target)?;
    writeln!(
        std::io::stdout().lock(),
        "copied {} labels, {} key versions, {} tokens and {} audit records into the {}; \
         audit head {} (the same as the source's). Check it with `kluis-server --store URL \
         audit verify`",
        done.labels,
        done.versions,
        done.tokens,
        done.records,
        target.describe(),
        done.head
    )?;
    Ok(())
}

/// Every command on a PostgreSQL store. The engine-specific ones differ from SQLite's: backups
/// are PostgreSQL's (`pg_dump`, base backups), the integrity check is PostgreSQL's.
fn run_postgres(
    cli: Cli,
    file: &Config,
    opts: &kluis_server::PgOptions,
    key_file: &std::path::Path,
) -> Result<()> {
    use kluis_server::PgStore;
    let sqlite_only = |what: &str| {
        Err(ServerError::Refused(format!(
            "`{what}` is for SQLite stores; a PostgreSQL store is backed up and checked with \
             PostgreSQL's own tools (pg_dump, base backups, amcheck): see docs/SERVER.md, \
             \"The PostgreSQL store\""
        )))
    };
    match &cli.command {
        Command::Backup { .. } => return sqlite_only("backup"),
        Command::Restore { .. } => return sqlite_only("restore"),
        Command::Store(StoreCmd::Check { .. }) => return sqlite_only("store check"),
        Command::Store(StoreCmd::Scrub) => {
            let store = PgStore::open(opts)?;
            store.scrub(Duration::from_secs(10))?;
            writeln!(
                std::io::stdout().lock(),
                "store: key_versions rewritten; no old row version of a destroyed key remains \
                 in its files (the WAL and backups: see docs/SERVER.md)"
            )?;
            return Ok(());
        }
        _ => {}
    }
    let pass = passphrase(&cli, file, matches!(cli.command, Command::Init))?;
    let key = match &pass {
        Some(p) => KeySource::Passphrase(p.as_bytes()),
        None => KeySource::File(key_file),
    };
    if let Command::Init = cli.command {
        let store = PgStore::create(opts)?;
        let name = store.describe().to_owned();
        KeyService::init(store, key)?;
        println!("initialised store in the {name}");
        if pass.is_none() {
            println!(
                "master key written to {} (mode 0600): back it up offline",
                key_file.display()
            );
        }
        return Ok(());
    }
    let store = PgStore::open(opts)?;
    if matches!(cli.command, Command::MasterKey(_)) && store.other_sessions()? > 0 {
        return Err(ServerError::Refused(format!(
            "the {} is in use by another kluis-server (a running replica?): stop every \
             replica, rotate, then start them again",
            store.describe()
        )));
    }
    let mut store = KeyService::open(store, key)
        .map_err(|e| interrupted_rotation(e, key_file, pass.is_none()))?;
    if let Command::MasterKey(cmd) = &cli.command {
        return rotate_master(&mut store, cmd, key_file, pass.as_ref().map(|p| p.as_str()));
    }
    drop(pass);
    if let Command::Serve(args) = cli.command {
        return run_server(store, args, file);
    }
    administer(&mut store, cli.command, &|_| {})
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A panic in the scheduler's work does not stop the scheduler: the next tick runs again,
    /// and the panic is counted (`/metrics`).
    #[tokio::test]
    async fn the_scheduler_goes_on_after_its_work_panics() {
        let runs = Arc::new(AtomicUsize::new(0));
        let panics = Arc::new(AtomicUsize::new(0));
        let (counted, panicked) = (runs.clone(), panics.clone());
        let on_panic = move || {
            panicked.fetch_add(1, Ordering::SeqCst);
        };
        let scheduler = tokio::spawn(repeat(Duration::from_millis(10), on_panic, move || {
            if counted.fetch_add(1, Ordering::SeqCst) % 2 == 0 {
                panic!("a bug in the scheduled work");
            }
        }));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while runs.load(Ordering::SeqCst) < 5 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the scheduler stopped"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!scheduler.is_finished());
        scheduler.abort();
        assert!(
            panics.load(Ordering::SeqCst) >= 2,
            "the panics were not counted"
        );
    }

    /// Serving ends with an error (the process exits non-zero) when the scheduler task or the
    /// audit writer stops, and only then.
    #[tokio::test]
    async fn serving_fails_when_the_scheduler_or_the_writer_stops() {
        let never = std::future::pending::<()>;
        let mut dead = tokio::spawn(async { panic!("scheduler bug") });
        let e = supervise(std::future::pending(), &mut dead, never()).await;
        assert!(
            matches!(e, Err(ServerError::ThreadDied("scheduler"))),
            "{e:?}"
        );

        let mut alive = tokio::spawn(never());
        let e = supervise(std::future::pending(), &mut alive, async {}).await;
        assert!(
            matches!(e, Err(ServerError::ThreadDied("audit writer thread"))),
            "{e:?}"
        );
        let e = supervise(async { Ok(()) }, &mut alive, never()).await;
        assert!(e.is_ok(), "{e:?}");
        alive.abort();
    }
}
