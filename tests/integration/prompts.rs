//! The agents' prompts (`docs/agents/<agent>.md`) and the code, kept in step.
//!
//! For each of the four prompts: the artefact files, frontmatter keys and values it names
//! are those of `orch::core::artefact` (read from the crate's constants and status enums,
//! never copied), it names the artefact the code reads for its agent with every value,
//! every snake_case field it names in code is a real task or report field, and every
//! `orch …` command line it names (in code blocks and inline code) parses with the real
//! CLI and runs through the real binary, at the stage its section is about, against a
//! Gitea stand-in, without a usage or internal error.

use std::collections::{BTreeMap, BTreeSet};

use clap::Parser;
use orch::cli::{Cli, Command};
use orch::config::JOB_CONTEXT_ENV;
use orch::core::artefact::{
    frontmatter, parse_staging_report, AnalysisStatus, DeployStatus, PostDeployVerdict,
    ReviewVerdict, StagingStatus, StatusValue, ANALYSIS_FILE, DEPLOY_REPORT_FILE,
    POST_DEPLOY_LOG_FILE, REVIEW_FILE, STAGING_REPORT_FILE,
};
use orch::core::stage::{Agent, Stage};
use orch::standin::gitea::{GiteaStandin, PullSeed, DEFAULT_TOKEN};

use crate::common::{default_pipeline, seed_task, Project, Run, SeedTask, TestEnv};

// ---------------------------------------------------------------------------------------
// The contract, from the crate.

/// One status key of the artefact contract, as the crate defines it.
#[derive(Debug, Clone)]
struct Contract {
    file: &'static str,
    key: &'static str,
    values: Vec<&'static str>,
}

fn contract<T: StatusValue>() -> Contract {
    Contract {
        file: T::FILE,
        key: T::KEY,
        values: T::VALUES.iter().map(|(s, _)| *s).collect(),
    }
}

/// Every status key gates read (or orch writes), one per artefact file.
fn contracts() -> Vec<Contract> {
    vec![
        contract::<AnalysisStatus>(),
        contract::<ReviewVerdict>(),
        contract::<StagingStatus>(),
        contract::<DeployStatus>(),
        contract::<PostDeployVerdict>(),
    ]
}

/// What one agent's prompt must name.
struct Expect {
    agent: Agent,
    /// The artefacts the agent writes (or has orch write for it): file, key and every value.
    writes: Vec<Contract>,
    /// The artefacts it must read (file names).
    reads: Vec<&'static str>,
}

fn expectations() -> Vec<Expect> {
    vec![
        Expect {
            agent: Agent::Analyst,
            writes: vec![contract::<AnalysisStatus>()],
            reads: vec![],
        },
        Expect {
            agent: Agent::Developer,
            writes: vec![],
            // The analysis it builds from, and the feedback of every stage that sends a
            // task back to development.
            reads: vec![
                ANALYSIS_FILE,
                REVIEW_FILE,
                STAGING_REPORT_FILE,
                DEPLOY_REPORT_FILE,
                POST_DEPLOY_LOG_FILE,
            ],
        },
        Expect {
            agent: Agent::Reviewer,
            writes: vec![contract::<ReviewVerdict>()],
            reads: vec![ANALYSIS_FILE],
        },
        Expect {
            agent: Agent::Deployer,
            // staging-check writes the staging report on the deployer's behalf; the prompt
            // must still say what it means.
            writes: vec![contract::<StagingStatus>(), contract::<DeployStatus>()],
            reads: vec![],
        },
    ]
}

