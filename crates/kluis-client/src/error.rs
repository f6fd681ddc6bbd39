//! Error type: every message says what went wrong and what a person can do about it.

use std::fmt;
use std::path::PathBuf;

use kluis_core::UnwrapError;

/// What can go wrong talking to the key server or using the label cache.
///
/// [`Display`](fmt::Display) is the message for people (the CLI prints it as is); it never
/// contains the token or key material. Text that comes from the server is stripped of
/// control characters and shortened before it is shown.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientError {
    /// The configured server address is not a usable URL.
    InvalidServerUrl {
        /// The address as configured.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The configured server address is `http://` to a host that is not loopback.
    InsecureServerUrl {
        /// The address as configured.
        url: String,
    },
    /// The token is empty, too long or has characters a token never has.
    InvalidToken {
        /// What is wrong with it (never the token itself).
        reason: &'static str,
    },
    /// A label name is not 1–64 characters of `[A-Za-z0-9._-]`, or is `.` or `..`.
    InvalidLabel {
        /// The name given.
        name: String,
    },
    /// The stated reason for opening is too long or has control characters.
    InvalidReason,
    /// The CA bundle file cannot be read or holds no usable certificate.
    CaFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// Reading or writing the label cache failed.
    Cache {
        /// The file or directory.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
    /// Opening needs a token and none is configured.
    NoToken {
        /// The key server.
        server: String,
    },
    /// The key server could not be reached (DNS, connection refused, network down, reset).
    Unreachable {
        /// The key server.
        server: String,
        /// What the network said.
        detail: String,
    },
    /// The key server did not answer in time.
    Timeout {
        /// The key server.
        server: String,
        /// The configured timeout, in seconds.
        seconds: u64,
    },
    /// The key server's certificate is not trusted (unknown issuer, wrong name, expired...).
    UntrustedCertificate {
        /// The key server.
        server: String,
        /// Why the certificate was refused.
        detail: String,
    },
    /// The TLS connection failed for another reason than the certificate.
    Tls {
        /// The key server.
        server: String,
        /// What rustls said.
        detail: String,
    },
    /// The key server did not accept the token (401): expired, revoked or unknown.
    Unauthenticated {
        /// The key server.
        server: String,
    },
    /// The caller may not open documents under this label (policy).
    Denied {
        /// The label.
        label: String,
    },
    /// The label requires double key and the document was sealed with one key.
    DoubleKeyRequired {
        /// The label.
        label: String,
    },
    /// The key version is retired: it opens only to re-key.
    Retired {
        /// The label.
        label: String,
        /// The key version.
        kid: u32,
    },
    /// The key version was destroyed: nobody can open its documents any more.
    Destroyed {
        /// The label.
        label: String,
        /// The key version.
        kid: u32,
        /// When it was destroyed (ms since the Unix epoch), when the server says.
        destroyed_ms: Option<i64>,
    },
    /// The key server does not know the label (or this version of it).
    UnknownLabel {
        /// The key server.
        server: String,
        /// The label.
        label: String,
        /// The key version, when a document named one.
        kid: Option<u32>,
    },
    /// The label has no key version to seal with (410 on its record).
    LabelGone {
        /// The key server.
        server: String,
        /// The label.
        label: String,
    },
    /// The key server refused the request for another reason it named.
    Refused {
        /// The key server.
        server: String,
        /// The error code it sent.
        code: String,
        /// Its message.
        message: String,
    },
    /// The key server found the request malformed (400).
    Malformed {
        /// The key server.
        server: String,
        /// Its message.
        message: String,
    },
    /// The key server could not use one document's stanza (it does not parse, or does not
    /// authenticate for the document id and key version it names): the document is corrupt
    /// or was tampered with.
    CorruptStanza {
        /// The key server.
        server: String,
        /// The label the stanza names.
        label: String,
        /// The key version it names.
        kid: u32,
        /// The server's message.
        message: String,
    },
    /// A batch was larger than the key server accepts even after splitting (413).
    BatchTooLarge {
        /// The key server.
        server: String,
    },
    /// The key server is rate limiting this client (429), still after the retries allowed.
    RateLimited {
        /// The key server.
        server: String,
        /// When to try again, in seconds, if the server said.
        retry_after: Option<u64>,
    },
    /// The key server failed or is not ready (5xx).
    Server {
        /// The key server.
        server: String,
        /// The HTTP status.
        status: u16,
        /// Its message.
        message: String,
    },
    /// The answer is not what a kluis key server sends.
    Protocol {
        /// The key server.
        server: String,
        /// What was wrong.
        detail: String,
    },
    /// A sealed share in the reply did not authenticate; it was not used.
    BadReply {
        /// The key server.
        server: String,
    },
    /// The server's record for a label carries a different public key for a key version
    /// than the one seen before: refused, and the cached record is kept.
    KeyChanged {
        /// The key server.
        server: String,
        /// The label.
        label: String,
        /// The key version whose key changed.
        kid: u32,
        /// The cache file holding the key seen before.
        cache_file: Option<PathBuf>,
    },
    /// The server offers an older key version for sealing than one seen before.
    KeyRollback {
        /// The key server.
        server: String,
        /// The label.
        label: String,
        /// The version offered now.
        offered: u32,
        /// The newest version seen before.
        seen: u32,
        /// The cache file holding the newer record.
        cache_file: Option<PathBuf>,
    },
    /// The label requires double key: sealing needs a second (holder) key.
    HolderKeyNeeded {
        /// The label.
        label: String,
    },
    /// A stanza that only a holder or recovery key can open was given to the key server.
    NotForKeyServer,
    /// The operating system's random number generator failed.
    Random,
}

impl ClientError {
    /// Whether the key server was not (properly) reachable, so that sealing may go on with a
    /// cached label record: network failure, timeout, TLS failure, rate limiting, server
    /// failure or an answer that is not from a kluis key server.
    pub fn is_offline(&self) -> bool {
        matches!(
            self,
            ClientError::Unreachable { .. }
                | ClientError::Timeout { .. }
                | ClientError::UntrustedCertificate { .. }
                | ClientError::Tls { .. }
                | ClientError::RateLimited { .. }
                | ClientError::Server { .. }
                | ClientError::Protocol { .. }
        )
    }

    /// The error as the core's [`UnwrapError`] (what [`kluis_core::open`] reports), with this
    /// error as its typed reason: [`UnwrapError::reason`] downcasts back to a `ClientError`
    /// (`reason.downcast_ref::<ClientError>()`), so a caller tells refusals apart by type, not
    /// by message text.
    pub fn to_unwrap_error(&self) -> UnwrapError {
        use ClientError::*;
        match self {
            NotForKeyServer => UnwrapError::NotMine,
            Destroyed { .. } => UnwrapError::destroyed(self.clone()),
            BadReply { .. } | Random | Cache { .. } => UnwrapError::unavailable(self.clone()),
            e if e.is_offline() => UnwrapError::unavailable(self.clone()),
            _ => UnwrapError::denied(self.clone()),
        }
    }
}

fn offline_hint(f: &mut fmt::Formatter<'_>, server: &str) -> fmt::Result {
    write!(
        f,
        "sealing still works offline; opening needs the key server at {server}"
    )
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ClientError::*;
        match self {
            InvalidServerUrl { url, reason } => write!(
                f,
                "invalid key server address `{}` ({reason}): give it as https://HOST[:PORT]",
                clean(url)
            ),
            InsecureServerUrl { url } => write!(
                f,
                "refusing plain http:// to `{}`: use https:// (http:// is allowed only to a loopback address such as 127.0.0.1)",
                clean(url)
            ),
            InvalidToken { reason } => write!(
                f,
                "the key server token is not usable ({reason}): run `kluis login` to get a new one"
            ),
            InvalidLabel { name } => write!(
                f,
                "invalid label name `{}`: labels are 1 to 64 characters from A-Z, a-z, 0-9, '.', '_' and '-', other than `.` and `..`",
                clean(name)
            ),
            InvalidReason => f.write_str(
                "the reason for opening must be at most 1024 characters on one line: shorten it",
            ),
            CaFile { path, detail } => write!(
                f,
                "cannot use the CA bundle {}: {detail}: give a PEM file with your organisation's CA certificate",
                path.display()
            ),
            Cache { path, detail } => write!(
                f,
                "the label cache at {} failed: {detail}: check its permissions and free space, or configure another cache directory",
                path.display()
            ),
            NoToken { server } => write!(
                f,
                "opening needs a token for the key server at {server}: run `kluis login`"
            ),
            Unreachable { server, detail } => {
                write!(f, "cannot reach the key server at {server} ({detail}): ")?;
                offline_hint(f, server)
            }
            Timeout { server, seconds } => {
                write!(
                    f,
                    "the key server at {server} did not answer within {seconds} s: "
                )?;
                offline_hint(f, server)
            }
            UntrustedCertificate { server, detail } => write!(
                f,
                "the key server at {server} presented a certificate that is not trusted ({detail}): if your organisation runs its own certificate authority, configure its CA bundle; otherwise the connection may be intercepted: do not work around this, tell your IT department"
            ),
            Tls { server, detail } => {
                write!(f, "TLS with the key server at {server} failed ({detail}): ")?;
                offline_hint(f, server)
            }
            Unauthenticated { server } => write!(
                f,
                "your token expired or is not valid for the key server at {server}: run `kluis login`"
            ),
            Denied { label } => write!(
                f,
                "you are not allowed to open documents labelled `{}`; ask the label's owner",
                clean(label)
            ),
            DoubleKeyRequired { label } => write!(
                f,
                "label `{}` requires double key, but this document was sealed with the label key alone: the key server refuses to open it; ask the label's owner",
                clean(label)
            ),
            Retired { label, kid } => write!(
                f,
                "key version {kid} of label `{}` is retired: it opens only to re-key the document (`kluis rekey`)",
                clean(label)
            ),
            Destroyed {
                label,
                kid,
                destroyed_ms,
            } => {
                write!(
                    f,
                    "this document's key (label `{}`, version {kid}) was destroyed",
                    clean(label)
                )?;
                if let Some(ms) = destroyed_ms {
                    write!(f, " on {}", date(*ms))?;
                }
                f.write_str("; it cannot be opened by anyone")
            }
            UnknownLabel { server, label, kid } => {
                write!(f, "the key server at {server} has no label `{}`", clean(label))?;
                match kid {
                    Some(kid) => write!(
                        f,
                        " with key version {kid}: the document was sealed for another key server, or is corrupt"
                    ),
                    None => f.write_str(": check the name (`kluis labels` lists them)"),
                }
            }
            LabelGone { server, label } => write!(
                f,
                "label `{}` on the key server at {server} has no key to seal with: ask the label's owner",
                clean(label)
            ),
            Refused {
                server,
                code,
                message,
            } => write!(
                f,
                "the key server at {server} refused ({}): {}",
                clean(code),
                clean(message)
            ),
            CorruptStanza {
                server,
                label,
                kid,
                message,
            } => write!(
                f,
                "the key server at {server} could not use this document's stanza for label `{}` version {kid} ({}): the document is corrupt or was tampered with; ask its sender for a new copy",
                clean(label),
                clean(message)
            ),
            Malformed { server, message } => write!(
                f,
                "the key server at {server} could not use the request ({}): the document may be corrupt, or this kluis does not match the server's version",
                clean(message)
            ),
            BatchTooLarge { server } => write!(
                f,
                "the key server at {server} refuses even a batch of one item as too large: tell its operators"
            ),
            RateLimited {
                server,
                retry_after,
            } => {
                write!(f, "the key server at {server} is limiting requests: ")?;
                match retry_after {
                    Some(s) => write!(f, "try again in {s} s"),
                    None => f.write_str("try again shortly"),
                }
            }
            Server {
                server,
                status,
                message,
            } => {
                write!(f, "the key server at {server} failed (HTTP {status}")?;
                if !message.is_empty() {
                    write!(f, ": {}", clean(message))?;
                }
                f.write_str("): try again later; if it persists, tell its operators")
            }
            Protocol { server, detail } => write!(
                f,
                "unexpected answer from {server} ({}): check that this is the address of a kluis key server, and that client and server versions match",
                clean(detail)
            ),
            BadReply { server } => write!(
                f,
                "the key server at {server} sent a key share that does not authenticate: it was not used; try again, and tell the server's operators if it persists"
            ),
            KeyChanged {
                server,
                label,
                kid,
                cache_file,
            } => {
                write!(
                    f,
                    "refusing the record of label `{}` from {server}: key version {kid} now has a different public key than the one seen before (a key must never change without a new version: this may be an attack). The record was not used: ask the key server's operators",
                    clean(label)
                )?;
                if let Some(p) = cache_file {
                    write!(
                        f,
                        "; only if they confirm the new key, delete {} and try again",
                        p.display()
                    )?;
                }
                Ok(())
            }
            KeyRollback {
                server,
                label,
                offered,
                seen,
                cache_file,
            } => {
                write!(
                    f,
                    "refusing the record of label `{}` from {server}: it offers key version {offered} for sealing, but version {seen} was current before (an old record replayed, or a server restored from backup). The record was not used: ask the key server's operators",
                    clean(label)
                )?;
                if let Some(p) = cache_file {
                    write!(
                        f,
                        "; only if they confirm, delete {} and try again",
                        p.display()
                    )?;
                }
                Ok(())
            }
            HolderKeyNeeded { label } => write!(
                f,
                "label `{}` requires double key: give your own (holder) public key as the second key",
                clean(label)
            ),
            NotForKeyServer => f.write_str(
                "this key is for a holder or recovery identity, not for the key server: open it with that identity",
            ),
            Random => f.write_str(
                "the operating system's random number generator failed: nothing was sent",
            ),
        }
    }
}

