//! A loopback stand-in of Gitea's REST API (`/api/v1`), built on [`Server`]: an
//! in-memory set of repositories with branches, pull requests and commit statuses,
//! seeded by code or by a YAML/JSON seed file, answering in the shapes of
//! `shared/reference/samples/gitea/`.
//!
//! What it models (gitea.md): `Authorization: token|Bearer` auth (bad token → 401 with
//! the version's body; anonymous → 404 on a private repo, 401 `token is required` on a
//! write to a public one), GET pull, open-PR lists with `X-Total-Count`/`Link` and
//! `limit` clamped to `[api] MAX_RESPONSE_ITEMS`, a PR's commit list, branch creation
//! (201/404/409/422/423/500), combined status per version and paged, compare (by SHA,
//! by branch only as Gitea 1.22.x / Forgejo v8, or absent: [`CompareSupport`]), is-merged
//! (204/404), status creation, and merge following §4: the check order, the 1.25+ /
//! legacy / ≤1.16 answers for an already merged PR, 404 for closed unmerged, 405 for
//! WIP / not mergeable / style not allowed / not allowed, 409 `head out of date`, 423
//! archived, 422 without `Do`. A successful merge really changes the model (merged,
//! closed, `merge_commit_sha`, base tip moves). `GET /version` (`{"version": ...}` by
//! version mode) and `GET /user` (the token's user; 401 without a valid token) answer
//! as Gitea's do, and a repository's `permissions.push` can be turned off
//! ([`GiteaStandin::set_push_permission`]). Test failures are scripted on the
//! [`Server`]; [`GiteaStandin::merge_calls`] counts merge attempts.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::standin::server::{Recorded, Reply, Server};

/// The token a stand-in accepts unless told otherwise.
pub const DEFAULT_TOKEN: &str = "gitea-standin-token";

/// Which Gitea answers the stand-in gives where versions differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum GiteaVersion {
    /// Gitea 1.25+ / main: `not found` bodies, "The PR is already merged".
    #[serde(rename = "1.25")]
    Current,
    /// Gitea 1.17-1.24 and Forgejo: localised 404 text, empty already-merged message,
    /// worst-state combined status, all-empty status object for unknown refs.
    #[serde(rename = "1.24")]
    Legacy,
    /// Gitea ≤ 1.16: merging a merged PR answers 404 (closed check first).
    #[serde(rename = "1.16")]
    V1_16,
}

impl GiteaVersion {
    /// What `GET /api/v1/version` answers for this version.
    pub fn server_version(self) -> &'static str {
        match self {
            GiteaVersion::Current => "1.25.2",
            GiteaVersion::Legacy => "1.24.6",
            GiteaVersion::V1_16 => "1.16.9",
        }
    }
}

/// How far a version's `compare/{base}...{head}` route goes (gitea.md §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum CompareSupport {
    /// Gitea 1.23+ and Forgejo v9+: branches, tags and commit SHAs.
    #[default]
    #[serde(rename = "sha")]
    Full,
    /// Gitea 1.22.x and Forgejo v8: branches and tags only; a SHA answers 404.
    #[serde(rename = "branches")]
    BranchesOnly,
    /// Gitea 1.21 and Forgejo v7: no compare route at all (404).
    #[serde(rename = "none")]
    Absent,
}

#[derive(Debug, Clone)]
struct Pull {
    number: u64,
    id: u64,
    title: String,
    head_ref: String,
    /// The head tip when the head branch no longer exists.
    head_sha: String,
    base_ref: String,
    open: bool,
    merged: bool,
    mergeable: bool,
    draft: bool,
    merged_at: Option<String>,
    merge_commit_sha: Option<String>,
    closed_at: Option<String>,
}

#[derive(Debug, Clone)]
struct Status {
    id: u64,
    sha: String,
    state: String,
    context: String,
    description: String,
    target_url: String,
}

#[derive(Debug, Clone)]
struct Repo {
    id: u64,
    full_name: String,
    default_branch: String,
    archived: bool,
    private: bool,
    can_merge: bool,
    /// `permissions.push` of the token's user.
    push: bool,
    allowed_styles: Vec<String>,
    branches: BTreeMap<String, String>,
    pulls: BTreeMap<u64, Pull>,
    statuses: Vec<Status>,
    /// Explicit `compare base...head` answers, by (base, head).
    ahead: BTreeMap<(String, String), u64>,
    /// The repository's "delete branch after merge" default (a merge body without
    /// `delete_branch_after_merge` follows it on 1.25+).
    delete_branch_after_merge: bool,
    /// Files committed through the contents API, by (branch, path).
    files: BTreeMap<(String, String), Vec<u8>>,
}

impl Repo {
    fn head_sha(&self, p: &Pull) -> String {
        self.branches
            .get(&p.head_ref)
            .cloned()
            .unwrap_or_else(|| p.head_sha.clone())
    }

    fn resolve(&self, r: &str) -> Option<String> {
        if let Some(sha) = self.branches.get(r) {
            return Some(sha.clone());
        }
        let known = self.branches.values().any(|s| s == r)
            || self.statuses.iter().any(|s| s.sha == r)
            || self
                .pulls
                .values()
                .any(|p| p.head_sha == r || p.merge_commit_sha.as_deref() == Some(r));
        known.then(|| r.to_string())
    }
}

#[derive(Debug)]
struct Model {
    url: String,
    token: String,
    version: GiteaVersion,
    repos: BTreeMap<String, Repo>,
    seq: u64,
    /// `[api] MAX_RESPONSE_ITEMS`: every `limit` is clamped to it (default 50).
    max_response_items: usize,
    /// What compare accepts.
    compare: CompareSupport,
    /// Pull request list answers as rendered, by (repository, query string): served
    /// again while nothing changed. Emptied by every change (see [`Model::changed`]).
    pull_lists: HashMap<(String, String), Reply>,
}

impl Model {
    /// Forgets every cached list answer: called on every way into the model that may
    /// change it (the test-side handle, any request but a GET), so a change is on the
    /// next list read.
    fn changed(&mut self) {
        self.pull_lists.clear();
    }

    fn swagger(&self) -> String {
        format!("{}/api/swagger", self.url)
    }

    fn error(&self, status: u16, message: &str) -> Reply {
        Reply::json(status, &json!({"message": message, "url": self.swagger()}))
    }

    fn not_found(&self) -> Reply {
        match self.version {
            GiteaVersion::Current => Reply::json(
                404,
                &json!({"errors": null, "message": "not found", "url": self.swagger()}),
            ),
            _ => Reply::json(
                404,
                &json!({"errors": [], "message": "The target couldn't be found.", "url": self.swagger()}),
            ),
        }
    }

    fn next_id(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }
}

/// Returns a deterministic 40-hex SHA for `text` (merge commits, seeded tips).
pub fn fake_sha(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))[..40].to_string()
}

/// A pull request to seed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullSeed {
    /// The index.
    pub number: u64,
    /// The title (a `WIP:` prefix makes it a draft).
    #[serde(default = "default_title")]
    pub title: String,
    /// The head branch (created at `head_sha` when missing).
    pub head: String,
    /// The head tip (default: the branch's tip, or a SHA derived from the name).
    #[serde(default)]
    pub head_sha: Option<String>,
    /// The base branch (default: the repo's default branch).
    #[serde(default)]
    pub base: Option<String>,
    /// Gitea's `mergeable` (default true).
    #[serde(default = "yes")]
    pub mergeable: bool,
    /// Already merged (default false).
    #[serde(default)]
    pub merged: bool,
    /// Closed without merge (default false).
    #[serde(default)]
    pub closed: bool,
}

fn default_title() -> String {
    "Work item".into()
}

fn yes() -> bool {
    true
}

impl PullSeed {
    /// An open, mergeable PR from `head` into the default branch.
    pub fn open(number: u64, head: &str) -> PullSeed {
        PullSeed {
            number,
            title: format!("Task branch {head}"),
            head: head.into(),
            head_sha: None,
            base: None,
            mergeable: true,
            merged: false,
            closed: false,
        }
    }

    /// Sets the head tip.
    pub fn head_sha(mut self, sha: &str) -> PullSeed {
        self.head_sha = Some(sha.into());
        self
    }

    /// Sets `mergeable`.
    pub fn mergeable(mut self, m: bool) -> PullSeed {
        self.mergeable = m;
        self
    }

    /// Marks it merged.
    pub fn merged(mut self) -> PullSeed {
        self.merged = true;
        self
    }

    /// Marks it closed without merge.
    pub fn closed(mut self) -> PullSeed {
        self.closed = true;
        self
    }

    /// Sets the title.
    pub fn title(mut self, t: &str) -> PullSeed {
        self.title = t.into();
        self
    }
}

