//! Round trips on real files: one file, a folder of 1000 files, hidden names, batching.

mod common;

use std::fs;
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use common::*;
use kluis_core::{Identity, LabelKey, Recipient, Slot, Unwrap};
use kluis_file::{
    Event, OpenOptions, Outcome, SealOptions, Skip, open_file, open_paths, seal_file, seal_paths,
};

#[test]
fn file_round_trip_restores_content_name_and_mtime() {
    let dir = tempfile::tempdir().unwrap();
    let hr = LabelKey::generate("hr", 1).unwrap();
    let input = dir.path().join("salaris 2026.xlsx");
    let contents = data(1, 3 * 65536 + 17);
    fs::write(&input, &contents).unwrap();
    let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
    fs::File::options()
        .write(true)
        .open(&input)
        .unwrap()
        .set_modified(t)
        .unwrap();

    let report = seal_file(&input, &[label_slot(&hr)], &SealOptions::default()).unwrap();
    let sealed = dir.path().join("salaris 2026.xlsx.kluis");
    assert_eq!(report.output.as_deref(), Some(sealed.as_path()));
    assert_eq!(report.bytes, contents.len() as u64);
    assert!(matches!(report.outcome, Outcome::Done));
    assert_ne!(fs::read(&sealed).unwrap(), contents);
    assert_eq!(fs::read(&input).unwrap(), contents, "original untouched");

    // Renamed by someone: the real name comes back from the sealed metadata.
    let renamed = dir.path().join("x.kluis");
    fs::rename(&sealed, &renamed).unwrap();
    let mut options = OpenOptions::default();
    options.output_dir = Some(dir.path().join("out"));
    let report = open_file(&renamed, &[&hr], &options).unwrap();
    let out = dir.path().join("out/salaris 2026.xlsx");
    assert_eq!(report.output.as_deref(), Some(out.as_path()));
    assert_eq!(report.bytes, contents.len() as u64);
    assert_eq!(fs::read(&out).unwrap(), contents);
    assert_eq!(fs::metadata(&out).unwrap().modified().unwrap(), t);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&out).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "opened plaintext is owner-only");
    }
    assert_no_temp(dir.path());
}

#[test]
fn open_beside_and_fallback_name() {
    let dir = tempfile::tempdir().unwrap();
    let holder = Identity::generate().unwrap();
    let slot = Slot::single(Recipient::Key(holder.public_key()));
    // A document with no stored name opens under its file name minus `.kluis`.
    let sealed = kluis_core::seal(&[slot], &kluis_core::Metadata::default(), b"hi").unwrap();
    fs::write(dir.path().join("notes.txt.kluis"), sealed).unwrap();
    let r = open_file(
        &dir.path().join("notes.txt.kluis"),
        &[&holder],
        &OpenOptions::default(),
    )
    .unwrap();
    assert_eq!(r.output.unwrap(), dir.path().join("notes.txt"));
    assert_eq!(fs::read(dir.path().join("notes.txt")).unwrap(), b"hi");
}

#[test]
fn empty_and_padded_files() {
    let dir = tempfile::tempdir().unwrap();
    let hr = LabelKey::generate("hr", 1).unwrap();
    fs::write(dir.path().join("empty"), b"").unwrap();
    fs::write(dir.path().join("seven"), b"1234567").unwrap();
    let mut options = SealOptions::default();
    options.pad = true;
    options.output_dir = Some(dir.path().join("sealed"));
    let reports = seal_paths(
        &[dir.path().join("empty"), dir.path().join("seven")],
        &[label_slot(&hr)],
        &options,
    )
    .unwrap();
    assert_all_done(&reports);
    let mut open = OpenOptions::default();
    open.output_dir = Some(dir.path().join("out"));
    let reports = open_paths(&[dir.path().join("sealed")], &[&hr], &open).unwrap();
    assert_all_done(&reports);
    assert_eq!(fs::read(dir.path().join("out/empty")).unwrap(), b"");
    assert_eq!(fs::read(dir.path().join("out/seven")).unwrap(), b"1234567");
}

