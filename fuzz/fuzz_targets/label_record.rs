#![no_main]
//! kluis-client's label records as the client parses them: through the public
//! `Client::label_record`, against a canned HTTP server on loopback in this process (the
//! record parser itself is crate-private).
//!
//! The first byte picks the mode (modulo 3); the rest is text in which `@1`, `@2`, `@3` are
//! replaced by three fixed public keys, `@B` by the server's base URL and `@T` by the time
//! now (Unix seconds):
//!
//! - 0: the server's answer to `GET /v1/labels/hr`, no disk cache;
//! - 1: the same, with a disk cache that pins versions 1 (`@1`) and 2 (`@2`, current) of
//!   `hr` and has expired, so the answer is checked against the pins and then cached;
//! - 2: the cache file of `hr` itself; the server answers a valid record (version 2).
//!
//! Invariants: no panic; a record accepted is for `hr`, consistent (unique versions, the
//! current version listed as current with its key, at most 64 recovery keys), honours the
//! pins (mode 1), gives slots that follow its policy, and seals a document.
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use kluis_client::{Client, ClientConfig, ClientError, KeyState, LabelRecord};
use kluis_core::{Header, Identity, Metadata, PublicKey, Recipient, Slot, Stanza};
use libfuzzer_sys::fuzz_target;

static KEYS: LazyLock<[PublicKey; 3]> =
    LazyLock::new(|| [1u8, 2, 3].map(|b| Identity::from_secret_bytes([b; 32]).public_key()));
static HOLDER: LazyLock<PublicKey> =
    LazyLock::new(|| Identity::from_secret_bytes([9; 32]).public_key());
/// Keys already shown to be usable for sealing.
static SEALABLE: LazyLock<Mutex<HashSet<PublicKey>>> = LazyLock::new(Mutex::default);
/// What the canned server answers.
static ANSWER: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Setup {
    base: String,
    plain: Client,
    cached: Client,
    cache_file: PathBuf,
}

static SETUP: LazyLock<Setup> = LazyLock::new(|| {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // A fixed pool of server threads, started here: a thread started while an input runs
    // would look like a leak to LeakSanitizer.
    let (tx, rx) = std::sync::mpsc::channel::<TcpStream>();
    let rx = Arc::new(Mutex::new(rx));
    for _ in 0..8 {
        let rx = rx.clone();
        std::thread::spawn(move || {
            loop {
                let Ok(conn) = rx.lock().unwrap().recv() else {
                    return;
                };
                serve(conn);
            }
        });
    }
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let _ = tx.send(conn);
        }
    });
    // tmpfs where there is one: the cache is written with fsync.
    let shm = PathBuf::from("/dev/shm");
    let base = if shm.is_dir() {
        shm
    } else {
        std::env::temp_dir()
    };
    remove_stale(&base, "kluis-fuzz-record-");
    let dir = base.join(format!("kluis-fuzz-record-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = |cache: Option<PathBuf>| {
        let mut c = ClientConfig::new(format!("http://{addr}"));
        c.cache_dir = cache;
        c.max_attempts = 1;
        c.timeout = Duration::from_secs(10);
        c
    };
    let plain = Client::new(config(None)).unwrap();
    let cached = Client::new(config(Some(dir.clone()))).unwrap();
    let base = plain.server().to_owned();
    let digest = ring::digest::digest(&ring::digest::SHA256, base.as_bytes());
    let cache_file = dir
        .join("servers")
        .join(hex::encode(&digest.as_ref()[..16]))
        .join("labels");
    std::fs::create_dir_all(&cache_file).unwrap();
    Setup {
        base,
        plain,
        cached,
        cache_file: cache_file.join("hr.json"),
    }
});

/// Remove what earlier runs of this target left in `base` (statics are not dropped at exit)
/// when their process is gone.
fn remove_stale(base: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(prefix) else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Answer every request on the connection with [`ANSWER`] (keep-alive), until it is closed
/// or idle for a second.
fn serve(conn: TcpStream) {
    let _ = conn.set_nodelay(true);
    // Idle keep-alive connections give their thread back.
    let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut conn = conn;
    loop {
        // A GET: headers only.
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) if line == "\r\n" => break,
                Ok(_) => {}
            }
        }
        let body = ANSWER.lock().unwrap().clone();
        // One write: a head and a body in two segments would wait for a delayed ACK.
        let mut answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        answer.extend_from_slice(&body);
        if conn.write_all(&answer).is_err() {
            return;
        }
    }
}

