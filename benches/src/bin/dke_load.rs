//! Microsoft DKE load test: a real `kluis-server` (release build) on loopback with its SQLite
//! store and the audit trail on (fsync per group commit), serving `[dke]`; `wrk` posts
//! RSA-OAEP-256 decrypts with an Entra-like token at concurrency 1, 16 and 64. Beside it, in
//! the same run and on the same cores, raw aws-lc-rs RSA-2048 OAEP decryptions per second with
//! one thread per core: the limit the server could reach if it did nothing else. Prints
//! decrypts/s, the share of the raw limit, p50 and p99, then checks that the audit trail
//! holds a record per decrypt and still verifies.
//!
//! Run: `benches/dke_load.sh` (builds, installs wrk if missing, runs this).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{
    KeySize, OAEP_SHA256_MGF1SHA256, OaepPrivateDecryptingKey, OaepPublicEncryptingKey,
    PrivateDecryptingKey, PublicEncryptingKey,
};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD};
use ring::signature::{Ed25519KeyPair, KeyPair};

fn server_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    exe.parent().expect("target dir").join("kluis-server")
}

fn admin(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(server_bin())
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run kluis-server (build it with `cargo build --release -p kluis-server`)");
    assert!(
        out.status.success(),
        "kluis-server {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// CPU time (user + system) the process has used so far, in seconds (Linux `/proc`).
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU time of this process's waited-for children (the `wrk` runs), in seconds.
fn children_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // cutime and cstime are fields 16 and 17 of stat(5): here 13 and 14.
    (ticks(13) + ticks(14)) / 100.0
}

struct Server(Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

struct Figures {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    requests: u64,
}

fn ms(v: &str) -> f64 {
    let (n, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (v, 1.0)
    };
    n.parse::<f64>().unwrap_or(f64::NAN) * scale
}

fn wrk(url: &str, script: &Path, conns: u32, secs: u32) -> Figures {
    let threads = conns.clamp(1, 2).to_string();
    let out = Command::new("wrk")
        .args([
            "-t",
            &threads,
            "-c",
            &conns.to_string(),
            "-d",
            &format!("{secs}s"),
            "--timeout",
            "10s",
            "--latency",
            "-s",
        ])
        .arg(script)
        .arg(url)
        .output()
        .expect("wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut f = Figures {
        rps: 0.0,
        p50_ms: f64::NAN,
        p99_ms: f64::NAN,
        requests: 0,
    };
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", v] => f.rps = v.parse().unwrap_or(0.0),
            ["50%", v] => f.p50_ms = ms(v),
            ["99%", v] => f.p99_ms = ms(v),
            [n, "requests", "in", ..] => f.requests = n.parse().unwrap_or(0),
            ["Non-2xx", ..] => panic!("wrk saw failed requests:\n{text}"),
            _ => {}
        }
    }
    assert!(f.requests > 0, "wrk ran no requests:\n{text}");
    f
}

/// Raw aws-lc-rs RSA-2048 OAEP-SHA-256 decryptions per second, one thread per core, for
/// `secs` seconds: the ceiling of the server's decrypt rate on this machine.
fn raw_decrypts_per_sec(threads: usize, secs: u32) -> f64 {
    let key = PrivateDecryptingKey::generate(KeySize::Rsa2048).expect("key");
    let public = OaepPublicEncryptingKey::new(
        PublicEncryptingKey::from_der(key.public_key().as_der().expect("der").as_ref())
            .expect("public"),
    )
    .expect("oaep");
    let mut ct = vec![0u8; 256];
    public
        .encrypt(&OAEP_SHA256_MGF1SHA256, &[7u8; 44], &mut ct, None)
        .expect("encrypt");
    let key = Arc::new(OaepPrivateDecryptingKey::new(key).expect("oaep key"));
    let ct = Arc::new(ct);
    let until = Instant::now() + Duration::from_secs(u64::from(secs));
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (key, ct) = (key.clone(), ct.clone());
            std::thread::spawn(move || {
                let mut out = [0u8; 256];
                let mut n = 0u64;
                while Instant::now() < until {
                    key.decrypt(&OAEP_SHA256_MGF1SHA256, &ct, &mut out, None)
                        .expect("decrypt");
                    n += 1;
                }
                n
            })
        })
        .collect();
    let total: u64 = handles.into_iter().map(|h| h.join().expect("thread")).sum();
    total as f64 / start.elapsed().as_secs_f64()
}

