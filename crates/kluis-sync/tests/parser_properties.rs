//! Property tests of what kluis sync reads back from disk (the fuzz target `sync_journal`
//! checks the same on arbitrary bytes): the state journal and an opened folder-key document.

use kluis_sync::fuzzing::{folder_key_content, folder_key_content_for, journal};
use proptest::prelude::*;
use serde_json::json;

const MAGIC: &[u8] = b"kluis-sync/v1 folder-key\0";

fn stamp() -> impl Strategy<Value = serde_json::Value> {
    (any::<u64>(), any::<i64>(), any::<u64>())
        .prop_map(|(size, mtime_ns, ino)| json!({"size": size, "mtime_ns": mtime_ns, "ino": ino}))
}

proptest! {
    #[test]
    fn journals_read_back_as_written(
        entries in proptest::collection::btree_map(
            "\\PC{0,12}",
            (proptest::option::of(stamp()), proptest::option::of(stamp()), "[a-z0-9.]{0,30}"),
            0..5,
        ),
        misplaced in proptest::collection::btree_map("\\PC{0,12}", stamp(), 0..3),
        held in proptest::collection::btree_set("\\PC{0,12}", 0..3),
        pin in proptest::option::of(("[0-9a-f]{32}", proptest::option::of(any::<u64>()))),
    ) {
        let entries: serde_json::Map<String, serde_json::Value> = entries
            .into_iter()
            .map(|(k, (plain, sealed, name))| (k, json!({"plain": plain, "sealed": sealed, "name": name})))
            .collect();
        let pin = pin.map(|(doc_id, created)| json!({"doc_id": doc_id, "created": created}));
        let text = json!({
            "version": 1, "entries": entries, "misplaced": misplaced, "held": held,
            "folder_key": pin, "refused_keys": [],
        })
        .to_string();
        let written = journal(text.as_bytes()).expect("a well-formed journal is read");
        prop_assert_eq!(serde_json::from_slice::<serde_json::Value>(&written).unwrap(),
            serde_json::from_str::<serde_json::Value>(&text).unwrap());
        prop_assert_eq!(journal(&written).unwrap(), written);
    }

    #[test]
    fn other_versions_and_any_bytes_are_refused_or_fixed_points(
        version in 2u32.., bytes in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let text = json!({"version": version, "entries": {}, "misplaced": {}}).to_string();
        prop_assert!(journal(text.as_bytes()).is_err());
        if let Ok(written) = journal(&bytes) {
            prop_assert_eq!(journal(&written).unwrap(), written);
        }
    }

    #[test]
    fn folder_key_content_round_trips(key in any::<[u8; 32]>()) {
        let content = folder_key_content_for(&key);
        prop_assert_eq!(content.len(), MAGIC.len() + 32);
        let read = folder_key_content(&content);
        prop_assert_eq!(read.as_deref(), Some(&key));
    }

    #[test]
    fn only_the_magic_and_32_bytes_are_a_folder_key(
        bytes in proptest::collection::vec(any::<u8>(), 0..80), cut in 0usize..80, extra in 1usize..40,
    ) {
        let mut content = MAGIC.to_vec();
        content.extend_from_slice(&bytes);
        let ok = folder_key_content(&content).is_some();
        prop_assert_eq!(ok, bytes.len() == 32);
        prop_assert_eq!(folder_key_content(&bytes).is_some(), false);
        // Any shorter or longer content is refused.
        let mut long = folder_key_content_for(&[7; 32]).to_vec();
        long.extend(std::iter::repeat_n(0u8, extra));
        prop_assert!(folder_key_content(&long).is_none());
        let short = &long[..cut.min(MAGIC.len() + 31)];
        prop_assert!(folder_key_content(short).is_none());
    }
}
