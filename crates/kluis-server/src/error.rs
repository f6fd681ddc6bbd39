//! Error type of the key server.

use std::fmt;

/// What can go wrong in the key server; every message says what to do.
#[derive(Debug)]
#[non_exhaustive]
pub enum ServerError {
    /// The store (SQLite) failed.
    Store(rusqlite::Error),
    /// The PostgreSQL store failed (unreachable, timed out, or refused a statement); the
    /// server's message and SQLSTATE, never a row's values.
    Database(String),
    /// Reading or writing a file failed.
    Io(std::io::Error),
    /// The kluis format library refused something.
    Core(kluis_core::Error),
    /// The master key file is readable by others than its owner.
    KeyFilePermissions {
        /// The file's mode bits.
        mode: u32,
    },
    /// The master key (file or passphrase) does not open this store.
    WrongMasterKey,
    /// The master key file is malformed.
    BadKeyFile,
    /// The store was already initialised, or is missing.
    Init(&'static str),
    /// No such label.
    UnknownLabel(String),
    /// The label exists already.
    LabelExists(String),
    /// No such key version.
    UnknownVersion {
        /// The label.
        label: String,
        /// The key version.
        kid: u32,
    },
    /// The key version was destroyed (crypto-shredded).
    Destroyed {
        /// The label.
        label: String,
        /// The key version.
        kid: u32,
        /// When it was destroyed, if known (ms since the epoch).
        destroyed_ms: Option<i64>,
    },
    /// The request breaks a rule (for example destroying the current version).
    Refused(String),
    /// The policy given is invalid.
    BadPolicy(String),
    /// The configuration (file, environment, flags, TLS files) is invalid.
    Config(String),
    /// The audit trail failed verification.
    AuditBroken {
        /// The first sequence number that does not verify.
        seq: i64,
        /// What is wrong with it.
        what: &'static str,
    },
    /// A destroy committed, but an old copy of the destroyed sealed key may remain in the
    /// database file or its write-ahead log: another connection still holds the store.
    ScrubPending {
        /// The version just destroyed, when the scrub followed a destroy.
        destroyed: Option<(String, u32)>,
        /// Whether a reader of a snapshot from before the destroy is known to hold it (an
        /// old copy is then still in the database file); otherwise another connection (a
        /// reader or a writer) keeps the write-ahead log from being emptied.
        reader: bool,
    },
    /// A destroy committed, but removing the old copies of the destroyed sealed key from the
    /// store's files then failed for another reason (the disk full, an I/O error).
    ScrubFailed {
        /// The label.
        label: String,
        /// The destroyed version.
        kid: u32,
        /// Why the scrub failed.
        cause: Box<ServerError>,
    },
    /// Scheduled rotation or retention failed for some labels; the others were done.
    ScheduleIncomplete {
        /// The changes that were made.
        done: Vec<crate::store::ScheduledChange>,
        /// What failed (a label, or a version of it) and why.
        failed: Vec<(String, String)>,
    },
    /// The store file is damaged (SQLite's integrity check found problems).
    Damaged {
        /// The store file.
        path: std::path::PathBuf,
        /// What the integrity check reported, one problem an item (the message names
        /// the first 5).
        problems: Vec<String>,
    },
    /// A thread the server depends on stopped; the process must be restarted.
    ThreadDied(&'static str),
    /// An audit anchor file is malformed.
    BadAnchor(String),
    /// An audit anchor file cannot be read or appended to.
    AnchorFile {
        /// The anchor file.
        path: std::path::PathBuf,
        /// True when appending (`audit anchor --to`), false when reading (`--anchors`).
        append: bool,
        /// What the system said.
        error: std::io::Error,
    },
    /// The audit chain verifies, but an anchor does not match it.
    AnchorMismatch {
        /// The anchored sequence number.
        seq: i64,
        /// What is wrong with it.
        what: &'static str,
    },
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ServerError::*;
        match self {
            Store(e) => write!(f, "store error: {e}: check the store path and disk space"),
            Database(e) => write!(
                f,
                "PostgreSQL store error: {e}: check that the database runs and is reachable"
            ),
            Io(e) => write!(f, "I/O error: {e}"),
            Core(e) => write!(f, "{e}"),
            KeyFilePermissions { mode } => write!(
                f,
                "the master key file has mode {mode:o}, readable by others: run `chmod 600` on it"
            ),
            WrongMasterKey => f.write_str(
                "the master key does not open this store: check --key-file or the passphrase (a store \
                 or backup from before a master-key rotation opens only with the key of its time)",
            ),
            BadKeyFile => f.write_str(
                "the master key file is malformed: it must hold 64 hex digits, as `kluis-server init` writes it",
            ),
            Init(m) => write!(f, "{m}"),
            UnknownLabel(l) => write!(f, "no label `{l}`: list labels with `kluis-server label list`"),
            LabelExists(l) => write!(
                f,
                "label `{l}` exists already: change its policy with `kluis-server label update {l}`"
            ),
            UnknownVersion { label, kid } => write!(
                f,
                "label `{label}` has no key version {kid}: `kluis-server label show {label}` lists them"
            ),
            Destroyed {
                label,
                kid,
                destroyed_ms,
            } => {
                write!(f, "key version {kid} of label `{label}` was destroyed")?;
                if let Some(t) = destroyed_ms {
                    write!(f, " on {}", crate::time::rfc3339(*t))?;
                }
                f.write_str(": its documents cannot be opened by anyone")
            }
            Refused(m) => write!(f, "refused: {m}"),
            BadPolicy(m) => write!(f, "invalid policy: {m}"),
            Config(m) => write!(f, "configuration: {m}"),
            BadAnchor(m) => write!(
                f,
                "the anchor file is malformed: {m}; it holds lines written by `kluis-server audit anchor`"
            ),
            AuditBroken { seq, what } => write!(
                f,
                "the audit trail does not verify at record {seq}: {what}; the store was tampered with or damaged"
            ),
            ScrubPending { destroyed, reader } => {
                match destroyed {
                    Some((label, kid)) => write!(
                        f,
                        "key version {kid} of label `{label}` is destroyed in the store, but an \
                         old copy of its sealed key"
                    )?,
                    None => f.write_str("an old copy of a destroyed sealed key")?,
                }
                if *reader {
                    f.write_str(
                        " remains in the database file until \
                         the reader holding it finishes (another process has a read transaction \
                         open on the store since before the destroy): end that reader (`fuser` on \
                         a SQLite store's file shows it; on PostgreSQL, `pg_stat_activity` and \
                         `pg_locks` of the store's database)",
                    )?;
                } else {
                    f.write_str(
                        " may remain in the store's write-ahead log until another connection \
                         lets go of the store (a reader or a writer: a read transaction or the \
                         write lock held open): end it (`fuser` on the store file shows the \
                         processes)",
                    )?;
                }
                f.write_str(
                    "; the serving kluis-server's scheduler then completes the scrub, or run \
                     `kluis-server store scrub`",
                )
            }
            ScrubFailed { label, kid, cause } => write!(
                f,
                "key version {kid} of label `{label}` IS destroyed in the store, but removing \
                 the old copies of its sealed key from the store's files failed: {cause}; once \
                 that is fixed, run `kluis-server store scrub` (a serving kluis-server's \
                 scheduler also retries it at every tick)"
            ),
            ScheduleIncomplete { failed, .. } => {
                write!(f, "scheduled rotation/retention failed:")?;
                for (what, e) in failed.iter().take(3) {
                    write!(f, " [{what}: {e}]")?;
                }
                if failed.len() > 3 {
                    write!(f, " and {} more", failed.len() - 3)?;
                }
                f.write_str(
                    "; the other labels were done: fix what failed, then run \
                     `kluis-server schedule` again (a serving kluis-server's scheduler retries \
                     at every tick)",
                )
            }
            Damaged { path, problems } => {
                write!(f, "the store {} is damaged:", path.display())?;
                for p in problems.iter().take(5) {
                    write!(f, " [{p}]")?;
                }
                if problems.len() > 5 {
                    write!(f, " and {} more", problems.len() - 5)?;
                }
                f.write_str(
                    "; do not serve from it: `kluis-server store check` gives the full report; \
                     stop the server, keep this file for analysis, restore the latest backup of \
                     the store in its place (remove the old -wal and -shm files), then run \
                     `kluis-server store check` and `kluis-server audit verify` (docs/SERVER.md, \
                     \"Integrity checks\")",
                )
            }
            AnchorFile {
                path,
                append: true,
                error,
            } => write!(
                f,
                "cannot append to the anchor file {}: {error}: its folder must exist and be \
                 writable by this user (`install -d -m 0700 FOLDER`)",
                path.display()
            ),
            AnchorFile { path, error, .. } => write!(
                f,
                "cannot read the anchor file {}: {error}: give --anchors the file that \
                 `kluis-server audit anchor --to` appends to (or the copy shipped elsewhere)",
                path.display()
            ),
            AnchorMismatch { seq, what } => write!(
                f,
                "the audit chain verifies, but the anchor of record {seq} does not match: {what}. \
                 Right after a restore from a backup older than this anchor that is expected: note \
                 the restore and start a new anchor file (docs/OPERATIONS.md, \"Restore\"); \
                 otherwise it is a security incident: compare with the anchors shipped elsewhere"
            ),
            ThreadDied(what) => write!(
                f,
                "the {what} stopped unexpectedly; exiting so that the service manager restarts the server"
            ),
        }
    }
}

impl std::error::Error for ServerError {}

impl From<rusqlite::Error> for ServerError {
    fn from(e: rusqlite::Error) -> Self {
        ServerError::Store(e)
    }
}

impl From<std::io::Error> for ServerError {
    fn from(e: std::io::Error) -> Self {
        ServerError::Io(e)
    }
}

impl From<kluis_core::Error> for ServerError {
    fn from(e: kluis_core::Error) -> Self {
        ServerError::Core(e)
    }
}

/// Short alias.
pub type Result<T, E = ServerError> = std::result::Result<T, E>;
