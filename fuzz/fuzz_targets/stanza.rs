#![no_main]
use libfuzzer_sys::fuzz_target;

use kluis_core::Stanza;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = Stanza::from_bytes(data) {
        assert_eq!(s.to_bytes(), data);
    }
});
