//! The reference load balancer (issue 15, section 6): `packaging/haproxy.cfg`, run by a real
//! HAProxy on loopback in front of two real `kluis-server` replicas with TLS on one real
//! PostgreSQL. Only the addresses, the CA file, the host name, the stats socket's path and the
//! log target are changed, and chroot and user dropped (HAProxy runs in the foreground as the
//! test's user); each change must match the file, so the test breaks when the file changes.
//! Checked: HAProxy's TLS health check of `/readyz` passes; connections are spread over both
//! replicas; a replica that stops answering (SIGSTOP) is taken out and put back (SIGCONT); a
//! killed replica costs no request (its refused connections go to the other); with the
//! database down both are taken out, and both come back when it is up again; the audit chain
//! verifies and holds every acknowledged unwrap.
//!
//! HAProxy comes from Debian's package: installed with `apt-get install haproxy` when missing
//! (as root), else the test fails and says so.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use kluis_core::reply::ReplyKey;
use kluis_core::{LabelPublicKey, Metadata, PublicKey, Recipient, Slot, seal};
use kluis_testkit::postgres::{PASSWORD, PgCluster};
use serde_json::json;

mod common;
use common::bin;

/// HAProxy's binary: on PATH (or /usr/sbin), else installed with apt-get.
fn haproxy() -> PathBuf {
    let find = || {
        [
            "/usr/sbin/haproxy",
            "/usr/local/sbin/haproxy",
            "/usr/bin/haproxy",
        ]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
    };
    if let Some(p) = find() {
        return p;
    }
    let installed = Command::new("apt-get")
        .args(["install", "-y", "-q", "haproxy"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    match find() {
        Some(p) => p,
        None => panic!(
            "HAProxy is not installed and `apt-get install haproxy` did not install it \
             (exit ok: {installed}); the load balancer test needs it: install it as root"
        ),
    }
}

/// A process killed (and reaped) on drop.
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success(), "kill {sig} {pid}");
}

fn admin(dir: &Path, url: &str, args: &[&str]) -> String {
    common::pg_admin(dir, url, args)
}

/// A replica with TLS (`cert.pem`, `key.pem` in `dir`) on a free loopback port; its port.
fn replica(dir: &Path, url: &str) -> (Proc, u16) {
    let mut child = bin()
        .current_dir(dir)
        .env("KLUIS_STORE", url)
        .env("KLUIS_STORE_PASSWORD", PASSWORD)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(["--tls-cert", "cert.pem", "--tls-key", "key.pem"])
        .args(["--rate-limit", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    std::thread::spawn(move || for _ in out.lines() {});
    let port = line
        .trim()
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("no address: {line}"));
    (Proc(child), port)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `text` with `from` replaced by `to`; `from` must be in it.
fn replace(text: &str, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "packaging/haproxy.cfg no longer contains `{from}`: update this test"
    );
    text.replace(from, to)
}

/// Each server's (status, sessions so far) from HAProxy's stats socket (`show stat`, CSV).
fn stats(sock: &Path) -> Vec<(String, String, u64)> {
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(sock) else {
        return Vec::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"show stat\n").is_err() {
        return Vec::new();
    }
    let mut csv = String::new();
    let _ = s.read_to_string(&mut csv);
    let mut lines = csv.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or("")
        .trim_start_matches("# ")
        .split(',')
        .collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let (Some(sv), Some(status), Some(stot)) = (col("svname"), col("status"), col("stot")) else {
        return Vec::new();
    };
    lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f.len() > stot && f[sv].starts_with("kluis-"))
        .map(|f| {
            (
                f[sv].to_owned(),
                f[status].to_owned(),
                f[stot].parse().unwrap_or(0),
            )
        })
        .collect()
}

fn status_of(sock: &Path, server: &str) -> String {
    stats(sock)
        .into_iter()
        .find(|(s, _, _)| s == server)
        .map(|(_, st, _)| st)
        .unwrap_or_default()
}

