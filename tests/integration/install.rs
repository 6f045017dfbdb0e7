//! Running as a system service: journald priorities, `--version`, man pages and
//! completions, the metrics file (issue 15).

use std::os::unix::fs::MetadataExt as _;
use std::process::Stdio;

use crate::common::TestEnv;

/// Runs `cmd` with stderr redirected into a file this test creates, and
/// `JOURNAL_STREAM` set to `stream(dev, ino)` of that very file; returns stderr's text.
fn stderr_as_journal(
    env: &TestEnv,
    args: &[&str],
    extra: &[(&str, &str)],
    stream: impl Fn(u64, u64) -> String,
) -> String {
    let name: String = args
        .join("-")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let path = env.path(&format!("stderr-{name}.log"));
    let file = std::fs::File::create(&path).unwrap();
    let meta = file.metadata().unwrap();
    let mut cmd = env.command(args);
    cmd.env("JOURNAL_STREAM", stream(meta.dev(), meta.ino()))
        .envs(extra.iter().copied())
        .stdout(Stdio::null())
        .stderr(file);
    cmd.status().unwrap();
    std::fs::read_to_string(&path).unwrap()
}

#[test]
fn under_journald_every_line_carries_its_priority() {
    let env = TestEnv::new();
    std::fs::create_dir_all(env.path("state")).unwrap();
    std::fs::write(env.path("state/merge-lease.json"), "{not json").unwrap();
    let journal = |d: u64, i: u64| format!("{d}:{i}");
    let err = stderr_as_journal(&env, &["reap"], &[], journal);
    let lines: Vec<&str> = err.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<4>reap: merge lease file is malformed")),
        "{err}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("<6>reap: scanned=")),
        "{err}"
    );
    assert!(lines.iter().all(|l| l.starts_with('<')), "{err}");
    // The final `error:` before the logger exists (the configuration did not load)…
    let err = stderr_as_journal(
        &env,
        &["status"],
        &[("ORCH_CONFIG", "no-such.yaml")],
        journal,
    );
    assert!(err.starts_with("<3>error: "), "{err}");
    // …and after it (the pass failed).
    let err = stderr_as_journal(&env, &["status", "--prometheus", "state"], &[], journal);
    assert!(
        err.lines().last().unwrap().starts_with("<3>error: "),
        "{err}"
    );
}

#[test]
fn a_journal_stream_that_is_not_stderr_keeps_timestamps() {
    let env = TestEnv::new();
    std::fs::create_dir_all(env.path("state")).unwrap();
    std::fs::write(env.path("state/merge-lease.json"), "{not json").unwrap();
    for other in [
        |d: u64, i: u64| format!("{d}:{}", i + 1),
        |d: u64, i: u64| format!("{}:{i}", d + 1),
        |_: u64, _: u64| "1".to_string(),
    ] {
        let err = stderr_as_journal(&env, &["reap"], &[], other);
        assert!(!err.contains('<'), "{err}");
        let warn = err.lines().find(|l| l.contains("malformed")).unwrap();
        // `2026-11-25T03:00:00Z WARN  reap: …`: the wall clock's second, then the level.
        let (stamp, rest) = warn.split_once(' ').unwrap();
        assert!(stamp.parse::<jiff::Timestamp>().is_ok(), "{warn}");
        assert!(rest.starts_with("WARN  reap:"), "{warn}");
    }
}

