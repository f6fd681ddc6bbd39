//! Label records: the public keys a document is sealed to.

use std::time::SystemTime;

use kluis_core::{LabelPublicKey, PublicKey, Recipient, Slot};
use serde::{Deserialize, Serialize};

use crate::error::ClientError;

/// `GET /v1/labels/{name}` as sent (and as kept in the cache).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct WireRecord {
    pub(crate) label: String,
    pub(crate) kid: u32,
    pub(crate) public_key: String,
    #[serde(default)]
    pub(crate) double_key: bool,
    #[serde(default)]
    pub(crate) recovery: Vec<String>,
    #[serde(default)]
    pub(crate) versions: Vec<WireVersion>,
    #[serde(default)]
    pub(crate) max_age: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct WireVersion {
    pub(crate) kid: u32,
    pub(crate) state: String,
    pub(crate) public_key: String,
}

/// The life stage of a label key version.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyState {
    /// Seals new documents, and opens.
    Current,
    /// Opens only.
    Active,
    /// Opens only to re-key.
    Retired,
    /// Destroyed: its documents cannot be opened by anyone.
    Destroyed,
    /// A state this client does not know.
    Other(String),
}

impl KeyState {
    fn parse(s: &str) -> KeyState {
        match s {
            "current" => KeyState::Current,
            "active" => KeyState::Active,
            "retired" => KeyState::Retired,
            "destroyed" => KeyState::Destroyed,
            other => KeyState::Other(crate::error::clean(other)),
        }
    }
}

/// One key version of a label, public part.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyVersion {
    /// The key version id.
    pub kid: u32,
    /// Its state.
    pub state: KeyState,
    /// Its public key (kept by the server after destruction, for the record).
    pub public_key: PublicKey,
}

/// A label's public record: what a document under this label is sealed to.
///
/// Records come from the key server or, within their `max_age`, from the disk cache. When the
/// server cannot be reached, an expired cached record is returned with [`stale`] set: sealing
/// with it is safe as long as the key version it names is not destroyed meanwhile, so tell
/// the person (and re-key such documents when back online if in doubt).
///
/// [`stale`]: LabelRecord::stale
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct LabelRecord {
    /// The current key version: the one to seal to.
    pub key: LabelPublicKey,
    /// Whether the label requires double key (the server refuses single-key documents).
    pub double_key: bool,
    /// Recovery keys that every document under this label must also be sealed to.
    pub recovery: Vec<PublicKey>,
    /// Every key version the server lists, oldest first.
    pub versions: Vec<KeyVersion>,
    /// When the record was fetched from the server.
    pub fetched_at: SystemTime,
    /// Until when the server allows it to be used without asking again.
    pub expires_at: SystemTime,
    /// Whether the record is past `expires_at` and was used because the server could not be
    /// reached.
    pub stale: bool,
    /// Why asking the server failed, when the record is stale (tell the person: it may be a
    /// refused certificate rather than a network outage).
    pub refresh_error: Option<ClientError>,
}

impl LabelRecord {
    /// The label name.
    pub fn label(&self) -> &str {
        self.key.label()
    }

    /// The current key version id.
    pub fn kid(&self) -> u32 {
        self.key.kid()
    }

    /// The slots to seal a document under this label with, as the label's policy wants them:
    /// the label key (with `holder` as the second key of a double-key slot, required when the
    /// label requires double key, optional otherwise), then one slot per recovery key.
    pub fn slots(&self, holder: Option<&PublicKey>) -> Result<Vec<Slot>, ClientError> {
        let label = Recipient::Label(self.key.clone());
        let first = match holder {
            Some(h) => Slot::double(label, Recipient::Key(*h)).map_err(|_| {
                ClientError::HolderKeyNeeded {
                    label: self.label().to_owned(),
                }
            })?,
            None if self.double_key => {
                return Err(ClientError::HolderKeyNeeded {
                    label: self.label().to_owned(),
                });
            }
            None => Slot::single(label),
        };
        let mut slots = vec![first];
        slots.extend(
            self.recovery
                .iter()
                .map(|r| Slot::single(Recipient::Key(*r))),
        );
        Ok(slots)
    }

