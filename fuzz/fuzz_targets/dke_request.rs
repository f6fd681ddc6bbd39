#![no_main]
//! kluis-server's Microsoft DKE decrypt request: the body (`parse_decrypt_body`) and the key
//! id in the path (`parse_key_id`).
//!
//! The first byte picks the input: even, the rest is a decrypt body; odd, the rest is a key
//! id (UTF-8).
//!
//! Invariants: no panic; a body is either malformed (with a reason, and then no `alg` or
//! `value`) or gives the `alg` and `value` strings, which are then exactly the members named
//! `alg`/`value` in some letter case; a reason is one of a few fixed texts (never the body);
//! parsing is deterministic. A key id parses only in the
//! form `<version>-<8 lowercase hex>`, and `parse_key_id(key_id(v, pk)) == Some(v)` for every version
//! `v >= 1` (versions count from 1).
use kluis_server::dke::{key_id, parse_decrypt_body, parse_key_id};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn body(data: &[u8]) {
    let (alg, value, malformed) = parse_decrypt_body(data);
    assert_eq!(
        parse_decrypt_body(data),
        (alg.clone(), value.clone(), malformed.clone())
    );
    if let Some(why) = malformed {
        assert!(alg.is_none() && value.is_none());
        // The reason is one of a few fixed texts: it never repeats the body (which may carry
        // a ciphertext).
        let fixed = [
            "the body must be a JSON object",
            "`alg` is given twice, in different letter cases",
            "`value` is given twice, in different letter cases",
            "`alg` must be a string",
            "`value` must be a string",
        ];
        assert!(fixed.contains(&why.as_str()), "{why}");
        return;
    }
    let Ok(Value::Object(o)) = serde_json::from_slice::<Value>(data) else {
        panic!("accepted a body that is no JSON object");
    };
    for (name, got) in [("alg", alg), ("value", value)] {
        let members: Vec<&Value> = o
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
            .collect();
        let expected = o.get(name).or(if members.len() == 1 {
            Some(members[0])
        } else {
            None
        });
        match (got, expected) {
            (Some(s), Some(Value::String(e))) => assert_eq!(&s, e),
            (None, None | Some(Value::Null)) => {}
            (got, expected) => panic!("{name}: got {got:?}, the body has {expected:?}"),
        }
    }
}

fn key(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(v) = parse_key_id(text) {
        let (kid, fp) = text.split_once('-').expect("a parsed key id has a dash");
        assert_eq!(kid, v.to_string(), "the version is written one way only");
        assert_eq!(fp.len(), 8);
        assert!(fp.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
    }
    // Round trip, with the input as the public key and a version taken from it. Versions
    // count from 1: the id of a version 0 (`0-…`) is refused like any leading zero.
    let v = data
        .iter()
        .take(4)
        .fold(0u32, |a, &b| (a << 8) | u32::from(b));
    let expected = (v != 0).then_some(v);
    assert_eq!(parse_key_id(&key_id(v, data)), expected);
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 { body(rest) } else { key(rest) }
});
