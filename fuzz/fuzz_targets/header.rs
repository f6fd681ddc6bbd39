#![no_main]
use libfuzzer_sys::fuzz_target;

use kluis_core::Header;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = Header::parse(data) {
        // Parse then serialise gives back exactly the bytes that were read.
        assert_eq!(h.to_bytes(), &data[..h.len()]);
        assert_eq!(h.as_bytes(), &data[..h.len()]);
    }
});
