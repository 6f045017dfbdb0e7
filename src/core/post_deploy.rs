//! Post-deploy watch decisions: who is watched, what the samples say, what to do.
//!
//! Pure functions over plain data: applicability of a repo, the 5xx counters read from a
//! Prometheus text page, the classification of a window's samples (HEALTHY, DEGRADED,
//! INCONCLUSIVE), the decision for one tick and the rendering of the task's
//! `16-post-deploy-log.md`. No I/O, no clock: the tick command probes, reads the time
//! once and passes everything in.

use std::fmt;

use crate::core::artefact::{PostDeployVerdict, StatusValue};

/// Why a project is or is not watched after deploy → done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applicability {
    /// Watched.
    Applies,
    /// Not watched, with the reason (for the log).
    Skipped(String),
}

/// The facts about a project that decide whether post-deploy watches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchedProject<'a> {
    /// The project's name in the pipeline file.
    pub name: &'a str,
    /// Its Gitea `owner/name`.
    pub repo: &'a str,
    /// Whether it has a `health_url` to probe.
    pub has_health_url: bool,
}

/// Decides whether post-deploy watches a project.
///
/// `repos` is `ORCH_POST_DEPLOY_REPOS`: project names or Gitea `owner/name`, either form;
/// empty means every project with a `health_url` (the self-hosting one included: its
/// windows only ever alert, see [`decide`]), so a default install watches, rolls back and
/// reopens what it can probe. A listed project is watched as listed. `project` is `None`
/// when the task's project is not in the pipeline file.
pub fn applicability(
    enabled: bool,
    repos: &[String],
    project: Option<WatchedProject<'_>>,
) -> Applicability {
    if !enabled {
        return Applicability::Skipped("ORCH_POST_DEPLOY_ENABLED is off".into());
    }
    let Some(WatchedProject {
        name,
        repo,
        has_health_url,
    }) = project
    else {
        return Applicability::Skipped("the project is not in the pipeline file".into());
    };
    if repos.is_empty() {
        return if has_health_url {
            Applicability::Applies
        } else {
            Applicability::Skipped(format!(
                "ORCH_POST_DEPLOY_REPOS is empty (every project with a health_url) and {name} has no health_url"
            ))
        };
    }
    if repos
        .iter()
        .any(|r| r == name || r.eq_ignore_ascii_case(repo))
    {
        Applicability::Applies
    } else {
        Applicability::Skipped(format!(
            "neither {name} nor {repo} is in ORCH_POST_DEPLOY_REPOS"
        ))
    }
}

/// The thresholds a window is judged with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// Consecutive health failures that mean DEGRADED (`ORCH_POST_DEPLOY_FAIL_THRESHOLD`).
    pub fail_streak: u32,
    /// A window 5xx ratio above this means DEGRADED (`ORCH_POST_DEPLOY_5XX_THRESHOLD`).
    pub max_5xx_ratio: f64,
    /// Fewer samples than this is INCONCLUSIVE (`ORCH_POST_DEPLOY_MIN_SAMPLES`).
    pub min_samples: u32,
}

/// Request counters read from one metrics page (cumulative, as Prometheus counters are).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Counters {
    /// All requests.
    pub total: f64,
    /// Requests answered 5xx.
    pub errors_5xx: f64,
}

/// One probe of production.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Sample {
    /// When (unix seconds).
    pub at: i64,
    /// Health: `Some(true)` a 2xx answer, `Some(false)` anything else (status, timeout,
    /// refused), `None` no health URL configured.
    pub health_ok: Option<bool>,
    /// What the health probe saw (`HTTP 200`, `timed out` ...).
    pub health_detail: String,
    /// The request counters, when a metrics URL is configured and readable.
    pub counters: Option<Counters>,
    /// What the metrics probe saw, when it did not give counters.
    #[serde(default)]
    pub metrics_detail: String,
}

impl Sample {
    /// Returns whether the sample carries any signal.
    pub fn has_signal(&self) -> bool {
        self.health_ok.is_some() || self.counters.is_some()
    }
}

/// What a window's samples say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Classification {
    /// No evidence of degradation and enough samples.
    Healthy,
    /// Evidence of degradation.
    Degraded,
    /// No evidence of degradation, but too few samples to call it healthy.
    Inconclusive,
}

impl Classification {
    /// Returns the word logs and the artefact use.
    pub fn as_str(self) -> &'static str {
        match self {
            Classification::Healthy => "HEALTHY",
            Classification::Degraded => "DEGRADED",
            Classification::Inconclusive => "INCONCLUSIVE",
        }
    }

    /// Returns the artefact verdict with the same meaning.
    pub fn verdict(self) -> PostDeployVerdict {
        match self {
            Classification::Healthy => PostDeployVerdict::Healthy,
            Classification::Degraded => PostDeployVerdict::Degraded,
            Classification::Inconclusive => PostDeployVerdict::Inconclusive,
        }
    }
}

