//! The Debian package (issue 15): built by `scripts/build-deb` from the binary this
//! test run built, its contents and control data read back with `dpkg-deb`, checked by
//! lintian, then installed into a throwaway root by dpkg itself (maintainer scripts
//! included), where the installed binary runs and `systemd-analyze verify` reads the
//! installed units; then reinstalled, removed and purged.
//!
//! It needs cargo-deb, dpkg, lintian and systemd's tools; `.ci/run` installs them and
//! sets `CI`, under which a missing one fails the test. Elsewhere a machine without
//! cargo-deb skips it, saying so.

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::install::{subcommand_pages, which};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Runs `cmd` to success, without the `ORCH_*` variables of the test's own environment
/// (cargo passes build.rs's `ORCH_REVISION` on, which orch refuses as unknown).
fn run(cmd: &mut Command) -> Output {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ORCH_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?} did not start: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(cmd: &mut Command) -> String {
    String::from_utf8(run(cmd).stdout).unwrap()
}

/// dpkg acting on `root` as a throwaway root: the maintainer scripts run on this machine
/// with `DPKG_ROOT` set (they honour it), dependencies (libc6, systemd) are not
/// installed there, and nothing goes to this machine's dpkg log.
fn dpkg(root: &Path) -> Command {
    let mut cmd = Command::new("dpkg");
    cmd.arg(format!("--root={}", root.display())).args([
        "--force-not-root",
        "--force-script-chrootless",
        "--force-depends",
        "--log=/dev/null",
    ]);
    cmd
}

/// The names of `dir`'s files, or none when it does not exist.
fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A user's or group's line in the root's `/etc/passwd` or `/etc/group`.
fn entry(root: &Path, file: &str, name: &str) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(root.join("etc").join(file)).ok()?;
    let mut found = text
        .lines()
        .filter(|l| l.split(':').next() == Some(name))
        .map(|l| l.split(':').map(String::from).collect::<Vec<_>>());
    let first = found.next();
    assert!(found.next().is_none(), "{name} once in {file}:\n{text}");
    first
}

fn repo_units() -> BTreeSet<String> {
    names(&Path::new(ROOT).join("systemd"))
}