impl std::error::Error for ClientError {}

/// Text from the network or from a person, made safe to print: control characters (terminal
/// escapes) replaced, at most 300 characters.
pub(crate) fn clean(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(300)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if s.chars().nth(300).is_some() {
        out.push('…');
    }
    out
}

/// A UTC date `YYYY-MM-DD` for milliseconds since the Unix epoch.
pub(crate) fn date(ms: i64) -> String {
    kluis_core::UtcDateTime::from_unix_ms(ms).date()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(951_782_400_000), "2000-02-29");
        assert_eq!(date(1_735_689_599_999), "2024-12-31");
        assert_eq!(date(-86_400_000), "1969-12-31");
    }

    #[test]
    fn server_text_is_cleaned() {
        assert_eq!(clean("a\x1b[31mb\n"), "a?[31mb?");
        assert_eq!(clean(&"x".repeat(400)).chars().count(), 301);
    }

    #[test]
    fn destroyed_names_the_date_when_known() {
        let e = ClientError::Destroyed {
            label: "hr".into(),
            kid: 1,
            destroyed_ms: Some(951_782_400_000),
        };
        assert_eq!(
            e.to_string(),
            "this document's key (label `hr`, version 1) was destroyed on 2000-02-29; it cannot be opened by anyone"
        );
        assert!(matches!(e.to_unwrap_error(), UnwrapError::Destroyed(_)));
    }

    #[test]
    fn the_core_error_carries_the_client_error_typed() {
        let e = ClientError::Denied { label: "hr".into() };
        let u = e.to_unwrap_error();
        assert!(matches!(u, UnwrapError::Denied(_)));
        let back = u.reason().and_then(|r| r.downcast_ref::<ClientError>());
        assert_eq!(back, Some(&e));
        assert_eq!(u.to_string(), format!("denied: {e}"));
    }
}
