//! The Gitea (and Forgejo) REST API client: pull requests, branches, commit status,
//! compare and merge, as `shared/reference/gitea.md` describes them.
//!
//! Every call goes to `ORCH_GITEA_URL` + `/api/v1` with `Authorization: token <T>`
//! (the one form every version accepts). Answers are parsed leniently into typed
//! values; a non-JSON or wrong-shaped body is [`HttpError::Fatal`]. Reads are retried
//! once on a retryable failure; writes never. [`GiteaClient::merge`] returns the raw
//! answer without interpreting it: the merge guard owns that decision table.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::blocking::{Client, RequestBuilder};
use serde::Deserialize;
use url::Url;

use crate::adapters::bounds::PassBounds;
use crate::adapters::http::{self, HttpError};
use crate::adapters::rest::{self, Answer};
use crate::config::{Config, ConfigError, Secret};
use crate::core::facts::{CiContext, CiState, PrFacts};

/// The page size list calls ask for (Gitea's default `MAX_RESPONSE_ITEMS`). The admin
/// may clamp it lower: pages are counted by what they hold, never by this number.
pub const PAGE_LIMIT: usize = 50;

/// One side of a pull request (`head` or `base`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct PrRef {
    /// The branch name (`refs/pull/N/head` once a head branch is deleted).
    #[serde(rename = "ref")]
    pub ref_name: String,
    /// The live tip of that branch.
    pub sha: String,
}

/// A pull request, with the fields the pipeline reads.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct PullRequest {
    /// The index used in URLs.
    pub number: u64,
    /// `open` or `closed` (a merged PR is `closed`).
    pub state: String,
    /// The authoritative merged flag.
    #[serde(default)]
    pub merged: bool,
    /// Gitea's `mergeable` (stale while the conflict check runs); `None` when absent.
    #[serde(default)]
    pub mergeable: Option<bool>,
    /// When it was merged.
    #[serde(default)]
    pub merged_at: Option<String>,
    /// The merge commit, once merged.
    #[serde(default)]
    pub merge_commit_sha: Option<String>,
    /// The head branch and its tip.
    pub head: PrRef,
    /// The base branch and its tip.
    pub base: PrRef,
    /// WIP/draft (Gitea 1.22+ and Forgejo; `false` when absent).
    #[serde(default)]
    pub draft: bool,
    /// The title.
    #[serde(default)]
    pub title: String,
}

impl PullRequest {
    /// Returns whether the PR is open.
    pub fn is_open(&self) -> bool {
        self.state == "open"
    }

    /// Returns the facts the quality gates read.
    pub fn facts(&self) -> PrFacts {
        PrFacts {
            number: self.number,
            open: self.is_open(),
            merged: self.merged,
            mergeable: self.mergeable,
            head_sha: self.head.sha.clone(),
        }
    }
}

/// A repository as `orch doctor` reads it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RepoInfo {
    /// The repository's default branch.
    #[serde(default)]
    pub default_branch: String,
    /// Whether it is archived.
    #[serde(default)]
    pub archived: bool,
    /// Whether merge commits (style `merge`) are allowed.
    #[serde(default)]
    pub allow_merge_commits: bool,
    /// The token's user's permissions (absent: none known).
    #[serde(default)]
    pub permissions: Option<RepoPermissions>,
}

/// `permissions` of a repository answer: what the token's user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct RepoPermissions {
    /// Admin.
    #[serde(default)]
    pub admin: bool,
    /// Push (write).
    #[serde(default)]
    pub push: bool,
    /// Pull (read).
    #[serde(default)]
    pub pull: bool,
}

/// One page of open pull requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullPage {
    /// The PRs of this page.
    pub pulls: Vec<PullRequest>,
    /// Whether another page should be read.
    pub more: bool,
}

