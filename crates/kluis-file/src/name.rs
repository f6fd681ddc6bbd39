//! Names: the stored-name validator, and random names for hidden outputs and temporary files.

use std::fmt;
use std::path::PathBuf;

use ring::rand::{SecureRandom, SystemRandom};

use crate::error::{Error, Result};

/// The extension of sealed files.
pub const EXTENSION: &str = "kluis";
/// The prefix of temporary files; a leftover one comes from an interrupted run and can be
/// deleted.
pub const TEMP_PREFIX: &str = ".kluis-tmp-";

/// Why a name is refused as a relative path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NameProblem {
    /// The name is empty.
    Empty,
    /// The name is longer than the format allows (4096 bytes).
    TooLong,
    /// The name starts with `/`: an absolute path.
    Absolute,
    /// A component is empty (`a//b`, or a trailing `/`).
    EmptyComponent,
    /// A component is `.` or `..`.
    DotComponent,
    /// The name contains a backslash (a separator on Windows).
    Backslash,
    /// The name contains a colon (a drive or an alternate data stream on Windows).
    Colon,
    /// The name contains a control character (NUL, newline, escape, DEL, C1 controls...).
    ControlCharacter,
    /// A component is a reserved device name on Windows (`CON`, `PRN`, `AUX`, `NUL`,
    /// `COM0`-`COM9`, `LPT0`-`LPT9`, with or without an extension, in any case).
    Reserved,
    /// A component ends in a dot or a space (Windows strips them, so two names could collide).
    TrailingDotOrSpace,
    /// The name contains a bidirectional-text control (such as U+202E, RIGHT-TO-LEFT
    /// OVERRIDE) or another invisible formatting character, which makes a name look like
    /// another one (`report\u{202E}fdp.exe` shows as `reportexe.pdf`).
    FormatCharacter,
    /// A component is longer than 255 bytes, more than file systems allow for one name.
    ComponentTooLong,
    /// The file name ends in `.kluis` or starts with `.kluis-tmp-`: restoring it could take
    /// the place of a sealed document or of a temporary file.
    KluisName,
}

/// The most bytes in one path component on common file systems (ext4, APFS, NTFS in UTF-16
/// units is 255 too, which a 255-byte UTF-8 name never exceeds).
pub const MAX_COMPONENT_LEN: usize = 255;

impl fmt::Display for NameProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameProblem::Empty => "the name is empty",
            NameProblem::TooLong => "the name is longer than 4096 bytes",
            NameProblem::Absolute => "the name is an absolute path",
            NameProblem::EmptyComponent => "the name has an empty path component",
            NameProblem::DotComponent => "the name has a `.` or `..` component",
            NameProblem::Backslash => "the name contains a backslash",
            NameProblem::Colon => "the name contains a colon (a drive or stream on Windows)",
            NameProblem::ControlCharacter => "the name contains a control character",
            NameProblem::Reserved => {
                "the name is a reserved device name on Windows (CON, PRN, AUX, NUL, COM1, LPT1, ...)"
            }
            NameProblem::TrailingDotOrSpace => "a part of the name ends in a dot or a space",
            NameProblem::FormatCharacter => {
                "the name contains a bidirectional or invisible formatting character (such as U+202E), which can disguise it"
            }
            NameProblem::ComponentTooLong => {
                "a part of the name is longer than 255 bytes, more than file systems allow"
            }
            NameProblem::KluisName => {
                "the name is that of a sealed document (.kluis) or of a kluis temporary file"
            }
        })
    }
}

