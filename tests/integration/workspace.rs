//! A workspace per task (issue 16): `run-job` prepares a git working copy of the task's
//! repository before the agent starts, reuses it for the task's later jobs (fetch and a
//! forced checkout of the branch tip), and `post-deploy-tick` removes it once the task is
//! done with its window closed, or cancelled. Real git repositories on the local disk
//! (`git init --bare`), real `orch` processes, the clock moved only through `ORCH_NOW`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use orch::adapters::workspace::{helper, TOKEN_ENV};

use crate::common::{pipeline, seed_tasks, Project, SeedTask, TestEnv, NOW_UNIX};

/// Runs git in `dir` with no user or system configuration but an identity; panics on
/// failure; returns its trimmed stdout.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A bare repository at `<root>/remote.git` whose `main` has one commit; returns its path
/// and that commit.
pub fn bare_remote(root: &Path) -> (PathBuf, String) {
    let bare = root.join("remote.git");
    let seed = root.join("seed");
    std::fs::create_dir_all(&seed).unwrap();
    git(root, &["init", "-q", "--bare", "-b", "main", "remote.git"]);
    git(&seed, &["init", "-q", "-b", "main"]);
    std::fs::write(seed.join("README"), "hello\n").unwrap();
    git(&seed, &["add", "README"]);
    git(&seed, &["commit", "-qm", "first"]);
    let bare_text = bare.display().to_string();
    git(&seed, &["push", "-q", &bare_text, "main"]);
    let head = git(&seed, &["rev-parse", "HEAD"]);
    (bare, head)
}

/// The developer: records where it ran and what it saw under the artefacts folder; its
/// first job (the first to find no marker: job ids need not start at 1) commits and pushes a file to the task's branch and leaves an uncommitted
/// one behind, which the next job must not see.
const DEVELOPER: &str = r#"o="$3/seen-$ORCH_JOB_ID"
{ echo "pwd=$(pwd)"; echo "arg=$1"; echo "env=$ORCH_WORKSPACE"
  echo "head=$(git rev-parse HEAD)"; echo "branch=$(git rev-parse --abbrev-ref HEAD)"
  echo "files=$(ls -A | tr "\n" " ")"; env | grep -c ORCH_GITEA_TOKEN; } > "$o"
if [ ! -e "$3/first-job-done" ]; then touch "$3/first-job-done"
  echo work > work.txt && git add work.txt &&
    git -c user.name=a -c user.email=a@example.com commit -qm work &&
    git push -q origin "HEAD:refs/heads/$2" && echo junk > junk.txt
fi
"#;

/// An env whose project `orch` clones from `clone_url` and whose developer is
/// [`DEVELOPER`], written to `root`.
fn env_with(root: &Path, clone_url: &str) -> TestEnv {
    env_granting(root, clone_url, "")
}

/// As [`env_with`], the developer granted `grants` (`, credentials: [gitea]`).
fn env_granting(root: &Path, clone_url: &str, grants: &str) -> TestEnv {
    let script = root.join("developer.sh");
    std::fs::write(&script, DEVELOPER).unwrap();
    let project = Project::orch().self_hosting(false).with(&format!(
        "clone_url: {clone_url}\nhealth_url: http://127.0.0.1:9/health"
    ));
    let agents = format!(
        "developer: {{ command: [sh, {}, \"{{workspace}}\", \"{{branch}}\", \"{{artefacts}}\"]{grants} }}\nanalyst: [/bin/true]\nreviewer: [/bin/true]\ndeployer: [/bin/true]",
        script.display()
    );
    let mut env = TestEnv::with_pipeline(&pipeline::render(&[project], &agents, ""));
    env.set("ORCH_GITEA_TOKEN", "gitea_token_never_on_disk_0123456789");
    env.run(&["init"]).expect(0);
    env
}

/// Seeds ORCH-1 at development on branch `orch-1`; returns its id.
fn seed_task(env: &TestEnv) -> i64 {
    let t = SeedTask::new(&Project::orch(), 1, "development".parse().unwrap())
        .branch("orch-1")
        .at(0);
    seed_tasks(env, &[t])[0]
}

