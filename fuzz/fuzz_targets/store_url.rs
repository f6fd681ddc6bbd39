#![no_main]
//! kluis-server's `--store postgres://…` URL, checked as the store opens it
//! (`postgres::check_options`, without connecting).
//!
//! The input is the URL (UTF-8). Invariants: no panic; `is_postgres_url` and the check are
//! deterministic; no refusal ever contains a password the URL holds (one that holds a password
//! is refused);
//! `PgOptions`' `Debug` shows nothing of the URL.
use kluis_server::postgres::{PgOptions, check_options, is_postgres_url};
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;

/// The password in `postgres://user:PASSWORD@host…` or `password=PASSWORD` (as the URL
/// writes it, percent-encoded or not; also in the `key=value` form), when the URL visibly
/// holds one.
fn passwords(url: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(rest) = url.split_once("://").map(|(_, r)| r) {
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        if let Some((userinfo, _)) = authority.rsplit_once('@') {
            if let Some((_, pw)) = userinfo.split_once(':') {
                out.push(pw.to_owned());
            }
        }
    }
    for part in url.split(['?', '&', ' ', '\t', '\n']) {
        if let Some(pw) = part.strip_prefix("password=") {
            out.push(pw.to_owned());
        }
    }
    out.retain(|p| p.len() >= 4);
    out
}

/// The answers for URLs that reach every refusal and a description: their text is fixed.
static FIXED: LazyLock<Vec<String>> = LazyLock::new(|| {
    [
        "postgres://u:QQQQQQQQ@localhost/d",
        "postgres://localhost/d",
        "postgres://u@localhost/d?sslmode=require",
        "postgres://u@db.example.org/d",
        "postgres://u@localhost/d?port=x",
        "postgres://u@localhost/d",
        "postgres://u@/d",
    ]
    .iter()
    .map(|url| match check_options(&PgOptions::new(url)) {
        Ok(name) => name,
        Err(e) => e.to_string(),
    })
    .collect()
});

fuzz_target!(|data: &[u8]| {
    let Ok(url) = std::str::from_utf8(data) else {
        return;
    };
    let _ = is_postgres_url(url);
    let answer = check_options(&PgOptions::new(url));
    let again = check_options(&PgOptions::new(url));
    let text = match &answer {
        Ok(name) => name.clone(),
        Err(e) => e.to_string(),
    };
    let text_again = match &again {
        Ok(name) => name.clone(),
        Err(e) => e.to_string(),
    };
    assert_eq!(text, text_again, "deterministic");
    // Only refusals: a URL with a password is always refused, and what looks like one to
    // `passwords` in an accepted URL is another value (a host, say), shown in the description.
    let refused = if answer.is_err() {
        passwords(url)
    } else {
        Vec::new()
    };
    for pw in refused {
        // A password that is part of the messages' own text (`postgres`, `password`, …) is
        // no echo.
        if !FIXED.iter().any(|t| t.contains(&pw)) {
            assert!(
                !text.contains(&pw),
                "the answer repeats the password: {text}"
            );
        }
    }
    // `Debug` shows nothing of the URL (which could hold a password).
    assert_eq!(
        format!("{:?}", PgOptions::new(url)),
        format!("{:?}", PgOptions::new(""))
    );
});
