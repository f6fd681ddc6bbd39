//! The label record cache on disk: one JSON file per label per server, written atomically.
//!
//! Layout: `<cache_dir>/servers/<first 16 bytes of SHA-256(server base URL), hex>/` holds a
//! `server` file (the URL, for people) and `labels/<label>.json` (upper-case letters written
//! as `%XX`, so that labels differing in case do not collide on case-insensitive file
//! systems). Each file holds the record as the server sent it, when it was fetched, its
//! `max_age`, and every key version's public key seen so far (the pins).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::ClientError;
use crate::record::WireRecord;

/// Cache file format version.
pub(crate) const FORMAT: u32 = 1;
/// A cache file larger than this is not read.
const MAX_FILE: u64 = 4 * 1024 * 1024;

/// One cached label record.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Entry {
    pub(crate) format: u32,
    pub(crate) server: String,
    /// Seconds since the Unix epoch.
    pub(crate) fetched_at: u64,
    pub(crate) max_age: u64,
    pub(crate) record: WireRecord,
    /// Every key version's public key seen from this server for this label.
    pub(crate) known_keys: BTreeMap<u32, String>,
}

impl Entry {
    pub(crate) fn fetched(&self) -> SystemTime {
        at(self.fetched_at)
    }

    pub(crate) fn expires(&self) -> SystemTime {
        at(self.fetched_at.saturating_add(self.max_age))
    }

    /// Fresh: fetched at most `max_age` ago (and not in the future by more than a minute:
    /// a clock that jumped back does not keep records fresh).
    pub(crate) fn is_fresh(&self, now: u64) -> bool {
        self.fetched_at <= now.saturating_add(60)
            && now < self.fetched_at.saturating_add(self.max_age)
    }
}

/// 9999-12-31T23:59:59Z.
const LATEST: u64 = 253_402_300_799;

/// `secs` after the Unix epoch, at most [`LATEST`] (a damaged or hostile cache file must not
/// make the clock arithmetic overflow).
fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH
        .checked_add(Duration::from_secs(secs))
        .filter(|_| secs <= LATEST)
        .unwrap_or(UNIX_EPOCH + Duration::from_secs(LATEST))
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The cache directory of one server.
#[derive(Clone, Debug)]
pub(crate) struct Cache {
    dir: PathBuf,
    server: String,
}