fn prompt(agent: Agent) -> String {
    let path = format!(
        "{}/docs/agents/{}.md",
        env!("CARGO_MANIFEST_DIR"),
        agent.as_str()
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The stages whose jobs run this agent.
fn stages_of(agent: Agent) -> Vec<Stage> {
    Stage::ALL
        .into_iter()
        .filter(|s| s.agent() == Some(agent))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Reading a prompt.

/// A piece of code in a prompt: an inline span, or one line of a fenced block, with the
/// stage its section is about (a heading that names a stage in backticks).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Span {
    text: String,
    stage: Option<Stage>,
}

fn stage_in_heading(heading: &str) -> Option<Stage> {
    Stage::ALL
        .into_iter()
        .find(|s| heading.contains(&format!("`{}`", s.as_str())))
}

/// Returns the inline code spans (wrapped lines joined) and fenced code lines.
fn spans(prompt: &str) -> Vec<Span> {
    fn flush(para: &mut String, stage: Option<Stage>, out: &mut Vec<Span>) {
        for (i, piece) in para.split('`').enumerate() {
            if i % 2 == 1 {
                out.push(Span {
                    text: piece.split_whitespace().collect::<Vec<_>>().join(" "),
                    stage,
                });
            }
        }
        para.clear();
    }
    let mut out = Vec::new();
    let mut para = String::new();
    let mut stage = None;
    let mut fenced = false;
    for line in prompt.lines() {
        let t = line.trim_start();
        if t.starts_with("```") {
            flush(&mut para, stage, &mut out);
            fenced = !fenced;
        } else if fenced {
            out.push(Span {
                text: line.trim().to_string(),
                stage,
            });
        } else if t.starts_with('#') {
            flush(&mut para, stage, &mut out);
            stage = stage_in_heading(t);
            para.push_str(t);
            flush(&mut para, stage, &mut out);
        } else {
            para.push_str(line);
            para.push('\n');
        }
    }
    flush(&mut para, stage, &mut out);
    out
}

/// Returns the `orch …` command lines among the spans (a bare `orch` is the name).
fn command_lines(prompt: &str) -> Vec<Span> {
    spans(prompt)
        .into_iter()
        .filter_map(|s| {
            let text = s.text.strip_prefix("$ ").unwrap_or(&s.text).trim();
            text.starts_with("orch ").then(|| Span {
                text: text.to_string(),
                stage: s.stage,
            })
        })
        .collect()
}

/// Splits one shell command line into words as `sh` would for a simple command:
/// quotes, backslashes and `$NAME` / `${NAME}` from `vars` (an unknown name is an error);
/// it stops at the first unquoted `|`, `;`, `&`, `<` or `>` (the rest is not `orch`'s).
fn shell_words(line: &str, vars: &BTreeMap<String, String>) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut started = false;
    let mut chars = line.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some('\''), '\'') | (Some('"'), '"') => quote = None,
            (Some('\''), c) => word.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                started = true;
            }
            (_, '\\') => {
                if let Some(n) = chars.next() {
                    word.push(n);
                    started = true;
                }
            }
            (_, '$') => {
                let braced = chars.next_if_eq(&'{').is_some();
                let mut name = String::new();
                while let Some(n) = chars.next_if(|n| n.is_ascii_alphanumeric() || *n == '_') {
                    name.push(n);
                }
                if braced && chars.next_if_eq(&'}').is_none() {
                    return Err(format!("unclosed ${{{name} in {line:?}"));
                }
                let value = vars.get(&name).ok_or_else(|| {
                    format!("${name} is not in an agent's environment (JOB_CONTEXT_ENV): {line:?}")
                })?;
                word.push_str(value);
                started = true;
            }
            (None, '|' | ';' | '&' | '<' | '>') => break,
            (None, c) if c.is_whitespace() => {
                if started {
                    words.push(std::mem::take(&mut word));
                    started = false;
                }
            }
            (_, c) => {
                word.push(c);
                started = true;
            }
        }
    }
    if quote.is_some() {
        return Err(format!("unclosed quote in {line:?}"));
    }
    if started {
        words.push(word);
    }
    Ok(words)
}

/// The agent's environment for `task`: every name of [`JOB_CONTEXT_ENV`] with its value.
fn job_vars(task_id: i64, key: &str, job_id: i64, artefacts: &str) -> BTreeMap<String, String> {
    JOB_CONTEXT_ENV
        .iter()
        .map(|name| {
            let value = match *name {
                "ORCH_TASK_ID" => task_id.to_string(),
                "ORCH_TASK_KEY" => key.to_string(),
                "ORCH_JOB_ID" => job_id.to_string(),
                "ORCH_TASK_ARTEFACTS" => artefacts.to_string(),
                "ORCH_WORKSPACE" => format!("/var/lib/orch/workspaces/{task_id}-{key}"),
                // A developer sent back; unset on the first round.
                "ORCH_FEEDBACK" => format!("{artefacts}/feedback-1.md"),
                other => panic!("run-job now sets {other}: give it a value here"),
            };
            (name.to_string(), value)
        })
        .collect()
}

