//! Issue 17: `kluis open` into a cloud sync folder wrote its plaintext temporary file
//! (`.kluis-tmp-*`) inside the sync folder, so a `kill -9` left a partial plaintext copy there
//! for the sync client to upload until the next run removed it. Now the temporary file goes
//! to the private `<cache dir>/tmp` when that is on the same file system. The real `kluis`
//! binary against a real `kluis-server` process, killed with SIGKILL mid-write.
#![cfg(unix)]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::{Server, User, write};

/// The `.kluis-tmp-*` files directly in `dir` and, recursively, below it.
fn temps(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for e in entries.flatten() {
        let path = e.path();
        if e.file_name().to_string_lossy().starts_with(".kluis-tmp-") {
            found.push(path);
        } else if e.file_type().is_ok_and(|t| t.is_dir()) {
            found.extend(temps(&path));
        }
    }
    found
}

/// Poll until a temporary file appears in `private`, asserting at every step that none is in
/// `sync`; then SIGKILL `child`. Returns the temporary files left in `private`.
fn kill_once_written_outside(mut child: Child, sync: &Path, private: &Path) -> Vec<PathBuf> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let inside = temps(sync);
        assert!(
            inside.is_empty(),
            "plaintext temporary in the sync folder: {inside:?}"
        );
        if !temps(private).is_empty() {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err);
            panic!("kluis ended ({status}) before its temporary file was seen: {err}");
        }
        assert!(
            Instant::now() < deadline,
            "no temporary file in {private:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(temps(sync).is_empty(), "{:?}", temps(sync));
    let left = temps(private);
    assert!(!left.is_empty(), "a killed run leaves its temporary file");
    left
}

/// Age the leftovers past the stale-file grace period (a killed run is minutes old).
fn age(paths: &[PathBuf]) {
    for p in paths {
        let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(600))
            .unwrap();
    }
}

#[test]
fn opening_into_a_sync_folder_never_writes_a_plaintext_temporary_there() {
    let server = Server::start();
    let alice = User::logged_in(&server, &server.alice);
    let private = alice.cache_dir().join("tmp");
    let sync = alice.path("OneDrive - Gemeente");
    std::fs::create_dir_all(&sync).unwrap();

    // A large document, opened from a folder into the sync folder, killed mid-write.
    let big: Vec<u8> = (0..96u32 << 20).map(|i| (i % 251) as u8).collect();
    write(&alice.path("in/big.bin"), &big);
    alice
        .run(&["seal", "--label", "hr", "--remove-original", "in/big.bin"])
        .ok();
    let child = alice
        .command()
        .args(["open", "-o", "OneDrive - Gemeente", "in"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let left = kill_once_written_outside(child, &sync, &private);
    assert!(!sync.join("big.bin").exists(), "killed before it was done");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&private).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o700, "the private folder is owner-only");

    // The next run into the sync folder removes the leftover from the private folder.
    age(&left);
    let run = alice.run(&["open", "-o", "OneDrive - Gemeente", "in"]).ok();
    assert!(
        !run.stderr.contains("plaintext temporary"),
        "{}",
        run.stderr
    );
    assert!(temps(&private).is_empty(), "{:?}", temps(&private));
    assert!(temps(&sync).is_empty());
    assert!(std::fs::read(sync.join("big.bin")).unwrap() == big);

    // Streaming into the sync folder: the temporary file goes to the private folder too.
    // Standard input is held open, half sent, so the kill comes mid-write.
    let sealed = std::fs::read(alice.path("in/big.bin.kluis")).unwrap();
    let mut child = alice
        .command()
        .args(["open", "-o", "OneDrive - Gemeente/streamed.bin", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&sealed[..sealed.len() / 2]).unwrap();
    let left = kill_once_written_outside(child, &sync, &private);
    drop(stdin);
    assert!(!sync.join("streamed.bin").exists());
    age(&left);
    alice
        .run_file_stdin(
            &["open", "-o", "OneDrive - Gemeente/streamed.bin", "-"],
            &alice.path("in/big.bin.kluis"),
        )
        .ok();
    assert!(temps(&private).is_empty(), "{:?}", temps(&private));
    assert!(std::fs::read(sync.join("streamed.bin")).unwrap() == big);
}

/// Without a usable private folder on the same file system, the temporary file is written
/// beside its output as before, and kluis says so.
#[test]
fn without_a_private_folder_the_temporary_in_the_sync_folder_is_warned_about() {
    let server = Server::start();
    let mut alice = User::logged_in(&server, &server.alice);
    write(&alice.path("in/a.txt"), b"a");
    alice
        .run(&["seal", "--label", "hr", "--remove-original", "in/a.txt"])
        .ok();
    // The cache folder cannot be created: a file is in the way.
    let blocked = alice.home.path().join("blocked");
    write(&blocked, b"not a folder");
    alice.env.push((
        "KLUIS_CACHE_DIR".into(),
        blocked.join("cache").to_string_lossy().into_owned(),
    ));
    let run = alice.run(&["open", "-o", "Dropbox/x", "in"]).ok();
    assert!(
        run.stderr.contains(
            "a plaintext temporary file (.kluis-tmp-…) is written inside the Dropbox sync folder"
        ),
        "{}",
        run.stderr
    );
    assert_eq!(std::fs::read(alice.path("Dropbox/x/a.txt")).unwrap(), b"a");
    // Outside a sync folder nothing is said.
    let run = alice.run(&["open", "-o", "local", "in"]).ok();
    assert!(
        !run.stderr.contains("plaintext temporary"),
        "{}",
        run.stderr
    );
}
