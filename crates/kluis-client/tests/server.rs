//! kluis-client against the real `kluis-server` process on loopback: label records and the
//! disk cache (offline, stale, key pinning), opening through the core's `Unwrap` with batch
//! requests, and the errors people see.

mod common;

use std::path::{Path, PathBuf};

use common::{Server, ServerExt, assert_no_token};
use kluis_client::{Client, ClientConfig, ClientError, Purpose, ServerHealth, Token};
use kluis_core::{
    Error, Header, Identity, Metadata, Recipient, Slot, UnwrapError, open, seal, unlock_all,
};
use serde_json::Value;

fn seal_to(record: &kluis_client::LabelRecord, text: &str) -> Vec<u8> {
    seal(
        &record.slots(None).unwrap(),
        &Metadata::default(),
        text.as_bytes(),
    )
    .unwrap()
}

/// The single cache file of label `name` under `root`.
fn cache_file(root: &Path, name: &str) -> PathBuf {
    let servers: Vec<_> = std::fs::read_dir(root.join("servers"))
        .unwrap()
        .map(|d| d.unwrap().path())
        .collect();
    assert_eq!(servers.len(), 1, "{servers:?}");
    servers[0].join("labels").join(format!("{name}.json"))
}

/// Edit a cache file as JSON.
fn edit(path: &Path, f: impl FnOnce(&mut Value)) {
    let mut v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

/// Make a cached record expired (fetched two hours ago, max_age one hour).
fn expire(path: &Path) {
    edit(path, |v| {
        let t = v["fetched_at"].as_u64().unwrap();
        v["fetched_at"] = (t - 7200).into();
    });
}

#[test]
fn label_records_are_cached_on_disk_and_used_offline() {
    let mut server = Server::start();
    let cache = tempfile::tempdir().unwrap();
    let client = server.client(None, Some(cache.path()));

    let hr = client.label_record("hr").unwrap();
    assert_eq!(
        (hr.label(), hr.kid(), hr.double_key, hr.stale),
        ("hr", 1, false, false)
    );
    assert_eq!(client.requests_sent(), 1);
    let path = cache_file(cache.path(), "hr");
    assert!(path.exists());

    // Fresh: answered from the cache, by this client and by a new one (a new process).
    assert_eq!(client.label_record("hr").unwrap().key, hr.key);
    assert_eq!(client.requests_sent(), 1);
    let again = server.client(None, Some(cache.path()));
    assert_eq!(again.label_record("hr").unwrap().key, hr.key);
    assert_eq!(again.requests_sent(), 0);

    // The server goes away: the fresh record still serves, without a request.
    server.stop();
    let offline = server.client(None, Some(cache.path()));
    let r = offline.label_record("hr").unwrap();
    assert_eq!((r.key.clone(), r.stale), (hr.key.clone(), false));
    assert_eq!(offline.requests_sent(), 0);

    // Expired and the server unreachable: the cached record is used, marked stale.
    expire(&path);
    let r = offline.label_record("hr").unwrap();
    assert!(r.stale);
    assert!(matches!(
        r.refresh_error,
        Some(ClientError::Unreachable { .. })
    ));
    assert_eq!(r.key, hr.key);
    assert!(r.expires_at < std::time::SystemTime::now());
    assert!(offline.requests_sent() >= 1, "it tried the server first");
    // And it still seals (opening will need the server).
    let sealed = seal_to(&r, "written on the train");
    assert!(Header::parse(&sealed).is_ok());

    // A label never fetched cannot be sealed to offline; the message says what works.
    match offline.label_record("medical") {
        Err(e @ ClientError::Unreachable { .. }) => {
            let m = e.to_string();
            assert!(
                m.contains(&format!(
                    "sealing still works offline; opening needs the key server at {}",
                    server.url
                )),
                "{m}"
            );
        }
        other => panic!("expected unreachable, got {other:?}"),
    }

    // Status: unreachable, one cached label, expired.
    let status = offline.status();
    assert!(matches!(status.health, ServerHealth::Unreachable(_)));
    assert_eq!(status.cached.len(), 1);
    assert_eq!(
        (status.cached[0].label.as_str(), status.cached[0].fresh),
        ("hr", false)
    );
}

#[test]
fn a_changed_key_without_a_new_version_is_refused_and_new_versions_replace_the_cache() {
    let server = Server::start();
    let cache = tempfile::tempdir().unwrap();
    let client = server.client(None, Some(cache.path()));
    let v1 = client.label_record("hr").unwrap();
    let path = cache_file(cache.path(), "hr");

    // The cache remembers another key for version 1 than the server now serves (as if the
    // server, or someone in between, swapped the key): the fetched record is refused and
    // the cache file is left exactly as it was.
    let other = Identity::generate().unwrap().public_key().to_string();
    edit(&path, |v| {
        v["record"]["public_key"] = other.clone().into();
        v["record"]["versions"][0]["public_key"] = other.clone().into();
        v["known_keys"]["1"] = other.clone().into();
    });
    expire(&path);
    let before = std::fs::read(&path).unwrap();
    match client.label_record("hr") {
        Err(e @ ClientError::KeyChanged { kid: 1, .. }) => {
            let m = e.to_string();
            assert!(
                m.contains("label `hr`") && m.contains("different public key"),
                "{m}"
            );
            assert!(
                !e.is_offline(),
                "no falling back to the cache on a changed key"
            );
        }
        other => panic!("expected KeyChanged, got {other:?}"),
    }
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "the cache is not overwritten"
    );

    // Put the real key back: accepted again.
    edit(&path, |v| {
        let real = v1.key.key().to_string();
        v["record"]["public_key"] = real.clone().into();
        v["record"]["versions"][0]["public_key"] = real.clone().into();
        v["known_keys"]["1"] = real.into();
    });
    assert_eq!(client.label_record("hr").unwrap().key, v1.key);

    // A rotation brings a new version: it replaces the record, and both keys stay known.
    server.admin(&["label", "rotate", "hr"]);
    expire(&path);
    let v2 = client.label_record("hr").unwrap();
    assert_eq!(v2.kid(), 2);
    assert_ne!(v2.key.key(), v1.key.key());
    let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(v["known_keys"]["1"], v1.key.key().to_string());
    assert_eq!(v["known_keys"]["2"], v2.key.key().to_string());

    // The cache saw a newer current version (3) than the server offers now (2): refused as
    // a rollback.
    edit(&path, |v| v["record"]["kid"] = 3.into());
    expire(&path);
    match client.label_record("hr") {
        Err(ClientError::KeyRollback {
            offered: 2,
            seen: 3,
            ..
        }) => {}
        other => panic!("expected KeyRollback, got {other:?}"),
    }
}

