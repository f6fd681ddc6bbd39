//! The PostgreSQL store: several replicas on one database (issue 15). Rows only; the
//! cryptography is the keyring's ([`crate::keyring`]).
//!
//! The [`Store`] trait is synchronous; the wire protocol is `tokio-postgres`, run behind a small
//! bridge: one background thread runs a tokio runtime that drives every connection's socket,
//! and a query is a future that the calling thread polls itself (module `bridge`) with a deadline,
//! so a store call never needs (nor panics in) the caller's own runtime, and never waits for
//! ever on a database that stopped answering.
//!
//! Every write transaction first takes one transaction-level advisory lock
//! ([`WRITE_LOCK`]): writers of every replica are serialised, so the audit chain (read its
//! tail, append after it) stays one chain. The lock is released by the commit, the rollback,
//! or the end of the connection (a replica killed mid-commit: PostgreSQL rolls its
//! transaction back, nothing half-written remains).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Statement};
use zeroize::Zeroizing;

use crate::audit::{AuditEntry, AuditRecord};
use crate::error::{Result, ServerError};
use crate::store::{
    SealedRow, SecretKind, Store, StoreTx, TokenRow, VersionRow, VersionState, meta,
};

mod bridge;
pub mod copy;
mod tls;

/// The advisory lock every write transaction takes first (one chain for all replicas).
pub const WRITE_LOCK: i64 = 0x6b6c_7569_7301;
/// The advisory lock the scheduler's connection holds while it leads (session level).
pub const SCHEDULER_LOCK: i64 = 0x6b6c_7569_7302;
/// The advisory lock schema migrations run under (replicas starting together).
const MIGRATE_LOCK: i64 = 0x6b6c_7569_7303;

/// Schema migrations, applied in order; `kluis_schema.version` records how many ran.
///
/// The sealed secrets are `STORAGE PLAIN`: never compressed, never moved out of line into the
/// TOAST table, so that a destroy's scrub (which rewrites `key_versions`) leaves no copy in a
/// TOAST relation either; and `STATISTICS 0`, so that `ANALYZE` never copies a sealed value
/// into `pg_statistic` as a most-common value or histogram bound (docs/SERVER.md,
/// "Crypto-shredding on PostgreSQL").
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE meta (key text PRIMARY KEY, value bytea NOT NULL);
CREATE TABLE labels (
    name text PRIMARY KEY,
    policy text NOT NULL,
    created_ms bigint NOT NULL
);
CREATE TABLE key_versions (
    label text NOT NULL REFERENCES labels(name),
    kid bigint NOT NULL CHECK (kid > 0 AND kid <= 4294967295),
    state text NOT NULL CHECK (state IN ('current', 'active', 'retired', 'destroyed')),
    public_key text NOT NULL,
    sealed_secret bytea,
    created_ms bigint NOT NULL,
    destroyed_ms bigint,
    superseded_ms bigint,
    dke_public bytea,
    dke_sealed bytea,
    PRIMARY KEY (label, kid),
    CHECK ((state = 'destroyed') = (sealed_secret IS NULL))
);
ALTER TABLE key_versions ALTER COLUMN sealed_secret SET STORAGE PLAIN,
                         ALTER COLUMN dke_sealed SET STORAGE PLAIN,
                         ALTER COLUMN sealed_secret SET STATISTICS 0,
                         ALTER COLUMN dke_sealed SET STATISTICS 0;
CREATE UNIQUE INDEX one_current ON key_versions(label) WHERE state = 'current';
CREATE TABLE tokens (
    id text PRIMARY KEY,
    hash bytea NOT NULL,
    user_name text NOT NULL,
    groups text NOT NULL,
    created_ms bigint NOT NULL,
    expires_ms bigint,
    revoked_ms bigint
);
CREATE INDEX tokens_user ON tokens(user_name);
CREATE TABLE audit (
    seq bigint PRIMARY KEY CHECK (seq > 0),
    time_ms bigint NOT NULL,
    actor text NOT NULL,
    action text NOT NULL,
    label text,
    kid bigint,
    doc_id text,
    outcome text NOT NULL,
    reason text,
    client text,
    mac bytea NOT NULL,
    credential text
);
CREATE INDEX audit_actor ON audit(actor, seq);
CREATE INDEX audit_credential ON audit(credential);
"#];

/// How long a destroy's scrub waits for the table lock (readers of `key_versions`) before it
/// reports the scrub as pending.
const SCRUB_PATIENCE: Duration = Duration::from_secs(2);

/// How to reach the database: the URL (no password in it), where the password comes from, the
/// organisation's CA for TLS, and the statement timeout.
#[derive(Clone)]
pub struct PgOptions {
    /// `postgres://user@host:port/database?…` without a password.
    pub url: String,
    /// The password, if the server asks for one (from a file or the environment).
    pub password: Option<Zeroizing<String>>,
    /// PEM CA certificates to verify the server with (`sslmode=verify-full` semantics:
    /// TLS required, chain and host name checked).
    pub ca_file: Option<PathBuf>,
    /// The longest one statement may run, on the server and as the client's deadline.
    pub statement_timeout: Duration,
}

impl PgOptions {
    /// Options for `url` with no password, no CA and the default timeout (10 s).
    pub fn new(url: &str) -> Self {
        PgOptions {
            url: url.to_owned(),
            password: None,
            ca_file: None,
            statement_timeout: Duration::from_secs(10),
        }
    }
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions")
            .field("password", &self.password.as_ref().map(|_| "…"))
            .field("ca_file", &self.ca_file)
            .field("statement_timeout", &self.statement_timeout)
            .finish_non_exhaustive()
    }
}

/// Whether `spec` names a PostgreSQL store (`postgres://` or `postgresql://`).
pub fn is_postgres_url(spec: &str) -> bool {
    spec.starts_with("postgres://") || spec.starts_with("postgresql://")
}

/// Check `opts` as [`PgStore::open`] would before connecting, without connecting: the
/// store's description (`database on host:port`), or why the URL is refused (a password in
/// it, no user, TLS asked for without a CA, a remote host without TLS, …). No message
/// repeats the URL or a password.
pub fn check_options(opts: &PgOptions) -> Result<String> {
    Shared::new(opts).map(|s| s.name)
}

/// What every connection of one store shares.
struct Shared {
    config: tokio_postgres::Config,
    tls: Option<tls::RustlsConnect>,
    timeout: Duration,
    /// `database on host:port`, for messages (never the URL: no secret in it, but no need).
    name: String,
}

/// One open connection and its prepared statements.
struct Conn {
    client: Client,
    statements: Mutex<HashMap<&'static str, Statement>>,
    /// Whether this connection holds the scheduler's lease ([`SCHEDULER_LOCK`]).
    leader: AtomicBool,
}

