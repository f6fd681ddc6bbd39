#![no_main]
//! The `kluis` command's configuration folder: `config.toml` as `Settings::load` reads it,
//! `kluis config set KEY VALUE`, and the identity file's `# public key:` line. The CLI is a
//! binary crate, so its `config.rs` (with the `error.rs` and `atomic.rs` it needs) is
//! compiled into this target from the source files.
//!
//! The first byte picks the mode: 0 `config.toml` text; 1-6 `config set` of the key
//! `KEYS[mode - 1]` to the rest; 7 an identity file. What loads must save and load back to
//! the same configuration; what `config set` accepts likewise; a public key read from an
//! identity file prints and parses back to itself.
#![allow(dead_code)]

#[path = "../../crates/kluis-cli/src/atomic.rs"]
mod atomic;
#[path = "../../crates/kluis-cli/src/config.rs"]
mod config;
#[path = "../../crates/kluis-cli/src/error.rs"]
mod error;

// What config.rs calls outside the paths fuzzed here (warnings about a saved token's server,
// the holder key of a double-key slot), reduced to what it needs to compile.
mod output {
    pub fn warn(_message: &str) {}
}
mod keys {
    pub enum Passphrase {}
}
mod pins {
    pub fn holder_public_key(
        _path: &std::path::Path,
        source: &crate::keys::Passphrase,
    ) -> Result<kluis_core::PublicKey, crate::error::CliError> {
        match *source {}
    }
}

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use config::{FileConfig, KEYS, Settings};
use libfuzzer_sys::fuzz_target;

/// The configuration folder (tmpfs where there is one: saving fsyncs).
static DIR: LazyLock<PathBuf> = LazyLock::new(|| {
    let base = PathBuf::from("/dev/shm");
    let base = if base.is_dir() {
        base
    } else {
        std::env::temp_dir()
    };
    remove_stale(&base, "kluis-fuzz-cli-config-");
    let dir = base.join(format!("kluis-fuzz-cli-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // SAFETY: set once, before anything else in this process reads the environment; the
    // fuzzer runs the target on one thread.
    unsafe {
        std::env::set_var("KLUIS_CONFIG_DIR", &dir);
        std::env::set_var("KLUIS_CACHE_DIR", dir.join("cache"));
        std::env::remove_var("KLUIS_TOKEN");
    }
    dir
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

fn load() -> Result<FileConfig, error::CliError> {
    Settings::load(None).map(|s| s.file)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let dir = &*DIR;
    let path = dir.join(config::CONFIG_FILE);
    match mode % 8 {
        0 => {
            std::fs::write(&path, rest).unwrap();
            let Ok(file) = load() else {
                return;
            };
            file.save(dir).expect("a configuration that loads saves");
            assert_eq!(load().expect("a saved configuration loads"), file);
        }
        7 => {
            // The `# public key:` line, as the CLI reads it before comparing it with the
            // recorded key (crates/kluis-cli/src/pins.rs).
            let Ok(text) = std::str::from_utf8(rest) else {
                return;
            };
            if let Ok(Some(key)) = kluis_core::Identity::claimed_public_key(text) {
                assert_eq!(
                    key.to_string().parse::<kluis_core::PublicKey>().unwrap(),
                    key
                );
            }
        }
        n => {
            let Ok(value) = std::str::from_utf8(rest) else {
                return;
            };
            let mut file = FileConfig::default();
            if file.set(KEYS[usize::from(n - 1)], value).is_err() {
                return;
            }
            file.save(dir).expect("a value `config set` accepts saves");
            assert_eq!(load().expect("and loads back"), file);
            let mut cleared = file.clone();
            cleared.unset(KEYS[usize::from(n - 1)]).unwrap();
            assert_eq!(cleared, FileConfig::default());
        }
    }
});
