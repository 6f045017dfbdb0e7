//! What one `staging-check` run found, and its three renderings: the text lines CI
//! logs show, the JSON for scripts, and the Markdown report (`10-staging-report.md`)
//! whose YAML frontmatter the `deploy-staging → deploy` gate reads back through
//! `core::artefact::parse_staging_report`. A run that could not read its task's PR head
//! from Gitea has no verdict ([`NoVerdictRun`]): text and JSON only, never a report.
//! Pure: no I/O, the time is passed in.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::core::pin::PinKind;
use crate::core::staging_check::{
    one_line, verdict, Category, Policy, StagingCheckOutcome, StagingCheckResult, StagingVerdict,
    VerdictStatus,
};

/// One check's line.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CheckLine {
    /// The check id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its kind (`http`, `command`, ...).
    pub kind: String,
    /// REAL or SANDBOX_INFRA.
    pub category: Category,
    /// How it ended (`result` + `reason`).
    #[serde(flatten)]
    pub outcome: StagingCheckOutcome,
    /// How long it took.
    pub duration_ms: u64,
    /// Whether its failure was waived.
    pub waived: bool,
}

impl CheckLine {
    /// Returns `PASS`, `FAIL` or `SKIP` (a check that could not run is a `FAIL`).
    pub fn result_word(&self) -> &'static str {
        match self.outcome {
            StagingCheckOutcome::Pass(_) => "PASS",
            StagingCheckOutcome::Skip(_) => "SKIP",
            StagingCheckOutcome::Fail(_) | StagingCheckOutcome::Error(_) => "FAIL",
        }
    }

    fn reason_text(&self) -> String {
        let r = one_line(self.outcome.reason(), 300);
        match self.outcome {
            StagingCheckOutcome::Error(_) if !r.starts_with("could not run") => {
                format!("could not run: {r}")
            }
            _ => r,
        }
    }
}

/// Everything one run found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StagingRun {
    /// `SUCCESS` or `FAILED` with waived ids, counted failures and reasons.
    pub verdict: StagingVerdict,
    /// One entry per configured check, in file order.
    pub checks: Vec<CheckLine>,
    /// The revision the run validated: what an image-freshness check read from staging,
    /// or the task's PR head (see `pin`).
    pub checked_revision: Option<String>,
    /// Which kind of revision `checked_revision` is (`image-freshness` or `pr-head`).
    pub pin: Option<PinKind>,
    /// The task's PR whose head was read, when it was.
    pub pr_number: Option<u64>,
    /// The revision staging had to run, when given.
    pub expected_revision: Option<String>,
    /// When the run happened (RFC 3339).
    pub checked_at: String,
    /// Whether `--strict` was given.
    pub strict: bool,
    /// `ORCH_STAGING_INFRA_TOLERANCE_ENABLED`.
    pub tolerance: bool,
    /// The task the report belongs to (`--task`), by key.
    pub task: Option<String>,
}

impl StagingRun {
    /// Returns the exit code the verdict maps to (0 SUCCESS, 1 FAILED).
    pub fn exit_code(&self) -> u8 {
        match self.verdict.status {
            VerdictStatus::Success => 0,
            VerdictStatus::Failed => 1,
        }
    }

    /// Renders the text output: a line per check, `REASON:` lines when FAILED,
    /// `INFRA-WAIVED:` when some were waived, and `VERDICT:` last.
    pub fn render_text(&self) -> String {
        let mut out = check_lines(&self.checks);
        self.write_ending(&mut out, |r| format!("REASON: {}", one_line(r, 300)), "");
        out
    }

    /// Writes what follows the checks: a line per reason when FAILED (`reason` renders
    /// one), `INFRA-WAIVED:` when some were waived, `PIN:`, and `VERDICT:` last. `gap`
    /// follows each group but the last (the report's blank lines).
    fn write_ending(&self, out: &mut String, reason: impl Fn(&str) -> String, gap: &str) {
        if self.verdict.status == VerdictStatus::Failed {
            for r in &self.verdict.reasons {
                let _ = writeln!(out, "{}", reason(r));
            }
            out.push_str(gap);
        }
        if !self.verdict.waived.is_empty() {
            let _ = writeln!(out, "INFRA-WAIVED: {}{gap}", self.verdict.waived.join(","));
        }
        if let Some(line) = self.pin_line() {
            let _ = writeln!(out, "{line}{gap}");
        }
        let _ = writeln!(out, "VERDICT: {}", self.verdict.status.as_str());
    }