/// Sealing asks the server every time (`label_record_to_seal`), and its answer is checked
/// against the pinned keys even while the cached record is fresh: a known version whose key
/// changed, or an older current version than seen before, is refused (never answered from
/// the cache as if the server were offline), and the cache file is left as it was.
#[test]
fn the_record_to_seal_with_is_checked_against_the_pinned_keys() {
    let server = Server::start();
    let cache = tempfile::tempdir().unwrap();
    let client = server.client(None, Some(cache.path()));
    let v1 = client.label_record_to_seal("hr").unwrap();
    let path = cache_file(cache.path(), "hr");

    // Another key remembered for version 1; the cached record itself is fresh and intact.
    let other = Identity::generate().unwrap().public_key().to_string();
    edit(&path, |v| v["known_keys"]["1"] = other.into());
    let before = std::fs::read(&path).unwrap();
    assert_eq!(
        client.label_record("hr").unwrap().key,
        v1.key,
        "fresh: not asked"
    );
    match client.label_record_to_seal("hr") {
        Err(e @ ClientError::KeyChanged { kid: 1, .. }) => {
            assert!(
                !e.is_offline(),
                "no falling back to the cache on a changed key"
            );
            assert!(e.to_string().contains("different public key"), "{e}");
        }
        other => panic!("expected KeyChanged, got {other:?}"),
    }
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "the cache is left alone"
    );

    // The key remembered is the real one again: accepted.
    let real = v1.key.key().to_string();
    edit(&path, |v| v["known_keys"]["1"] = real.into());
    assert_eq!(client.label_record_to_seal("hr").unwrap().key, v1.key);

    // The cache saw version 3 as current; the server offers 1: refused as a rollback.
    edit(&path, |v| v["record"]["kid"] = 3.into());
    let before = std::fs::read(&path).unwrap();
    match client.label_record_to_seal("hr") {
        Err(ClientError::KeyRollback {
            offered: 1,
            seen: 3,
            ..
        }) => {}
        other => panic!("expected KeyRollback, got {other:?}"),
    }
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "the cache is left alone"
    );
}

