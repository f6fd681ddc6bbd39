//! Shared helpers: a device (plain folder, state folder, syncer) with an in-process label key.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use kluis_core::{LabelKey, Recipient, Slot, Unwrap};
use kluis_sync::{Keys, Options, PassReport, Sealing, Syncer};

/// A label key held in memory (stands in for the key server).
pub struct TestKeys {
    pub key: LabelKey,
}

impl TestKeys {
    pub fn new() -> TestKeys {
        TestKeys {
            key: LabelKey::generate("hr", 1).unwrap(),
        }
    }
}

impl TestKeys {
    pub fn seal_to_slots(&self) -> Vec<Slot> {
        self.seal_to().unwrap().slots
    }
}

impl Keys for TestKeys {
    fn seal_to(&self) -> Result<Sealing, String> {
        Ok(Sealing {
            slots: vec![Slot::single(Recipient::Label(
                self.key.public_key().clone(),
            ))],
            notice: None,
        })
    }
    fn unwrappers(&self) -> Vec<&dyn Unwrap> {
        vec![&self.key]
    }
}

/// One device: its own plain folder and state, syncing with `sealed`.
pub struct Device {
    pub home: tempfile::TempDir,
    pub sealed: PathBuf,
    pub hide: bool,
    pub syncer: Option<Syncer>,
    /// [`Options::stray_grace`].
    pub grace: Duration,
    /// [`Options::folder_key_window`] (10 minutes unless a test changes it).
    pub window: Duration,
    /// [`Options::trust_folder_key`].
    pub trust: Option<String>,
}

impl Device {
    pub fn new(sealed: &Path, hide: bool) -> Device {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir(home.path().join("plain")).unwrap();
        Device {
            home,
            sealed: sealed.to_owned(),
            hide,
            syncer: None,
            grace: Duration::ZERO,
            window: Duration::from_secs(600),
            trust: None,
        }
    }

    pub fn plain(&self) -> PathBuf {
        self.home.path().join("plain")
    }

    pub fn options(&self) -> Options {
        Options {
            plain: self.plain(),
            sealed: self.sealed.clone(),
            hide_names: self.hide,
            state_root: self.home.path().join("state"),
            allow_mass_delete: false,
            settle: Duration::ZERO,
            stray_grace: self.grace,
            folder_key_window: self.window,
            trust_folder_key: self.trust.clone(),
        }
    }

    /// One run (passes until nothing changes), with a fresh syncer each time unless kept.
    pub fn sync(&mut self, keys: &dyn Keys) -> PassReport {
        if self.syncer.is_none() {
            self.syncer = Some(Syncer::new(&self.options()).unwrap());
        }
        self.syncer.as_mut().unwrap().run(keys, 3).unwrap()
    }

    /// Forget the syncer (as a process that ended or was killed would).
    pub fn restart(&mut self) {
        self.syncer = None;
    }

    pub fn write(&self, rel: &str, data: &[u8]) {
        let p = self.plain().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }

    pub fn read(&self, rel: &str) -> Option<Vec<u8>> {
        std::fs::read(self.plain().join(rel)).ok()
    }

    pub fn files(&self) -> Vec<(String, Vec<u8>)> {
        files(&self.plain())
    }
}

/// Every file below `dir` with its content, sorted (temporaries included: callers check).
pub fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(base: &Path, d: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out);
            } else if let Ok(data) = std::fs::read(&p) {
                out.push((
                    p.strip_prefix(base).unwrap().to_string_lossy().into_owned(),
                    data,
                ));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Assert that nothing in `sealed` contains `needle` (a plaintext marker) in its name or bytes.
pub fn assert_no_leak(sealed: &Path, needle: &[u8]) {
    for (name, data) in files(sealed) {
        assert!(
            !name.as_bytes().windows(needle.len()).any(|w| w == needle),
            "a sealed-side name holds plaintext: {name}"
        );
        assert!(
            !data.windows(needle.len()).any(|w| w == needle),
            "{name} holds plaintext"
        );
    }
}

mod sync_client;
pub use sync_client::SyncClient;