/// Inserts a running developer job of `task` (as dispatch's claim leaves it); its id.
fn running_job(env: &TestEnv, task: i64) -> i64 {
    let db = env.db();
    db.query_row(
        "INSERT INTO jobs (task_id, agent, stage, status, attempt, enqueued_at, started_at)
         VALUES (?1, 'developer', 'development', 'running', 1, ?2, ?2) RETURNING id",
        orch::sql_params![task, NOW_UNIX],
        |r| r.get::<_, i64>(0),
    )
    .unwrap()
}

fn seen(env: &TestEnv, job: i64) -> Vec<String> {
    std::fs::read_to_string(env.path(&format!("artefacts/ORCH-1/seen-{job}")))
        .unwrap_or_else(|e| panic!("job {job} left no record: {e}"))
        .lines()
        .map(str::to_string)
        .collect()
}

fn job_log(env: &TestEnv, job: i64) -> String {
    std::fs::read_to_string(env.path(&format!("state/jobs/{job}.log"))).unwrap()
}

fn at(secs_after_now: i64) -> String {
    jiff::Timestamp::from_second(NOW_UNIX + secs_after_now)
        .unwrap()
        .to_string()
}

#[test]
fn a_workspace_is_prepared_reused_and_removed_when_the_window_closes() {
    let remote = tempfile::tempdir().unwrap();
    let (bare, main_head) = bare_remote(remote.path());
    let mut env = env_with(remote.path(), &bare.display().to_string());
    let task = seed_task(&env);
    let ws = env.path("state/workspaces/1-ORCH-1");

    // Job 1: cloned; the branch is not on the remote yet, so it starts from main.
    let job1 = running_job(&env, task);
    env.run(&["run-job", &job1.to_string()]).expect(0);
    let ws_text = ws.display().to_string();
    let first = seen(&env, job1);
    assert_eq!(
        first[..5],
        [
            format!("pwd={ws_text}"),
            format!("arg={ws_text}"),
            format!("env={ws_text}"),
            format!("head={main_head}"),
            "branch=orch-1".to_string(),
        ],
        "{first:?}"
    );
    assert_eq!(first[6], "0", "the token variable never reaches the agent");
    let log = job_log(&env, job1);
    assert!(log.contains("== workspace cloned at orch-1"), "{log}");
    assert!(log.contains("not on the remote yet"), "{log}");
    let pushed = git(&bare, &["rev-parse", "refs/heads/orch-1"]);
    assert_ne!(pushed, main_head);
    assert!(ws.join("junk.txt").exists());

    // Job 2: reused, fetched and reset to the pushed tip; the leftover is gone.
    let job2 = running_job(&env, task);
    env.run(&["run-job", &job2.to_string()]).expect(0);
    let second = seen(&env, job2);
    assert_eq!(second[3], format!("head={pushed}"), "{second:?}");
    assert_eq!(second[5], "files=.git README work.txt ", "{second:?}");
    let log = job_log(&env, job2);
    assert!(log.contains("== workspace reused at orch-1"), "{log}");
    // The token is nowhere on disk or in the logs.
    for f in [
        ws.join(".git/config"),
        env.path(&format!("state/jobs/{job1}.log")),
    ] {
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(!text.contains("gitea_token_never"), "{}", f.display());
    }

    // While the task is in development, a pass keeps the workspace.
    env.set("ORCH_POST_DEPLOY_ENABLED", "false");
    env.run(&["post-deploy-tick"]).expect(0);
    assert!(ws.join(".git").is_dir());
    // Done, its window open: kept.
    env.db()
        .execute("UPDATE tasks SET stage = 'done' WHERE id = ?1", [task])
        .unwrap();
    env.unset("ORCH_POST_DEPLOY_ENABLED");
    env.run(&["post-deploy-tick", "--arm", "--task", "ORCH-1"])
        .expect(0);
    env.set("ORCH_POST_DEPLOY_ENABLED", "false");
    let kept = env.run(&["post-deploy-tick"]).expect(0);
    assert!(ws.join(".git").is_dir(), "{}", kept.stderr);
    // The window's end passed: the same pass closes it and removes the workspace.
    env.unset("ORCH_POST_DEPLOY_ENABLED");
    env.set("ORCH_NOW", &at(86_400));
    let closed = env.run(&["post-deploy-tick"]).expect(0);
    assert!(!ws.exists(), "{}", closed.stderr);
    assert!(
        closed.stderr.contains("workspaces_removed=1"),
        "{}",
        closed.stderr
    );
    // Idempotent: nothing left to remove.
    let again = env.run(&["post-deploy-tick"]).expect(0);
    assert!(
        again.stderr.contains("workspaces_removed=0"),
        "{}",
        again.stderr
    );
}

