//! The versions self-hosters run (docs/versions.md): each stand-in in the mode of the
//! version that answers differently, and the clients (and the real binary) getting the
//! same result from every mode.

use std::collections::BTreeMap;

use orch::adapters::gitea::GiteaClient;
use orch::adapters::plane::{CommentOutcome, NewComment, PlaneClient};
use orch::config::{Config, Layers};
use orch::core::facts::CiState;
use orch::core::stage::Stage;
use orch::standin::gitea::{CompareSupport, GiteaStandin, GiteaVersion, PullSeed, DEFAULT_TOKEN};
use orch::standin::plane::{PlaneStandin, PlaneVersion, DEFAULT_API_KEY};

use crate::common::{seed_task, Project, SeedTask, Standin, TestEnv, NOW_UNIX, PLANE_STATES};

const REPO: &str = "acme/widgets";
const PROJECT: &str = "7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1e02";
const TODO: &str = "7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1eb2";
const DONE: &str = "7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1eb4";
const ITEM: &str = "7b1e4c2a-5d3f-4e8a-9c61-2f0d8b3a1e04";

fn config(vars: &[(&str, &str)]) -> Config {
    let env: BTreeMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect();
    let layers = Layers {
        env,
        ..Layers::default()
    };
    Config::from_parts(Some("plane: { workspace: acme }\n"), None, layers).expect("config")
}

fn gitea_client(g: &GiteaStandin) -> GiteaClient {
    GiteaClient::from_config(&config(&[
        ("ORCH_GITEA_URL", g.url()),
        ("ORCH_GITEA_TOKEN", DEFAULT_TOKEN),
    ]))
    .expect("gitea client")
}

fn plane_client(p: &PlaneStandin) -> PlaneClient {
    PlaneClient::from_config(&config(&[
        ("ORCH_PLANE_URL", p.url()),
        ("ORCH_PLANE_API_KEY", DEFAULT_API_KEY),
    ]))
    .expect("plane client")
}

fn plane(version: PlaneVersion) -> PlaneStandin {
    let p = PlaneStandin::start("acme", DEFAULT_API_KEY);
    p.set_version(version);
    p.add_project(
        PROJECT,
        &[(TODO, "Todo", "unstarted"), (DONE, "Done", "completed")],
    );
    p.add_work_item(PROJECT, ITEM, 42, "Add retries", Some(TODO));
    p
}

fn gitea() -> GiteaStandin {
    let g = GiteaStandin::start(DEFAULT_TOKEN);
    g.add_repo(REPO, "main");
    g
}

// ---------------------------------------------------------------- Plane

#[test]
fn the_plane_client_works_with_and_without_work_items_paths() {
    for version in [PlaneVersion::Current, PlaneVersion::Legacy] {
        let p = plane(version);
        let c = plane_client(&p);
        let page = c.list_work_items_page(PROJECT, None).unwrap();
        assert_eq!(page.items.len(), 1, "{version:?}");
        assert_eq!(c.get_work_item(PROJECT, ITEM).unwrap().sequence_id, 42);
        assert_eq!(
            c.set_state(PROJECT, ITEM, DONE)
                .unwrap()
                .state_id
                .as_deref(),
            Some(DONE)
        );
        let comment = NewComment {
            comment_html: "<p>hi</p>".into(),
            external_source: "orch".into(),
            external_id: "WID-42:escalation".into(),
        };
        assert!(matches!(
            c.create_comment(PROJECT, ITEM, &comment).unwrap(),
            CommentOutcome::Created { .. }
        ));
        assert_eq!(p.comments(PROJECT, ITEM).len(), 1, "{version:?}");
        // An item that does not exist is still a 404 on either path family.
        let missing = "7b1e4c2a-0000-4000-8000-000000000000";
        assert!(c.get_work_item(PROJECT, missing).is_err());
        // The family is decided once per client: a version without `work-items` is
        // asked there once, and a missing item on a version with it costs no probe.
        let work_items = p.count(None, &format!("projects/{PROJECT}/work-items/"));
        let issues = p.count(None, &format!("projects/{PROJECT}/issues/"));
        match version {
            PlaneVersion::Current => assert_eq!((work_items, issues), (5, 0)),
            PlaneVersion::Legacy => assert_eq!((work_items, issues), (1, 5)),
        }
    }
}

fn item_id(pid: &str, n: u64) -> String {
    format!("{}-0000-4000-8000-{:012}", &pid[..8], n)
}

