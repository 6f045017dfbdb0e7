//! The webhook round trip's decisions (`staging-check` C9a/C9b): which Plane state of
//! the sandbox project means *in progress*, the synthetic work item and its signed
//! delivery body, the staging status lookups, and the polling backoff.
//!
//! Pure functions only: the states come from Plane through the command, the work item
//! id from an adapter's random source, and the answers from staging through adapters.

use std::time::Duration;

use serde_json::{json, Value};

use crate::core::branch::branch_name;
use crate::core::intake::{meaning_of, task_key, Meaning, PlaneState};
use crate::core::plane::{Project, StateMeanings};

/// The title every synthetic work item carries (the branch name derives from it).
pub const SYNTHETIC_TITLE: &str = "orch staging-check round trip";

/// `external_source` of the synthetic work item, so it is recognisable in staging's
/// stored deliveries.
pub const EXTERNAL_SOURCE: &str = "orch-staging-check";

/// The first wait between two polls; it doubles up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait between two polls.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Picks the sandbox project's *in progress* state from its live list of states.
///
/// With `wanted` (the check's `in_progress_state`), the state of that name
/// (case-insensitive); without it, the first state (in Plane's display order) that the
/// project's `states` configuration says means *start*. Either way the state must mean
/// *start* for the project, or staging would take the delivery and start nothing.
///
/// # Errors
/// Says which state is missing, or why the named one does not start a task.
pub fn in_progress_state<'a>(
    project: &str,
    meanings: &StateMeanings,
    states: &'a [PlaneState],
    wanted: Option<&str>,
) -> Result<&'a PlaneState, String> {
    let starts =
        |s: &PlaneState| meaning_of(meanings, &s.name, &s.group) == Ok(Some(Meaning::Start));
    match wanted.map(str::trim) {
        Some(name) => {
            let state = states
                .iter()
                .find(|s| s.name.trim().eq_ignore_ascii_case(name))
                .ok_or_else(|| {
                    format!(
                        "project {project} has no Plane state named {name:?} (it has {})",
                        names(states)
                    )
                })?;
            if starts(state) {
                Ok(state)
            } else {
                Err(format!(
                    "state {:?} of project {project} does not mean start under projects[].states, so staging would start nothing",
                    state.name
                ))
            }
        }
        None => states.iter().find(|s| starts(s)).ok_or_else(|| {
            format!(
                "project {project} has no Plane state that means start under projects[].states (it has {})",
                names(states)
            )
        }),
    }
}

fn names(states: &[PlaneState]) -> String {
    if states.is_empty() {
        return "no states".into();
    }
    states
        .iter()
        .map(|s| format!("{:?} ({})", s.name, s.group))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The synthetic work item one round trip sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Synthetic {
    /// Its Plane work item id (a fresh random UUID per run).
    pub work_item_id: String,
    /// Its title.
    pub title: String,
    /// The task key staging derives (`SBX-1a2b3c4d`: no sequence id is sent).
    pub key: String,
    /// The branch staging creates for it: `branch_name(key, title)`.
    pub branch: String,
}

/// Describes the synthetic work item `work_item_id` of `project`.
pub fn synthetic(project: &Project, work_item_id: &str) -> Synthetic {
    let key = task_key(
        project.plane_identifier.as_deref(),
        &project.name,
        None,
        work_item_id,
    );
    Synthetic {
        work_item_id: work_item_id.to_string(),
        title: SYNTHETIC_TITLE.to_string(),
        branch: branch_name(&key, SYNTHETIC_TITLE),
        key,
    }
}

/// Returns the raw body of a Plane v1 `issue` delivery moving the synthetic work item
/// of project `plane_project_id` into state `state_id` (`activity.field: state_id`, as
/// the web UI sends it).
///
/// `data.state` is the bare id, not an object with a name and group: staging must
/// resolve it within the sandbox project through its own state cache or Plane's
/// States API, so a state id of another project can never start the task. No
/// `sequence_id` is sent, so staging keys the task by the work item id.
pub fn delivery_body(plane_project_id: &str, item: &Synthetic, state_id: &str) -> Vec<u8> {
    let body = json!({
        "event": "issue",
        "action": "updated",
        "data": {
            "id": item.work_item_id,
            "name": item.title,
            "project": plane_project_id,
            "state": state_id,
            "priority": "none",
            "description_stripped": "Synthetic work item of orch staging-check (webhook round trip); not a real work item.",
            "external_source": EXTERNAL_SOURCE,
            "external_id": item.work_item_id,
        },
        "activity": {
            "field": "state_id",
            "old_value": null,
            "new_value": state_id,
            "actor": null,
            "old_identifier": null,
            "new_identifier": null,
        },
    });
    serde_json::to_vec(&body).expect("JSON values serialise")
}

/// Fills the `{work_item}` and `{key}` placeholders of a `status_command` argv.
pub fn status_argv(template: &[String], item: &Synthetic) -> Vec<String> {
    template
        .iter()
        .map(|a| {
            a.replace("{work_item}", &item.work_item_id)
                .replace("{key}", &item.key)
        })
        .collect()
}

/// One job of a staging task, as the lookups read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagingJob {
    /// The job id on staging.
    pub id: i64,
    /// `analyst`, `developer`, ...
    pub agent: String,
    /// `queued`, `running`, ...
    pub status: String,
}

