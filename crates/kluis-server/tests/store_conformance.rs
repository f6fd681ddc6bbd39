//! The store conformance suite: what every [`Store`] implementation must do, run against each
//! (SQLite, and PostgreSQL on a throwaway cluster of this test binary: see
//! `kluis_testkit::postgres`). Rows are checked through the row-level trait; the audit
//! chain, concurrent writers and a writer killed mid-append through the keyring and service
//! that every store is used with.
//!
//! A new store adds one line at the bottom: `conformance!(name, Backend)`.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kluis_core::reply::{ReplyKey, ReplySealer};
use kluis_core::{DocId, OrgStanza, Stanza};
use kluis_server::audit::AuditEntry;
use kluis_server::service::unwrap::{Admitted, Purpose, UnwrapRequest};
use kluis_server::writer::{AuditWriter, NotCommitted};
use kluis_server::{
    KeyService, KeySource, PgOptions, PgStore, Policy, PolicyEdit, SecretKind, ServerError,
    SqliteStore, Store, TokenRow, VersionRow, VersionState, meta, now_ms,
};
use kluis_testkit::postgres::{PASSWORD, PgCluster};

/// How the suite makes and reopens a store of one engine, kept in `dir`.
trait Backend {
    /// The store type.
    type S: Store;
    /// A new, empty store.
    fn create(dir: &Path) -> Self::S;
    /// The store made by `create` in `dir`, opened again (another process may be writing).
    fn open(dir: &Path) -> Self::S;
}

struct Sqlite;

impl Backend for Sqlite {
    type S = SqliteStore;
    fn create(dir: &Path) -> SqliteStore {
        SqliteStore::create(&dir.join("store.db")).unwrap()
    }
    fn open(dir: &Path) -> SqliteStore {
        SqliteStore::open(&dir.join("store.db")).unwrap()
    }
}

/// PostgreSQL: a new database in this binary's cluster per store; its URL is kept in `dir`, so
/// that a child process (the crash test's writer) finds it without a cluster of its own.
struct Postgres;

fn pg_options(url: &str) -> PgOptions {
    let mut o = PgOptions::new(url);
    o.password = Some(PASSWORD.to_owned().into());
    o
}

impl Backend for Postgres {
    type S = PgStore;
    fn create(dir: &Path) -> PgStore {
        let cluster = PgCluster::shared();
        let url = cluster.url(&cluster.create_database());
        std::fs::write(dir.join("pg-url"), &url).unwrap();
        PgStore::create(&pg_options(&url)).unwrap()
    }
    fn open(dir: &Path) -> PgStore {
        let url = std::fs::read_to_string(dir.join("pg-url")).unwrap();
        PgStore::open(&pg_options(&url)).unwrap()
    }
}

fn key(dir: &Path) -> std::path::PathBuf {
    dir.join("master.key")
}

/// A store initialised by the keyring (meta rows, `store.init` record).
fn service<B: Backend>(dir: &Path) -> KeyService<B::S> {
    KeyService::init(B::create(dir), KeySource::File(&key(dir))).unwrap()
}

fn reopened<B: Backend>(dir: &Path) -> KeyService<B::S> {
    KeyService::open(B::open(dir), KeySource::File(&key(dir))).unwrap()
}

fn version(kid: u32, state: VersionState, sealed: Option<Vec<u8>>) -> VersionRow {
    VersionRow {
        kid,
        state,
        public_key: format!("kluis1public{kid}"),
        sealed_secret: sealed,
        created_ms: 1000 + i64::from(kid),
        destroyed_ms: None,
        superseded_ms: None,
        dke_public: None,
        dke_sealed: None,
    }
}

fn token(id: &str, user: &str, created_ms: i64) -> TokenRow {
    TokenRow {
        id: id.to_owned(),
        hash: vec![0, 1, 2, 255, 0],
        user: user.to_owned(),
        groups: vec!["hr".into(), "jurídisch ✓".into()],
        created_ms,
        expires_ms: Some(99),
        revoked_ms: None,
    }
}

fn entry(actor: &str, reason: &str, credential: Option<&str>) -> AuditEntry {
    AuditEntry {
        time_ms: 7,
        actor: actor.to_owned(),
        action: "unwrap".into(),
        label: Some("hr".into()),
        kid: Some(1),
        doc_id: None,
        outcome: "granted".into(),
        reason: Some(reason.to_owned()),
        client: Some("127.0.0.1".into()),
        credential: credential.map(str::to_owned),
    }
}

