//! Feedback on a rollback: what a task's move back to `development` hands the developer's
//! next job (issue 16). Each such move writes one numbered file into the task's
//! artefacts, `feedback-<n>.md`, with the kind of rollback and its evidence copied from
//! the report that caused it (the report itself is moved aside when the task next enters
//! that stage, the feedback stays). No I/O here: `ops::feedback` reads and writes.

use crate::core::artefact::{
    DEPLOY_REPORT_FILE, POST_DEPLOY_LOG_FILE, REVIEW_FILE, STAGING_REPORT_FILE,
};
use crate::core::stage::Stage;

/// The prefix of every feedback file's name.
const PREFIX: &str = "feedback-";
/// The suffix of every feedback file's name.
const SUFFIX: &str = ".md";

/// Why a task went back to development: named after the stage it left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `review → development`: the reviewer asked for changes.
    ReviewChanges,
    /// `deploy-staging → development`: staging failed.
    StagingFailed,
    /// `deploy → development`: the production deploy failed.
    DeployFailed,
    /// `done → development`: production degraded in the post-deploy window.
    PostDeployDegraded,
}

impl Kind {
    /// Returns the kind of a move from `from` to `to`, when it is a move back to
    /// development (`analysis → development` is the first round, not a rollback).
    pub fn of_move(from: Stage, to: Stage) -> Option<Kind> {
        if to != Stage::Development {
            return None;
        }
        match from {
            Stage::Review => Some(Kind::ReviewChanges),
            Stage::DeployStaging => Some(Kind::StagingFailed),
            Stage::Deploy => Some(Kind::DeployFailed),
            Stage::Done => Some(Kind::PostDeployDegraded),
            Stage::Analysis | Stage::Development | Stage::Cancelled => None,
        }
    }

    /// Returns the stable name written as `kind:`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ReviewChanges => "review-changes",
            Kind::StagingFailed => "staging-failed",
            Kind::DeployFailed => "deploy-failed",
            Kind::PostDeployDegraded => "post-deploy-degraded",
        }
    }

    /// Returns the artefact that holds the evidence: the review's requested changes,
    /// the staging report's failures, the deploy report's reason, the post-deploy
    /// window's samples.
    pub fn evidence_file(self) -> &'static str {
        match self {
            Kind::ReviewChanges => REVIEW_FILE,
            Kind::StagingFailed => STAGING_REPORT_FILE,
            Kind::DeployFailed => DEPLOY_REPORT_FILE,
            Kind::PostDeployDegraded => POST_DEPLOY_LOG_FILE,
        }
    }

    /// Returns what happened, for people.
    fn headline(self) -> &'static str {
        match self {
            Kind::ReviewChanges => "the review requested changes",
            Kind::StagingFailed => "staging failed",
            Kind::DeployFailed => "the production deploy failed",
            Kind::PostDeployDegraded => "production degraded after the deploy",
        }
    }
}

/// Returns the name of feedback file number `n` (`feedback-3.md`).
pub fn file_name(n: u32) -> String {
    format!("{PREFIX}{n}{SUFFIX}")
}

/// Returns the number of a feedback file's name, when it is one.
pub fn number_of(name: &str) -> Option<u32> {
    let digits = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// One rollback's feedback, as [`render`] writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feedback<'a> {
    /// Its number: the task's how-many-th move back to development.
    pub number: u32,
    /// The kind.
    pub kind: Kind,
    /// The task's key.
    pub key: &'a str,
    /// The task's round when it was sent back.
    pub round: u32,
    /// The move's reason (the gate's rollback check, post-deploy's evidence, an
    /// operator's words).
    pub reason: &'a str,
    /// Who moved it.
    pub actor: &'a str,
    /// When (RFC 3339).
    pub at: &'a str,
    /// The evidence file's text, `None` when it was not there.
    pub evidence: Option<&'a str>,
}

/// Renders a feedback file: YAML frontmatter (`feedback`, `kind`, `round`,
/// `evidence_file`), what happened, the move's reason, then the evidence verbatim.
pub fn render(f: &Feedback<'_>) -> String {
    let file = f.kind.evidence_file();
    let evidence = match f.evidence {
        Some(text) => {
            format!("Copied from `{file}` as it was when the task was sent back:\n\n{text}")
        }
        None => format!("`{file}` was not there when the task was sent back."),
    };
    let evidence = if evidence.ends_with('\n') {
        evidence
    } else {
        format!("{evidence}\n")
    };
    format!(
        "---\nfeedback: {n}\nkind: {kind}\nround: {round}\nevidence_file: {file}\n---\n\
         # Feedback {n} for {key}: {headline}\n\n\
         Sent back to development by {actor} at {at}: {reason}\n\n\
         ## Evidence\n\n{evidence}",
        n = f.number,
        kind = f.kind.as_str(),
        round = f.round,
        key = f.key,
        headline = f.kind.headline(),
        actor = f.actor,
        at = f.at,
        reason = f.reason,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_moves_back_to_development_have_a_kind() {
        assert_eq!(
            Kind::of_move(Stage::Review, Stage::Development),
            Some(Kind::ReviewChanges)
        );
        assert_eq!(
            Kind::of_move(Stage::Done, Stage::Development),
            Some(Kind::PostDeployDegraded)
        );
        assert_eq!(Kind::of_move(Stage::Analysis, Stage::Development), None);
        assert_eq!(Kind::of_move(Stage::Review, Stage::DeployStaging), None);
        assert_eq!(Kind::of_move(Stage::Review, Stage::Cancelled), None);
    }

    #[test]
    fn names_round_trip_and_others_are_not_feedback() {
        assert_eq!(file_name(12), "feedback-12.md");
        assert_eq!(number_of("feedback-12.md"), Some(12));
        for other in [
            "feedback-.md",
            "feedback-1.md.tmp",
            "feedback-x.md",
            "05-review.md",
        ] {
            assert_eq!(number_of(other), None, "{other}");
        }
    }

    #[test]
    fn the_file_names_the_kind_and_carries_the_evidence_verbatim() {
        let f = Feedback {
            number: 2,
            kind: Kind::StagingFailed,
            key: "SHOP-1",
            round: 1,
            reason: "check_staging_failed",
            actor: "run-job",
            at: "2026-11-25T03:00:00Z",
            evidence: Some("---\nstaging_status: FAILED\n---\nC1 failed: 500"),
        };
        let text = render(&f);
        assert!(text.starts_with(
            "---\nfeedback: 2\nkind: staging-failed\nround: 1\nevidence_file: 10-staging-report.md\n---\n# Feedback 2 for SHOP-1: staging failed\n"
        ), "{text}");
        assert!(text.contains("by run-job at 2026-11-25T03:00:00Z: check_staging_failed"));
        assert!(
            text.ends_with("staging_status: FAILED\n---\nC1 failed: 500\n"),
            "{text}"
        );
        let none = render(&Feedback {
            evidence: None,
            ..f
        });
        assert!(
            none.contains("`10-staging-report.md` was not there"),
            "{none}"
        );
    }
}