/// A snapshot of a PR in the model, for assertions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullSnapshot {
    /// `open` or `closed`.
    pub state: String,
    /// Merged flag.
    pub merged: bool,
    /// Merge commit, once merged.
    pub merge_commit_sha: Option<String>,
    /// Head tip.
    pub head_sha: String,
}

/// A running Gitea stand-in; stops when dropped.
pub struct GiteaStandin {
    server: Server,
    model: Arc<Mutex<Model>>,
}

impl GiteaStandin {
    /// Starts an empty Gitea 1.25+ accepting `token`.
    pub fn start(token: &str) -> GiteaStandin {
        let model = Arc::new(Mutex::new(Model {
            url: String::new(),
            token: token.into(),
            version: GiteaVersion::Current,
            repos: BTreeMap::new(),
            seq: 100,
            max_response_items: 50,
            compare: CompareSupport::Full,
            pull_lists: HashMap::new(),
        }));
        let m = model.clone();
        let server = Server::start(Arc::new(move |r: &Recorded| {
            handle(&mut m.lock().expect("gitea model lock"), r)
        }));
        model.lock().expect("gitea model lock").url = server.url().to_string();
        GiteaStandin { server, model }
    }

    /// Returns the base URL (`ORCH_GITEA_URL`).
    pub fn url(&self) -> &str {
        self.server.url()
    }

    /// Returns the underlying server (scripting, recorded requests).
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// Gives up the model handle and returns the server (the model lives on in it).
    pub fn into_server(self) -> Server {
        self.server
    }

    /// The model, for reading or changing it: its cached list answers are forgotten,
    /// since the caller may change what they show.
    fn model(&self) -> MutexGuard<'_, Model> {
        let mut m = self.model.lock().expect("gitea model lock");
        m.changed();
        m
    }

    fn with_repo<T>(&self, repo: &str, f: impl FnOnce(&mut Repo) -> T) -> T {
        let mut m = self.model();
        let r = m
            .repos
            .get_mut(repo)
            .unwrap_or_else(|| panic!("add_repo({repo:?}) first"));
        f(r)
    }

    /// Switches the answers that differ between versions.
    pub fn set_version(&self, v: GiteaVersion) {
        self.model().version = v;
    }

    /// Sets the admin's `[api] MAX_RESPONSE_ITEMS` (default 50): lists answer at most
    /// this many items a page whatever `limit` asks.
    pub fn set_max_response_items(&self, n: usize) {
        self.model().max_response_items = n.max(1);
    }

    /// Sets what `compare/{base}...{head}` accepts (default: SHAs too, Gitea 1.23+).
    pub fn set_compare(&self, c: CompareSupport) {
        self.model().compare = c;
    }

    /// Adds a private repository `owner/name` whose default branch points at a SHA
    /// derived from its name.
    pub fn add_repo(&self, repo: &str, default_branch: &str) -> &Self {
        let mut m = self.model();
        let id = m.next_id();
        let mut branches = BTreeMap::new();
        branches.insert(
            default_branch.to_string(),
            fake_sha(&format!("{repo}:{default_branch}")),
        );
        m.repos.insert(
            repo.to_string(),
            Repo {
                id,
                full_name: repo.into(),
                default_branch: default_branch.into(),
                archived: false,
                private: true,
                can_merge: true,
                push: true,
                allowed_styles: [
                    "merge",
                    "rebase",
                    "rebase-merge",
                    "squash",
                    "fast-forward-only",
                ]
                .iter()
                .map(|s| (*s).to_string())
                .collect(),
                branches,
                pulls: BTreeMap::new(),
                statuses: Vec::new(),
                ahead: BTreeMap::new(),
                delete_branch_after_merge: false,
                files: BTreeMap::new(),
            },
        );
        self
    }

    /// Sets (or creates) a branch tip: a push.
    pub fn push(&self, repo: &str, branch: &str, sha: &str) -> &Self {
        self.with_repo(repo, |r| {
            r.branches.insert(branch.into(), sha.into());
        });
        self
    }

    /// Returns a branch's tip.
    pub fn branch(&self, repo: &str, branch: &str) -> Option<String> {
        self.model()
            .repos
            .get(repo)
            .and_then(|r| r.branches.get(branch).cloned())
    }

    /// Adds a pull request.
    pub fn add_pull(&self, repo: &str, seed: &PullSeed) -> &Self {
        let id = self.model().next_id();
        self.with_repo(repo, |r| {
            let base = seed
                .base
                .clone()
                .unwrap_or_else(|| r.default_branch.clone());
            let head_sha = seed
                .head_sha
                .clone()
                .or_else(|| r.branches.get(&seed.head).cloned())
                .unwrap_or_else(|| fake_sha(&format!("{}:{}", r.full_name, seed.head)));
            r.branches
                .entry(base.clone())
                .or_insert_with(|| fake_sha(&base));
            if !seed.merged {
                r.branches.insert(seed.head.clone(), head_sha.clone());
            }
            let merge_sha = seed
                .merged
                .then(|| fake_sha(&format!("merge:{}:{}", r.full_name, seed.number)));
            r.pulls.insert(
                seed.number,
                Pull {
                    number: seed.number,
                    id,
                    title: seed.title.clone(),
                    head_ref: seed.head.clone(),
                    head_sha,
                    base_ref: base,
                    open: !(seed.merged || seed.closed),
                    merged: seed.merged,
                    mergeable: seed.mergeable,
                    draft: is_wip(&seed.title),
                    merged_at: seed.merged.then(|| "2026-01-21T10:10:00Z".to_string()),
                    merge_commit_sha: merge_sha,
                    closed_at: (seed.merged || seed.closed)
                        .then(|| "2026-01-21T10:10:00Z".to_string()),
                },
            );
        });
        self
    }

    /// Sets a PR's `mergeable` (false: merge answers 405 "Please try again later").
    pub fn set_mergeable(&self, repo: &str, number: u64, mergeable: bool) {
        self.with_repo(repo, |r| {
            if let Some(p) = r.pulls.get_mut(&number) {
                p.mergeable = mergeable;
            }
        });
    }

    /// Sets the repository's "delete branch after merge" default, which a merge
    /// without `delete_branch_after_merge` in its body follows (Gitea 1.25+).
    pub fn set_delete_branch_after_merge(&self, repo: &str, delete: bool) {
        self.with_repo(repo, |r| r.delete_branch_after_merge = delete);
    }

    /// Returns the numbers of the pull requests whose head branch is `head`, oldest
    /// first (open or not).
    pub fn pulls_for(&self, repo: &str, head: &str) -> Vec<u64> {
        let m = self.model();
        m.repos.get(repo).map_or_else(Vec::new, |r| {
            r.pulls
                .values()
                .filter(|p| p.head_ref == head)
                .map(|p| p.number)
                .collect()
        })
    }

    /// Counts every `POST .../pulls/{n}/merge` request received for this repository.
    pub fn all_merge_calls(&self, repo: &str) -> usize {
        let prefix = format!("/api/v1/repos/{repo}/pulls/");
        self.server
            .requests()
            .iter()
            .filter(|r| {
                r.method == "POST" && r.path.starts_with(&prefix) && r.path.ends_with("/merge")
            })
            .count()
    }

    /// Returns a file committed through the contents API on `branch`.
    pub fn file(&self, repo: &str, branch: &str, path: &str) -> Option<Vec<u8>> {
        let m = self.model();
        m.repos
            .get(repo)?
            .files
            .get(&(branch.to_string(), path.to_string()))
            .cloned()
    }

    /// Archives (or unarchives) a repository.
    pub fn set_archived(&self, repo: &str, archived: bool) {
        self.with_repo(repo, |r| r.archived = archived);
    }

    /// Makes a repository public (anonymous reads allowed) or private.
    pub fn set_public(&self, repo: &str, public: bool) {
        self.with_repo(repo, |r| r.private = !public);
    }

    /// Sets whether the token's user may merge (false: 405 not allowed).
    pub fn set_can_merge(&self, repo: &str, can: bool) {
        self.with_repo(repo, |r| r.can_merge = can);
    }

    /// Sets `permissions.push` of the token's user on the repository (what `orch
    /// doctor` reads; the stand-in still accepts its writes).
    pub fn set_push_permission(&self, repo: &str, push: bool) {
        self.with_repo(repo, |r| r.push = push);
    }

    /// Sets the merge styles the repository allows.
    pub fn set_allowed_styles(&self, repo: &str, styles: &[&str]) {
        self.with_repo(repo, |r| {
            r.allowed_styles = styles.iter().map(|s| (*s).to_string()).collect();
        });
    }

    /// Posts a commit status (as CI would) on `sha`.
    pub fn add_status(&self, repo: &str, sha: &str, context: &str, state: &str) -> &Self {
        let id = self.model().next_id();
        self.with_repo(repo, |r| {
            r.statuses.push(Status {
                id,
                sha: sha.into(),
                state: state.into(),
                context: context.into(),
                description: format!("{context} {state}"),
                target_url: format!("https://ci.example.com/{}/{id}", r.full_name),
            });
        });
        self
    }

    /// Adds a commit status with its description and target URL as a CI would post them.
    pub fn add_status_described(
        &self,
        repo: &str,
        sha: &str,
        (context, state): (&str, &str),
        description: &str,
        target_url: &str,
    ) -> &Self {
        let id = self.model().next_id();
        self.with_repo(repo, |r| {
            r.statuses.push(Status {
                id,
                sha: sha.into(),
                state: state.into(),
                context: context.into(),
                description: description.into(),
                target_url: target_url.into(),
            });
        });
        self
    }

    /// Sets what `compare/{base}...{head}` answers for `total_commits`.
    pub fn set_ahead(&self, repo: &str, base: &str, head: &str, commits: u64) {
        self.with_repo(repo, |r| {
            r.ahead.insert((base.into(), head.into()), commits);
        });
    }

    /// Merges an open PR in the model as a merge through the API would (no request).
    pub fn merge_for_test(&self, repo: &str, number: u64) {
        let mut m = self.model();
        let rec = Recorded {
            method: "POST".into(),
            path: String::new(),
            query: String::new(),
            headers: vec![],
            body: br#"{"Do": "merge"}"#.to_vec(),
        };
        let _ = merge(&mut m, repo, &number.to_string(), &rec);
    }

    /// Returns a PR's current state in the model.
    pub fn pull(&self, repo: &str, number: u64) -> Option<PullSnapshot> {
        let m = self.model();
        let r = m.repos.get(repo)?;
        let p = r.pulls.get(&number)?;
        Some(PullSnapshot {
            state: if p.open { "open" } else { "closed" }.into(),
            merged: p.merged,
            merge_commit_sha: p.merge_commit_sha.clone(),
            head_sha: r.head_sha(p),
        })
    }

    /// Counts `POST .../pulls/{number}/merge` requests received for this PR.
    pub fn merge_calls(&self, repo: &str, number: u64) -> usize {
        let path = format!("/api/v1/repos/{repo}/pulls/{number}/merge");
        self.server
            .requests()
            .iter()
            .filter(|r| r.method == "POST" && r.path == path)
            .count()
    }

    /// Counts requests with this method (any when `None`) whose path, after
    /// `/api/v1/repos/{repo}/`, starts with `route` (e.g. `pulls`).
    pub fn count(&self, method: Option<&str>, repo: &str, route: &str) -> usize {
        self.server
            .count(method, &format!("/api/v1/repos/{repo}/{route}"))
    }

    /// Starts a stand-in from a seed (see [`GiteaSeed`]).
    pub fn from_seed(seed: &GiteaSeed) -> GiteaStandin {
        let g = GiteaStandin::start(seed.token.as_deref().unwrap_or(DEFAULT_TOKEN));
        if let Some(v) = seed.version {
            g.set_version(v);
        }
        if let Some(n) = seed.max_response_items {
            g.set_max_response_items(n);
        }
        if let Some(c) = seed.compare {
            g.set_compare(c);
        }
        for r in &seed.repos {
            g.add_repo(&r.name, &r.default_branch);
            for (b, sha) in &r.branches {
                g.push(&r.name, b, sha);
            }
            for p in &r.pulls {
                g.add_pull(&r.name, p);
            }
            for s in &r.statuses {
                let sha = g.branch(&r.name, &s.sha).unwrap_or_else(|| s.sha.clone());
                g.add_status(&r.name, &sha, &s.context, &s.state);
            }
            g.set_archived(&r.name, r.archived);
            g.set_public(&r.name, r.public);
            g.set_delete_branch_after_merge(&r.name, r.delete_branch_after_merge);
        }
        g
    }
}

