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