    /// Returns `PIN: <kind> <revision> [(PR #N)]` when the run checked a revision.
    fn pin_line(&self) -> Option<String> {
        let (rev, kind) = (self.checked_revision.as_deref()?, self.pin?);
        let pr = self
            .pr_number
            .map(|n| format!(" (PR #{n})"))
            .unwrap_or_default();
        Some(format!("PIN: {kind} {rev}{pr}"))
    }

    /// Renders the JSON output (the same facts as the text, plus `exit_code`).
    pub fn render_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("the run serialises");
        v["exit_code"] = serde_json::Value::from(self.exit_code());
        v
    }

    /// Renders `10-staging-report.md`: YAML frontmatter (`staging_status`, `waived`,
    /// `checked_revision`, `checked_at`, ...) and a Markdown table of the checks.
    pub fn render_report(&self) -> String {
        #[derive(serde::Serialize)]
        struct Front<'a> {
            staging_status: &'static str,
            #[serde(skip_serializing_if = "Option::is_none")]
            checked_revision: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            pin: Option<PinKind>,
            #[serde(skip_serializing_if = "Option::is_none")]
            pr_number: Option<u64>,
            waived: &'a [String],
            checked_at: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            expected_revision: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            task: Option<&'a str>,
            strict: bool,
            infra_tolerance: bool,
        }
        let front = Front {
            staging_status: self.verdict.status.as_str(),
            checked_revision: self.checked_revision.as_deref(),
            pin: self.checked_revision.as_ref().and(self.pin),
            pr_number: self.pr_number,
            waived: &self.verdict.waived,
            checked_at: &self.checked_at,
            expected_revision: self.expected_revision.as_deref(),
            task: self.task.as_deref(),
            strict: self.strict,
            infra_tolerance: self.tolerance,
        };
        let yaml = serde_yaml::to_string(&front).expect("the frontmatter serialises");
        let mut out = format!("---\n{yaml}---\n# Staging report\n\n");
        out.push_str("Written by `orch staging-check`.\n\n");
        out.push_str("| id | name | category | result | duration | reason |\n");
        out.push_str("|---|---|---|---|---|---|\n");
        for c in &self.checks {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} ms | {} |",
                cell(&c.id),
                cell(&c.name),
                c.category.as_str(),
                c.result_word(),
                c.duration_ms,
                cell(&c.reason_text())
            );
        }
        out.push('\n');
        self.write_ending(&mut out, |r| format!("- {}", cell(r)), "\n");
        out
    }
}

/// A run that ended without a verdict: its task's PR head could not be read from Gitea
/// (`core::pin::Unreadable`), so it neither passed nor failed. Nothing is written for it
/// (no report) and it exits 2; the caller runs the check again later.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NoVerdictRun {
    /// The line saying why: `staging-check: could not read PR #N's head from Gitea
    /// (...): no verdict; nothing recorded; run it again`.
    pub no_verdict: String,
    /// The checks that ran (none when the first read of the PR failed).
    pub checks: Vec<CheckLine>,
    /// The task's PR, when it was read.
    pub pr_number: Option<u64>,
    /// The revision staging had to run, when known.
    pub expected_revision: Option<String>,
    /// When the run happened (RFC 3339).
    pub checked_at: String,
    /// Whether `--strict` was given.
    pub strict: bool,
    /// `ORCH_STAGING_INFRA_TOLERANCE_ENABLED`.
    pub tolerance: bool,
    /// The task the run was for, by key.
    pub task: Option<String>,
}

impl NoVerdictRun {
    /// Returns the exit code of a run without a verdict (2: could not do the job).
    pub fn exit_code(&self) -> u8 {
        2
    }

