//! `kluis seal`: files and folders through kluis-file, or standard input as a stream.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;

use kluis_client::{LabelRecord, Purpose};
use kluis_core::{Metadata, Slot, StreamWriter, Unwrap};
use kluis_file::{Event, SealOptions, seal_paths};
use serde_json::json;

use crate::Global;
use crate::atomic;
use crate::cli::SealArgs;
use crate::config::{Settings, parse_public_key};
use crate::error::{Class, CliError, record_error};
use crate::keys::{KeyServer, LazyIdentity, Passphrase};
use crate::output::{self, plural, warn};
use crate::progress::{self, Bars};

/// The refusal to write a sealed document to a terminal.
pub const BINARY_TO_TERMINAL: &str = "refusing to write binary to a terminal; redirect or use -o";

/// Read and write 1 MiB at a time when streaming.
pub const STREAM_BUF: usize = 1 << 20;

/// Whether the file arguments ask for streaming: none, or just `-`.
pub fn is_stream(files: &[PathBuf]) -> Result<bool, CliError> {
    let dash = files.iter().filter(|f| f.as_os_str() == "-").count();
    match (files.len(), dash) {
        (0, _) | (1, 1) => Ok(true),
        (_, 0) => Ok(false),
        _ => Err(CliError::usage(
            "`-` (standard input) cannot be mixed with file arguments: stream one document, or give files",
        )),
    }
}

/// Tell the person when the label record comes from the cache because the key server could
/// not be asked (expired or not).
pub fn warn_if_stale(record: &LabelRecord) {
    if record.stale {
        let why = record
            .refresh_error
            .as_ref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        warn(&format!(
            "using the cached record of label `{}` (key version {}, expired {} UTC){why}",
            record.label(),
            record.kid(),
            output::utc(record.expires_at),
        ));
    } else if let Some(e) = &record.refresh_error {
        warn(&format!(
            "sealing from the cached record of label `{}` (key version {}, fetched {} UTC), because the key server could not be asked whether it is still current: {e}",
            record.label(),
            record.kid(),
            output::utc(record.fetched_at),
        ));
    }
}

/// The file in the configuration folder that holds the key hidden names are derived from.
pub const NAME_KEY_FILE: &str = "names.key";

/// The key that makes hidden names stable (see [`kluis_file::NameKey`]): read from
/// `names.key` in the configuration folder, created (mode 0600) on first use.
fn name_key(dir: &std::path::Path) -> Result<kluis_file::NameKey, CliError> {
    let path = dir.join(NAME_KEY_FILE);
    match crate::config::read_small(&path) {
        Ok(text) => {
            let text = text.trim();
            let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
            let ok = text.len() == 64
                && text.is_ascii()
                && bytes.iter_mut().enumerate().all(|(i, b)| {
                    u8::from_str_radix(&text[2 * i..2 * i + 2], 16)
                        .map(|v| *b = v)
                        .is_ok()
                });
            if !ok {
                return Err(CliError::usage(format!(
                    "{path:?} holds no usable hidden-name key: delete it and seal again (a new key is made; files sealed with the old one keep their names)"
                )));
            }
            Ok(kluis_file::NameKey::from_bytes(*bytes))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = kluis_file::NameKey::generate()?;
            let mut text = zeroize::Zeroizing::new(String::with_capacity(65));
            for b in key.to_bytes().iter() {
                text.push_str(&format!("{b:02x}"));
            }
            text.push('\n');
            crate::config::write_private(&path, text.as_bytes())?;
            Ok(key)
        }
        Err(e) => Err(CliError::io(&path, "read", &e)),
    }
}