/// The PostgreSQL store: one connection, made when first needed and made again after it
/// broke (the database restarted). [`Store::reopen`] gives another; the server's reader
/// pool, the audit writer and the scheduler each have their own (the connection pool).
pub struct PgStore {
    shared: Arc<Shared>,
    conn: RefCell<Option<Arc<Conn>>>,
    /// Inside a transaction or snapshot: a broken connection must fail it, not be replaced.
    in_tx: Cell<bool>,
    /// The connection that held the scheduler's lease is gone: PostgreSQL freed the lease, and
    /// another replica may lead now. Every call fails until [`Store::scheduler_lease`] asks
    /// again, so that the rest of a scheduled run is not done on a new connection without
    /// the lease (two replicas rotating one label twice).
    lease_lost: Cell<bool>,
}

/// What went wrong, for a message: the server's message and SQLSTATE only (a DETAIL line can
/// quote a whole failing row, sealed key bytes included), or the client's error with its causes.
fn pg_what(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => {
            let mut s = e.to_string();
            let mut cause = std::error::Error::source(e);
            while let Some(c) = cause {
                s.push_str(": ");
                s.push_str(&c.to_string());
                cause = c.source();
            }
            s.truncate(400);
            s
        }
    }
}

fn pg_error(e: tokio_postgres::Error) -> ServerError {
    ServerError::Database(pg_what(&e))
}

impl From<tokio_postgres::Error> for ServerError {
    fn from(e: tokio_postgres::Error) -> Self {
        pg_error(e)
    }
}

