//! Listing Plane: each project's work items page by page, each state resolved (expanded,
//! cached, or from the States API once per project per pass), stopping below the
//! rate-limit floor and ending the pass's Plane calls on a 429. Each page also refreshes
//! the listed work items' tasks' priorities.

use anyhow::Result;

use crate::adapters::db::{Db, ListedKnown};
use crate::adapters::http::HttpError;
use crate::adapters::plane::{PlaneClient, WorkItem};
use crate::core::intake::{PlaneState as CachedState, SeenUpdate};
use crate::core::plane::Project;
use crate::core::priority::Priority;
use crate::core::reconcile::{self, Listed};

use super::Pass;

/// What listing a project gave.
#[derive(Default)]
pub(super) struct ProjectListing {
    /// What the blocked guard reads.
    pub(super) listing: reconcile::Listing,
    /// Work items seen that may need a replay (`Pass::replay_candidate`), with their
    /// resolved state.
    pub(super) resolved: Vec<(WorkItem, CachedState)>,
}

impl Pass<'_> {
    /// Lists one project's work items page by page, resolving each state.
    pub(super) fn list_project(
        &mut self,
        db: &mut Db,
        project: &Project,
    ) -> Result<ProjectListing> {
        let mut l = ProjectListing::default();
        let Some(plane) = self.plane else {
            l.listing.failed = Some("plane is not configured (ORCH_PLANE_URL)".into());
            return Ok(l);
        };
        if self.rate_limited || self.report.stopped_early.is_some() {
            return Ok(l);
        }
        let pid = &project.plane_project_id;
        let floor = self.ctx.config.settings.reconcile_rate_limit_floor.0;
        let mut cursor: Option<String> = None;
        let mut states_refreshed = false;
        let mut pages = 0usize;
        let replay = self.ctx.config.settings.reconcile_replay_enabled;
        loop {
            // Bounded between pages: an upstream that keeps sending new cursors, or
            // answers slowly, cannot hold the pass.
            let stopped = if pages == plane.max_pages() {
                let what = format!("plane list work items of project {}", project.name);
                Some(plane.page_cap_hit(&what).to_string())
            } else if self.ctx.stop_between_items("listing Plane") {
                Some("the pass deadline ORCH_PASS_DEADLINE_S passed".into())
            } else {
                None
            };
            if let Some(why) = stopped {
                l.listing.failed = Some(format!("listing stopped: {why}"));
                self.report.stopped_early.get_or_insert(why);
                return Ok(l);
            }
            pages += 1;
            self.report.c.plane_requests += 1;
            let page = match plane.list_work_items_page(pid, cursor.as_deref()) {
                Ok(page) => page,
                Err(HttpError::RateLimited { retry_after, .. }) => {
                    self.rate_limit(retry_after);
                    return Ok(l);
                }
                Err(e) => {
                    log::warn!("project {}: listing work items failed: {e}", project.name);
                    l.listing.failed =
                        Some(format!("listing the project's work items failed: {e}"));
                    return Ok(l);
                }
            };
            // What the store knows of this page's work items, in two reads: a steady
            // page then writes nothing and reads nothing more per item.
            let ids: Vec<&str> = page.items.iter().map(|i| i.id.as_str()).collect();
            let known = db.listed_known(&ids)?;
            self.note_listed_updates(db, &page.items, &known)?;
            self.refresh_listed_priorities(db, &page.items, &known)?;
            for item in page.items {
                let state = match &item.state {
                    Some(s) => Some(CachedState {
                        id: s.id.clone(),
                        name: s.name.clone(),
                        group: s.group.clone(),
                    }),
                    None => match &item.state_id {
                        None => None,
                        Some(id) => {
                            let mut found = db.plane_state(pid, id)?;
                            if found.is_none() && !states_refreshed {
                                states_refreshed = true;
                                found = self.refresh_states(db, plane, project, id)?;
                            }
                            found
                        }
                    },
                };
                match state {
                    Some(st) => {
                        l.listing.items.insert(
                            item.id.clone(),
                            Listed::Seen {
                                name: st.name.clone(),
                                group: st.group.clone(),
                            },
                        );
                        if replay
                            && Pass::replay_candidate(db, project, &st, known.tasks.get(&item.id))?
                        {
                            l.resolved.push((item, st));
                        }
                    }
                    None => {
                        let id = item.state_id.clone().unwrap_or_else(|| "(none)".into());
                        l.listing
                            .items
                            .insert(item.id.clone(), Listed::UnknownState(id));
                    }
                }
            }
            let Some(next) = page.next_cursor else {
                l.listing.complete = true;
                return Ok(l);
            };
            if reconcile::below_floor(page.rate_limit_remaining, floor) {
                self.report.stopped_early = Some(format!(
                    "plane X-RateLimit-Remaining {} is below ORCH_RECONCILE_RATE_LIMIT_FLOOR {floor}",
                    page.rate_limit_remaining.unwrap_or(0)
                ));
                return Ok(l);
            }
            cursor = Some(next);
        }
    }

    /// Remembers each listed work item's `updated_at` as its newest seen update (one
    /// transaction a page, only when one is newer than `known` says: a steady page
    /// writes nothing): a delivery older than what a listing showed is stale.
    fn note_listed_updates(
        &mut self,
        db: &mut Db,
        items: &[WorkItem],
        known: &ListedKnown,
    ) -> Result<()> {
        if self.dry_run {
            return Ok(());
        }
        let updates: Vec<SeenUpdate> = items
            .iter()
            .filter_map(|i| SeenUpdate::new(&i.id, &i.updated_at, "listing"))
            .filter(|u| {
                known
                    .newest_us
                    .get(&u.work_item_id)
                    .is_none_or(|k| u.micros > *k)
            })
            .collect();
        if updates.is_empty() {
            return Ok(());
        }
        db.note_updates(&updates, self.now)
    }

    /// Records each listed work item's priority on its task (one transaction a page,
    /// only when a task's differs from what `known` read: a steady page writes
    /// nothing): the listing already carries it, so the refresh costs no request.
    fn refresh_listed_priorities(
        &mut self,
        db: &mut Db,
        items: &[WorkItem],
        known: &ListedKnown,
    ) -> Result<()> {
        if self.dry_run {
            return Ok(());
        }
        let listed: Vec<(&str, Priority)> = items
            .iter()
            .filter(|i| {
                known
                    .tasks
                    .get(&i.id)
                    .is_some_and(|t| t.priority != i.priority)
            })
            .map(|i| (i.id.as_str(), i.priority))
            .collect();
        if listed.is_empty() {
            return Ok(());
        }
        for (key, old, new) in db.refresh_priorities(&listed, self.now)? {
            log::info!("task {key}: priority {old} -> {new} (as Plane lists it)");
            self.report.c.priorities += 1;
        }
        Ok(())
    }

    pub(super) fn rate_limit(&mut self, retry_after: Option<std::time::Duration>) {
        self.rate_limited = true;
        self.report.stopped_early = Some(format!(
            "plane answered 429 (rate limited{}); the next pass goes on",
            retry_after
                .map(|d| format!(", retry after {}s", d.as_secs()))
                .unwrap_or_default()
        ));
    }

    /// Refreshes a project's state cache from the States API once per pass.
    fn refresh_states(
        &mut self,
        db: &mut Db,
        plane: &PlaneClient,
        project: &Project,
        wanted: &str,
    ) -> Result<Option<CachedState>> {
        self.report.c.plane_requests += 1;
        match plane.list_states(&project.plane_project_id) {
            Ok(states) => {
                let states: Vec<CachedState> = states
                    .into_iter()
                    .map(|s| CachedState {
                        id: s.id,
                        name: s.name,
                        group: s.group,
                    })
                    .collect();
                let found = states.iter().find(|s| s.id == wanted).cloned();
                if !self.dry_run {
                    db.replace_plane_states(&project.plane_project_id, &states, self.now)?;
                }
                Ok(found)
            }
            Err(HttpError::RateLimited { retry_after, .. }) => {
                self.rate_limit(retry_after);
                Ok(None)
            }
            Err(e) => {
                log::warn!("project {}: refreshing states failed: {e}", project.name);
                Ok(None)
            }
        }
    }
}