#[test]
fn a_cancelled_task_loses_its_workspace_and_a_crashed_removal_is_finished() {
    let remote = tempfile::tempdir().unwrap();
    let (bare, _) = bare_remote(remote.path());
    let env = env_with(remote.path(), &format!("file://{}", bare.display()));
    let task = seed_task(&env);
    let job = running_job(&env, task);
    env.run(&["run-job", &job.to_string()]).expect(0);
    let ws = env.path("state/workspaces/1-ORCH-1");
    assert!(ws.join(".git").is_dir());
    // A removal that crashed after its rename left a `.removing` folder: finished.
    let doomed = env.path("state/workspaces/7-ORCH-7.removing");
    std::fs::create_dir_all(doomed.join("sub")).unwrap();
    std::fs::write(doomed.join("sub/f"), "x").unwrap();
    let out = env.run(&["post-deploy-tick"]).expect(0);
    assert!(!doomed.exists(), "{}", out.stderr);
    assert!(ws.join(".git").is_dir(), "development keeps it");
    env.db()
        .execute("UPDATE tasks SET stage = 'cancelled' WHERE id = ?1", [task])
        .unwrap();
    // A job still running in it keeps it until the job ends.
    let live = running_job(&env, task);
    let out = env.run(&["post-deploy-tick"]).expect(0);
    assert!(ws.join(".git").is_dir(), "{}", out.stderr);
    env.db()
        .execute("UPDATE jobs SET status = 'cancelled' WHERE id = ?1", [live])
        .unwrap();
    let out = env.run(&["post-deploy-tick"]).expect(0);
    assert!(!ws.exists(), "{}", out.stderr);
    assert!(
        out.stderr.contains("workspaces_removed=1"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_clone_url_that_cannot_be_cloned_fails_the_job_before_the_agent() {
    let root = tempfile::tempdir().unwrap();
    let env = env_with(root.path(), "/nonexistent/remote.git");
    // The developer would leave a marker if it ever started.
    let marker = root.path().join("agent-ran");
    std::fs::write(
        root.path().join("developer.sh"),
        format!("touch {}\n", marker.display()),
    )
    .unwrap();
    let task = seed_task(&env);
    let job = running_job(&env, task);
    env.run(&["run-job", &job.to_string()]).expect(1);
    assert!(!marker.exists(), "the agent must not start");
    let (status, code): (String, Option<i64>) = env
        .db()
        .query_row(
            "SELECT status, exit_code FROM jobs WHERE id = ?1",
            [job],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((status.as_str(), code), ("failed", Some(127)));
    let log = job_log(&env, job);
    assert!(
        log.contains("== agent not started: workspace not prepared: git failed cloning"),
        "{log}"
    );
    assert!(!env.path("state/workspaces/1-ORCH-1").exists());
    assert!(!env.path("state/workspaces/1-ORCH-1.partial").exists());
}

#[test]
fn a_clone_url_of_a_bad_form_is_a_configuration_error() {
    for bad in [
        "relative/remote.git",
        "https://orch:pw@gitea.example.com/a/b.git",
    ] {
        let project = Project::orch().with(&format!("clone_url: \"{bad}\""));
        let env = TestEnv::uninitialised(&pipeline::render(&[project], "", ""));
        let out = env.run(&["config", "check"]).expect(2);
        assert!(
            out.stderr.contains("projects[0].clone_url"),
            "{bad}: {}",
            out.stderr
        );
    }
}

/// The credential helper git is given for an https clone answers with the token from its
/// variable, and nothing without it (asked through `git credential fill`).
#[test]
fn the_credential_helper_answers_with_the_token_from_its_variable() {
    let ours = helper("https://orch@gitea.example.com/o/r.git").unwrap();
    let fill = |token: Option<&str>, host: &str| {
        let mut git = Command::new("git");
        git.args(["-c", "credential.helper=", "-c"])
            .arg(format!("credential.helper={ours}"))
            .args(["credential", "fill"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_TERMINAL_PROMPT", "0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(t) = token {
            git.env(TOKEN_ENV, t);
        }
        let mut child = git.spawn().unwrap();
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("protocol=https\nhost={host}\n\n").as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, text) = fill(Some("tok_123"), "gitea.example.com");
    assert!(ok, "{text}");
    assert!(text.contains("username=orch\n"), "{text}");
    assert!(text.contains("password=tok_123\n"), "{text}");
    assert!(!ours.contains("tok_123"));
    // Without the variable (an agent not granted gitea) it answers nothing.
    let (ok, text) = fill(None, "gitea.example.com");
    assert!(!ok && !text.contains("password="), "{text}");
    // Another host (a redirect, a rewritten URL) gets nothing, nor a look-alike.
    for other in [
        "evil.example.com",
        "gitea.example.com.evil",
        "gitea.example.com:8443",
    ] {
        let (ok, text) = fill(Some("tok_123"), other);
        assert!(!ok && !text.contains("password="), "{other}: {text}");
    }
    // The port is part of the host git asks for.
    let local = helper("http://127.0.0.1:3000/o/r.git").unwrap();
    assert!(local.contains("'127.0.0.1:3000'"), "{local}");
    // A URL with no plain host is refused rather than quoted into a shell.
    for bad in ["https:///o/r.git", "https://gi'tea/o", "https://a;b/o"] {
        assert!(helper(bad).is_err(), "{bad}");
    }
}

/// What the loopback git server saw.
#[derive(Default)]
struct Seen {
    /// Every `Authorization` header value, decoded (`user:password`).
    credentials: Vec<String>,
    /// Processes whose command line held the token while git talked to the server.
    token_in_argv: Vec<String>,
}

/// A git smart-HTTP server on 127.0.0.1: `git http-backend` as a CGI behind
/// `tiny_http`, serving the repositories under `root` only to Basic credentials whose
/// password is `token` (401 otherwise, as Gitea does). While it answers a request it
/// scans every process's command line for the token. Returns its base URL.
fn git_http_server(
    root: &Path,
    token: &'static str,
) -> (String, std::sync::Arc<std::sync::Mutex<Seen>>) {
    use base64::Engine as _;
    let server = tiny_http::Server::http("127.0.0.1:0").expect("bind 127.0.0.1");
    let port = server.server_addr().to_ip().expect("an ip address").port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Seen::default()));
    let (root, record) = (root.to_path_buf(), seen.clone());
    std::thread::spawn(move || {
        for mut req in server.incoming_requests() {
            let headers: Vec<(String, String)> = req
                .headers()
                .iter()
                .map(|h| (h.field.as_str().to_string(), h.value.as_str().to_string()))
                .collect();
            let header = |name: &str| {
                headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.clone())
            };
            let auth = header("Authorization")
                .and_then(|v| v.strip_prefix("Basic ").map(str::to_string))
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                .map(|b| String::from_utf8_lossy(&b).into_owned());
            let scan = token_in_cmdlines(token);
            {
                let mut s = record.lock().unwrap();
                s.credentials.extend(auth.clone());
                s.token_in_argv.extend(scan);
            }
            if !auth.is_some_and(|a| a.ends_with(&format!(":{token}"))) {
                let h = tiny_http::Header::from_bytes("WWW-Authenticate", "Basic realm=\"git\"")
                    .unwrap();
                let _ = req.respond(tiny_http::Response::empty(401).with_header(h));
                continue;
            }
            let (path, query) = req
                .url()
                .split_once('?')
                .map_or((req.url().to_string(), String::new()), |(p, q)| {
                    (p.to_string(), q.to_string())
                });
            let mut body = Vec::new();
            std::io::Read::read_to_end(req.as_reader(), &mut body).unwrap();
            let mut cgi = Command::new("git");
            cgi.arg("http-backend")
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap())
                .env("GIT_PROJECT_ROOT", &root)
                .env("GIT_HTTP_EXPORT_ALL", "1")
                .env("REQUEST_METHOD", req.method().as_str())
                .env("PATH_INFO", &path)
                .env("QUERY_STRING", &query)
                .env("CONTENT_LENGTH", body.len().to_string())
                .env("REMOTE_USER", "orch")
                .env("REMOTE_ADDR", "127.0.0.1")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped());
            for (var, name) in [
                ("CONTENT_TYPE", "Content-Type"),
                ("HTTP_CONTENT_ENCODING", "Content-Encoding"),
                ("GIT_PROTOCOL", "Git-Protocol"),
            ] {
                if let Some(v) = header(name) {
                    cgi.env(var, v);
                }
            }
            let mut child = cgi.spawn().expect("git http-backend");
            let mut stdin = child.stdin.take().unwrap();
            let writer = std::thread::spawn(move || {
                let _ = std::io::Write::write_all(&mut stdin, &body);
            });
            let out = child.wait_with_output().unwrap().stdout;
            let _ = writer.join();
            // CGI output: header lines, a blank line, the body.
            let split = out
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|i| (i, 4));
            let split = split.or_else(|| out.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)));
            let (head, rest) =
                split.map_or((&out[..0], &out[..]), |(i, n)| (&out[..i], &out[i + n..]));
            let mut status = 200;
            let mut resp = tiny_http::Response::from_data(rest.to_vec());
            for line in String::from_utf8_lossy(head).lines() {
                let Some((k, v)) = line.split_once(':') else {
                    continue;
                };
                if k.eq_ignore_ascii_case("Status") {
                    status = v.trim()[..3].parse().unwrap_or(500);
                } else if let Ok(h) = tiny_http::Header::from_bytes(k.trim(), v.trim()) {
                    resp.add_header(h);
                }
            }
            let _ = req.respond(resp.with_status_code(status));
        }
    });
    (format!("http://127.0.0.1:{port}"), seen)
}