/// Labels: added, read back verbatim, listed sorted, policies replaced; a second label of
/// the same name is refused; an unknown label reads as `None`.
fn labels<B: Backend>() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = B::create(dir.path());
    s.write(|tx| {
        tx.insert_label("legal", r#"{"users":["bob"]}"#, 5)?;
        tx.insert_label("hr", r#"{"groups":["hr"]}"#, 6)?;
        assert_eq!(
            tx.label_policy("hr")?.as_deref(),
            Some(r#"{"groups":["hr"]}"#),
            "a transaction reads its own writes"
        );
        Ok(())
    })
    .unwrap();
    assert_eq!(s.label_names().unwrap(), ["hr", "legal"]);
    assert_eq!(
        s.label_policy("legal").unwrap().as_deref(),
        Some(r#"{"users":["bob"]}"#)
    );
    assert_eq!(s.label_policy("nope").unwrap(), None);
    assert!(
        s.write(|tx| tx.insert_label("hr", "{}", 7)).is_err(),
        "a label name is unique"
    );
    s.write(|tx| tx.set_policy("hr", r#"{"users":["carol"]}"#))
        .unwrap();
    assert_eq!(
        s.label_policy("hr").unwrap().as_deref(),
        Some(r#"{"users":["carol"]}"#)
    );
}

/// Key versions: opaque sealed bytes round trip, one current version per label, rotation
/// (supersede), retire, destroy (the sealed secret is gone), re-sealing.
fn versions<B: Backend>() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = B::create(dir.path());
    let sealed1: Vec<u8> = (0..=255).collect();
    s.write(|tx| {
        tx.insert_label("hr", "{}", 1)?;
        tx.insert_version(
            "hr",
            &version(1, VersionState::Current, Some(sealed1.clone())),
        )
    })
    .unwrap();
    assert_eq!(
        s.version("hr", 1).unwrap(),
        Some(version(1, VersionState::Current, Some(sealed1.clone())))
    );
    assert_eq!(s.version("hr", 2).unwrap(), None);
    assert_eq!(s.version("nope", 1).unwrap(), None);
    let in_tx = s
        .write(|tx| Ok((tx.version("hr", 1)?, tx.version("hr", 2)?)))
        .unwrap();
    assert_eq!(
        in_tx,
        (
            Some(version(1, VersionState::Current, Some(sealed1.clone()))),
            None
        )
    );
    assert!(
        s.write(|tx| tx.insert_version("hr", &version(2, VersionState::Current, Some(vec![2]))))
            .is_err(),
        "a second current version is refused"
    );
    assert!(
        s.write(|tx| tx.insert_version("nope", &version(1, VersionState::Current, Some(vec![1]))))
            .is_err(),
        "a version of an unknown label is refused"
    );
    s.write(|tx| {
        tx.supersede_current("hr", 50)?;
        tx.insert_version("hr", &version(2, VersionState::Current, Some(vec![2; 60])))
    })
    .unwrap();
    let v = s.versions("hr").unwrap();
    assert_eq!(
        v.iter().map(|v| (v.kid, v.state)).collect::<Vec<_>>(),
        [(1, VersionState::Active), (2, VersionState::Current)]
    );
    assert_eq!(v[0].superseded_ms, Some(50));
    assert_eq!(v[1].superseded_ms, None);

    s.write(|tx| tx.set_state("hr", 1, VersionState::Retired))
        .unwrap();
    assert_eq!(
        s.version("hr", 1).unwrap().unwrap().state,
        VersionState::Retired
    );
    // A DKE key pair on version 1: the public part stays for the record, the sealed private
    // part goes with the destroy.
    s.write(|tx| tx.set_dke_key("hr", 1, b"rsa-public-1", &[7; 1200]))
        .unwrap();
    let v1 = s.version("hr", 1).unwrap().unwrap();
    assert_eq!(
        (v1.dke_public.as_deref(), v1.dke_sealed.as_deref()),
        (Some(&b"rsa-public-1"[..]), Some(&[7u8; 1200][..]))
    );
    assert_eq!(s.version("hr", 2).unwrap().unwrap().dke_public, None);
    assert_eq!(
        live(&mut s),
        [
            ("hr".to_owned(), 1, SecretKind::Label, sealed1.clone()),
            ("hr".to_owned(), 1, SecretKind::Dke, vec![7; 1200]),
            ("hr".to_owned(), 2, SecretKind::Label, vec![2; 60]),
        ]
    );
    s.write(|tx| tx.set_sealed_secret("hr", 1, SecretKind::Dke, &[8; 1201]))
        .unwrap();
    assert_eq!(
        s.version("hr", 1).unwrap().unwrap().dke_sealed,
        Some(vec![8; 1201]),
        "re-sealing the DKE key replaces only it"
    );
    assert_eq!(
        s.version("hr", 1).unwrap().unwrap().sealed_secret,
        Some(sealed1.clone())
    );
    s.write(|tx| tx.destroy_version("hr", 1, 70)).unwrap();
    let gone = s.version("hr", 1).unwrap().unwrap();
    assert_eq!(
        (
            gone.state,
            gone.sealed_secret,
            gone.dke_sealed,
            gone.destroyed_ms
        ),
        (VersionState::Destroyed, None, None, Some(70))
    );
    assert_eq!(gone.public_key, "kluis1public1", "kept for the record");
    assert_eq!(
        gone.dke_public.as_deref(),
        Some(&b"rsa-public-1"[..]),
        "kept for the record"
    );
    s.write(|tx| tx.set_dke_key("hr", 1, b"again", &[1; 9]))
        .unwrap();
    assert_eq!(
        s.version("hr", 1).unwrap().unwrap().dke_sealed,
        None,
        "a destroyed version takes no new key"
    );
    assert_eq!(
        live(&mut s),
        [("hr".to_owned(), 2, SecretKind::Label, vec![2; 60])]
    );
    s.write(|tx| tx.set_sealed_secret("hr", 2, SecretKind::Label, &[9; 61]))
        .unwrap();
    assert_eq!(
        s.version("hr", 2).unwrap().unwrap().sealed_secret,
        Some(vec![9; 61])
    );
    // What an engine must do to forget the destroyed bytes it may do now or later.
    match s.forget_old_copies() {
        Ok(()) | Err(ServerError::ScrubPending { .. }) => {}
        Err(e) => panic!("{e}"),
    }
}

/// Every sealed secret the store holds, sorted.
fn live<S: Store>(s: &mut S) -> Vec<(String, u32, SecretKind, Vec<u8>)> {
    let mut rows: Vec<_> = s
        .write(|tx| tx.sealed_secrets())
        .unwrap()
        .into_iter()
        .map(|r| (r.label, r.kid, r.kind, r.sealed))
        .collect();
    rows.sort_by(|a, b| (&a.0, a.1, a.2 as u8).cmp(&(&b.0, b.1, b.2 as u8)));
    rows
}

/// Tokens: rows round trip (hash bytes, Unicode groups), listed oldest first, revoked once,
/// all of a user's active tokens revoked together.
fn tokens<B: Backend>() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = B::create(dir.path());
    s.write(|tx| {
        tx.insert_token(&token("kluis_bbbbbbbb", "alice", 20))?;
        tx.insert_token(&token("kluis_aaaaaaaa", "alice", 10))?;
        tx.insert_token(&token("kluis_cccccccc", "bob", 30))
    })
    .unwrap();
    assert_eq!(
        s.token("kluis_bbbbbbbb").unwrap(),
        Some(token("kluis_bbbbbbbb", "alice", 20))
    );
    assert_eq!(s.token("kluis_zzzzzzzz").unwrap(), None);
    assert_eq!(
        s.tokens()
            .unwrap()
            .iter()
            .map(|t| t.id.as_str())
            .collect::<Vec<_>>(),
        ["kluis_aaaaaaaa", "kluis_bbbbbbbb", "kluis_cccccccc"]
    );
    assert!(
        s.write(|tx| tx.insert_token(&token("kluis_aaaaaaaa", "eve", 40)))
            .is_err(),
        "a token id is unique"
    );
    assert!(s.write(|tx| tx.revoke_token("kluis_cccccccc", 41)).unwrap());
    assert!(!s.write(|tx| tx.revoke_token("kluis_cccccccc", 42)).unwrap());
    assert!(!s.write(|tx| tx.revoke_token("kluis_zzzzzzzz", 42)).unwrap());
    assert_eq!(
        s.token("kluis_cccccccc").unwrap().unwrap().revoked_ms,
        Some(41)
    );
    assert_eq!(
        s.write(|tx| tx.revoke_user("alice", 50)).unwrap(),
        ["kluis_aaaaaaaa", "kluis_bbbbbbbb"]
    );
    assert!(
        s.write(|tx| tx.revoke_user("alice", 51))
            .unwrap()
            .is_empty()
    );
    assert!(s.tokens().unwrap().iter().all(|t| t.revoked_ms.is_some()));
}

/// A transaction that fails leaves nothing behind; meta values are opaque bytes.
fn transactions<B: Backend>() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = B::create(dir.path());
    let e = s
        .write(|tx| -> kluis_server::Result<()> {
            tx.insert_label("hr", "{}", 1)?;
            tx.put_meta("x", &[0, 255])?;
            tx.insert_audit(1, &entry("alice", "r", None), &[1; 32])?;
            Err(ServerError::Refused("changed my mind".into()))
        })
        .unwrap_err();
    assert!(matches!(e, ServerError::Refused(_)), "{e}");
    assert_eq!(s.label_names().unwrap(), Vec::<String>::new());
    assert_eq!(s.meta("x").unwrap(), None);
    assert!(s.audit_page(None, 0, 10).unwrap().is_empty());
    s.write(|tx| {
        tx.put_meta("x", &[0, 255])?;
        tx.put_meta("x", &[1, 0, 0])
    })
    .unwrap();
    assert_eq!(s.meta("x").unwrap(), Some(vec![1, 0, 0]));
}

/// The audit chain over the store: appended, read whole and in pages, by actor and by
/// credential, tail and head; an edited record is detected.
fn audit_chain<B: Backend>() {
    let dir = tempfile::tempdir().unwrap();
    let mut svc = service::<B>(dir.path());
    assert!(svc.is_reachable());
    let mut batch = Vec::new();
    for i in 0..25 {
        let (actor, cred) = match i % 3 {
            0 => ("alice", "token:kluis_abcdefgh"),
            1 => ("oidc:corp:bob", "oidc:corp:bob-sub#jti1"),
            _ => ("oidc:corp:bob", "oidc:corp:bob-sub2"),
        };
        batch.push(entry(actor, &format!("r{i}"), Some(cred)));
    }
    svc.append_audit(&batch[..10]).unwrap();
    svc.append_audit(&batch[10..]).unwrap();
    let (n, head) = svc.verify_audit().unwrap();
    assert_eq!(n, 26, "store.init and 25 records");
    let all = svc.audit_records(None).unwrap();
    assert_eq!(
        all.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (1..=26).collect::<Vec<_>>()
    );
    assert_eq!(hex::encode(&all[25].mac), head);
    assert_eq!(all[1].entry, batch[0], "every field round trips");
    // Pages.
    let mut paged = Vec::new();
    let mut after = 0;
    loop {
        let page = svc.audit_page(None, after, 7).unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 7);
        after = page.last().unwrap().seq;
        paged.extend(page);
    }
    assert_eq!(paged, all);
    let alice = svc.audit_page(Some("alice"), 0, 1000).unwrap();
    assert_eq!(alice.len(), 9);
    assert!(alice.iter().all(|r| r.entry.actor == "alice"));
    assert_eq!(
        svc.audit_page(Some("alice"), alice[4].seq, 2).unwrap(),
        alice[5..7]
    );
    // By credential: exact, and an OpenID subject without `#` takes its JWTs too.
    assert_eq!(
        svc.audit_by_credential("token:kluis_abcdefgh")
            .unwrap()
            .len(),
        9
    );
    assert_eq!(
        svc.audit_by_credential("oidc:corp:bob-sub").unwrap().len(),
        8
    );
    assert_eq!(
        svc.audit_by_credential("oidc:corp:bob-sub#jti1")
            .unwrap()
            .len(),
        8
    );
    assert_eq!(
        svc.audit_by_credential("oidc:corp:bob-sub2").unwrap().len(),
        8
    );
    assert!(svc.audit_by_credential("oidc:corp:bob").unwrap().is_empty());
    // The tail the next append continues from.
    let mut store = B::open(dir.path());
    let tail = store.write(|tx| tx.audit_tail()).unwrap();
    assert_eq!(tail, Some((26, all[25].mac.clone())));
    // A record changed behind the keyring's back is detected.
    store
        .write(|tx| {
            let mut forged = all[25].entry.clone();
            forged.outcome = "denied".into();
            tx.insert_audit(27, &forged, &all[25].mac)
        })
        .unwrap();
    assert!(matches!(
        reopened::<B>(dir.path()).verify_audit(),
        Err(ServerError::AuditBroken { seq: 27, .. })
    ));
}

/// Writers on several connections append at once: no gap, no duplicate, every record
/// present once, the chain verifies.
fn concurrent_writers<B: Backend>() {
    const THREADS: usize = 6;
    const EACH: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let svc = service::<B>(dir.path());
    let start = std::sync::Barrier::new(THREADS);
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let mut mine = svc.reopen().unwrap();
            let start = &start;
            scope.spawn(move || {
                start.wait();
                for i in 0..EACH {
                    // Single records and pairs, in their own transactions.
                    let n = 1 + i % 2;
                    let batch: Vec<_> = (0..n)
                        .map(|k| entry(&format!("t{t}"), &format!("{t}/{i}/{k}"), None))
                        .collect();
                    mine.append_audit(&batch).unwrap();
                }
            });
        }
    });
    let (n, _) = svc.verify_audit().unwrap();
    let per_thread: usize = (0..EACH).map(|i| 1 + i % 2).sum();
    assert_eq!(n as usize, 1 + THREADS * per_thread);
    let records = svc.audit_records(None).unwrap();
    let reasons: HashSet<_> = records
        .iter()
        .skip(1)
        .map(|r| r.entry.reason.clone().unwrap())
        .collect();
    assert_eq!(
        reasons.len(),
        THREADS * per_thread,
        "no record twice or lost"
    );
    // Each thread's records are in its own order, and a pair stays together.
    for t in 0..THREADS {
        let mine: Vec<_> = records
            .iter()
            .filter(|r| r.entry.actor == format!("t{t}"))
            .collect();
        for w in mine.windows(2) {
            let parse = |r: &kluis_server::audit::AuditRecord| {
                let r = r.entry.reason.clone().unwrap();
                let v: Vec<usize> = r.split('/').map(|x| x.parse().unwrap()).collect();
                (v[1], v[2])
            };
            assert!(parse(w[0]) < parse(w[1]), "out of order for thread {t}");
            if parse(w[1]).1 == 1 {
                assert_eq!(w[1].seq, w[0].seq + 1, "a transaction was split");
            }
        }
    }
}