/// An env with ORCH-1 at `development` (developer job done, `retries` rollbacks so
/// far), its work item in Plane and its PR #7 on Gitea; returns the env, the task id
/// and the PR head.
fn development_task(retries: u32) -> (TestEnv, i64, String) {
    let orch = Project::orch()
        .self_hosting(false)
        .with("states:\n  approved: { names: [Approved] }\n  blocked: { names: [Blocked] }");
    let env = TestEnv::builder()
        .project(orch.clone())
        .standins(&[Standin::Gitea, Standin::Plane, Standin::Telegram])
        .set("ORCH_RECONCILE_GRACE_S", "0")
        .set("ORCH_HTTP_TIMEOUT_S", "5")
        .build();
    let pid = orch.plane_project_id;
    let item = item_id(pid, 1);
    env.plane()
        .add_work_item(pid, &item, 1, "Work", Some(PLANE_STATES[0].0));
    let seed = SeedTask::new(&orch, 1, Stage::Development)
        .work_item(&item)
        .at(NOW_UNIX - 1_000)
        .retries(retries)
        .branch_ready()
        .no_plane_item();
    let task = seed_task(&env, &seed);
    env.db()
        .execute(
            "INSERT INTO jobs (task_id, agent, stage, status, attempt, enqueued_at, exit_code)
             VALUES (?1, 'developer', 'development', 'succeeded', 1, 0, 0)",
            [task],
        )
        .unwrap();
    env.gitea()
        .add_pull("acme/orch", &PullSeed::open(7, "task/orch-1"));
    let head = env.gitea().pull("acme/orch", 7).unwrap().head_sha;
    (env, task, head)
}

/// Plane CE v1.0.x: reconcile must still list work items (or every task is skipped) and
/// post the escalation comment, through the real binary.
#[test]
fn reconcile_lists_and_escalates_on_plane_without_work_items_paths() {
    let (env, task, head) = development_task(2);
    env.plane().set_version(PlaneVersion::Legacy);
    let pid = Project::orch().plane_project_id;
    let item = item_id(pid, 1);
    env.gitea()
        .add_status("acme/orch", &head, "ci/test", "success");
    let db = env.db();

    let r = env.run(&["reconcile", "--json"]).expect(0).json();
    assert_eq!(r["counts"]["advanced"], 1, "listed and advanced: {r:#}");
    db.execute(
        "UPDATE jobs SET status='succeeded', exit_code=0, finished_at=1 WHERE task_id=?1 AND status IN ('queued','running')",
        [task],
    )
    .unwrap();
    env.artefact(
        "ORCH-1",
        "05-review.md",
        "---\nreview_verdict: REQUEST_CHANGES\n---\n\n# Review\n",
    );
    let r = env.run(&["reconcile", "--json"]).expect(0).json();
    assert_eq!(r["counts"]["rolled_back"], 1, "{r:#}");
    assert_eq!(
        env.count("SELECT count(*) FROM tasks WHERE escalated_at IS NOT NULL"),
        1
    );
    let comments = env.plane().comments(pid, &item);
    assert_eq!(comments.len(), 1, "the escalation comment: {comments:?}");
}

/// A CI matrix bigger than a page: the gate sees the failing context on page 2, and
/// reconcile counts every page it read.
#[test]
fn reconcile_reads_every_page_of_a_big_ci_matrix() {
    let (env, _, head) = development_task(0);
    let g = env.gitea();
    g.add_status("acme/orch", &head, "ci/oldest", "failure");
    for i in 0..64 {
        g.add_status("acme/orch", &head, &format!("ci/job-{i:02}"), "success");
    }
    let before = g.server().requests().len();
    let r = env.run(&["reconcile", "--json"]).expect(0).json();
    assert_eq!(r["counts"]["advanced"], 0, "CI failed: {r:#}");
    let status_reads = g.count(Some("GET"), "acme/orch", &format!("commits/{head}/status"));
    assert_eq!(status_reads, 2, "65 contexts: two pages of 50");
    assert_eq!(
        r["counts"]["gitea_requests"],
        i64::try_from(g.server().requests().len() - before).unwrap(),
        "every request counted: {r:#}"
    );
}

// ---------------------------------------------------------------- Gitea: paging

#[test]
fn open_pulls_are_all_read_under_a_lower_max_response_items() {
    let g = gitea();
    g.set_max_response_items(20);
    for n in 1..=45u64 {
        g.add_pull(REPO, &PullSeed::open(n, &format!("task/T-{n}")));
    }
    let c = gitea_client(&g);
    let all = c.list_open_pulls(REPO).unwrap();
    assert_eq!(all.len(), 45);
    assert_eq!(g.count(Some("GET"), REPO, "pulls"), 3, "20 + 20 + 5");
    // Newest first: the oldest PRs are on the last page, and are found.
    let before = g.count(Some("GET"), REPO, "pulls");
    let found = c.find_open_pull_by_head(REPO, "task/T-1").unwrap().unwrap();
    assert_eq!(found.number, 1);
    assert_eq!(g.count(Some("GET"), REPO, "pulls") - before, 3);
}

