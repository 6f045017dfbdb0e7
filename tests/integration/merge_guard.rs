//! `merge-guard`: the deployer prompt's contract.

/// The exact pre-merge step the deployer prompt must run.
const GUARD_STEP: &str = r#"orch merge-guard --task "$ORCH_TASK_ID" --merge"#;

/// Ways of merging other than the guard; a prompt may name them only to forbid them.
const OTHER_WAYS: &[&str] = &[
    "git merge",
    "git push",
    "git rebase",
    "git cherry-pick",
    "tea pr",
    "tea pulls",
    "gh pr",
    "/merge",
    "/pulls/",
    "api/v1",
    "curl",
    "wget",
    "http://",
    "https://",
    "\"do\":",
    "head_commit_id",
    "merge_when_checks_succeed",
    "manually-merged",
    "--no-ff",
    "--ff-only",
];

/// Words that make a sentence a prohibition.
const NEGATIONS: &[&str] = &["never", "must not", "do not", "don't"];

/// Returns why the prompt breaks the contract, or nothing when it keeps it.
fn prompt_problems(prompt: &str) -> Vec<String> {
    let mut problems = Vec::new();
    // The guard step, verbatim, inside a fenced code block.
    let mut in_code = false;
    let mut guard_in_code = false;
    for line in prompt.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        } else if in_code && line.trim() == GUARD_STEP {
            guard_in_code = true;
        }
    }
    if !guard_in_code {
        problems.push(format!("no code block runs `{GUARD_STEP}`"));
    }
    for (code, meaning) in [("0", "merged"), ("1", "BLOCKED"), ("2", "ERROR")] {
        let row = format!("| {code} |");
        if !prompt
            .lines()
            .any(|l| l.trim_start().starts_with(&row) && l.contains(meaning))
        {
            problems.push(format!("exit code {code} ({meaning}) is not explained"));
        }
    }
    let lower = prompt.to_lowercase();
    if !lower.contains("read the state again before anything irreversible") {
        problems.push("the re-read-before-irreversible rule is missing".into());
    }
    // Every other way of merging may appear only after a negation in its sentence.
    for sentence in sentences(&lower) {
        for way in OTHER_WAYS {
            let mut from = 0;
            while let Some(at) = sentence[from..].find(way) {
                let at = from + at;
                let before = &sentence[..at];
                if !NEGATIONS.iter().any(|n| before.contains(n)) {
                    problems.push(format!(
                        "describes another way to merge ({way}): {sentence}"
                    ));
                }
                from = at + way.len();
            }
        }
    }
    problems
}

/// Splits Markdown into sentences: wrapped lines joined, split at blank lines, list
/// items, table rows and sentence ends.
fn sentences(text: &str) -> Vec<String> {
    let mut blocks: Vec<String> = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        let starts_block = t.is_empty()
            || t.starts_with("- ")
            || t.starts_with('|')
            || t.starts_with("```")
            || t.starts_with('#')
            || t.chars().next().is_some_and(|c| c.is_ascii_digit()) && t.contains(". ");
        if starts_block && !cur.trim().is_empty() {
            blocks.push(std::mem::take(&mut cur));
        }
        cur.push(' ');
        cur.push_str(t);
        if t.starts_with('|') || t.starts_with("```") {
            blocks.push(std::mem::take(&mut cur));
        }
    }
    blocks.push(cur);
    blocks
        .iter()
        .flat_map(|b| {
            b.split(". ")
                .map(|s| s.trim().to_string())
                .collect::<Vec<_>>()
        })
        .filter(|s| !s.is_empty())
        .collect()
}

fn deployer_prompt() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/agents/deployer.md");
    std::fs::read_to_string(path).expect("docs/agents/deployer.md")
}