#[test]
fn a_folder_opens_with_one_batch_request_and_every_opening_is_audited() {
    let server = Server::start();
    let client = server
        .client(Some(&server.alice), None)
        .with_reason("quarterly review")
        .unwrap();
    let hr = client.label_record("hr").unwrap();
    let docs: Vec<Vec<u8>> = (0..50).map(|i| seal_to(&hr, &format!("doc {i}"))).collect();
    let headers: Vec<Header> = docs.iter().map(|d| Header::parse(d).unwrap()).collect();
    let refs: Vec<&Header> = headers.iter().collect();

    let before = client.requests_sent();
    let keys = unlock_all(&refs, &[&client]);
    assert_eq!(
        client.requests_sent() - before,
        1,
        "50 documents, one request"
    );
    assert!(keys.iter().all(Result::is_ok));
    assert_eq!(open(&docs[7], &[&client]).unwrap().0, b"doc 7");

    // Every opening is in alice's audit trail, with her reason.
    let mine = client.my_audit().unwrap();
    assert_eq!(mine.len(), 51);
    assert!(mine.iter().all(|r| r.actor == "alice"
        && r.action == "unwrap"
        && r.outcome == "granted"
        && r.reason.as_deref() == Some("quarterly review")
        && r.label.as_deref() == Some("hr")));
    let ids: std::collections::HashSet<_> = mine.iter().filter_map(|r| r.doc_id.clone()).collect();
    assert!(ids.contains(&headers[49].doc_id().to_string()));

    // With a smaller batch size the same folder takes ceil(50 / 20) = 3 requests.
    let mut config = ClientConfig::new(&server.url);
    config.token = Some(Token::new(&server.alice).unwrap());
    config.max_batch = 20;
    let small = Client::new(config).unwrap();
    let keys = unlock_all(&refs, &[&small]);
    assert!(keys.iter().all(Result::is_ok));
    assert_eq!(small.requests_sent(), 3);

    // Labels and status for the CLI.
    let labels = client.labels().unwrap();
    let names: Vec<_> = labels
        .iter()
        .map(|l| (l.name.as_str(), l.current_kid))
        .collect();
    assert_eq!(names, [("hr", Some(1)), ("medical", Some(1))]);
    let status = client.status();
    assert_eq!(status.health, ServerHealth::Ready);
    assert!(status.has_token && status.cache_dir.is_none());
}

#[test]
fn double_key_labels_need_the_holder_key_too() {
    let server = Server::start();
    let client = server.client(Some(&server.alice), None);
    let medical = client.label_record("medical").unwrap();
    assert!(medical.double_key);
    assert!(matches!(
        medical.slots(None),
        Err(ClientError::HolderKeyNeeded { .. })
    ));
    let holder = Identity::generate().unwrap();
    let sealed = seal(
        &medical.slots(Some(&holder.public_key())).unwrap(),
        &Metadata::default(),
        b"diagnosis",
    )
    .unwrap();
    assert_eq!(open(&sealed, &[&client, &holder]).unwrap().0, b"diagnosis");

    // Sealed with the label key alone (against the label's policy): the server refuses.
    let single = seal(
        &[Slot::single(Recipient::Label(medical.key.clone()))],
        &Metadata::default(),
        b"x",
    )
    .unwrap();
    match open(&single, &[&client]) {
        Err(Error::Unwrap(UnwrapError::Denied(m))) => {
            assert!(
                m.to_string()
                    .contains("label `medical` requires double key"),
                "{m}"
            )
        }
        other => panic!("expected a double key refusal, got {other:?}"),
    }
}