/// Run `kluis seal`.
pub fn run(args: SealArgs, g: &Global) -> Result<u8, CliError> {
    let stream = is_stream(&args.files)?;
    if stream {
        if args.hide_names || args.remove_original {
            return Err(CliError::usage(
                "--hide-names and --remove-original work on files, not on standard input",
            ));
        }
        if args.output.is_none() && std::io::stdout().is_terminal() {
            return Err(CliError::usage(BINARY_TO_TERMINAL));
        }
        if args.output.is_none() && g.json {
            return Err(CliError::usage(
                "--json needs -o FILE when streaming: standard output carries the sealed document",
            ));
        }
    }
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
    // One client: it fetches the label record and, for --remove-original, opens the sealed
    // copies back (the reason is sent only with unwrap requests).
    let client = settings.client(
        Purpose::Open,
        args.remove_original
            .then_some("kluis seal --remove-original: verifying the sealed copy"),
    )?;
    // Asks the server every time (falls back to the cache offline, and says so).
    let record = client
        .label_record_to_seal(&label)
        .map_err(|e| record_error("nothing was sealed", &e))?;
    warn_if_stale(&record);
    let holder = match &args.to {
        Some(t) => Some(parse_public_key(t, "--to")?),
        None if record.double_key => settings.default_holder(
            args.identity.as_deref(),
            &Passphrase::from_args(&args.passphrase),
        )?,
        None => None,
    };
    let slots = record.slots(holder.as_ref())?;
    let about = json!({
        "label": record.label(),
        "kid": record.kid(),
        "double_key": holder.is_some(),
        "recovery_keys": record.recovery.len(),
        "stale_record": record.stale,
    });
    if stream {
        return seal_stream(&args, g, &slots, about);
    }

    if !g.quiet {
        output::warn_if_sync_folder(args.files.iter().map(|f| f.as_path()), "sealing");
    }
    let bars = Bars::files(progress::wanted(g.quiet), "sealing");
    let on_event = |e: Event<'_>| bars.event(e);
    let identity = LazyIdentity::new(
        settings.identity_path(args.identity.as_deref()),
        Passphrase::from_args(&args.passphrase),
        Some(&bars),
    );
    let server = KeyServer::new(args.remove_original.then_some(client));
    let holders: [&dyn Unwrap; 2] = [&identity, &server];
    let mut options = SealOptions::default();
    options.output_dir = args.output.clone();
    options.hide_names = args.hide_names;
    let name_key = match args.hide_names {
        true => Some(name_key(&settings.dir)?),
        false => None,
    };
    options.name_key = name_key.as_ref();
    options.pad = args.pad;
    options.force = args.force;
    options.remove_original = args.remove_original;
    if args.remove_original {
        options.verify_with = &holders;
    }
    options.progress = Some(&on_event);
    let reports = seal_paths(&args.files, &slots, &options)?;
    bars.finish();
    let (s, items) = output::files(&reports, g.quiet);
    let code = s.class.map_or(0, Class::code);
    if g.json {
        let mut v = json!({
            "command": "seal",
            "files": items,
            "sealed": s.done,
            "originals_removed": s.removed,
            "skipped": s.skipped,
            "failed": s.failed,
            "bytes": s.bytes,
            "exit_code": code,
        });
        merge(&mut v, about);
        output::print_json(&v);
    } else if !g.quiet {
        let mut line = format!(
            "sealed {} file{} ({}) under label `{}` (key version {}{})",
            s.done,
            plural(s.done),
            output::bytes(s.bytes),
            record.label(),
            record.kid(),
            if holder.is_some() { ", double key" } else { "" }
        );
        if s.removed > 0 {
            line.push_str(&format!(
                "; {} original{} removed",
                s.removed,
                plural(s.removed)
            ));
        }
        if s.failed > 0 {
            line.push_str(&format!("; {} failed", s.failed));
        }
        eprintln!("{line}");
    }
    Ok(code)
}

/// Add the fields of `extra` to the JSON object `v`.
pub fn merge(v: &mut serde_json::Value, extra: serde_json::Value) {
    if let (Some(o), serde_json::Value::Object(e)) = (v.as_object_mut(), extra) {
        o.extend(e);
    }
}

