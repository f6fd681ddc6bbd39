//! Test helpers: the real `kluis-server` process and the real `kluis` binary, each run with
//! its own configuration and cache folders.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The `kluis-server` binary, built once per test run (see kluis-testkit).
pub fn server_bin() -> &'static Path {
    kluis_testkit::server_bin()
}

pub use kluis_testkit::Server;

/// What these tests ask of the server beyond the shared fixture.
pub trait ServerExt {
    /// The public key of a label's current version, as the server publishes it.
    fn label_key(&self, label: &str) -> kluis_core::LabelPublicKey;
}

impl ServerExt for Server {
    /// The public key of a label's current version, as the server publishes it.
    fn label_key(&self, label: &str) -> kluis_core::LabelPublicKey {
        let c = kluis_client::Client::new(kluis_client::ClientConfig::new(&self.url)).unwrap();
        c.label_record(label).unwrap().key
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

/// A plain HTTP listener on loopback that records every request it gets and answers 503.
pub struct Recorder {
    /// Its address, `http://127.0.0.1:PORT`.
    pub url: String,
    seen: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Recorder {
    /// Start it on a free port.
    pub fn start() -> Recorder {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let _ = s.set_read_timeout(Some(std::time::Duration::from_millis(500)));
                let mut buf = [0u8; 65536];
                let mut got = Vec::new();
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                    if got.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                log.lock().unwrap().extend_from_slice(&got);
                let _ = s.write_all(
                    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            }
        });
        Recorder { url, seen }
    }

    /// Every byte it received so far, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen.lock().unwrap()).into_owned()
    }
}