#[test]
fn errors_say_what_to_do_and_never_show_the_token() {
    let mut server = Server::start();
    let alice = server.client(Some(&server.alice), None);
    let hr = alice.label_record("hr").unwrap();
    let doc = seal_to(&hr, "payroll");
    let header = Header::parse(&doc).unwrap();
    let stanza = &header.slots()[0][0];
    let request = [kluis_core::UnwrapRequest {
        doc_id: header.doc_id(),
        stanza,
    }];
    // Every message shown below, Display and Debug, to check for tokens at the end.
    let mut shown: Vec<String> = Vec::new();
    let mut err = |client: &Client| {
        let e = client.unwrap_batch(&request).pop().unwrap().unwrap_err();
        shown.push(format!("{e} {e:?} {:?}", e.to_unwrap_error()));
        e
    };

    // 401: a token the server does not know (alice's with its last character changed).
    let mut fake = server.alice.clone();
    let last = fake.pop().unwrap();
    fake.push(if last == 'A' { 'B' } else { 'A' });
    let stranger = server.client(Some(&fake), None);
    let e = err(&stranger);
    assert!(matches!(e, ClientError::Unauthenticated { .. }), "{e:?}");
    assert!(e.to_string().contains("run `kluis login`"), "{e}");
    match open(&doc, &[&stranger]) {
        Err(core @ Error::Unwrap(UnwrapError::Denied(_))) => {
            assert!(core.to_string().contains("kluis login"), "{core}");
            assert_no_token(&core, &core.to_string(), &fake);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    // No token at all: nothing is sent.
    let anonymous = server.client(None, None);
    let e = err(&anonymous);
    assert!(matches!(e, ClientError::NoToken { .. }));
    assert!(e.to_string().contains("run `kluis login`"));
    assert_eq!(anonymous.requests_sent(), 0);

    // 403: bob is not in hr-staff. The message names the label.
    let bob = server.client(Some(&server.bob), None);
    let e = err(&bob);
    assert_eq!(
        e.to_string(),
        "you are not allowed to open documents labelled `hr`; ask the label's owner"
    );
    match open(&doc, &[&bob]) {
        Err(Error::Unwrap(UnwrapError::Denied(m))) => {
            assert!(m.to_string().contains("`hr`"), "{m}")
        }
        other => panic!("expected a denial, got {other:?}"),
    }

    // Unknown label record.
    match alice.label_record("payroll") {
        Err(e @ ClientError::UnknownLabel { .. }) => assert!(e.to_string().contains("`payroll`")),
        other => panic!("expected UnknownLabel, got {other:?}"),
    }

    // Retired: opens only to re-key.
    server.admin(&["label", "rotate", "hr"]);
    server.admin(&["label", "retire", "hr", "1"]);
    let e = err(&alice);
    assert!(matches!(e, ClientError::Retired { kid: 1, .. }), "{e:?}");
    assert!(e.to_string().contains("re-key"), "{e}");
    let rekeyer = server
        .client(Some(&server.alice), None)
        .with_purpose(Purpose::Rekey);
    assert_eq!(open(&doc, &[&rekeyer]).unwrap().0, b"payroll");

    // 410: destroyed for everyone.
    server.admin(&["label", "destroy", "hr", "1", "--confirm", "hr"]);
    let e = err(&rekeyer);
    assert!(matches!(e, ClientError::Destroyed { kid: 1, .. }), "{e:?}");
    let m = e.to_string();
    assert!(
        m.starts_with("this document's key (label `hr`, version 1) was destroyed")
            && m.ends_with("; it cannot be opened by anyone"),
        "{m}"
    );
    match open(&doc, &[&alice]) {
        Err(Error::Unwrap(UnwrapError::Destroyed(m))) => {
            assert!(m.to_string().contains("destroyed"), "{m}")
        }
        other => panic!("expected destroyed, got {other:?}"),
    }

    // Server down: unavailable, and the message says sealing still works.
    server.stop();
    let e = err(&alice);
    assert!(matches!(e, ClientError::Unreachable { .. }), "{e:?}");
    match open(&doc, &[&alice]) {
        Err(Error::Unwrap(UnwrapError::Unavailable(m))) => assert!(
            m.to_string().contains(&format!(
                "sealing still works offline; opening needs the key server at {}",
                server.url
            )),
            "{m}"
        ),
        other => panic!("expected unavailable, got {other:?}"),
    }
    assert!(matches!(
        alice.my_audit(),
        Err(ClientError::Unreachable { .. })
    ));

    // None of these messages shows a token, in Display or Debug; nor does a client's Debug.
    assert_eq!(shown.len(), 6);
    for client in [&alice, &bob, &stranger] {
        shown.push(format!("{client:?}"));
    }
    for t in [&server.alice, &server.bob, &fake] {
        for m in &shown {
            assert_no_token(&m, m, t);
        }
    }
}
