//! A task's workspace: a git working copy of its repository at its branch, under
//! `<state dir>/workspaces/<task id>-<task key>/`, that `run-job` prepares before each of
//! the task's agents starts (docs/jobs.md, "The workspace").
//!
//! Clone once (into `<name>.partial`, renamed into place when complete, so a crash
//! mid-clone never leaves a half copy that looks ready), then on every job: point
//! `origin` at the configured URL, fetch, check the task's branch out **forced** at the
//! remote tip (or, when the branch is not on the remote yet, a new local branch from the
//! default branch's tip, which the agent pushes), and `clean -ffdx`. Whatever an earlier
//! run left uncommitted or unpushed is discarded: the remote branch is the truth.
//!
//! Credentials for an https URL come from `ORCH_GITEA_TOKEN` through git's credential
//! mechanism: a helper that prints the token from the environment variable
//! `ORCH_GITEA_TOKEN`. orch's own git commands get the helper on their command line
//! (`git -c credential.helper=...`) and the variable in their environment alone; the
//! workspace's `.git/config` keeps the same helper (the variable's *name*, never its
//! value), so an agent granted `credentials: [gitea]` (which puts the variable in its
//! environment) can push, and one not granted cannot. The token is never in argv, never
//! in `.git/config` or a URL on disk, and never in the log (git does not print
//! credentials; the URL holds no password: config validation refuses one).
//!
//! Removal renames the folder to `<name>.removing` first, then deletes it: a crash
//! mid-removal leaves a `.removing` folder that nothing uses and the next sweep deletes.
//!
//! With a separate agent user (`ORCH_AGENT_USER`) every git step in the workspace, and
//! every deletion of a workspace's files, runs as that user ([`Remover`]), so the
//! workspace and whatever the agent makes in it belong to the agent, however it sets its
//! modes; orch only creates, lists and renames entries of the workspaces root it owns
//! (docs/jobs.md, "The workspace"). The agent owns that `.git` and can edit it (hooks,
//! `core.fsmonitor`, `url.*.insteadOf`, helpers), so orch's token never enters those
//! steps: for an https URL with a token, orch itself (not switching user) fetches into a
//! bare mirror it owns, `<workspaces root>/.mirrors/<url>.git` (its config orch's own,
//! hooks off, readable by the agent's group, not writable by it), and the agent-user
//! steps clone and fetch from the mirror's local path with no token in their
//! environment, no user or system git configuration and hooks and fsmonitor off.
//! `origin` still names the real URL, so an agent granted `gitea` pushes with its own
//! granted token through the helper in its `.git/config`.

use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _, Result};

use crate::adapters::spawn::AgentUser;
use crate::adapters::windows::sanitise;
use crate::config::{CloneKind, CloneUrl};

/// The folder, under the state dir, that holds every workspace.
pub const WORKSPACES_DIR: &str = "workspaces";
/// The environment variable the credential helper reads the token from: set in the
/// environment of orch's git commands, and in an agent's only when it is granted `gitea`.
pub const TOKEN_ENV: &str = "ORCH_GITEA_TOKEN";
/// The credential helper for `url`: answers `get` with the token when the variable is
/// set and git asks for `url`'s host (and port), ignores `store`, `erase` and every other
/// host (a redirect or a rewritten URL never gets the token). It names the variable,
/// never the value.
///
/// # Errors
/// When `url` has no host of plain characters (`A-Za-z0-9.-:[]`).
pub fn helper(url: &str) -> Result<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
    {
        bail!("no host in {url} for the credential helper");
    }
    Ok(format!(
        "!f() {{ test \"$1\" = get || exit 0; h=; while IFS= read -r l; do case \"$l\" in host=*) h=\"${{l#host=}}\";; esac; done; test \"$h\" = '{host}' && test -n \"${{ORCH_GITEA_TOKEN}}\" || exit 0; echo username=orch; echo \"password=${{ORCH_GITEA_TOKEN}}\"; }}; f"
    ))
}
/// The folder, under the workspaces root, of orch's bare mirrors (agent user only).
pub const MIRRORS_DIR: &str = ".mirrors";
/// Suffix of a clone in progress.
const PARTIAL: &str = ".partial";
/// Suffix of a workspace being removed.
const REMOVING: &str = ".removing";

