//! Identity files on disk (moved here from kluis-core, which does no file-system I/O).

use kluis_core::{Error, Identity};
use kluis_file::{read_identity_file, write_identity_file};

#[test]
fn identity_file_round_trip_wrong_passphrase_and_file_mode() {
    let id = Identity::generate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("me.kluis-identity");
    write_identity_file(&id, &path, b"correct horse").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(&id.public_key().to_string()));
    let back = read_identity_file(&path, b"correct horse").unwrap();
    assert_eq!(back.public_key(), id.public_key());
    assert!(matches!(
        read_identity_file(&path, b"wrong"),
        Err(Error::WrongPassphrase)
    ));
    // Never overwrites.
    assert!(write_identity_file(&id, &path, b"x").is_err());
    // A modified file does not open.
    let tampered = text.replace("KLUIS-IDENTITY-1 A", "KLUIS-IDENTITY-1 B");
    if tampered != text {
        assert!(Identity::from_file_string(&tampered, b"correct horse").is_err());
    }
    assert!(matches!(
        Identity::from_file_string("hello", b"x"),
        Err(Error::InvalidIdentityFile { .. })
    ));
}

#[test]
fn reading_an_identity_from_a_directory_says_so() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        read_identity_file(dir.path(), b"x"),
        Err(Error::Io(_))
    ));
}