fn is_local(config: &tokio_postgres::Config) -> bool {
    // A `hostaddr` is where the connection goes (the host name then only names the server
    // for TLS): local only if every such address is loopback.
    if !config.get_hostaddrs().is_empty() {
        return config.get_hostaddrs().iter().all(|ip| ip.is_loopback());
    }
    !config.get_hosts().is_empty()
        && config.get_hosts().iter().all(|h| match h {
            Host::Tcp(name) => {
                name == "localhost"
                    || name
                        .trim_matches(|c| c == '[' || c == ']')
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
            #[cfg(unix)]
            Host::Unix(_) => true,
        })
}

impl Shared {
    fn new(opts: &PgOptions) -> Result<Self> {
        let bad = |m: String| ServerError::Config(m);
        let mut config: tokio_postgres::Config = opts.url.parse().map_err(|e| {
            bad(format!(
                "the PostgreSQL store URL is not valid ({e}): write it as \
                 postgres://USER@HOST:PORT/DATABASE"
            ))
        })?;
        if config.get_password().is_some() {
            return Err(bad(
                "the PostgreSQL store URL carries a password: never put it on the command line \
                 or in the URL; give it in a file (--store-password-file, \
                 KLUIS_STORE_PASSWORD_FILE) or the environment (KLUIS_STORE_PASSWORD, PGPASSWORD)"
                    .into(),
            ));
        }
        if config.get_user().is_none() {
            return Err(bad("the PostgreSQL store URL names no user: write it as \
                 postgres://USER@HOST:PORT/DATABASE"
                .into()));
        }
        if let Some(p) = &opts.password {
            config.password(p.as_bytes());
        }
        let tls = match &opts.ca_file {
            Some(ca) => {
                config.ssl_mode(SslMode::Require);
                Some(tls::RustlsConnect::from_ca_file(ca)?)
            }
            None if config.get_ssl_mode() == SslMode::Require => {
                return Err(bad(
                    "the PostgreSQL store URL asks for TLS (sslmode=require): give the \
                     organisation's CA with --store-ca-file (KLUIS_STORE_CA_FILE), so that the \
                     server's certificate is verified"
                        .into(),
                ));
            }
            None if is_local(&config) => {
                config.ssl_mode(SslMode::Disable);
                None
            }
            None => {
                return Err(bad(
                    "a PostgreSQL server on another host is reached only over TLS, verified \
                     with the organisation's CA: give --store-ca-file (KLUIS_STORE_CA_FILE)"
                        .into(),
                ));
            }
        };
        let timeout = opts
            .statement_timeout
            .clamp(Duration::from_secs(1), Duration::from_secs(3600));
        // Every replica writes (the audit trail first): only a server that accepts writes,
        // never a standby, whatever `target_session_attrs` the URL says.
        config
            .application_name("kluis-server")
            .target_session_attrs(tokio_postgres::config::TargetSessionAttrs::ReadWrite)
            .connect_timeout(Duration::from_secs(5))
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .tcp_user_timeout(Duration::from_secs(30));
        let host = match config.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(Host::Unix(p)) => p.display().to_string(),
            None => "?".into(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let name = format!(
            "PostgreSQL database `{}` on {host}:{port}",
            config.get_dbname().unwrap_or("(the user's)")
        );
        Ok(Shared {
            config,
            tls,
            timeout,
            name,
        })
    }

    /// The client's deadline for one statement: the server's timeout plus a margin.
    fn deadline(&self) -> Instant {
        Instant::now() + self.timeout + Duration::from_secs(5)
    }

    fn connect(&self) -> Result<Conn> {
        let config = self.config.clone();
        let tls = self.tls.clone();
        let made = bridge::spawn(async move {
            match tls {
                Some(tls) => {
                    let (client, conn) = config.connect(tls).await?;
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    Ok::<_, tokio_postgres::Error>(client)
                }
                None => {
                    let (client, conn) = config.connect(tokio_postgres::NoTls).await?;
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    Ok(client)
                }
            }
        });
        let client = bridge::wait(made, Instant::now() + Duration::from_secs(10))
            .ok_or_else(|| self.unreachable("it did not answer within 10 s"))?
            .map_err(|_| self.unreachable("the connecting task failed"))?
            .map_err(|e| self.unreachable(&pg_what(&e)))?;
        // Durability as on SQLite: a commit returns only once its WAL is flushed (and, with
        // synchronous_standby_names set on the server, replicated).
        // The server's side of the keepalives too: the client's own do not make PostgreSQL
        // notice a replica that vanished from the network, and its idle session (the
        // scheduler's lease) would live until the system's keepalive gives up (over 2 hours).
        let setup = format!(
            "SET synchronous_commit = on; SET statement_timeout = {}; \
             SET idle_in_transaction_session_timeout = 60000; SET client_min_messages = warning; \
             SET tcp_keepalives_idle = 30; SET tcp_keepalives_interval = 10; \
             SET tcp_keepalives_count = 3",
            self.timeout.as_millis()
        );
        bridge::wait(client.batch_execute(&setup), self.deadline())
            .ok_or_else(|| self.unreachable("it did not answer within the statement timeout"))??;
        Ok(Conn {
            client,
            statements: Mutex::default(),
            leader: AtomicBool::new(false),
        })
    }

    fn unreachable(&self, why: &str) -> ServerError {
        ServerError::Database(format!(
            "cannot connect to the {} ({why}); check that it runs and that --store, the \
             password and the CA are right",
            self.name
        ))
    }
}

impl Conn {
    fn statement(&self, shared: &Shared, sql: &'static str) -> Result<Statement> {
        if let Some(s) = self
            .statements
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(sql)
        {
            return Ok(s.clone());
        }
        let s = run(shared, self.client.prepare(sql))?;
        self.statements
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(sql, s.clone());
        Ok(s)
    }
}

/// Wait for a query future until the statement deadline.
fn run<T>(
    shared: &Shared,
    fut: impl std::future::Future<Output = std::result::Result<T, tokio_postgres::Error>>,
) -> Result<T> {
    match bridge::wait(fut, shared.deadline()) {
        Some(r) => Ok(r?),
        None => Err(ServerError::Database(format!(
            "the {} did not answer within the statement timeout",
            shared.name
        ))),
    }
}

impl PgStore {
    fn connect(opts: &PgOptions) -> Result<Self> {
        let shared = Arc::new(Shared::new(opts)?);
        let store = PgStore {
            shared,
            conn: RefCell::new(None),
            in_tx: Cell::new(false),
            lease_lost: Cell::new(false),
        };
        store.conn()?;
        Ok(store)
    }

    /// Connect to a database for a new store and create its tables. `KeyService::init`
    /// then refuses a database that holds a store already.
    pub fn create(opts: &PgOptions) -> Result<Self> {
        let mut s = PgStore::connect(opts)?;
        s.migrate()?;
        Ok(s)
    }

    /// Connect to the store in a database, applying schema migrations.
    pub fn open(opts: &PgOptions) -> Result<Self> {
        let mut s = PgStore::connect(opts)?;
        let exists: bool = s
            .query_one("SELECT to_regclass('kluis_schema') IS NOT NULL", &[])?
            .try_get(0)?;
        if !exists {
            return Err(ServerError::Init(
                "no kluis store in this PostgreSQL database: create one with `kluis-server init`",
            ));
        }
        s.migrate()?;
        Ok(s)
    }

    /// What the store is, for messages: `PostgreSQL database `x` on host:port`.
    pub fn describe(&self) -> &str {
        &self.shared.name
    }

    fn migrate(&mut self) -> Result<()> {
        let conn = self.conn()?;
        let shared = self.shared.clone();
        let c = &conn.client;
        // READ COMMITTED whatever the database's default: what runs after the lock must see
        // the migrations of whoever held it before.
        run(
            &shared,
            c.batch_execute("BEGIN ISOLATION LEVEL READ COMMITTED"),
        )?;
        let result = (|| -> Result<()> {
            run(
                &shared,
                c.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK]),
            )?;
            run(
                &shared,
                c.batch_execute(
                    "CREATE TABLE IF NOT EXISTS kluis_schema (version integer NOT NULL);
                     INSERT INTO kluis_schema SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM kluis_schema)",
                ),
            )?;
            let done: i32 = run(
                &shared,
                c.query_one("SELECT version FROM kluis_schema", &[]),
            )?
            .try_get(0)?;
            let done = usize::try_from(done).unwrap_or(usize::MAX);
            if done > MIGRATIONS.len() {
                return Err(ServerError::Init(
                    "the store was written by a newer kluis-server: upgrade kluis-server",
                ));
            }
            for (i, sql) in MIGRATIONS.iter().enumerate().skip(done) {
                run(&shared, c.batch_execute(sql))?;
                let v = i32::try_from(i + 1).unwrap_or(i32::MAX);
                run(
                    &shared,
                    c.execute("UPDATE kluis_schema SET version = $1", &[&v]),
                )?;
            }
            Ok(())
        })();
        finish(&shared, c, result)
    }

    /// The connection, made again if it broke (not inside a transaction).
    fn conn(&self) -> Result<Arc<Conn>> {
        if let Some(c) = self.conn.borrow().as_ref() {
            if !c.client.is_closed() {
                return Ok(c.clone());
            }
        }
        // Closed: if it held the scheduler's lease, PostgreSQL has freed it.
        self.drop_conn();
        if self.lease_lost.get() {
            return Err(ServerError::Database(format!(
                "the connection to the {} broke while this replica led the scheduler: the \
                 lease is gone (another replica may lead now), so the scheduled work stops \
                 here and this replica asks for the lease again at the next run",
                self.shared.name
            )));
        }
        if self.in_tx.get() {
            self.conn.borrow_mut().take();
            return Err(ServerError::Database(format!(
                "the connection to the {} broke during a transaction",
                self.shared.name
            )));
        }
        let fresh = Arc::new(self.shared.connect()?);
        *self.conn.borrow_mut() = Some(fresh.clone());
        Ok(fresh)
    }

    /// Forget the connection (after a timeout: its state is unknown).
    fn drop_conn(&self) {
        if let Some(c) = self.conn.borrow_mut().take() {
            if c.leader.load(Ordering::Relaxed) {
                self.lease_lost.set(true);
            }
        }
    }

    fn guarded<T>(&self, r: Result<T>) -> Result<T> {
        if let Err(ServerError::Database(m)) = &r {
            if m.contains("did not answer") {
                self.drop_conn();
            }
        }
        r
    }

    fn query(&self, sql: &'static str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
        let conn = self.conn()?;
        let r = conn
            .statement(&self.shared, sql)
            .and_then(|s| run(&self.shared, conn.client.query(&s, params)));
        self.guarded(r)
    }

    fn query_one(&self, sql: &'static str, params: &[&(dyn ToSql + Sync)]) -> Result<Row> {
        let conn = self.conn()?;
        let r = conn
            .statement(&self.shared, sql)
            .and_then(|s| run(&self.shared, conn.client.query_one(&s, params)));
        self.guarded(r)
    }

    fn query_opt(&self, sql: &'static str, params: &[&(dyn ToSql + Sync)]) -> Result<Option<Row>> {
        let conn = self.conn()?;
        let r = conn
            .statement(&self.shared, sql)
            .and_then(|s| run(&self.shared, conn.client.query_opt(&s, params)));
        self.guarded(r)
    }

    /// Rewrite `key_versions` (`VACUUM FULL`), so that no old row version of a destroyed key
    /// remains in the table's files, then clear the pending mark. Waits up to `patience` for
    /// the table lock; fails with [`ServerError::ScrubPending`] when readers held it longer.
    ///
    /// `VACUUM FULL` copies an old row version into the new file as long as any snapshot
    /// older than the destroy remains (another session's open transaction on any table of
    /// this database, a prepared transaction, a standby's feedback, a replication slot): the
    /// scrub then stays pending ([`ServerError::ScrubPending`]), checked before and after.
    pub fn scrub(&self, patience: Duration) -> Result<()> {
        let mark = self.query_opt("SELECT value FROM meta WHERE key = 'scrub_pending'", &[])?;
        let mark: Option<Vec<u8>> = mark.map(|r| col(&r, 0)).transpose()?;
        let destroyed_by = mark.as_deref().and_then(mark_txid);
        // Short snapshots (other replicas' requests begun just before the destroy) end within
        // milliseconds: poll until they have, up to `patience`. A reader that has held the
        // table for a while (a backup, a long report) would keep the VACUUM waiting for the
        // whole patience, and every new read of the table on every replica queued behind it,
        // at every scheduler tick: poll until it is gone too (nothing is locked meanwhile),
        // else leave the scrub pending.
        let until = Instant::now() + patience;
        loop {
            let clear = match mark {
                Some(_) => self.no_older_snapshot(destroyed_by),
                None => Ok(()),
            }
            .and_then(|()| {
                let held: i64 = col(&self.query_one(sql::TABLE_HELD_LONG, &[])?, 0)?;
                match held {
                    0 => Ok(()),
                    _ => Err(ServerError::ScrubPending {
                        destroyed: None,
                        reader: true,
                    }),
                }
            });
            match clear {
                Err(ServerError::ScrubPending { .. }) if Instant::now() < until => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                r => break r?,
            }
        }
        let filenode = || -> Result<i64> { col(&self.query_one(sql::FILENODE, &[])?, 0) };
        let before = filenode()?;
        let conn = self.conn()?;
        let c = &conn.client;
        let ms = patience.as_millis().clamp(1, 600_000);
        run(
            &self.shared,
            c.batch_execute(&format!("SET lock_timeout = {ms}")),
        )?;
        let vacuum = run(&self.shared, c.batch_execute("VACUUM (FULL) key_versions"));
        let _ = run(&self.shared, c.batch_execute("RESET lock_timeout"));
        if let Err(ServerError::Database(m)) = &vacuum {
            if m.contains("55P03") {
                return Err(ServerError::ScrubPending {
                    destroyed: None,
                    reader: true,
                });
            }
        }
        vacuum?;
        // PostgreSQL skips a table of another owner with only a warning: no new file, no scrub.
        if filenode()? == before {
            return Err(ServerError::Database(
                "VACUUM FULL did not rewrite key_versions: the store's role does not own the \
                 table (PostgreSQL skips it with a warning); run the servers, or at least \
                 `kluis-server store scrub`, as the role that owns the store's tables"
                    .into(),
            ));
        }
        if let Some(mark) = mark {
            self.no_older_snapshot(destroyed_by)?;
            // Cleared only if no destroy set a new mark meanwhile.
            self.query(
                "DELETE FROM meta WHERE key = 'scrub_pending' AND value = $1 RETURNING 1",
                &[&mark],
            )?;
        }
        Ok(())
    }

    /// [`ServerError::ScrubPending`] if a snapshot that may still see the row versions the
    /// transaction `destroyed_by` (a `txid_current()`; `None`: unknown, then any snapshot)
    /// replaced is held anywhere that keeps `VACUUM FULL` from dropping them.
    fn no_older_snapshot(&self, destroyed_by: Option<i64>) -> Result<()> {
        let older: i64 = col(&self.query_one(sql::OLDER_SNAPSHOTS, &[&destroyed_by])?, 0)?;
        if older > 0 {
            return Err(ServerError::ScrubPending {
                destroyed: None,
                reader: true,
            });
        }
        Ok(())
    }

    /// Other `kluis-server` sessions connected to this database (running servers), so that a
    /// master-key rotation can refuse to run under them.
    pub fn other_sessions(&self) -> Result<i64> {
        Ok(self
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND application_name = 'kluis-server'
                   AND pid <> pg_backend_pid()",
                &[],
            )?
            .try_get(0)?)
    }

    /// Run `sql` as is on this store's connection (tests: `CHECKPOINT`, inspection).
    pub fn execute_raw(&self, sql: &str) -> Result<()> {
        let conn = self.conn()?;
        run(&self.shared, conn.client.batch_execute(sql))
    }

    /// One text or number value of a query, as text (tests and diagnostics).
    pub fn query_text(&self, sql: &str) -> Result<Option<String>> {
        let conn = self.conn()?;
        let rows = run(&self.shared, conn.client.simple_query(sql))?;
        Ok(rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        }))
    }
}