/// Returns why a prompt's command lines do not parse with the real CLI.
fn command_parse_problems(prompt: &str, vars: &BTreeMap<String, String>) -> Vec<String> {
    let mut problems = Vec::new();
    for line in command_lines(prompt) {
        match shell_words(&line.text, vars) {
            Err(e) => problems.push(e),
            Ok(words) => {
                if let Err(e) = Cli::try_parse_from(&words) {
                    problems.push(format!(
                        "`{}` does not parse: {}",
                        line.text,
                        first_line(&e)
                    ));
                }
            }
        }
    }
    problems
}

/// Returns the first line of a clap error (the rest is usage).
fn first_line(e: &clap::Error) -> String {
    e.to_string().lines().next().unwrap_or("").to_string()
}

/// Returns the `NN-name.md` artefact file names the text mentions.
fn artefact_names(text: &str) -> BTreeSet<String> {
    let b = text.as_bytes();
    let mut names = BTreeSet::new();
    for i in 0..b.len().saturating_sub(3) {
        let boundary = i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'-');
        if !(boundary && b[i].is_ascii_digit() && b[i + 1].is_ascii_digit() && b[i + 2] == b'-') {
            continue;
        }
        let mut j = i + 3;
        while j < b.len() && (b[j].is_ascii_lowercase() || b[j].is_ascii_digit() || b[j] == b'-') {
            j += 1;
        }
        if text[j..].starts_with(".md") {
            names.insert(text[i..j + 3].to_string());
        }
    }
    names
}

