//! The key server reply vectors in `tests/vectors/*.rvec` (docs/FORMAT.md §15; format in
//! `tests/vectors/README.md`), run through the client side: [`ReplyKey`] and
//! [`ReplyOpener`](kluis_core::reply::ReplyOpener).

use std::path::Path;

use kluis_core::reply::{ReplyKey, SealedShare};
use kluis_core::{DocId, Error};

fn hex_array<const N: usize>(s: &str) -> [u8; N] {
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out).unwrap_or_else(|_| panic!("{N} hex bytes: {s}"));
    out
}

/// Every reply vector; each must pass, and there must be the seven the generator writes.
#[test]
fn reply_vectors_open_as_specified() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "rvec"))
        .collect();
    files.sort();
    assert!(files.len() >= 7, "found {} reply vectors", files.len());
    let mut refused_seen = false;
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(path).unwrap();
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}: ")))
                .unwrap_or_else(|| panic!("{name}: no {k}"))
        };
        let client = ReplyKey::from_secret_bytes(hex_array(field("client-secret")));
        let server_public: [u8; 32] = hex_array(field("server-public"));
        let opener = match (client.opener(&server_public), field("expect")) {
            (Ok(o), "ok") => o,
            (Err(Error::ZeroSharedSecret), "zero-shared-secret") => continue,
            (Ok(_), e) => panic!("{name}: the reply key derived, expected {e}"),
            (Err(e), x) => panic!("{name}: {e}, expected {x}"),
        };
        let items: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("item: "))
            .collect();
        assert!(!items.is_empty(), "{name}: no items");
        for item in items {
            let parts: Vec<&str> = item.split(' ').collect();
            let doc_id = DocId(hex_array(parts[0]));
            match parts[1..] {
                ["refused"] => refused_seen = true,
                ["sealed", nonce, body, expected] => {
                    let sealed = SealedShare {
                        nonce: hex_array(nonce),
                        body: hex_array(body),
                    };
                    match (opener.open(&doc_id, &sealed), expected) {
                        (Err(_), "fails") => {}
                        (Ok(share), want) if want != "fails" => {
                            assert_eq!(share.expose_secret(), &hex_array::<32>(want), "{name}")
                        }
                        (r, want) => panic!("{name}: {:?}, expected {want}", r.is_ok()),
                    }
                }
                _ => panic!("{name}: bad item line {item:?}"),
            }
        }
    }
    assert!(refused_seen, "no vector has a refused item");
}