/// The destroying transaction's id in a `scrub_pending` mark (`txid N`).
fn mark_txid(mark: &[u8]) -> Option<i64> {
    std::str::from_utf8(mark)
        .ok()?
        .strip_prefix("txid ")?
        .parse()
        .ok()
}

/// Commit (on `Ok`) or roll back a transaction begun on `c`.
fn finish<T>(shared: &Shared, c: &Client, result: Result<T>) -> Result<T> {
    match result {
        Ok(v) => {
            run(shared, c.batch_execute("COMMIT")).map_err(|e| match e {
                // Sent, not answered: PostgreSQL may have committed it all the same, and a
                // change taken for not made and done again (a rotation) is done twice.
                ServerError::Database(m) if m.contains("did not answer") => {
                    ServerError::Database(format!(
                        "{m}, after the COMMIT was sent: the change may have been committed \
                         all the same; check (`audit export`, `label show`) before doing it again"
                    ))
                }
                e => e,
            })?;
            Ok(v)
        }
        Err(e) => {
            let _ = run(shared, c.batch_execute("ROLLBACK"));
            Err(e)
        }
    }
}

/// Leaves the transaction flag set back on every way out, unwinding included (then the
/// connection, its transaction open, is dropped too).
struct TxFlag<'a>(&'a PgStore, bool);

impl Drop for TxFlag<'_> {
    fn drop(&mut self) {
        self.0.in_tx.set(false);
        if std::thread::panicking() || !self.1 {
            self.0.drop_conn();
        }
    }
}

/// Column `i` of a row; a NULL or a type that does not fit is an error, never a panic.
fn col<'a, T: tokio_postgres::types::FromSql<'a>>(r: &'a Row, i: usize) -> Result<T> {
    r.try_get(i)
        .map_err(|_| ServerError::Database(format!("unexpected value in column {i} of the store")))
}

