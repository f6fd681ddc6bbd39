//! Review of issue 17 (section 1): attacks on the client that the first round of fixes let
//! through. The real `kluis` binary against a real `kluis-server` process.

mod common;

use common::{Server, User, write};

/// A plain HTTP listener on loopback that records every request it gets and answers 503.
struct Recorder {
    url: String,
    seen: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Recorder {
    fn start() -> Recorder {
        use std::io::{Read, Write};
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

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen.lock().unwrap()).into_owned()
    }
}

/// Defect 3: a token saved before `token.server` existed (an upgraded installation) is
/// bound to the server in config.toml. `kluis config set server ELSEWHERE` must not move
/// that binding along: the token still never reaches the other server.
#[test]
fn a_legacy_token_does_not_follow_config_set_server() {
    let server = Server::start();
    let alice = User::logged_in(&server, &server.alice);
    // As a kluis from before the binding left it: the token and config.toml only.
    std::fs::remove_file(alice.config_dir().join("token.server")).unwrap();
    write(&alice.path("r.txt"), b"report");
    alice.run(&["seal", "--label", "hr", "r.txt"]).ok();
    // Still usable on its own server.
    alice.run(&["open", "-o", "o1", "r.txt.kluis"]).ok();

    let other = Recorder::start();
    alice.run(&["config", "set", "server", &other.url]).ok();
    let run = alice.run(&["open", "-o", "o2", "r.txt.kluis"]);
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("not sent"), "{}", run.stderr);
    alice.run(&["audit"]);
    alice.run(&["status"]);
    let seen = other.text();
    assert!(
        seen.contains("HTTP/1.1"),
        "the other server was asked: {seen}"
    );
    let token_part = &server.alice[server.alice.len() - 12..];
    assert!(
        !seen.contains(token_part),
        "the token went to {}",
        other.url
    );
    assert!(
        !seen.to_ascii_lowercase().contains("authorization"),
        "{seen}"
    );

    // Back on its own server, it works again.
    alice.run(&["config", "set", "server", &server.url]).ok();
    alice.run(&["open", "-o", "o3", "r.txt.kluis"]).ok();
    assert_eq!(std::fs::read(alice.path("o3/r.txt")).unwrap(), b"report");
}