impl fmt::Display for Classification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A classification with the evidence behind it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Assessment {
    /// The classification.
    pub classification: Classification,
    /// Consecutive health failures at the end of the samples.
    pub fail_streak: u32,
    /// Requests counted over the window (counter increases between samples).
    pub requests: f64,
    /// 5xx answers counted over the window.
    pub errors_5xx: f64,
    /// `errors_5xx / requests`, or `None` with no requests.
    pub ratio_5xx: Option<f64>,
    /// Samples with any signal.
    pub samples: u32,
    /// One line of evidence for logs, alerts and the reopen reason.
    pub evidence: String,
}

/// Sums a counter's increases over consecutive readings; a decrease is a counter reset
/// (the process restarted), after which the new reading is the increase.
fn increase(readings: impl Iterator<Item = f64>) -> f64 {
    let mut prev: Option<f64> = None;
    let mut sum = 0.0;
    for cur in readings {
        if let Some(p) = prev {
            sum += if cur >= p { cur - p } else { cur };
        }
        prev = Some(cur);
    }
    sum
}

/// Classifies a window's samples.
///
/// DEGRADED iff the last `fail_streak` samples with a health result all failed (a
/// success resets the streak), or the window's 5xx ratio is strictly above
/// `max_5xx_ratio`. Otherwise INCONCLUSIVE with fewer than `min_samples` samples carrying
/// a signal, else HEALTHY. No requests at all is no evidence, not a ratio of zero.
pub fn classify(samples: &[Sample], t: &Thresholds) -> Assessment {
    let mut streak = 0u32;
    for ok in samples.iter().filter_map(|s| s.health_ok) {
        streak = if ok { 0 } else { streak.saturating_add(1) };
    }
    let counters: Vec<Counters> = samples.iter().filter_map(|s| s.counters).collect();
    let requests = increase(counters.iter().map(|c| c.total));
    let errors_5xx = increase(counters.iter().map(|c| c.errors_5xx)).min(requests);
    let ratio_5xx = (requests > 0.0).then(|| errors_5xx / requests);
    let with_signal =
        u32::try_from(samples.iter().filter(|s| s.has_signal()).count()).unwrap_or(u32::MAX);
    let streak_bad = streak >= t.fail_streak;
    let ratio_bad = ratio_5xx.is_some_and(|r| r > t.max_5xx_ratio);
    let classification = if streak_bad || ratio_bad {
        Classification::Degraded
    } else if with_signal < t.min_samples {
        Classification::Inconclusive
    } else {
        Classification::Healthy
    };
    let ratio_text = match ratio_5xx {
        Some(r) => format!(
            "5xx {errors_5xx}/{requests} = {:.2}% (threshold {:.2}%)",
            r * 100.0,
            t.max_5xx_ratio * 100.0
        ),
        None => "5xx n/a (no requests counted)".to_string(),
    };
    let evidence = format!(
        "{classification}: health failure streak {streak} (threshold {}), {ratio_text}, {with_signal} samples (minimum {})",
        t.fail_streak, t.min_samples
    );
    Assessment {
        classification,
        fail_streak: streak,
        requests,
        errors_5xx,
        ratio_5xx,
        samples: with_signal,
        evidence,
    }
}

/// What one tick does for one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Decision {
    /// Keep watching.
    Continue,
    /// Run the rollback command, alert, reopen the task, close the window DEGRADED.
    Rollback,
    /// Alert only (the self-hosting repo, or no rollback command configured).
    AlertOnly,
    /// The window is over: close it with its final verdict.
    Close,
}