fn kid_of(v: i64) -> Result<u32> {
    u32::try_from(v).map_err(|_| ServerError::Database("a key version out of range".into()))
}

fn state_of(s: &str) -> Result<VersionState> {
    VersionState::parse(s)
        .ok_or_else(|| ServerError::Database("unknown key state in the store".into()))
}

fn version_row(r: &Row) -> Result<VersionRow> {
    Ok(VersionRow {
        kid: kid_of(col(r, 0)?)?,
        state: state_of(col(r, 1)?)?,
        public_key: col(r, 2)?,
        sealed_secret: col(r, 3)?,
        created_ms: col(r, 4)?,
        destroyed_ms: col(r, 5)?,
        superseded_ms: col(r, 6)?,
        dke_public: col(r, 7)?,
        dke_sealed: col(r, 8)?,
    })
}

fn token_row(r: &Row) -> Result<TokenRow> {
    let groups: String = col(r, 3)?;
    Ok(TokenRow {
        id: col(r, 0)?,
        hash: col(r, 1)?,
        user: col(r, 2)?,
        groups: serde_json::from_str(&groups).unwrap_or_default(),
        created_ms: col(r, 4)?,
        expires_ms: col(r, 5)?,
        revoked_ms: col(r, 6)?,
    })
}

fn audit_row(r: &Row) -> Result<AuditRecord> {
    let kid: Option<i64> = col(r, 5)?;
    Ok(AuditRecord {
        seq: col(r, 0)?,
        entry: AuditEntry {
            time_ms: col(r, 1)?,
            actor: col(r, 2)?,
            action: col(r, 3)?,
            label: col(r, 4)?,
            kid: kid.map(kid_of).transpose()?,
            doc_id: col(r, 6)?,
            outcome: col(r, 7)?,
            reason: col(r, 8)?,
            client: col(r, 9)?,
            credential: col(r, 11)?,
        },
        mac: col(r, 10)?,
    })
}

/// Statements, by name: one `&'static str` each, so that each is prepared once per connection.
mod sql {
    pub const META: &str = "SELECT value FROM meta WHERE key = $1";
    pub const PUT_META: &str = "INSERT INTO meta (key, value) VALUES ($1, $2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value";
    pub const LABEL_NAMES: &str = "SELECT name FROM labels ORDER BY name";
    pub const LABEL_POLICY: &str = "SELECT policy FROM labels WHERE name = $1";
    pub const VERSIONS: &str = "SELECT kid, state, public_key, sealed_secret, created_ms, \
         destroyed_ms, superseded_ms, dke_public, dke_sealed FROM key_versions WHERE label = $1 \
         ORDER BY kid";
    pub const VERSION: &str = "SELECT kid, state, public_key, sealed_secret, created_ms, \
         destroyed_ms, superseded_ms, dke_public, dke_sealed FROM key_versions \
         WHERE label = $1 AND kid = $2";
    pub const TOKEN: &str = "SELECT id, hash, user_name, groups, created_ms, expires_ms, \
         revoked_ms FROM tokens WHERE id = $1";
    pub const TOKENS: &str = "SELECT id, hash, user_name, groups, created_ms, expires_ms, \
         revoked_ms FROM tokens ORDER BY created_ms, id";
    pub const AUDIT_PAGE: &str = "SELECT seq, time_ms, actor, action, label, kid, doc_id, \
         outcome, reason, client, mac, credential FROM audit \
         WHERE ($1::text IS NULL OR actor = $1::text) AND seq > $2 ORDER BY seq LIMIT $3";
    pub const AUDIT_BY_CREDENTIAL: &str = "SELECT seq, time_ms, actor, action, label, kid, \
         doc_id, outcome, reason, client, mac, credential FROM audit \
         WHERE credential = $1::text \
            OR (strpos($1::text, '#') = 0 AND credential LIKE \
                replace(replace(replace($1::text, '\\', '\\\\'), '%', '\\%'), '_', '\\_') || '#%') \
         ORDER BY seq";
    pub const INSERT_LABEL: &str =
        "INSERT INTO labels (name, policy, created_ms) VALUES ($1, $2, $3)";
    pub const SET_POLICY: &str = "UPDATE labels SET policy = $2 WHERE name = $1";
    pub const INSERT_VERSION: &str = "INSERT INTO key_versions (label, kid, state, public_key, \
         sealed_secret, created_ms, destroyed_ms, superseded_ms, dke_public, dke_sealed) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";
    pub const SUPERSEDE: &str = "UPDATE key_versions SET state = 'active', superseded_ms = $2 \
         WHERE label = $1 AND state = 'current'";
    pub const SET_STATE: &str = "UPDATE key_versions SET state = $3 WHERE label = $1 AND kid = $2";
    pub const DESTROY: &str = "UPDATE key_versions SET state = 'destroyed', \
         sealed_secret = NULL, dke_sealed = NULL, destroyed_ms = $3 WHERE label = $1 AND kid = $2";
    pub const SEALED_LABEL: &str =
        "SELECT label, kid, sealed_secret FROM key_versions WHERE sealed_secret IS NOT NULL";
    pub const SEALED_DKE: &str =
        "SELECT label, kid, dke_sealed FROM key_versions WHERE dke_sealed IS NOT NULL";
    pub const SET_SEALED_LABEL: &str =
        "UPDATE key_versions SET sealed_secret = $3 WHERE label = $1 AND kid = $2";
    pub const SET_SEALED_DKE: &str =
        "UPDATE key_versions SET dke_sealed = $3 WHERE label = $1 AND kid = $2";
    pub const SET_DKE: &str = "UPDATE key_versions SET dke_public = $3, dke_sealed = $4 \
         WHERE label = $1 AND kid = $2 AND state <> 'destroyed'";
    pub const INSERT_TOKEN: &str = "INSERT INTO tokens (id, hash, user_name, groups, \
         created_ms, expires_ms, revoked_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)";
    pub const REVOKE_TOKEN: &str =
        "UPDATE tokens SET revoked_ms = $2 WHERE id = $1 AND revoked_ms IS NULL";
    pub const REVOKE_USER: &str = "WITH r AS (UPDATE tokens SET revoked_ms = $2 \
         WHERE user_name = $1 AND revoked_ms IS NULL RETURNING id, created_ms) \
         SELECT id FROM r ORDER BY created_ms, id";
    pub const AUDIT_TAIL: &str = "SELECT seq, mac FROM audit ORDER BY seq DESC LIMIT 1";
    /// A `meta` value and the audit tail in one round trip (always one row).
    pub const META_AND_TAIL: &str = "SELECT m.value, a.seq, a.mac FROM (SELECT 1) AS one \
         LEFT JOIN meta m ON m.key = $1 \
         LEFT JOIN LATERAL (SELECT seq, mac FROM audit ORDER BY seq DESC LIMIT 1) a ON true";
    pub const INSERT_AUDIT: &str = "INSERT INTO audit (seq, time_ms, actor, action, label, kid, \
         doc_id, outcome, reason, client, mac, credential) \
         SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], \
         $6::bigint[], $7::text[], $8::text[], $9::text[], $10::text[], $11::bytea[], $12::text[]) \
         ORDER BY 1";
    pub const TRY_LEAD: &str = "SELECT pg_try_advisory_lock($1)";
    pub const TXID: &str = "SELECT txid_current()";
    pub const FILENODE: &str = "SELECT pg_relation_filenode('key_versions')::bigint";
    /// Other sessions holding (or waiting for) a lock on `key_versions` whose transaction
    /// began more than 200 ms ago, or whose start this role may not see (`state` hidden; a
    /// visible session that is idle by now has let go of the lock).
    pub const TABLE_HELD_LONG: &str = "SELECT count(*) FROM pg_locks l \
         LEFT JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'relation' AND l.relation = 'key_versions'::regclass \
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
           AND l.pid IS DISTINCT FROM pg_backend_pid() \
           AND ((a.xact_start IS NULL AND a.state IS NULL) \
                OR a.xact_start < clock_timestamp() - interval '200 milliseconds')";
    /// Snapshots, running or prepared transactions and replication slots of this database
    /// that began no later than transaction $1 (NULL: than now); `age` counts back from the
    /// next transaction id, so a larger age is older.
    pub const OLDER_SNAPSHOTS: &str = "SELECT count(*) FROM ( \
         SELECT backend_xmin AS x FROM pg_stat_activity WHERE pid <> pg_backend_pid() \
            AND (datname IS NULL OR datname = current_database()) \
         UNION ALL SELECT backend_xid FROM pg_stat_activity WHERE pid <> pg_backend_pid() \
            AND (datname IS NULL OR datname = current_database()) \
         UNION ALL SELECT xmin FROM pg_replication_slots \
         UNION ALL SELECT transaction FROM pg_prepared_xacts) h \
         WHERE x IS NOT NULL AND age(x) >= age((coalesce($1::bigint, \
            txid_snapshot_xmax(txid_current_snapshot())) % 4294967296)::text::xid)";
}

