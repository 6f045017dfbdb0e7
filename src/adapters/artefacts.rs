//! Reads and writes agent artefacts under `$ORCH_ARTEFACTS_DIR/<task key>/`.
//!
//! The task key becomes one path component: anything that could escape the artefacts
//! root (`/`, `..`, NUL) is refused rather than sanitised, because keys come from Plane.
//!
//! When a task enters a stage, [`set_aside_on_entry`] moves the stage's artefact (the
//! one its gate reads, `core::artefact::stage_artefact`) left by an earlier visit into
//! `<task dir>/history/`, before the move is committed, so the gate reads only what the
//! stage's agent wrote during this visit.

use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};

pub use crate::adapters::artefact_store::ArtefactStore;
pub use crate::adapters::fs::write_atomic;
use crate::core::artefact::{history_name, HISTORY_DIR};
use crate::core::stage::Stage;
use crate::core::task::Task;

/// How many names [`set_aside`] tries in `history/` before it gives up: one per move of
/// the same file in the same round within the same second, far more than happen.
const HISTORY_NAME_TRIES: u32 = 1000;

/// Returns the artefact folder of a task key.
///
/// # Errors
/// When the key is not a single safe path component.
pub fn task_dir(root: &Path, key: &str) -> Result<PathBuf> {
    let ok = !key.is_empty()
        && key.len() <= 100
        && key != "."
        && key != ".."
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        bail!("task key {key:?} cannot name an artefact folder (letters, digits, - _ . only)");
    }
    Ok(root.join(key))
}

/// The open(2) flags and errno an artefact read needs, from rustix's Linux values.
mod libc_flags {
    pub const O_NOFOLLOW: i32 = rustix::fs::OFlags::NOFOLLOW.bits() as i32;
    pub const O_NONBLOCK: i32 = rustix::fs::OFlags::NONBLOCK.bits() as i32;
    pub const ELOOP: i32 = rustix::io::Errno::LOOP.raw_os_error();
}

/// The largest artefact file read (16 MiB): an agent's review or a staging report is
/// a few KiB; a file past this is refused with an error, never read whole.
pub const MAX_ARTEFACT_BYTES: u64 = 16 * 1024 * 1024;

/// Reads one artefact file, at most [`MAX_ARTEFACT_BYTES`]; `Ok(None)` when it does not
/// exist. Bytes that are not UTF-8 are replaced (the parsers then refuse what they
/// cannot read).
///
/// # Errors
/// When it exists but cannot be read, or is larger than [`MAX_ARTEFACT_BYTES`].
pub fn read(root: &Path, key: &str, file: &str) -> Result<Option<String>> {
    Ok(read_bytes(root, key, file)?.map(|b| String::from_utf8_lossy(&b).into_owned()))
}

