//! `kluis sync` end to end: the real `kluis` binary against a real `kluis-server` process.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{Server, User, tree, write};

fn plain(u: &User) -> PathBuf {
    let p = u.path("plain");
    std::fs::create_dir_all(&p).unwrap();
    p
}

fn sync_args<'a>(cloud: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["sync", "plain", cloud, "--label", "hr", "--settle-ms", "0"];
    v.extend_from_slice(extra);
    v
}

/// Nothing in `dir` holds `needle` in its name or bytes.
fn assert_no_leak(dir: &Path, needle: &str) {
    for f in tree(dir) {
        assert!(
            !f.contains(needle),
            "a sealed-side name holds plaintext: {f}"
        );
        let data = std::fs::read(dir.join(&f)).unwrap();
        assert!(
            !data.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "{f} holds plaintext"
        );
    }
}

/// Wait up to `limit` for `cond` (a robustness deadline, far above what a pass takes).
fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}

#[test]
fn both_ways_with_shared_hidden_names_and_one_batch_unwrap() {
    let server = Server::start();
    let laptop = User::logged_in(&server, &server.alice);
    let desktop = User::logged_in(&server, &server.alice);
    let cloud = tempfile::tempdir().unwrap();
    let c = cloud.path().to_str().unwrap();
    plain(&desktop);
    for i in 0..30 {
        write(
            &plain(&laptop).join(format!("Salarissen/medewerker {i}.txt")),
            format!("SECRET salary {i}").as_bytes(),
        );
    }
    let r = laptop
        .run(&[&["--json"][..], &sync_args(c, &["--hide-names"])].concat())
        .ok()
        .json();
    assert_eq!(r["report"]["sealed"].as_array().unwrap().len(), 30);
    assert_no_leak(cloud.path(), "SECRET");
    assert_no_leak(cloud.path(), "Salarissen");
    assert_no_leak(cloud.path(), "medewerker");

    let before = server.counter("kluis_http_requests_total", &["unwrap_batch"])
        + server.counter("kluis_http_requests_total", &["\"unwrap\""]);
    let r = desktop
        .run(&[&["--json"][..], &sync_args(c, &["--hide-names"])].concat())
        .ok()
        .json();
    assert_eq!(r["report"]["opened"].as_array().unwrap().len(), 30);
    let after = server.counter("kluis_http_requests_total", &["unwrap_batch"])
        + server.counter("kluis_http_requests_total", &["\"unwrap\""]);
    // The folder key (one request) and the 30 documents (one batch request).
    assert!(after - before <= 2, "{} unwrap requests", after - before);
    assert_eq!(
        std::fs::read(desktop.path("plain/Salarissen/medewerker 7.txt")).unwrap(),
        b"SECRET salary 7"
    );
    // The desktop edits one; the laptop gets it, and the sealed name is reused.
    write(
        &desktop.path("plain/Salarissen/medewerker 7.txt"),
        b"SECRET raise",
    );
    desktop.run(&sync_args(c, &["--hide-names"])).ok();
    assert_eq!(
        tree(cloud.path()).len(),
        31,
        "30 documents and the folder key"
    );
    laptop.run(&sync_args(c, &["--hide-names"])).ok();
    assert_eq!(
        std::fs::read(laptop.path("plain/Salarissen/medewerker 7.txt")).unwrap(),
        b"SECRET raise"
    );
    let status = laptop.run(&["sync", "status"]).ok().stdout_text();
    assert!(status.contains("30 files in sync"), "{status}");
}

#[test]
fn revoked_access_stops_opening_and_says_so() {
    let server = Server::start();
    let laptop = User::logged_in(&server, &server.alice);
    let desktop = User::logged_in(&server, &server.alice);
    let cloud = tempfile::tempdir().unwrap();
    let c = cloud.path().to_str().unwrap();
    write(&plain(&laptop).join("a.txt"), b"one");
    plain(&desktop);
    laptop.run(&sync_args(c, &[])).ok();
    // Bob is not in hr-staff: opening is refused, shown, and nothing is written.
    let bob = User::logged_in(&server, &server.bob);
    plain(&bob);
    let run = bob.run(&sync_args(c, &[])).fails(5, "opening stopped");
    assert!(
        run.stderr.contains("`hr`") || run.stderr.contains("denied"),
        "{}",
        run.stderr
    );
    assert!(tree(&plain(&bob)).is_empty());
    let status = bob.run(&["sync", "status"]).ok().stdout_text();
    assert!(status.contains("stopped: opening stopped"), "{status}");
    // Alice's token is revoked: her desktop stops opening too, and says so.
    server.admin(&["token", "revoke", &server.alice_id]);
    desktop.run(&sync_args(c, &[])).fails(5, "opening stopped");
    assert!(!desktop.path("plain/a.txt").exists());
}

