//! Agent artefacts: Markdown files with YAML frontmatter, and the keys gates read.
//!
//! The files and keys are the contract with the agents' prompts (SPEC §3). Parsing
//! takes the file's text (or `None` when it is missing) and returns typed values; an
//! unknown value is malformed, never a pass. Every error names the file. No I/O here:
//! the artefacts adapter reads the files.
//!
//! It also says which file belongs to which stage ([`stage_artefact`]): the one a task's
//! entry into that stage moves aside, under a [`history_name`] in [`HISTORY_DIR`], so
//! the stage's gate reads only what its agent wrote during this visit.

use std::fmt;

use crate::core::stage::Stage;

/// `01-analysis.md`.
pub const ANALYSIS_FILE: &str = "01-analysis.md";
/// `05-review.md`.
pub const REVIEW_FILE: &str = "05-review.md";
/// `10-staging-report.md`.
pub const STAGING_REPORT_FILE: &str = "10-staging-report.md";
/// `12-deploy-report.md`.
pub const DEPLOY_REPORT_FILE: &str = "12-deploy-report.md";
/// `16-post-deploy-log.md` (written by orch).
pub const POST_DEPLOY_LOG_FILE: &str = "16-post-deploy-log.md";

/// The folder inside a task's artefact dir that holds the artefacts of earlier visits.
pub const HISTORY_DIR: &str = "history";

/// Returns the artefact `stage`'s agent writes and its gate reads, when the stage has
/// one: the file a task's entry into `stage` moves aside, so that a file left by an
/// earlier visit (an earlier round, or before a rollback) is never read as this visit's.
///
/// `analysis` keeps `01-analysis.md` (the developer builds from it, and no move enters
/// analysis again); `development` writes nothing; `done` and `cancelled` have no agent
/// (`16-post-deploy-log.md` is orch's own record). Moving aside on entry, not on leaving,
/// keeps each report in place while the developer works from it after a rollback.
pub fn stage_artefact(stage: Stage) -> Option<&'static str> {
    match stage {
        Stage::Review => Some(REVIEW_FILE),
        Stage::DeployStaging => Some(STAGING_REPORT_FILE),
        Stage::Deploy => Some(DEPLOY_REPORT_FILE),
        Stage::Analysis | Stage::Development | Stage::Done | Stage::Cancelled => None,
    }
}

/// Returns the name `file` takes in [`HISTORY_DIR`] when it is moved aside at `at_unix`
/// (unix seconds, the pass's clock) while the task is in round `round`.
///
/// `05-review.md` moved aside in round 2 at 2026-11-25T03:00:00Z becomes
/// `05-review.round-2.20261125T030000Z.md`. The round is the task's when the file was
/// moved aside: the file was written in that round or an earlier one. `attempt` 1 is
/// the plain name; a later attempt (the name was taken: two moves within one second)
/// adds `.<attempt>` before the extension, so no earlier file is ever overwritten.
pub fn history_name(file: &str, round: u32, at_unix: i64, attempt: u32) -> String {
    let (stem, ext) = match file.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => (stem, format!(".{ext}")),
        _ => (file, String::new()),
    };
    let when = jiff::Timestamp::from_second(at_unix)
        .map(|t| t.strftime("%Y%m%dT%H%M%SZ").to_string())
        .unwrap_or_else(|_| at_unix.to_string());
    let again = if attempt > 1 {
        format!(".{attempt}")
    } else {
        String::new()
    };
    format!("{stem}.round-{round}.{when}{again}{ext}")
}

/// Why an artefact could not be read as its contract says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArtefactError {
    /// The file does not exist.
    #[error("{file}: missing")]
    Missing {
        /// The file name.
        file: String,
    },
    /// The file does not start with a `---` frontmatter block.
    #[error("{file}: no YAML frontmatter (the file must start with a --- line and close it with another)")]
    NoFrontmatter {
        /// The file name.
        file: String,
    },
    /// The frontmatter is not valid YAML, or not a mapping.
    #[error("{file}: frontmatter is not a valid YAML mapping: {message}")]
    BadYaml {
        /// The file name.
        file: String,
        /// The parser's message.
        message: String,
    },
    /// The key the gate reads is absent.
    #[error("{file}: frontmatter has no {key}")]
    MissingKey {
        /// The file name.
        file: String,
        /// The key.
        key: String,
    },
    /// The key holds something other than the expected type.
    #[error("{file}: {key} must be {expected}")]
    WrongType {
        /// The file name.
        file: String,
        /// The key.
        key: String,
        /// The expected type.
        expected: String,
    },
    /// The key holds a value outside its contract.
    #[error("{file}: {key} has unknown value {value:?}; expected one of {expected}")]
    UnknownValue {
        /// The file name.
        file: String,
        /// The key.
        key: String,
        /// The value found.
        value: String,
        /// The values allowed.
        expected: String,
    },
}

