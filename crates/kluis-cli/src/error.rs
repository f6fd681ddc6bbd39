//! Errors for people, and their exit codes.

use std::fmt;

use kluis_client::ClientError;
use kluis_core::UnwrapError;

/// What kind of failure: each has its exit code (see [`crate::cli::EXIT_CODES`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    /// 1: anything not listed below, and mixed failures.
    Failed,
    /// 2: usage or configuration.
    Usage,
    /// 3: the key server cannot be reached.
    Offline,
    /// 4: authentication needed or failed.
    Auth,
    /// 5: denied by policy.
    Denied,
    /// 6: the key was destroyed.
    Destroyed,
    /// 7: corrupt or not a kluis document.
    Corrupt,
    /// 8: the output exists.
    Exists,
    /// 9: none of the keys at hand opens the document (it is sealed to other keys, or to a
    /// label or key version the key server does not have).
    NoKey,
}

impl Class {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Class::Failed => 1,
            Class::Usage => 2,
            Class::Offline => 3,
            Class::Auth => 4,
            Class::Denied => 5,
            Class::Destroyed => 6,
            Class::Corrupt => 7,
            Class::Exists => 8,
            Class::NoKey => 9,
        }
    }

    /// The exit code of a run where files failed with `classes`: their common class, or 1.
    pub fn combine(classes: impl IntoIterator<Item = Class>) -> Option<Class> {
        let mut it = classes.into_iter();
        let first = it.next()?;
        Some(if it.all(|c| c == first) {
            first
        } else {
            Class::Failed
        })
    }
}

/// An error that ends the command: a message for people (what failed and what to do) and
/// its class. Never holds a secret, a token or plaintext.
#[derive(Clone, Debug)]
pub struct CliError {
    /// The kind of failure.
    pub class: Class,
    /// The message, without the `kluis:` prefix.
    pub message: String,
}

impl CliError {
    /// An error of class `class`.
    pub fn new(class: Class, message: impl Into<String>) -> Self {
        CliError {
            class,
            message: message.into(),
        }
    }

    /// A usage or configuration error.
    pub fn usage(message: impl Into<String>) -> Self {
        CliError::new(Class::Usage, message)
    }

    /// An I/O failure on `what`.
    pub fn io(what: &std::path::Path, action: &str, e: &std::io::Error) -> Self {
        CliError::new(Class::Failed, format!("{what:?}: could not {action}: {e}"))
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        CliError::new(client_class(&e), client_message(&e))
    }
}

impl From<kluis_core::Error> for CliError {
    fn from(e: kluis_core::Error) -> Self {
        let (message, class) = describe_core(&e);
        CliError::new(class, message)
    }
}

impl From<kluis_file::Error> for CliError {
    fn from(e: kluis_file::Error) -> Self {
        let (message, class) = describe_file(&e);
        CliError::new(class, message)
    }
}

/// The class of a key server client error.
pub fn client_class(e: &ClientError) -> Class {
    use ClientError::*;
    match e {
        Unreachable { .. }
        | Timeout { .. }
        | Tls { .. }
        | UntrustedCertificate { .. }
        | RateLimited { .. }
        | Server { .. } => Class::Offline,
        NoToken { .. } | Unauthenticated { .. } | InvalidToken { .. } => Class::Auth,
        Denied { .. } | DoubleKeyRequired { .. } | Retired { .. } | Refused { .. } => Class::Denied,
        Destroyed { .. } | LabelGone { .. } => Class::Destroyed,
        CorruptStanza { .. } => Class::Corrupt,
        // A document naming a label or key version the server does not have: sealed for
        // another key server, or its label or version bytes were altered. Either way, none
        // of the keys at hand opens it.
        UnknownLabel { kid: Some(_), .. } => Class::NoKey,
        InvalidServerUrl { .. }
        | InsecureServerUrl { .. }
        | InvalidLabel { .. }
        | InvalidReason
        | CaFile { .. }
        | HolderKeyNeeded { .. }
        | UnknownLabel { kid: None, .. } => Class::Usage,
        _ => Class::Failed,
    }
}

/// The message for a key server client error, with the CLI's own hints where the client's
/// message names no command.
pub fn client_message(e: &ClientError) -> String {
    match e {
        ClientError::HolderKeyNeeded { .. } => format!(
            "{e}: pass --to kluis1… or set one with `kluis config set default_to kluis1…` (`kluis keygen` makes a key pair)"
        ),
        ClientError::CaFile { .. } => format!("{e} (`kluis config set ca_file FILE`)"),
        _ => e.to_string(),
    }
}

/// A label record that could not be had or was refused (a changed key, a rolled-back
/// version, an unknown label, no server), with what was therefore not done in front:
/// `nothing was sealed`, `no document of label … was re-keyed`.
pub fn record_error(not_done: &str, e: &ClientError) -> CliError {
    CliError::new(
        client_class(e),
        format!("{not_done}: {}", client_message(e)),
    )
}

/// A refusal by one of this program's own key holders (no key server configured, the
/// identity file cannot be used): the message for people and the class of its exit code.
/// It travels inside the core's [`UnwrapError`] as its typed reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The message, shown as it is.
    pub message: String,
    /// The kind of failure.
    pub class: Class,
}

