//! Key server load test: a real `kluis-server` (release build) on loopback with its SQLite
//! store and the audit trail on (fsync per group commit), driven by `wrk` at concurrency 1,
//! 16 and 64, single and batch unwrap. Prints requests/s, items/s, p50 and p99, then checks
//! that the audit trail holds one record per unwrapped item and still verifies.
//!
//! Run: `benches/server_load.sh` (builds, installs wrk if missing, runs this).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use kluis_core::{LabelPublicKey, Metadata, PublicKey, Recipient, Slot, Stanza};

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
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat(5): here 11 and 12, at 100 ticks/s.
    (ticks(11) + ticks(12)) / 100.0
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

/// One org stanza for a fresh document sealed to the label's current key.
fn stanza(label: &LabelPublicKey) -> (String, String) {
    let slot = Slot::single(Recipient::Label(label.clone()));
    let sealed = kluis_core::seal(&[slot], &Metadata::default(), b"x").expect("seal");
    let header = kluis_core::Header::parse(&sealed).expect("header");
    let s = &header.slots()[0][0];
    assert!(matches!(s, Stanza::Org(_)));
    (header.doc_id().to_string(), B64.encode(s.to_bytes()))
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

fn main() {
    let secs: u32 = std::env::var("LOAD_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let batch: usize = std::env::var("LOAD_BATCH")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    admin(d, &["init"]);
    admin(d, &["label", "create", "hr", "--user", "bench"]);
    let token = admin(d, &["token", "create", "--user", "bench"])
        .trim()
        .to_owned();
    let shown = admin(d, &["label", "show", "hr"]);
    let record: serde_json::Value = serde_json::from_str(&shown).expect("label json");
    let key: PublicKey = record["versions"][0]["public_key"]
        .as_str()
        .expect("public key")
        .parse()
        .expect("kluis1 key");
    let label = LabelPublicKey::new("hr", 1, key).expect("label key");

    let mut child = Command::new(server_bin())
        .current_dir(d)
        .args([
            "serve",
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
    let _server = Server(child);
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .expect("address")
        .to_owned();

    // A fixed reply key: the load generator does not open replies, so it costs no X25519.
    let reply = B64.encode(
        kluis_core::reply::ReplyKey::generate()
            .expect("key")
            .public_bytes(),
    );
    let (doc, st) = stanza(&label);
    let single = serde_json::json!({ "reply_key": reply, "doc_id": doc, "stanza": st });
    let items: Vec<_> = (0..batch)
        .map(|_| {
            let (doc, st) = stanza(&label);
            serde_json::json!({ "doc_id": doc, "stanza": st })
        })
        .collect();
    let many = serde_json::json!({ "reply_key": reply, "items": items });
    let script = |name: &str, body: &serde_json::Value| {
        let body_path = d.join(format!("{name}.json"));
        std::fs::write(&body_path, body.to_string()).expect("body");
        let lua = d.join(format!("{name}.lua"));
        let mut f = std::fs::File::create(&lua).expect("lua");
        writeln!(
            f,
            "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\n\
             wrk.headers[\"Authorization\"] = \"Bearer {token}\"\n\
             local f = io.open(\"{}\", \"r\")\nwrk.body = f:read(\"*a\")\nf:close()",
            body_path.display()
        )
        .expect("lua");
        lua
    };
    let single_lua = script("single", &single);
    let batch_lua = script("batch", &many);

    println!(
        "kluis-server load test: {secs} s per run, audit trail on (SQLite WAL, synchronous=FULL, group commit), batch of {batch}"
    );
    println!(
        "{:<8} {:>5} {:>10} {:>10} {:>9} {:>9} {:>14}",
        "kind", "conc", "req/s", "items/s", "p50 ms", "p99 ms", "server µs/item"
    );
    let mut items_sent = 0u64;
    for (kind, lua, path, per) in [
        ("single", &single_lua, "/v1/unwrap", 1usize),
        ("batch", &batch_lua, "/v1/unwrap/batch", batch),
    ] {
        for conns in [1u32, 16, 64] {
            let cpu_before = cpu_secs(pid);
            let f = wrk(&format!("{base}{path}"), lua, conns, secs);
            let cpu = cpu_secs(pid) - cpu_before;
            items_sent += f.requests * per as u64;
            println!(
                "{kind:<8} {conns:>5} {:>10.0} {:>10.0} {:>9.2} {:>9.2} {:>14.1}",
                f.rps,
                f.rps * per as f64,
                f.p50_ms,
                f.p99_ms,
                cpu * 1e6 / (f.requests * per as u64) as f64
            );
        }
    }
    drop(_server);
    let verified = admin(d, &["audit", "verify"]);
    let records: u64 = verified
        .split_whitespace()
        .skip_while(|w| *w != "verified:")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("record count");
    println!("{}", verified.trim());
    // wrk counts only completed responses; requests cut off at the end of a run may still
    // have been audited, so the trail may hold a few more records than replies were counted.
    println!(
        "replies counted by wrk: {items_sent} items; audit records: {records} (incl. admin records)"
    );
    assert!(
        records >= items_sent,
        "fewer audit records than replies: a reply left without its record"
    );
}
