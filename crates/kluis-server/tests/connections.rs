//! The listener under hostile connections, against the real binary on loopback: oversized
//! and malformed request heads refused with a JSON body; thousands of connections sending
//! unfinished headers in bounded memory that is given back; one address, or many, holding
//! silent connections without delaying anyone else; and the TLS certificate reloaded on
//! `SIGHUP`, a bad replacement leaving the old one in service.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    Server, addr, answer_on, drain_stderr, get, label_key, make_cert, post, proc_status_kib,
    raw_body, raw_exchange, raw_exchange_until_close, raw_status, serve, serve_with, slow_body,
    store, store_for, tls_agent, unwrap_head,
};
use kluis_core::LabelPublicKey;
use serde_json::Value;

/// The answer must be a JSON `{code, message}` refusal with `status` and `code`.
fn assert_json_refusal(answer: &[u8], status: u16, code: &str, what: &str) {
    let text = String::from_utf8_lossy(answer);
    assert_eq!(raw_status(answer), Some(status), "{what}: {text}");
    let lower = text.to_ascii_lowercase();
    assert!(
        lower.contains("content-type: application/json"),
        "{what}: {text}"
    );
    let v: Value = serde_json::from_slice(raw_body(answer))
        .unwrap_or_else(|e| panic!("{what}: the body is not JSON ({e}): {text}"));
    assert_eq!(v["code"], code, "{what}: {v}");
    assert!(
        v["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: {v}"
    );
}

#[test]
fn oversized_and_malformed_request_heads_are_refused_with_a_json_code() {
    let (dir, _) = store();
    let server = serve_with(dir, "");
    let a = addr(&server).to_string();
    let wait = Duration::from_secs(5);

    // A header larger than the cap (16 KiB by default), whole or unfinished.
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let answer = raw_exchange(&a, big.as_bytes(), wait);
    assert_json_refusal(&answer, 431, "headers_too_large", "a 20 KB header");
    let unfinished = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}",
        "a".repeat(390 * 1024)
    );
    let answer = raw_exchange(&a, unfinished.as_bytes(), wait);
    assert_json_refusal(&answer, 431, "headers_too_large", "390 KiB unfinished");
    // Too many header lines.
    let mut many = String::from("GET /healthz HTTP/1.1\r\nHost: x\r\n");
    for i in 0..200 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let answer = raw_exchange(&a, many.as_bytes(), wait);
    assert_json_refusal(&answer, 431, "headers_too_large", "200 header lines");

    // Not HTTP at all, and a header name with a space.
    let answer = raw_exchange(&a, b"GE\x01T / HTTP/1.1\r\n\r\n", wait);
    assert_json_refusal(&answer, 400, "malformed", "a bad method");
    let answer = raw_exchange(&a, b"GET /healthz HTTP/1.1\r\nHo st: x\r\n\r\n", wait);
    assert_json_refusal(&answer, 400, "malformed", "a bad header name");

    // The second request on a kept-alive connection gets the same JSON refusal, after the
    // first one's answer, intact.
    let answer = raw_exchange_until_close(
        &a,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /x HTTP/1.1\r\nHo st: x\r\n\r\n",
        wait,
    );
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    let second = text.find("ok\nHTTP/1.1 ").expect("two answers") + 3;
    assert_json_refusal(&answer[second..], 400, "malformed", "a bad second request");

    // A header just under the cap is served.
    let fits = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Fits: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(15_000)
    );
    let answer = raw_exchange(&a, fits.as_bytes(), wait);
    assert_eq!(
        raw_status(&answer),
        Some(200),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(get(&format!("{}/healthz", server.base), None).0, 200);
}

/// Open `n` connections to `a`, each writing `head` (an unfinished request head); write
/// errors are ignored (the server may refuse and close). Returns the connections.
fn flood(a: SocketAddr, n: usize, head: &[u8]) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let mut s = TcpStream::connect(a).unwrap();
            s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
            let _ = s.write_all(head);
            s
        })
        .collect()
}

/// Wait until the server's resident memory has been steady for a moment; returns it in KiB.
fn settled_rss(pid: u32) -> Option<u64> {
    let mut last = proc_status_kib(pid, "VmRSS")?;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(250));
        let now = proc_status_kib(pid, "VmRSS")?;
        if now.abs_diff(last) < 1024 {
            return Some(now);
        }
        last = now;
    }
    Some(last)
}

/// The default connection cap (`max_connections`), as many as the report used.
const CONNS: usize = 4096;
const LIMIT_KIB: u64 = 256 * 1024;

/// `serve` with no per-address cap (every connection comes from 127.0.0.1), time to hold
/// connections, and `env`; waits until it answers.
fn serve_for_floods(env: &[(&str, &str)]) -> Server {
    let (dir, _) = store();
    std::fs::write(
        dir.path().join("kluis.toml"),
        "[serve]\nmax_connections_per_address = 0\nheader_timeout_secs = 120\n",
    )
    .unwrap();
    let server = common::serve_with_env(
        dir,
        &[
            "--config",
            "kluis.toml",
            "--listen",
            "127.0.0.1:0",
            "--insecure-http",
        ],
        env,
    );
    assert_eq!(get(&format!("{}/healthz", server.base), None).0, 200);
    server
}