/// Reads the jobs out of `orch task show ID --json` output.
///
/// # Errors
/// When the text is not that JSON shape (an object with a `jobs` array of objects with
/// `id`, `agent` and `status`).
pub fn jobs_from_task_show(stdout: &str) -> Result<Vec<StagingJob>, String> {
    let doc: Value = serde_json::from_str(stdout.trim())
        .map_err(|e| format!("not the JSON of `orch task show --json`: {e}"))?;
    let jobs = doc
        .get("jobs")
        .and_then(Value::as_array)
        .ok_or("not the JSON of `orch task show --json`: no jobs array")?;
    jobs.iter()
        .map(|j| {
            let id = j.get("id").and_then(Value::as_i64);
            let text = |k: &str| j.get(k).and_then(Value::as_str).map(str::to_string);
            match (id, text("agent"), text("status")) {
                (Some(id), Some(agent), Some(status)) => Ok(StagingJob { id, agent, status }),
                _ => Err(format!(
                    "a job without id, agent or status: {}",
                    crate::core::staging_check::one_line(&j.to_string(), 120)
                )),
            }
        })
        .collect()
}

/// Returns the first analyst job among a task's jobs, in any status: C9b holds once
/// staging has enqueued it.
pub fn analyst_job(jobs: &[StagingJob]) -> Option<&StagingJob> {
    jobs.iter().find(|j| j.agent == "analyst")
}