/// 1000 files in nested folders: structure kept, one unwrap call for the whole folder.
#[test]
fn folder_of_1000_files_round_trip_with_one_unwrap_call() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("dossiers");
    let mut tree = Vec::new();
    for i in 0..1000 {
        let rel = format!("afdeling {}/jaar {}/stuk {i}.txt", i % 7, i % 3);
        tree.push((rel, data(i, i % 300)));
    }
    let tree_ref: Vec<(&str, Vec<u8>)> =
        tree.iter().map(|(r, c)| (r.as_str(), c.clone())).collect();
    make_tree(&src, &tree_ref);

    let hr = LabelKey::generate("hr", 1).unwrap();
    let events = EventLog::default();
    let progress = |e: Event<'_>| events.record(e);
    let mut options = SealOptions::default();
    options.output_dir = Some(dir.path().join("onedrive"));
    options.progress = Some(&progress);
    let reports = seal_paths(&[&src], &[label_slot(&hr)], &options).unwrap();
    assert_eq!(reports.len(), 1000);
    assert_all_done(&reports);
    assert_eq!(events.planned.load(Ordering::SeqCst), 1000);
    assert_eq!(events.finished.load(Ordering::SeqCst), 1000);
    let total: u64 = tree.iter().map(|(_, c)| c.len() as u64).sum();
    assert_eq!(events.read.load(Ordering::SeqCst), total);
    // Mirrored, starting with the folder's own name.
    assert!(
        dir.path()
            .join("onedrive/dossiers/afdeling 3/jaar 1/stuk 10.txt.kluis")
            .is_file()
    );

    let counting = Counting::new(&hr);
    let events = EventLog::default();
    let progress = |e: Event<'_>| events.record(e);
    let mut open = OpenOptions::default();
    open.output_dir = Some(dir.path().join("restored"));
    open.progress = Some(&progress);
    let reports = open_paths(&[dir.path().join("onedrive")], &[&counting], &open).unwrap();
    assert_eq!(reports.len(), 1000);
    assert_all_done(&reports);
    assert_eq!(counting.calls(), 1, "one round trip for the whole folder");
    assert_eq!(counting.stanzas(), 1000);
    assert_eq!(events.unlocking.lock().unwrap().as_slice(), &[1000]);
    let sealed_total: u64 = files(&dir.path().join("onedrive"))
        .iter()
        .map(|(_, c)| c.len() as u64)
        .sum();
    assert_eq!(events.read.load(Ordering::SeqCst), sealed_total);

    let expected = files(dir.path())
        .into_iter()
        .filter(|(p, _)| p.starts_with("dossiers"));
    let restored = files(&dir.path().join("restored"));
    assert_eq!(restored, expected.collect::<Vec<_>>());
    assert_no_temp(dir.path());
}

/// More than one batch: one call per batch of 1000, per key holder; double key needs both.
#[test]
fn batches_of_1000_and_double_key() {
    let dir = tempfile::tempdir().unwrap();
    let hr = LabelKey::generate("hr", 1).unwrap();
    let holder = Identity::generate().unwrap();
    let slot = Slot::double(
        Recipient::Label(hr.public_key().clone()),
        Recipient::Key(holder.public_key()),
    )
    .unwrap();
    let src = dir.path().join("src");
    let tree: Vec<(String, Vec<u8>)> = (0..1050)
        .map(|i| (format!("f{i:04}"), data(i, 5)))
        .collect();
    let tree_ref: Vec<(&str, Vec<u8>)> =
        tree.iter().map(|(r, c)| (r.as_str(), c.clone())).collect();
    make_tree(&src, &tree_ref);
    let mut options = SealOptions::default();
    options.output_dir = Some(dir.path().join("sealed"));
    options.hide_names = true;
    assert_all_done(&seal_paths(&[&src], &[slot], &options).unwrap());

    let server = Counting::new(&hr);
    let id = Counting::new(&holder);
    let mut open = OpenOptions::default();
    open.output_dir = Some(dir.path().join("out"));
    open.threads = NonZeroUsize::new(3);
    let events = EventLog::default();
    let progress = |e: Event<'_>| events.record(e);
    open.progress = Some(&progress);
    let keys: [&dyn Unwrap; 2] = [&server, &id];
    let reports = open_paths(&[dir.path().join("sealed")], &keys, &open).unwrap();
    assert_all_done(&reports);
    assert_eq!(events.unlocking.lock().unwrap().as_slice(), &[1000, 50]);
    assert_eq!(server.calls(), 2, "1050 documents: two batches");
    assert_eq!(id.calls(), 2);
    assert_eq!(server.stanzas(), 1050);
    assert_eq!(
        fs::read(dir.path().join("out/src/f1049")).unwrap(),
        data(1049, 5)
    );

    // One key alone opens nothing, and writes nothing.
    let mut open = OpenOptions::default();
    open.output_dir = Some(dir.path().join("out2"));
    let reports = open_paths(&[dir.path().join("sealed")], &[&hr], &open).unwrap();
    assert!(reports.iter().all(|r| matches!(
        &r.outcome,
        Outcome::Failed(e) if matches!(e.format_error(), Some(kluis_core::Error::NoMatchingKey))
    )));
    assert!(list(&dir.path().join("out2")).is_empty());
}

