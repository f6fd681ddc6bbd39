//! `rekey_paths`: re-keying documents and folders (moved from the `kluis rekey` command into
//! kluis-file): the folder walk, the label lookup once per label, one batched unlock, the
//! skip of current documents, and per-document failures.

mod common;

use std::fs;
use std::path::Path;

use common::*;
use kluis_core::{Identity, LabelKey, Recipient, Slot};
use kluis_file::{
    Error, RekeyDoc, RekeyOptions, RekeyOutcome, RekeyTarget, Rewrite, SealOptions, seal_file,
};

/// Moves documents under `hr` to `current`; counts the lookups.
struct Target<'a> {
    current: &'a LabelKey,
    lookups: usize,
}

impl RekeyTarget for Target<'_> {
    type Error = Msg;
    fn current_kid(&mut self, label: &str) -> Result<u32, Msg> {
        self.lookups += 1;
        match label {
            "hr" => Ok(self.current.public_key().kid()),
            other => Err(Msg(format!("no label {other}"))),
        }
    }
    fn slots(&mut self, doc: &RekeyDoc) -> Result<Vec<Slot>, Msg> {
        assert_eq!(doc.label, "hr");
        Ok(vec![label_slot(self.current)])
    }
}

fn seal_to(path: &Path, slot: Slot) {
    fs::write(path, b"contents").unwrap();
    seal_file(path, &[slot], &SealOptions::default()).unwrap();
    fs::remove_file(path).unwrap();
}

#[test]
fn a_folder_is_rekeyed_in_one_batch_and_current_documents_are_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("docs");
    fs::create_dir_all(root.join("sub")).unwrap();
    let hr1 = LabelKey::generate("hr", 1).unwrap();
    let hr2 = LabelKey::generate("hr", 2).unwrap();
    let fin = LabelKey::generate("finance", 1).unwrap();
    seal_to(&root.join("a.txt"), label_slot(&hr1));
    seal_to(&root.join("sub/b.txt"), label_slot(&hr1));
    seal_to(&root.join("c.txt"), label_slot(&hr2));
    seal_to(&root.join("f.txt"), label_slot(&fin));
    let me = Identity::generate().unwrap();
    seal_to(
        &root.join("mine.txt"),
        Slot::single(Recipient::Key(me.public_key())),
    );
    fs::write(root.join("notes.txt"), b"not sealed").unwrap();

    let counting = Counting::new(&hr1);
    let holders: [&dyn kluis_core::Unwrap; 1] = [&counting];
    let mut target = Target {
        current: &hr2,
        lookups: 0,
    };
    let reports =
        kluis_file::rekey_paths(&[&root], &holders, &mut target, &RekeyOptions::default());
    let names: Vec<_> = reports
        .iter()
        .map(|r| r.path.strip_prefix(&root).unwrap().to_owned())
        .collect();
    assert_eq!(
        names,
        [
            "a.txt.kluis",
            "c.txt.kluis",
            "f.txt.kluis",
            "mine.txt.kluis",
            "sub/b.txt.kluis"
        ]
        .map(std::path::PathBuf::from)
    );
    assert!(matches!(
        &reports[0].outcome,
        RekeyOutcome::Moved { label, from, to: 2, rewrite: Rewrite::InPlace } if label == "hr" && from == &[1]
    ));
    assert!(matches!(
        &reports[1].outcome,
        RekeyOutcome::Current { kid: 2, .. }
    ));
    assert!(matches!(&reports[2].outcome, RekeyOutcome::Failed(e) if e.0 == "no label finance"));
    assert!(
        matches!(&reports[3].outcome, RekeyOutcome::Failed(e) if e.0.contains("not under a label"))
    );
    assert!(matches!(
        &reports[4].outcome,
        RekeyOutcome::Moved { to: 2, .. }
    ));
    assert_eq!(target.lookups, 2, "one lookup per label");
    assert_eq!(counting.calls(), 1, "one batch");
    // The moved documents now open with the current key alone.
    for p in [root.join("a.txt.kluis"), root.join("sub/b.txt.kluis")] {
        let h = kluis_core::Header::read(&mut fs::File::open(&p).unwrap()).unwrap();
        assert!(h.unlock(&[&hr2]).is_ok());
    }

    // Again: all current, nothing unlocked; a missing path fails with its own error.
    let counting = Counting::new(&hr1);
    let holders: [&dyn kluis_core::Unwrap; 1] = [&counting];
    let missing = dir.path().join("missing.kluis");
    let reports = kluis_file::rekey_paths(
        &[root.join("a.txt.kluis"), missing.clone()],
        &holders,
        &mut target,
        &RekeyOptions::default(),
    );
    assert!(matches!(&reports[0].outcome, RekeyOutcome::Current { .. }));
    assert_eq!(reports[1].path, missing);
    assert!(matches!(&reports[1].outcome, RekeyOutcome::Failed(e) if e.0.contains("missing")));
    assert_eq!(counting.calls(), 0);
}

/// The test's error type: this crate's failures as their message.
#[derive(Clone, Debug)]
struct Msg(String);

impl From<Error> for Msg {
    fn from(e: Error) -> Msg {
        Msg(e.to_string())
    }
}