/// Returns the wait before poll number `attempt` (0-based): 100 ms doubling to 2 s, and
/// never past `remaining`.
pub fn backoff(attempt: u32, remaining: Duration) -> Duration {
    let grown = FIRST_BACKOFF.saturating_mul(1u32 << attempt.min(16));
    grown.min(MAX_BACKOFF).min(remaining)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::plane::StateMatch;

    fn st(id: &str, name: &str, group: &str) -> PlaneState {
        PlaneState {
            id: id.into(),
            name: name.into(),
            group: group.into(),
        }
    }

    fn states() -> Vec<PlaneState> {
        vec![
            st("s-backlog", "Backlog", "backlog"),
            st("s-todo", "Todo", "unstarted"),
            st("s-review", "Code Review", "started"),
            st("s-progress", "In Progress", "started"),
            st("s-done", "Done", "completed"),
        ]
    }

    #[test]
    fn the_start_state_comes_from_the_projects_meanings() {
        let default = StateMeanings::default();
        let by_name = StateMeanings {
            start: StateMatch {
                names: vec!["in progress".into()],
                groups: vec![],
            },
            ..StateMeanings::default()
        };
        let s = states();
        // (meanings, wanted, expected id or error fragment)
        let rows: Vec<(&StateMeanings, Option<&str>, Result<&str, &str>)> = vec![
            (&default, None, Ok("s-review")),
            (&by_name, None, Ok("s-progress")),
            (&default, Some("In Progress"), Ok("s-progress")),
            (&default, Some(" in progress "), Ok("s-progress")),
            (&by_name, Some("Code Review"), Err("does not mean start")),
            (
                &default,
                Some("Doing"),
                Err("no Plane state named \"Doing\""),
            ),
        ];
        for (m, wanted, want) in rows {
            let got = in_progress_state("sandbox", m, &s, wanted).map(|s| s.id.as_str());
            match want {
                Ok(id) => assert_eq!(got, Ok(id), "{wanted:?}"),
                Err(frag) => assert!(got.unwrap_err().contains(frag), "{wanted:?}"),
            }
        }
        let none = in_progress_state("sandbox", &default, &s[..2], None).unwrap_err();
        assert!(none.contains("no Plane state that means start"), "{none}");
        assert!(none.contains("\"Todo\" (unstarted)"), "{none}");
        let empty = in_progress_state("sandbox", &default, &[], None).unwrap_err();
        assert!(empty.contains("no states"), "{empty}");
    }

    fn project(identifier: Option<&str>) -> Project {
        Project {
            name: "sandbox".into(),
            plane_project_id: "1c2d3e4f-0000-4000-8000-000000000009".into(),
            plane_identifier: identifier.map(str::to_string),
            repo: "acme/sandbox".into(),
            default_branch: "main".into(),
            self_hosting: false,
            states: StateMeanings::default(),
            health_url: None,
            metrics_url: None,
            rollback: None,
        }
    }

    #[test]
    fn the_synthetic_item_is_keyed_by_its_id_and_its_branch_is_a_valid_ref() {
        let id = "9f8e7d6c-5b4a-4321-8fed-cba987654321";
        let s = synthetic(&project(Some("SBX")), id);
        assert_eq!(s.key, "SBX-9f8e7d6c");
        assert_eq!(s.branch, "sbx-9f8e7d6c-orch-staging-check-round-trip");
        assert!(crate::core::branch::check_ref_name(&s.branch).is_ok());
        assert_eq!(synthetic(&project(None), id).key, "SANDBOX-9f8e7d6c");
    }

    #[test]
    fn the_delivery_is_a_web_ui_state_change_staging_must_resolve_itself() {
        let s = synthetic(
            &project(Some("SBX")),
            "9f8e7d6c-5b4a-4321-8fed-cba987654321",
        );
        let body = delivery_body("p-1", &s, "s-progress");
        let env = crate::core::intake::parse_envelope(&body).unwrap();
        let crate::core::intake::Intake::StateChange(c) = crate::core::intake::classify(&env)
        else {
            panic!("not a state change");
        };
        assert_eq!(c.project_id, "p-1");
        assert_eq!(c.work_item_id, s.work_item_id);
        assert_eq!(c.new_state_id, "s-progress");
        assert_eq!(
            c.payload_state, None,
            "the receiver must resolve the id itself"
        );
        assert_eq!(c.sequence_id, None);
        assert_eq!(c.title, SYNTHETIC_TITLE);
        assert!(!c.legacy);
        assert_eq!(env.field(), Some("state_id"));
    }

    #[test]
    fn status_argv_fills_placeholders() {
        let s = synthetic(
            &project(Some("SBX")),
            "9f8e7d6c-5b4a-4321-8fed-cba987654321",
        );
        let t: Vec<String> = [
            "ssh",
            "staging",
            "orch task show {work_item} --json",
            "{key}",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            status_argv(&t, &s),
            [
                "ssh",
                "staging",
                "orch task show 9f8e7d6c-5b4a-4321-8fed-cba987654321 --json",
                "SBX-9f8e7d6c"
            ]
        );
    }

    #[test]
    fn task_show_output_is_read_strictly() {
        let ok = r#"{"key": "SBX-1", "jobs": [
            {"id": 4, "agent": "developer", "status": "queued"},
            {"id": 3, "agent": "analyst", "status": "running"}]}"#;
        let jobs = jobs_from_task_show(ok).unwrap();
        assert_eq!(analyst_job(&jobs).map(|j| j.id), Some(3));
        let none = jobs_from_task_show(r#"{"jobs": []}"#).unwrap();
        assert_eq!(analyst_job(&none), None);
        for bad in [
            "",
            "no task",
            "[]",
            r#"{"key": "SBX-1"}"#,
            r#"{"jobs": [{"id": "x", "agent": "analyst", "status": "queued"}]}"#,
        ] {
            assert!(jobs_from_task_show(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_never_passes_the_deadline() {
        let long = Duration::from_secs(60);
        let waits: Vec<u64> = (0..7)
            .map(|a| u64::try_from(backoff(a, long).as_millis()).unwrap())
            .collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(backoff(40, long), MAX_BACKOFF);
        assert_eq!(
            backoff(3, Duration::from_millis(250)),
            Duration::from_millis(250)
        );
        assert_eq!(backoff(0, Duration::ZERO), Duration::ZERO);
    }
}