#[test]
fn hidden_names_leave_no_trace_and_restore_the_tree() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("Jansen");
    let tree = [
        (
            "medisch dossier/uitslag bloedonderzoek.pdf",
            data(1, 70_000),
        ),
        ("medisch dossier/brief huisarts.docx", data(2, 10)),
        ("BSN 123456789.txt", data(3, 0)),
        ("strafblad/vonnis.pdf", data(4, 65536)),
    ];
    make_tree(&src, &tree);
    let hr = LabelKey::generate("medical", 3).unwrap();
    let sealed_dir = dir.path().join("OneDrive");
    let mut options = SealOptions::default();
    options.output_dir = Some(sealed_dir.clone());
    options.hide_names = true;
    let reports = seal_paths(&[&src], &[label_slot(&hr)], &options).unwrap();
    assert_all_done(&reports);

    let outputs = list(&sealed_dir);
    assert_eq!(outputs.len(), 4, "flat: no folders on the sealed side");
    for p in &outputs {
        let name = p.to_str().unwrap();
        assert_eq!(name.len(), 26 + 6, "{name}");
        assert!(name.ends_with(".kluis"));
        assert!(
            name[..26]
                .bytes()
                .all(|c| c.is_ascii_lowercase() || (b'2'..=b'7').contains(&c))
        );
        for word in [
            "Jansen", "medisch", "dossier", "uitslag", "brief", "BSN", "123", "straf", "vonnis",
            "pdf", "docx", "txt",
        ] {
            assert!(!name.contains(word), "{name} leaks {word}");
        }
    }

    // Opening the sealed folder restores the tree, starting with the folder's name.
    let mut open = OpenOptions::default();
    open.output_dir = Some(dir.path().join("restored"));
    assert_all_done(&open_paths(&[&sealed_dir], &[&hr], &open).unwrap());
    let original = files(dir.path())
        .into_iter()
        .filter(|(p, _)| p.starts_with("Jansen"))
        .collect::<Vec<_>>();
    assert_eq!(files(&dir.path().join("restored")), original);

    // Opening in place (no output folder) restores the tree inside the sealed folder.
    assert_all_done(&open_paths(&[&sealed_dir], &[&hr], &OpenOptions::default()).unwrap());
    assert_eq!(
        fs::read(sealed_dir.join("Jansen/strafblad/vonnis.pdf")).unwrap(),
        data(4, 65536)
    );
}

#[test]
fn hidden_names_beside_each_file() {
    let dir = tempfile::tempdir().unwrap();
    let hr = LabelKey::generate("hr", 1).unwrap();
    make_tree(dir.path(), &[("a/geheim.txt", data(1, 100))]);
    let mut options = SealOptions::default();
    options.hide_names = true;
    let r = seal_file(
        &dir.path().join("a/geheim.txt"),
        &[label_slot(&hr)],
        &options,
    )
    .unwrap();
    let out = r.output.unwrap();
    assert_eq!(out.parent().unwrap(), dir.path().join("a"));
    assert!(!out.to_str().unwrap().contains("geheim"));
    let mut open = OpenOptions::default();
    open.output_dir = Some(dir.path().join("b"));
    open_file(&out, &[&hr], &open).unwrap();
    assert_eq!(
        fs::read(dir.path().join("b/geheim.txt")).unwrap(),
        data(1, 100)
    );
}

#[test]
fn sealing_a_folder_skips_sealed_files_and_temporaries() {
    let dir = tempfile::tempdir().unwrap();
    let hr = LabelKey::generate("hr", 1).unwrap();
    make_tree(
        dir.path(),
        &[
            ("d/a.txt", data(1, 3)),
            ("d/old.txt.kluis", data(2, 3)),
            ("d/.kluis-tmp-abc", data(3, 3)),
        ],
    );
    let reports = seal_paths(
        &[dir.path().join("d")],
        &[label_slot(&hr)],
        &SealOptions::default(),
    )
    .unwrap();
    let skipped: Vec<_> = reports
        .iter()
        .filter_map(|r| match r.outcome {
            Outcome::Skipped(s) => Some(s),
            _ => None,
        })
        .collect();
    assert_eq!(skipped, [Skip::Temporary, Skip::AlreadySealed]);
    assert!(dir.path().join("d/a.txt.kluis").is_file());
    assert!(!dir.path().join("d/old.txt.kluis.kluis").exists());
}

#[test]
fn large_file_streams() {
    // Several MiB: more than one 1 MiB buffer and many chunks, with an odd tail.
    let dir = tempfile::tempdir().unwrap();
    let hr = LabelKey::generate("hr", 1).unwrap();
    let contents = data(9, 5 * 1024 * 1024 + 12345);
    fs::write(dir.path().join("big.bin"), &contents).unwrap();
    let mut options = SealOptions::default();
    options.output_dir = Some(dir.path().join("s"));
    seal_file(&dir.path().join("big.bin"), &[label_slot(&hr)], &options).unwrap();
    let mut open = OpenOptions::default();
    open.output_dir = Some(dir.path().join("o"));
    let r = open_file(&dir.path().join("s/big.bin.kluis"), &[&hr], &open).unwrap();
    assert_eq!(r.bytes, contents.len() as u64);
    assert!(fs::read(dir.path().join("o/big.bin")).unwrap() == contents);
}

/// Counts events; `read` sums the bytes reported.
#[derive(Default)]
struct EventLog {
    planned: AtomicUsize,
    finished: AtomicUsize,
    read: AtomicU64,
    unlocking: Mutex<Vec<usize>>,
}

impl EventLog {
    fn record(&self, e: Event<'_>) {
        match e {
            Event::Planned { files, .. } => {
                self.planned.fetch_add(files, Ordering::SeqCst);
            }
            Event::Finished(_) => {
                self.finished.fetch_add(1, Ordering::SeqCst);
            }
            Event::Read { bytes, .. } => {
                self.read.fetch_add(bytes, Ordering::SeqCst);
            }
            Event::Unlocking { documents } => self.unlocking.lock().unwrap().push(documents),
            _ => {}
        }
    }
}