/// Reads in one snapshot see nothing that another connection commits meanwhile (so the
/// audit records and the stored head are read at the same moment).
fn snapshots<B: Backend>() {
    let dir = tempfile::tempdir().unwrap();
    let svc = service::<B>(dir.path());
    let mut other = svc.reopen().unwrap();
    svc.store()
        .snapshot(|s| {
            let records = s.audit_page(None, 0, 100)?;
            let head = s.meta(meta::AUDIT_HEAD)?;
            other.append_audit(&[entry("alice", "meanwhile", None)])?;
            assert_eq!(s.audit_page(None, 0, 100)?, records, "a record appeared");
            assert_eq!(s.meta(meta::AUDIT_HEAD)?, head, "the head moved");
            Ok(())
        })
        .unwrap();
    assert_eq!(svc.audit_records(None).unwrap().len(), 2, "then it shows");
    assert_eq!(svc.verify_audit().unwrap().0, 2);
}

/// The env var that makes the test binary a writer to be killed (see [`crash`]).
const CHILD: &str = "KLUIS_CONFORMANCE_WRITER";

/// In a child process: append records one transaction at a time, forever, and report each
/// one on stdout only after it was committed.
fn crash_child<B: Backend>(name: &str) {
    let Ok(spec) = std::env::var(CHILD) else {
        return;
    };
    let Some(dir) = spec.strip_prefix(&format!("{name}:")) else {
        return;
    };
    use std::io::Write;
    let dir = Path::new(dir);
    let mut svc = reopened::<B>(dir);
    let out = &mut std::io::stdout();
    let round = std::process::id();
    for i in 0.. {
        let batch = [
            entry("writer", &format!("{round}/{i}/a"), None),
            entry("writer", &format!("{round}/{i}/b"), None),
        ];
        svc.append_audit(&batch).unwrap();
        writeln!(out, "committed {round}/{i}").unwrap();
        out.flush().unwrap();
    }
}

