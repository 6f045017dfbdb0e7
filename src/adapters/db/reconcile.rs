//! The SQL reconcile needs beyond the shared task and job queries: the live jobs of
//! every task in one query, parking an escalated
//! task's queued jobs, what the escalation sweep reads, and what the store knows of a
//! listed project's work items (read once per project listed, not per page or item).

use std::collections::HashMap;

use crate::adapters::db::sql::{params, Engine, Error};
use anyhow::Result;

use crate::adapters::db::{parse_col, Db, GuardColumns};
use crate::core::job::JobStatus;
use crate::core::priority::Priority;
use crate::core::stage::Stage;

/// The task of a listed work item, as much of it as the listing reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedTask {
    /// The task id.
    pub id: i64,
    /// Its stage.
    pub stage: Stage,
    /// Its priority.
    pub priority: Priority,
}

/// What the store knows of the work items of one listed page, each at its item's
/// place in the page (see [`Db::listed_known`] and [`ProjectKnown::page`]).
#[derive(Debug, Default)]
pub struct ListedKnown {
    /// The newest update seen of each work item (microseconds), when one was.
    pub newest_us: Vec<Option<i64>>,
    /// Each work item's task, when it has one.
    pub tasks: Vec<Option<ListedTask>>,
}

/// What the store knows of one work item: its task and the newest update seen of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Known {
    id: i64,
    newest_us: Option<i64>,
    stage: Stage,
    priority: Priority,
}

/// What the store knows of the work items of one project's tasks, read before the
/// listing starts ([`Db::projects_known`]), so each listed page is looked up in memory
/// instead of read. Compact: a work item id that is a UUID as Plane
/// writes them (36 characters, lowercase hex) is held as its 16 bytes, in a vector
/// sorted for binary search (48 bytes a task: ~1.5 MiB for 33,000 tasks); any other
/// id as its text.
///
/// A listed work item it does not hold (no task of this project: one not started, or a
/// task filed under another project) is read from the store as before
/// ([`ProjectKnown::page`]). What the listing writes meanwhile (a newer update, a
/// priority) it notes here too ([`ProjectKnown::noted`], [`ProjectKnown::prioritised`]), so
/// it answers as a read of the store would for a work item listed twice. What other
/// processes write during the listing (a webhook moving a task's stage) is not here: a
/// replay the listing's pre-filter passes over for a stage read before the move is
/// made by the next pass (every write stays guarded in SQL, so nothing is written
/// wrongly, only later). Read in keyset pages, so memory stays at the compact form on
/// PostgreSQL too, which hands over a query's rows all at once.
#[derive(Debug, Default)]
pub struct ProjectKnown {
    by_uuid: Vec<([u64; 2], Known)>,
    by_text: HashMap<String, Known>,
}

/// The 16 bytes of a work item id written as a lowercase hyphenated UUID (the only
/// spelling accepted, so two different ids never share the bytes), as two words.
fn uuid_words(id: &str) -> Option<[u64; 2]> {
    let v = crate::core::reconcile::uuid_bits(id)?;
    #[allow(clippy::cast_possible_truncation)]
    Some([(v >> 64) as u64, v as u64])
}

impl ProjectKnown {
    fn get(&self, work_item_id: &str) -> Option<&Known> {
        match uuid_words(work_item_id) {
            Some(w) => self
                .by_uuid
                .binary_search_by(|(k, _)| k.cmp(&w))
                .ok()
                .map(|i| &self.by_uuid[i].1),
            None => self.by_text.get(work_item_id),
        }
    }

    fn by_words_mut(&mut self, w: [u64; 2]) -> Option<&mut Known> {
        match self.by_uuid.binary_search_by(|(k, _)| k.cmp(&w)) {
            Ok(i) => Some(&mut self.by_uuid[i].1),
            Err(_) => None,
        }
    }

    fn get_mut(&mut self, work_item_id: &str) -> Option<&mut Known> {
        match uuid_words(work_item_id) {
            Some(w) => self.by_words_mut(w),
            None => self.by_text.get_mut(work_item_id),
        }
    }

    /// How many tasks it holds.
    #[must_use]
    pub fn len(&self) -> usize {
        self.by_uuid.len() + self.by_text.len()
    }

