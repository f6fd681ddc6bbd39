#![no_main]
use libfuzzer_sys::fuzz_target;

use kluis_core::Identity;

// A structurally valid file runs Argon2id (64 MiB to 1 GiB): slow, but bounded.
fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        // The unauthenticated comment parser, run without the passphrase (FORMAT.md §14.1).
        let _ = Identity::claimed_public_key(text);
        let _ = Identity::from_file_string(text, b"pw");
    }
});