/// The seed file of `orch-standin gitea SEED` (YAML or JSON).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GiteaSeed {
    /// The accepted token (default [`DEFAULT_TOKEN`]).
    #[serde(default)]
    pub token: Option<String>,
    /// `"1.25"` (default), `"1.24"` (legacy bodies) or `"1.16"`.
    #[serde(default)]
    pub version: Option<GiteaVersion>,
    /// `[api] MAX_RESPONSE_ITEMS` (default 50).
    #[serde(default)]
    pub max_response_items: Option<usize>,
    /// What compare accepts: `sha` (default), `branches` (1.22.x, Forgejo v8), `none`.
    #[serde(default)]
    pub compare: Option<CompareSupport>,
    /// The repositories.
    #[serde(default)]
    pub repos: Vec<RepoSeed>,
}

/// A repository in a seed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoSeed {
    /// `owner/name`.
    pub name: String,
    /// The default branch (default `main`).
    #[serde(default = "main_branch")]
    pub default_branch: String,
    /// Branch tips by name.
    #[serde(default)]
    pub branches: BTreeMap<String, String>,
    /// Pull requests.
    #[serde(default)]
    pub pulls: Vec<PullSeed>,
    /// Commit statuses.
    #[serde(default)]
    pub statuses: Vec<StatusSeed>,
    /// Archived (default false).
    #[serde(default)]
    pub archived: bool,
    /// Public (default false: private).
    #[serde(default)]
    pub public: bool,
    /// The "delete branch after merge" default (default false).
    #[serde(default)]
    pub delete_branch_after_merge: bool,
}

fn main_branch() -> String {
    "main".into()
}

/// A commit status in a seed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusSeed {
    /// A SHA or a branch name (resolved to its tip).
    pub sha: String,
    /// The CI context, e.g. `ci/test`.
    pub context: String,
    /// pending, success, error, failure, warning, skipped.
    pub state: String,
}

