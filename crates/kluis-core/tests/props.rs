//! Property tests: round trips, tamper detection, truncation, slot order and count.

use kluis_core::fast::{Backend, CHUNK_LEN};
use kluis_core::{
    Error, Header, Identity, LabelKey, Metadata, Recipient, Slot, StreamReader, StreamWriter,
    Unwrap, open, seal,
};
use proptest::prelude::*;
use std::io::{Read, Write};
use std::sync::OnceLock;

struct Keys {
    labels: Vec<LabelKey>,
    ids: Vec<Identity>,
}

/// Generated once: key generation is not what is under test.
fn keys() -> &'static Keys {
    static K: OnceLock<Keys> = OnceLock::new();
    K.get_or_init(|| Keys {
        labels: (0..4)
            .map(|i| LabelKey::generate(&format!("label-{i}"), i + 1).unwrap())
            .collect(),
        ids: (0..4).map(|_| Identity::generate().unwrap()).collect(),
    })
}

fn label(i: usize) -> Recipient {
    Recipient::Label(keys().labels[i].public_key().clone())
}

fn key(i: usize) -> Recipient {
    Recipient::Key(keys().ids[i].public_key())
}

/// Sizes clustered around chunk boundaries, plus anything small.
fn size() -> impl Strategy<Value = usize> {
    prop_oneof![
        0usize..300,
        (0usize..3, -3i64..=3).prop_map(|(k, d)| ((k * CHUNK_LEN) as i64 + d).max(0) as usize),
    ]
}

fn payload(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn one_label_slot() -> [Slot; 1] {
    [Slot::single(label(0))]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn round_trip_across_backends(n in size(), seed: u8, pad: bool, seal_b in 0usize..4, open_b in 0usize..4) {
        let backends = Backend::all();
        let (sb, ob) = (backends[seal_b % backends.len()], backends[open_b % backends.len()]);
        let data = payload(n, seed);
        let mut meta = Metadata::with_size(n as u64).name("f");
        if pad {
            meta = meta.padded().unwrap();
        }
        let sealed = kluis_core::fast::seal(&one_label_slot(), &meta, &data, &kluis_core::fast::FastOptions::default().backend(sb)).unwrap();
        let (out, m) = kluis_core::fast::open(&sealed, &[&keys().labels[0]], &kluis_core::fast::FastOptions::default().backend(ob)).unwrap();
        prop_assert_eq!(out, data);
        prop_assert_eq!(m, meta);
    }

    /// The streaming writer and reader agree with the one-call functions, whatever the
    /// write and read sizes.
    #[test]
    fn streaming_and_one_call_agree(n in size(), pad: bool, piece in 1usize..70_000, read in 1usize..70_000) {
        let data = payload(n, 7);
        let mut meta = Metadata::with_size(n as u64);
        if pad {
            meta = meta.padded().unwrap();
        }
        let mut w = StreamWriter::new(Vec::new(), &one_label_slot(), &meta).unwrap();
        for p in data.chunks(piece) {
            w.write_all(p).unwrap();
        }
        let streamed = w.finish().unwrap();
        let (out, m) = open(&streamed, &[&keys().labels[0]]).unwrap();
        prop_assert_eq!(&out, &data);
        prop_assert_eq!(&m, &meta);

        let sealed = seal(&one_label_slot(), &meta, &data).unwrap();
        let mut input = &sealed[..];
        let header = Header::read(&mut input).unwrap();
        let key = header.unlock(&[&keys().labels[0]]).unwrap();
        let mut r = StreamReader::new(&header, &key, input).unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0u8; read];
        loop {
            let k = r.read(&mut buf).unwrap();
            if k == 0 { break; }
            got.extend_from_slice(&buf[..k]);
        }
        prop_assert_eq!(got, data);
        prop_assert_eq!(sealed.len(), streamed.len());
    }

    #[test]
    fn any_single_bit_flip_is_detected(n in size(), seed: u8, pos: prop::sample::Index, bit in 0u8..8) {
        let sealed = seal(&one_label_slot(), &Metadata::default(), &payload(n, seed)).unwrap();
        let mut bad = sealed.clone();
        let i = pos.index(bad.len());
        bad[i] ^= 1 << bit;
        prop_assert!(open(&bad, &[&keys().labels[0]]).is_err(), "flip at byte {} of {} opened", i, bad.len());
        // In place, a failure wipes and empties the buffer: no plaintext is left behind.
        prop_assert!(kluis_core::fast::open_in_place(&mut bad, &[&keys().labels[0]], &kluis_core::fast::FastOptions::default().backend(Backend::Ring)).is_err());
        prop_assert!(bad.is_empty());
    }

    #[test]
    fn any_truncation_is_detected(n in size(), seed: u8, cut: prop::sample::Index) {
        let sealed = seal(&one_label_slot(), &Metadata::default(), &payload(n, seed)).unwrap();
        let at = cut.index(sealed.len()); // strictly shorter than the whole
        let r = open(&sealed[..at], &[&keys().labels[0]]);
        prop_assert!(r.is_err(), "truncated to {} of {} opened", at, sealed.len());
    }

    #[test]
    fn appended_bytes_are_detected(n in size(), extra in prop::collection::vec(any::<u8>(), 1..40)) {
        let mut sealed = seal(&one_label_slot(), &Metadata::default(), &payload(n, 1)).unwrap();
        sealed.extend_from_slice(&extra);
        prop_assert!(open(&sealed, &[&keys().labels[0]]).is_err());
    }

    /// Up to 16 slots of every kind, in any order: each slot's keys alone open the document,
    /// and keys of no slot open nothing.
    #[test]
    fn every_slot_opens_whatever_the_order_and_count(
        kinds in prop::collection::vec((0u8..3, 0usize..3, 0usize..3), 1..=16),
        pick: prop::sample::Index,
    ) {
        // Slot i uses label i%3 / identity i%3 so that slots are distinguishable; label 3 and
        // identity 3 are never used.
        let mut slots = Vec::new();
        let mut openers: Vec<Vec<&dyn Unwrap>> = Vec::new();
        for &(kind, l, k) in &kinds {
            let (slot, who): (Slot, Vec<&dyn Unwrap>) = match kind {
                0 => (Slot::single(label(l)), vec![&keys().labels[l]]),
                1 => (Slot::single(key(k)), vec![&keys().ids[k]]),
                _ => (
                    Slot::double(label(l), key(k)).unwrap(),
                    vec![&keys().labels[l], &keys().ids[k]],
                ),
            };
            slots.push(slot);
            openers.push(who);
        }
        let sealed = seal(&slots, &Metadata::default(), b"slot test").unwrap();
        let who = &openers[pick.index(openers.len())];
        prop_assert_eq!(open(&sealed, who).unwrap().0, b"slot test");
        let strangers: [&dyn Unwrap; 2] = [&keys().labels[3], &keys().ids[3]];
        prop_assert!(matches!(open(&sealed, &strangers), Err(Error::NoMatchingKey)));
    }
}
