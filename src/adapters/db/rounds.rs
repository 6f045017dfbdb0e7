//! The SQL of a round's branch step: recording the name a new round's branch takes
//! (when Gitea confirmed it is `Db::set_branch_ready`, in `start.rs`). Every write is
//! guarded by the round it was judged for, so a step that raced a newer round (or
//! another pass) changes nothing.

use crate::adapters::db::sql::params;
use anyhow::Result;

use crate::adapters::db::Db;

impl Db {
    /// Renames round `round`'s branch from `old` to `new` before it is created (the old
    /// branch still exists on Gitea); `false` when the task is not at that round and
    /// name with its branch unconfirmed any more.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn set_round_branch(
        &self,
        task_id: i64,
        round: u32,
        old: &str,
        new: &str,
        now: i64,
    ) -> Result<bool> {
        let n = self.conn().execute(
            "UPDATE tasks SET branch = ?4, updated_at = ?5
             WHERE id = ?1 AND round = ?2 AND branch = ?3 AND branch_ready_at IS NULL",
            params![task_id, round, old, new, now],
        )?;
        Ok(n == 1)
    }
}

#[cfg(test)]
mod tests {
    use crate::adapters::db::Db;
    use crate::core::stage::Actor;
    use crate::core::task::{NewTask, Task};

    #[test]
    fn round_branch_writes_are_guarded_by_round_name_and_readiness() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(&dir.path().join("orch.db")).unwrap();
        let id = db
            .create_task(
                &NewTask {
                    project: "shop".into(),
                    work_item_id: "w-1".into(),
                    key: "SHOP-1".into(),
                    title: "t".into(),
                    repo: "acme/shop".into(),
                    branch: "shop-1-t".into(),
                    priority: crate::core::priority::Priority::None,
                },
                Actor::Operator,
                "t",
                1,
            )
            .unwrap()
            .id();
        db.conn()
            .execute("UPDATE tasks SET round = 2 WHERE id = ?1", [id])
            .unwrap();
        // Another round, another old name: nothing changes.
        assert!(!db.set_round_branch(id, 3, "shop-1-t", "x--r3", 5).unwrap());
        assert!(!db.set_round_branch(id, 2, "other", "x--r2", 5).unwrap());
        assert!(db
            .set_round_branch(id, 2, "shop-1-t", "shop-1-t--r2", 5)
            .unwrap());
        let t = db.task(id).unwrap().unwrap();
        let stale = Task {
            branch: "shop-1-t".into(),
            ..t.clone()
        };
        assert!(!db.set_branch_ready(&stale, 6).unwrap(), "old name");
        let old_round = Task {
            round: 1,
            ..t.clone()
        };
        assert!(!db.set_branch_ready(&old_round, 6).unwrap(), "old round");
        assert!(db.set_branch_ready(&t, 6).unwrap());
        assert!(!db.set_branch_ready(&t, 7).unwrap(), "once");
        // A confirmed branch is not renamed any more.
        assert!(!db
            .set_round_branch(id, 2, "shop-1-t--r2", "y--r2", 8)
            .unwrap());
        let t = db.task(id).unwrap().unwrap();
        assert_eq!(
            (t.branch.as_str(), t.branch_ready_at),
            ("shop-1-t--r2", Some(6))
        );
    }
}
