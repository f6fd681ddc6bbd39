//! Label policy updates and the leaver procedure: changes to existing labels and tokens,
//! each written with its audit record in one transaction.

use rusqlite::{OptionalExtension, params};

use super::{SqliteStore, admin_entry};
use crate::error::{Result, ServerError};
use crate::policy::Policy;
use crate::policy_edit::PolicyEdit;
use crate::time::now_ms;

impl SqliteStore {
    /// Apply `edit` to the policy of `name` and store it with a `label.update` audit record
    /// whose reason holds the old and the new policy as JSON. Returns (old, new).
    pub(super) fn update_policy_in(
        &mut self,
        name: &str,
        edit: &PolicyEdit,
        actor: &str,
    ) -> Result<(Policy, Policy)> {
        let tx = self.write_tx()?;
        // Read inside the write transaction: a concurrent update cannot slip in between.
        let stored: Option<String> = tx
            .query_row("SELECT policy FROM labels WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?;
        let stored = stored.ok_or_else(|| ServerError::UnknownLabel(name.to_owned()))?;
        let old: Policy = serde_json::from_str(&stored)
            .map_err(|e| ServerError::BadPolicy(format!("stored policy of `{name}`: {e}")))?;
        let new = edit.apply(name, &old)?;
        let json = serde_json::to_string(&new).expect("policy serialises");
        tx.execute(
            "UPDATE labels SET policy = ?2 WHERE name = ?1",
            params![name, json],
        )?;
        let mut entry = admin_entry(actor, "label.update", Some(name), None);
        entry.reason = Some(serde_json::json!({ "old": old, "new": new }).to_string());
        self.append_in(&tx, &[entry])?;
        tx.commit()?;
        Ok((old, new))
    }

    /// Revoke every active token of `user` (the leaver procedure): one `token.revoke`
    /// record per token and one `token.revoke-user` record summing up, even when there was
    /// none. Returns the revoked token ids.
    pub(super) fn revoke_user_in(&mut self, user: &str, actor: &str) -> Result<Vec<String>> {
        let tx = self.write_tx()?;
        let ids = {
            let mut stmt = tx.prepare(
                "SELECT id FROM tokens WHERE user = ?1 AND revoked_ms IS NULL ORDER BY created_ms",
            )?;
            stmt.query_map([user], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?
        };
        tx.execute(
            "UPDATE tokens SET revoked_ms = ?2 WHERE user = ?1 AND revoked_ms IS NULL",
            params![user, now_ms()],
        )?;
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
        self.append_in(&tx, &entries)?;
        tx.commit()?;
        Ok(ids)
    }
}