/// At most this many audit records go in one `INSERT` (a group commit of the audit writer
/// holds at most 8192).
const AUDIT_BATCH: usize = 4096;

/// A write transaction of [`PgStore`].
struct PgTx<'a> {
    store: &'a PgStore,
    conn: Arc<Conn>,
    /// Audit records not sent yet: a group commit's records go in one statement (one round
    /// trip, not one per record), sent before any other statement and before the commit.
    audit: Vec<(i64, AuditEntry, Vec<u8>)>,
    /// The audit tail, read together with the access epoch (the audit writer reads both in
    /// each group commit: one round trip, not two); dropped by the next audit insert. Under
    /// the writers' lock nothing else can change it meanwhile.
    tail: Option<Option<(i64, Vec<u8>)>>,
}

impl PgTx<'_> {
    /// Send the buffered audit records, in order, as one `INSERT … SELECT unnest(…)`.
    fn flush(&mut self) -> Result<()> {
        if self.audit.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.audit);
        let seq: Vec<i64> = rows.iter().map(|r| r.0).collect();
        let time: Vec<i64> = rows.iter().map(|r| r.1.time_ms).collect();
        let actor: Vec<&str> = rows.iter().map(|r| r.1.actor.as_str()).collect();
        let action: Vec<&str> = rows.iter().map(|r| r.1.action.as_str()).collect();
        let label: Vec<Option<&str>> = rows.iter().map(|r| r.1.label.as_deref()).collect();
        let kid: Vec<Option<i64>> = rows.iter().map(|r| r.1.kid.map(i64::from)).collect();
        let doc: Vec<Option<&str>> = rows.iter().map(|r| r.1.doc_id.as_deref()).collect();
        let outcome: Vec<&str> = rows.iter().map(|r| r.1.outcome.as_str()).collect();
        let reason: Vec<Option<&str>> = rows.iter().map(|r| r.1.reason.as_deref()).collect();
        let client: Vec<Option<&str>> = rows.iter().map(|r| r.1.client.as_deref()).collect();
        let mac: Vec<&[u8]> = rows.iter().map(|r| r.2.as_slice()).collect();
        let cred: Vec<Option<&str>> = rows.iter().map(|r| r.1.credential.as_deref()).collect();
        self.execute(
            sql::INSERT_AUDIT,
            &[
                &seq, &time, &actor, &action, &label, &kid, &doc, &outcome, &reason, &client, &mac,
                &cred,
            ],
        )?;
        Ok(())
    }

    fn query(&self, sql: &'static str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
        let s = self.conn.statement(&self.store.shared, sql)?;
        run(&self.store.shared, self.conn.client.query(&s, params))
    }

    fn query_opt(&self, sql: &'static str, params: &[&(dyn ToSql + Sync)]) -> Result<Option<Row>> {
        let s = self.conn.statement(&self.store.shared, sql)?;
        run(&self.store.shared, self.conn.client.query_opt(&s, params))
    }

    fn execute(&self, sql: &'static str, params: &[&(dyn ToSql + Sync)]) -> Result<u64> {
        let s = self.conn.statement(&self.store.shared, sql)?;
        run(&self.store.shared, self.conn.client.execute(&s, params))
    }
}

impl Store for PgStore {
    fn reopen(&self) -> Result<Self> {
        let s = PgStore {
            shared: self.shared.clone(),
            conn: RefCell::new(None),
            in_tx: Cell::new(false),
            lease_lost: Cell::new(false),
        };
        s.conn()?;
        Ok(s)
    }

    /// `SELECT 1`, reconnecting first if the connection broke; at most a few seconds.
    fn is_reachable(&self) -> bool {
        let Ok(conn) = self.conn() else {
            return false;
        };
        let ok = bridge::wait(
            conn.client.simple_query("SELECT 1"),
            Instant::now() + Duration::from_secs(3),
        );
        match ok {
            Some(Ok(_)) => true,
            Some(Err(_)) => false,
            None => {
                self.drop_conn();
                false
            }
        }
    }

    /// `REPEATABLE READ READ ONLY`: one snapshot for every read in `f`.
    fn snapshot<T>(&self, f: impl FnOnce(&Self) -> Result<T>) -> Result<T> {
        if self.in_tx.get() {
            return f(self);
        }
        let conn = self.conn()?;
        let c = &conn.client;
        run(
            &self.shared,
            c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"),
        )?;
        self.in_tx.set(true);
        let mut flag = TxFlag(self, false);
        let result = f(self);
        let out = finish(&self.shared, c, result);
        flag.1 = out.is_ok() || !c.is_closed();
        out
    }

