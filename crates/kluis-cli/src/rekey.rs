//! `kluis rekey`: move documents to their label's current key version by rewriting the
//! header only (in place when its length stays the same; see [`kluis_file::replace_header`]).

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use kluis_client::{Client, LabelRecord, Purpose};
use kluis_core::{Header, Stanza, Unwrap, unlock_all};
use kluis_file::{Recovery, Rewrite};
use serde_json::{Value, json};

use crate::Global;
use crate::cli::RekeyArgs;
use crate::config::{Settings, parse_public_key};
use crate::error::{Class, CliError, describe_core};
use crate::keys::{KeyServer, LazyIdentity, Passphrase};
use crate::output::{plural, warn};
use crate::progress::{self, Bars};
use crate::seal::warn_if_stale;

/// Documents per key server request.
const BATCH: usize = 1000;

/// A sealed document read for re-keying.
struct Doc {
    path: PathBuf,
    header: Header,
    label: String,
    kids: Vec<u32>,
    double: bool,
}

/// What happened to one document.
enum Result1 {
    Moved {
        label: String,
        from: Vec<u32>,
        to: u32,
        /// The header was written in place (not a copy of the whole document).
        in_place: bool,
    },
    Current {
        label: String,
        kid: u32,
    },
    Failed(CliError),
}

fn read_doc(path: &Path) -> Result<Doc, CliError> {
    let f = File::open(path).map_err(|e| CliError::io(path, "read", &e))?;
    let meta = f.metadata().map_err(|e| CliError::io(path, "read", &e))?;
    if !meta.is_file() {
        return Err(CliError::usage(format!("{path:?} is not a regular file")));
    }
    let header = Header::read(&mut BufReader::new(f)).map_err(|e| {
        let (m, class) = describe_core(&e);
        CliError::new(class, format!("{path:?}: {m}"))
    })?;
    let mut label = None;
    let mut kids = Vec::new();
    let mut double = false;
    for slot in header.slots() {
        for s in slot {
            if let Stanza::Org(o) = s {
                double |= slot.len() == 2;
                if label.as_deref().is_some_and(|l| l != o.label()) {
                    return Err(CliError::usage(format!(
                        "{path:?} is sealed under several labels; `kluis rekey` handles documents under one label"
                    )));
                }
                label = Some(o.label().to_owned());
                if !kids.contains(&o.kid()) {
                    kids.push(o.kid());
                }
            }
        }
    }
    let label = label.ok_or_else(|| {
        CliError::usage(format!(
            "{path:?} is sealed to holder or recovery keys only, not under a label: there is no key version to move"
        ))
    })?;
    Ok(Doc {
        path: path.to_owned(),
        header,
        label,
        kids,
        double,
    })
}

/// The label's current record: the key server is asked even when the cache holds a fresh
/// one (re-keying is about the *current* version), and the answer is checked against every
/// key the client has pinned for the label (a known version must keep its key; the current
/// version never goes back) by the client itself ([`Client::label_record_to_seal`]). Offline,
/// the cached record is used, with a warning.
fn current_record(client: &Client, label: &str) -> Result<LabelRecord, CliError> {
    let record = client.label_record_to_seal(label)?;
    if let Some(e) = &record.refresh_error {
        warn(&format!("{e}; using the cached record of label `{label}`"));
        if record.stale {
            warn_if_stale(&record);
        }
    }
    Ok(record)
}

