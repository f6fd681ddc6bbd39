//! The commands around the person's keys and configuration: `keygen`, `login`, `logout`,
//! `config`, `labels`, `audit` and `status`.

use std::io::{IsTerminal, Read};

use kluis_client::{Client, ClientError, Purpose, ServerHealth, Token};
use kluis_core::Identity;
use serde_json::json;
use zeroize::Zeroizing;

use crate::Global;
use crate::cli::{AuditArgs, ConfigCmd, KeygenArgs, LoginArgs};
use crate::config::{
    DEFAULT_IDENTITY, KEYS, Settings, Source, TOKEN_FILE, TOKEN_SERVER_FILE, config_dir,
    create_private_dir, read_small, saved_token, write_private,
};
use crate::error::{Class, CliError};
use crate::keys::{Passphrase, prompt};
use crate::output::{self, clean, print_json, utc, utc_ms, warn};

/// Run `kluis keygen`.
pub fn keygen(args: KeygenArgs, g: &Global) -> Result<u8, CliError> {
    if let Some(p) = &args.public {
        let key = crate::pins::holder_public_key(p, &Passphrase::from_args(&args.passphrase))?;
        if g.json {
            print_json(
                &json!({"command": "keygen", "identity": p.to_string_lossy(), "public_key": key.to_string()}),
            );
        } else {
            println!("{key}");
        }
        return Ok(0);
    }
    let path = match &args.output {
        Some(p) => p.clone(),
        None => {
            let dir = config_dir()?;
            create_private_dir(&dir)?;
            dir.join(DEFAULT_IDENTITY)
        }
    };
    if std::fs::symlink_metadata(&path).is_ok() {
        return Err(CliError::new(
            Class::Exists,
            format!(
                "{path:?} already exists; refusing to overwrite an identity (documents sealed to it would be lost): choose another file with -o"
            ),
        ));
    }
    let source = Passphrase::from_args(&args.passphrase);
    let pass = match source {
        Passphrase::Prompt => {
            let a = prompt("Passphrase for the new identity: ")?;
            let b = prompt("The same passphrase again: ")?;
            if a != b {
                return Err(CliError::usage(
                    "the two passphrases differ; nothing was written: try again",
                ));
            }
            a
        }
        other => other.read_given()?,
    };
    if pass.trim().is_empty() {
        return Err(CliError::usage(
            "an empty passphrase (or one of blanks only) would leave the key unprotected: choose one of at least 12 characters",
        ));
    }
    // Anyone who copies the identity file (a synced home folder, a backup) can guess at the
    // passphrase offline: refuse what is guessed in moments. Blanks around it do not count.
    if pass.trim().chars().count() < MIN_PASSPHRASE_CHARS {
        return Err(CliError::usage(format!(
            "the passphrase is too short: use at least {MIN_PASSPHRASE_CHARS} characters (a few unrelated words are easy to remember); nothing was written"
        )));
    }
    let id = Identity::generate()?;
    kluis_file::write_identity_file(&id, &path, pass.as_bytes()).map_err(|e| match e {
        kluis_core::Error::Io(io) if io.kind() == std::io::ErrorKind::AlreadyExists => {
            crate::atomic::exists(&path)
        }
        kluis_core::Error::Io(io) => CliError::io(&path, "write", &io),
        other => other.into(),
    })?;
    let key = id.public_key();
    crate::pins::record(&path, &key);
    if g.json {
        print_json(
            &json!({"command": "keygen", "identity": path.to_string_lossy(), "public_key": key.to_string()}),
        );
    } else {
        println!("{key}");
        if !g.quiet {
            eprintln!(
                "kluis: identity written to {path:?} (mode 0600). Back it up, and remember the passphrase: double-key documents sealed to it open only with it. Its public key (above) is what `kluis seal --to` takes; `kluis config set default_to {key}` makes it the default."
            );
        }
    }
    Ok(0)
}

/// Read the token for `login`: from `--token-file`, a hidden prompt, or standard input.
fn read_token(args: &LoginArgs, server: &str) -> Result<Zeroizing<String>, CliError> {
    if let Some(f) = &args.token_file {
        return read_small(f).map_err(|e| CliError::io(f, "read the token from", &e));
    }
    if std::io::stdin().is_terminal() {
        return prompt(&format!("Token for {server} (input hidden): "));
    }
    let mut buf = Zeroizing::new(Vec::new());
    std::io::stdin()
        .lock()
        .take(64 * 1024)
        .read_to_end(&mut buf)
        .map_err(|e| CliError::new(Class::Failed, format!("could not read standard input: {e}")))?;
    let text = std::str::from_utf8(&buf)
        .map_err(|_| CliError::new(Class::Auth, "the token is not text: check what you pasted"))?;
    Ok(Zeroizing::new(text.to_owned()))
}