impl Refusal {
    /// A refusal with `message` of class `class`.
    pub fn new(message: impl Into<String>, class: Class) -> Self {
        Refusal {
            message: message.into(),
            class,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Refusal {}

/// Message and class of a key holder's refusal, from its typed reason: this program's own
/// refusals and the key server client's errors keep their message and class.
fn describe_unwrap(u: &UnwrapError) -> Option<(String, Class)> {
    let reason = u.reason()?;
    if let Some(r) = reason.downcast_ref::<Refusal>() {
        return Some((r.message.clone(), r.class));
    }
    let e = reason.downcast_ref::<ClientError>()?;
    Some((e.to_string(), client_class(e)))
}

/// Message and class of a format error (without a path).
pub fn describe_core(e: &kluis_core::Error) -> (String, Class) {
    use kluis_core::Error::*;
    if let Unwrap(u) = e {
        if let Some(described) = describe_unwrap(u) {
            return described;
        }
        let class = match u {
            UnwrapError::Destroyed(_) => Class::Destroyed,
            UnwrapError::Unavailable(_) => Class::Offline,
            UnwrapError::Denied(_) => Class::Denied,
            _ => Class::Corrupt,
        };
        return (e.to_string(), class);
    }
    let class = match e {
        NotSealed
        | UnsupportedVersion { .. }
        | HeaderSize { .. }
        | SlotCount { .. }
        | StanzaBodyLength { .. }
        | MalformedHeader { .. }
        | HeaderMac
        | Metadata { .. }
        | ChunkAuth { .. }
        | Truncated { .. }
        | TrailingData
        | SizeMismatch { .. }
        | ZeroSharedSecret
        | IdentityFileEdited { .. } => Class::Corrupt,
        NoMatchingKey => Class::NoKey,
        WrongPassphrase => Class::Auth,
        InvalidPublicKey { .. }
        | InvalidIdentityFile { .. }
        | IdentityParams { .. }
        | InvalidLabel
        | PaddingNeedsSize => Class::Usage,
        _ => Class::Failed,
    };
    (e.to_string(), class)
}

/// Message and class of a file error. A key holder's refusal is shown as its own message
/// after the file name (without the core's "unwrapping failed: denied:" wrapping).
pub fn describe_file(e: &kluis_file::Error) -> (String, Class) {
    use kluis_file::Error as F;
    if let F::Format { path, error } = e {
        let (m, class) = describe_core(error);
        return (format!("{path:?}: {m}"), class);
    }
    let class = match e {
        F::Exists { .. } => Class::Exists,
        F::UnsafeName { .. } => Class::Corrupt,
        F::DotFile { .. }
        | F::SymlinkArgument { .. }
        | F::AlreadySealed { .. }
        | F::TempInSyncFolder { .. } => Class::Usage,
        F::NotVerified { reason, .. } => describe_file(reason).1,
        F::NameNotPortable { .. }
        | F::NameNotUtf8 { .. }
        | F::NoOutputName { .. }
        | F::OutputInsideInput { .. }
        | F::NotAFile { .. }
        | F::NoRecipients
        | F::NoVerifyKeys { .. }
        | F::SeveralLabels { .. }
        | F::NoLabel { .. } => Class::Usage,
        _ => Class::Failed,
    };
    (e.to_string(), class)
}

/// The key of a file error for grouping repeated failures: the message without the path,
/// so that one cause shared by a thousand files (the key server is down) is shown once.
pub fn group_key(e: &kluis_file::Error) -> Option<String> {
    e.format_error().map(|f| describe_core(f).0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combined_classes() {
        assert_eq!(Class::combine([]), None);
        assert_eq!(
            Class::combine([Class::Offline, Class::Offline]),
            Some(Class::Offline)
        );
        assert_eq!(
            Class::combine([Class::Offline, Class::Denied]),
            Some(Class::Failed)
        );
    }

    #[test]
    fn refusals_keep_their_class_and_text_by_type() {
        let refusal = Refusal::new("needs your identity file", Class::Usage);
        let e = kluis_core::Error::Unwrap(UnwrapError::denied(refusal));
        assert_eq!(
            describe_core(&e),
            ("needs your identity file".to_owned(), Class::Usage)
        );
        // The same text from an unknown key holder is not taken for ours: the type decides.
        let text = kluis_core::Error::Unwrap(UnwrapError::denied("needs your identity file"));
        assert_eq!(describe_core(&text).1, Class::Denied);
        // The key server client's error keeps its own class (a revoked label is "denied",
        // a missing token is "authentication").
        let client = ClientError::NoToken {
            server: "https://keys.example".into(),
        };
        let e = kluis_core::Error::Unwrap(client.to_unwrap_error());
        assert_eq!(describe_core(&e), (client.to_string(), Class::Auth));
        let other = kluis_core::Error::Unwrap(UnwrapError::destroyed("gone"));
        assert_eq!(describe_core(&other).1, Class::Destroyed);
    }

    #[test]
    fn client_errors_map_to_codes() {
        let s = || "http://127.0.0.1:1".to_owned();
        assert_eq!(
            client_class(&ClientError::Unauthenticated { server: s() }).code(),
            4
        );
        assert_eq!(
            client_class(&ClientError::Unreachable {
                server: s(),
                detail: "refused".into()
            })
            .code(),
            3
        );
        assert_eq!(
            client_class(&ClientError::Denied { label: "hr".into() }).code(),
            5
        );
        assert_eq!(
            client_class(&ClientError::Destroyed {
                label: "hr".into(),
                kid: 1,
                destroyed_ms: None
            })
            .code(),
            6
        );
        // A document naming a label or version the server does not have: not for these keys.
        let unknown = |kid| ClientError::UnknownLabel {
            server: s(),
            label: "hr".into(),
            kid,
        };
        assert_eq!(client_class(&unknown(Some(7))).code(), 9);
        // Sealing to a label name the server does not know: a usage error.
        assert_eq!(client_class(&unknown(None)).code(), 2);
    }
}