/// Run `kluis rekey`.
pub fn run(args: RekeyArgs, g: &Global) -> Result<u8, CliError> {
    let settings = Settings::load(g.server.clone())?;
    let client = settings.client(Purpose::Rekey, args.reason.as_deref())?;
    let to = args
        .to
        .as_deref()
        .map(|t| parse_public_key(t, "--to"))
        .transpose()?;
    let mut paths = Vec::new();
    for f in &args.files {
        kluis_file::list_sealed(f, &mut paths);
    }
    let mut results: Vec<(PathBuf, Result1)> = Vec::new();
    let mut records: HashMap<String, Result<LabelRecord, CliError>> = HashMap::new();
    let mut to_move: Vec<Doc> = Vec::new();
    for p in paths {
        match kluis_file::finish_rekey(&p) {
            Ok(Recovery::Clean) => {}
            Ok(Recovery::Discarded) => warn(&format!(
                "{p:?}: an interrupted re-keying had not started writing; its journal was removed"
            )),
            Ok(Recovery::Completed) => {
                warn(&format!("{p:?}: finished a re-keying that was interrupted"))
            }
            Err(e) => {
                results.push((p, Result1::Failed(e.into())));
                continue;
            }
        }
        let doc = match read_doc(&p) {
            Ok(d) => d,
            Err(e) => {
                results.push((p, Result1::Failed(e)));
                continue;
            }
        };
        let record = records
            .entry(doc.label.clone())
            .or_insert_with(|| current_record(&client, &doc.label));
        match record {
            Err(e) => {
                let e = CliError::new(e.class, e.message.clone());
                results.push((p, Result1::Failed(e)));
            }
            Ok(r) if !args.force && doc.kids == [r.kid()] => {
                let (label, kid) = (doc.label.clone(), r.kid());
                results.push((p, Result1::Current { label, kid }));
            }
            Ok(_) => to_move.push(doc),
        }
    }

    let bars = Bars::stream(
        progress::wanted(g.quiet) && !to_move.is_empty(),
        "re-keying",
    );
    let identity = LazyIdentity::new(
        settings.identity_path(args.identity.as_deref()),
        Passphrase::from_args(&args.passphrase),
        Some(&bars),
    );
    let server = KeyServer::new(Some(client));
    let holders: [&dyn Unwrap; 2] = [&identity, &server];
    for batch in to_move.chunks(BATCH) {
        let headers: Vec<&Header> = batch.iter().map(|d| &d.header).collect();
        let keys = unlock_all(&headers, &holders);
        for (doc, key) in batch.iter().zip(keys) {
            // Only documents whose label record was found are in `to_move`.
            let Some(Ok(record)) = records.get(&doc.label) else {
                continue;
            };
            let result = key
                .map_err(|e| {
                    let (m, class) = describe_core(&e);
                    CliError::new(class, format!("{:?}: {m}", doc.path))
                })
                .and_then(|key| {
                    let holder = match to {
                        Some(t) => Some(t),
                        None if doc.double || record.double_key => match identity.public_key() {
                            Some(k) => Some(k),
                            None => settings.default_holder(
                                args.identity.as_deref(),
                                &Passphrase::from_args(&args.passphrase),
                            )?,
                        },
                        None => None,
                    };
                    let slots = record.slots(holder.as_ref())?;
                    let new = doc.header.rekey(&key, &[], &slots).map_err(|e| {
                        let (m, class) = describe_core(&e);
                        CliError::new(class, format!("{:?}: {m}", doc.path))
                    })?;
                    kluis_file::replace_header(&doc.path, &doc.header, &new).map_err(CliError::from)
                });
            results.push((
                doc.path.clone(),
                match result {
                    Ok(how) => Result1::Moved {
                        label: doc.label.clone(),
                        from: doc.kids.clone(),
                        to: record.kid(),
                        in_place: how == Rewrite::InPlace,
                    },
                    Err(e) => Result1::Failed(e),
                },
            ));
        }
    }
    bars.finish();
    report(results, g, server.requests())
}

fn report(mut results: Vec<(PathBuf, Result1)>, g: &Global, requests: u64) -> Result<u8, CliError> {
    results.sort_by(|a, b| a.0.cmp(&b.0));
    let (mut moved, mut current, mut classes) = (0, 0, Vec::new());
    let mut items: Vec<Value> = Vec::new();
    for (path, r) in &results {
        let name = path.to_string_lossy();
        match r {
            Result1::Moved {
                label,
                from,
                to,
                in_place,
            } => {
                moved += 1;
                // With --force a document already on the current version gets its slots
                // rewritten: say so, not "moved v2 → v2".
                let rewritten = from.iter().all(|k| k == to);
                let from: Vec<String> = from.iter().map(|k| format!("v{k}")).collect();
                if !g.json && !g.quiet {
                    if rewritten {
                        println!("rewrote  {path:?}: label {label} v{to} (slots rewritten)");
                    } else {
                        println!(
                            "moved    {path:?}: label {label} {} → v{to}",
                            from.join("+")
                        );
                    }
                }
                let header = if *in_place { "in place" } else { "copied" };
                let outcome = if rewritten { "rewritten" } else { "moved" };
                items.push(json!({"path": name, "outcome": outcome, "label": label, "from": from, "to": to, "header": header}));
            }
            Result1::Current { label, kid } => {
                current += 1;
                if !g.json && !g.quiet {
                    println!("current  {path:?}: label {label} v{kid}");
                }
                items.push(json!({"path": name, "outcome": "current", "label": label, "kid": kid}));
            }
            Result1::Failed(e) => {
                eprintln!("kluis: {e}");
                classes.push(e.class);
                items.push(json!({"path": name, "outcome": "failed", "error": e.message, "exit_code": e.class.code()}));
            }
        }
    }
    let failed = classes.len();
    let code = Class::combine(classes).map_or(0, Class::code);
    if g.json {
        crate::output::print_json(&json!({
            "command": "rekey",
            "files": items,
            "moved": moved,
            "current": current,
            "failed": failed,
            "key_server_requests": requests,
            "exit_code": code,
        }));
    } else if !g.quiet {
        eprintln!(
            "re-keyed {moved} document{}; {current} already on the current key version; {failed} failed",
            plural(moved)
        );
    }
    Ok(code)
}
