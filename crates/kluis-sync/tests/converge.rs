//! Property test: two devices, each with its own plain folder, state and sealed copy, joined
//! by a stand-in sync client; random operations on both sides at once, and restarts of
//! either side at random points (a run whose journal was lost or not yet written). Checks
//! that both converge, that no content appears that was never written, that the last version
//! written to a path survives (under its name or as a conflict copy) unless it was deleted or
//! renamed afterwards, and that the sealed folders never hold a plaintext byte or name.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use common::{Device, SyncClient, TestKeys, assert_no_leak, files};
use proptest::prelude::*;

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
    Sync(usize),
    Client,
    /// Restart a device, losing its journal's last state (kill -9 before it was written).
    Kill(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..2usize, 0..PATHS.len()).prop_map(|(d, p)| Op::Write(d, p)),
        1 => (0..2usize, 0..PATHS.len()).prop_map(|(d, p)| Op::Delete(d, p)),
        1 => (0..2usize, 0..PATHS.len(), 0..PATHS.len()).prop_map(|(d, a, b)| Op::Rename(d, a, b)),
        3 => (0..2usize).prop_map(Op::Sync),
        3 => Just(Op::Client),
        1 => (0..2usize).prop_map(Op::Kill),
    ]
}

struct World {
    keys: TestKeys,
    _clouds: [tempfile::TempDir; 2],
    devs: [Device; 2],
    client: SyncClient,
    n: u64,
    /// Every content ever written.
    written: Vec<Vec<u8>>,
    /// Per path: the last content written anywhere, or None after a delete or rename away.
    last: BTreeMap<String, Option<Vec<u8>>>,
    clock: SystemTime,
    last_failed: [Vec<(String, String)>; 2],
}

impl World {
    fn new(hide: bool) -> World {
        let clouds = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let devs = [
            Device::new(clouds[0].path(), hide),
            Device::new(clouds[1].path(), hide),
        ];
        let mut w = World {
            keys: TestKeys::new(),
            _clouds: clouds,
            devs,
            client: SyncClient::default(),
            n: 0,
            written: Vec::new(),
            last: BTreeMap::new(),
            clock: SystemTime::now() - Duration::from_secs(100_000),
            last_failed: [Vec::new(), Vec::new()],
        };
        for d in &mut w.devs {
            let mut o = d.options();
            o.allow_mass_delete = true;
            d.syncer = Some(kluis_sync::Syncer::new(&o).unwrap());
        }
        w
    }

    /// Every write gets its own modification time (a real run waits `settle` instead, so
    /// that a second write within the file system's timestamp granularity is not missed).
    fn touch(&mut self, path: &std::path::Path) {
        self.clock += Duration::from_secs(1);
        let f = std::fs::File::options().write(true).open(path).unwrap();
        f.set_modified(self.clock).unwrap();
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Write(d, p) => {
                self.n += 1;
                let data = format!("SECRET version {} of {}", self.n, PATHS[p]).into_bytes();
                self.devs[d].write(PATHS[p], &data);
                let path = self.devs[d].plain().join(PATHS[p]);
                self.touch(&path);
                self.written.push(data.clone());
                self.last.insert(PATHS[p].into(), Some(data));
            }
            Op::Delete(d, p) => {
                if std::fs::remove_file(self.devs[d].plain().join(PATHS[p])).is_ok() {
                    self.last.insert(PATHS[p].into(), None);
                }
            }
            Op::Rename(d, a, b) => {
                let plain = self.devs[d].plain();
                let (from, to) = (plain.join(PATHS[a]), plain.join(PATHS[b]));
                if a != b && from.is_file() && !to.exists() {
                    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
                    std::fs::rename(&from, &to).unwrap();
                    let data = std::fs::read(&to).unwrap();
                    self.last.insert(PATHS[a].into(), None);
                    self.last.insert(PATHS[b].into(), Some(data));
                }
            }
            Op::Sync(d) => {
                // Transient failures are fine here (another device's folder key, a half
                // merged folder); what is left after settling is checked.
                let r = self.devs[d].sync(&self.keys);
                self.last_failed[d] = r.failed;
            }
            Op::Client => {
                let (x, y) = (
                    self._clouds[0].path().to_owned(),
                    self._clouds[1].path().to_owned(),
                );
                self.client.sync(&x, &y);
            }
            Op::Kill(d) => {
                let dev = &mut self.devs[d];
                dev.restart();
                // Lose the journal now and then: every step since is as if never recorded.
                if self.n % 2 == 0 {
                    for e in std::fs::read_dir(dev.home.path().join("state")).unwrap() {
                        let _ = std::fs::remove_file(e.unwrap().path().join("journal.json"));
                    }
                }
                let mut o = dev.options();
                o.allow_mass_delete = true;
                dev.syncer = Some(kluis_sync::Syncer::new(&o).unwrap());
            }
        }
    }

    fn settle(&mut self) {
        for _ in 0..6 {
            self.apply(&Op::Sync(0));
            self.apply(&Op::Client);
            self.apply(&Op::Sync(1));
            self.apply(&Op::Client);
        }
    }

    fn check(&self) {
        let a = self.devs[0].files();
        let b = self.devs[1].files();
        assert_eq!(a, b, "the two devices did not converge");
        assert!(
            self.last_failed.iter().all(|f| f.is_empty()),
            "failures left: {:?}",
            self.last_failed
        );
        for (name, data) in &a {
            assert!(!name.contains(".kluis-sync-tmp-"), "temporary left: {name}");
            assert!(
                self.written.contains(data),
                "{name} holds content that was never written"
            );
        }
        for (path, last) in &self.last {
            if let Some(v) = last {
                assert!(
                    a.iter().any(|(_, d)| d == v),
                    "the last version of {path} was lost: {a:?}"
                );
            }
        }
        for c in &self._clouds {
            assert_no_leak(c.path(), b"SECRET");
            if self.devs[0].hide {
                assert_no_leak(c.path(), b"PLAINNAME");
            }
            assert!(
                files(c.path())
                    .iter()
                    .all(|(n, _)| !n.contains("kluis-tmp"))
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn two_devices_converge_with_hidden_names(ops in proptest::collection::vec(op(), 1..40)) {
        let mut w = World::new(true);
        for o in &ops {
            w.apply(o);
        }
        w.settle();
        w.check();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn two_devices_converge_with_plain_names(ops in proptest::collection::vec(op(), 1..40)) {
        let mut w = World::new(false);
        for o in &ops {
            w.apply(o);
        }
        w.settle();
        w.check();
    }
}