/// Returns the `key: VALUE` pairs in the text (a snake_case key, an upper-case value).
fn key_value_pairs(text: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut from = 0;
    while let Some(at) = text[from..].find(": ") {
        let at = from + at;
        from = at + 2;
        let key_start = text[..at]
            .rfind(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .map_or(0, |i| i + 1);
        let key = &text[key_start..at];
        let rest = &text[at + 2..];
        let value_len = rest
            .find(|c: char| !(c.is_ascii_uppercase() || c == '_'))
            .unwrap_or(rest.len());
        let value = &rest[..value_len];
        let whole_word = !rest[value_len..].starts_with(|c: char| c.is_alphanumeric());
        if key.starts_with(|c: char| c.is_ascii_lowercase())
            && value.starts_with(|c: char| c.is_ascii_uppercase())
            && whole_word
        {
            pairs.push((key.to_string(), value.to_string()));
        }
    }
    pairs
}

fn is_status_like(key: &str) -> bool {
    key.ends_with("_status") || key.ends_with("_verdict")
}

/// Returns how the prompt breaks the artefact contract for its agent, or nothing.
fn artefact_problems(prompt: &str, expect: &Expect) -> Vec<String> {
    let all = contracts();
    let mut problems = Vec::new();
    let named = artefact_names(prompt);
    let known: BTreeSet<&str> = all.iter().map(|c| c.file).collect();
    for name in &named {
        if !known.contains(name.as_str()) {
            problems.push(format!(
                "names {name}, an artefact orch does not know (known: {known:?})"
            ));
        }
    }
    let required = expect
        .writes
        .iter()
        .map(|c| c.file)
        .chain(expect.reads.iter().copied());
    for file in required {
        if !named.contains(file) {
            problems.push(format!(
                "never names {file}, which the {} must {}",
                expect.agent.as_str(),
                if expect.writes.iter().any(|c| c.file == file) {
                    "write"
                } else {
                    "read"
                }
            ));
        }
    }
    let pairs = key_value_pairs(prompt);
    for (key, value) in &pairs {
        match all.iter().find(|c| c.key == key) {
            Some(c) if !c.values.contains(&value.as_str()) => problems.push(format!(
                "`{key}: {value}`: {value} is not a value of {key} in {} (values: {:?})",
                c.file, c.values
            )),
            Some(_) => {}
            None if is_status_like(key) => problems.push(format!(
                "`{key}: {value}`: orch reads no key {key} (keys: {:?})",
                all.iter().map(|c| c.key).collect::<Vec<_>>()
            )),
            None => {}
        }
    }
    for span in spans(prompt) {
        let t = span.text.as_str();
        if is_identifier(t) && is_status_like(t) && !all.iter().any(|c| c.key == t) {
            problems.push(format!("names `{t}`, a key orch does not read"));
        }
    }
    for c in &expect.writes {
        for value in &c.values {
            if !pairs.iter().any(|(k, v)| k == c.key && v == value) {
                problems.push(format!(
                    "never says `{}: {value}` ({} must explain every value it can hold)",
                    c.key, c.file
                ));
            }
        }
    }
    problems
}

/// Whether a span is one snake_case identifier with at least one underscore.
fn is_identifier(t: &str) -> bool {
    t.contains('_')
        && t.starts_with(|c: char| c.is_ascii_lowercase())
        && t.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

// ---------------------------------------------------------------------------------------
// Running the commands: one env per agent stage, with the task at that stage.

const REPO: &str = "acme/shop";
const KEY: &str = "SHOP-1";
const BRANCH: &str = "task/shop-1-basket";
const HEAD: &str = "c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2";
const PR: i64 = 7;

/// A task at `stage` in an env pointed at a Gitea stand-in where its PR is open, CI is
/// green on the head, and (at `deploy`) staging validated that head.
struct StageEnv {
    env: TestEnv,
    vars: BTreeMap<String, String>,
    gitea: GiteaStandin,
}

fn stage_env(stage: Stage) -> StageEnv {
    let gitea = GiteaStandin::start(DEFAULT_TOKEN);
    gitea.add_repo(REPO, "main");
    gitea.push(REPO, BRANCH, HEAD);
    gitea.add_pull(REPO, &PullSeed::open(PR as u64, BRANCH).head_sha(HEAD));
    gitea.add_status(REPO, HEAD, "ci/build", "success");
    let pipeline = format!(
        "{}staging:\n  checks:\n    - {{ id: C1, name: smoke, kind: command, argv: [/bin/true], timeout_s: 5 }}\n    - {{ id: F1, name: image, kind: image-freshness, argv: [/bin/echo, \"{HEAD}\"] }}\n",
        default_pipeline()
    );
    let mut env = TestEnv::with_pipeline(&pipeline);
    env.set("ORCH_GITEA_URL", gitea.url())
        .set("ORCH_GITEA_TOKEN", DEFAULT_TOKEN)
        .set("ORCH_MERGE_GUARD_MERGEABLE_WAIT_S", "0")
        .set("ORCH_HTTP_TIMEOUT_S", "10");
    env.run(&["init"]).expect(0);
    let has_pr = !matches!(stage, Stage::Analysis | Stage::Development);
    let validated = (stage == Stage::Deploy).then_some(HEAD);
    let mut task = SeedTask::new(&Project::shop(), 1, stage)
        .work_item("0b8f5d2e-1111-4c3a-9d2e-000000000001")
        .title("Add a basket page")
        .branch(BRANCH);
    task.pr = has_pr.then_some(PR);
    task.validated = validated.map(str::to_string);
    let task_id = seed_task(&env, &task);
    let artefacts = env.path("artefacts").join(KEY);
    std::fs::create_dir_all(&artefacts).unwrap();
    let vars = job_vars(task_id, KEY, 1, &artefacts.display().to_string());
    for (name, value) in &vars {
        env.set(name, value);
    }
    StageEnv { env, vars, gitea }
}

/// Exit codes a command may legitimately end with: done, a verdict said no, and
/// merge-guard's ALREADY_MERGED. 2 (usage, configuration or internal error) never is.
const VERDICT_CODES: &[i32] = &[0, 1, 10];

/// Runs one command line through the real binary; returns why it failed, if it did.
fn run_problem(se: &StageEnv, line: &str) -> Option<String> {
    let words = match shell_words(line, &se.vars) {
        Ok(w) => w,
        Err(e) => return Some(e),
    };
    if let Err(e) = Cli::try_parse_from(&words) {
        return Some(format!("`{line}` does not parse: {}", first_line(&e)));
    }
    let args: Vec<&str> = words[1..].iter().map(String::as_str).collect();
    let run: Run = se.env.run(&args);
    eprintln!("ran `{line}`: exit {}", run.code);
    (!VERDICT_CODES.contains(&run.code)).then(|| {
        format!(
            "`{line}` exited {}\nstdout:\n{}\nstderr:\n{}",
            run.code, run.stdout, run.stderr
        )
    })
}

#[test]
fn every_prompt_names_the_artefacts_the_code_reads() {
    for expect in expectations() {
        let problems = artefact_problems(&prompt(expect.agent), &expect);
        assert!(
            problems.is_empty(),
            "docs/agents/{}.md: {problems:#?}",
            expect.agent.as_str()
        );
    }
}

#[test]
fn every_orch_command_a_prompt_names_parses_and_runs_at_its_stage() {
    let mut problems = Vec::new();
    let mut ran = 0;
    let mut deployer_envs = BTreeMap::new();
    for agent in Agent::ALL {
        let text = prompt(agent);
        let lines = command_lines(&text);
        assert!(
            lines
                .iter()
                .any(|l| l.text == r#"orch task show "$ORCH_TASK_ID" --json"#),
            "{}: the prompt must tell the agent to read the task",
            agent.as_str()
        );
        let own = stages_of(agent);
        let mut envs: BTreeMap<&str, StageEnv> = BTreeMap::new();
        for line in &lines {
            // A line outside the stage sections runs at every stage of the agent, unless
            // a stage section names the same line: then it refers to that step.
            let sectioned: Vec<Stage> = lines
                .iter()
                .filter(|l| l.text == line.text)
                .filter_map(|l| l.stage)
                .collect();
            let stages = match line.stage {
                Some(s) if own.contains(&s) => vec![s],
                Some(s) => {
                    problems.push(format!(
                        "{}: `{}` is in a section about stage {s}, which is not the {}'s",
                        agent.as_str(),
                        line.text,
                        agent.as_str()
                    ));
                    continue;
                }
                None if sectioned.is_empty() => own.clone(),
                None => sectioned,
            };
            for stage in stages {
                let se = envs
                    .entry(stage.as_str())
                    .or_insert_with(|| stage_env(stage));
                if let Some(p) = run_problem(se, &line.text) {
                    problems.push(format!("{} at {stage}: {p}", agent.as_str()));
                }
                ran += 1;
            }
        }
        if agent == Agent::Deployer {
            deployer_envs = envs;
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    // Four prompts each read the task; the deployer also checks staging and merges.
    assert!(
        ran >= 6,
        "only {ran} command runs: is the extraction broken?"
    );
    // What the deployer's prompt says its commands do, they did: staging-check wrote the
    // report the gate reads, and the guard merged the PR exactly once however often the
    // prompt names it.
    let staging = &deployer_envs[Stage::DeployStaging.as_str()];
    let report = std::fs::read_to_string(
        staging.vars["ORCH_TASK_ARTEFACTS"].clone() + "/" + STAGING_REPORT_FILE,
    )
    .expect("the deploy-staging step writes the staging report");
    parse_staging_report(Some(&report)).expect("a report the gate can read");
    let deploy = &deployer_envs[Stage::Deploy.as_str()];
    assert_eq!(deploy.gitea.merge_calls(REPO, PR as u64), 1);
    assert!(deploy.gitea.pull(REPO, PR as u64).is_some_and(|p| p.merged));
}

#[test]
fn every_field_a_prompt_names_is_a_real_field() {
    // The fields `task show --json` prints and the keys `staging-check --task` writes,
    // as the real binary produces them.
    let se = stage_env(Stage::DeployStaging);
    let show = se
        .env
        .run(&["task", "show", KEY, "--json"])
        .expect(0)
        .json();
    let mut known: BTreeSet<String> = show
        .as_object()
        .expect("task show --json prints an object")
        .keys()
        .cloned()
        .collect();
    // An ordinary repo's task, and a self-hosting one whose image freshness applies (its
    // report carries the image's revision): between them, every key the report can hold.
    let orch = SeedTask::new(&Project::orch(), 1, Stage::DeployStaging)
        .work_item("0b8f5d2e-1111-4c3a-9d2e-000000000002")
        .title("Self")
        .branch("task/orch-1-self");
    seed_task(&se.env, &orch);
    let mut with_expected = se.env.command(&["staging-check", "--task", "ORCH-1"]);
    with_expected.env("EXPECTED_REVISION", HEAD);
    for (key, run) in [
        (KEY, se.env.run(&["staging-check", "--task", KEY])),
        ("ORCH-1", with_expected.output().expect("run orch").into()),
    ] {
        let run: Run = run;
        assert!(VERDICT_CODES.contains(&run.code), "{run:?}");
        let report =
            std::fs::read_to_string(se.env.path("artefacts").join(key).join(STAGING_REPORT_FILE))
                .expect("staging-check --task writes the report");
        let keys = frontmatter(STAGING_REPORT_FILE, Some(&report)).expect("a valid report");
        known.extend(keys.keys().filter_map(|k| k.as_str().map(str::to_string)));
    }
    known.extend(contracts().iter().map(|c| c.key.to_string()));

    let mut problems = Vec::new();
    for agent in Agent::ALL {
        for span in spans(&prompt(agent)) {
            if is_identifier(&span.text) && !known.contains(&span.text) {
                problems.push(format!(
                    "{}: `{}` is neither a task field nor an artefact key",
                    agent.as_str(),
                    span.text
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}\nknown: {known:?}");
}

// ---------------------------------------------------------------------------------------
// The checks themselves catch drift.

fn fake_vars() -> BTreeMap<String, String> {
    job_vars(42, "SHOP-1", 9, "/tmp/artefacts/SHOP-1")
}

#[test]
fn the_command_check_catches_a_bogus_flag_or_variable() {
    let vars = fake_vars();
    let good = "Run `orch staging-check --task \"$ORCH_TASK_ID\"`, then\n```sh\norch task show \"${ORCH_TASK_ID}\" --json | jq -r .branch\n```\n";
    assert_eq!(command_lines(good).len(), 2);
    assert!(command_parse_problems(good, &vars).is_empty());
    for bad in [
        "Run `orch staging-check --task \"$ORCH_TASK_ID\" --bogus`.",
        "Run `orch staging-check\n  --report`.",
        "```sh\norch merge-guard --task \"$ORCH_TASK_ID\" --merge=yes\n```",
        "Run `orch task show \"$ORCH_TASK\" --json`.",
        "Run `orch task shows \"$ORCH_TASK_ID\"`.",
        "Run `orch staging-check --task \"$ORCH_TASK_ID`.",
    ] {
        assert!(
            !command_parse_problems(bad, &vars).is_empty(),
            "must be caught: {bad}"
        );
    }
    // And in a real prompt.
    let deployer = prompt(Agent::Deployer);
    let drifted = deployer.replace(
        r#"orch staging-check --task "$ORCH_TASK_ID""#,
        r#"orch staging-check --task "$ORCH_TASK_ID" --pin"#,
    );
    assert_ne!(drifted, deployer);
    assert!(command_parse_problems(&deployer, &vars).is_empty());
    assert!(!command_parse_problems(&drifted, &vars).is_empty());
}

#[test]
fn the_run_check_catches_a_command_that_parses_but_errors() {
    let se = stage_env(Stage::Deploy);
    // Parses, but names a task that does not exist: merge-guard exits 2.
    let problem = run_problem(&se, "orch merge-guard --task NOPE-9 --merge");
    assert!(
        problem.as_deref().is_some_and(|p| p.contains("exited 2")),
        "{problem:?}"
    );
    // Names no pull request: a usage error, caught before the run.
    let problem = run_problem(&se, "orch merge-guard --merge");
    assert!(
        problem
            .as_deref()
            .is_some_and(|p| p.contains("does not parse")),
        "{problem:?}"
    );
    // A task that does not exist is an error too.
    assert!(run_problem(&se, "orch task show 999 --json").is_some());
    assert_eq!(
        run_problem(&se, r#"orch task show "$ORCH_TASK_KEY" --json"#),
        None
    );
}

#[test]
fn the_artefact_check_catches_a_prompt_that_drifts() {
    let by_agent = |a: Agent| {
        expectations()
            .into_iter()
            .find(|e| e.agent == a)
            .expect("every agent has expectations")
    };
    let cases: Vec<(&str, Agent, &str, &str)> = vec![
        (
            "unknown value",
            Agent::Analyst,
            "analysis_status: NEEDS_INPUT",
            "analysis_status: BLOCKED",
        ),
        (
            "unknown file",
            Agent::Reviewer,
            "05-review.md",
            "06-review.md",
        ),
        (
            "a value left out",
            Agent::Reviewer,
            "review_verdict: REQUEST_CHANGES",
            "REQUEST_CHANGES",
        ),
        (
            "unknown key",
            Agent::Deployer,
            "deploy_status",
            "deploy_state",
        ),
        (
            "a key orch does not read",
            Agent::Deployer,
            "staging_status: FAILED",
            "staging_verdict: FAILED",
        ),
        (
            "feedback file left out",
            Agent::Developer,
            "16-post-deploy-log.md",
            "the post-deploy log",
        ),
        (
            "written file left out",
            Agent::Analyst,
            "01-analysis.md",
            "analysis.md",
        ),
    ];
    for (name, agent, from, to) in cases {
        let expect = by_agent(agent);
        let good = prompt(agent);
        assert!(artefact_problems(&good, &expect).is_empty(), "{name}");
        let drifted = good.replace(from, to);
        assert_ne!(drifted, good, "{name}: the mutation must change the prompt");
        assert!(
            !artefact_problems(&drifted, &expect).is_empty(),
            "{name}: the check must catch it"
        );
    }
}

#[test]
fn reading_a_prompt_finds_spans_sections_and_pairs() {
    let text = "# Deployer\nRead `orch task\n  show 1`.\n## Stage `deploy`\n\n```sh\norch merge-guard --task 1\n```\nWrite `deploy_status: SUCCESS` to 12-deploy-report.md or x12-a.md.\n";
    let got = spans(text);
    let texts: Vec<(&str, Option<Stage>)> =
        got.iter().map(|s| (s.text.as_str(), s.stage)).collect();
    assert_eq!(
        texts,
        vec![
            ("orch task show 1", None),
            ("deploy", Some(Stage::Deploy)),
            ("orch merge-guard --task 1", Some(Stage::Deploy)),
            ("deploy_status: SUCCESS", Some(Stage::Deploy)),
        ]
    );
    assert_eq!(
        artefact_names(text),
        BTreeSet::from(["12-deploy-report.md".to_string()])
    );
    assert_eq!(
        key_value_pairs("a `deploy_status: SUCCESS`, b: Not, c_d: FAILEDx, e_f: NEEDS_INPUT."),
        vec![
            ("deploy_status".to_string(), "SUCCESS".to_string()),
            ("e_f".to_string(), "NEEDS_INPUT".to_string())
        ]
    );
}

/// Returns why the deployer prompt's staging step would leave the merge unpinned: every
/// `staging-check` it names must be for the task (`--task`), the only mode that records
/// the validated revision on the task (issue #11, defect 2).
fn staging_step_problems(prompt: &str, vars: &BTreeMap<String, String>) -> Vec<String> {
    let mut problems = Vec::new();
    let mut checks = 0;
    for line in command_lines(prompt) {
        let Ok(words) = shell_words(&line.text, vars) else {
            continue;
        };
        if let Ok(Cli {
            command: Command::StagingCheck(args),
            ..
        }) = Cli::try_parse_from(&words)
        {
            checks += 1;
            if args.task.as_deref() != Some(vars["ORCH_TASK_ID"].as_str()) {
                problems.push(format!("`{}` is not for the task", line.text));
            }
            if line.stage != Some(Stage::DeployStaging) {
                problems.push(format!(
                    "`{}` is outside the deploy-staging steps",
                    line.text
                ));
            }
        }
    }
    if checks == 0 {
        problems.push("no `orch staging-check` step".into());
    }
    problems
}

#[test]
fn the_deployer_checks_staging_for_its_task() {
    let vars = fake_vars();
    let good = prompt(Agent::Deployer);
    assert_eq!(staging_step_problems(&good, &vars), Vec::<String>::new());
    let step = r#"orch staging-check --task "$ORCH_TASK_ID""#;
    for drifted in [
        good.replace(
            step,
            r#"orch staging-check --report "$ORCH_TASK_ARTEFACTS/10-staging-report.md""#,
        ),
        good.replace(step, "orch staging-check"),
        good.replace(step, "echo staging is fine"),
    ] {
        assert_ne!(drifted, good);
        assert!(
            !staging_step_problems(&drifted, &vars).is_empty(),
            "must be caught"
        );
    }
}