/// What one workspace is prepared from.
#[derive(Debug, Clone, Copy)]
pub struct WorkspaceSource<'a> {
    /// Where the repository is cloned from.
    pub url: &'a CloneUrl,
    /// The task's branch.
    pub branch: &'a str,
    /// The project's default branch: the start of a branch not on the remote yet.
    pub default_branch: &'a str,
    /// The Gitea token, used only for an https URL.
    pub token: Option<&'a str>,
}

/// How a workspace was prepared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedWorkspace {
    /// Whether it was cloned now (`false`: reused and fetched).
    pub cloned: bool,
    /// Whether the task's branch was on the remote (`false`: a new local branch from
    /// the default branch).
    pub branch_on_remote: bool,
    /// The commit checked out.
    pub head: String,
}

/// The folder that holds every workspace: `ORCH_WORKSPACES_DIR` when set, else
/// `<state dir>/workspaces`.
pub fn root(state_dir: &Path, configured: Option<&str>) -> PathBuf {
    configured
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map_or_else(|| state_dir.join(WORKSPACES_DIR), PathBuf::from)
}

/// Returns the workspace folder of a task under the workspaces `root`.
pub fn dir(root: &Path, task_id: i64, task_key: &str) -> PathBuf {
    root.join(format!("{task_id}-{}", sanitise(task_key)))
}

/// Who deletes a workspace's files.
#[derive(Debug, Clone, Copy)]
pub struct Remover<'a> {
    /// Run the deletion as this user (the agent user, who owns the files); `None`: this
    /// process deletes them itself.
    pub user: Option<&'a AgentUser>,
    /// A deletion this process is not allowed to finish (the agent user's files, and no
    /// capability to switch to it) leaves the `.removing` folder for a process that may
    /// (the next job's supervisor) instead of failing.
    pub keep_on_failure: bool,
}