/// The pids and command lines of processes whose argv holds `token`.
fn token_in_cmdlines(token: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(std::result::Result::ok)
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| {
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            cmd.contains(token)
                .then(|| format!("{}: {cmd}", e.file_name().to_string_lossy()))
        })
        .collect()
}

/// An https-style clone (plain http on loopback: the same credential path) asks for
/// credentials, and git answers with the token through the helper: the server sees it,
/// no process's argv holds it, nor the workspace's `.git/config`, nor the job's log; the
/// agent granted `gitea` pushes through the same helper. A wrong token fails the job
/// before the agent starts.
#[test]
fn an_http_clone_authenticates_with_the_token_and_never_writes_it_down() {
    const TOKEN: &str = "gitea_token_never_on_disk_0123456789";
    let remote = tempfile::tempdir().unwrap();
    let (_, main_head) = bare_remote(remote.path());
    let (base, server) = git_http_server(remote.path(), TOKEN);
    // The developer is granted the token: its own push goes through the helper kept in
    // the workspace's .git/config.
    let env = env_granting(
        remote.path(),
        &format!("{base}/remote.git"),
        ", credentials: [gitea]",
    );
    let task = seed_task(&env);
    let job = running_job(&env, task);
    let out = env.run(&["run-job", &job.to_string()]);
    let log = job_log(&env, job);
    let record = seen(&env, job);
    assert_eq!(out.code, 0, "{log}\n{record:?}");
    assert_eq!(record[3], format!("head={main_head}"), "{record:?}");
    assert_eq!(record[6], "1", "granted: the agent has the token");
    let pushed = git(
        &remote.path().join("remote.git"),
        &["rev-parse", "refs/heads/orch-1"],
    );
    assert_ne!(
        pushed, main_head,
        "the agent pushed over http with the token"
    );
    {
        let s = server.lock().unwrap();
        assert!(
            s.credentials.iter().any(|c| c == &format!("orch:{TOKEN}")),
            "git sent the token: {:?}",
            s.credentials
        );
        assert_eq!(
            s.token_in_argv,
            Vec::<String>::new(),
            "no argv holds the token"
        );
    }
    let ws = env.path("state/workspaces/1-ORCH-1");
    for f in [
        ws.join(".git/config"),
        env.path(&format!("state/jobs/{job}.log")),
    ] {
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(!text.contains(TOKEN), "{}: {text}", f.display());
    }
    assert!(!log.contains(TOKEN));

    // A wrong token: refused by the server, the job fails before its agent runs.
    let mut env = env;
    env.set("ORCH_GITEA_TOKEN", "a_wrong_token_0123456789");
    workspace_gone(&ws);
    let job = running_job(&env, task);
    env.run(&["run-job", &job.to_string()]).expect(1);
    let log = job_log(&env, job);
    assert!(
        log.contains("workspace not prepared: git failed cloning"),
        "{log}"
    );
    assert!(
        !env.path(&format!("artefacts/ORCH-1/seen-{job}")).exists(),
        "the agent did not run"
    );
}