#[test]
fn version_names_the_git_revision_built_from() {
    let env = TestEnv::new();
    let out = env.run(&["--version"]).expect(0);
    let root = env!("CARGO_MANIFEST_DIR");
    let head = std::process::Command::new("git")
        .args(["-C", root, "rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8(o.stdout).unwrap().trim().to_string());
    // Built from a checkout: its HEAD (cargo re-runs build.rs when HEAD moves); from a
    // source tarball without ORCH_REVISION: `unknown`.
    let want = head.unwrap_or_else(|| "unknown".into());
    assert_eq!(
        out.stdout,
        format!("orch {} (rev {want})\n", env!("CARGO_PKG_VERSION"))
    );
    // Subcommands say the same.
    env.run(&["reap", "--version"])
        .expect(0)
        .stdout_has(&format!("(rev {want})"));
}

/// Every subcommand's path, `orch-task-add` style, from the clap definitions.
pub(crate) fn subcommand_pages() -> Vec<String> {
    fn walk(prefix: &str, cmd: &clap::Command, out: &mut Vec<String>) {
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            let name = format!("{prefix}-{}", sub.get_name());
            out.push(format!("{name}.1"));
            walk(&name, sub, out);
        }
    }
    let mut out = vec!["orch.1".to_string()];
    walk(
        "orch",
        &<orch::cli::Cli as clap::CommandFactory>::command(),
        &mut out,
    );
    out.sort();
    out
}

#[test]
fn man_writes_one_page_per_subcommand() {
    let env = TestEnv::new();
    let run = env.run(&["man", "share/man/man1"]).expect(0);
    let mut written: Vec<String> = std::fs::read_dir(env.path("share/man/man1"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    written.sort();
    let want = subcommand_pages();
    assert!(want.len() >= 20, "walked the real tree: {want:?}");
    assert!(want.contains(&"orch-task-add.1".to_string()), "{want:?}");
    assert_eq!(written, want);
    assert_eq!(run.stdout.lines().count(), want.len(), "{}", run.stdout);
    // roff writes a hyphen `\-`.
    let top = std::fs::read_to_string(env.path("share/man/man1/orch.1"))
        .unwrap()
        .replace("\\-", "-");
    assert!(top.contains(".TH orch 1"), "{top}");
    for sub in <orch::cli::Cli as clap::CommandFactory>::command().get_subcommands() {
        assert!(
            top.contains(sub.get_name()),
            "orch.1 lists {}",
            sub.get_name()
        );
    }
    let reap = std::fs::read_to_string(env.path("share/man/man1/orch-reap.1")).unwrap();
    assert!(reap.contains(".TH orch-reap 1"), "{reap}");
    assert!(reap.contains("dry"), "the options are documented: {reap}");
}

#[test]
fn completions_for_bash_zsh_and_fish_name_every_subcommand() {
    let env = TestEnv::new();
    let cmd = <orch::cli::Cli as clap::CommandFactory>::command();
    for shell in ["bash", "zsh", "fish"] {
        let script = env.run(&["completions", shell]).expect(0).stdout;
        assert!(script.len() > 1000, "{shell}: {script}");
        for sub in cmd.get_subcommands() {
            assert!(
                script.contains(sub.get_name()),
                "{shell} completes {}",
                sub.get_name()
            );
        }
    }
    env.run(&["completions", "tcsh"]).expect(2);
}

#[test]
fn every_unit_names_the_manual_and_one_installed_document() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let pages = subcommand_pages();
    let mut units = 0;
    for e in std::fs::read_dir(root.join("systemd")).unwrap() {
        let path = e.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let unit = path.file_name().unwrap().to_string_lossy().into_owned();
        let docs: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("Documentation="))
            .flat_map(str::split_whitespace)
            .collect();
        units += 1;
        assert_eq!(docs.first(), Some(&"man:orch(1)"), "{unit}: {docs:?}");
        let files: Vec<&&str> = docs.iter().filter(|d| d.starts_with("file:")).collect();
        assert_eq!(files.len(), 1, "{unit}: one document: {docs:?}");
        let doc = files[0]
            .strip_prefix("file:///usr/share/doc/orch/")
            .unwrap_or_else(|| panic!("{unit}: installed under /usr/share/doc/orch: {docs:?}"));
        assert!(root.join("docs").join(doc).is_file(), "{unit}: docs/{doc}");
        for man in docs.iter().filter(|d| d.starts_with("man:")) {
            let page = man.strip_prefix("man:").unwrap().replace("(1)", ".1");
            assert!(pages.contains(&page), "{unit}: {man} is generated");
        }
    }
    assert!(units >= 11, "read the real units: {units}");
}

/// The fd an `openat(…, "PATH", …) = FD` line of strace returns, when it opened `path`.
fn opened_fd(line: &str, path: &str) -> Option<String> {
    if !line.contains(&format!("openat(AT_FDCWD, \"{path}\",")) {
        return None;
    }
    let fd = line.rsplit("= ").next()?.trim();
    fd.parse::<u32>().ok().map(|n| n.to_string())
}

/// The atomic writer's durability, checked on the real system calls (strace, which
/// `.ci/run` installs): the temporary file is synced before the rename, and the folder
/// after it, so a power loss right after the call keeps the new file (the merge lease,
/// post-deploy windows and the rollback marker in them rely on it).
#[test]
fn the_atomic_writer_syncs_the_file_then_the_folder_after_the_rename() {
    let env = TestEnv::new();
    std::fs::create_dir_all(env.path("m")).unwrap();
    let trace = env.path("strace.log");
    let mut cmd = std::process::Command::new("strace");
    let orch = env.command(&["status", "--prometheus", "m/orch.prom"]);
    cmd.args([
        "-f",
        "-e",
        "trace=openat,fsync,fdatasync,rename,renameat,renameat2",
    ])
    .arg("-o")
    .arg(&trace)
    .arg(orch.get_program())
    .args(orch.get_args())
    .env_clear()
    .envs(orch.get_envs().filter_map(|(k, v)| Some((k, v?))))
    .current_dir(orch.get_current_dir().unwrap())
    .stdout(Stdio::null());
    let status = cmd
        .status()
        .expect("strace is installed (.ci/run installs it)");
    assert!(status.success());
    let log = std::fs::read_to_string(&trace).unwrap();
    // Without strace's pid column and its padding before `= result`.
    let calls: Vec<String> = log
        .lines()
        .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
        .collect();
    let at = |pred: &dyn Fn(&str) -> bool, from: usize| -> usize {
        from + calls[from..]
            .iter()
            .position(|l| pred(l))
            .unwrap_or_else(|| panic!("expected call not found after line {from}:\n{log}"))
    };
    let (open_tmp, tmp_fd) = calls
        .iter()
        .enumerate()
        .find_map(|(i, l)| {
            let name = l.split('"').nth(1)?;
            name.starts_with("m/.orch.prom.tmp.")
                .then(|| opened_fd(l, name).map(|fd| (i, fd)))?
        })
        .unwrap_or_else(|| panic!("no temporary file opened:\n{log}"));
    let synced = at(&|l| l.starts_with(&format!("fsync({tmp_fd})")), open_tmp);
    let renamed = at(
        &|l| l.starts_with("rename") && l.contains("\"m/orch.prom\")") && l.ends_with("= 0"),
        open_tmp,
    );
    assert!(
        synced < renamed,
        "the file is synced before the rename:\n{log}"
    );
    let open_dir = at(&|l| opened_fd(l, "m").is_some(), renamed);
    let dir_fd = opened_fd(&calls[open_dir], "m").unwrap();
    at(
        &|l| l.starts_with(&format!("fsync({dir_fd}) = 0")),
        open_dir,
    );
}

/// The samples of `family` in a textfile: `(labels, value)`.
fn samples(prom: &str, family: &str) -> Vec<(String, String)> {
    prom.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            let (n, labels) = name.split_once('{').map_or((name, ""), |(n, l)| (n, l));
            (n == family).then(|| (labels.trim_end_matches('}').to_string(), value.to_string()))
        })
        .collect()
}