// ---------------------------------------------------------------- Gitea: CI

const HEAD: &str = "c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3";

/// Posts `n` contexts `ci/job-NN` in `state`.
fn contexts(g: &GiteaStandin, from: usize, n: usize, state: &str) {
    for i in from..from + n {
        g.add_status(REPO, HEAD, &format!("ci/job-{i:02}"), state);
    }
}

#[test]
fn ci_reads_every_page_of_contexts() {
    for version in [GiteaVersion::Current, GiteaVersion::Legacy] {
        // A failure or a pending context past the first page (30 by default, 20 when
        // the admin clamps) decides the verdict.
        for (clamp, last) in [(50, "failure"), (50, "pending"), (20, "failure")] {
            let g = gitea();
            g.set_version(version);
            g.set_max_response_items(clamp);
            // Newest first: the oldest contexts are on the last page.
            contexts(&g, 0, 1, last);
            contexts(&g, 1, 64, "success");
            let s = gitea_client(&g).combined_status(REPO, HEAD).unwrap();
            let expected = if last == "failure" {
                CiState::Failure
            } else {
                CiState::Pending
            };
            assert_eq!(s.state, expected, "{version:?} clamp {clamp} {last}");
            assert_eq!(s.total_count, 65);
            let pages = g.count(Some("GET"), REPO, &format!("commits/{HEAD}/status"));
            assert_eq!(
                pages,
                65usize.div_ceil(clamp.min(50)),
                "{version:?} {clamp}"
            );
        }
        // All green over several pages is green.
        let g = gitea();
        g.set_version(version);
        contexts(&g, 0, 40, "success");
        let s = gitea_client(&g).combined_status(REPO, HEAD).unwrap();
        assert_eq!((s.state, s.total_count), (CiState::Success, 40));
    }
}

#[test]
fn a_warning_context_gets_the_same_verdict_on_every_version() {
    for version in [
        GiteaVersion::Current,
        GiteaVersion::Legacy,
        GiteaVersion::V1_16,
    ] {
        let g = gitea();
        g.set_version(version);
        contexts(&g, 0, 3, "success");
        g.add_status(REPO, HEAD, "ci/lint", "warning");
        let c = gitea_client(&g);
        assert_eq!(
            c.combined_status(REPO, HEAD).unwrap().state,
            CiState::Success,
            "{version:?}: warning does not block"
        );
        g.add_status(REPO, HEAD, "ci/e2e", "pending");
        assert_eq!(
            c.combined_status(REPO, HEAD).unwrap().state,
            CiState::Pending,
            "{version:?}"
        );
        g.add_status(REPO, HEAD, "ci/e2e", "error");
        assert_eq!(
            c.combined_status(REPO, HEAD).unwrap().state,
            CiState::Failure,
            "{version:?}"
        );
    }
}

#[test]
fn an_unknown_ref_reads_as_no_ci_on_every_version() {
    for version in [GiteaVersion::Current, GiteaVersion::Legacy] {
        let g = gitea();
        g.set_version(version);
        let s = gitea_client(&g)
            .combined_status(REPO, &"ab".repeat(20))
            .unwrap();
        assert_eq!((s.state, s.total_count), (CiState::None, 0), "{version:?}");
    }
}

// ---------------------------------------------------------------- Gitea: compare

#[test]
fn commits_ahead_are_known_whatever_compare_accepts() {
    for support in [
        CompareSupport::Full,
        CompareSupport::BranchesOnly,
        CompareSupport::Absent,
    ] {
        let g = gitea();
        g.set_compare(support);
        g.add_pull(REPO, &PullSeed::open(7, "task/a").head_sha(HEAD));
        let c = gitea_client(&g);
        assert_eq!(
            c.commits_ahead(REPO, 7, "main", HEAD).unwrap(),
            1,
            "{support:?}"
        );
        g.set_ahead(REPO, "main", HEAD, 0);
        assert_eq!(
            c.commits_ahead(REPO, 7, "main", HEAD).unwrap(),
            0,
            "{support:?}"
        );
        g.set_ahead(REPO, "main", HEAD, 3);
        assert_eq!(
            c.commits_ahead(REPO, 7, "main", HEAD).unwrap(),
            3,
            "{support:?}"
        );
        // The compare route is asked once; a version that refuses it is not asked
        // again by this client.
        let compares = g.count(Some("GET"), REPO, "compare/");
        assert_eq!(
            compares,
            if support == CompareSupport::Full {
                3
            } else {
                1
            }
        );
    }
}

const SHOP: &str = "acme/shop";
const SHOP_BRANCH: &str = "task/shop-1-basket";