impl Remover<'_> {
    /// Deletes the tree at `path` (nothing when there is none).
    fn remove_tree(&self, path: &Path) -> Result<()> {
        let Some(user) = self.user else {
            return remove_tree(path);
        };
        if std::fs::symlink_metadata(path).is_err() {
            return Ok(());
        }
        // As the owner: folders the agent closed (0500, 0000) are opened first.
        let _ = as_user(Command::new("chmod"), user)
            .args(["-R", "u+rwx", "--"])
            .arg(path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let out = as_user(Command::new("rm"), user)
            .args(["-rf", "--"])
            .arg(path)
            .output()
            .context("starting rm as the agent user")?;
        if std::fs::symlink_metadata(path).is_ok() {
            bail!(
                "removing {} as {}: {}",
                path.display(),
                user.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}

/// `command` set to run as `user` (uid and gid; the standard library drops the
/// supplementary groups).
fn as_user(mut command: Command, user: &AgentUser) -> Command {
    use std::os::unix::process::CommandExt as _;
    command.uid(user.uid).gid(user.gid).stdin(Stdio::null());
    command
}

/// Prepares the workspace at `ws` from `src`; git's output goes to `log`, and git runs
/// with `env` (the agent's allowlisted environment) plus what it needs here, as `user`
/// when given (the agent user: the workspace is then its own).
///
/// # Errors
/// With the failing step and git's exit status (git's own words are in the log).
pub fn prepare(
    ws: &Path,
    src: &WorkspaceSource<'_>,
    env: &[(String, OsString)],
    log: &File,
    user: Option<&AgentUser>,
) -> Result<PreparedWorkspace> {
    let helper = match src.url.kind {
        CloneKind::Https => Some(helper(&src.url.url)?),
        _ => None,
    };
    // With an agent user and a token, orch fetches into its own mirror first; the agent
    // user's steps then read the mirror, never the remote, and never get the token.
    let mirror = match (user, src.url.kind, src.token) {
        (Some(_), CloneKind::Https, Some(token)) => {
            let root = ws.parent().context("a workspace has a parent folder")?;
            Some(update_mirror(
                root,
                src,
                token,
                helper.as_deref(),
                env,
                log,
            )?)
        }
        _ => None,
    };
    let git = Git {
        src,
        env,
        log,
        user,
        helper: helper.as_deref(),
        mirror: mirror.as_deref(),
    };
    // Where the agent-user steps read from: the mirror when there is one.
    let mirror_text = mirror.as_ref().map(|m| m.display().to_string());
    let from = mirror_text.as_deref().unwrap_or(&src.url.url);
    let remover = Remover {
        user,
        keep_on_failure: false,
    };
    let cloned = !match user {
        None => ws.join(".git").is_dir(),
        Some(u) => as_user(Command::new("test"), u)
            .arg("-d")
            .arg(ws.join(".git"))
            .status()
            .is_ok_and(|s| s.success()),
    };
    if cloned {
        let parent = ws.parent().context("a workspace has a parent folder")?;
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
        // A folder without `.git` is a leftover, never a workspace.
        remover.remove_tree(ws)?;
        let partial = with_suffix(ws, PARTIAL);
        remover.remove_tree(&partial)?;
        let dest = partial.display().to_string();
        // From the mirror: through upload-pack (`--no-local`), so every file is the
        // agent's own copy, never a hard link to orch's.
        let mut args = vec!["clone", "--no-checkout"];
        if mirror.is_some() {
            args.push("--no-local");
        }
        args.extend(["--origin", "origin", "--", from, &dest]);
        git.run(None, &args, "cloning")?;
        std::fs::rename(&partial, ws)
            .with_context(|| format!("moving the clone into {}", ws.display()))?;
    }
    // `origin` names the real remote (the agent pushes there), whatever it was cloned from.
    git.run(
        Some(ws),
        &["config", "--replace-all", "remote.origin.url", &src.url.url],
        "setting origin",
    )?;
    if src.url.kind == CloneKind::Https {
        // For the agent's own pushes: the helper (a variable's name), an empty one first
        // so no helper from the user's or system configuration answers instead.
        let _ = git.ok(ws, &["config", "--unset-all", "credential.helper"]);
        for value in ["", helper.as_deref().unwrap_or_default()] {
            git.run(
                Some(ws),
                &["config", "--add", "credential.helper", value],
                "configuring the credential helper",
            )?;
        }
    }
    // An explicit source and refspec: not whatever the agent left in `remote.origin.*`.
    git.run(
        Some(ws),
        &[
            "fetch",
            "--prune",
            "--no-tags",
            from,
            "+refs/heads/*:refs/remotes/origin/*",
        ],
        "fetching",
    )?;
    let remote_branch = format!("refs/remotes/origin/{}", src.branch);
    let branch_on_remote = git.ok(ws, &["rev-parse", "--verify", "--quiet", &remote_branch]);
    let start = if branch_on_remote {
        remote_branch
    } else {
        let default = format!("refs/remotes/origin/{}", src.default_branch);
        if !git.ok(ws, &["rev-parse", "--verify", "--quiet", &default]) {
            bail!(
                "neither the task's branch {} nor the default branch {} is on {}",
                src.branch,
                src.default_branch,
                src.url.url
            );
        }
        default
    };
    git.run(
        Some(ws),
        &[
            "checkout",
            "--force",
            "--no-track",
            "-B",
            src.branch,
            &start,
        ],
        "checking out the branch",
    )?;
    if let Some(u) = user {
        // Folders the agent closed to itself (0500) would stop the clean.
        let _ = as_user(Command::new("find"), u)
            .arg(ws)
            .args([
                "-type", "d", "!", "-perm", "-u=rwx", "-exec", "chmod", "u+rwx", "{}", "+",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    git.run(Some(ws), &["clean", "-ffdxq"], "cleaning")?;
    let head = git.output(ws, &["rev-parse", "HEAD"])?;
    Ok(PreparedWorkspace {
        cloned,
        branch_on_remote,
        head,
    })
}

/// Removes a workspace (and a clone left half made beside it); `Ok(false)` when there
/// was nothing. A crash part-way (or a deletion `remover` may not finish) leaves a
/// `.removing` folder for [`finish_removals`].
///
/// # Errors
/// When the folder cannot be renamed or deleted.
pub fn remove(ws: &Path, remover: &Remover<'_>) -> Result<bool> {
    let mut removed = false;
    for path in [ws.to_path_buf(), with_suffix(ws, PARTIAL)] {
        if std::fs::symlink_metadata(&path).is_err() {
            continue;
        }
        let doomed = with_suffix(&path, REMOVING);
        remover.remove_tree(&doomed)?;
        std::fs::rename(&path, &doomed)
            .with_context(|| format!("renaming {} for removal", path.display()))?;
        match remover.remove_tree(&doomed) {
            Err(e) if remover.keep_on_failure => log::info!(
                "{} left for the next job's supervisor (the agent user's files): {e:#}",
                doomed.display()
            ),
            other => other?,
        }
        removed = true;
    }
    Ok(removed)
}

/// One workspace found on disk: its task id and folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundWorkspace {
    /// The task's row id.
    pub task_id: i64,
    /// The workspace folder (a `.partial` name is given as the workspace it becomes).
    pub dir: PathBuf,
}

/// Deletes the leftovers of interrupted or deferred removals (`.removing` folders)
/// under the workspaces `root`; returns how many went. One `remover` may not delete
/// (`keep_on_failure`) stays for a process that may.
///
/// # Errors
/// When the folder exists but cannot be listed, or a leftover cannot be deleted.
pub fn finish_removals(root: &Path, remover: &Remover<'_>) -> Result<usize> {
    let mut removed = 0;
    for entry in entries(root)? {
        if !entry.file_name().to_string_lossy().ends_with(REMOVING) {
            continue;
        }
        match remover.remove_tree(&entry.path()) {
            Ok(()) => removed += 1,
            Err(e) if remover.keep_on_failure => log::info!(
                "{} left for the next job's supervisor: {e:#}",
                entry.path().display()
            ),
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

fn entries(root: &Path) -> Result<Vec<std::fs::DirEntry>> {
    match std::fs::read_dir(root) {
        Ok(e) => Ok(e.filter_map(std::result::Result::ok).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("listing {}", root.display())),
    }
}

/// Lists the workspaces under the workspaces `root`, one per task, sorted (removals in
/// progress are not listed).
///
/// # Errors
/// When the folder exists but cannot be listed.
pub fn list(root: &Path) -> Result<Vec<FoundWorkspace>> {
    let mut found = Vec::new();
    for entry in entries(root)? {
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if name.ends_with(REMOVING) {
            continue;
        }
        let base = name.strip_suffix(PARTIAL).unwrap_or(&name);
        let Some(task_id) = base.split('-').next().and_then(|id| id.parse().ok()) else {
            continue;
        };
        let dir = root.join(base);
        if !found.iter().any(|f: &FoundWorkspace| f.dir == dir) {
            found.push(FoundWorkspace { task_id, dir });
        }
    }
    found.sort_by(|a, b| a.dir.cmp(&b.dir));
    Ok(found)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

fn remove_tree(path: &Path) -> Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        // A file where a folder was expected (never made by orch) goes too.
        Err(_) if path.is_file() => {
            std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))
        }
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// Fetches `src`'s branches into orch's bare mirror of it under `root` (created, owned
/// by this process, readable by the agent's group through the root's set-group-id bit
/// and `core.sharedRepository=0640`, writable by orch alone); returns its path. git runs
/// as this process with the token, no user or system configuration, hooks off and only
/// `helper` (which answers for the URL's host alone).
fn update_mirror(
    root: &Path,
    src: &WorkspaceSource<'_>,
    token: &str,
    helper: Option<&str>,
    env: &[(String, OsString)],
    log: &File,
) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = root.join(MIRRORS_DIR);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o2750))
        .with_context(|| format!("opening {} to the agent's group", dir.display()))?;
    let mirror = dir.join(format!("{}.git", sanitise(&src.url.url)));
    let git = |cwd: Option<&Path>, args: &[&str], step: &str| -> Result<()> {
        let mut c = Command::new("git");
        c.env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env(TOKEN_ENV, token)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log.try_clone()?)
            .args([
                "-c",
                "core.hooksPath=/dev/null",
                "-c",
                "core.fsmonitor=false",
            ])
            .args([
                "-c",
                "http.lowSpeedLimit=1000",
                "-c",
                "http.lowSpeedTime=120",
            ])
            .args(["-c", "credential.helper=", "-c"])
            .arg(format!("credential.helper={}", helper.unwrap_or_default()));
        if let Some(d) = cwd {
            c.arg("-C").arg(d);
        }
        let status = c
            .args(args)
            .status()
            .context("starting git (is it installed and on PATH?)")?;
        if !status.success() {
            bail!("git failed {step} ({status}; git's output is in the job's log)");
        }
        Ok(())
    };
    if !mirror.join("HEAD").is_file() {
        let partial = with_suffix(&mirror, PARTIAL);
        remove_tree(&partial)?;
        git(
            None,
            &[
                "init",
                "--quiet",
                "--bare",
                "--shared=0640",
                "--",
                &partial.display().to_string(),
            ],
            "creating the mirror",
        )?;
        std::fs::rename(&partial, &mirror)
            .with_context(|| format!("moving the mirror into {}", mirror.display()))?;
    }
    git(
        Some(&mirror),
        &[
            "fetch",
            "--prune",
            "--no-tags",
            "--",
            &src.url.url,
            "+refs/heads/*:refs/heads/*",
        ],
        // The words of a failed first clone, whichever git step it is.
        "cloning (into orch's mirror)",
    )?;
    // The agent-user steps' only git configuration (orch's file, read-only to them):
    // the mirror is orch's, and the `upload-pack` a clone starts drops command-line
    // configuration, so `safe.directory` is said here.
    let config = with_suffix(&mirror, ".gitconfig");
    let text = format!(
        "[safe]\n\tdirectory = {}\n",
        mirror
            .display()
            .to_string()
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
    );
    std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o640))
        .with_context(|| format!("opening {} to the agent's group", config.display()))?;
    Ok(mirror)
}

/// git, run the way every step of [`prepare`] runs it.
struct Git<'a> {
    src: &'a WorkspaceSource<'a>,
    env: &'a [(String, OsString)],
    log: &'a File,
    /// The agent user git runs as, when there is one.
    user: Option<&'a AgentUser>,
    /// The credential helper for an https URL.
    helper: Option<&'a str>,
    /// orch's mirror the steps read instead of the remote: then no token, no user or
    /// system configuration, hooks and fsmonitor off.
    mirror: Option<&'a Path>,
}