fn workspace_gone(ws: &Path) {
    std::fs::remove_dir_all(ws).unwrap();
}

/// git as root in a repository another user owns (safe.directory on the command line).
fn git_any_owner(dir: &Path, args: &[&str]) -> String {
    git(dir, &[&["-c", "safe.directory=*"][..], args].concat())
}

/// Makes `name` under the workspace an agent's hostile leftover: a folder it closed to
/// everyone else (0700) holding one closed to itself too (0500) with a file, all the
/// agent user's.
fn hostile_leftover(ws: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    let sub = ws.join("locked/sub");
    std::fs::create_dir_all(&sub).unwrap();
    std::fs::write(sub.join("f"), "x").unwrap();
    for p in [ws.join("locked"), sub.clone(), sub.join("f")] {
        std::os::unix::fs::chown(&p, Some(65534), Some(65534)).unwrap();
    }
    std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o500)).unwrap();
    std::fs::set_permissions(ws.join("locked"), std::fs::Permissions::from_mode(0o700)).unwrap();
}

#[test]
fn with_an_agent_user_the_workspace_is_the_agents_and_orch_still_resets_and_removes_it() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    if !rustix::process::geteuid().is_root() {
        // Switching to the agent user needs root (or CAP_SETUID).
        return;
    }
    let open = |p: &Path, mode| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    let remote = tempfile::tempdir().unwrap();
    let (bare, main_head) = bare_remote(remote.path());
    open(remote.path(), 0o755);
    let chown = Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(&bare)
        .status()
        .unwrap();
    assert!(chown.success());
    let mut env = env_with(remote.path(), &bare.display().to_string());
    // The agent reaches its artefact folder and the workspaces root, never the state dir.
    open(env.dir.path(), 0o755);
    std::fs::create_dir_all(env.path("artefacts")).unwrap();
    open(&env.path("artefacts"), 0o711);
    let root = env.path("workspaces");
    env.set("ORCH_AGENT_USER", "nobody")
        .set("ORCH_WORKSPACES_DIR", &root.display().to_string());
    let task = seed_task(&env);
    let ws = root.join("1-ORCH-1");

    // Job 1: cloned as the agent user, which commits and pushes from it.
    let job1 = running_job(&env, task);
    env.run(&["run-job", &job1.to_string()]).expect(0);
    let first = seen(&env, job1);
    assert_eq!(first[3], format!("head={main_head}"), "{first:?}");
    let pushed = git_any_owner(&bare, &["rev-parse", "refs/heads/orch-1"]);
    assert_ne!(pushed, main_head, "the agent pushed");
    for p in [
        &ws,
        &ws.join(".git"),
        &ws.join("work.txt"),
        &ws.join("junk.txt"),
    ] {
        assert_eq!(
            std::fs::metadata(p).unwrap().uid(),
            65534,
            "{}",
            p.display()
        );
    }
    let r = std::fs::metadata(&root).unwrap();
    assert_eq!((r.mode() & 0o7777, r.gid()), (0o2770, 65534));

    // Job 2: what the agent left, closed to everyone but itself, is reset away.
    hostile_leftover(&ws);
    let job2 = running_job(&env, task);
    env.run(&["run-job", &job2.to_string()]).expect(0);
    let second = seen(&env, job2);
    assert_eq!(second[3], format!("head={pushed}"), "{second:?}");
    assert_eq!(second[5], "files=.git README work.txt ", "{second:?}");

    // Cancelled: a pass that may not switch users (and has no root override) renames the
    // workspace away and leaves its files for one that may.
    hostile_leftover(&ws);
    env.db()
        .execute("UPDATE tasks SET stage = 'cancelled' WHERE id = ?1", [task])
        .unwrap();
    env.set("ORCH_POST_DEPLOY_ENABLED", "false");
    let caps = "-setuid,-setgid,-dac_override,-dac_read_search,-fowner";
    let tick = env.command(&["post-deploy-tick"]);
    let mut limited = Command::new("setpriv");
    limited
        .args([
            &format!("--bounding-set={caps}"),
            &format!("--inh-caps={caps}"),
        ])
        .arg(tick.get_program())
        .args(tick.get_args())
        .env_clear()
        .envs(tick.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .current_dir(tick.get_current_dir().unwrap());
    let out = limited.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!ws.exists(), "{stderr}");
    let removing = root.join("1-ORCH-1.removing");
    assert!(removing.exists(), "left for a process that may: {stderr}");
    assert!(
        stderr.contains("left for the next job's supervisor"),
        "{stderr}"
    );
    // One that may (root here; a job's supervisor with the unit's capabilities) finishes it.
    let done = env.run(&["post-deploy-tick"]).expect(0);
    assert!(!removing.exists(), "{}", done.stderr);
    assert!(
        done.stderr.contains("workspaces_removed=1"),
        "{}",
        done.stderr
    );

    // Workspaces under the state dir (0700) cannot work for the agent user: said clearly.
    env.unset("ORCH_WORKSPACES_DIR");
    let job3 = running_job(&env, task);
    env.run(&["run-job", &job3.to_string()]).expect(1);
    let log = job_log(&env, job3);
    assert!(
        log.contains("ORCH_AGENT_USER=nobody cannot enter workspaces under the state dir"),
        "{log}"
    );
}

