//! A destroy whose scrub fails for another reason than a connection holding the store
//! (review finding of issue 14, defect 2): the failure must say that the version IS
//! destroyed and what remains to do, not only the SQLite error.

use super::SqliteStore;
use crate::error::ServerError;
use crate::keyring::KeySource;
use crate::policy::Policy;
use crate::service::KeyService;
use crate::store::VersionState;

/// The destroy commits on the real store; the scrub that follows then fails (here: the file
/// it opens is not a database, as an I/O error or a full disk would make it fail).
#[test]
fn a_scrub_that_fails_after_the_destroy_says_the_version_is_destroyed() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    let mut store = KeyService::<SqliteStore>::init_sqlite(
        &db,
        KeySource::File(&dir.path().join("master.key")),
    )
    .unwrap();
    let policy = Policy {
        users: vec!["alice".to_owned()],
        ..Policy::default()
    };
    store.create_label("hr", &policy, "admin").unwrap();
    store.rotate("hr", "admin").unwrap();

    let broken = dir.path().join("not-a-database");
    std::fs::write(&broken, vec![b'x'; 4096]).unwrap();
    store.store_mut().path = broken;
    let e = store.destroy("hr", 1, "admin").unwrap_err();
    assert!(
        matches!(e, ServerError::ScrubFailed { kid: 1, .. }),
        "{e:?}"
    );
    let message = e.to_string();
    assert!(
        message.contains("key version 1 of label `hr` IS destroyed in the store")
            && message.contains("not a database")
            && message.contains("kluis-server store scrub"),
        "{message}"
    );

    // It is destroyed, and the scrub is still marked as pending, so it is retried.
    assert_eq!(
        store.label("hr").unwrap().versions[0].state,
        VersionState::Destroyed
    );
    store.store_mut().path = db;
    assert!(
        store
            .store()
            .scrub_if_pending(std::time::Duration::from_secs(5))
            .unwrap()
    );
    assert!(
        !store
            .store()
            .scrub_if_pending(std::time::Duration::from_secs(5))
            .unwrap()
    );
}
