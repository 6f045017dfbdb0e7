//! Feedback on a rollback: what a task's move back to `development` hands the developer's
//! next job (issue 16). Each such move writes one numbered file into the task's
//! artefacts, `feedback-<n>.md`, with the kind of rollback and its evidence copied from
//! the report that caused it (the report itself is moved aside when the task next enters
//! that stage, the feedback stays). Red CI does not move a task (it is at development,
//! and its gate waits): the developer's job is re-run, and that re-run writes the next
//! numbered file too, with the failing CI contexts as its evidence ([`Kind::CiFailed`],
//! [`render_ci_failure`]). No I/O here: `ops::feedback` reads and writes.

use std::fmt::Write as _;

use crate::core::artefact::{
    DEPLOY_REPORT_FILE, POST_DEPLOY_LOG_FILE, REVIEW_FILE, STAGING_REPORT_FILE,
};
use crate::core::facts::{CiContext, CiFailure};
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
    /// Not a move: the task is at development, CI failed on its PR head, and reconcile
    /// re-runs the developer's job.
    CiFailed,
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
            Kind::CiFailed => "ci-failed",
        }
    }

    /// Returns the artefact that holds the evidence: the review's requested changes,
    /// the staging report's failures, the deploy report's reason, the post-deploy
    /// window's samples. `None` for red CI, whose evidence comes from Gitea.
    pub fn evidence_file(self) -> Option<&'static str> {
        match self {
            Kind::ReviewChanges => Some(REVIEW_FILE),
            Kind::StagingFailed => Some(STAGING_REPORT_FILE),
            Kind::DeployFailed => Some(DEPLOY_REPORT_FILE),
            Kind::PostDeployDegraded => Some(POST_DEPLOY_LOG_FILE),
            Kind::CiFailed => None,
        }
    }

    /// Returns what happened, for people.
    fn headline(self) -> &'static str {
        match self {
            Kind::ReviewChanges => "the review requested changes",
            Kind::StagingFailed => "staging failed",
            Kind::DeployFailed => "the production deploy failed",
            Kind::PostDeployDegraded => "production degraded after the deploy",
            Kind::CiFailed => "CI failed on the PR head",
        }
    }

    /// Returns what orch did, for the body's first line.
    fn action(self) -> &'static str {
        match self {
            Kind::CiFailed => "The developer's job was re-run",
            _ => "Sent back to development",
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
    /// operator's words), or the gate's blockers for red CI.
    pub reason: &'a str,
    /// Who moved it.
    pub actor: &'a str,
    /// When (RFC 3339).
    pub at: &'a str,
    /// The evidence file's text, `None` when it was not there; for red CI, the failing
    /// contexts ([`render_ci_failure`]).
    pub evidence: Option<&'a str>,
    /// For red CI: the commit whose CI failed.
    pub ci_head: Option<&'a str>,
}

/// Renders a feedback file: YAML frontmatter (`feedback`, `kind`, `round`, and
/// `evidence_file` for a rollback or `ci_head` for red CI), what happened, the reason,
/// then the evidence: a report copied verbatim, or the failing CI contexts.
pub fn render(f: &Feedback<'_>) -> String {
    let (source, evidence) = match f.kind.evidence_file() {
        Some(file) => (
            format!("evidence_file: {file}"),
            match f.evidence {
                Some(text) => {
                    format!("Copied from `{file}` as it was when the task was sent back:\n\n{text}")
                }
                None => format!("`{file}` was not there when the task was sent back."),
            },
        ),
        None => (
            format!("ci_head: {}", f.ci_head.unwrap_or("")),
            f.evidence
                .unwrap_or("Gitea listed no failing context.")
                .to_string(),
        ),
    };
    let evidence = if evidence.ends_with('\n') {
        evidence
    } else {
        format!("{evidence}\n")
    };
    format!(
        "---\nfeedback: {n}\nkind: {kind}\nround: {round}\n{source}\n---\n\
         # Feedback {n} for {key}: {headline}\n\n\
         {action} by {actor} at {at}: {reason}\n\n\
         ## Evidence\n\n{evidence}",
        n = f.number,
        kind = f.kind.as_str(),
        round = f.round,
        key = f.key,
        headline = f.kind.headline(),
        action = f.kind.action(),
        actor = f.actor,
        at = f.at,
        reason = f.reason,
    )
}

/// At most this many failing contexts are listed (the rest are counted).
pub const MAX_CI_CONTEXTS: usize = 50;
/// At most this many characters of a context's name, description or URL are kept.
const MAX_CI_FIELD: usize = 300;