    /// Whether it holds no task.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What the store knows of one listed page's work items: those it holds from
    /// memory, the others (if any) read in [`Db::listed_known`]'s two queries.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn page(&self, db: &Db, work_item_ids: &[&str]) -> Result<ListedKnown> {
        let mut misses: Vec<(usize, &str)> = Vec::new();
        let mut known = ListedKnown {
            newest_us: Vec::with_capacity(work_item_ids.len()),
            tasks: Vec::with_capacity(work_item_ids.len()),
        };
        for (i, id) in work_item_ids.iter().enumerate() {
            match self.get(id) {
                Some(k) => {
                    known.tasks.push(Some(ListedTask {
                        id: k.id,
                        stage: k.stage,
                        priority: k.priority,
                    }));
                    known.newest_us.push(k.newest_us);
                }
                None => {
                    known.tasks.push(None);
                    known.newest_us.push(None);
                    misses.push((i, id));
                }
            }
        }
        if !misses.is_empty() {
            let ids: Vec<&str> = misses.iter().map(|(_, id)| *id).collect();
            let read = db.listed_known(&ids)?;
            let read = read.newest_us.into_iter().zip(read.tasks);
            for ((i, _), (us, task)) in misses.iter().zip(read) {
                known.newest_us[*i] = us;
                known.tasks[*i] = task;
            }
        }
        Ok(known)
    }

    /// Notes an update the listing wrote as the work item's newest (when newer).
    pub fn noted(&mut self, work_item_id: &str, micros: i64) {
        if let Some(k) = self.get_mut(work_item_id) {
            if k.newest_us.is_none_or(|n| micros > n) {
                k.newest_us = Some(micros);
            }
        }
    }

    /// Notes a priority the listing wrote on the work item's task.
    pub fn prioritised(&mut self, work_item_id: &str, priority: Priority) {
        if let Some(k) = self.get_mut(work_item_id) {
            k.priority = priority;
        }
    }
}

/// A column that did not parse.
fn conversion(idx: usize, message: String) -> Error {
    Error::conversion(idx, message)
}

