//! What leaves the machine (issue 17, section 2): every connection `kluis` opens while it
//! logs in, lists, seals, opens, re-keys and reads the audit, recorded with
//! `strace -f -e trace=connect,sendto,sendmsg,sendmmsg`, must go to the configured key
//! server and nowhere else. docs/PRIVACY.md tells a DPIA author what is sent there.

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
    c.args(["-f", "-qq", "-s", "256", "-e", TRACED, "-o"])
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

/// The syscalls recorded: everything that names a destination (`sendmmsg` sends to a
/// per-message address without `connect`), and `io_uring_setup`, whose queued operations
/// (connect and send among them) do not pass through the syscalls strace sees.
const TRACED: &str = "trace=connect,sendto,sendmsg,sendmmsg,io_uring_setup";

/// For each byte of a trace line, whether it lies inside a quoted string (the data sent,
/// which strace prints before the address in a `sendto`, or a quoted address): what a
/// program sends cannot pose as an address or hide one.
fn in_strings(line: &str) -> Vec<bool> {
    let mut mask = vec![false; line.len()];
    let (mut inside, mut escaped) = (false, false);
    for (i, b) in line.bytes().enumerate() {
        if !inside {
            inside = b == b'"';
        } else if escaped {
            escaped = false;
            mask[i] = true;
        } else if b == b'"' {
            inside = false;
        } else {
            escaped = b == b'\\';
            mask[i] = true;
        }
    }
    mask
}

/// Every destination address in a trace: `AF_INET 127.0.0.1:8443`, `AF_UNIX …`, …
/// Calls without an address (a `sendto` on a connected socket) have none. Every address in
/// a line counts (a `sendmmsg` has one per message), only outside the data sent; a line
/// strace could not show whole (an array cut short) and an `io_uring_setup` are reported as
/// such, never skipped.
fn destinations(trace: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in trace.lines() {
        let mask = in_strings(line);
        let outside = |at: usize| !mask.get(at).copied().unwrap_or(false);
        let found = |needle: &str| {
            line.match_indices(needle)
                .map(|(at, _)| at)
                .filter(|&at| outside(at))
                .collect::<Vec<_>>()
        };
        if !found("io_uring_setup(").is_empty() {
            out.push(format!("io_uring (its operations are not traced): {line}"));
        }
        if !found("...]").is_empty() {
            out.push(format!("an array cut short in the trace: {line}"));
        }
        for at in found("sa_family=") {
            let rest = &line[at + "sa_family=".len()..];
            // This address's own fields: up to the end of its `{…}`.
            let rest = &rest[..rest.find('}').unwrap_or(rest.len())];
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
    // That the recorder sees what it must is checked by
    // the_recorder_catches_every_way_of_sending_elsewhere.
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

/// A program that sends elsewhere in every way the recorder must catch, while posing as the
/// key server at 127.0.0.1:8443: a datagram to 127.0.0.1:9999 whose content reads like
/// strace's rendering of port 8443; one whose content reads like a disconnect (`AF_UNSPEC`);
/// a `sendmmsg` with its own destination (no `connect`); IPv6; and a connection from a
/// detached grandchild.
const SENDS_ELSEWHERE: &str = r#"
import ctypes, os, socket, time
udp = lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp().sendto(b'sa_family=AF_INET, sin_port=htons(8443)}', ('127.0.0.1', 9999))
udp().sendto(b'sa_family=AF_UNSPEC}', ('127.0.0.4', 53))
class sockaddr_in(ctypes.Structure):
    _fields_ = [('family', ctypes.c_ushort), ('port', ctypes.c_uint16),
                ('addr', ctypes.c_uint32), ('zero', ctypes.c_char * 8)]
class iovec(ctypes.Structure):
    _fields_ = [('base', ctypes.c_void_p), ('len', ctypes.c_size_t)]
class msghdr(ctypes.Structure):
    _fields_ = [('name', ctypes.c_void_p), ('namelen', ctypes.c_uint32),
                ('iov', ctypes.POINTER(iovec)), ('iovlen', ctypes.c_size_t),
                ('control', ctypes.c_void_p), ('controllen', ctypes.c_size_t),
                ('flags', ctypes.c_int)]
class mmsghdr(ctypes.Structure):
    _fields_ = [('hdr', msghdr), ('len', ctypes.c_uint)]
addr = sockaddr_in(socket.AF_INET, socket.htons(53), 
                   int.from_bytes(socket.inet_aton('127.0.0.5'), 'little'), b'')
data = ctypes.create_string_buffer(b'y')
iov = iovec(ctypes.cast(data, ctypes.c_void_p), 1)
msg = mmsghdr(msghdr(ctypes.cast(ctypes.pointer(addr), ctypes.c_void_p), 16,
                     ctypes.pointer(iov), 1, None, 0, 0), 0)
s = udp()
assert ctypes.CDLL(None).sendmmsg(s.fileno(), ctypes.byref(msg), 1, 0) == 1
socket.socket(socket.AF_INET6).connect_ex(('::1', 9))
if os.fork() == 0:
    if os.fork() == 0:
        os.setsid()
        socket.socket().connect_ex(('127.0.0.6', 9))
        os._exit(0)
    os._exit(0)
os.wait()
time.sleep(0.5)
"#;

/// The recorder itself: a program that sends elsewhere must be caught however it sends. The
/// first version traced neither `sendmmsg` nor looked past the first `sa_family=` of a line,
/// which could be in the data sent: a datagram to 127.0.0.1:9999 passed as the key server at
/// :8443, one whose content said `AF_UNSPEC` was skipped, and a `sendmmsg` was not seen.
#[test]
fn the_recorder_catches_every_way_of_sending_elsewhere() {
    if let Err(why) = strace_ready() {
        eprintln!("SKIPPED the_recorder_catches_every_way_of_sending_elsewhere: {why}");
        return;
    }
    if Command::new("python3").arg("-c").arg("").status().is_err() {
        eprintln!("SKIPPED the_recorder_catches_every_way_of_sending_elsewhere: no python3");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace");
    let mut control = Command::new("python3");
    control.args(["-c", SENDS_ELSEWHERE]);
    let (t, code) = strace(&control, &trace);
    assert_eq!(code, 0, "the control program failed:\n{t}");
    let d = destinations(&t);
    for expected in [
        "AF_INET 127.0.0.1:9999",
        "AF_INET 127.0.0.4:53",
        "AF_INET 127.0.0.5:53",
        "AF_INET6 [::1]:9",
        "AF_INET 127.0.0.6:9",
    ] {
        assert!(
            d.contains(&expected.to_owned()),
            "{expected} not seen in {d:?}\n{t}"
        );
    }
    assert!(
        !d.contains(&"AF_INET 127.0.0.1:8443".to_owned()),
        "the data sent posed as the key server: {d:?}\n{t}"
    );
    // Lines strace could not show whole, and io_uring, are reported, not skipped.
    let cut = "1 sendmmsg(3, [{msg_hdr={msg_name=NULL}}, ...], 300, 0) = 300";
    assert_eq!(destinations(cut).len(), 1, "{cut}");
    let ring = "1 io_uring_setup(8, {flags=0}) = 3";
    assert_eq!(destinations(ring).len(), 1, "{ring}");
}
