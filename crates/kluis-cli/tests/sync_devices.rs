//! Two devices, two `kluis sync --watch` processes against a real key server: each with its
//! own plain folder, configuration and state, and its own sealed folder, joined by a stand-in
//! sync client that copies with delays, in pieces and through its own temporary names.
//! Random operations on both sides at once and `kill -9` of either process at random points
//! (then a restart); afterwards both plain folders must converge, hold only versions that were
//! written (the last one of each path present unless deleted or renamed later), and neither
//! sealed folder may hold a plaintext byte or name.

mod common;

#[path = "../../kluis-sync/tests/common/sync_client.rs"]
mod sync_client;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{Server, User};
use proptest::prelude::*;
use sync_client::SyncClient;

const PATHS: [&str; 4] = [
    "PLAINNAME-a.txt",
    "dir/PLAINNAME-b.doc",
    "PLAINNAME-c",
    "dir/sub/PLAINNAME-d.x",
];

#[derive(Clone, Debug)]
enum Op {
    Write(usize, usize),
    Delete(usize, usize),
    Rename(usize, usize, usize),
    Client,
    Wait(u64),
    Kill(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..2usize, 0..PATHS.len()).prop_map(|(d, p)| Op::Write(d, p)),
        1 => (0..2usize, 0..PATHS.len()).prop_map(|(d, p)| Op::Delete(d, p)),
        1 => (0..2usize, 0..PATHS.len(), 0..PATHS.len()).prop_map(|(d, a, b)| Op::Rename(d, a, b)),
        3 => Just(Op::Client),
        2 => (0..800u64).prop_map(Op::Wait),
        1 => (0..2usize).prop_map(Op::Kill),
    ]
}

/// Plain files of a folder, without kluis's temporaries.
fn plain_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    common::tree(dir)
        .into_iter()
        .filter(|n| !n.contains(".kluis-sync-tmp-"))
        .filter_map(|n| std::fs::read(dir.join(&n)).ok().map(|d| (n, d)))
        .collect()
}

struct Device {
    user: User,
    sealed: PathBuf,
    child: Option<Child>,
}

impl Device {
    fn plain(&self) -> PathBuf {
        self.user.path("plain")
    }

    fn start(&mut self) {
        let child = self
            .user
            .command()
            .args(["sync", "plain"])
            .arg(&self.sealed)
            .args([
                "--label",
                "hr",
                "--hide-names",
                "--watch",
                "--settle-ms",
                "200",
                // Random deletions can empty a PLAIN folder, which the guard (tested in
                // kluis-sync's tests) takes for an unmounted drive and stops for.
                "--allow-mass-delete",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.kill();
    }
}

fn run_case(server: &Server, ops: &[Op]) {
    let clouds = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut devs: Vec<Device> = clouds
        .iter()
        .map(|c| {
            let user = User::logged_in(server, &server.alice);
            std::fs::create_dir_all(user.path("plain")).unwrap();
            Device {
                user,
                sealed: c.path().to_owned(),
                child: None,
            }
        })
        .collect();
    for d in &mut devs {
        d.start();
    }
    let mut client = SyncClient::default();
    client.delay = Duration::from_millis(5);
    let mut n = 0u64;
    let mut written: Vec<Vec<u8>> = Vec::new();
    let mut last: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
    for o in ops {
        match *o {
            Op::Write(d, p) => {
                n += 1;
                let data = format!("SECRET version {n} of {}", PATHS[p]).into_bytes();
                let path = devs[d].plain().join(PATHS[p]);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, &data).unwrap();
                written.push(data.clone());
                last.insert(PATHS[p].into(), Some(data));
            }
            Op::Delete(d, p) => {
                if std::fs::remove_file(devs[d].plain().join(PATHS[p])).is_ok() {
                    last.insert(PATHS[p].into(), None);
                }
            }
            Op::Rename(d, a, b) => {
                let plain = devs[d].plain();
                let (from, to) = (plain.join(PATHS[a]), plain.join(PATHS[b]));
                if a != b && from.is_file() && !to.exists() {
                    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
                    std::fs::rename(&from, &to).unwrap();
                    let data = std::fs::read(&to).unwrap();
                    last.insert(PATHS[a].into(), None);
                    last.insert(PATHS[b].into(), Some(data));
                }
            }
            Op::Client => {
                client.sync(clouds[0].path(), clouds[1].path());
            }
            Op::Wait(ms) => std::thread::sleep(Duration::from_millis(ms)),
            Op::Kill(d) => {
                devs[d].kill();
                devs[d].start();
            }
        }
    }
    // Let everything settle: the client keeps copying until both devices and it are quiet.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut quiet_since: Option<Instant> = None;
    let mut seen = (Vec::new(), Vec::new());
    while Instant::now() < deadline {
        let moved = client.sync(clouds[0].path(), clouds[1].path());
        let now = (plain_files(&devs[0].plain()), plain_files(&devs[1].plain()));
        if moved || now != seen || now.0 != now.1 {
            quiet_since = None;
        } else if quiet_since.is_none() {
            quiet_since = Some(Instant::now());
        }
        seen = now;
        if quiet_since.is_some_and(|t| t.elapsed() > Duration::from_secs(3)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let (a, b) = seen;
    assert_eq!(a, b, "the two devices did not converge");
    for (name, data) in &a {
        assert!(written.contains(data), "{name} holds content never written");
    }
    for (path, v) in &last {
        if let Some(v) = v {
            assert!(
                a.iter().any(|(_, d)| d == v),
                "the last version of {path} was lost"
            );
        }
    }
    for c in &clouds {
        for f in common::tree(c.path()) {
            assert!(
                !f.contains("PLAINNAME"),
                "a sealed-side name holds plaintext: {f}"
            );
            let data = std::fs::read(c.path().join(&f)).unwrap();
            assert!(
                !data.windows(6).any(|w| w == b"SECRET"),
                "{f} holds plaintext"
            );
        }
    }
}

proptest! {
    // Each case runs two processes for several seconds: few cases, so CI stays fast on two
    // cores; kluis-sync's in-process property test covers many more sequences.
    #![proptest_config(ProptestConfig { cases: 4, failure_persistence: None, max_shrink_iters: 8, ..ProptestConfig::default() })]

    #[test]
    fn two_watching_devices_converge_through_a_sync_client(ops in proptest::collection::vec(op(), 1..25)) {
        let server = Server::start();
        run_case(&server, &ops);
    }
}
