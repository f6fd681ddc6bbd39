//! Secrets never leak from `kluis`: its standard output and error (successes and every kind
//! of failure, human and `--json`), its configuration and cache folders and the documents it
//! writes never contain an API token, an identity passphrase, the plaintext (except where it
//! was asked to write the plaintext) or a file key; the identity file never contains its
//! X25519 secret in the clear, in hex or in base64.

mod common;

use std::path::{Path, PathBuf};

use common::{Run, Server, User, write};
use kluis_client::{Client, ClientConfig, Token};
use kluis_core::{Header, Identity, PublicKey, Share, Unwrap};

const MARKER: &[u8] = b"PLAINTEXT-MARKER-c41d9e";
const PASS: &str = "correct horse battery staple 5e2b";
const WRONG: &str = "battery horse 09af";
const BOGUS: &str = "kluis_bogus_token_that_the_server_does_not_know_3d7c";

fn hex(b: &[u8], upper: bool) -> String {
    let digits: &[u8; 16] = if upper {
        b"0123456789ABCDEF"
    } else {
        b"0123456789abcdef"
    };
    b.iter()
        .flat_map(|x| [digits[usize::from(x >> 4)], digits[usize::from(x & 15)]])
        .map(char::from)
        .collect()
}

fn base64(b: &[u8], url: bool, pad: bool) -> String {
    let table: &[u8] = if url {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    } else {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    };
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &x)| n | u32::from(x) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(table[(n >> (18 - 6 * i) & 63) as usize]));
        }
        if pad {
            out.push_str(&"=".repeat(3 - chunk.len()));
        }
    }
    out
}

/// Every way a secret may be written down.
fn encodings(secret: &[u8]) -> Vec<Vec<u8>> {
    let mut v = vec![
        secret.to_vec(),
        hex(secret, false).into_bytes(),
        hex(secret, true).into_bytes(),
    ];
    for url in [false, true] {
        for pad in [false, true] {
            v.push(base64(secret, url, pad).into_bytes());
        }
    }
    v
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Named secrets, each in every encoding.
#[derive(Default)]
struct Secrets(Vec<(String, Vec<Vec<u8>>)>);

impl Secrets {
    fn add(&mut self, name: &str, secret: &[u8]) {
        self.0.push((name.to_owned(), encodings(secret)));
    }

    fn assert_absent(&self, place: &str, data: &[u8], except: &[&str]) {
        for (name, forms) in &self.0 {
            if except.contains(&name.as_str()) {
                continue;
            }
            for f in forms {
                assert!(
                    !contains(data, f),
                    "{name} leaked into {place}: {:?}",
                    String::from_utf8_lossy(data)
                );
            }
        }
    }
}

/// Every run of `kluis`, with whether its standard output is meant to be the plaintext.
#[derive(Default)]
struct Runs(Vec<(String, Run, bool)>);

impl Runs {
    /// Record a run; `plaintext_out` when its standard output is a document's content.
    fn add(&mut self, what: &str, run: Run, plaintext_out: bool) -> &Run {
        self.0.push((what.to_owned(), run, plaintext_out));
        &self.0.last().unwrap().1
    }

    fn ok(&mut self, user: &User, args: &[&str]) -> &Run {
        let run = user.run(args).ok();
        self.add(&format!("{args:?}"), run, false)
    }

    fn fails(&mut self, user: &User, args: &[&str], code: i32, text: &str) -> &Run {
        let run = user.run(args).fails(code, text);
        self.add(&format!("{args:?}"), run, false)
    }

    /// Record a run that must fail, whatever its exit code.
    fn failed(&mut self, user: &User, args: &[&str]) -> &Run {
        let run = user.run(args);
        assert_ne!(run.code, 0, "{args:?} succeeded");
        self.add(&format!("{args:?}"), run, false)
    }
}

/// Every file below `dir` with its content.
fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    common::tree(dir)
        .into_iter()
        .map(|rel| {
            let p = dir.join(rel);
            let data = std::fs::read(&p).unwrap();
            (p, data)
        })
        .collect()
}