/// Whether a listing goes on after a page of `got` items, `seen` items read in all
/// (this page included), when the server said `total` (`X-Total-Count`): an empty page
/// ends it; the total, when sent, ends it once reached; without one, only an empty page
/// does. Never an assumed page size: Gitea clamps `limit` to `[api]
/// MAX_RESPONSE_ITEMS`, which an admin may set below what was asked.
fn more_pages(got: usize, seen: usize, total: Option<usize>) -> bool {
    got > 0 && total.is_none_or(|t| seen < t)
}

fn total_count(answer: &Answer) -> Option<usize> {
    answer
        .header("x-total-count")
        .and_then(|v| v.trim().parse().ok())
}

/// What creating a branch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BranchOutcome {
    /// 201: created.
    Created,
    /// 409: a branch (or a conflicting name) already exists; success for callers.
    AlreadyExists,
}

/// The combined CI status of a ref.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CombinedStatus {
    /// The verdict over every context ([`CiState::from_contexts`]); no context is [`CiState::None`].
    pub state: CiState,
    /// The commit it is about (empty when nothing was reported).
    pub sha: String,
    /// The number of contexts read (every page).
    pub total_count: u64,
    /// How many pages (requests) it took.
    pub pages: usize,
    /// The contexts that fail the verdict (`error`, `failure`), with their description and
    /// target URL: the evidence a developer sent back for red CI reads.
    pub failing: Vec<CiContext>,
}

#[derive(Deserialize)]
struct RawCombined {
    #[serde(default)]
    sha: Option<String>,
    #[serde(default)]
    statuses: Option<Vec<RawStatus>>,
}

#[derive(Deserialize)]
struct RawStatus {
    /// The state (Gitea's key is `status`).
    #[serde(default)]
    status: String,
    #[serde(default)]
    context: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    target_url: Option<String>,
}

#[derive(Deserialize)]
struct RawCompare {
    total_commits: u64,
}

/// The merge request body: style, the head the pipeline validated, no branch deletion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeRequest {
    /// `Do`: `merge`, `rebase`, `squash`, ...
    pub style: String,
    /// The expected PR head SHA (Gitea answers 409 `head out of date` if it moved).
    pub head_commit_id: String,
    /// Sent explicitly (Gitea 1.25+ uses the repo default when it is omitted).
    pub delete_branch_after_merge: bool,
    /// The merge commit title; `None` lets Gitea choose.
    pub title: Option<String>,
}

impl MergeRequest {
    /// A plain merge commit pinned to `head_commit_id`, keeping the head branch.
    pub fn merge_pinned(head_commit_id: &str, title: Option<String>) -> MergeRequest {
        MergeRequest {
            style: "merge".into(),
            head_commit_id: head_commit_id.into(),
            delete_branch_after_merge: false,
            title,
        }
    }

    /// Returns the JSON body in the swagger spellings every version accepts.
    pub fn body(&self) -> serde_json::Value {
        let mut body = serde_json::json!({
            "Do": self.style,
            "head_commit_id": self.head_commit_id,
            "delete_branch_after_merge": self.delete_branch_after_merge,
            "force_merge": false,
            "merge_when_checks_succeed": false,
        });
        if let Some(t) = &self.title {
            body["MergeTitleField"] = serde_json::Value::String(t.clone());
        }
        body
    }
}

/// The raw answer to a merge call, uninterpreted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeResponse {
    /// The HTTP status (200 merged; 404/405/409/423/... see gitea.md §4.3).
    pub status: u16,
    /// The body's `message`, when the body is the standard error object.
    pub message: Option<String>,
    /// The body as received (at most 2000 chars; the 409 conflict body has no message).
    pub body: String,
    /// `Retry-After`, when sent.
    pub retry_after: Option<std::time::Duration>,
}

#[derive(Deserialize)]
struct MessageOnly {
    #[serde(default)]
    message: Option<String>,
}