impl Git<'_> {
    fn command(&self, cwd: Option<&Path>, args: &[&str]) -> Command {
        let mut c = match self.user {
            Some(u) => as_user(Command::new("git"), u),
            None => Command::new("git"),
        };
        c.env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            // Never wait for a human, never read a terminal.
            .env("GIT_TERMINAL_PROMPT", "0")
            .env_remove(TOKEN_ENV)
            .stdin(Stdio::null())
            // A stalled transfer ends instead of holding the job forever.
            .args([
                "-c",
                "http.lowSpeedLimit=1000",
                "-c",
                "http.lowSpeedTime=120",
            ]);
        if let Some(mirror) = self.mirror {
            // The agent's `.git` is its own: nothing in it runs during orch's steps, and
            // they hold nothing to steal.
            c.env("GIT_CONFIG_GLOBAL", with_suffix(mirror, ".gitconfig"))
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .args([
                    "-c",
                    "core.hooksPath=/dev/null",
                    "-c",
                    "core.fsmonitor=false",
                ]);
        } else if let (CloneKind::Https, Some(token), Some(helper)) =
            (self.src.url.kind, self.src.token, self.helper)
        {
            // An empty helper first drops any helper from the user's or system config.
            c.args(["-c", "credential.helper=", "-c"])
                .arg(format!("credential.helper={helper}"));
            c.env(TOKEN_ENV, token);
        }
        if let Some(dir) = cwd {
            c.arg("-C").arg(dir);
        }
        c.args(args);
        c
    }

    fn run(&self, cwd: Option<&Path>, args: &[&str], step: &str) -> Result<()> {
        let status = self
            .command(cwd, args)
            .stdout(self.log.try_clone()?)
            .stderr(self.log.try_clone()?)
            .status()
            .context("starting git (is it installed and on PATH?)")?;
        if !status.success() {
            bail!("git failed {step} ({status}; git's output is in the job's log)");
        }
        Ok(())
    }

    fn ok(&self, cwd: &Path, args: &[&str]) -> bool {
        self.command(Some(cwd), args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn output(&self, cwd: &Path, args: &[&str]) -> Result<String> {
        let out = self
            .command(Some(cwd), args)
            .stderr(self.log.try_clone()?)
            .output()
            .context("starting git")?;
        if !out.status.success() {
            bail!("git {} failed ({})", args.join(" "), out.status);
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_names_start_with_the_task_id() {
        let d = dir(&root(Path::new("/s"), None), 12, "SHOP-3");
        assert_eq!(d, Path::new("/s/workspaces/12-SHOP-3"));
        assert_eq!(
            dir(&root(Path::new("/s"), Some("/w")), 12, "SHOP-3"),
            Path::new("/w/12-SHOP-3")
        );
        let odd = dir(&root(Path::new("/s"), Some(" ")), 4, "../x");
        assert_eq!(odd.parent(), Some(Path::new("/s/workspaces")));
        assert!(odd.file_name().unwrap().to_str().unwrap().starts_with("4-"));
    }
}
