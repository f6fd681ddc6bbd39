//! `kluis open`: files and folders through kluis-file, or standard input as a stream.

use std::io::{BufReader, IsTerminal, Read, Write};

use kluis_client::Purpose;
use kluis_core::{Header, StreamReader, Unwrap};
use kluis_file::{Event, OpenOptions, open_paths};
use serde_json::json;

use crate::Global;
use crate::atomic;
use crate::cli::OpenArgs;
use crate::config::Settings;
use crate::error::{Class, CliError, describe_core};
use crate::keys::{KeyServer, LazyIdentity, Passphrase};
use crate::output;
use crate::output::plural;
use crate::progress::{self, Bars};
use crate::seal::{BINARY_TO_TERMINAL, STREAM_BUF, is_stream};

/// Run `kluis open`.
pub fn run(args: OpenArgs, g: &Global) -> Result<u8, CliError> {
    let stream = is_stream(&args.files)?;
    if stream {
        if std::io::stdin().is_terminal() {
            return Err(CliError::usage(
                "nothing to open: give sealed files or folders, or pipe a sealed document into standard input",
            ));
        }
        if args.output.is_none() && g.json {
            return Err(CliError::usage(
                "--json needs -o FILE when streaming: standard output carries the plaintext",
            ));
        }
    }
    let settings = Settings::load(g.server.clone())?;
    let client = match &settings.server {
        Some(_) => Some(settings.client(Purpose::Open, args.reason.as_deref())?),
        None => None,
    };
    let to_stdout = stream && args.output.is_none();
    let bars = if stream {
        Bars::stream(
            progress::wanted(g.quiet) && !(to_stdout && std::io::stdout().is_terminal()),
            "opening",
        )
    } else {
        Bars::files(progress::wanted(g.quiet), "opening")
    };
    let identity = LazyIdentity::new(
        settings.identity_path(args.identity.as_deref()),
        Passphrase::from_args(&args.passphrase),
        Some(&bars),
    );
    let server = KeyServer::new(client);
    let holders: [&dyn Unwrap; 2] = [&identity, &server];
    if stream {
        return open_stream(&args, g, &holders, &bars, &server, settings.temp_dir());
    }

    // Plaintext goes to -o, or beside each sealed file.
    let temp_dir = settings.temp_dir();
    if !g.quiet {
        match &args.output {
            Some(out) => output::warn_if_sync_folder([out.as_path()], "opening into"),
            None => output::warn_if_sync_folder(
                args.files.iter().map(|f| f.as_path()),
                "opening beside",
            ),
        }
    }
    let on_event = |e: Event<'_>| bars.event(e);
    let mut options = OpenOptions::default();
    options.output_dir = args.output.clone();
    options.force = args.force;
    options.allow_dotfiles = args.allow_dotfiles;
    options.progress = Some(&on_event);
    options.temp_dir = temp_dir;
    let reports = open_paths(&args.files, &holders, &options)?;
    bars.finish();
    let (s, items) = output::files(&reports, g.quiet);
    let code = s.class.map_or(0, Class::code);
    if g.json {
        output::print_json(&json!({
            "command": "open",
            "files": items,
            "opened": s.done,
            "skipped": s.skipped,
            "failed": s.failed,
            "bytes": s.bytes,
            "key_server_requests": server.requests(),
            "exit_code": code,
        }));
    } else if !g.quiet {
        // Say where every file went: a crafted document cannot put one anywhere unseen.
        // Paths are shown escaped (`{:?}`), so a name cannot play tricks on the terminal.
        for r in &reports {
            if let (kluis_file::Outcome::Done, Some(out)) = (&r.outcome, &r.output) {
                eprintln!("wrote {out:?}");
            }
        }
        let mut line = format!(
            "opened {} file{} ({})",
            s.done,
            plural(s.done),
            output::bytes(s.bytes)
        );
        if s.failed > 0 {
            line.push_str(&format!("; {} failed", s.failed));
        }
        eprintln!("{line}");
    }
    Ok(code)
}

/// "standard input: MESSAGE", with the class of a format error.
fn stdin_error(e: &kluis_core::Error) -> CliError {
    let (m, class) = describe_core(e);
    CliError::new(class, format!("standard input: {m}"))
}