    /// `BEGIN`, then the writers' advisory lock, so that the writers of every replica take
    /// turns; `COMMIT` with `synchronous_commit = on`. `READ COMMITTED` whatever the
    /// database's default: every statement after the lock sees what the writer before
    /// committed (the audit tail, the access epoch, see `service::epoch`); under `repeatable
    /// read` the snapshot would be taken at the lock statement, before the lock is granted.
    fn write<T>(&mut self, f: impl FnOnce(&mut dyn StoreTx) -> Result<T>) -> Result<T> {
        let conn = self.conn()?;
        let shared = self.shared.clone();
        let c = &conn.client;
        // One round trip: the simple-query protocol runs both statements.
        let begun = run(
            &shared,
            c.batch_execute(&format!(
                "BEGIN ISOLATION LEVEL READ COMMITTED; SELECT pg_advisory_xact_lock({WRITE_LOCK})"
            )),
        );
        if let Err(e) = begun {
            let _ = run(&shared, c.batch_execute("ROLLBACK"));
            return self.guarded(Err(e));
        }
        self.in_tx.set(true);
        let mut flag = TxFlag(self, false);
        let mut tx = PgTx {
            store: self,
            conn: conn.clone(),
            audit: Vec::new(),
            tail: None,
        };
        let result = f(&mut tx).and_then(|v| tx.flush().map(|()| v));
        let out = finish(&shared, c, result);
        flag.1 = out.is_ok() || !c.is_closed();
        drop(flag);
        self.guarded(out)
    }

    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.query_opt(sql::META, &[&key])?
            .map(|r| col(&r, 0))
            .transpose()
    }

    fn label_names(&self) -> Result<Vec<String>> {
        self.query(sql::LABEL_NAMES, &[])?
            .iter()
            .map(|r| col(r, 0))
            .collect::<Result<_>>()
    }

    fn label_policy(&self, name: &str) -> Result<Option<String>> {
        self.query_opt(sql::LABEL_POLICY, &[&name])?
            .map(|r| col(&r, 0))
            .transpose()
    }

    fn versions(&self, label: &str) -> Result<Vec<VersionRow>> {
        self.query(sql::VERSIONS, &[&label])?
            .iter()
            .map(version_row)
            .collect()
    }

    fn version(&self, label: &str, kid: u32) -> Result<Option<VersionRow>> {
        self.query_opt(sql::VERSION, &[&label, &i64::from(kid)])?
            .as_ref()
            .map(version_row)
            .transpose()
    }

    fn token(&self, id: &str) -> Result<Option<TokenRow>> {
        self.query_opt(sql::TOKEN, &[&id])?
            .as_ref()
            .map(token_row)
            .transpose()
    }

    fn tokens(&self) -> Result<Vec<TokenRow>> {
        self.query(sql::TOKENS, &[])?
            .iter()
            .map(token_row)
            .collect::<Result<_>>()
    }

    fn audit_page(
        &self,
        actor: Option<&str>,
        after: i64,
        limit: usize,
    ) -> Result<Vec<AuditRecord>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.query(sql::AUDIT_PAGE, &[&actor, &after, &limit])?
            .iter()
            .map(audit_row)
            .collect()
    }

    fn audit_by_credential(&self, credential: &str) -> Result<Vec<AuditRecord>> {
        self.query(sql::AUDIT_BY_CREDENTIAL, &[&credential])?
            .iter()
            .map(audit_row)
            .collect()
    }

    /// `VACUUM FULL key_versions` (see [`PgStore::scrub`]).
    fn forget_old_copies(&mut self) -> Result<()> {
        self.scrub(SCRUB_PATIENCE)
    }

    fn forget_pending_copies(&self, patience: Duration) -> Result<bool> {
        let pending = self
            .query_opt("SELECT 1 FROM meta WHERE key = 'scrub_pending'", &[])?
            .is_some();
        if pending {
            self.scrub(patience)?;
        }
        Ok(pending)
    }

    /// A session-level advisory lock on this (the scheduler's) connection: held until the
    /// connection ends, so when the leading replica dies, PostgreSQL frees it and the next
    /// replica to ask takes it.
    fn scheduler_lease(&self) -> Result<bool> {
        // Asking again: a lease lost with its connection is sought anew on a new one.
        if self
            .conn
            .borrow()
            .as_ref()
            .is_some_and(|c| c.client.is_closed())
        {
            self.drop_conn();
        }
        self.lease_lost.set(false);
        let conn = self.conn()?;
        if conn.leader.load(Ordering::Relaxed) {
            return Ok(true);
        }
        let s = conn.statement(&self.shared, sql::TRY_LEAD)?;
        let got: bool = self
            .guarded(run(
                &self.shared,
                conn.client.query_one(&s, &[&SCHEDULER_LOCK]),
            ))?
            .try_get(0)?;
        conn.leader.store(got, Ordering::Relaxed);
        Ok(got)
    }
}

