//! `orch-stub-agent ROLE`: an agent that does what its prompt in `docs/agents/` says and
//! nothing more, for the loop test and the walkthrough (test-helpers only).
//!
//! ROLE is `analyst`, `developer`, `reviewer`, `deployer` (the four prompts) or
//! `rollback` (a project's post-deploy rollback command). Every role first reads its
//! task with `orch task show "$ORCH_TASK_ID" --json`. It is given what a real agent is
//! given: `ORCH_TASK_ID`, `ORCH_TASK_KEY`, `ORCH_JOB_ID`, `ORCH_TASK_ARTEFACTS`, and the
//! environment it inherits (`ORCH_GITEA_URL`, `ORCH_GITEA_TOKEN`). The project's deploy
//! procedure is a staging and a production stand-in (`orch::standin::prod`) at
//! `STUB_STAGING_URL` and `STUB_PROD_URL`: a deploy is `POST /_control/deploy?revision=`,
//! a rollback `POST /_control/rollback`, the health check `GET /health`. `orch` is
//! `STUB_ORCH_BIN` when set, else found on `PATH`.
//!
//! - analyst: writes `01-analysis.md` with `analysis_status: APPROVED`.
//! - developer: prints its working directory, `ORCH_WORKSPACE` and the branch checked
//!   out there, commits one file to the task's branch (Gitea's contents API) and opens
//!   a PR from the branch into the default branch unless an open one exists; writes no
//!   artefact, never merges.
//! - reviewer: writes `05-review.md` with `review_verdict: APPROVE`.
//! - deployer, stage `deploy-staging`: deploys the PR head to staging, then runs
//!   `orch staging-check --task "$ORCH_TASK_ID"` (0 or 1: done, the report is the answer;
//!   anything else, 2 "no verdict" included: exit 3 and write nothing). Stage `deploy`: runs
//!   `orch merge-guard --task "$ORCH_TASK_ID" --merge` (0: go on; 1: report
//!   `deploy_status: FAILED`; anything else: exit 3, no report), deploys the default
//!   branch to production, checks its health and writes `12-deploy-report.md`. Any
//!   other stage: exit 0, nothing done.
//!
//! Exit codes: 0 done, 3 could not do it (a re-drive may help), 2 usage (an unknown
//! role, a bad `STUB_USAGE`: nothing done).

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{anyhow, bail, Context as _, Result};
use base64::Engine as _;
use serde_json::{json, Value};

