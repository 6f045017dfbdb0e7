//! Forge facts for the quality gates: the task's pull request and the CI state of its
//! head, read from Gitea (SPEC §3, `shared/reference/gitea.md` §2, §6, §7).
//!
//! - The PR: found the first time by listing the repo's open pulls (cached once per
//!   repo per pass) and matching `head.ref == task.branch`; its number is then recorded
//!   on the task. A one-off forge ([`Forge::new`]: run-job, staging-check, a move)
//!   afterwards reads the PR by number. A pass's forge ([`Forge::for_pass`]: reconcile)
//!   answers a recorded PR from that same listing: listed means open (and current at
//!   every stage); not listed means closed or merged, and it is read by number only at
//!   `deploy`, where its merged state matters. So a steady pass costs the listing's
//!   pages per repo, not a request per task; should the listing fail, the PR is read by
//!   number as a one-off forge would. A recorded PR that is closed (merged or not) is
//!   not the task's current PR at `development`, `review` or `deploy-staging`
//!   (`core::round::recorded_pr_is_current`): the open PR of the branch is looked for
//!   instead, and its number replaces the recorded one. At `deploy` the recorded PR
//!   stays current when merged (that is how `deploy → done` passes). A PR read by number
//!   whose head is not the task's branch any more (`refs/pull/N/head` after the branch
//!   was deleted) is still that PR.
//! - CI: every context of the PR head SHA, decided by `core::facts::CiState::from_contexts` (no context,
//!   no CI reported, is not success; the gate waits on it). A head's green verdict
//!   does not change: given the database ([`Forge::gate_facts`]), a success recorded in
//!   `ci_verdicts` for the repo and head SHA is used without a request, and a success
//!   just read is handed back to be recorded ([`ForgeFacts::final_ci`]). A failed head
//!   (CI may be re-run on the same commit) and a pending one are read every time.
//! - Deploy → done: a PR whose head is already contained in its base counts as merged
//!   (`core::merge::head_contained_in_base`, the rule merge-guard decides with too;
//!   counted by `GiteaClient::commits_ahead`, which works where compare by SHA does not).
//!
//! Only what `gate::needs(stage)` lists is fetched. Errors become the fact's `Err`, so
//! the checks that read it say `Unknown` and the gate waits; nothing here fails a pass.

use std::collections::{HashMap, HashSet};

use crate::adapters::db::Db;
use crate::adapters::gitea::{GiteaClient, PullRequest};
use crate::adapters::http::HttpError;
use crate::core::facts::{CiContext, CiFailure, CiState, Fact, PrFacts};
use crate::core::gate::Need;
use crate::core::merge::head_contained_in_base;
use crate::core::round::recorded_pr_is_current;
use crate::core::stage::Stage;
use crate::core::task::Task;

/// Why forge facts are unknown when Gitea is not configured.
pub const GITEA_NOT_CONFIGURED: &str = "gitea is not configured (ORCH_GITEA_URL)";

/// The pass's Gitea client (none without `ORCH_GITEA_URL`: every fact is unknown) with a
/// per-pass cache of each repo's open pulls and a request count.
pub struct Forge<'a> {
    client: Option<&'a GiteaClient>,
    /// Whether a recorded PR is answered from the repo's open pulls listing (a pass over
    /// many tasks) rather than read by number (one task).
    from_listing: bool,
    open_pulls: HashMap<String, Result<OpenPulls, String>>,
    /// Per repo, the listed heads whose green verdict the store held when the listing
    /// was adopted ([`Forge::note_green`]): answered without a read of the store.
    green: HashMap<String, HashSet<String>>,
    /// Gitea calls made (a listing counts one per page read).
    pub requests: i64,
}

/// A repo's open pulls as listed (newest first), looked up by number and by head branch
/// in constant time: a pass asks once per gated task, and a big repo lists thousands.
#[derive(Debug, Default)]
struct OpenPulls {
    listed: Vec<PullRequest>,
    /// Index in `listed` of each number.
    by_number: HashMap<u64, usize>,
    /// Index in `listed` of each head branch's first (newest) PR, as a walk of the
    /// listing would find it.
    by_branch: HashMap<String, usize>,
}