/// Renders the evidence of red CI: each failing context with its state, description and
/// target URL, as Gitea reported them for `failure.head_sha`, by context name. Gitea's text is outside
/// input: control characters (newlines included) become spaces, Markdown's inline code
/// marker is dropped, and each field is cut at 300 characters, so one line stays one
/// context; at most [`MAX_CI_CONTEXTS`] are listed.
pub fn render_ci_failure(failure: &CiFailure) -> String {
    let mut out = format!(
        "Gitea's failing CI contexts of commit {} (the PR head) when the job was re-run:\n\n",
        clean(&failure.head_sha)
    );
    if failure.contexts.is_empty() {
        out.push_str("(Gitea gave the verdict but listed no failing context.)\n");
        return out;
    }
    let mut sorted: Vec<&CiContext> = failure.contexts.iter().collect();
    sorted.sort_by(|a, b| a.context.cmp(&b.context));
    for c in sorted.into_iter().take(MAX_CI_CONTEXTS) {
        out.push_str(&context_line(c));
    }
    if failure.contexts.len() > MAX_CI_CONTEXTS {
        let _ = writeln!(
            out,
            "- ... and {} more failing contexts",
            failure.contexts.len() - MAX_CI_CONTEXTS
        );
    }
    out
}

fn context_line(c: &CiContext) -> String {
    let name = match clean(&c.context) {
        n if n.is_empty() => "(unnamed context)".to_string(),
        n => n,
    };
    let mut line = format!("- `{name}`: {}", clean(&c.state));
    let description = clean(&c.description);
    if !description.is_empty() {
        let _ = write!(line, ": {description}");
    }
    let url = clean(&c.target_url);
    line.push_str(&if url.is_empty() {
        "\n  (no target URL)\n".to_string()
    } else {
        format!("\n  {url}\n")
    });
    line
}

/// Gitea's text made one safe line: control characters to spaces, no backticks, trimmed,
/// at most [`MAX_CI_FIELD`] characters (`...` marks a cut).
fn clean(text: &str) -> String {
    let one: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .filter(|c| *c != '`')
        .collect();
    let one = one.trim();
    if one.chars().count() > MAX_CI_FIELD {
        let cut: String = one.chars().take(MAX_CI_FIELD).collect();
        format!("{cut}...")
    } else {
        one.to_string()
    }
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
            ci_head: None,
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

    fn ctx(context: &str, state: &str, description: &str, url: &str) -> CiContext {
        CiContext {
            context: context.into(),
            state: state.into(),
            description: description.into(),
            target_url: url.into(),
        }
    }

    #[test]
    fn red_ci_lists_each_failing_context_with_its_url() {
        let failure = CiFailure {
            head_sha: "ab".repeat(20),
            contexts: vec![
                ctx(
                    "ci/build",
                    "failure",
                    "3 tests failed",
                    "https://ci.example.com/r/7",
                ),
                ctx("lint", "error", "", ""),
            ],
        };
        let evidence = render_ci_failure(&failure);
        assert_eq!(
            evidence,
            format!(
                "Gitea's failing CI contexts of commit {} (the PR head) when the job was re-run:\n\n\
                 - `ci/build`: failure: 3 tests failed\n  https://ci.example.com/r/7\n\
                 - `lint`: error\n  (no target URL)\n",
                "ab".repeat(20)
            )
        );
        let text = render(&Feedback {
            number: 3,
            kind: Kind::CiFailed,
            key: "SHOP-1",
            round: 2,
            reason: "check_ci_green: CI failed on abababa",
            actor: "reconcile",
            at: "2026-11-25T03:00:00Z",
            evidence: Some(&evidence),
            ci_head: Some(&failure.head_sha),
        });
        assert!(
            text.starts_with(&format!(
                "---\nfeedback: 3\nkind: ci-failed\nround: 2\nci_head: {}\n---\n# Feedback 3 for SHOP-1: CI failed on the PR head\n\nThe developer's job was re-run by reconcile at 2026-11-25T03:00:00Z: check_ci_green",
                "ab".repeat(20)
            )),
            "{text}"
        );
        assert!(text.ends_with(&evidence), "{text}");
    }

    #[test]
    fn gitea_text_cannot_break_the_list() {
        let long = "x".repeat(MAX_CI_FIELD + 50);
        let many: Vec<CiContext> = (0..MAX_CI_CONTEXTS + 2)
            .map(|i| ctx(&format!("c{i}"), "failure", "", "u"))
            .collect();
        let failure = CiFailure {
            head_sha: "h".into(),
            contexts: [
                vec![
                    ctx("a\n- `forged`", "failure", "line one\r\nline two", &long),
                    ctx("", "error", "\u{1b}[31mred", "u"),
                ],
                many,
            ]
            .concat(),
        };
        let evidence = render_ci_failure(&failure);
        assert!(
            evidence.contains("- `a - forged`: failure: line one  line two\n"),
            "{evidence}"
        );
        assert!(evidence.contains(&format!("  {}...\n", "x".repeat(MAX_CI_FIELD))));
        assert!(evidence.contains("- `(unnamed context)`: error: [31mred\n"));
        assert!(
            evidence.ends_with("- ... and 4 more failing contexts\n"),
            "{evidence}"
        );
        // Each listed context is two lines, whatever Gitea's text held.
        let lines = evidence.lines().filter(|l| l.starts_with("- `")).count();
        assert_eq!(lines, MAX_CI_CONTEXTS);
        let empty = render_ci_failure(&CiFailure {
            head_sha: "h".into(),
            contexts: Vec::new(),
        });
        assert!(empty.ends_with("listed no failing context.)\n"), "{empty}");
    }
}