fn main() -> ExitCode {
    let role = std::env::args().nth(1).unwrap_or_default();
    // A bad STUB_USAGE is the test's mistake: refused before the role does anything.
    let usage = match usage_spec() {
        Ok(u) => u,
        Err(e) => {
            eprintln!("stub {role}: {e:#}");
            return ExitCode::from(2);
        }
    };
    let run = match role.as_str() {
        "analyst" => analyst(),
        "developer" => developer(),
        "reviewer" => reviewer(),
        "deployer" => deployer(),
        "rollback" => rollback(),
        _ => {
            eprintln!("usage: orch-stub-agent analyst|developer|reviewer|deployer|rollback");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = usage.map_or(Ok(()), write_usage) {
        eprintln!("stub {role}: error: {e:#}");
        return ExitCode::from(3);
    }
    match run {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stub {role}: error: {e:#}");
            ExitCode::from(3)
        }
    }
}

fn env(name: &str) -> Result<String> {
    std::env::var(name).with_context(|| format!("{name} is not set"))
}

/// Runs `orch ARGS`, echoing the command and its output to our log; returns the exit
/// code and stdout.
fn orch(args: &[&str]) -> Result<(i32, String)> {
    let bin = std::env::var("STUB_ORCH_BIN").unwrap_or_else(|_| "orch".into());
    println!("$ orch {}", args.join(" "));
    let out = Command::new(&bin)
        .args(args)
        .output()
        .with_context(|| format!("running {bin}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let code = out.status.code().unwrap_or(-1);
    if !args.contains(&"--json") {
        print!("{stdout}");
    }
    eprint!("{stderr}");
    println!("(exit {code})");
    Ok((code, stdout))
}

/// What `STUB_USAGE` (`TOKENS_IN,TOKENS_OUT,COST`) says the job cost, when it is set.
/// The cost is passed on as written: orch judges it.
fn usage_spec() -> Result<Option<Value>> {
    let Ok(spec) = std::env::var("STUB_USAGE") else {
        return Ok(None);
    };
    let parts: Vec<&str> = spec.split(',').collect();
    let [tokens_in, tokens_out, cost] = parts.as_slice() else {
        bail!("STUB_USAGE is not TOKENS_IN,TOKENS_OUT,COST: {spec:?}");
    };
    let bad = |what: &str| anyhow!("STUB_USAGE {what} is not a whole number: {spec:?}");
    let tokens_in: u64 = tokens_in.parse().map_err(|_| bad("tokens in"))?;
    let tokens_out: u64 = tokens_out.parse().map_err(|_| bad("tokens out"))?;
    Ok(Some(
        json!({"tokens_in": tokens_in, "tokens_out": tokens_out, "cost": cost}),
    ))
}

/// Writes `usage` to `usage-$ORCH_JOB_ID.json` in the task's artefact folder.
fn write_usage(body: Value) -> Result<()> {
    let dir = PathBuf::from(env("ORCH_TASK_ARTEFACTS")?);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("usage-{}.json", env("ORCH_JOB_ID")?));
    std::fs::write(&path, body.to_string())
        .with_context(|| format!("writing {}", path.display()))?;
    println!("usage written to {}", path.display());
    Ok(())
}

/// Reads the task afresh (every prompt's first step, and before anything irreversible).
fn task() -> Result<Value> {
    let id = env("ORCH_TASK_ID")?;
    let (code, out) = orch(&["task", "show", &id, "--json"])?;
    if code != 0 {
        bail!("orch task show {id} exited {code}");
    }
    serde_json::from_str(&out).context("orch task show --json is not JSON")
}

fn field<'a>(task: &'a Value, name: &str) -> Result<&'a str> {
    task.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("the task has no {name}"))
}

/// Writes an artefact as `---\nKEY: VALUE\n---\n# TITLE\nBODY`.
fn artefact(file: &str, key: &str, value: &str, title: &str, body: &str) -> Result<()> {
    let dir = PathBuf::from(env("ORCH_TASK_ARTEFACTS")?);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(file);
    let text = format!("---\n{key}: {value}\n---\n# {title}\n{body}\n");
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {} ({key}: {value})", path.display());
    Ok(())
}

/// Step 1 of every prompt: the task must be at the agent's stage, else nothing is done.
fn at_stage(t: &Value, mine: &str) -> Result<bool> {
    let stage = field(t, "stage")?;
    if stage == mine {
        Ok(true)
    } else {
        println!("stage is {stage}, not {mine}: nothing to do");
        Ok(false)
    }
}

fn analyst() -> Result<()> {
    let t = task()?;
    if !at_stage(&t, "analysis")? {
        return Ok(());
    }
    let key = field(&t, "key")?;
    artefact(
        "01-analysis.md",
        "analysis_status",
        "APPROVED",
        &format!("Analysis of {key}"),
        &format!(
            "{}: the work is clear; ready for approval.",
            field(&t, "title")?
        ),
    )
}

fn reviewer() -> Result<()> {
    let t = task()?;
    if !at_stage(&t, "review")? {
        return Ok(());
    }
    let key = field(&t, "key")?;
    artefact(
        "05-review.md",
        "review_verdict",
        "APPROVE",
        &format!("Review of {key}"),
        "The change does what the analysis asked.",
    )
}

/// A Gitea client on `ORCH_GITEA_URL` with `ORCH_GITEA_TOKEN`.
struct Gitea {
    base: String,
    token: String,
    http: reqwest::blocking::Client,
}

impl Gitea {
    fn from_env(repo: &str) -> Result<Gitea> {
        let url = env("ORCH_GITEA_URL")?;
        Ok(Gitea {
            base: format!("{}/api/v1/repos/{repo}", url.trim_end_matches('/')),
            token: env("ORCH_GITEA_TOKEN")?,
            http: reqwest::blocking::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()?,
        })
    }

