//! Issue 17: `kluis open` into a cloud sync folder wrote its plaintext temporary file
//! (`.kluis-tmp-*`) inside the sync folder, where the sync client may upload it, and a
//! `kill -9` left a partial plaintext copy there. It must never: not when the cache folder is
//! on another file system, and not when the sync folder is not recognised by its name. On
//! Linux the temporary file of a plaintext output has no name at all (`O_TMPFILE`) until the
//! finished, synced file is linked under its final name. The real `kluis` binary against a
//! real `kluis-server` process, killed with SIGKILL mid-write.
#![cfg(target_os = "linux")]

mod common;

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{Server, User, write};

/// Every `.kluis-tmp-*` file in `dir` and below it.
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

/// Every file in `dir` and below it.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            found.extend(files(&e.path()));
        } else {
            found.push(e.path());
        }
    }
    found
}

/// The bytes written so far to a file `pid` holds open in `dir` that has no name (Linux shows
/// its link as `DIR/#INODE (deleted)`), if there is one.
fn unnamed_written(pid: u32, dir: &Path) -> Option<u64> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    fds.flatten()
        .filter(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|target| {
                target.starts_with(dir) && target.to_string_lossy().ends_with(" (deleted)")
            })
        })
        .filter_map(|fd| std::fs::metadata(fd.path()).ok())
        .map(|m| m.len())
        .max()
}

/// Poll until `child` has written part of its output, as a file without a name in `out_dir`,
/// asserting at every step that no named temporary file or partial output is in `sync` and
/// that nothing is in `private`; then SIGKILL it, and check the same again.
fn kill_mid_write(mut child: Child, out_dir: &Path, sync: &Path, private: &Path, total: u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let before: Vec<PathBuf> = files(sync);
    loop {
        let named = temps(sync);
        assert!(
            named.is_empty(),
            "plaintext temporary in the sync folder: {named:?}"
        );
        assert_eq!(
            files(sync),
            before,
            "a partial output appeared in the sync folder"
        );
        assert!(files(private).is_empty(), "{:?}", files(private));
        if unnamed_written(child.id(), out_dir).is_some_and(|n| n > 0 && n < total) {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err);
            panic!("kluis ended ({status}) before it was seen writing: {err}");
        }
        assert!(Instant::now() < deadline, "kluis was never seen writing");
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(temps(sync).is_empty(), "{:?}", temps(sync));
    assert_eq!(
        files(sync),
        before,
        "a partial output was left in the sync folder"
    );
    assert!(files(private).is_empty(), "{:?}", files(private));
}

/// A cache folder on another file system than `near`: in /dev/shm (a tmpfs) when that is one.
/// `None` (the caller skips, loudly) when no such folder can be had.
fn cache_on_another_file_system(near: &Path) -> Option<tempfile::TempDir> {
    let dev = std::fs::metadata(near).ok()?.dev();
    let dir = tempfile::tempdir_in("/dev/shm").ok()?;
    (std::fs::metadata(dir.path()).ok()?.dev() != dev).then_some(dir)
}

/// A large document sealed to `hr` in `in/big.bin.kluis`; returns the plaintext.
fn big_document(alice: &User) -> Vec<u8> {
    let big: Vec<u8> = (0..96u32 << 20).map(|i| (i % 251) as u8).collect();
    write(&alice.path("in/big.bin"), &big);
    alice
        .run(&["seal", "--label", "hr", "--remove-original", "in/big.bin"])
        .ok();
    big
}

fn open_in_background(alice: &User, args: &[&str]) -> Child {
    alice
        .command()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// A OneDrive folder, and the cache folder (the private folder for temporary files) on
/// another file system, so a temporary file there could not be renamed into place: before,
/// the temporary file then went into the sync folder (with a warning). A folder open and a
/// stream, each killed mid-write: no plaintext temporary file or partial output is ever in
/// the sync folder, and none is left anywhere.
#[test]
fn opening_into_a_sync_folder_with_the_cache_on_another_file_system_leaves_nothing() {
    let server = Server::start();
    let mut alice = User::logged_in(&server, &server.alice);
    let Some(cache) = cache_on_another_file_system(alice.home.path()) else {
        eprintln!("SKIPPED: /dev/shm is missing or on the same file system as the test folder");
        return;
    };
    alice.env.push((
        "KLUIS_CACHE_DIR".into(),
        cache.path().to_string_lossy().into_owned(),
    ));
    let sync = alice.path("OneDrive - Gemeente");
    std::fs::create_dir_all(&sync).unwrap();
    let big = big_document(&alice);

    let child = open_in_background(&alice, &["open", "-o", "OneDrive - Gemeente", "in"]);
    kill_mid_write(
        child,
        &sync,
        &sync,
        &cache.path().join("tmp"),
        big.len() as u64,
    );
    // The next run writes it, without a word about temporary files.
    let run = alice.run(&["open", "-o", "OneDrive - Gemeente", "in"]).ok();
    assert!(!run.stderr.contains("temporary"), "{}", run.stderr);
    assert!(std::fs::read(sync.join("big.bin")).unwrap() == big);
    assert!(temps(&sync).is_empty());

    // Streaming into the sync folder: standard input held open, half sent.
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
    kill_mid_write(
        child,
        &sync,
        &sync,
        &cache.path().join("tmp"),
        big.len() as u64,
    );
    drop(stdin);
    alice
        .run_file_stdin(
            &["open", "-o", "OneDrive - Gemeente/streamed.bin", "-"],
            &alice.path("in/big.bin.kluis"),
        )
        .ok();
    assert!(std::fs::read(sync.join("streamed.bin")).unwrap() == big);
    assert!(temps(&sync).is_empty());
    assert!(files(&cache.path().join("tmp")).is_empty());
}

/// A sync folder kluis does not recognise by its name (a sync client's folder renamed, or
/// one kluis does not know): opening into it, killed mid-write, leaves no plaintext temporary
/// file there either; the private cache folder is not used for it.
#[test]
fn a_sync_folder_not_recognised_by_name_gets_no_plaintext_temporary_either() {
    let server = Server::start();
    let alice = User::logged_in(&server, &server.alice);
    let sync = alice.path("Werkmap gemeente");
    std::fs::create_dir_all(sync.join("sub")).unwrap();
    assert_eq!(
        kluis_file::sync_folder(&sync),
        None,
        "not recognised by name"
    );
    let big = big_document(&alice);

    let child = open_in_background(&alice, &["open", "-o", "Werkmap gemeente/sub", "in"]);
    kill_mid_write(
        child,
        &sync.join("sub"),
        &sync,
        &alice.cache_dir().join("tmp"),
        big.len() as u64,
    );
    alice
        .run(&["open", "-o", "Werkmap gemeente/sub", "in"])
        .ok();
    assert!(std::fs::read(sync.join("sub/big.bin")).unwrap() == big);
    assert!(temps(&sync).is_empty());
    // The finished file is private (0600), as before.
    let mode = std::fs::metadata(sync.join("sub/big.bin")).unwrap().mode();
    assert_eq!(mode & 0o777, 0o600);
}
