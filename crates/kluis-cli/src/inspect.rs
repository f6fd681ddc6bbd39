//! `kluis inspect`: what a sealed document says about itself, without any key.

use std::io::{BufReader, Read};
use std::path::Path;

use kluis_core::{Header, SlotKind, Stanza};
use serde_json::{Value, json};

use crate::Global;
use crate::cli::InspectArgs;
use crate::error::{Class, CliError, describe_core};
use crate::output;
use crate::seal::is_stream;

/// The slots of a header, as JSON.
pub fn slots_json(h: &Header) -> Vec<Value> {
    h.slots()
        .iter()
        .map(|slot| {
            let stanzas: Vec<Value> = slot
                .iter()
                .map(|s| match s {
                    Stanza::Org(o) => json!({
                        "type": "label",
                        "label": o.label(),
                        "kid": o.kid(),
                        "share": match o.slot_kind() {
                            SlotKind::Whole => "whole",
                            SlotKind::Half => "half",
                        },
                    }),
                    Stanza::X25519(_) => json!({ "type": "x25519" }),
                    Stanza::Unknown { kind, .. } => json!({ "type": "unknown", "kind": kind }),
                    _ => json!({ "type": "unknown" }),
                })
                .collect();
            json!({ "double_key": slot.len() == 2, "stanzas": stanzas })
        })
        .collect()
}

/// One slot for people: "label hr, key version 1 + holder key (double key)".
fn slot_text(slot: &[Stanza]) -> String {
    let parts: Vec<String> = slot
        .iter()
        .map(|s| match s {
            Stanza::Org(o) => format!("label {}, key version {}", o.label(), o.kid()),
            Stanza::X25519(_) if slot.len() == 2 => "holder key".to_owned(),
            Stanza::X25519(_) => "holder or recovery key".to_owned(),
            _ => "unknown stanza type (ignored)".to_owned(),
        })
        .collect();
    let mut t = parts.join(" + ");
    if slot.len() == 2 {
        t.push_str(" (double key: both needed)");
    }
    t
}

/// Inspect one input: its header and what the length says about the payload.
fn inspect(
    name: &str,
    input: &mut dyn Read,
    len: Option<u64>,
) -> Result<(Value, Header), CliError> {
    let err = |e: &kluis_core::Error| {
        let (m, class) = describe_core(e);
        CliError::new(class, format!("{name}: {m}"))
    };
    let mut input = BufReader::new(input);
    let header = Header::read(&mut input).map_err(|e| err(&e))?;
    let total = match len {
        Some(l) => l,
        None => {
            let rest = std::io::copy(&mut input, &mut std::io::sink()).map_err(|e| {
                CliError::new(Class::Failed, format!("{name}: could not read: {e}"))
            })?;
            header.len() as u64 + rest
        }
    };
    let mut v = json!({
        "path": name,
        "doc_id": header.doc_id().to_string(),
        "header_bytes": header.len(),
        "name_bytes_at_most": header.name_len_bound(),
        "total_bytes": total,
        "slots": slots_json(&header),
    });
    match header.payload_info(total) {
        Ok(p) => {
            v["payload"] = json!({ "chunks": p.chunks, "padded_len": p.padded_len });
        }
        Err(e) => {
            let (m, class) = describe_core(&e);
            v["payload_error"] = json!(m);
            v["exit_code"] = json!(class.code());
        }
    }
    Ok((v, header))
}

fn print_human(v: &Value, header: &Header) {
    println!("{}", output::clean(v["path"].as_str().unwrap_or("")));
    println!("  document id  {}", header.doc_id());
    println!(
        "  header       {} bytes, {} slot{}",
        header.len(),
        header.slots().len(),
        output::plural(header.slots().len())
    );
    for (i, slot) in header.slots().iter().enumerate() {
        println!("  slot {:<7} {}", i + 1, slot_text(slot));
    }
    // What the lengths show, said precisely: without the key nobody can tell whether the
    // document was padded, so both cases are stated (docs/FORMAT.md §7.1).
    println!(
        "  name         sealed; its length shows: {} bytes if sealed without --pad, else only that it is at most {} bytes",
        header.name_len_bound(),
        header.name_len_bound()
    );
    if let Some(p) = v.get("payload") {
        println!(
            "  payload      {} chunk{}, {} bytes of content and padding: the exact size if sealed without --pad, else a size up to 12% below it",
            p["chunks"],
            if p["chunks"] == 1 { "" } else { "s" },
            p["padded_len"]
        );
    }
    if let Some(e) = v.get("payload_error").and_then(Value::as_str) {
        println!("  payload      damaged: {e}");
    }
}

/// Run `kluis inspect`.
pub fn run(args: InspectArgs, g: &Global) -> Result<u8, CliError> {
    let mut results = Vec::new();
    let mut classes = Vec::new();
    let inputs: Vec<Option<&Path>> = if is_stream(&args.files)? {
        vec![None]
    } else {
        args.files.iter().map(|p| Some(p.as_path())).collect()
    };
    for input in inputs {
        let (name, r) = match input {
            None => {
                let name = "standard input".to_owned();
                let r = inspect(&name, &mut std::io::stdin().lock(), None);
                (name, r)
            }
            Some(p) => {
                let name = p.display().to_string();
                let r = std::fs::File::open(p)
                    .and_then(|f| Ok((f.metadata()?.len(), f)))
                    .map_err(|e| CliError::io(p, "read", &e))
                    .and_then(|(len, mut f)| inspect(&name, &mut f, Some(len)));
                (name, r)
            }
        };
        match r {
            Ok((v, header)) => {
                if let Some(c) = v["exit_code"].as_u64() {
                    classes.push(if c == 7 {
                        Class::Corrupt
                    } else {
                        Class::Failed
                    });
                }
                if !g.json {
                    print_human(&v, &header);
                }
                results.push(v);
            }
            Err(e) => {
                eprintln!("kluis: {e}");
                classes.push(e.class);
                results
                    .push(json!({ "path": name, "error": e.message, "exit_code": e.class.code() }));
            }
        }
    }
    let code = Class::combine(classes).map_or(0, Class::code);
    if g.json {
        output::print_json(&json!({ "command": "inspect", "files": results, "exit_code": code }));
    }
    Ok(code)
}