impl OpenPulls {
    fn new(listed: Vec<PullRequest>) -> OpenPulls {
        let mut by_number = HashMap::with_capacity(listed.len());
        let mut by_branch = HashMap::with_capacity(listed.len());
        for (i, pr) in listed.iter().enumerate() {
            by_number.entry(pr.number).or_insert(i);
            by_branch.entry(pr.head.ref_name.clone()).or_insert(i);
        }
        OpenPulls {
            listed,
            by_number,
            by_branch,
        }
    }

    /// The listed PR numbered `n`.
    fn numbered(&self, n: u64) -> Option<&PullRequest> {
        self.by_number.get(&n).map(|&i| &self.listed[i])
    }

    /// The newest listed PR whose head is `branch`.
    fn of_branch(&self, branch: &str) -> Option<&PullRequest> {
        self.by_branch.get(branch).map(|&i| &self.listed[i])
    }
}

/// A repo's open pulls as [`list_open_pulls`] read them, and the requests that took.
#[derive(Debug)]
pub struct ListedPulls {
    pulls: Result<OpenPulls, String>,
    requests: i64,
}

/// Lists `repo`'s open pulls, every page up to the page cap (`ORCH_LIST_MAX_PAGES`, as
/// every listing), for a [`Forge`] to adopt: an error on any page, or the cap, makes
/// the whole listing the error.
pub fn list_open_pulls(client: &GiteaClient, repo: &str) -> ListedPulls {
    let mut requests = 0;
    let pulls = client
        .list_open_pulls_counting(repo, &mut requests)
        .map(OpenPulls::new)
        .map_err(|e| e.to_string());
    ListedPulls { pulls, requests }
}

/// What the forge told about one task.
#[derive(Debug, Clone)]
pub struct ForgeFacts {
    /// The task's PR (`Ok(None)`: none found).
    pub pr: Fact<Option<PrFacts>>,
    /// The combined CI state of the PR head.
    pub ci: Fact<CiState>,
    /// A PR number to record on the task: seen for the first time, or the open PR that
    /// replaces a recorded one that is closed.
    pub new_pr_number: Option<u64>,
    /// A CI verdict to keep ([`CiState::is_kept`]: success) read from Gitea (not from the cache) and the head SHA it is
    /// about: for the caller to record in `ci_verdicts` (`Db::record_ci_verdict`).
    pub final_ci: Option<(String, CiState)>,
    /// When the CI verdict read is a failure: the head and its failing contexts.
    pub ci_failure: Option<CiFailure>,
}