/// An unfinished request head of `len` bytes.
fn unfinished_head(len: usize) -> Vec<u8> {
    let mut head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    head.resize(len, b'a');
    head
}

/// [`CONNS`] connections, each holding an unfinished head just under the 16 KiB cap, all
/// open at once, then closed. Returns the server's resident memory (KiB) while they were
/// held and after they closed.
fn hold_and_release(server: &Server) -> (u64, u64) {
    let pid = server.child.id();
    let held = flood(addr(server), CONNS, &unfinished_head(16 * 1024 - 64));
    let holding = settled_rss(pid).unwrap();
    // Still serving meanwhile.
    assert_eq!(get(&format!("{}/healthz", server.base), None).0, 200);
    drop(held);
    std::thread::sleep(Duration::from_secs(1));
    let after = settled_rss(pid).unwrap();
    (holding, after)
}

#[test]
fn thousands_of_connections_with_unfinished_headers_stay_under_256_mib() {
    let server = serve_for_floods(&[]);
    let pid = server.child.id();
    let Some(start) = proc_status_kib(pid, "VmRSS") else {
        eprintln!("no /proc: memory not measured");
        return;
    };

    // 390 KiB of unfinished headers on each connection, as in the report: each is refused
    // (431) once it passes the cap, so they hold nothing.
    let held = flood(addr(&server), CONNS, &unfinished_head(390 * 1024));
    let flooded = settled_rss(pid).unwrap();
    let peak = proc_status_kib(pid, "VmHWM").unwrap();
    eprintln!("{CONNS} x 390 KiB: RSS {start} -> {flooded} KiB, peak {peak} KiB");
    assert!(
        peak < LIMIT_KIB,
        "peak memory {peak} KiB with {CONNS} connections sending 390 KiB headers"
    );
    drop(held);

    // Just under the cap on each, all held open at once; twice: the second wave reuses what
    // the first one freed instead of taking more.
    let (holding, after) = hold_and_release(&server);
    let (holding2, after2) = hold_and_release(&server);
    let peak = proc_status_kib(pid, "VmHWM").unwrap();
    eprintln!(
        "{CONNS} x 16 KiB held: RSS {holding} KiB, {after} KiB after; again: {holding2} KiB, \
         {after2} KiB after; peak {peak} KiB"
    );
    assert!(
        peak < LIMIT_KIB,
        "peak memory {peak} KiB with {CONNS} connections holding 16 KiB headers"
    );
    assert!(
        holding2 < holding + 16 * 1024,
        "memory grew from one wave to the next: {holding} KiB, then {holding2} KiB"
    );
}

/// With glibc, freed memory goes back to the system when the operator sets the allocator's
/// mmap threshold low (docs/SERVER.md, "Limits and abuse"); by default glibc keeps it for
/// reuse (the test above).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn memory_taken_by_held_connections_is_given_back_with_the_documented_allocator_setting() {
    let server = serve_for_floods(&[("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=4096")]);
    let Some(start) = proc_status_kib(server.child.id(), "VmRSS") else {
        return;
    };
    let (holding, after) = hold_and_release(&server);
    eprintln!("RSS {start} KiB, {holding} KiB held, {after} KiB after they closed");
    let taken = holding.saturating_sub(start);
    assert!(
        taken > 8 * 1024,
        "{CONNS} held connections took only {taken} KiB: the test measures nothing"
    );
    assert!(
        after < start + taken / 2,
        "memory not given back: {start} KiB at start, {holding} KiB held, {after} KiB after"
    );
}

/// A TLS client configuration trusting only `ca` (DER).
fn tls_client(ca: &[u8]) -> std::sync::Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(ca.to_vec()))
        .unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// [`flood`] over TLS: `n` connections, each handshaking and then writing `head`.
fn tls_flood(
    a: SocketAddr,
    config: &std::sync::Arc<rustls::ClientConfig>,
    n: usize,
    head: &[u8],
) -> Vec<TlsStream> {
    (0..n)
        .map(|_| {
            let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
            let conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
            let sock = TcpStream::connect(a).unwrap();
            sock.set_write_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut s = rustls::StreamOwned::new(conn, sock);
            let _ = s.write_all(head);
            let _ = s.flush();
            s
        })
        .collect()
}