impl StoreTx for PgTx<'_> {
    fn meta(&mut self, key: &str) -> Result<Option<Vec<u8>>> {
        self.flush()?;
        if key == meta::ACCESS_EPOCH {
            let row = self
                .query_opt(sql::META_AND_TAIL, &[&key])?
                .ok_or_else(|| ServerError::Database("no row for the audit tail".into()))?;
            let seq: Option<i64> = col(&row, 1)?;
            self.tail = Some(match seq {
                Some(seq) => Some((seq, col(&row, 2)?)),
                None => None,
            });
            return col(&row, 0);
        }
        self.query_opt(sql::META, &[&key])?
            .map(|r| col(&r, 0))
            .transpose()
    }

    fn put_meta(&mut self, key: &str, value: &[u8]) -> Result<()> {
        self.flush()?;
        self.execute(sql::PUT_META, &[&key, &value])?;
        Ok(())
    }

    fn label_policy(&mut self, name: &str) -> Result<Option<String>> {
        self.flush()?;
        self.query_opt(sql::LABEL_POLICY, &[&name])?
            .map(|r| col(&r, 0))
            .transpose()
    }

    fn insert_label(&mut self, name: &str, policy: &str, created_ms: i64) -> Result<()> {
        self.flush()?;
        self.execute(sql::INSERT_LABEL, &[&name, &policy, &created_ms])?;
        Ok(())
    }

    fn set_policy(&mut self, name: &str, policy: &str) -> Result<()> {
        self.flush()?;
        self.execute(sql::SET_POLICY, &[&name, &policy])?;
        Ok(())
    }

    fn version(&mut self, label: &str, kid: u32) -> Result<Option<VersionRow>> {
        self.flush()?;
        self.query_opt(sql::VERSION, &[&label, &i64::from(kid)])?
            .as_ref()
            .map(version_row)
            .transpose()
    }

    fn insert_version(&mut self, label: &str, v: &VersionRow) -> Result<()> {
        self.flush()?;
        self.execute(
            sql::INSERT_VERSION,
            &[
                &label,
                &i64::from(v.kid),
                &v.state.as_str(),
                &v.public_key,
                &v.sealed_secret,
                &v.created_ms,
                &v.destroyed_ms,
                &v.superseded_ms,
                &v.dke_public,
                &v.dke_sealed,
            ],
        )?;
        Ok(())
    }

    fn supersede_current(&mut self, label: &str, at_ms: i64) -> Result<()> {
        self.flush()?;
        self.execute(sql::SUPERSEDE, &[&label, &at_ms])?;
        Ok(())
    }

    fn set_state(&mut self, label: &str, kid: u32, state: VersionState) -> Result<()> {
        self.flush()?;
        self.execute(sql::SET_STATE, &[&label, &i64::from(kid), &state.as_str()])?;
        Ok(())
    }

    fn destroy_version(&mut self, label: &str, kid: u32, at_ms: i64) -> Result<()> {
        self.flush()?;
        self.execute(sql::DESTROY, &[&label, &i64::from(kid), &at_ms])?;
        // The old row version stays in the table's files until the table is rewritten: mark
        // the scrub pending in the same transaction, so that it is retried until it is done.
        // The mark names this transaction: the scrub is done only once no snapshot from
        // before it remains (`VACUUM FULL` keeps the old row version for one).
        let txid: i64 = match self.query(sql::TXID, &[])?.first() {
            Some(r) => col(r, 0)?,
            None => return Err(ServerError::Database("no transaction id".into())),
        };
        self.put_meta("scrub_pending", format!("txid {txid}").as_bytes())
    }

    fn sealed_secrets(&mut self) -> Result<Vec<SealedRow>> {
        self.flush()?;
        let mut out = Vec::new();
        for (kind, q) in [
            (SecretKind::Label, sql::SEALED_LABEL),
            (SecretKind::Dke, sql::SEALED_DKE),
        ] {
            for r in self.query(q, &[])? {
                out.push(SealedRow {
                    label: col(&r, 0)?,
                    kid: kid_of(col(&r, 1)?)?,
                    kind,
                    sealed: col(&r, 2)?,
                });
            }
        }
        Ok(out)
    }

    fn set_sealed_secret(
        &mut self,
        label: &str,
        kid: u32,
        kind: SecretKind,
        sealed: &[u8],
    ) -> Result<()> {
        self.flush()?;
        let q = match kind {
            SecretKind::Label => sql::SET_SEALED_LABEL,
            SecretKind::Dke => sql::SET_SEALED_DKE,
        };
        self.execute(q, &[&label, &i64::from(kid), &sealed])?;
        Ok(())
    }

    fn set_dke_key(&mut self, label: &str, kid: u32, public: &[u8], sealed: &[u8]) -> Result<()> {
        self.flush()?;
        self.execute(sql::SET_DKE, &[&label, &i64::from(kid), &public, &sealed])?;
        Ok(())
    }

    fn insert_token(&mut self, t: &TokenRow) -> Result<()> {
        self.flush()?;
        let groups = serde_json::to_string(&t.groups).expect("strings");
        self.execute(
            sql::INSERT_TOKEN,
            &[
                &t.id,
                &t.hash,
                &t.user,
                &groups,
                &t.created_ms,
                &t.expires_ms,
                &t.revoked_ms,
            ],
        )?;
        Ok(())
    }

    fn revoke_token(&mut self, id: &str, at_ms: i64) -> Result<bool> {
        self.flush()?;
        Ok(self.execute(sql::REVOKE_TOKEN, &[&id, &at_ms])? > 0)
    }

    fn revoke_user(&mut self, user: &str, at_ms: i64) -> Result<Vec<String>> {
        self.flush()?;
        self.query(sql::REVOKE_USER, &[&user, &at_ms])?
            .iter()
            .map(|r| col(r, 0))
            .collect::<Result<_>>()
    }

    fn audit_tail(&mut self) -> Result<Option<(i64, Vec<u8>)>> {
        if let Some(tail) = self.tail.take() {
            return Ok(tail);
        }
        self.flush()?;
        self.query_opt(sql::AUDIT_TAIL, &[])?
            .map(|r| Ok::<_, ServerError>((col(&r, 0)?, col(&r, 1)?)))
            .transpose()
    }

    fn insert_audit(&mut self, seq: i64, e: &AuditEntry, mac: &[u8]) -> Result<()> {
        self.tail = None;
        self.audit.push((seq, e.clone(), mac.to_vec()));
        // Bounded: a long trail (`store copy`) goes in batches, not in one statement that
        // grows with it past memory and PostgreSQL's 1 GiB message limit.
        if self.audit.len() >= AUDIT_BATCH {
            self.flush()?;
        }
        Ok(())
    }
}

/// Read a password's first line from `path` (at most 4 KiB).
pub fn password_from_file(path: &Path) -> Result<Zeroizing<String>> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| {
        ServerError::Config(format!(
            "cannot read the store password file {}: {e}",
            path.display()
        ))
    })?;
    // Like the master key file: a password that other users can read is refused (it opens
    // the whole store, policies included). A systemd credential may show group read.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = f.metadata()?.permissions().mode();
        let tolerated = if crate::master_key::is_systemd_credential(path) {
            0o040
        } else {
            0
        };
        if mode & 0o077 & !tolerated != 0 {
            return Err(ServerError::Config(format!(
                "the store password file {} has mode {:o}, readable by other users: run \
                 `chmod 600` on it",
                path.display(),
                mode & 0o777
            )));
        }
    }
    let mut buf = Zeroizing::new(Vec::new());
    f.take(4097).read_to_end(&mut buf)?;
    let text = std::str::from_utf8(&buf).map_err(|_| {
        ServerError::Config(format!(
            "the store password file {} is not UTF-8",
            path.display()
        ))
    })?;
    let line = text.lines().next().unwrap_or("");
    if buf.len() > 4096 || line.is_empty() {
        return Err(ServerError::Config(format!(
            "the store password file {} must hold the password on its first line (at most 4 KiB)",
            path.display()
        )));
    }
    Ok(Zeroizing::new(line.to_owned()))
}