#[test]
fn the_deployer_prompt_merges_only_through_the_guard() {
    let prompt = deployer_prompt();
    let problems = prompt_problems(&prompt);
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn the_prompt_check_catches_a_prompt_that_drifts() {
    let good = deployer_prompt();
    assert!(prompt_problems(&good).is_empty());
    let drifted: Vec<(&str, String)> = vec![
        ("guard removed", good.replace(GUARD_STEP, "echo skipping the guard")),
        (
            "guard without --merge",
            good.replace(GUARD_STEP, r#"orch merge-guard --task "$ORCH_TASK_ID""#),
        ),
        (
            "merge API by curl",
            format!("{good}\nIf the guard fails, run `curl -X POST \"$GITEA/api/v1/repos/acme/shop/pulls/7/merge\" -d '{{\"Do\":\"merge\"}}'`.\n"),
        ),
        (
            "git merge into main",
            format!("{good}\nTo merge, check out main and run git merge task/shop-1, then push.\n"),
        ),
        ("tea", format!("{good}\n- Merge with `tea pr merge 7`.\n")),
        (
            "a numbered step",
            good.replace(
                "3. Deploy the default branch",
                "3. Merge with `git merge --no-ff` and deploy the default branch",
            ),
        ),
        (
            "exit codes no longer explained",
            good.replace("| 1 | BLOCKED", "| one | BLOCKED"),
        ),
        (
            "re-read rule dropped",
            good.replace("read the state again before anything irreversible", "be careful"),
        ),
    ];
    for (name, prompt) in drifted {
        assert_ne!(prompt, good, "{name}: the mutation must change the prompt");
        assert!(
            !prompt_problems(&prompt).is_empty(),
            "{name}: the check must catch it"
        );
    }
}

// ---------------------------------------------------------------------------------------
// The command against the Gitea stand-in.

use std::process::Stdio;
use std::time::Duration;

use orch::core::stage::Stage;
use orch::standin::gitea::{GiteaStandin, GiteaVersion, PullSeed, DEFAULT_TOKEN};
use orch::standin::server::{Gate, Reply};

use crate::common::{seed_task, snapshot, Project, Run, SeedTask, TestEnv, NOW_UNIX};

pub(crate) const REPO: &str = "acme/shop";
const BRANCH: &str = "task/shop-1-basket";
/// The head staging validated.
pub(crate) const HEAD: &str = "c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2";
/// A head pushed after validation.
const MOVED: &str = "0123456789abcdef0123456789abcdef01234567";
pub(crate) const MERGE_PATH: &str = "/api/v1/repos/acme/shop/pulls/7/merge";
const PULL_PATH: &str = "/api/v1/repos/acme/shop/pulls/7";

/// A Gitea with `acme/shop` and PR #7 from [`BRANCH`] at [`HEAD`], open and mergeable.
pub(crate) fn gitea() -> GiteaStandin {
    gitea_with(
        PullSeed::open(7, BRANCH)
            .head_sha(HEAD)
            .title("Add a basket page"),
    )
}

fn gitea_with(seed: PullSeed) -> GiteaStandin {
    let g = GiteaStandin::start(DEFAULT_TOKEN);
    g.add_repo(REPO, "main");
    g.add_pull(REPO, &seed);
    g
}

/// An env pointed at `g`, with a task SHOP-1 at `deploy` validated at `validated`.
pub(crate) fn env_with_task(g: &GiteaStandin, validated: Option<&str>, pr: Option<i64>) -> TestEnv {
    let mut env = TestEnv::new();
    env.set("ORCH_GITEA_URL", g.url())
        .set("ORCH_GITEA_TOKEN", DEFAULT_TOKEN)
        .set("ORCH_MERGE_GUARD_MERGEABLE_WAIT_S", "0")
        .set("ORCH_HTTP_TIMEOUT_S", "10");
    env.run(&["init"]).expect(0);
    let mut task = SeedTask::new(&Project::shop(), 1, Stage::Deploy)
        .work_item("0b8f5d2e-1111-4c3a-9d2e-000000000001")
        .title("Add a basket page")
        .branch(BRANCH);
    task.pr = pr;
    task.validated = validated.map(str::to_string);
    seed_task(&env, &task);
    env
}

fn guard(env: &TestEnv, extra: &[&str]) -> Run {
    let mut args = vec!["merge-guard", "--task", "SHOP-1"];
    args.extend_from_slice(extra);
    env.run(&args)
}

/// Asserts the one stdout line and the exit code.
#[track_caller]
fn expect_line(run: &Run, code: i32, outcome: &str) {
    assert_eq!(
        run.code, code,
        "exit code\nstdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line: {:?}", run.stdout);
    assert!(
        lines[0].starts_with(&format!("MERGE-GUARD: {outcome} ")),
        "{}\nstderr:\n{}",
        lines[0],
        run.stderr
    );
}

/// Makes the next `n` reads of PR #7 answer what the stand-in answers now, whatever the
/// model says later: a guard that read the PR just before someone else acted on it.
fn freeze_reads(g: &GiteaStandin, n: usize) {
    let value = read_pull_json(g);
    g.server()
        .script(Some("GET"), PULL_PATH, Reply::json(200, &value), n);
}

/// Like [`freeze_reads`] for the guard's two reads, then one more read showing the PR as
/// `change` leaves it (what the re-read after the merge call sees).
fn freeze_reads_then(g: &GiteaStandin, change: impl Fn(&mut serde_json::Value)) {
    let mut value = read_pull_json(g);
    g.server()
        .script(Some("GET"), PULL_PATH, Reply::json(200, &value), 2);
    change(&mut value);
    g.server()
        .script(Some("GET"), PULL_PATH, Reply::json(200, &value), 1);
}

fn read_pull_json(g: &GiteaStandin) -> serde_json::Value {
    let body = reqwest::blocking::Client::new()
        .get(format!("{}{PULL_PATH}", g.url()))
        .header("Authorization", format!("token {DEFAULT_TOKEN}"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    serde_json::from_str(&body).unwrap()
}

/// Merges PR #7 directly on the stand-in, as someone else would.
fn merge_behind_the_guards_back(g: &GiteaStandin) {
    let status = reqwest::blocking::Client::new()
        .post(format!("{}{MERGE_PATH}", g.url()))
        .header("Authorization", format!("token {DEFAULT_TOKEN}"))
        .json(&serde_json::json!({"Do": "merge"}))
        .send()
        .unwrap()
        .status();
    assert_eq!(status, 200);
}

fn gitea_error(status: u16, message: &str) -> Reply {
    Reply::json(
        status,
        &serde_json::json!({"message": message, "url": "https://git.example.com/api/swagger"}),
    )
}

#[test]
fn check_mode_outcomes_and_exit_codes() {
    type Setup = fn(&GiteaStandin);
    type Case = (
        &'static str,
        PullSeed,
        Option<&'static str>,
        Setup,
        i32,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            "open and mergeable",
            PullSeed::open(7, BRANCH).head_sha(HEAD),
            Some(HEAD),
            |_| {},
            0,
            "PROCEED",
        ),
        (
            "merged",
            PullSeed::open(7, BRANCH).head_sha(HEAD).merged(),
            Some(HEAD),
            |_| {},
            10,
            "ALREADY_MERGED",
        ),
        (
            "head already in base",
            PullSeed::open(7, BRANCH).head_sha(HEAD),
            Some(HEAD),
            |g| g.set_ahead(REPO, "main", HEAD, 0),
            10,
            "ALREADY_MERGED",
        ),
        (
            "closed unmerged",
            PullSeed::open(7, BRANCH).head_sha(HEAD).closed(),
            Some(HEAD),
            |_| {},
            1,
            "BLOCKED",
        ),
        (
            "WIP title",
            PullSeed::open(7, BRANCH)
                .head_sha(HEAD)
                .title("WIP: basket"),
            Some(HEAD),
            |_| {},
            1,
            "BLOCKED",
        ),
        (
            "not mergeable after the wait",
            PullSeed::open(7, BRANCH).head_sha(HEAD).mergeable(false),
            Some(HEAD),
            |_| {},
            1,
            "BLOCKED",
        ),
        (
            "head moved since validation",
            PullSeed::open(7, BRANCH).head_sha(MOVED),
            Some(HEAD),
            |_| {},
            1,
            "BLOCKED",
        ),
        (
            "no validated revision",
            PullSeed::open(7, BRANCH).head_sha(HEAD),
            None,
            |_| {},
            2,
            "ERROR",
        ),
        (
            "PR missing (1.25 body)",
            PullSeed::open(8, BRANCH).head_sha(HEAD),
            Some(HEAD),
            |_| {},
            2,
            "ERROR",
        ),
        (
            "PR missing (legacy body)",
            PullSeed::open(8, BRANCH).head_sha(HEAD),
            Some(HEAD),
            |g| g.set_version(GiteaVersion::Legacy),
            2,
            "ERROR",
        ),
    ];
    for (name, seed, validated, setup, code, outcome) in cases {
        let g = gitea_with(seed);
        setup(&g);
        let env = env_with_task(&g, validated, Some(7));
        let run = guard(&env, &[]);
        expect_line(&run, code, outcome);
        assert_eq!(g.merge_calls(REPO, 7), 0, "{name}: a check never merges");
    }
}

#[test]
fn a_bad_or_missing_token_is_an_error() {
    let g = gitea();
    let mut env = env_with_task(&g, Some(HEAD), Some(7));
    env.set("ORCH_GITEA_TOKEN", "wrong");
    let run = guard(&env, &["--merge"]);
    expect_line(&run, 2, "ERROR");
    assert!(run.stdout.contains("401"), "{}", run.stdout);
    assert!(
        !run.stderr.contains("wrong"),
        "the token never reaches a log"
    );
    env.unset("ORCH_GITEA_TOKEN");
    expect_line(&guard(&env, &[]), 2, "ERROR");
    assert_eq!(g.merge_calls(REPO, 7), 0);
}

#[test]
fn merge_merges_once_pinned_and_keeps_the_branch() {
    let g = gitea();
    let env = env_with_task(&g, Some(HEAD), Some(7));
    let run = guard(&env, &["--merge"]);
    expect_line(&run, 0, "MERGED");
    assert_eq!(g.merge_calls(REPO, 7), 1);
    let call = g
        .server()
        .requests()
        .into_iter()
        .find(|r| r.method == "POST" && r.path == MERGE_PATH)
        .unwrap();
    let body = call.json().unwrap();
    assert_eq!(body["head_commit_id"], HEAD);
    assert_eq!(body["delete_branch_after_merge"], false);
    assert_eq!(body["Do"], "merge");
    assert!(g.pull(REPO, 7).unwrap().merged);
    assert_eq!(g.branch(REPO, BRANCH).as_deref(), Some(HEAD), "branch kept");
    assert!(
        !env.path("state/merge-lease.json").exists(),
        "lease released"
    );

    // Re-driven: merged before, no second merge call, still exit 0.
    let again = guard(&env, &["--merge"]);
    expect_line(&again, 0, "ALREADY_MERGED");
    // Without --merge the deployer is told not to merge (10).
    expect_line(&guard(&env, &[]), 10, "ALREADY_MERGED");
    assert_eq!(g.merge_calls(REPO, 7), 1);
}

#[test]
fn head_already_in_base_counts_as_merged_without_a_merge_call() {
    let g = gitea();
    g.set_ahead(REPO, "main", HEAD, 0);
    let env = env_with_task(&g, Some(HEAD), Some(7));
    let run = guard(&env, &["--merge"]);
    expect_line(&run, 0, "ALREADY_MERGED");
    assert!(
        run.stdout.contains("already contained in main"),
        "{}",
        run.stdout
    );
    assert_eq!(g.merge_calls(REPO, 7), 0);
}

#[test]
fn head_moved_after_validation_is_blocked_without_a_merge_call() {
    let g = gitea();
    g.push(REPO, BRANCH, MOVED);
    let env = env_with_task(&g, Some(HEAD), Some(7));
    let run = guard(&env, &["--merge"]);
    expect_line(&run, 1, "BLOCKED");
    assert!(run.stdout.contains("moved"), "{}", run.stdout);
    assert_eq!(g.merge_calls(REPO, 7), 0);
    assert!(!g.pull(REPO, 7).unwrap().merged);
}

/// Every answer Gitea gives to a merge call (`reference/samples/gitea/merge-*.json`),
/// reached through the guard, with the outcome and exit code it must give.
#[test]
fn every_merge_answer_maps_to_its_outcome() {
    struct Case {
        name: &'static str,
        setup: Box<dyn Fn(&GiteaStandin)>,
        code: i32,
        outcome: &'static str,
        merged_after: bool,
    }
    fn case(
        name: &'static str,
        setup: impl Fn(&GiteaStandin) + 'static,
        code: i32,
        outcome: &'static str,
        merged_after: bool,
    ) -> Case {
        Case {
            name,
            setup: Box::new(setup),
            code,
            outcome,
            merged_after,
        }
    }
    // Someone merges between the guard's reads and its call: each version's natural
    // answer for an already merged PR, then the re-read says merged.
    let raced = |v: GiteaVersion| {
        move |g: &GiteaStandin| {
            g.set_version(v);
            freeze_reads(g, 2);
            merge_behind_the_guards_back(g);
        }
    };
    let scripted = |reply: Reply| {
        move |g: &GiteaStandin| {
            g.server()
                .script(Some("POST"), MERGE_PATH, reply.clone(), 1);
        }
    };
    let cases = vec![
        case("405 already merged, 1.25 (merge-405-already-merged)", raced(GiteaVersion::Current), 0, "MERGED", true),
        case("405 empty message, 1.17-1.24 and Forgejo (merge-405-already-merged-legacy)", raced(GiteaVersion::Legacy), 0, "MERGED", true),
        case("404 already merged, Gitea <= 1.16", raced(GiteaVersion::V1_16), 0, "MERGED", true),
        case("404 closed unmerged (merge-404-closed-unmerged)", |g: &GiteaStandin| {
            // Closed by someone between the guard's reads and its call.
            freeze_reads_then(g, |pr| pr["state"] = "closed".into());
            g.server().script(Some("POST"), MERGE_PATH, Reply::json(404, &serde_json::json!({"errors": null, "message": "not found", "url": "https://git.example.com/api/swagger"})), 1);
        }, 1, "BLOCKED", false),
        case("405 not mergeable (merge-405-try-again-later)", |g: &GiteaStandin| {
            freeze_reads(g, 2);
            g.set_mergeable(REPO, 7, false);
        }, 1, "BLOCKED", false),
        case("405 mergeable true: ancestor or protection (merge-405-try-again-later)", scripted(gitea_error(405, "Please try again later")), 1, "BLOCKED", false),
        case("405 work in progress (merge-405-wip)", |g: &GiteaStandin| {
            freeze_reads_then(g, |pr| {
                pr["title"] = "WIP: Add a basket page".into();
                pr["draft"] = true.into();
            });
            g.server().script(Some("POST"), MERGE_PATH, gitea_error(405, "Work in progress PRs cannot be merged"), 1);
        }, 1, "BLOCKED", false),
        case("405 not allowed (merge-405-not-allowed)", |g: &GiteaStandin| g.set_can_merge(REPO, false), 1, "BLOCKED", false),
        case("405 style not allowed (merge-405-style-not-allowed)", |g: &GiteaStandin| g.set_allowed_styles(REPO, &["squash"]), 1, "BLOCKED", false),
        case("405 protection, 1.24+ (merge-405-protection)", scripted(gitea_error(405, "Not all required status checks successful")), 1, "BLOCKED", false),
        case("405 protection, Forgejo (merge-405-protection-forgejo)", scripted(gitea_error(405, "not allowed to merge [reason: Not all required status checks successful]")), 1, "BLOCKED", false),
        case("409 head out of date (merge-409-head-out-of-date)", |g: &GiteaStandin| {
            freeze_reads(g, 2);
            g.push(REPO, BRANCH, MOVED);
        }, 1, "BLOCKED", false),
        case("409 merge push out of date (merge-409-push-out-of-date)", scripted(gitea_error(409, "merge push out of date")), 2, "ERROR", false),
        case("409 conflict struct (merge-409-conflict)", |g: &GiteaStandin| {
            freeze_reads(g, 2);
            g.set_mergeable(REPO, 7, false);
            g.server().script(Some("POST"), MERGE_PATH, Reply::json(409, &serde_json::json!({"Style": "merge", "StdOut": "CONFLICT (content): Merge conflict in src/fetch.rs\n", "StdErr": "", "Err": {}})), 1);
        }, 1, "BLOCKED", false),
        case("423 archived, 1.25 (merge-423-archived)", |g: &GiteaStandin| g.set_archived(REPO, true), 1, "BLOCKED", false),
        case("423 archived, legacy (merge-423-archived-legacy)", |g: &GiteaStandin| {
            g.set_version(GiteaVersion::Legacy);
            g.set_archived(REPO, true);
        }, 1, "BLOCKED", false),
        case("401 bad token (auth-401-bad-token)", scripted(gitea_error(401, "invalid username, password or token")), 2, "ERROR", false),
        case("401 bad token, legacy (auth-401-bad-token-legacy)", scripted(gitea_error(401, "user does not exist [uid: 0, name: ]")), 2, "ERROR", false),
        case("401 token required (auth-401-token-required)", scripted(gitea_error(401, "token is required")), 2, "ERROR", false),
        case("403 token scope (auth-403-token-scope)", scripted(gitea_error(403, "token does not have at least one of required scope(s), required=[write:repository], token scope=read:repository")), 2, "ERROR", false),
        case("404 PR missing (merge-404-pr-missing)", scripted(Reply::json(404, &serde_json::json!({"errors": ["pull request does not exist [id: 0]"], "message": "GetPullRequestByIndex", "url": "https://git.example.com/api/swagger"}))), 2, "ERROR", false),
        case("422 missing Do (merge-422-missing-do)", scripted(gitea_error(422, "[Do]: Required")), 2, "ERROR", false),
        case("500 unresolved dependency (message blank in production)", scripted(gitea_error(500, "")), 2, "ERROR", false),
    ];
    for c in cases {
        let g = gitea();
        let env = env_with_task(&g, Some(HEAD), Some(7));
        (c.setup)(&g);
        let run = guard(&env, &["--merge"]);
        assert_eq!(
            run.code, c.code,
            "{}\nstdout:\n{}\nstderr:\n{}",
            c.name, run.stdout, run.stderr
        );
        expect_line(&run, c.code, c.outcome);
        assert_eq!(
            g.pull(REPO, 7).unwrap().merged,
            c.merged_after,
            "{}",
            c.name
        );
        assert!(
            !env.path("state/merge-lease.json").exists(),
            "{}: lease released",
            c.name
        );
        let guard_calls = g
            .server()
            .requests()
            .iter()
            .filter(|r| {
                r.method == "POST"
                    && r.path == MERGE_PATH
                    && r.json().is_some_and(|b| b.get("head_commit_id").is_some())
            })
            .count();
        assert_eq!(
            guard_calls, 1,
            "{}: exactly one merge call by the guard",
            c.name
        );
    }
}

#[test]
fn ten_guards_at_once_merge_exactly_once_and_all_exit_0() {
    let g = gitea();
    let mut env = env_with_task(&g, Some(HEAD), Some(7));
    env.set("ORCH_MERGE_LEASE_WAIT_S", "120");
    let children: Vec<_> = (0..10)
        .map(|_| {
            env.command(&["merge-guard", "--task", "SHOP-1", "--merge"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let runs: Vec<Run> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap().into())
        .collect();
    for run in &runs {
        assert_eq!(
            run.code, 0,
            "stdout:\n{}\nstderr:\n{}",
            run.stdout, run.stderr
        );
        assert!(run.stdout.starts_with("MERGE-GUARD: "), "{}", run.stdout);
    }
    assert_eq!(g.merge_calls(REPO, 7), 1, "exactly one merge call");
    let merged_now = runs
        .iter()
        .filter(|r| r.stdout.contains(" MERGED "))
        .count();
    assert_eq!(
        merged_now, 1,
        "one guard merged, the others found it merged"
    );
    assert!(g.pull(REPO, 7).unwrap().merged);
    assert!(
        !env.path("state/merge-lease.json").exists(),
        "lease released"
    );
}

#[test]
fn a_lost_answer_is_read_again_and_not_merged_twice() {
    let g = gitea();
    let mut env = env_with_task(&g, Some(HEAD), Some(7));
    env.set("ORCH_HTTP_TIMEOUT_S", "1");
    // The stand-in merges, but the answer never arrives.
    g.server()
        .script_after(Some("POST"), MERGE_PATH, Reply::empty(200).unanswered(), 1);
    let run = guard(&env, &["--merge"]);
    expect_line(&run, 0, "MERGED");
    assert!(run.stdout.contains("no answer"), "{}", run.stdout);
    assert_eq!(g.merge_calls(REPO, 7), 1, "no second merge");
    assert!(g.pull(REPO, 7).unwrap().merged);
}

#[test]
fn a_lost_answer_without_a_merge_is_an_error() {
    let g = gitea();
    let mut env = env_with_task(&g, Some(HEAD), Some(7));
    env.set("ORCH_HTTP_TIMEOUT_S", "1");
    // The answer is lost and nothing merged: could not tell, run again later.
    g.server()
        .script(Some("POST"), MERGE_PATH, Reply::empty(200).unanswered(), 1);
    expect_line(&guard(&env, &["--merge"]), 2, "ERROR");
    assert_eq!(g.merge_calls(REPO, 7), 1);
    assert!(!g.pull(REPO, 7).unwrap().merged);
    // Run again: it merges.
    expect_line(&guard(&env, &["--merge"]), 0, "MERGED");
}

/// The host id the lease tests give the guard (a lease row names its holder's host).
const HOST: &str = "guard-host";

/// Writes someone else's merge lease: the file on SQLite, the `merge` row on PostgreSQL
/// (held by `pid` on this env's host).
fn write_lease(env: &mut TestEnv, pid: i64, start: Option<i64>, acquired_at: i64, ttl_s: i64) {
    if !crate::common::sqlite_only() {
        env.set("ORCH_HOST_ID", HOST);
        let start = start.map_or("-".to_string(), |s| s.to_string());
        env.db()
            .execute(
                "INSERT INTO leases (name, holder, generation, acquired_at, expires_at, detail)
                 VALUES ('merge', ?1, 1, ?2, ?3, '{\"job_id\": 99, \"task\": \"OTHER-1\"}')",
                orch::sql_params![
                    format!("{HOST}:{pid}:{start}"),
                    acquired_at,
                    acquired_at + ttl_s
                ],
            )
            .unwrap();
        return;
    }
    std::fs::create_dir_all(env.path("state")).unwrap();
    let lease = serde_json::json!({
        "job_id": 99, "task": "OTHER-1", "pid": pid, "pid_start_time": start,
        "acquired_at": acquired_at, "ttl_s": ttl_s,
    });
    std::fs::write(env.path("state/merge-lease.json"), lease.to_string()).unwrap();
}

#[test]
fn a_lease_held_beyond_the_bound_is_an_error_without_merging() {
    let g = gitea();
    let mut env = env_with_task(&g, Some(HEAD), Some(7));
    env.set("ORCH_MERGE_LEASE_WAIT_S", "1");
    // Held by this test process: alive, and well within its TTL.
    let me = i64::from(std::process::id());
    let start = orch::adapters::process::start_time(me);
    write_lease(&mut env, me, start, NOW_UNIX, 3600);
    let run = guard(&env, &["--merge"]);
    expect_line(&run, 2, "ERROR");
    assert!(
        run.stdout.contains("OTHER-1"),
        "names the holder: {}",
        run.stdout
    );
    assert_eq!(g.merge_calls(REPO, 7), 0);
    if !crate::common::sqlite_only() {
        assert_eq!(
            env.count("SELECT generation FROM leases WHERE name = 'merge' AND released_at IS NULL"),
            1,
            "someone else's lease row is left alone"
        );
        return;
    }
    assert!(
        env.path("state/merge-lease.json").exists(),
        "someone else's lease is left alone"
    );

    // The lease lock itself held (a guard mid-way through reading the lease): same.
    std::fs::remove_file(env.path("state/merge-lease.json")).unwrap();
    let lease = orch::adapters::lease::MergeLease::new(&env.path("state"));
    let lock = lease.lock().unwrap();
    expect_line(&guard(&env, &["--merge"]), 2, "ERROR");
    assert_eq!(g.merge_calls(REPO, 7), 0);
    drop(lock);
    expect_line(&guard(&env, &["--merge"]), 0, "MERGED");
}

#[test]
fn a_stale_lease_is_taken_over() {
    for (name, pid, acquired_at, ttl) in [
        ("holder dead", i64::from(i32::MAX), NOW_UNIX, 3600),
        (
            "ttl passed",
            i64::from(std::process::id()),
            NOW_UNIX - 7200,
            600,
        ),
    ] {
        let g = gitea();
        let mut env = env_with_task(&g, Some(HEAD), Some(7));
        env.set("ORCH_MERGE_LEASE_WAIT_S", "0");
        write_lease(&mut env, pid, None, acquired_at, ttl);
        let run = guard(&env, &["--merge"]);
        expect_line(&run, 0, "MERGED");
        assert!(
            run.stderr.contains("stale merge lease"),
            "{name}: {}",
            run.stderr
        );
        if !crate::common::sqlite_only() {
            assert_eq!(
                env.count(
                    "SELECT generation FROM leases WHERE name = 'merge' AND released_at IS NOT NULL"
                ),
                2,
                "{name}: taken over once, then released"
            );
            continue;
        }
        assert!(
            !env.path("state/merge-lease.json").exists(),
            "{name}: released"
        );
    }
}

#[test]
fn a_malformed_lease_is_left_for_a_human() {
    // A file only (PostgreSQL has the lease row: tests/integration/leases.rs).
    if !crate::common::sqlite_only() {
        return;
    }
    let g = gitea();
    let env = env_with_task(&g, Some(HEAD), Some(7));
    std::fs::create_dir_all(env.path("state")).unwrap();
    std::fs::write(env.path("state/merge-lease.json"), "{not json").unwrap();
    expect_line(&guard(&env, &["--merge"]), 2, "ERROR");
    assert_eq!(g.merge_calls(REPO, 7), 0);
    assert_eq!(
        std::fs::read_to_string(env.path("state/merge-lease.json")).unwrap(),
        "{not json"
    );
}

#[test]
fn the_lease_names_the_job_while_the_merge_runs() {
    let g = gitea();
    let mut env = env_with_task(&g, Some(HEAD), Some(7));
    env.set("ORCH_JOB_ID", "42")
        .set("ORCH_TASK_ID", "1")
        .set("ORCH_TASK_KEY", "SHOP-1");
    // Hold the merge answer back until the test has looked at the lease.
    let gate = Gate::new();
    g.server()
        .script_after(Some("POST"), MERGE_PATH, Reply::empty(200).held(&gate), 1);
    let child = env
        .command(&["merge-guard", "--task", "SHOP-1", "--merge"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = i64::from(child.id());
    loop {
        let r = g
            .server()
            .next_arrival(Duration::from_secs(30))
            .expect("the merge call arrives");
        if r.method == "POST" && r.path == MERGE_PATH {
            break;
        }
    }
    if !crate::common::sqlite_only() {
        let (holder, detail, acquired_at, expires_at): (String, String, i64, i64) = env
            .db()
            .query_row(
                "SELECT holder, detail, acquired_at, expires_at FROM leases
                 WHERE name = 'merge' AND released_at IS NULL",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap();
        gate.open();
        let detail: serde_json::Value = serde_json::from_str(&detail).unwrap();
        assert_eq!(detail["job_id"], 42);
        assert_eq!(detail["task"], "SHOP-1");
        assert!(holder.contains(&format!(":{pid}:")), "{holder}");
        assert_eq!((acquired_at, expires_at), (NOW_UNIX, NOW_UNIX + 600));
        let run: Run = child.wait_with_output().unwrap().into();
        expect_line(&run, 0, "MERGED");
        assert_eq!(
            env.count("SELECT count(*) FROM leases WHERE released_at IS NULL"),
            0,
            "released"
        );
        return;
    }
    let lease: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(env.path("state/merge-lease.json")).unwrap())
            .unwrap();
    gate.open();
    assert_eq!(lease["job_id"], 42);
    assert_eq!(lease["task"], "SHOP-1");
    assert_eq!(lease["pid"], pid);
    assert_eq!(lease["acquired_at"], NOW_UNIX);
    assert_eq!(lease["ttl_s"], 600);
    let run: Run = child.wait_with_output().unwrap().into();
    expect_line(&run, 0, "MERGED");
    assert!(!env.path("state/merge-lease.json").exists());
}

#[test]
fn a_bad_job_id_is_an_error_before_any_call() {
    let g = gitea();
    let mut env = env_with_task(&g, Some(HEAD), Some(7));
    env.set("ORCH_JOB_ID", "forty-two");
    let run = guard(&env, &["--merge"]);
    expect_line(&run, 2, "ERROR");
    assert!(run.stdout.contains("ORCH_JOB_ID"), "{}", run.stdout);
    assert_eq!(g.server().requests().len(), 0);
}

#[test]
fn mergeable_still_computing_is_read_again() {
    let g = gitea_with(PullSeed::open(7, BRANCH).head_sha(HEAD).mergeable(false));
    let mut env = env_with_task(&g, Some(HEAD), Some(7));
    env.set("ORCH_MERGE_GUARD_MERGEABLE_WAIT_S", "30");
    // The first read sees the conflict check running; then it finishes.
    let child = guard_reading_the_pr(&g, &env, &[]);
    g.set_mergeable(REPO, 7, true);
    let run: Run = child.wait_with_output().unwrap().into();
    expect_line(&run, 0, "PROCEED");
    assert!(g.count(Some("GET"), REPO, "pulls/7") >= 2, "read again");
}

#[test]
fn the_pr_is_found_by_its_head_branch_and_recorded() {
    let g = gitea();
    g.add_pull(REPO, &PullSeed::open(3, "task/other").head_sha(MOVED));
    let env = env_with_task(&g, Some(HEAD), None);
    expect_line(&guard(&env, &[]), 0, "PROCEED");
    assert_eq!(
        env.count("SELECT pr_number FROM tasks WHERE key = 'SHOP-1'"),
        7
    );

    let g = gitea_with(PullSeed::open(3, "task/other").head_sha(MOVED));
    let env = env_with_task(&g, Some(HEAD), None);
    let run = guard(&env, &["--merge"]);
    expect_line(&run, 2, "ERROR");
    assert!(run.stdout.contains("no open PR"), "{}", run.stdout);
    expect_line(&env.run(&["merge-guard", "--task", "NOPE-9"]), 2, "ERROR");
}

#[test]
fn repo_and_pr_pin_the_head_as_read() {
    let g = gitea();
    let mut env = TestEnv::new();
    env.set("ORCH_GITEA_URL", g.url())
        .set("ORCH_GITEA_TOKEN", DEFAULT_TOKEN)
        .set("ORCH_MERGE_GUARD_MERGEABLE_WAIT_S", "0");
    expect_line(
        &env.run(&["merge-guard", "--repo", REPO, "--pr", "7"]),
        0,
        "PROCEED",
    );
    expect_line(
        &env.run(&["merge-guard", "--repo", REPO, "--pr", "7", "--merge"]),
        0,
        "MERGED",
    );
    let call = g
        .server()
        .requests()
        .into_iter()
        .find(|r| r.method == "POST" && r.path == MERGE_PATH)
        .unwrap();
    assert_eq!(call.json().unwrap()["head_commit_id"], HEAD);
    expect_line(
        &env.run(&["merge-guard", "--repo", REPO, "--pr", "7"]),
        10,
        "ALREADY_MERGED",
    );
}

#[test]
fn usage_errors_exit_2() {
    let env = TestEnv::new();
    for args in [
        vec!["merge-guard"],
        vec!["merge-guard", "--repo", "acme"],
        vec!["merge-guard", "--repo", "acme", "--pr", "7"],
        vec!["merge-guard", "--repo", "acme/shop", "--pr", "0"],
        vec![
            "merge-guard",
            "--task",
            "SHOP-1",
            "--repo",
            "acme/shop",
            "--pr",
            "7",
        ],
    ] {
        assert_eq!(env.run(&args).code, 2, "{args:?}");
    }
}

#[test]
fn the_answer_is_one_line_with_the_exit_status() {
    let answer = |g: &GiteaStandin, validated: Option<&str>| {
        let env = env_with_task(g, validated, Some(7));
        snapshot::report(&env, &guard(&env, &[]))
    };
    insta::assert_snapshot!(answer(&gitea(), Some(HEAD)), @r#"
    exit: 0
    MERGE-GUARD: PROCEED acme/shop#7 open, not merged and mergeable at head c3d4e5f6a7
    "#);
    let moved = gitea_with(PullSeed::open(7, BRANCH).head_sha(MOVED));
    insta::assert_snapshot!(answer(&moved, Some(HEAD)), @r#"
    exit: 1
    MERGE-GUARD: BLOCKED acme/shop#7 PR #7's head moved since it was validated: head 0123456789, validated c3d4e5f6a7
    "#);
    insta::assert_snapshot!(answer(&gitea(), None), @r#"
    exit: 2
    MERGE-GUARD: ERROR acme/shop#7 task SHOP-1 has no validated revision to pin PR #7's merge to (staging has not recorded one): not merging head c3d4e5f6a7; deploy that head to staging and run `orch staging-check --task SHOP-1` (it records the revision), then run the guard again
    "#);
}

#[test]
fn a_hold_blocks_the_merge_with_its_reason_until_cleared() {
    let g = gitea();
    let env = env_with_task(&g, Some(HEAD), Some(7));
    env.run(&[
        "hold",
        "set",
        "--project",
        "shop",
        "--reason",
        "release freeze",
        "--by",
        "ada",
    ])
    .expect(0);
    for extra in [&[][..], &["--merge"][..]] {
        let out = guard(&env, extra);
        expect_line(&out, 1, "BLOCKED");
        assert!(
            out.stdout.contains("project shop is on hold")
                && out.stdout.contains("by ada): release freeze"),
            "{}",
            out.stdout
        );
    }
    // By repository too: the PR is in the project's repository.
    let out = env.run(&["merge-guard", "--repo", REPO, "--pr", "7"]);
    expect_line(&out, 1, "BLOCKED");
    assert_eq!(g.merge_calls(REPO, 7), 0, "a held project is never merged");
    // Another project's hold does not stop it.
    env.run(&["hold", "clear", "--project", "shop"]).expect(0);
    env.run(&["hold", "set", "--project", "orch", "--reason", "incident"])
        .expect(0);
    expect_line(&guard(&env, &["--merge"]), 0, "MERGED");
    assert_eq!(g.merge_calls(REPO, 7), 1);
}

#[test]
fn a_hold_set_while_the_guard_waits_still_stops_the_merge() {
    // The conflict check is still running when the guard starts, so it waits; the
    // operator sets the hold meanwhile.
    let g = gitea_with(PullSeed::open(7, BRANCH).head_sha(HEAD).mergeable(false));
    let mut env = env_with_task(&g, Some(HEAD), Some(7));
    env.set("ORCH_MERGE_GUARD_MERGEABLE_WAIT_S", "30");
    let child = guard_reading_the_pr(&g, &env, &["--merge"]);
    env.run(&["hold", "set", "--project", "shop", "--reason", "incident"])
        .expect(0);
    g.set_mergeable(REPO, 7, true);
    let run: Run = child.wait_with_output().unwrap().into();
    expect_line(&run, 1, "BLOCKED");
    assert!(run.stdout.contains("on hold"), "{}", run.stdout);
    assert_eq!(g.merge_calls(REPO, 7), 0, "no merge once the hold is on");
    assert!(
        !env.path("state/merge-lease.json").exists(),
        "lease released"
    );
}

/// Starts `merge-guard --task SHOP-1` with `extra` flags and returns once it has read
/// the PR (answered), while it waits for the conflict check.
fn guard_reading_the_pr(g: &GiteaStandin, env: &TestEnv, extra: &[&str]) -> std::process::Child {
    let mut child = env
        .command(&[&["merge-guard", "--task", "SHOP-1"][..], extra].concat())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    loop {
        let Some(r) = g.server().next_request(Duration::from_secs(30)) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the guard never read the PR");
        };
        if r.method == "GET" && r.path == PULL_PATH {
            return child;
        }
    }
}