impl Decision {
    /// Returns the word logs use.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Continue => "CONTINUE",
            Decision::Rollback => "ROLLBACK",
            Decision::AlertOnly => "ALERT_ONLY",
            Decision::Close => "CLOSE",
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Decides one tick for an open window whose samples were just classified.
///
/// The self-hosting repo is always ALERT_ONLY: a tick never restarts the process that
/// runs it. An ordinary repo without a rollback command can only alert too. The window
/// is over at `now >= ends_at`; a window that degraded on its last tick still rolls back.
pub fn decide(
    classification: Classification,
    self_hosting: bool,
    has_rollback: bool,
    now: i64,
    ends_at: i64,
) -> Decision {
    match classification {
        Classification::Degraded if self_hosting || !has_rollback => Decision::AlertOnly,
        Classification::Degraded => Decision::Rollback,
        _ if now >= ends_at => Decision::Close,
        _ => Decision::Continue,
    }
}

/// The verdict a window closes with: DEGRADED when any tick saw degradation, else what
/// its samples say (INCONCLUSIVE with too few).
pub fn final_verdict(samples: &[Sample], ever_degraded: bool, t: &Thresholds) -> Classification {
    if ever_degraded {
        return Classification::Degraded;
    }
    classify(samples, t).classification
}

/// Whether a window is due for a new sample: not sampled for at least half the interval,
/// so a burst of manual or overlapping ticks cannot compress the failure streak.
pub fn is_due(last_sample_at: Option<i64>, now: i64, interval_s: i64) -> bool {
    last_sample_at.is_none_or(|at| now - at >= interval_s / 2)
}

/// Why the metrics page could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricsError {
    /// The counter is not on the page.
    #[error("metric {0} not found")]
    Missing(String),
    /// A sample line of the counter does not parse.
    #[error("malformed sample line {0:?}")]
    Malformed(String),
}

/// Reads the request counter `metric` from a Prometheus text page: the sum over all
/// series, and the sum of the series whose `code` (or `status`) label starts with 5.
///
/// # Errors
/// [`MetricsError`] when the counter is absent or one of its lines is malformed.
pub fn parse_counters(page: &str, metric: &str) -> Result<Counters, MetricsError> {
    let mut found = false;
    let mut total = 0.0;
    let mut errors = 0.0;
    for line in page.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line
            .find(|c: char| c == '{' || c.is_whitespace())
            .unwrap_or(line.len());
        if &line[..name_end] != metric {
            continue;
        }
        let rest = &line[name_end..];
        let (labels, value_part) = if let Some(inner) = rest.strip_prefix('{') {
            let close = inner
                .rfind('}')
                .ok_or_else(|| MetricsError::Malformed(line.into()))?;
            (&inner[..close], &inner[close + 1..])
        } else {
            ("", rest)
        };
        let value: f64 = value_part
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .filter(|v: &f64| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| MetricsError::Malformed(line.into()))?;
        found = true;
        total += value;
        let is_5xx = labels.split(',').any(|pair| {
            let Some((k, v)) = pair.split_once('=') else {
                return false;
            };
            let v = v.trim().trim_matches('"');
            matches!(k.trim(), "code" | "status") && v.len() == 3 && v.starts_with('5')
        });
        if is_5xx {
            errors += value;
        }
    }
    if !found {
        return Err(MetricsError::Missing(metric.into()));
    }
    Ok(Counters {
        total,
        errors_5xx: errors,
    })
}

/// One line of the post-deploy log.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TickRecord {
    /// When (RFC 3339).
    pub at: String,
    /// The sample summary (health, 5xx), or `-` when the tick did not probe.
    pub samples: String,
    /// The classification.
    pub classification: String,
    /// The decision.
    pub decision: String,
    /// What acting did (`-` when nothing).
    pub action: String,
}