#[test]
fn the_metrics_file_is_readable_by_node_exporter_and_counts_every_running_job() {
    use std::os::unix::fs::PermissionsExt as _;
    let env = TestEnv::new();
    // 25 running jobs with dead pids, more than the 20 the report lists.
    for n in 1..=25 {
        env.run(&[
            "task",
            "add",
            "--project",
            "orch",
            "--work-item",
            &format!("wi-{n}"),
            "--key",
            &format!("ORCH-{n}"),
        ])
        .expect(0);
    }
    let all_running = || {
        env.db()
            .execute(
                "UPDATE jobs SET status = 'running', started_at = 1, pid = 2147483646",
                [],
            )
            .unwrap()
    };
    // A pass with counts (reap scans the 25 and flips them), then all running again, and
    // a merge lease held by a dead pid.
    all_running();
    env.run(&["reap"]).expect(0);
    assert_eq!(all_running(), 25);
    let lease = serde_json::json!({
        "job_id": 1, "task": "ORCH-1", "pid": 2147483646, "pid_start_time": null,
        "acquired_at": 1_795_575_000, "ttl_s": 900
    });
    std::fs::write(env.path("state/merge-lease.json"), lease.to_string()).unwrap();
    // The units' umask: without the explicit mode the file would be 0600.
    let script = format!(
        "umask 077; exec {} status --prometheus textfile/orch.prom",
        env!("CARGO_BIN_EXE_orch")
    );
    let base = env.command(&[]);
    let out = std::process::Command::new("/bin/sh")
        .args(["-c", &script])
        .env_clear()
        .envs(base.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .current_dir(base.get_current_dir().unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let path = env.path("textfile/orch.prom");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);
    let prom = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        samples(&prom, "orch_running_jobs_not_alive"),
        [(String::new(), "25".into())]
    );
    // The lease file this test writes is SQLite's lease; PostgreSQL's is a row (leases.rs).
    if crate::common::sqlite_only() {
        assert_eq!(
            samples(&prom, "orch_merge_lease_held"),
            [(String::new(), "1".into())]
        );
        assert_eq!(
            samples(&prom, "orch_merge_lease_expiry_timestamp_seconds"),
            [(String::new(), (1_795_575_000 + 900).to_string())]
        );
    }
    let reap_counts = samples(&prom, "orch_pass_counts");
    assert!(
        reap_counts.contains(&(
            "command=\"reap\",count=\"scanned\"".to_string(),
            "25".to_string()
        )),
        "{prom}"
    );
    let build = samples(&prom, "orch_build_info");
    assert_eq!(
        build,
        [(
            format!(
                "version=\"{}\",revision=\"{}\"",
                orch::build_info::VERSION,
                orch::build_info::REVISION
            ),
            "1".to_string()
        )]
    );
    // Every sample line is `name{labels} number` and every family is typed.
    for line in prom.lines().filter(|l| !l.starts_with('#')) {
        let (name, value) = line.rsplit_once(' ').unwrap();
        value.parse::<f64>().unwrap_or_else(|_| panic!("{line}"));
        let family = name.split('{').next().unwrap();
        assert!(prom.contains(&format!("# TYPE {family} gauge\n")), "{line}");
    }
}