/// A Gitea API client.
#[derive(Debug, Clone)]
pub struct GiteaClient {
    http: Client,
    /// A whole-call timeout replacing the client's (see `with_timeout`).
    timeout: Option<Duration>,
    /// The pass's page cap and deadline (see `with_bounds`), shared by clones.
    bounds: Arc<PassBounds>,
    /// `ORCH_GITEA_URL` + `/api/v1`.
    base: Url,
    token: Secret,
    /// Set once compare by SHA answered 404 (Gitea ≤ 1.22.x, Forgejo ≤ v8): later
    /// [`GiteaClient::commits_ahead`] calls of this client (and its clones) go
    /// straight to the PR's commit list.
    no_sha_compare: Arc<AtomicBool>,
}

impl GiteaClient {
    /// Builds the client from `ORCH_GITEA_URL`, `ORCH_GITEA_TOKEN` and the timeouts.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the missing setting, or the HTTP client's construction
    /// error.
    pub fn from_config(config: &Config) -> anyhow::Result<GiteaClient> {
        let s = &config.settings;
        let url = ConfigError::require(&s.gitea_url, "ORCH_GITEA_URL", "required to call Gitea")?;
        let token =
            ConfigError::require(&s.gitea_token, "ORCH_GITEA_TOKEN", "required to call Gitea")?;
        Ok(GiteaClient::new(http::client(s)?, &url, token))
    }

    /// Builds the client from its parts.
    pub fn new(http: Client, gitea_url: &Url, token: Secret) -> GiteaClient {
        GiteaClient {
            http,
            timeout: None,
            bounds: Arc::new(PassBounds::default()),
            base: rest::url(gitea_url, &["api", "v1"], false),
            token,
            no_sha_compare: Arc::new(AtomicBool::new(false)),
        }
    }

    rest::per_call_timeout!(GiteaClient);

    fn repo_url(&self, repo: &str, rest_of_path: &[&str]) -> Result<Url, HttpError> {
        let Some((owner, name)) = repo.split_once('/') else {
            return Err(HttpError::Fatal(format!(
                "gitea: repository {repo:?} is not owner/name"
            )));
        };
        let mut segs = vec!["repos", owner, name];
        segs.extend_from_slice(rest_of_path);
        Ok(rest::url(&self.base, &segs, false))
    }

    fn auth(&self) -> String {
        format!("token {}", self.token.expose())
    }

    fn authorised(&self, req: RequestBuilder) -> RequestBuilder {
        req.header("Authorization", self.auth())
    }

    /// `orch doctor`'s read of `GET /user`: the status whatever it is, and the login
    /// on a 200.
    ///
    /// # Errors
    /// [`HttpError::Retryable`] without an answer.
    pub fn probe_user(&self) -> Result<(u16, Option<String>), HttpError> {
        #[derive(Deserialize)]
        struct User {
            #[serde(default)]
            login: Option<String>,
        }
        let what = "gitea get user";
        let url = rest::url(&self.base, &["user"], false);
        let answer = self.send_get(url, what)?;
        let login = (answer.status == 200)
            .then(|| answer.parse::<User>(what).ok().and_then(|u| u.login))
            .flatten();
        Ok((answer.status, login))
    }

    /// `orch doctor`'s read of `GET /version`: the version string on a 200.
    ///
    /// # Errors
    /// [`HttpError::Retryable`] without an answer.
    pub fn probe_version(&self) -> Result<Option<String>, HttpError> {
        #[derive(Deserialize)]
        struct Version {
            #[serde(default)]
            version: Option<String>,
        }
        let what = "gitea get version";
        let url = rest::url(&self.base, &["version"], false);
        let answer = self.send_get(url, what)?;
        if answer.status != 200 {
            return Ok(None);
        }
        Ok(answer.parse::<Version>(what).ok().and_then(|v| v.version))
    }

