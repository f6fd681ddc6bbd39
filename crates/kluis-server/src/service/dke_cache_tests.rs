//! The unsealed DKE private keys a serving connection keeps (review B of issue 16): a
//! destroyed version's key must not stay in the process's memory, nor one sealed under a
//! master key that was rotated away. Also the re-check of a decrypt at its audit commit.

use aws_lc_rs::rsa::{OAEP_SHA256_MGF1SHA256, OaepPublicEncryptingKey, PublicEncryptingKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::KeyService;
use super::dke::DkeRequest;
use super::unwrap::Admitted;
use super::writer::Observed;
use crate::keyring::KeySource;
use crate::limit::RateLimiter;
use crate::master_key::MasterKey;
use crate::policy::Policy;
use crate::sqlite::SqliteStore;
use crate::store::Principal;

fn alice() -> Admitted {
    let who = Principal {
        user: "oidc:entra:alice@org.nl".into(),
        groups: Vec::new(),
        credential: "oidc:entra:sub".into(),
    };
    Admitted::admit(&RateLimiter::new(0.0, 0.0), who, 1).unwrap()
}

/// A decrypt request for version `kid` of `medical`, made for its current public key.
fn request(store: &KeyService<SqliteStore>, kid: u32) -> DkeRequest {
    let (current, public) = store.dke_public_key("medical").unwrap().unwrap();
    assert_eq!(current, kid);
    let enc =
        OaepPublicEncryptingKey::new(PublicEncryptingKey::from_der(&public).unwrap()).unwrap();
    let mut out = vec![0u8; 256];
    let ct = enc
        .encrypt(&OAEP_SHA256_MGF1SHA256, &[7; 44], &mut out, None)
        .unwrap();
    DkeRequest {
        label: "medical".into(),
        key_id: crate::dke::key_id(kid, &public),
        alg: Some("RSA-OAEP-256".into()),
        value: Some(STANDARD.encode(ct)),
        malformed: None,
        client: "127.0.0.1".into(),
    }
}

/// A SQLite store in `dir` with DKE label `medical` for alice.
fn medical_store(dir: &std::path::Path) -> KeyService<SqliteStore> {
    let mut admin = KeyService::<SqliteStore>::init_sqlite(
        &dir.join("store.db"),
        KeySource::File(&dir.join("master.key")),
    )
    .unwrap();
    let policy = Policy {
        users: vec!["oidc:entra:alice@org.nl".to_owned()],
        ..Policy::default()
    };
    admin
        .create_label_with("medical", &policy, true, "admin")
        .unwrap();
    admin
}

fn cached(store: &KeyService<SqliteStore>, kid: u32) -> bool {
    store
        .dke_keys
        .borrow()
        .contains_key(&("medical".to_owned(), kid))
}

/// A serving connection that opened a version's DKE key forgets it once it sees the version
/// destroyed (by another connection, as `label destroy` is another process), as it does
/// label keys; and a master-key rotation drops every key unsealed under the old one.
#[test]
fn destroyed_and_resealed_dke_keys_leave_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let mut admin = medical_store(dir.path());
    let reader = admin.reopen().unwrap();
    let first = request(&reader, 1);
    assert_eq!(
        reader
            .dke_decrypt(&alice(), first.clone(), Observed(0))
            .outcome(),
        "granted"
    );
    assert!(cached(&reader, 1));

    admin.rotate("medical", "admin").unwrap();
    let second = request(&reader, 2);
    assert_eq!(
        reader.dke_decrypt(&alice(), second, Observed(0)).outcome(),
        "granted"
    );
    admin.destroy("medical", 1, "admin").unwrap();
    assert_eq!(
        reader.dke_decrypt(&alice(), first, Observed(0)).outcome(),
        "destroyed"
    );
    assert!(
        !cached(&reader, 1),
        "the destroyed version's private key stays unsealed in memory"
    );

    let mut owner = reader;
    assert!(cached(&owner, 2));
    owner
        .reseal_under(MasterKey::generate().unwrap(), None, "admin")
        .unwrap();
    assert!(
        !cached(&owner, 2),
        "a key unsealed under the old master key stays in memory"
    );
}

/// A decrypt overtaken by a withdrawal (here of another user's tokens) between its
/// decision and its commit releases nothing: an earlier decision leaves no record, the last
/// one is recorded with its grant as `access_changing`; decided again, it is granted.
#[test]
fn a_stale_decrypt_releases_nothing_and_its_last_decision_is_recorded() {
    use super::writer::{AuditWriter, NotCommitted, STALE_OUTCOME};
    let dir = tempfile::tempdir().unwrap();
    let mut admin = medical_store(dir.path());
    let reader = admin.reopen().unwrap();
    let writer = AuditWriter::start(admin.reopen().unwrap()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let req = request(&reader, 1);
    let mut outcomes = Vec::new();
    for (last, withdraw) in [(false, true), (true, true), (false, false)] {
        let pending = reader.dke_decrypt(&alice(), req.clone(), writer.observe());
        if withdraw {
            admin.revoke_user_tokens("bob", "admin").unwrap();
        }
        let answer = rt.block_on(writer.commit_dke(pending.last(last), writer.arriving()));
        outcomes.push(answer.map(|c| c.release().is_ok()));
    }
    assert_eq!(
        outcomes,
        [Err(NotCommitted::Stale), Err(NotCommitted::Stale), Ok(true)]
    );
    writer.shutdown();
    let recorded: Vec<String> = admin
        .audit_records(None)
        .unwrap()
        .iter()
        .filter(|r| r.entry.action == "dke.decrypt")
        .map(|r| r.entry.outcome.clone())
        .collect();
    assert_eq!(recorded, [STALE_OUTCOME, "granted"]);
    admin.verify_audit().unwrap();
}