/// The file key of a sealed document, unwrapped directly through the key server with
/// `token` (and `identity` for double key).
fn file_key(server: &Server, token: &str, identity: Option<&Identity>, doc: &Path) -> Vec<u8> {
    let mut config = ClientConfig::new(&server.url);
    config.token = Some(Token::new(token).unwrap());
    let client = Client::new(config).unwrap();
    let header = Header::parse(&std::fs::read(doc).unwrap()).unwrap();
    let mut keys: Vec<&dyn Unwrap> = vec![&client];
    keys.extend(identity.map(|i| i as &dyn Unwrap));
    let key = header.unlock(&keys).unwrap();
    Share::from(&key).expose_secret().to_vec()
}

/// Every 32-byte string in `data` (raw, and decoded from every hex and base64 run in it)
/// whose X25519 public key is `public`, named by how it was written.
fn x25519_secret_in(data: &[u8], public: &PublicKey) -> Option<String> {
    let is_secret = |c: &[u8]| {
        c.len() == 32 && Identity::from_secret_bytes(c.try_into().unwrap()).public_key() == *public
    };
    let windows = |bytes: &[u8]| bytes.windows(32).any(is_secret);
    if windows(data) {
        return Some("raw".into());
    }
    let text = String::from_utf8_lossy(data);
    let runs = |alphabet: &dyn Fn(char) -> bool| -> Vec<String> {
        text.split(|c: char| !alphabet(c))
            .filter(|r| r.len() >= 43)
            .map(str::to_owned)
            .collect()
    };
    for run in runs(&|c| c.is_ascii_hexdigit()) {
        for start in 0..2 {
            let digits: Vec<u8> = run.bytes().skip(start).collect();
            let bytes: Vec<u8> = digits
                .chunks_exact(2)
                .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
                .collect();
            if windows(&bytes) {
                return Some(format!("hex in {run}"));
            }
        }
    }
    let b64 = |c: char| c.is_ascii_alphanumeric() || "+/-_=".contains(c);
    for run in runs(&b64) {
        let run = run.trim_end_matches('=');
        // Every alignment of the run: a secret may start at any of four characters.
        for start in 0..4 {
            if windows(&decode_base64(&run[start.min(run.len())..])) {
                return Some(format!("base64 in {run}"));
            }
        }
    }
    None
}