/// A writer process killed with SIGKILL in the middle of appending: afterwards the store
/// opens, the chain verifies, and every record the writer had seen committed is there
/// (with its partner from the same transaction: none half-written).
fn crash<B: Backend>(name: &str) {
    let dir = tempfile::tempdir().unwrap();
    drop(service::<B>(dir.path()));
    let mut total_acked = 0;
    for round in 0..4u64 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                &format!("{name}::crash_writer_child"),
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, format!("{name}:{}", dir.path().display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut acked = Vec::new();
        let want = 20 + 15 * round as usize;
        let deadline = Instant::now() + Duration::from_secs(120);
        while acked.len() < want {
            assert!(Instant::now() < deadline, "the writer made no progress");
            match lines.next() {
                Some(Ok(l)) => {
                    if let Some(tag) = l.strip_prefix("committed ") {
                        acked.push(tag.to_owned());
                    }
                }
                _ => panic!("the writer stopped before it was killed"),
            }
        }
        // Killed while it appends: it never waits for anything but the store.
        child.kill().unwrap();
        child.wait().unwrap();
        let svc = reopened::<B>(dir.path());
        svc.verify_audit().unwrap();
        let reasons: HashSet<String> = svc
            .audit_records(Some("writer"))
            .unwrap()
            .into_iter()
            .map(|r| r.entry.reason.unwrap())
            .collect();
        for tag in &acked {
            assert!(
                reasons.contains(&format!("{tag}/a")) && reasons.contains(&format!("{tag}/b")),
                "committed record {tag} lost"
            );
        }
        // No transaction half there.
        for r in &reasons {
            let (tag, half) = r.rsplit_once('/').unwrap();
            let other = if half == "a" { "b" } else { "a" };
            assert!(reasons.contains(&format!("{tag}/{other}")), "{r} alone");
        }
        total_acked += acked.len();
    }
    assert!(total_acked >= 4 * 20);
}