fn substitute(text: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    text.replace("@1", &KEYS[0].to_string())
        .replace("@2", &KEYS[1].to_string())
        .replace("@3", &KEYS[2].to_string())
        .replace("@B", &SETUP.base)
        .replace("@T", &now.to_string())
}

/// The cache entry mode 1 starts from: versions 1 and 2 pinned, expired long ago.
fn pinned_entry() -> String {
    substitute(
        r#"{"format":1,"server":"@B","fetched_at":1,"max_age":1,
            "record":{"label":"hr","kid":2,"public_key":"@2","double_key":false,"recovery":[],
                      "versions":[{"kid":1,"state":"active","public_key":"@1"},
                                  {"kid":2,"state":"current","public_key":"@2"}],
                      "max_age":1},
            "known_keys":{"1":"@1","2":"@2"}}"#,
    )
}

fn valid_record() -> String {
    substitute(
        r#"{"label":"hr","kid":2,"public_key":"@2","double_key":false,"recovery":[],
            "versions":[{"kid":1,"state":"active","public_key":"@1"},
                        {"kid":2,"state":"current","public_key":"@2"}],"max_age":60}"#,
    )
}

/// What any accepted record must satisfy.
fn check(r: &LabelRecord) {
    assert_eq!(r.label(), "hr");
    assert!(r.recovery.len() <= 64);
    for (i, v) in r.versions.iter().enumerate() {
        assert!(
            r.versions[..i].iter().all(|o| o.kid != v.kid),
            "version {} listed twice",
            v.kid
        );
        if v.kid == r.kid() {
            assert_eq!(v.public_key, *r.key.key());
            assert_eq!(v.state, KeyState::Current);
        }
    }
    match r.slots(None) {
        Ok(slots) => {
            assert!(!r.double_key, "single-key slots for a double-key label");
            assert_eq!(slots.len(), 1 + r.recovery.len());
        }
        Err(e) => assert!(
            r.double_key && matches!(e, ClientError::HolderKeyNeeded { .. }),
            "{e}"
        ),
    }
    let slots = r.slots(Some(&HOLDER)).expect("slots with a holder key");
    assert_eq!(slots.len(), 1 + r.recovery.len());
    // Sealing costs two X25519 operations per recipient (slow under instrumentation): a
    // whole document when the record is small, else each key once per process.
    if r.recovery.len() <= 2 {
        let sealed = kluis_core::seal(&slots, &Metadata::default(), b"")
            .expect("an accepted record seals a document");
        let header = Header::parse(&sealed).unwrap();
        match &header.slots()[0][0] {
            Stanza::Org(o) => assert_eq!((o.label(), o.kid()), ("hr", r.kid())),
            other => panic!("first stanza is not the label's: {other:?}"),
        }
    } else {
        let mut sealable = SEALABLE.lock().unwrap();
        for key in std::iter::once(r.key.key()).chain(&r.recovery) {
            if sealable.insert(*key) {
                let slot = Slot::single(Recipient::Key(*key));
                kluis_core::seal(&[slot], &Metadata::default(), b"")
                    .expect("an accepted key can be sealed to");
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let text = substitute(text);
    let setup = &*SETUP;
    let result = match mode % 3 {
        0 => {
            *ANSWER.lock().unwrap() = text.into_bytes();
            setup.plain.label_record("hr")
        }
        1 => {
            std::fs::write(&setup.cache_file, pinned_entry()).unwrap();
            *ANSWER.lock().unwrap() = text.into_bytes();
            setup.cached.label_record("hr")
        }
        _ => {
            std::fs::write(&setup.cache_file, text).unwrap();
            *ANSWER.lock().unwrap() = valid_record().into_bytes();
            setup.cached.label_record("hr")
        }
    };
    let Ok(r) = result else {
        return;
    };
    check(&r);
    if mode % 3 == 1 {
        // The pins hold: versions 1 and 2 keep their keys, and the current version never
        // goes back.
        assert!(r.kid() >= 2, "rolled back to version {}", r.kid());
        let offered = std::iter::once((r.kid(), *r.key.key()))
            .chain(r.versions.iter().map(|v| (v.kid, v.public_key)));
        for (kid, key) in offered {
            if (1..=2).contains(&kid) {
                assert_eq!(key, KEYS[kid as usize - 1], "pinned key of version {kid}");
            }
        }
        // What was cached is what was accepted, and is read back on the next request.
        if !r.stale {
            let again = setup
                .cached
                .label_record("hr")
                .expect("cached record reads back");
            assert_eq!(again.kid(), r.kid());
            assert_eq!(again.key.key(), r.key.key());
        }
    }
});
