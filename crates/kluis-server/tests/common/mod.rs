//! Shared by the end-to-end tests: the real `kluis-server` binary, its admin commands, a
//! served process on loopback, and small HTTP helpers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use kluis_core::{LabelPublicKey, PublicKey};
use serde_json::Value;

pub mod dke;

/// The body of a single unwrap (`POST /v1/unwrap`) for a fresh document sealed to `label`,
/// with a fresh reply key.
pub fn unwrap_body(label: &LabelPublicKey) -> Value {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as B64;
    let sealed = kluis_core::seal(
        &[kluis_core::Slot::single(kluis_core::Recipient::Label(
            label.clone(),
        ))],
        &kluis_core::Metadata::default(),
        b"secret",
    )
    .unwrap();
    let header = kluis_core::Header::parse(&sealed).unwrap();
    let reply = kluis_core::reply::ReplyKey::generate().unwrap();
    serde_json::json!({
        "reply_key": B64.encode(reply.public_bytes()),
        "doc_id": header.doc_id().to_string(),
        "stanza": B64.encode(header.slots()[0][0].to_bytes()),
    })
}

/// A store with label `hr` (user alice) and a token for alice.
pub fn store() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    admin(dir.path(), &["init"]);
    admin(dir.path(), &["label", "create", "hr", "--user", "alice"]);
    let token = admin(dir.path(), &["token", "create", "--user", "alice"]);
    (dir, token.trim().to_owned())
}

/// A store with label `hr` for `users`, and a token for each.
pub fn store_for(users: &[&str]) -> (tempfile::TempDir, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    admin(dir.path(), &["init"]);
    let mut args = vec!["label", "create", "hr"];
    for u in users {
        args.extend(["--user", u]);
    }
    admin(dir.path(), &args);
    let tokens = users
        .iter()
        .map(|u| {
            admin(dir.path(), &["token", "create", "--user", u])
                .trim()
                .to_owned()
        })
        .collect();
    (dir, tokens)
}

/// A served `kluis-server` process; killed on drop.
pub struct Server {
    pub dir: tempfile::TempDir,
    pub child: Child,
    pub base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// SIGKILL the process (no chance to clean up) and give back its directory.
    pub fn kill(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }
}

/// The binary under test.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kluis-server"))
}