impl<'a> Forge<'a> {
    /// Builds a forge for one task (or a few) around `client` (or none: every fact is
    /// unknown): a recorded PR is read by number.
    pub fn new(client: Option<&'a GiteaClient>) -> Forge<'a> {
        Forge {
            client,
            from_listing: false,
            open_pulls: HashMap::new(),
            green: HashMap::new(),
            requests: 0,
        }
    }

    /// Builds a forge for a pass over many tasks: a recorded PR is answered from its
    /// repo's open pulls, listed once per pass, and read by number only where the
    /// listing cannot tell (a PR not listed at `deploy`, or a listing that failed).
    pub fn for_pass(client: Option<&'a GiteaClient>) -> Forge<'a> {
        Forge {
            from_listing: true,
            ..Forge::new(client)
        }
    }

    /// Reads the facts `needs` lists for `task` at `stage`, with no CI cache.
    pub fn facts(&mut self, task: &Task, stage: Stage, needs: &[Need]) -> ForgeFacts {
        self.gate_facts(task, stage, needs, None)
    }

    /// Reads the facts `needs` lists for `task` at `stage`; with `ci_cache`, a head
    /// whose green CI verdict is recorded there is not read again.
    pub fn gate_facts(
        &mut self,
        task: &Task,
        stage: Stage,
        needs: &[Need],
        ci_cache: Option<&Db>,
    ) -> ForgeFacts {
        let mut out = ForgeFacts {
            pr: Err("not gathered".into()),
            ci: Err("not gathered".into()),
            new_pr_number: None,
            final_ci: None,
            ci_failure: None,
        };
        if !crate::core::gate::reads_pr(needs) {
            return out;
        }
        if self.client.is_none() {
            out.pr = Err(GITEA_NOT_CONFIGURED.into());
            out.ci = Err(GITEA_NOT_CONFIGURED.into());
            return out;
        }
        let pr = match self.pull(task, stage) {
            Ok((pr, new)) => {
                out.new_pr_number = new;
                pr
            }
            Err(e) => {
                out.ci = Err(e.clone());
                out.pr = Err(e);
                return out;
            }
        };
        let Some(pr) = pr else {
            out.pr = Ok(None);
            out.ci = Err("no pull request".into());
            return out;
        };
        let mut facts = pr.facts();
        if stage == Stage::Deploy && !facts.merged {
            match self.contained_in_base(task, &pr) {
                Ok(true) => facts.merged = true,
                Ok(false) => {}
                Err(e) => {
                    out.pr = Err(e);
                    return out;
                }
            }
        }
        if needs.contains(&Need::Ci) {
            let noted = |f: &Forge<'_>| {
                f.green
                    .get(&task.repo)
                    .is_some_and(|g| g.contains(&facts.head_sha))
            };
            let known = ci_cache.and_then(|db| {
                if noted(self) {
                    return Some(CiState::Success);
                }
                match db.ci_verdict(&task.repo, &facts.head_sha) {
                    Ok(v) => v,
                    Err(e) => {
                        log::warn!("task {}: reading the CI verdict cache: {e:#}", task.key);
                        None
                    }
                }
            });
            out.ci = match known {
                Some(v) => Ok(v),
                None => {
                    let read = self.ci(task, &facts.head_sha);
                    read.map(|(v, failing)| {
                        if v.is_kept() {
                            out.final_ci = Some((facts.head_sha.clone(), v.clone()));
                        }
                        if v == CiState::Failure {
                            out.ci_failure = Some(CiFailure {
                                head_sha: facts.head_sha.clone(),
                                contexts: failing,
                            });
                        }
                        v
                    })
                }
            };
        }
        out.pr = Ok(Some(facts));
        out
    }

    fn client(&self) -> &'a GiteaClient {
        self.client.expect("checked by the caller")
    }

    /// Finds the task's PR at `stage`: by its recorded number while that PR is current,
    /// else in the repo's open pulls.
    fn pull(
        &mut self,
        task: &Task,
        stage: Stage,
    ) -> Result<(Option<PullRequest>, Option<u64>), String> {
        if let Some(n) = task.pr_number.and_then(|n| u64::try_from(n).ok()) {
            if let Some(answer) = self.recorded_from_listing(task, stage, n) {
                return Ok(answer);
            }
            self.requests += 1;
            let pr = self
                .client()
                .get_pull(&task.repo, n)
                .map_err(|e| e.to_string())?;
            if recorded_pr_is_current(stage, pr.is_open()) {
                return Ok((Some(pr), None));
            }
            // Closed or merged: never the current PR here; the branch's open PR is.
        }
        let found = self
            .open_pulls(&task.repo)?
            .of_branch(&task.branch)
            .cloned();
        let new = found.as_ref().map(|pr| pr.number);
        Ok((found, new))
    }

    /// A pass's answer for recorded PR `n` from the repo's open pulls: listed, it is open
    /// and current; not listed, it is closed or merged, so (except at `deploy`, where it
    /// stays current and its merged state is read by number) the branch's open PR is
    /// the current one. `None` when the listing cannot tell.
    fn recorded_from_listing(
        &mut self,
        task: &Task,
        stage: Stage,
        n: u64,
    ) -> Option<(Option<PullRequest>, Option<u64>)> {
        if !self.from_listing {
            return None;
        }
        let listed = self.open_pulls(&task.repo).ok()?;
        if let Some(pr) = listed.numbered(n) {
            return Some((Some(pr.clone()), None));
        }
        if recorded_pr_is_current(stage, false) {
            return None;
        }
        let found = listed.of_branch(&task.branch).cloned();
        let new = found.as_ref().map(|pr| pr.number);
        Some((found, new))
    }