    /// Renders the text output: a line per check that ran, then the `no_verdict` line
    /// last (no `VERDICT:` line, since there is none).
    pub fn render_text(&self) -> String {
        let mut out = check_lines(&self.checks);
        let _ = writeln!(out, "{}", self.no_verdict);
        out
    }

    /// Renders the JSON output: the fields of a judged run, with `verdict`,
    /// `checked_revision` and `pin` null, plus `no_verdict` and `exit_code`.
    pub fn render_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("the run serialises");
        v["verdict"] = serde_json::Value::Null;
        v["checked_revision"] = serde_json::Value::Null;
        v["pin"] = serde_json::Value::Null;
        v["exit_code"] = serde_json::Value::from(self.exit_code());
        v
    }
}

/// Renders one text line per check: id, category, result, duration, reason.
fn check_lines(checks: &[CheckLine]) -> String {
    let idw = checks.iter().map(|c| c.id.len()).max().unwrap_or(0);
    let mut out = String::new();
    for c in checks {
        let _ = writeln!(
            out,
            "{:idw$}  {:13}  {}  {:>7}  {}",
            c.id,
            c.category.as_str(),
            c.result_word(),
            format!("{}ms", c.duration_ms),
            c.reason_text()
        );
    }
    out
}

fn cell(text: &str) -> String {
    one_line(text, 300).replace('|', "\\|")
}

/// Returns where a run's report goes: the task's report first (the gate reads it), then
/// `--report FILE`, once when both name the same file (`is_same`; a deployer may name the
/// task's own report, `$ORCH_TASK_ARTEFACTS/...`).
pub fn report_targets(
    task_report: Option<&Path>,
    extra: Option<&Path>,
    is_same: impl Fn(&Path, &Path) -> bool,
) -> Vec<PathBuf> {
    let mut targets: Vec<PathBuf> = task_report.iter().map(|p| p.to_path_buf()).collect();
    if let Some(extra) = extra {
        if !task_report.is_some_and(|p| is_same(p, extra)) {
            targets.push(extra.to_path_buf());
        }
    }
    targets
}