#[test]
fn every_family_the_example_alert_rules_use_is_one_orch_writes() {
    let env = TestEnv::new();
    env.run(&["reap"]).expect(0);
    env.run(&[
        "hold",
        "set",
        "--project",
        "shop",
        "--until",
        "2h",
        "--reason",
        "r",
    ])
    .expect(0);
    env.run(&["status", "--prometheus", "orch.prom"]).expect(0);
    let prom = std::fs::read_to_string(env.path("orch.prom")).unwrap();
    let rules = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/orch-alerts.yml"),
    )
    .unwrap();
    let mut names: Vec<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("orch_") && w.len() > "orch_".len())
        .collect();
    names.sort_unstable();
    names.dedup();
    assert!(names.len() >= 6, "{names:?}");
    for name in names {
        assert!(
            prom.contains(&format!("# TYPE {name} gauge\n")),
            "docs/orch-alerts.yml uses {name}, which orch does not write:\n{prom}"
        );
    }
}

#[test]
fn a_commands_own_error_and_refusal_lines_carry_their_priority_under_journald() {
    let env = TestEnv::new();
    let journal = |d: u64, i: u64| format!("{d}:{i}");
    let err = stderr_as_journal(
        &env,
        &["post-deploy-tick", "--arm", "--task", "NOPE-1"],
        &[],
        journal,
    );
    assert!(err.contains("<3>error: no task \"NOPE-1\"\n"), "{err}");
    env.run(&[
        "task",
        "add",
        "--project",
        "shop",
        "--work-item",
        "wi-1",
        "--key",
        "SHOP-1",
    ])
    .expect(0);
    let err = stderr_as_journal(
        &env,
        &["task", "move", "SHOP-1", "--to", "done", "--reason", "r"],
        &[],
        journal,
    );
    assert!(
        err.contains(
            "<4>task SHOP-1 is at analysis; the pipeline table does not allow analysis -> done"
        ),
        "{err}"
    );
    // Without journald the same lines read as before: no prefix, no timestamp.
    let plain = env
        .run(&["task", "move", "SHOP-1", "--to", "done", "--reason", "r"])
        .expect(1);
    assert!(
        plain.stderr.starts_with("task SHOP-1 is at analysis;"),
        "{}",
        plain.stderr
    );
    let plain = env
        .run(&["post-deploy-tick", "--arm", "--task", "NOPE-1"])
        .expect(2);
    assert!(
        plain.stderr.contains("\nerror: no task \"NOPE-1\"\n")
            || plain.stderr.starts_with("error: no task"),
        "{}",
        plain.stderr
    );
}