    /// `orch doctor`'s read of a repository (`GET /repos/{owner}/{name}`): the status
    /// whatever it is, and the fields doctor judges on a 200.
    ///
    /// # Errors
    /// [`HttpError::Retryable`] without an answer; a wrong-shaped 200 is fatal.
    pub fn probe_repo(&self, repo: &str) -> Result<(u16, Option<RepoInfo>), HttpError> {
        let what = format!("gitea get repository {repo}");
        let url = self.repo_url(repo, &[])?;
        let answer = self.send_get(url, &what)?;
        if answer.status != 200 {
            return Ok((answer.status, None));
        }
        Ok((200, Some(answer.parse(&what)?)))
    }

    /// Returns the tip SHA of `branch`, `None` when there is no such branch.
    ///
    /// # Errors
    /// The call's [`HttpError`] class for any answer but 200 and 404.
    pub fn branch_tip(&self, repo: &str, branch: &str) -> Result<Option<String>, HttpError> {
        #[derive(Deserialize)]
        struct Commit {
            id: String,
        }
        #[derive(Deserialize)]
        struct Branch {
            commit: Commit,
        }
        let what = format!("gitea get branch {branch} in {repo}");
        let mut segs = vec!["branches"];
        segs.extend(branch.split('/'));
        let url = self.repo_url(repo, &segs)?;
        let answer = self.get(&url, &[], &[200, 404], &what)?;
        if answer.status == 404 {
            return Ok(None);
        }
        Ok(Some(answer.parse::<Branch>(&what)?.commit.id))
    }

    /// Returns whether `compare/{base}...{sha}` answers (Gitea 1.23+, Forgejo v9+) or
    /// 404s (older versions refuse SHAs, or have no compare). Read-only.
    ///
    /// # Errors
    /// The call's [`HttpError`] class for any answer but 200 and 404.
    pub fn compares_by_sha(&self, repo: &str, base: &str, sha: &str) -> Result<bool, HttpError> {
        let (answer, _) = self.compare(repo, base, sha)?;
        Ok(answer.status == 200)
    }

    /// One GET sent once (doctor's probes judge every status themselves).
    fn send_get(&self, url: Url, what: &str) -> Result<Answer, HttpError> {
        let req = self
            .timed(self.http.get(url))
            .header("Authorization", self.auth())
            .header("Accept", "application/json");
        rest::send(req, what)
    }

    /// Returns one pull request.
    ///
    /// # Errors
    /// The call's [`HttpError`] class (404 is fatal); a wrong-shaped answer is fatal.
    pub fn get_pull(&self, repo: &str, number: u64) -> Result<PullRequest, HttpError> {
        let what = format!("gitea get pull {repo}#{number}");
        let n = number.to_string();
        let url = self.repo_url(repo, &["pulls", &n])?;
        self.get(&url, &[], &[200], &what)?.parse(&what)
    }

    /// Returns page `page` (1-based) of the open pull requests (`limit=50`, which the
    /// server may clamp lower), `seen` being how many the earlier pages held; `more` is
    /// false on an empty page or once `X-Total-Count` is reached.
    ///
    /// # Errors
    /// The call's [`HttpError`] class; a wrong-shaped answer is fatal.
    pub fn list_open_pulls_page(
        &self,
        repo: &str,
        page: usize,
        seen: usize,
    ) -> Result<PullPage, HttpError> {
        let what = format!("gitea list open pulls of {repo} page {page}");
        let url = self.repo_url(repo, &["pulls"])?;
        let (page_s, limit_s) = (page.to_string(), PAGE_LIMIT.to_string());
        let query = [
            ("state", "open"),
            ("limit", limit_s.as_str()),
            ("page", page_s.as_str()),
        ];
        let answer = self.get(&url, &query, &[200], &what)?;
        let pulls: Vec<PullRequest> = answer.parse(&what)?;
        let more = more_pages(pulls.len(), seen + pulls.len(), total_count(&answer));
        Ok(PullPage { pulls, more })
    }