/// Gitea 1.22.x / Forgejo v8: a PR with nothing left to merge is ALREADY_MERGED, with no
/// merge call (which would answer 405 forever).
#[test]
fn merge_guard_knows_a_contained_head_when_compare_refuses_shas() {
    for support in [CompareSupport::BranchesOnly, CompareSupport::Absent] {
        let g = GiteaStandin::start(DEFAULT_TOKEN);
        g.add_repo(SHOP, "main");
        g.add_pull(SHOP, &PullSeed::open(7, SHOP_BRANCH).head_sha(HEAD));
        g.set_compare(support);
        g.set_ahead(SHOP, "main", HEAD, 0);
        let mut env = TestEnv::new();
        env.set("ORCH_GITEA_URL", g.url())
            .set("ORCH_GITEA_TOKEN", DEFAULT_TOKEN)
            .set("ORCH_MERGE_GUARD_MERGEABLE_WAIT_S", "0")
            .set("ORCH_HTTP_TIMEOUT_S", "10");
        env.run(&["init"]).expect(0);
        let mut task = SeedTask::new(&Project::shop(), 1, Stage::Deploy)
            .work_item("0b8f5d2e-1111-4c3a-9d2e-000000000001")
            .branch(SHOP_BRANCH);
        task.pr = Some(7);
        task.validated = Some(HEAD.to_string());
        seed_task(&env, &task);
        let run = env.run(&["merge-guard", "--task", "SHOP-1", "--merge"]);
        assert_eq!(run.code, 0, "{support:?}\n{}\n{}", run.stdout, run.stderr);
        assert!(
            run.stdout.starts_with("MERGE-GUARD: ALREADY_MERGED "),
            "{support:?}: {}",
            run.stdout
        );
        assert_eq!(g.merge_calls(SHOP, 7), 0, "{support:?}");
    }
}

// ---------------------------------------------------------------- seeds

/// `orch-standin plane|gitea SEED` starts the same version modes from a seed.
#[test]
fn seeds_choose_the_version_modes() {
    let seed: orch::standin::plane::PlaneSeed = serde_json::from_value(serde_json::json!({
        "workspace": "acme",
        "version": "1.0",
        "projects": [{
            "id": PROJECT,
            "states": [{"id": TODO, "name": "Todo", "group": "unstarted"}],
            "work_items": [{"id": ITEM, "sequence_id": 42, "name": "Fix", "state": "Todo"}],
        }],
    }))
    .unwrap();
    let p = PlaneStandin::from_seed(&seed);
    assert_eq!(
        plane_client(&p)
            .get_work_item(PROJECT, ITEM)
            .unwrap()
            .sequence_id,
        42
    );
    assert_eq!(p.count(None, &format!("projects/{PROJECT}/work-items/")), 1);
    assert_eq!(p.count(None, &format!("projects/{PROJECT}/issues/")), 1);

    let seed: orch::standin::gitea::GiteaSeed = serde_json::from_value(serde_json::json!({
        "version": "1.24",
        "max_response_items": 2,
        "compare": "branches",
        "repos": [{
            "name": REPO,
            "pulls": [
                {"number": 1, "head": "task/a"},
                {"number": 2, "head": "task/b"},
                {"number": 3, "head": "task/c"},
            ],
        }],
    }))
    .unwrap();
    let g = GiteaStandin::from_seed(&seed);
    let c = gitea_client(&g);
    assert_eq!(c.list_open_pulls(REPO).unwrap().len(), 3);
    assert_eq!(g.count(Some("GET"), REPO, "pulls"), 2, "pages of 2 and 1");
    let head = g.pull(REPO, 1).unwrap().head_sha;
    assert_eq!(c.commits_ahead(REPO, 1, "main", &head).unwrap(), 1);
    assert_eq!(g.count(Some("GET"), REPO, "pulls/1/commits"), 1);
}

/// Where compare refuses SHAs the deploy gate's merged fact costs the refused compare
/// once and then the commit list; reconcile counts both.
#[test]
fn reconcile_counts_the_refused_compare() {
    let (env, task, _) = development_task(0);
    let g = env.gitea();
    g.set_compare(CompareSupport::BranchesOnly);
    env.db()
        .execute(
            "UPDATE tasks SET stage='deploy', pr_number=7 WHERE id=?1",
            [task],
        )
        .unwrap();
    let before = g.server().requests().len();
    let r = env.run(&["reconcile", "--json"]).expect(0).json();
    assert_eq!(g.count(Some("GET"), "acme/orch", "compare/"), 1, "{r:#}");
    assert_eq!(
        g.count(Some("GET"), "acme/orch", "pulls/7/commits"),
        1,
        "{r:#}"
    );
    assert_eq!(
        r["counts"]["gitea_requests"],
        i64::try_from(g.server().requests().len() - before).unwrap(),
        "every request counted: {r:#}"
    );
}
