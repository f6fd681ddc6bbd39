//! Test helpers: the real `kluis-server` process and the real `kluis` binary, each run with
//! its own configuration and cache folders.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use std::time::Duration;

/// The `kluis-server` binary, built once per test run (see kluis-testkit).
pub fn server_bin() -> &'static Path {
    kluis_testkit::server_bin()
}

/// A running `kluis-server serve` on loopback, with labels `hr` (group `hr-staff`) and
/// `medical` (user alice, double key), and tokens for alice (in `hr-staff`) and bob.
pub struct Server {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    pub url: String,
    pub alice: String,
    pub alice_id: String,
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
        let (child, url) = kluis_testkit::spawn_serve(command);
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

    /// The public key of a label's current version, as the server publishes it.
    pub fn label_key(&self, label: &str) -> kluis_core::LabelPublicKey {
        let c = kluis_client::Client::new(kluis_client::ClientConfig::new(&self.url)).unwrap();
        c.label_record(label).unwrap().key
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What a `kluis` run gave.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Run {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout_text()))
    }

    /// Assert success.
    pub fn ok(self) -> Run {
        assert_eq!(self.code, 0, "kluis failed: {}", self.stderr);
        self
    }

    /// Assert failure with `code` and a message containing `text`.
    pub fn fails(self, code: i32, text: &str) -> Run {
        assert_eq!(
            self.code, code,
            "expected exit code {code}; stderr: {}",
            self.stderr
        );
        assert!(
            self.stderr.contains(text),
            "expected {text:?} in stderr: {}",
            self.stderr
        );
        self
    }
}

/// One person's `kluis`: own configuration and cache folders and a working folder.
pub struct User {
    pub home: tempfile::TempDir,
    pub env: Vec<(String, String)>,
}

impl User {
    /// A person with empty configuration.
    pub fn new() -> User {
        let home = tempfile::tempdir().unwrap();
        for d in ["config", "cache", "work"] {
            std::fs::create_dir(home.path().join(d)).unwrap();
        }
        User { home, env: vec![] }
    }

    /// A person logged in to `server` with `token`.
    pub fn logged_in(server: &Server, token: &str) -> User {
        let u = User::new();
        u.run_in(&["--server", &server.url, "login"], Some(token.as_bytes()))
            .ok();
        u
    }

    pub fn config_dir(&self) -> PathBuf {
        self.home.path().join("config")
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.home.path().join("cache")
    }

    /// The working folder (commands run there).
    pub fn work(&self) -> PathBuf {
        self.home.path().join("work")
    }

    /// A path in the working folder.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.work().join(rel)
    }

    /// The `kluis` command with this person's environment.
    pub fn command(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kluis"));
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("KLUIS_") || k.starts_with("XDG_") {
                c.env_remove(&*k);
            }
        }
        c.current_dir(self.work())
            .env("HOME", self.home.path())
            .env("KLUIS_CONFIG_DIR", self.config_dir())
            .env("KLUIS_CACHE_DIR", self.cache_dir())
            .env("KLUIS_TIMEOUT", "10");
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    /// Run `kluis args` with `stdin` (empty when `None`).
    pub fn run_in(&self, args: &[&str], stdin: Option<&[u8]>) -> Run {
        let mut child = self
            .command()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        let data = stdin.unwrap_or_default().to_vec();
        let writer = std::thread::spawn(move || {
            let _ = input.write_all(&data);
        });
        let out: Output = child.wait_with_output().unwrap();
        writer.join().unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Run `kluis args` with empty standard input.
    pub fn run(&self, args: &[&str]) -> Run {
        self.run_in(args, None)
    }

    /// Run `kluis args` with standard input from the file `input`.
    pub fn run_file_stdin(&self, args: &[&str], input: &Path) -> Run {
        let out = self
            .command()
            .args(args)
            .stdin(std::fs::File::open(input).unwrap())
            .output()
            .unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// Write `data` to `path`, creating folders.
pub fn write(path: &Path, data: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

/// SHA-256 of a file, streamed.
pub fn digest(path: &Path) -> Vec<u8> {
    let mut f = std::fs::File::open(path).unwrap();
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    ctx.finish().as_ref().to_vec()
}

/// Every file below `dir`, as sorted relative paths.
pub fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, d: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    if dir.exists() {
        walk(dir, dir, &mut out);
    }
    out.sort();
    out
}