/// Returns `?1, ?2, ... ?n`.
fn placeholders(n: usize) -> String {
    (1..=n)
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Rows read per query by [`Db::projects_known`] (2 in unit tests, so theirs read
/// several pages).
#[cfg(not(test))]
const KNOWN_PAGE: usize = 5000;
#[cfg(test)]
const KNOWN_PAGE: usize = 2;

/// The notification kind of an escalation.
pub const ESCALATION_KIND: &str = "escalation";

impl Db {
    /// Reads what the store knows of the work items of each of these projects' tasks
    /// (each task's id, stage and priority, and the newest update seen of its work
    /// item), for [`ProjectKnown::page`] to answer each listed page from: one pass over
    /// `tasks` and one over `work_item_updates`, each read in storage order with no
    /// index search per row (on PostgreSQL, which has no rowid, `work_item_updates` by
    /// its primary key). Returned in the order of `projects`; a pass drops each once
    /// its project is listed. `also` sees each of these tasks' guard columns and
    /// repo as the read goes: what else the pass needs
    /// to know of them, in the same read (which repos its judging will ask Gitea about).
    ///
    /// # Errors
    /// On SQL errors.
    pub fn projects_known(
        &self,
        projects: &[&str],
        mut also: impl FnMut(&GuardColumns, &str),
    ) -> Result<Vec<ProjectKnown>> {
        let mut known: Vec<ProjectKnown> =
            projects.iter().map(|_| ProjectKnown::default()).collect();
        if projects.is_empty() {
            return Ok(known);
        }
        // Both tables in keyset pages of KNOWN_PAGE rows: PostgreSQL hands over a
        // query's rows all at once, so one query over a whole table would hold every
        // row in memory (the work item updates grow with every item ever listed).
        self.keyset_pages(
            "SELECT id, project, work_item_id, stage, priority, repo, stage_entered_at,
                 developer_retries, escalated_at FROM tasks
             WHERE id > ?1 ORDER BY id LIMIT ?2",
            KNOWN_PAGE,
            |r, id| {
                let Some(p) = r.with_text(1, |name| projects.iter().position(|q| *q == name))?
                else {
                    return Ok(());
                };
                let stage: Stage = r.with_text(3, str::parse)?.map_err(|e| conversion(3, e))?;
                let head = GuardColumns {
                    id,
                    stage,
                    stage_entered_at: r.get(6)?,
                    developer_retries: r.get(7)?,
                    escalated_at: r.get(8)?,
                };
                r.with_text(5, |repo| also(&head, repo))?;
                let known = &mut known[p];
                let k = Known {
                    id,
                    newest_us: None,
                    stage,
                    priority: r.with_text(4, str::parse)?.map_err(|e| conversion(4, e))?,
                };
                match r.with_text(2, uuid_words)? {
                    Some(w) => known.by_uuid.push((w, k)),
                    None => {
                        known.by_text.insert(r.get(2)?, k);
                    }
                }
                Ok(())
            },
        )?;
        for k in &mut known {
            k.by_uuid.sort_unstable_by_key(|a| a.0);
            k.by_uuid.shrink_to_fit();
        }
        // The updates, each noted on its task's work item: on SQLite in storage order,
        // by rowid (ordered by work item id, each row would be found through the
        // primary key's index: one more tree search per row); on PostgreSQL, which
        // has no rowid, by work item id. Each page starts after the last row read.
        let note = |known: &mut [ProjectKnown], id: &str, us: i64| {
            // The id parsed once, then looked up in each project's part.
            let words = uuid_words(id);
            let found = known.iter_mut().find_map(|k| match words {
                Some(w) => k.by_words_mut(w),
                None => k.by_text.get_mut(id),
            });
            if let Some(k) = found {
                k.newest_us = Some(us);
            }
        };
        if self.engine() == Engine::Sqlite {
            self.keyset_pages(
                "SELECT rowid, work_item_id, updated_us FROM work_item_updates
                 WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
                KNOWN_PAGE,
                |r, _| {
                    let us: i64 = r.get(2)?;
                    r.with_text(1, |id| note(&mut known, id, us))?;
                    Ok(())
                },
            )?;
            return Ok(known);
        }
        let mut last: Option<String> = None;
        loop {
            let mut stmt = self.conn().prepare_cached(if last.is_none() {
                "SELECT work_item_id, updated_us FROM work_item_updates
                 ORDER BY work_item_id LIMIT ?1"
            } else {
                "SELECT work_item_id, updated_us FROM work_item_updates
                 WHERE work_item_id > ?1 ORDER BY work_item_id LIMIT ?2"
            })?;
            let mut rows = match &last {
                None => stmt.query(params![KNOWN_PAGE])?,
                Some(id) => stmt.query(params![id.as_str(), KNOWN_PAGE])?,
            };
            let mut read = 0usize;
            let mut cursor = last.take().unwrap_or_default();
            while let Some(r) = rows.next()? {
                read += 1;
                let us: i64 = r.get(1)?;
                r.with_text(0, |id| {
                    cursor.clear();
                    cursor.push_str(id);
                    note(&mut known, id, us);
                })?;
            }
            if read < KNOWN_PAGE {
                break;
            }
            last = Some(cursor);
        }
        Ok(known)
    }

    /// Reads what the store knows of these work items (one listed page): the newest
    /// update seen of each and its task, in two queries, so a steady listing costs two
    /// reads a page instead of three a work item, and writes nothing.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn listed_known(&self, work_item_ids: &[&str]) -> Result<ListedKnown> {
        if work_item_ids.is_empty() {
            return Ok(ListedKnown::default());
        }
        let mut newest_us: HashMap<String, i64> = HashMap::new();
        let mut tasks: HashMap<String, ListedTask> = HashMap::new();
        let marks = placeholders(work_item_ids.len());
        let ids = crate::adapters::db::sql::params_from_iter(work_item_ids.iter());
        let mut stmt = self.conn().prepare_cached(&format!(
            "SELECT work_item_id, updated_us FROM work_item_updates WHERE work_item_id IN ({marks})"
        ))?;
        let mut rows = stmt.query(ids)?;
        while let Some(r) = rows.next()? {
            newest_us.insert(r.get(0)?, r.get(1)?);
        }
        drop(rows);
        let ids = crate::adapters::db::sql::params_from_iter(work_item_ids.iter());
        let mut stmt = self.conn().prepare_cached(&format!(
            "SELECT work_item_id, id, stage, priority FROM tasks WHERE work_item_id IN ({marks})"
        ))?;
        let mut rows = stmt.query(ids)?;
        while let Some(r) = rows.next()? {
            tasks.insert(
                r.get(0)?,
                ListedTask {
                    id: r.get(1)?,
                    stage: parse_col(&r, 2)?,
                    priority: parse_col(&r, 3)?,
                },
            );
        }
        Ok(ListedKnown {
            newest_us: work_item_ids
                .iter()
                .map(|id| newest_us.get(*id).copied())
                .collect(),
            tasks: work_item_ids
                .iter()
                .map(|id| tasks.get(*id).cloned())
                .collect(),
        })
    }

    /// Returns the queued or running job of every task that has one (task id → job id
    /// and status), in one query.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn live_jobs_by_task(&self) -> Result<HashMap<i64, (i64, JobStatus)>> {
        let mut stmt = self.conn().prepare_cached(
            "SELECT task_id, id, status FROM jobs WHERE status IN ('queued','running') ORDER BY id",
        )?;
        let mut rows = stmt.query([])?;
        let mut out = HashMap::new();
        while let Some(r) = rows.next()? {
            let status: String = r.get(2)?;
            let status = if status == "running" {
                JobStatus::Running
            } else {
                JobStatus::Queued
            };
            out.entry(r.get(0)?).or_insert((r.get(1)?, status));
        }
        Ok(out)
    }

    /// Cancels a task's queued jobs (an escalated task parks: no agent runs for it).
    /// Running jobs are left to finish. Returns how many were cancelled.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn cancel_queued_jobs(&self, task_id: i64, now: i64) -> Result<usize> {
        Ok(self.conn().execute(
            "UPDATE jobs SET status = 'cancelled', finished_at = ?2
             WHERE task_id = ?1 AND status = 'queued'",
            params![task_id, now],
        )?)
    }

    /// Returns the actor of a task's latest stage event.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn last_event_actor(&self, task_id: i64) -> Result<Option<String>> {
        self.query_one(
            "SELECT actor FROM stage_events WHERE task_id = ?1 ORDER BY id DESC LIMIT 1",
            [task_id],
            |r| r.get(0),
        )
    }

    /// Returns whether an escalation of the task was announced at or after `since`.
    ///
    /// # Errors
    /// On SQL errors.
    pub fn escalation_announced(&self, task_id: i64, since: i64) -> Result<bool> {
        Ok(self
            .query_one(
                "SELECT 1 FROM notifications WHERE task_id = ?1 AND kind = ?2 AND created_at >= ?3 LIMIT 1",
                params![task_id, ESCALATION_KIND, since],
                |_| Ok(()),
            )?
            .is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::db::test_support::db_with_task;
    use crate::core::stage::{Agent, Stage};

    #[test]
    fn rerun_only_an_ended_job_and_only_once_live() {
        let (_d, mut db, t) = db_with_task();
        let j = db
            .enqueue_job(t, Agent::Analyst, Stage::Analysis, 1)
            .unwrap()
            .id();
        assert_eq!(db.live_jobs_by_task().unwrap()[&t], (j, JobStatus::Queued));
        assert_eq!(db.rerun_job(j, 2).unwrap(), None, "queued is not ended");
        db.conn()
            .execute("UPDATE jobs SET status='failed' WHERE id=?1", [j])
            .unwrap();
        assert!(db.live_jobs_by_task().unwrap().is_empty());
        assert_eq!(db.rerun_job(j, 2).unwrap(), Some(2));
        assert_eq!(db.rerun_job(j, 3).unwrap(), None, "already re-run");
        assert_eq!(db.cancel_queued_jobs(t, 4).unwrap(), 1);
        assert_eq!(db.cancel_queued_jobs(t, 4).unwrap(), 0);
        assert_eq!(db.last_event_actor(t).unwrap().as_deref(), Some("operator"));
    }

    #[test]
    fn a_work_item_id_is_held_as_bytes_only_when_spelled_as_plane_does() {
        let id = "7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1e02";
        assert_eq!(
            uuid_words(id),
            Some([0x7b1e_4c2a_5d3f_4e8a, 0x9c61_2f0d_8b3a_1e02])
        );
        assert_eq!(uuid_words(&id.to_uppercase()), None, "one spelling only");
        assert_eq!(uuid_words("7b1e4c2a5d3f-4e8a-9c61-2f0d8b3a1e02-"), None);
        assert_eq!(uuid_words("7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1e0g"), None);
        assert_eq!(uuid_words("w1"), None);
        assert_ne!(
            uuid_words("00000000-0000-4000-8000-000000000001"),
            uuid_words("00000000-0000-4000-8000-000000000010")
        );
    }

    /// A project's read answers each page as [`Db::listed_known`]'s two queries do:
    /// tasks of this project from memory, any other work item (another project's task,
    /// none at all, an id spelled otherwise) from the store.
    #[test]
    fn a_projects_read_answers_a_page_as_the_store_does() {
        use crate::adapters::db::test_support::new_task;
        use crate::core::intake::SeenUpdate;
        use crate::core::stage::Actor;
        let (_d, mut db) = crate::adapters::db::test_support::db();
        let mut ids = Vec::new();
        for n in 1..=6u32 {
            let mut t = new_task(n);
            if n % 3 == 0 {
                t.project = "shop".into();
            }
            if n == 2 {
                t.work_item_id = "Plane-Item-2".into();
            }
            if n == 4 {
                t.priority = Priority::High;
            }
            db.create_task(&t, Actor::Operator, "test", 1).unwrap();
            ids.push(t.work_item_id);
        }
        let seen = |id: &str, micros: i64| SeenUpdate {
            work_item_id: id.into(),
            micros,
            text: format!("t{micros}"),
            source: "listing".into(),
        };
        db.note_updates(
            &[seen(&ids[0], 10), seen(&ids[1], 20), seen(&ids[2], 30)],
            1,
        )
        .unwrap();
        db.note_updates(&[seen("no-task", 40)], 1).unwrap();
        // What the read hands over besides: each listed project's task's head and repo.
        db.escalate(3, "stuck", 5).unwrap();
        let mut heads = Vec::new();
        db.projects_known(&["shop"], |h, repo| {
            let h = (
                h.id,
                h.stage,
                h.stage_entered_at,
                h.developer_retries,
                h.escalated_at,
            );
            heads.push((h, repo.to_string()));
        })
        .unwrap();
        let shop: Vec<_> = (1..=6)
            .filter_map(|id| db.task(id).unwrap())
            .filter(|t| t.project == "shop")
            .map(|t| {
                let h = (
                    t.id,
                    t.stage,
                    t.stage_entered_at,
                    t.developer_retries,
                    t.escalated_at,
                );
                (h, t.repo)
            })
            .collect();
        assert_eq!(heads, shop);
        assert_eq!(heads.len(), 2);
        assert_eq!(heads[0].0 .4, Some(5), "task 3 escalated, as read");
        let known = db
            .projects_known(&["shop", "orch"], |_, _| {})
            .unwrap()
            .swap_remove(1);
        assert_eq!(known.len(), 4, "the tasks of orch only");
        let mut page: Vec<&str> = ids.iter().map(String::as_str).collect();
        page.extend(["no-task", "never-seen", "plane-item-2"]);
        let (a, b) = (
            known.page(&db, &page).unwrap(),
            db.listed_known(&page).unwrap(),
        );
        assert_eq!(a.tasks, b.tasks);
        assert_eq!(a.newest_us, b.newest_us);
        assert_eq!(a.tasks.iter().flatten().count(), 6);
        assert_eq!(a.newest_us.iter().flatten().count(), 4);
        // Each answer at its item's place in the page: `ids[k]` is the page's k-th.
        let task = |k: &ListedKnown, i: usize| k.tasks[i].clone().unwrap();
        assert_eq!(task(&a, 3).priority, Priority::High);

        // What the listing writes, noted: the page reads as the store does again.
        let mut known = known;
        db.note_updates(&[seen(&ids[0], 50), seen(&ids[1], 5)], 2)
            .unwrap();
        known.noted(&ids[0], 50);
        known.noted(&ids[1], 5);
        db.refresh_priorities(&[(ids[1].as_str(), Priority::Urgent)], 2)
            .unwrap();
        known.prioritised(&ids[1], Priority::Urgent);
        let (a, b) = (
            known.page(&db, &page).unwrap(),
            db.listed_known(&page).unwrap(),
        );
        assert_eq!(a.tasks, b.tasks);
        assert_eq!(a.newest_us, b.newest_us);
        assert_eq!(a.newest_us[0], Some(50));
        assert_eq!(a.newest_us[1], Some(20), "only ever raised");
        assert_eq!(task(&a, 1).priority, Priority::Urgent);
        let key = |i| db.task(task(&a, i).id).unwrap().unwrap().key;
        assert_eq!(key(0), "ORCH-1");
        assert_eq!(key(2), "ORCH-3", "another project's task, read");
    }

    #[test]
    fn escalation_announcements_since() {
        let (_d, db, t) = db_with_task();
        assert!(!db.escalation_announced(t, 10).unwrap());
        db.insert_notification("k", ESCALATION_KIND, Some(t), "m", 10)
            .unwrap();
        assert!(db.escalation_announced(t, 10).unwrap());
        assert!(!db.escalation_announced(t, 11).unwrap());
    }
}