/// Check a name stored in a sealed document and turn it into a relative path.
///
/// The name is split on `/` only; every component must be a plain file name, the same on every
/// system: not empty, not `.` or `..`, no backslash, colon or control character, no trailing
/// dot or space, and not a reserved Windows device name. A path built this way has only
/// normal components, so joined to a base folder it always stays inside it. Nothing is ever
/// sanitised: a name that breaks a rule is refused, never rewritten into one that might
/// collide with another.
///
/// ```
/// use kluis_file::{NameProblem, safe_relative_path};
///
/// assert_eq!(safe_relative_path("a/b/report.docx").unwrap(), std::path::Path::new("a/b/report.docx"));
/// assert_eq!(safe_relative_path("../evil"), Err(NameProblem::DotComponent));
/// assert_eq!(safe_relative_path("nul.txt"), Err(NameProblem::Reserved));
/// ```
pub fn safe_relative_path(name: &str) -> Result<PathBuf, NameProblem> {
    let path = safe_relative_folder(name)?;
    check_file_name(name.rsplit('/').next().unwrap_or(name))?;
    Ok(path)
}

/// [`safe_relative_path`] for the path of a folder to create (an empty folder's document,
/// whose stored name ends in `/`): the same rules, except the one for a file's name
/// ([`check_file_name`]), since creating a folder never replaces a sealed document or a
/// temporary file.
pub(crate) fn safe_relative_folder(name: &str) -> Result<PathBuf, NameProblem> {
    if name.is_empty() {
        return Err(NameProblem::Empty);
    }
    if name.len() > kluis_core::Metadata::MAX_NAME_LEN {
        return Err(NameProblem::TooLong);
    }
    if name.starts_with('/') {
        return Err(NameProblem::Absolute);
    }
    let mut path = PathBuf::new();
    for component in name.split('/') {
        check_component(component)?;
        path.push(component);
    }
    Ok(path)
}

/// Check the last component of a restored name: it must not be a sealed document's or a
/// temporary file's name, which opening could otherwise put in place of one.
pub(crate) fn check_file_name(c: &str) -> Result<(), NameProblem> {
    // Compared the way case-insensitive file systems (APFS, NTFS) may: by Unicode case,
    // under which U+212A KELVIN SIGN is `k` and U+017F LONG S is `s`.
    let folded = c.to_uppercase().to_lowercase();
    let ext = format!(".{EXTENSION}");
    if folded.ends_with(&ext) || folded.starts_with(TEMP_PREFIX) {
        return Err(NameProblem::KluisName);
    }
    Ok(())
}

/// Whether `ch` is a bidirectional control or an invisible formatting character that can
/// make one name look like another.
fn is_format_character(ch: char) -> bool {
    matches!(
        ch,
        '\u{061C}'
            | '\u{00AD}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2069}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
    )
}

/// Check one component of a name (see [`safe_relative_path`]).
pub(crate) fn check_component(c: &str) -> Result<(), NameProblem> {
    if c.is_empty() {
        return Err(NameProblem::EmptyComponent);
    }
    if c == "." || c == ".." {
        return Err(NameProblem::DotComponent);
    }
    for ch in c.chars() {
        match ch {
            '\\' => return Err(NameProblem::Backslash),
            ':' => return Err(NameProblem::Colon),
            // Only reachable for callers that check a component on its own.
            '/' => return Err(NameProblem::EmptyComponent),
            ch if ch.is_control() => return Err(NameProblem::ControlCharacter),
            ch if is_format_character(ch) => return Err(NameProblem::FormatCharacter),
            _ => {}
        }
    }
    if c.len() > MAX_COMPONENT_LEN {
        return Err(NameProblem::ComponentTooLong);
    }
    if c.ends_with('.') || c.ends_with(' ') {
        return Err(NameProblem::TrailingDotOrSpace);
    }
    if is_reserved(c) {
        return Err(NameProblem::Reserved);
    }
    Ok(())
}

/// A Windows device name: the part before the first dot, spaces trimmed, in any case.
fn is_reserved(c: &str) -> bool {
    let stem = c.split('.').next().unwrap_or(c).trim_matches(' ');
    let upper = stem.to_ascii_uppercase();
    match upper.as_str() {
        "CON" | "PRN" | "AUX" | "NUL" | "CONIN$" | "CONOUT$" => true,
        s => matches!(
            s.strip_prefix("COM").or_else(|| s.strip_prefix("LPT")),
            Some("0" | "1" | "2" | "3" | "4" | "5" | "6" | "7" | "8" | "9" | "¹" | "²" | "³")
        ),
    }
}