    /// Returns every open pull request, page by page.
    ///
    /// # Errors
    /// As [`GiteaClient::list_open_pulls_page`].
    pub fn list_open_pulls(&self, repo: &str) -> Result<Vec<PullRequest>, HttpError> {
        self.list_open_pulls_counting(repo, &mut 0)
    }

    /// [`GiteaClient::list_open_pulls`], adding each page asked for (answered or not) to
    /// `requests`.
    ///
    /// # Errors
    /// As [`GiteaClient::list_open_pulls_page`]; past the page cap
    /// (`ORCH_LIST_MAX_PAGES`), the cap's error.
    pub fn list_open_pulls_counting(
        &self,
        repo: &str,
        requests: &mut i64,
    ) -> Result<Vec<PullRequest>, HttpError> {
        let mut all = Vec::new();
        for page in 1..=self.bounds.max_pages {
            *requests += 1;
            let p = self.list_open_pulls_page(repo, page, all.len())?;
            all.extend(p.pulls);
            if !p.more {
                return Ok(all);
            }
        }
        Err(self
            .bounds
            .page_cap_hit(&format!("gitea list open pulls of {repo}")))
    }

    /// Returns the open pull request whose head branch is `branch`, reading pages only
    /// until it is found.
    ///
    /// # Errors
    /// As [`GiteaClient::list_open_pulls_page`].
    pub fn find_open_pull_by_head(
        &self,
        repo: &str,
        branch: &str,
    ) -> Result<Option<PullRequest>, HttpError> {
        let mut seen = 0;
        for page in 1..=self.bounds.max_pages {
            let p = self.list_open_pulls_page(repo, page, seen)?;
            seen += p.pulls.len();
            let more = p.more;
            if let Some(pr) = p.pulls.into_iter().find(|pr| pr.head.ref_name == branch) {
                return Ok(Some(pr));
            }
            if !more {
                return Ok(None);
            }
        }
        // Not found within the cap is not "no PR": the listing is incomplete.
        Err(self
            .bounds
            .page_cap_hit(&format!("gitea list open pulls of {repo}")))
    }

    /// Creates `new_branch` from `old_ref` (a branch, tag or SHA). 409 is
    /// [`BranchOutcome::AlreadyExists`]. Never retried.
    ///
    /// # Errors
    /// The call's [`HttpError`] class: 404 (old branch missing), 422 (bad name), 423
    /// (archived) are fatal; 500 (e.g. an unknown `old_ref_name`) is retryable.
    pub fn create_branch(
        &self,
        repo: &str,
        new_branch: &str,
        old_ref: &str,
    ) -> Result<BranchOutcome, HttpError> {
        let what = format!("gitea create branch {new_branch} in {repo}");
        let url = self.repo_url(repo, &["branches"])?;
        let req = self
            .timed(self.http.post(url))
            .header("Authorization", self.auth())
            .json(&serde_json::json!({
                "new_branch_name": new_branch,
                "old_ref_name": old_ref,
            }));
        let answer = rest::send(req, &what)?.expect(&[201, 409], &what)?;
        Ok(if answer.status == 201 {
            BranchOutcome::Created
        } else {
            BranchOutcome::AlreadyExists
        })
    }

    /// Returns whether `branch` exists (`GET .../branches/{branch}`: 200 yes, 404 no).
    ///
    /// # Errors
    /// The call's [`HttpError`] class for any other answer (401, 403, 5xx, ...).
    pub fn branch_exists(&self, repo: &str, branch: &str) -> Result<bool, HttpError> {
        let what = format!("gitea get branch {branch} in {repo}");
        let mut segs = vec!["branches"];
        segs.extend(branch.split('/'));
        let url = self.repo_url(repo, &segs)?;
        Ok(self.get(&url, &[], &[200, 404], &what)?.status == 200)
    }

