#![no_main]
use libfuzzer_sys::fuzz_target;

use kluis_file::Journal;

// The re-keying journal left beside a document by a crash: any bytes either parse to a
// journal that encodes back to the same bytes, or are refused, without a panic.
fuzz_target!(|data: &[u8]| {
    if let Some(j) = Journal::parse(data) {
        assert_eq!(j.old.len(), j.new.len());
        assert_eq!(j.to_bytes(), data);
    }
});