/// The fewest characters a new identity's passphrase may have.
pub const MIN_PASSPHRASE_CHARS: usize = 12;

/// Run `kluis login`.
pub fn login(args: LoginArgs, g: &Global) -> Result<u8, CliError> {
    // Not the saved token: it is about to be replaced, and may be what is broken.
    let settings = Settings::load_without_token(g.server.clone())?;
    let server = settings.server()?.to_owned();
    let text = read_token(&args, &server)?;
    let token = Token::new(text.as_str()).map_err(|e| {
        CliError::new(
            Class::Auth,
            match e {
                ClientError::InvalidToken { reason } => {
                    format!(
                        "this is not a usable token ({reason}): copy it again; nothing was saved"
                    )
                }
                other => other.to_string(),
            },
        )
    })?;
    let mut checked = false;
    if !args.no_check {
        let mut config = settings.client_config()?;
        config.token = Some(token);
        match Client::new(config)?.my_audit() {
            Ok(_) => checked = true,
            Err(e) if e.is_offline() => {
                warn(&format!("could not check the token, saved it anyway: {e}"));
            }
            Err(ClientError::Unauthenticated { server }) => {
                return Err(CliError::new(
                    Class::Auth,
                    format!(
                        "the key server at {server} does not accept this token (expired, revoked or mistyped); nothing was saved: ask for a new one"
                    ),
                ));
            }
            Err(e) => return Err(e.into()),
        }
    }
    // A server given with --server (or KLUIS_SERVER) is saved with the token.
    if matches!(settings.server, Some((_, Source::Flag)))
        && settings.file.server.as_deref() != Some(server.as_str())
    {
        let mut file = settings.file.clone();
        file.set("server", &server)?;
        file.save(&settings.dir)?;
    }
    let path = settings.dir.join(TOKEN_FILE);
    // Logging in again is how a damaged token file is fixed: say it is replaced (by name and
    // problem only; its contents may be a secret).
    if let Err(bad) = saved_token(&settings.dir) {
        warn(&format!("{bad}; replacing it"));
    }
    let mut data = Zeroizing::new(text.trim().to_owned());
    data.push('\n');
    // The token is bound to this server: it is never sent to another origin. The old
    // binding goes first, so an interrupted login never binds the new token elsewhere.
    let origin = kluis_client::server_origin(&server)?;
    let binding = settings.dir.join(TOKEN_SERVER_FILE);
    match std::fs::remove_file(&binding) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(CliError::io(&binding, "remove", &e));
        }
        _ => {}
    }
    write_private(&path, data.as_bytes())?;
    write_private(&binding, format!("{origin}\n").as_bytes())?;
    if std::env::var_os("KLUIS_TOKEN").is_some_and(|t| !t.is_empty()) {
        warn("KLUIS_TOKEN is set in the environment and overrides the saved token");
    }
    if g.json {
        print_json(
            &json!({"command": "login", "server": server, "token_file": path.to_string_lossy(), "checked": checked}),
        );
    } else if !g.quiet {
        eprintln!("logged in to {server}; the token is saved in {path:?} (mode 0600)");
    }
    Ok(0)
}

/// Run `kluis logout`.
pub fn logout(g: &Global) -> Result<u8, CliError> {
    let path = config_dir()?.join(TOKEN_FILE);
    let _ = std::fs::remove_file(config_dir()?.join(TOKEN_SERVER_FILE));
    let removed = match std::fs::remove_file(&path) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(CliError::io(&path, "remove", &e)),
    };
    if g.json {
        print_json(&json!({"command": "logout", "removed": removed}));
    } else if !g.quiet {
        eprintln!(
            "{}",
            if removed {
                "the saved token was removed"
            } else {
                "no token was saved"
            }
        );
    }
    Ok(0)
}

/// Run `kluis config …`.
pub fn config(cmd: ConfigCmd, g: &Global) -> Result<u8, CliError> {
    let settings = Settings::load(g.server.clone())?;
    match cmd {
        ConfigCmd::Set { key, value } => {
            let mut file = settings.file.clone();
            file.set(&key, &value)?;
            file.save(&settings.dir)?;
        }
        ConfigCmd::Unset { key } => {
            let mut file = settings.file.clone();
            file.unset(&key)?;
            file.save(&settings.dir)?;
        }
        ConfigCmd::Show => return show(&settings, g),
    }
    Ok(0)
}

