//! What leaves the machine (issue 17, section 2): every connection `kluis` opens while it
//! logs in, lists, seals, opens, re-keys and reads the audit, recorded with
//! `strace -f -e trace=connect,sendto,sendmsg`, must go to the configured key server and
//! nowhere else. docs/PRIVACY.md tells a DPIA author what is sent there.

mod common;
use common::*;

use std::path::Path;
use std::process::Command;

/// Is a working `strace` here? Install it with apt-get when missing (as .ci/run does); `None`
/// means it cannot run (not installable, or ptrace not permitted), with the reason.
fn strace_ready() -> Result<(), String> {
    let works = || {
        Command::new("strace")
            .args([
                "-f",
                "-qq",
                "-e",
                "trace=connect",
                "-o",
                "/dev/null",
                "true",
            ])
            .status()
            .is_ok_and(|s| s.success())
    };
    if works() {
        return Ok(());
    }
    let _ = Command::new("apt-get")
        .args(["install", "-y", "-qq", "strace"])
        .status();
    if works() {
        return Ok(());
    }
    Err("strace is not installed and `apt-get install -y strace` did not install it, or ptrace is not permitted here".into())
}

/// Run `command` under strace, the trace written to `trace`; returns the trace and the exit
/// code.
fn strace(command: &Command, trace: &Path) -> (String, i32) {
    let mut c = Command::new("strace");
    c.args([
        "-f",
        "-qq",
        "-s",
        "256",
        "-e",
        "trace=connect,sendto,sendmsg",
        "-o",
    ])
    .arg(trace)
    .arg(command.get_program())
    .args(command.get_args());
    for (k, v) in command.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    if let Some(d) = command.get_current_dir() {
        c.current_dir(d);
    }
    let out = c.output().unwrap();
    let code = out.status.code().unwrap_or(-1);
    (std::fs::read_to_string(trace).unwrap(), code)
}

/// Run `kluis args` under strace as `user`; it must succeed. Returns the trace.
fn traced(user: &User, trace: &Path, args: &[&str]) -> String {
    let mut plain = user.command();
    plain.args(args);
    let (t, code) = strace(&plain, trace);
    assert_eq!(code, 0, "kluis {args:?} failed under strace");
    t
}

/// Every destination address in a trace: `AF_INET 127.0.0.1:8443`, `AF_UNIX /path`, …
/// Calls without an address (a `sendto` on a connected socket) have none.
fn destinations(trace: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in trace.lines() {
        let Some(at) = line.find("sa_family=") else {
            continue;
        };
        let rest = &line[at + "sa_family=".len()..];
        let family: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let field = |name: &str| -> Option<String> {
            let i = rest.find(name)? + name.len();
            let v = &rest[i..];
            Some(
                v[..v.find([')', ',', '}']).unwrap_or(v.len())]
                    .trim_matches('"')
                    .to_owned(),
            )
        };
        let dest = match family.as_str() {
            "AF_INET" => format!(
                "AF_INET {}:{}",
                field("inet_addr(\"").unwrap_or_default(),
                field("sin_port=htons(").unwrap_or_default()
            ),
            "AF_INET6" => format!(
                "AF_INET6 [{}]:{}",
                field("inet_pton(AF_INET6, \"").unwrap_or_default(),
                field("sin6_port=htons(").unwrap_or_default()
            ),
            "AF_UNIX" => format!("AF_UNIX {}", field("sun_path=").unwrap_or_default()),
            // AF_UNSPEC disconnects a socket; it sends nothing.
            "AF_UNSPEC" => continue,
            other => format!("{other}: {line}"),
        };
        out.push(dest);
    }
    out
}

#[test]
fn kluis_connects_only_to_the_configured_key_server() {
    if let Err(why) = strace_ready() {
        // Said loudly: this test checks nothing here.
        eprintln!("SKIPPED kluis_connects_only_to_the_configured_key_server: {why}");
        return;
    }
    let server = Server::start();
    let port = server
        .url
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .to_owned();
    let allowed = format!("AF_INET 127.0.0.1:{port}");
    assert!(
        server.url.starts_with("http://127.0.0.1:"),
        "{}",
        server.url
    );

    let mut alice = User::new();
    alice.env.push(("PASS".into(), "correct horse".into()));
    alice.env.push(("KLUIS_SERVER".into(), server.url.clone()));
    write(&alice.path("src/verslag.txt"), b"report");
    write(&alice.path("src/dossier/brief.txt"), b"letter");
    write(&alice.path("medisch.txt"), b"diagnosis");
    std::fs::write(alice.path("token"), &server.alice).unwrap();
    let trace = alice.home.path().join("trace");

    let mut seen = Vec::new();
    // The recorder sees what it must: a process that connects elsewhere (over TCP and UDP,
    // to loopback addresses that are not the key server) is caught.
    let mut control = Command::new("python3");
    control.args([
        "-c",
        "import socket\n\
         socket.socket().connect_ex(('127.0.0.2', 9))\n\
         socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.3', 53))",
    ]);
    let (t, code) = strace(&control, &trace);
    if code == 0 {
        let d = destinations(&t);
        assert!(d.contains(&"AF_INET 127.0.0.2:9".to_owned()), "{d:?}\n{t}");
        assert!(d.contains(&"AF_INET 127.0.0.3:53".to_owned()), "{d:?}\n{t}");
    }

    let mut run = |args: &[&str]| {
        let d = destinations(&traced(&alice, &trace, args));
        seen.push((args.join(" "), d));
    };
    run(&["login", "--token-file", "token"]);
    run(&["keygen", "--passphrase-env", "PASS"]);
    run(&["labels"]);
    run(&["status"]);
    run(&[
        "seal",
        "--label",
        "hr",
        "--hide-names",
        "--pad",
        "-o",
        "cloud",
        "src",
    ]);
    run(&["seal", "--label", "medical", "medisch.txt"]);
    run(&["--json", "inspect", "medisch.txt.kluis"]);
    run(&["open", "-o", "back", "--passphrase-env", "PASS", "cloud"]);
    run(&[
        "open",
        "-o",
        "back2",
        "--passphrase-env",
        "PASS",
        "medisch.txt.kluis",
    ]);
    server.admin(&["label", "rotate", "hr"]);
    run(&["rekey", "--passphrase-env", "PASS", "cloud"]);
    run(&["audit"]);
    run(&["logout"]);

    // For the log: what each command connected to.
    eprintln!("{seen:#?}");
    let mut total = 0;
    let mut wrong = Vec::new();
    for (cmd, dests) in &seen {
        for d in dests {
            if *d == allowed {
                total += 1;
            } else {
                wrong.push(format!("kluis {cmd}: {d}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "connections other than the key server {allowed}:\n{}",
        wrong.join("\n")
    );
    // The trace is real: the commands that need the server did connect to it.
    for (cmd, dests) in &seen {
        let offline = cmd.starts_with("keygen") || cmd.contains("inspect") || cmd == "logout";
        assert_eq!(dests.is_empty(), offline, "kluis {cmd}: {dests:?}");
    }
    assert!(total >= 9, "{seen:?}");
    assert_eq!(
        std::fs::read(alice.path("back/src/dossier/brief.txt")).unwrap(),
        b"letter"
    );
    assert_eq!(
        std::fs::read(alice.path("back2/medisch.txt")).unwrap(),
        b"diagnosis"
    );
}