    /// Deletes `branch` (`DELETE .../branches/{branch}`): `true` when it was deleted
    /// (204), `false` when it was not there (404). Never retried.
    ///
    /// # Errors
    /// The call's [`HttpError`] class for any other answer (403 default or protected
    /// branch, 423 archived, 5xx, no answer).
    pub fn delete_branch(&self, repo: &str, branch: &str) -> Result<bool, HttpError> {
        let what = format!("gitea delete branch {branch} in {repo}");
        let mut segs = vec!["branches"];
        segs.extend(branch.split('/'));
        let url = self.repo_url(repo, &segs)?;
        let req = self
            .timed(self.http.delete(url))
            .header("Authorization", self.auth());
        Ok(rest::send(req, &what)?.expect(&[204, 404], &what)?.status == 204)
    }

    /// Returns the CI verdict of `git_ref` (prefer a SHA; branch names with `/` are
    /// sent encoded as one segment), reading every page of contexts and deciding with
    /// [`CiState::from_contexts`] rather than Gitea's combined `state`, which covers one page and
    /// differs between versions. An unknown ref is "no CI" on every version: Gitea
    /// 1.24+ answers 404, older versions and Forgejo an empty 200.
    ///
    /// # Errors
    /// The call's [`HttpError`] class; a wrong-shaped answer is fatal.
    pub fn combined_status(&self, repo: &str, git_ref: &str) -> Result<CombinedStatus, HttpError> {
        let what = format!("gitea combined status of {git_ref} in {repo}");
        let url = self.repo_url(repo, &["commits", git_ref, "status"])?;
        let limit = PAGE_LIMIT.to_string();
        let mut states: Vec<String> = Vec::new();
        let mut failing: Vec<CiContext> = Vec::new();
        let mut sha = String::new();
        let mut pages = 0;
        loop {
            if pages == self.bounds.max_pages {
                // A verdict from some of the contexts could be a false green.
                return Err(self.bounds.page_cap_hit(&what));
            }
            pages += 1;
            let page = pages;
            let page_s = page.to_string();
            let query = [("limit", limit.as_str()), ("page", page_s.as_str())];
            let answer = self.get(&url, &query, &[200, 404], &what)?;
            if answer.status == 404 {
                break;
            }
            let raw: RawCombined = answer.parse(&what)?;
            let got = raw.statuses.unwrap_or_default();
            if sha.is_empty() {
                sha = raw.sha.unwrap_or_default();
            }
            let n = got.len();
            for s in got {
                let c = CiContext {
                    context: s.context.unwrap_or_default(),
                    state: s.status,
                    description: s.description.unwrap_or_default(),
                    target_url: s.target_url.unwrap_or_default(),
                };
                states.push(c.state.clone());
                if c.is_failing() {
                    failing.push(c);
                }
            }
            if !more_pages(n, states.len(), total_count(&answer)) {
                break;
            }
        }
        Ok(CombinedStatus {
            state: CiState::from_contexts(states.iter().map(String::as_str)),
            sha,
            total_count: u64::try_from(states.len()).unwrap_or(u64::MAX),
            pages,
            failing,
        })
    }

    /// Returns how many commits `head` has that `base` lacks (`compare/base...head`).
    ///
    /// # Errors
    /// The call's [`HttpError`] class; a wrong-shaped answer is fatal.
    pub fn compare_total_commits(
        &self,
        repo: &str,
        base: &str,
        head: &str,
    ) -> Result<u64, HttpError> {
        let (answer, what) = self.compare(repo, base, head)?;
        let raw: RawCompare = answer.expect(&[200], &what)?.parse(&what)?;
        Ok(raw.total_commits)
    }

    /// `compare/{base}...{head}`, answered 200 or 404, and what it was.
    fn compare(&self, repo: &str, base: &str, head: &str) -> Result<(Answer, String), HttpError> {
        let what = format!("gitea compare {base}...{head} in {repo}");
        // The route takes the rest of the path, so `/` in branch names stays literal.
        let spec = format!("{base}...{head}");
        let mut segs = vec!["compare"];
        segs.extend(spec.split('/'));
        let url = self.repo_url(repo, &segs)?;
        let query = [("files", "false"), ("verification", "false")];
        let answer = self.get(&url, &query, &[200, 404], &what)?;
        Ok((answer, what))
    }

