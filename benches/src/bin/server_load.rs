//! Key server load test: real `kluis-server` processes (release build) on loopback with the
//! audit trail on, driven by `wrk` at concurrency 1, 16 and 64, single and batch unwrap, in
//! three set-ups in one run:
//!
//! - **SQLite**: one server on its SQLite file (WAL, `synchronous = FULL`, group commit);
//! - **PostgreSQL, 1 replica**: one server on a throwaway PostgreSQL cluster started by this
//!   program (Debian's package, as the tests start it: `fsync` and `synchronous_commit` on);
//! - **PostgreSQL, 2 replicas**: two servers on one database of the same cluster; ONE `wrk`
//!   with two threads, each thread's connections to one replica (a Lua `setup` sets each
//!   thread's address), so the load is split evenly and p50/p99 are over every request of
//!   both replicas. At concurrency 1 there is one thread and one connection: all of it goes to
//!   the first replica.
//!
//! The set-ups take turns (round robin) for `LOAD_RUNS` rounds; it prints every run, then the
//! median of the runs side by side, and the server's and PostgreSQL's CPU per item. At the end
//! it checks that every store's audit trail holds a record per unwrapped item and verifies.
//!
//! Environment: `LOAD_SECONDS` (10) per run, `LOAD_BATCH` (100) items per batch, `LOAD_RUNS`
//! (3) rounds, `LOAD_PG_SETTINGS` (none) extra PostgreSQL settings as `name=value,…` (e.g.
//! `commit_delay=200,commit_siblings=2`; `fsync` and `synchronous_commit` are refused: they
//! stay on), `KLUIS_PG_BIN` PostgreSQL's bin folder (default: Debian's newest). For a
//! profile of one case: `LOAD_SETUPS` (of `sqlite,pg1,pg2`), `LOAD_KINDS` (of
//! `single,batch`), `LOAD_CONCS` (of `1,16,64`); it prints the servers' process ids.
//!
//! Run: `benches/server_load.sh` (builds, installs wrk and PostgreSQL if missing, runs this).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use kluis_core::{LabelPublicKey, Metadata, PublicKey, Recipient, Slot, Stanza};
use kluis_testkit::postgres::{PASSWORD, PgCluster};

fn server_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    exe.parent().expect("target dir").join("kluis-server")
}

/// A `kluis-server` command in `dir`, on the PostgreSQL database `store` if given (else on
/// the SQLite file in `dir`).
fn server_cmd(dir: &Path, store: Option<&str>) -> Command {
    let mut c = Command::new(server_bin());
    c.current_dir(dir);
    if let Some(url) = store {
        c.env("KLUIS_STORE", url)
            .env("KLUIS_STORE_PASSWORD", PASSWORD);
    }
    c
}

fn admin(dir: &Path, store: Option<&str>, args: &[&str]) -> String {
    let out = server_cmd(dir, store)
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

/// `(ppid, CPU seconds used so far: user + system)` of a process, from `/proc/PID/stat`.
fn proc_stat(pid: u32) -> Option<(u32, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // ppid is field 4 of stat(5), utime and stime are 14 and 15: here 1, 11 and 12; 100 ticks/s.
    Some((num(1) as u32, (num(11) + num(12)) / 100.0))
}

fn cpu_secs(pid: u32) -> f64 {
    proc_stat(pid).map_or(0.0, |(_, cpu)| cpu)
}

/// CPU seconds of a PostgreSQL cluster: the postmaster and its children (the backends, the
/// WAL writer, the checkpointer). A backend that exited takes its CPU with it; kluis keeps its
/// connections, so that is little.
fn pg_cpu_secs(postmaster: u32) -> f64 {
    let mut total = cpu_secs(postmaster);
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        match proc_stat(pid) {
            Some((ppid, cpu)) if ppid == postmaster => total += cpu,
            _ => {}
        }
    }
    total
}

struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn start(dir: &Path, store: Option<&str>) -> Server {
        let mut child = server_cmd(dir, store)
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
        let base = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("kluis-server did not start: {line:?}"))
            .to_owned();
        Server { child, base }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn port(&self) -> &str {
        self.base.rsplit_once(':').map_or("", |(_, p)| p)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
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

#[derive(Clone)]
struct Figures {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    requests: u64,
    /// wrk's `Socket errors: …` line, if it printed one (timeouts, resets).
    errors: String,
    /// Server CPU per item, µs (all replicas together).
    server_us: f64,
    /// PostgreSQL CPU per item, µs (NaN on SQLite).
    db_us: f64,
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
        errors: String::new(),
        server_us: f64::NAN,
        db_us: f64::NAN,
    };
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", v] => f.rps = v.parse().unwrap_or(0.0),
            ["50%", v] => f.p50_ms = ms(v),
            ["99%", v] => f.p99_ms = ms(v),
            [n, "requests", "in", ..] => f.requests = n.parse().unwrap_or(0),
            ["Non-2xx", ..] => panic!("wrk saw failed requests:\n{text}"),
            ["Socket", "errors:", ..] => f.errors = line.trim().to_owned(),
            _ => {}
        }
    }
    assert!(f.requests > 0, "wrk ran no requests:\n{text}");
    f
}

/// One set-up under test: its store, its servers, its request scripts.
struct Setup {
    name: &'static str,
    dir: tempfile::TempDir,
    store: Option<String>,
    servers: Vec<Server>,
    single_lua: PathBuf,
    batch_lua: PathBuf,
    items_sent: u64,
    /// Per (kind, concurrency): the figures of every run.
    runs: Vec<Vec<Figures>>,
}

const KINDS: [(&str, &str); 2] = [("single", "/v1/unwrap"), ("batch", "/v1/unwrap/batch")];
const CONCS: [u32; 3] = [1, 16, 64];

/// Whether a kind and a concurrency are to run (`LOAD_KINDS`, `LOAD_CONCS`: lists; all by
/// default). Left out, they show as NaN: for profiling one case.
fn chosen(kind: &str, conns: u32) -> bool {
    let has = |var: &str, v: &str| {
        std::env::var(var).map_or(true, |l| l.split(',').any(|x| x.trim() == v))
    };
    has("LOAD_KINDS", kind) && has("LOAD_CONCS", &conns.to_string())
}