#[test]
fn the_debian_package_builds_installs_into_a_throwaway_root_and_uninstalls() {
    if !crate::common::sqlite_only() {
        return; // the package is the same whatever the engine: built and checked once
    }
    let ci = std::env::var_os("CI").is_some();
    let tools = [
        "cargo-deb",
        "dpkg",
        "dpkg-deb",
        "systemd-sysusers",
        "systemd-tmpfiles",
        "deb-systemd-helper",
        "systemd-analyze",
    ];
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| which(t).is_err())
        .collect();
    if !missing.is_empty() {
        assert!(!ci, ".ci/run installs {missing:?}");
        eprintln!("skipped: {missing:?} not installed (.ci/run installs them)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let built = stdout(
        Command::new(Path::new(ROOT).join("scripts/build-deb"))
            .arg("--binary")
            .arg(env!("CARGO_BIN_EXE_orch"))
            .arg("--output")
            .arg(&out)
            .arg("--fast"),
    );
    let deb = PathBuf::from(built.trim());
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        deb.ends_with(format!("orch_{version}-1_amd64.deb")) && deb.is_file(),
        "{built}"
    );

    // Control data: the package, its dependencies, the conffile, the scripts.
    let info = stdout(Command::new("dpkg-deb").arg("-I").arg(&deb));
    for want in [
        "Package: orch\n",
        &format!("Version: {version}-1\n"),
        "Section: admin\n",
    ] {
        assert!(info.contains(want), "{want}:\n{info}");
    }
    let depends = info
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends: "))
        .unwrap_or_else(|| panic!("no Depends:\n{info}"));
    assert!(
        depends.contains("libc6") && depends.contains("systemd"),
        "{depends}"
    );
    // polkit lets orch start the job units the package's settings launch jobs as.
    assert!(
        info.lines().any(|l| l.trim() == "Recommends: polkitd"),
        "{info}"
    );
    let control = tmp.path().join("control");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
    let field = |name: &str| std::fs::read_to_string(control.join(name)).unwrap();
    assert_eq!(field("conffiles"), "/etc/orch/orch.env\n");
    for script in ["postinst", "prerm", "postrm"] {
        let text = field(script);
        let shipped =
            std::fs::read_to_string(Path::new(ROOT).join("packaging/deb").join(script)).unwrap();
        assert_eq!(text, shipped, "{script} shipped as written");
        let mode = std::fs::metadata(control.join(script))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755, "{script}");
    }

    // Contents: every file where Debian looks for it, with its mode, owned by root (0/0).
    let listing = stdout(Command::new("dpkg-deb").arg("-c").arg(&deb));
    let files: Vec<(String, String, String)> = listing
        .lines()
        .filter(|l| !l.starts_with('d'))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[0].to_string(),
                f[1].to_string(),
                f[5].trim_start_matches('.').to_string(),
            )
        })
        .collect();
    let mode_of = |path: &str| {
        files
            .iter()
            .find(|(_, _, p)| p == path)
            .map(|(m, o, _)| (m.as_str(), o.as_str()))
            .unwrap_or_else(|| panic!("{path} not in the package:\n{listing}"))
    };
    let mut want: Vec<(String, &str)> = vec![
        ("/usr/bin/orch".into(), "-rwxr-xr-x"),
        ("/etc/orch/orch.env".into(), "-rw-------"),
        ("/usr/lib/sysusers.d/orch.conf".into(), "-rw-r--r--"),
        ("/usr/lib/tmpfiles.d/orch.conf".into(), "-rw-r--r--"),
        (
            "/usr/share/polkit-1/rules.d/orch.rules".into(),
            "-rw-r--r--",
        ),
        ("/usr/share/lintian/overrides/orch".into(), "-rw-r--r--"),
        (
            "/usr/share/bash-completion/completions/orch".into(),
            "-rw-r--r--",
        ),
        (
            "/usr/share/zsh/vendor-completions/_orch".into(),
            "-rw-r--r--",
        ),
        (
            "/usr/share/fish/vendor_completions.d/orch.fish".into(),
            "-rw-r--r--",
        ),
    ];
    for doc in [
        "README.md",
        "changelog.gz",
        "changelog.Debian.gz",
        "copyright",
        "orch.example.yaml",
        "orch-alerts.yml",
        "examples/postgres-network.conf",
    ] {
        want.push((format!("/usr/share/doc/orch/{doc}"), "-rw-r--r--"));
    }
    for doc in names(&Path::new(ROOT).join("docs")) {
        if doc.ends_with(".md") {
            want.push((format!("/usr/share/doc/orch/{doc}"), "-rw-r--r--"));
        }
    }
    for doc in names(&Path::new(ROOT).join("docs/agents")) {
        want.push((format!("/usr/share/doc/orch/agents/{doc}"), "-rw-r--r--"));
    }
    for unit in repo_units() {
        want.push((format!("/usr/lib/systemd/system/{unit}"), "-rw-r--r--"));
    }
    let pages = subcommand_pages();
    for page in &pages {
        want.push((format!("/usr/share/man/man1/{page}.gz"), "-rw-r--r--"));
    }
    for (path, mode) in &want {
        assert_eq!(mode_of(path), (*mode, "0/0"), "{path}");
    }
    let wanted: BTreeSet<&str> = want.iter().map(|(p, _)| p.as_str()).collect();
    let extra: Vec<&str> = files
        .iter()
        .map(|(_, _, p)| p.as_str())
        .filter(|p| !wanted.contains(p))
        .collect();
    assert!(extra.is_empty(), "unexpected files: {extra:?}");
    assert!(pages.len() >= 20 && want.len() > 60, "{}", want.len());

    // lintian: no error and no warning beyond packaging/deb/lintian-overrides.
    match which("lintian") {
        Ok(lintian) => {
            let out = Command::new(lintian)
                .args(["--fail-on", "error,warning"])
                .arg(&deb)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && !text.lines().any(|l| l.starts_with(['E', 'W'])),
                "lintian:\n{text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Err(e) => {
            assert!(!ci, ".ci/run installs lintian: {e}");
            eprintln!("lintian not installed: its check skipped");
        }
    }

    // Installed by dpkg into a throwaway root.
    let root = tmp.path().join("root");
    for d in ["var/lib/dpkg/updates", "var/lib/dpkg/info"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    run(dpkg(&root).arg("-i").arg(&deb));
    let installed = stdout(Command::new(root.join("usr/bin/orch")).arg("--version"));
    let ours = stdout(Command::new(env!("CARGO_BIN_EXE_orch")).arg("--version"));
    assert!(installed.starts_with(&format!("orch {version} (rev ")));
    assert_eq!(installed, ours);
    // The users, from sysusers.d: orch in the agents' group.
    let orch = entry(&root, "passwd", "orch").expect("user orch");
    let agent = entry(&root, "passwd", "orch-agent").expect("user orch-agent");
    assert_eq!(orch[5], "/var/lib/orch");
    assert!(orch[6].ends_with("nologin") && agent[6].ends_with("nologin"));
    let group = entry(&root, "group", "orch-agent").expect("group orch-agent");
    assert_eq!(group[3], "orch");
    // The state directory, from tmpfiles.d: orch's own, private.
    let state = std::fs::metadata(root.join("var/lib/orch")).unwrap();
    assert_eq!(state.uid().to_string(), orch[2]);
    assert_eq!(state.mode() & 0o777, 0o700);
    // The agents' artefacts and workspaces, from tmpfiles.d: outside /var/lib/orch,
    // orch's, group orch-agent, setgid, nothing for others.
    for dir in ["var/lib/orch-artefacts", "var/lib/orch-workspaces"] {
        let meta = std::fs::metadata(root.join(dir)).unwrap();
        assert_eq!(
            (
                meta.uid().to_string(),
                meta.gid().to_string(),
                meta.mode() & 0o7777
            ),
            (orch[2].clone(), group[2].clone(), 0o2770),
            "{dir}"
        );
    }
    // The settings: .env.example with the package's overrides (scripts/build-deb), the
    // least-privileged setup; root's only.
    let env_file = root.join("etc/orch/orch.env");
    let meta = std::fs::metadata(&env_file).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o600));
    let settings = std::fs::read_to_string(&env_file).unwrap();
    let example = std::fs::read_to_string(Path::new(ROOT).join(".env.example")).unwrap();
    let overrides = [
        ("ORCH_CONFIG", "", "/etc/orch/orch.yaml"),
        ("ORCH_JOB_LAUNCHER", "direct", "systemd"),
        ("ORCH_AGENT_USER", "", "orch-agent"),
        ("ORCH_AGENT_SOCKET", "", "/run/orch/agent.sock"),
        ("ORCH_ARTEFACTS_DIR", "artefacts", "/var/lib/orch-artefacts"),
        ("ORCH_WORKSPACES_DIR", "", "/var/lib/orch-workspaces"),
    ];
    let values = |text: &str| -> std::collections::BTreeMap<String, String> {
        text.lines()
            .filter_map(|l| l.split_once('='))
            .filter(|(k, _)| !k.starts_with('#'))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let (installed, mut expected) = (values(&settings), values(&example));
    for (key, from, to) in overrides {
        assert_eq!(
            expected.insert(key.into(), to.into()).as_deref(),
            Some(from),
            "{key}"
        );
    }
    assert_eq!(installed, expected);
    // Only those lines differ: the comments and the order are .env.example's.
    let differ = settings
        .lines()
        .zip(example.lines())
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(
        (differ, settings.lines().count()),
        (overrides.len(), example.lines().count())
    );
    // The socket the settings name is the one orch-agent.socket listens on.
    let socket_unit =
        std::fs::read_to_string(Path::new(ROOT).join("systemd/orch-agent.socket")).unwrap();
    assert!(socket_unit.contains("\nListenStream=/run/orch/agent.sock\n"));
    // The units as in the repository; the timers and the agent socket enabled, nothing
    // else.
    let unit_dir = root.join("usr/lib/systemd/system");
    for unit in repo_units() {
        assert_eq!(
            std::fs::read(unit_dir.join(&unit)).unwrap(),
            std::fs::read(Path::new(ROOT).join("systemd").join(&unit)).unwrap(),
            "{unit}"
        );
    }
    let timers: BTreeSet<String> = repo_units()
        .into_iter()
        .filter(|u| u.ends_with(".timer"))
        .collect();
    assert_eq!(timers.len(), 5, "{timers:?}");
    let etc = root.join("etc/systemd/system");
    assert_eq!(names(&etc.join("timers.target.wants")), timers);
    for t in &timers {
        let link = std::fs::read_link(etc.join("timers.target.wants").join(t)).unwrap();
        assert_eq!(link, Path::new("/usr/lib/systemd/system").join(t));
    }
    // …and the agent socket, which the settings point agents at.
    let sockets = etc.join("sockets.target.wants");
    assert_eq!(names(&sockets), ["orch-agent.socket".to_string()].into());
    assert_eq!(
        std::fs::read_link(sockets.join("orch-agent.socket")).unwrap(),
        Path::new("/usr/lib/systemd/system/orch-agent.socket")
    );
    assert_eq!(
        names(&etc),
        ["sockets.target.wants", "timers.target.wants"]
            .map(String::from)
            .into()
    );

    // systemd-analyze verify reads the installed units against the installed binary.
    // Their default dependencies (sysinit.target, timers.target…) are this machine's
    // targets, copied into the root; templates are read through an instance.
    for e in std::fs::read_dir("/usr/lib/systemd/system").unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_owned();
        if p.extension().is_some_and(|x| x == "target") && !unit_dir.join(&name).exists() {
            std::fs::copy(&p, unit_dir.join(&name)).unwrap();
        }
    }
    let mut targets = Vec::new();
    for unit in repo_units() {
        if let Some(stem) = unit.strip_suffix("@.service") {
            let instance = etc.join(format!("{stem}@1.service"));
            std::fs::copy(unit_dir.join(&unit), &instance).unwrap();
            targets.push(instance);
        } else {
            targets.push(unit_dir.join(&unit));
        }
    }
    let verify = |root: &Path| {
        Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(format!("--root={}", root.display()))
            .args(&targets)
            .env("SYSTEMD_LOG_LEVEL", "warning")
            .output()
            .unwrap()
    };
    let out = verify(&root);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {out:?}"
    );
    // …and would say so if the binary the units name were missing.
    std::fs::rename(root.join("usr/bin/orch"), tmp.path().join("orch")).unwrap();
    let out = verify(&root);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/usr/bin/orch is not executable"),
        "{out:?}"
    );
    std::fs::rename(tmp.path().join("orch"), root.join("usr/bin/orch")).unwrap();
    for t in &targets {
        if t.starts_with(&etc) {
            std::fs::remove_file(t).unwrap();
        }
    }

    // Installed again over itself with the settings edited: the edit stays, no user is
    // added twice (entry() asserts one line each), the timers stay enabled.
    std::fs::write(&env_file, format!("{settings}ORCH_PLANE_API_KEY=k\n")).unwrap();
    run(dpkg(&root).arg("-i").arg(&deb));
    assert!(std::fs::read_to_string(&env_file)
        .unwrap()
        .ends_with("ORCH_PLANE_API_KEY=k\n"));
    assert_eq!(entry(&root, "passwd", "orch"), Some(orch.clone()));
    assert_eq!(entry(&root, "passwd", "orch-agent"), Some(agent));
    assert_eq!(names(&etc.join("timers.target.wants")), timers);
    assert_eq!(names(&sockets), ["orch-agent.socket".to_string()].into());

    // Removed: the binary and units go, the edited settings stay (a conffile).
    std::fs::write(root.join("var/lib/orch/orch.db"), "data").unwrap();
    run(dpkg(&root).args(["-r", "orch"]));
    assert!(!root.join("usr/bin/orch").exists());
    assert!(!unit_dir.join("orch-reap.service").exists());
    assert!(env_file.exists());
    // Purged: the settings and the timers' enablement go; the database, the state
    // directory and the users stay (docs/operations.md, "Uninstall").
    run(dpkg(&root).args(["--purge", "orch"]));
    assert!(!root.join("etc/orch").exists());
    let left: Vec<String> = walk(&etc);
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(
        std::fs::read_to_string(root.join("var/lib/orch/orch.db")).unwrap(),
        "data"
    );
    assert_eq!(entry(&root, "passwd", "orch"), Some(orch));
}

/// Every file and symlink under `dir`.
fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries {
        let p = e.unwrap().path();
        if p.is_dir() && !p.is_symlink() {
            out.extend(walk(&p));
        } else {
            out.push(p.display().to_string());
        }
    }
    out
}

/// packaging/deb/changelog (Debian's, kept by hand) names the version Cargo.toml builds.
#[test]
fn the_debian_changelog_names_the_crate_version() {
    let text = std::fs::read_to_string(Path::new(ROOT).join("packaging/deb/changelog")).unwrap();
    let first = text.lines().next().unwrap();
    assert_eq!(
        first,
        format!(
            "orch ({}-1) unstable; urgency=medium",
            env!("CARGO_PKG_VERSION")
        )
    );
}
