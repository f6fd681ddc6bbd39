#![no_main]
use libfuzzer_sys::fuzz_target;

use kluis_core::Metadata;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Metadata::decode(data) {
        assert_eq!(m.encode().unwrap(), data);
    }
});