fn open_stream(
    args: &OpenArgs,
    g: &Global,
    holders: &[&dyn Unwrap],
    bars: &Bars,
    server: &KeyServer,
    temp_dir: Option<std::path::PathBuf>,
) -> Result<u8, CliError> {
    let mut input = BufReader::with_capacity(STREAM_BUF, std::io::stdin().lock());
    let header = Header::read(&mut input).map_err(|e| stdin_error(&e))?;
    let key = header.unlock(holders).map_err(|e| stdin_error(&e))?;
    let reader = StreamReader::new(&header, &key, input).map_err(|e| stdin_error(&e))?;
    let bytes = match &args.output {
        Some(path) => atomic::write_new(path, args.force, true, temp_dir.as_deref(), |f| {
            if !g.quiet {
                output::warn_if_sync_folder([path.as_path()], "opening into");
            }
            copy_plain(reader, f, false, bars)
        })?,
        None => {
            let stdout = std::io::stdout();
            let terminal = stdout.is_terminal();
            copy_plain(reader, stdout.lock(), terminal, bars)?
        }
    };
    bars.finish();
    if g.json {
        output::print_json(&json!({
            "command": "open",
            "output": args.output.as_ref().map(|p| p.to_string_lossy()),
            "doc_id": header.doc_id().to_string(),
            "bytes": bytes,
            "key_server_requests": server.requests(),
            "exit_code": 0,
        }));
    }
    Ok(0)
}

/// The refusal when opened text would change the terminal.
const CONTROLS_TO_TERMINAL: &str = "refusing to write this document to a terminal: it contains control characters (such as ESC) that could change the terminal or hide text; use -o FILE, or pipe it into a viewer that shows them (`| less`)";

/// Whether `b` holds a byte that a terminal acts on beyond printing: a C0 control other than
/// tab, newline and carriage return, DEL, or a C1 control in UTF-8 (`0xC2 0x80..=0x9F`, such
/// as U+009B, a one-character CSI). `after_c2` carries a `0xC2` at the end of one chunk to
/// the next.
fn controls_terminal(b: &[u8], after_c2: &mut bool) -> bool {
    for &c in b {
        if *after_c2 && (0x80..=0x9f).contains(&c) {
            return true;
        }
        *after_c2 = c == 0xc2;
        if (c < 0x20 && !matches!(c, b'\t' | b'\n' | b'\r')) || c == 0x7f {
            return true;
        }
    }
    false
}

/// Whether the start of a plaintext looks binary (a NUL, or not UTF-8 apart from a
/// character cut at the end).
fn looks_binary(b: &[u8]) -> bool {
    if b.contains(&0) {
        return true;
    }
    match std::str::from_utf8(b) {
        Ok(_) => false,
        Err(e) => e.error_len().is_some(),
    }
}

/// Copy the authenticated plaintext to `out`. Every chunk is authenticated before any of it
/// is written; a damaged or truncated document is reported after the good chunks before it
/// were written, so the caller must discard that output (the exit code is non-zero).
fn copy_plain<R: Read, W: Write>(
    mut reader: StreamReader<R>,
    mut out: W,
    terminal: bool,
    bars: &Bars,
) -> Result<u64, CliError> {
    let mut buf = zeroize::Zeroizing::new(vec![0u8; STREAM_BUF]);
    let mut total = 0u64;
    // Whether the last byte written was 0xC2, the first half of a UTF-8 C1 control.
    let mut after_c2 = false;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let mut err = stdin_error(&kluis_core::Error::from_io(e));
                if total > 0 {
                    err.message
                        .push_str(&format!("; discard the {total} bytes already written"));
                }
                return Err(err);
            }
        };
        if terminal && total == 0 && looks_binary(&buf[..n]) {
            return Err(CliError::usage(BINARY_TO_TERMINAL));
        }
        if terminal && controls_terminal(&buf[..n], &mut after_c2) {
            let mut message = CONTROLS_TO_TERMINAL.to_owned();
            if total > 0 {
                message.push_str(&format!(" ({total} bytes before it were written)"));
            }
            return Err(CliError::usage(message));
        }
        out.write_all(&buf[..n]).map_err(|e| {
            CliError::new(Class::Failed, format!("could not write the plaintext: {e}"))
        })?;
        total += n as u64;
        bars.inc(n as u64);
    }
    out.flush()
        .map_err(|e| CliError::new(Class::Failed, format!("could not write the plaintext: {e}")))?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_detection() {
        assert!(!looks_binary(b"hello\nworld"));
        assert!(!looks_binary("héllo".as_bytes()));
        assert!(!looks_binary(&"é".as_bytes()[..1]), "cut at the end");
        assert!(looks_binary(b"a\0b"));
        assert!(looks_binary(&[0xff, 0xfe, b'a']));
    }

    #[test]
    fn terminal_controls() {
        let mut c2 = false;
        assert!(!controls_terminal(
            b"plain	text
",
            &mut c2
        ));
        assert!(!controls_terminal("héllo ✓".as_bytes(), &mut c2));
        assert!(controls_terminal(b"\x1b]0;owned\x07", &mut c2));
        assert!(controls_terminal(b"del\x7f", &mut false));
        assert!(controls_terminal("\u{9b}2J".as_bytes(), &mut false));
        let mut c2 = false;
        assert!(!controls_terminal(b"split \xc2", &mut c2));
        assert!(controls_terminal(b"\x9b", &mut c2), "across chunks");
    }
}