    /// Returns how many commits PR `number`'s head (`head`, a SHA) has that its base
    /// branch `base` lacks: `compare/{base}...{head}` where the version compares SHAs
    /// (Gitea 1.23+, Forgejo v9+); where it answers 404 (Gitea 1.22.x and Forgejo v8
    /// take branches only, earlier versions have no compare), the PR's commit list
    /// (`pulls/{n}/commits`, which Gitea computes against the live base branch for an
    /// unmerged PR), counted by its `X-Total-Count`. After one such 404 this client
    /// asks the commit list directly.
    ///
    /// # Errors
    /// The call's [`HttpError`] class; a commit list without `X-Total-Count` is fatal.
    pub fn commits_ahead(
        &self,
        repo: &str,
        number: u64,
        base: &str,
        head: &str,
    ) -> Result<u64, HttpError> {
        if !self.no_sha_compare.load(Ordering::Relaxed) {
            let (answer, what) = self.compare(repo, base, head)?;
            if answer.status != 404 {
                return Ok(answer.parse::<RawCompare>(&what)?.total_commits);
            }
            log::info!("{what}: HTTP 404 (no compare by SHA): using the PR's commit list");
            self.no_sha_compare.store(true, Ordering::Relaxed);
        }
        let what = format!("gitea commits of {repo}#{number}");
        let n = number.to_string();
        let url = self.repo_url(repo, &["pulls", &n, "commits"])?;
        let query = [
            ("limit", "1"),
            ("verification", "false"),
            ("files", "false"),
        ];
        let answer = self.get(&url, &query, &[200], &what)?;
        total_count(&answer)
            .and_then(|t| u64::try_from(t).ok())
            .ok_or_else(|| HttpError::Fatal(format!("{what}: no X-Total-Count")))
    }

    /// Returns whether this client has seen compare by SHA refused (see
    /// [`GiteaClient::commits_ahead`]).
    pub fn compare_by_sha_refused(&self) -> bool {
        self.no_sha_compare.load(Ordering::Relaxed)
    }

    /// Returns whether the PR is merged (`GET .../pulls/N/merge`: 204 yes, 404 no or no
    /// such PR).
    ///
    /// # Errors
    /// The call's [`HttpError`] class for any other answer.
    pub fn is_merged(&self, repo: &str, number: u64) -> Result<bool, HttpError> {
        let what = format!("gitea is-merged {repo}#{number}");
        let n = number.to_string();
        let url = self.repo_url(repo, &["pulls", &n, "merge"])?;
        Ok(self.get(&url, &[], &[204, 404], &what)?.status == 204)
    }

