//! Changing a label's policy after creation (`kluis-server label update`).

use crate::error::{Result, ServerError};
use crate::policy::Policy;

/// A change to a label's policy. Applied by [`crate::KeyService::update_policy`] inside the
/// transaction that stores it, so two concurrent updates never lose each other's changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyEdit {
    /// Users to add (already present ones are kept once).
    pub add_users: Vec<String>,
    /// Users to remove; each must be in the policy.
    pub remove_users: Vec<String>,
    /// Groups to add.
    pub add_groups: Vec<String>,
    /// Groups to remove; each must be in the policy.
    pub remove_groups: Vec<String>,
    /// Recovery public keys (`kluis1…`) to add.
    pub add_recovery: Vec<String>,
    /// Recovery public keys to remove; each must be in the policy.
    pub remove_recovery: Vec<String>,
    /// `Some(Some(secs))` sets the rotation period, `Some(None)` turns rotation off.
    pub rotation_secs: Option<Option<u64>>,
    /// `Some(Some(secs))` sets the retention period, `Some(None)` turns retention off.
    pub retention_secs: Option<Option<u64>>,
    /// Turn double key on or off.
    pub double_key: Option<bool>,
    /// The operator confirmed turning double key off, or adding a recovery key to a
    /// double-key label (repeated the label name).
    pub confirm_double_key_off: bool,
}

impl PolicyEdit {
    /// Whether the edit changes nothing at all (no flag was given).
    pub fn is_empty(&self) -> bool {
        *self
            == PolicyEdit {
                confirm_double_key_off: self.confirm_double_key_off,
                ..PolicyEdit::default()
            }
    }

    /// The policy after this edit, validated. Refuses removing what is not there, and
    /// turning double key off without confirmation: with it off, new documents may be
    /// single-key, which the server alone can open. Adding a recovery key to a double-key
    /// label needs the same confirmation: its holder opens new documents alone.
    pub fn apply(&self, label: &str, old: &Policy) -> Result<Policy> {
        if self.is_empty() {
            return Err(ServerError::Refused(
                "nothing to change: give at least one of --add-user, --remove-user, --add-group, \
                 --remove-group, --add-recovery, --remove-recovery, --rotate-every, --no-rotation, \
                 --retain, --no-retention, --double-key"
                    .into(),
            ));
        }
        let mut new = old.clone();
        edit_list(&mut new.users, &self.add_users, &self.remove_users, "user")?;
        edit_list(
            &mut new.groups,
            &self.add_groups,
            &self.remove_groups,
            "group",
        )?;
        edit_list(
            &mut new.recovery,
            &self.add_recovery,
            &self.remove_recovery,
            "recovery key",
        )?;
        if let Some(r) = self.rotation_secs {
            new.rotation_secs = r;
        }
        if let Some(r) = self.retention_secs {
            new.retention_secs = r;
        }
        if let Some(d) = self.double_key {
            if old.double_key && !d && !self.confirm_double_key_off {
                return Err(ServerError::Refused(format!(
                    "turning double key off lets the server alone open new documents of `{label}`: \
                     pass --confirm {label} to confirm"
                )));
            }
            new.double_key = d;
        }
        new.validate()?;
        // A recovery key is a slot of its own: its holder opens every new document alone.
        // On a double-key label that is what turning double key off allows, so it needs the
        // same confirmation (or the confirmation could be side-stepped).
        let adds_recovery = self.add_recovery.iter().any(|r| !old.recovery.contains(r));
        if old.double_key && adds_recovery && !self.confirm_double_key_off {
            return Err(ServerError::Refused(format!(
                "a recovery key opens new documents of the double-key label `{label}` alone, \
                 without the server and the holder's key: pass --confirm {label} to confirm"
            )));
        }
        Ok(new)
    }
}

fn edit_list(list: &mut Vec<String>, add: &[String], remove: &[String], what: &str) -> Result<()> {
    for r in remove {
        let before = list.len();
        list.retain(|x| x != r);
        if list.len() == before {
            return Err(ServerError::Refused(format!(
                "the {what} `{r}` is not in the policy: see `kluis-server label show`"
            )));
        }
    }
    for a in add {
        if !list.contains(a) {
            list.push(a.clone());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            users: vec!["alice".into(), "bob".into()],
            groups: vec!["hr".into()],
            double_key: true,
            ..Policy::default()
        }
    }

    #[test]
    fn adds_and_removes_users_and_groups() {
        let edit = PolicyEdit {
            add_users: vec!["carol".into(), "alice".into()],
            remove_users: vec!["bob".into()],
            remove_groups: vec!["hr".into()],
            add_groups: vec!["finance".into()],
            rotation_secs: Some(Some(60)),
            ..PolicyEdit::default()
        };
        let new = edit.apply("l", &policy()).unwrap();
        assert_eq!(new.users, ["alice", "carol"]);
        assert_eq!(new.groups, ["finance"]);
        assert_eq!(new.rotation_secs, Some(60));
        assert!(new.double_key);
    }

    #[test]
    fn refuses_removing_what_is_absent_an_empty_edit_and_an_invalid_result() {
        let absent = PolicyEdit {
            remove_users: vec!["mallory".into()],
            ..PolicyEdit::default()
        };
        assert!(matches!(
            absent.apply("l", &policy()),
            Err(ServerError::Refused(_))
        ));
        assert!(PolicyEdit::default().apply("l", &policy()).is_err());
        let bad = PolicyEdit {
            add_recovery: vec!["not-a-key".into()],
            ..PolicyEdit::default()
        };
        assert!(matches!(
            bad.apply("l", &policy()),
            Err(ServerError::BadPolicy(_))
        ));
    }

    #[test]
    fn double_key_off_needs_confirmation() {
        let mut edit = PolicyEdit {
            double_key: Some(false),
            ..PolicyEdit::default()
        };
        assert!(edit.apply("l", &policy()).is_err());
        edit.confirm_double_key_off = true;
        assert!(!edit.apply("l", &policy()).unwrap().double_key);
        // Turning it on needs nothing.
        let on = PolicyEdit {
            double_key: Some(true),
            ..PolicyEdit::default()
        };
        let mut single = policy();
        single.double_key = false;
        assert!(on.apply("l", &single).unwrap().double_key);
    }

    #[test]
    fn a_new_recovery_key_on_a_double_key_label_needs_confirmation() {
        let key = kluis_core::Identity::generate()
            .unwrap()
            .public_key()
            .to_string();
        let mut edit = PolicyEdit {
            add_recovery: vec![key.clone()],
            ..PolicyEdit::default()
        };
        assert!(matches!(
            edit.apply("l", &policy()),
            Err(ServerError::Refused(_))
        ));
        let mut single = policy();
        single.double_key = false;
        assert_eq!(
            edit.apply("l", &single).unwrap().recovery,
            vec![key.clone()]
        );
        edit.confirm_double_key_off = true;
        let with = edit.apply("l", &policy()).unwrap();
        assert_eq!(with.recovery, [key]);
        // Adding one already there widens nothing.
        edit.confirm_double_key_off = false;
        edit.rotation_secs = Some(Some(60));
        assert!(edit.apply("l", &with).is_ok());
    }
}
