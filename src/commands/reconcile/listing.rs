//! Listing Plane: each project's work items page by page, each state resolved (expanded,
//! cached, or from the States API once per project per pass), stopping below the
//! rate-limit floor and ending the pass's Plane calls on a 429. Each page also refreshes
//! the listed work items' tasks' priorities.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Result;

use crate::adapters::db::{Db, ListedKnown, ProjectKnown};
use crate::adapters::http::HttpError;
use crate::adapters::plane::{PlaneClient, WorkItem, WorkItemPage};
use crate::core::intake::{PlaneState as CachedState, SeenUpdate, WorkItemTime};
use crate::core::plane::Project;
use crate::core::priority::Priority;
use crate::core::reconcile::{self, AfterPage, Listed};

use super::Pass;

/// What listing a project gave.
#[derive(Default)]
pub(super) struct ProjectListing {
    /// What the blocked guard reads.
    pub(super) listing: reconcile::Listing,
    /// Work items seen that may need a replay (`Pass::replay_candidate`), with their
    /// resolved state (the item's own `state` is not read again).
    pub(super) resolved: Vec<(WorkItem, Arc<CachedState>)>,
}

/// The judging side's ends of the page reader: its pages, and (for a project after the
/// first) the go-ahead to send before the project's first page is waited for.
struct Reader<'r> {
    pages: &'r std::sync::mpsc::Receiver<Fetched>,
    go: Option<&'r std::sync::mpsc::Sender<()>>,
}

/// What runs once, when a listing's first page arrived.
type FirstPage<'f> = Option<&'f mut dyn FnMut(&mut Db) -> Result<()>>;

/// States shared per listing at most ([`States`]).
const MAX_SHARED_STATES: usize = 256;

/// The states a listing saw, each name and group held once and shared by every listed
/// item in it (a project has a few states; its listing, up to ~100,000 items).
#[derive(Default)]
struct States(Vec<(Arc<str>, Arc<str>)>);

impl States {
    /// The shared name and group of a state.
    fn intern(&mut self, name: &str, group: &str) -> (Arc<str>, Arc<str>) {
        if let Some((n, g)) = self.0.iter().find(|(n, g)| **n == *name && **g == *group) {
            return (n.clone(), g.clone());
        }
        let pair: (Arc<str>, Arc<str>) = (name.into(), group.into());
        // A project has tens of states; past that (a Plane answering nonsense) each item
        // keeps its own, so the search never grows with the listing.
        if self.0.len() < MAX_SHARED_STATES {
            self.0.push(pair.clone());
        }
        pair
    }
}