    /// Asks Gitea to merge the PR and returns its raw answer, whatever the status.
    /// Never retried. `Err` only when there was no answer (connect failure, timeout, a
    /// lost answer: the merge may or may not have happened) or `repo` is malformed.
    ///
    /// # Errors
    /// [`HttpError::Retryable`] for transport failures.
    pub fn merge(
        &self,
        repo: &str,
        number: u64,
        request: &MergeRequest,
    ) -> Result<MergeResponse, HttpError> {
        let what = format!("gitea merge {repo}#{number}");
        let n = number.to_string();
        let url = self.repo_url(repo, &["pulls", &n, "merge"])?;
        let req = self
            .timed(self.http.post(url))
            .header("Authorization", self.auth())
            .json(&request.body());
        let answer = rest::send(req, &what)?;
        let message = serde_json::from_str::<MessageOnly>(&answer.body)
            .ok()
            .and_then(|m| m.message);
        Ok(MergeResponse {
            status: answer.status,
            message,
            retry_after: answer
                .header("retry-after")
                .and_then(http::parse_retry_after),
            body: answer.body.chars().take(2000).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_without_context_description_or_url_still_reads() {
        // Gitea sends `null` or leaves keys out on statuses some CIs post.
        let raw: RawCombined = serde_json::from_str(
            r#"{"sha": "abc", "statuses": [
                {"status": "failure", "context": null, "target_url": null},
                {"status": "error"},
                {"status": "success", "context": "ci/docs", "description": "ok", "target_url": "https://x/1"}
            ]}"#,
        )
        .unwrap();
        let got = raw.statuses.unwrap();
        assert_eq!(got.len(), 3);
        assert!(got[0].context.is_none() && got[0].target_url.is_none());
        assert!(got[1].description.is_none());
        assert_eq!(got[2].target_url.as_deref(), Some("https://x/1"));
        // A wrong-shaped field is a parse error (the call's fatal class), not a guess.
        assert!(serde_json::from_str::<RawCombined>(
            r#"{"statuses": [{"status": "failure", "target_url": 7}]}"#
        )
        .is_err());
    }

    #[test]
    fn with_timeout_bounds_each_call_below_the_clients_own_timeout() {
        // A server that takes the connection and never answers.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut layers = crate::config::Layers::default();
        for (k, v) in [
            (
                "ORCH_GITEA_URL",
                format!("http://{}", silent.local_addr().unwrap()),
            ),
            ("ORCH_GITEA_TOKEN", "t".into()),
            ("ORCH_HTTP_TIMEOUT_S", "120".into()),
        ] {
            layers.env.insert(k.into(), v);
        }
        let config = Config::from_parts(None, None, layers).unwrap();
        let client = GiteaClient::from_config(&config).unwrap();
        let started = std::time::Instant::now();
        let err = client
            .with_timeout(Duration::from_millis(100))
            .branch_exists("acme/orch", "main")
            .unwrap_err();
        assert!(matches!(err, HttpError::Retryable(_)), "{err}");
        // Two attempts (a read is retried once) of 100 ms, not of 120 s.
        assert!(started.elapsed() < Duration::from_secs(30), "{err}");
    }

    #[test]
    fn pages_are_counted_by_what_they_held() {
        // A clamp of 20 under a total of 45: pages of 20, 20, 5.
        assert!(more_pages(20, 20, Some(45)));
        assert!(more_pages(20, 40, Some(45)));
        assert!(!more_pages(5, 45, Some(45)));
        // Without a total only an empty page ends the listing.
        assert!(more_pages(20, 20, None));
        assert!(!more_pages(0, 20, None));
        assert!(!more_pages(0, 0, Some(45)));
    }

    #[test]
    fn merge_body_uses_the_swagger_spellings() {
        let b = MergeRequest::merge_pinned("abc", Some("Merge #7".into())).body();
        assert_eq!(b["Do"], "merge");
        assert_eq!(b["head_commit_id"], "abc");
        assert_eq!(b["delete_branch_after_merge"], false);
        assert_eq!(b["MergeTitleField"], "Merge #7");
        let b = MergeRequest::merge_pinned("abc", None).body();
        assert!(b.get("MergeTitleField").is_none());
    }

    #[test]
    fn pulls_parse_leniently_and_give_gate_facts() {
        let pr: PullRequest = serde_json::from_value(serde_json::json!({
            "number": 7, "state": "open", "merged": false, "mergeable": null,
            "head": {"ref": "task/ENG-1", "sha": "h", "label": "x"},
            "base": {"ref": "main", "sha": "b"}, "extra": {"a": 1}
        }))
        .unwrap();
        assert_eq!(pr.mergeable, None);
        assert_eq!(
            pr.facts(),
            PrFacts {
                number: 7,
                open: true,
                merged: false,
                mergeable: None,
                head_sha: "h".into()
            }
        );
        assert!(serde_json::from_value::<PullRequest>(serde_json::json!({"number": 7})).is_err());
    }
}