    fn call(
        &self,
        method: reqwest::Method,
        route: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value)> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{route}", self.base))
            .header("Authorization", format!("token {}", self.token));
        if let Some(b) = body {
            req = req.json(b);
        }
        let res = req.send().with_context(|| format!("{method} {route}"))?;
        let status = res.status().as_u16();
        let value = res.json().unwrap_or(Value::Null);
        println!("gitea: {method} {route} -> {status}");
        Ok((status, value))
    }

    fn get(&self, route: &str) -> Result<Value> {
        match self.call(reqwest::Method::GET, route, None)? {
            (200, v) => Ok(v),
            (s, v) => bail!("GET {route} answered {s}: {v}"),
        }
    }

    fn default_branch(&self) -> Result<String> {
        let repo = self.get("")?;
        Ok(field(&repo, "default_branch")?.to_string())
    }

    /// Returns the open PR whose head is `branch`, if any (every page).
    fn open_pr(&self, branch: &str) -> Result<Option<Value>> {
        for page in 1..=100 {
            let list = self.get(&format!("/pulls?state=open&limit=50&page={page}"))?;
            let Some(items) = list.as_array() else {
                bail!("the pull list is not an array");
            };
            if let Some(pr) = items.iter().find(|p| p["head"]["ref"] == branch) {
                return Ok(Some(pr.clone()));
            }
            if items.len() < 50 {
                break;
            }
        }
        Ok(None)
    }
}