    /// The repo's open pulls, listed once per pass (or handed over by [`Forge::adopt`]).
    fn open_pulls(&mut self, repo: &str) -> Result<&OpenPulls, String> {
        if !self.open_pulls.contains_key(repo) {
            let listed = list_open_pulls(self.client(), repo);
            self.adopt(repo, listed);
        }
        match self.open_pulls.get(repo).expect("just inserted") {
            Ok(v) => Ok(v),
            Err(e) => Err(e.clone()),
        }
    }

    /// Takes a repo's open pulls listed by [`list_open_pulls`] elsewhere (a pass lists
    /// them on a thread of its own while it lists Plane), with the requests it made,
    /// as if this forge had listed them itself. A repo this forge listed meanwhile
    /// keeps that listing (the decisions made from it stay consistent); the requests
    /// count either way.
    pub fn adopt(&mut self, repo: &str, listed: ListedPulls) {
        self.requests += listed.requests;
        self.open_pulls
            .entry(repo.to_string())
            .or_insert(listed.pulls);
    }

    /// The head SHAs of each repo's open pulls listed so far (repos whose listing
    /// failed have none).
    #[must_use]
    pub fn listed_heads(&self) -> Vec<(String, Vec<String>)> {
        self.open_pulls
            .iter()
            .filter_map(|(repo, listed)| {
                let listed = listed.as_ref().ok()?;
                let heads = listed.listed.iter().map(|pr| pr.head.sha.clone());
                Some((repo.clone(), heads.collect()))
            })
            .collect()
    }

    /// Notes `heads` of `repo` as green in the store's CI verdicts (`Db::green_heads`,
    /// read once for a listing): a gate reading one of them answers from here. A
    /// green verdict is final, so a note never goes out of date; a head not noted is
    /// read from the store as before.
    pub fn note_green(&mut self, repo: &str, heads: HashSet<String>) {
        self.green
            .entry(repo.to_string())
            .or_default()
            .extend(heads);
    }

    fn contained_in_base(&mut self, task: &Task, pr: &PullRequest) -> Result<bool, String> {
        let client = self.client();
        let refused_before = client.compare_by_sha_refused();
        let ahead = client.commits_ahead(&task.repo, pr.number, &pr.base.ref_name, &pr.head.sha);
        // The call that found compare by SHA refused asked twice.
        let refused_now = !refused_before && client.compare_by_sha_refused();
        self.requests += 1 + i64::from(refused_now);
        ahead
            .map(head_contained_in_base)
            .map_err(|e: HttpError| e.to_string())
    }

    fn ci(&mut self, task: &Task, sha: &str) -> Fact<(CiState, Vec<CiContext>)> {
        if sha.is_empty() {
            return Err("the PR has no head commit".into());
        }
        match self.client().combined_status(&task.repo, sha) {
            Ok(c) => {
                // One per page of contexts (more than 50 contexts take more).
                self.requests += i64::try_from(c.pages).unwrap_or(i64::MAX);
                Ok((c.state, c.failing))
            }
            Err(e) => {
                self.requests += 1;
                Err(e.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::gitea::PrRef;

    fn pr(number: u64, branch: &str) -> PullRequest {
        let side = |name: &str| PrRef {
            ref_name: name.into(),
            sha: format!("sha{number}"),
        };
        PullRequest {
            number,
            state: "open".into(),
            merged: false,
            mergeable: None,
            merged_at: None,
            merge_commit_sha: None,
            head: side(branch),
            base: side("main"),
            draft: false,
            title: String::new(),
        }
    }

    #[test]
    fn open_pulls_answer_as_a_walk_of_the_listing_would() {
        // Newest first, as Gitea lists: two open PRs from one branch, the newer wins.
        let listed = vec![pr(9, "task/a"), pr(7, "task/b"), pr(4, "task/a")];
        let pulls = OpenPulls::new(listed.clone());
        for branch in ["task/a", "task/b", "task/c"] {
            let walked = listed.iter().find(|p| p.head.ref_name == branch);
            assert_eq!(pulls.of_branch(branch), walked, "{branch}");
        }
        for n in [4, 7, 9, 5] {
            let walked = listed.iter().find(|p| p.number == n);
            assert_eq!(pulls.numbered(n), walked, "#{n}");
        }
        assert_eq!(pulls.of_branch("task/a").map(|p| p.number), Some(9));
    }
}
