//! Stamps the binary with the git revision it was built from (`orch --version`, the
//! `orch_build_info` metric).
//!
//! From a git checkout: the commit's first 12 hex digits. A packager building from a
//! source tarball (no `.git`) may set `ORCH_REVISION`; without it the revision is
//! `unknown`. Either way the build never fails over it.

use std::path::{Path, PathBuf};
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!text.is_empty()).then_some(text)
}

/// Asks cargo to run this script again when HEAD moves (a commit, a checkout), also in
/// a worktree, whose HEAD and refs live in two different directories.
fn watch_head() {
    let dir = |args: &[&str]| git(args).map(PathBuf::from);
    let (Some(git_dir), Some(common)) = (
        dir(&["rev-parse", "--git-dir"]),
        dir(&["rev-parse", "--git-common-dir"]),
    ) else {
        return;
    };
    let mut watched: Vec<PathBuf> = vec![git_dir.join("HEAD"), common.join("packed-refs")];
    if let Some(head_ref) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(git_dir.join(&head_ref));
        watched.push(common.join(&head_ref));
    }
    // A path that does not exist would make cargo run this script on every build.
    for p in watched.iter().filter(|p| Path::new(p).exists()) {
        println!("cargo:rerun-if-changed={}", p.display());
    }
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=ORCH_REVISION");
    let from_env = std::env::var("ORCH_REVISION")
        .ok()
        .filter(|r| !r.trim().is_empty());
    let revision = match from_env {
        Some(r) => r.trim().to_string(),
        None => {
            watch_head();
            git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into())
        }
    };
    println!("cargo:rustc-env=ORCH_REVISION={revision}");
}