/// Returns the verdict on the lines and the internal errors, and marks each line waived
/// or not as the verdict says.
pub fn judge_lines(
    lines: &mut [CheckLine],
    policy: &Policy,
    internal: &[String],
) -> StagingVerdict {
    let results: Vec<StagingCheckResult> = lines
        .iter()
        .map(|l| StagingCheckResult {
            id: l.id.clone(),
            outcome: l.outcome.clone(),
        })
        .collect();
    let v = verdict(&results, policy, internal);
    for l in lines.iter_mut() {
        l.waived = v.waived.contains(&l.id);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::artefact::{parse_staging_report, StagingStatus};
    use crate::core::facts::PrFacts;
    use crate::core::gate::{evaluate, GateDecision, GateInputs};
    use crate::core::stage::Stage;

    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

    fn run(
        outcomes: &[(&str, Category, StagingCheckOutcome)],
        revision: Option<&str>,
    ) -> StagingRun {
        let policy = Policy {
            allowlist: vec!["C9a".into(), "C9b".into()],
            tolerance: true,
            strict: false,
        };
        let results: Vec<StagingCheckResult> = outcomes
            .iter()
            .map(|(id, _, o)| StagingCheckResult {
                id: (*id).into(),
                outcome: o.clone(),
            })
            .collect();
        let v = verdict(&results, &policy, &[]);
        StagingRun {
            checks: outcomes
                .iter()
                .map(|(id, cat, o)| CheckLine {
                    id: (*id).into(),
                    name: format!("check | {id}"),
                    kind: "http".into(),
                    category: *cat,
                    outcome: o.clone(),
                    duration_ms: 5,
                    waived: v.waived.iter().any(|w| w == id),
                })
                .collect(),
            verdict: v,
            checked_revision: revision.map(str::to_string),
            pin: revision.map(|_| PinKind::PrHead),
            pr_number: revision.map(|_| 3),
            expected_revision: revision.map(str::to_string),
            checked_at: "2026-11-25T03:00:00Z".into(),
            strict: false,
            tolerance: true,
            task: Some("ORCH-1".into()),
        }
    }

    #[test]
    fn text_lists_each_check_waivers_and_the_verdict_last() {
        let r = run(
            &[
                (
                    "C1",
                    Category::Real,
                    StagingCheckOutcome::Pass("HTTP 200".into()),
                ),
                (
                    "C9a",
                    Category::SandboxInfra,
                    StagingCheckOutcome::Fail("could not connect:\nrefused".into()),
                ),
            ],
            None,
        );
        let text = r.render_text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert_eq!(lines[0], "C1   REAL           PASS      5ms  HTTP 200");
        assert_eq!(
            lines[1],
            "C9a  SANDBOX_INFRA  FAIL      5ms  could not connect: refused"
        );
        assert_eq!(lines[2], "INFRA-WAIVED: C9a");
        assert_eq!(lines[3], "VERDICT: SUCCESS");
        assert_eq!(r.exit_code(), 0);
        let j = r.render_json();
        assert_eq!(j["verdict"]["status"], "SUCCESS");
        assert_eq!(j["checks"][1]["category"], "SANDBOX_INFRA");
        assert_eq!(j["checks"][1]["result"], "fail");
        assert_eq!(j["checks"][1]["waived"], true);
        assert_eq!(j["exit_code"], 0);
    }

    #[test]
    fn a_run_without_a_verdict_says_so_last_and_has_none() {
        let judged = run(
            &[(
                "C1",
                Category::Real,
                StagingCheckOutcome::Pass("HTTP 200".into()),
            )],
            None,
        );
        let line = "staging-check: could not read PR #3's head from Gitea (HTTP 502): no \
                    verdict; nothing recorded; run it again";
        let r = NoVerdictRun {
            no_verdict: line.into(),
            checks: judged.checks.clone(),
            pr_number: Some(3),
            expected_revision: None,
            checked_at: judged.checked_at.clone(),
            strict: false,
            tolerance: true,
            task: Some("ORCH-1".into()),
        };
        assert_eq!(
            r.render_text(),
            format!("C1  REAL           PASS      5ms  HTTP 200\n{line}\n")
        );
        assert!(!r.render_text().contains("VERDICT"));
        let j = r.render_json();
        assert_eq!(j["verdict"], serde_json::Value::Null);
        assert_eq!(j["checked_revision"], serde_json::Value::Null);
        assert_eq!(j["no_verdict"], line);
        assert_eq!(j["checks"][0]["result"], "pass");
        assert_eq!(j["pr_number"], 3);
        assert_eq!(j["task"], "ORCH-1");
        assert_eq!(j["exit_code"], 2);
        // Before any check ran: the line alone.
        let early = NoVerdictRun {
            checks: vec![],
            ..r
        };
        assert_eq!(early.render_text(), format!("{line}\n"));
    }

    #[test]
    fn failed_text_says_why() {
        let r = run(
            &[(
                "C1",
                Category::Real,
                StagingCheckOutcome::Error("no such file".into()),
            )],
            None,
        );
        let text = r.render_text();
        assert!(
            text.contains("FAIL      5ms  could not run: no such file"),
            "{text}"
        );
        assert!(text.contains("REASON: C1 could not be run"), "{text}");
        assert!(text.ends_with("VERDICT: FAILED\n"), "{text}");
        assert_eq!(r.exit_code(), 1);
    }

    #[test]
    fn the_report_reads_back_and_the_gate_reads_it() {
        let good = run(
            &[
                (
                    "C1",
                    Category::Real,
                    StagingCheckOutcome::Pass("HTTP 200".into()),
                ),
                (
                    "C9b",
                    Category::SandboxInfra,
                    StagingCheckOutcome::Fail("x: y | z".into()),
                ),
            ],
            Some(SHA),
        );
        let text = good.render_report();
        let parsed = parse_staging_report(Some(&text)).unwrap();
        assert_eq!(parsed.status, StagingStatus::Success);
        assert_eq!(parsed.checked_revision.as_deref(), Some(SHA));
        assert_eq!(parsed.waived, vec!["C9b"]);
        assert!(text.contains("x: y \\| z"), "{text}");
        assert!(
            text.contains(&format!(
                "checked_revision: {SHA}\npin: pr-head\npr_number: 3\n"
            )),
            "{text}"
        );
        assert!(
            good.render_text()
                .ends_with(&format!("PIN: pr-head {SHA} (PR #3)\nVERDICT: SUCCESS\n")),
            "{}",
            good.render_text()
        );
        assert_eq!(good.render_json()["pin"], "pr-head");
        assert_eq!(good.render_json()["pr_number"], 3);

        let mut inputs = GateInputs::empty();
        inputs.staging = Ok(parsed);
        inputs.freshness_applies = true;
        inputs.validated_revision = Some(SHA.into());
        inputs.pr = Ok(Some(PrFacts {
            number: 3,
            open: true,
            merged: false,
            mergeable: Some(true),
            head_sha: SHA.into(),
        }));
        let d = evaluate(Stage::DeployStaging, &inputs);
        assert!(
            matches!(
                d,
                GateDecision::Advance {
                    to: Stage::Deploy,
                    ..
                }
            ),
            "fresh SUCCESS report advances: {d:?}"
        );

        let bad = run(
            &[(
                "C1",
                Category::Real,
                StagingCheckOutcome::Fail("HTTP 503".into()),
            )],
            None,
        );
        let parsed = parse_staging_report(Some(&bad.render_report())).unwrap();
        assert_eq!(parsed.status, StagingStatus::Failed);
        assert!(parsed.waived.is_empty());
        assert_eq!(parsed.checked_revision, None);
        let mut inputs = GateInputs::empty();
        inputs.staging = Ok(parsed);
        let d = evaluate(Stage::DeployStaging, &inputs);
        assert!(
            matches!(
                d,
                GateDecision::Rollback {
                    to: Stage::Development,
                    ..
                }
            ),
            "FAILED report rolls back: {d:?}"
        );
    }

    #[test]
    fn report_targets_put_the_task_report_first_and_name_a_file_once() {
        let task = Path::new("/a/10-staging-report.md");
        let other = Path::new("/b/report.md");
        let same = |a: &Path, b: &Path| a == b;
        let cases: &[(Option<&Path>, Option<&Path>, &[&Path])] = &[
            (None, None, &[]),
            (Some(task), None, &[task]),
            (None, Some(other), &[other]),
            (Some(task), Some(other), &[task, other]),
            (Some(task), Some(task), &[task]),
        ];
        for (t, e, want) in cases {
            let got = report_targets(*t, *e, same);
            let want: Vec<PathBuf> = want.iter().map(|p| p.to_path_buf()).collect();
            assert_eq!(got, want, "{t:?} {e:?}");
        }
    }

    #[test]
    fn judge_lines_marks_exactly_the_waived_lines() {
        let policy = Policy {
            allowlist: vec!["C9a".into()],
            tolerance: true,
            strict: false,
        };
        let line = |id: &str, category, outcome| CheckLine {
            id: id.into(),
            name: id.into(),
            kind: "http".into(),
            category,
            outcome,
            duration_ms: 1,
            waived: false,
        };
        let mut lines = vec![
            line("C1", Category::Real, StagingCheckOutcome::Pass("ok".into())),
            line(
                "C9a",
                Category::SandboxInfra,
                StagingCheckOutcome::Fail("down".into()),
            ),
        ];
        let v = judge_lines(&mut lines, &policy, &[]);
        assert_eq!(v.status, VerdictStatus::Success);
        assert_eq!(
            lines.iter().map(|l| l.waived).collect::<Vec<_>>(),
            [false, true]
        );
        let v = judge_lines(&mut lines, &policy, &["boom".into()]);
        assert_eq!(v.status, VerdictStatus::Failed);
        assert!(lines.iter().all(|l| !l.waived));
    }
}