/// Run an admin command in `dir`; it must succeed. Returns its standard output.
pub fn admin(dir: &Path, args: &[&str]) -> String {
    let out = bin().current_dir(dir).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Run an admin command that must fail; returns its standard error.
pub fn admin_fails(dir: &Path, args: &[&str]) -> String {
    let out = bin().current_dir(dir).args(args).output().unwrap();
    assert!(!out.status.success(), "{args:?} succeeded");
    String::from_utf8(out.stderr).unwrap()
}

/// Start `serve` in `dir` with `args` (besides `serve`), and wait for its address.
pub fn serve(dir: tempfile::TempDir, args: &[&str]) -> Server {
    serve_with_env(dir, args, &[])
}

/// [`serve`] with extra environment variables.
pub fn serve_with_env(dir: tempfile::TempDir, args: &[&str], env: &[(&str, &str)]) -> Server {
    let mut child = bin()
        .current_dir(dir.path())
        .envs(env.iter().copied())
        .arg("serve")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = match line.trim().strip_prefix("listening on ") {
        Some(b) => b.to_owned(),
        None => {
            let out = child.wait_with_output().unwrap();
            panic!(
                "serve did not start: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    };
    Server { dir, child, base }
}

/// Plain HTTP on loopback, port chosen by the system.
pub const LOOPBACK: [&str; 3] = ["--listen", "127.0.0.1:0", "--insecure-http"];

/// `serve` on plain loopback HTTP with a `[serve]` table written to `kluis.toml` (rate
/// limiting off, then `serve_table`).
pub fn serve_with(dir: tempfile::TempDir, serve_table: &str) -> Server {
    std::fs::write(
        dir.path().join("kluis.toml"),
        format!("[serve]\nrate_limit_per_sec = 0\n{serve_table}"),
    )
    .unwrap();
    serve(
        dir,
        &[
            "--config",
            "kluis.toml",
            "--listen",
            "127.0.0.1:0",
            "--insecure-http",
        ],
    )
}

/// The socket address of a server on plain HTTP.
pub fn addr(server: &Server) -> std::net::SocketAddr {
    server
        .base
        .strip_prefix("http://")
        .unwrap()
        .parse()
        .unwrap()
}

/// `/readyz` at `base`: status and JSON `code` (or the text).
pub fn readiness(base: &str) -> (u16, String) {
    let (status, body) = get(&format!("{base}/readyz"), None);
    let code = serde_json::from_str::<Value>(&body)
        .map(|v| v["code"].as_str().unwrap_or_default().to_owned())
        .unwrap_or(body);
    (status, code)
}

/// The head of a single unwrap with `token` announcing a body of `len` bytes.
pub fn unwrap_head(token: &str, len: usize) -> String {
    format!(
        "POST /v1/unwrap HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
    )
}

/// The answer waiting on `s`: read until its `content-length` is complete, the server
/// closes, or `wait` passes without a byte.
pub fn answer_on(s: &mut std::net::TcpStream, wait: std::time::Duration) -> Vec<u8> {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !raw_complete(&answer) {
        match std::io::Read::read(s, &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    answer
}

/// A connection that has sent an unwrap head with `token` announcing 1 MiB and then the first
/// `sent` bytes of the body, and waits.
pub fn slow_body(a: std::net::SocketAddr, token: &str, sent: usize) -> std::net::TcpStream {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(a).unwrap();
    s.write_all(unwrap_head(token, 1024 * 1024).as_bytes())
        .unwrap();
    s.write_all(&vec![b' '; sent]).unwrap();
    s
}

/// An HTTP agent that returns error statuses instead of failing.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// A CA and a certificate for 127.0.0.1 and localhost it signs: (CA DER, certificate PEM,
/// key PEM).
pub fn make_cert() -> (Vec<u8>, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (ca.der().to_vec(), cert.pem(), key.serialize_pem())
}

/// An HTTPS agent that trusts only the CA `ca` (DER) and returns error statuses as answers.
pub fn tls_agent(ca: &[u8]) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::new_with_certs(&[
                    ureq::tls::Certificate::from_der(ca).to_owned(),
                ]))
                .build(),
        )
        .build()
        .into()
}

/// GET; returns (status, body text).
pub fn get(url: &str, token: Option<&str>) -> (u16, String) {
    let mut req = agent().get(url);
    if let Some(t) = token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    let mut r = req.call().unwrap();
    (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
}

/// POST JSON; returns (status, body JSON, WWW-Authenticate).
pub fn post(url: &str, token: Option<&str>, body: &Value) -> (u16, Value, Option<String>) {
    let (status, v, headers) = post_full(url, token, body);
    (status, v, headers.get("www-authenticate").cloned())
}

/// POST JSON; returns (status, body JSON, lower-case headers).
pub fn post_full(
    url: &str,
    token: Option<&str>,
    body: &Value,
) -> (u16, Value, std::collections::HashMap<String, String>) {
    let mut req = agent().post(url).header("Content-Type", "application/json");
    if let Some(t) = token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    let mut r = req.send(body.to_string()).unwrap();
    let headers = r
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let text = r.body_mut().read_to_string().unwrap();
    (
        r.status().as_u16(),
        serde_json::from_str(&text).unwrap(),
        headers,
    )
}

/// The label's current public key, from its public record.
pub fn label_key(server: &Server, name: &str) -> LabelPublicKey {
    let (status, body) = get(&format!("{}/v1/labels/{name}", server.base), None);
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let key: PublicKey = v["public_key"].as_str().unwrap().parse().unwrap();
    LabelPublicKey::new(name, v["kid"].as_u64().unwrap() as u32, key).unwrap()
}

/// POST raw bytes (any content type); returns (status, body text, lower-case headers).
pub fn post_bytes(
    url: &str,
    token: Option<&str>,
    content_type: &str,
    body: &[u8],
) -> (u16, String, std::collections::HashMap<String, String>) {
    let mut req = agent().post(url).header("Content-Type", content_type);
    if let Some(t) = token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    let mut r = req.send(body).unwrap();
    let headers = r
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let text = r.body_mut().read_to_string().unwrap();
    (r.status().as_u16(), text, headers)
}

/// Write `request` to a fresh connection to `addr` (write errors ignored: the server may
/// answer and close before reading it all), then read one answer: until its
/// `content-length` is complete, the server closes, or `wait` passes. Returns what was read.
pub fn raw_exchange(addr: &str, request: &[u8], wait: std::time::Duration) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    let _ = s.write_all(request);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    while !raw_complete(&buf) {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    buf
}

/// Like [`raw_exchange`], but reads until the server closes the connection (or `wait` passes
/// without a byte): for pipelined requests, whose answers may arrive in separate reads.
pub fn raw_exchange_until_close(addr: &str, request: &[u8], wait: std::time::Duration) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    let _ = s.write_all(request);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    buf
}

/// Whether `answer` holds a whole HTTP/1.1 answer with a `content-length`.
pub fn raw_complete(answer: &[u8]) -> bool {
    let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&answer[..end]).to_ascii_lowercase();
    head.lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|n| n.trim().parse::<usize>().ok())
        .is_some_and(|n| answer.len() >= end + 4 + n)
}

/// The HTTP status of a raw HTTP/1.1 answer, if it starts with a status line.
pub fn raw_status(answer: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(answer.get(..12)?).ok()?;
    text.strip_prefix("HTTP/1.1 ")?.parse().ok()
}

/// The body of a raw HTTP/1.1 answer with a `content-length` (what follows the headers).
pub fn raw_body(answer: &[u8]) -> &[u8] {
    answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(&[][..], |i| &answer[i + 4..])
}

/// A value from `/proc/<pid>/status`, in KiB (`VmHWM`, `VmRSS`); `None` off Linux.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Collect a child's standard error on a thread, so that it never blocks on a full pipe;
/// the returned handle gives the text once the process has exited.
pub fn drain_stderr(child: &mut Child) -> std::thread::JoinHandle<String> {
    use std::io::Read;
    let mut err = child.stderr.take().expect("stderr is piped");
    std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = err.read_to_end(&mut text);
        String::from_utf8_lossy(&text).into_owned()
    })
}

/// Run an admin command on the PostgreSQL store at `url` (the test clusters' password from the
/// environment, as an operator would give it) in `dir`; its standard output. Panics, showing
/// standard error, when it fails.
pub fn pg_admin(dir: &Path, url: &str, args: &[&str]) -> String {
    let out = bin()
        .current_dir(dir)
        .env("KLUIS_STORE", url)
        .env("KLUIS_STORE_PASSWORD", kluis_testkit::postgres::PASSWORD)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A tmpfs mounted for the life of the value; unmounted (lazily) on drop.
pub struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// Mount a tmpfs of `size` at `dir`; `Err` with the reason when that is not permitted.
    pub fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if out.status.success() {
            Ok(Tmpfs(dir.to_owned()))
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