/// Splits a Markdown file into its YAML frontmatter mapping.
///
/// # Errors
/// [`ArtefactError`] naming `file` when the text is missing, has no frontmatter, or the
/// frontmatter is not a YAML mapping.
pub fn frontmatter(file: &str, text: Option<&str>) -> Result<serde_yaml::Mapping, ArtefactError> {
    let text = text.ok_or_else(|| ArtefactError::Missing { file: file.into() })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text.split_inclusive('\n');
    let first = lines.next().unwrap_or("");
    if first.trim_end() != "---" {
        return Err(ArtefactError::NoFrontmatter { file: file.into() });
    }
    let mut yaml = String::new();
    let mut closed = false;
    for line in lines {
        let t = line.trim_end();
        if t == "---" || t == "..." {
            closed = true;
            break;
        }
        yaml.push_str(line);
    }
    if !closed {
        return Err(ArtefactError::NoFrontmatter { file: file.into() });
    }
    let value: serde_yaml::Value =
        serde_yaml::from_str(&yaml).map_err(|e| ArtefactError::BadYaml {
            file: file.into(),
            message: e.to_string(),
        })?;
    match value {
        serde_yaml::Value::Mapping(m) => Ok(m),
        serde_yaml::Value::Null => Ok(serde_yaml::Mapping::new()),
        _ => Err(ArtefactError::BadYaml {
            file: file.into(),
            message: "not a mapping".into(),
        }),
    }
}

/// A closed set of status values one frontmatter key may hold.
pub trait StatusValue: Sized + Copy + fmt::Debug + 'static {
    /// The file the key lives in.
    const FILE: &'static str;
    /// The key.
    const KEY: &'static str;
    /// Every value with its spelling in the file.
    const VALUES: &'static [(&'static str, Self)];

    /// Returns the spelling of this value.
    fn as_str(self) -> &'static str
    where
        Self: PartialEq,
    {
        Self::VALUES
            .iter()
            .find(|(_, v)| *v == self)
            .map(|(s, _)| *s)
            .unwrap_or("?")
    }
}