impl Setup {
    fn new(name: &'static str, store: Option<String>, replicas: usize, batch: usize) -> Setup {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        let st = store.as_deref();
        admin(d, st, &["init"]);
        admin(d, st, &["label", "create", "hr", "--user", "bench"]);
        let token = admin(d, st, &["token", "create", "--user", "bench"])
            .trim()
            .to_owned();
        let shown = admin(d, st, &["label", "show", "hr"]);
        let record: serde_json::Value = serde_json::from_str(&shown).expect("label json");
        let key: PublicKey = record["versions"][0]["public_key"]
            .as_str()
            .expect("public key")
            .parse()
            .expect("kluis1 key");
        let label = LabelPublicKey::new("hr", 1, key).expect("label key");
        let servers: Vec<Server> = (0..replicas).map(|_| Server::start(d, st)).collect();

        // A fixed reply key: the load generator does not open replies, so it costs no X25519.
        let reply = B64.encode(
            kluis_core::reply::ReplyKey::generate()
                .expect("key")
                .public_bytes(),
        );
        let (doc, s) = stanza(&label);
        let single = serde_json::json!({ "reply_key": reply, "doc_id": doc, "stanza": s });
        let items: Vec<_> = (0..batch)
            .map(|_| {
                let (doc, s) = stanza(&label);
                serde_json::json!({ "doc_id": doc, "stanza": s })
            })
            .collect();
        let many = serde_json::json!({ "reply_key": reply, "items": items });
        // With several replicas, wrk's `setup` gives each thread the address of the next
        // replica in turn (the URL's address is then only the Host header).
        let ports: Vec<String> = servers
            .iter()
            .map(|s| format!("\"{}\"", s.port()))
            .collect();
        let spread = if servers.len() > 1 {
            format!(
                "local ports = {{{}}}\nlocal n = 0\nfunction setup(thread)\n  \
                 thread.addr = wrk.lookup(\"127.0.0.1\", ports[(n % #ports) + 1])[1]\n  \
                 n = n + 1\nend\n",
                ports.join(", ")
            )
        } else {
            String::new()
        };
        let script = |name: &str, body: &serde_json::Value| {
            let body_path = d.join(format!("{name}.json"));
            std::fs::write(&body_path, body.to_string()).expect("body");
            let lua = d.join(format!("{name}.lua"));
            let mut f = std::fs::File::create(&lua).expect("lua");
            writeln!(
                f,
                "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\n\
                 wrk.headers[\"Authorization\"] = \"Bearer {token}\"\n\
                 local f = io.open(\"{}\", \"r\")\nwrk.body = f:read(\"*a\")\nf:close()\n{spread}",
                body_path.display()
            )
            .expect("lua");
            lua
        };
        let single_lua = script("single", &single);
        let batch_lua = script("batch", &many);
        Setup {
            name,
            dir,
            store,
            servers,
            single_lua,
            batch_lua,
            items_sent: 0,
            runs: vec![Vec::new(); KINDS.len() * CONCS.len()],
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let secs: u32 = env_num("LOAD_SECONDS", 10);
    let batch: usize = env_num("LOAD_BATCH", 100);
    let rounds: usize = env_num("LOAD_RUNS", 3).max(1);

    let cluster = PgCluster::start();
    let mut settings = Vec::new();
    for kv in std::env::var("LOAD_PG_SETTINGS")
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.trim().is_empty())
    {
        let (k, v) = kv
            .split_once('=')
            .unwrap_or_else(|| panic!("LOAD_PG_SETTINGS: `{kv}` is not name=value"));
        let (k, v) = (k.trim(), v.trim());
        assert!(
            k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "LOAD_PG_SETTINGS: `{kv}`: letters, digits and _ only"
        );
        assert!(
            !matches!(k, "fsync" | "synchronous_commit" | "full_page_writes"),
            "LOAD_PG_SETTINGS: {k} stays on (durability is the point)"
        );
        cluster.psql("postgres", &format!("ALTER SYSTEM SET {k} = '{v}'"));
        settings.push(k.to_owned());
    }
    cluster.psql("postgres", "SELECT pg_reload_conf()");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let mut shown = Vec::new();
    for k in [
        "server_version",
        "fsync",
        "synchronous_commit",
        "full_page_writes",
        "wal_sync_method",
        "commit_delay",
        "commit_siblings",
        "max_connections",
        "shared_buffers",
    ]
    .into_iter()
    .chain(settings.iter().map(String::as_str))
    {
        shown.push(format!(
            "{k}={}",
            cluster.psql("postgres", &format!("SHOW {k}")).trim()
        ));
    }
    let postmaster: u32 = std::fs::read_to_string(cluster.data_dir().join("postmaster.pid"))
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.trim().parse().ok()))
        .expect("postmaster.pid");

    let db1 = cluster.create_database();
    let db2 = cluster.create_database();
    // LOAD_SETUPS (e.g. `pg1`, for a profile of one set-up) picks some of them.
    let only = std::env::var("LOAD_SETUPS").unwrap_or_else(|_| "sqlite,pg1,pg2".into());
    let wanted = |name: &str| only.split(',').any(|s| s.trim() == name);
    let mut setups = Vec::new();
    if wanted("sqlite") {
        setups.push(Setup::new("SQLite", None, 1, batch));
    }
    if wanted("pg1") {
        let url = Some(cluster.url(&db1));
        setups.push(Setup::new("PostgreSQL, 1 replica", url, 1, batch));
    }
    if wanted("pg2") {
        let url = Some(cluster.url(&db2));
        setups.push(Setup::new("PostgreSQL, 2 replicas", url, 2, batch));
    }
    assert!(!setups.is_empty(), "LOAD_SETUPS: none of sqlite, pg1, pg2");
    for s in &setups {
        let pids: Vec<String> = s.servers.iter().map(|p| p.pid().to_string()).collect();
        println!("{}: server pid(s) {}", s.name, pids.join(", "));
    }

    println!(
        "kluis-server load test: {secs} s per run, {rounds} round(s), batch of {batch}, audit trail on \
         (SQLite: WAL, synchronous=FULL; PostgreSQL on loopback: {}); group commit on both",
        shown.join(" ")
    );
    println!(
        "two replicas: one wrk, two threads, each thread's connections to one replica \
         (at concurrency 1: one connection, to the first replica only)"
    );
    println!(
        "{:<24} {:<7} {:>4} {:>3} {:>9} {:>9} {:>8} {:>8} {:>10} {:>10}  replicas' CPU s",
        "set-up",
        "kind",
        "conc",
        "run",
        "req/s",
        "items/s",
        "p50 ms",
        "p99 ms",
        "srv µs/it",
        "db µs/it"
    );
    for round in 1..=rounds {
        for s in &mut setups {
            for (k, (kind, path)) in KINDS.iter().enumerate() {
                let per = if k == 0 { 1 } else { batch } as u64;
                for (c, &conns) in CONCS.iter().enumerate() {
                    if !chosen(kind, conns) {
                        continue;
                    }
                    let lua = if k == 0 { &s.single_lua } else { &s.batch_lua };
                    let pids: Vec<u32> = s.servers.iter().map(Server::pid).collect();
                    let before: Vec<f64> = pids.iter().map(|&p| cpu_secs(p)).collect();
                    let db_before = pg_cpu_secs(postmaster);
                    let mut f = wrk(&format!("{}{path}", s.servers[0].base), lua, conns, secs);
                    let used: Vec<f64> = pids
                        .iter()
                        .zip(&before)
                        .map(|(&p, b)| cpu_secs(p) - b)
                        .collect();
                    let db = pg_cpu_secs(postmaster) - db_before;
                    let items = (f.requests * per) as f64;
                    s.items_sent += f.requests * per;
                    f.server_us = used.iter().sum::<f64>() * 1e6 / items;
                    if s.store.is_some() {
                        f.db_us = db * 1e6 / items;
                    }
                    let split: Vec<String> = used.iter().map(|u| format!("{u:.1}")).collect();
                    println!(
                        "{:<24} {kind:<7} {conns:>4} {round:>3} {:>9.0} {:>9.0} {:>8.2} {:>8.2} {:>10.1} {:>10.1}  {}",
                        s.name,
                        f.rps,
                        f.rps * per as f64,
                        f.p50_ms,
                        f.p99_ms,
                        f.server_us,
                        f.db_us,
                        split.join(" / ")
                    );
                    if !f.errors.is_empty() {
                        println!("    wrk: {}", f.errors);
                    }
                    s.runs[k * CONCS.len() + c].push(f);
                }
            }
        }
    }

    println!();
    println!(
        "median of {rounds} run(s) each (each column's median on its own): items/s, p50 ms, p99 ms"
    );
    print!("{:<7} {:>4}", "kind", "conc");
    for s in &setups {
        print!(" | {:^30}", s.name);
    }
    println!();
    let mut pg1_vs_sqlite = None;
    for (k, (kind, _)) in KINDS.iter().enumerate() {
        let per = if k == 0 { 1.0 } else { batch as f64 };
        for (c, conns) in CONCS.iter().enumerate() {
            print!("{kind:<7} {conns:>4}");
            let mut row = Vec::new();
            for s in &setups {
                let runs = &s.runs[k * CONCS.len() + c];
                let items = median(runs.iter().map(|f| f.rps * per).collect());
                let p50 = median(runs.iter().map(|f| f.p50_ms).collect());
                let p99 = median(runs.iter().map(|f| f.p99_ms).collect());
                print!(" | {items:>10.0} {p50:>9.2} {p99:>9.2}");
                row.push((items, p99));
            }
            println!();
            let of = |name: &str| setups.iter().position(|s| s.name == name);
            if let (0, 64, Some(sq), Some(pg)) =
                (k, *conns, of("SQLite"), of("PostgreSQL, 1 replica"))
            {
                pg1_vs_sqlite = Some((row[pg].0 / row[sq].0, row[pg].1));
            }
        }
    }
    println!();
    println!("median CPU per item, µs: server (all replicas) / PostgreSQL (all its processes)");
    for (k, (kind, _)) in KINDS.iter().enumerate() {
        for (c, conns) in CONCS.iter().enumerate() {
            print!("{kind:<7} {conns:>4}");
            for s in &setups {
                let runs = &s.runs[k * CONCS.len() + c];
                let srv = median(runs.iter().map(|f| f.server_us).collect());
                let db = median(runs.iter().map(|f| f.db_us).collect());
                print!(" | {srv:>14.1} {db:>15.1}");
            }
            println!();
        }
    }
    if let Some((ratio, p99)) = pg1_vs_sqlite {
        println!(
            "\nsingle unwraps at c=64: PostgreSQL (1 replica) = {:.0} % of SQLite (target ≥ 70 %), p99 {p99:.2} ms (target ≤ 25 ms)",
            ratio * 100.0
        );
    }

    println!();
    for s in &mut setups {
        s.servers.clear(); // stop the servers before verifying
        let verified = admin(s.dir.path(), s.store.as_deref(), &["audit", "verify"]);
        let records: u64 = verified
            .split_whitespace()
            .skip_while(|w| *w != "verified:")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .expect("record count");
        // wrk counts only completed responses; requests cut off at the end of a run may still
        // have been audited, so the trail may hold a few more records than replies counted.
        println!(
            "{}: {}; replies counted by wrk: {} items; audit records: {records} (incl. admin records)",
            s.name,
            verified.trim(),
            s.items_sent
        );
        assert!(
            records >= s.items_sent,
            "{}: fewer audit records than replies: a reply left without its record",
            s.name
        );
    }
    drop(cluster);
}