fn file_name(label: &str) -> String {
    let mut s = String::with_capacity(label.len() + 5);
    for c in label.chars() {
        if c.is_ascii_uppercase() {
            s.push_str(&format!("%{:02X}", c as u32));
        } else {
            s.push(c);
        }
    }
    s.push_str(".json");
    s
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> ClientError {
    ClientError::Cache {
        path: path.to_owned(),
        detail: e.to_string(),
    }
}

impl Cache {
    pub(crate) fn new(root: &Path, server: &str) -> Cache {
        let digest = ring::digest::digest(&ring::digest::SHA256, server.as_bytes());
        Cache {
            dir: root
                .join("servers")
                .join(hex::encode(&digest.as_ref()[..16])),
            server: server.to_owned(),
        }
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn path(&self, label: &str) -> PathBuf {
        self.dir.join("labels").join(file_name(label))
    }

    /// The cached entry for `label`. A missing, unreadable or corrupt file, or one for
    /// another server or label, counts as no entry (it is replaced on the next fetch).
    pub(crate) fn load(&self, label: &str) -> Option<Entry> {
        self.read(&self.path(label))
            .filter(|e| e.record.label == label)
    }

    fn read(&self, path: &Path) -> Option<Entry> {
        use std::io::Read;
        let mut text = Vec::new();
        std::fs::File::open(path)
            .ok()?
            .take(MAX_FILE)
            .read_to_end(&mut text)
            .ok()?;
        let e: Entry = serde_json::from_slice(&text).ok()?;
        (e.format == FORMAT && e.server == self.server).then_some(e)
    }

    /// Every cached entry of this server.
    pub(crate) fn list(&self) -> Vec<Entry> {
        let Ok(dir) = std::fs::read_dir(self.dir.join("labels")) else {
            return Vec::new();
        };
        let mut out: Vec<Entry> = dir
            .filter_map(Result::ok)
            .filter(|d| d.file_name().to_string_lossy().ends_with(".json"))
            .filter_map(|d| self.read(&d.path()))
            .collect();
        out.sort_by(|a, b| a.record.label.cmp(&b.record.label));
        out
    }

    /// Write an entry atomically: a temporary file in the same directory, synced, then
    /// renamed over the old one. Readers see the old or the new file, never half of one.
    pub(crate) fn store(&self, entry: &Entry) -> Result<(), ClientError> {
        let labels = self.dir.join("labels");
        std::fs::create_dir_all(&labels).map_err(|e| io_err(&labels, e))?;
        let marker = self.dir.join("server");
        if !marker.exists() {
            // For people browsing the cache; not read back.
            let _ = std::fs::write(&marker, format!("{}\n", self.server));
        }
        let path = self.path(&entry.record.label);
        let mut rnd = [0u8; 8];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut rnd)
            .map_err(|_| ClientError::Random)?;
        let tmp = labels.join(format!(
            ".{}.{}.tmp",
            file_name(&entry.record.label),
            hex::encode(rnd)
        ));
        let json = serde_json::to_vec_pretty(entry).map_err(|e| io_err(&path, e))?;
        let result = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)?;
            f.write_all(&json)?;
            f.sync_all()?;
            drop(f);
            std::fs::rename(&tmp, &path)?;
            // Make the rename itself durable where directories can be synced.
            #[cfg(unix)]
            if let Ok(d) = std::fs::File::open(&labels) {
                let _ = d.sync_all();
            }
            Ok::<_, std::io::Error>(())
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(io_err(&path, e));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_do_not_collide_on_case() {
        assert_eq!(file_name("hr"), "hr.json");
        assert_eq!(file_name("HR"), "%48%52.json");
        assert_eq!(file_name("a.b_c-1"), "a.b_c-1.json");
    }

    #[test]
    fn freshness() {
        let e = |fetched_at| Entry {
            format: FORMAT,
            server: "s".into(),
            fetched_at,
            max_age: 100,
            record: WireRecord {
                label: "hr".into(),
                kid: 1,
                public_key: String::new(),
                double_key: false,
                recovery: vec![],
                versions: vec![],
                max_age: None,
            },
            known_keys: BTreeMap::new(),
        };
        assert!(e(1000).is_fresh(1050));
        assert!(!e(1000).is_fresh(1100));
        assert!(!e(2000).is_fresh(1000), "from the future");
    }

    #[test]
    fn store_then_load_and_list() {
        let dir = tempfile::tempdir().unwrap();
        let c = Cache::new(dir.path(), "https://k");
        let mut e = Entry {
            format: FORMAT,
            server: "https://k".into(),
            fetched_at: 5,
            max_age: 10,
            record: WireRecord {
                label: "HR".into(),
                kid: 1,
                public_key: "kluis1x".into(),
                double_key: false,
                recovery: vec![],
                versions: vec![],
                max_age: Some(10),
            },
            known_keys: BTreeMap::from([(1, "kluis1x".to_owned())]),
        };
        c.store(&e).unwrap();
        e.fetched_at = 6;
        c.store(&e).unwrap();
        assert_eq!(c.load("HR").unwrap().fetched_at, 6);
        assert!(c.load("hr").is_none());
        assert_eq!(c.list().len(), 1);
        // Another server's cache is separate.
        assert!(Cache::new(dir.path(), "https://other").load("HR").is_none());
        // No temporary files are left behind.
        let names: Vec<_> = std::fs::read_dir(c.dir().join("labels"))
            .unwrap()
            .map(|d| d.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }
}

#[cfg(test)]
mod time_tests {
    use super::*;

    #[test]
    fn absurd_times_in_a_cache_file_do_not_overflow() {
        assert_eq!(at(u64::MAX), at(LATEST));
        assert!(at(0) == UNIX_EPOCH);
        assert!(at(1_800_000_000) > at(1_700_000_000));
    }
}
