//! Test support shared by the end-to-end tests of kluis-client and the `kluis` command: the
//! real `kluis-server` binary, started on loopback with a fresh store ([`Server`]).

#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// The `kluis-server` binary, built once per test run.
///
/// Cargo builds only the binaries of the package under test, so the server's binary is
/// built here with `cargo build -p kluis-server --bin kluis-server --features test-support`
/// into the same target directory and profile as this test (a no-op when it is up to date). `KLUIS_SERVER_BIN`
/// points at a prebuilt binary instead.
pub fn server_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("KLUIS_SERVER_BIN") {
            return PathBuf::from(p);
        }
        let exe = std::env::current_exe().unwrap();
        // <target>/<profile>/deps/<test binary>
        let profile_dir = exe.parent().unwrap().parent().unwrap().to_owned();
        let target_dir = profile_dir.parent().unwrap();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        // Cargo sets these for the test; build scripts (ring's) watch some of them, and
        // inheriting them would make the outer and this build rebuild each other's crates.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("CARGO_PKG_")
                || k.starts_with("CARGO_BIN_")
                || matches!(
                    &*k,
                    "CARGO_MANIFEST_DIR"
                        | "CARGO_MANIFEST_PATH"
                        | "CARGO_CRATE_NAME"
                        | "CARGO_PRIMARY_PACKAGE"
                        | "CARGO_TARGET_TMPDIR"
                        | "CARGO_RUSTC_CURRENT_DIR"
                        | "OUT_DIR"
                )
            {
                cmd.env_remove(&*k);
            }
        }
        cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
            .args([
                "build",
                "--quiet",
                "-p",
                "kluis-server",
                "--bin",
                "kluis-server",
                // The features kluis-server's own tests build its binary with (its
                // dev-dependency on itself): without them this build would replace, at the same
                // path, the binary those tests run, and their test-only switches would be gone.
                "--features",
                "test-support",
            ])
            .arg("--target-dir")
            .arg(target_dir);
        let profile = profile_dir.file_name().unwrap().to_str().unwrap();
        if profile != "debug" {
            cmd.args(["--profile", profile]);
        }
        let out = cmd.output().expect("run cargo to build kluis-server");
        assert!(
            out.status.success(),
            "building kluis-server failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bin = profile_dir.join(format!("kluis-server{}", std::env::consts::EXE_SUFFIX));
        assert!(bin.exists(), "{} was not built", bin.display());
        bin
    })
}

/// Start `command` (a `kluis-server … serve --listen 127.0.0.1:0 …` command line; the caller
/// chooses where its standard error goes) and wait for its first line, `listening on URL`.
/// Returns the running server and its URL.
pub fn spawn_serve(mut command: Command) -> (Child, String) {
    let mut child = command.stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line from serve: {line:?}"))
        .to_owned();
    (child, url)
}

/// A running `kluis-server serve` on loopback, with labels `hr` (group `hr-staff`) and
/// `medical` (user alice, double key), and tokens for alice (in `hr-staff`) and bob.
pub struct Server {
    /// The server's folder: its store, master key and configuration.
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    /// The server's address, `http://127.0.0.1:PORT`.
    pub url: String,
    /// An API token for alice (group `hr-staff`).
    pub alice: String,
    /// The id of alice's token (for `token revoke`).
    pub alice_id: String,
    /// An API token for bob (no group).
    pub bob: String,
    serve_args: Vec<String>,
}

impl Server {
    /// Start a server with the standard labels and tokens.
    pub fn start() -> Server {
        Server::start_with(&[])
    }

    /// Start a server, running `extra` admin commands before serving.
    pub fn start_with(extra: &[&[&str]]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Server {
            dir,
            child: None,
            url: String::new(),
            alice: String::new(),
            alice_id: String::new(),
            bob: String::new(),
            serve_args: Vec::new(),
        };
        s.admin(&["init"]);
        s.admin(&["label", "create", "hr", "--group", "hr-staff"]);
        s.admin(&[
            "label",
            "create",
            "medical",
            "--user",
            "alice",
            "--double-key",
        ]);
        for args in extra {
            s.admin(args);
        }
        let (token, stderr) =
            s.admin_full(&["token", "create", "--user", "alice", "--group", "hr-staff"]);
        s.alice = token.trim().to_owned();
        // "token ID for USER (shown once; ...)"
        s.alice_id = stderr
            .split_whitespace()
            .nth(1)
            .expect("token id on stderr")
            .to_owned();
        s.bob = s
            .admin(&["token", "create", "--user", "bob"])
            .trim()
            .to_owned();
        s.serve();
        s
    }

    /// Start a server whose label records may be cached for `secs` seconds only.
    pub fn start_with_record_max_age(secs: u32) -> Server {
        let mut s = Server::start();
        s.stop();
        let config = s.dir.path().join("server.toml");
        std::fs::write(&config, format!("[serve]\nrecord_max_age_secs = {secs}\n")).unwrap();
        s.serve_args = vec!["--config".into(), config.to_string_lossy().into_owned()];
        s.serve();
        s
    }

    fn serve(&mut self) {
        let mut command = self.command();
        command
            .args(&self.serve_args)
            .args(["serve", "--listen", "127.0.0.1:0", "--insecure-http"])
            .stderr(Stdio::null());
        let (child, url) = spawn_serve(command);
        self.child = Some(child);
        self.url = url;
    }

    fn command(&self) -> Command {
        let mut c = Command::new(server_bin());
        let d = self.dir.path();
        c.current_dir(d)
            .env_remove("KLUIS_CONFIG")
            .arg("--store")
            .arg(d.join("store.db"))
            .arg("--key-file")
            .arg(d.join("master.key"));
        c
    }

    /// Run an administrative command; returns its standard output.
    pub fn admin(&self, args: &[&str]) -> String {
        self.admin_full(args).0
    }

    /// Run an administrative command; returns its standard output and error.
    pub fn admin_full(&self, args: &[&str]) -> (String, String) {
        let out = self.command().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    }

    /// Stop the server process (SIGKILL; it is not restarted).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The server's `/metrics` text (read with a bare HTTP/1.0 request).
    pub fn metrics(&self) -> String {
        let addr = self.url.strip_prefix("http://").unwrap();
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text
    }

    /// A counter from `/metrics`, summed over the lines that contain every one of `parts`.
    pub fn counter(&self, name: &str, parts: &[&str]) -> u64 {
        self.metrics()
            .lines()
            .filter(|l| l.starts_with(name) && parts.iter().all(|p| l.contains(p)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

pub mod postgres;
