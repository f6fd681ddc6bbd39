//! HTTPS with the organisation's own CA: a rustls server with a certificate from a test CA
//! (rcgen) serves a label record; the client trusts it only through its CA bundle.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Canned, record_json};
use kluis_client::{Client, ClientConfig, ClientError};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

struct Pki {
    ca_pem: String,
    server: Arc<rustls::ServerConfig>,
}

/// A CA, and a server certificate for `names` signed by it.
fn make_pki(names: &[&str]) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kluis test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let leaf = CertificateParams::new(names)
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone(), CertificateDer::from(ca.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .unwrap();
    Pki {
        ca_pem: ca.pem(),
        server: Arc::new(server),
    }
}

/// Make every cached record expired.
fn expire_all(cache: &std::path::Path) {
    for server in std::fs::read_dir(cache.join("servers")).unwrap() {
        for f in std::fs::read_dir(server.unwrap().path().join("labels")).unwrap() {
            let p = f.unwrap().path();
            let mut v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            v["fetched_at"] = (v["fetched_at"].as_u64().unwrap() - 7200).into();
            std::fs::write(&p, v.to_string()).unwrap();
        }
    }
}

fn client(url: &str, ca: Option<&std::path::Path>) -> Result<Client, ClientError> {
    let mut c = ClientConfig::new(url);
    c.ca_file = ca.map(std::path::Path::to_owned);
    c.timeout = Duration::from_secs(5);
    Client::new(c)
}

#[test]
fn https_with_the_organisations_ca_bundle() {
    let key = kluis_core::Identity::generate().unwrap().public_key();
    let pki = make_pki(&["127.0.0.1", "keys.example.org"]);
    let server = Canned::start(Some(pki.server.clone()), move |_, req| {
        assert_eq!(req.path, "/v1/labels/hr");
        Some((200, vec![], record_json(&key)))
    });
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();

    let url = server.url("https");
    let c = client(&url, Some(&ca_file)).unwrap();
    let record = c.label_record("hr").unwrap();
    assert_eq!(record.key.key(), &key);
    assert_eq!(server.count(), 1);

    // Cached, then expired: a client that does not trust the certificate seals with the
    // cached record, marked stale, and says why it could not refresh it.
    let cache = dir.path().join("cache");
    let mut config = ClientConfig::new(&url);
    config.ca_file = Some(ca_file.clone());
    config.cache_dir = Some(cache.clone());
    Client::new(config.clone())
        .unwrap()
        .label_record("hr")
        .unwrap();
    assert_eq!(server.count(), 2);
    expire_all(&cache);
    config.ca_file = None;
    let r = Client::new(config).unwrap().label_record("hr").unwrap();
    assert!(r.stale);
    assert!(
        matches!(
            r.refresh_error,
            Some(ClientError::UntrustedCertificate { .. })
        ),
        "{:?}",
        r.refresh_error
    );
    assert_eq!(r.key.key(), &key);

    // Without the bundle (Mozilla roots only) the certificate is refused, with advice.
    let c = client(&url, None).unwrap();
    let e = c.label_record("hr").unwrap_err();
    match &e {
        ClientError::UntrustedCertificate { detail, .. } => {
            assert!(
                detail.contains("not issued by a certificate authority"),
                "{detail}"
            )
        }
        other => panic!("expected an untrusted certificate, got {other:?}"),
    }
    let m = e.to_string();
    assert!(m.contains("not trusted") && m.contains("CA bundle"), "{m}");
    assert_eq!(
        server.count(),
        2,
        "no request reached the server, and none was retried"
    );

    // Another CA's bundle does not help.
    let other = dir.path().join("other.pem");
    std::fs::write(&other, make_pki(&["127.0.0.1"]).ca_pem).unwrap();
    let e = client(&url, Some(&other))
        .unwrap()
        .label_record("hr")
        .unwrap_err();
    assert!(
        matches!(e, ClientError::UntrustedCertificate { .. }),
        "{e:?}"
    );
}

#[test]
fn a_certificate_for_another_name_is_refused() {
    let pki = make_pki(&["keys.example.org"]);
    let server = Canned::start(Some(pki.server.clone()), |_, _| {
        Some((200, vec![], "{}".into()))
    });
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();
    let e = client(&server.url("https"), Some(&ca_file))
        .unwrap()
        .label_record("hr")
        .unwrap_err();
    match e {
        ClientError::UntrustedCertificate { detail, .. } => {
            assert!(detail.contains("not valid for this host name"), "{detail}")
        }
        other => panic!("expected an untrusted certificate, got {other:?}"),
    }
}

#[test]
fn unusable_ca_bundles_are_reported_when_the_client_is_made() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let e = client("https://keys.example.org", Some(&empty)).unwrap_err();
    assert!(matches!(e, ClientError::CaFile { .. }), "{e:?}");
    assert!(e.to_string().contains("BEGIN CERTIFICATE"), "{e}");
    let broken = dir.path().join("broken.pem");
    std::fs::write(
        &broken,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let e = client("https://keys.example.org", Some(&broken)).unwrap_err();
    assert!(e.to_string().contains("certificate 1"), "{e}");
    let missing = dir.path().join("missing.pem");
    assert!(matches!(
        client("https://keys.example.org", Some(&missing)),
        Err(ClientError::CaFile { .. })
    ));
}