#[test]
fn offline_sealing_goes_on_from_the_cached_record_and_says_so() {
    let mut server = Server::start();
    let laptop = User::logged_in(&server, &server.alice);
    let cloud = tempfile::tempdir().unwrap();
    let c = cloud.path().to_str().unwrap();
    write(&plain(&laptop).join("a.txt"), b"one");
    laptop.run(&sync_args(c, &["--hide-names"])).ok();
    server.stop();
    write(&plain(&laptop).join("b.txt"), b"two");
    let run = laptop.run(&sync_args(c, &["--hide-names"])).ok();
    assert!(run.stderr.contains("cached record"), "{}", run.stderr);
    assert!(run.stderr.contains("1 sealed"), "{}", run.stderr);
    assert_eq!(tree(cloud.path()).len(), 3);
}

#[test]
fn nested_folders_are_refused() {
    let server = Server::start();
    let u = User::logged_in(&server, &server.alice);
    std::fs::create_dir_all(u.path("cloud/plain")).unwrap();
    u.run(&["sync", "cloud/plain", "cloud", "--label", "hr"])
        .fails(2, "inside");
    u.run(&["sync", "cloud", "cloud/plain", "--label", "hr"])
        .fails(2, "inside");
    assert_eq!(tree(&u.path("cloud")), Vec::<String>::new());
}

fn spawn_watch(u: &User, cloud: &str) -> Child {
    u.command()
        .args([
            "sync",
            "plain",
            cloud,
            "--label",
            "hr",
            "--hide-names",
            "--watch",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn watch_seals_changes_opens_arrivals_and_survives_kill_9() {
    let server = Server::start();
    let laptop = User::logged_in(&server, &server.alice);
    let desktop = User::logged_in(&server, &server.alice);
    let cloud = tempfile::tempdir().unwrap();
    let c = cloud.path().to_str().unwrap();
    plain(&laptop);
    let mut child = spawn_watch(&laptop, c);
    // The folder key appears once the first pass ran.
    assert!(wait_for(Duration::from_secs(20), || cloud
        .path()
        .join(".kluis-folder")
        .exists()));
    write(&laptop.path("plain/report.txt"), b"SECRET v1");
    assert!(
        wait_for(Duration::from_secs(20), || tree(cloud.path()).len() == 2),
        "sealed by the watching process"
    );
    // kill -9 and restart: nothing is sealed twice, and new work goes on.
    child.kill().unwrap();
    child.wait().unwrap();
    let mut child = spawn_watch(&laptop, c);
    write(&laptop.path("plain/second.txt"), b"SECRET v2");
    assert!(wait_for(Duration::from_secs(20), || tree(cloud.path())
        .len()
        == 3));
    // Another device seals into the shared folder: the watching laptop opens it.
    write(&plain(&desktop).join("from desktop.txt"), b"SECRET v3");
    desktop.run(&sync_args(c, &["--hide-names"])).ok();
    assert!(
        wait_for(Duration::from_secs(20), || laptop
            .path("plain/from desktop.txt")
            .exists()),
        "opened by the watching process"
    );
    assert_eq!(
        std::fs::read(laptop.path("plain/from desktop.txt")).unwrap(),
        b"SECRET v3"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(tree(cloud.path()).len(), 4);
    assert_no_leak(cloud.path(), "SECRET");
    assert_eq!(
        tree(&laptop.path("plain")),
        vec!["from desktop.txt", "report.txt", "second.txt"]
    );
}

#[test]
fn a_destroyed_or_retired_key_version_stops_opening_and_says_so() {
    let server = Server::start();
    let laptop = User::logged_in(&server, &server.alice);
    let desktop = User::logged_in(&server, &server.alice);
    plain(&desktop);
    let cloud = tempfile::tempdir().unwrap();
    let c = cloud.path().to_str().unwrap();
    write(&plain(&laptop).join("a.txt"), b"sealed to version 1");
    laptop.run(&sync_args(c, &[])).ok();
    // Version 1 retired (it opens only for re-keying): the desktop stops opening, says so.
    server.admin(&["label", "rotate", "hr"]);
    server.admin(&["label", "retire", "hr", "1"]);
    let run = desktop.run(&sync_args(c, &[])).fails(5, "opening stopped");
    assert!(!desktop.path("plain/a.txt").exists(), "{}", run.stderr);
    // Version 1 destroyed: the same, naming the destruction.
    server.admin(&["label", "destroy", "hr", "1", "--confirm", "hr"]);
    let run = desktop.run(&sync_args(c, &[])).fails(5, "opening stopped");
    assert!(run.stderr.contains("destroyed"), "{}", run.stderr);
    assert!(!desktop.path("plain/a.txt").exists());
    // Sealing goes on, to the current version.
    write(&laptop.path("plain/b.txt"), b"new");
    laptop.run(&sync_args(c, &[])).ok();
    assert_eq!(tree(cloud.path()).len(), 2);
}