    /// Check and parse a record for label `name`. `server` names the source in errors.
    pub(crate) fn from_wire(
        w: &WireRecord,
        name: &str,
        server: &str,
        fetched_at: SystemTime,
        expires_at: SystemTime,
        stale: bool,
    ) -> Result<LabelRecord, ClientError> {
        let bad = |detail: String| ClientError::Protocol {
            server: server.to_owned(),
            detail: format!("label record of `{name}`: {detail}"),
        };
        if w.label != name {
            return Err(bad(format!("it is for label `{}`", w.label)));
        }
        let parse = |what: &str, s: &str| {
            s.parse::<PublicKey>()
                .map_err(|e| bad(format!("{what}: {e}")))
        };
        let key = LabelPublicKey::new(name, w.kid, parse("public_key", &w.public_key)?)
            .map_err(|e| bad(e.to_string()))?;
        if w.recovery.len() > 64 || w.versions.len() > 1024 {
            return Err(bad("too many recovery keys or versions".into()));
        }
        let recovery = w
            .recovery
            .iter()
            .map(|r| parse("recovery key", r))
            .collect::<Result<Vec<_>, _>>()?;
        let mut versions = Vec::with_capacity(w.versions.len());
        for v in &w.versions {
            let public_key = parse(&format!("version {}", v.kid), &v.public_key)?;
            let state = KeyState::parse(&v.state);
            if versions.iter().any(|o: &KeyVersion| o.kid == v.kid) {
                return Err(bad(format!("version {} is listed twice", v.kid)));
            }
            if v.kid == w.kid && (public_key != *key.key() || state != KeyState::Current) {
                return Err(bad(format!(
                    "version {} is listed with another key or state than the current one",
                    v.kid
                )));
            }
            versions.push(KeyVersion {
                kid: v.kid,
                state,
                public_key,
            });
        }
        Ok(LabelRecord {
            key,
            double_key: w.double_key,
            recovery,
            versions,
            fetched_at,
            expires_at,
            stale,
            refresh_error: None,
        })
    }
}

/// Check a label name the way [`Client::label_record`](crate::Client::label_record) does:
/// 1–64 of `[A-Za-z0-9._-]`, other than `.` and `..`. For checking a name before it is saved
/// for later use (a default label in a configuration file).
///
/// ```
/// assert!(kluis_client::check_label("hr-2025").is_ok());
/// assert!(kluis_client::check_label("..").is_err());
/// ```
pub fn check_label(name: &str) -> Result<(), ClientError> {
    let ok = !name.is_empty()
        && name.len() <= kluis_core::Stanza::MAX_LABEL_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    // "." and ".." are valid label names but would be path segments in the URL.
    if ok && name != "." && name != ".." {
        Ok(())
    } else {
        Err(ClientError::InvalidLabel {
            name: name.to_owned(),
        })
    }
}

/// `GET /v1/labels` items.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct LabelSummary {
    /// The label name.
    pub name: String,
    /// Its current key version, if it has one.
    pub current_kid: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kluis_core::Identity;

    fn wire() -> (WireRecord, Identity) {
        let k = Identity::generate().unwrap();
        let r = Identity::generate().unwrap();
        (
            WireRecord {
                label: "hr".into(),
                kid: 2,
                public_key: k.public_key().to_string(),
                double_key: false,
                recovery: vec![r.public_key().to_string()],
                versions: vec![
                    WireVersion {
                        kid: 1,
                        state: "destroyed".into(),
                        public_key: Identity::generate().unwrap().public_key().to_string(),
                    },
                    WireVersion {
                        kid: 2,
                        state: "current".into(),
                        public_key: k.public_key().to_string(),
                    },
                ],
                max_age: Some(60),
            },
            k,
        )
    }

    #[test]
    fn records_are_checked() {
        let now = SystemTime::now();
        let (w, _) = wire();
        let r = LabelRecord::from_wire(&w, "hr", "s", now, now, false).unwrap();
        assert_eq!((r.label(), r.kid()), ("hr", 2));
        assert_eq!(r.versions[0].state, KeyState::Destroyed);
        assert_eq!(r.slots(None).unwrap().len(), 2, "label and recovery");
        assert!(LabelRecord::from_wire(&w, "legal", "s", now, now, false).is_err());
        let mut other = w.clone();
        other.versions[1].public_key = other.versions[0].public_key.clone();
        assert!(LabelRecord::from_wire(&other, "hr", "s", now, now, false).is_err());
        let mut dk = w.clone();
        dk.double_key = true;
        let r = LabelRecord::from_wire(&dk, "hr", "s", now, now, false).unwrap();
        assert!(matches!(
            r.slots(None),
            Err(ClientError::HolderKeyNeeded { .. })
        ));
        let holder = Identity::generate().unwrap().public_key();
        assert_eq!(r.slots(Some(&holder)).unwrap()[0].recipients().len(), 2);
    }

    #[test]
    fn label_names() {
        assert!(check_label("hr-2025_x.y").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", &"x".repeat(65)] {
            assert!(check_label(bad).is_err(), "{bad}");
        }
    }
}