/// The size of standard input when it is a regular file (redirected with `<`): what is left
/// to read from its current position.
fn stdin_size() -> Option<u64> {
    #[cfg(unix)]
    {
        use std::io::Seek;
        use std::os::fd::AsFd;
        let fd = std::io::stdin().as_fd().try_clone_to_owned().ok()?;
        let mut f = std::fs::File::from(fd);
        let meta = f.metadata().ok()?;
        if !meta.is_file() {
            return None;
        }
        let pos = f.stream_position().ok()?;
        meta.len().checked_sub(pos)
    }
    #[cfg(not(unix))]
    None
}

fn seal_stream(
    args: &SealArgs,
    g: &Global,
    slots: &[Slot],
    about: serde_json::Value,
) -> Result<u8, CliError> {
    let size = stdin_size();
    let mut metadata = size.map(Metadata::with_size).unwrap_or_default();
    if args.pad {
        metadata = metadata.padded().map_err(|_| {
            CliError::usage(
                "--pad needs the size up front, and a pipe has none: redirect a file (`< FILE`) or seal the file itself",
            )
        })?;
    }
    if std::io::stdin().is_terminal() && !g.quiet {
        eprintln!("kluis: reading the text to seal from the terminal; end it with Ctrl-D");
    }
    let to_terminal = args.output.is_none();
    let bars = Bars::stream(progress::wanted(g.quiet), "sealing");
    let (doc_id, bytes) = match &args.output {
        Some(path) => atomic::write_new(path, args.force, false, None, |f| {
            copy_sealed(f, slots, &metadata, &bars)
        })?,
        None => copy_sealed(std::io::stdout().lock(), slots, &metadata, &bars)?,
    };
    bars.finish();
    if g.json {
        let mut v = json!({
            "command": "seal",
            "output": args.output.as_ref().map(|p| p.to_string_lossy()),
            "doc_id": doc_id,
            "bytes": bytes,
            "exit_code": 0,
        });
        merge(&mut v, about);
        output::print_json(&v);
    } else if !g.quiet && !to_terminal {
        eprintln!("sealed {} from standard input", output::bytes(bytes));
    }
    Ok(0)
}

/// Seal standard input into `out`; returns the document id and the plaintext size.
fn copy_sealed<W: Write>(
    out: W,
    slots: &[Slot],
    metadata: &Metadata,
    bars: &Bars,
) -> Result<(String, u64), CliError> {
    let write_err = |e: std::io::Error| {
        CliError::new(
            Class::Failed,
            format!("could not write the sealed document: {e}"),
        )
    };
    let mut w = StreamWriter::new(out, slots, metadata).map_err(|e| match e {
        kluis_core::Error::Io(io) => write_err(io),
        other => CliError::from(other),
    })?;
    let doc_id = w.header().doc_id().to_string();
    let mut input = std::io::stdin().lock();
    let mut total = 0u64;
    let sealing_err = |e: std::io::Error| match kluis_core::Error::from_io(e) {
        kluis_core::Error::Io(io) => write_err(io),
        other => CliError::from(other),
    };
    loop {
        // Read straight into the writer's buffer: no copy of the plaintext.
        let space = w.spare().map_err(sealing_err)?;
        let n = match input.read(space) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(CliError::new(
                    Class::Failed,
                    format!("could not read standard input: {e}; nothing complete was written"),
                ));
            }
        };
        w.advance(n).map_err(sealing_err)?;
        total += n as u64;
        bars.inc(n as u64);
    }
    w.finish().map_err(|e| match e {
        kluis_core::Error::Io(io) => write_err(io),
        kluis_core::Error::SizeMismatch { .. } => CliError::new(
            Class::Failed,
            "standard input changed size while it was being sealed; nothing complete was written",
        ),
        other => CliError::from(other),
    })?;
    Ok((doc_id, total))
}
