#![no_main]
use libfuzzer_sys::fuzz_target;

use kluis_core::PublicKey;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(key) = text.parse::<PublicKey>() {
        assert_eq!(key.to_string().parse::<PublicKey>().unwrap(), key);
    }
});