/// The last Plane budget seen is kept in the database by whichever command read it and
/// exported by `status --prometheus`; doctor (read-only) leaves it; an older reading
/// never replaces a newer one.
#[test]
fn the_last_plane_budget_seen_is_kept_and_exported() {
    use crate::common::{Project, Standin, NOW_UNIX};
    let mut env = TestEnv::builder()
        .project(Project::orch().self_hosting(false))
        .project(Project::shop())
        .standins(&[Standin::Plane, Standin::Gitea])
        .set("ORCH_RECONCILE_GRACE_S", "0")
        .build();
    let metrics = |env: &TestEnv| {
        env.run(&["status", "--prometheus", "orch.prom"]).expect(0);
        let prom = std::fs::read_to_string(env.path("orch.prom")).unwrap();
        (
            samples(&prom, "orch_plane_ratelimit_remaining"),
            samples(&prom, "orch_plane_ratelimit_seen_timestamp_seconds"),
        )
    };
    // Before any Plane answer: typed families without a sample, not a made-up 0.
    assert_eq!(metrics(&env), (vec![], vec![]));
    env.plane().set_rate_limit(100, false);
    let before = env.plane().count(None, "");
    env.run(&["reconcile"]).expect(0);
    let used = env.plane().count(None, "") - before;
    assert!(used >= 2, "reconcile listed every project: {used}");
    let one = |v: String| vec![(String::new(), v)];
    let want = (one((100 - used).to_string()), one(NOW_UNIX.to_string()));
    assert_eq!(metrics(&env), want);
    // doctor reads the budget too (and says it) but writes nothing.
    env.run(&["doctor"]);
    assert!(
        env.plane().count(None, "") > before + used,
        "doctor asked Plane"
    );
    assert_eq!(metrics(&env), want);
    // A reading stamped earlier (a pass that started before the last one) loses.
    env.set("ORCH_NOW", "2026-11-25T02:00:00Z");
    env.plane().set_rate_limit(50, false);
    env.run(&["reconcile"]).expect(0);
    assert_eq!(metrics(&env), want);
    // A later one wins.
    env.set("ORCH_NOW", "2026-11-25T04:00:00Z");
    env.plane().set_rate_limit(30, false);
    let before = env.plane().count(None, "");
    env.run(&["reconcile"]).expect(0);
    let used = env.plane().count(None, "") - before;
    assert_eq!(
        metrics(&env),
        (
            one((30 - used).to_string()),
            one((NOW_UNIX + 3600).to_string())
        )
    );
    // A 429 is the budget spent: 0, not the last positive reading.
    env.set("ORCH_NOW", "2026-11-25T05:00:00Z");
    env.plane().set_rate_limit(0, true);
    env.run(&["reconcile"]);
    assert_eq!(
        metrics(&env),
        (one("0".to_string()), one((NOW_UNIX + 7200).to_string()))
    );
}

/// `promtool check metrics` (Prometheus's own parser and linter) accepts the whole
/// textfile with every family sampled: a pass with counts, a hold, a merge lease, a
/// Plane budget. Runs where promtool is installed (.ci/run installs Debian's
/// `prometheus` package, which has it).
#[test]
fn promtool_accepts_the_whole_metrics_file() {
    use crate::common::{Project, Standin};
    let Ok(promtool) = which("promtool") else {
        eprintln!("promtool not installed: skipped (.ci/run installs it)");
        return;
    };
    let env = TestEnv::builder()
        .project(Project::orch().self_hosting(false))
        .project(Project::shop())
        .standins(&[Standin::Plane, Standin::Gitea])
        .set("ORCH_RECONCILE_GRACE_S", "0")
        .build();
    env.plane().set_rate_limit(100, false);
    env.run(&["reconcile"]).expect(0);
    env.run(&["reap"]).expect(0);
    env.run(&[
        "hold",
        "set",
        "--project",
        "shop",
        "--until",
        "2h",
        "--reason",
        "r",
    ])
    .expect(0);
    let lease = serde_json::json!({
        "job_id": 1, "task": "ORCH-1", "pid": 2147483646, "pid_start_time": null,
        "acquired_at": 1_795_575_000, "ttl_s": 900
    });
    std::fs::write(env.path("state/merge-lease.json"), lease.to_string()).unwrap();
    env.run(&["status", "--prometheus", "orch.prom"]).expect(0);
    let prom = std::fs::read_to_string(env.path("orch.prom")).unwrap();
    for family in [
        "orch_pass_counts",
        "orch_hold_until_timestamp_seconds",
        "orch_merge_lease_expiry_timestamp_seconds",
        "orch_plane_ratelimit_remaining",
    ] {
        // The lease file is SQLite's merge lease; PostgreSQL's is a row (leases.rs).
        if family.starts_with("orch_merge_lease") && !crate::common::sqlite_only() {
            continue;
        }
        assert!(!samples(&prom, family).is_empty(), "{family}:\n{prom}");
    }
    let check = |text: &str| {
        let mut child = std::process::Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let out = check(&prom);
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool: {out:?}\n{prom}"
    );
    // The check can fail: a family without HELP and with a bad name is a finding.
    let out = check(&format!("{prom}orch_bad_total{{x=\"1\"}} 1\n"));
    assert!(!out.status.success() || !out.stdout.is_empty(), "{out:?}");
}

/// The path of `program` on PATH.
pub(crate) fn which(program: &str) -> Result<std::path::PathBuf, String> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("{program} is not on PATH"))
}
