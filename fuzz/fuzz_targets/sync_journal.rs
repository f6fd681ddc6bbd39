#![no_main]
//! What kluis sync reads back from disk: its state journal, and the content of an opened
//! `.kluis-folder` document.
//!
//! The first byte picks the input: even, the rest is a journal file; odd, the rest is the
//! plaintext of an opened folder-key document.
//!
//! Invariants: no panic; a journal that is accepted is written back as bytes that are
//! accepted again and written back identically (re-encoding is a fixed point); a folder-key
//! content is accepted exactly when it is the magic and 32 bytes, and
//! `folder_key_content(folder_key_content_for(k)) == k`.
use kluis_sync::fuzzing::{folder_key_content, folder_key_content_for, journal};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        if let Ok(written) = journal(rest) {
            let again = journal(&written).expect("a written journal is read back");
            assert_eq!(again, written, "re-encoding is a fixed point");
        }
        return;
    }
    let magic = b"kluis-sync/v1 folder-key\0";
    match folder_key_content(rest) {
        Some(k) => {
            assert_eq!(rest.len(), magic.len() + 32);
            assert!(rest.starts_with(magic));
            assert_eq!(&k[..], &rest[magic.len()..]);
            assert_eq!(&folder_key_content_for(&k)[..], rest);
        }
        None => assert!(rest.len() != magic.len() + 32 || !rest.starts_with(magic)),
    }
    let mut k = [0u8; 32];
    for (d, s) in k.iter_mut().zip(rest) {
        *d = *s;
    }
    let content = folder_key_content_for(&k);
    assert_eq!(folder_key_content(&content).as_deref(), Some(&k));
});
