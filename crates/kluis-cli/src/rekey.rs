//! `kluis rekey`: move documents to their label's current key version by rewriting the
//! header only (in place when its length stays the same; see [`kluis_file::replace_header`]).

use std::collections::HashMap;

use kluis_client::{Client, LabelRecord, Purpose};
use kluis_core::{PublicKey, Slot, Unwrap};
use kluis_file::{
    Recovery, RekeyDoc, RekeyOptions, RekeyOutcome, RekeyReport, RekeyTarget, Rewrite, rekey_paths,
};
use serde_json::{Value, json};

use crate::Global;
use crate::cli::RekeyArgs;
use crate::config::{Settings, parse_public_key};
use crate::error::{Class, CliError, record_error};
use crate::keys::{KeyServer, LazyIdentity, Passphrase};
use crate::output::{clean, plural, warn};
use crate::progress::{self, Bars};
use crate::seal::warn_if_stale;

/// What documents move to: each label's current record from the key server (checked by the
/// client against the keys it pinned), and the holder key of the user's identity for
/// double-key slots. kluis-file does the rest ([`kluis_file::rekey_paths`]).
struct Target<'a> {
    server: &'a KeyServer,
    identity: &'a LazyIdentity<'a>,
    settings: &'a Settings,
    args: &'a RekeyArgs,
    to: Option<PublicKey>,
    records: HashMap<String, LabelRecord>,
}

impl RekeyTarget for Target<'_> {
    type Error = CliError;

    fn current_kid(&mut self, label: &str) -> Result<u32, CliError> {
        let client = self
            .server
            .client()
            .ok_or_else(|| CliError::usage("no key server configured"))?;
        let record = current_record(client, label)?;
        let kid = record.kid();
        self.records.insert(label.to_owned(), record);
        Ok(kid)
    }

    fn slots(&mut self, doc: &RekeyDoc) -> Result<Vec<Slot>, CliError> {
        // Asked only for documents whose label record was found.
        let Some(record) = self.records.get(&doc.label) else {
            return Err(CliError::new(
                Class::Failed,
                format!("{:?}: label `{}` was not looked up", doc.path, doc.label),
            ));
        };
        let args = self.args;
        let holder = match self.to {
            Some(t) => Some(t),
            None if doc.double || record.double_key => match self.identity.public_key() {
                Some(k) => Some(k),
                None => self.settings.default_holder(
                    args.identity.as_deref(),
                    &Passphrase::from_args(&args.passphrase),
                )?,
            },
            None => None,
        };
        Ok(record.slots(holder.as_ref())?)
    }
}

/// The label's current record: the key server is asked even when the cache holds a fresh
/// one (re-keying is about the *current* version), and the answer is checked against every
/// key the client has pinned for the label (a known version must keep its key; the current
/// version never goes back) by the client itself ([`Client::label_record_to_seal`]). Offline,
/// the cached record is used, with a warning.
fn current_record(client: &Client, label: &str) -> Result<LabelRecord, CliError> {
    let record = client.label_record_to_seal(label).map_err(|e| {
        record_error(
            &format!("no document of label `{}` was re-keyed", clean(label)),
            &e,
        )
    })?;
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
    let bars = Bars::stream(progress::wanted(g.quiet), "re-keying");
    let identity = LazyIdentity::new(
        settings.identity_path(args.identity.as_deref()),
        Passphrase::from_args(&args.passphrase),
        Some(&bars),
    );
    let server = KeyServer::new(Some(client));
    let holders: [&dyn Unwrap; 2] = [&identity, &server];
    let mut target = Target {
        server: &server,
        identity: &identity,
        settings: &settings,
        args: &args,
        to,
        records: HashMap::new(),
    };
    let mut options = RekeyOptions::default();
    options.force = args.force;
    let reports = rekey_paths(&args.files, &holders, &mut target, &options);
    bars.finish();
    report(reports, g, server.requests())
}

fn report(results: Vec<RekeyReport<CliError>>, g: &Global, requests: u64) -> Result<u8, CliError> {
    for r in &results {
        let p = &r.path;
        match r.recovery {
            Recovery::Discarded => warn(&format!(
                "{p:?}: an interrupted re-keying had not started writing; its journal was removed"
            )),
            Recovery::Completed => {
                warn(&format!("{p:?}: finished a re-keying that was interrupted"))
            }
            _ => {}
        }
    }
    let (mut moved, mut current, mut classes) = (0, 0, Vec::new());
    let mut items: Vec<Value> = Vec::new();
    for RekeyReport { path, outcome, .. } in &results {
        let name = path.to_string_lossy();
        match outcome {
            RekeyOutcome::Moved {
                label,
                from,
                to,
                rewrite,
            } => {
                let in_place = *rewrite == Rewrite::InPlace;
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
                let header = if in_place { "in place" } else { "copied" };
                let outcome = if rewritten { "rewritten" } else { "moved" };
                items.push(json!({"path": name, "outcome": outcome, "label": label, "from": from, "to": to, "header": header}));
            }
            RekeyOutcome::Current { label, kid } => {
                current += 1;
                if !g.json && !g.quiet {
                    println!("current  {path:?}: label {label} v{kid}");
                }
                items.push(json!({"path": name, "outcome": "current", "label": label, "kid": kid}));
            }
            RekeyOutcome::Failed(e) => {
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
