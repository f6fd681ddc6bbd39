//! The `kluis-server` command: initialise the store and administer labels, tokens and the
//! audit trail, and `serve` the HTTP API (plain HTTP on loopback only, for now: TLS is not
//! built yet).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kluis_server::{KeySource, Policy, Result, ServerError, SqliteStore, Store, now_ms};

/// The kluis on-premise key server.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// The SQLite store.
    #[arg(
        long,
        env = "KLUIS_STORE",
        default_value = "kluis-server.db",
        global = true
    )]
    store: PathBuf,
    /// The master key file (written 0600 by `init`).
    #[arg(
        long,
        env = "KLUIS_KEY_FILE",
        default_value = "kluis-master.key",
        global = true
    )]
    key_file: PathBuf,
    /// Use a passphrase from this environment variable instead of a key file.
    #[arg(long, global = true)]
    passphrase_env: Option<String>,
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
    /// Serve the HTTP API until SIGINT or SIGTERM.
    Serve {
        /// Address to listen on (port 0 picks a free port; the address is printed).
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: std::net::SocketAddr,
        /// Serve plain HTTP. Allowed only on a loopback address (TLS is not built yet).
        #[arg(long)]
        insecure_http: bool,
        /// The most items one batch unwrap may carry.
        #[arg(long, default_value_t = 1000)]
        max_batch: usize,
    },
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
        /// Rotate to a new key version every N days.
        #[arg(long)]
        rotation_days: Option<u32>,
        /// Destroy key versions older than N days.
        #[arg(long)]
        retention_days: Option<u32>,
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
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Verify the whole hash chain.
    Verify,
    /// Write every record as JSON lines to standard output.
    Export,
}

fn actor() -> String {
    format!(
        "admin:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
    )
}

fn json(v: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(v).expect("serialisable")
}

fn run(cli: Cli) -> Result<()> {
    let pass;
    let key = match &cli.passphrase_env {
        Some(var) => {
            pass = zeroize::Zeroizing::new(std::env::var(var).map_err(|_| {
                ServerError::Init("the passphrase environment variable is not set")
            })?);
            KeySource::Passphrase(pass.as_bytes())
        }
        None => KeySource::File(&cli.key_file),
    };
    if let Command::Init = cli.command {
        SqliteStore::init(&cli.store, key)?;
        println!("initialised store {}", cli.store.display());
        if cli.passphrase_env.is_none() {
            println!(
                "master key written to {} (mode 0600): back it up offline",
                cli.key_file.display()
            );
        }
        return Ok(());
    }
    let mut store = SqliteStore::open(&cli.store, key)?;
    if let Command::Serve {
        listen,
        insecure_http,
        max_batch,
    } = cli.command
    {
        if !insecure_http || !listen.ip().is_loopback() {
            return Err(ServerError::Refused(
                "TLS is not built yet: serve plain HTTP with --insecure-http, and only on a loopback address".into(),
            ));
        }
        let config = kluis_server::api::ApiConfig {
            max_batch,
            ..Default::default()
        };
        return serve(store, listen, config);
    }
    let out = &mut std::io::stdout().lock();
    match cli.command {
        Command::Init | Command::Serve { .. } => unreachable!("handled above"),
        Command::Label(cmd) => match cmd {
            LabelCmd::Create {
                name,
                users,
                groups,
                double_key,
                recovery,
                rotation_days,
                retention_days,
            } => {
                let policy = Policy {
                    users,
                    groups,
                    double_key,
                    recovery,
                    rotation_days,
                    retention_days,
                };
                let public = store.create_label(&name, &policy, &actor())?;
                writeln!(out, "label {name} version 1: {}", public.key())?;
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
            LabelCmd::Destroy { name, kid, confirm } => {
                if confirm != name {
                    return Err(ServerError::Refused(format!(
                        "destroying is irreversible: pass --confirm {name} to confirm"
                    )));
                }
                store.destroy(&name, kid, &actor())?;
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
        },
        Command::Audit(cmd) => match cmd {
            AuditCmd::Verify => {
                let (n, head) = store.verify_audit()?;
                writeln!(out, "audit trail verified: {n} records, head {head}")?;
            }
            AuditCmd::Export => {
                for r in store.audit_records(None)? {
                    writeln!(out, "{}", serde_json::to_string(&r).expect("serialisable"))?;
                }
            }
        },
    }
    Ok(())
}

fn serve(
    store: SqliteStore,
    listen: std::net::SocketAddr,
    config: kluis_server::api::ApiConfig,
) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        println!("listening on http://{}", listener.local_addr()?);
        std::io::stdout().flush()?;
        let app = kluis_server::api::router(store, config)
            .into_make_service_with_connect_info::<std::net::SocketAddr>();
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown())
            .await?;
        Ok(())
    })
}

/// Resolves on SIGINT or SIGTERM; in-flight requests then finish.
async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kluis-server: {e}");
            ExitCode::FAILURE
        }
    }
}
