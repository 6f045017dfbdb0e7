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

use crate::adapters::db::shared_files::KIND_WINDOW;
use crate::adapters::db::{Db, Engine};
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

/// Where post-deploy windows live, chosen by engine: the folders of the state dir under
/// SQLite (one host), the table `shared_files` (kind `window`, key `<repo>/<work item>`
/// as the two folder names [`window_dir`] gives, the same JSON `window.json` holds)
/// under PostgreSQL, so a window armed on one host is ticked on any. A window is named
/// by its folder either way; under PostgreSQL the folder holds only what the host that
/// ran a rollback wrote there (its output, read by nobody else: the alert names it).
#[derive(Clone, Copy)]
pub struct WindowStore<'a> {
    state_dir: &'a Path,
    db: Option<&'a Db>,
    now: i64,
}

impl<'a> WindowStore<'a> {
    /// The store of `db`'s engine; `now` stamps what it writes.
    pub fn new(state_dir: &'a Path, db: &'a Db, now: i64) -> Self {
        let db = (db.engine() == Engine::Postgres).then_some(db);
        WindowStore { state_dir, db, now }
    }

    /// The folders alone.
    pub fn files(state_dir: &'a Path) -> Self {
        WindowStore {
            state_dir,
            db: None,
            now: 0,
        }
    }

    /// The folder (the name) of one window: [`window_dir`].
    ///
    /// # Errors
    /// As [`window_dir`].
    pub fn dir(&self, repo: &str, work_item: &str) -> Result<PathBuf> {
        window_dir(self.state_dir, repo, work_item)
    }

    /// Loads the window named by `dir`; `Ok(None)` when there is none.
    ///
    /// # Errors
    /// When it cannot be read or parsed.
    pub fn load(&self, dir: &Path) -> Result<Option<WindowState>> {
        let Some(db) = self.db else {
            return load(dir);
        };
        let key = self.key_of(dir)?;
        match db.shared_file(KIND_WINDOW, &key)? {
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .with_context(|| format!("parsing stored window {key}")),
            None => Ok(None),
        }
    }

    /// Saves the window named by `dir` (a file written atomically, or one row).
    ///
    /// # Errors
    /// When it cannot be written.
    pub fn save(&self, dir: &Path, state: &WindowState) -> Result<()> {
        let Some(db) = self.db else {
            return save(dir, state);
        };
        let key = self.key_of(dir)?;
        let bytes = serde_json::to_vec_pretty(state).context("serialising the window")?;
        db.put_shared_file(KIND_WINDOW, &key, &bytes, self.now)
            .with_context(|| format!("storing window {key}"))
    }

    /// Lists every window, sorted by name (see [`list`]).
    ///
    /// # Errors
    /// When the state dir cannot be listed or the database read.
    pub fn list(&self) -> Result<Vec<Found>> {
        let Some(db) = self.db else {
            return list(self.state_dir);
        };
        let mut out = Vec::new();
        for (key, bytes) in db.shared_files_under(KIND_WINDOW, "")? {
            let Some(dir) = self.dir_of(&key) else {
                log::warn!("stored post-deploy window {key:?} refused: not <repo>/<work item>");
                continue;
            };
            let w = serde_json::from_slice(&bytes)
                .with_context(|| format!("parsing stored window {key}"));
            out.push((dir, w));
        }
        Ok(out)
    }

    /// The stored key of the window folder `dir`: its two names under the state dir.
    fn key_of(&self, dir: &Path) -> Result<String> {
        let names: Option<Vec<&str>> = dir
            .strip_prefix(self.state_dir)
            .ok()
            .map(|rest| rest.components().map(|c| c.as_os_str().to_str()).collect())
            .and_then(|v: Vec<Option<&str>>| v.into_iter().collect());
        match names.as_deref() {
            Some([repo, item]) => match repo.strip_prefix(REPO_DIR_PREFIX) {
                Some(repo) => Ok(format!("{repo}/{item}")),
                None => bail!("{} is not a post-deploy window folder", dir.display()),
            },
            _ => bail!("{} is not a post-deploy window folder", dir.display()),
        }
    }

    /// The folder a stored key names; `None` unless it is two safe names.
    fn dir_of(&self, key: &str) -> Option<PathBuf> {
        let (repo, item) = key.split_once('/')?;
        let safe = |n: &str| {
            !n.is_empty()
                && !n.starts_with('.')
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~'))
        };
        (safe(repo) && safe(item)).then(|| {
            self.state_dir
                .join(format!("{REPO_DIR_PREFIX}{repo}"))
                .join(item)
        })
    }
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