/// Renders `16-post-deploy-log.md`: frontmatter with the window and, once closed, the
/// `post_deploy_verdict`; then one table row per tick.
pub fn render_log(
    key: &str,
    armed_at: &str,
    ends_at: &str,
    verdict: Option<PostDeployVerdict>,
    ticks: &[TickRecord],
) -> String {
    let cell = |s: &str| s.replace('|', "\\|").replace(['\n', '\r'], " ");
    let mut out = String::from("---\n");
    if let Some(v) = verdict {
        out.push_str(&format!("{}: {}\n", PostDeployVerdict::KEY, v.as_str()));
    }
    out.push_str(&format!("window_armed_at: \"{armed_at}\"\n"));
    out.push_str(&format!("window_ends_at: \"{ends_at}\"\n"));
    out.push_str("---\n");
    out.push_str(&format!("# Post-deploy log of {}\n\n", cell(key)));
    out.push_str("| time | samples | classification | decision | action |\n");
    out.push_str("|---|---|---|---|---|\n");
    for t in ticks {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            cell(&t.at),
            cell(&t.samples),
            cell(&t.classification),
            cell(&t.decision),
            cell(&t.action)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::artefact::parse_status;

    const T: Thresholds = Thresholds {
        fail_streak: 3,
        max_5xx_ratio: 0.05,
        min_samples: 3,
    };

    fn health(seq: &[bool]) -> Vec<Sample> {
        seq.iter()
            .enumerate()
            .map(|(i, ok)| Sample {
                at: i as i64 * 60,
                health_ok: Some(*ok),
                health_detail: String::new(),
                counters: None,
                metrics_detail: String::new(),
            })
            .collect()
    }

    fn metrics(readings: &[(f64, f64)]) -> Vec<Sample> {
        readings
            .iter()
            .enumerate()
            .map(|(i, (total, e))| Sample {
                at: i as i64 * 60,
                health_ok: Some(true),
                health_detail: String::new(),
                counters: Some(Counters {
                    total: *total,
                    errors_5xx: *e,
                }),
                metrics_detail: String::new(),
            })
            .collect()
    }

    #[test]
    fn classification_table() {
        use Classification::*;
        let (f, o) = (false, true);
        let cases: Vec<(&str, Vec<Sample>, Classification)> = vec![
            ("no samples", vec![], Inconclusive),
            (
                "two fails, below threshold and too few",
                health(&[f, f]),
                Inconclusive,
            ),
            ("three fails", health(&[f, f, f]), Degraded),
            (
                "fail fail ok fail: the ok resets",
                health(&[f, f, o, f]),
                Healthy,
            ),
            ("ok then three fails", health(&[o, f, f, f]), Degraded),
            (
                "three fails then ok recovers",
                health(&[f, f, f, o]),
                Healthy,
            ),
            ("three oks", health(&[o, o, o]), Healthy),
            ("two oks: too few samples", health(&[o, o]), Inconclusive),
            // 5 of 100 is exactly the 0.05 threshold: not above it.
            (
                "ratio exactly at threshold",
                metrics(&[(0., 0.), (100., 5.), (100., 5.)]),
                Healthy,
            ),
            (
                "ratio just above",
                metrics(&[(0., 0.), (100., 6.), (100., 6.)]),
                Degraded,
            ),
            (
                "ratio above with one delta",
                metrics(&[(1000., 0.), (1100., 50.)]),
                Degraded,
            ),
            (
                "zero requests is no evidence",
                metrics(&[(7., 1.), (7., 1.), (7., 1.)]),
                Healthy,
            ),
            (
                "a single reading has no delta",
                metrics(&[(100., 90.)]),
                Inconclusive,
            ),
            // The counter reset (restart): 50 after 100 counts as 50 new requests.
            (
                "counter reset",
                metrics(&[(100., 0.), (50., 10.), (60., 10.)]),
                Degraded,
            ),
        ];
        for (name, samples, want) in cases {
            assert_eq!(classify(&samples, &T).classification, want, "{name}");
        }
    }

    #[test]
    fn thresholds_at_one_and_zero() {
        let t = Thresholds {
            fail_streak: 1,
            max_5xx_ratio: 0.0,
            min_samples: 1,
        };
        assert_eq!(
            classify(&health(&[false]), &t).classification,
            Classification::Degraded
        );
        assert_eq!(
            classify(&metrics(&[(0., 0.), (10., 0.)]), &t).classification,
            Classification::Healthy
        );
        assert_eq!(
            classify(&metrics(&[(0., 0.), (10., 1.)]), &t).classification,
            Classification::Degraded
        );
        let strict = Thresholds {
            max_5xx_ratio: 1.0,
            ..t
        };
        assert_eq!(
            classify(&metrics(&[(0., 0.), (10., 10.)]), &strict).classification,
            Classification::Healthy,
            "every request failing is not above a ratio of 1"
        );
    }

    #[test]
    fn samples_without_signal_do_not_count() {
        let blank = Sample {
            at: 0,
            health_ok: None,
            health_detail: "no health_url".into(),
            counters: None,
            metrics_detail: String::new(),
        };
        let a = classify(&[blank.clone(), blank.clone(), blank], &T);
        assert_eq!(a.classification, Classification::Inconclusive);
        assert_eq!(a.samples, 0);
        assert!(a.evidence.contains("5xx n/a"), "{}", a.evidence);
    }

    #[test]
    fn decision_table() {
        use Classification::*;
        use Decision::*;
        // (classification, self_hosting, has_rollback, now, ends_at, want)
        let cases = [
            (Degraded, false, true, 10, 100, Rollback),
            (Degraded, true, true, 10, 100, AlertOnly),
            (Degraded, false, false, 10, 100, AlertOnly),
            (Degraded, false, true, 100, 100, Rollback),
            (Degraded, true, true, 100, 100, AlertOnly),
            (Healthy, false, true, 10, 100, Continue),
            (Inconclusive, true, true, 99, 100, Continue),
            (Healthy, false, true, 100, 100, Close),
            (Inconclusive, false, true, 500, 100, Close),
        ];
        for (c, sh, rb, now, end, want) in cases {
            assert_eq!(
                decide(c, sh, rb, now, end),
                want,
                "{c} {sh} {rb} {now} {end}"
            );
        }
    }

    #[test]
    fn final_verdicts() {
        assert_eq!(
            final_verdict(&health(&[true, true, true]), true, &T),
            Classification::Degraded
        );
        assert_eq!(
            final_verdict(&health(&[true, true, true]), false, &T),
            Classification::Healthy
        );
        assert_eq!(
            final_verdict(&health(&[true]), false, &T),
            Classification::Inconclusive
        );
    }

    #[test]
    fn due_after_half_the_interval() {
        assert!(is_due(None, 0, 60));
        assert!(!is_due(Some(100), 129, 60));
        assert!(is_due(Some(100), 130, 60));
        assert!(is_due(Some(100), 100, 0));
    }

    #[test]
    fn applicability_table() {
        let csv = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let project = |name, repo, has_health_url| {
            Some(WatchedProject {
                name,
                repo,
                has_health_url,
            })
        };
        let shop = project("shop", "acme/shop", true);
        let orch = project("orch", "acme/orch", true);
        let blind = project("blog", "acme/blog", false);
        // The default (empty list): every project with a health_url, self-hosting or not.
        assert_eq!(applicability(true, &[], orch), Applicability::Applies);
        assert_eq!(applicability(true, &[], shop), Applicability::Applies);
        match applicability(true, &[], blind) {
            Applicability::Skipped(why) => assert!(why.contains("no health_url"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            applicability(false, &[], orch),
            Applicability::Skipped(_)
        ));
        assert!(matches!(
            applicability(false, &csv(&["shop"]), shop),
            Applicability::Skipped(_)
        ));
        assert_eq!(
            applicability(true, &csv(&["shop"]), shop),
            Applicability::Applies
        );
        assert_eq!(
            applicability(true, &csv(&["x", "Acme/Shop"]), shop),
            Applicability::Applies
        );
        assert!(matches!(
            applicability(true, &csv(&["shop"]), orch),
            Applicability::Skipped(_)
        ));
        // A listed project is watched as listed.
        assert_eq!(
            applicability(true, &csv(&["blog"]), blind),
            Applicability::Applies
        );
        assert!(matches!(
            applicability(true, &csv(&["shop"]), None),
            Applicability::Skipped(_)
        ));
        assert!(matches!(
            applicability(true, &[], None),
            Applicability::Skipped(_)
        ));
    }

    #[test]
    fn counters_from_prometheus_text() {
        let page = "# HELP http_requests_total Requests.\n# TYPE http_requests_total counter\n\
            http_requests_total{code=\"200\",path=\"/\"} 90\n\
            http_requests_total{method=\"GET\",code=\"503\"} 7\n\
            http_requests_total{code=\"500\"} 3 1700000000000\n\
            http_requests_total_created{code=\"200\"} 1.7e9\n\
            other_total 5\n";
        assert_eq!(
            parse_counters(page, "http_requests_total").unwrap(),
            Counters {
                total: 100.0,
                errors_5xx: 10.0
            }
        );
        assert_eq!(
            parse_counters("up 1\n", "http_requests_total"),
            Err(MetricsError::Missing("http_requests_total".into()))
        );
        for bad in [
            "http_requests_total{code=\"200\" 5",
            "http_requests_total{code=\"200\"} five",
            "http_requests_total -1",
            "http_requests_total NaN",
        ] {
            assert!(
                matches!(
                    parse_counters(bad, "http_requests_total"),
                    Err(MetricsError::Malformed(_))
                ),
                "{bad}"
            );
        }
        assert_eq!(
            parse_counters("http_requests_total 4\n", "http_requests_total").unwrap(),
            Counters {
                total: 4.0,
                errors_5xx: 0.0
            }
        );
    }

    #[test]
    fn the_log_carries_the_verdict_the_artefact_reader_accepts() {
        let ticks = vec![TickRecord {
            at: "2026-11-25T03:01:00Z".into(),
            samples: "health HTTP 500 | 5xx n/a".into(),
            classification: "DEGRADED".into(),
            decision: "ROLLBACK".into(),
            action: "rollback exit 0".into(),
        }];
        let open = render_log("SHOP-1", "a", "b", None, &ticks);
        assert!(parse_status::<PostDeployVerdict>(Some(&open)).is_err());
        assert!(open.contains("health HTTP 500 \\| 5xx"), "{open}");
        let closed = render_log(
            "SHOP-1",
            "a",
            "b",
            Some(PostDeployVerdict::Degraded),
            &ticks,
        );
        assert_eq!(
            parse_status::<PostDeployVerdict>(Some(&closed)),
            Ok(PostDeployVerdict::Degraded)
        );
    }
}