#[test]
fn tls_connections_with_unfinished_headers_fit_the_default_cap_in_256_mib() {
    const TLS_CONNS: usize = 1000;
    let (server, ca) = serve_tls_without_address_cap();
    assert_eq!(healthz_trusting(&server.base, &ca), Ok(200));
    let pid = server.child.id();
    let Some(start) = proc_status_kib(pid, "VmRSS") else {
        return;
    };
    let a: SocketAddr = server
        .base
        .strip_prefix("https://")
        .unwrap()
        .parse()
        .unwrap();
    let config = tls_client(&ca);

    // 390 KiB unfinished heads: refused past the cap, nothing held.
    let refused = tls_flood(a, &config, TLS_CONNS, &unfinished_head(390 * 1024));
    let peak = proc_status_kib(pid, "VmHWM").unwrap();
    assert!(peak < LIMIT_KIB, "peak {peak} KiB");
    drop(refused);

    // Heads just under the cap, held: what one such connection costs, times the default
    // 4096 connections, must fit in 256 MiB.
    let held = tls_flood(a, &config, TLS_CONNS, &unfinished_head(16 * 1024 - 64));
    let holding = settled_rss(pid).unwrap();
    assert_eq!(healthz_trusting(&server.base, &ca), Ok(200));
    let per_conn = holding.saturating_sub(start) / TLS_CONNS as u64;
    let projected = start + per_conn * 4096;
    eprintln!(
        "TLS: RSS {start} KiB, {holding} KiB with {TLS_CONNS} held ({per_conn} KiB each): \
         {projected} KiB for 4096"
    );
    assert!(
        per_conn > 0,
        "held connections cost nothing: the test measures nothing"
    );
    assert!(
        projected < LIMIT_KIB,
        "{per_conn} KiB per held TLS connection: 4096 of them would take {projected} KiB"
    );
    drop(held);
}

/// The first 64 KiB of a `ClientHello` announced as 65,000 bytes, in TLS records of 16 KiB
/// (the last one unfinished): rustls joins such fragments before it looks at them.
fn oversized_client_hello() -> Vec<u8> {
    let mut hello = vec![1u8, 0, 0xfd, 0xe8, 3, 3];
    hello.resize(16 * 1024, 0);
    let mut out = Vec::new();
    for i in 0..4 {
        let record: &[u8] = if i == 0 { &hello } else { &[0u8; 16 * 1024] };
        out.extend_from_slice(&[22, 3, 1, 0x40, 0]);
        out.extend_from_slice(if i == 3 { &record[..16000] } else { record });
    }
    out
}

/// Regression (review): a TLS client sending most of an oversized, fragmented `ClientHello`
/// and then nothing made the server hold about 63 KiB until the handshake timeout: 4096
/// such connections (the default cap, from four addresses) took 300 MiB. Such handshakes are
/// now cut off past 16 KiB.
#[test]
fn oversized_tls_handshakes_are_cut_off_and_fit_the_default_cap_in_256_mib() {
    const TLS_CONNS: usize = 1000;
    let (server, ca) = serve_tls_without_address_cap();
    assert_eq!(healthz_trusting(&server.base, &ca), Ok(200));
    let pid = server.child.id();
    let start = proc_status_kib(pid, "VmRSS");
    let a: SocketAddr = server
        .base
        .strip_prefix("https://")
        .unwrap()
        .parse()
        .unwrap();
    let hello = oversized_client_hello();
    let mut held: Vec<TcpStream> = (0..TLS_CONNS)
        .map(|_| {
            let mut s = TcpStream::connect(a).unwrap();
            s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
            let _ = s.write_all(&hello);
            s
        })
        .collect();
    if let Some(start) = start {
        let holding = settled_rss(pid).unwrap();
        let per_conn = holding.saturating_sub(start) / TLS_CONNS as u64;
        let projected = start + per_conn * 4096;
        eprintln!(
            "oversized handshakes: RSS {start} KiB, {holding} KiB with {TLS_CONNS} \
             ({per_conn} KiB each): {projected} KiB for 4096"
        );
        assert!(
            projected < LIMIT_KIB,
            "{per_conn} KiB per unfinished oversized handshake: 4096 would take {projected} KiB"
        );
    }
    assert_eq!(healthz_trusting(&server.base, &ca), Ok(200));
    let closed = closed_by_server(&mut held);
    assert!(
        closed >= TLS_CONNS * 9 / 10,
        "only {closed} of {TLS_CONNS} oversized handshakes were cut off"
    );
}

/// Open a connection to `to` from the loopback address `from` (any of 127.0.0.0/8).
fn connect_from(rt: &tokio::runtime::Runtime, from: &str, to: SocketAddr) -> TcpStream {
    rt.block_on(async {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind(format!("{from}:0").parse().unwrap()).unwrap();
        let s = s.connect(to).await.unwrap();
        let s = s.into_std().unwrap();
        s.set_nonblocking(false).unwrap();
        s
    })
}

