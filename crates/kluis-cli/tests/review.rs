//! Review of issue 17 (section 1): attacks on the client that the first round of fixes let
//! through. The real `kluis` binary against a real `kluis-server` process.

mod common;

use common::{Recorder, Server, User, write};

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
