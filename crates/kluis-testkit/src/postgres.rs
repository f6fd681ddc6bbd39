//! A throwaway PostgreSQL cluster for tests, from the Debian package (`apt-get install
//! postgresql`): `initdb` into a temporary folder, `postgres` on a free loopback port, SCRAM
//! password authentication over TCP. As root (CI) it runs as the `postgres` user, since
//! PostgreSQL refuses to run as root. A watchdog process stops it and removes its folder when
//! the test process ends, however it ends; [`PgCluster::shared`] gives one per test binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The superuser the tests connect as.
pub const USER: &str = "kluis";
/// Its password (a test cluster on loopback only).
pub const PASSWORD: &str = "kluis-test-password";

/// A running test cluster.
pub struct PgCluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
}

/// The folder of PostgreSQL's programs: `KLUIS_PG_BIN`, else Debian's newest
/// `/usr/lib/postgresql/<version>/bin`. When there is none and we are root, Debian's
/// `postgresql` package is installed first (as the network egress test installs `strace`), so
/// the README's test command needs no set-up of its own. Panics, saying what to install, when
/// there is still none.
pub fn bin_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("KLUIS_PG_BIN") {
        return PathBuf::from(p);
    }
    if let Some(bin) = installed().or_else(|| install().then(installed).flatten()) {
        return bin;
    }
    panic!(
        "PostgreSQL is not installed, and the PostgreSQL store tests need it: \
         run `apt-get install postgresql` (or point KLUIS_PG_BIN at its bin folder)"
    )
}

/// Debian's newest installed PostgreSQL's program folder.
fn installed() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

/// Install Debian's `postgresql` with apt-get, when we are root; whether that ran. Test
/// binaries may get here at once: apt-get waits for the other's lock.
fn install() -> bool {
    if !is_root() {
        return false;
    }
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["-o", "DPkg::Lock::Timeout=900", "-qq"])
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    apt(&["update"]) && apt(&["install", "-y", "postgresql"])
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// `program` run as the PostgreSQL user when we are root.
fn as_pg_user(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn check(out: std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl PgCluster {
    /// The cluster of this test binary, started on first use.
    pub fn shared() -> &'static PgCluster {
        static SHARED: OnceLock<PgCluster> = OnceLock::new();
        SHARED.get_or_init(PgCluster::start)
    }

    /// A new cluster of its own (stopped and removed on drop).
    pub fn start() -> PgCluster {
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("kluis-pg-")
            .tempdir()
            .unwrap()
            .keep();
        if is_root() {
            check(
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(&dir)
                    .output()
                    .unwrap(),
                "chown",
            );
        }
        let pwfile = dir.join("pw");
        std::fs::write(&pwfile, PASSWORD).unwrap();
        if is_root() {
            let _ = Command::new("chown").arg("postgres").arg(&pwfile).status();
        }
        check(
            as_pg_user(&bin.join("initdb"))
                .args(["-D"])
                .arg(dir.join("data"))
                .args([
                    "-U",
                    USER,
                    "--auth-host=scram-sha-256",
                    "--auth-local=trust",
                    "--no-sync",
                    "-E",
                    "UTF8",
                    "--locale=C",
                ])
                .arg(format!("--pwfile={}", pwfile.display()))
                .output()
                .unwrap(),
            "initdb",
        );
        let _ = std::fs::remove_file(&pwfile);
        // The watchdog: when this test process is gone, stop the cluster and remove it.
        let pg_ctl = bin.join("pg_ctl");
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             {runas} '{ctl}' stop -D '{data}' -m immediate >/dev/null 2>&1; rm -rf '{dir}'",
            pid = std::process::id(),
            runas = if is_root() {
                "runuser -u postgres --"
            } else {
                ""
            },
            ctl = pg_ctl.display(),
            data = dir.join("data").display(),
            dir = dir.display(),
        );
        let _ = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let mut cluster = PgCluster { dir, bin, port: 0 };
        for attempt in 0.. {
            cluster.port = free_port();
            if cluster.try_start() {
                break;
            }
            assert!(attempt < 3, "PostgreSQL did not start: {}", cluster.log());
        }
        cluster
    }

    fn try_start(&self) -> bool {
        as_pg_user(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.dir.join("log"))
            .arg("-o")
            .arg(format!(
                "-p {} -k '{}' -c listen_addresses=127.0.0.1 -c max_connections=200 \
                 -c fsync=on -c synchronous_commit=on -c full_page_writes=on",
                self.port,
                self.dir.display()
            ))
            .args(["-w", "-t", "60", "start"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// Stop the server at once, as a crash would (`pg_ctl stop -m immediate`).
    pub fn stop_immediate(&self) {
        let _ = as_pg_user(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// Start it again on the same port (after [`PgCluster::stop_immediate`]).
    pub fn restart(&self) {
        assert!(
            self.try_start(),
            "PostgreSQL did not start again: {}",
            self.log()
        );
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The folder of its Unix socket (`.s.PGSQL.<port>`).
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.clone()
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of database `db` (no password in it: give [`PASSWORD`] separately).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{db}", self.port)
    }

    /// Run SQL with `psql` in database `db`; its unaligned output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        check(
            Command::new(self.bin.join("psql"))
                .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    USER,
                    "-d",
                    db,
                ])
                .args(["-c", sql])
                .env("PGPASSWORD", PASSWORD)
                .output()
                .unwrap(),
            "psql",
        )
    }

    /// A new, empty database; its name.
    pub fn create_database(&self) -> String {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "t{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        name
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop_immediate();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