/// `/healthz` and an unwrap from 127.0.0.1, each on a new connection, answered within 1 s.
fn assert_served_promptly(server: &Server, token: &str, label: &LabelPublicKey, what: &str) {
    for round in 0..3 {
        let t = Instant::now();
        let (status, body) = get(&format!("{}/healthz", server.base), None);
        let took = t.elapsed();
        assert_eq!(status, 200, "{what}: {body}");
        assert!(
            took < Duration::from_secs(1),
            "{what}: /healthz took {took:?} (round {round})"
        );
        let body = common::unwrap_body(label);
        let t = Instant::now();
        let (status, v, _) = post(&format!("{}/v1/unwrap", server.base), Some(token), &body);
        let took = t.elapsed();
        assert_eq!(status, 200, "{what}: {v}");
        assert!(v["share"].is_string(), "{what}: {v}");
        assert!(
            took < Duration::from_secs(1),
            "{what}: the unwrap took {took:?} (round {round})"
        );
    }
}

/// How many of `conns` the server has closed (a read sees the end or a reset at once).
fn closed_by_server(conns: &mut [TcpStream]) -> usize {
    conns
        .iter_mut()
        .filter(|s| {
            let mut s: &TcpStream = s;
            s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
            let mut b = [0u8; 1];
            match s.read(&mut b) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) => !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
            }
        })
        .count()
}

#[test]
fn one_address_holding_many_silent_connections_does_not_delay_others() {
    let (dir, token) = store();
    let server = serve_with(dir, "max_connections = 64\nheader_timeout_secs = 60\n");
    let label = label_key(&server, "hr");
    let a = addr(&server);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    // The attacker: 164 silent connections from 127.0.0.2.
    let mut attacker: Vec<TcpStream> = (0..164)
        .map(|_| connect_from(&rt, "127.0.0.2", a))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    assert_served_promptly(
        &server,
        &token,
        &label,
        "one address with 164 silent connections",
    );
    // It got only its share (a quarter of 64); the rest were closed.
    let closed = closed_by_server(&mut attacker);
    assert!(closed >= 164 - 16, "only {closed} of 164 closed");
}