/// With an agent user and an https `clone_url`, orch fetches with its token into its own
/// bare mirror and the agent-user git steps read only that mirror: whatever the agent
/// plants in its `.git` between jobs (hooks, `core.fsmonitor`, a credential helper, a
/// `url.*.insteadOf` sending the remote elsewhere) receives no token, and the other host
/// sees none; the agent granted `gitea` still pushes to the real remote with its own.
#[test]
fn with_an_agent_user_the_token_stays_in_orchs_mirror_whatever_the_agent_plants() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    const TOKEN: &str = "gitea_token_never_on_disk_0123456789";
    if !rustix::process::geteuid().is_root() {
        // Switching to the agent user needs root (or CAP_SETUID).
        return;
    }
    let open = |p: &Path, mode| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    let remote = tempfile::tempdir().unwrap();
    let (_, main_head) = bare_remote(remote.path());
    open(remote.path(), 0o755);
    let (base, server) = git_http_server(remote.path(), TOKEN);
    let elsewhere = tempfile::tempdir().unwrap();
    let (evil_base, evil) = git_http_server(elsewhere.path(), "some_other_token_0123456789");
    let mut env = env_granting(
        remote.path(),
        &format!("{base}/remote.git"),
        ", credentials: [gitea]",
    );
    open(env.dir.path(), 0o755);
    std::fs::create_dir_all(env.path("artefacts")).unwrap();
    open(&env.path("artefacts"), 0o711);
    let root = env.path("workspaces");
    env.set("ORCH_AGENT_USER", "nobody")
        .set("ORCH_WORKSPACES_DIR", &root.display().to_string());
    let task = seed_task(&env);
    let ws = root.join("1-ORCH-1");

    // Job 1: cloned from orch's mirror; the granted agent pushes to the real remote.
    let job1 = running_job(&env, task);
    let out = env.run(&["run-job", &job1.to_string()]);
    assert_eq!(out.code, 0, "{}", job_log(&env, job1));
    let first = seen(&env, job1);
    assert_eq!(first[3], format!("head={main_head}"), "{first:?}");
    assert_eq!(first[6], "1", "granted: the agent has the token");
    let pushed = git(
        &remote.path().join("remote.git"),
        &["rev-parse", "refs/heads/orch-1"],
    );
    assert_ne!(
        pushed, main_head,
        "the agent pushed over http with its token"
    );
    assert_eq!(std::fs::metadata(ws.join(".git")).unwrap().uid(), 65534);
    let mirrors: Vec<PathBuf> = std::fs::read_dir(root.join(".mirrors"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "git"))
        .collect();
    assert_eq!(mirrors.len(), 1, "{mirrors:?}");
    for p in [
        &mirrors[0],
        &mirrors[0].join("config"),
        &mirrors[0].join("refs"),
    ] {
        let m = std::fs::metadata(p).unwrap();
        assert_eq!(m.uid(), 0, "orch's: {}", p.display());
        assert_eq!(m.mode() & 0o022, 0, "nobody else writes {}", p.display());
    }
    assert!(!std::fs::read_to_string(mirrors[0].join("config"))
        .unwrap()
        .contains(TOKEN));
    assert_eq!(
        git_any_owner(&ws, &["remote", "get-url", "--push", "origin"]),
        format!("{base}/remote.git"),
        "origin is the real remote"
    );

    // Between jobs the agent plants traps in its own .git.
    let trap = tempfile::tempdir().unwrap();
    open(trap.path(), 0o777);
    let record = trap.path().join("record");
    let script = format!(
        "#!/bin/sh\n{{ echo \"$0 $*\"; env; cat 2>/dev/null; }} >> {} 2>&1\nexit 0\n",
        record.display()
    );
    let hooks = ws.join(".git/hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    for name in [
        "post-checkout",
        "reference-transaction",
        "pre-auto-gc",
        "fsmonitor",
    ] {
        std::fs::write(hooks.join(name), &script).unwrap();
        open(&hooks.join(name), 0o755);
    }
    let planted = [
        (
            "core.fsmonitor",
            hooks.join("fsmonitor").display().to_string(),
        ),
        (
            "credential.helper",
            format!("!{}", hooks.join("fsmonitor").display()),
        ),
        (&format!("url.{evil_base}/.insteadOf"), format!("{base}/")),
        ("remote.origin.url", format!("{evil_base}/remote.git")),
    ];
    for (key, value) in &planted {
        git_any_owner(&ws, &["config", "--add", key, value]);
    }
    let chown = Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(ws.join(".git"))
        .status()
        .unwrap();
    assert!(chown.success());

    // Job 2: reset to the pushed tip all the same; no trap and no other host got the token.
    let job2 = running_job(&env, task);
    let out = env.run(&["run-job", &job2.to_string()]);
    assert_eq!(out.code, 0, "{}", job_log(&env, job2));
    let second = seen(&env, job2);
    assert_eq!(second[3], format!("head={pushed}"), "{second:?}");
    assert_eq!(second[5], "files=.git README work.txt ", "{second:?}");
    let caught = std::fs::read_to_string(&record).unwrap_or_default();
    assert!(!caught.contains(TOKEN), "a trap got the token: {caught}");
    let e = evil.lock().unwrap();
    assert!(
        !e.credentials.iter().any(|c| c.contains(TOKEN)),
        "{:?}",
        e.credentials
    );
    assert_eq!(e.token_in_argv, Vec::<String>::new());
    let s = server.lock().unwrap();
    assert_eq!(
        s.token_in_argv,
        Vec::<String>::new(),
        "no argv holds the token"
    );
    drop((e, s));

    // Removal still works; the mirror stays for the project's next task.
    env.db()
        .execute("UPDATE tasks SET stage = 'cancelled' WHERE id = ?1", [task])
        .unwrap();
    env.set("ORCH_POST_DEPLOY_ENABLED", "false");
    let done = env.run(&["post-deploy-tick"]).expect(0);
    assert!(!ws.exists(), "{}", done.stderr);
    assert!(mirrors[0].join("HEAD").is_file());
}