fn is_wip(title: &str) -> bool {
    let t = title.to_ascii_uppercase();
    ["WIP:", "[WIP]"].iter().any(|p| t.starts_with(p))
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn decode(seg: &str) -> String {
    let b = seg.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

enum Auth {
    Anonymous,
    Valid,
    Invalid,
}

fn auth(m: &Model, r: &Recorded) -> Auth {
    let Some(h) = r.header("authorization") else {
        return Auth::Anonymous;
    };
    let (scheme, token) = h.trim().split_once(' ').unwrap_or((h, ""));
    // Up to 1.24 (and Forgejo) the word `token` is case-sensitive; `Bearer` never is.
    let scheme_ok = match m.version {
        GiteaVersion::Current => {
            scheme.eq_ignore_ascii_case("token") || scheme.eq_ignore_ascii_case("bearer")
        }
        _ => scheme == "token" || scheme.eq_ignore_ascii_case("bearer"),
    };
    if scheme_ok && token.trim() == m.token {
        Auth::Valid
    } else {
        Auth::Invalid
    }
}

fn handle(m: &mut Model, r: &Recorded) -> Reply {
    if r.method != "GET" {
        m.changed();
    }
    let auth = auth(m, r);
    if matches!(auth, Auth::Invalid) {
        let msg = match m.version {
            GiteaVersion::Current => "invalid username, password or token",
            _ => "user does not exist [uid: 0, name: ]",
        };
        return m.error(401, msg);
    }
    match (r.method.as_str(), r.path.as_str()) {
        ("GET", "/api/v1/version") => {
            return Reply::json(200, &json!({"version": m.version.server_version()}))
        }
        ("GET", "/api/v1/user") if matches!(auth, Auth::Valid) => {
            return Reply::json(200, &user_json(m, 5, "merge-bot", "Merge Bot"))
        }
        ("GET", "/api/v1/user") => return m.error(401, "token is required"),
        _ => {}
    }
    let Some(rest) = r.path.strip_prefix("/api/v1/repos/") else {
        return m.not_found();
    };
    let segs: Vec<String> = rest.split('/').map(decode).collect();
    if segs.len() < 2 || segs[1].is_empty() {
        return m.not_found();
    }
    let repo = format!("{}/{}", segs[0], segs[1]);
    let Some(rp) = m.repos.get(&repo) else {
        return m.not_found();
    };
    let anonymous = matches!(auth, Auth::Anonymous);
    if anonymous && rp.private {
        return m.not_found();
    }
    if anonymous && r.method != "GET" {
        return m.error(401, "token is required");
    }
    let tail: Vec<&str> = segs[2..].iter().map(String::as_str).collect();
    match (r.method.as_str(), tail.as_slice()) {
        ("GET", []) => Reply::json(200, &repo_json(m, &m.repos[&repo])),
        ("POST", ["pulls"]) => create_pull(m, &repo, r),
        ("POST", ["contents", path @ ..]) if !path.is_empty() => {
            create_file(m, &repo, &path.join("/"), r)
        }
        ("GET", ["pulls"]) => {
            let key = (repo.clone(), r.query.clone());
            if let Some(reply) = m.pull_lists.get(&key) {
                return reply.clone();
            }
            let reply = list_pulls(m, &repo, r);
            m.pull_lists.insert(key, reply.clone());
            reply
        }
        ("GET", ["pulls", n]) => with_pull(m, &repo, n, |m, repo, p| {
            Reply::json(200, &pull_json(m, repo, p))
        }),
        ("GET", ["pulls", n, "commits"]) => pull_commits(m, &repo, n, r),
        ("GET", ["pulls", n, "merge"]) => match n
            .parse::<u64>()
            .ok()
            .and_then(|n| m.repos[&repo].pulls.get(&n).map(|p| p.merged))
        {
            Some(true) => Reply::empty(204),
            _ => m.not_found(),
        },
        ("POST", ["pulls", n, "merge"]) => merge(m, &repo, n, r),
        ("POST", ["branches"]) => create_branch(m, &repo, r),
        ("GET", ["branches", b @ ..]) => {
            let name = b.join("/");
            match m.repos[&repo].branches.get(&name) {
                Some(sha) => Reply::json(200, &branch_json(m, &repo, &name, sha)),
                None => m.not_found(),
            }
        }
        ("DELETE", ["branches", b @ ..]) => delete_branch(m, &repo, &b.join("/")),
        ("GET", ["commits", git_ref, "status"]) => combined_status(m, &repo, git_ref, r),
        ("POST", ["statuses", sha]) => create_status(m, &repo, sha, r),
        ("GET", ["compare", spec @ ..]) => compare(m, &repo, &spec.join("/"), r),
        _ => m.not_found(),
    }
}

/// `DELETE .../branches/{branch}`: 204 deleted; 404 no such branch; 403 the default
/// branch; 423 archived (Gitea's `DeleteBranch` handler).
fn delete_branch(m: &mut Model, repo: &str, name: &str) -> Reply {
    let rp = &m.repos[repo];
    if rp.archived {
        return m.error(423, &format!("{repo} is archived"));
    }
    if !rp.branches.contains_key(name) {
        return m.not_found();
    }
    if rp.default_branch == name {
        return m.error(403, "can not delete default branch");
    }
    m.repos
        .get_mut(repo)
        .expect("checked above")
        .branches
        .remove(name);
    Reply::empty(204)
}

fn with_pull(
    m: &mut Model,
    repo: &str,
    n: &str,
    f: impl FnOnce(&Model, &Repo, &Pull) -> Reply,
) -> Reply {
    let Ok(n) = n.parse::<u64>() else {
        return m.not_found();
    };
    let rp = &m.repos[repo];
    match rp.pulls.get(&n) {
        Some(p) => f(m, rp, p),
        None => m.not_found(),
    }
}

fn user_json(m: &Model, id: u64, login: &str, name: &str) -> Value {
    json!({
        "id": id,
        "login": login,
        "login_name": "",
        "source_id": 0,
        "full_name": name,
        "email": format!("{login}@noreply.git.example.com"),
        "avatar_url": format!("{}/avatars/{id:032}", m.url),
        "html_url": format!("{}/{login}", m.url),
        "language": "",
        "is_admin": false,
        "last_login": "0001-01-01T00:00:00Z",
        "created": "2025-03-01T09:00:00Z",
        "restricted": false,
        "active": false,
        "prohibit_login": false,
        "location": "",
        "website": "",
        "description": "",
        "visibility": "public",
        "followers_count": 0,
        "following_count": 0,
        "starred_repos_count": 0,
        "username": login,
    })
}

fn repo_json(m: &Model, r: &Repo) -> Value {
    let (owner, name) = r.full_name.split_once('/').unwrap_or(("", &r.full_name));
    let web = format!("{}/{}", m.url, r.full_name);
    let api = format!("{}/api/v1/repos/{}", m.url, r.full_name);
    let first = json!({
        "id": r.id,
        "owner": user_json(m, 2, owner, owner),
        "name": name,
        "full_name": r.full_name,
        "description": "",
        "empty": false,
        "private": r.private,
        "fork": false,
        "template": false,
        "mirror": false,
        "size": 2048,
        "language": "",
        "languages_url": format!("{api}/languages"),
        "html_url": web,
        "url": api,
        "link": "",
        "ssh_url": format!("git@127.0.0.1:{}.git", r.full_name),
        "clone_url": format!("{web}.git"),
        "original_url": "",
        "website": "",
        "stars_count": 0,
        "forks_count": 0,
        "watchers_count": 1,
        "open_issues_count": 0,
        "open_pr_counter": r.pulls.values().filter(|p| p.open).count(),
        "release_counter": 0,
        "default_branch": r.default_branch,
    });
    let rest = json!({
        "archived": r.archived,
        "created_at": "2025-03-01T09:05:00Z",
        "updated_at": "2026-01-20T08:00:00Z",
        "archived_at": "1970-01-01T00:00:00Z",
        "permissions": {"admin": false, "push": r.push, "pull": true},
        "has_code": true,
        "has_issues": true,
        "internal_tracker": {
            "enable_time_tracker": true,
            "allow_only_contributors_to_track_time": true,
            "enable_issue_dependencies": true
        },
        "has_wiki": false,
        "has_pull_requests": true,
        "has_projects": false,
        "projects_mode": "all",
        "has_releases": true,
        "has_packages": false,
        "has_actions": true,
        "ignore_whitespace_conflicts": false,
        "allow_merge_commits": r.allowed_styles.iter().any(|s| s == "merge"),
        "allow_rebase": r.allowed_styles.iter().any(|s| s == "rebase"),
        "allow_rebase_explicit": r.allowed_styles.iter().any(|s| s == "rebase-merge"),
        "allow_squash_merge": r.allowed_styles.iter().any(|s| s == "squash"),
        "allow_fast_forward_only_merge": r.allowed_styles.iter().any(|s| s == "fast-forward-only"),
        "allow_rebase_update": true,
        "allow_manual_merge": false,
        "autodetect_manual_merge": false,
        "default_delete_branch_after_merge": r.delete_branch_after_merge,
        "default_merge_style": "merge",
        "default_allow_maintainer_edit": false,
        "avatar_url": "",
        "internal": false,
        "mirror_interval": "",
        "object_format_name": "sha1",
        "mirror_updated": "0001-01-01T00:00:00Z",
        "topics": [],
        "licenses": [],
    });
    let (Value::Object(mut a), Value::Object(b)) = (first, rest) else {
        unreachable!("both halves are JSON objects")
    };
    a.extend(b);
    Value::Object(a)
}

fn pull_json(m: &Model, r: &Repo, p: &Pull) -> Value {
    let web = format!("{}/{}/pulls/{}", m.url, r.full_name, p.number);
    let head_exists = r.branches.contains_key(&p.head_ref);
    let head_ref = if head_exists {
        p.head_ref.clone()
    } else {
        format!("refs/pull/{}/head", p.number)
    };
    let base_sha = r.branches.get(&p.base_ref).cloned().unwrap_or_default();
    let repo = repo_json(m, r);
    json!({
        "id": p.id,
        "url": web,
        "number": p.number,
        "user": user_json(m, 5, "merge-bot", "Merge Bot"),
        "title": p.title,
        "body": "",
        "labels": [],
        "milestone": null,
        "assignee": null,
        "assignees": [],
        "requested_reviewers": [],
        "requested_reviewers_teams": [],
        "state": if p.open { "open" } else { "closed" },
        "draft": p.draft,
        "is_locked": false,
        "comments": 0,
        "additions": 1,
        "deletions": 0,
        "changed_files": 1,
        "html_url": web,
        "diff_url": format!("{web}.diff"),
        "patch_url": format!("{web}.patch"),
        // Gitea reports false for WIP PRs whatever the conflict check says.
        "mergeable": p.mergeable && !p.draft,
        "merged": p.merged,
        "merged_at": p.merged_at,
        "merge_commit_sha": p.merge_commit_sha,
        "merged_by": if p.merged { user_json(m, 5, "merge-bot", "Merge Bot") } else { Value::Null },
        "allow_maintainer_edit": false,
        "base": {
            "label": p.base_ref,
            "ref": p.base_ref,
            "sha": base_sha,
            "repo_id": r.id,
            "repo": repo.clone(),
        },
        "head": {
            "label": p.head_ref,
            "ref": head_ref,
            "sha": r.head_sha(p),
            "repo_id": r.id,
            "repo": repo,
        },
        "merge_base": base_sha,
        "due_date": null,
        "created_at": "2026-01-20T08:00:00Z",
        "updated_at": "2026-01-21T09:58:10Z",
        "closed_at": p.closed_at,
        "pin_order": 0,
    })
}

fn list_pulls(m: &Model, repo: &str, r: &Recorded) -> Reply {
    let state = r.param("state").unwrap_or_else(|| "open".into());
    let (limit, page) = list_options(m, r);
    let rp = &m.repos[repo];
    // Newest first, like Gitea's default sort.
    let all: Vec<&Pull> = rp
        .pulls
        .values()
        .rev()
        .filter(|p| match state.as_str() {
            "closed" => !p.open,
            "all" => true,
            _ => p.open,
        })
        .collect();
    let total = all.len();
    let start = ((page - 1) * limit).min(total);
    let end = (start + limit).min(total);
    let body: Vec<Value> = all[start..end]
        .iter()
        .map(|p| pull_json(m, rp, p))
        .collect();
    let pages = total.div_ceil(limit).max(1);
    let link = |p: usize, rel: &str| {
        format!(
            "<{}/api/v1/repos/{repo}/pulls?limit={limit}&page={p}&state={state}>; rel=\"{rel}\"",
            m.url
        )
    };
    let mut links = Vec::new();
    if page < pages {
        links.push(link(page + 1, "next"));
        links.push(link(pages, "last"));
    }
    if page > 1 {
        links.push(link(1, "first"));
        links.push(link(page - 1, "prev"));
    }
    let mut reply = Reply::json(200, &Value::Array(body))
        .with_header("X-Total-Count", &total.to_string())
        .with_header("Access-Control-Expose-Headers", "Link, X-Total-Count");
    if !links.is_empty() {
        reply = reply.with_header("Link", &links.join(","));
    }
    reply
}

/// Gitea's `GetListOptions`: `limit` <= 0 → `DEFAULT_PAGING_NUM` (30, clamped too);
/// above `MAX_RESPONSE_ITEMS` → that; `page` < 1 → 1.
fn list_options(m: &Model, r: &Recorded) -> (usize, usize) {
    let max = m.max_response_items;
    let limit = match r.param("limit").and_then(|l| l.parse::<i64>().ok()) {
        Some(l) if l > 0 => usize::try_from(l).unwrap_or(max).min(max),
        _ => 30.min(max),
    };
    let page = r
        .param("page")
        .and_then(|p| p.parse::<i64>().ok())
        .map_or(1, |p| usize::try_from(p.max(1)).unwrap_or(1));
    (limit, page)
}

/// `GET .../pulls/{n}/commits`: the commits the PR's head has that its base branch
/// lacks (an unmerged PR is compared with the live base branch), paged, with
/// `X-Total-Count` (Gitea's `GetPullRequestCommits`).
fn pull_commits(m: &Model, repo: &str, n: &str, r: &Recorded) -> Reply {
    let rp = &m.repos[repo];
    let Some(p) = n.parse::<u64>().ok().and_then(|n| rp.pulls.get(&n)) else {
        return m.not_found();
    };
    let head_sha = rp.head_sha(p);
    let base_sha = rp.branches.get(&p.base_ref).cloned().unwrap_or_default();
    let n = rp
        .ahead
        .get(&(p.base_ref.clone(), head_sha.clone()))
        .copied()
        .unwrap_or_else(|| ahead(rp, &p.base_ref, &p.head_ref, &base_sha));
    let total = usize::try_from(n).unwrap_or(0);
    let (limit, page) = list_options(m, r);
    let start = ((page - 1) * limit).min(total);
    let end = (start + limit).min(total);
    let body: Vec<Value> = (start..end)
        .map(|i| {
            let sha = if i + 1 == total {
                head_sha.clone()
            } else {
                fake_sha(&format!("{head_sha}~{}", total - 1 - i))
            };
            commit_json(m, repo, &sha, &base_sha, false)
        })
        .collect();
    Reply::json(200, &Value::Array(body)).with_header("X-Total-Count", &total.to_string())
}

/// How many commits `head` (at `head_sha`) has that `base` lacks: as set by
/// [`GiteaStandin::set_ahead`], else none once a PR from it merged or when the tips are
/// equal, else one.
fn ahead(rp: &Repo, base: &str, head: &str, base_sha: &str) -> u64 {
    let head_sha = rp.resolve(head).unwrap_or_else(|| head.to_string());
    let merged_in = rp
        .pulls
        .values()
        .any(|p| p.merged && p.head_ref == head && p.base_ref == base);
    rp.ahead
        .get(&(base.to_string(), head.to_string()))
        .copied()
        .unwrap_or(u64::from(base_sha != head_sha && !merged_in))
}

fn branch_json(m: &Model, repo: &str, name: &str, sha: &str) -> Value {
    let person =
        json!({"name": "Merge Bot", "email": "merge-bot@example.com", "username": "merge-bot"});
    json!({
        "name": name,
        "commit": {
            "id": sha,
            "message": "Seeded commit\n",
            "url": format!("{}/{repo}/commit/{sha}", m.url),
            "author": person.clone(),
            "committer": person,
            "verification": null,
            "timestamp": "2026-01-21T09:40:00Z",
            "added": null,
            "removed": null,
            "modified": null,
        },
        "protected": false,
        "required_approvals": 0,
        "enable_status_check": false,
        "status_check_contexts": [],
        "user_can_push": true,
        "user_can_merge": true,
        "effective_branch_protection_name": "",
    })
}

fn valid_branch_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 100
        && !n.starts_with(['-', '/'])
        && !n.ends_with(['/', '.'])
        && !n.ends_with(".lock")
        && !n.contains("..")
        && !n.contains("//")
        && !n.contains("@{")
        && !n.chars().any(|c| c.is_control() || " ~^:?*[\\".contains(c))
}

fn create_branch(m: &mut Model, repo: &str, r: &Recorded) -> Reply {
    if m.repos[repo].archived {
        return m.error(423, &format!("{repo} is archived"));
    }
    let Some(body) = r.json().filter(Value::is_object) else {
        return m.error(422, "[BranchName]: Required");
    };
    let text = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
    let Some(new) = text("new_branch_name") else {
        return m.error(422, "[BranchName]: Required");
    };
    if !valid_branch_name(&new) {
        return m.error(422, "[BranchName]: GitRefName");
    }
    let rp = &m.repos[repo];
    let from = match (text("old_ref_name"), text("old_branch_name")) {
        (Some(old_ref), _) if !old_ref.is_empty() => match rp.resolve(&old_ref) {
            Some(sha) => sha,
            // Any lookup error of old_ref_name is an internal error (gitea.md §5).
            None => return m.error(500, ""),
        },
        (_, Some(old)) if !old.is_empty() => match rp.branches.get(&old) {
            Some(sha) => sha.clone(),
            None => return m.error(404, "The old branch does not exist"),
        },
        _ => rp.branches[&rp.default_branch].clone(),
    };
    if rp.branches.contains_key(&new) {
        return m.error(409, "The branch already exists.");
    }
    let conflict = rp
        .branches
        .keys()
        .any(|b| b.starts_with(&format!("{new}/")) || new.starts_with(&format!("{b}/")));
    if conflict {
        return m.error(409, "The branch with the same name already exists.");
    }
    let reply = Reply::json(201, &branch_json(m, repo, &new, &from));
    m.repos
        .get_mut(repo)
        .expect("checked above")
        .branches
        .insert(new, from);
    reply
}

/// `POST .../pulls` (`CreatePullRequest`): 422 for a missing `head`/`base`/`title`
/// (the form binding) or `head == base`; 404 when either branch is missing
/// (`parseCompareInfo`); 409 when an open PR from `head` into `base` exists
/// (`ErrPullRequestAlreadyExists`); else 201 with the new PR, numbered after the
/// repository's highest.
fn create_pull(m: &mut Model, repo: &str, r: &Recorded) -> Reply {
    if m.repos[repo].archived {
        return m.error(423, &format!("{repo} is archived"));
    }
    let Some(body) = r.json().filter(Value::is_object) else {
        return m.error(422, "[Head]: Required");
    };
    let text = |k: &str| {
        body.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let (head, base, title) = (text("head"), text("base"), text("title"));
    for (value, name) in [(&head, "Head"), (&base, "Base"), (&title, "Title")] {
        if value.is_empty() {
            return m.error(422, &format!("[{name}]: Required"));
        }
    }
    if head == base {
        return m.error(
            422,
            "Invalid PullRequest: There are no changes between the head and the base",
        );
    }
    let rp = &m.repos[repo];
    let (Some(head_sha), true) = (
        rp.branches.get(&head).cloned(),
        rp.branches.contains_key(&base),
    ) else {
        return m.not_found();
    };
    if let Some(p) = rp
        .pulls
        .values()
        .find(|p| p.open && p.head_ref == head && p.base_ref == base)
    {
        let msg = format!(
            "pull request already exists for these targets [id: {}, issue_id: {}, head_repo_id: {}, base_repo_id: {}, head_branch: {head}, base_branch: {base}]",
            p.id, p.number, rp.id, rp.id
        );
        return m.error(409, &msg);
    }
    let number = rp.pulls.keys().next_back().copied().unwrap_or(0) + 1;
    let id = m.next_id();
    let pull = Pull {
        number,
        id,
        draft: is_wip(&title),
        title,
        head_ref: head,
        head_sha,
        base_ref: base,
        open: true,
        merged: false,
        mergeable: true,
        merged_at: None,
        merge_commit_sha: None,
        closed_at: None,
    };
    let rp = m.repos.get_mut(repo).expect("checked above");
    rp.pulls.insert(number, pull);
    let rp = &m.repos[repo];
    Reply::json(201, &pull_json(m, rp, &rp.pulls[&number]))
}

/// `POST .../contents/{filepath}` (`CreateFile`): commits one new file to `branch`
/// (default: the default branch), or to `new_branch` started from it. 422 for a
/// missing or non-base64 `content`, a file that exists, or a `new_branch` that exists;
/// 404 when `branch` does not exist; else 201 with the file and the new commit, and
/// the branch tip moves to it.
fn create_file(m: &mut Model, repo: &str, path: &str, r: &Recorded) -> Reply {
    use base64::Engine as _;
    if m.repos[repo].archived {
        return m.error(423, &format!("{repo} is archived"));
    }
    let Some(body) = r.json().filter(Value::is_object) else {
        return m.error(422, "[ContentBase64]: Required");
    };
    let text = |k: &str| {
        body.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let encoded = text("content");
    if encoded.is_empty() {
        return m.error(422, "[ContentBase64]: Required");
    }
    let Ok(content) = base64::engine::general_purpose::STANDARD.decode(encoded.as_bytes()) else {
        return m.error(422, "illegal base64 data in content");
    };
    if path
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return m.error(
            422,
            &format!("path contains a malformed path component [path: {path}]"),
        );
    }
    let rp = &m.repos[repo];
    let branch = Some(text("branch"))
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| rp.default_branch.clone());
    let Some(parent) = rp.branches.get(&branch).cloned() else {
        return m.error(404, &format!("branch does not exist [name: {branch}]"));
    };
    let target = Some(text("new_branch"))
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| branch.clone());
    if target != branch && rp.branches.contains_key(&target) {
        return m.error(422, &format!("branch already exists [name: {target}]"));
    }
    if rp.files.contains_key(&(branch.clone(), path.to_string())) {
        return m.error(
            422,
            &format!("repository file already exists [path: {path}]"),
        );
    }
    let message = Some(text("message"))
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| format!("Add {path}"));
    let sha = fake_sha(&format!("{repo}:{parent}:{path}:{}", hex::encode(&content)));
    let blob = fake_sha(&format!("blob:{}", hex::encode(&content)));
    let rp = m.repos.get_mut(repo).expect("checked above");
    let inherited: Vec<(String, Vec<u8>)> = rp
        .files
        .iter()
        .filter(|((b, _), _)| *b == branch && target != branch)
        .map(|((_, p), c)| (p.clone(), c.clone()))
        .collect();
    for (p, c) in inherited {
        rp.files.insert((target.clone(), p), c);
    }
    rp.files
        .insert((target.clone(), path.to_string()), content.clone());
    rp.branches.insert(target, sha.clone());
    let api = format!("{}/api/v1/repos/{repo}", m.url);
    let web = format!("{}/{repo}", m.url);
    let name = path.rsplit('/').next().unwrap_or(path);
    let person = json!({"name": "Merge Bot", "email": "merge-bot@example.com", "date": "2026-01-21T09:50:00Z"});
    Reply::json(
        201,
        &json!({
            "content": {
                "name": name,
                "path": path,
                "sha": blob,
                "last_commit_sha": sha,
                "type": "file",
                "size": content.len(),
                "encoding": "base64",
                "content": encoded,
                "target": null,
                "url": format!("{api}/contents/{path}?ref={branch}"),
                "html_url": format!("{web}/src/branch/{branch}/{path}"),
                "git_url": format!("{api}/git/blobs/{blob}"),
                "download_url": format!("{web}/raw/branch/{branch}/{path}"),
                "submodule_git_url": null,
                "_links": {
                    "self": format!("{api}/contents/{path}?ref={branch}"),
                    "git": format!("{api}/git/blobs/{blob}"),
                    "html": format!("{web}/src/branch/{branch}/{path}"),
                },
            },
            "commit": {
                "url": format!("{api}/git/commits/{sha}"),
                "sha": sha,
                "created": "2026-01-21T09:50:00Z",
                "html_url": format!("{web}/commit/{sha}"),
                "author": person.clone(),
                "committer": person,
                "parents": [{"url": format!("{api}/git/commits/{parent}"), "sha": parent, "created": "0001-01-01T00:00:00Z"}],
                "message": format!("{message}\n"),
                "tree": {"url": format!("{api}/git/trees/{sha}"), "sha": sha, "created": "0001-01-01T00:00:00Z"},
            },
            "verification": {"verified": false, "reason": "gpg.error.not_signed_commit", "signature": "", "signer": null, "payload": ""},
        }),
    )
}

