//! Re-keying a 1 GiB sealed document on disk: the header written in place (the usual case:
//! the label moves to a new key version) next to the copy a header of another length
//! needs, and next to copying the file (`fs::copy` + fsync, the cost any whole-file rewrite
//! pays). The unwrap itself is local here (a `LabelKey`); through the key server it adds
//! one round trip, measured by `benches/server_load.sh`.
//!
//! Run with `cargo bench -p kluis-benches --bench rekey`; `KLUIS_REKEY_MIB` changes the size.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use kluis_core::{Header, Identity, LabelKey, Metadata, Recipient, Slot, StreamWriter};
use kluis_file::{Rewrite, replace_header};

const MIB: usize = 1024 * 1024;

fn label_slot(key: &LabelKey) -> Slot {
    Slot::single(Recipient::Label(key.public_key().clone()))
}

/// Re-key `path` from `from` to `to` (plus `extra` slots); time the whole of it: read the
/// header, unlock, build the new header, write it.
fn rekey(path: &Path, from: &LabelKey, to: &[Slot]) -> (Duration, Rewrite) {
    let start = Instant::now();
    let old = Header::read(&mut File::open(path).expect("open")).expect("header");
    let key = old.unlock(&[from]).expect("unlock");
    let new = old.rekey(&key, &[], to).expect("rekey");
    let how = replace_header(path, &old, &new).expect("replace");
    (start.elapsed(), how)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    let mib: usize = std::env::var("KLUIS_REKEY_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    // Beside the build output, not /tmp (which may be a tmpfs without real fsyncs).
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temporary folder");
    let path = dir.path().join("big.kluis");
    let keys: Vec<LabelKey> = (1..=40)
        .map(|kid| LabelKey::generate("hr", kid).expect("key"))
        .collect();
    {
        let out = BufWriter::with_capacity(4 * MIB, File::create(&path).expect("create"));
        let mut w =
            StreamWriter::new(out, &[label_slot(&keys[0])], &Metadata::default()).expect("writer");
        let block = vec![0x5a; 4 * MIB];
        for _ in 0..mib / 4 {
            w.write_all(&block).expect("write");
        }
        let out = w.finish().expect("finish");
        out.into_inner().expect("flush").sync_all().expect("sync");
    }
    let size = fs::metadata(&path).expect("stat").len();

    let mut in_place = Vec::new();
    for i in 1..keys.len() {
        let (t, how) = rekey(&path, &keys[i - 1], &[label_slot(&keys[i])]);
        assert_eq!(how, Rewrite::InPlace);
        in_place.push(t);
    }
    let last = keys.last().expect("keys");

    let holder = Identity::generate().expect("identity");
    let with_holder = [
        label_slot(last),
        Slot::single(Recipient::Key(holder.public_key())),
    ];
    let mut copied = Vec::new();
    for i in 0..3 {
        let to: &[Slot] = if i % 2 == 0 {
            &with_holder
        } else {
            &with_holder[..1]
        };
        let (t, how) = rekey(&path, last, to);
        assert_eq!(how, Rewrite::Copied);
        copied.push(t);
    }

    let mut cp = Vec::new();
    let copy = dir.path().join("copy");
    for _ in 0..3 {
        let start = Instant::now();
        fs::copy(&path, &copy).expect("copy");
        File::open(&copy).and_then(|f| f.sync_all()).expect("sync");
        cp.push(start.elapsed());
        fs::remove_file(&copy).expect("remove");
    }

    println!("re-keying a sealed document of {size} bytes ({mib} MiB), median:");
    println!(
        "  {:<48} {:>12}",
        "kluis rekey, header in place (39 runs)",
        ms(median(in_place))
    );
    println!(
        "  {:<48} {:>12}",
        "kluis rekey, header length changed: copy (3 runs)",
        ms(median(copied))
    );
    println!(
        "  {:<48} {:>12}",
        "fs::copy + fsync of the same file (3 runs)",
        ms(median(cp))
    );
}