#[test]
fn many_addresses_filling_the_connection_cap_do_not_delay_others() {
    let (dir, token) = store();
    let server = serve_with(dir, "max_connections = 64\nheader_timeout_secs = 60\n");
    let label = label_key(&server, "hr");
    let a = addr(&server);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    // Ten addresses, 16 silent connections each (their share): 160 for 64 places.
    let mut attacker = Vec::new();
    for i in 2..12 {
        for _ in 0..16 {
            attacker.push(connect_from(&rt, &format!("127.0.0.{i}"), a));
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_served_promptly(&server, &token, &label, "ten addresses filling the cap");
    // The oldest idle ones made room: at least the first 160 - 64 were closed.
    let closed = closed_by_server(&mut attacker[..96]);
    assert!(closed >= 90, "only {closed} of the 96 oldest closed");
}

/// `serve` (plain loopback HTTP, `[serve]` defaults but for the rate limit) run with an
/// open-file limit of `fds`, as under systemd's default `LimitNOFILE` soft limit of 1024.
fn serve_with_open_file_limit(dir: tempfile::TempDir, fds: u32) -> Server {
    use std::io::BufRead;
    std::fs::write(
        dir.path().join("kluis.toml"),
        "[serve]\nrate_limit_per_sec = 0\n",
    )
    .unwrap();
    let mut child = Command::new("sh")
        .current_dir(dir.path())
        .args(["-c", &format!("ulimit -n {fds} && exec \"$0\" \"$@\"")])
        .arg(env!("CARGO_BIN_EXE_kluis-server"))
        .args(["serve", "--config", "kluis.toml", "--listen", "127.0.0.1:0"])
        .arg("--insecure-http")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("serve did not start: {line:?}"))
        .to_owned();
    Server { dir, child, base }
}

/// Regression (review): with the default `max_connections` (4096) above the process's
/// open-file limit, `accept` failed once the descriptors ran out, the cap was never reached
/// and nobody was evicted: one address holding 300 silent connections under a limit of 256
/// made `/healthz` wait 8.5 s (until the header timeout closed some).
#[test]
fn one_address_cannot_use_up_the_open_file_limit() {
    let (dir, token) = store();
    let server = serve_with_open_file_limit(dir, 256);
    let label = label_key(&server, "hr");
    let a = addr(&server);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let _attacker: Vec<TcpStream> = (0..300)
        .map(|_| connect_from(&rt, "127.0.0.2", a))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    assert_served_promptly(
        &server,
        &token,
        &label,
        "one address with 300 silent connections, 256 open files",
    );
}

/// Regression (review): the unwrap endpoints read the whole body before looking at the
/// credential, so connections without one could each make the server hold up to
/// `max_body_bytes` (400 connections trickling 1 MiB bodies took 420 MiB, kept after they
/// closed; the default 4096 would take 4 GiB). Now the credential is checked first: each is
/// refused (401) before its body is complete, and the bodies are not kept.
#[test]
fn unauthenticated_unwraps_are_refused_before_their_bodies_are_read() {
    let (dir, _) = store();
    let server = serve_with(dir, "");
    let pid = server.child.id();
    let a = addr(&server);
    let start = proc_status_kib(pid, "VmRSS");
    let chunk = vec![b'a'; 64 * 1024];
    let mut conns = Vec::new();
    for i in 0..128 {
        let (path, auth) = match i % 3 {
            0 => ("/v1/unwrap", String::new()),
            1 => (
                "/v1/unwrap",
                format!("Authorization: Bearer kluis_{}\r\n", "x".repeat(43)),
            ),
            _ => (
                "/v1/unwrap/batch",
                "Authorization: Bearer not.a.jwt\r\n".to_owned(),
            ),
        };
        let mut s = TcpStream::connect(a).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{auth}\
             Content-Length: {}\r\n\r\n",
            1024 * 1024
        );
        s.write_all(head.as_bytes()).unwrap();
        // 960 KiB of the announced 1 MiB; the server may stop reading and close (ignored).
        for _ in 0..15 {
            if s.write_all(&chunk).is_err() {
                break;
            }
        }
        conns.push(s);
    }
    if let Some(start) = start {
        let held = settled_rss(pid).unwrap();
        eprintln!("128 unfinished 1 MiB bodies: RSS {start} -> {held} KiB");
        assert!(
            held < start + 48 * 1024,
            "128 connections without a credential made the server hold their bodies: RSS \
             {start} -> {held} KiB"
        );
    }
    // Each got its refusal although its body is not complete.
    for (i, s) in conns.iter_mut().enumerate() {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        while !common::raw_complete(&answer) {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
        assert_json_refusal(&answer, 401, "unauthenticated", &format!("connection {i}"));
    }
}

/// Regression (review): a connection admitted while every place was taken by a request in
/// progress waited for a place, but the wait's eviction round picked the waiting connection
/// itself (the only idle one), so once it got its place it was closed unserved (always with
/// TLS, whose handshake is not done by then; here: a client that sends its request late).
#[test]
fn a_client_that_waited_for_a_place_is_served() {
    let (dir, token) = store();
    let server = serve_with(dir, "max_connections = 4\nrequest_timeout_secs = 2\n");
    let a = addr(&server);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    // Four places (one per address), each busy with an unwrap whose body is not complete
    // (answered 504 after 2 s, and idle from then on).
    let mut busy = Vec::new();
    for i in 2..6 {
        let mut s = connect_from(&rt, &format!("127.0.0.{i}"), a);
        let head = format!(
            "POST /v1/unwrap HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
        );
        s.write_all(head.as_bytes()).unwrap();
        busy.push(s);
    }
    std::thread::sleep(Duration::from_millis(300));
    // This one waits for a place; its request goes out once the others are idle.
    let mut waiting = TcpStream::connect(a).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    waiting
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    waiting
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut answer = Vec::new();
    let _ = waiting.read_to_end(&mut answer);
    assert_eq!(
        raw_status(&answer),
        Some(200),
        "the client that waited got: {:?}",
        String::from_utf8_lossy(&answer)
    );
}

/// Regression (review): a connection that waited for a place counted as idle from when it
/// was accepted, not from when it got its place, so the next client at the cap had it
/// closed as the longest idle (before its TLS handshake or request, typically), although
/// others had been idle longer.
#[test]
fn a_client_that_waited_for_a_place_is_not_the_first_to_make_room() {
    let (dir, token) = store();
    let server = serve_with(dir, "max_connections = 4\n");
    let a = addr(&server);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    // Four places (one per address), each busy with an unwrap whose body is not complete.
    let mut busy = Vec::new();
    for i in 2..6 {
        let mut s = connect_from(&rt, &format!("127.0.0.{i}"), a);
        let head = format!(
            "POST /v1/unwrap HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
        );
        s.write_all(head.as_bytes()).unwrap();
        busy.push(s);
    }
    std::thread::sleep(Duration::from_millis(300));
    // This one waits for a place.
    let mut waiting = TcpStream::connect(a).unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    // The four finish their bodies (answered 400, kept alive, idle from now): one of them
    // is closed to give the waiting one its place.
    for s in &mut busy {
        s.write_all(&[b'a'; 99]).unwrap();
    }
    std::thread::sleep(Duration::from_secs(1));
    // Another client at the cap: one of the three idle for a second makes room, not the
    // one that has just got its place.
    let _late = connect_from(&rt, "127.0.0.6", a);
    std::thread::sleep(Duration::from_millis(300));
    waiting
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    waiting
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut answer = Vec::new();
    let _ = waiting.read_to_end(&mut answer);
    assert_eq!(
        raw_status(&answer),
        Some(200),
        "the client that waited got: {:?}",
        String::from_utf8_lossy(&answer)
    );
}

/// `/healthz` over a new TLS connection that trusts only `ca`; `Err` if the handshake fails.
fn healthz_trusting(base: &str, ca: &[u8]) -> Result<u16, String> {
    tls_agent(ca)
        .get(&format!("{base}/healthz"))
        .call()
        .map(|r| r.status().as_u16())
        .map_err(|e| e.to_string())
}

fn hangup(server: &Server) {
    let ok = Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -HUP failed");
}

/// `serve` on loopback with TLS from `cert.pem` and `key.pem` in the store's folder.
const TLS_ARGS: &[&str] = &[
    "--listen",
    "127.0.0.1:0",
    "--tls-cert",
    "cert.pem",
    "--tls-key",
    "key.pem",
];

/// A TLS server with no per-address cap and a long header timeout (for the memory tests, whose
/// connections all come from one address and must stay open); returns it and its CA.
fn serve_tls_without_address_cap() -> (Server, Vec<u8>) {
    let (dir, _) = store();
    let (ca, cert, key) = make_cert();
    write_pair(dir.path(), &cert, &key);
    std::fs::write(
        dir.path().join("kluis.toml"),
        "[serve]\nmax_connections_per_address = 0\nheader_timeout_secs = 120\n",
    )
    .unwrap();
    let mut args = vec!["--config", "kluis.toml"];
    args.extend_from_slice(TLS_ARGS);
    (serve(dir, &args), ca)
}

fn write_pair(dir: &Path, cert: &str, key: &str) {
    std::fs::write(dir.join("cert.pem"), cert).unwrap();
    std::fs::write(dir.join("key.pem"), key).unwrap();
}

#[test]
fn sighup_reloads_the_tls_certificate_and_a_bad_replacement_keeps_the_old_one() {
    let (dir, _) = store();
    let (ca_a, cert_a, key_a) = make_cert();
    let (ca_b, cert_b, key_b) = make_cert();
    write_pair(dir.path(), &cert_a, &key_a);
    let mut server = serve(dir, TLS_ARGS);
    let stderr = drain_stderr(&mut server.child);
    let d = server.dir.path().to_owned();
    assert_eq!(healthz_trusting(&server.base, &ca_a), Ok(200));
    assert!(healthz_trusting(&server.base, &ca_b).is_err());

    // B replaces A on disk; after SIGHUP new connections get B.
    write_pair(&d, &cert_b, &key_b);
    hangup(&server);
    let deadline = Instant::now() + Duration::from_secs(10);
    while healthz_trusting(&server.base, &ca_b).is_err() {
        assert!(Instant::now() < deadline, "B was not served after SIGHUP");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(healthz_trusting(&server.base, &ca_a).is_err());

    // Bad replacements: a key that does not fit the certificate, then garbage. The server
    // keeps serving B after each SIGHUP.
    for (cert, key) in [(cert_a.as_str(), key_b.as_str()), ("not a pem", "nor this")] {
        write_pair(&d, cert, key);
        hangup(&server);
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(healthz_trusting(&server.base, &ca_b), Ok(200));
        assert!(healthz_trusting(&server.base, &ca_a).is_err());
    }
    // And a good one again is taken.
    write_pair(&d, &cert_a, &key_a);
    hangup(&server);
    let deadline = Instant::now() + Duration::from_secs(10);
    while healthz_trusting(&server.base, &ca_a).is_err() {
        assert!(Instant::now() < deadline, "A was not served after SIGHUP");
        std::thread::sleep(Duration::from_millis(100));
    }

    // SIGTERM, not SIGKILL: the server writes its log through a queue and flushes it on exit.
    let _ = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status();
    let _ = server.child.wait();
    let log = stderr.join().unwrap();
    assert!(log.contains("TLS certificate reloaded"), "{log}");
    assert_eq!(
        log.matches("TLS certificate not reloaded, still serving the previous one")
            .count(),
        2,
        "{log}"
    );
    assert!(!log.contains("PRIVATE KEY"), "{log}");
}

/// Whether `log` shows any of the private key `key_pem`: a stretch of its base64, as text or
/// as the list of byte values a PEM error prints.
fn shows_key(log: &str, key_pem: &str) -> bool {
    let b64: String = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let stretch = &b64[b64.len() / 2..b64.len() / 2 + 12];
    let as_bytes = format!("{:?}", stretch.as_bytes());
    log.contains(stretch) || log.contains(as_bytes.trim_matches(|c| c == '[' || c == ']'))
}

/// Regression (review): a key file written on one line (markers and base64 joined, as a
/// secrets store or a copy and paste may leave it) is refused, and the PEM parser's message,
/// which quotes the section it could not end, put the whole private key on standard error:
/// at start, and on every `SIGHUP` reload into the journal.
#[test]
fn a_malformed_tls_key_is_refused_without_showing_it() {
    let (dir, _) = store();
    let (ca, cert, key) = make_cert();
    let one_line: String = key.lines().collect();
    assert!(!shows_key("", &key));

    // At start: refused, and the message does not show the key.
    std::fs::write(dir.path().join("cert.pem"), &cert).unwrap();
    std::fs::write(dir.path().join("key.pem"), &one_line).unwrap();
    let out = common::bin()
        .current_dir(dir.path())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(["--tls-cert", "cert.pem", "--tls-key", "key.pem"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("key.pem"), "{err}");
    assert!(
        !shows_key(&err, &key),
        "the key is on standard error: {err}"
    );

    // On SIGHUP: the old pair stays in service, and the log does not show the key.
    write_pair(dir.path(), &cert, &key);
    let mut server = serve(dir, TLS_ARGS);
    let stderr = drain_stderr(&mut server.child);
    std::fs::write(server.dir.path().join("key.pem"), &one_line).unwrap();
    hangup(&server);
    std::thread::sleep(Duration::from_millis(500));
    // Still serving with the old pair (a loaded machine may take a moment to answer).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut answer = healthz_trusting(&server.base, &ca);
    while answer != Ok(200) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        answer = healthz_trusting(&server.base, &ca);
    }
    assert_eq!(answer, Ok(200));
    // SIGTERM, not SIGKILL: the server writes its log through a queue and flushes it on exit.
    let _ = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status();
    let _ = server.child.wait();
    let log = stderr.join().unwrap();
    assert!(log.contains("TLS certificate not reloaded"), "{log}");
    assert!(!shows_key(&log, &key), "the key is in the log: {log}");
}

/// The body budget's three answers, with their JSON codes and `Retry-After`: an identity over
/// its share is refused `429 identity_busy`; a body still arriving after 500 ms is cut off
/// (`503 server_busy`) when another request needs room, and that request is served; bodies
/// that have arrived are never cut off, so when they fill the budget (here: held up by a
/// locked store) a request is refused `503 server_busy` after waiting 1 s. And the server's
/// `/metrics` gauge of body bytes held.
#[test]
fn a_full_body_budget_refuses_with_a_json_code_and_retry_after() {
    const MIB: usize = 1024 * 1024;
    let (dir, tokens) = store_for(&["alice", "bob", "carol"]);
    let server = serve_with(
        dir,
        "max_body_bytes_in_flight = 2097152\nmax_body_bytes_in_flight_per_identity = 1048576\n",
    );
    let a = addr(&server);
    let label = label_key(&server, "hr");
    let url = format!("{}/v1/unwrap", server.base);
    let gauge = || {
        let (_, metrics) = get(&format!("{}/metrics", server.base), None);
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("kluis_body_bytes_in_flight "))
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap()
    };
    // Alice's slow body, all but 1000 bytes of it sent, takes her share: the bytes sent, not
    // the length announced, are held.
    let mut alice = slow_body(a, &tokens[0], MIB - 1000);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(gauge(), MIB);
    let (status, v, headers) =
        common::post_full(&url, Some(&tokens[0]), &common::unwrap_body(&label));
    assert_eq!(
        (status, v["code"].as_str()),
        (429, Some("identity_busy")),
        "{v}"
    );
    assert_eq!(headers.get("retry-after").map(String::as_str), Some("1"));
    // Bob's slow body takes the rest of the budget; carol needs room: alice's body, arriving
    // for longer than 500 ms, is cut off, and carol is served within 1 s.
    let bob = slow_body(a, &tokens[1], MIB - 1000);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(gauge(), 2 * MIB);
    let t = Instant::now();
    let (status, v, _) = post(&url, Some(&tokens[2]), &common::unwrap_body(&label));
    assert_eq!(status, 200, "{v}");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    let answer = answer_on(&mut alice, Duration::from_secs(2));
    assert_json_refusal(&answer, 503, "server_busy", "a slow body cut off");
    let text = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(text.contains("retry-after: 1\r\n"), "{text}");
    drop((alice, bob));
    let until = Instant::now() + Duration::from_secs(3);
    while gauge() != 0 {
        assert!(Instant::now() < until, "bytes still held: {}", gauge());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Whole bodies are never cut off. The store locked by another process holds the audit
    // writer up, so alice's and bob's whole 1 MiB bodies stay in the budget while their
    // records wait: carol waits 1 s for room, then is refused.
    let lock = rusqlite::Connection::open(server.dir.path().join("kluis-server.db")).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    let whole: Vec<_> = tokens[..2]
        .iter()
        .map(|token| {
            let mut body = common::unwrap_body(&label).to_string().into_bytes();
            body.resize(MIB, b' ');
            let mut request = unwrap_head(token, MIB).into_bytes();
            request.extend_from_slice(&body);
            let mut s = TcpStream::connect(a).unwrap();
            s.write_all(&request).unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(gauge(), 2 * MIB);
    let t = Instant::now();
    let (status, v, headers) =
        common::post_full(&url, Some(&tokens[2]), &common::unwrap_body(&label));
    assert_eq!(
        (status, v["code"].as_str()),
        (503, Some("server_busy")),
        "{v}"
    );
    assert_eq!(headers.get("retry-after").map(String::as_str), Some("1"));
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "refused without waiting for room: {:?}",
        t.elapsed()
    );
    lock.execute_batch("ROLLBACK").unwrap();
    drop(lock);
    for mut s in whole {
        let answer = answer_on(&mut s, Duration::from_secs(10));
        assert_eq!(
            raw_status(&answer),
            Some(200),
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }
    // Room again once they are answered.
    let (status, v, _) = post(&url, Some(&tokens[2]), &common::unwrap_body(&label));
    assert_eq!(status, 200, "{v}");
}

/// Audit gap 1 (issue 14, defect 6: "memory stays under 256 MiB whatever connections do, and
/// is given back"): with valid credentials, request bodies were read into memory without a
/// bound but the connection cap: one token, 1000 connections each holding an unfinished
/// 1 MB unwrap body, took about 1 GiB (900 MiB kept after they closed). Now bodies are held
/// only within the server's body budget (default 16 MiB), one identity within its share
/// (default 4 MiB): the rest are refused (`429 identity_busy`) and their bodies not kept,
/// while another identity's unwrap is served within 1 s; with the documented allocator
/// setting, the memory goes back once they close.
#[cfg(target_os = "linux")]
#[test]
fn a_thousand_authenticated_slow_bodies_stay_under_256_mib_and_others_are_served() {
    const BODIES: usize = 1000;
    const SENT: usize = 1_000_000;
    let (dir, tokens) = store_for(&["alice", "bob"]);
    let server = common::serve_with_env(
        dir,
        &["--listen", "127.0.0.1:0", "--insecure-http"],
        &[("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=4096")],
    );
    let pid = server.child.id();
    let a = addr(&server);
    let label = label_key(&server, "hr");
    let start = settled_rss(pid).unwrap();

    // Alice's connections: each sends its head and as much of 1 MB of body as the server
    // takes, from one thread, never blocking.
    let mut head_and_body = unwrap_head(&tokens[0], 1024 * 1024).into_bytes();
    let head_len = head_and_body.len();
    head_and_body.resize(head_len + SENT, b' ');
    let conns: Vec<TcpStream> = (0..BODIES)
        .map(|_| {
            let s = TcpStream::connect(a).unwrap();
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pusher = std::thread::spawn({
        let stop = stop.clone();
        move || {
            let mut sent = vec![0usize; conns.len()];
            let mut done = vec![false; conns.len()];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && done.iter().any(|d| !d) {
                for (i, mut s) in conns.iter().enumerate() {
                    if done[i] {
                        continue;
                    }
                    match s.write(&head_and_body[sent[i]..]) {
                        Ok(n) => {
                            sent[i] += n;
                            done[i] = sent[i] == head_and_body.len();
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => done[i] = true, // closed by the server
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let body_bytes: usize = sent.iter().map(|n| n.saturating_sub(head_len)).sum();
            (conns, body_bytes)
        }
    });

    // Meanwhile bob is served promptly, again and again.
    std::thread::sleep(Duration::from_secs(2));
    let url = format!("{}/v1/unwrap", server.base);
    for round in 0..5 {
        let t = Instant::now();
        let (status, v, _) = post(&url, Some(&tokens[1]), &common::unwrap_body(&label));
        let took = t.elapsed();
        assert_eq!(status, 200, "bob, round {round}: {v}");
        assert!(
            took < Duration::from_secs(1),
            "bob waited {took:?} (round {round})"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let holding = proc_status_kib(pid, "VmRSS").unwrap();
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut conns, body_bytes) = pusher.join().unwrap();
    let peak = proc_status_kib(pid, "VmHWM").unwrap();

    // Alice's connections were refused with a JSON 429, not left hanging.
    let mut refused = 0;
    for s in &mut conns {
        s.set_nonblocking(false).unwrap();
        let answer = answer_on(s, Duration::from_millis(200));
        if raw_status(&answer) == Some(429) {
            assert_json_refusal(&answer, 429, "identity_busy", "a refused slow body");
            refused += 1;
        }
    }
    drop(conns);
    std::thread::sleep(Duration::from_secs(1));
    let after = settled_rss(pid).unwrap();
    eprintln!(
        "{BODIES} authenticated slow bodies ({} MiB sent): RSS {start} KiB at start, {holding} \
         KiB while held, peak {peak} KiB, {after} KiB after they closed; {refused} refused 429",
        body_bytes >> 20
    );
    assert!(
        peak < LIMIT_KIB,
        "peak memory {peak} KiB with {BODIES} authenticated slow bodies"
    );
    assert!(
        refused >= BODIES * 9 / 10,
        "only {refused} of {BODIES} slow bodies beyond the share were refused"
    );
    assert!(
        after < start + peak.saturating_sub(start) / 2,
        "memory not given back: {start} KiB at start, peak {peak} KiB, {after} KiB after"
    );
    assert_eq!(get(&format!("{}/healthz", server.base), None).0, 200);
}