impl Pass<'_> {
    /// Lists the work items of each project of `to_list`, in order, page by page,
    /// resolving each state. The pages are read (and parsed) by a thread of their own,
    /// started before the store is read, at most two pages ahead of this one, which
    /// looks up the store and decides per page: the requests, their order and where the
    /// listing stops are the same as one thread's (each follows only from the pages
    /// before it), and the next page is on its way while this one is judged.
    /// `known` reads what the store knows of the projects' tasks
    /// (`Db::projects_known`), one [`ProjectKnown`] per project of `to_list`;
    /// `first_page` runs once, when the first page arrived (Plane answers: not a 429);
    /// `answered` is raised by the reader as soon as it read a page, which may be while
    /// `known` still reads the store.
    pub(super) fn list_projects(
        &mut self,
        db: &mut Db,
        to_list: &[&Project],
        known: impl FnOnce(&mut Db) -> Result<Vec<ProjectKnown>>,
        first_page: &mut dyn FnMut(&mut Db) -> Result<()>,
        answered: &AtomicBool,
    ) -> Result<Vec<ProjectListing>> {
        let Some(plane) = self.plane else {
            let failed = |_| {
                let mut l = ProjectListing::default();
                l.listing.failed = Some("plane is not configured (ORCH_PLANE_URL)".into());
                l
            };
            return Ok(to_list.iter().map(failed).collect());
        };
        if to_list.is_empty() || self.rate_limited || self.report.stopped_early.is_some() {
            return Ok(to_list.iter().map(|_| ProjectListing::default()).collect());
        }
        let floor = self.ctx.config.settings.reconcile_rate_limit_floor.0;
        let bounds = self.ctx.bounds();
        let reads: Vec<(&str, String)> = to_list
            .iter()
            .map(|p| {
                let what = format!("plane list work items of project {}", p.name);
                (p.plane_project_id.as_str(), what)
            })
            .collect();
        // Set when this side stops listing: the reader makes no request after it.
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            // One go-ahead per project, sent when this side starts taking its pages: the
            // reader never starts a project this side would not list (after a 429 of
            // the States API, a lost lease), as one thread would not.
            let (go, may_start) = std::sync::mpsc::channel::<()>();
            let (reads, stop) = (&reads, &stop);
            let flags = (stop, answered);
            scope
                .spawn(move || fetch_projects(plane, bounds, reads, floor, flags, (may_start, tx)));
            let mut first_page = Some(first_page);
            let listed = (|| {
                let mut out = Vec::with_capacity(to_list.len());
                // The first project's pages are on their way while the store is read.
                let _ = go.send(());
                let mut known = known(db)?.into_iter();
                for (i, project) in to_list.iter().enumerate() {
                    let store = known.next().unwrap_or_default();
                    if self.rate_limited || self.report.stopped_early.is_some() {
                        stop.store(true, Ordering::Relaxed);
                        out.push(ProjectListing::default());
                        continue;
                    }
                    // The first project's go-ahead went before the store was read.
                    let reader = Reader {
                        pages: &rx,
                        go: (i > 0).then_some(&go),
                    };
                    out.push(self.take_pages(
                        db,
                        project,
                        plane,
                        reader,
                        store,
                        &mut first_page,
                    )?);
                }
                Ok(out)
            })();
            stop.store(true, Ordering::Relaxed);
            // The reader, blocked on a page no one will take or on a go-ahead no one will
            // send, ends when these go.
            drop(go);
            drop(rx);
            listed
        })
    }

    /// Judges the pages [`fetch_pages`] sends, in order, into `l`.
    fn take_pages(
        &mut self,
        db: &mut Db,
        project: &Project,
        plane: &PlaneClient,
        reader: Reader<'_>,
        mut store: ProjectKnown,
        first_page: &mut FirstPage<'_>,
    ) -> Result<ProjectListing> {
        let Reader { pages, mut go } = reader;
        let mut l = ProjectListing::default();
        let pid = &project.plane_project_id;
        let floor = self.ctx.config.settings.reconcile_rate_limit_floor.0;
        let mut states_refreshed = false;
        let mut states = States::default();
        let replay = self.ctx.config.settings.reconcile_replay_enabled;
        // Each page is looked up in `store` (a work item without a task of this project
        // is read from the store, page by page).
        loop {
            // A 429 (of the States API, while this page was judged) ends the pass's
            // Plane calls: no more pages are taken, and the reader is stopped.
            if self.rate_limited {
                return Ok(l);
            }
            // Between pages: the pass lease renewed (a pass that lost it stops here).
            if self.ctx.stop_between_items("listing Plane") {
                let why =
                    "the pass lease was lost or the pass deadline ORCH_PASS_DEADLINE_S passed";
                l.listing.failed = Some(format!("listing stopped: {why}"));
                self.report.stopped_early.get_or_insert(why.to_string());
                return Ok(l);
            }
            // The project's first page is asked for only now, past the lease check.
            if let Some(go) = go.take() {
                let _ = go.send(());
            }
            let page = match pages.recv() {
                Ok(Fetched::Page(page)) => {
                    self.report.c.plane_requests += 1;
                    if let Some(f) = first_page.take() {
                        f(db)?;
                    }
                    page
                }
                Ok(Fetched::Stopped(why)) => {
                    l.listing.failed = Some(format!("listing stopped: {why}"));
                    self.report.stopped_early.get_or_insert(why);
                    return Ok(l);
                }
                Ok(Fetched::Failed(HttpError::RateLimited { retry_after, .. })) => {
                    self.report.c.plane_requests += 1;
                    self.rate_limit(retry_after);
                    return Ok(l);
                }
                Ok(Fetched::Failed(e)) => {
                    self.report.c.plane_requests += 1;
                    log::warn!("project {}: listing work items failed: {e}", project.name);
                    l.listing.failed =
                        Some(format!("listing the project's work items failed: {e}"));
                    return Ok(l);
                }
                Err(_) => {
                    // The reader ends only after a message that ends the listing.
                    anyhow::bail!("project {}: the listing's reader ended early", project.name)
                }
            };
            // What the store knows of this page's work items, from the project's read:
            // a steady page then writes nothing and reads nothing more per item.
            let ids: Vec<&str> = page.items.iter().map(|i| i.id.as_str()).collect();
            let known = store.page(db, &ids)?;
            self.note_listed_updates(db, &page.items, &known, &mut store)?;
            self.refresh_listed_priorities(db, &page.items, &known, &mut store)?;
            for (mut item, task) in page.items.into_iter().zip(&known.tasks) {
                // The expanded state is shared with the page's other items in it, not
                // copied: only a replay candidate (rare in a steady pass) keeps the
                // item, with its state beside it.
                let state = match item.state.take() {
                    Some(s) => Some(s),
                    None => match &item.state_id {
                        None => None,
                        Some(id) => {
                            let mut found = db.plane_state(pid, id)?;
                            if found.is_none() && !states_refreshed {
                                states_refreshed = true;
                                found = self.refresh_states(db, plane, project, id)?;
                            }
                            found.map(Arc::new)
                        }
                    },
                };
                match state {
                    Some(st) => {
                        let candidate =
                            replay && Pass::replay_candidate(db, project, &st, task.as_ref())?;
                        let (name, group) = states.intern(&st.name, &st.group);
                        let seen = Listed::Seen { name, group };
                        if candidate {
                            l.listing.items.insert(item.id.clone(), seen);
                            l.resolved.push((item, st));
                        } else {
                            l.listing.items.insert(item.id, seen);
                        }
                    }
                    None => {
                        let id = item.state_id.as_deref().unwrap_or("(none)").to_string();
                        l.listing
                            .items
                            .insert(item.id.clone(), Listed::UnknownState(id));
                    }
                }
            }
            // The reader follows the same rule to the same page.
            match reconcile::after_page(
                page.next_cursor.as_deref(),
                page.rate_limit_remaining,
                floor,
            ) {
                AfterPage::Next(_) => {}
                AfterPage::Last => {
                    l.listing.complete = true;
                    return Ok(l);
                }
                AfterPage::BelowFloor => {
                    self.report.stopped_early = Some(format!(
                        "plane X-RateLimit-Remaining {} is below ORCH_RECONCILE_RATE_LIMIT_FLOOR {floor}",
                        page.rate_limit_remaining.unwrap_or(0)
                    ));
                    return Ok(l);
                }
            }
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
        store: &mut ProjectKnown,
    ) -> Result<()> {
        if self.dry_run {
            return Ok(());
        }
        // Only a newer update is copied out of its item (a steady page copies nothing).
        let newer = |(i, known): &(&WorkItem, &Option<i64>)| match &i.updated_at {
            WorkItemTime::At { micros, .. } => known.is_none_or(|k| *micros > k),
            WorkItemTime::Missing | WorkItemTime::Unparseable(_) => false,
        };
        let updates: Vec<SeenUpdate> = items
            .iter()
            .zip(&known.newest_us)
            .filter(newer)
            .filter_map(|(i, _)| SeenUpdate::new(&i.id, &i.updated_at, "listing"))
            .collect();
        if updates.is_empty() {
            return Ok(());
        }
        db.note_updates(&updates, self.now)?;
        for u in &updates {
            store.noted(&u.work_item_id, u.micros);
        }
        Ok(())
    }

    /// Records each listed work item's priority on its task (one transaction a page,
    /// only when a task's differs from what `known` read: a steady page writes
    /// nothing): the listing already carries it, so the refresh costs no request.
    fn refresh_listed_priorities(
        &mut self,
        db: &mut Db,
        items: &[WorkItem],
        known: &ListedKnown,
        store: &mut ProjectKnown,
    ) -> Result<()> {
        if self.dry_run {
            return Ok(());
        }
        let listed: Vec<(&str, Priority)> = items
            .iter()
            .zip(&known.tasks)
            .filter(|(i, t)| t.as_ref().is_some_and(|t| t.priority != i.priority))
            .map(|(i, _)| (i.id.as_str(), i.priority))
            .collect();
        if listed.is_empty() {
            return Ok(());
        }
        let changed = db.refresh_priorities(&listed, self.now)?;
        for (work_item, priority) in &listed {
            store.prioritised(work_item, *priority);
        }
        for (key, old, new) in changed {
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

/// What the page reader hands over, in order.
enum Fetched {
    /// A page read.
    Page(WorkItemPage),
    /// The request for the next page failed (a 429 included).
    Failed(HttpError),
    /// The listing stopped before the next request (page cap or pass deadline): why.
    Stopped(String),
}

/// Reads each project's pages ([`fetch_pages`]), project after project, as long as
/// the judging side would list the next one: after a project listed to its last page
/// or whose listing failed, but not after a 429, a stop (page cap, deadline) or a page
/// below the rate-limit floor. Each project starts on the judging side's go-ahead
/// (`may_start`); no request is made once `stop` is set; `answered` is raised when a
/// page was read.
fn fetch_projects(
    plane: &PlaneClient,
    bounds: &crate::adapters::bounds::PassBounds,
    reads: &[(&str, String)],
    floor: u32,
    (stop, answered): (&AtomicBool, &AtomicBool),
    (may_start, out): (
        std::sync::mpsc::Receiver<()>,
        std::sync::mpsc::SyncSender<Fetched>,
    ),
) {
    for (pid, what) in reads {
        // Each project waits for the judging side's go-ahead (none comes once it
        // stopped listing).
        if may_start.recv().is_err()
            || !fetch_pages(plane, bounds, pid, floor, what, (stop, answered), &out)
        {
            return;
        }
    }
}

/// Reads a project's pages in order, following the cursors, and sends each: stops
/// after the last page, a failed request, a page below the rate-limit floor, or (before
/// a request) at the page cap or the pass deadline, exactly where the judging side
/// stops; also when that side stopped listening. Returns whether the next project may
/// be listed.
fn fetch_pages(
    plane: &PlaneClient,
    bounds: &crate::adapters::bounds::PassBounds,
    pid: &str,
    floor: u32,
    what: &str,
    (stop, answered): (&AtomicBool, &AtomicBool),
    out: &std::sync::mpsc::SyncSender<Fetched>,
) -> bool {
    let mut cursor: Option<String> = None;
    let mut pages = 0usize;
    loop {
        // Bounded between pages: an upstream that keeps sending new cursors, or
        // answers slowly, cannot hold the pass.
        let stopped = if pages == plane.max_pages() {
            Some(plane.page_cap_hit(what).to_string())
        } else if bounds.stop_for_deadline("listing Plane") {
            Some("the pass deadline ORCH_PASS_DEADLINE_S passed".into())
        } else {
            None
        };
        if let Some(why) = stopped {
            let _ = out.send(Fetched::Stopped(why));
            return false;
        }
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        pages += 1;
        match plane.list_work_items_page(pid, cursor.as_deref()) {
            Ok(page) => {
                answered.store(true, Ordering::Release);
                // The last page lets the next project be listed; a page below the
                // floor ends the listing (the judging side stops there too).
                let next = match reconcile::after_page(
                    page.next_cursor.as_deref(),
                    page.rate_limit_remaining,
                    floor,
                ) {
                    AfterPage::Next(next) => Ok(next.to_string()),
                    // The last page lets the next project be listed; below the floor
                    // the listing ends (the judging side stops there too).
                    AfterPage::Last => Err(true),
                    AfterPage::BelowFloor => Err(false),
                };
                if out.send(Fetched::Page(page)).is_err() {
                    return false;
                }
                match next {
                    Ok(next) => cursor = Some(next),
                    Err(go_on) => return go_on,
                }
            }
            Err(e) => {
                let go_on = !matches!(e, HttpError::RateLimited { .. });
                return out.send(Fetched::Failed(e)).is_ok() && go_on;
            }
        }
    }
}