/// A document sealed to `key`: its id and org stanza, parsed as the server parses them.
fn org_document(key: kluis_core::LabelPublicKey) -> (DocId, OrgStanza) {
    let doc = kluis_core::seal(
        &[kluis_core::Slot::single(kluis_core::Recipient::Label(key))],
        &kluis_core::Metadata::default(),
        b"x",
    )
    .unwrap();
    let h = kluis_core::Header::parse(&doc).unwrap();
    match Stanza::from_bytes(&h.slots()[0][0].to_bytes()).unwrap() {
        Stanza::Org(o) => (h.doc_id(), o),
        _ => panic!("not an org stanza"),
    }
}

/// The outcome of one unwrap decided on `reader` under the writer's current epoch, with
/// `between` run after the decision and before its commit (the race, made deterministic).
/// Returns the commit's answer and the decision's outcome (`None`: not authenticated).
fn race<S: Store>(
    rt: &tokio::runtime::Runtime,
    writer: &AuditWriter,
    reader: &KeyService<S>,
    token: &str,
    doc: &(DocId, OrgStanza),
    purpose: Purpose,
    between: impl FnOnce(),
) -> Option<(String, Result<usize, NotCommitted>)> {
    let observed = writer.observe();
    let who = reader.authenticate(token, now_ms()).unwrap()?;
    let pending = reader.unwrap(
        &Admitted::for_tests(who),
        UnwrapRequest {
            purpose,
            reason: None,
            client: "127.0.0.1".into(),
            items: vec![Ok(doc.clone())],
        },
        observed,
    );
    let outcome = pending.outcomes().next().unwrap().to_owned();
    between();
    let committed = rt.block_on(writer.commit(pending, writer.arriving()));
    let reply = ReplyKey::generate().unwrap();
    let mut sealer = ReplySealer::new(&reply.public_bytes()).unwrap();
    let released = committed.map(|c| c.release(&mut sealer).iter().filter(|r| r.is_ok()).count());
    Some((outcome, released))
}

