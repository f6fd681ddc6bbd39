//! `kluis sync`: argument handling and output only; the engine is kluis-sync.

use std::io::Write;

use kluis_client::{Client, Purpose};
use kluis_core::Unwrap;
use kluis_sync::{Keys, Options, PassReport, Sealing, Syncer};

use crate::Global;
use crate::cli::{SyncArgs, SyncCmd};
use crate::config::Settings;
use crate::error::{Class, CliError};
use crate::output;

/// The folder below the configuration folder that holds every pair's state.
pub const STATE_DIR: &str = "sync";

/// One line on standard error that never panics (a watching process may outlive its
/// terminal).
fn say(text: &str) {
    let _ = writeln!(std::io::stderr(), "kluis sync: {}", output::clean(text));
}

/// The label's record from the key server (its cache offline), and the key server client.
struct ServerKeys {
    client: Client,
    label: String,
}

impl Keys for ServerKeys {
    fn seal_to(&self) -> Result<Sealing, String> {
        let record = self
            .client
            .label_record_to_seal(&self.label)
            .map_err(|e| format!("nothing was sealed: {e}"))?;
        if record.double_key {
            return Err(format!(
                "label `{}` is double key; kluis sync seals only to labels without a holder key",
                record.label()
            ));
        }
        let slots = record.slots(None).map_err(|e| e.to_string())?;
        let notice = if record.stale || record.refresh_error.is_some() {
            Some(format!(
                "sealing from the cached record of label `{}` (key version {}, fetched {} UTC): the key server could not be asked whether it is still current{}",
                record.label(),
                record.kid(),
                output::utc(record.fetched_at),
                record
                    .refresh_error
                    .as_ref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ))
        } else {
            None
        };
        Ok(Sealing { slots, notice })
    }

    fn unwrappers(&self) -> Vec<&dyn Unwrap> {
        vec![&self.client]
    }

    fn label(&self) -> Option<String> {
        Some(self.label.clone())
    }
}

/// Run `kluis sync`.
pub fn run(args: SyncArgs, g: &Global) -> Result<u8, CliError> {
    if let Some(SyncCmd::Status) = args.cmd {
        return status(g);
    }
    let (Some(plain), Some(sealed)) = (args.plain.clone(), args.sealed.clone()) else {
        return Err(CliError::usage(
            "give two folders: `kluis sync PLAIN SEALED --label NAME` (or `kluis sync status`)",
        ));
    };
    let settings = Settings::load(g.server.clone())?;
    let label = args
        .label
        .clone()
        .or_else(|| settings.file.label.clone())
        .ok_or_else(|| {
            CliError::usage(
                "no label given: use --label NAME (`kluis labels` lists them), or set a default with `kluis config set label NAME`",
            )
        })?;
    kluis_client::check_label(&label)?;
    let client = settings.client(
        Purpose::Open,
        Some("kluis sync: opening documents that arrived in the sealed folder"),
    )?;
    let keys = ServerKeys { client, label };
    let options = Options {
        plain,
        sealed,
        hide_names: args.hide_names,
        state_root: settings.dir.join(STATE_DIR),
        allow_mass_delete: args.allow_mass_delete,
        settle: std::time::Duration::from_millis(args.settle_ms),
        stray_grace: std::time::Duration::from_secs(600),
        folder_key_window: std::time::Duration::from_secs(600),
        trust_folder_key: args.trust_folder_key.clone(),
    };
    let mut syncer = Syncer::new(&options).map_err(sync_error)?;
    if args.watch {
        if !g.quiet {
            say(&format!(
                "watching {} and {}",
                syncer.plain().display(),
                syncer.sealed().display()
            ));
        }
        let quiet = g.quiet;
        let json = g.json;
        let mut on_pass = |r: &PassReport| show(r, quiet, json);
        kluis_sync::watch(&mut syncer, &keys, None, &mut on_pass).map_err(sync_error)?;
        return Ok(0);
    }
    let report = syncer.run(&keys, 3).map_err(sync_error)?;
    show(&report, g.quiet, g.json);
    Ok(exit_code(&report))
}