/// [`read`] without the text conversion: the file's bytes.
///
/// # Errors
/// As [`read`].
pub fn read_bytes(root: &Path, key: &str, file: &str) -> Result<Option<Vec<u8>>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = task_dir(root, key)?.join(file);
    // Agents write this folder: a symlink would have orch copy any file it can read into
    // a gate input or a feedback file, and a FIFO would block the pass in `open` past
    // every deadline. Neither is followed; only a regular file is read.
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc_flags::O_NOFOLLOW | libc_flags::O_NONBLOCK)
        .open(&path);
    let file = match opened {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc_flags::ELOOP) => {
            anyhow::bail!("{} is a symbolic link; refused unread", path.display())
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let meta = file
        .metadata()
        .with_context(|| format!("reading {}", path.display()))?;
    if !meta.is_file() {
        anyhow::bail!("{} is not a regular file; refused unread", path.display());
    }
    let mut bytes = Vec::new();
    file.take(MAX_ARTEFACT_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() as u64 > MAX_ARTEFACT_BYTES {
        anyhow::bail!(
            "{} is larger than {MAX_ARTEFACT_BYTES} bytes (the artefact size cap); refused unread",
            path.display()
        );
    }
    Ok(Some(bytes))
}

/// Moves aside, before `task` enters `to`, the artefact `to`'s agent writes and its
/// gate reads, in the local folder only: [`ArtefactStore::set_aside_on_entry`] with
/// [`ArtefactStore::files`] (the store a move uses also mirrors it in the database
/// under PostgreSQL).
///
/// # Errors
/// As [`ArtefactStore::set_aside_on_entry`].
pub fn set_aside_on_entry(
    root: &Path,
    task: &Task,
    to: Stage,
    now: i64,
) -> Result<Option<PathBuf>> {
    ArtefactStore::files(root).set_aside_on_entry(task, to, now)
}

/// Moves `dir/file` into `dir/history/` under [`history_name`] (round `round`, time
/// `now`); returns the new path, or `None` when there is no such file.
///
/// Never overwrites: each candidate name is reserved with an exclusive create and the
/// file is renamed over its own reservation (atomic); a taken name tries the next
/// attempt number. A file another pass moved aside meanwhile is `None`. The folders are
/// then synced (best effort), so the rename is on disk before the caller commits.
///
/// # Errors
/// When the file cannot be inspected, `history/` cannot be made, or the rename fails.
pub fn set_aside(dir: &Path, file: &str, round: u32, now: i64) -> Result<Option<PathBuf>> {
    let from = dir.join(file);
    match std::fs::symlink_metadata(&from) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("inspecting {}", from.display())),
    }
    let history = dir.join(HISTORY_DIR);
    std::fs::create_dir_all(&history).with_context(|| format!("creating {}", history.display()))?;
    for attempt in 1..=HISTORY_NAME_TRIES {
        let to = history.join(history_name(file, round, now, attempt));
        match OpenOptions::new().write(true).create_new(true).open(&to) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("reserving {}", to.display())),
        }
        return match std::fs::rename(&from, &to) {
            Ok(()) => {
                // Best effort: some file systems refuse to sync a folder; the rename
                // itself is done either way, and this only narrows a power-loss window.
                for d in [&history, dir] {
                    let _ = std::fs::File::open(d).and_then(|f| f.sync_all());
                }
                Ok(Some(to))
            }
            Err(e) => {
                let _ = std::fs::remove_file(&to);
                if e.kind() == ErrorKind::NotFound {
                    Ok(None)
                } else {
                    Err(e).with_context(|| format!("moving {} to {}", from.display(), to.display()))
                }
            }
        };
    }
    bail!(
        "no free name for {file} in {} after {HISTORY_NAME_TRIES} tries",
        history.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An agent writes the folder: a FIFO named like a gate input must not block the
    /// pass (the test would hang on the old plain open), and a symlink must not make
    /// orch read a file of the agent's choosing.
    #[test]
    fn a_fifo_or_a_symlink_in_the_folder_is_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        let task = dir.path().join("ORCH-1");
        std::fs::create_dir_all(&task).unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "orch's own file").unwrap();
        std::os::unix::fs::symlink(&secret, task.join("05-review.md")).unwrap();
        let e = read(dir.path(), "ORCH-1", "05-review.md").unwrap_err();
        assert!(format!("{e:#}").contains("symbolic link"), "{e:#}");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            task.join("10-staging-report.md"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let e = read(dir.path(), "ORCH-1", "10-staging-report.md").unwrap_err();
        assert!(format!("{e:#}").contains("not a regular file"), "{e:#}");
    }

    #[test]
    fn an_artefact_past_the_cap_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("ORCH-1")).unwrap();
        let path = dir.path().join("ORCH-1").join("05-review.md");
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(MAX_ARTEFACT_BYTES + 1).unwrap();
        let err = read(dir.path(), "ORCH-1", "05-review.md")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("larger than") && err.contains("05-review.md"),
            "{err}"
        );
        f.set_len(MAX_ARTEFACT_BYTES).unwrap();
        let at_cap = read(dir.path(), "ORCH-1", "05-review.md").unwrap().unwrap();
        assert_eq!(at_cap.len() as u64, MAX_ARTEFACT_BYTES);
    }

    #[test]
    fn hostile_keys_are_refused() {
        let root = Path::new("/tmp/a");
        for bad in ["", ".", "..", "../x", "a/b", "a\0b", "ключ"] {
            assert!(task_dir(root, bad).is_err(), "{bad:?}");
        }
        assert_eq!(task_dir(root, "ORCH-65").unwrap(), root.join("ORCH-65"));
    }

    #[test]
    fn read_missing_is_none_and_write_is_atomic() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path(), "ORCH-1", "05-review.md").unwrap(), None);
        let path = dir.path().join("ORCH-1/05-review.md");
        write_atomic(&path, b"---\nreview_verdict: APPROVE\n---\n").unwrap();
        assert!(read(dir.path(), "ORCH-1", "05-review.md")
            .unwrap()
            .unwrap()
            .contains("APPROVE"));
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("ORCH-1"))
            .unwrap()
            .collect();
        assert_eq!(leftovers.len(), 1);
    }

    // 2026-11-25T03:00:00Z.
    const NOW: i64 = 1_795_575_600;

    fn task(stage: Stage, round: u32) -> Task {
        Task {
            work_item_id: "w".into(),
            branch: "b".into(),
            round,
            ..Task::sample(1, stage)
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    #[test]
    fn entering_a_stage_sets_aside_only_its_own_artefact() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("SHOP-1");
        let files = [
            "01-analysis.md",
            "05-review.md",
            "10-staging-report.md",
            "12-deploy-report.md",
            "16-post-deploy-log.md",
        ];
        for f in files {
            write_atomic(&dir.join(f), f.as_bytes()).unwrap();
        }
        // (from, to, round, what is set aside)
        let cases: &[(Stage, Stage, u32, Option<&str>)] = &[
            (Stage::Analysis, Stage::Development, 1, None),
            (Stage::Deploy, Stage::Development, 1, None),
            (Stage::Deploy, Stage::Done, 1, None),
            (Stage::Done, Stage::Development, 1, None),
            (Stage::Review, Stage::Cancelled, 1, None),
            // Not an edge of the table: the database refuses it, nothing is touched.
            (Stage::Development, Stage::Deploy, 1, None),
            (
                Stage::Development,
                Stage::Review,
                2,
                Some("05-review.round-2.20261125T030000Z.md"),
            ),
            (
                Stage::Review,
                Stage::DeployStaging,
                2,
                Some("10-staging-report.round-2.20261125T030000Z.md"),
            ),
            (
                Stage::DeployStaging,
                Stage::Deploy,
                2,
                Some("12-deploy-report.round-2.20261125T030000Z.md"),
            ),
        ];
        for (from, to, round, want) in cases {
            let before = names(&dir.join(HISTORY_DIR));
            let got = set_aside_on_entry(root.path(), &task(*from, *round), *to, NOW).unwrap();
            let got = got.map(|p| p.file_name().unwrap().to_string_lossy().into_owned());
            assert_eq!(got.as_deref(), *want, "{from} -> {to}");
            let after = names(&dir.join(HISTORY_DIR));
            assert_eq!(after.len(), before.len() + usize::from(want.is_some()));
        }
        // The analysis and the post-deploy log stay; the three reports moved with
        // their contents.
        assert_eq!(
            names(&dir),
            vec!["01-analysis.md", "16-post-deploy-log.md", "history"]
        );
        let history = dir.join(HISTORY_DIR);
        assert_eq!(
            std::fs::read_to_string(history.join("05-review.round-2.20261125T030000Z.md")).unwrap(),
            "05-review.md"
        );
        // Entering again with nothing left there sets nothing aside.
        let t = task(Stage::Development, 2);
        assert_eq!(
            set_aside_on_entry(root.path(), &t, Stage::Review, NOW).unwrap(),
            None
        );
        // A key that cannot name a folder has nothing to set aside.
        let bad = Task {
            key: "../x".into(),
            ..t
        };
        assert_eq!(
            set_aside_on_entry(root.path(), &bad, Stage::Review, NOW).unwrap(),
            None
        );
    }

    #[test]
    fn setting_aside_never_overwrites_an_earlier_file() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("SHOP-1");
        let history = dir.join(HISTORY_DIR);
        // Three visits within the same second of the same round.
        for visit in ["first", "second", "third"] {
            write_atomic(&dir.join("05-review.md"), visit.as_bytes()).unwrap();
            set_aside(&dir, "05-review.md", 1, NOW).unwrap().unwrap();
        }
        let read = |n: &str| std::fs::read_to_string(history.join(n)).unwrap();
        assert_eq!(read("05-review.round-1.20261125T030000Z.md"), "first");
        assert_eq!(read("05-review.round-1.20261125T030000Z.2.md"), "second");
        assert_eq!(read("05-review.round-1.20261125T030000Z.3.md"), "third");
        assert!(!dir.join("05-review.md").exists());
    }

    #[test]
    fn a_file_that_cannot_be_set_aside_is_an_error_and_stays() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("SHOP-1");
        write_atomic(&dir.join("05-review.md"), b"old").unwrap();
        // A file where history/ should be: the folder cannot be made.
        std::fs::write(dir.join(HISTORY_DIR), b"in the way").unwrap();
        let err = set_aside_on_entry(
            root.path(),
            &task(Stage::Development, 1),
            Stage::Review,
            NOW,
        )
        .unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.starts_with("task SHOP-1 cannot enter review: moving aside the 05-review.md"),
            "{msg}"
        );
        assert_eq!(std::fs::read(dir.join("05-review.md")).unwrap(), b"old");
    }
}