/// A revocation, a policy narrowed, a version retired or destroyed, committed by another
/// connection between a request's authorisation and its audit commit: the commit releases
/// nothing and records nothing ("stale"); decided again, the request is refused. The chain
/// shows no grant after the change that forbids it. Changes that withdraw nothing (a new
/// token) let the commit through; a refusal is recorded whatever the epoch.
fn withdrawals_race_commits<B: Backend>() {
    let dir = tempfile::tempdir().unwrap();
    let mut admin = service::<B>(dir.path());
    let policy = Policy {
        users: vec!["alice".into(), "carol".into()],
        ..Policy::default()
    };
    let v1 = admin.create_label("hr", &policy, "admin").unwrap();
    admin.rotate("hr", "admin").unwrap();
    let v2 = admin
        .label("hr")
        .unwrap()
        .current()
        .unwrap()
        .public_key
        .clone();
    let v2 = kluis_core::LabelPublicKey::new("hr", 2, v2.parse().unwrap()).unwrap();
    let old = org_document(v1);
    let new = org_document(v2);
    let (alice1, alice1_id) = admin.create_token("alice", &[], None, "admin").unwrap();
    let (alice2, _) = admin.create_token("alice", &[], None, "admin").unwrap();
    let (carol, _) = admin.create_token("carol", &[], None, "admin").unwrap();
    let (bob, _) = admin.create_token("bob", &[], None, "admin").unwrap();
    let reader = reopened::<B>(dir.path());
    let writer = AuditWriter::start(reopened::<B>(dir.path())).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let epoch = |s: &KeyService<B::S>| s.store().meta(meta::ACCESS_EPOCH).unwrap();
    let mut admin = admin;
    let open = Purpose::Open;

    // A change that withdraws nothing (a new token, a rotation) lets the grant through.
    let (o, r) = race(&rt, &writer, &reader, &alice1, &old, open, || {
        admin.create_token("dave", &[], None, "admin").unwrap();
        admin.rotate("hr", "admin").unwrap();
    })
    .unwrap();
    assert_eq!((o.as_str(), r), ("granted", Ok(1)));
    assert_eq!(epoch(&admin), None, "nothing withdrew access yet");

    // The token revoked between authorisation and commit.
    let (o, r) = race(&rt, &writer, &reader, &alice1, &old, open, || {
        admin.revoke_token(&alice1_id, "admin").unwrap()
    })
    .unwrap();
    assert_eq!((o.as_str(), r), ("granted", Err(NotCommitted::Stale)));
    assert!(race(&rt, &writer, &reader, &alice1, &old, open, || {}).is_none());

    // Every token of the user revoked (the leaver procedure).
    let (o, r) = race(&rt, &writer, &reader, &alice2, &new, open, || {
        admin.revoke_user_tokens("alice", "admin").unwrap();
    })
    .unwrap();
    assert_eq!((o.as_str(), r), ("granted", Err(NotCommitted::Stale)));
    assert!(race(&rt, &writer, &reader, &alice2, &new, open, || {}).is_none());

    // Version 1 retired: it opens only for re-keying now.
    let (o, r) = race(&rt, &writer, &reader, &carol, &old, open, || {
        admin.retire("hr", 1, "admin").unwrap()
    })
    .unwrap();
    assert_eq!((o.as_str(), r), ("granted", Err(NotCommitted::Stale)));
    let (o, r) = race(&rt, &writer, &reader, &carol, &old, open, || {}).unwrap();
    assert_eq!((o.as_str(), r), ("retired", Ok(0)));

    // Version 1 destroyed while a re-key unwrap of it waits for its commit.
    let rekey = Purpose::Rekey;
    let (o, r) = race(&rt, &writer, &reader, &carol, &old, rekey, || {
        admin.destroy("hr", 1, "admin").unwrap()
    })
    .unwrap();
    assert_eq!((o.as_str(), r), ("granted", Err(NotCommitted::Stale)));
    let (o, r) = race(&rt, &writer, &reader, &carol, &old, rekey, || {}).unwrap();
    assert_eq!((o.as_str(), r), ("destroyed", Ok(0)));

    // A refusal decided under an older epoch is recorded all the same: it releases nothing.
    let (o, r) = race(&rt, &writer, &reader, &bob, &new, open, || {
        admin.revoke_user_tokens("nobody", "admin").unwrap();
    })
    .unwrap();
    assert_eq!((o.as_str(), r), ("denied", Ok(0)));

    // Carol removed from the label's policy.
    let edit = PolicyEdit {
        remove_users: vec!["carol".into()],
        ..PolicyEdit::default()
    };
    let (o, r) = race(&rt, &writer, &reader, &carol, &new, open, || {
        admin.update_policy("hr", &edit, "admin").unwrap();
    })
    .unwrap();
    assert_eq!((o.as_str(), r), ("granted", Err(NotCommitted::Stale)));
    let (o, r) = race(&rt, &writer, &reader, &carol, &new, open, || {}).unwrap();
    assert_eq!((o.as_str(), r), ("denied", Ok(0)));
    writer.shutdown();

    // Each withdrawal raised the epoch once: revoke, revoke-user, retire, destroy,
    // revoke-user (of nobody), update.
    assert_eq!(epoch(&admin), Some(6u64.to_be_bytes().to_vec()));
    admin.verify_audit().unwrap();
    let trail = admin.audit_records(None).unwrap();
    let at = |action: &str, reason: Option<&str>| {
        trail
            .iter()
            .position(|r| {
                r.entry.action == action
                    && reason.is_none_or(|x| r.entry.reason.as_deref().unwrap_or("").contains(x))
            })
            .unwrap_or_else(|| panic!("no {action} record"))
    };
    let no_grant_after = |what: &str, from: usize, hit: &dyn Fn(&AuditEntry) -> bool| {
        let after = trail[from..]
            .iter()
            .filter(|r| r.entry.outcome == "granted" && hit(&r.entry))
            .count();
        assert_eq!(after, 0, "{after} grant(s) recorded after: {what}");
    };
    let alice1_cred = format!("token:{alice1_id}");
    no_grant_after(
        "token revoked",
        at("token.revoke", Some(&alice1_id)),
        &|e| e.credential.as_deref() == Some(alice1_cred.as_str()),
    );
    no_grant_after(
        "user's tokens revoked",
        at("token.revoke-user", Some("alice")),
        &|e| e.actor == "alice",
    );
    no_grant_after("version retired", at("label.retire", None), &|e| {
        e.kid == Some(1) && e.action == "unwrap"
    });
    no_grant_after("version destroyed", at("label.destroy", None), &|e| {
        e.kid == Some(1)
    });
    no_grant_after("removed from the policy", at("label.update", None), &|e| {
        e.actor == "carol"
    });
    let outcomes: Vec<&str> = trail
        .iter()
        .filter(|r| r.entry.action.starts_with("unwrap"))
        .map(|r| r.entry.outcome.as_str())
        .collect();
    assert_eq!(
        outcomes,
        ["granted", "retired", "destroyed", "denied", "denied"],
        "the stale decisions left no record"
    );
}