/// DER: tag, length, content.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 128 {
        out.push(n as u8);
    } else {
        let bytes: Vec<u8> = n
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

/// The `SubjectPublicKeyInfo` of RSA modulus `n` and exponent `e` (big-endian).
fn rsa_public_key_der(n: &[u8], e: &[u8]) -> Vec<u8> {
    let int = |v: &[u8]| {
        let mut v = v.to_vec();
        if v[0] & 0x80 != 0 {
            v.insert(0, 0);
        }
        der(0x02, &v)
    };
    let rsa = der(0x30, &[int(n), int(e)].concat());
    // AlgorithmIdentifier rsaEncryption (1.2.840.113549.1.1.1), NULL parameters.
    let alg = der(
        0x30,
        &[
            &[
                0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
            ][..],
            &[0x05, 0x00],
        ]
        .concat(),
    );
    let bits = der(0x03, &[&[0u8][..], &rsa].concat());
    der(0x30, &[alg, bits].concat())
}

/// A compact JWS signed with Ed25519.
fn jwt(key: &Ed25519KeyPair, claims: &serde_json::Value) -> String {
    let head = serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": "k1"});
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(head.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig = key.sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
}

fn main() {
    let secs: u32 = std::env::var("LOAD_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    admin(d, &["init"]);
    admin(
        d,
        &[
            "label",
            "create",
            "medical",
            "--dke",
            "--user",
            "oidc:entra:bench@org.nl",
        ],
    );
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("idp key");
    let idp = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("idp key");
    let jwks = serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k1",
        "x": URL_SAFE_NO_PAD.encode(idp.public_key().as_ref())}]});
    std::fs::write(d.join("jwks.json"), jwks.to_string()).expect("jwks");
    std::fs::write(
        d.join("kluis.toml"),
        "[dke]\naudience = \"https://dke.bench\"\nissuers = [\"https://sts.windows.net/t/\"]\n\
         jwks_file = \"jwks.json\"\n",
    )
    .expect("config");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let token = jwt(
        &idp,
        &serde_json::json!({"iss": "https://sts.windows.net/t/", "aud": "https://dke.bench",
            "scp": "user_impersonation", "upn": "bench@org.nl", "sub": "bench",
            "iat": now, "exp": now + 3600}),
    );

    let mut child = Command::new(server_bin())
        .current_dir(d)
        .args([
            "serve",
            "--config",
            "kluis.toml",
            "--listen",
            "127.0.0.1:0",
            "--insecure-http",
            "--rate-limit",
            "0",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start kluis-server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("listening line");
    let pid = child.id();
    let server = Server(child);
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .expect("address")
        .to_owned();

    // The key, as Office fetches it; one ciphertext (the server decrypts it every time).
    let out = Command::new("curl")
        .args(["-s", &format!("{base}/dke/medical")])
        .output()
        .expect("curl");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("key json");
    let kid = v["key"]["kid"].as_str().expect("kid").to_owned();
    let n = B64.decode(v["key"]["n"].as_str().expect("n")).expect("n");
    let public = OaepPublicEncryptingKey::new(
        PublicEncryptingKey::from_der(&rsa_public_key_der(&n, &[1, 0, 1])).expect("public"),
    )
    .expect("oaep");
    let mut ct = vec![0u8; 256];
    public
        .encrypt(&OAEP_SHA256_MGF1SHA256, &[9u8; 44], &mut ct, None)
        .expect("encrypt");
    let body = serde_json::json!({"alg": "RSA-OAEP-256", "value": B64.encode(&ct)});
    let body_path = d.join("decrypt.json");
    std::fs::write(&body_path, body.to_string()).expect("body");
    let lua = d.join("decrypt.lua");
    let mut f = std::fs::File::create(&lua).expect("lua");
    writeln!(
        f,
        "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\n\
         wrk.headers[\"Authorization\"] = \"Bearer {token}\"\n\
         local f = io.open(\"{}\", \"r\")\nwrk.body = f:read(\"*a\")\nf:close()",
        body_path.display()
    )
    .expect("lua");
    drop(f);

    let raw = raw_decrypts_per_sec(cores, secs);
    println!(
        "kluis-server DKE load test: {secs} s per run, audit trail on (SQLite WAL, synchronous=FULL, group commit), {cores} cores"
    );
    println!(
        "raw aws-lc-rs RSA-2048 OAEP decrypts/s, {cores} threads: {raw:.0} ({:.0} µs of CPU per decrypt)",
        cores as f64 * 1e6 / raw
    );
    println!(
        "{:>5} {:>12} {:>8} {:>9} {:>9} {:>18} {:>15}",
        "conc", "decrypts/s", "of raw", "p50 ms", "p99 ms", "server µs/decrypt", "wrk µs/decrypt"
    );
    let mut sent = 0u64;
    for conns in [1u32, 16, 64] {
        let (cpu_before, wrk_before) = (cpu_secs(pid), children_cpu_secs());
        let f = wrk(&format!("{kid}/decrypt"), &lua, conns, secs);
        let cpu = cpu_secs(pid) - cpu_before;
        let wrk_cpu = children_cpu_secs() - wrk_before;
        sent += f.requests;
        println!(
            "{conns:>5} {:>12.0} {:>7.0}% {:>9.2} {:>9.2} {:>18.1} {:>15.1}",
            f.rps,
            100.0 * f.rps / raw,
            f.p50_ms,
            f.p99_ms,
            cpu * 1e6 / f.requests as f64,
            wrk_cpu * 1e6 / f.requests as f64
        );
    }
    let raw_after = raw_decrypts_per_sec(cores, secs);
    println!("raw aws-lc-rs RSA-2048 OAEP decrypts/s again after the runs: {raw_after:.0}");
    drop(server);
    let verified = admin(d, &["audit", "verify"]);
    let records: u64 = verified
        .split_whitespace()
        .skip_while(|w| *w != "verified:")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("record count");
    println!("{}", verified.trim());
    println!("replies counted by wrk: {sent}; audit records: {records} (incl. admin records)");
    assert!(
        records >= sent,
        "fewer audit records than replies: a reply left without its record"
    );
}