/// A secret key that turns a stored name into the same hidden file name every time, so
/// sealing a path again with hidden names replaces its sealed copy instead of adding a
/// second one (see [`crate::SealOptions::name_key`]).
///
/// The hidden name is HMAC-SHA-256 under this key of the stored name, cut to 128 bits: without
/// the key, nobody who sees the hidden names (the cloud provider) can test a guess of a real
/// name against them. Keep it with the person's other secrets (the `kluis` tool keeps one per
/// configuration folder, mode 0600). Its bytes are wiped on drop and never printed.
pub struct NameKey(zeroize::Zeroizing<[u8; 32]>);

impl NameKey {
    /// A fresh random key from the operating system's generator.
    pub fn generate() -> Result<NameKey> {
        let mut key = zeroize::Zeroizing::new([0u8; 32]);
        SystemRandom::new()
            .fill(&mut key[..])
            .map_err(|_| Error::Random)?;
        Ok(NameKey(key))
    }

    /// A key from its 32 bytes (as saved from [`NameKey::to_bytes`]).
    pub fn from_bytes(bytes: [u8; 32]) -> NameKey {
        NameKey(zeroize::Zeroizing::new(bytes))
    }

    /// The key's 32 bytes, to save it. A secret: keep it private.
    pub fn to_bytes(&self) -> zeroize::Zeroizing<[u8; 32]> {
        self.0.clone()
    }

    /// The hidden file name (without `.kluis`) for stored name `name`: 26 lowercase base32
    /// characters, the same for the same key and name.
    pub(crate) fn hidden_name(&self, name: &str) -> String {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.0[..]);
        let mut ctx = ring::hmac::Context::with_key(&key);
        ctx.update(b"kluis/v1/hidden-name\0");
        ctx.update(name.as_bytes());
        let tag = ctx.sign();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&tag.as_ref()[..16]);
        base32_name(bytes)
    }
}

impl fmt::Debug for NameKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NameKey([secret])")
    }
}

/// 128 random bits as 26 lowercase base32 characters (RFC 4648 alphabet, no padding).
pub(crate) fn random_name() -> Result<String> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Error::Random)?;
    Ok(base32_name(bytes))
}

/// 128 bits as 26 lowercase base32 characters (RFC 4648 alphabet, no padding): the form of
/// hidden names (here, and in `kluis sync`).
pub fn base32_name(bytes: [u8; 16]) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let bits = u128::from_be_bytes(bytes);
    (0..26)
        .map(|i| {
            let shift = 128i32 - 5 * (i + 1);
            let v = if shift >= 0 {
                bits >> shift
            } else {
                bits << -shift
            };
            ALPHABET[(v & 31) as usize] as char
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_names_are_26_base32_characters_and_differ() {
        let a = random_name().unwrap();
        let b = random_name().unwrap();
        assert_eq!(a.len(), 26);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_lowercase() || (b'2'..=b'7').contains(&c))
        );
        assert_ne!(a, b);
    }

    #[test]
    fn reserved_names() {
        for n in [
            "CON",
            "con",
            "Con.txt",
            "nul.tar.gz",
            "COM1",
            "lpt9.doc",
            "AUX",
            "prn",
            "COM¹",
            "conin$",
            "NUL .txt",
            "lpt²",
        ] {
            assert_eq!(check_component(n), Err(NameProblem::Reserved), "{n}");
        }
        for n in [
            "CONSOLE",
            "COM10",
            "LPT",
            "nulls.txt",
            "icon",
            "com1x",
            "𐬥",
            "ab",
        ] {
            assert_eq!(check_component(n), Ok(()), "{n}");
        }
    }
}