fn show(s: &Settings, g: &Global) -> Result<u8, CliError> {
    let f = &s.file;
    let path = |p: &Option<std::path::PathBuf>| {
        p.as_ref()
            .map(|p| s.dir.join(p).to_string_lossy().into_owned())
    };
    let identity = s.identity_path(None);
    if g.json {
        print_json(&json!({
            "config_dir": s.dir.to_string_lossy(),
            "server": s.server.as_ref().map(|(u, _)| u),
            "server_source": s.server.as_ref().map(|(_, src)| src.as_str()),
            "token": s.token.as_ref().map(|(_, src)| src.as_str()),
            "ca_file": path(&f.ca_file),
            "label": f.label,
            "default_to": f.default_to,
            "identity": identity.as_ref().map(|p| p.to_string_lossy()),
            "cache_dir": s.cache_dir.as_ref().map(|(d, _)| d.to_string_lossy()),
            "cache_dir_source": s.cache_dir.as_ref().map(|(_, src)| src.as_str()),
        }));
        return Ok(0);
    }
    let none = "(not set)".to_owned();
    println!("configuration folder  {}", s.dir.display());
    println!(
        "server                {}",
        s.server
            .as_ref()
            .map_or(none.clone(), |(u, src)| format!("{u} ({})", src.as_str()))
    );
    println!(
        "token                 {}",
        match &s.token {
            Some((_, Source::Env)) => "from KLUIS_TOKEN".to_owned(),
            Some(_) => format!("saved in {}", s.dir.join(TOKEN_FILE).display()),
            None => "none: run `kluis login`".to_owned(),
        }
    );
    println!(
        "ca_file               {}",
        path(&f.ca_file).unwrap_or(none.clone())
    );
    println!(
        "label                 {}",
        f.label.clone().unwrap_or(none.clone())
    );
    println!(
        "default_to            {}",
        f.default_to.clone().unwrap_or(none.clone())
    );
    println!(
        "identity              {}",
        identity.map_or(none.clone(), |p| format!(
            "{}{}",
            p.display(),
            if p.exists() { "" } else { " (missing)" }
        ))
    );
    println!(
        "cache_dir             {}",
        s.cache_dir.as_ref().map_or(none, |(d, src)| format!(
            "{} ({})",
            d.display(),
            src.as_str()
        ))
    );
    println!("\nkeys for `kluis config set`: {}", KEYS.join(", "));
    Ok(0)
}

/// Run `kluis labels`.
pub fn labels(g: &Global) -> Result<u8, CliError> {
    let settings = Settings::load(g.server.clone())?;
    let labels = settings.client(Purpose::Open, None)?.labels()?;
    if g.json {
        let items: Vec<_> = labels
            .iter()
            .map(|l| json!({"name": l.name, "current_kid": l.current_kid}))
            .collect();
        print_json(&json!({"command": "labels", "labels": items}));
        return Ok(0);
    }
    println!("{:<24} CURRENT KEY VERSION", "LABEL");
    for l in &labels {
        println!(
            "{:<24} {}",
            clean(&l.name),
            l.current_kid
                .map_or("(none: cannot seal)".to_owned(), |k| k.to_string())
        );
    }
    Ok(0)
}

