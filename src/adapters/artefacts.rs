//! Reads and writes agent artefacts under `$ORCH_ARTEFACTS_DIR/<task key>/`.
//!
//! The task key becomes one path component: anything that could escape the artefacts
//! root (`/`, `..`, NUL) is refused rather than sanitised, because keys come from Plane.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};

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

/// Reads one artefact file; `Ok(None)` when it does not exist.
///
/// # Errors
/// When it exists but cannot be read.
pub fn read(root: &Path, key: &str, file: &str) -> Result<Option<String>> {
    let path = task_dir(root, key)?.join(file);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes `contents` to `path` atomically: a temporary file in the same folder, synced,
/// then renamed over the target.
///
/// # Errors
/// When the folder cannot be created or the file written.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
