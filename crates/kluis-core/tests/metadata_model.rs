//! The metadata decoder against a model written from docs/FORMAT.md §7 and §7.1 alone
//! (review of issue 17 defect 6): on structured random blocks, padded names included, it
//! accepts exactly what the rules accept, never panics, and re-encodes what it accepts to
//! the same bytes (one encoding per metadata).

use kluis_core::Metadata;
use proptest::prelude::*;

/// §7 reader checks 1–8 and §7.1, as written there.
fn model_accepts(b: &[u8]) -> bool {
    if !(31..=4127).contains(&b.len()) {
        return false;
    }
    let flags = b[0];
    if flags & 0xF8 != 0 {
        return false;
    }
    let size = u64::from_be_bytes(b[1..9].try_into().unwrap());
    let secs = i64::from_be_bytes(b[9..17].try_into().unwrap());
    let nanos = u32::from_be_bytes(b[17..21].try_into().unwrap());
    let padding = u64::from_be_bytes(b[21..29].try_into().unwrap());
    let name_len = u16::from_be_bytes([b[29], b[30]]) as usize;
    let field = b.len() - 31;
    if flags & 0x04 != 0 {
        let bucket = 256 * name_len.div_ceil(256).max(1);
        if name_len > 4096 || field != bucket || b[31 + name_len..].iter().any(|&x| x != 0) {
            return false;
        }
    } else if name_len != field {
        return false;
    }
    if std::str::from_utf8(&b[31..31 + name_len]).is_err() {
        return false;
    }
    if flags & 0x01 == 0 && (size != 0 || padding != 0) {
        return false;
    }
    if flags & 0x02 == 0 && (secs != 0 || nanos != 0) {
        return false;
    }
    if size.checked_add(padding).is_none() {
        return false;
    }
    if flags & 0x02 != 0
        && (nanos >= 1_000_000_000 || !(-11_644_473_600..=253_402_300_799).contains(&secs))
    {
        return false;
    }
    true
}

/// Blocks near the valid ones: each field mostly valid, sometimes arbitrary.
fn block() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![8 => 0u8..8, 1 => any::<u8>()],
        prop_oneof![4 => 0u64..1_000_000, 1 => any::<u64>()],
        prop_oneof![4 => -20_000_000_000i64..300_000_000_000, 1 => any::<i64>()],
        prop_oneof![4 => 0u32..1_000_000_000, 1 => any::<u32>()],
        prop_oneof![4 => 0u64..100, 1 => any::<u64>()],
        prop_oneof![0usize..8, 250usize..260, 4090usize..4100, 0usize..5000],
        prop_oneof![6 => Just(0usize), 1 => 1usize..520, 1 => 4090usize..4200],
        prop_oneof![8 => Just(None), 1 => any::<u16>().prop_map(Some)],
        any::<u8>(),
        prop_oneof![6 => Just(false), 1 => Just(true)],
    )
        .prop_map(
            |(flags, size, secs, nanos, padding, name_len, extra, lie, fill, nonzero)| {
                // Mostly consistent flags: the size and time flags follow the fields.
                let mut flags = flags;
                if flags < 8 {
                    flags = (flags & 0x04)
                        | u8::from(size != 0 || padding != 0)
                        | (u8::from(secs != 0 || nanos != 0) << 1);
                }
                let mut b = vec![flags];
                b.extend_from_slice(&size.to_be_bytes());
                b.extend_from_slice(&secs.to_be_bytes());
                b.extend_from_slice(&nanos.to_be_bytes());
                b.extend_from_slice(&padding.to_be_bytes());
                b.extend_from_slice(&lie.unwrap_or(name_len.min(65_535) as u16).to_be_bytes());
                b.extend(std::iter::repeat_n(b'a' + fill % 26, name_len));
                if fill > 250 && name_len > 0 {
                    b[31] = 0xFF; // not UTF-8
                }
                // The name padding: what the flags call for, or `extra` more bytes; zero
                // or not.
                if flags & 0x04 != 0 {
                    b.resize(31 + 256 * name_len.div_ceil(256).max(1), 0);
                }
                let len = b.len() + extra;
                b.resize(len, if nonzero { fill } else { 0 });
                if nonzero && flags & 0x04 != 0 && b.len() > 31 + name_len {
                    let last = b.len() - 1;
                    b[last] |= 1;
                }
                b
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn decode_agrees_with_the_format_rules(b in block()) {
        let got = Metadata::decode(&b);
        prop_assert_eq!(got.is_ok(), model_accepts(&b), "flags {:#x} len {}", b[0], b.len());
        if let Ok(m) = got {
            prop_assert_eq!(m.encode().unwrap(), b);
        }
    }

    #[test]
    fn decode_never_panics_on_any_bytes(b in proptest::collection::vec(any::<u8>(), 0..4300)) {
        let got = Metadata::decode(&b);
        prop_assert_eq!(got.is_ok(), model_accepts(&b));
    }
}

/// The generator is not vacuous: it makes valid blocks, padded ones among them, and
/// invalid ones.
#[test]
fn the_generator_reaches_valid_padded_and_invalid_blocks() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let (mut valid, mut padded, mut invalid) = (0, 0, 0);
    for _ in 0..4000 {
        let b = block().new_tree(&mut runner).unwrap().current();
        if model_accepts(&b) {
            valid += 1;
            padded += usize::from(b[0] & 0x04 != 0);
        } else {
            invalid += 1;
        }
    }
    assert!(
        valid > 100 && padded > 50 && invalid > 100,
        "{valid} {padded} {invalid}"
    );
}