/// Run `kluis audit`.
pub fn audit(args: AuditArgs, g: &Global) -> Result<u8, CliError> {
    let settings = Settings::load(g.server.clone())?;
    let client = settings.client(Purpose::Open, None)?;
    let page = client.my_audit_newest(args.before, args.limit)?;
    let events = &page.events;
    // The next page: the events older than the oldest shown.
    let next = (page.older > 0)
        .then(|| events.last().map(|e| e.seq))
        .flatten();
    if g.json {
        let items: Vec<_> = events
            .iter()
            .map(|e| {
                json!({
                    "seq": e.seq, "time_ms": e.time_ms, "actor": e.actor, "action": e.action,
                    "label": e.label, "kid": e.kid, "doc_id": e.doc_id, "outcome": e.outcome,
                    "reason": e.reason, "client": e.client,
                })
            })
            .collect();
        print_json(&json!({
            "command": "audit", "server": client.server(), "order": "newest_first",
            "total": page.total, "shown": events.len(), "older": page.older,
            "next_before": next, "events": items,
        }));
        return Ok(0);
    }
    if page.total == 0 {
        println!(
            "the key server at {} has recorded no openings under your name",
            client.server()
        );
        return Ok(0);
    }
    println!(
        "{:>8}  {:<19}  {:<8} {:<12} {:>3}  {:<32}  {:<8} REASON",
        "SEQ", "TIME (UTC)", "ACTION", "LABEL", "V", "DOCUMENT", "OUTCOME"
    );
    for e in events {
        println!(
            "{:>8}  {:<19}  {:<8} {:<12} {:>3}  {:<32}  {:<8} {}",
            e.seq,
            utc_ms(e.time_ms),
            clean(&e.action),
            clean(e.label.as_deref().unwrap_or("-")),
            e.kid.map_or("-".to_owned(), |k| k.to_string()),
            clean(e.doc_id.as_deref().unwrap_or("-")),
            clean(&e.outcome),
            clean(e.reason.as_deref().unwrap_or("")),
        );
    }
    if !g.quiet {
        let mut line = format!(
            "kluis: {} of {} recorded event{} shown, newest first",
            events.len(),
            page.total,
            output::plural(page.total as usize)
        );
        if let Some(seq) = next {
            line.push_str(&format!(
                "; {} older: `kluis audit --before {seq}`",
                page.older
            ));
        }
        eprintln!("{line}");
    }
    Ok(0)
}

/// Run `kluis status`: exit code 3 when the key server cannot be reached or is not ready.
pub fn status(g: &Global) -> Result<u8, CliError> {
    let settings = Settings::load(g.server.clone())?;
    let client = settings.client(Purpose::Open, None)?;
    let st = client.status();
    let (reachable, ready, error) = match &st.health {
        ServerHealth::Ready => (true, true, None),
        ServerHealth::NotReady { status } => (
            true,
            false,
            Some(format!(
                "the key server at {} answers but is not ready (HTTP {status}): try again later; if it persists, tell its operators",
                st.server
            )),
        ),
        ServerHealth::Unreachable(e) => (false, false, Some(e.to_string())),
        _ => (false, false, Some("unknown state".to_owned())),
    };
    // Ask the server whether it accepts the token (an empty page of one's own audit trail),
    // rather than only saying one is configured.
    let token_ok = match (ready, st.has_token) {
        (true, true) => Some(client.my_audit_page(i64::MAX - 1, 1)),
        _ => None,
    };
    let token_rejected = matches!(token_ok, Some(Err(ClientError::Unauthenticated { .. })));
    let code = if !ready {
        Class::Offline.code()
    } else if token_rejected {
        Class::Auth.code()
    } else {
        0
    };
    let token_accepted = token_ok.as_ref().map(|r| r.is_ok());
    if g.json {
        let cached: Vec<_> = st
            .cached
            .iter()
            .map(|c| {
                json!({"label": c.label, "kid": c.kid, "fetched_ms": output::ms(c.fetched_at),
                       "expires_ms": output::ms(c.expires_at), "fresh": c.fresh})
            })
            .collect();
        print_json(&json!({
            "command": "status", "server": st.server, "reachable": reachable, "ready": ready,
            "error": error, "token": st.has_token, "token_accepted": token_accepted,
            "cache_dir": st.cache_dir.as_ref().map(|d| d.to_string_lossy()),
            "cached_labels": cached, "exit_code": code,
        }));
        return Ok(code);
    }
    println!(
        "key server   {} — {}",
        st.server,
        if ready {
            "reachable and ready"
        } else if reachable {
            "not ready"
        } else {
            "unreachable"
        }
    );
    if let Some(e) = &error {
        eprintln!("kluis: {e}");
    }
    let token_line = match (&token_ok, st.has_token) {
        (_, false) => "none: run `kluis login` to open documents".to_owned(),
        (Some(Ok(_)), true) => "accepted by the key server".to_owned(),
        (Some(Err(_)), true) if token_rejected => {
            "REFUSED by the key server (expired or revoked): run `kluis login` with a new one"
                .to_owned()
        }
        (Some(Err(e)), true) => format!("configured, but could not be checked: {e}"),
        (None, true) => "configured (not checked: the key server is not ready)".to_owned(),
    };
    println!("token        {token_line}");
    match &st.cache_dir {
        Some(d) => println!("label cache  {}", d.display()),
        None => println!("label cache  off: sealing needs the key server"),
    }
    for c in &st.cached {
        println!(
            "  {:<24} v{:<4} {} until {} UTC",
            clean(&c.label),
            c.kid,
            if c.fresh {
                "fresh"
            } else {
                "expired (used offline)"
            },
            utc(c.expires_at)
        );
    }
    Ok(code)
}