/// Lenient base64 (either alphabet, no padding): as many whole bytes as the text gives.
fn decode_base64(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' | b'-' => Some(62),
        b'/' | b'_' => Some(63),
        _ => None,
    };
    let (mut out, mut acc, mut bits) = (Vec::new(), 0u32, 0);
    for v in s.bytes().filter_map(val) {
        acc = acc << 6 | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

#[test]
fn tokens_passphrases_plaintext_and_file_keys_appear_in_no_output_or_file() {
    let server = Server::start();
    let mut secrets = Secrets::default();
    secrets.add("alice's token", server.alice.as_bytes());
    secrets.add("bob's token", server.bob.as_bytes());
    secrets.add("a token the server refused", BOGUS.as_bytes());
    secrets.add("the identity passphrase", PASS.as_bytes());
    secrets.add("a wrong passphrase", WRONG.as_bytes());
    secrets.add("the plaintext", MARKER);
    let mut runs = Runs::default();

    // Logging in, right and wrong.
    let mut alice = User::new();
    alice.env.push(("PASS".into(), PASS.into()));
    alice.env.push(("WRONG".into(), WRONG.into()));
    let run = alice
        .run_in(
            &["--server", &server.url, "login"],
            Some(server.alice.as_bytes()),
        )
        .ok();
    runs.add("login", run, false);
    let carol = User::new();
    let run = carol
        .run_in(&["--server", &server.url, "login"], Some(BOGUS.as_bytes()))
        .fails(4, "does not accept this token");
    runs.add("login with a bogus token", run, false);
    for json in [false, true] {
        let j = |args: &[&'static str]| -> Vec<&'static str> {
            if json {
                [&["--json"][..], args].concat()
            } else {
                args.to_vec()
            }
        };
        runs.ok(&alice, &j(&["config", "show"]));
        runs.ok(&alice, &j(&["status"]));
        runs.ok(&alice, &j(&["labels"]));
    }

    // A holder identity, then documents under a single-key and a double-key label.
    runs.ok(&alice, &["keygen", "--passphrase-env", "PASS"]);
    let identity_path = alice.config_dir().join("identity.key");
    runs.ok(
        &alice,
        &["keygen", "--public", identity_path.to_str().unwrap()],
    );
    let identity = kluis_file::read_identity_file(&identity_path, PASS.as_bytes()).unwrap();
    write(&alice.path("secret.txt"), &[MARKER, b" hr"].concat());
    write(&alice.path("dossier.txt"), &[MARKER, b" medical"].concat());
    write(&alice.path("old.txt"), &[MARKER, b" old"].concat());
    runs.ok(&alice, &["seal", "--label", "hr", "secret.txt", "old.txt"]);
    runs.ok(
        &alice,
        &["--json", "seal", "--label", "medical", "dossier.txt"],
    );
    let run = alice.run_in(&["seal", "--label", "hr"], Some(MARKER)).ok();
    let piped = run.stdout.clone();
    runs.add("seal from standard input", run, false);
    write(&alice.path("piped.kluis"), &piped);
    for doc in ["secret.txt.kluis", "dossier.txt.kluis"] {
        runs.ok(&alice, &["inspect", doc]);
        runs.ok(&alice, &["--json", "inspect", doc]);
    }
    // The file keys, straight from the key server (alice may open both labels).
    for (doc, id) in [
        ("secret.txt.kluis", None),
        ("old.txt.kluis", None),
        ("piped.kluis", None),
        ("dossier.txt.kluis", Some(&identity)),
    ] {
        let key = file_key(&server, &server.alice, id, &alice.path(doc));
        secrets.add(&format!("the file key of {doc}"), &key);
    }

    // Opening: to files, and to standard output (where the plaintext belongs).
    runs.ok(&alice, &["open", "-o", "out", "secret.txt.kluis"]);
    runs.ok(
        &alice,
        &[
            "--json",
            "open",
            "--passphrase-env",
            "PASS",
            "-o",
            "out",
            "dossier.txt.kluis",
        ],
    );
    let run = alice
        .run_file_stdin(&["open"], &alice.path("secret.txt.kluis"))
        .ok();
    assert!(contains(&run.stdout, MARKER), "the plaintext is on stdout");
    runs.add("open to standard output", run, true);
    let run = alice.run_in(&["open"], Some(&piped)).ok();
    runs.add("open from standard input", run, true);
    // A wrong passphrase, a missing identity passphrase source.
    runs.fails(
        &alice,
        &[
            "open",
            "--passphrase-env",
            "WRONG",
            "-o",
            "o2",
            "dossier.txt.kluis",
        ],
        4,
        "wrong passphrase",
    );
    runs.fails(
        &alice,
        &[
            "--json",
            "open",
            "--passphrase-env",
            "WRONG",
            "-o",
            "o2",
            "dossier.txt.kluis",
        ],
        4,
        "",
    );
    // Malformed documents: garbage, truncated, one byte flipped in the header and in the
    // payload.
    let sealed = std::fs::read(alice.path("secret.txt.kluis")).unwrap();
    write(
        &alice.path("garbage.kluis"),
        b"KLUIS\0 but then nothing sensible",
    );
    write(&alice.path("truncated.kluis"), &sealed[..sealed.len() - 20]);
    let mut flipped = sealed.clone();
    flipped[40] ^= 1;
    write(&alice.path("header-flip.kluis"), &flipped);
    let mut flipped = sealed.clone();
    let n = flipped.len();
    flipped[n - 5] ^= 1;
    write(&alice.path("payload-flip.kluis"), &flipped);
    for doc in [
        "garbage.kluis",
        "truncated.kluis",
        "header-flip.kluis",
        "payload-flip.kluis",
        "missing.kluis",
    ] {
        for json in [false, true] {
            let mut args = vec!["open", "-o", "bad", doc];
            if json {
                args.insert(0, "--json");
            }
            let run = alice.run(&args);
            assert_ne!(run.code, 0, "{doc}: {}", run.stderr);
            runs.add(&format!("{args:?}"), run, false);
            let run = alice.run(&["inspect", doc]);
            runs.add(&format!("inspect {doc}"), run, false);
        }
        if !alice.path(doc).exists() {
            continue;
        }
        let run = alice.run_file_stdin(&["open"], &alice.path(doc));
        assert_ne!(run.code, 0);
        // A damaged payload may yield its authenticated chunks before the error; that is
        // the plaintext, on the output asked for.
        runs.add(&format!("open {doc} to stdout"), run, true);
    }
    runs.failed(&alice, &["seal", "--label", "nosuch", "secret.txt"]);
    runs.failed(&alice, &["seal", "--label", "../x", "secret.txt"]);
    runs.failed(
        &alice,
        &["seal", "--label", "hr", "--to", "kluis1xyz", "secret.txt"],
    );
    // Bob may open neither label.
    let mut bob = User::new();
    bob.env.push(("PASS".into(), PASS.into()));
    let run = bob
        .run_in(
            &["--server", &server.url, "login"],
            Some(server.bob.as_bytes()),
        )
        .ok();
    runs.add("bob's login", run, false);
    std::fs::copy(alice.path("secret.txt.kluis"), bob.path("s.kluis")).unwrap();
    runs.fails(&bob, &["open", "s.kluis"], 5, "`hr`");
    runs.fails(&bob, &["--json", "open", "s.kluis"], 5, "");

    // Audit, re-key, a destroyed version.
    runs.ok(&alice, &["audit"]);
    runs.ok(&alice, &["--json", "audit"]);
    server.admin(&["label", "rotate", "hr"]);
    runs.ok(&alice, &["rekey", "secret.txt.kluis"]);
    runs.ok(&alice, &["--json", "rekey", "piped.kluis"]);
    server.admin(&["label", "destroy", "hr", "1", "--confirm", "hr"]);
    runs.fails(
        &alice,
        &["open", "-o", "o3", "old.txt.kluis"],
        6,
        "destroyed",
    );
    runs.fails(
        &alice,
        &["--json", "open", "-o", "o3", "old.txt.kluis"],
        6,
        "",
    );

    // A revoked token.
    server.admin(&["token", "revoke", &server.alice_id]);
    runs.fails(
        &alice,
        &["open", "-o", "o4", "secret.txt.kluis"],
        4,
        "kluis login",
    );
    runs.fails(
        &alice,
        &["--json", "open", "-o", "o4", "secret.txt.kluis"],
        4,
        "",
    );
    runs.fails(&alice, &["audit"], 4, "kluis login");
    runs.fails(&alice, &["--json", "audit"], 4, "");
    let run = alice.run(&["status"]);
    runs.add("status with a revoked token", run, false);
    // The server gone.
    let mut server = server;
    let url = server.url.clone();
    server.stop();
    runs.fails(&alice, &["open", "-o", "o5", "secret.txt.kluis"], 3, &url);
    runs.ok(&alice, &["logout"]);

    // Nothing printed holds a secret (standard output of a plaintext run may hold the
    // plaintext, and only that).
    for (what, run, plaintext_out) in &runs.0 {
        secrets.assert_absent(
            &format!("the standard error of {what}"),
            run.stderr.as_bytes(),
            &[],
        );
        let except: &[&str] = if *plaintext_out {
            &["the plaintext"]
        } else {
            &[]
        };
        secrets.assert_absent(
            &format!("the standard output of {what}"),
            &run.stdout,
            except,
        );
    }
    // Nothing written holds one: the configuration folder (the token file excepted: it is
    // the token, mode 0600, until `logout`), the cache, the sealed documents. Opened files
    // hold the plaintext by definition.
    let opened =
        |p: &Path| p.extension().is_none_or(|e| e != "kluis") && p.starts_with(alice.work());
    for dir in [
        alice.config_dir(),
        alice.cache_dir(),
        alice.work(),
        bob.config_dir(),
    ] {
        for (path, data) in files(&dir) {
            let mut except = vec![];
            if opened(&path) {
                except.push("the plaintext");
            }
            if path == bob.config_dir().join("token") {
                except.push("bob's token");
            }
            secrets.assert_absent(&path.display().to_string(), &data, &except);
        }
    }
    assert!(
        !alice.config_dir().join("token").exists(),
        "logout removed the token"
    );

    // The identity file holds its X25519 secret only sealed under the passphrase.
    let text = std::fs::read(&identity_path).unwrap();
    assert_eq!(
        x25519_secret_in(&text, &identity.public_key()),
        None,
        "the identity file holds its secret key"
    );
    // (The check finds a secret when there is one: a file with it in hex.)
    let probe = [0x42u8; 32];
    let probe_public = Identity::from_secret_bytes(probe).public_key();
    for written in [hex(&probe, false), base64(&probe, false, true)] {
        let file = format!("# public key: {probe_public}\nSECRET {written}\n");
        assert!(x25519_secret_in(file.as_bytes(), &probe_public).is_some());
    }
    assert!(x25519_secret_in(&[b"x".as_slice(), &probe].concat(), &probe_public).is_some());
}
