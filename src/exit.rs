//! The process exit codes of every subcommand: the only place their numbers appear.
//!
//! Exit codes are an interface (systemd units, CI scripts and the deployer agent read
//! them), so tests pin each number and a change to one is a **Changed** entry.

use std::process::ExitCode;

/// How a pass ended, as the caller of `orch` sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// 0: the pass did its work, or had none; a check passed.
    Success,
    /// 1: the pass ran fine and the answer is "no" (a verdict or check said no).
    No,
    /// 2: usage, configuration or internal error; nothing was half-done.
    Error,
    /// 10: `merge-guard` only: the pull request is already merged; do not merge again.
    AlreadyMerged,
    /// 75 (EX_TEMPFAIL): skipped because another copy of the same pass holds its lock.
    Busy,
}

impl ExitStatus {
    /// Returns the number the process exits with.
    pub fn code(self) -> u8 {
        match self {
            ExitStatus::Success => 0,
            ExitStatus::No => 1,
            ExitStatus::Error => 2,
            ExitStatus::AlreadyMerged => 10,
            ExitStatus::Busy => 75,
        }
    }
}

impl From<ExitStatus> for ExitCode {
    fn from(status: ExitStatus) -> Self {
        ExitCode::from(status.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_numbers_are_pinned() {
        assert_eq!(ExitStatus::Success.code(), 0);
        assert_eq!(ExitStatus::No.code(), 1);
        assert_eq!(ExitStatus::Error.code(), 2);
        assert_eq!(ExitStatus::AlreadyMerged.code(), 10);
        assert_eq!(ExitStatus::Busy.code(), 75);
    }
}
