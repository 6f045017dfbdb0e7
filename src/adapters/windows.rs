//! The post-deploy window store: one folder per watched work item under
//! `<state dir>/post-deploy-state-<repo>/<work item>/`, holding `window.json` (the
//! window, its samples, its log lines and the rollback's progress) and the rollback's
//! output. No database: a restart or a crash mid-tick loses nothing.
//!
//! Every write is atomic (temporary file, sync, rename). Repo and work-item names come
//! from outside (Plane, the pipeline file), so each becomes exactly one safe path
//! component: anything outside `[A-Za-z0-9._-]` is replaced, a leading dot too, long
//! names are cut, and an altered name gets a hash suffix so two names never share a
//! folder by accident. This module decides nothing: the window's states and transitions
//! are `core::post_deploy`'s ([`WindowState`]); it loads, saves, lists and names files.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use sha2::{Digest, Sha256};

use crate::adapters::fs::write_atomic;
use crate::core::post_deploy::WindowState;

/// The state file of one window.
pub const WINDOW_FILE: &str = "window.json";
/// The prefix of each repo's folder in the state dir.
pub const REPO_DIR_PREFIX: &str = "post-deploy-state-";
/// Longest component kept before the hash suffix.
const MAX_COMPONENT: usize = 64;

/// Returns `name` as one path component that cannot leave its parent folder.
pub fn sanitise(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with('.') {
        out.replace_range(0..1, "_");
    }
    let altered = out != name || out.len() > MAX_COMPONENT || out.is_empty();
    if altered {
        out.truncate(MAX_COMPONENT);
        let hash = hex::encode(Sha256::digest(name.as_bytes()));
        out = format!("{out}~{}", &hash[..12]);
    }
    out
}

/// Returns the folder of one window.
///
/// # Errors
/// Never for sanitised names; the check that the result stays inside `state_dir` is a
/// second line of defence.
pub fn window_dir(state_dir: &Path, repo: &str, work_item: &str) -> Result<PathBuf> {
    let repo_dir = format!("{REPO_DIR_PREFIX}{}", sanitise(repo));
    let item = sanitise(work_item);
    let dir = state_dir.join(&repo_dir).join(&item);
    let inside = dir
        .strip_prefix(state_dir)
        .map(|rest| {
            rest.components()
                .all(|c| matches!(c, std::path::Component::Normal(_)))
                && rest.components().count() == 2
        })
        .unwrap_or(false);
    if !inside {
        bail!("post-deploy state path for {repo:?} / {work_item:?} would leave the state dir");
    }
    Ok(dir)
}

/// Loads a window from its folder; `Ok(None)` when it has none.
///
/// # Errors
/// When the file exists but cannot be read or parsed.
pub fn load(dir: &Path) -> Result<Option<WindowState>> {
    let path = dir.join(WINDOW_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .with_context(|| format!("parsing {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Saves a window atomically.
///
/// # Errors
/// When the file cannot be written.
pub fn save(dir: &Path, state: &WindowState) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(state).context("serialising the window")?;
    write_atomic(&dir.join(WINDOW_FILE), &bytes)
}

/// Returns the file the rollback of the window armed at `armed_at` writes its output to,
/// beside the window.
pub fn rollback_output(dir: &Path, armed_at: i64) -> PathBuf {
    dir.join(format!("rollback-{armed_at}.out"))
}

/// One window found on disk, or why it could not be read.
pub type Found = (PathBuf, Result<WindowState>);

/// Lists every window folder under `state_dir` (sorted, so passes are reproducible).
///
/// # Errors
/// When the state dir exists but cannot be listed.
pub fn list(state_dir: &Path) -> Result<Vec<Found>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(state_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("listing {}", state_dir.display())),
    };
    let mut repo_dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(REPO_DIR_PREFIX))
                && e.file_type().is_ok_and(|t| t.is_dir())
        })
        .map(|e| e.path())
        .collect();
    repo_dirs.sort();
    for repo_dir in repo_dirs {
        let Ok(items) = std::fs::read_dir(&repo_dir) else {
            continue;
        };
        let mut dirs: Vec<PathBuf> = items
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect();
        dirs.sort();
        for dir in dirs {
            match load(&dir) {
                Ok(Some(w)) => out.push((dir, Ok(w))),
                Ok(None) => {}
                Err(e) => out.push((dir, Err(e))),
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::stage::Stage;
    use crate::core::task::Task;

    fn window(repo: &str, item: &str) -> WindowState {
        let task = Task {
            repo: repo.into(),
            work_item_id: item.into(),
            ..Task::sample(1, Stage::Done)
        };
        WindowState::arm(&task, 0, 900, "test")
    }

    #[test]
    fn ordinary_names_stay_readable() {
        assert_eq!(sanitise("0b8f5d2e-1111-4c3a"), "0b8f5d2e-1111-4c3a");
        assert!(sanitise("acme/shop").starts_with("acme_shop~"));
        assert_ne!(sanitise("acme/shop"), sanitise("acme_shop"));
    }

    #[test]
    fn hostile_names_cannot_escape_the_state_dir() {
        let root = tempfile::tempdir().unwrap();
        let state = root.path().join("state");
        let long = "x".repeat(5000);
        let hostile = [
            "..",
            ".",
            "",
            "../../etc",
            "/etc/passwd",
            "a/../../b",
            "a\0b",
            "\0",
            long.as_str(),
            "../",
            "..\\..\\x",
            "ключ/../..",
        ];
        for repo in hostile {
            for item in hostile {
                let dir = window_dir(&state, repo, item).unwrap();
                assert!(dir.starts_with(&state), "{repo:?} {item:?}: {dir:?}");
                let rest: Vec<_> = dir.strip_prefix(&state).unwrap().components().collect();
                assert_eq!(rest.len(), 2, "{repo:?} {item:?}");
                for name in [&sanitise(repo), &sanitise(item)] {
                    assert!(name.len() <= MAX_COMPONENT + 13, "{}", name.len());
                }
                save(&dir, &window(repo, item)).unwrap();
                assert_eq!(load(&dir).unwrap().unwrap().work_item, item);
            }
        }
        // Everything written is inside the state dir; nothing beside it.
        let beside: Vec<_> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(beside, vec![std::ffi::OsString::from("state")]);
        let found = list(&state).unwrap();
        assert_eq!(found.len(), hostile.len() * hostile.len(), "{found:?}");
    }

    #[test]
    fn a_corrupt_window_is_reported_not_fatal() {
        let root = tempfile::tempdir().unwrap();
        let dir = window_dir(root.path(), "acme/shop", "item-1").unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(WINDOW_FILE), "{not json").unwrap();
        let good = window_dir(root.path(), "acme/shop", "item-2").unwrap();
        save(&good, &window("acme/shop", "item-2")).unwrap();
        let found = list(root.path()).unwrap();
        assert_eq!(found.len(), 2);
        assert!(found[0].1.is_err());
        assert!(found[1].1.is_ok());
    }
}