/// The suite for one backend, as a module of tests.
macro_rules! conformance {
    ($name:ident, $backend:ty) => {
        mod $name {
            use super::*;

            #[test]
            fn labels() {
                super::labels::<$backend>();
            }
            #[test]
            fn versions_and_states() {
                super::versions::<$backend>();
            }
            #[test]
            fn tokens() {
                super::tokens::<$backend>();
            }
            #[test]
            fn transactions_are_all_or_nothing() {
                super::transactions::<$backend>();
            }
            #[test]
            fn the_audit_chain() {
                super::audit_chain::<$backend>();
            }
            #[test]
            fn concurrent_writers_keep_one_chain() {
                super::concurrent_writers::<$backend>();
            }
            #[test]
            fn reads_in_a_snapshot_are_consistent() {
                super::snapshots::<$backend>();
            }
            #[test]
            fn a_writer_killed_mid_append_loses_no_committed_record() {
                super::crash::<$backend>(stringify!($name));
            }
            #[test]
            fn a_withdrawal_between_authorisation_and_commit_releases_nothing() {
                super::withdrawals_race_commits::<$backend>();
            }
            /// Not a test by itself: the writer that the crash test runs and kills.
            #[test]
            fn crash_writer_child() {
                super::crash_child::<$backend>(stringify!($name));
            }
        }
    };
}

conformance!(sqlite, Sqlite);
conformance!(postgres, Postgres);
