//! The facts a pass reads from the forge, in the shapes the gates and the round rules
//! share: [`Fact`] (a value, or why it could not be read), the task's pull request
//! ([`PrFacts`]) and its head's CI state ([`CiState`]). A module of its own so that
//! `core::round` reads them without importing `core::gate`, which imports `core::round`.
//! Plain data: no I/O.

/// A fact a pass gathered, or why it could not (the check then says `Unknown`).
pub type Fact<T> = Result<T, String>;

/// The Gitea combined CI state of a commit.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum CiState {
    /// `success`.
    Success,
    /// `pending`.
    Pending,
    /// `failure` or `error`.
    Failure,
    /// `warning` (older Gitea can report it as the combined state).
    Warning,
    /// `""`: no CI reported at all.
    None,
    /// Anything else Gitea might send.
    Other(String),
}

impl CiState {
    /// Whether this verdict is kept for its commit (`ci_verdicts`) and never read again:
    /// success only. A failure is not kept: a CI re-run of the same commit (a flaky job
    /// re-run in Gitea Actions or another runner) can turn it green, and a kept failure
    /// would hold the task until a push. Pending, no CI at all, or a state orch does not
    /// know may still change too; all of these are read every time.
    pub fn is_kept(&self) -> bool {
        matches!(self, CiState::Success)
    }

    /// The stored name of a kept verdict (`None` for one that is not kept).
    pub fn kept_name(&self) -> Option<&'static str> {
        self.is_kept().then_some("success")
    }

    /// The kept verdict a stored name stands for (see [`CiState::kept_name`]).
    pub fn from_kept_name(name: &str) -> Option<CiState> {
        (name == "success").then_some(CiState::Success)
    }

    /// The one CI verdict over the latest state of each context, the same on every Gitea
    /// and Forgejo version (their combined `state` differs, and covers one page only):
    /// any `error`/`failure` fails; otherwise any `pending` (or a state this table does not
    /// know) waits as [`CiState::Pending`]/[`CiState::Other`]; otherwise every context is
    /// `success`, `warning` or `skipped`, which passes — a `warning` never blocks, as on
    /// Gitea 1.25+. No context at all is [`CiState::None`].
    pub fn from_contexts<'a>(states: impl IntoIterator<Item = &'a str>) -> CiState {
        let (mut any, mut pending, mut other) = (false, false, None);
        for s in states {
            any = true;
            match s {
                "error" | "failure" => return CiState::Failure,
                "pending" => pending = true,
                "success" | "warning" | "skipped" => {}
                unknown => {
                    other.get_or_insert_with(|| unknown.to_string());
                }
            }
        }
        match (other, pending, any) {
            (Some(o), _, _) => CiState::Other(o),
            (None, true, _) => CiState::Pending,
            (None, false, true) => CiState::Success,
            (None, false, false) => CiState::None,
        }
    }
}

/// One CI context of a commit as Gitea reports it (its latest status): what a developer
/// sent back for red CI is shown (`core::feedback`). Every field is Gitea's text as
/// received (empty when absent); renderers clean it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CiContext {
    /// The context's name (`ci/build`).
    pub context: String,
    /// Its state (`failure`, `error`, ...).
    pub state: String,
    /// The CI's one-line description.
    pub description: String,
    /// Where the CI run is shown.
    pub target_url: String,
}

impl CiContext {
    /// Whether this context fails the verdict ([`CiState::from_contexts`]).
    pub fn is_failing(&self) -> bool {
        matches!(self.state.as_str(), "error" | "failure")
    }
}

/// A failed CI verdict with the contexts that failed it: the evidence the developer's
/// re-run is handed (`core::feedback::Kind::CiFailed`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CiFailure {
    /// The commit (the PR head) whose CI failed.
    pub head_sha: String,
    /// Its failing contexts (`error` or `failure`), in Gitea's order (renderers sort).
    pub contexts: Vec<CiContext>,
}

/// What the pipeline knows about the task's pull request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PrFacts {
    /// The PR number.
    pub number: u64,
    /// `state == "open"`.
    pub open: bool,
    /// Gitea's authoritative merged flag.
    pub merged: bool,
    /// Gitea's `mergeable`; `None` when absent.
    pub mergeable: Option<bool>,
    /// The head commit SHA.
    pub head_sha: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ci_verdict_is_the_same_on_every_version() {
        let v = |states: &[&str]| CiState::from_contexts(states.iter().copied());
        assert_eq!(v(&[]), CiState::None);
        assert_eq!(v(&["success", "warning", "skipped"]), CiState::Success);
        assert_eq!(v(&["success", "pending", "warning"]), CiState::Pending);
        assert_eq!(v(&["pending", "error", "success"]), CiState::Failure);
        assert_eq!(v(&["failure", "queued"]), CiState::Failure);
        assert_eq!(
            v(&["pending", "queued", "success"]),
            CiState::Other("queued".into())
        );
    }
}
