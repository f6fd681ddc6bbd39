//! Label policy updates and the leaver procedure: changes to existing labels and tokens,
//! each written with its audit record in one transaction.

use super::{KeyService, admin_entry};
use crate::error::{Result, ServerError};
use crate::policy::Policy;
use crate::policy_edit::PolicyEdit;
use crate::store::Store;
use crate::time::now_ms;

impl<S: Store> KeyService<S> {
    /// Apply `edit` to the policy of `name` and store it with a `label.update` audit record
    /// whose reason holds the old and the new policy as JSON. Returns (old, new).
    pub(super) fn update_policy_in(
        &mut self,
        name: &str,
        edit: &PolicyEdit,
        actor: &str,
    ) -> Result<(Policy, Policy)> {
        self.write(|keyring, tx| {
            // Read inside the write transaction: a concurrent update cannot slip in between.
            let stored = tx
                .label_policy(name)?
                .ok_or_else(|| ServerError::UnknownLabel(name.to_owned()))?;
            let old: Policy = serde_json::from_str(&stored)
                .map_err(|e| ServerError::BadPolicy(format!("stored policy of `{name}`: {e}")))?;
            let new = edit.apply(name, &old)?;
            let json = serde_json::to_string(&new).expect("policy serialises");
            tx.set_policy(name, &json)?;
            let mut entry = admin_entry(actor, "label.update", Some(name), None);
            entry.reason = Some(serde_json::json!({ "old": old, "new": new }).to_string());
            keyring.append_audit(tx, &[entry])?;
            Ok((old, new))
        })
    }

    /// Revoke every active token of `user` (the leaver procedure): one `token.revoke`
    /// record per token and one `token.revoke-user` record summing up, even when there was
    /// none. Returns the revoked token ids.
    pub(super) fn revoke_user_in(&mut self, user: &str, actor: &str) -> Result<Vec<String>> {
        self.write(|keyring, tx| {
            let ids = tx.revoke_user(user, now_ms())?;
            let mut entries = Vec::with_capacity(ids.len() + 1);
            for id in &ids {
                let mut e = admin_entry(actor, "token.revoke", None, None);
                e.reason = Some(format!("token {id} (every token of user {user})"));
                entries.push(e);
            }
            let mut summary = admin_entry(actor, "token.revoke-user", None, None);
            summary.reason = Some(format!(
                "user {user}: {} token(s) revoked{}{}",
                ids.len(),
                if ids.is_empty() { "" } else { ": " },
                ids.join(", ")
            ));
            entries.push(summary);
            keyring.append_audit(tx, &entries)?;
            Ok(ids)
        })
    }
}