fn exit_code(r: &PassReport) -> u8 {
    // A direction stopped by the key server (access revoked, label retired or destroyed).
    if !r.stopped.is_empty() {
        return Class::Denied.code();
    }
    if r.guard.is_some() || !r.failed.is_empty() {
        return Class::Failed.code();
    }
    0
}

fn sync_error(e: kluis_sync::SyncError) -> CliError {
    use kluis_sync::SyncError as E;
    let class = match &e {
        E::Nested { .. } | E::StateInside(_) | E::NotAFolder(_) | E::Busy(_) => Class::Usage,
        _ => Class::Failed,
    };
    CliError::new(class, e.to_string())
}

fn show(r: &PassReport, quiet: bool, json: bool) {
    if json {
        let v = serde_json::json!({ "command": "sync", "report": r, "exit_code": exit_code(r) });
        let _ = writeln!(std::io::stdout(), "{v}");
    }
    for n in &r.notices {
        say(&format!("note: {n}"));
    }
    for s in &r.stopped {
        say(s);
    }
    if let Some(g) = &r.guard {
        say(&format!("mass-delete guard: {g}"));
    }
    for (p, why) in &r.failed {
        match p.is_empty() {
            true => say(&format!("failed: {why}")),
            false => say(&format!("failed: {p}: {why}")),
        }
    }
    if quiet {
        return;
    }
    for (p, copy) in &r.conflicts {
        say(&format!(
            "conflict: {p}: the other version is kept as {copy}"
        ));
    }
    for (p, to) in &r.trashed {
        say(&format!(
            "{p}: its sealed copy was deleted; moved to the trash {to}"
        ));
    }
    if !r.pending.is_empty() {
        say(&format!(
            "{} pending (see `kluis sync status`)",
            r.pending.len()
        ));
    }
    say(&format!(
        "{} sealed, {} opened, {} sealed copies removed, {} moved to the trash, {} conflicts",
        r.sealed.len(),
        r.opened.len(),
        r.removed.len(),
        r.trashed.len(),
        r.conflicts.len()
    ));
}

/// `kluis sync status`: what each pair's last pass left pending, in conflict or failing.
fn status(g: &Global) -> Result<u8, CliError> {
    let dir = crate::config::config_dir()?.join(STATE_DIR);
    let all = kluis_sync::statuses(&dir);
    if g.json {
        let v = serde_json::json!({ "command": "sync status", "pairs": all });
        let _ = writeln!(std::io::stdout(), "{v}");
        return Ok(0);
    }
    if all.is_empty() {
        output::stdout_line(format_args!("no folders are synced yet"));
    }
    for v in &all {
        let s = |k: &str| v[k].as_str().unwrap_or("?").to_owned();
        let r = &v["report"];
        let list = |k: &str| r[k].as_array().cloned().unwrap_or_default();
        output::stdout_line(format_args!(
            "{} <-> {} (last pass {} UTC, {} files in sync)",
            output::clean(&s("plain")),
            output::clean(&s("sealed")),
            output::utc_ms(v["at"].as_i64().unwrap_or(0).saturating_mul(1000)),
            v["in_sync"].as_u64().unwrap_or(0)
        ));
        for (key, title) in [
            ("stopped", "stopped"),
            ("conflicts", "conflict"),
            ("pending", "pending"),
            ("failed", "failing"),
        ] {
            for item in list(key) {
                let text = match &item {
                    serde_json::Value::Array(a) => a
                        .iter()
                        .map(|x| x.as_str().unwrap_or_default())
                        .collect::<Vec<_>>()
                        .join(": "),
                    other => other.as_str().unwrap_or_default().to_owned(),
                };
                output::stdout_line(format_args!("  {title}: {}", output::clean(&text)));
            }
        }
        if let Some(gd) = r["guard"].as_str() {
            output::stdout_line(format_args!("  mass-delete guard: {}", output::clean(gd)));
        }
    }
    Ok(0)
}