/// Reads a required string key from a frontmatter mapping.
fn string_key(file: &str, map: &serde_yaml::Mapping, key: &str) -> Result<String, ArtefactError> {
    match map.get(key) {
        None | Some(serde_yaml::Value::Null) => Err(ArtefactError::MissingKey {
            file: file.into(),
            key: key.into(),
        }),
        Some(serde_yaml::Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(ArtefactError::WrongType {
            file: file.into(),
            key: key.into(),
            expected: "a string".into(),
        }),
    }
}

/// Reads the status key `T::KEY` from the frontmatter of `T::FILE`.
///
/// # Errors
/// [`ArtefactError`] naming the file for every way the contract is broken.
pub fn read_status<T: StatusValue>(map: &serde_yaml::Mapping) -> Result<T, ArtefactError> {
    let raw = string_key(T::FILE, map, T::KEY)?;
    T::VALUES
        .iter()
        .find(|(s, _)| *s == raw.trim())
        .map(|(_, v)| *v)
        .ok_or_else(|| ArtefactError::UnknownValue {
            file: T::FILE.into(),
            key: T::KEY.into(),
            value: raw,
            expected: T::VALUES
                .iter()
                .map(|(s, _)| *s)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// Parses a whole artefact's text and returns its status value.
///
/// # Errors
/// As [`frontmatter`] and [`read_status`].
pub fn parse_status<T: StatusValue>(text: Option<&str>) -> Result<T, ArtefactError> {
    read_status(&frontmatter(T::FILE, text)?)
}

/// Declares the status enums, one row each: `Name(FILE, "key"): Variant = "TEXT" "its
/// doc", ...;`.
macro_rules! status_enums {
    ($($(#[$doc:meta])* $name:ident($file:expr, $key:literal): $($variant:ident = $text:literal $vdoc:literal),+;)*) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
        pub enum $name { $(#[doc = $vdoc] #[serde(rename = $text)] $variant),+ }

        impl StatusValue for $name {
            const FILE: &'static str = $file;
            const KEY: &'static str = $key;
            const VALUES: &'static [(&'static str, Self)] = &[$(($text, $name::$variant)),+];
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(StatusValue::as_str(*self))
            }
        }
    )*};
}

status_enums! {
    /// `analysis_status` in `01-analysis.md`.
    AnalysisStatus(ANALYSIS_FILE, "analysis_status"): Approved = "APPROVED" "The analysis is complete.", NeedsInput = "NEEDS_INPUT" "The analyst needs a human's answer.";
    /// `review_verdict` in `05-review.md`.
    ReviewVerdict(REVIEW_FILE, "review_verdict"): Approve = "APPROVE" "Go on to staging.", RequestChanges = "REQUEST_CHANGES" "Back to development.";
    /// `staging_status` in `10-staging-report.md`.
    StagingStatus(STAGING_REPORT_FILE, "staging_status"): Success = "SUCCESS" "Staging passed.", Failed = "FAILED" "Staging failed.";
    /// `deploy_status` in `12-deploy-report.md`.
    DeployStatus(DEPLOY_REPORT_FILE, "deploy_status"): Success = "SUCCESS" "Production deploy succeeded.", Failed = "FAILED" "Production deploy failed.";
    /// `post_deploy_verdict` in `16-post-deploy-log.md` (written by orch).
    PostDeployVerdict(POST_DEPLOY_LOG_FILE, "post_deploy_verdict"): Healthy = "HEALTHY" "Production stayed healthy.", Degraded = "DEGRADED" "Production degraded.", Inconclusive = "INCONCLUSIVE" "Too few samples to tell.";
}

/// The staging report as the `deploy-staging → deploy` gate reads it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StagingReport {
    /// The verdict.
    pub status: StagingStatus,
    /// The revision staging ran, when reported.
    pub checked_revision: Option<String>,
    /// Allowlisted infrastructure checks that failed and were waived.
    pub waived: Vec<String>,
}

/// Parses `10-staging-report.md`.
///
/// # Errors
/// [`ArtefactError`] naming the file.
pub fn parse_staging_report(text: Option<&str>) -> Result<StagingReport, ArtefactError> {
    let map = frontmatter(STAGING_REPORT_FILE, text)?;
    let status = read_status::<StagingStatus>(&map)?;
    let checked_revision = match map.get("checked_revision") {
        None | Some(serde_yaml::Value::Null) => None,
        Some(serde_yaml::Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Some(_) => {
            return Err(ArtefactError::WrongType {
                file: STAGING_REPORT_FILE.into(),
                key: "checked_revision".into(),
                expected: "a non-empty string (a commit SHA)".into(),
            })
        }
    };
    let waived = match map.get("waived") {
        None | Some(serde_yaml::Value::Null) => Vec::new(),
        Some(serde_yaml::Value::Sequence(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ArtefactError::WrongType {
                file: STAGING_REPORT_FILE.into(),
                key: "waived".into(),
                expected: "a list of check ids".into(),
            })?,
        Some(_) => {
            return Err(ArtefactError::WrongType {
                file: STAGING_REPORT_FILE.into(),
                key: "waived".into(),
                expected: "a list of check ids".into(),
            })
        }
    };
    Ok(StagingReport {
        status,
        checked_revision,
        waived,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review(text: Option<&str>) -> Result<ReviewVerdict, ArtefactError> {
        parse_status::<ReviewVerdict>(text)
    }

    #[test]
    fn reads_each_status() {
        assert_eq!(
            review(Some("---\nreview_verdict: APPROVE\n---\n# Review\n")),
            Ok(ReviewVerdict::Approve)
        );
        assert_eq!(
            review(Some(
                "---\nreview_verdict: REQUEST_CHANGES\nnotes: x\n---\n"
            )),
            Ok(ReviewVerdict::RequestChanges)
        );
        assert_eq!(
            parse_status::<AnalysisStatus>(Some("---\nanalysis_status: NEEDS_INPUT\n---\n")),
            Ok(AnalysisStatus::NeedsInput)
        );
        assert_eq!(
            parse_status::<DeployStatus>(Some("---\r\ndeploy_status: FAILED\r\n---\r\n")),
            Ok(DeployStatus::Failed)
        );
        assert_eq!(
            parse_status::<PostDeployVerdict>(Some(
                "\u{feff}---\npost_deploy_verdict: INCONCLUSIVE\n---\n"
            )),
            Ok(PostDeployVerdict::Inconclusive)
        );
    }

    #[test]
    fn every_bad_form_names_the_file() {
        let cases: &[(Option<&str>, &str)] = &[
            (None, "missing"),
            (Some(""), "no YAML frontmatter"),
            (
                Some("# Review\nreview_verdict: APPROVE\n"),
                "no YAML frontmatter",
            ),
            (
                Some("---\nreview_verdict: APPROVE\n"),
                "no YAML frontmatter",
            ),
            (
                Some("---\nreview_verdict: [APPROVE\n---\n"),
                "not a valid YAML mapping",
            ),
            (Some("---\n- a\n- b\n---\n"), "not a valid YAML mapping"),
            (
                Some("---\nverdict: APPROVE\n---\n"),
                "has no review_verdict",
            ),
            (Some("---\nreview_verdict:\n---\n"), "has no review_verdict"),
            (Some("---\nreview_verdict: 3\n---\n"), "must be a string"),
            (Some("---\nreview_verdict: true\n---\n"), "must be a string"),
            (
                Some("---\nreview_verdict: LGTM\n---\n"),
                "unknown value \"LGTM\"",
            ),
            (
                Some("---\nreview_verdict: approve\n---\n"),
                "unknown value \"approve\"",
            ),
        ];
        for (text, want) in cases {
            let err = review(*text).unwrap_err().to_string();
            assert!(err.starts_with("05-review.md: "), "{err}");
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn each_gated_stage_sets_aside_the_file_its_gate_reads() {
        use crate::core::gate::{needs, Need};
        for stage in Stage::ALL {
            let read: Vec<&str> = needs(stage)
                .into_iter()
                .filter_map(|n| match n {
                    Need::Review => Some(REVIEW_FILE),
                    Need::Staging => Some(STAGING_REPORT_FILE),
                    Need::Deploy => Some(DEPLOY_REPORT_FILE),
                    Need::Job | Need::Pr | Need::Ci => None,
                })
                .collect();
            assert_eq!(
                stage_artefact(stage).into_iter().collect::<Vec<_>>(),
                read,
                "{stage}"
            );
        }
        // The analysis and orch's own post-deploy log are never set aside.
        for stage in Stage::ALL {
            assert_ne!(stage_artefact(stage), Some(ANALYSIS_FILE), "{stage}");
            assert_ne!(stage_artefact(stage), Some(POST_DEPLOY_LOG_FILE), "{stage}");
        }
    }

    #[test]
    fn history_names_say_the_round_and_when_and_never_repeat() {
        // 2026-11-25T03:00:00Z.
        let at = 1_795_575_600;
        let cases: &[(&str, u32, i64, u32, &str)] = &[
            (
                REVIEW_FILE,
                1,
                at,
                1,
                "05-review.round-1.20261125T030000Z.md",
            ),
            (
                REVIEW_FILE,
                1,
                at,
                2,
                "05-review.round-1.20261125T030000Z.2.md",
            ),
            (
                STAGING_REPORT_FILE,
                12,
                at + 61,
                1,
                "10-staging-report.round-12.20261125T030101Z.md",
            ),
            (
                DEPLOY_REPORT_FILE,
                2,
                0,
                3,
                "12-deploy-report.round-2.19700101T000000Z.3.md",
            ),
            ("notes", 1, at, 1, "notes.round-1.20261125T030000Z"),
            // Outside the clock's range: the seconds themselves.
            (
                "x.md",
                1,
                i64::MAX,
                1,
                &format!("x.round-1.{}.md", i64::MAX),
            ),
        ];
        for (file, round, at, attempt, want) in cases {
            assert_eq!(history_name(file, *round, *at, *attempt), *want);
        }
        let names: std::collections::BTreeSet<String> = (1..=50)
            .map(|n| history_name(REVIEW_FILE, 1, at, n))
            .collect();
        assert_eq!(names.len(), 50);
    }

    #[test]
    fn staging_report_with_revision_and_waivers() {
        let r = parse_staging_report(Some(
            "---\nstaging_status: SUCCESS\nchecked_revision: abc123\nwaived: [C9a, C9b]\n---\n",
        ))
        .unwrap();
        assert_eq!(r.status, StagingStatus::Success);
        assert_eq!(r.checked_revision.as_deref(), Some("abc123"));
        assert_eq!(r.waived, vec!["C9a", "C9b"]);
        let bad = parse_staging_report(Some("---\nstaging_status: SUCCESS\nwaived: C9a\n---\n"));
        assert!(bad
            .unwrap_err()
            .to_string()
            .contains("waived must be a list"));
        let bad = parse_staging_report(Some(
            "---\nstaging_status: SUCCESS\nchecked_revision: 12\n---\n",
        ));
        assert!(bad.unwrap_err().to_string().contains("checked_revision"));
    }
}