/// Wait up to `limit` for `f`; how long it took.
fn within(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// One unwrap through the load balancer on a new connection (a new agent each time, so
/// HAProxy chooses a replica for each); its status, or the error.
fn unwrap(base: &str, ca: &[u8], token: &str, doc: &(String, String)) -> Result<u16, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::new_with_certs(&[
                    ureq::tls::Certificate::from_der(ca).to_owned(),
                ]))
                .build(),
        )
        .build()
        .into();
    let body = json!({
        "reply_key": B64.encode(ReplyKey::generate().unwrap().public_bytes()),
        "doc_id": doc.0,
        "stanza": doc.1,
    });
    agent
        .post(&format!("{base}/v1/unwrap"))
        .header("Authorization", &format!("Bearer {token}"))
        .header("Content-Type", "application/json")
        .send(body.to_string())
        .map(|r| r.status().as_u16())
        .map_err(|e| e.to_string())
}

#[test]
fn haproxy_spreads_connections_and_routes_around_replicas_that_are_down() {
    let haproxy = haproxy();
    let cluster = PgCluster::start();
    let db = cluster.create_database();
    let url = cluster.url(&db);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // The organisation's CA and the replicas' certificate (for 127.0.0.1 and localhost).
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    // Distinct names: OpenSSL (HAProxy) takes a certificate whose issuer is its own subject for
    // a self-signed one, and rcgen gives every certificate the same default name.
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test organisation CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    let cert = params.signed_by(&key, &issuer).unwrap();
    std::fs::write(d.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(d.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(d.join("key.pem"), key.serialize_pem()).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d.join("key.pem"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
    }
    let ca_der = ca.der().to_vec();

    admin(d, &url, &["init"]);
    admin(d, &url, &["label", "create", "hr", "--user", "alice"]);
    let token = admin(d, &url, &["token", "create", "--user", "alice"])
        .trim()
        .to_owned();
    let shown: serde_json::Value =
        serde_json::from_str(&admin(d, &url, &["label", "show", "hr"])).unwrap();
    let public: PublicKey = shown["versions"][0]["public_key"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let label = LabelPublicKey::new("hr", 1, public).unwrap();
    let sealed = seal(
        &[Slot::single(Recipient::Label(label))],
        &Metadata::default(),
        b"x",
    )
    .unwrap();
    let h = kluis_core::Header::parse(&sealed).unwrap();
    let doc = (
        h.doc_id().to_string(),
        B64.encode(h.slots()[0][0].to_bytes()),
    );

    let (a, port_a) = replica(d, &url);
    let (b, port_b) = replica(d, &url);

    // The packaged configuration, pointed at loopback.
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/haproxy.cfg"),
    )
    .unwrap();
    let front = free_port();
    let sock = d.join("haproxy.sock");
    let mut cfg = replace(
        &shipped,
        "log /dev/log local0",
        "log stderr format raw local0",
    );
    cfg = replace(&cfg, "/run/haproxy/admin.sock", &sock.display().to_string());
    // In the foreground as the test's user: no chroot, no change of user.
    for line in ["chroot /var/lib/haproxy", "user haproxy", "group haproxy"] {
        cfg = replace(&cfg, &format!("    {line}\n"), "");
    }
    cfg = replace(&cfg, "bind :8443", &format!("bind 127.0.0.1:{front}"));
    cfg = replace(
        &cfg,
        "/etc/ssl/certs/org-root-ca.pem",
        &d.join("ca.pem").display().to_string(),
    );
    cfg = replace(&cfg, "keys.example.org", "localhost");
    cfg = replace(&cfg, "10.0.0.11:8443", &format!("127.0.0.1:{port_a}"));
    cfg = replace(&cfg, "10.0.0.12:8443", &format!("127.0.0.1:{port_b}"));
    std::fs::write(d.join("haproxy.cfg"), &cfg).unwrap();
    let check = Command::new(&haproxy)
        .arg("-c")
        .arg("-f")
        .arg(d.join("haproxy.cfg"))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "haproxy -c: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let mut lb = Proc(
        Command::new(&haproxy)
            .arg("-db")
            .arg("-f")
            .arg(d.join("haproxy.cfg"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("haproxy.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let lb_log = || std::fs::read_to_string(d.join("haproxy.log")).unwrap_or_default();
    let base = format!("https://127.0.0.1:{front}");
    let both_up = || {
        if let Ok(Some(status)) = lb.0.try_wait() {
            panic!("HAProxy exited ({status}): {}", lb_log());
        }
        let s = stats(&sock);
        s.len() == 2 && s.iter().all(|(_, st, _)| st == "UP")
    };
    let t = within(Duration::from_secs(30), both_up);
    assert!(
        t.is_some(),
        "HAProxy's TLS check of /readyz passes on both replicas: {:?}\n{}",
        stats(&sock),
        lb_log()
    );
    println!("both replicas UP after {t:?}");

    // Connections are spread over both replicas.
    let mut acked = 0u64;
    for i in 0..20 {
        assert_eq!(unwrap(&base, &ca_der, &token, &doc), Ok(200), "unwrap {i}");
        acked += 1;
    }
    let s = stats(&sock);
    println!("after 20 unwraps: {s:?}");
    assert!(
        s.iter().all(|(_, _, sessions)| *sessions >= 5),
        "both replicas served: {s:?}"
    );

    // A replica that stops answering is taken out; the other serves every request.
    signal(a.0.id(), "-STOP");
    let t = within(Duration::from_secs(20), || {
        status_of(&sock, "kluis-a").starts_with("DOWN")
    });
    println!("frozen replica marked DOWN after {t:?}");
    assert!(
        t.is_some(),
        "a frozen replica is taken out: {:?}",
        stats(&sock)
    );
    let before = stats(&sock);
    for i in 0..10 {
        assert_eq!(
            unwrap(&base, &ca_der, &token, &doc),
            Ok(200),
            "unwrap {i} with replica a frozen"
        );
        acked += 1;
    }
    let after = stats(&sock);
    let sessions = |s: &[(String, String, u64)], n: &str| {
        s.iter()
            .find(|(sv, _, _)| sv == n)
            .map_or(0, |(_, _, c)| *c)
    };
    assert_eq!(
        sessions(&after, "kluis-a"),
        sessions(&before, "kluis-a"),
        "no connection went to the replica marked DOWN"
    );
    signal(a.0.id(), "-CONT");
    let t = within(Duration::from_secs(20), || {
        status_of(&sock, "kluis-a") == "UP"
    });
    println!("thawed replica UP again after {t:?}");
    assert!(
        t.is_some(),
        "a thawed replica is put back: {:?}",
        stats(&sock)
    );

    // A killed replica: its refused connections are dispatched to the other at once, before
    // the check marks it DOWN.
    drop(b);
    for i in 0..10 {
        assert_eq!(
            unwrap(&base, &ca_der, &token, &doc),
            Ok(200),
            "unwrap {i} right after replica b was killed"
        );
        acked += 1;
    }
    let t = within(Duration::from_secs(20), || {
        status_of(&sock, "kluis-b").starts_with("DOWN")
    });
    assert!(
        t.is_some(),
        "a killed replica is taken out: {:?}",
        stats(&sock)
    );

    // The database down: /readyz says 503, the remaining replica is taken out, nothing is
    // served (a request fails at once: it does not hang); back when the database is.
    cluster.stop_immediate();
    // What a client sees from the replica itself while HAProxy still counts it UP.
    let direct = unwrap(
        &format!("https://127.0.0.1:{port_a}"),
        &ca_der,
        &token,
        &doc,
    );
    println!("database down: an unwrap straight to replica a got {direct:?}");
    assert_ne!(direct, Ok(200), "nothing is released without the database");
    let t = within(Duration::from_secs(20), || {
        status_of(&sock, "kluis-a").starts_with("DOWN")
    });
    println!("database down: replica a DOWN after {t:?}");
    assert!(
        t.is_some(),
        "/readyz 503 takes a replica out: {:?}",
        stats(&sock)
    );
    let start = Instant::now();
    let refused = unwrap(&base, &ca_der, &token, &doc);
    println!(
        "with no replica UP an unwrap got {refused:?} after {:?}",
        start.elapsed()
    );
    assert!(refused.is_err(), "no replica, no answer: {refused:?}");
    assert!(start.elapsed() < Duration::from_secs(15), "it did not hang");
    cluster.restart();
    let t = within(Duration::from_secs(30), || {
        status_of(&sock, "kluis-a") == "UP"
    });
    println!("database back: replica a UP after {t:?}");
    assert!(t.is_some(), "back when the database is: {:?}", stats(&sock));
    assert_eq!(unwrap(&base, &ca_der, &token, &doc), Ok(200));
    acked += 1;

    drop(a);
    let verified = admin(d, &url, &["audit", "verify"]);
    let records: u64 = verified
        .split_whitespace()
        .skip_while(|w| *w != "verified:")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("record count in {verified:?}"));
    println!("{}; acknowledged unwraps: {acked}", verified.trim());
    assert!(
        records >= acked,
        "every acknowledged unwrap is in the trail"
    );
}