fn status_json(m: &Model, repo: &str, s: &Status) -> Value {
    json!({
        "id": s.id,
        "status": s.state,
        "target_url": s.target_url,
        "description": s.description,
        "url": format!("{}/api/v1/repos/{repo}/statuses/{}", m.url, s.sha),
        "context": s.context,
        "creator": user_json(m, 5, "merge-bot", "Merge Bot"),
        "created_at": "2026-01-21T10:04:00Z",
        "updated_at": "2026-01-21T10:04:00Z",
    })
}

fn combined_status(m: &Model, repo: &str, git_ref: &str, r: &Recorded) -> Reply {
    let rp = &m.repos[repo];
    let sha = rp.resolve(git_ref);
    let legacy_empty = json!({
        "state": "", "sha": "", "total_count": 0, "statuses": null,
        "repository": null, "commit_url": "", "url": ""
    });
    let Some(sha) = sha else {
        return match m.version {
            GiteaVersion::Current => m.not_found(),
            _ => Reply::json(200, &legacy_empty),
        };
    };
    // Latest status per context.
    let mut latest: BTreeMap<&str, &Status> = BTreeMap::new();
    for s in rp.statuses.iter().filter(|s| s.sha == sha) {
        latest.insert(s.context.as_str(), s);
    }
    let mut statuses: Vec<&Status> = latest.into_values().collect();
    statuses.sort_by_key(|s| std::cmp::Reverse(s.id));
    if statuses.is_empty() && m.version != GiteaVersion::Current {
        return Reply::json(200, &legacy_empty);
    }
    // Paged like every list (default 30 contexts); `state` and `total_count` describe
    // the returned page only, `X-Total-Count` every context.
    let contexts = statuses.len();
    let (limit, page) = list_options(m, r);
    let start = ((page - 1) * limit).min(contexts);
    let end = (start + limit).min(contexts);
    let statuses = &statuses[start..end];
    let states: Vec<&str> = statuses.iter().map(|s| s.state.as_str()).collect();
    let state = combine(m.version, &states);
    let api = format!("{}/api/v1/repos/{repo}/commits/{sha}", m.url);
    Reply::json(
        200,
        &json!({
            "state": state,
            "sha": sha,
            "total_count": statuses.len(),
            "statuses": if statuses.is_empty() { Value::Null } else {
                Value::Array(statuses.iter().map(|s| status_json(m, repo, s)).collect())
            },
            "repository": repo_json(m, rp),
            "commit_url": api,
            "url": format!("{api}/status"),
        }),
    )
    .with_header("X-Total-Count", &contexts.to_string())
}