fn developer() -> Result<()> {
    let t = task()?;
    if !at_stage(&t, "development")? {
        return Ok(());
    }
    // Sent back: the feedback first (its kind line says why).
    match std::env::var("ORCH_FEEDBACK") {
        Ok(f) if !f.is_empty() => {
            let text = std::fs::read_to_string(&f).with_context(|| format!("reading {f}"))?;
            println!("feedback {f}: {}", text.lines().nth(2).unwrap_or_default());
        }
        _ => println!("feedback: none"),
    }
    let (key, repo, branch) = (field(&t, "key")?, field(&t, "repo")?, field(&t, "branch")?);
    let job = env("ORCH_JOB_ID")?;
    // Where run-job started it: the task's workspace, when its project has a clone_url.
    let workspace = std::env::var("ORCH_WORKSPACE").unwrap_or_else(|_| "-".into());
    let checked_out = Command::new("git")
        .args(["rev-parse", "--abbrev-ref", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or("-".into(), |o| {
            String::from_utf8_lossy(&o.stdout).trim().to_string()
        });
    println!(
        "cwd {} workspace {workspace} checked out {checked_out}",
        std::env::current_dir()?.display()
    );
    let gitea = Gitea::from_env(repo)?;
    // The work: one commit on the task's branch (a file per job, so a re-run commits anew).
    let path = format!("changes/{key}-job-{job}.md");
    let content = format!("# {key}\nWork of job {job} on {branch}.\n");
    let body = json!({
        "branch": branch,
        "content": base64::engine::general_purpose::STANDARD.encode(content),
        "message": format!("{key}: work of job {job}"),
    });
    match gitea.call(
        reqwest::Method::POST,
        &format!("/contents/{path}"),
        Some(&body),
    )? {
        (201, v) => println!("committed {} to {branch}", v["commit"]["sha"]),
        (s, v) => bail!("committing to {branch} answered {s}: {v}"),
    }
    if let Some(pr) = gitea.open_pr(branch)? {
        println!("PR #{} is already open for {branch}", pr["number"]);
        return Ok(());
    }
    let base = gitea.default_branch()?;
    let body =
        json!({"head": branch, "base": base, "title": format!("{key}: {}", field(&t, "title")?)});
    match gitea.call(reqwest::Method::POST, "/pulls", Some(&body))? {
        (201, pr) => println!("opened PR #{} from {branch} into {base}", pr["number"]),
        (s, v) => bail!("opening a PR from {branch} answered {s}: {v}"),
    }
    Ok(())
}

/// `POST {base}/_control/{what}` on a staging or production stand-in.
fn control(base_var: &str, what: &str) -> Result<()> {
    let base = env(base_var)?;
    let url = format!("{}/_control/{what}", base.trim_end_matches('/'));
    let res = reqwest::blocking::Client::new()
        .post(&url)
        .timeout(std::time::Duration::from_secs(10))
        .send()
        .with_context(|| format!("POST {url}"))?;
    let status = res.status().as_u16();
    let text = res.text().unwrap_or_default();
    println!(
        "{base_var}: POST /_control/{what} -> {status} {}",
        text.trim()
    );
    if status != 200 {
        bail!("POST /_control/{what} answered {status}");
    }
    Ok(())
}

fn deployer() -> Result<()> {
    let t = task()?;
    let id = env("ORCH_TASK_ID")?;
    match field(&t, "stage")? {
        "deploy-staging" => deploy_staging(&t, &id),
        "deploy" => deploy(&t, &id),
        other => {
            println!("stage is {other}, not mine: nothing to do");
            Ok(())
        }
    }
}

fn deploy_staging(t: &Value, id: &str) -> Result<()> {
    let (repo, branch) = (field(t, "repo")?, field(t, "branch")?);
    let gitea = Gitea::from_env(repo)?;
    let pr = match t["pr_number"].as_u64() {
        Some(n) => gitea.get(&format!("/pulls/{n}"))?,
        None => gitea
            .open_pr(branch)?
            .ok_or_else(|| anyhow!("no open PR for {branch}"))?,
    };
    let head = pr["head"]["sha"]
        .as_str()
        .ok_or_else(|| anyhow!("PR #{} has no head sha", pr["number"]))?;
    control("STUB_STAGING_URL", &format!("deploy?revision={head}"))?;
    // The verdict is the report; the exit code says only whether there is one. Exit 2
    // (no verdict: Gitea could not tell, or a configuration error) left no report, and
    // none is written here: exit non-zero so the pipeline runs the deployer again.
    let (code, _) = orch(&["staging-check", "--task", id])?;
    if code == 0 || code == 1 {
        Ok(())
    } else {
        bail!("orch staging-check exited {code}: no verdict, nothing written; run me again later")
    }
}

fn deploy(t: &Value, id: &str) -> Result<()> {
    let key = field(t, "key")?;
    if let Ok(gate) = std::env::var("STUB_DEPLOY_GATE") {
        println!("waiting on {gate}");
        let mut said = String::new();
        std::io::Read::read_to_string(
            &mut std::fs::File::open(&gate).with_context(|| format!("opening {gate}"))?,
            &mut said,
        )?;
        println!("gate opened: {}", said.trim());
    }
    let (code, out) = orch(&["merge-guard", "--task", id, "--merge"])?;
    let guard = out.lines().last().unwrap_or("").to_string();
    match code {
        0 => {}
        // A hold says nothing about the code: no report, run again after it ends.
        1 if guard.contains(" is on hold ") => {
            bail!(
                "merge-guard exited 1 ({guard}): the project is on hold; not deploying, no report"
            )
        }
        1 => {
            return artefact(
                "12-deploy-report.md",
                "deploy_status",
                "FAILED",
                &format!("Deploy of {key}"),
                &format!("Not deployed: the merge guard said {guard}"),
            )
        }
        _ => bail!("merge-guard exited {code} ({guard}): not deploying, no report"),
    }
    let gitea = Gitea::from_env(field(t, "repo")?)?;
    let default = gitea.default_branch()?;
    let branch = gitea.get(&format!("/branches/{default}"))?;
    let rev = branch["commit"]["id"]
        .as_str()
        .ok_or_else(|| anyhow!("branch {default} has no commit id"))?
        .to_string();
    control("STUB_PROD_URL", &format!("deploy?revision={rev}"))?;
    let health = format!("{}/health", env("STUB_PROD_URL")?.trim_end_matches('/'));
    let status = reqwest::blocking::Client::new()
        .get(&health)
        .timeout(std::time::Duration::from_secs(10))
        .send()
        .map(|r| r.status().as_u16());
    println!("health {health}: {status:?}");
    let (value, why) = match status {
        Ok(200) => (
            "SUCCESS",
            format!("{default} at {rev} is live; {health} answered 200."),
        ),
        Ok(s) => (
            "FAILED",
            format!("{default} at {rev} deployed, but {health} answered {s}."),
        ),
        Err(e) => (
            "FAILED",
            format!("{default} at {rev} deployed, but {health} failed: {e}"),
        ),
    };
    artefact(
        "12-deploy-report.md",
        "deploy_status",
        value,
        &format!("Deploy of {key}"),
        &format!("Merge guard: {guard}\n{why}"),
    )
}

fn rollback() -> Result<()> {
    control("STUB_PROD_URL", "rollback")
}