/// Combines the latest state of each context as the version does (gitea.md §6).
fn combine(version: GiteaVersion, states: &[&str]) -> String {
    if states.is_empty() {
        return String::new();
    }
    match version {
        GiteaVersion::Current => {
            if states.iter().any(|s| *s == "error" || *s == "failure") {
                "failure".into()
            } else if states
                .iter()
                .all(|s| matches!(*s, "success" | "warning" | "skipped"))
            {
                "success".into()
            } else {
                "pending".into()
            }
        }
        _ => {
            let rank = |s: &str| match s {
                "error" => 0,
                "failure" => 1,
                "warning" => 2,
                "pending" => 3,
                _ => 4,
            };
            let worst = states.iter().min_by_key(|s| rank(s)).copied().unwrap_or("");
            if worst == "error" {
                "failure".into()
            } else {
                worst.into()
            }
        }
    }
}

fn create_status(m: &mut Model, repo: &str, sha: &str, r: &Recorded) -> Reply {
    let Some(body) = r.json().filter(Value::is_object) else {
        return m.error(422, "[State]: Required");
    };
    let text = |k: &str| {
        body.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let state = text("state");
    if ![
        "pending", "success", "error", "failure", "warning", "skipped",
    ]
    .contains(&state.as_str())
    {
        return m.error(422, "[State]: In");
    }
    let id = m.next_id();
    let s = Status {
        id,
        sha: sha.into(),
        state,
        context: text("context"),
        description: text("description"),
        target_url: text("target_url"),
    };
    let reply = Reply::json(201, &status_json(m, repo, &s));
    m.repos
        .get_mut(repo)
        .expect("checked above")
        .statuses
        .push(s);
    reply
}

fn compare(m: &Model, repo: &str, spec: &str, r: &Recorded) -> Reply {
    let Some((base, head)) = spec.split_once("...").or_else(|| spec.split_once("..")) else {
        return m.not_found();
    };
    let rp = &m.repos[repo];
    let is_branch_or_tag = |x: &str| rp.branches.contains_key(x);
    match m.compare {
        CompareSupport::Absent => return m.not_found(),
        CompareSupport::BranchesOnly if !(is_branch_or_tag(base) && is_branch_or_tag(head)) => {
            return m.not_found()
        }
        _ => {}
    }
    let (Some(base_sha), Some(head_sha)) = (rp.resolve(base), rp.resolve(head)) else {
        return m.not_found();
    };
    let n = ahead(rp, base, head, &base_sha);
    let files = r.param("files").as_deref() != Some("false");
    let commits: Vec<Value> = (0..n)
        .map(|i| {
            let sha = if i + 1 == n {
                head_sha.clone()
            } else {
                fake_sha(&format!("{head_sha}~{}", n - 1 - i))
            };
            commit_json(m, repo, &sha, &base_sha, files)
        })
        .collect();
    Reply::json(200, &json!({"total_commits": n, "commits": commits}))
}

fn commit_json(m: &Model, repo: &str, sha: &str, parent: &str, files: bool) -> Value {
    let api = format!("{}/api/v1/repos/{repo}/git/commits", m.url);
    let person = json!({"name": "Merge Bot", "email": "merge-bot@example.com", "date": "2026-01-21T09:50:00Z"});
    json!({
        "url": format!("{api}/{sha}"),
        "sha": sha,
        "created": "2026-01-21T09:50:00Z",
        "html_url": format!("{}/{repo}/commit/{sha}", m.url),
        "commit": {
            "url": format!("{api}/{sha}"),
            "author": person.clone(),
            "committer": person,
            "message": "Work\n",
            "tree": {"url": format!("{}/api/v1/repos/{repo}/git/trees/{sha}", m.url), "sha": sha, "created": "2026-01-21T09:50:00Z"},
            "verification": {"verified": false, "reason": "gpg.error.not_signed_commit", "signature": "", "signer": null, "payload": ""},
        },
        "author": user_json(m, 5, "merge-bot", "Merge Bot"),
        "committer": user_json(m, 5, "merge-bot", "Merge Bot"),
        "parents": [{"url": format!("{api}/{parent}"), "sha": parent, "created": "0001-01-01T00:00:00Z"}],
        "files": if files { json!([{"filename": "src/lib.rs", "status": "modified"}]) } else { Value::Null },
        "stats": {"total": 1, "additions": 1, "deletions": 0},
    })
}

/// Reads a merge form field the way Go's decoder does for untagged fields
/// (case-insensitive key).
fn field<'a>(body: &'a serde_json::Map<String, Value>, name: &str) -> Option<&'a Value> {
    body.get(name).or_else(|| {
        body.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

fn merge(m: &mut Model, repo: &str, n: &str, r: &Recorded) -> Reply {
    // Route middleware: archived → 423, then the form binding → 422.
    if m.repos[repo].archived {
        let msg = match m.version {
            GiteaVersion::Current => format!("{repo} is archived"),
            _ => format!("<Repository {}:{repo}> is archived", m.repos[repo].id),
        };
        return m.error(423, &msg);
    }
    let Some(Value::Object(body)) = r.json() else {
        return m.error(422, "[Do]: Required");
    };
    let style = match field(&body, "Do").and_then(Value::as_str) {
        None | Some("") => return m.error(422, "[Do]: Required"),
        Some(s) => s.to_string(),
    };
    let known = [
        "merge",
        "rebase",
        "rebase-merge",
        "squash",
        "fast-forward-only",
        "manually-merged",
    ];
    if !known.contains(&style.as_str()) {
        return m.error(422, "[Do]: In");
    }
    let Some(number) = n.parse::<u64>().ok() else {
        return m.not_found();
    };
    let Some(p) = m.repos[repo].pulls.get(&number).cloned() else {
        return Reply::json(
            404,
            &json!({
                "errors": [format!("pull request does not exist [id: 0, issue_id: 0, head_repo_id: 0, base_repo_id: {}, head_branch: , base_branch: ]", m.repos[repo].id)],
                "message": "GetPullRequestByIndex",
                "url": m.swagger(),
            }),
        );
    };
    // CheckPullMergeable: merged → closed → permission → WIP → status (gitea.md §4.2).
    if p.merged {
        return match m.version {
            GiteaVersion::Current => m.error(405, "The PR is already merged"),
            GiteaVersion::Legacy => m.error(405, ""),
            GiteaVersion::V1_16 => m.not_found(),
        };
    }
    if !p.open {
        return m.not_found();
    }
    let rp = &m.repos[repo];
    if !rp.can_merge {
        return m.error(405, "User not allowed to merge PR");
    }
    if p.draft {
        return m.error(405, "Work in progress PRs cannot be merged");
    }
    if !p.mergeable {
        return m.error(405, "Please try again later");
    }
    if !rp.allowed_styles.contains(&style) {
        return m.error(
            405,
            &format!("{style} is not allowed an allowed merge style for this repository"),
        );
    }
    let head_sha = rp.head_sha(&p);
    let expected = field(&body, "head_commit_id")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !expected.is_empty() && expected != head_sha {
        return m.error(409, "head out of date");
    }
    // Omitted: 1.25+ follows the repository's default (gitea.md §4.4); older versions
    // read a plain bool that defaults to false.
    let delete_branch = match body
        .get("delete_branch_after_merge")
        .and_then(Value::as_bool)
    {
        Some(d) => d,
        None => m.version == GiteaVersion::Current && m.repos[repo].delete_branch_after_merge,
    };
    let merge_sha = fake_sha(&format!("merge:{repo}:{number}:{head_sha}"));
    let now = now_rfc3339();
    let rp = m.repos.get_mut(repo).expect("checked above");
    let pull = rp.pulls.get_mut(&number).expect("checked above");
    pull.merged = true;
    pull.open = false;
    pull.merged_at = Some(now.clone());
    pull.closed_at = Some(now);
    pull.merge_commit_sha = Some(merge_sha.clone());
    pull.head_sha.clone_from(&head_sha);
    let base = pull.base_ref.clone();
    let head = pull.head_ref.clone();
    rp.branches.insert(base, merge_sha);
    if delete_branch {
        rp.branches.remove(&head);
    }
    Reply::empty(200)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combined_state_follows_the_version() {
        let cur = GiteaVersion::Current;
        let old = GiteaVersion::Legacy;
        assert_eq!(combine(cur, &[]), "");
        assert_eq!(combine(cur, &["success", "warning", "skipped"]), "success");
        assert_eq!(combine(cur, &["success", "pending"]), "pending");
        assert_eq!(combine(cur, &["error", "pending"]), "failure");
        assert_eq!(combine(old, &["success", "warning"]), "warning");
        assert_eq!(combine(old, &["error", "success"]), "failure");
        assert_eq!(combine(old, &["pending", "success"]), "pending");
    }

    #[test]
    fn branch_names_follow_git_rules() {
        for good in ["task/ENG-42", "a", "feature/x.y"] {
            assert!(valid_branch_name(good), "{good}");
        }
        for bad in ["", "a b", "a..b", "-a", "a/", "a.lock", "a:b", "x~1"] {
            assert!(!valid_branch_name(bad), "{bad}");
        }
    }

    struct Api {
        g: GiteaStandin,
        c: reqwest::blocking::Client,
    }

    impl Api {
        fn new() -> Api {
            let g = GiteaStandin::start(DEFAULT_TOKEN);
            g.add_repo("acme/shop", "main");
            g.push("acme/shop", "task/shop-1", &fake_sha("t1"));
            Api {
                g,
                c: reqwest::blocking::Client::new(),
            }
        }

        fn post(&self, route: &str, body: &str) -> (u16, Value) {
            let res = self
                .c
                .post(format!("{}/api/v1/repos/acme/shop/{route}", self.g.url()))
                .header("Authorization", format!("token {DEFAULT_TOKEN}"))
                .header("Content-Type", "application/json")
                .body(body.to_string())
                .send()
                .unwrap();
            let status = res.status().as_u16();
            (status, res.json().unwrap_or(Value::Null))
        }

        fn pr(&self, head: &str, base: &str) -> (u16, Value) {
            self.post(
                "pulls",
                &json!({"head": head, "base": base, "title": "Add a basket"}).to_string(),
            )
        }
    }

    #[test]
    fn creating_a_pull_request_answers_like_gitea() {
        let api = Api::new();
        let (status, pr) = api.pr("task/shop-1", "main");
        assert_eq!(status, 201, "{pr}");
        assert_eq!(pr["number"], 1);
        assert_eq!(pr["state"], "open");
        assert_eq!(pr["head"]["ref"], "task/shop-1");
        assert_eq!(pr["head"]["sha"], fake_sha("t1"));
        assert_eq!(pr["base"]["ref"], "main");
        let (status, body) = api.pr("task/shop-1", "main");
        assert_eq!(status, 409, "an open PR for the same head and base");
        let msg = body["message"].as_str().unwrap();
        assert!(
            msg.starts_with("pull request already exists for these targets [id: ")
                && msg.contains("issue_id: 1,"),
            "{msg}"
        );
        assert_eq!(api.pr("task/nope", "main").0, 404, "missing head");
        assert_eq!(api.pr("task/shop-1", "nope").0, 404, "missing base");
        let (status, body) = api.pr("main", "main");
        assert_eq!(status, 422);
        assert_eq!(
            body["message"],
            "Invalid PullRequest: There are no changes between the head and the base"
        );
        for (body, field) in [
            (json!({"base": "main", "title": "t"}), "Head"),
            (json!({"head": "task/shop-1", "title": "t"}), "Base"),
            (json!({"head": "task/shop-1", "base": "main"}), "Title"),
        ] {
            let (status, b) = api.post("pulls", &body.to_string());
            assert_eq!(
                (status, b["message"].clone()),
                (422, json!(format!("[{field}]: Required")))
            );
        }
        assert_eq!(api.post("pulls", "not json").0, 422);
        // Once merged, the PR no longer blocks a new one from the same branch.
        api.g.merge_for_test("acme/shop", 1);
        api.g.push("acme/shop", "task/shop-1", &fake_sha("t2"));
        let (status, pr) = api.pr("task/shop-1", "main");
        assert_eq!((status, pr["number"].clone()), (201, json!(2)));
        assert_eq!(api.g.pulls_for("acme/shop", "task/shop-1"), vec![1, 2]);
    }

    #[test]
    fn committing_a_file_moves_the_branch() {
        let api = Api::new();
        let before = api.g.branch("acme/shop", "task/shop-1").unwrap();
        let body = json!({"branch": "task/shop-1", "content": "aGVsbG8K", "message": "Add notes"});
        let (status, res) = api.post("contents/docs/notes.md", &body.to_string());
        assert_eq!(status, 201, "{res}");
        let tip = api.g.branch("acme/shop", "task/shop-1").unwrap();
        assert_ne!(tip, before);
        assert_eq!(res["commit"]["sha"], tip.as_str());
        assert_eq!(res["commit"]["parents"][0]["sha"], before.as_str());
        assert_eq!(res["content"]["path"], "docs/notes.md");
        assert_eq!(
            api.g.file("acme/shop", "task/shop-1", "docs/notes.md"),
            Some(b"hello\n".to_vec())
        );
        assert_eq!(
            api.g.branch("acme/shop", "main"),
            Some(fake_sha("acme/shop:main"))
        );
        let (status, res) = api.post("contents/docs/notes.md", &body.to_string());
        assert_eq!(status, 422, "the file exists: {res}");
        let cases = [
            (json!({"branch": "nope", "content": "aGVsbG8K"}), 404),
            (json!({"branch": "task/shop-1"}), 422),
            (json!({"branch": "task/shop-1", "content": "%%%"}), 422),
            (
                json!({"branch": "task/shop-1", "content": "aGk=", "new_branch": "main"}),
                422,
            ),
        ];
        for (body, want) in cases {
            assert_eq!(
                api.post("contents/docs/other.md", &body.to_string()).0,
                want,
                "{body}"
            );
        }
        assert_eq!(
            api.post("contents/a//b.md", &json!({"content": "aGk="}).to_string())
                .0,
            422
        );
        // No branch: the default branch; new_branch starts a branch from it.
        let body = json!({"content": "aGk=", "new_branch": "task/shop-2"});
        assert_eq!(api.post("contents/x.md", &body.to_string()).0, 201);
        assert!(api.g.branch("acme/shop", "task/shop-2").is_some());
        assert_eq!(
            api.g.branch("acme/shop", "main"),
            Some(fake_sha("acme/shop:main"))
        );
    }

    #[test]
    fn a_merge_deletes_the_head_branch_when_asked_or_by_the_repo_default() {
        let api = Api::new();
        let merge =
            |n: u64, body: Value| api.post(&format!("pulls/{n}/merge"), &body.to_string()).0;
        api.pr("task/shop-1", "main");
        assert_eq!(merge(1, json!({"Do": "merge"})), 200);
        assert!(
            api.g.branch("acme/shop", "task/shop-1").is_some(),
            "kept by default"
        );
        api.g.push("acme/shop", "task/shop-2", &fake_sha("t2"));
        api.pr("task/shop-2", "main");
        assert_eq!(
            merge(2, json!({"Do": "merge", "delete_branch_after_merge": true})),
            200
        );
        assert!(
            api.g.branch("acme/shop", "task/shop-2").is_none(),
            "deleted when asked"
        );
        api.g.set_delete_branch_after_merge("acme/shop", true);
        api.g.push("acme/shop", "task/shop-3", &fake_sha("t3"));
        api.pr("task/shop-3", "main");
        api.g.push("acme/shop", "task/shop-4", &fake_sha("t4"));
        api.pr("task/shop-4", "main");
        assert_eq!(
            merge(
                3,
                json!({"Do": "merge", "delete_branch_after_merge": false})
            ),
            200
        );
        assert!(
            api.g.branch("acme/shop", "task/shop-3").is_some(),
            "an explicit false wins"
        );
        assert_eq!(merge(4, json!({"Do": "merge"})), 200);
        assert!(
            api.g.branch("acme/shop", "task/shop-4").is_none(),
            "the repo default"
        );
        assert_eq!(api.g.all_merge_calls("acme/shop"), 4);
        let repo: Value = api
            .c
            .get(format!("{}/api/v1/repos/acme/shop", api.g.url()))
            .header("Authorization", format!("token {DEFAULT_TOKEN}"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(repo["default_branch"], "main");
        assert_eq!(repo["default_delete_branch_after_merge"], true);
    }

    #[test]
    fn percent_decoding_keeps_bad_escapes() {
        assert_eq!(decode("task%2FENG-1"), "task/ENG-1");
        assert_eq!(decode("a%zz"), "a%zz");
        assert_eq!(decode("%4"), "%4");
    }

    #[test]
    fn a_cached_pull_list_shows_every_change_on_the_next_read() {
        let api = Api::new();
        let list = || -> Vec<(u64, bool)> {
            let res = api
                .c
                .get(format!(
                    "{}/api/v1/repos/acme/shop/pulls?state=open&limit=50&page=1",
                    api.g.url()
                ))
                .header("Authorization", format!("token {DEFAULT_TOKEN}"))
                .send()
                .unwrap();
            let v: Value = res.json().unwrap();
            v.as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    (
                        p["number"].as_u64().unwrap(),
                        p["mergeable"].as_bool().unwrap(),
                    )
                })
                .collect()
        };
        api.g
            .add_pull("acme/shop", &PullSeed::open(1, "task/shop-1"));
        assert_eq!(list(), [(1, true)]);
        assert_eq!(api.g.model.lock().unwrap().pull_lists.len(), 1, "kept");
        assert_eq!(list(), [(1, true)]);
        // A change by the test is on the next read.
        api.g.set_mergeable("acme/shop", 1, false);
        assert_eq!(list(), [(1, false)]);
        // A change over the API (a new PR) too.
        api.g.push("acme/shop", "task/shop-2", &fake_sha("t2"));
        let (status, _) = api.pr("task/shop-2", "main");
        assert_eq!(status, 201);
        assert_eq!(list(), [(2, true), (1, false)]);
    }
}
